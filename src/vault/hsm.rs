//! Sealing the server's long-term secrets: AES-256-GCM under a key that
//! lives in a PKCS#11 token (found by label, created on first start if
//! absent, never extractable; the token is reached through
//! `crate::pkcs11_token`, as the PKCS#11 slot reaches its own), or — for
//! demos only — under a local key file.
//!
//! Sealed form: `version (1) || nonce (12) || ciphertext || tag (16)`, with
//! the associated data naming what is sealed.
//!
//! Must never: write a secret to disk in the clear, or let the token key
//! be created extractable.

use super::VaultError;
use crate::pkcs11_token::{self as token, GCM_IV_LEN, GCM_TAG_LEN, Token, TokenError};
use crate::pkcs11_uri::Pkcs11Uri;
use cryptoki::context::Pkcs11;
use cryptoki::object::{KeyType, ObjectClass};
use cryptoki::session::Session;
use ring::aead;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = GCM_IV_LEN;
const TAG_LEN: usize = GCM_TAG_LEN;

/// Where the token key is: `pkcs11:token=LABEL;object=LABEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenKey {
    /// Token label.
    pub token: String,
    /// Key label.
    pub object: String,
}

impl TokenKey {
    /// Read the `token` and `object` attributes of a PKCS#11 URI (RFC 7512,
    /// parsed by [`Pkcs11Uri`]); other attributes are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri = Pkcs11Uri::parse(s)?;
        if let Some(k) = uri.names().find(|k| !["token", "object"].contains(k)) {
            return Err(format!("attribute `{k}` is not supported (token, object)"));
        }
        Ok(Self {
            token: uri
                .attr("token")
                .ok_or("the URI names no token (token=...)")?
                .to_owned(),
            object: uri.attr("object").unwrap_or("coffer-vault").to_owned(),
        })
    }

    /// As a URI naming the token and the key (by label).
    fn uri(&self) -> Pkcs11Uri {
        let mut uri = Pkcs11Uri::default();
        uri.set("token", self.token.as_bytes());
        uri.set("object", self.object.as_bytes());
        uri
    }
}

/// Seals and unseals the server's secrets.
pub enum Sealer {
    /// A key in a PKCS#11 token.
    Token {
        /// The loaded, started module.
        ctx: Pkcs11,
        /// Where it was loaded from.
        module: PathBuf,
        /// The key's location.
        uri: TokenKey,
        /// The user PIN.
        pin: SecretString,
    },
    /// A local key file (insecure: for demos).
    LocalFile {
        /// The key.
        key: Zeroizing<[u8; 32]>,
        /// Where it is.
        path: PathBuf,
    },
}

impl From<TokenError> for VaultError {
    fn from(e: TokenError) -> Self {
        VaultError::Seal(match e {
            TokenError::NotOpened { what } => format!(
                "{what}: the sealed secret does not open (AES-GCM): wrong key, or a tampered database"
            ),
            TokenError::WrongPin { .. } => {
                "the token refused the user PIN (check --hsm-pin-file)".into()
            }
            e => e.to_string(),
        })
    }
}

impl Sealer {
    /// Load the PKCS#11 `module` and check that the key can be used.
    pub fn token(module: &Path, uri: TokenKey, pin: SecretString) -> Result<Self, VaultError> {
        let ctx = token::load(module, "install it, or name it with --hsm-module")?;
        let s = Self::Token {
            ctx,
            module: module.to_owned(),
            uri,
            pin,
        };
        s.with_key(|_, _, _| Ok(()))?;
        Ok(s)
    }

    /// Use (creating if absent, 0600) the key file at `path`.
    pub fn local_file(path: &Path) -> Result<Self, VaultError> {
        let io = |e: std::io::Error| VaultError::Seal(format!("{}: {e}", path.display()));
        let key = match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut key = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| {
                    VaultError::Seal(format!("{}: not 64 hex digits", path.display()))
                })?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                crate::key::random_bytes(key.as_mut());
                let text = Zeroizing::new(hex::encode(key.as_ref()) + "\n");
                crate::fsutil::write_atomic(path, text.as_bytes(), false)
                    .map_err(|e| VaultError::Seal(e.to_string()))?;
                key
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Self::LocalFile {
            key,
            path: path.to_owned(),
        })
    }

    /// Run `f` with the token, a logged-in session and the key handle; the
    /// token is looked for again at every call (it may have been
    /// re-inserted).
    fn with_key<T>(
        &self,
        f: impl FnOnce(&Token, &Session, cryptoki::object::ObjectHandle) -> Result<T, TokenError>,
    ) -> Result<T, VaultError> {
        let Sealer::Token {
            ctx,
            module,
            uri,
            pin,
        } = self
        else {
            unreachable!("with_key on a token sealer only")
        };
        let names = uri.uri();
        let token = Token::find(ctx, module, &names)?;
        let session = token.session(true)?;
        token.login(&session, Some(pin))?;
        let find = token::key_template(&names, ObjectClass::SECRET_KEY, KeyType::AES);
        let key = match token.find_objects(&session, &find)?.as_slice() {
            [k] => *k,
            [] => token.generate_aes256(&session, &names)?,
            _ => {
                return Err(VaultError::Seal(format!(
                    "several AES keys labelled `{}` on token `{}` (replicas that started together each made one?): keep the one that sealed the database's secrets, or create the key once with pkcs11-tool before starting replicas",
                    uri.object, uri.token
                )));
            }
        };
        Ok(f(&token, &session, key)?)
    }

    /// Seal `plain`, binding `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::key::random_bytes(&mut nonce);
        let body = match self {
            // `nonce` then holds the IV the token used: a FIPS-mode HSM may
            // replace ours with one it generated.
            Sealer::Token { .. } => {
                self.with_key(|t, s, key| t.gcm_encrypt(s, key, &mut nonce, aad, plain))?
            }
            Sealer::LocalFile { key, .. } => {
                let k = aead::LessSafeKey::new(
                    aead::UnboundKey::new(&aead::AES_256_GCM, key.as_ref())
                        .map_err(|_| VaultError::Seal("AES key".into()))?,
                );
                let mut buf = plain.to_vec();
                k.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut buf,
                )
                .map_err(|_| VaultError::Seal("AES-GCM seal".into()))?;
                buf
            }
        };
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Unseal what [`Sealer::seal`] made with the same `aad`.
    pub fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(VaultError::Seal("sealed secret is malformed".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let body = &sealed[1 + NONCE_LEN..];
        match self {
            Sealer::Token { .. } => {
                self.with_key(|t, s, key| t.gcm_decrypt(s, key, nonce, aad, body))
            }
            Sealer::LocalFile { key, path } => {
                let k = aead::LessSafeKey::new(
                    aead::UnboundKey::new(&aead::AES_256_GCM, key.as_ref())
                        .map_err(|_| VaultError::Seal("AES key".into()))?,
                );
                let mut buf = Zeroizing::new(body.to_vec());
                let n = k
                    .open_in_place(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        &mut buf,
                    )
                    .map_err(|_| {
                        VaultError::Seal(format!(
                            "the sealed secret does not open with {}: wrong key file or tampered database",
                            path.display()
                        ))
                    })?
                    .len();
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            Sealer::Token { uri, .. } => {
                format!("PKCS#11 token `{}`, key `{}`", uri.token, uri.object)
            }
            Sealer::LocalFile { path, .. } => format!("local key file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parses_token_and_object() {
        let u = TokenKey::parse("pkcs11:token=vault%20hsm;object=k1").unwrap();
        assert_eq!(u.token, "vault hsm");
        assert_eq!(u.object, "k1");
        assert!(TokenKey::parse("pkcs11:object=k").is_err());
        assert!(TokenKey::parse("token=x").is_err());
        assert!(TokenKey::parse("pkcs11:token=x;pin-value=1").is_err());
        assert!(TokenKey::parse("pkcs11:token=x?pin-value=1").is_err());
        assert!(TokenKey::parse("pkcs11:token=x;id=%01").is_err());
    }

    #[test]
    fn local_file_round_trip_and_aad_binding() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::local_file(&dir.path().join("k")).unwrap();
        let sealed = s.seal(b"secret", b"a").unwrap();
        assert_eq!(s.unseal(&sealed, b"a").unwrap().as_slice(), b"secret");
        assert!(s.unseal(&sealed, b"b").is_err());
        let again = Sealer::local_file(&dir.path().join("k")).unwrap();
        assert_eq!(again.unseal(&sealed, b"a").unwrap().as_slice(), b"secret");
    }
}
