//! The archive header: magic, version, flags, chunk size, key id, salt,
//! creation time, a copy of the keyring's slots, and a MAC under a key
//! derived from the backup key and the salt (docs/format.md, "Archive").
//!
//! Parsing applies hard limits before any allocation and keeps the exact
//! bytes read, so the MAC is checked over what was on disk.
//!
//! Must never: trust any field (slots included) before the MAC checked out,
//! except to find a slot to unlock with.

use crate::error::{Error, Result};
use crate::key::{BackupKey, KEY_ID_LEN, KeyId, label};
use crate::keyring::{canonical_json, parse_slots};
use crate::slot::SlotRecord;
use hmac::{KeyInit, Mac};
use std::io::Read;

/// First 8 bytes of every archive.
pub const MAGIC: &[u8; 8] = b"coffer\r\n";
/// The newest archive version this build reads and writes. Version 2 adds
/// slot labels; an archive whose slots have none is written as version 1,
/// which older builds read.
pub const VERSION: u16 = 2;
/// Salt length.
pub const SALT_LEN: usize = 32;
/// Header MAC length.
pub const MAC_LEN: usize = 32;
/// Length of the fixed part, before the slots.
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

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A parsed (or newly built) archive header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The format version (1, or 2 when a slot has a label).
    pub version: u16,
    /// [`FLAG_TAR`], [`FLAG_ZSTD`].
    pub flags: u16,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The backup key's id.
    pub key_id: KeyId,
    /// Per-archive random salt.
    pub salt: [u8; SALT_LEN],
    /// Unix time of sealing.
    pub created: u64,
    /// Copies of the keyring's slots (public parts).
    pub slots: Vec<SlotRecord>,
    /// The exact bytes the MAC covers.
    raw: Vec<u8>,
    mac: [u8; MAC_LEN],
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::ArchiveCorrupt { what: what.into() }
}

fn header_mac(bk: &BackupKey, salt: &[u8], raw: &[u8]) -> HmacSha256 {
    let key = bk.derive(Some(salt), label::ARCHIVE_HEADER_MAC);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_ref()).expect("any key length");
    mac.update(raw);
    mac
}

impl Header {
    /// A header for a new archive under `bk`, with a fresh salt.
    pub fn new(bk: &BackupKey, flags: u16, chunk_size: u32, slots: Vec<SlotRecord>) -> Self {
        let mut salt = [0u8; SALT_LEN];
        crate::key::random_bytes(&mut salt);
        Self::with_salt(bk, flags, chunk_size, slots, salt, crate::slot::now_unix())
    }

    /// A header with the given salt and time: for known-answer vectors
    /// only. A salt must never be reused for real archives.
    pub fn with_salt(
        bk: &BackupKey,
        flags: u16,
        chunk_size: u32,
        slots: Vec<SlotRecord>,
        salt: [u8; SALT_LEN],
        created: u64,
    ) -> Self {
        let mut slot_bytes = Vec::new();
        canonical_json(
            &serde_json::Value::Array(slots.iter().map(SlotRecord::to_json).collect()),
            &mut slot_bytes,
        );
        let mut raw = Vec::with_capacity(FIXED_LEN + slot_bytes.len());
        raw.extend_from_slice(MAGIC);
        let version = crate::keyring::format_version(&slots) as u16;
        raw.extend_from_slice(&version.to_be_bytes());
        raw.extend_from_slice(&flags.to_be_bytes());
        raw.extend_from_slice(&chunk_size.to_be_bytes());
        raw.extend_from_slice(&bk.key_id().0);
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&created.to_be_bytes());
        raw.extend_from_slice(&(slot_bytes.len() as u32).to_be_bytes());
        raw.extend_from_slice(&slot_bytes);
        let mac = header_mac(bk, &salt, &raw).finalize().into_bytes().into();
        Self {
            version,
            flags,
            chunk_size,
            key_id: bk.key_id(),
            salt,
            created,
            slots,
            raw,
            mac,
        }
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
        raw.resize(FIXED_LEN + slots_len as usize, 0);
        read_exact(r, &mut raw[FIXED_LEN..], "header slot list")?;
        let mut mac = [0u8; MAC_LEN];
        read_exact(r, &mut mac, "header MAC")?;
        let value = crate::keyring::parse_strict_json(&raw[FIXED_LEN..])
            .map_err(|e| corrupt(format!("header: slot list is not valid JSON: {e}")))?;
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
            raw,
            mac,
        })
    }

    /// Check that `bk` is this archive's key and the header is intact.
    pub fn verify(&self, bk: &BackupKey) -> Result<()> {
        if bk.key_id() != self.key_id {
            return Err(corrupt(
                "header names a key id that is not the one its slots unwrap: it was tampered with",
            ));
        }
        header_mac(bk, &self.salt, &self.raw)
            .verify_slice(&self.mac)
            .map_err(|_| corrupt("header does not authenticate: it was modified or damaged"))
    }

    /// The payload key: HKDF-SHA256(BK, salt, "coffer/v1 archive payload").
    pub fn payload_key(&self, bk: &BackupKey) -> super::stream::PayloadKey {
        super::stream::PayloadKey::new(&bk.derive(Some(&self.salt), label::ARCHIVE_PAYLOAD))
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
        let h = Header::new(&bk, FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        (bk, h)
    }

    #[test]
    fn round_trip_and_verify() {
        let (bk, h) = sample();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), h.encoded_len());
        let back = Header::read(&mut &bytes[..]).unwrap();
        back.verify(&bk).unwrap();
        assert_eq!(back.slots, h.slots);
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn every_flipped_bit_in_the_header_is_detected() {
        let (bk, h) = sample();
        let bytes = h.to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = Header::read(&mut &bad[..])
                .and_then(|h| h.verify(&bk))
                .is_ok();
            assert!(!ok, "flip at byte {i} accepted");
        }
    }

    #[test]
    fn truncated_headers_are_refused() {
        let (_, h) = sample();
        let bytes = h.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Header::read(&mut &bytes[..cut]).is_err(), "cut at {cut}");
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
}
