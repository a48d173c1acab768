//! coffer keeps backups readable only by their owner.
//!
//! One random 256-bit [`key::BackupKey`] encrypts every archive. It is
//! wrapped, independently, by every slot the owner enrolls ([`slot`]): a
//! recovery key, a password, and hardware tokens. Any one slot recovers it.
//! The slots live in the [`keyring`] file, and a copy of them travels in
//! every archive header.
//!
//! [`sealing`] holds format 2's write-only sealing keys (a post-quantum
//! key pair derived from the backup key, sealer keys); no archive or
//! keyring uses it yet.
//!
//! [`agent`] is the unlock agent: it holds the backup key after one unlock
//! and answers with what the key derives (payload keys, passphrases),
//! never the key.
//!
//! The library never prints, prompts or exits: people are reached through
//! the [`ui::Ui`] trait, which the `coffer` command line implements.
//!
//! # Features
//!
//! The defaults build the `coffer` command line with every backend. A
//! program embedding the library takes `default-features = false` and
//! names what it needs:
//!
//! - `tpm2`, `pkcs11`, `yubikey`: the hardware slots (the last two share
//!   `ecdh`: P-256 ECDH to the device's public key, HKDF to the KEK).
//! - `fido2`: FIDO2 security key slots (`slot::fido2`, over the CTAP2
//!   client of `fido2`; shares `ecdh` for the PIN/UV auth protocols).
//! - `vault`: the key vault slot (`slot::vault`, the OPAQUE client of
//!   `vault::client`).
//! - `vault-server` (implies `vault`): the vault server, its storage and
//!   its HSM sealing (`vault::server`, `vault::store`, `vault::hsm`);
//!   pulls hyper, tokio, rustls, SQLite and PostgreSQL.
//! - `object-storage`: archives in S3 and S3-compatible stores
//!   (`storage::object`); pulls object_store, reqwest and tokio.
//! - `cli`: the `coffer` binary (clap, indicatif, rpassword, signal-hook);
//!   the library uses it only to derive `clap::ValueEnum` on the YubiKey
//!   policy enums.
//!
//! Without any feature the library keeps recovery-key and password slots
//! and every archive operation.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod archive;
#[cfg(any(feature = "pkcs11", feature = "yubikey", feature = "fido2"))]
pub mod ecdh;
pub mod error;
#[cfg(feature = "fido2")]
pub mod fido2;
pub mod fsutil;
pub mod key;
pub mod keyring;
pub mod passphrase;
#[cfg(any(feature = "pkcs11", feature = "vault-server"))]
pub(crate) mod pkcs11_token;
// Also the object store's percent-encoding (`pct_encode`).
#[cfg(any(
    feature = "pkcs11",
    feature = "vault-server",
    feature = "object-storage"
))]
pub mod pkcs11_uri;
pub mod sealing;
pub mod shamir;
pub mod slot;
pub mod storage;
pub mod ui;
#[cfg(feature = "vault")]
pub mod vault;

pub use error::{Category, Error, Result};
