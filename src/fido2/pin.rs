//! The PIN/UV auth protocols (CTAP 2.1 §6.5.6, §6.5.7): a secret shared
//! with the key by ECDH on P-256 (the key's key-agreement key), and with
//! it the encryption and authentication of PINs, tokens and hmac-secret
//! salts.
//!
//! Protocol 1: key = SHA-256(Z) for both; AES-256-CBC with a zero IV;
//! HMAC-SHA-256 truncated to 16 bytes. Protocol 2: HKDF-SHA-256 of Z
//! (salt 32 zero bytes) with "CTAP2 HMAC key" and "CTAP2 AES key";
//! AES-256-CBC with a random IV sent first; the whole HMAC.

use super::Error;
use super::cbor::{int_map, map_get};
use crate::ecdh;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use ciborium::Value;
use hmac::{KeyInit, Mac};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::key::HmacSha256;

/// A PIN/UV auth protocol: 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// CTAP 2.0's.
    One,
    /// CTAP 2.1's.
    Two,
}

impl Protocol {
    /// Its number on the wire.
    pub fn number(self) -> u8 {
        match self {
            Protocol::One => 1,
            Protocol::Two => 2,
        }
    }

    /// HMAC-SHA-256 of `msg` under `key`, as the protocol sends it.
    pub fn authenticate(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
        m.update(msg);
        let full = m.finalize().into_bytes();
        match self {
            Protocol::One => full[..16].to_vec(),
            Protocol::Two => full.to_vec(),
        }
    }
}

/// The secret shared with a key for one exchange.
pub struct Shared {
    protocol: Protocol,
    hmac_key: Zeroizing<[u8; 32]>,
    aes_key: Zeroizing<[u8; 32]>,
    /// Our ephemeral public key, as the COSE key the key expects.
    pub platform_key: Value,
}

impl Shared {
    /// Agree with the key's key-agreement key (a COSE_Key map).
    pub fn new(protocol: Protocol, key_agreement: &Value) -> Result<Self, Error> {
        let coordinate = |label| {
            map_get(key_agreement, label)
                .and_then(Value::as_bytes)
                .filter(|b| b.len() == 32)
                .cloned()
                .ok_or_else(|| Error::Protocol("a malformed key-agreement key".into()))
        };
        let (x, y) = (coordinate(-2)?, coordinate(-3)?);
        let mut sec1 = [0u8; ecdh::POINT_LEN];
        sec1[0] = 4;
        sec1[1..33].copy_from_slice(&x);
        sec1[33..].copy_from_slice(&y);
        let peer = ecdh::point(&sec1)
            .map_err(|e| Error::Protocol(format!("the key's key-agreement key: {e}")))?;
        let (mine, z) = ecdh::agree(&peer);
        let (mut hmac_key, mut aes_key) = (Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32]));
        match protocol {
            Protocol::One => {
                let k: [u8; 32] = sha2::Sha256::digest(z.as_ref()).into();
                *hmac_key = k;
                *aes_key = k;
            }
            Protocol::Two => {
                let salt = [0u8; 32];
                crate::key::hkdf_sha256(
                    Some(&salt),
                    z.as_ref(),
                    b"CTAP2 HMAC key",
                    hmac_key.as_mut(),
                );
                crate::key::hkdf_sha256(
                    Some(&salt),
                    z.as_ref(),
                    b"CTAP2 AES key",
                    aes_key.as_mut(),
                );
            }
        }
        let platform_key = int_map(vec![
            (1, 2.into()),     // kty: EC2
            (3, (-25).into()), // alg: ECDH-ES + HKDF-256
            (-1, 1.into()),    // crv: P-256
            (-2, Value::Bytes(mine[1..33].to_vec())),
            (-3, Value::Bytes(mine[33..].to_vec())),
        ]);
        Ok(Self {
            protocol,
            hmac_key,
            aes_key,
            platform_key,
        })
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Encrypt `plaintext` (whole 16-byte blocks).
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 16];
        if self.protocol == Protocol::Two {
            crate::key::random_bytes(&mut iv);
        }
        let mut buf = plaintext.to_vec();
        let len = buf.len();
        cbc::Encryptor::<aes::Aes256>::new_from_slices(self.aes_key.as_ref(), &iv)
            .expect("key and IV lengths")
            .encrypt_padded::<NoPadding>(&mut buf, len)
            .expect("whole blocks");
        match self.protocol {
            Protocol::One => buf,
            Protocol::Two => [&iv[..], &buf].concat(),
        }
    }

    /// Decrypt what the key sent.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (iv, body) = match self.protocol {
            Protocol::One => (&[0u8; 16][..], ciphertext),
            Protocol::Two if ciphertext.len() >= 16 => ciphertext.split_at(16),
            Protocol::Two => return Err(Error::Protocol("a ciphertext without its IV".into())),
        };
        if body.is_empty() || body.len() % 16 != 0 {
            return Err(Error::Protocol(format!(
                "a ciphertext of {} bytes, not whole blocks",
                body.len()
            )));
        }
        let mut buf = Zeroizing::new(body.to_vec());
        cbc::Decryptor::<aes::Aes256>::new_from_slices(self.aes_key.as_ref(), iv)
            .expect("key and IV lengths")
            .decrypt_padded::<NoPadding>(&mut buf)
            .map_err(|_| Error::Protocol("a ciphertext that does not decrypt".into()))?;
        Ok(buf)
    }

    /// Authenticate `msg` with the shared HMAC key.
    pub fn authenticate(&self, msg: &[u8]) -> Vec<u8> {
        self.protocol.authenticate(self.hmac_key.as_ref(), msg)
    }
}
