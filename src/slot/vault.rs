//! The vault slot: a password checked by a coffer key vault server with
//! OPAQUE. The KEK is `HKDF-SHA256(export key, info "coffer/v1 vault kek")`;
//! the slot stores the server URL, a random user id, the server's public
//! key (pinned, compared at every login) and, optionally, the CA that
//! signs the server's certificate.
//!
//! Must never: keep the password or the export key past the unwrap; try a
//! server whose key is not the pinned one.

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Rewrapped, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::error::SlotError;
use crate::key::{Kek, WrappedKey};
use crate::vault::VaultError;
use crate::vault::client::Client;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The kind name.
pub const KIND: &str = "vault";

/// Public parameters of a vault slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultParams {
    /// The server, `https://...` (or `http://` to loopback).
    pub url: String,
    /// The user id at the server, 32 hex digits.
    pub user: String,
    /// The server's OPAQUE public key, base64, pinned at enrollment.
    pub server_key: String,
    /// PEM of the CA to trust for `url`, when not the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

fn kek(export_key: &[u8]) -> Kek {
    Kek::derive(None, export_key, crate::key::label::VAULT_KEK)
}

fn slot_error(url: &str, e: VaultError) -> SlotError {
    match e {
        VaultError::WrongPassword { guesses_left } => {
            SlotError::WrongVaultPassword { guesses_left }
        }
        VaultError::Destroyed => SlotError::LockedOut {
            what: format!("vault record at {url}"),
            hint: "it was destroyed after too many wrong guesses; unlock with another slot and enroll a new vault slot".into(),
        },
        VaultError::NoRecord => SlotError::LockedOut {
            what: format!("vault record at {url}"),
            hint: "the server has no record for this slot (a different server, or its database was lost)".into(),
        },
        VaultError::Unreachable { url, reason } => SlotError::DeviceNotFound {
            what: format!("vault server {url}"),
            hint: format!("unreachable ({reason}); check the network, or unlock with another slot"),
        },
        VaultError::Untrusted { url, why } => {
            SlotError::PolicyRefused(format!("vault server {url}: {why}"))
        }
        VaultError::KeyMismatch => SlotError::PolicyRefused(format!(
            "vault server {url} presented a key other than the one pinned at enrollment; refusing it"
        )),
        e => SlotError::Device(format!("vault {url}: {e}")),
    }
}

/// Enroll a vault slot for `target` (the backup key, or a group member's
/// share): register `password` at `url` under a new random user id.
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    url: &str,
    ca_pem: Option<&str>,
    password: &SecretString,
) -> Result<SlotRecord, SlotError> {
    if password.expose_secret().is_empty() {
        return Err(SlotError::Usage("the new vault password is empty".into()));
    }
    let client = Client::new(url, ca_pem.map(str::as_bytes)).map_err(|e| slot_error(url, e))?;
    let mut user = [0u8; crate::vault::protocol::USER_ID_LEN];
    crate::key::random_bytes(&mut user);
    let user = hex::encode(user);
    let reg = client
        .register(&user, password.expose_secret().as_bytes())
        .map_err(|e| slot_error(url, e))?;
    let params = VaultParams {
        url: url.trim_end_matches('/').to_owned(),
        user,
        server_key: B64.encode(&reg.server_key),
        ca: ca_pem.map(str::to_owned),
    };
    Ok(target
        .into()
        .record(SlotParams::Vault(params), &kek(&reg.export_key)))
}

impl VaultParams {
    fn pinned(&self) -> Result<Vec<u8>, SlotError> {
        B64.decode(self.server_key.as_bytes())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| SlotError::Malformed {
                field: "server_key".into(),
                reason: "not 32 bytes of base64".into(),
            })
    }

    /// Log in with `password` and return the KEK, checked against `wrapped`.
    fn open(
        &self,
        wrapped: &WrappedKey,
        password: &SecretString,
        ctx: &UnlockContext<'_>,
    ) -> Result<Kek, SlotError> {
        if crate::vault::protocol::parse_user(&self.user).is_none() {
            return Err(SlotError::Malformed {
                field: "user".into(),
                reason: "not 32 lowercase hex digits".into(),
            });
        }
        let pinned = self.pinned()?;
        let client = Client::new(&self.url, self.ca.as_deref().map(str::as_bytes))
            .map_err(|e| slot_error(&self.url, e))?;
        let export_key = client
            .login(
                &self.user,
                password.expose_secret().as_bytes(),
                &pinned,
                false,
            )
            .map_err(|e| slot_error(&self.url, e))?;
        let kek = kek(&export_key);
        match ctx.opens(wrapped, &kek) {
            true => Ok(kek),
            false => Err(SlotError::Malformed {
                field: "wrapped".into(),
                reason: "the vault's key does not open it: the slot was altered".into(),
            }),
        }
    }

    /// Delete this slot's record at the server, proving the password (the
    /// server accepts nothing less). Used when `rotate --drop` names a
    /// vault slot, after the new keyring is written.
    pub fn delete_record(&self, password: &SecretString) -> Result<(), SlotError> {
        let pinned = self.pinned()?;
        let client = Client::new(&self.url, self.ca.as_deref().map(str::as_bytes))
            .map_err(|e| slot_error(&self.url, e))?;
        client
            .login(
                &self.user,
                password.expose_secret().as_bytes(),
                &pinned,
                true,
            )
            .map(drop)
            .map_err(|e| slot_error(&self.url, e))
    }
}

impl Slot for VaultParams {
    fn factor(&self) -> Option<FactorKind> {
        Some(FactorKind::Password)
    }

    fn interaction(&self, at_hand: bool) -> Interaction {
        Interaction::typed(at_hand)
    }

    fn spends_a_guess(&self) -> bool {
        true
    }

    fn classical_public_key(&self) -> bool {
        true
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let password = ctx.secret("Vault password")?;
        if password.expose_secret().is_empty() {
            // Never enrolled (enroll refuses it): not worth a guess.
            return Some(Err(SlotError::WrongPassword));
        }
        Some(self.open(wrapped, &password, ctx))
    }

    /// A new record at the same server for the same password (proved on the
    /// old record first): the old record stays, for the archives that carry
    /// it, unless `rotate --drop` names this slot.
    fn rewrap(
        &self,
        wrapped: &WrappedKey,
        target: &Target<'_>,
        ctx: &UnlockContext<'_>,
    ) -> Option<Result<Rewrapped, SlotError>> {
        let password = ctx.secret("Vault password")?;
        let result = (|| {
            self.open(wrapped, &password, ctx)?;
            let record = enroll(target, &self.url, self.ca.as_deref(), &password)?;
            Ok(Rewrapped {
                params: Some(record.params),
                wrapped: record.wrapped,
            })
        })();
        Some(result)
    }

    /// The same server (URL, CA and pinned key); the record at it (`user`)
    /// is the server's to check — `rotate` registers a new one and older
    /// archives carry the old.
    fn same_device(&self, local: &SlotParams) -> bool {
        matches!(local, SlotParams::Vault(l) if VaultParams {
            user: l.user.clone(),
            ..self.clone()
        } == *l)
    }

    fn header_only(&self, locators: &Locators) -> HeaderOnly {
        let Some(url) = locators.vault_url.clone() else {
            return HeaderOnly::Refuse(
                "a header never names a server to contact: name the vault with --vault-url".into(),
            );
        };
        HeaderOnly::Confirm {
            what: format!(
                "send a login for user {} to the vault server {} (a wrong password spends one of its guesses)",
                crate::ui::escaped(&self.user),
                crate::ui::escaped(&url)
            ),
            local: SlotParams::Vault(VaultParams {
                url,
                // A trust anchor is not taken from a header either.
                ca: None,
                ..self.clone()
            }),
        }
    }

    fn describe(&self) -> String {
        format!("OPAQUE at {} (user {})", self.url, &self.user)
    }
}
