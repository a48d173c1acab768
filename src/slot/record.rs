//! What a slot *is* on disk: its id, label, kind and public parameters,
//! and the one registry of kinds this build knows.
//!
//! Owns: the JSON form of a slot (docs/format.md §2) and of a slot list,
//! where a threshold group's members are nested under it (§10) and read
//! back into one flat list, each member naming its group
//! ([`Membership`]); the kind registry (`slot_kinds!` — one list from
//! which parsing, writing and dispatch are generated, so adding a kind
//! cannot leave a `match` behind), slot ids and labels, and choosing slots
//! by an `id|label|kind` argument.
//!
//! Must never: drop or change a slot of a kind it does not know; read a
//! list nested deeper than [`MAX_GROUP_DEPTH`] or longer than
//! [`MAX_SLOTS`] in all.

#[cfg(feature = "fido2")]
use super::fido2;
#[cfg(feature = "pkcs11")]
use super::pkcs11;
#[cfg(feature = "tpm2")]
use super::tpm2;
#[cfg(feature = "vault")]
use super::vault;
#[cfg(feature = "yubikey")]
use super::yubikey;
use super::{Slot, password, recovery, threshold};
use crate::key::{Kek, WRAPPED_LEN, WrappedKey, label};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use std::fmt;

/// Most slots a keyring or archive header may hold, members of threshold
/// groups included.
pub const MAX_SLOTS: usize = 64;

/// Most threshold groups one inside another: a group may have groups as
/// members, and those groups' members may be groups, but no deeper.
pub const MAX_GROUP_DEPTH: usize = 3;

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
        if KNOWN_KINDS.contains(&s) || s == "fido2" {
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
    /// A credential on a FIDO2 security key (hmac-secret).
    Fido2(fido2::Fido2Params) if "fido2";
    /// A password checked by a key vault server (OPAQUE).
    Vault(vault::VaultParams) if "vault";
    /// A threshold group: opens with `need` of its members.
    Threshold(threshold::ThresholdParams);
}

/// Where a member of a threshold group sits: the group's slot id and the
/// member's x coordinate (1–255, never reused within the group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The group's slot id.
    pub group: SlotId,
    /// The x coordinate of the member's share.
    pub x: u8,
}

impl Membership {
    /// The KEK a member wraps its share under, from its kind's KEK:
    /// `HKDF(none, KEK, "coffer/v2 threshold member kek" ‖ 0x00 ‖ group id
    /// ‖ 0x00 ‖ x)` (docs/format.md §10).
    pub fn kek(&self, kek: &Kek) -> Kek {
        let mut info = label::THRESHOLD_MEMBER_KEK.to_vec();
        info.push(0);
        info.extend_from_slice(self.group.as_str().as_bytes());
        info.push(0);
        info.push(self.x);
        Kek::derive(None, kek.expose(), &info)
    }
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
    /// For a member of a threshold group: the group and the member's x.
    pub member: Option<Membership>,
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
            member: None,
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

    /// The JSON object stored for this slot alone (docs/format.md §2): a
    /// member's `x` included, a group's members not ([`slots_to_json`]
    /// nests them).
    pub fn to_json(&self) -> Value {
        // Member order is for people reading the file; the MAC covers the
        // canonical (sorted) form.
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.0.clone()));
        if let Some(l) = &self.label {
            m.insert("label".into(), Value::String(l.0.clone()));
        }
        m.insert("kind".into(), Value::String(self.params.kind().to_owned()));
        if let Some(member) = &self.member {
            m.insert("x".into(), Value::from(member.x));
        }
        m.insert("created".into(), Value::from(self.created));
        m.extend(self.params.to_fields());
        m.insert("wrapped".into(), Value::String(B64.encode(self.wrapped.0)));
        Value::Object(m)
    }

    /// Parse one slot object, not a member of a group. `labels`: whether
    /// the format version allows the `label` member (version 2). Errors
    /// name the field.
    pub fn from_json(v: &Value, labels: bool) -> Result<Self, String> {
        let Value::Object(m) = v else {
            return Err("is not an object".into());
        };
        Self::from_map(m.clone(), labels, None)
    }

    fn from_map(
        mut m: Map<String, Value>,
        labels: bool,
        group: Option<&SlotId>,
    ) -> Result<Self, String> {
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
        let member = match (group, m.remove("x")) {
            (None, None) => None,
            (None, Some(_)) => return Err("field `x` is only for a member of a group".into()),
            (Some(_), None) => return Err("field `x` is missing (a member of a group)".into()),
            (Some(g), Some(x)) => {
                let x = x
                    .as_u64()
                    .and_then(|x| u8::try_from(x).ok())
                    .filter(|x| *x != 0)
                    .ok_or("field `x` is not an integer from 1 to 255")?;
                Some(Membership {
                    group: g.clone(),
                    x,
                })
            }
        };
        let params = SlotParams::from_fields(&kind, m).map_err(|e| format!("({kind}) {e}"))?;
        Ok(Self {
            id,
            label,
            created,
            wrapped: WrappedKey(wrapped),
            params,
            member,
        })
    }
}

/// A flat slot list as stored (docs/format.md §2, §10): every slot that is
/// no group's member, in order, each threshold group with its members
/// nested in its `members` array, in list order.
pub fn slots_to_json(slots: &[SlotRecord]) -> Vec<Value> {
    fn nested(slots: &[SlotRecord], group: Option<&SlotId>) -> Vec<Value> {
        slots
            .iter()
            .filter(|s| s.member.as_ref().map(|m| &m.group) == group)
            .map(|s| {
                let mut v = s.to_json();
                if matches!(s.params, SlotParams::Threshold(_)) {
                    v["members"] = Value::Array(nested(slots, Some(&s.id)));
                }
                v
            })
            .collect()
    }
    nested(slots, None)
}

/// Read a stored slot list into one flat list: each group followed by its
/// members (depth first), each member naming its group. At most
/// [`MAX_SLOTS`] slots in all and [`MAX_GROUP_DEPTH`] groups deep; ids and
/// labels unique across the whole list; a member's `x` unique within its
/// group and below the group's `next_x`. `labels`: the format version
/// allows labels (and groups: version 2). Errors name the slot by its
/// place (`slots[2].members[0]`).
pub fn slots_from_json(list: &[Value], labels: bool) -> Result<Vec<SlotRecord>, String> {
    fn walk(
        list: &[Value],
        labels: bool,
        group: Option<(&SlotId, &threshold::ThresholdParams)>,
        depth: usize,
        at: &str,
        out: &mut Vec<SlotRecord>,
    ) -> Result<(), String> {
        for (i, v) in list.iter().enumerate() {
            let here = format!("{at}[{i}]");
            if out.len() >= MAX_SLOTS {
                return Err(format!(
                    "more than {MAX_SLOTS} slots, members of groups included"
                ));
            }
            let Value::Object(m) = v else {
                return Err(format!("{here}: is not an object"));
            };
            let mut m = m.clone();
            let is_group = m.get("kind") == Some(&Value::String(threshold::KIND.into()));
            if !is_group && m.contains_key("members") {
                // Reserved for groups, whatever the kind (format.md §2).
                return Err(format!(
                    "{here}: field `members` is only for a threshold group"
                ));
            }
            let members = if is_group { m.remove("members") } else { None };
            let rec = SlotRecord::from_map(m, labels, group.map(|g| g.0))
                .map_err(|e| format!("{here}: {e}"))?;
            if out.iter().any(|o| o.id == rec.id) {
                return Err(format!("{here}: id {} appears twice", rec.id));
            }
            if let Some(l) = &rec.label
                && out.iter().any(|o| o.label.as_ref() == Some(l))
            {
                return Err(format!("{here}: label {l} appears twice"));
            }
            if let (Some((gid, g)), Some(m)) = (group, &rec.member) {
                if u16::from(m.x) >= g.next_x {
                    return Err(format!(
                        "{here}: field `x` is {}, not below its group's next_x ({})",
                        m.x, g.next_x
                    ));
                }
                if out.iter().any(|o| {
                    o.member
                        .as_ref()
                        .is_some_and(|o| o.group == *gid && o.x == m.x)
                }) {
                    return Err(format!(
                        "{here}: two members of group {gid} have x = {}",
                        m.x
                    ));
                }
            }
            let params = match &rec.params {
                SlotParams::Threshold(p) => Some(p.clone()),
                _ => None,
            };
            let id = rec.id.clone();
            out.push(rec);
            if let Some(p) = params {
                if !labels {
                    return Err(format!("{here}: a threshold group needs format version 2"));
                }
                if depth >= MAX_GROUP_DEPTH {
                    return Err(format!(
                        "{here}: groups are nested more than {MAX_GROUP_DEPTH} deep"
                    ));
                }
                let members = match members {
                    Some(Value::Array(a)) => a,
                    Some(_) => return Err(format!("{here}: field `members` is not an array")),
                    None => return Err(format!("{here}: field `members` is missing")),
                };
                walk(
                    &members,
                    labels,
                    Some((&id, &p)),
                    depth + 1,
                    &format!("{here}.members"),
                    out,
                )?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(list, labels, None, 0, "slots", &mut out)?;
    Ok(out)
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
