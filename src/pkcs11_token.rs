//! A PKCS#11 token, as the PKCS#11 slot and the vault server's sealer both
//! use one: load and start the module, find the one token a URI names,
//! open a session, log in, find or make a key, AES-GCM on the token.
//!
//! Errors are [`TokenError`]: few, and each one a person can act on; the
//! slot maps them to `SlotError` (exit statuses), the vault to its own.
//!
//! Owns: the calls into the module and what their return values mean.
//! Must never: keep a PIN past the login, match a token by slot number
//! (SoftHSM renumbers slots), or make a key extractable.

use crate::pkcs11_uri::Pkcs11Uri;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use zeroize::Zeroizing;

/// AES-GCM IV length, bytes.
pub(crate) const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length, bytes.
pub(crate) const GCM_TAG_LEN: usize = 16;

/// What went wrong with a token, in terms a person can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The module, the token or the key is not there.
    #[error("{what} not found: {hint}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// The token refused the PIN.
    #[error("wrong PIN{}", tries_left.map(|n| format!(" ({n} tries left)")).unwrap_or_default())]
    WrongPin {
        /// Tries left, when the token tells (it tells only of the last).
        tries_left: Option<u32>,
    },
    /// The user PIN is locked.
    #[error("{what} is locked: {LOCKED_HINT}")]
    PinLocked {
        /// The token.
        what: String,
    },
    /// AES-GCM decryption failed its check: another key, or altered data.
    #[error(
        "{what}: AES-GCM decryption failed: not the key that sealed it, or the data was altered"
    )]
    NotOpened {
        /// The token.
        what: String,
    },
    /// Anything else, with the token and the call that failed.
    #[error("{0}")]
    Failed(String),
}

/// What to do about a locked user PIN.
pub(crate) const LOCKED_HINT: &str =
    "the user PIN is locked after too many wrong tries; the token's security officer can reset it";

/// A module error in a line: `C_Login returned PinIncorrect`.
pub(crate) fn ck_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("C_{f:?} returned {rv:?}"),
        e => e.to_string(),
    }
}

/// Map a module error about `what` (a token) to what a person can act on.
pub(crate) fn ck_error(e: CkError, what: &str) -> TokenError {
    match &e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => TokenError::WrongPin { tries_left: None },
        CkError::Pkcs11(RvError::PinLocked, _) => TokenError::PinLocked { what: what.into() },
        CkError::Pkcs11(
            RvError::TokenNotPresent
            | RvError::DeviceRemoved
            | RvError::SlotIdInvalid
            | RvError::TokenNotRecognized,
            _,
        ) => TokenError::NotFound {
            what: what.into(),
            hint: "insert the token, or check the module's configuration".into(),
        },
        _ => TokenError::Failed(format!("{what}: {}", ck_text(&e))),
    }
}

/// Load and start the module at `path`. `hint` says how to name another
/// (the slot's flags differ from the vault server's).
pub(crate) fn load(path: &Path, hint: &str) -> Result<Pkcs11, TokenError> {
    let ctx = Pkcs11::new(path).map_err(|e| TokenError::NotFound {
        what: format!("PKCS#11 module {}", path.display()),
        hint: format!("it did not load ({e}); {hint}"),
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(TokenError::NotFound {
            what: format!(
                "PKCS#11 token (module {} failed to start: {})",
                path.display(),
                ck_text(&e)
            ),
            hint: "check the token is there and the module's configuration (for SoftHSM2: SOFTHSM2_CONF and its token folder)".into(),
        }),
    }
}

/// A started module and the one token a URI names.
pub(crate) struct Token {
    ctx: Pkcs11,
    slot: Slot,
    /// What the token says of itself.
    pub(crate) info: TokenInfo,
    /// The token, for messages: `PKCS#11 token token=LABEL`.
    pub(crate) what: String,
}

impl Token {
    // The slot's only (the vault server finds or makes its key).
    #[cfg(feature = "pkcs11")]
    /// Load `module` and find the token `uri` names; `hint` as for [`load`].
    pub(crate) fn open(module: &Path, uri: &Pkcs11Uri, hint: &str) -> Result<Self, TokenError> {
        Self::find(&load(module, hint)?, module, uri)
    }

    /// The one initialized token of the started module `ctx` (loaded from
    /// `module`) matching the URI's token, serial, manufacturer and model.
    pub(crate) fn find(ctx: &Pkcs11, module: &Path, uri: &Pkcs11Uri) -> Result<Self, TokenError> {
        let what = format!("PKCS#11 {}", uri.describe_token());
        let mut found = Vec::new();
        let slots = ctx.get_slots_with_token().map_err(|e| ck_error(e, &what))?;
        for slot in slots {
            // SoftHSM (and others) show an empty, uninitialised token too.
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let matches = |k: &str, v: &str| uri.attr(k).is_none_or(|want| want == v.trim_end());
            if matches("token", info.label())
                && matches("serial", info.serial_number())
                && matches("manufacturer", info.manufacturer_id())
                && matches("model", info.model())
            {
                found.push((slot, info));
            }
        }
        if found.len() > 1 {
            return Err(TokenError::Failed(format!(
                "{what}: {} tokens match; name one with token= or serial= in the URI",
                found.len()
            )));
        }
        let Some((slot, info)) = found.pop() else {
            return Err(TokenError::NotFound {
                what,
                hint: format!(
                    "no such token behind PKCS#11 module {0}; insert it, or check the URI (`pkcs11-tool --module {0} --list-token-slots` lists tokens)",
                    module.display()
                ),
            });
        };
        Ok(Self {
            ctx: ctx.clone(),
            slot,
            info,
            what,
        })
    }

    /// A read-write or read-only session.
    pub(crate) fn session(&self, rw: bool) -> Result<Session, TokenError> {
        let s = if rw {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        };
        s.map_err(|e| self.error(e))
    }

    /// Log the user in: on the token's own PIN pad when it has one, else
    /// with `pin` (`None` there is a wrong PIN). A wrong PIN reports the
    /// last try and the lock, when the token tells.
    pub(crate) fn login(
        &self,
        session: &Session,
        pin: Option<&SecretString>,
    ) -> Result<(), TokenError> {
        let res = if self.info.protected_authentication_path() {
            session.login(UserType::User, None)
        } else {
            let pin = pin.ok_or(TokenError::WrongPin { tries_left: None })?;
            session.login(
                UserType::User,
                Some(&SecretString::from(pin.expose_secret().to_owned())),
            )
        };
        match res {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                let after = self.ctx.get_token_info(self.slot).ok();
                Err(match after {
                    Some(i) if i.user_pin_locked() => {
                        self.error(CkError::Pkcs11(RvError::PinLocked, Function::Login))
                    }
                    Some(i) if i.user_pin_final_try() => TokenError::WrongPin {
                        tries_left: Some(1),
                    },
                    _ => TokenError::WrongPin { tries_left: None },
                })
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// A module error on this token.
    pub(crate) fn error(&self, e: CkError) -> TokenError {
        ck_error(e, &self.what)
    }

    /// Every object matching `template`.
    pub(crate) fn find_objects(
        &self,
        session: &Session,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, TokenError> {
        session.find_objects(template).map_err(|e| self.error(e))
    }

    // The slot's only (the vault server finds or makes its key).
    #[cfg(feature = "pkcs11")]
    /// The one object matching `template` (a `kind` of key, named by
    /// `uri`); none and several are errors that say what was looked for.
    pub(crate) fn find_one(
        &self,
        session: &Session,
        uri: &Pkcs11Uri,
        template: &[Attribute],
        kind: &str,
    ) -> Result<ObjectHandle, TokenError> {
        let found = self.find_objects(session, template)?;
        let what = format!("{kind} {} on {}", uri.describe_object(), self.what);
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(TokenError::NotFound {
                what,
                hint: "no such key (or it is of another type); check object= and id= in the URI (`pkcs11-tool --list-objects` lists keys)".into(),
            }),
            many => Err(TokenError::Failed(format!(
                "{what}: {} keys match; add id= to the URI",
                many.len()
            ))),
        }
    }

    /// Make an AES-256 key named by `uri` on the token: private,
    /// sensitive, never extractable, for encryption and decryption.
    pub(crate) fn generate_aes256(
        &self,
        session: &Session,
        uri: &Pkcs11Uri,
    ) -> Result<ObjectHandle, TokenError> {
        let mut t = key_template(uri, ObjectClass::SECRET_KEY, KeyType::AES);
        t.extend([
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ]);
        session
            .generate_key(&Mechanism::AesKeyGen, &t)
            .map_err(|e| self.error(e))
    }

    /// AES-GCM encryption by `key` (128-bit tag) under `iv`, binding `aad`:
    /// ciphertext ‖ tag. `iv` afterwards holds the IV the token used (a
    /// FIPS-mode HSM may replace the caller's with its own).
    pub(crate) fn gcm_encrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        iv: &mut [u8; GCM_IV_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        let params = gcm_params(iv, aad)?;
        session
            .encrypt(&Mechanism::AesGcm(params), key, plain)
            .map_err(|e| self.error(e))
    }

    /// AES-GCM decryption of ciphertext ‖ tag by `key`; a failed check is
    /// [`TokenError::NotOpened`].
    pub(crate) fn gcm_decrypt(
        &self,
        session: &Session,
        key: ObjectHandle,
        iv: [u8; GCM_IV_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let mut iv = iv;
        let params = gcm_params(&mut iv, aad)?;
        session
            .decrypt(&Mechanism::AesGcm(params), key, sealed)
            .map(Zeroizing::new)
            .map_err(|e| match e {
                CkError::Pkcs11(RvError::EncryptedDataInvalid, _) => TokenError::NotOpened {
                    what: self.what.clone(),
                },
                e => self.error(e),
            })
    }
}

fn gcm_params<'a>(
    iv: &'a mut [u8; GCM_IV_LEN],
    aad: &'a [u8],
) -> Result<GcmParams<'a>, TokenError> {
    GcmParams::new(iv, aad, (GCM_TAG_LEN as u64 * 8).into())
        .map_err(|e| TokenError::Failed(format!("AES-GCM parameters: {e}")))
}

/// The template that finds (or makes) a key of `class` and `key_type`
/// named by the URI's `object` (label) and `id`.
pub(crate) fn key_template(
    uri: &Pkcs11Uri,
    class: ObjectClass,
    key_type: KeyType,
) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class), Attribute::KeyType(key_type)];
    if let Some(l) = uri.attr("object") {
        t.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    if let Some(id) = uri.id() {
        t.push(Attribute::Id(id.to_vec()));
    }
    t
}
