//! Enrolling a PKCS#11 slot: finding or making the key on the token
//! (`--generate`), or taking its public key (`--public-key`, no token), and
//! proving the token holds the private half before anything is stored.
//!
//! Must never: replace a key already on the token, or store a PIN.

use super::*;
use crate::slot::SlotRecord;
use crate::ui::Ui;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

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

/// Enroll a PKCS#11 slot for `target` (the backup key, or a group
/// member's share). `pin` is asked for only when the token needs it
/// (generating a key, aes-gcm, or a public key that needs login).
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    opts: &EnrollOptions,
    pin: Option<&SecretString>,
    ui: &dyn Ui,
) -> Result<SlotRecord, SlotError> {
    let target = target.into();
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
        return ecdh_record(&target, module, &uri, &sec1(public));
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
                return ecdh_record(&target, module, &uri, &point);
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
            ecdh_record(&target, module, &uri, &point)
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
            Ok(target.record(SlotParams::Pkcs11(params), &kek))
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
    target: &Target<'_>,
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
    Ok(target.record(SlotParams::Pkcs11(params), &kek))
}
