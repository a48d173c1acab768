//! Getting the KEK back from the token: the stored fields checked before
//! the module is loaded, the module found (locally named when the stored
//! path is gone), login, then ECDH (`C_DeriveKey`) or AES-GCM decryption.
//!
//! Must never: leave a derived object on the token, or keep the derived
//! secret past the KEK derivation.

use super::*;

/// A stored point: base64 of an uncompressed P-256 point on the curve.
pub(super) fn point_field(v: &Option<String>, field: &str) -> Result<[u8; POINT_LEN], SlotError> {
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
    pub(super) fn module_path(&self, locators: &Locators) -> PathBuf {
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
    pub(super) fn checked(&self) -> Result<(Pkcs11Mechanism, Pkcs11Uri), SlotError> {
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

    pub(super) fn sealed(&self) -> Result<Vec<u8>, SlotError> {
        self.sealed_kek
            .as_deref()
            .and_then(|s| B64.decode(s.as_bytes()).ok())
            .filter(|b| b.len() == GCM_IV_LEN + KEY_LEN + GCM_TAG_LEN)
            .ok_or_else(|| malformed("sealed_kek", "not 60 bytes of base64"))
    }

    /// Ask the token for the KEK.
    pub(super) fn token_kek(&self, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
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

    pub(super) fn kek_on(
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
