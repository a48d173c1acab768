//! Secret key types: the backup key, key-encryption keys, and the public key
//! id.
//!
//! Owns: generation, derivation (HKDF-SHA256 with fixed labels) and AES-KW
//! wrapping of the backup key. Must never: print, log or `Debug` key bytes,
//! or hand out copies that escape zeroization.

use aes_kw::KeyInit;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of the backup key and of every KEK, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an AES-KW wrapped backup key (RFC 3394: key + 8-byte IV).
pub const WRAPPED_LEN: usize = KEY_LEN + 8;
/// Length of a key id, in bytes.
pub const KEY_ID_LEN: usize = 16;

/// Every `coffer/v1 …` and `coffer/v2 …` label, in one place: the HKDF
/// `info` strings (each derived key has its own, so no two uses share a
/// key), the AEAD associated data that binds a sealed secret to its use,
/// and the prefix of the one hash (the format 2 key id). They are part of
/// the format (docs/format.md §1.1 lists each and where it is used); a
/// changed byte here makes every existing keyring and archive unreadable.
pub mod label {
    /// HKDF info: the key id, from BK (`key.rs`).
    pub const KEY_ID: &[u8] = b"coffer/v1 key id";
    /// HKDF info: the keyring MAC key, from BK (`keyring.rs`).
    pub const KEYRING_MAC: &[u8] = b"coffer/v1 keyring mac";
    /// HKDF info: a recovery slot's KEK, from the recovery key's 240 bits
    /// (`slot/recovery.rs`).
    pub const RECOVERY_KEK: &[u8] = b"coffer/v1 recovery kek";
    /// HKDF info: an archive's header MAC key, from BK and the archive salt
    /// (`archive/header.rs`).
    pub const ARCHIVE_HEADER_MAC: &[u8] = b"coffer/v1 archive header mac";
    /// HKDF info: an archive's payload key, from BK and the archive salt
    /// (`archive/header.rs`).
    pub const ARCHIVE_PAYLOAD: &[u8] = b"coffer/v1 archive payload";
    /// HKDF info: a YubiKey slot's KEK, from the P-256 ECDH shared x
    /// coordinate (`ecdh.rs`, used by `slot/yubikey.rs`).
    pub const YUBIKEY_KEK: &[u8] = b"coffer/v1 yubikey kek";
    /// HKDF info: a PKCS#11 `ecdh` slot's KEK, from the P-256 ECDH shared x
    /// coordinate (`ecdh.rs`, used by `slot/pkcs11`).
    pub const PKCS11_ECDH_KEK: &[u8] = b"coffer/v1 pkcs11 ecdh kek";
    /// AES-GCM associated data (not HKDF): the KEK a PKCS#11 `aes-gcm`
    /// slot's token key seals (`slot/pkcs11`).
    pub const PKCS11_AES_GCM_KEK: &[u8] = b"coffer/v1 pkcs11 aes-gcm kek";
    /// HKDF info: a FIDO2 slot's KEK, from the key's hmac-secret output,
    /// salted with the slot's salt (`slot/fido2.rs`).
    pub const FIDO2_KEK: &[u8] = b"coffer/v2 fido2 kek";
    /// HKDF info: a vault slot's KEK, from the OPAQUE export key
    /// (`slot/vault.rs`).
    pub const VAULT_KEK: &[u8] = b"coffer/v1 vault kek";
    /// AES-GCM associated data (not HKDF): the vault server's sealed OPAQUE
    /// server setup (`vault/server.rs`, sealed by `vault/hsm.rs`).
    pub const VAULT_SERVER_SETUP: &[u8] = b"coffer/v1 vault opaque-server-setup";
    /// Hash prefix (not HKDF): a record's id as the vault server's audit
    /// log names it (`vault/server.rs`).
    pub const VAULT_AUDIT_RECORD: &[u8] = b"coffer/v1 vault audit record";
    /// HKDF info: the vault server's key for its login-session state, from
    /// the unsealed server setup (`vault/server.rs`).
    pub const VAULT_SESSION_STATE: &[u8] = b"coffer/v1 vault session state key";
    /// HKDF info: the vault server's audit chain key, from the unsealed
    /// server setup (`vault/audit.rs`).
    pub const VAULT_AUDIT_CHAIN: &[u8] = b"coffer/v1 vault audit chain key";
    /// HMAC prefix (not HKDF): one row of the vault's audit chain
    /// (`vault/audit.rs`).
    pub const VAULT_AUDIT_ROW: &[u8] = b"coffer/v1 vault audit row";
    /// HKDF info: the vault server's key for its records' MACs and its
    /// epoch, from the unsealed server setup (`vault/epoch.rs`).
    pub const VAULT_STATE_KEY: &[u8] = b"coffer/v1 vault state key";
    /// HMAC prefix (not HKDF): one record row's MAC (`vault/epoch.rs`).
    pub const VAULT_STATE_ROW: &[u8] = b"coffer/v1 vault state row";
    /// HMAC prefix (not HKDF): the vault's epoch row (`vault/epoch.rs`).
    pub const VAULT_STATE_EPOCH: &[u8] = b"coffer/v1 vault state epoch";
    /// HKDF info: a row's term in the vault's sealed sum, from its MAC
    /// (`vault/epoch.rs`).
    pub const VAULT_STATE_TERM: &[u8] = b"coffer/v1 vault state term";
    /// HKDF info: the sealing seed (the X-Wing decapsulation key), from BK
    /// (`sealing.rs`, format 2).
    pub const SEALING_SEED: &[u8] = b"coffer/v2 sealing seed";
    /// SHA-256 prefix (not HKDF): the format 2 key id, a hash of the
    /// sealing public key (`sealing.rs`).
    pub const SEALING_KEY_ID: &[u8] = b"coffer/v2 key id";
    /// HKDF info prefix: a sealer's key, from BK; the full info is this,
    /// a 0x00 byte and the sealer id (`sealing.rs`, format 2).
    pub const SEALER_KEY: &[u8] = b"coffer/v2 sealer key";
    /// HKDF info: a format 2 archive's header MAC key, from the sealer key
    /// and the archive salt (`sealing.rs`).
    pub const ARCHIVE_HEADER_MAC_V2: &[u8] = b"coffer/v2 archive header mac";
    /// HKDF info: a format 2 archive's payload key, from its file key and
    /// the hash of its header (`sealing.rs`).
    pub const ARCHIVE_PAYLOAD_V2: &[u8] = b"coffer/v2 archive payload";
    /// HKDF info prefix: a passphrase for another tool, from BK; the full
    /// info is this, a 0x00 byte and the passphrase's name
    /// (`passphrase.rs`).
    pub const PASSPHRASE: &[u8] = b"coffer/v2 passphrase";
    /// HKDF info prefix: a threshold group's secret, from BK; the full info
    /// is this, a 0x00 byte and the group id (`shamir.rs`).
    pub const THRESHOLD_SECRET: &[u8] = b"coffer/v2 threshold secret";
    /// HKDF info prefix: a coefficient of a threshold group's polynomial,
    /// from BK; then 0x00, the group id, 0x00 and the coefficient's index
    /// as one byte (`shamir.rs`).
    pub const THRESHOLD_COEFFICIENT: &[u8] = b"coffer/v2 threshold coefficient";
    /// HKDF info prefix: the KEK a threshold group's member wraps its share
    /// under, from that member kind's own KEK; then 0x00, the group id,
    /// 0x00 and the member's x as one byte (`slot/threshold.rs`). A member
    /// never wraps under its kind's KEK itself, so no reader can take a
    /// share for the backup key.
    pub const THRESHOLD_MEMBER_KEK: &[u8] = b"coffer/v2 threshold member kek";
}

/// Fill `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the OS has no randomness to give: there is no safe way to go on.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// HMAC-SHA256, the one MAC of the formats (keyring, archive header) and
/// of FIDO2's PIN/UV auth protocols.
pub(crate) type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA512: the vault's record MACs (`vault/epoch.rs`).
#[cfg(feature = "vault-server")]
pub(crate) type HmacSha512 = hmac::Hmac<sha2::Sha512>;

/// HKDF-SHA256 expand of `ikm` (with optional salt) under `info`, into `out`.
pub(crate) fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .expect("HKDF-SHA256 output length within bounds");
}

/// The 256-bit key that encrypts archives. Zeroized on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BackupKey([u8; KEY_LEN]);

impl BackupKey {
    /// A fresh random backup key.
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        random_bytes(&mut k);
        Self(k)
    }

    /// Wrap raw bytes (for tests and known-answer vectors).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Format version 1's public identifier of this key: HKDF-SHA256(BK,
    /// "coffer/v1 key id"), first 16 bytes. It reveals nothing about the
    /// key. Version 2 names a key by its sealing public key instead
    /// ([`crate::sealing::SealingPublicKey::key_id`]).
    pub fn key_id_v1(&self) -> KeyId {
        let mut id = [0u8; KEY_ID_LEN];
        hkdf_sha256(None, &self.0, label::KEY_ID, &mut id);
        KeyId(id)
    }

    /// Derive a 32-byte subkey for `info` with optional salt.
    pub(crate) fn derive(&self, salt: Option<&[u8]>, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf_sha256(salt, &self.0, info, out.as_mut());
        out
    }

    /// `AES-KW(kek, self)` per RFC 3394.
    pub fn wrap(&self, kek: &Kek) -> WrappedKey {
        WrappedKey::wrap(&self.0, kek)
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupKey").finish_non_exhaustive()
    }
}

/// A key-encryption key: what a factor produces to wrap or unwrap the backup
/// key. Zeroized on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Kek([u8; KEY_LEN]);

impl Kek {
    /// Take ownership of raw KEK bytes (from a KDF, a device, or a test).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random KEK (for slots whose KEK is stored by a device).
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        random_bytes(&mut k);
        Self(k)
    }

    /// HKDF-SHA256 of `ikm` under `info` (with optional salt) as a KEK.
    pub fn derive(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> Self {
        let mut k = [0u8; KEY_LEN];
        hkdf_sha256(salt, ikm, info, &mut k);
        Self(k)
    }

    /// The raw KEK bytes, for handing to a device that seals them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").finish_non_exhaustive()
    }
}

/// `AES-KW(KEK, BK)`: public, 40 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(pub [u8; WRAPPED_LEN]);

/// The KEK did not unwrap the backup key (RFC 3394 integrity check failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key-wrap integrity check failed: wrong key-encryption key")]
pub struct WrongKek;

impl WrappedKey {
    /// `AES-KW(kek, secret)` per RFC 3394, for any 32-byte secret (the
    /// backup key, a threshold member's share).
    pub(crate) fn wrap(secret: &[u8; KEY_LEN], kek: &Kek) -> Self {
        let kw = aes_kw::KwAes256::new(&kek.0.into());
        let mut out = [0u8; WRAPPED_LEN];
        kw.wrap_key(secret, &mut out)
            .expect("AES-KW of a 32-byte key into a 40-byte buffer");
        WrappedKey(out)
    }

    /// Unwrap with `kek`; the RFC 3394 integrity check tells a wrong KEK.
    pub fn unwrap(&self, kek: &Kek) -> Result<BackupKey, WrongKek> {
        self.unwrap_secret(kek).map(|s| BackupKey(*s))
    }

    /// [`WrappedKey::unwrap`] for a secret that is not (or not yet known
    /// to be) the backup key.
    pub(crate) fn unwrap_secret(&self, kek: &Kek) -> Result<Zeroizing<[u8; KEY_LEN]>, WrongKek> {
        let kw = aes_kw::KwAes256::new(&kek.0.into());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        match kw.unwrap_key(&self.0, out.as_mut()) {
            Ok(_) => Ok(out),
            Err(_) => Err(WrongKek),
        }
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({})", hex::encode(self.0))
    }
}

/// Public identifier of a backup key (16 bytes, shown as 32 lowercase hex
/// digits). Two keyrings or archives with the same key id share a backup key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// Parse 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        if s.len() != 2 * KEY_ID_LEN || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3394 §4.6: wrap 256 bits of key data with a 256-bit KEK.
    #[test]
    fn aes_kw_rfc3394_4_6() {
        let kek: [u8; 32] =
            hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
                .unwrap()
                .try_into()
                .unwrap();
        let data: [u8; 32] =
            hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
                .unwrap()
                .try_into()
                .unwrap();
        let expected = hex::decode(
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
        )
        .unwrap();
        let kek = Kek::from_bytes(kek);
        let wrapped = BackupKey::from_bytes(data).wrap(&kek);
        assert_eq!(wrapped.0.to_vec(), expected);
        assert_eq!(wrapped.unwrap(&kek).unwrap().expose(), &data);
    }

    #[test]
    fn wrong_kek_is_detected() {
        let bk = BackupKey::generate();
        let wrapped = bk.wrap(&Kek::generate());
        assert_eq!(wrapped.unwrap(&Kek::generate()).unwrap_err(), WrongKek);
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let bk = BackupKey::from_bytes([0xab; 32]);
        let kek = Kek::from_bytes([0xcd; 32]);
        assert!(!format!("{bk:?}").contains("ab"));
        assert!(!format!("{kek:?}").contains("cd"));
        assert!(!format!("{bk:?}").contains("171"));
    }

    #[test]
    fn key_id_is_stable_and_hex() {
        let bk = BackupKey::from_bytes([7; 32]);
        let id = bk.key_id_v1();
        assert_eq!(KeyId::from_hex(&id.to_string()), Some(id));
        assert_eq!(id.to_string().len(), 32);
        assert_ne!(BackupKey::from_bytes([8; 32]).key_id_v1(), id);
    }
}
