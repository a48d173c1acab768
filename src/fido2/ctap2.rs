//! The CTAP2 commands a hmac-secret client needs (CTAP 2.1 §6): getInfo,
//! clientPin (retries, key agreement, PIN token), makeCredential and
//! getAssertion with the hmac-secret extension.

use super::Error;
use super::cbor::{int_map, map_get, map_text, text_map};
use super::ctaphid::{CMD_CBOR, Channel};
use super::pin::{Protocol, Shared};
use super::transport::{self, Device};
use ciborium::Value;
use zeroize::Zeroizing;

const GET_INFO: u8 = 0x04;
const MAKE_CREDENTIAL: u8 = 0x01;
const GET_ASSERTION: u8 = 0x02;
const CLIENT_PIN: u8 = 0x06;

const PIN_GET_RETRIES: i64 = 1;
const PIN_GET_KEY_AGREEMENT: i64 = 2;
const PIN_GET_TOKEN: i64 = 5;
const PIN_GET_TOKEN_WITH_PERMISSIONS: i64 = 9;
/// Permissions of a token (CTAP 2.1 §6.5.5.7): makeCredential, getAssertion.
pub const PERMISSION_MC: u8 = 0x01;
/// See [`PERMISSION_MC`].
pub const PERMISSION_GA: u8 = 0x02;

/// What getInfo says of a key.
#[derive(Debug, Clone, Default)]
pub struct Info {
    /// `FIDO_2_0`, `FIDO_2_1`, ...
    pub versions: Vec<String>,
    /// Extensions (`hmac-secret`, ...).
    pub extensions: Vec<String>,
    /// Options and their values (`clientPin`, `uv`, `rk`, ...).
    pub options: Vec<(String, bool)>,
    /// PIN/UV auth protocols, preferred first.
    pub pin_protocols: Vec<u8>,
    /// The model's AAGUID.
    pub aaguid: Vec<u8>,
    /// The largest message it takes, when it says (getInfo's maxMsgSize).
    pub max_message: Option<usize>,
}

impl Info {
    /// An option's value; `None` when the key does not have it.
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Whether a PIN is set.
    pub fn pin_set(&self) -> bool {
        self.option("clientPin") == Some(true)
    }

    /// Whether it supports hmac-secret.
    pub fn hmac_secret(&self) -> bool {
        self.extensions.iter().any(|e| e == "hmac-secret")
    }

    /// Whether it has built-in user verification (a fingerprint), set up.
    pub fn builtin_uv(&self) -> bool {
        self.option("uv") == Some(true)
    }

    /// Whether it speaks CTAP 2.1 (PIN tokens with permissions).
    pub fn ctap21(&self) -> bool {
        self.versions.iter().any(|v| v == "FIDO_2_1") && self.option("pinUvAuthToken") == Some(true)
    }

    /// The PIN/UV auth protocol to use: 2 where the key has it, else 1.
    pub fn protocol(&self) -> Protocol {
        if self.pin_protocols.contains(&2) {
            Protocol::Two
        } else {
            Protocol::One
        }
    }
}

/// A PIN/UV auth token, with its protocol.
pub struct Token {
    protocol: Protocol,
    token: Zeroizing<Vec<u8>>,
}

impl Token {
    /// pinUvAuthParam over `msg`.
    fn param(&self, msg: &[u8]) -> Value {
        Value::Bytes(self.protocol.authenticate(&self.token, msg))
    }
}

/// A credential the key made: its id, and its public key (SEC1
/// uncompressed), with which the key's assertions are checked.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The credential id.
    pub id: Vec<u8>,
    /// Its ES256 public key, `04 ‖ x ‖ y`.
    pub public_key: [u8; 65],
}

/// What the key needs for an assertion or a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Ask for a touch (user presence).
    pub up: bool,
    /// Ask for built-in user verification (a fingerprint), without a PIN.
    pub builtin_uv: bool,
}

/// An open key: a CTAPHID channel and what getInfo said.
pub struct Key {
    channel: Channel,
    /// getInfo's answer.
    pub info: Info,
    /// Where it is.
    pub device: Device,
}

fn texts(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_text().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Key {
    /// Open the key at `device` and ask what it is.
    pub fn open(device: &Device) -> Result<Self, Error> {
        let t = transport::open(device).map_err(|e| Error::Open(device.clone(), e))?;
        let mut key = Self {
            channel: Channel::open(t)?,
            info: Info::default(),
            device: device.clone(),
        };
        let info = key.call(GET_INFO, None, &mut || {})?;
        let options = map_get(&info, 4)
            .and_then(Value::as_map)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_text()?.to_owned(), v.as_bool()?)))
                    .collect()
            })
            .unwrap_or_default();
        key.info = Info {
            versions: texts(map_get(&info, 1)),
            extensions: texts(map_get(&info, 2)),
            aaguid: map_get(&info, 3)
                .and_then(Value::as_bytes)
                .cloned()
                .unwrap_or_default(),
            max_message: map_get(&info, 5)
                .and_then(Value::as_integer)
                .and_then(|n| usize::try_from(n).ok()),
            options,
            pin_protocols: map_get(&info, 6)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_integer().and_then(|i| u8::try_from(i).ok()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        Ok(key)
    }

    /// One CTAP2 command; its answer's map, or the key's error status.
    fn call(
        &mut self,
        command: u8,
        params: Option<Value>,
        touch: &mut dyn FnMut(),
    ) -> Result<Value, Error> {
        let mut request = vec![command];
        if let Some(p) = params {
            ciborium::into_writer(&p, &mut request)
                .map_err(|e| Error::Protocol(format!("encoding a request: {e}")))?;
        }
        if let Some(max) = self.info.max_message.filter(|m| request.len() > *m) {
            return Err(Error::Protocol(format!(
                "a request of {} bytes, more than the key takes ({max}): a shorter relying party id?",
                request.len()
            )));
        }
        let answer = self.channel.exchange(CMD_CBOR, &request, touch)?;
        match answer.split_first() {
            Some((0, [])) => Ok(Value::Map(Vec::new())),
            Some((0, body)) => ciborium::from_reader(body)
                .map_err(|e| Error::Protocol(format!("an answer that is not CBOR: {e}"))),
            Some((status, _)) => Err(Error::Ctap(*status)),
            None => Err(Error::Protocol("an empty answer".into())),
        }
    }

    /// PIN tries left before the PIN is blocked.
    pub fn pin_retries(&mut self) -> Result<u32, Error> {
        let protocol = self.info.protocol();
        let a = self.call(
            CLIENT_PIN,
            Some(int_map(vec![
                (1, protocol.number().into()),
                (2, PIN_GET_RETRIES.into()),
            ])),
            &mut || {},
        )?;
        map_get(&a, 3)
            .and_then(Value::as_integer)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::Protocol("no retry count".into()))
    }

    fn shared(&mut self) -> Result<Shared, Error> {
        let protocol = self.info.protocol();
        let a = self.call(
            CLIENT_PIN,
            Some(int_map(vec![
                (1, protocol.number().into()),
                (2, PIN_GET_KEY_AGREEMENT.into()),
            ])),
            &mut || {},
        )?;
        let key = map_get(&a, 1).ok_or_else(|| Error::Protocol("no key-agreement key".into()))?;
        Shared::new(protocol, key)
    }

    /// A token for `permissions` on `rp_id`, from the PIN (CTAP 2.1's
    /// getPinUvAuthTokenUsingPinWithPermissions, or 2.0's getPinToken).
    pub fn pin_token(&mut self, pin: &str, permissions: u8, rp_id: &str) -> Result<Token, Error> {
        let shared = self.shared()?;
        // LEFT(SHA-256(PIN), 16) stands for the PIN: wiped after use.
        let mut hash = Zeroizing::new([0u8; 32]);
        hash.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(pin.as_bytes()));
        let pin_hash_enc = shared.encrypt(&hash[..16]);
        let mut params = vec![
            (1, shared.protocol().number().into()),
            (
                2,
                if self.info.ctap21() {
                    PIN_GET_TOKEN_WITH_PERMISSIONS
                } else {
                    PIN_GET_TOKEN
                }
                .into(),
            ),
            (3, shared.platform_key.clone()),
            (6, Value::Bytes(pin_hash_enc)),
        ];
        if self.info.ctap21() {
            params.push((9, permissions.into()));
            params.push((10, rp_id.into()));
        }
        let a = self.call(CLIENT_PIN, Some(int_map(params)), &mut || {})?;
        let enc = map_get(&a, 2)
            .and_then(Value::as_bytes)
            .ok_or_else(|| Error::Protocol("no PIN token".into()))?;
        Ok(Token {
            protocol: shared.protocol(),
            token: shared.decrypt(enc)?,
        })
    }

    /// Make a credential for `rp_id` with hmac-secret (and, where the key
    /// has credProtect, protection level 1, so that it answers whether it
    /// holds the credential without a PIN). `resident`: stored on the key
    /// (discoverable). With `token` the key verifies the user by the PIN;
    /// else by itself if `options.builtin_uv`. It always asks for a touch.
    pub fn make_credential(
        &mut self,
        rp_id: &str,
        resident: bool,
        token: Option<&Token>,
        options: Options,
        touch: &mut dyn FnMut(),
    ) -> Result<Credential, Error> {
        let cdh = challenge();
        let mut user_id = [0u8; 16];
        crate::key::random_bytes(&mut user_id);
        let mut opts = vec![("rk", Value::Bool(resident))];
        // A token already verifies the user: never both (CTAP 2.1 §6.1.2).
        if options.builtin_uv && token.is_none() {
            opts.push(("uv", true.into()));
        }
        let mut extensions = Vec::new();
        if self.info.extensions.iter().any(|e| e == "credProtect") {
            extensions.push(("credProtect", 1.into()));
        }
        extensions.push(("hmac-secret", true.into()));
        let mut params = vec![
            (1, Value::Bytes(cdh.to_vec())),
            (
                2,
                text_map(vec![("id", rp_id.into()), ("name", rp_id.into())]),
            ),
            (
                3,
                text_map(vec![
                    ("id", Value::Bytes(user_id.to_vec())),
                    ("name", "coffer".into()),
                    ("displayName", "coffer backup key".into()),
                ]),
            ),
            (
                4,
                Value::Array(vec![text_map(vec![
                    ("alg", (-7).into()),
                    ("type", "public-key".into()),
                ])]),
            ),
            (6, text_map(extensions)),
            (7, text_map(opts)),
        ];
        if let Some(t) = token {
            params.push((8, t.param(&cdh)));
            params.push((9, t.protocol.number().into()));
        }
        let a = self.call(MAKE_CREDENTIAL, Some(int_map(params)), touch)?;
        let auth_data = auth_data(&a)?;
        attested(auth_data)?
            .0
            .ok_or_else(|| Error::Protocol("the key attested no credential".into()))
    }

    /// Whether this key holds `credential` for `rp_id`: an assertion
    /// without a touch, a PIN or an extension, over a fresh challenge, its
    /// signature checked with the credential's public key. A key without
    /// it answers "no credentials"; a device that answers without a valid
    /// signature is not the key enrolled (and never gets a PIN). `touch` is
    /// called if the key asks for a touch all the same.
    pub fn has_credential(
        &mut self,
        rp_id: &str,
        credential: &Credential,
        touch: &mut dyn FnMut(),
    ) -> Result<bool, Error> {
        let cdh = challenge();
        let params = int_map(vec![
            (1, rp_id.into()),
            (2, Value::Bytes(cdh.to_vec())),
            (3, allow_list(&credential.id)),
            (5, text_map(vec![("up", false.into())])),
        ]);
        let a = match self.call(GET_ASSERTION, Some(params), touch) {
            Ok(a) => a,
            Err(Error::Ctap(super::status::NO_CREDENTIALS)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let signature = map_get(&a, 3).and_then(Value::as_bytes);
        match (auth_data(&a).ok(), signature) {
            (Some(d), Some(sig)) if signed_by(credential, rp_id, d, &cdh, sig) => Ok(true),
            _ => Err(Error::Protocol(
                "the device answered for this credential without its signature: it is not the key enrolled".into(),
            )),
        }
    }

    /// The hmac-secret output of credential `id` on `rp_id` for `salt`.
    /// With `token` (from the PIN) the key verifies the user, and CTAP 2.1
    /// keys then give a different output than without: callers pass the
    /// same as at enrollment.
    pub fn hmac_secret(
        &mut self,
        rp_id: &str,
        id: &[u8],
        salt: &[u8; 32],
        token: Option<&Token>,
        options: Options,
        touch: &mut dyn FnMut(),
    ) -> Result<Zeroizing<[u8; 32]>, Error> {
        let shared = self.shared()?;
        let salt_enc = shared.encrypt(salt);
        let salt_auth = shared.authenticate(&salt_enc);
        let mut ext = vec![
            (1, shared.platform_key.clone()),
            (2, Value::Bytes(salt_enc)),
            (3, Value::Bytes(salt_auth)),
        ];
        if shared.protocol() == Protocol::Two {
            ext.push((4, 2.into()));
        }
        let cdh = challenge();
        let mut opts = vec![("up", Value::Bool(options.up))];
        // A token already verifies the user: never both (CTAP 2.1 §6.2.2).
        if options.builtin_uv && token.is_none() {
            opts.push(("uv", true.into()));
        }
        let mut params = vec![
            (1, rp_id.into()),
            (2, Value::Bytes(cdh.to_vec())),
            (3, allow_list(id)),
            (4, text_map(vec![("hmac-secret", int_map(ext))])),
            (5, text_map(opts)),
        ];
        if let Some(t) = token {
            params.push((6, t.param(&cdh)));
            params.push((7, t.protocol.number().into()));
        }
        let a = self.call(GET_ASSERTION, Some(int_map(params)), touch)?;
        let auth_data = auth_data(&a)?;
        let ext = extensions(auth_data)?
            .ok_or_else(|| Error::Protocol("the key returned no hmac-secret".into()))?;
        let out = map_text(&ext, "hmac-secret")
            .and_then(Value::as_bytes)
            .ok_or_else(|| Error::Protocol("the key returned no hmac-secret".into()))?;
        let plain = shared.decrypt(out)?;
        if plain.len() != 32 {
            return Err(Error::Protocol(format!(
                "a {}-byte hmac-secret",
                plain.len()
            )));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&plain);
        Ok(secret)
    }
}

const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

/// A fresh random client data hash: the challenge a key signs.
fn challenge() -> [u8; 32] {
    let mut cdh = [0u8; 32];
    crate::key::random_bytes(&mut cdh);
    cdh
}

/// An allow list of the one credential `id`.
fn allow_list(id: &[u8]) -> Value {
    Value::Array(vec![text_map(vec![
        ("id", Value::Bytes(id.to_vec())),
        ("type", "public-key".into()),
    ])])
}

/// The authenticator data of a makeCredential or getAssertion answer.
fn auth_data(answer: &Value) -> Result<&[u8], Error> {
    map_get(answer, 2)
        .and_then(Value::as_bytes)
        .map(Vec::as_slice)
        .ok_or_else(|| Error::Protocol("no authenticator data".into()))
}

/// Whether `sig` (ASN.1 DER ECDSA) is the credential's signature over
/// `auth_data ‖ cdh`, and `auth_data` names `rp_id` (its SHA-256 first).
fn signed_by(
    credential: &Credential,
    rp_id: &str,
    auth_data: &[u8],
    cdh: &[u8],
    sig: &[u8],
) -> bool {
    use p256::ecdsa::signature::Verifier;
    let rp_hash = <sha2::Sha256 as sha2::Digest>::digest(rp_id.as_bytes());
    if auth_data.get(..32) != Some(&rp_hash[..]) {
        return false;
    }
    let (Ok(key), Ok(sig)) = (
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&credential.public_key),
        p256::ecdsa::Signature::from_der(sig),
    ) else {
        return false;
    };
    key.verify(&[auth_data, cdh].concat(), &sig).is_ok()
}

/// The parts of authenticator data (WebAuthn §6.1) after the fixed 37
/// bytes: the attested credential (id and ES256 public key), if any, and
/// where the rest starts.
fn attested(auth_data: &[u8]) -> Result<(Option<Credential>, &[u8]), Error> {
    let bad = || Error::Protocol("malformed authenticator data".into());
    let flags = *auth_data.get(32).ok_or_else(bad)?;
    let mut rest = auth_data.get(37..).ok_or_else(bad)?;
    let mut credential = None;
    if flags & FLAG_AT != 0 {
        // aaguid (16), id length (2), id, public key (COSE)
        let len = u16::from_be_bytes([
            *rest.get(16).ok_or_else(bad)?,
            *rest.get(17).ok_or_else(bad)?,
        ]) as usize;
        let id = rest.get(18..18 + len).ok_or_else(bad)?.to_vec();
        rest = &rest[18 + len..];
        let key: Value = ciborium::from_reader(&mut rest).map_err(|_| bad())?;
        let es256 = map_get(&key, 1).and_then(Value::as_integer) == Some(2.into())
            && map_get(&key, 3).and_then(Value::as_integer) == Some((-7).into())
            && map_get(&key, -1).and_then(Value::as_integer) == Some(1.into());
        let coordinate = |label| {
            map_get(&key, label)
                .and_then(Value::as_bytes)
                .filter(|b| b.len() == 32)
        };
        let (Some(x), Some(y), true) = (coordinate(-2), coordinate(-3), es256) else {
            return Err(Error::Protocol(
                "the key made a credential that is not ES256 (P-256)".into(),
            ));
        };
        let mut public_key = [0u8; 65];
        public_key[0] = 4;
        public_key[1..33].copy_from_slice(x);
        public_key[33..].copy_from_slice(y);
        credential = Some(Credential { id, public_key });
    }
    Ok((credential, rest))
}

fn extensions(auth_data: &[u8]) -> Result<Option<Value>, Error> {
    let (_, mut rest) = attested(auth_data)?;
    if auth_data[32] & FLAG_ED == 0 {
        return Ok(None);
    }
    ciborium::from_reader(&mut rest)
        .map(Some)
        .map_err(|_| Error::Protocol("malformed extension outputs".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    #[test]
    fn assertions_are_checked_against_the_credential_key_and_rp() {
        let signing = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = crate::ecdh::sec1(&p256::PublicKey::from(signing.verifying_key()));
        let credential = Credential {
            id: vec![1, 2, 3],
            public_key: public,
        };
        let rp_hash = <sha2::Sha256 as sha2::Digest>::digest(b"coffer");
        let auth_data = [&rp_hash[..], &[0x00, 0, 0, 0, 9]].concat();
        let cdh = [5u8; 32];
        let sig: p256::ecdsa::Signature = signing.sign(&[&auth_data[..], &cdh].concat());
        let der = sig.to_der();
        assert!(signed_by(
            &credential,
            "coffer",
            &auth_data,
            &cdh,
            der.as_bytes()
        ));
        // Another relying party, another challenge, another key: no.
        assert!(!signed_by(
            &credential,
            "other",
            &auth_data,
            &cdh,
            der.as_bytes()
        ));
        assert!(!signed_by(
            &credential,
            "coffer",
            &auth_data,
            &[6u8; 32],
            der.as_bytes()
        ));
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
        let forged: p256::ecdsa::Signature = other.sign(&[&auth_data[..], &cdh].concat());
        assert!(!signed_by(
            &credential,
            "coffer",
            &auth_data,
            &cdh,
            forged.to_der().as_bytes()
        ));
        assert!(!signed_by(
            &credential,
            "coffer",
            &auth_data,
            &cdh,
            b"not DER"
        ));
        assert!(!signed_by(&credential, "coffer", &[], &cdh, der.as_bytes()));
    }
}
