//! The PKCS#11 token slot: a key on a token named by an RFC 7512 URI, used
//! through the token's module (loaded at run time by `cryptoki`).
//!
//! Mechanisms:
//! - `ecdh` (default): an EC P-256 key pair on the token. Wrapping needs only
//!   its public point: ephemeral P-256 ECDH in software, then
//!   KEK = HKDF-SHA256(shared x, salt = ephemeral ‖ recipient, info =
//!   `coffer/v1 pkcs11 ecdh kek`), the scheme of [`crate::ecdh`] (shared
//!   with the YubiKey slot). Unwrapping asks the token for
//!   `C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL)` with the ephemeral point.
//! - `aes-gcm`: an AES-256 key on the token encrypts a random KEK
//!   (`C_Encrypt`, CKM_AES_GCM, random 96-bit IV, 128-bit tag, AAD =
//!   `coffer/v1 pkcs11 aes-gcm kek`), for tokens that refuse to hand out a
//!   derived secret.
//!
//! Tokens are found by label/serial/manufacturer/model, never by slot
//! number (SoftHSM renumbers slots).
//!
//! Owns: talking to the module, mapping its return values to [`SlotError`].
//! Must never: store a PIN (a URI's `pin-value` is dropped before storing),
//! keep the derived secret or the KEK past the unwrap, or leave a derived
//! object on the token.

/// The URIs that name tokens and keys (shared with the vault server).
pub use crate::pkcs11_uri as uri;

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Rewrapped, Slot, SlotParams, SlotRecord,
    UnlockContext,
};
use crate::ecdh::{self, POINT_LEN, sec1};
use crate::error::SlotError;
use crate::key::{BackupKey, KEY_LEN, Kek, WrappedKey, label};
use crate::pkcs11_token::{
    self as token, GCM_IV_LEN, GCM_TAG_LEN, Token, TokenError, key_template,
};
use crate::ui::Ui;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uri::Pkcs11Uri;
use zeroize::Zeroizing;

/// The kind name in the keyring.
pub const KIND: &str = "pkcs11";
/// The environment variable naming the default module.
pub const MODULE_ENV: &str = "COFFER_PKCS11_MODULE";
/// DER of the P-256 curve OID (CKA_EC_PARAMS of a P-256 key).
const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// How the token protects the KEK (the `mechanism` member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Pkcs11Mechanism {
    /// EC P-256 key on the token, ECDH (default).
    #[default]
    #[serde(rename = "ecdh")]
    Ecdh,
    /// AES-256 key on the token, AES-GCM encryption of a random KEK.
    #[serde(rename = "aes-gcm")]
    AesGcm,
}

impl Pkcs11Mechanism {
    /// The name as stored and given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Pkcs11Mechanism::Ecdh => "ecdh",
            Pkcs11Mechanism::AesGcm => "aes-gcm",
        }
    }

    /// Parse a stored or typed name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ecdh" => Some(Self::Ecdh),
            "aes-gcm" => Some(Self::AesGcm),
            _ => None,
        }
    }
}

/// Public parameters of a PKCS#11 slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Params {
    /// Path of the PKCS#11 module used at enrollment.
    pub module: String,
    /// The RFC 7512 URI naming the token and key (never with `pin-value`).
    pub uri: String,
    /// `ecdh` or `aes-gcm`.
    pub mechanism: Pkcs11Mechanism,
    /// ecdh: the token key's public point (uncompressed, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// ecdh: the ephemeral public point (uncompressed, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<String>,
    /// aes-gcm: IV ‖ ciphertext ‖ tag of the KEK (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_kek: Option<String>,
}

/// What `enroll` needs to know. `Debug` never shows the URI's `pin-value`.
#[derive(Clone)]
pub struct EnrollOptions {
    /// The module to load.
    pub module: PathBuf,
    /// The URI naming the token and key.
    pub uri: String,
    /// Which mechanism.
    pub mechanism: Pkcs11Mechanism,
    /// Make a new key on the token (refused if one matches the URI already).
    pub generate: bool,
    /// ecdh only: wrap to this public key without touching the token
    /// (read from a file by [`ecdh::public_key`]).
    pub public_key: Option<ecdh::PublicKey>,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = Pkcs11Uri::parse(&self.uri)
            .map(|u| u.to_stored())
            .unwrap_or_else(|_| "(unparsed)".into());
        f.debug_struct("EnrollOptions")
            .field("module", &self.module)
            .field("uri", &uri)
            .field("mechanism", &self.mechanism)
            .field("generate", &self.generate)
            .field("public_key", &self.public_key.is_some())
            .finish()
    }
}

fn no_pin() -> SlotError {
    SlotError::Usage(
        "the token needs its user PIN: give --pin-file, pin-source= in the URI, or run in a terminal"
            .into(),
    )
}

fn malformed(field: &str, reason: impl Into<String>) -> SlotError {
    SlotError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Map a module error to what a person can act on.
fn ck_error(e: CkError, what: &str) -> SlotError {
    token::ck_error(e, what).into()
}

impl From<TokenError> for SlotError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NotFound { what, hint } => SlotError::DeviceNotFound { what, hint },
            TokenError::WrongPin { tries_left } => SlotError::WrongPin { tries_left },
            TokenError::PinLocked { what } => SlotError::LockedOut {
                what,
                hint: token::LOCKED_HINT.into(),
            },
            e @ (TokenError::NotOpened { .. } | TokenError::Failed(_)) => {
                SlotError::Device(e.to_string())
            }
        }
    }
}

/// How to name another module, for a module that did not load.
fn load_hint() -> String {
    format!("install it, or name it with --module or {MODULE_ENV}")
}

/// Read a PIN from a URI's `pin-source` (a file path or `file:` URI).
fn pin_from_source(src: &str) -> Result<SecretString, SlotError> {
    let path = src.strip_prefix("file:").unwrap_or(src);
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| malformed("uri", format!("pin-source {path} could not be read: {e}")))?,
    );
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| malformed("uri", format!("pin-source {path} is not UTF-8")))?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// The PIN from the URI (`pin-value`, then `pin-source`), if it names one.
/// For a URI typed at enrollment.
fn uri_pin(uri: &Pkcs11Uri) -> Result<Option<SecretString>, SlotError> {
    if let Some(v) = uri.attr("pin-value") {
        return Ok(Some(SecretString::from(v.to_owned())));
    }
    stored_uri_pin(uri)
}

/// The PIN a *stored* slot's URI names: only `pin-source` (the owner's own
/// keyring may name a file for unattended use). A stored `pin-value` is
/// never used: coffer never writes one, so one there was put by someone
/// else. Slots from an archive header reach here with neither (see
/// [`crate::slot`]'s trust rule).
fn stored_uri_pin(uri: &Pkcs11Uri) -> Result<Option<SecretString>, SlotError> {
    uri.attr("pin-source").map(pin_from_source).transpose()
}

fn ec_point_of(token: &Token, session: &Session, h: ObjectHandle) -> Result<[u8; 65], SlotError> {
    let attrs = session
        .get_attributes(h, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| ck_error(e, &token.what))?;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) if p != P256_OID_DER => {
                return Err(SlotError::Device(format!(
                    "the key on {} is not on curve P-256 (prime256v1); coffer needs a P-256 key",
                    token.what
                )));
            }
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let p = point.ok_or_else(|| {
        SlotError::Device(format!(
            "{}: the public key has no CKA_EC_POINT",
            token.what
        ))
    })?;
    ecdh::public_key(&p)
        .map(|k| sec1(&k))
        .map_err(|e| SlotError::Device(format!("{}: public key {e}", token.what)))
}

/// Enroll a PKCS#11 slot for `bk`. `pin` is asked for only when the token
/// needs it (generating a key, aes-gcm, or a public key that needs login).
pub fn enroll(
    bk: &BackupKey,
    opts: &EnrollOptions,
    pin: Option<&SecretString>,
    ui: &dyn Ui,
) -> Result<SlotRecord, SlotError> {
    let mut uri = Pkcs11Uri::parse(&opts.uri).map_err(|e| malformed("uri", e))?;
    if !uri.names_object() {
        return Err(malformed(
            "uri",
            "it names no key: add object=LABEL or id=HEX (percent-encoded)",
        ));
    }
    let module = opts.module.display().to_string();
    let uri_pin = uri_pin(&uri)?;
    let prompt = format!("PIN for PKCS#11 {}: ", uri.describe_token());
    let get_pin = || -> Option<SecretString> {
        uri_pin
            .clone()
            .or_else(|| pin.cloned())
            .or_else(|| ui.request_secret(&prompt))
    };
    if let (Some(public), Pkcs11Mechanism::Ecdh) = (&opts.public_key, opts.mechanism) {
        // Public-key-only enrollment: the token is not touched.
        if !uri.names_token() {
            return Err(malformed("uri", "name the token (token= or serial=)"));
        }
        return ecdh_record(bk, module, &uri, &sec1(public));
    }
    let token = Token::open(&opts.module, &uri, &load_hint())?;
    if !uri.names_token() {
        // Pin the token by label so a second token cannot be mistaken for it.
        uri.set("token", token.info.label().trim_end().as_bytes());
    }
    let session = token.session(true)?;
    match opts.mechanism {
        Pkcs11Mechanism::Ecdh => {
            if opts.generate {
                let p = get_pin().ok_or_else(no_pin)?;
                token.login(&session, Some(&p))?;
                refuse_existing(
                    &token,
                    &session,
                    &uri,
                    ObjectClass::PRIVATE_KEY,
                    KeyType::EC,
                )?;
                let mut pubt = key_template(&uri, ObjectClass::PUBLIC_KEY, KeyType::EC);
                pubt.extend([
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::EcParams(P256_OID_DER.to_vec()),
                    Attribute::Derive(true),
                ]);
                let mut privt = key_template(&uri, ObjectClass::PRIVATE_KEY, KeyType::EC);
                privt.extend([
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Derive(true),
                ]);
                let (h, _) = session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &pubt, &privt)
                    .map_err(|e| ck_error(e, &token.what))?;
                let point = ec_point_of(&token, &session, h)?;
                return ecdh_record(bk, module, &uri, &point);
            }
            let t = key_template(&uri, ObjectClass::PUBLIC_KEY, KeyType::EC);
            let found = session
                .find_objects(&t)
                .map_err(|e| ck_error(e, &token.what))?;
            if found.is_empty() {
                // Some tokens show public keys only after login.
                let p = get_pin().ok_or_else(no_pin)?;
                token.login(&session, Some(&p))?;
            }
            let h = token.find_one(&session, &uri, &t, "EC public key")?;
            let point = ec_point_of(&token, &session, h)?;
            ecdh_record(bk, module, &uri, &point)
        }
        Pkcs11Mechanism::AesGcm => {
            let p = get_pin().ok_or_else(no_pin)?;
            token.login(&session, Some(&p))?;
            let h = if opts.generate {
                refuse_existing(
                    &token,
                    &session,
                    &uri,
                    ObjectClass::SECRET_KEY,
                    KeyType::AES,
                )?;
                token.generate_aes256(&session, &uri)?
            } else {
                let t = key_template(&uri, ObjectClass::SECRET_KEY, KeyType::AES);
                token.find_one(&session, &uri, &t, "AES key")?
            };
            let kek = Kek::generate();
            let mut iv = [0u8; GCM_IV_LEN];
            crate::key::random_bytes(&mut iv);
            let ct = token.gcm_encrypt(
                &session,
                h,
                &mut iv,
                label::PKCS11_AES_GCM_KEK,
                kek.expose(),
            )?;
            // `iv` now holds the IV the token used: a FIPS-mode HSM may
            // replace ours with one it generated.
            if ct.len() != KEY_LEN + GCM_TAG_LEN {
                return Err(SlotError::Device(format!(
                    "{}: AES-GCM gave {} bytes, not {}",
                    token.what,
                    ct.len(),
                    KEY_LEN + GCM_TAG_LEN
                )));
            }
            let mut sealed = iv.to_vec();
            sealed.extend_from_slice(&ct);
            let params = Pkcs11Params {
                module,
                uri: uri.to_stored(),
                mechanism: Pkcs11Mechanism::AesGcm,
                public_key: None,
                ephemeral: None,
                sealed_kek: Some(B64.encode(sealed)),
            };
            Ok(SlotRecord::new(SlotParams::Pkcs11(params), bk.wrap(&kek)))
        }
    }
}

fn refuse_existing(
    token: &Token,
    session: &Session,
    uri: &Pkcs11Uri,
    class: ObjectClass,
    key_type: KeyType,
) -> Result<(), SlotError> {
    let t = key_template(uri, class, key_type);
    let found = session
        .find_objects(&t)
        .map_err(|e| ck_error(e, &token.what))?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(SlotError::Device(format!(
            "{}: a key {} exists already; enroll it without --generate, or choose another label",
            token.what,
            uri.describe_object()
        )))
    }
}

fn ecdh_record(
    bk: &BackupKey,
    module: String,
    uri: &Pkcs11Uri,
    point: &[u8; POINT_LEN],
) -> Result<SlotRecord, SlotError> {
    let recipient = ecdh::point(point).map_err(|e| malformed("public key", e))?;
    let (eph, kek) = ecdh::wrap(&recipient, label::PKCS11_ECDH_KEK);
    let params = Pkcs11Params {
        module,
        uri: uri.to_stored(),
        mechanism: Pkcs11Mechanism::Ecdh,
        public_key: Some(B64.encode(point)),
        ephemeral: Some(B64.encode(eph)),
        sealed_kek: None,
    };
    Ok(SlotRecord::new(SlotParams::Pkcs11(params), bk.wrap(&kek)))
}

/// A stored point: base64 of an uncompressed P-256 point on the curve.
fn point_field(v: &Option<String>, field: &str) -> Result<[u8; POINT_LEN], SlotError> {
    let v = v
        .as_deref()
        .ok_or_else(|| malformed(field, "missing for mechanism ecdh"))?;
    B64.decode(v.as_bytes())
        .ok()
        .and_then(|b| ecdh::point(&b).ok())
        .map(|k| sec1(&k))
        .ok_or_else(|| malformed(field, "not an uncompressed P-256 point in base64"))
}

impl Pkcs11Params {
    fn module_path(&self, locators: &Locators) -> PathBuf {
        // A module moved (another machine, another distribution): the
        // locally named module (--pkcs11-module, $COFFER_PKCS11_MODULE,
        // which the binary reads) is where it is now.
        let stored = PathBuf::from(&self.module);
        match &locators.pkcs11_module {
            Some(m) if !stored.exists() && !m.as_os_str().is_empty() => m.clone(),
            _ => stored,
        }
    }

    /// Check the stored fields before touching the token.
    fn checked(&self) -> Result<(Pkcs11Mechanism, Pkcs11Uri), SlotError> {
        let mech = self.mechanism;
        let uri = Pkcs11Uri::parse(&self.uri).map_err(|e| malformed("uri", e))?;
        let extra =
            |field: &str| malformed(field, format!("not a member of a {} slot", mech.name()));
        match mech {
            Pkcs11Mechanism::Ecdh => {
                point_field(&self.public_key, "public_key")?;
                point_field(&self.ephemeral, "ephemeral")?;
                if self.sealed_kek.is_some() {
                    return Err(extra("sealed_kek"));
                }
            }
            Pkcs11Mechanism::AesGcm => {
                self.sealed()?;
                if self.public_key.is_some() {
                    return Err(extra("public_key"));
                }
                if self.ephemeral.is_some() {
                    return Err(extra("ephemeral"));
                }
            }
        }
        Ok((mech, uri))
    }

    fn sealed(&self) -> Result<Vec<u8>, SlotError> {
        self.sealed_kek
            .as_deref()
            .and_then(|s| B64.decode(s.as_bytes()).ok())
            .filter(|b| b.len() == GCM_IV_LEN + KEY_LEN + GCM_TAG_LEN)
            .ok_or_else(|| malformed("sealed_kek", "not 60 bytes of base64"))
    }

    /// Ask the token for the KEK.
    fn token_kek(&self, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let (mech, uri) = match self.checked() {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let token = match Token::open(&self.module_path(ctx.locators), &uri, &load_hint()) {
            Ok(t) => t,
            Err(e) => return Some(Err(e.into())),
        };
        // The token is here: now the PIN is worth asking for.
        let pin = if token.info.protected_authentication_path() {
            None
        } else {
            let from_uri = match stored_uri_pin(&uri) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            Some(from_uri.or_else(|| ctx.secret("Token PIN"))?)
        };
        Some(self.kek_on(&token, &uri, mech, pin.as_ref()))
    }

    fn kek_on(
        &self,
        token: &Token,
        uri: &Pkcs11Uri,
        mech: Pkcs11Mechanism,
        pin: Option<&SecretString>,
    ) -> Result<Kek, SlotError> {
        let session = token.session(false)?;
        token.login(&session, pin)?;
        match mech {
            Pkcs11Mechanism::Ecdh => {
                let recipient = point_field(&self.public_key, "public_key")?;
                let eph = point_field(&self.ephemeral, "ephemeral")?;
                let t = key_template(uri, ObjectClass::PRIVATE_KEY, KeyType::EC);
                let h = token.find_one(&session, uri, &t, "EC private key")?;
                let mech = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &eph));
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen((KEY_LEN as u64).into()),
                    Attribute::Token(false),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ];
                let derived = session
                    .derive_key(&mech, h, &template)
                    .map_err(|e| ck_error(e, &token.what))?;
                let value = session.get_attributes(derived, &[AttributeType::Value]);
                // Destroy the derived object whatever happened.
                let destroyed = session.destroy_object(derived);
                let mut shared = Zeroizing::new(Vec::new());
                for a in value.map_err(|e| ck_error(e, &token.what))? {
                    if let Attribute::Value(mut v) = a {
                        shared.extend_from_slice(&v);
                        zeroize::Zeroize::zeroize(&mut v);
                    }
                }
                destroyed.map_err(|e| ck_error(e, &token.what))?;
                if shared.len() != KEY_LEN {
                    return Err(SlotError::Device(format!(
                        "{}: ECDH gave {} bytes, not {KEY_LEN}",
                        token.what,
                        shared.len()
                    )));
                }
                let z: &[u8; ecdh::SHARED_LEN] =
                    shared.as_slice().try_into().expect("length checked");
                Ok(ecdh::kek_from_shared(
                    z,
                    &eph,
                    &recipient,
                    label::PKCS11_ECDH_KEK,
                ))
            }
            Pkcs11Mechanism::AesGcm => {
                let sealed = self.sealed()?;
                let t = key_template(uri, ObjectClass::SECRET_KEY, KeyType::AES);
                let h = token.find_one(&session, uri, &t, "AES key")?;
                let iv: [u8; GCM_IV_LEN] = sealed[..GCM_IV_LEN].try_into().expect("length checked");
                let plain = token
                    .gcm_decrypt(
                        &session,
                        h,
                        iv,
                        label::PKCS11_AES_GCM_KEK,
                        &sealed[GCM_IV_LEN..],
                    )
                    .map_err(|e| match e {
                        TokenError::NotOpened { what } => SlotError::Device(format!(
                            "the AES key {} on {what} did not open this slot: it is not the key enrolled",
                            uri.describe_object(),
                        )),
                        e => e.into(),
                    })?;
                let k: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| {
                    SlotError::Device(format!(
                        "{}: AES-GCM gave a KEK of the wrong length",
                        token.what
                    ))
                })?;
                Ok(Kek::from_bytes(k))
            }
        }
    }
}

impl Slot for Pkcs11Params {
    fn factor(&self) -> Option<FactorKind> {
        Some(FactorKind::Pin)
    }

    fn interaction(&self, _at_hand: bool) -> Interaction {
        Interaction::Device
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        Some(
            self.token_kek(ctx)?
                .and_then(|kek| match wrapped.unwrap(&kek) {
                    Ok(_) => Ok(kek),
                    Err(_) => Err(SlotError::Device(format!(
                        "the token key {} did not unwrap this slot: it is not the key enrolled",
                        self.uri
                    ))),
                }),
        )
    }

    /// ecdh: to the stored public key, with no token and no PIN; aes-gcm:
    /// the token gives the KEK back (with its PIN), as at unlock.
    fn rewrap(
        &self,
        wrapped: &WrappedKey,
        bk: &BackupKey,
        ctx: &UnlockContext<'_>,
    ) -> Option<Result<Rewrapped, SlotError>> {
        if self.mechanism == Pkcs11Mechanism::AesGcm {
            return Some(self.kek(wrapped, ctx)?.map(|kek| Rewrapped {
                params: None,
                wrapped: bk.wrap(&kek),
            }));
        }
        let result = (|| {
            self.checked()?;
            let point = point_field(&self.public_key, "public_key")?;
            let recipient = ecdh::point(&point).map_err(|e| malformed("public_key", e))?;
            let (eph, kek) = ecdh::wrap(&recipient, label::PKCS11_ECDH_KEK);
            Ok(Rewrapped {
                params: Some(SlotParams::Pkcs11(Pkcs11Params {
                    ephemeral: Some(B64.encode(eph)),
                    ..self.clone()
                })),
                wrapped: bk.wrap(&kek),
            })
        })();
        Some(result)
    }

    fn rewrap_needs_factor(&self) -> bool {
        self.mechanism == Pkcs11Mechanism::AesGcm
    }

    /// The same module, token, key and mechanism (and, for ECDH, public
    /// key); the ephemeral key or sealed KEK is the token's to use.
    fn same_device(&self, local: &SlotParams) -> bool {
        matches!(local, SlotParams::Pkcs11(l) if Pkcs11Params {
            ephemeral: l.ephemeral.clone(),
            sealed_kek: l.sealed_kek.clone(),
            ..self.clone()
        } == *l)
    }

    fn header_only(&self, locators: &Locators) -> HeaderOnly {
        let uri = match uri::Pkcs11Uri::parse(&self.uri) {
            Ok(u) => u.without_pin(),
            Err(e) => {
                return HeaderOnly::Refuse(format!(
                    "its uri is invalid: {}",
                    crate::ui::escaped(&e)
                ));
            }
        };
        // The binary fills this from --pkcs11-module or the environment;
        // the library reads no environment of its own.
        let Some(module) = locators
            .pkcs11_module
            .clone()
            .filter(|m| !m.as_os_str().is_empty())
        else {
            return HeaderOnly::Refuse(format!(
                "a header never names code to load: name the token's module with --pkcs11-module or {MODULE_ENV}"
            ));
        };
        HeaderOnly::Confirm {
            what: format!(
                "load the PKCS#11 module {} and log in to {} (a wrong PIN spends one of its tries)",
                crate::ui::escaped(&module.display().to_string()),
                crate::ui::escaped(&uri.describe_token())
            ),
            local: SlotParams::Pkcs11(Pkcs11Params {
                module: module.display().to_string(),
                uri: uri.to_stored(),
                ..self.clone()
            }),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {} (module {})",
            self.mechanism.name(),
            self.uri,
            self.module
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_errors_map_to_exit_statuses() {
        use crate::error::Category;
        use cryptoki::context::Function;
        use cryptoki::error::RvError;
        let st = |rv| ck_error(CkError::Pkcs11(rv, Function::Login), "t").category();
        assert_eq!(st(RvError::PinIncorrect), Category::WrongFactor);
        assert_eq!(st(RvError::PinLocked), Category::NoUsableSlot);
        assert!(matches!(
            ck_error(CkError::Pkcs11(RvError::PinLocked, Function::Login), "t"),
            SlotError::LockedOut { .. }
        ));
        assert!(matches!(
            ck_error(
                CkError::Pkcs11(RvError::TokenNotPresent, Function::OpenSession),
                "t"
            ),
            SlotError::DeviceNotFound { .. }
        ));
        let e = ck_error(
            CkError::Pkcs11(RvError::GeneralError, Function::Initialize),
            "t",
        );
        assert_eq!(e.to_string(), "t: C_Initialize returned GeneralError");
    }

    fn point() -> [u8; 65] {
        sec1(
            &p256::SecretKey::from_slice(&[9u8; 32])
                .unwrap()
                .public_key(),
        )
    }

    #[test]
    fn stored_fields_are_checked_before_the_token() {
        let p = Pkcs11Params {
            module: "/nonexistent.so".into(),
            uri: "pkcs11:token=t;object=k".into(),
            mechanism: Pkcs11Mechanism::Ecdh,
            public_key: Some(B64.encode(point())),
            ephemeral: Some(B64.encode([1u8; 10])),
            sealed_kek: None,
        };
        assert!(
            matches!(p.checked(), Err(SlotError::Malformed { field, .. }) if field == "ephemeral")
        );
        // A point off the curve never reaches the token.
        let off = Pkcs11Params {
            public_key: Some(B64.encode([4u8; 65])),
            ..p.clone()
        };
        assert!(
            matches!(off.checked(), Err(SlotError::Malformed { field, .. }) if field == "public_key")
        );
        let good = Pkcs11Params {
            ephemeral: Some(B64.encode(point())),
            public_key: Some(B64.encode(point())),
            ..p.clone()
        };
        assert!(good.checked().is_ok());
        let mixed = Pkcs11Params {
            sealed_kek: Some(B64.encode([0u8; 60])),
            ..good.clone()
        };
        assert!(
            matches!(mixed.checked(), Err(SlotError::Malformed { field, .. }) if field == "sealed_kek")
        );
        let gcm = Pkcs11Params {
            mechanism: Pkcs11Mechanism::AesGcm,
            ..mixed
        };
        assert!(
            matches!(gcm.checked(), Err(SlotError::Malformed { field, .. }) if field == "public_key")
        );
        // The slot JSON round-trips, and unknown members are refused.
        let rec = SlotRecord::new(SlotParams::Pkcs11(good), WrappedKey([0u8; 40]));
        let json = rec.to_json();
        assert_eq!(SlotRecord::from_json(&json, false).unwrap(), rec);
        let mut bad = json.clone();
        bad["pin"] = "1234".into();
        assert!(SlotRecord::from_json(&bad, false).is_err());
        // An unknown mechanism is refused when the slot is read.
        let mut rsa = json.clone();
        rsa["mechanism"] = "rsa".into();
        let err = SlotRecord::from_json(&rsa, false).unwrap_err();
        assert!(err.contains("rsa"), "{err}");
    }
}
