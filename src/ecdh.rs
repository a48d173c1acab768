//! P-256 ECDH to a device's public key, then HKDF-SHA256 to a KEK: the
//! scheme the YubiKey slot and the PKCS#11 `ecdh` slot share
//! (docs/format.md §1.1). The agreement alone ([`agree`]) also serves
//! FIDO2's PIN/UV auth protocols, which derive their own keys from `Z`.
//!
//! Wrapping needs only the device's public key `P`: a fresh ephemeral key
//! `e` agrees with it, `Z` is the x coordinate of `e·P`, and
//!
//! ```text
//! KEK = HKDF-SHA256(ikm = Z, salt = SEC1(e·G) ‖ SEC1(P), info = label)
//! ```
//!
//! with both points SEC1 uncompressed (65 bytes) and the label the slot
//! kind's (`key::label::YUBIKEY_KEK`, `key::label::PKCS11_ECDH_KEK`).
//! Unwrapping, the device computes `Z` from its private key and the stored
//! ephemeral point; [`kek_from_shared`] finishes the derivation.
//!
//! Owns: parsing and validating P-256 public keys (a point, DER or PEM
//! SubjectPublicKeyInfo), the ephemeral key, the derivation. One EC
//! library, `p256` (pure Rust, with the point and SPKI/PEM decoding the
//! enrollment paths need). Must never: accept a point that is not on the
//! curve (it would be sent to a device), keep the ephemeral secret or `Z`
//! past the call, or change a byte of the derivation (existing slots must
//! keep opening).

use crate::key::{Kek, random_bytes};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use zeroize::Zeroizing;

pub use p256::PublicKey;

/// Length of an uncompressed SEC1 P-256 point: `04 ‖ x ‖ y`.
pub const POINT_LEN: usize = 65;
/// Length of the shared secret `Z` (an x coordinate).
pub const SHARED_LEN: usize = 32;

const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const END: &str = "-----END PUBLIC KEY-----";

/// The SEC1 uncompressed encoding of `key`.
pub fn sec1(key: &PublicKey) -> [u8; POINT_LEN] {
    key.to_encoded_point(false)
        .as_bytes()
        .try_into()
        .expect("an uncompressed P-256 point is 65 bytes")
}

/// An uncompressed SEC1 P-256 point (65 bytes, `04 ‖ x ‖ y`) on the curve.
pub fn point(bytes: &[u8]) -> Result<PublicKey, String> {
    if bytes.len() != POINT_LEN || bytes[0] != 0x04 {
        return Err("not an uncompressed P-256 point".into());
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| "not a point on curve P-256".into())
}

/// A P-256 public key as tools write it: PEM (`-----BEGIN PUBLIC KEY-----`,
/// text around the block is ignored: a tool's messages), DER
/// SubjectPublicKeyInfo (`pkcs11-tool --read-object --type pubkey`,
/// `openssl pkey -pubout -outform der`), a raw uncompressed point, or a DER
/// OCTET STRING around one (how PKCS#11 tokens give `CKA_EC_POINT`).
pub fn public_key(bytes: &[u8]) -> Result<PublicKey, String> {
    use p256::pkcs8::DecodePublicKey as _;
    if let Some(text) = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains(BEGIN))
    {
        let pem = match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => &text[b..e + END.len()],
            _ => return Err(format!("the `{BEGIN}` block has no end")),
        };
        return PublicKey::from_public_key_pem(pem)
            .map_err(|e| format!("not a P-256 public key in PEM: {e}"));
    }
    if bytes.len() == POINT_LEN {
        return point(bytes);
    }
    if bytes.len() == POINT_LEN + 2 && bytes[..2] == [0x04, POINT_LEN as u8] {
        return point(&bytes[2..]);
    }
    if bytes.first() == Some(&0x30) {
        return PublicKey::from_public_key_der(bytes)
            .map_err(|e| format!("not a P-256 SubjectPublicKeyInfo: {e}"));
    }
    Err(format!(
        "{} bytes: not PEM, a P-256 SubjectPublicKeyInfo or an uncompressed P-256 point",
        bytes.len()
    ))
}

/// Wrap side: a fresh ephemeral key agrees with `recipient`. Returns the
/// ephemeral public point (SEC1 uncompressed, to store) and the KEK.
pub fn wrap(recipient: &PublicKey, info: &[u8]) -> ([u8; POINT_LEN], Kek) {
    wrap_with(&ephemeral(), recipient, info)
}

fn wrap_with(
    ephemeral: &p256::SecretKey,
    recipient: &PublicKey,
    info: &[u8],
) -> ([u8; POINT_LEN], Kek) {
    let (eph, z) = agree_with(ephemeral, recipient);
    let kek = kek_from_shared(&z, &eph, &sec1(recipient), info);
    (eph, kek)
}

/// A fresh ephemeral key agrees with `peer`: the ephemeral public point
/// (SEC1 uncompressed) and the shared x coordinate `Z`, for a protocol
/// that derives its own keys from `Z` (FIDO2's PIN/UV auth protocols).
pub fn agree(peer: &PublicKey) -> ([u8; POINT_LEN], Zeroizing<[u8; SHARED_LEN]>) {
    agree_with(&ephemeral(), peer)
}

fn ephemeral() -> p256::SecretKey {
    loop {
        let mut b = Zeroizing::new([0u8; 32]);
        random_bytes(b.as_mut());
        // Rejects 0 and values ≥ n: a 2^-128 chance; draw again.
        if let Ok(s) = p256::SecretKey::from_slice(b.as_ref()) {
            break s;
        }
    }
}

fn agree_with(
    ephemeral: &p256::SecretKey,
    peer: &PublicKey,
) -> ([u8; POINT_LEN], Zeroizing<[u8; SHARED_LEN]>) {
    let eph = sec1(&ephemeral.public_key());
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), peer.as_affine());
    let z: &[u8] = shared.raw_secret_bytes().as_ref();
    let z: [u8; SHARED_LEN] = z.try_into().expect("a P-256 x coordinate is 32 bytes");
    (eph, Zeroizing::new(z))
}

/// Unwrap side: the KEK from the shared x coordinate `z` a device computed
/// with its private key and the stored `ephemeral` point. `recipient` is
/// the device's public key; both points SEC1 uncompressed.
pub fn kek_from_shared(
    z: &[u8; SHARED_LEN],
    ephemeral: &[u8; POINT_LEN],
    recipient: &[u8; POINT_LEN],
    info: &[u8],
) -> Kek {
    let mut salt = [0u8; 2 * POINT_LEN];
    salt[..POINT_LEN].copy_from_slice(ephemeral);
    salt[POINT_LEN..].copy_from_slice(recipient);
    Kek::derive(Some(&salt), z, info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{BackupKey, label};

    fn secret(byte: u8) -> p256::SecretKey {
        p256::SecretKey::from_slice(&[byte; 32]).unwrap()
    }

    /// Known answers computed independently (Python `cryptography`: ECDH on
    /// SECP256R1, HKDF-SHA256), for scalars 0x0505…05 (ephemeral) and
    /// 0x0707…07 (device). A change here breaks every enrolled slot.
    #[test]
    fn the_derivation_matches_independent_vectors() {
        let eph = secret(5);
        let device = secret(7).public_key();
        assert_eq!(
            hex::encode(sec1(&device)),
            "041e18532fd4754c02f3041d9c75ceb33b83ffd81ac7ce4fe882ccb1c98bc5896ea46c311c4e2ff40dd96a3653e6e45445d32dfe486eced75c7a90c6a18881c0a3"
        );
        for (info, want) in [
            (
                label::YUBIKEY_KEK,
                "bc4eec1a4cc9c6f6dd4e5af0dffb3f9d388e1c7df28ade2965e3876c4b2d9935",
            ),
            (
                label::PKCS11_ECDH_KEK,
                "1f93730012bfdbb574ea73bb791d8ec64d1b2db61a0f5c8e08119e1b4ad4c360",
            ),
        ] {
            let (point, kek) = wrap_with(&eph, &device, info);
            assert_eq!(
                hex::encode(point),
                "0407810ea974cea5773e63b897f37e3be9a09e7a5fe9b971a44d1065ac2a3a9311637e47a4f99464a0fdce44a88ec7d703a9183c1d06552d9e2d6b76069481c577"
            );
            assert_eq!(hex::encode(kek.expose()), want);
            let z: [u8; 32] =
                hex::decode("65915b3ac2cf23da8e8c9e0eb907a37fc5f1125a00ae2b8dbfff4450df0bfe0f")
                    .unwrap()
                    .try_into()
                    .unwrap();
            let again = kek_from_shared(&z, &point, &sec1(&device), info);
            assert_eq!(again.expose(), kek.expose());
        }
    }

    /// What the card computes, done in software with the card's secret.
    #[test]
    fn software_ecdh_matches_the_wrap() {
        let card_secret = secret(7);
        let card_pub = card_secret.public_key();
        let bk = BackupKey::generate();
        let (eph, kek) = wrap(&card_pub, label::YUBIKEY_KEK);
        let wrapped = bk.wrap(&kek);
        let eph_pub = point(&eph).unwrap();
        let shared =
            p256::ecdh::diffie_hellman(card_secret.to_nonzero_scalar(), eph_pub.as_affine());
        let z: &[u8] = shared.raw_secret_bytes().as_ref();
        let z: &[u8; 32] = z.try_into().unwrap();
        let kek2 = kek_from_shared(z, &eph, &sec1(&card_pub), label::YUBIKEY_KEK);
        assert_eq!(wrapped.unwrap(&kek2).unwrap().expose(), bk.expose());
    }

    /// The token's side done by another library (ring), as the PKCS#11
    /// slot did before this module.
    #[test]
    fn software_ecdh_wrap_matches_a_manual_agreement() {
        use ring::agreement;
        let rng = ring::rand::SystemRandom::new();
        // The "token" key, in software here.
        let tok = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let tok_pub: [u8; 65] = tok
            .compute_public_key()
            .unwrap()
            .as_ref()
            .try_into()
            .unwrap();
        let (eph, kek) = wrap(&point(&tok_pub).unwrap(), label::PKCS11_ECDH_KEK);
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, eph);
        let kek2 = agreement::agree_ephemeral(tok, &peer, |s| {
            kek_from_shared(
                s.try_into().unwrap(),
                &eph,
                &tok_pub,
                label::PKCS11_ECDH_KEK,
            )
        })
        .unwrap();
        assert_eq!(kek.expose(), kek2.expose());
    }

    #[test]
    fn public_keys_parse_in_every_encoding() {
        use p256::pkcs8::EncodePublicKey as _;
        let key = secret(3).public_key();
        let raw = sec1(&key);
        let mut octet = vec![0x04, 0x41];
        octet.extend_from_slice(&raw);
        let spki = key.to_public_key_der().unwrap();
        let pem = key.to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let noisy = format!("Successfully generated a new private key.\n{pem}\n");
        for enc in [
            &raw[..],
            &octet,
            spki.as_bytes(),
            pem.as_bytes(),
            noisy.as_bytes(),
        ] {
            assert_eq!(public_key(enc).unwrap(), key);
        }
        assert!(public_key(&spki.as_bytes()[1..]).is_err());
        assert!(public_key(b"nothing here").is_err());
        assert!(public_key(BEGIN.as_bytes()).is_err());
        // Not uncompressed, or not on the curve.
        assert!(point(&[2u8; 65]).is_err());
        let mut off = raw;
        off[64] ^= 1;
        assert!(point(&off).is_err());
        assert!(public_key(&off).is_err());
    }
}
