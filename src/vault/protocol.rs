//! The OPAQUE cipher suite and the JSON messages of the vault protocol.
//!
//! Every message is a small JSON object; binary fields are standard base64.
//! The server refuses bodies over [`MAX_BODY`] bytes.
//!
//! Must never: change the cipher suite or the key-stretching parameters
//! without a new protocol version: enrolled slots depend on them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// OPAQUE over ristretto255 with triple Diffie-Hellman and Argon2id.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeGroup = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::key_exchange::tripledh::TripleDh;
    type Ksf = argon2_05::Argon2<'static>;
}

/// Argon2id cost of the key-stretching step, run by the client at
/// registration and every login: m = 19 MiB, t = 2, p = 1 (OWASP minimum;
/// the server's guess limit, not this cost, is the main defence).
pub fn ksf() -> argon2_05::Argon2<'static> {
    let params = argon2_05::Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    argon2_05::Argon2::new(
        argon2_05::Algorithm::Argon2id,
        argon2_05::Version::V0x13,
        params,
    )
}

/// Largest request body the server reads, bytes.
pub const MAX_BODY: usize = 8 * 1024;

/// Length of a user id, bytes (hex on the wire).
pub const USER_ID_LEN: usize = 16;

/// Default number of unrefunded guesses before a record is destroyed.
pub const DEFAULT_MAX_GUESSES: u32 = 10;

/// Paths of the endpoints.
pub mod path {
    /// Registration, first message.
    pub const REGISTER_START: &str = "/v1/register/start";
    /// Registration, upload.
    pub const REGISTER_FINISH: &str = "/v1/register/finish";
    /// Login, first message (counts a guess).
    pub const LOGIN_START: &str = "/v1/login/start";
    /// Login, final message (refunds the guess).
    pub const LOGIN_FINISH: &str = "/v1/login/finish";
    /// A login final message that also deletes the record.
    pub const DELETE: &str = "/v1/delete";
}

/// `register/start` and `login/start` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The user id, hex.
    pub user: String,
    /// The OPAQUE message, base64.
    pub message: String,
}

/// `register/start` answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterStartResponse {
    /// The OPAQUE registration response, base64.
    pub message: String,
}

/// `register/finish` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinishRequest {
    /// The user id, hex.
    pub user: String,
    /// The OPAQUE registration upload, base64.
    pub message: String,
}

/// `login/start` answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStartResponse {
    /// Names the server's login state for the finish, hex.
    pub session: String,
    /// The OPAQUE credential response, base64.
    pub message: String,
    /// Guesses the server will still answer after this one, if this one
    /// turns out wrong.
    pub guesses_left: u32,
}

/// `login/finish` and `delete` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFinishRequest {
    /// From the start answer.
    pub session: String,
    /// The OPAQUE credential finalization, base64.
    pub message: String,
}

/// Every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Machine-readable: `destroyed`, `no-record`, `exists`, `bad-request`,
    /// `bad-session`, `unauthenticated`, `too-large`, `not-found`, `internal`.
    pub error: String,
}

/// Base64 encode.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Base64 decode, refusing more than `max` bytes of output.
pub fn unb64(s: &str, max: usize) -> Option<Vec<u8>> {
    if s.len() > max.div_ceil(3) * 4 {
        return None;
    }
    B64.decode(s.as_bytes()).ok().filter(|b| b.len() <= max)
}

/// Parse a user id: 32 lowercase hex digits.
pub fn parse_user(s: &str) -> Option<[u8; USER_ID_LEN]> {
    if s.len() != USER_ID_LEN * 2 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}
