//! The keyring file: the key id, the sealing public key and a sealer (format
//! version 2), and the slots, as versioned JSON text, authenticated by
//! HMAC-SHA256 under a key derived from the backup key (docs/format.md §3,
//! §8.8).
//!
//! Owns: parsing (with limits, errors naming the field), the canonical form
//! the MAC covers, checking key id, sealer and MAC after every unlock,
//! upgrading a version 1 keyring, the seal-only keyring a host is given,
//! atomic 0600 writes, and the lock that serialises read-modify-write.
//!
//! Must never: write a keyring whose MAC was not computed from the backup
//! key just unlocked, drop a slot it does not understand, print a sealer
//! key, or unlock through a seal-only keyring.
//!
//! The JSON rules and canonical form live in [`json`] (shared with the
//! archive header), the file, its atomic writes and its lock in [`file`].

mod file;
pub mod json;

pub use file::{KeyringFile, KeyringLock};
pub use json::{canonical_json, parse_strict_json};

use crate::error::{Error, Result};
use crate::key::{BackupKey, KEY_LEN, KeyId, label};
use crate::sealing::{Sealer, SealerId, SealerKey, SealingPublicKey};
use crate::slot::{self, Factors, MAX_SLOTS, SlotRecord};
use crate::ui::Ui;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use std::path::Path;

/// The `format` field of every keyring.
pub const FORMAT: &str = "coffer-keyring";
/// The keyring version this build writes (it reads 1 and 2). Version 2
/// adds slot labels, the sealing public key and a sealer.
pub const VERSION: u64 = 2;
/// Largest keyring file accepted, bytes.
pub const MAX_FILE_LEN: u64 = 1 << 20;

use crate::key::HmacSha256;

/// What a version 2 keyring seals with (docs/format.md §8.8).
#[derive(Debug)]
struct Sealing {
    sealer: Sealer,
    /// The version 1 key id of `BK`, kept by an upgraded keyring until
    /// `rotate`, so archives sealed before the upgrade find it.
    v1_key_id: Option<KeyId>,
    /// Key ids that `rotate` retired, oldest first (at most
    /// [`MAX_RETIRED`]): archives sealed to them are flagged on opening.
    retired: Vec<KeyId>,
}

/// Most retired key ids a keyring keeps (the oldest are dropped).
pub const MAX_RETIRED: usize = 256;

/// The owner's slots and the key id they all unwrap to; in version 2 also
/// the sealing public key and the sealer this keyring seals as.
#[derive(Debug)]
pub struct Keyring {
    /// The key id: of the sealing public key (version 2), of `BK` (a
    /// version 1 keyring, until upgraded).
    pub key_id: KeyId,
    /// The slots, in order.
    pub slots: Vec<SlotRecord>,
    /// `None`: a version 1 keyring (or a pre-release version 2 one with
    /// labels only), which [`Keyring::upgrade`] brings to version 2.
    sealing: Option<Sealing>,
    mac: [u8; 32],
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Keyring {
    /// An owner's keyring for `bk` holding `slots`, MAC computed.
    pub fn new(bk: &BackupKey, slots: Vec<SlotRecord>) -> Self {
        Self::sealing_as(bk, Sealer::owner(bk), slots, Vec::new())
    }

    /// A version 2 keyring of `bk` that seals with `sealer`, MAC computed.
    fn sealing_as(
        bk: &BackupKey,
        sealer: Sealer,
        slots: Vec<SlotRecord>,
        retired: Vec<KeyId>,
    ) -> Self {
        let mut k = Self {
            key_id: sealer.key_id(),
            slots,
            sealing: Some(Sealing {
                sealer,
                v1_key_id: None,
                retired,
            }),
            mac: [0; 32],
        };
        k.mac = k.compute_mac(bk);
        k
    }

    /// A version 1 keyring for `bk`, as builds before format 2 wrote them:
    /// for vectors and the tests of the upgrade. coffer writes version 2.
    #[doc(hidden)]
    pub fn v1(bk: &BackupKey, slots: Vec<SlotRecord>) -> Self {
        let mut k = Self {
            key_id: bk.key_id_v1(),
            slots,
            sealing: None,
            mac: [0; 32],
        };
        k.mac = k.compute_mac(bk);
        k
    }

    /// The keyring for a host that seals and never opens, sealing as `id`
    /// with `slots` (the caller's choice of this keyring's slots): the same
    /// public key, that host's sealer key, a MAC under `bk`. Call after
    /// [`Self::verify`] (the public key it copies is then `bk`'s).
    pub fn seal_only(&self, bk: &BackupKey, id: SealerId, slots: Vec<SlotRecord>) -> Self {
        Self::sealing_as(bk, Sealer::derive(bk, id), slots, Vec::new())
    }

    /// The format version: 2 once the keyring has a sealing key.
    pub fn version(&self) -> u64 {
        match self.sealing {
            Some(_) => 2,
            None => format_version(&self.slots),
        }
    }

    /// What this keyring seals with; `None` for a version 1 keyring, which
    /// must be unlocked and [upgraded](Self::upgrade) first.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealing.as_ref().map(|s| &s.sealer)
    }

    /// Whether this keyring only seals (a host's, from `export
    /// --seal-only`): its sealer is not `owner`.
    pub fn is_seal_only(&self) -> bool {
        self.sealer().is_some_and(|s| !s.id().is_owner())
    }

    /// The version 1 key id an upgraded keyring keeps.
    pub fn v1_key_id(&self) -> Option<KeyId> {
        self.sealing.as_ref().and_then(|s| s.v1_key_id)
    }

    /// Whether an archive of format `version` with key id `id` was sealed
    /// under this keyring's key (docs/format.md §8.7): a version 2 archive
    /// by a version 2 keyring's `key_id`; a version 1 archive by a version
    /// 1 keyring's `key_id` or a version 2 keyring's `v1_key_id`.
    pub fn holds_key(&self, version: u16, id: &KeyId) -> bool {
        match (version, &self.sealing) {
            (1, None) => self.key_id == *id,
            (1, Some(s)) => s.v1_key_id.as_ref() == Some(id),
            (_, Some(_)) => self.key_id == *id,
            (_, None) => false,
        }
    }

    /// The key ids `rotate` retired (oldest first).
    pub fn retired_key_ids(&self) -> &[KeyId] {
        self.sealing.as_ref().map_or(&[], |s| &s.retired)
    }

    /// Whether `id` is a key `rotate` retired from this keyring.
    pub fn is_retired(&self, id: &KeyId) -> bool {
        self.retired_key_ids().contains(id)
    }

    /// The keyring that replaces this one at `rotate`: `slots` for
    /// `new_bk`, remembering this keyring's key ids (and those it had
    /// retired) as retired, so archives sealed to them later are flagged.
    pub fn rotated(&self, new_bk: &BackupKey, slots: Vec<SlotRecord>) -> Self {
        let mut retired: Vec<KeyId> = self.retired_key_ids().to_vec();
        retired.push(self.key_id);
        if let Some(v1) = self.v1_key_id() {
            retired.push(v1);
        }
        let excess = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..excess);
        Self::sealing_as(new_bk, Sealer::owner(new_bk), slots, retired)
    }

    /// Bring a version 1 keyring to version 2 under `bk` (which unlocked
    /// it and passed [`Self::verify`]): the sealing public key, the owner's
    /// sealer, the new key id, the old one kept as `v1_key_id`. Returns
    /// whether anything changed.
    pub fn upgrade(&mut self, bk: &BackupKey) -> bool {
        if self.sealing.is_some() {
            return false;
        }
        let sealer = Sealer::owner(bk);
        let v1 = self.key_id;
        self.key_id = sealer.key_id();
        self.sealing = Some(Sealing {
            sealer,
            v1_key_id: Some(v1),
            retired: Vec::new(),
        });
        self.mac = self.compute_mac(bk);
        true
    }

    /// The JSON value the MAC covers: everything but `mac`.
    fn body(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("version".into(), self.version().into());
        m.insert("key_id".into(), self.key_id.to_string().into());
        if let Some(s) = &self.sealing {
            if let Some(v1) = &s.v1_key_id {
                m.insert("v1_key_id".into(), v1.to_string().into());
            }
            m.insert(
                "sealing_public_key".into(),
                B64.encode(s.sealer.public_key().as_bytes()).into(),
            );
            let mut sealer = Map::new();
            sealer.insert("id".into(), s.sealer.id().as_str().into());
            sealer.insert("key".into(), B64.encode(s.sealer.key().expose()).into());
            m.insert("sealer".into(), Value::Object(sealer));
            if !s.retired.is_empty() {
                m.insert(
                    "retired_key_ids".into(),
                    Value::Array(s.retired.iter().map(|k| k.to_string().into()).collect()),
                );
            }
        }
        m.insert(
            "slots".into(),
            Value::Array(crate::slot::record::slots_to_json(&self.slots)),
        );
        m
    }

    fn mac_state(&self, bk: &BackupKey) -> HmacSha256 {
        let key = bk.derive(None, label::KEYRING_MAC);
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        canonical_json(&Value::Object(self.body()), &mut bytes);
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(key.as_ref()).expect("any key length");
        mac.update(&bytes);
        mac
    }

    fn compute_mac(&self, bk: &BackupKey) -> [u8; 32] {
        self.mac_state(bk).finalize().into_bytes().into()
    }

    /// The file's bytes: pretty JSON, members in a fixed order, newline.
    /// They hold the sealer key: write them only to a 0600 file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = self.body();
        m.insert("mac".into(), B64.encode(self.mac).into());
        // Fixed, readable member order for people; the MAC does not depend on it.
        let mut ordered = serde_json::Map::new();
        for k in [
            "format",
            "version",
            "key_id",
            "v1_key_id",
            "sealing_public_key",
            "sealer",
            "retired_key_ids",
            "slots",
            "mac",
        ] {
            if let Some(v) = m.remove(k) {
                ordered.insert(k.into(), v);
            }
        }
        let mut out = serde_json::to_vec_pretty(&Value::Object(ordered)).expect("serializes");
        out.push(b'\n');
        out
    }

    /// Parse keyring bytes. Errors name the field; `path` is for messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |what: String| Error::KeyringCorrupt {
            path: path.to_path_buf(),
            what,
        };
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(corrupt(format!("larger than {MAX_FILE_LEN} bytes")));
        }
        let v = parse_strict_json(bytes)
            .map_err(|e| corrupt(format!("not JSON as a keyring must be: {e}")))?;
        let Value::Object(mut m) = v else {
            return Err(corrupt("is not a JSON object".into()));
        };
        match m.remove("format") {
            Some(Value::String(s)) if s == FORMAT => {}
            _ => return Err(corrupt(format!("field `format` is not \"{FORMAT}\""))),
        }
        let version = m.remove("version").and_then(|v| v.as_u64());
        match version {
            Some(1 | 2) => {}
            Some(n) => {
                return Err(Error::Refused(format!(
                    "keyring {} is version {n}; this coffer reads versions 1 to {VERSION}: upgrade coffer",
                    path.display()
                )));
            }
            None => {
                return Err(corrupt(
                    "field `version` is missing or not an integer".into(),
                ));
            }
        }
        let key_id_field = |m: &mut Map<String, Value>, name: &str| -> Result<Option<KeyId>> {
            match m.remove(name) {
                None => Ok(None),
                Some(Value::String(s)) => KeyId::from_hex(&s).map(Some).ok_or_else(|| {
                    corrupt(format!("field `{name}` is not 32 lowercase hex digits"))
                }),
                Some(_) => Err(corrupt(format!("field `{name}` is not a string"))),
            }
        };
        let key_id = key_id_field(&mut m, "key_id")?
            .ok_or_else(|| corrupt("field `key_id` is missing".into()))?;
        let mac = match m.remove("mac") {
            Some(Value::String(s)) => *decode_b64::<32>(&s)
                .ok_or_else(|| corrupt("field `mac` is not 32 bytes of base64".into()))?,
            _ => return Err(corrupt("field `mac` is missing".into())),
        };
        let slots = match m.remove("slots") {
            Some(Value::Array(a)) => a,
            _ => return Err(corrupt("field `slots` is missing or not a list".into())),
        };
        // Version 2's sealing members; a pre-release version 2 keyring has
        // none of them (labels only) and is read as version 1 with labels.
        let sealing = if version == Some(2) && m.contains_key("sealing_public_key") {
            let v1_key_id = key_id_field(&mut m, "v1_key_id")?;
            let pk = match m.remove("sealing_public_key") {
                Some(Value::String(s)) => B64
                    .decode(s.as_bytes())
                    .ok()
                    .filter(|b| B64.encode(b) == s)
                    .ok_or_else(|| {
                        corrupt("field `sealing_public_key` is not canonical base64".into())
                    })?,
                _ => return Err(corrupt("field `sealing_public_key` is not a string".into())),
            };
            let pk = SealingPublicKey::from_bytes(&pk)
                .map_err(|e| corrupt(format!("field `sealing_public_key`: {e}")))?;
            if pk.key_id() != key_id {
                return Err(corrupt(
                    "field `key_id` is not the key id of `sealing_public_key`: the file was edited or damaged".into(),
                ));
            }
            let sealer = parse_sealer(m.remove("sealer"))
                .map_err(|w| corrupt(format!("field `sealer`: {w}")))?;
            let retired = match m.remove("retired_key_ids") {
                None => Vec::new(),
                Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_RETIRED => a
                    .iter()
                    .map(|v| v.as_str().and_then(KeyId::from_hex))
                    .collect::<Option<Vec<KeyId>>>()
                    .ok_or_else(|| {
                        corrupt("field `retired_key_ids` holds something other than key ids".into())
                    })?,
                Some(_) => {
                    return Err(corrupt(format!(
                        "field `retired_key_ids` is not a list of 1 to {MAX_RETIRED} key ids"
                    )));
                }
            };
            Some(Sealing {
                sealer: Sealer::from_parts(pk, sealer.0, sealer.1),
                v1_key_id,
                retired,
            })
        } else {
            None
        };
        if let Some(k) = m.keys().next() {
            return Err(corrupt(format!("unknown field `{k}`")));
        }
        let slots = parse_slots(&slots, version == Some(2)).map_err(corrupt)?;
        if sealing.is_none()
            && let Some(s) = slots
                .iter()
                .find(|s| s.member.is_some() || slot::threshold::need(s).is_some())
        {
            // A pre-release version 2 keyring is version 1 with labels.
            return Err(corrupt(format!(
                "slot {}: a threshold group needs format version 2",
                s.id
            )));
        }
        Ok(Self {
            key_id,
            slots,
            sealing,
            mac,
        })
    }

    /// Check that `bk` is this keyring's key and that nothing was edited.
    pub fn verify(&self, bk: &BackupKey, path: &Path) -> Result<()> {
        let tampered = |what: &str| Error::KeyringTampered {
            path: path.to_path_buf(),
            what: what.into(),
        };
        let same_key = match &self.sealing {
            None => bk.key_id_v1() == self.key_id,
            Some(s) => {
                s.sealer.is_derived_from(bk) && s.v1_key_id.is_none_or(|v1| v1 == bk.key_id_v1())
            }
        };
        if !same_key {
            return Err(tampered(
                "its key id, sealing key or sealer key is not that of the key its slots unwrap",
            ));
        }
        // verify_slice compares in constant time.
        self.mac_state(bk)
            .verify_slice(&self.mac)
            .map_err(|_| tampered("its MAC does not match"))
    }

    /// Unlock with the slots (see [`slot::unlock()`]), then check key id and
    /// MAC. Returns the key and the slot that gave it up.
    pub fn unlock(
        &self,
        path: &Path,
        selector: Option<&str>,
        factors: &Factors,
        ui: &dyn Ui,
    ) -> Result<(BackupKey, &SlotRecord)> {
        self.refuse_seal_only(path)?;
        let (bk, used) = slot::unlock(&self.slots, selector, factors, ui)?;
        self.verify(&bk, path)?;
        Ok((bk, used))
    }

    /// [`Keyring::unlock`] with every option ([`slot::unlock_with`]); all
    /// of this keyring's slots count as the owner's own.
    pub fn unlock_with(
        &self,
        path: &Path,
        opts: &slot::UnlockOptions<'_>,
    ) -> Result<(BackupKey, &SlotRecord)> {
        self.refuse_seal_only(path)?;
        let candidates = slot::archive_candidates(&self.slots, true, &[]);
        let (bk, used) = slot::unlock_with(&candidates, opts)?;
        self.verify(&bk, path)?;
        Ok((bk, used))
    }

    /// A seal-only keyring is never unlocked: it is a host's, to seal.
    pub fn refuse_seal_only(&self, path: &Path) -> Result<()> {
        self.seal_only_error(path).map_or(Ok(()), Err)
    }

    /// The error that says this keyring is seal-only, if it is.
    pub fn seal_only_error(&self, path: &Path) -> Option<Error> {
        self.sealer()
            .filter(|s| !s.id().is_owner())
            .map(|s| Error::SealOnly {
                path: path.to_path_buf(),
                sealer: s.id().to_string(),
            })
    }

    /// Add a slot and re-MAC under `bk` (which the caller just unlocked).
    pub fn add_slot(&mut self, bk: &BackupKey, slot: SlotRecord) -> Result<()> {
        self.replace_slot(bk, None, slot)
    }

    /// Put `slot` in place of the slot at `replaced` (or add it), in one
    /// step, and re-MAC under `bk`: `enroll --replace`. The new slot's id
    /// and label must be free among the others. A member of a group (its
    /// `member` set, its group's `next_x` already moved on) goes after the
    /// group's other members; a group cannot be replaced (its members
    /// would be left without it).
    pub fn replace_slot(
        &mut self,
        bk: &BackupKey,
        replaced: Option<usize>,
        slot: SlotRecord,
    ) -> Result<()> {
        let others = || {
            self.slots
                .iter()
                .enumerate()
                .filter(move |(i, _)| Some(*i) != replaced)
                .map(|(_, s)| s)
        };
        if let Some(i) = replaced
            && self.is_last_recovery(i)
            && (slot.params.kind() != crate::slot::recovery::KIND || slot.member.is_some())
        {
            return Err(last_recovery_replaced(&self.slots[i]));
        }
        if let Some(i) = replaced
            && slot::threshold::need(&self.slots[i]).is_some()
        {
            return Err(group_replaced(&self.slots[i]));
        }
        if self.sealing.is_none()
            && (slot.member.is_some() || slot::threshold::need(&slot).is_some())
        {
            return Err(Error::Refused(
                "a threshold group needs a format version 2 keyring; unlocking it upgrades it"
                    .into(),
            ));
        }
        let mut after = self.slots.clone();
        match replaced {
            Some(i) => after[i] = slot.clone(),
            None => after.push(slot.clone()),
        }
        refuse_lockout(&after, &format!("the new slot {}", slot.name()))?;
        let group_at = match &slot.member {
            None => None,
            Some(m) => match self.slots.iter().position(|s| s.id == m.group) {
                Some(g) if slot::threshold::need(&self.slots[g]).is_some() => Some(g),
                _ => {
                    return Err(Error::Usage(format!(
                        "slot group {} is not a threshold group of this keyring",
                        m.group
                    )));
                }
            },
        };
        if replaced.is_none() && self.slots.len() >= MAX_SLOTS {
            return Err(Error::Refused(format!(
                "a keyring holds at most {MAX_SLOTS} slots"
            )));
        }
        if others().any(|s| s.id == slot.id) {
            return Err(Error::Refused(format!(
                "slot id {} is already taken",
                slot.id
            )));
        }
        if let Some(l) = &slot.label
            && let Some(s) =
                others().find(|s| s.label.as_ref() == Some(l) || s.id.as_str() == l.as_str())
        {
            return Err(Error::Usage(format!(
                "--label {l}: slot {} already answers to that name; labels are unique in a keyring",
                s.name()
            )));
        }
        match (replaced, group_at) {
            (Some(i), _) => self.slots[i] = slot,
            (None, Some(g)) => {
                let after = slot::threshold::descendants(&self.slots, g)
                    .last()
                    .copied()
                    .unwrap_or(g);
                self.slots.insert(after + 1, slot);
            }
            (None, None) => self.slots.push(slot),
        }
        self.mac = self.compute_mac(bk);
        Ok(())
    }

    /// Whether the slot at `index` is the keyring's only recovery slot that
    /// opens on its own (a recovery key inside a threshold group does not).
    pub fn is_last_recovery(&self, index: usize) -> bool {
        let recovery =
            |s: &SlotRecord| s.params.kind() == crate::slot::recovery::KIND && s.member.is_none();
        recovery(&self.slots[index]) && self.slots.iter().filter(|s| recovery(s)).count() == 1
    }

    /// Remove the slot at `index` — a group with every slot inside it —
    /// refusing to leave no slot that opens on its own, and to remove the
    /// last recovery slot unless `force`; re-MAC under `bk`. Returns the
    /// slots removed, the one named first.
    pub fn remove_slot(
        &mut self,
        bk: &BackupKey,
        index: usize,
        force: bool,
    ) -> Result<Vec<SlotRecord>> {
        let name = self.slots[index].name();
        let mut gone = vec![index];
        gone.extend(slot::threshold::descendants(&self.slots, index));
        let after: Vec<SlotRecord> = (0..self.slots.len())
            .filter(|i| !gone.contains(i))
            .map(|i| self.slots[i].clone())
            .collect();
        if !after.iter().any(|s| s.member.is_none()) {
            return Err(Error::Refused(format!(
                "slot {name} is the last one; removing it would make every backup unreadable. Enroll another slot first"
            )));
        }
        refuse_lockout(&after, &format!("removing slot {name}"))?;
        if self.is_last_recovery(index) && !force {
            return Err(Error::Usage(format!(
                "slot {name} is the last recovery key: without one, losing your other factors loses every backup, and a new laptop with only an archive cannot open it. Issue another first (`coffer enroll recovery`), or give --force if you mean it"
            )));
        }
        let mut removed = Vec::new();
        for (i, s) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if gone.contains(&i) {
                removed.push(s);
            } else {
                self.slots.push(s);
            }
        }
        // The named slot first: a group comes before its members anyway.
        self.mac = self.compute_mac(bk);
        Ok(removed)
    }
}

/// `enroll --replace` naming a threshold group: refused, its members would
/// be left without it.
pub fn group_replaced(slot: &SlotRecord) -> Error {
    Error::Usage(format!(
        "--replace {}: it is a threshold group; replace its members one by one, or remove it",
        slot.name()
    ))
}

/// Refuse a change (`what`) after which no slot of `after` would open on
/// its own: every slot left a member, or a group short of members. No
/// `--force`: such a keyring could not even be unlocked to undo it.
pub fn refuse_lockout(after: &[SlotRecord], what: &str) -> Result<()> {
    let opens =
        (0..after.len()).any(|i| after[i].member.is_none() && slot::threshold::complete(after, i));
    if opens {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{what}: then no slot would open the keyring on its own (every threshold group left would be short of members), and nothing could unlock it again. Enroll another slot first"
    )))
}

/// `enroll --replace` naming the last recovery slot for a slot of another
/// kind: what `remove` refuses without `--force`, refused here too.
pub fn last_recovery_replaced(slot: &SlotRecord) -> Error {
    Error::Usage(format!(
        "--replace {}: it is the last recovery key, and the new slot is not one; issue another first (`coffer enroll recovery`), or remove it with `coffer remove --force` if you mean it",
        slot.name()
    ))
}

/// The `{"id", "key"}` of a keyring's `sealer` member.
fn parse_sealer(v: Option<Value>) -> std::result::Result<(SealerId, SealerKey), String> {
    let Some(Value::Object(mut o)) = v else {
        return Err("missing, or not an object".into());
    };
    let id = match o.remove("id") {
        Some(Value::String(s)) => SealerId::parse(&s).map_err(|e| format!("`id`: {e}"))?,
        _ => return Err("`id` is missing".into()),
    };
    let key = match o.remove("key") {
        Some(Value::String(s)) => decode_b64::<KEY_LEN>(&s)
            .ok_or_else(|| "`key` is not 32 bytes of canonical base64".to_string())?,
        _ => return Err("`key` is missing".into()),
    };
    if let Some(k) = o.keys().next() {
        return Err(format!("unknown member `{k}`"));
    }
    Ok((id, SealerKey::from_bytes(*key)))
}

/// Exactly `N` bytes of canonical base64 (padding present, no stray bits).
fn decode_b64<const N: usize>(s: &str) -> Option<zeroize::Zeroizing<[u8; N]>> {
    let b = zeroize::Zeroizing::new(B64.decode(s.as_bytes()).ok()?);
    if *zeroize::Zeroizing::new(B64.encode(&*b)) != s {
        return None;
    }
    <[u8; N]>::try_from(&b[..])
        .ok()
        .map(zeroize::Zeroizing::new)
}

/// The format version a pre-sealing list of slots was written as: 2 when
/// any has a label, else 1.
fn format_version(slots: &[SlotRecord]) -> u64 {
    if slots.iter().any(|s| s.label.is_some()) {
        2
    } else {
        1
    }
}

/// Parse a list of slot objects with the slot-count limit; `labels`: the
/// format version (2) allows slot labels. Shared with the archive header,
/// which carries a copy of the slots.
pub fn parse_slots(slots: &[Value], labels: bool) -> std::result::Result<Vec<SlotRecord>, String> {
    if slots.is_empty() {
        return Err("field `slots` is empty".into());
    }
    crate::slot::record::slots_from_json(slots, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::{SealerId, SealingPublicKey};
    use crate::slot::{SlotId, SlotParams, recovery};

    fn sample() -> (BackupKey, Keyring) {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let kr = Keyring::new(&bk, vec![rec]);
        (bk, kr)
    }

    #[test]
    fn round_trip_and_verify() {
        let (bk, kr) = sample();
        let back = Keyring::parse(&kr.to_bytes(), Path::new("k")).unwrap();
        assert_eq!(back, kr);
        back.verify(&bk, Path::new("k")).unwrap();
    }

    #[test]
    fn canonical_json_sorts_and_compacts() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":"x\"y","c":[1,2]}}"#).unwrap();
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(out, br#"{"a":{"c":[1,2],"d":"x\"y"},"b":1}"#);
    }

    #[test]
    fn unknown_slot_kinds_survive_a_rewrite() {
        let (bk, mut kr) = sample();
        let future: Value = serde_json::json!({
            "id": "0badcafe", "kind": "quantum-token", "created": 1, "wrapped": B64.encode([9u8; 40]),
            "qubits": 42, "params": {"nested": ["a", "b"]}
        });
        kr.add_slot(&bk, SlotRecord::from_json(&future, false).unwrap())
            .unwrap();
        let text = kr.to_bytes();
        let mut back = Keyring::parse(&text, Path::new("k")).unwrap();
        back.verify(&bk, Path::new("k")).unwrap();
        let (rec2, _) = recovery::enroll(&bk);
        back.add_slot(&bk, rec2).unwrap();
        let again = Keyring::parse(&back.to_bytes(), Path::new("k")).unwrap();
        let kept = again
            .slots
            .iter()
            .find(|s| s.id == SlotId::parse("0badcafe").unwrap())
            .unwrap();
        assert!(matches!(kept.params, SlotParams::Unknown(_)));
        assert_eq!(kept.to_json(), future);
    }

    #[test]
    fn edits_are_detected_by_the_mac() {
        let (bk, kr) = sample();
        let text = String::from_utf8(kr.to_bytes()).unwrap();
        let created = kr.slots[0].created.to_string();
        let edited = text.replace(&format!("\"created\": {created}"), "\"created\": 5");
        assert_ne!(edited, text);
        let parsed = Keyring::parse(edited.as_bytes(), Path::new("k")).unwrap();
        assert!(matches!(
            parsed.verify(&bk, Path::new("k")),
            Err(Error::KeyringTampered { .. })
        ));
    }

    #[test]
    fn malformed_keyrings_name_the_field() {
        let (_, kr) = sample();
        let good: Value = serde_json::from_slice(&kr.to_bytes()).unwrap();
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| {
                    v["key_id"] = "zz".into();
                }),
                "key_id",
            ),
            (
                Box::new(|v| {
                    v["mac"] = "AAAA".into();
                }),
                "mac",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("slots");
                }),
                "slots",
            ),
            (
                Box::new(|v| {
                    v["slots"][0]["wrapped"] = "AAAA".into();
                }),
                "wrapped",
            ),
            (
                Box::new(|v| {
                    v["slots"][0]["id"] = 5.into();
                }),
                "id",
            ),
            (
                Box::new(|v| {
                    v["slots"][0]["extra"] = 5.into();
                }),
                "extra",
            ),
            (
                Box::new(|v| {
                    v["format"] = "age".into();
                }),
                "format",
            ),
            (
                Box::new(|v| {
                    v["slots"][0]["created"] = serde_json::json!(1.5);
                }),
                "not an integer",
            ),
            (
                Box::new(|v| {
                    v["surprise"] = true.into();
                }),
                "surprise",
            ),
        ];
        for (edit, field) in cases {
            let mut v = good.clone();
            edit(&mut v);
            let err = Keyring::parse(&serde_json::to_vec(&v).unwrap(), Path::new("k")).unwrap_err();
            assert!(matches!(err, Error::KeyringCorrupt { .. }), "{err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        let err = Keyring::parse(b"{", Path::new("k")).unwrap_err();
        assert!(matches!(err, Error::KeyringCorrupt { .. }));
        // A member named twice is refused, not resolved by either copy.
        let text = String::from_utf8(kr.to_bytes()).unwrap();
        let twice = text.replacen("\"version\": 2,", "\"version\": 2, \"version\": 2,", 1);
        assert_ne!(twice, text);
        let err = Keyring::parse(twice.as_bytes(), Path::new("k")).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let deep = format!("{}{}", "[".repeat(20), "]".repeat(20));
        let err = Keyring::parse(deep.as_bytes(), Path::new("k")).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }

    #[test]
    fn a_version_1_keyring_upgrades_and_keeps_its_old_key_id() {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let v1 = Keyring::v1(&bk, vec![rec]);
        let mut kr = Keyring::parse(&v1.to_bytes(), Path::new("k")).unwrap();
        assert_eq!(kr.version(), 1);
        assert!(kr.sealer().is_none());
        kr.verify(&bk, Path::new("k")).unwrap();
        assert!(kr.upgrade(&bk));
        assert!(!kr.upgrade(&bk), "a second upgrade changes nothing");
        let back = Keyring::parse(&kr.to_bytes(), Path::new("k")).unwrap();
        back.verify(&bk, Path::new("k")).unwrap();
        assert_eq!(back.version(), 2);
        assert_eq!(back.key_id, SealingPublicKey::derive(&bk).key_id());
        assert_eq!(back.v1_key_id(), Some(bk.key_id_v1()));
        assert!(back.holds_key(1, &bk.key_id_v1()) && back.holds_key(2, &back.key_id));
        // Each archive version by its own id only.
        assert!(!back.holds_key(2, &bk.key_id_v1()) && !back.holds_key(1, &back.key_id));
        assert_eq!(back.sealer().unwrap().id().as_str(), "owner");
    }

    #[test]
    fn a_pre_release_version_2_keyring_reads_as_version_1_with_labels() {
        let bk = BackupKey::generate();
        let (mut rec, _) = recovery::enroll(&bk);
        rec.label = Some(crate::slot::Label::parse("paper").unwrap());
        let draft = Keyring::v1(&bk, vec![rec]);
        let text = String::from_utf8(draft.to_bytes()).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        let mut kr = Keyring::parse(text.as_bytes(), Path::new("k")).unwrap();
        kr.verify(&bk, Path::new("k")).unwrap();
        assert!(kr.sealer().is_none());
        assert!(kr.upgrade(&bk));
        let back = Keyring::parse(&kr.to_bytes(), Path::new("k")).unwrap();
        back.verify(&bk, Path::new("k")).unwrap();
        assert_eq!(back.slots[0].label.as_ref().unwrap().as_str(), "paper");
    }

    #[test]
    fn a_seal_only_keyring_seals_as_its_host_and_never_unlocks() {
        let (bk, kr) = sample();
        let id = SealerId::host("nas-1").unwrap();
        let host = kr.seal_only(&bk, id, kr.slots.clone());
        let back = Keyring::parse(&host.to_bytes(), Path::new("h")).unwrap();
        assert!(back.is_seal_only());
        assert_eq!(back.key_id, kr.key_id);
        assert_eq!(back.sealer().unwrap().id().as_str(), "nas-1");
        back.verify(&bk, Path::new("h")).unwrap();
        let err = back
            .unlock(
                Path::new("h"),
                None,
                &Factors::new(),
                &crate::ui::NonInteractive::default(),
            )
            .err()
            .unwrap();
        assert!(matches!(err, Error::SealOnly { .. }), "{err}");
        assert_eq!(err.category(), crate::error::Category::NoUsableSlot);
    }

    #[test]
    fn a_swapped_sealing_key_or_sealer_key_is_caught() {
        let (bk, kr) = sample();
        let good: Value = serde_json::from_slice(&kr.to_bytes()).unwrap();
        // Another key's public key with its own (consistent) key id: the
        // parse passes; only BK can tell.
        let other = SealingPublicKey::derive(&BackupKey::generate());
        let mut v = good.clone();
        v["sealing_public_key"] = B64.encode(other.as_bytes()).into();
        v["key_id"] = other.key_id().to_string().into();
        let swapped = Keyring::parse(&serde_json::to_vec(&v).unwrap(), Path::new("k")).unwrap();
        let err = swapped.verify(&bk, Path::new("k")).unwrap_err();
        assert!(matches!(err, Error::KeyringTampered { .. }), "{err}");
        // A key id that is not the public key's: refused before unlocking.
        let mut v = good.clone();
        v["key_id"] = other.key_id().to_string().into();
        let err = Keyring::parse(&serde_json::to_vec(&v).unwrap(), Path::new("k")).unwrap_err();
        assert!(err.to_string().contains("key_id"), "{err}");
        // Another sealer key.
        let mut v = good.clone();
        v["sealer"]["key"] = B64.encode([7u8; 32]).into();
        let edited = Keyring::parse(&serde_json::to_vec(&v).unwrap(), Path::new("k")).unwrap();
        let err = edited.verify(&bk, Path::new("k")).unwrap_err();
        assert!(matches!(err, Error::KeyringTampered { .. }), "{err}");
        // Malformed sealing members name the field.
        for (field, edit) in [
            ("sealing_public_key", serde_json::json!("AAAA")),
            ("sealer", serde_json::json!({"id": "owner"})),
            (
                "sealer",
                serde_json::json!({"id": "Owner!", "key": B64.encode([0u8; 32])}),
            ),
            (
                "sealer",
                serde_json::json!({"id": "owner", "key": "AAAA", }),
            ),
            ("v1_key_id", serde_json::json!("xyz")),
        ] {
            let mut v = good.clone();
            v[field] = edit;
            let err = Keyring::parse(&serde_json::to_vec(&v).unwrap(), Path::new("k")).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn rotation_retires_the_old_key_ids() {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let mut old = Keyring::v1(&bk, vec![rec.clone()]);
        old.upgrade(&bk);
        let new_bk = BackupKey::generate();
        let new = old.rotated(&new_bk, vec![rec]);
        let back = Keyring::parse(&new.to_bytes(), Path::new("k")).unwrap();
        back.verify(&new_bk, Path::new("k")).unwrap();
        assert!(back.is_retired(&old.key_id) && back.is_retired(&bk.key_id_v1()));
        assert!(!back.is_retired(&back.key_id));
        assert_eq!(back.v1_key_id(), None);
        // And again: the list carries over, capped at MAX_RETIRED.
        let mut k = back;
        for _ in 0..MAX_RETIRED {
            k = k.rotated(&BackupKey::generate(), k.slots.clone());
        }
        assert_eq!(k.retired_key_ids().len(), MAX_RETIRED);
        assert!(!k.is_retired(&old.key_id), "the oldest are dropped");
        Keyring::parse(&k.to_bytes(), Path::new("k")).unwrap();
    }

    #[test]
    fn debug_never_shows_the_sealer_key() {
        let (_, kr) = sample();
        let v: Value = serde_json::from_slice(&kr.to_bytes()).unwrap();
        let key = v["sealer"]["key"].as_str().unwrap().to_owned();
        let shown = format!("{kr:?}");
        assert!(!shown.contains(&key), "{shown}");
        let raw = B64.decode(&key).unwrap();
        assert!(!shown.contains(&hex::encode(&raw)), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &raw[..4])), "{shown}");
    }

    #[test]
    fn the_last_slot_cannot_be_removed() {
        let (bk, mut kr) = sample();
        assert!(matches!(
            kr.remove_slot(&bk, 0, true),
            Err(Error::Refused(_))
        ));
    }
}
