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
//! Owns: the slot's stored parameters and the [`Slot`] implementation;
//! enrolling is in `enroll`, getting the KEK back from the token in
//! `unwrap`, and the token itself (module, login, AES-GCM) in
//! `crate::pkcs11_token`, shared with the vault's HSM sealer.
//! Must never: store a PIN (a URI's `pin-value` is dropped before storing),
//! keep the derived secret or the KEK past the unwrap, or leave a derived
//! object on the token.

/// The URIs that name tokens and keys (shared with the vault server).
pub use crate::pkcs11_uri as uri;
pub use enroll::enroll;

mod enroll;
mod unwrap;
use unwrap::point_field;

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Rewrapped, Slot, SlotParams, Target,
    UnlockContext,
};
use crate::ecdh::{self, POINT_LEN, sec1};
use crate::error::SlotError;
use crate::key::{KEY_LEN, Kek, WrappedKey, label};
use crate::pkcs11_token::{
    self as token, GCM_IV_LEN, GCM_TAG_LEN, Token, TokenError, key_template,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
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

impl Slot for Pkcs11Params {
    fn factor(&self) -> Option<FactorKind> {
        Some(FactorKind::Pin)
    }

    fn interaction(&self, _at_hand: bool) -> Interaction {
        Interaction::Device
    }

    fn classical_public_key(&self) -> bool {
        self.mechanism == Pkcs11Mechanism::Ecdh
    }

    /// A stored `pin-source` lets the token open with no one present
    /// (what it is for: unattended restores); an unparsable URI counts as
    /// such too, so that `export --seal-only` leaves it out.
    fn opens_unattended(&self) -> bool {
        Pkcs11Uri::parse(&self.uri).map_or(true, |u| u.attr("pin-source").is_some())
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        Some(
            self.token_kek(ctx)?
                .and_then(|kek| match ctx.opens(wrapped, &kek) {
                    true => Ok(kek),
                    false => Err(SlotError::Device(format!(
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
        target: &Target<'_>,
        ctx: &UnlockContext<'_>,
    ) -> Option<Result<Rewrapped, SlotError>> {
        if self.mechanism == Pkcs11Mechanism::AesGcm {
            return super::rewrap_under_the_same_kek(self, wrapped, target, ctx);
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
                wrapped: target.wrap(&kek),
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
    use crate::slot::SlotRecord;

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
