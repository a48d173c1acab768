//! A small CTAP2 client for FIDO2 security keys, for the hmac-secret
//! extension: what the `fido2` slot needs and nothing more.
//!
//! Why our own: the Rust clients there tie their transport to hidapi
//! (ctap-hid-fido2) or to a browser's stack, and libfido2's custom I/O
//! needs FFI, while this project forbids unsafe code and tests every
//! boundary against a real implementation. So the client is ours, over a
//! [`transport::Transport`] that is a Linux hidraw node for a real key and
//! a Unix socket for the virtual key of `hsm-sim/` (trussed-dev's
//! fido-authenticator); CTAPHID framing ([`ctaphid`]), CBOR (ciborium),
//! the PIN/UV auth protocols ([`pin`]) and hmac-secret ([`ctap2`]) are the
//! same code for both.
//!
//! Must never: keep a PIN, token or hmac-secret output past the call, put
//! one in an error, or send a PIN to a key other than the one asked for.

pub mod cbor;
pub mod ctap2;
pub mod ctaphid;
pub mod pin;
pub mod transport;

pub use ctap2::{Credential, Info, Key, Options, Token};
pub use transport::Device;

/// A CTAP2 status byte's meaning, for errors.
pub fn status_text(status: u8) -> &'static str {
    match status {
        0x01 => "invalid command",
        0x02 => "invalid parameter",
        0x03 => "invalid length",
        0x11 => "CBOR unexpected type",
        0x12 => "invalid CBOR",
        0x14 => "missing parameter",
        0x19 => "credential excluded",
        0x26 => "unsupported algorithm",
        0x27 => "operation denied",
        0x2b => "unsupported option",
        0x2c => "invalid option",
        0x2d => "keepalive cancel",
        0x2e => "no such credential",
        0x2f => "user action timeout",
        0x30 => "not allowed",
        0x31 => "PIN invalid",
        0x32 => "PIN blocked",
        0x33 => "PIN auth invalid",
        0x34 => "PIN auth blocked (unplug the key and plug it in again)",
        0x35 => "PIN not set",
        0x36 => "PIN required",
        0x37 => "PIN policy violation",
        0x3c => "user verification blocked",
        0x3f => "user verification invalid",
        _ => "error",
    }
}

/// What went wrong talking to a key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device could not be opened.
    #[error("{0}: {1}")]
    Open(Device, std::io::Error),
    /// Reading or writing it failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// It did not answer in time.
    #[error("the security key did not answer in time")]
    Timeout,
    /// Another program is using it (CTAPHID channel busy).
    #[error("another program is using the security key")]
    Busy,
    /// It answered something that is not CTAPHID or CTAP2.
    #[error("{0}")]
    Protocol(String),
    /// It answered with a CTAP2 error status.
    #[error("{} (CTAP2 status {:#04x})", status_text(*.0), .0)]
    Ctap(u8),
}

/// CTAP2 statuses the slot tells apart.
pub mod status {
    /// Wrong PIN.
    pub const PIN_INVALID: u8 = 0x31;
    /// PIN blocked: reset the key.
    pub const PIN_BLOCKED: u8 = 0x32;
    /// Too many wrong PINs in a row: replug.
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    /// No PIN is set.
    pub const PIN_NOT_SET: u8 = 0x35;
    /// A PIN is needed.
    pub const PIN_REQUIRED: u8 = 0x36;
    /// A PIN token the key refused.
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    /// CTAP 2.0's timeout.
    pub const ACTION_TIMEOUT: u8 = 0x3a;
    /// Built-in user verification blocked.
    pub const UV_BLOCKED: u8 = 0x3c;
    /// Built-in user verification failed.
    pub const UV_INVALID: u8 = 0x3f;
    /// The PIN breaks the key's policy (or must be changed first).
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    /// The credential is not on this key.
    pub const NO_CREDENTIALS: u8 = 0x2e;
    /// Touch refused.
    pub const OPERATION_DENIED: u8 = 0x27;
    /// Nobody touched it.
    pub const USER_ACTION_TIMEOUT: u8 = 0x2f;
    /// A user verification the key cannot do.
    pub const UNSUPPORTED_OPTION: u8 = 0x2b;
}
