//! Test fixtures that start real software devices (swtpm, SoftHSM2, a
//! virtual PIV card behind pcscd, a virtual FIDO2 key) for coffer's
//! integration tests.
//!
//! Each fixture owns its process and its state directory and tears both down
//! on `Drop`. When a simulator is missing the fixture panics with the command
//! that installs it: a test that needs a device never silently skips.
#![forbid(unsafe_code)]

pub mod swtpm;
pub use swtpm::SwTpm;
pub mod fido2;
pub mod pcsc;
pub mod softhsm;
pub use fido2::VirtualKey;
pub use pcsc::VirtualCard;
