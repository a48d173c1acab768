//! The YubiKey (PIV) slot through a real pcscd, vpcd and the virtual PIV
//! card (hsm-sim's `vpiv-card`), driven through the real `coffer` binary;
//! third-party keys come from `yubico-piv-tool`. Needs pcscd running:
//! `sudo hsm-sim/pcsc.sh` (the fixture panics with that hint otherwise).
//!
//! One card at a time: the fixture holds a process-wide lock.
//!
//! Against a real YubiKey instead (destroys PIV slots 82 and 83 on it; its
//! PIN must be in $COFFER_TEST_YUBIKEY_PIN_FILE):
//! `COFFER_TEST_YUBIKEY_SERIAL=N cargo test --test yubikey -- --ignored real_`.
// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(all(feature = "yubikey", feature = "cli"))]

mod common;

use coffer::key::BackupKey;
use coffer::slot::yubikey as yk;
use coffer::slot::{FactorKind, Factors, SlotParams};
use coffer_hsm_sim::VirtualCard;
use common::Home;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

const PIN: &str = "271828";
const MGM: &str = "0f0e0d0c0b0a09080706050403020100a1a2a3a4a5a6a7a8";

/// `yubico-piv-tool` on `card`, which must succeed; what it printed.
fn piv_tool(card: &VirtualCard, args: &[&str]) -> String {
    let (ok, text) = card.piv_tool(args);
    assert!(ok, "yubico-piv-tool {args:?}: {text}");
    text
}

/// What an owner does first with a new card: own PIN, own management key.
fn personalize(card: &VirtualCard) {
    piv_tool(card, &["-a", "change-pin", "-P", "123456", "-N", PIN]);
    piv_tool(card, &["-a", "set-mgm-key", "-n", MGM]);
}

struct Setup {
    home: Home,
    pin: PathBuf,
    mgm: PathBuf,
    serial: String,
}

fn setup(card: &VirtualCard) -> Setup {
    let home = Home::new();
    home.init();
    Setup {
        pin: home.write("pin.txt", PIN),
        mgm: home.write("mgm.txt", MGM),
        serial: card.serial().to_string(),
        home,
    }
}

impl Setup {
    fn enroll_generate(&self) -> assert_cmd::assert::Assert {
        self.home
            .coffer()
            .args(["enroll", "yubikey", "--generate", "--serial", &self.serial])
            .arg("--management-key-file")
            .arg(&self.mgm)
            .arg("--pin-file")
            .arg(&self.pin)
            .arg("--recovery-key-file")
            .arg(self.home.recovery_key())
            .assert()
    }

    /// Enroll the key already in `piv_slot`, whose public key is in `pem`.
    fn enroll_existing(&self, piv_slot: &str, pem: &Path) -> assert_cmd::assert::Assert {
        self.home
            .coffer()
            .args([
                "enroll",
                "yubikey",
                "--piv-slot",
                piv_slot,
                "--serial",
                &self.serial,
            ])
            .arg("--public-key-file")
            .arg(pem)
            .arg("--pin-file")
            .arg(&self.pin)
            .arg("--recovery-key-file")
            .arg(self.home.recovery_key())
            .assert()
    }

    /// Seal a small file with the recovery key; returns the archive path.
    fn seal(&self) -> PathBuf {
        self.home.write("secret.txt", "for the owner only\n");
        let archive = self.home.path("a.coffer");
        self.home
            .coffer()
            .args(["seal", "secret.txt", "-o"])
            .arg(&archive)
            .arg("--recovery-key-file")
            .arg(self.home.recovery_key())
            .assert()
            .success();
        archive
    }

    /// `coffer -v --slot yubikey open` with the given PIN file.
    fn open_with_card(&self, pin: &PathBuf, out: &str) -> assert_cmd::assert::Assert {
        self.home
            .coffer()
            .args(["-v", "--slot", "yubikey", "open", "a.coffer", "-o", out])
            .arg("--pin-file")
            .arg(pin)
            .assert()
    }

    fn opened(&self, out: &str) -> String {
        std::fs::read_to_string(self.home.path(out).join("secret.txt")).unwrap()
    }
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[test]
fn enroll_a_key_that_yubico_piv_tool_generated() {
    let card = VirtualCard::start();
    personalize(&card);
    let s = setup(&card);
    let key = format!("--key={MGM}");
    let pem_file = s.home.path("pub83.pem");
    let out = format!("--output={}", pem_file.display());
    piv_tool(
        &card,
        &["-a", "generate", "-s", "83", "-A", "ECCP256", &key, &out],
    );
    s.enroll_existing("83", &pem_file).success();
    s.seal();
    s.open_with_card(&s.pin, "out").success();
    assert_eq!(s.opened("out"), "for the owner only\n");

    // A public key that is not the slot's is refused at enrollment.
    let other = p256::SecretKey::from_slice(&[9u8; 32])
        .unwrap()
        .public_key();
    use p256::pkcs8::EncodePublicKey as _;
    let other_pem = other
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let other_file = s.home.write("other.pem", &other_pem);
    let a = s.enroll_existing("83", &other_file).failure();
    assert!(
        stderr(&a).contains("does not hold the private key"),
        "{}",
        stderr(&a)
    );
}

#[test]
fn wrong_serial_and_empty_piv_slot_are_refused() {
    let card = VirtualCard::start();
    personalize(&card);
    let s = setup(&card);
    let a = s
        .home
        .coffer()
        .args(["enroll", "yubikey", "--generate", "--serial", "1"])
        .arg("--management-key-file")
        .arg(&s.mgm)
        .arg("--pin-file")
        .arg(&s.pin)
        .arg("--recovery-key-file")
        .arg(s.home.recovery_key())
        .assert()
        .code(5);
    assert!(stderr(&a).contains("YubiKey 1 not found"), "{}", stderr(&a));

    // Nothing in PIV slot 85: the enrollment check finds no key there.
    let other = p256::SecretKey::from_slice(&[5u8; 32])
        .unwrap()
        .public_key();
    use p256::pkcs8::EncodePublicKey as _;
    let pem = other
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let pem_file = s.home.write("pub85.pem", &pem);
    let a = s.enroll_existing("85", &pem_file).failure();
    assert!(
        stderr(&a).contains("PIV slot 85 holds no usable key"),
        "{}",
        stderr(&a)
    );
    assert_eq!(s.home.keyring_json()["slots"].as_array().unwrap().len(), 1);
}

#[test]
fn default_pin_and_management_key_are_refused_with_advice() {
    let card = VirtualCard::start();
    let s = setup(&card);
    let default_pin = s.home.write("default-pin.txt", "123456");
    let a = s
        .home
        .coffer()
        .args(["enroll", "yubikey", "--generate", "--serial", &s.serial])
        .arg("--pin-file")
        .arg(&default_pin)
        .arg("--recovery-key-file")
        .arg(s.home.recovery_key())
        .assert()
        .code(1);
    assert!(stderr(&a).contains("change-pin"), "{}", stderr(&a));

    // New PIN, default management key: refused before generating anything.
    piv_tool(&card, &["-a", "change-pin", "-P", "123456", "-N", PIN]);
    let a = s
        .home
        .coffer()
        .args(["enroll", "yubikey", "--generate", "--serial", &s.serial])
        .arg("--pin-file")
        .arg(&s.pin)
        .arg("--recovery-key-file")
        .arg(s.home.recovery_key())
        .assert()
        .code(1);
    assert!(
        stderr(&a).contains("default management key"),
        "{}",
        stderr(&a)
    );
    assert_eq!(s.home.keyring_json()["slots"].as_array().unwrap().len(), 1);
}

#[test]
fn wrong_pin_exit_3_then_blocked_exit_5_and_the_recovery_key_still_opens() {
    let card = VirtualCard::start();
    personalize(&card);
    let s = setup(&card);
    s.enroll_generate().success();
    s.seal();
    let wrong = s.home.write("wrong-pin.txt", "999999");

    let a = s.open_with_card(&wrong, "o1").code(3);
    assert!(
        stderr(&a).contains("wrong PIN (2 tries left)"),
        "{}",
        stderr(&a)
    );
    let a = s.open_with_card(&wrong, "o2").code(3);
    assert!(stderr(&a).contains("(1 tries left)"), "{}", stderr(&a));
    // The third wrong PIN blocks it; from then on even the right one fails.
    let a = s.open_with_card(&wrong, "o3").code(5);
    assert!(stderr(&a).contains("locked"), "{}", stderr(&a));
    let a = s.open_with_card(&s.pin, "o4").code(5);
    assert!(stderr(&a).contains("unblock"), "{}", stderr(&a));

    s.home
        .coffer()
        .args(["open", "a.coffer", "-o", "out", "--recovery-key-file"])
        .arg(s.home.recovery_key())
        .assert()
        .success();
    assert_eq!(s.opened("out"), "for the owner only\n");
}

#[test]
fn rewrap_without_the_card_still_unlocks_later() {
    let mut card = VirtualCard::start();
    personalize(&card);
    let bk = BackupKey::generate();
    let ui = coffer::ui::NonInteractive::default();
    let pin = SecretString::from(PIN);
    let opts = yk::EnrollOptions {
        serial: Some(card.serial()),
        piv_slot: 0x84,
        key: yk::KeySource::Generate {
            pin_policy: yk::PinPolicyArg::Once,
            touch_policy: yk::TouchPolicyArg::Never,
            management_key: Some(hex::decode(MGM).unwrap().into()),
        },
    };
    let enrolled = yk::enroll(&bk, opts, &pin, &ui).unwrap();
    let SlotParams::Yubikey(params) = &enrolled.params else {
        panic!("not a yubikey slot")
    };

    // Card unplugged: re-wrap with the public key alone.
    card.remove();
    let new = params.rewrap_public(&bk).unwrap();
    let mut rewrapped = enrolled.clone();
    rewrapped.params = new.params.expect("a new ephemeral key");
    rewrapped.wrapped = new.wrapped;
    assert_ne!(rewrapped.wrapped.0, enrolled.wrapped.0);
    let factors = Factors::new().with(FactorKind::Pin, pin.clone());
    let err = coffer::slot::unlock(std::slice::from_ref(&rewrapped), None, &factors, &ui)
        .err()
        .unwrap();
    assert_eq!(err.category(), coffer::Category::NoUsableSlot);

    card.insert();
    let (got, _) =
        coffer::slot::unlock(std::slice::from_ref(&rewrapped), None, &factors, &ui).unwrap();
    assert_eq!(got.expose(), bk.expose());
}

/// The same round trip against a real YubiKey, when one is named.
#[test]
#[ignore = "needs a real YubiKey: COFFER_TEST_YUBIKEY_SERIAL and COFFER_TEST_YUBIKEY_PIN_FILE"]
fn real_yubikey_enroll_generate_then_open() {
    let serial: u32 = std::env::var("COFFER_TEST_YUBIKEY_SERIAL")
        .expect("COFFER_TEST_YUBIKEY_SERIAL")
        .parse()
        .expect("a serial number");
    let pin = std::fs::read_to_string(
        std::env::var("COFFER_TEST_YUBIKEY_PIN_FILE").expect("COFFER_TEST_YUBIKEY_PIN_FILE"),
    )
    .unwrap();
    let bk = BackupKey::generate();
    let ui = coffer::ui::NonInteractive::default();
    let pin = SecretString::from(pin.trim().to_owned());
    let opts = yk::EnrollOptions {
        serial: Some(serial),
        piv_slot: 0x82,
        key: yk::KeySource::Generate {
            pin_policy: yk::PinPolicyArg::Once,
            touch_policy: yk::TouchPolicyArg::Always,
            management_key: None,
        },
    };
    let enrolled = yk::enroll(&bk, opts, &pin, &ui).unwrap();
    let factors = Factors::new().with(FactorKind::Pin, pin);
    let (got, _) =
        coffer::slot::unlock(std::slice::from_ref(&enrolled), None, &factors, &ui).unwrap();
    assert_eq!(got.expose(), bk.expose());
}

/// A card reset (the `yubikey` crate resets on drop) ends the PIN session,
/// as on a real card: the compatibility layer's one stateful rule.
#[test]
fn a_card_reset_forgets_the_verified_pin() {
    use base64::Engine as _;
    use yubikey::piv::{AlgorithmId, RetiredSlotId, SlotId};
    let card = VirtualCard::start();
    personalize(&card);
    let ui = coffer::ui::NonInteractive::default();
    let opts = yk::EnrollOptions {
        serial: Some(card.serial()),
        piv_slot: 0x86,
        key: yk::KeySource::Generate {
            pin_policy: yk::PinPolicyArg::Once,
            touch_policy: yk::TouchPolicyArg::Never,
            management_key: Some(hex::decode(MGM).unwrap().into()),
        },
    };
    let enrolled = yk::enroll(&BackupKey::generate(), opts, &SecretString::from(PIN), &ui).unwrap();
    let SlotParams::Yubikey(params) = &enrolled.params else {
        panic!("not a yubikey slot")
    };
    let eph = base64::engine::general_purpose::STANDARD
        .decode(&params.ephemeral)
        .unwrap();
    let slot = SlotId::Retired(RetiredSlotId::R5);

    let serial = yubikey::Serial(card.serial());
    let mut y = yubikey::YubiKey::open_by_serial(serial).unwrap();
    y.verify_pin(PIN.as_bytes()).unwrap();
    assert!(yubikey::piv::decrypt_data(&mut y, &eph, AlgorithmId::EccP256, slot).is_ok());
    drop(y); // disconnects with SCARD_RESET_CARD

    let mut y = yubikey::YubiKey::open_by_serial(serial).unwrap();
    assert!(
        yubikey::piv::decrypt_data(&mut y, &eph, AlgorithmId::EccP256, slot).is_err(),
        "the PIN was still verified after a reset"
    );
}
