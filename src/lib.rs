//! coffer keeps backups readable only by their owner.
//!
//! One random 256-bit [`key::BackupKey`] encrypts every archive. It is
//! wrapped, independently, by every slot the owner enrolls ([`slot`]): a
//! recovery key, a password, and hardware tokens. Any one slot recovers it.
//! The slots live in the [`keyring`] file, and a copy of them travels in
//! every archive header.
//!
//! The library never prints, prompts or exits: people are reached through
//! the [`ui::Ui`] trait, which the `coffer` command line implements.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
pub mod error;
pub mod fsutil;
pub mod key;
pub mod keyring;
#[cfg(any(feature = "pkcs11", feature = "vault-server"))]
pub mod pkcs11_uri;
pub mod slot;
pub mod ui;
#[cfg(feature = "vault")]
pub mod vault;

pub use error::{Error, ExitStatus, Result};
