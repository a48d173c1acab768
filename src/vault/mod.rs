//! The key vault: a password checked by a server with OPAQUE, with a guess
//! limit (DESIGN.md, slot kind **vault**).
//!
//! [`protocol`] fixes the OPAQUE cipher suite and the JSON messages;
//! [`client`] runs registration and login for the slot (feature `vault`).
//! With feature `vault-server` only: `server` answers them, counting
//! guesses in `store` and keeping its long-term secrets sealed by `hsm`;
//! the client side never needs that code or its dependencies (hyper,
//! tokio, the databases, a PKCS#11 library).
//!
//! Must never: send the password, or anything derived from it other than
//! OPAQUE messages, to the server; log a secret.

#[cfg(feature = "vault-server")]
pub mod audit;
pub mod client;
#[cfg(feature = "vault-server")]
pub mod epoch;
#[cfg(feature = "vault-server")]
pub mod hsm;
#[cfg(feature = "vault-server")]
pub mod metrics;
pub mod protocol;
#[cfg(feature = "vault-server")]
pub mod server;
#[cfg(feature = "vault-server")]
pub(crate) mod state;
#[cfg(feature = "vault-server")]
pub mod store;

/// Why a vault operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The password was wrong; the server counted the guess.
    #[error(
        "wrong vault password ({guesses_left} guesses left before the vault record is destroyed)"
    )]
    WrongPassword {
        /// Unrefunded guesses the server will still answer.
        guesses_left: u32,
    },
    /// The record was destroyed after too many wrong guesses (or deleted).
    #[error("the vault record was destroyed after too many wrong guesses; use another slot")]
    Destroyed,
    /// The server has no record for this user id.
    #[error("the vault server has no record for this slot")]
    NoRecord,
    /// The server could not be reached.
    #[error("vault server {url} unreachable: {reason}")]
    Unreachable {
        /// The server.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server answered, but its TLS certificate is not one to trust.
    #[error("vault server {url}: {why}")]
    Untrusted {
        /// The server.
        url: String,
        /// What is wrong with the certificate, and what to do.
        why: String,
    },
    /// The server's key is not the one pinned at enrollment.
    #[error("the vault server's public key is not the one pinned at enrollment")]
    KeyMismatch,
    /// The server answered something unexpected.
    #[error("vault protocol error: {0}")]
    Protocol(String),
    /// A local storage failure (server side).
    #[error("vault storage: {0}")]
    Store(String),
    /// A failure of the token or key that seals the server's secrets.
    #[error("vault secret sealing: {0}")]
    Seal(String),
    /// The database failed the rollback check, or its epoch could not be
    /// advanced (`epoch.rs`).
    #[error("vault epoch: {0}")]
    Epoch(String),
    /// A record row or the epoch row does not carry its MAC: written by
    /// someone without the server's key.
    #[error("vault database tampered with: {0}")]
    Tampered(String),
}
