//! The FIDO2 slot: a credential on a FIDO2 security key (a Security Key by
//! Yubico, a SoloKey, a Nitrokey, a Titan...) and its `hmac-secret`
//! extension, as systemd-cryptenroll's `--fido2-device` uses it.
//!
//! Enrollment makes a credential for the relying party (`coffer`, or
//! `--rp-id`), non-discoverable unless asked, and a random 32-byte salt;
//! the key's hmac-secret over that salt, through HKDF (salt = the slot's
//! salt, info [`label::FIDO2_KEK`]), is the KEK. The slot records the
//! credential id, the salt and how it was asked: with the PIN (which
//! makes a CTAP 2.1 key verify the user, and its hmac-secret then differs
//! from without), with a touch, with built-in verification (a
//! fingerprint). Unlocking asks exactly the same way; re-wrapping at
//! `rotate` needs the key, as a TPM does.
//!
//! The client is this crate's own ([`crate::fido2`]: CTAPHID over Linux
//! hidraw, CTAP2 CBOR, PIN/UV auth protocols 2 and 1), since no safe Rust
//! client lets the transport be swapped for the virtual key the tests
//! use; see that module.
//!
//! Must never: send the PIN to a key that does not hold the slot's
//! credential, keep the PIN or the hmac-secret output past the unwrap, or
//! put either in an error. A slot read from an archive header alone is
//! tried only after a yes (it would touch a device and may spend a PIN
//! try).

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::error::SlotError;
use crate::fido2::ctap2::{PERMISSION_GA, PERMISSION_MC};
use crate::fido2::{Credential, Device, Error, Key, Options, status, transport};
use crate::key::{Kek, WrappedKey, label};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The kind name in the keyring.
pub const KIND: &str = "fido2";
/// The relying party id credentials are made for, unless told otherwise.
pub const DEFAULT_RP_ID: &str = "coffer";
/// Longest credential id CTAP allows, bytes.
const MAX_CREDENTIAL: usize = 1023;
/// What to say when the key waits for a touch.
pub const TOUCH: &str = "Touch your security key";
/// What to say when the key waits for its own user verification.
pub const FINGER: &str = "Put your finger on the security key's sensor";

/// What to say while the key waits, by whether it verifies the user.
fn prompt(uv: bool) -> &'static str {
    if uv { FINGER } else { TOUCH }
}

/// Public parameters of a FIDO2 slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fido2Params {
    /// The relying party id the credential is for.
    pub rp_id: String,
    /// The credential id, base64.
    pub credential: String,
    /// The credential's ES256 public key, SEC1 uncompressed, base64: the
    /// key's answer is checked with it before the PIN is sent.
    pub public_key: String,
    /// The hmac-secret salt, 32 bytes, base64.
    pub salt: String,
    /// Whether the PIN is sent (the key then verifies the user).
    pub pin: bool,
    /// Whether the key asks for a touch.
    pub up: bool,
    /// Whether the key verifies the user itself (a fingerprint).
    pub uv: bool,
    /// Whether the credential is stored on the key (discoverable).
    pub discoverable: bool,
}

fn malformed(field: &str, reason: &str) -> SlotError {
    SlotError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A relying party id as a slot may name one: 1 to 253 printable ASCII
/// characters without spaces (a domain-like name).
pub fn check_rp_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "`{}` is not a relying party id (1 to 253 printable characters, such as coffer)",
            crate::ui::escaped(s)
        ));
    }
    Ok(())
}

impl Fido2Params {
    /// The credential and salt, checked.
    fn decoded(&self) -> Result<(Credential, [u8; 32]), SlotError> {
        check_rp_id(&self.rp_id).map_err(|r| malformed("rp_id", &r))?;
        let id = B64
            .decode(&self.credential)
            .ok()
            .filter(|b| !b.is_empty() && b.len() <= MAX_CREDENTIAL)
            .ok_or_else(|| malformed("credential", "not 1 to 1023 bytes of base64"))?;
        let public_key: [u8; 65] = B64
            .decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .filter(|k: &[u8; 65]| crate::ecdh::point(k).is_ok())
            .ok_or_else(|| malformed("public_key", "not a P-256 point (SEC1, base64)"))?;
        let salt: [u8; 32] = B64
            .decode(&self.salt)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("salt", "not 32 bytes of base64"))?;
        Ok((Credential { id, public_key }, salt))
    }

    fn options(&self) -> Options {
        Options {
            up: self.up,
            builtin_uv: self.uv,
        }
    }
}

/// The KEK from the key's hmac-secret output.
fn kek_from(output: &[u8; 32], salt: &[u8; 32]) -> Kek {
    Kek::derive(Some(salt), output, label::FIDO2_KEK)
}

/// A client error as something a person can act on.
fn key_error(key: Option<&mut Key>, e: Error) -> SlotError {
    match e {
        Error::Open(d, io) if io.kind() == std::io::ErrorKind::NotFound => {
            SlotError::DeviceNotFound {
                what: format!("FIDO2 security key {d}"),
                hint: "plug it in".into(),
            }
        }
        Error::Open(d, io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            SlotError::Device(format!(
                "{d}: permission denied: your user may not open the key (systemd's uaccess rule gives the person at the console access; or add a udev rule for it)"
            ))
        }
        Error::Ctap(status::PIN_INVALID) => SlotError::WrongPin {
            tries_left: key.and_then(|k| k.pin_retries().ok()),
        },
        Error::Ctap(status::PIN_BLOCKED) => SlotError::LockedOut {
            what: "the security key's PIN".into(),
            hint: "blocked after too many wrong PINs: only resetting the key unblocks it, and that deletes its credentials; unlock with another slot".into(),
        },
        Error::Ctap(status::PIN_AUTH_BLOCKED) => SlotError::LockedOut {
            what: "the security key's PIN".into(),
            hint: "three wrong PINs in a row: unplug the key and plug it in again before the next try".into(),
        },
        Error::Ctap(status::NO_CREDENTIALS) => SlotError::Device(format!(
            "the security key{} does not hold this slot's credential: another key, or the credential was deleted (a reset deletes them all)",
            key.map(|k| format!(" {}", k.device)).unwrap_or_default()
        )),
        Error::Ctap(status::PIN_NOT_SET) => SlotError::Device(
            "the slot sends the key's PIN, but the key has none now: was it reset?".into(),
        ),
        Error::Ctap(status::PIN_REQUIRED) => SlotError::Device(
            "the security key wants its PIN for this, and this slot does not send it (the key's settings changed, e.g. always-UV): enroll it again".into(),
        ),
        Error::Ctap(status::PIN_AUTH_INVALID) => {
            SlotError::Device("the security key refused the PIN token it gave".into())
        }
        Error::Ctap(
            status::OPERATION_DENIED | status::USER_ACTION_TIMEOUT | status::ACTION_TIMEOUT,
        )
        | Error::Timeout => SlotError::Device(
            "the security key was not touched in time (or the touch was refused)".into(),
        ),
        Error::Ctap(status::UV_BLOCKED) => SlotError::LockedOut {
            what: "the security key's built-in user verification".into(),
            hint: "too many failed tries: verify with the key's PIN in its own tool to unblock it, or unlock with another slot".into(),
        },
        Error::Ctap(status::PIN_POLICY_VIOLATION) => SlotError::Device(
            "the security key refuses its PIN as it is (it may want it changed first: use the key's own tool)".into(),
        ),
        Error::Ctap(status::UV_INVALID) => SlotError::Device(
            "the security key did not verify the user (fingerprint not recognised)".into(),
        ),
        Error::Ctap(status::UNSUPPORTED_OPTION) => SlotError::Device(
            "the security key cannot do what this slot asks (user verification it lacks, or hmac-secret without a touch)".into(),
        ),
        e => SlotError::Device(format!("FIDO2 security key: {e}")),
    }
}

/// How a new slot asks the key.
pub struct EnrollOptions {
    /// The key (`--fido2-device`); `None`: the one key plugged in.
    pub device: Option<Device>,
    /// The relying party id.
    pub rp_id: String,
    /// Send the PIN at unlock: `None` means yes when the key has one set
    /// and `uv` is off.
    pub with_pin: Option<bool>,
    /// Ask for a touch.
    pub up: bool,
    /// Ask the key to verify the user itself (a fingerprint).
    pub uv: bool,
    /// Store the credential on the key.
    pub discoverable: bool,
}

/// The devices to ask: the one named (`--fido2-device`), else every
/// FIDO2 key plugged in.
fn candidates(named: Option<Device>) -> Vec<Device> {
    match named {
        Some(d) => vec![d],
        None => transport::list(),
    }
}

fn listed(devices: &[Device]) -> String {
    devices
        .iter()
        .map(Device::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one key to enroll: the one named, or the only one plugged in.
fn the_key(named: Option<Device>) -> Result<Key, SlotError> {
    let device = match candidates(named).as_slice() {
        [] => {
            return Err(SlotError::DeviceNotFound {
                what: "FIDO2 security key".into(),
                hint: "plug it in (or name it with --fido2-device)".into(),
            });
        }
        [one] => one.clone(),
        several => {
            return Err(SlotError::Usage(format!(
                "several FIDO2 security keys are plugged in ({}): name one with --fido2-device",
                listed(several)
            )));
        }
    };
    Key::open(&device).map_err(|e| key_error(None, e))
}

/// Enroll a FIDO2 key: make a credential with hmac-secret, check the key
/// answers for it without a PIN (as unlocking will ask), ask it once for
/// the secret over a fresh salt, and wrap `target` under the KEK. `pin`
/// is asked when the key has a PIN and does not verify the user itself:
/// the key wants it to make a credential, whether or not the slot sends
/// it later.
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    opts: EnrollOptions,
    pin: &dyn Fn() -> Option<SecretString>,
    ui: &dyn crate::ui::Ui,
) -> Result<SlotRecord, SlotError> {
    check_rp_id(&opts.rp_id).map_err(SlotError::Usage)?;
    if opts.uv && opts.with_pin == Some(true) {
        return Err(SlotError::Usage(
            "verify the user one way: --with-pin yes or --user-verification yes (a key gives the same secret for either, but takes only one at a time)".into(),
        ));
    }
    let mut key = the_key(opts.device.clone())?;
    if !key.info.hmac_secret() {
        return Err(SlotError::PolicyRefused(format!(
            "the security key {} has no hmac-secret extension: it cannot hold a coffer slot",
            key.device
        )));
    }
    let with_pin = opts.with_pin.unwrap_or(key.info.pin_set() && !opts.uv);
    if with_pin && !key.info.pin_set() {
        return Err(SlotError::PolicyRefused(format!(
            "the security key {} has no PIN: set one first (`fido2-token -S {}`, or your key's own tool), or enroll with --with-pin=no",
            key.device, key.device
        )));
    }
    if opts.uv && !key.info.builtin_uv() {
        return Err(SlotError::PolicyRefused(format!(
            "the security key {} has no built-in user verification set up (a fingerprint): enroll with --user-verification=no",
            key.device
        )));
    }
    let needs_pin = with_pin || (key.info.pin_set() && !opts.uv);
    let pin = if needs_pin {
        Some(pin().ok_or_else(|| {
            SlotError::Usage(
                "enroll fido2 needs the key's PIN: --pin-file FILE, or a terminal".into(),
            )
        })?)
    } else {
        None
    };
    let options = Options {
        up: opts.up,
        builtin_uv: opts.uv,
    };
    let rp = opts.rp_id.as_str();
    let token = |key: &mut Key, permission| match &pin {
        Some(p) => key
            .pin_token(p.expose_secret(), permission, rp)
            .map(Some)
            .map_err(|e| key_error(Some(key), e)),
        None => Ok(None),
    };
    let t = token(&mut key, PERMISSION_MC)?;
    let wait = prompt(opts.uv);
    // Making a credential always asks for a touch.
    let credential = key
        .make_credential(rp, opts.discoverable, t.as_ref(), options, &mut || {
            ui.message(wait)
        })
        .map_err(|e| key_error(Some(&mut key), e))?;
    // Unlocking finds the key by asking this, without a PIN or a touch.
    match key.has_credential(rp, &credential, &mut || ui.message(TOUCH)) {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            return Err(SlotError::PolicyRefused(format!(
                "the security key {} does not answer, without its PIN, whether it holds the credential it just made (is always-UV on?): coffer could not find it among other keys without sending a PIN; nothing enrolled",
                key.device
            )));
        }
    }
    let mut salt = [0u8; 32];
    crate::key::random_bytes(&mut salt);
    let t = if with_pin {
        token(&mut key, PERMISSION_GA)?
    } else {
        None
    };
    let output = key
        .hmac_secret(rp, &credential.id, &salt, t.as_ref(), options, &mut || {
            ui.message(&format!("{wait} again"))
        })
        .map_err(|e| key_error(Some(&mut key), e))?;
    let params = Fido2Params {
        rp_id: opts.rp_id,
        credential: B64.encode(&credential.id),
        public_key: B64.encode(credential.public_key),
        salt: B64.encode(salt),
        pin: with_pin,
        up: opts.up,
        uv: opts.uv,
        discoverable: opts.discoverable,
    };
    Ok(target
        .into()
        .record(SlotParams::Fido2(params), &kek_from(&output, &salt)))
}

/// The key that holds `credential`: the one named by `--fido2-device`, or
/// the first plugged-in key that answers for it, asked without a PIN and
/// its answer checked with the credential's public key, so that a PIN goes
/// only to the key enrolled.
fn find(
    locators: &Locators,
    rp_id: &str,
    credential: &Credential,
    ui: &dyn crate::ui::Ui,
) -> Result<Key, SlotError> {
    let devices = candidates(locators.fido2_device.as_deref().map(Device::parse));
    if devices.is_empty() {
        return Err(SlotError::DeviceNotFound {
            what: "FIDO2 security key".into(),
            hint: "plug in the key this slot was enrolled with".into(),
        });
    }
    let mut failures = Vec::new();
    for d in &devices {
        let mut key = match Key::open(d) {
            Ok(k) => k,
            Err(e) => {
                failures.push(key_error(None, e));
                continue;
            }
        };
        match key.has_credential(rp_id, credential, &mut || ui.message(TOUCH)) {
            Ok(true) => return Ok(key),
            Ok(false) => {
                failures.push(key_error(
                    Some(&mut key),
                    Error::Ctap(status::NO_CREDENTIALS),
                ));
            }
            Err(e) => failures.push(key_error(Some(&mut key), e)),
        }
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    Err(SlotError::DeviceNotFound {
        what: "the security key of this slot".into(),
        hint: format!(
            "none of the keys plugged in holds its credential ({})",
            devices
                .iter()
                .zip(&failures)
                .map(|(d, e)| format!("{d}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

impl Slot for Fido2Params {
    fn factor(&self) -> Option<FactorKind> {
        self.pin.then_some(FactorKind::Pin)
    }

    fn interaction(&self, _at_hand: bool) -> Interaction {
        Interaction::Device
    }

    fn opens_unattended(&self) -> bool {
        !self.pin && !self.up && !self.uv
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let (credential, salt) = match self.decoded() {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        // The key first: no key, no PIN prompt.
        let mut key = match find(ctx.locators, &self.rp_id, &credential, ctx.ui) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        let token = if self.pin {
            let pin = ctx.secret("Security key PIN")?;
            match key.pin_token(pin.expose_secret(), PERMISSION_GA, &self.rp_id) {
                Ok(t) => Some(t),
                Err(e) => return Some(Err(key_error(Some(&mut key), e))),
            }
        } else {
            None
        };
        let output = match key.hmac_secret(
            &self.rp_id,
            &credential.id,
            &salt,
            token.as_ref(),
            self.options(),
            &mut || ctx.ui.message(prompt(self.uv)),
        ) {
            Ok(o) => o,
            Err(e) => return Some(Err(key_error(Some(&mut key), e))),
        };
        let kek = kek_from(&output, &salt);
        Some(match ctx.opens(wrapped, &kek) {
            true => Ok(kek),
            false => Err(SlotError::Device(
                "the security key's answer does not open this slot: a different key with the same credential id, or the slot was altered".into(),
            )),
        })
    }

    fn header_only(&self, _: &Locators) -> HeaderOnly {
        HeaderOnly::Confirm {
            what: format!(
                "ask the FIDO2 security keys plugged in for a credential of relying party `{}`{}",
                crate::ui::escaped(&self.rp_id),
                if self.pin {
                    " and send one the PIN (a wrong one spends one of its tries)"
                } else {
                    ""
                }
            ),
            local: SlotParams::Fido2(self.clone()),
        }
    }

    fn describe(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "FIDO2 security key, relying party {}, PIN {}, touch {}, built-in verification {}, discoverable {}",
            crate::ui::escaped(&self.rp_id),
            yes(self.pin),
            yes(self.up),
            yes(self.uv),
            yes(self.discoverable)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Fido2Params {
        Fido2Params {
            rp_id: "coffer".into(),
            credential: B64.encode([1u8; 64]),
            public_key: B64.encode(crate::ecdh::sec1(
                &p256::SecretKey::from_slice(&[5u8; 32])
                    .unwrap()
                    .public_key(),
            )),
            salt: B64.encode([2u8; 32]),
            pin: true,
            up: true,
            uv: false,
            discoverable: false,
        }
    }

    #[test]
    fn params_are_checked() {
        params().decoded().unwrap();
        for bad in [
            Fido2Params {
                salt: B64.encode([2u8; 31]),
                ..params()
            },
            Fido2Params {
                credential: String::new(),
                ..params()
            },
            Fido2Params {
                credential: B64.encode(vec![1u8; 1024]),
                ..params()
            },
            Fido2Params {
                rp_id: "a b".into(),
                ..params()
            },
        ] {
            assert!(bad.decoded().is_err(), "{bad:?}");
        }
        let v = serde_json::json!({
            "rp_id": "coffer", "credential": "AQ==", "public_key": "", "salt": "", "pin": true,
            "up": true, "uv": false, "discoverable": false, "extra": 1
        });
        assert!(serde_json::from_value::<Fido2Params>(v).is_err());
    }

    #[test]
    fn unattended_only_without_pin_touch_or_verification() {
        assert!(!params().opens_unattended());
        let none = Fido2Params {
            pin: false,
            up: false,
            uv: false,
            ..params()
        };
        assert!(none.opens_unattended());
    }

    #[test]
    fn errors_say_what_to_do() {
        use crate::Category;
        let e = key_error(None, Error::Ctap(status::PIN_INVALID));
        assert_eq!(e.category(), Category::WrongFactor);
        let e = key_error(None, Error::Ctap(status::PIN_BLOCKED));
        assert_eq!(e.category(), Category::NoUsableSlot);
        assert!(e.to_string().contains("reset"), "{e}");
        let e = key_error(None, Error::Ctap(status::NO_CREDENTIALS));
        assert_eq!(e.category(), Category::NoUsableSlot);
        assert!(e.to_string().contains("deleted"), "{e}");
        let e = key_error(
            None,
            Error::Open(
                Device::parse("/dev/hidraw9"),
                std::io::ErrorKind::NotFound.into(),
            ),
        );
        assert_eq!(e.category(), Category::NoUsableSlot);
    }
}
