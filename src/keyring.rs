//! The keyring file: the key id and the slots, as versioned JSON text,
//! authenticated by HMAC-SHA256 under a key derived from the backup key.
//!
//! Owns: parsing (with limits, errors naming the field), the canonical form
//! the MAC covers, checking key id and MAC after every unlock, atomic 0600
//! writes, and the lock that serialises read-modify-write.
//!
//! Must never: write a keyring whose MAC was not computed from the backup
//! key just unlocked, or drop a slot it does not understand.

use crate::error::{Error, Result};
use crate::fsutil;
use crate::key::{BackupKey, KeyId, label};
use crate::slot::{self, Factors, MAX_SLOTS, SlotRecord};
use crate::ui::Ui;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The `format` field of every keyring.
pub const FORMAT: &str = "coffer-keyring";
/// The newest keyring version this build reads and writes. Version 2 adds
/// slot labels; a keyring whose slots have none is written as version 1,
/// which older builds read.
pub const VERSION: u64 = 2;
/// Largest keyring file accepted, bytes.
pub const MAX_FILE_LEN: u64 = 1 << 20;
/// Deepest JSON nesting accepted.
const MAX_DEPTH: usize = 16;

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

/// Serialise `v` canonically: object members sorted by key (bytewise),
/// no whitespace, strings escaped as JSON requires (serde_json's escaping).
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("string serializes");
                out.push(b':');
                canonical_json(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("scalar serializes"),
    }
}

/// Parse JSON under coffer's rules (docs/format.md §3): integers only,
/// no member name twice in an object, containers nested at most
/// 16 deep (the top-level value is at depth 1).
pub fn parse_strict_json(bytes: &[u8]) -> std::result::Result<Value, String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict { depth: 1 }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

struct Strict {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<Value, E> {
        Err(E::custom("a number is not an integer (or is out of range)"))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "member `{k}` appears twice"
                )));
            }
            let v = map.next_value_seed(Strict {
                depth: self.depth + 1,
            })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
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

/// The keyring's place on disk, and the lock beside it.
#[derive(Debug, Clone)]
pub struct KeyringFile {
    /// The keyring file.
    pub path: PathBuf,
}

/// Held while a keyring is read, changed and written; released on drop.
#[derive(Debug)]
pub struct KeyringLock {
    _file: File,
}

impl KeyringFile {
    /// The keyring at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `$COFFER_KEYRING`, else `$XDG_CONFIG_HOME/coffer/keyring.json`, else
    /// `$HOME/.config/coffer/keyring.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("COFFER_KEYRING").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config.join("coffer").join("keyring.json"))
    }

    /// Whether a keyring exists at the path.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Take the exclusive lock (`PATH.lock`), waiting for other coffer
    /// processes that hold it. The lock file is never deleted, so two
    /// processes cannot each lock a different file.
    pub fn lock(&self) -> Result<KeyringLock> {
        fsutil::ensure_private_dir(&fsutil::parent_dir(&self.path))?;
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode_0600()
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        file.lock().map_err(|e| Error::io(&lock_path, e))?;
        Ok(KeyringLock { _file: file })
    }

    /// Read and parse the keyring.
    pub fn load(&self) -> Result<Keyring> {
        let file = File::open(&self.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NoKeyring {
                    path: self.path.clone(),
                }
            } else {
                Error::io(&self.path, e)
            }
        })?;
        use std::io::Read;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        Keyring::parse(&bytes, &self.path)
    }

    /// Write the keyring atomically (mode 0600). `create` refuses to
    /// replace an existing file. Callers changing a keyring hold the lock.
    pub fn store(&self, keyring: &Keyring, _lock: &KeyringLock, create: bool) -> Result<()> {
        fsutil::ensure_private_dir(&fsutil::parent_dir(&self.path))?;
        fsutil::write_atomic(&self.path, &keyring.to_bytes(), !create).map_err(|e| match e {
            Error::AlreadyExists { path, .. } => Error::AlreadyExists {
                path,
                hint: ": move it away first if you mean to start over".into(),
            },
            e => e,
        })
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
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
