//! The YubiKey (PIV) slot: a P-256 key in a PIV slot of a YubiKey (or any
//! PIV card the `yubikey` crate can open), reached over PC/SC through pcscd.
//!
//! Wrap uses only the card's public key: an ephemeral P-256 key agrees with
//! it (ECDH), and HKDF-SHA256 (salt = ephemeral public key || card public
//! key, both SEC1 uncompressed; info [`label::YUBIKEY_KEK`]; the scheme
//! of [`crate::ecdh`]) turns the shared x
//! coordinate into the KEK. So enrolling again or re-wrapping needs neither
//! the card nor its PIN ([`YubikeyParams::rewrap_public`]). Unwrap verifies the PIN,
//! then the card does the ECDH with the stored ephemeral public key.
//!
//! Defaults follow age-plugin-yubikey: a retired slot, a key generated on
//! the card, PIN policy once, touch policy always.
//!
//! Must never: keep the PIN or the management key past the call that needs
//! it, put either in an error or `Debug`, or touch a card whose serial is not
//! the enrolled one. It never uses the default PIN or management key.

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Rewrapped, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::ecdh::{self, sec1};
use crate::error::SlotError;
use crate::key::{Kek, WrappedKey, label};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use yubikey::piv::{self, AlgorithmId, RetiredSlotId, SlotId};
use yubikey::{MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

/// The kind name in the keyring.
pub const KIND: &str = "yubikey";
/// Default PIV slot: the first retired key-management slot (0x82).
pub const DEFAULT_PIV_SLOT: u8 = 0x82;
/// Default PIN policy for a key generated at enrollment.
pub const DEFAULT_PIN_POLICY: PinPolicyArg = PinPolicyArg::Once;
/// Default touch policy for a key generated at enrollment.
pub const DEFAULT_TOUCH_POLICY: TouchPolicyArg = TouchPolicyArg::Always;
/// The PIN every PIV card ships with.
pub const DEFAULT_PIN: &str = "123456";

const PCSCD_HINT: &str =
    "plug the YubiKey in; if it is, start pcscd (`sudo systemctl start pcscd`, or `sudo pcscd`)";

/// PIN policy of a key generated at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PinPolicyArg {
    /// PIN once per session.
    Once,
    /// PIN before every use.
    Always,
    /// No PIN (the card alone unwraps; not recommended).
    Never,
}

/// Touch policy of a key generated at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TouchPolicyArg {
    /// Touch for every use.
    Always,
    /// Touch, then 15 s without.
    Cached,
    /// No touch.
    Never,
}

impl PinPolicyArg {
    fn to_piv(self) -> PinPolicy {
        match self {
            Self::Once => PinPolicy::Once,
            Self::Always => PinPolicy::Always,
            Self::Never => PinPolicy::Never,
        }
    }
}

impl TouchPolicyArg {
    fn to_piv(self) -> TouchPolicy {
        match self {
            Self::Always => TouchPolicy::Always,
            Self::Cached => TouchPolicy::Cached,
            Self::Never => TouchPolicy::Never,
        }
    }
}

/// Public parameters of a YubiKey slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YubikeyParams {
    /// The card's serial number.
    pub serial: u32,
    /// The PIV slot holding the key, two hex digits (`82`..`95`, `9d`).
    pub piv_slot: String,
    /// The card key's public key, SEC1 uncompressed, base64.
    pub public_key: String,
    /// The ephemeral public key of the wrap, SEC1 uncompressed, base64.
    pub ephemeral: String,
    /// PIN policy (`unknown` for a key the card made before enrollment).
    pub pin_policy: StoredPinPolicy,
    /// Touch policy (`unknown` for a key the card made before enrollment).
    pub touch_policy: StoredTouchPolicy,
}

/// A key's PIN policy as stored in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredPinPolicy {
    /// PIN once per session.
    Once,
    /// PIN before every use.
    Always,
    /// No PIN.
    Never,
    /// A key the card made before enrollment: the PIN is asked for.
    Unknown,
}

/// A key's touch policy as stored in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredTouchPolicy {
    /// Touch for every use.
    Always,
    /// Touch, then 15 s without.
    Cached,
    /// No touch.
    Never,
    /// A key the card made before enrollment: "touch" is shown.
    Unknown,
}

impl From<PinPolicyArg> for StoredPinPolicy {
    fn from(p: PinPolicyArg) -> Self {
        match p {
            PinPolicyArg::Once => Self::Once,
            PinPolicyArg::Always => Self::Always,
            PinPolicyArg::Never => Self::Never,
        }
    }
}

impl From<TouchPolicyArg> for StoredTouchPolicy {
    fn from(p: TouchPolicyArg) -> Self {
        match p {
            TouchPolicyArg::Always => Self::Always,
            TouchPolicyArg::Cached => Self::Cached,
            TouchPolicyArg::Never => Self::Never,
        }
    }
}

impl std::fmt::Display for StoredPinPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Once => "once",
            Self::Always => "always",
            Self::Never => "never",
            Self::Unknown => "unknown",
        })
    }
}

impl std::fmt::Display for StoredTouchPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Cached => "cached",
            Self::Never => "never",
            Self::Unknown => "unknown",
        })
    }
}

/// Parse a PIV slot as `--piv-slot` and the keyring write it: retired key
/// management slots 82..95, or 9d (key management).
pub fn parse_piv_slot(s: &str) -> Result<u8, String> {
    let n = u8::from_str_radix(s, 16).map_err(|_| format!("`{s}` is not two hex digits"))?;
    if (0x82..=0x95).contains(&n) || n == 0x9d {
        Ok(n)
    } else {
        Err(format!(
            "`{s}` is not a key-management PIV slot (82..95 or 9d)"
        ))
    }
}

fn piv_slot_id(n: u8) -> SlotId {
    if n == 0x9d {
        SlotId::KeyManagement
    } else {
        SlotId::Retired(RetiredSlotId::try_from(n).expect("checked range"))
    }
}

fn malformed(field: &str, reason: &str) -> SlotError {
    SlotError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

fn decode_point(field: &str, b64: &str) -> Result<p256::PublicKey, SlotError> {
    B64.decode(b64.as_bytes())
        .ok()
        .and_then(|b| ecdh::point(&b).ok())
        .ok_or_else(|| malformed(field, "not a P-256 point (SEC1 uncompressed, base64)"))
}

/// Wrap to a card public key: (ephemeral public key SEC1, KEK).
fn wrap_to(card: &p256::PublicKey) -> ([u8; ecdh::POINT_LEN], Kek) {
    ecdh::wrap(card, label::YUBIKEY_KEK)
}

/// The KEK from the x coordinate the card computed.
fn kek_from_card(
    serial: Option<u32>,
    shared_x: &[u8],
    ephemeral: &[u8; ecdh::POINT_LEN],
    card: &[u8; ecdh::POINT_LEN],
) -> Result<Kek, SlotError> {
    let z: &[u8; ecdh::SHARED_LEN] = shared_x.try_into().map_err(|_| {
        SlotError::Device(format!(
            "{}: the card's ECDH gave {} bytes, not {}",
            serial.map(|s| format!("YubiKey {s}")).unwrap_or_default(),
            shared_x.len(),
            ecdh::SHARED_LEN
        ))
    })?;
    Ok(ecdh::kek_from_shared(
        z,
        ephemeral,
        card,
        label::YUBIKEY_KEK,
    ))
}

/// Map the `yubikey` crate's errors to what a person can act on.
fn card_error(serial: Option<u32>, op: &str, e: yubikey::Error) -> SlotError {
    let what = match serial {
        Some(s) => format!("YubiKey {s}"),
        None => "YubiKey".to_owned(),
    };
    match e {
        yubikey::Error::NotFound => SlotError::DeviceNotFound {
            what,
            hint: PCSCD_HINT.into(),
        },
        yubikey::Error::PcscError { inner: None } => SlotError::DeviceNotFound {
            what,
            hint: "several cards are present; name one with --serial".into(),
        },
        yubikey::Error::PcscError { inner: Some(p) } => SlotError::DeviceNotFound {
            what,
            hint: format!("PC/SC said: {p}; {PCSCD_HINT}"),
        },
        yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => SlotError::LockedOut {
            what: format!("{what} PIN"),
            hint: "blocked after too many wrong PINs: unblock it with the PUK (`yubico-piv-tool -a unblock-pin`, or `ykman piv access unblock-pin`), or unlock with another slot".into(),
        },
        yubikey::Error::WrongPin { tries } => SlotError::WrongPin {
            tries_left: Some(u32::from(tries)),
        },
        e => SlotError::Device(format!("{what}: {op} failed: {e}")),
    }
}

fn open(serial: Option<u32>) -> Result<YubiKey, SlotError> {
    match serial {
        Some(s) => YubiKey::open_by_serial(Serial(s)),
        None => YubiKey::open(),
    }
    .map_err(|e| card_error(serial, "open", e))
}

/// How the key for a new slot is obtained.
pub enum KeySource {
    /// Generate a new key on the card, with these policies, authorized by
    /// this management key (24 bytes, 3DES). `None`: the PIN-protected
    /// management key the card stores, if it has one.
    Generate {
        /// PIN policy.
        pin_policy: PinPolicyArg,
        /// Touch policy.
        touch_policy: TouchPolicyArg,
        /// Management key, if not PIN-protected on the card.
        management_key: Option<Zeroizing<Vec<u8>>>,
    },
    /// A key already in the slot, whose public key is this (e.g. from
    /// `yubico-piv-tool -a generate -o`, parsed by [`ecdh::public_key`]) or,
    /// when `None`, read from the card.
    Existing(Option<p256::PublicKey>),
}

/// What `enroll` needs.
pub struct EnrollOptions {
    /// The card's serial; `None` when exactly one card is present.
    pub serial: Option<u32>,
    /// The PIV slot (see [`parse_piv_slot`]).
    pub piv_slot: u8,
    /// Generate a key or use the one there.
    pub key: KeySource,
}

/// Enroll a YubiKey: check the PIN (refusing the default one), get the
/// slot's key (generated now or already there), prove the card holds its
/// private key with one ECDH, and wrap `target` (the backup key, or a group
/// member's share) to it.
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    opts: EnrollOptions,
    pin: &SecretString,
    ui: &dyn crate::ui::Ui,
) -> Result<SlotRecord, SlotError> {
    if pin.expose_secret() == DEFAULT_PIN {
        return Err(SlotError::PolicyRefused(
            "the card still has the default PIN 123456; change the PIN and the PUK first (`yubico-piv-tool -a change-pin`, `yubico-piv-tool -a change-puk`, or `ykman piv access change-pin` / `change-puk`)".into(),
        ));
    }
    let mut yk = open(opts.serial)?;
    let serial = yk.serial().0;
    let some = Some(serial);
    let slot = piv_slot_id(opts.piv_slot);
    yk.verify_pin(pin.expose_secret().as_bytes())
        .map_err(|e| card_error(some, "verify PIN", e))?;

    let (public, pin_policy, touch_policy) = match opts.key {
        KeySource::Generate {
            pin_policy,
            touch_policy,
            management_key,
        } => {
            if yk.authenticate(MgmKey::default()).is_ok() {
                return Err(SlotError::PolicyRefused(format!(
                    "YubiKey {serial} still has the default management key; set your own first (`yubico-piv-tool -a set-mgm-key`, or `ykman piv access change-management-key --protect` to keep it PIN-protected on the card), then enroll again"
                )));
            }
            let mgm = match management_key {
                Some(bytes) => MgmKey::from_bytes(bytes.as_slice()).map_err(|_| {
                    SlotError::PolicyRefused(
                        "the management key must be 24 bytes (48 hex digits, 3DES)".into(),
                    )
                })?,
                None => MgmKey::get_protected(&mut yk).map_err(|_| {
                    SlotError::PolicyRefused(format!(
                        "YubiKey {serial} keeps no PIN-protected management key: give yours with --management-key-file"
                    ))
                })?,
            };
            yk.authenticate(mgm).map_err(|_| {
                SlotError::PolicyRefused(format!("YubiKey {serial} refused the management key"))
            })?;
            let spki = piv::generate(
                &mut yk,
                slot,
                AlgorithmId::EccP256,
                pin_policy.to_piv(),
                touch_policy.to_piv(),
            )
            .map_err(|e| card_error(some, "generate key", e))?;
            let public = ecdh::point(spki.subject_public_key.raw_bytes()).map_err(|_| {
                SlotError::Device("the card returned a key that is not P-256".into())
            })?;
            // A generate ends the PIN session on some firmware.
            yk.verify_pin(pin.expose_secret().as_bytes())
                .map_err(|e| card_error(some, "verify PIN", e))?;
            (public, pin_policy.into(), touch_policy.into())
        }
        KeySource::Existing(Some(public)) => {
            (public, StoredPinPolicy::Unknown, StoredTouchPolicy::Unknown)
        }
        KeySource::Existing(None) => {
            let meta = piv::metadata(&mut yk, slot).map_err(|_| {
                SlotError::PolicyRefused(format!(
                    "YubiKey {serial} does not tell the public key of PIV slot {:02x} (firmware before 5.3, or not a YubiKey): give it with --public-key-file, e.g. the PEM that `yubico-piv-tool -a generate -o` wrote",
                    opts.piv_slot
                ))
            })?;
            let public = meta
                .public
                .and_then(|spki| ecdh::point(spki.subject_public_key.raw_bytes()).ok())
                .ok_or_else(|| {
                    SlotError::PolicyRefused(format!(
                        "PIV slot {:02x} of YubiKey {serial} holds no P-256 key",
                        opts.piv_slot
                    ))
                })?;
            (public, StoredPinPolicy::Unknown, StoredTouchPolicy::Unknown)
        }
    };

    // Prove the card holds the private key: wrap to it, unwrap on the card.
    let (eph, kek) = wrap_to(&public);
    if touch_policy != StoredTouchPolicy::Never {
        ui.message("Touch your YubiKey (if it is blinking)");
    }
    let shared = card_ecdh(&mut yk, some, opts.piv_slot, &eph)?;
    let check = kek_from_card(some, &shared, &eph, &sec1(&public))?;
    if check.expose() != kek.expose() {
        return Err(SlotError::PolicyRefused(format!(
            "PIV slot {:02x} of YubiKey {serial} does not hold the private key of that public key",
            opts.piv_slot
        )));
    }
    let params = YubikeyParams {
        serial,
        piv_slot: format!("{:02x}", opts.piv_slot),
        public_key: B64.encode(sec1(&public)),
        ephemeral: B64.encode(eph),
        pin_policy,
        touch_policy,
    };
    Ok(target.into().record(SlotParams::Yubikey(params), &kek))
}

fn card_ecdh(
    yk: &mut YubiKey,
    serial: Option<u32>,
    piv_slot: u8,
    ephemeral: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SlotError> {
    let out = piv::decrypt_data(yk, ephemeral, AlgorithmId::EccP256, piv_slot_id(piv_slot))
        .map_err(|e| match e {
            yubikey::Error::KeyError | yubikey::Error::GenericError => SlotError::Device(format!(
                "{}: PIV slot {piv_slot:02x} holds no usable key (was it replaced or deleted?)",
                serial.map(|s| format!("YubiKey {s}")).unwrap_or_default()
            )),
            e => card_error(serial, "ECDH", e),
        })?;
    Ok(Zeroizing::new(out.to_vec()))
}

impl YubikeyParams {
    fn piv_slot_number(&self) -> Result<u8, SlotError> {
        parse_piv_slot(&self.piv_slot).map_err(|r| malformed("piv_slot", &r))
    }

    /// Wrap `target` again for the same card key, without the card: a new
    /// ephemeral key, same serial, PIV slot and policies.
    pub fn rewrap_public<'a>(&self, target: impl Into<Target<'a>>) -> Result<Rewrapped, SlotError> {
        self.piv_slot_number()?;
        let card = decode_point("public_key", &self.public_key)?;
        let (eph, kek) = wrap_to(&card);
        let params = YubikeyParams {
            ephemeral: B64.encode(eph),
            ..self.clone()
        };
        Ok(Rewrapped {
            params: Some(SlotParams::Yubikey(params)),
            wrapped: target.into().wrap(&kek),
        })
    }
}

impl Slot for YubikeyParams {
    fn factor(&self) -> Option<FactorKind> {
        (self.pin_policy != StoredPinPolicy::Never).then_some(FactorKind::Pin)
    }

    fn interaction(&self, _at_hand: bool) -> Interaction {
        Interaction::Device
    }

    fn opens_unattended(&self) -> bool {
        self.pin_policy == StoredPinPolicy::Never && self.touch_policy == StoredTouchPolicy::Never
    }

    fn classical_public_key(&self) -> bool {
        true
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let checked = (|| {
            let n = self.piv_slot_number()?;
            let card = decode_point("public_key", &self.public_key)?;
            let eph = decode_point("ephemeral", &self.ephemeral)?;
            Ok::<_, SlotError>((n, sec1(&card), sec1(&eph)))
        })();
        let (n, card, eph) = match checked {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let serial = Some(self.serial);
        // Find the card before asking for a PIN: no card, no prompt.
        let mut yk = match open(serial) {
            Ok(yk) => yk,
            Err(e) => return Some(Err(e)),
        };
        if self.pin_policy != StoredPinPolicy::Never {
            let pin = ctx.secret("YubiKey PIN")?;
            if let Err(e) = yk.verify_pin(pin.expose_secret().as_bytes()) {
                return Some(Err(card_error(serial, "verify PIN", e)));
            }
        }
        if self.touch_policy != StoredTouchPolicy::Never {
            ctx.ui.message(&format!(
                "Touch your YubiKey {} (if it is blinking)",
                self.serial
            ));
        }
        let shared = match card_ecdh(&mut yk, serial, n, &eph) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let kek = match kek_from_card(serial, &shared, &eph, &card) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        Some(match ctx.opens(wrapped, &kek) {
            true => Ok(kek),
            false => Err(SlotError::Device(format!(
                "YubiKey {}: PIV slot {} holds a different key than the one enrolled",
                self.serial, self.piv_slot
            ))),
        })
    }

    /// Public-key only: no card, no PIN.
    fn rewrap(
        &self,
        _wrapped: &WrappedKey,
        target: &Target<'_>,
        _ctx: &UnlockContext<'_>,
    ) -> Option<Result<Rewrapped, SlotError>> {
        Some(self.rewrap_public(target))
    }

    fn rewrap_needs_factor(&self) -> bool {
        false
    }

    /// The same card (serial) and key (PIV slot, public key, policies);
    /// the ephemeral key is the card's to use.
    fn same_device(&self, local: &SlotParams) -> bool {
        matches!(local, SlotParams::Yubikey(l) if YubikeyParams {
            ephemeral: l.ephemeral.clone(),
            ..self.clone()
        } == *l)
    }

    fn header_only(&self, _: &Locators) -> HeaderOnly {
        HeaderOnly::Confirm {
            what: format!(
                "use the YubiKey with serial {} (PIV slot {}) and send it a PIN (a wrong one spends one of its tries)",
                self.serial,
                crate::ui::escaped(&self.piv_slot)
            ),
            local: SlotParams::Yubikey(self.clone()),
        }
    }

    fn describe(&self) -> String {
        format!(
            "YubiKey serial {}, PIV slot {}, PIN policy {}, touch policy {}",
            self.serial, self.piv_slot, self.pin_policy, self.touch_policy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_errors_map_to_what_a_person_can_do() {
        use crate::Category;
        let e = card_error(Some(7), "verify PIN", yubikey::Error::WrongPin { tries: 2 });
        assert_eq!(e.category(), Category::WrongFactor);
        assert_eq!(e.to_string(), "wrong PIN (2 tries left)");
        for blocked in [
            yubikey::Error::WrongPin { tries: 0 },
            yubikey::Error::PinLocked,
        ] {
            let e = card_error(Some(7), "verify PIN", blocked);
            assert_eq!(e.category(), Category::NoUsableSlot);
            assert!(e.to_string().contains("PUK"), "{e}");
        }
        let e = card_error(Some(7), "open", yubikey::Error::NotFound);
        assert_eq!(e.category(), Category::NoUsableSlot);
        assert!(e.to_string().contains("YubiKey 7 not found"), "{e}");
        assert!(e.to_string().contains("start pcscd"), "{e}");
        let several = card_error(None, "open", yubikey::Error::PcscError { inner: None });
        assert!(several.to_string().contains("--serial"), "{several}");
    }

    #[test]
    fn piv_slots_are_checked() {
        assert_eq!(parse_piv_slot("82"), Ok(0x82));
        assert_eq!(parse_piv_slot("95"), Ok(0x95));
        assert_eq!(parse_piv_slot("9d"), Ok(0x9d));
        assert!(parse_piv_slot("9a").is_err());
        assert!(parse_piv_slot("96").is_err());
        assert!(parse_piv_slot("zz").is_err());
    }

    #[test]
    fn params_refuse_unknown_fields() {
        let v = serde_json::json!({
            "serial": 1, "piv_slot": "82", "public_key": "", "ephemeral": "",
            "pin_policy": "once", "touch_policy": "always", "extra": 1
        });
        assert!(serde_json::from_value::<YubikeyParams>(v).is_err());
    }
}
