//! What a slot *is* on disk: its id, label, kind and public parameters,
//! and the one registry of kinds this build knows.
//!
//! Owns: the JSON form of a slot (docs/format.md §2), the kind registry
//! (`slot_kinds!` — one list from which parsing, writing and dispatch
//! are generated, so adding a kind cannot leave a `match` behind), slot
//! ids and labels, and choosing slots by an `id|label|kind` argument.
//!
//! Must never: drop or change a slot of a kind it does not know.

#[cfg(feature = "pkcs11")]
use super::pkcs11;
#[cfg(feature = "tpm2")]
use super::tpm2;
#[cfg(feature = "vault")]
use super::vault;
#[cfg(feature = "yubikey")]
use super::yubikey;
use super::{Slot, password, recovery};
use crate::key::{WRAPPED_LEN, WrappedKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use std::fmt;

/// Most slots a keyring or archive header may hold.
pub const MAX_SLOTS: usize = 64;

/// Longest slot label, bytes.
pub const MAX_LABEL_LEN: usize = 64;

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

/// A slot's label: a name the owner chose (`--label`), 1 to 64 characters
/// of `[A-Za-z0-9._-]` starting with a letter, never a kind name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    /// Parse a label, saying what is wrong with a bad one.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_LABEL_LEN {
            return Err(format!("a label is 1 to {MAX_LABEL_LEN} characters"));
        }
        if !s.as_bytes()[0].is_ascii_alphabetic() {
            return Err("a label starts with a letter".into());
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("a label is letters, digits, `.`, `_` and `-`".into());
        }
        if KNOWN_KINDS.contains(&s) || s == "fido2" || s == "threshold" {
            return Err(format!(
                "`{s}` names a kind of slot; a label must not, or `--slot {s}` would be ambiguous"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({})", self.0)
    }
}

/// A slot of a kind this build does not know: kept verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownSlot {
    /// The kind name.
    pub kind: String,
    /// Its other fields, as read.
    pub fields: Map<String, Value>,
}

/// The registry of kinds: each line names the variant, the module (which
/// defines `KIND` and the parameter type, which implements [`Slot`] and
/// serde), and the feature it needs. Everything that dispatches on the
/// kind is generated from this one list.
macro_rules! slot_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident ($module:ident :: $ty:ident) $(if $feat:literal)? ;)*) => {
        /// Kind-specific public parameters of a slot, typed and checked
        /// when the slot is read.
        #[non_exhaustive]
        #[derive(Debug, Clone, PartialEq)]
        pub enum SlotParams {
            $(
                $(#[doc = $doc])*
                $(#[cfg(feature = $feat)])?
                $variant($module::$ty),
            )*
            /// A kind this build does not know; preserved on rewrite.
            Unknown(UnknownSlot),
        }

        /// The kinds this build implements, as stored.
        pub const KNOWN_KINDS: &[&str] = &[$( $(#[cfg(feature = $feat)])? $module::KIND, )*];

        impl SlotParams {
            /// The kind name as stored.
            pub fn kind(&self) -> &str {
                match self {
                    $( $(#[cfg(feature = $feat)])? SlotParams::$variant(_) => $module::KIND, )*
                    SlotParams::Unknown(u) => &u.kind,
                }
            }

            /// The behaviour of this kind, if this build knows it.
            pub fn as_slot(&self) -> Option<&dyn Slot> {
                match self {
                    $( $(#[cfg(feature = $feat)])? SlotParams::$variant(p) => Some(p), )*
                    SlotParams::Unknown(_) => None,
                }
            }

            fn from_fields(kind: &str, fields: Map<String, Value>) -> Result<Self, String> {
                $(
                    $(#[cfg(feature = $feat)])?
                    if kind == $module::KIND {
                        let p: $module::$ty = serde_json::from_value(Value::Object(fields))
                            .map_err(|e| e.to_string())?;
                        return Ok(SlotParams::$variant(p));
                    }
                )*
                Ok(SlotParams::Unknown(UnknownSlot {
                    kind: kind.to_owned(),
                    fields,
                }))
            }

            fn to_fields(&self) -> Map<String, Value> {
                let v = match self {
                    $( $(#[cfg(feature = $feat)])? SlotParams::$variant(p) => serde_json::to_value(p), )*
                    SlotParams::Unknown(u) => return u.fields.clone(),
                }
                .expect("slot parameters serialize");
                match v {
                    Value::Object(m) => m,
                    _ => Map::new(),
                }
            }
        }
    };
}

slot_kinds! {
    /// A 64-digit recovery key.
    Recovery(recovery::RecoveryParams);
    /// An Argon2id password.
    Password(password::PasswordParams);
    /// A KEK sealed in a TPM 2.0.
    Tpm2(tpm2::Tpm2Params) if "tpm2";
    /// A key on a PKCS#11 token.
    Pkcs11(pkcs11::Pkcs11Params) if "pkcs11";
    /// A P-256 key in a YubiKey's PIV slot.
    Yubikey(yubikey::YubikeyParams) if "yubikey";
    /// A password checked by a key vault server (OPAQUE).
    Vault(vault::VaultParams) if "vault";
}

/// One slot as stored in the keyring and in archive headers.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRecord {
    /// Unique id within the keyring.
    pub id: SlotId,
    /// The owner's name for it (format version 2), unique within the keyring.
    pub label: Option<Label>,
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
    /// A new record for `params` holding `wrapped`, with a fresh id.
    pub fn new(params: SlotParams, wrapped: WrappedKey) -> Self {
        Self {
            id: SlotId::generate(),
            label: None,
            created: now_unix(),
            wrapped,
            params,
        }
    }

    /// `id (kind)` or `id "label" (kind)`, for messages; the label is
    /// escaped (it may come from an archive header).
    pub fn name(&self) -> String {
        match &self.label {
            Some(l) => format!(
                "{} \"{}\" ({})",
                self.id,
                crate::ui::escaped(l.as_str()),
                self.params.kind()
            ),
            None => format!("{} ({})", self.id, self.params.kind()),
        }
    }

    /// Whether `selector` names this slot: its id, its label or its kind.
    pub fn answers_to(&self, selector: &str) -> bool {
        self.id.as_str() == selector
            || self.label.as_ref().is_some_and(|l| l.as_str() == selector)
            || self.params.kind() == selector
    }

    /// The JSON object stored for this slot (docs/format.md).
    pub fn to_json(&self) -> Value {
        // Member order is for people reading the file; the MAC covers the
        // canonical (sorted) form.
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.0.clone()));
        if let Some(l) = &self.label {
            m.insert("label".into(), Value::String(l.0.clone()));
        }
        m.insert("kind".into(), Value::String(self.params.kind().to_owned()));
        m.insert("created".into(), Value::from(self.created));
        m.extend(self.params.to_fields());
        m.insert("wrapped".into(), Value::String(B64.encode(self.wrapped.0)));
        Value::Object(m)
    }

    /// Parse one slot object. `labels`: whether the format version allows
    /// the `label` member (version 2). Errors name the field.
    pub fn from_json(v: &Value, labels: bool) -> Result<Self, String> {
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
        let label = match m.remove("label") {
            None => None,
            Some(_) if !labels => {
                return Err("field `label` needs format version 2".into());
            }
            Some(Value::String(s)) => Some(
                Label::parse(&s)
                    .map_err(|e| format!("field `label` is invalid: {}", crate::ui::escaped(&e)))?,
            ),
            Some(_) => return Err("field `label` is not a string".into()),
        };
        let params = SlotParams::from_fields(&kind, m).map_err(|e| format!("({kind}) {e}"))?;
        Ok(Self {
            id,
            label,
            created,
            wrapped: WrappedKey(wrapped),
            params,
        })
    }
}

/// Which slots an `id|label|kind` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The one slot with that id or label (index into the list).
    One(usize),
    /// Every slot of that kind (indices; at least one).
    Kind(Vec<usize>),
}

impl Selection {
    /// The slots chosen, as indices.
    pub fn indices(&self) -> Vec<usize> {
        match self {
            Selection::One(i) => vec![*i],
            Selection::Kind(v) => v.clone(),
        }
    }
}

/// Find what `selector` names among `slots`: an id, a label or a kind.
/// `Err` (a usage error's words) when it names nothing, or names one slot
/// by id and another by label (ambiguous).
pub fn select(slots: &[SlotRecord], selector: &str, option: &str) -> Result<Selection, String> {
    let shown = crate::ui::escaped(selector);
    let by_id = slots.iter().position(|s| s.id.as_str() == selector);
    let by_label = slots
        .iter()
        .position(|s| s.label.as_ref().is_some_and(|l| l.as_str() == selector));
    let by_kind: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].params.kind() == selector)
        .collect();
    let mut ones: Vec<usize> = by_id.into_iter().chain(by_label).collect();
    ones.dedup();
    if ones.len() > 1 || (!ones.is_empty() && !by_kind.is_empty()) {
        return Err(format!(
            "{option} {shown} is ambiguous: it is the id, label or kind of different slots; use the slot's id"
        ));
    }
    if let Some(&i) = ones.first() {
        return Ok(Selection::One(i));
    }
    if !by_kind.is_empty() {
        return Ok(Selection::Kind(by_kind));
    }
    Err(format!(
        "{option} {shown}: no slot has that id, label or kind (`coffer slots` lists them)"
    ))
}

/// [`select`] for an argument that must name exactly one slot (`remove`,
/// `--replace`, `--drop`): a kind is accepted when one slot has it.
pub fn select_one(slots: &[SlotRecord], selector: &str, option: &str) -> Result<usize, String> {
    match select(slots, selector, option)? {
        Selection::One(i) => Ok(i),
        Selection::Kind(v) if v.len() == 1 => Ok(v[0]),
        Selection::Kind(v) => Err(format!(
            "{option} {}: {} slots are of that kind ({}); name one by id or label",
            crate::ui::escaped(selector),
            v.len(),
            v.iter()
                .map(|&i| slots[i].name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
