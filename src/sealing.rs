//! Write-only sealing (format version 2, docs/format.md §8): the key
//! material that lets a host seal archives it can never open.
//!
//! The backup key `BK` derives, deterministically, a hybrid post-quantum
//! KEM key pair (X-Wing: X25519 + ML-KEM-768,
//! draft-connolly-cfrg-xwing-kem-06):
//!
//! ```text
//! seed        = HKDF(none, BK, "coffer/v2 sealing seed", 32)   X-Wing decapsulation key
//! public key  = X-Wing expansion of seed                        1216 bytes
//! key id      = SHA-256("coffer/v2 key id" ‖ public key)[0..16]
//! ```
//!
//! Sealing an archive needs only the public key: a fresh encapsulation
//! gives a 1120-byte ciphertext (stored in the header) and a 32-byte
//! **file key**, from which the payload key derives. Knowing the public
//! key must not let anyone forge an archive, so headers are authenticated
//! by a **sealer key** `HKDF(none, BK, "coffer/v2 sealer key" ‖ 0x00 ‖
//! sealer id)`: the owner seals as `owner`; a seal-only host holds only
//! its own sealer key, which opens nothing.
//!
//! Owns: the seed and key pair derivation, public key parsing (strict:
//! keyrings are attacker-writable until their MAC is checked),
//! the key id, encapsulation and decapsulation of file keys, sealer ids
//! and keys, and the per-archive header MAC and payload key derivations.
//! One KEM library, `x-wing` (pinned in Cargo.toml).
//!
//! Must never: change a byte of a derivation (every sealed archive and
//! every keyring's key id depend on them; the known-answer tests below
//! fail first), `Debug` or print a seed, file key or sealer key, derive a
//! sealer key for a host from anything but `BK` and its id, or let a
//! malformed public key or encapsulation panic.
//!
//! The keyring carries the public key and one [`Sealer`]
//! (`src/keyring/`), the archive header an encapsulation and the sealer's
//! id (`src/archive/header.rs`); docs/format.md §8.8 has both layouts.

use crate::key::{BackupKey, KEY_ID_LEN, KEY_LEN, KeyId, hkdf_sha256, label, random_bytes};
use sha2::{Digest as _, Sha256};
use std::fmt;
use x_wing::{
    DecapsulationKeyRejectNonContrib, Decapsulator as _, EncapsulationKey, KeyExport as _,
    TryDecapsulate as _, TryKeyInit as _,
};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of the sealing seed (the X-Wing decapsulation key), in bytes.
pub const SEED_LEN: usize = x_wing::DECAPSULATION_KEY_SIZE;
/// Length of a sealing public key (X-Wing encapsulation key:
/// ML-KEM-768 `ek` (1184) ‖ X25519 public key (32)), in bytes.
pub const PUBLIC_KEY_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Length of an encapsulation (X-Wing ciphertext: ML-KEM-768 ciphertext
/// (1088) ‖ X25519 ephemeral public key (32)), in bytes.
pub const ENCAPSULATION_LEN: usize = x_wing::CIPHERTEXT_SIZE;
/// Length of the randomness one encapsulation consumes, in bytes.
pub const ENCAPSULATION_RANDOMNESS_LEN: usize = x_wing::ENCAPSULATION_RANDOMNESS_SIZE;
/// Length of a file key (the X-Wing shared secret), in bytes.
pub const FILE_KEY_LEN: usize = 32;
/// Length of an archive salt, in bytes (docs/format.md §4).
pub const SALT_LEN: usize = 32;
/// Longest sealer id, in characters.
pub const SEALER_ID_MAX: usize = 32;

/// What can be wrong with sealing material read from a file. The messages
/// name lengths and rules only, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealingError {
    /// A public key of the wrong length.
    #[error("a sealing public key is {PUBLIC_KEY_LEN} bytes, not {0}")]
    PublicKeyLength(usize),
    /// The ML-KEM-768 half fails FIPS 203 §7.2's encapsulation key check.
    #[error("the sealing public key's ML-KEM-768 part is not a valid encapsulation key")]
    PublicKeyInvalid,
    /// An encapsulation of the wrong length.
    #[error("a sealed file key is {ENCAPSULATION_LEN} bytes, not {0}")]
    EncapsulationLength(usize),
    /// The X25519 half of an encapsulation agrees to the all-zero value
    /// (RFC 7748 §6.1): no honest writer produces one.
    #[error("the sealed file key's X25519 part is a low-order point")]
    NonContributory,
    /// A sealer id outside 1–32 characters of `[a-z0-9-]`.
    #[error("a sealer id is 1 to 32 characters of a-z, 0-9 and -")]
    SealerIdSyntax,
    /// `owner` named where only a seal-only host's id may be.
    #[error("the sealer id `owner` is reserved for the keyring's owner")]
    SealerIdReserved,
}

/// The sealing key pair's secret half, derived from `BK`: the 32-byte
/// X-Wing decapsulation key (the seed). Zeroized on drop, with the
/// expanded ML-KEM and X25519 secrets the library makes from it on each
/// use; never printed.
pub struct SealingSecret(DecapsulationKeyRejectNonContrib);

impl SealingSecret {
    /// The sealing secret of `bk`: `seed = HKDF(none, BK, "coffer/v2
    /// sealing seed", 32)`.
    pub fn derive(bk: &BackupKey) -> Self {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        hkdf_sha256(None, bk.expose(), label::SEALING_SEED, seed.as_mut());
        Self::from_seed(&seed)
    }

    /// From the X-Wing decapsulation key itself (the derivation above, and
    /// the draft's known-answer tests).
    fn from_seed(seed: &Zeroizing<[u8; SEED_LEN]>) -> Self {
        Self(DecapsulationKeyRejectNonContrib::from(**seed))
    }

    /// The public half (the X-Wing expansion of the seed, draft §5.2).
    pub fn public_key(&self) -> SealingPublicKey {
        let ek = self.0.encapsulation_key().clone();
        let bytes = Box::new(ek.to_bytes().into());
        SealingPublicKey { bytes, ek }
    }

    /// Open a sealed file key. X-Wing decapsulation does not authenticate:
    /// a damaged or foreign encapsulation yields a wrong file key, not an
    /// error (ML-KEM's implicit rejection), and the caller finds out when
    /// the header MAC or the first chunk fails. The one refusal is an
    /// X25519 half that agrees to zero (RFC 7748 §6.1), which only a
    /// deliberately crafted encapsulation has.
    pub fn open_file_key(&self, sealed: &Encapsulation) -> Result<FileKey, SealingError> {
        let ct = x_wing::Ciphertext::from(sealed.0);
        let mut ss = self
            .0
            .try_decapsulate(&ct)
            .map_err(|_| SealingError::NonContributory)?;
        let key = FileKey(ss.into());
        ss.as_mut_slice().zeroize();
        Ok(key)
    }
}

impl fmt::Debug for SealingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingSecret").finish_non_exhaustive()
    }
}

/// The public half of the sealing key pair: an X-Wing encapsulation key,
/// 1216 bytes. Anyone holding it can seal a file key to `BK`'s owner;
/// nobody can authenticate a header with it alone.
#[derive(Clone)]
pub struct SealingPublicKey {
    bytes: Box<[u8; PUBLIC_KEY_LEN]>,
    ek: EncapsulationKey,
}

impl SealingPublicKey {
    /// The public key `bk` derives ([`SealingSecret::derive`]).
    pub fn derive(bk: &BackupKey) -> Self {
        SealingSecret::derive(bk).public_key()
    }

    /// Parse a public key read from a file. Refuses a wrong length and an
    /// ML-KEM-768 half that fails FIPS 203 §7.2's modulus check (every
    /// coefficient below q = 3329; `ml-kem` runs it when parsing, and the
    /// round trip below holds us to it). The X25519 half is 32 arbitrary
    /// bytes, as RFC 7748 has no invalid public keys. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealingError> {
        let bytes: &[u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealingError::PublicKeyLength(bytes.len()))?;
        let ek =
            EncapsulationKey::new_from_slice(bytes).map_err(|_| SealingError::PublicKeyInvalid)?;
        if ek.to_bytes().as_slice() != bytes.as_slice() {
            return Err(SealingError::PublicKeyInvalid);
        }
        Ok(Self {
            bytes: Box::new(*bytes),
            ek,
        })
    }

    /// The 1216 bytes: ML-KEM-768 `ek` ‖ X25519 public key.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// The key id of format 2: the first 16 bytes of
    /// `SHA-256("coffer/v2 key id" ‖ public key)`. Anyone can check it
    /// against a public key; only `BK` derives the public key.
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::new()
            .chain_update(label::SEALING_KEY_ID)
            .chain_update(self.bytes.as_slice())
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// Whether `bk` derives this public key: what a reader checks after
    /// unlocking, before trusting a keyring's or header's key id.
    pub fn is_derived_from(&self, bk: &BackupKey) -> bool {
        Self::derive(bk) == *self
    }

    /// Seal a fresh file key to this public key, with 64 bytes from the
    /// operating system's CSPRNG. Returns the encapsulation (for the
    /// header) and the file key (for the payload key).
    pub fn seal_file_key(&self) -> (Encapsulation, FileKey) {
        let mut randomness = Zeroizing::new([0u8; ENCAPSULATION_RANDOMNESS_LEN]);
        random_bytes(randomness.as_mut());
        self.seal_file_key_with(&randomness)
    }

    /// The derandomized encapsulation (draft §5.4.1 `EncapsulateDerand`):
    /// `randomness[0..32]` is ML-KEM's `m`, `randomness[32..64]` the X25519
    /// ephemeral secret. Only [`Self::seal_file_key`] and the known-answer
    /// vectors call it: reused randomness reveals the file key.
    #[doc(hidden)]
    pub fn seal_file_key_with(
        &self,
        randomness: &Zeroizing<[u8; ENCAPSULATION_RANDOMNESS_LEN]>,
    ) -> (Encapsulation, FileKey) {
        let r: &[u8; ENCAPSULATION_RANDOMNESS_LEN] = randomness;
        let (ct, mut ss) = self.ek.encapsulate_deterministic(r.into());
        let key = FileKey(ss.into());
        ss.as_mut_slice().zeroize();
        (Encapsulation(ct.into()), key)
    }
}

impl PartialEq for SealingPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SealingPublicKey {}

impl fmt::Debug for SealingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingPublicKey(key id {})", self.key_id())
    }
}

/// A sealed file key: the X-Wing ciphertext, 1120 bytes (ML-KEM-768
/// ciphertext ‖ X25519 ephemeral public key). Public.
#[derive(Clone, PartialEq, Eq)]
pub struct Encapsulation([u8; ENCAPSULATION_LEN]);

impl Encapsulation {
    /// From bytes read from a header: any 1120 bytes (FIPS 203 §7.3's
    /// ciphertext check is the length; X25519 takes any 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealingError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| SealingError::EncapsulationLength(bytes.len()))
    }

    /// The 1120 bytes.
    pub fn as_bytes(&self) -> &[u8; ENCAPSULATION_LEN] {
        &self.0
    }
}

impl fmt::Debug for Encapsulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encapsulation({}…)", hex::encode(&self.0[..8]))
    }
}

/// An archive's file key: the X-Wing shared secret of its encapsulation,
/// fresh per archive. Zeroized on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; FILE_KEY_LEN]);

impl FileKey {
    /// The archive's payload key: `HKDF(header hash, file key, "coffer/v2
    /// archive payload", 32)`, where the header hash is SHA-256 of the
    /// header bytes its MAC covers. Binding the payload to its whole header
    /// keeps any other sealer (who can make a valid MAC of its own) from
    /// moving a payload under a header it rewrote.
    pub fn payload_key(&self, header_hash: &[u8; 32]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_sha256(
            Some(header_hash),
            &self.0,
            label::ARCHIVE_PAYLOAD_V2,
            out.as_mut(),
        );
        out
    }

    /// The raw bytes (known-answer tests).
    #[cfg(test)]
    fn expose(&self) -> &[u8; FILE_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileKey").finish_non_exhaustive()
    }
}

/// Who sealed an archive: 1–32 characters of `[a-z0-9-]`, as slot ids.
/// `owner` is the keyring's owner; every other id is a seal-only host.
/// Public (headers carry it), and safe to print as is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SealerId(String);

impl SealerId {
    /// The owner's sealer id.
    pub const OWNER: &str = "owner";

    /// The owner's id.
    pub fn owner() -> Self {
        Self(Self::OWNER.to_owned())
    }

    /// Parse any sealer id, `owner` included (what a header names).
    pub fn parse(s: &str) -> Result<Self, SealingError> {
        let ok = (1..=SEALER_ID_MAX).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SealingError::SealerIdSyntax)
        }
    }

    /// Parse the id of a seal-only host (`export --seal-only`): as
    /// [`Self::parse`], but `owner` is refused, so that no host is given
    /// the owner's sealer key.
    pub fn host(s: &str) -> Result<Self, SealingError> {
        let id = Self::parse(s)?;
        if id.is_owner() {
            return Err(SealingError::SealerIdReserved);
        }
        Ok(id)
    }

    /// Whether this is the owner's id.
    pub fn is_owner(&self) -> bool {
        self.0 == Self::OWNER
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SealerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SealerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealerId({})", self.0)
    }
}

/// One sealer's key: `HKDF(none, BK, "coffer/v2 sealer key" ‖ 0x00 ‖
/// sealer id, 32)`. It authenticates the headers that sealer writes and
/// opens nothing. Zeroized on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SealerKey([u8; KEY_LEN]);

impl SealerKey {
    /// The sealer key of `id` under `bk`.
    pub fn derive(bk: &BackupKey, id: &SealerId) -> Self {
        let mut info = Vec::with_capacity(label::SEALER_KEY.len() + 1 + id.0.len());
        info.extend_from_slice(label::SEALER_KEY);
        info.push(0x00);
        info.extend_from_slice(id.0.as_bytes());
        let mut key = Self([0u8; KEY_LEN]);
        hkdf_sha256(None, bk.expose(), &info, &mut key.0);
        key
    }

    /// Take ownership of raw bytes (a seal-only host's keyring).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes, for writing a seal-only host's keyring. Keep the
    /// borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An archive's header MAC key: `HKDF(salt, sealer key, "coffer/v2
    /// archive header mac", 32)`.
    pub fn header_mac_key(&self, salt: &[u8; SALT_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_sha256(
            Some(salt),
            &self.0,
            label::ARCHIVE_HEADER_MAC_V2,
            out.as_mut(),
        );
        out
    }
}

impl fmt::Debug for SealerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealerKey").finish_non_exhaustive()
    }
}

/// What a keyring seals with: the sealing public key, and one sealer's id
/// and key. Sealing needs nothing else, so a host holding a `Sealer` for
/// its own id (`export --seal-only`) seals archives that only `BK` opens,
/// and that open as sealed by that host. Never printed whole: `Debug`
/// shows the key id and the sealer id.
pub struct Sealer {
    public_key: SealingPublicKey,
    id: SealerId,
    key: SealerKey,
}

impl Sealer {
    /// The owner's sealer: `BK`'s public key, as `owner`.
    pub fn owner(bk: &BackupKey) -> Self {
        Self::derive(bk, SealerId::owner())
    }

    /// `BK`'s public key, sealing as `id`.
    pub fn derive(bk: &BackupKey, id: SealerId) -> Self {
        Self {
            public_key: SealingPublicKey::derive(bk),
            key: SealerKey::derive(bk, &id),
            id,
        }
    }

    /// From what a keyring holds (its MAC unchecked: a seal-only host
    /// cannot check it).
    pub fn from_parts(public_key: SealingPublicKey, id: SealerId, key: SealerKey) -> Self {
        Self {
            public_key,
            id,
            key,
        }
    }

    /// The public key archives are sealed to.
    pub fn public_key(&self) -> &SealingPublicKey {
        &self.public_key
    }

    /// The key id of the public key.
    pub fn key_id(&self) -> KeyId {
        self.public_key.key_id()
    }

    /// Who seals.
    pub fn id(&self) -> &SealerId {
        &self.id
    }

    /// The sealer key that authenticates headers.
    pub fn key(&self) -> &SealerKey {
        &self.key
    }

    /// Whether `bk` derives this sealer: its public key and its sealer key
    /// (the latter compared in constant time). What a reader checks after
    /// unlocking a keyring.
    pub fn is_derived_from(&self, bk: &BackupKey) -> bool {
        use subtle::ConstantTimeEq as _;
        let key = SealerKey::derive(bk, &self.id);
        let same_key: bool = key.0.ct_eq(&self.key.0).into();
        same_key && self.public_key.is_derived_from(bk)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id().to_string())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `name: hex` lines, as in tests/vectors/.
    fn vector(text: &str) -> BTreeMap<&str, Vec<u8>> {
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k, hex::decode(v).unwrap())
            })
            .collect()
    }

    fn array<const N: usize>(v: &[u8]) -> [u8; N] {
        v.try_into().unwrap()
    }

    /// The first known answer of draft-connolly-cfrg-xwing-kem-06
    /// (spec/test-vectors.json), through this module's own paths: seed →
    /// public key, `EncapsulateDerand` → ciphertext and shared secret, and
    /// back. Fails if an upgrade of `x-wing` changes the construction.
    #[test]
    fn xwing_draft06_known_answer() {
        let v = vector(include_str!("../tests/vectors/xwing-draft06.txt"));
        let secret = SealingSecret::from_seed(&Zeroizing::new(array(&v["seed"])));
        let pk = secret.public_key();
        assert_eq!(pk.as_bytes().as_slice(), v["public key"].as_slice());
        assert_eq!(SealingPublicKey::from_bytes(&v["public key"]).unwrap(), pk);
        let (ct, fk) = pk.seal_file_key_with(&Zeroizing::new(array(&v["eseed"])));
        assert_eq!(ct.as_bytes().as_slice(), v["ciphertext"].as_slice());
        assert_eq!(fk.expose().as_slice(), v["shared secret"].as_slice());
        let opened = secret
            .open_file_key(&Encapsulation::from_bytes(&v["ciphertext"]).unwrap())
            .unwrap();
        assert_eq!(opened.expose(), fk.expose());
    }

    /// coffer's own vector (docs/format.md §8.9, tests/vectors/sealing-v2.txt),
    /// cross-checked by an independent Python implementation of §8 (hashlib,
    /// `cryptography`'s X25519, kyber-py's ML-KEM-768). Every line is checked.
    #[test]
    fn coffer_sealing_vector() {
        let v = vector(include_str!("../tests/vectors/sealing-v2.txt"));
        let bk = BackupKey::from_bytes(array(&v["backup key"]));
        let salt: [u8; SALT_LEN] = array(&v["salt"]);
        let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        hkdf_sha256(None, bk.expose(), label::SEALING_SEED, seed.as_mut());
        assert_eq!(
            SealingSecret::from_seed(&seed).public_key(),
            SealingPublicKey::derive(&bk)
        );
        let pk = SealingPublicKey::derive(&bk);
        let randomness = Zeroizing::new(array(&v["encapsulation randomness"]));
        let (ct, fk) = pk.seal_file_key_with(&randomness);
        got.insert("backup key".into(), bk.expose().to_vec());
        got.insert("sealing seed".into(), seed.to_vec());
        got.insert(
            "public key sha256".into(),
            Sha256::digest(pk.as_bytes()).to_vec(),
        );
        got.insert("key id".into(), pk.key_id().0.to_vec());
        got.insert("encapsulation randomness".into(), randomness.to_vec());
        got.insert(
            "encapsulation sha256".into(),
            Sha256::digest(ct.as_bytes()).to_vec(),
        );
        got.insert("file key".into(), fk.expose().to_vec());
        got.insert("salt".into(), salt.to_vec());
        let header_hash: [u8; 32] = array(&v["header hash"]);
        got.insert("header hash".into(), header_hash.to_vec());
        got.insert("payload key".into(), fk.payload_key(&header_hash).to_vec());
        for id in ["owner", "nas-1"] {
            let key = SealerKey::derive(&bk, &SealerId::parse(id).unwrap());
            got.insert(format!("sealer key {id}"), key.expose().to_vec());
            got.insert(
                format!("header mac key {id}"),
                key.header_mac_key(&salt).to_vec(),
            );
        }
        let want: BTreeMap<String, Vec<u8>> =
            v.into_iter().map(|(k, b)| (k.to_owned(), b)).collect();
        assert_eq!(got, want);
        let opened = SealingSecret::derive(&bk).open_file_key(&ct).unwrap();
        assert_eq!(opened.expose(), fk.expose());
        assert!(pk.is_derived_from(&bk));
        assert_eq!(
            SealerKey::derive(&bk, &SealerId::owner()).expose(),
            SealerKey::derive(&bk, &SealerId::parse("owner").unwrap()).expose()
        );
    }

    #[test]
    fn sealing_round_trips_with_fresh_randomness() {
        let bk = BackupKey::generate();
        let pk = SealingPublicKey::derive(&bk);
        let (ct1, fk1) = pk.seal_file_key();
        let (ct2, fk2) = pk.seal_file_key();
        assert_ne!(ct1, ct2);
        assert_ne!(fk1.expose(), fk2.expose());
        let secret = SealingSecret::derive(&bk);
        assert_eq!(secret.open_file_key(&ct1).unwrap().expose(), fk1.expose());
        assert_eq!(secret.open_file_key(&ct2).unwrap().expose(), fk2.expose());
    }

    /// Implicit rejection: another key, or a flipped bit, opens to some
    /// other file key rather than failing; the header MAC and the chunks
    /// are what fail.
    #[test]
    fn a_wrong_key_or_damaged_encapsulation_gives_another_file_key() {
        let bk = BackupKey::generate();
        let (ct, fk) = SealingPublicKey::derive(&bk).seal_file_key();
        let other = SealingSecret::derive(&BackupKey::generate());
        assert_ne!(other.open_file_key(&ct).unwrap().expose(), fk.expose());
        for at in [0, 1087, 1088, 1119] {
            let mut bytes = *ct.as_bytes();
            bytes[at] ^= 1;
            let damaged = Encapsulation::from_bytes(&bytes).unwrap();
            let opened = SealingSecret::derive(&bk).open_file_key(&damaged).unwrap();
            assert_ne!(opened.expose(), fk.expose(), "bit flipped at {at}");
        }
    }

    #[test]
    fn another_backup_key_derives_another_public_key() {
        let bk = BackupKey::from_bytes([1; 32]);
        let pk = SealingPublicKey::derive(&bk);
        assert!(pk.is_derived_from(&bk));
        let other = BackupKey::from_bytes([2; 32]);
        assert!(!pk.is_derived_from(&other));
        assert_ne!(pk.key_id(), SealingPublicKey::derive(&other).key_id());
        // The format 2 key id is not the format 1 one.
        assert_ne!(pk.key_id(), bk.key_id_v1());
    }

    #[test]
    fn public_keys_are_parsed_strictly_and_never_panic() {
        let pk = SealingPublicKey::derive(&BackupKey::from_bytes([3; 32]));
        let bytes = *pk.as_bytes();
        for len in [0, 1, 1184, 1215, 1217, 2432] {
            let mut b = bytes.to_vec();
            b.resize(len, 0);
            assert_eq!(
                SealingPublicKey::from_bytes(&b).unwrap_err(),
                SealingError::PublicKeyLength(len)
            );
        }
        // FIPS 203 §7.2 modulus check: the first 12-bit coefficient set to
        // 4095 ≥ q = 3329.
        let mut bad = bytes;
        bad[0] = 0xff;
        bad[1] |= 0x0f;
        assert_eq!(
            SealingPublicKey::from_bytes(&bad).unwrap_err(),
            SealingError::PublicKeyInvalid
        );
        // The last coefficient (the high nibble of byte 1150 and byte
        // 1151), and all-ones.
        let mut bad = bytes;
        bad[1151] = 0xff;
        bad[1150] |= 0xf0;
        assert!(SealingPublicKey::from_bytes(&bad).is_err());
        assert!(SealingPublicKey::from_bytes(&[0xff; PUBLIC_KEY_LEN]).is_err());
        // Random bytes: 768 coefficients each below q with chance 3329/4096.
        for _ in 0..32 {
            let mut b = [0u8; PUBLIC_KEY_LEN];
            random_bytes(&mut b);
            assert!(SealingPublicKey::from_bytes(&b).is_err());
        }
        // The X25519 half is any 32 bytes; the ML-KEM seed rho any 32.
        let mut ok = bytes;
        ok[1183] ^= 0xff;
        ok[PUBLIC_KEY_LEN - 1] ^= 0xff;
        let parsed = SealingPublicKey::from_bytes(&ok).unwrap();
        assert_eq!(parsed.as_bytes(), &ok);
        assert_ne!(parsed.key_id(), pk.key_id());
    }

    /// An X25519 half at a low-order point (here u = 0) would make the
    /// X25519 shared secret zero: refused, though no honest writer makes one.
    #[test]
    fn a_non_contributory_encapsulation_is_refused() {
        let bk = BackupKey::generate();
        let (ct, _) = SealingPublicKey::derive(&bk).seal_file_key();
        let mut bytes = *ct.as_bytes();
        bytes[1088..].fill(0);
        let crafted = Encapsulation::from_bytes(&bytes).unwrap();
        assert_eq!(
            SealingSecret::derive(&bk)
                .open_file_key(&crafted)
                .unwrap_err(),
            SealingError::NonContributory
        );
    }

    #[test]
    fn encapsulations_are_exactly_1120_bytes() {
        for len in [0, 1088, 1119, 1121] {
            assert_eq!(
                Encapsulation::from_bytes(&vec![0; len]).unwrap_err(),
                SealingError::EncapsulationLength(len)
            );
        }
        assert!(Encapsulation::from_bytes(&[7; ENCAPSULATION_LEN]).is_ok());
    }

    #[test]
    fn sealer_ids() {
        for ok in ["owner", "nas-1", "a", "0", "-", &"x".repeat(32)] {
            assert_eq!(SealerId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Nas", "nas_1", "nas 1", "né", "nas.1", &"x".repeat(33)] {
            assert_eq!(
                SealerId::parse(bad).unwrap_err(),
                SealingError::SealerIdSyntax
            );
            assert!(SealerId::host(bad).is_err());
        }
        assert!(SealerId::parse("owner").unwrap().is_owner());
        assert!(SealerId::owner().is_owner());
        assert_eq!(
            SealerId::host("owner").unwrap_err(),
            SealingError::SealerIdReserved
        );
        assert!(!SealerId::host("owner-2").unwrap().is_owner());
    }

    #[test]
    fn sealer_keys_are_separate() {
        let bk = BackupKey::from_bytes([4; 32]);
        let a = SealerKey::derive(&bk, &SealerId::parse("nas").unwrap());
        let b = SealerKey::derive(&bk, &SealerId::parse("nas-").unwrap());
        let o = SealerKey::derive(&bk, &SealerId::owner());
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), o.expose());
        assert_ne!(*a.header_mac_key(&[0; 32]), *a.header_mac_key(&[1; 32]));
        // Not the format 1 header MAC key of the same salt.
        assert_ne!(
            *o.header_mac_key(&[0; 32]),
            *bk.derive(Some(&[0; 32]), label::ARCHIVE_HEADER_MAC)
        );
        let back = SealerKey::from_bytes(*a.expose());
        assert_eq!(back.expose(), a.expose());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let bk = BackupKey::from_bytes([0xab; 32]);
        let secret = SealingSecret::derive(&bk);
        let (ct, fk) = secret.public_key().seal_file_key();
        let sealer = SealerKey::from_bytes([0xcd; 32]);
        let fk_hex = hex::encode(fk.expose());
        for text in [
            format!("{secret:?}"),
            format!("{fk:?}"),
            format!("{sealer:?}"),
        ] {
            assert!(!text.contains("cd") && !text.contains("205"), "{text}");
            assert!(!text.contains(&fk_hex[..8]), "{text}");
            assert!(!text.contains("171"), "{text}");
        }
        // Public values print briefly (a key id, a ciphertext's first bytes).
        for text in [format!("{ct:?}"), format!("{:?}", secret.public_key())] {
            assert!(!text.contains(&fk_hex[..8]), "{text}");
            assert!(text.len() < 80, "{text}");
        }
    }
}
