//! The archive header: magic, version, flags, chunk size, key id, salt,
//! creation time, a copy of the keyring's slots, and a MAC
//! (docs/format.md §4 for version 1, §8.8 for version 2).
//!
//! Version 2 (what coffer writes) adds the sealed file key (an X-Wing
//! encapsulation to the keyring's sealing public key) and the id of the
//! sealer that wrote the header; its MAC is keyed by that sealer's key and
//! its payload key derives from the file key, so sealing needs no factor
//! ([`crate::sealing`]). Version 1 (read, and written only for vectors)
//! keys both from `BK`.
//!
//! Parsing applies hard limits before any allocation and keeps the exact
//! bytes read, so the MAC is checked over what was on disk.
//!
//! Must never: trust any field (slots included) before the MAC checked out,
//! except to find a slot to unlock with; hand out a payload key before the
//! key id and MAC checked out ([`Header::open`] does both, in §8.7's order).

use super::stream::PayloadKey;
use crate::error::{Error, Result};
use crate::key::{BackupKey, KEY_ID_LEN, KeyId, label};
use crate::keyring::{canonical_json, parse_slots};
use crate::sealing::{
    ENCAPSULATION_LEN, ENCAPSULATION_RANDOMNESS_LEN, Encapsulation, FileKey, SEALER_ID_MAX, Sealer,
    SealerId, SealerKey, SealingPublicKey, SealingSecret,
};
use crate::slot::SlotRecord;
use hmac::{KeyInit, Mac};
use std::io::Read;
use zeroize::Zeroizing;

/// First 8 bytes of every archive.
pub const MAGIC: &[u8; 8] = b"coffer\r\n";
/// The archive version this build writes; it reads 1 and 2.
pub const VERSION: u16 = 2;
/// Salt length.
pub const SALT_LEN: usize = 32;
/// Header MAC length.
pub const MAC_LEN: usize = 32;
/// Length of the fixed part, before the slots (version 1) or the sealed
/// file key (version 2).
pub const FIXED_LEN: usize = 8 + 2 + 2 + 4 + KEY_ID_LEN + SALT_LEN + 8 + 4;
/// Largest slot list accepted, bytes.
pub const MAX_SLOTS_LEN: u32 = 1 << 20;
/// Smallest and largest chunk sizes accepted (powers of two).
pub const MIN_CHUNK: u32 = 1 << 12;
/// See [`MIN_CHUNK`].
pub const MAX_CHUNK: u32 = 1 << 22;
/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK: u32 = 1 << 16;

/// Flag: the payload is a tar stream of files and folders (else raw bytes).
pub const FLAG_TAR: u16 = 1 << 0;
/// Flag: the payload is zstd-compressed (before encryption).
pub const FLAG_ZSTD: u16 = 1 << 1;
const KNOWN_FLAGS: u16 = FLAG_TAR | FLAG_ZSTD;

use crate::key::HmacSha256;

/// What a version 2 header adds: the file key sealed to the public key,
/// and who sealed it. Neither is trusted before the MAC checked out.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The file key, sealed to the keyring's public key.
    pub encapsulation: Encapsulation,
    /// The sealer whose key authenticates this header.
    pub sealer: SealerId,
}

/// A parsed (or newly built) archive header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The format version: 2, or 1 for archives of older builds.
    pub version: u16,
    /// [`FLAG_TAR`], [`FLAG_ZSTD`].
    pub flags: u16,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The key id: of the sealing public key (version 2), of `BK`
    /// (version 1).
    pub key_id: KeyId,
    /// Per-archive random salt.
    pub salt: [u8; SALT_LEN],
    /// Unix time of sealing.
    pub created: u64,
    /// Copies of the keyring's slots (public parts).
    pub slots: Vec<SlotRecord>,
    /// Version 2's sealed file key and sealer; `None` in version 1.
    pub sealed: Option<Sealed>,
    /// The exact bytes the MAC covers.
    raw: Vec<u8>,
    mac: [u8; MAC_LEN],
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::ArchiveCorrupt { what: what.into() }
}

fn hmac(key: &[u8; 32], raw: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(raw);
    mac
}

/// SHA-256 of the header bytes the MAC covers: what a version 2 payload
/// key is bound to (docs/format.md §8.7).
fn header_hash(raw: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(raw).into()
}

fn slot_list_bytes(slots: &[SlotRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    canonical_json(
        &serde_json::Value::Array(crate::slot::record::slots_to_json(slots)),
        &mut out,
    );
    out
}

/// The fixed part every version starts with.
fn fixed_part(
    version: u16,
    flags: u16,
    chunk_size: u32,
    key_id: &KeyId,
    salt: &[u8; SALT_LEN],
    created: u64,
    slots_len: usize,
) -> Vec<u8> {
    let mut raw = Vec::with_capacity(FIXED_LEN + ENCAPSULATION_LEN + 1 + SEALER_ID_MAX + slots_len);
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(&version.to_be_bytes());
    raw.extend_from_slice(&flags.to_be_bytes());
    raw.extend_from_slice(&chunk_size.to_be_bytes());
    raw.extend_from_slice(&key_id.0);
    raw.extend_from_slice(salt);
    raw.extend_from_slice(&created.to_be_bytes());
    raw.extend_from_slice(&(slots_len as u32).to_be_bytes());
    raw
}

impl Header {
    /// Seal a new archive's header with `sealer` (no factor needed): a
    /// fresh salt and file key. Returns the header and the payload key.
    pub fn seal(
        sealer: &Sealer,
        flags: u16,
        chunk_size: u32,
        slots: Vec<SlotRecord>,
    ) -> (Self, PayloadKey) {
        let mut salt = [0u8; SALT_LEN];
        crate::key::random_bytes(&mut salt);
        let (encapsulation, file_key) = sealer.public_key().seal_file_key();
        Self::seal_parts(
            sealer,
            flags,
            chunk_size,
            slots,
            salt,
            crate::slot::now_unix(),
            encapsulation,
            &file_key,
        )
    }

    /// [`Self::seal`] with the given salt, time and encapsulation
    /// randomness: for known-answer vectors only. Neither may ever be
    /// reused for real archives.
    #[doc(hidden)]
    pub fn seal_with(
        sealer: &Sealer,
        flags: u16,
        chunk_size: u32,
        slots: Vec<SlotRecord>,
        salt: [u8; SALT_LEN],
        created: u64,
        randomness: [u8; ENCAPSULATION_RANDOMNESS_LEN],
    ) -> (Self, PayloadKey) {
        let (encapsulation, file_key) = sealer
            .public_key()
            .seal_file_key_with(&Zeroizing::new(randomness));
        Self::seal_parts(
            sealer,
            flags,
            chunk_size,
            slots,
            salt,
            created,
            encapsulation,
            &file_key,
        )
    }

    #[allow(clippy::too_many_arguments)] // the header's fields, once
    fn seal_parts(
        sealer: &Sealer,
        flags: u16,
        chunk_size: u32,
        slots: Vec<SlotRecord>,
        salt: [u8; SALT_LEN],
        created: u64,
        encapsulation: Encapsulation,
        file_key: &FileKey,
    ) -> (Self, PayloadKey) {
        let slot_bytes = slot_list_bytes(&slots);
        let key_id = sealer.key_id();
        let mut raw = fixed_part(
            2,
            flags,
            chunk_size,
            &key_id,
            &salt,
            created,
            slot_bytes.len(),
        );
        raw.extend_from_slice(encapsulation.as_bytes());
        let id = sealer.id().as_str().as_bytes();
        raw.push(id.len() as u8);
        raw.extend_from_slice(id);
        raw.extend_from_slice(&slot_bytes);
        let mac = hmac(&sealer.key().header_mac_key(&salt), &raw)
            .finalize()
            .into_bytes()
            .into();
        let payload_key = PayloadKey::new(&file_key.payload_key(&header_hash(&raw)));
        let header = Self {
            version: 2,
            flags,
            chunk_size,
            key_id,
            salt,
            created,
            slots,
            sealed: Some(Sealed {
                encapsulation,
                sealer: sealer.id().clone(),
            }),
            raw,
            mac,
        };
        (header, payload_key)
    }

    /// A version 1 header under `bk` with the given salt and time, as
    /// builds before format 2 wrote them: for vectors and the tests that
    /// keep version 1 archives opening. coffer writes version 2.
    #[doc(hidden)]
    pub fn v1_with_salt(
        bk: &BackupKey,
        flags: u16,
        chunk_size: u32,
        slots: Vec<SlotRecord>,
        salt: [u8; SALT_LEN],
        created: u64,
    ) -> (Self, PayloadKey) {
        assert!(
            slots.iter().all(|s| s.label.is_none()),
            "version 1 has no slot labels"
        );
        let slot_bytes = slot_list_bytes(&slots);
        let key_id = bk.key_id_v1();
        let mut raw = fixed_part(
            1,
            flags,
            chunk_size,
            &key_id,
            &salt,
            created,
            slot_bytes.len(),
        );
        raw.extend_from_slice(&slot_bytes);
        let mac_key = bk.derive(Some(&salt), label::ARCHIVE_HEADER_MAC);
        let mac = hmac(&mac_key, &raw).finalize().into_bytes().into();
        let payload_key = PayloadKey::new(&bk.derive(Some(&salt), label::ARCHIVE_PAYLOAD));
        let header = Self {
            version: 1,
            flags,
            chunk_size,
            key_id,
            salt,
            created,
            slots,
            sealed: None,
            raw,
            mac,
        };
        (header, payload_key)
    }

    /// The header's bytes as written to the archive (MAC last).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        b.extend_from_slice(&self.mac);
        b
    }

    /// Length of the encoded header in bytes (where the payload starts).
    pub fn encoded_len(&self) -> usize {
        self.raw.len() + MAC_LEN
    }

    /// Who sealed it, as the header says (version 2; trusted only once
    /// [`Self::open`] succeeded).
    pub fn sealer(&self) -> Option<&SealerId> {
        self.sealed.as_ref().map(|s| &s.sealer)
    }

    /// Read a header from `r`, with limits checked before allocating.
    pub fn read<R: Read>(r: &mut R) -> Result<Self> {
        let mut fixed = [0u8; FIXED_LEN];
        r.read_exact(&mut fixed[..8]).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("is not a coffer archive (too short)"),
            _ => Error::io("<archive>", e),
        })?;
        if &fixed[..8] != MAGIC {
            return Err(corrupt("is not a coffer archive (bad magic bytes)"));
        }
        read_exact(r, &mut fixed[8..], "header")?;
        let be16 = |o: usize| u16::from_be_bytes([fixed[o], fixed[o + 1]]);
        let be32 = |o: usize| u32::from_be_bytes(fixed[o..o + 4].try_into().expect("4 bytes"));
        let version = be16(8);
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(format!(
                "header: version {version} is not one this coffer reads (1 to {VERSION}); the archive is damaged, or made by a newer coffer"
            )));
        }
        let flags = be16(10);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(corrupt(format!(
                "header: flags {flags:#06x} include unknown ones; the archive is damaged, or made by a newer coffer"
            )));
        }
        let chunk_size = be32(12);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(corrupt(format!(
                "header: chunk size {chunk_size} is not a power of two between {MIN_CHUNK} and {MAX_CHUNK}"
            )));
        }
        let mut o = 16;
        let key_id = KeyId(fixed[o..o + KEY_ID_LEN].try_into().expect("16 bytes"));
        o += KEY_ID_LEN;
        let salt: [u8; SALT_LEN] = fixed[o..o + SALT_LEN].try_into().expect("32 bytes");
        o += SALT_LEN;
        let created = u64::from_be_bytes(fixed[o..o + 8].try_into().expect("8 bytes"));
        o += 8;
        let slots_len = be32(o);
        if slots_len > MAX_SLOTS_LEN {
            return Err(corrupt(format!(
                "header: slot list of {slots_len} bytes exceeds the limit of {MAX_SLOTS_LEN}"
            )));
        }
        let mut raw = Vec::with_capacity(FIXED_LEN + slots_len as usize);
        raw.extend_from_slice(&fixed);
        // Pre-release builds wrote "version 2" with version 1's layout: its
        // slot list (`[`) where the encapsulation now starts. Say so if
        // such a header fails to parse, rather than a puzzling detail.
        let mut pre_release = false;
        let hint = |pre_release: bool| {
            move |e: Error| {
                if pre_release {
                    corrupt(
                        "header: this looks like a pre-release version 2 archive (version 1's layout with slot labels), which this coffer does not read",
                    )
                } else {
                    e
                }
            }
        };
        let sealed = if version >= 2 {
            let start = raw.len();
            raw.resize(start + ENCAPSULATION_LEN + 1, 0);
            read_exact(r, &mut raw[start..start + 1], "header's sealed file key")?;
            pre_release = raw[start] == b'[';
            read_exact(r, &mut raw[start + 1..], "header's sealed file key")
                .map_err(hint(pre_release))?;
            // A JSON list of slot objects, not an encapsulation that
            // happens to begin with `[` (1 in 256).
            pre_release = raw[start..start + 2] == *b"[{";
            let encapsulation = Encapsulation::from_bytes(&raw[start..start + ENCAPSULATION_LEN])
                .expect("the length read");
            let m = raw[start + ENCAPSULATION_LEN] as usize;
            if !(1..=SEALER_ID_MAX).contains(&m) {
                return Err(hint(pre_release)(corrupt(format!(
                    "header: a sealer id of {m} bytes (1 to {SEALER_ID_MAX})"
                ))));
            }
            let at = raw.len();
            raw.resize(at + m, 0);
            read_exact(r, &mut raw[at..], "header's sealer id").map_err(hint(pre_release))?;
            let sealer = std::str::from_utf8(&raw[at..])
                .ok()
                .and_then(|s| SealerId::parse(s).ok())
                .ok_or_else(|| corrupt("header: the sealer id is not 1 to 32 of a-z, 0-9, -"))
                .map_err(hint(pre_release))?;
            Some(Sealed {
                encapsulation,
                sealer,
            })
        } else {
            None
        };
        let slots_at = raw.len();
        raw.resize(slots_at + slots_len as usize, 0);
        read_exact(r, &mut raw[slots_at..], "header slot list").map_err(hint(pre_release))?;
        let mut mac = [0u8; MAC_LEN];
        read_exact(r, &mut mac, "header MAC").map_err(hint(pre_release))?;
        let value = crate::keyring::parse_strict_json(&raw[slots_at..])
            .map_err(|e| corrupt(format!("header: slot list is not valid JSON: {e}")))
            .map_err(hint(pre_release))?;
        let serde_json::Value::Array(list) = value else {
            return Err(corrupt("header: slot list is not a JSON array"));
        };
        let slots =
            parse_slots(&list, version >= 2).map_err(|e| corrupt(format!("header: {e}")))?;
        Ok(Self {
            version,
            flags,
            chunk_size,
            key_id,
            salt,
            created,
            slots,
            sealed,
            raw,
            mac,
        })
    }

    /// Check that `bk` is this archive's key and that the header is
    /// intact and from a sealer of `bk`, then give the payload key.
    /// Version 2 (docs/format.md §8.7): `bk` must derive the public key the
    /// key id names; the MAC must verify under the header's sealer's key;
    /// then the file key is opened. Version 1: `bk`'s own key id and MAC.
    /// Every refusal is [`Error::ArchiveCorrupt`] (exit 4).
    pub fn open(&self, bk: &BackupKey) -> Result<PayloadKey> {
        Ok(PayloadKey::new(&*self.payload_key_bytes(bk)?))
    }

    /// [`Self::open`], giving the payload key as its 32 bytes: what the
    /// unlock agent ([`crate::agent`]) hands a client instead of `bk`.
    pub fn payload_key_bytes(&self, bk: &BackupKey) -> Result<Zeroizing<[u8; 32]>> {
        let not_this_key = || {
            corrupt(
                "header names a key id that is not the one its slots unwrap: it was tampered with",
            )
        };
        let tampered = || corrupt("header does not authenticate: it was modified or damaged");
        match &self.sealed {
            None => {
                if bk.key_id_v1() != self.key_id {
                    return Err(not_this_key());
                }
                let mac_key = bk.derive(Some(&self.salt), label::ARCHIVE_HEADER_MAC);
                hmac(&mac_key, &self.raw)
                    .verify_slice(&self.mac)
                    .map_err(|_| tampered())?;
                Ok(bk.derive(Some(&self.salt), label::ARCHIVE_PAYLOAD))
            }
            Some(sealed) => {
                let secret = SealingSecret::derive(bk);
                if secret.public_key().key_id() != self.key_id {
                    return Err(not_this_key());
                }
                let sealer_key = SealerKey::derive(bk, &sealed.sealer);
                hmac(&sealer_key.header_mac_key(&self.salt), &self.raw)
                    .verify_slice(&self.mac)
                    .map_err(|_| tampered())?;
                let file_key = secret
                    .open_file_key(&sealed.encapsulation)
                    .map_err(|e| corrupt(format!("header: {e}: no honest writer makes one")))?;
                Ok(file_key.payload_key(&header_hash(&self.raw)))
            }
        }
    }

    /// Whether `pk` is the public key this header's key id names (version
    /// 2), checkable without `BK`.
    pub fn is_sealed_to(&self, pk: &SealingPublicKey) -> bool {
        self.sealed.is_some() && pk.key_id() == self.key_id
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(format!("is truncated: it ends inside the {what}"))
        } else {
            Error::io("<archive>", e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::recovery;

    fn sample() -> (BackupKey, Header) {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let (h, _) = Header::seal(&Sealer::owner(&bk), FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        (bk, h)
    }

    fn sample_v1() -> (BackupKey, Header) {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let (h, _) = Header::v1_with_salt(&bk, FLAG_TAR, DEFAULT_CHUNK, vec![rec], [7; 32], 1);
        (bk, h)
    }

    #[test]
    fn round_trip_and_open() {
        for (bk, h) in [sample(), sample_v1()] {
            let bytes = h.to_bytes();
            assert_eq!(bytes.len(), h.encoded_len());
            let back = Header::read(&mut &bytes[..]).unwrap();
            back.open(&bk).unwrap();
            assert_eq!(back.slots, h.slots);
            assert_eq!(back.to_bytes(), bytes);
            assert_eq!(back.version, h.version);
        }
    }

    #[test]
    fn a_host_seals_what_the_owner_opens_and_names_it() {
        let bk = BackupKey::generate();
        let (rec, _) = recovery::enroll(&bk);
        let host = Sealer::derive(&bk, SealerId::host("nas-1").unwrap());
        let (h, _) = Header::seal(&host, 0, DEFAULT_CHUNK, vec![rec]);
        let back = Header::read(&mut &h.to_bytes()[..]).unwrap();
        back.open(&bk).unwrap();
        assert_eq!(back.sealer().unwrap().as_str(), "nas-1");
        assert!(back.is_sealed_to(host.public_key()));
    }

    #[test]
    fn another_key_is_refused() {
        let (_, h) = sample();
        let other = BackupKey::generate();
        let err = h.open(&other).err().unwrap();
        assert!(err.to_string().contains("key id"), "{err}");
    }

    #[test]
    fn every_flipped_bit_in_the_header_is_detected() {
        for (bk, h) in [sample(), sample_v1()] {
            let bytes = h.to_bytes();
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x01;
                let ok = Header::read(&mut &bad[..])
                    .and_then(|h| h.open(&bk))
                    .is_ok();
                assert!(!ok, "v{}: flip at byte {i} accepted", h.version);
            }
        }
    }

    #[test]
    fn truncated_headers_are_refused() {
        for (_, h) in [sample(), sample_v1()] {
            let bytes = h.to_bytes();
            for cut in 0..bytes.len() {
                assert!(Header::read(&mut &bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn oversized_slot_list_is_refused_before_allocation() {
        let (_, h) = sample();
        let mut bytes = h.to_bytes();
        bytes[FIXED_LEN - 4..FIXED_LEN].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = Header::read(&mut &bytes[..]).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn a_pre_release_version_2_archive_is_named_as_such() {
        let (_, h) = sample_v1();
        let mut bytes = h.to_bytes();
        bytes[9] = 2;
        let err = Header::read(&mut &bytes[..]).unwrap_err();
        assert!(err.to_string().contains("pre-release"), "{err}");
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0u8; 2000]);
        let err = Header::read(&mut &longer[..]).unwrap_err();
        assert!(err.to_string().contains("pre-release"), "{err}");
    }

    #[test]
    fn an_encapsulation_that_begins_with_a_bracket_is_not_taken_for_a_pre_release_header() {
        let (_, h) = sample();
        let mut bad = h.to_bytes();
        bad[FIXED_LEN] = b'[';
        bad[FIXED_LEN + 1] = b'x';
        bad[FIXED_LEN + ENCAPSULATION_LEN] = 0;
        let err = Header::read(&mut &bad[..]).unwrap_err().to_string();
        assert!(
            err.contains("sealer id") && !err.contains("pre-release"),
            "{err}"
        );
    }

    #[test]
    fn bad_sealer_ids_are_refused_before_the_slots() {
        // An encapsulation beginning `[{` (1 in 65536) would read as a
        // pre-release header: take one that does not.
        let good = std::iter::repeat_with(|| sample().1.to_bytes())
            .find(|b| b[FIXED_LEN..FIXED_LEN + 2] != *b"[{")
            .expect("a sample");
        let m_at = FIXED_LEN + ENCAPSULATION_LEN;
        for m in [0u8, 33, 255] {
            let mut bad = good.clone();
            bad[m_at] = m;
            let err = Header::read(&mut &bad[..]).unwrap_err();
            assert!(err.to_string().contains("sealer id"), "{m}: {err}");
        }
        let mut bad = good.clone();
        bad[m_at + 1] = b'O'; // "Owner"
        let err = Header::read(&mut &bad[..]).unwrap_err();
        assert!(err.to_string().contains("sealer id"), "{err}");
    }
}
