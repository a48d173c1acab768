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
//! Owns the trust rule for unauthenticated data (DESIGN.md; enforced in
//! [`unlock_with`] and nowhere else): a slot read from an archive header is
//! tried only if it is inert (recovery; password within
//! [`UNAUTHENTICATED_KDF_BUDGET`] in all), matches a slot of the owner's
//! keyring member for member ([`archive_candidates`]), or was confirmed
//! through [`Ui::confirm`] — and then with module paths and URLs from
//! [`Locators`], never from the header, and no PIN or PIN source from it.
//!
//! Must never: hold a factor (password, PIN, recovery key) longer than the
//! unwrap, or put one in an error; load code, contact a server or spend a
//! PIN try because an unauthenticated slot said so.

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
    /// Locally trusted names of devices and services (`--tcti`, ...).
    pub locators: &'a Locators,
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

/// Where a slot record was read from, which decides what may be done with
/// it (DESIGN.md, "Trust rule for unauthenticated data").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The owner's own keyring file, or an archive header slot that matches
    /// one of its slots member for member: trusted for the code and
    /// endpoints it names even before the keyring's MAC is checked
    /// (whoever can write that file can already run code as its owner).
    Local,
    /// An archive header, or a keyring read from anywhere else:
    /// attacker-writable until the backup key authenticates it.
    Unauthenticated,
}

/// One slot offered to [`unlock_with`], and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'s> {
    /// The slot as read.
    pub record: &'s SlotRecord,
    /// Where it was read from.
    pub trust: Trust,
}

/// The slots to try for an archive, each with its [`Trust`]: the owner's
/// keyring slots when `keyring_holds_key` (the keyring holds the archive's
/// key), then the header's. A header slot whose id the keyring's slots
/// already use is dropped when they are tried (the keyring's copy wins); one
/// whose parameters equal a keyring slot's member for member is
/// [`Trust::Local`] (it names only what the owner's keyring names); every
/// other header slot is [`Trust::Unauthenticated`].
pub fn archive_candidates<'s>(
    keyring: &'s [SlotRecord],
    keyring_holds_key: bool,
    header: &'s [SlotRecord],
) -> Vec<Candidate<'s>> {
    let mut out: Vec<Candidate<'s>> = Vec::new();
    if keyring_holds_key {
        out.extend(keyring.iter().map(|record| Candidate {
            record,
            trust: Trust::Local,
        }));
    }
    for record in header {
        if keyring_holds_key && keyring.iter().any(|k| k.id == record.id) {
            continue;
        }
        let trust = if keyring.iter().any(|k| k.params == record.params) {
            Trust::Local
        } else {
            Trust::Unauthenticated
        };
        out.push(Candidate { record, trust });
    }
    out
}

/// Names of code and endpoints that come from local trust (options, the
/// environment): what a confirmed header-only slot uses instead of what
/// its header names.
#[derive(Debug, Clone, Default)]
pub struct Locators {
    /// The PKCS#11 module for header-only pkcs11 slots (`--pkcs11-module`;
    /// else `$COFFER_PKCS11_MODULE`).
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The vault server for header-only vault slots (`--vault-url`).
    pub vault_url: Option<String>,
    /// The TPM for every tpm2 slot (`--tcti`; else `$TPM2TOOLS_TCTI`,
    /// `$TCTI`, `device:/dev/tpmrm0`). A slot's own `tcti_hint` is never
    /// used to connect.
    pub tcti: Option<String>,
}

/// Total Argon2id work (KiB-passes, [`password::Cost::work`]) one unlock
/// spends on unauthenticated password slots: twice the default cost. A
/// costlier slot is tried only when it is in the local keyring or named
/// by id with `--slot`.
pub const UNAUTHENTICATED_KDF_BUDGET: u64 =
    2 * password::DEFAULT_M_COST_KIB as u64 * password::DEFAULT_T_COST as u64;

/// What an unlock may use besides the slots.
pub struct UnlockOptions<'a> {
    /// `--slot`: an id or a kind.
    pub selector: Option<&'a str>,
    /// Secrets supplied up front.
    pub factors: &'a Factors,
    /// Messages, prompts and confirmations.
    pub ui: &'a dyn Ui,
    /// Locally trusted module paths and URLs.
    pub locators: &'a Locators,
    /// Total Argon2id work for unauthenticated password slots
    /// ([`UNAUTHENTICATED_KDF_BUDGET`] unless a test lowers it).
    pub kdf_budget: u64,
}

/// Pick the slots to try, in order: the ones `selector` names (id or kind),
/// or all, those that need nobody first, then devices, then prompts.
fn ordered<'c, 's>(
    slots: &'c [Candidate<'s>],
    selector: Option<&str>,
    factors: &Factors,
) -> Result<Vec<&'c Candidate<'s>>, Error> {
    let mut chosen: Vec<&Candidate<'s>> = match selector {
        Some(sel) => {
            let by_id: Vec<_> = slots
                .iter()
                .filter(|s| s.record.id.as_str() == sel)
                .collect();
            let picked = if by_id.is_empty() {
                slots
                    .iter()
                    .filter(|s| s.record.params.kind() == sel)
                    .collect()
            } else {
                by_id
            };
            if picked.is_empty() {
                return Err(Error::Usage(format!(
                    "--slot {}: no slot has that id or kind (`coffer slots` lists them)",
                    crate::ui::escaped(sel)
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
    chosen.sort_by_key(|c| {
        let s = c.record;
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

/// Try `slots` (all from the owner's keyring) in order until one gives up
/// the backup key.
///
/// Returns the key and the slot that opened it. The caller must then check
/// the key id and MAC of whatever the slots came from.
pub fn unlock<'s>(
    slots: &'s [SlotRecord],
    selector: Option<&str>,
    factors: &Factors,
    ui: &dyn Ui,
) -> Result<(BackupKey, &'s SlotRecord), Error> {
    let candidates = archive_candidates(slots, true, &[]);
    let opts = UnlockOptions {
        selector,
        factors,
        ui,
        locators: &Locators::default(),
        kdf_budget: UNAUTHENTICATED_KDF_BUDGET,
    };
    unlock_with(&candidates, &opts)
}

/// What the trust rule allows for one unauthenticated slot.
enum Admission {
    /// Try it with these parameters (locators replaced by local ones).
    Try(Box<SlotRecord>),
    /// Try it as read (an inert slot).
    AsRead,
    /// Do not try it, for this reason.
    Refuse(String),
}

/// Words for a slot read from an archive header alone.
const HEADER_ONLY: &str = "from the archive header only, which is not authenticated yet";

/// The trust rule for one slot from unauthenticated data, in one place: an
/// inert slot (recovery; password within the remaining KDF budget, or named
/// alone by id) is tried as read; any other kind only after the person
/// confirmed, at a prompt showing what will be loaded or contacted, and
/// then with the module path or URL from local trust and never a PIN or
/// PIN source from the header.
fn admit(
    record: &SlotRecord,
    named_alone: bool,
    budget_left: u64,
    opts: &UnlockOptions<'_>,
) -> Admission {
    match &record.params {
        SlotParams::Recovery(_) => return Admission::AsRead,
        SlotParams::Password(p) => {
            let work = p.cost().work();
            return if named_alone || work <= budget_left {
                Admission::AsRead
            } else {
                Admission::Refuse(format!(
                    "{HEADER_ONLY}, and its Argon2id cost (m={} MiB, t={}) is more than is left of the budget for such slots ({} MiB-passes in all); name it alone with --slot {} to try it",
                    p.m_cost_kib / 1024,
                    p.t_cost,
                    UNAUTHENTICATED_KDF_BUDGET / 1024,
                    record.id
                ))
            };
        }
        _ => {}
    }
    let (what, local) = match localized(record, opts.locators) {
        Ok(x) => x,
        Err(why) => return Admission::Refuse(format!("{HEADER_ONLY}, and {why}")),
    };
    let question = format!(
        "Slot {} is {HEADER_ONLY}. Try it? This will {what}.",
        record.label()
    );
    if opts.ui.confirm(&question) {
        Admission::Try(Box::new(local))
    } else {
        Admission::Refuse(format!(
            "{HEADER_ONLY}; trying it would {what}, and that needs a yes at a terminal prompt (none was given)"
        ))
    }
}

/// A non-inert header slot made fit to try: what trying it will load or
/// contact (for the confirmation prompt, strings escaped), and the slot
/// with the module path or URL replaced by the locally trusted one and no
/// PIN source. `Err`: why it cannot be tried at all.
#[cfg_attr(
    not(any(feature = "pkcs11", feature = "vault", feature = "tpm2")),
    allow(unused_variables)
)]
#[cfg_attr(not(any(feature = "pkcs11", feature = "vault")), allow(unused_mut))]
#[cfg_attr(
    not(any(
        feature = "pkcs11",
        feature = "vault",
        feature = "tpm2",
        feature = "yubikey"
    )),
    allow(unreachable_code)
)]
fn localized(record: &SlotRecord, locators: &Locators) -> Result<(String, SlotRecord), String> {
    let mut local = record.clone();
    let what = match &record.params {
        #[cfg(feature = "pkcs11")]
        SlotParams::Pkcs11(p) => {
            let uri = pkcs11::uri::Pkcs11Uri::parse(&p.uri)
                .map_err(|e| format!("its uri is invalid: {}", crate::ui::escaped(&e)))?
                .without_pin();
            // The binary fills this from --pkcs11-module or the
            // environment; the library reads no environment of its own.
            let module = locators
                .pkcs11_module
                .clone()
                .filter(|m| !m.as_os_str().is_empty())
                .ok_or_else(|| {
                    format!(
                        "a header never names code to load: name the token's module with --pkcs11-module or {}",
                        pkcs11::MODULE_ENV
                    )
                })?;
            let what = format!(
                "load the PKCS#11 module {} and log in to {} (a wrong PIN spends one of its tries)",
                crate::ui::escaped(&module.display().to_string()),
                crate::ui::escaped(&uri.describe_token())
            );
            local.params = SlotParams::Pkcs11(pkcs11::Pkcs11Params {
                module: module.display().to_string(),
                uri: uri.to_stored(),
                ..p.clone()
            });
            what
        }
        #[cfg(feature = "vault")]
        SlotParams::Vault(p) => {
            let url = locators.vault_url.clone().ok_or(
                "a header never names a server to contact: name the vault with --vault-url",
            )?;
            let what = format!(
                "send a login for user {} to the vault server {} (a wrong password spends one of its guesses)",
                crate::ui::escaped(&p.user),
                crate::ui::escaped(&url)
            );
            local.params = SlotParams::Vault(vault::VaultParams {
                url,
                // A trust anchor is not taken from a header either.
                ca: None,
                ..p.clone()
            });
            what
        }
        #[cfg(feature = "tpm2")]
        SlotParams::Tpm2(p) => {
            // The TCTI is always local (tpm2 never connects to its hint).
            let mut what = format!(
                "load its sealed object into the TPM at {}",
                crate::ui::escaped(&tpm2::resolve_tcti(locators.tcti.as_deref()))
            );
            if p.pin {
                what += " and send it a PIN (a wrong one counts toward the TPM's lockout)";
            }
            what
        }
        #[cfg(feature = "yubikey")]
        SlotParams::Yubikey(p) => format!(
            "use the YubiKey with serial {} (PIV slot {}) and send it a PIN (a wrong one spends one of its tries)",
            p.serial,
            crate::ui::escaped(&p.piv_slot)
        ),
        SlotParams::Unknown(_) => return Err("its kind is not supported by this build".into()),
        SlotParams::Recovery(_) | SlotParams::Password(_) => {
            return Err("it is inert; nothing to confirm".into());
        }
    };
    Ok((what, local))
}

/// Try `candidates` in order until one gives up the backup key, applying
/// the trust rule to every [`Trust::Unauthenticated`] one (see
/// [`Trust`]): the one place it is enforced.
///
/// Returns the key and the slot (as read) that opened it. The caller must
/// then authenticate whatever the slots came from under that key.
pub fn unlock_with<'s>(
    candidates: &[Candidate<'s>],
    opts: &UnlockOptions<'_>,
) -> Result<(BackupKey, &'s SlotRecord), Error> {
    let mut failure = UnlockFailure {
        attempts: Vec::new(),
        skipped: Vec::new(),
        refused: Vec::new(),
    };
    let chosen = ordered(candidates, opts.selector, opts.factors)?;
    let named_alone = chosen.len() == 1
        && opts
            .selector
            .is_some_and(|sel| chosen[0].record.id.as_str() == sel);
    let mut budget_left = opts.kdf_budget;
    for cand in chosen {
        let slot = cand.record;
        let Some(kind) = slot.params.as_slot() else {
            failure.skipped.push(format!(
                "{} (kind not supported by this build)",
                slot.label()
            ));
            continue;
        };
        let localized = match cand.trust {
            Trust::Local => None,
            Trust::Unauthenticated => match admit(slot, named_alone, budget_left, opts) {
                Admission::AsRead => None,
                Admission::Try(local) => Some(local),
                Admission::Refuse(why) => {
                    failure.refused.push(format!("{}: {why}", slot.label()));
                    continue;
                }
            },
        };
        let used = localized.as_deref().unwrap_or(slot);
        let kind = match &localized {
            Some(l) => match l.params.as_slot() {
                Some(k) => k,
                None => continue,
            },
            None => kind,
        };
        let ctx = UnlockContext {
            factors: opts.factors,
            ui: opts.ui,
            slot: used,
            locators: opts.locators,
        };
        let work_before = password::work_done_on_this_thread();
        let result = kind.unwrap(&used.wrapped, &ctx);
        if cand.trust == Trust::Unauthenticated {
            let spent = password::work_done_on_this_thread().saturating_sub(work_before);
            budget_left = budget_left.saturating_sub(spent);
        }
        match result {
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
        let cands = archive_candidates(&slots, true, &[]);
        let kinds = |f: &Factors| -> Vec<String> {
            ordered(&cands, None, f)
                .unwrap()
                .iter()
                .map(|c| c.record.params.kind().to_owned())
                .collect()
        };
        assert_eq!(kinds(&both), ["password", "recovery", "vault"]);
        let pw_only = Factors {
            password: Some(SecretString::from("pw")),
            ..Factors::default()
        };
        assert_eq!(kinds(&pw_only), ["password", "vault", "recovery"]);
    }

    /// A Ui that answers every confirmation with `yes` and records it.
    #[cfg(feature = "pkcs11")]
    #[derive(Default)]
    struct Yes(Mutex<Vec<String>>);

    #[cfg(feature = "pkcs11")]
    impl Ui for Yes {
        fn message(&self, _: &str) {}
        fn request_secret(&self, _: &str) -> Option<SecretString> {
            None
        }
        fn confirm(&self, q: &str) -> bool {
            self.0.lock().unwrap().push(q.to_owned());
            true
        }
    }

    fn password_slot(bk: &BackupKey, m_cost_kib: u32) -> SlotRecord {
        let cost = password::Cost {
            m_cost_kib,
            t_cost: 1,
            p_cost: 1,
        };
        password::enroll(bk, &SecretString::from("right"), cost).unwrap()
    }

    fn unauthenticated(slots: &[SlotRecord]) -> Vec<Candidate<'_>> {
        archive_candidates(&[], false, slots)
    }

    fn opts<'a>(
        selector: Option<&'a str>,
        factors: &'a Factors,
        ui: &'a dyn Ui,
        locators: &'a Locators,
        kdf_budget: u64,
    ) -> UnlockOptions<'a> {
        UnlockOptions {
            selector,
            factors,
            ui,
            locators,
            kdf_budget,
        }
    }

    #[test]
    fn unauthenticated_password_slots_share_one_kdf_budget() {
        let bk = BackupKey::generate();
        // 16 slots of 256 KiB-passes each; a budget of 1000 fits 3.
        let slots: Vec<_> = (0..16).map(|_| password_slot(&bk, 256)).collect();
        let factors = Factors {
            password: Some(SecretString::from("wrong")),
            ..Factors::default()
        };
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let cands = unauthenticated(&slots);
        let before = password::work_done_on_this_thread();
        let err = unlock_with(&cands, &opts(None, &factors, &ui, &loc, 1000))
            .err()
            .unwrap();
        let spent = password::work_done_on_this_thread() - before;
        assert!(spent <= 1000, "spent {spent} KiB-passes");
        let Error::Unlock(f) = err else { panic!() };
        assert_eq!(f.attempts.len(), 3);
        assert_eq!(f.refused.len(), 13);
        assert!(f.refused[0].contains("--slot"), "{}", f.refused[0]);
        // The same slots from the owner's keyring are all tried.
        let before = password::work_done_on_this_thread();
        let local = archive_candidates(&slots, true, &[]);
        let Error::Unlock(f) = unlock_with(&local, &opts(None, &factors, &ui, &loc, 1000))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(f.attempts.len(), 16);
        assert_eq!(password::work_done_on_this_thread() - before, 16 * 256);
        // Named alone by id, a slot over the budget is tried.
        let id = slots[9].id.as_str().to_owned();
        let right = Factors {
            password: Some(SecretString::from("right")),
            ..Factors::default()
        };
        let (got, used) = unlock_with(&cands, &opts(Some(&id), &right, &ui, &loc, 0)).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.id, slots[9].id);
        // Named by kind, the budget holds.
        let Error::Unlock(f) = unlock_with(&cands, &opts(Some("password"), &right, &ui, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty() && f.refused.len() == 16);
    }

    #[test]
    fn a_header_slot_matching_the_keyring_member_for_member_is_local() {
        let bk = BackupKey::generate();
        let mine = password_slot(&bk, 64);
        let mut copy = mine.clone();
        copy.id = SlotId::parse("c0ffee00").unwrap();
        let other = password_slot(&bk, 64);
        let header = [copy, other];
        let keyring = [mine];
        let c = archive_candidates(&keyring, false, &header);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].trust, Trust::Local);
        assert_eq!(c[1].trust, Trust::Unauthenticated);
        // When the keyring holds the key, its own slots come first and a
        // header slot reusing one of their ids is dropped.
        let same_id = [keyring[0].clone(), header[1].clone()];
        let c = archive_candidates(&keyring, true, &same_id);
        assert_eq!(c.len(), 2);
        assert!(std::ptr::eq(c[0].record, &keyring[0]));
        assert_eq!(c[1].trust, Trust::Unauthenticated);
    }

    #[cfg(feature = "pkcs11")]
    #[test]
    fn a_confirmed_header_pkcs11_slot_uses_the_local_module_and_no_header_pin() {
        let bk = BackupKey::generate();
        let mut point = [9u8; 65];
        point[0] = 4;
        let hostile = SlotRecord::new(
            SlotParams::Pkcs11(pkcs11::Pkcs11Params {
                module: "/mnt/share/evil.so".into(),
                uri: "pkcs11:token=t%1b[2J;object=k?pin-source=/home/me/.ssh/id_ed25519".into(),
                mechanism: "ecdh".into(),
                public_key: Some(B64.encode(point)),
                ephemeral: Some(B64.encode(point)),
                sealed_kek: None,
            }),
            bk.wrap(&crate::key::Kek::generate()),
        );
        let slots = [hostile];
        let cands = unauthenticated(&slots);
        let factors = Factors::default();
        // Refused without a yes, and without a local module.
        let no = crate::ui::NonInteractive::default();
        let loc = Locators {
            pkcs11_module: Some("/nonexistent/local-module.so".into()),
            ..Locators::default()
        };
        let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &no, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty(), "{f}");
        assert!(f.refused[0].contains("terminal prompt"), "{f}");
        // `--slot ID` is no yes.
        let id = slots[0].id.as_str().to_owned();
        let Error::Unlock(f) = unlock_with(&cands, &opts(Some(&id), &factors, &no, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty(), "{f}");
        // With a yes: the local module, never the header's.
        let yes = Yes::default();
        let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &yes, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        let asked = yes.0.lock().unwrap().clone();
        assert!(
            asked[0].contains("/nonexistent/local-module.so"),
            "{asked:?}"
        );
        assert!(
            !asked[0].contains("evil") && !asked[0].contains('\x1b'),
            "{asked:?}"
        );
        let msg = f.to_string();
        assert!(
            msg.contains("local-module.so") && !msg.contains("evil"),
            "{msg}"
        );
        // Without a local module it is not tried, even with a yes.
        let none = Locators::default();
        if std::env::var_os(pkcs11::MODULE_ENV).is_none() {
            let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &yes, &none, 0))
                .err()
                .unwrap()
            else {
                panic!()
            };
            assert!(f.refused[0].contains("--pkcs11-module"), "{f}");
        }
    }

    #[test]
    fn no_non_inert_header_slot_is_tried_without_a_yes() {
        use serde_json::json;
        let common = |kind: &str, id: &str| json!({"id": id, "kind": kind, "created": 0, "wrapped": B64.encode([1u8; 40])});
        #[cfg_attr(
            not(any(
                feature = "tpm2",
                feature = "yubikey",
                feature = "vault",
                feature = "pkcs11"
            )),
            allow(unused_mut)
        )]
        let mut objs: Vec<Value> = vec![common("future-kind", "a5")];
        #[cfg(feature = "tpm2")]
        {
            let mut o = common("tpm2", "a1");
            o["public"] = "AA==".into();
            o["private"] = "AA==".into();
            o["pin"] = false.into();
            objs.push(o);
        }
        #[cfg(feature = "yubikey")]
        {
            let mut o = common("yubikey", "a2");
            o["serial"] = 1.into();
            o["piv_slot"] = "82".into();
            o["public_key"] = "AA==".into();
            o["ephemeral"] = "AA==".into();
            o["pin_policy"] = "once".into();
            o["touch_policy"] = "never".into();
            objs.push(o);
        }
        #[cfg(feature = "vault")]
        {
            let mut o = common("vault", "a3");
            o["url"] = "http://127.0.0.1:9".into();
            o["user"] = "ab".repeat(16).into();
            o["server_key"] = B64.encode([5u8; 32]).into();
            objs.push(o);
        }
        #[cfg(feature = "pkcs11")]
        {
            let mut o = common("pkcs11", "a4");
            o["module"] = "/mnt/share/evil.so".into();
            o["uri"] = "pkcs11:token=t;object=k?pin-value=1".into();
            o["mechanism"] = "aes-gcm".into();
            o["sealed_kek"] = B64.encode([0u8; 60]).into();
            objs.push(o);
        }
        let slots: Vec<SlotRecord> = objs
            .iter()
            .map(|o| SlotRecord::from_json(o).unwrap())
            .collect();
        let cands = unauthenticated(&slots);
        let factors = Factors {
            password: Some(SecretString::from("pw")),
            pin: Some(SecretString::from("1234")),
            recovery_key: None,
        };
        let loc = Locators {
            pkcs11_module: Some("/nonexistent/module.so".into()),
            vault_url: Some("http://127.0.0.1:9".into()),
            tcti: Some("swtpm:host=127.0.0.1,port=9".into()),
        };
        let ui = crate::ui::NonInteractive::default();
        for sel in [None, Some("a1"), Some("a2"), Some("a3"), Some("a4")] {
            let Ok(chosen) = ordered(&cands, sel, &factors) else {
                continue; // a kind this build leaves out
            };
            let n = chosen.len();
            let Error::Unlock(f) = unlock_with(&cands, &opts(sel, &factors, &ui, &loc, 0))
                .err()
                .unwrap()
            else {
                panic!()
            };
            assert!(f.attempts.is_empty(), "{sel:?}: {f}");
            assert_eq!(f.refused.len() + f.skipped.len(), n, "{sel:?}: {f}");
        }
    }
}
