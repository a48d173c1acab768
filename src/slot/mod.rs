//! Slots: the ways to recover the backup key.
//!
//! Every slot is "a way to obtain a 32-byte KEK" plus `AES-KW(KEK, BK)`.
//! [`SlotRecord`] is what the keyring (and every archive header) stores:
//! common fields plus kind-specific public parameters ([`SlotParams`]).
//! [`Slot`] is implemented by each kind's parameters and answers, like age's
//! `Identity::unwrap_stanza`, one of three things: not tried (its factor is
//! not at hand), tried and failed, or the backup key.
//!
//! Slots of a kind this build does not know parse to
//! [`SlotParams::Unknown`] and are written back untouched.
//!
//! Must never: hold a factor (password, PIN, recovery key) longer than the
//! unwrap, or put one in an error.

pub mod password;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod recovery;
#[cfg(feature = "tpm2")]
pub mod tpm2;
#[cfg(feature = "vault")]
pub mod vault;
#[cfg(feature = "yubikey")]
pub mod yubikey;

use crate::error::{Attempt, Error, SlotError, UnlockFailure};
use crate::key::{BackupKey, WRAPPED_LEN, WrappedKey};
use crate::ui::Ui;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::fmt;

/// Most slots a keyring or archive header may hold.
pub const MAX_SLOTS: usize = 64;

/// A slot's id: 8 lowercase hex digits, random, unique within a keyring.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SlotId(String);

impl SlotId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let mut b = [0u8; 4];
        crate::key::random_bytes(&mut b);
        Self(hex::encode(b))
    }

    /// Parse an id: 1 to 32 characters of `[0-9a-z-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        ok.then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotId({})", self.0)
    }
}

/// Secrets supplied up front (from files), so that scripts need no terminal.
#[derive(Default)]
pub struct Factors {
    /// A recovery key, as typed (spaces, dashes and case are ignored).
    pub recovery_key: Option<SecretString>,
    /// A password for password (and vault) slots.
    pub password: Option<SecretString>,
    /// A PIN for hardware slots.
    pub pin: Option<SecretString>,
}

impl fmt::Debug for Factors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Factors")
            .field("recovery_key", &self.recovery_key.is_some())
            .field("password", &self.password.is_some())
            .field("pin", &self.pin.is_some())
            .finish()
    }
}

/// What an unwrap attempt gets to work with.
pub struct UnlockContext<'a> {
    /// Secrets supplied up front.
    pub factors: &'a Factors,
    /// Where to ask for the rest.
    pub ui: &'a dyn Ui,
    /// The slot being unlocked, for prompts and messages.
    pub slot: &'a SlotRecord,
}

impl UnlockContext<'_> {
    /// The supplied secret if there is one, else a prompt, else `None`.
    pub fn secret(&self, supplied: &Option<SecretString>, what: &str) -> Option<SecretString> {
        match supplied {
            Some(s) => Some(s.clone()),
            None => self.ui.request_secret(&format!(
                "{what} for slot {} ({}), empty to skip: ",
                self.slot.id,
                self.slot.params.kind()
            )),
        }
    }
}

/// How much a slot needs from a person, which orders the attempts: slots
/// that need nobody first, then present hardware, then prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Interaction {
    /// Needs nobody: a TPM without PIN, or a factor supplied from a file.
    Unattended,
    /// Needs a device (and perhaps a PIN).
    Device,
    /// Needs a person to type a secret.
    Prompt,
}

impl Interaction {
    /// For a slot whose factor is typed: none needed if it was supplied
    /// (from a file), else a prompt.
    pub fn typed<T>(supplied: &Option<T>) -> Self {
        if supplied.is_some() {
            Interaction::Unattended
        } else {
            Interaction::Prompt
        }
    }
}

/// One kind of slot's behaviour, implemented by its parameters.
pub trait Slot {
    /// How much this slot needs from a person, given what was supplied.
    fn interaction(&self, factors: &Factors) -> Interaction;

    /// Try to recover the backup key from `wrapped`.
    ///
    /// `None`: not tried (the factor is not at hand and cannot be asked
    /// for). `Some(Err)`: tried and failed. `Some(Ok)`: the backup key.
    fn unwrap(
        &self,
        wrapped: &WrappedKey,
        ctx: &UnlockContext<'_>,
    ) -> Option<Result<BackupKey, SlotError>>;

    /// One line of public detail for `coffer slots` (no secrets).
    fn describe(&self) -> String;
}

/// A slot of a kind this build does not know: kept verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownSlot {
    /// The kind name.
    pub kind: String,
    /// Its other fields, as read.
    pub fields: Map<String, Value>,
}

/// Kind-specific public parameters of a slot.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum SlotParams {
    /// A 64-digit recovery key.
    Recovery(recovery::RecoveryParams),
    /// An Argon2id password.
    Password(password::PasswordParams),
    /// A KEK sealed in a TPM 2.0.
    #[cfg(feature = "tpm2")]
    Tpm2(tpm2::Tpm2Params),
    /// A key on a PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    Pkcs11(pkcs11::Pkcs11Params),
    /// A P-256 key in a YubiKey's PIV slot.
    #[cfg(feature = "yubikey")]
    Yubikey(yubikey::YubikeyParams),
    /// A password checked by a key vault server (OPAQUE).
    #[cfg(feature = "vault")]
    Vault(vault::VaultParams),
    /// A kind this build does not know; preserved on rewrite.
    Unknown(UnknownSlot),
}

impl SlotParams {
    /// The kind name as stored.
    pub fn kind(&self) -> &str {
        match self {
            SlotParams::Recovery(_) => recovery::KIND,
            SlotParams::Password(_) => password::KIND,
            #[cfg(feature = "tpm2")]
            SlotParams::Tpm2(_) => tpm2::KIND,
            #[cfg(feature = "pkcs11")]
            SlotParams::Pkcs11(_) => pkcs11::KIND,
            #[cfg(feature = "yubikey")]
            SlotParams::Yubikey(_) => yubikey::KIND,
            #[cfg(feature = "vault")]
            SlotParams::Vault(_) => vault::KIND,
            SlotParams::Unknown(u) => &u.kind,
        }
    }

    /// The behaviour of this kind, if this build knows it.
    pub fn as_slot(&self) -> Option<&dyn Slot> {
        match self {
            SlotParams::Recovery(p) => Some(p),
            SlotParams::Password(p) => Some(p),
            #[cfg(feature = "tpm2")]
            SlotParams::Tpm2(p) => Some(p),
            #[cfg(feature = "pkcs11")]
            SlotParams::Pkcs11(p) => Some(p),
            #[cfg(feature = "yubikey")]
            SlotParams::Yubikey(p) => Some(p),
            #[cfg(feature = "vault")]
            SlotParams::Vault(p) => Some(p),
            SlotParams::Unknown(_) => None,
        }
    }

    fn from_fields(kind: &str, fields: Map<String, Value>) -> Result<Self, String> {
        let v = Value::Object(fields.clone());
        let typed = |e: serde_json::Error| e.to_string();
        Ok(match kind {
            recovery::KIND => SlotParams::Recovery(serde_json::from_value(v).map_err(typed)?),
            password::KIND => SlotParams::Password(serde_json::from_value(v).map_err(typed)?),
            #[cfg(feature = "tpm2")]
            tpm2::KIND => SlotParams::Tpm2(serde_json::from_value(v).map_err(typed)?),
            #[cfg(feature = "pkcs11")]
            pkcs11::KIND => SlotParams::Pkcs11(serde_json::from_value(v).map_err(typed)?),
            #[cfg(feature = "yubikey")]
            yubikey::KIND => SlotParams::Yubikey(serde_json::from_value(v).map_err(typed)?),
            #[cfg(feature = "vault")]
            vault::KIND => SlotParams::Vault(serde_json::from_value(v).map_err(typed)?),
            _ => SlotParams::Unknown(UnknownSlot {
                kind: kind.to_owned(),
                fields,
            }),
        })
    }

    fn to_fields(&self) -> Map<String, Value> {
        let v = match self {
            SlotParams::Recovery(p) => serde_json::to_value(p),
            SlotParams::Password(p) => serde_json::to_value(p),
            #[cfg(feature = "tpm2")]
            SlotParams::Tpm2(p) => serde_json::to_value(p),
            #[cfg(feature = "pkcs11")]
            SlotParams::Pkcs11(p) => serde_json::to_value(p),
            #[cfg(feature = "yubikey")]
            SlotParams::Yubikey(p) => serde_json::to_value(p),
            #[cfg(feature = "vault")]
            SlotParams::Vault(p) => serde_json::to_value(p),
            SlotParams::Unknown(u) => return u.fields.clone(),
        }
        .expect("slot parameters serialize");
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// One slot as stored in the keyring and in archive headers.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRecord {
    /// Unique id within the keyring.
    pub id: SlotId,
    /// Unix time of enrollment.
    pub created: u64,
    /// `AES-KW(KEK, BK)`.
    pub wrapped: WrappedKey,
    /// The kind and its public parameters.
    pub params: SlotParams,
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SlotRecord {
    /// A new record for `params`, wrapping `bk` under the factor's KEK.
    pub fn new(params: SlotParams, wrapped: WrappedKey) -> Self {
        Self {
            id: SlotId::generate(),
            created: now_unix(),
            wrapped,
            params,
        }
    }

    /// `id (kind)`, for messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.id, self.params.kind())
    }

    /// The JSON object stored for this slot (docs/format.md).
    pub fn to_json(&self) -> Value {
        // Member order is for people reading the file; the MAC covers the
        // canonical (sorted) form.
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.0.clone()));
        m.insert("kind".into(), Value::String(self.params.kind().to_owned()));
        m.insert("created".into(), Value::from(self.created));
        m.extend(self.params.to_fields());
        m.insert("wrapped".into(), Value::String(B64.encode(self.wrapped.0)));
        Value::Object(m)
    }

    /// Parse one slot object. Errors name the field.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let Value::Object(m) = v else {
            return Err("is not an object".into());
        };
        let mut m = m.clone();
        let mut take_str = |k: &str| -> Result<String, String> {
            match m.remove(k) {
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(format!("field `{k}` is not a string")),
                None => Err(format!("field `{k}` is missing")),
            }
        };
        let id = take_str("id")?;
        let kind = take_str("kind")?;
        let wrapped = take_str("wrapped")?;
        let id = SlotId::parse(&id).ok_or("field `id` is not a valid slot id")?;
        if kind.is_empty()
            || kind.len() > 32
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("field `kind` is not a valid kind name".into());
        }
        let wrapped = B64
            .decode(wrapped.as_bytes())
            .ok()
            .and_then(|b| <[u8; WRAPPED_LEN]>::try_from(b).ok())
            .ok_or("field `wrapped` is not 40 bytes of base64")?;
        let created = match m.remove("created") {
            Some(v) => v.as_u64().ok_or("field `created` is not an integer")?,
            None => return Err("field `created` is missing".into()),
        };
        let params = SlotParams::from_fields(&kind, m).map_err(|e| format!("({kind}) {e}"))?;
        Ok(Self {
            id,
            created,
            wrapped: WrappedKey(wrapped),
            params,
        })
    }
}

/// Pick the slots to try, in order: the one `selector` names (id or kind),
/// or all, those that need nobody first, then devices, then prompts.
fn ordered<'s>(
    slots: &'s [SlotRecord],
    selector: Option<&str>,
    factors: &Factors,
) -> Result<Vec<&'s SlotRecord>, Error> {
    let mut chosen: Vec<&SlotRecord> = match selector {
        Some(sel) => {
            let by_id: Vec<_> = slots.iter().filter(|s| s.id.as_str() == sel).collect();
            let picked = if by_id.is_empty() {
                slots.iter().filter(|s| s.params.kind() == sel).collect()
            } else {
                by_id
            };
            if picked.is_empty() {
                return Err(Error::Usage(format!(
                    "--slot {sel}: no slot has that id or kind (`coffer slots` lists them)"
                )));
            }
            picked
        }
        None => slots.iter().collect(),
    };
    // Stable: keyring order within each class; among equals, a vault slot
    // goes after every slot whose failure costs nothing (a wrong try burns
    // one of its guesses for good), and the recovery key goes last (it is
    // the factor of last resort, kept in a drawer) unless it was supplied.
    chosen.sort_by_key(|s| {
        let class = s
            .params
            .as_slot()
            .map(|k| k.interaction(factors))
            .unwrap_or(Interaction::Prompt);
        let costs_a_guess = s.params.kind() == "vault";
        let recovery = matches!(s.params, SlotParams::Recovery(_));
        (class, costs_a_guess && !recovery, recovery)
    });
    Ok(chosen)
}

/// Try `slots` in order until one gives up the backup key.
///
/// Returns the key and the slot that opened it. The caller must then check
/// the key id and MAC of whatever the slots came from.
pub fn unlock<'s>(
    slots: &'s [SlotRecord],
    selector: Option<&str>,
    factors: &Factors,
    ui: &dyn Ui,
) -> Result<(BackupKey, &'s SlotRecord), Error> {
    let mut failure = UnlockFailure {
        attempts: Vec::new(),
        skipped: Vec::new(),
    };
    for slot in ordered(slots, selector, factors)? {
        let Some(kind) = slot.params.as_slot() else {
            failure.skipped.push(format!(
                "{} (kind not supported by this build)",
                slot.label()
            ));
            continue;
        };
        let ctx = UnlockContext { factors, ui, slot };
        match kind.unwrap(&slot.wrapped, &ctx) {
            None => failure.skipped.push(slot.label()),
            Some(Ok(bk)) => return Ok((bk, slot)),
            Some(Err(error)) => failure.attempts.push(Attempt {
                slot: slot.label(),
                error,
            }),
        }
    }
    Err(Error::Unlock(failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A Ui that records the prompts it was shown and answers nothing.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Ui for Recorder {
        fn message(&self, _: &str) {}
        fn request_secret(&self, prompt: &str) -> Option<SecretString> {
            self.0.lock().unwrap().push(prompt.to_owned());
            None
        }
    }

    fn slots() -> (BackupKey, Vec<SlotRecord>) {
        let (bk, slots, _) = slots_and_key();
        (bk, slots)
    }

    fn slots_and_key() -> (BackupKey, Vec<SlotRecord>, recovery::RecoveryKey) {
        let bk = BackupKey::generate();
        let (rec, key) = recovery::enroll(&bk);
        let cheap = password::Cost {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let pw = password::enroll(&bk, &SecretString::from("pw"), cheap).unwrap();
        (bk, vec![rec, pw], key)
    }

    #[test]
    fn prompts_ask_for_the_password_before_the_recovery_key() {
        let (_, slots) = slots();
        let ui = Recorder::default();
        let err = unlock(&slots, None, &Factors::default(), &ui)
            .err()
            .unwrap();
        let asked = ui.0.lock().unwrap().clone();
        assert!(asked[0].starts_with("Password"), "{asked:?}");
        assert!(asked[1].starts_with("Recovery key"), "{asked:?}");
        // Nothing was tried: exit 5, both listed as skipped.
        let Error::Unlock(f) = err else { panic!() };
        assert_eq!(f.skipped.len(), 2);
        assert_eq!(f.exit_status(), crate::ExitStatus::NoUsableSlot);
    }

    #[test]
    fn a_supplied_factor_is_used_without_prompting() {
        let (bk, slots) = slots();
        let ui = Recorder::default();
        let factors = Factors {
            password: Some(SecretString::from("pw")),
            ..Factors::default()
        };
        let (got, used) = unlock(&slots, None, &factors, &ui).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.params.kind(), "password");
        assert!(ui.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_wrong_factor_falls_through_to_the_next_slot() {
        let (bk, slots, key) = slots_and_key();
        let ui = crate::ui::NonInteractive::default();
        let mut factors = Factors {
            password: Some(SecretString::from("wrong")),
            ..Factors::default()
        };
        let Error::Unlock(f) = unlock(&slots, None, &factors, &ui).err().unwrap() else {
            panic!()
        };
        assert_eq!(f.exit_status(), crate::ExitStatus::WrongFactor);
        factors.recovery_key = Some(SecretString::from(key.display().to_string()));
        let (got, used) = unlock(&slots, None, &factors, &ui).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.params.kind(), "recovery");
    }

    #[cfg(feature = "vault")]
    #[test]
    fn vault_slots_are_tried_after_slots_whose_failure_costs_nothing() {
        let (_, mut slots, _) = slots_and_key();
        let vault = SlotRecord::new(
            SlotParams::Vault(vault::VaultParams {
                url: "http://127.0.0.1:1".into(),
                user: "00".repeat(16),
                server_key: B64.encode([0u8; 32]),
                ca: None,
            }),
            slots[0].wrapped.clone(),
        );
        slots.insert(0, vault);
        let both = Factors {
            password: Some(SecretString::from("pw")),
            recovery_key: Some(SecretString::from("x")),
            ..Factors::default()
        };
        let kinds = |f: &Factors| -> Vec<String> {
            ordered(&slots, None, f)
                .unwrap()
                .iter()
                .map(|s| s.params.kind().to_owned())
                .collect()
        };
        assert_eq!(kinds(&both), ["password", "recovery", "vault"]);
        let pw_only = Factors {
            password: Some(SecretString::from("pw")),
            ..Factors::default()
        };
        assert_eq!(kinds(&pw_only), ["password", "vault", "recovery"]);
    }
}
