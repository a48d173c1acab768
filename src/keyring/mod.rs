//! The keyring file: the key id and the slots, as versioned JSON text,
//! authenticated by HMAC-SHA256 under a key derived from the backup key.
//!
//! Owns: parsing (with limits, errors naming the field), the canonical form
//! the MAC covers, checking key id and MAC after every unlock, atomic 0600
//! writes, and the lock that serialises read-modify-write.
//!
//! Must never: write a keyring whose MAC was not computed from the backup
//! key just unlocked, or drop a slot it does not understand.
//!
//! The JSON rules and canonical form live in [`json`] (shared with the
//! archive header), the file, its atomic writes and its lock in [`file`].

mod file;
pub mod json;

pub use file::{KeyringFile, KeyringLock};
pub use json::{canonical_json, parse_strict_json};

use crate::error::{Error, Result};
use crate::key::{BackupKey, KeyId, label};
use crate::slot::{self, Factors, MAX_SLOTS, SlotRecord};
use crate::ui::Ui;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use std::path::Path;

/// The `format` field of every keyring.
pub const FORMAT: &str = "coffer-keyring";
/// The newest keyring version this build reads and writes. Version 2 adds
/// slot labels; a keyring whose slots have none is written as version 1,
/// which older builds read.
pub const VERSION: u64 = 2;
/// Largest keyring file accepted, bytes.
pub const MAX_FILE_LEN: u64 = 1 << 20;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The owner's slots and the key id they all unwrap to.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyring {
    /// Id of the backup key every slot wraps.
    pub key_id: KeyId,
    /// The slots, in order.
    pub slots: Vec<SlotRecord>,
    mac: [u8; 32],
}

impl Keyring {
    /// A keyring for `bk` holding `slots`, MAC computed.
    pub fn new(bk: &BackupKey, slots: Vec<SlotRecord>) -> Self {
        let mut k = Self {
            key_id: bk.key_id(),
            slots,
            mac: [0; 32],
        };
        k.mac = k.compute_mac(bk);
        k
    }

    /// The JSON value the MAC covers: everything but `mac`.
    fn body(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("version".into(), format_version(&self.slots).into());
        m.insert("key_id".into(), self.key_id.to_string().into());
        m.insert(
            "slots".into(),
            Value::Array(self.slots.iter().map(SlotRecord::to_json).collect()),
        );
        m
    }

    fn mac_state(&self, bk: &BackupKey) -> HmacSha256 {
        let key = bk.derive(None, label::KEYRING_MAC);
        let mut bytes = Vec::new();
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
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = self.body();
        m.insert("mac".into(), B64.encode(self.mac).into());
        // Fixed, readable member order for people; the MAC does not depend on it.
        let mut ordered = serde_json::Map::new();
        for k in ["format", "version", "key_id", "slots", "mac"] {
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
        let key_id = match m.remove("key_id") {
            Some(Value::String(s)) => KeyId::from_hex(&s)
                .ok_or_else(|| corrupt("field `key_id` is not 32 lowercase hex digits".into()))?,
            _ => return Err(corrupt("field `key_id` is missing".into())),
        };
        let mac = match m.remove("mac") {
            Some(Value::String(s)) => B64
                .decode(s.as_bytes())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| corrupt("field `mac` is not 32 bytes of base64".into()))?,
            _ => return Err(corrupt("field `mac` is missing".into())),
        };
        let slots = match m.remove("slots") {
            Some(Value::Array(a)) => a,
            _ => return Err(corrupt("field `slots` is missing or not a list".into())),
        };
        if let Some(k) = m.keys().next() {
            return Err(corrupt(format!("unknown field `{k}`")));
        }
        let slots = parse_slots(&slots, version == Some(2)).map_err(corrupt)?;
        Ok(Self { key_id, slots, mac })
    }

    /// Check that `bk` is this keyring's key and that nothing was edited.
    pub fn verify(&self, bk: &BackupKey, path: &Path) -> Result<()> {
        let tampered = |what: &str| Error::KeyringTampered {
            path: path.to_path_buf(),
            what: what.into(),
        };
        if bk.key_id() != self.key_id {
            return Err(tampered(
                "its key id is not that of the key its slots unwrap",
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
        let candidates = slot::archive_candidates(&self.slots, true, &[]);
        let (bk, used) = slot::unlock_with(&candidates, opts)?;
        self.verify(&bk, path)?;
        Ok((bk, used))
    }

    /// Add a slot and re-MAC under `bk` (which the caller just unlocked).
    pub fn add_slot(&mut self, bk: &BackupKey, slot: SlotRecord) -> Result<()> {
        self.replace_slot(bk, None, slot)
    }

    /// Put `slot` in place of the slot at `replaced` (or add it), in one
    /// step, and re-MAC under `bk`: `enroll --replace`. The new slot's id
    /// and label must be free among the others.
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
            && slot.params.kind() != crate::slot::recovery::KIND
        {
            return Err(last_recovery_replaced(&self.slots[i]));
        }
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
        match replaced {
            Some(i) => self.slots[i] = slot,
            None => self.slots.push(slot),
        }
        self.mac = self.compute_mac(bk);
        Ok(())
    }

    /// Whether the slot at `index` is the keyring's only recovery slot.
    pub fn is_last_recovery(&self, index: usize) -> bool {
        let recovery = |s: &SlotRecord| s.params.kind() == crate::slot::recovery::KIND;
        recovery(&self.slots[index]) && self.slots.iter().filter(|s| recovery(s)).count() == 1
    }

    /// Remove the slot at `index`, refusing the last slot, and the last
    /// recovery slot unless `force`; re-MAC under `bk`.
    pub fn remove_slot(&mut self, bk: &BackupKey, index: usize, force: bool) -> Result<SlotRecord> {
        let name = self.slots[index].name();
        if self.slots.len() == 1 {
            return Err(Error::Refused(format!(
                "slot {name} is the last one; removing it would make every backup unreadable. Enroll another slot first"
            )));
        }
        let recovery = |s: &SlotRecord| s.params.kind() == crate::slot::recovery::KIND;
        if recovery(&self.slots[index])
            && self.slots.iter().filter(|s| recovery(s)).count() == 1
            && !force
        {
            return Err(Error::Usage(format!(
                "slot {name} is the last recovery key: without one, losing your other factors loses every backup, and a new laptop with only an archive cannot open it. Issue another first (`coffer enroll recovery`), or give --force if you mean it"
            )));
        }
        let removed = self.slots.remove(index);
        self.mac = self.compute_mac(bk);
        Ok(removed)
    }
}

/// `enroll --replace` naming the last recovery slot for a slot of another
/// kind: what `remove` refuses without `--force`, refused here too.
pub fn last_recovery_replaced(slot: &SlotRecord) -> Error {
    Error::Usage(format!(
        "--replace {}: it is the last recovery key, and the new slot is not one; issue another first (`coffer enroll recovery`), or remove it with `coffer remove --force` if you mean it",
        slot.name()
    ))
}

/// The format version a list of slots needs: 2 when any has a label, else
/// 1 (which older builds read).
pub fn format_version(slots: &[SlotRecord]) -> u64 {
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
    if slots.len() > MAX_SLOTS {
        return Err(format!("more than {MAX_SLOTS} slots"));
    }
    let mut out: Vec<SlotRecord> = Vec::with_capacity(slots.len());
    for (i, s) in slots.iter().enumerate() {
        let rec = SlotRecord::from_json(s, labels).map_err(|e| format!("slots[{i}]: {e}"))?;
        if out.iter().any(|o| o.id == rec.id) {
            return Err(format!("slots[{i}]: id {} appears twice", rec.id));
        }
        if let Some(l) = &rec.label
            && out.iter().any(|o| o.label.as_ref() == Some(l))
        {
            return Err(format!("slots[{i}]: label {l} appears twice"));
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let twice = text.replacen("\"version\": 1,", "\"version\": 1, \"version\": 1,", 1);
        assert_ne!(twice, text);
        let err = Keyring::parse(twice.as_bytes(), Path::new("k")).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let deep = format!("{}{}", "[".repeat(20), "]".repeat(20));
        let err = Keyring::parse(deep.as_bytes(), Path::new("k")).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
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
