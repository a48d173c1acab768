//! The CTAP2 client (`coffer::fido2`) and the `fido2` slot against an
//! independent authenticator (trussed-dev's fido-authenticator in
//! hsm-sim's `fido2-key`), through the same CTAPHID packets a hidraw node
//! carries. The scenarios every kind shares are in tests/backends.rs.
//!
//! Against a real key instead (makes credentials for relying party
//! `coffer-test` on it; its PIN in $COFFER_TEST_FIDO2_PIN_FILE):
//! `COFFER_TEST_FIDO2_DEVICE=/dev/hidrawN cargo test --test fido2 -- --ignored real_`.
#![cfg(feature = "fido2")]

mod common;

use coffer::fido2::ctap2::{PERMISSION_GA, PERMISSION_MC};
use coffer::fido2::{Device, Error, Key, Options, status};
use coffer_hsm_sim::fido2::{Presence, VirtualKey};

const PIN: &str = "246810";
const RP: &str = "coffer";
const TOUCH: Options = Options {
    up: true,
    builtin_uv: false,
};

/// Panic unless `result` is the key's CTAP2 error `want`.
#[track_caller]
fn expect_status<T>(result: Result<T, Error>, want: u8) {
    match result {
        Err(Error::Ctap(s)) if s == want => {}
        Err(e) => panic!("{e}, not status {want:#04x}"),
        Ok(_) => panic!("succeeded, not status {want:#04x}"),
    }
}

fn open(vk: &VirtualKey) -> Key {
    Key::open(&Device::parse(&vk.device())).expect("open the virtual key")
}

#[test]
fn hmac_secret_is_stable_per_salt_and_differs_with_user_verification() {
    let vk = VirtualKey::start(Some(PIN));
    let mut key = open(&vk);
    assert!(key.info.hmac_secret(), "{:?}", key.info);
    assert!(key.info.pin_set());
    assert!(key.info.pin_protocols.contains(&2));
    let token = key.pin_token(PIN, PERMISSION_MC, RP).unwrap();
    let id = key
        .make_credential(RP, false, Some(&token), TOUCH, &mut || {})
        .unwrap()
        .id;
    let salt = [7u8; 32];
    let mut with_uv = || {
        let t = key.pin_token(PIN, PERMISSION_GA, RP).unwrap();
        key.hmac_secret(RP, &id, &salt, Some(&t), TOUCH, &mut || {})
            .unwrap()
    };
    let a = with_uv();
    let b = with_uv();
    assert_eq!(*a, *b, "the same salt gives the same secret");
    let c = key
        .hmac_secret(RP, &id, &salt, None, TOUCH, &mut || {})
        .unwrap();
    let d = key
        .hmac_secret(RP, &id, &salt, None, TOUCH, &mut || {})
        .unwrap();
    assert_eq!(*c, *d);
    assert_ne!(*a, *c, "CTAP 2.1: with and without UV differ");
    let other = key
        .hmac_secret(RP, &id, &[8u8; 32], None, TOUCH, &mut || {})
        .unwrap();
    assert_ne!(*other, *c);
    // The same key, reopened (a new channel) and after a power cycle.
    drop(key);
    let mut vk = vk;
    vk.power_off();
    vk.power_on();
    let mut key = open(&vk);
    let again = key
        .hmac_secret(RP, &id, &salt, None, TOUCH, &mut || {})
        .unwrap();
    assert_eq!(*again, *c);
}

#[test]
fn wrong_pins_count_down_and_unknown_credentials_are_named() {
    let vk = VirtualKey::start(Some(PIN));
    let mut key = open(&vk);
    let before = key.pin_retries().unwrap();
    expect_status(
        key.pin_token("000000", PERMISSION_GA, RP),
        status::PIN_INVALID,
    );
    assert_eq!(key.pin_retries().unwrap(), before - 1);
    key.pin_token(PIN, PERMISSION_GA, RP).unwrap();
    assert_eq!(
        key.pin_retries().unwrap(),
        before,
        "a right PIN resets the count"
    );
    expect_status(
        key.hmac_secret(RP, &[1u8; 64], &[0u8; 32], None, TOUCH, &mut || {}),
        status::NO_CREDENTIALS,
    );
}

#[test]
fn touch_is_waited_for_with_keepalives_and_refusal_is_an_error() {
    let vk = VirtualKey::start(None);
    let mut key = open(&vk);
    assert!(!key.info.pin_set());
    let id = key
        .make_credential(RP, false, None, TOUCH, &mut || {})
        .unwrap()
        .id;
    vk.presence(Presence::Require);
    let mut asked = 0;
    let secret = key
        .hmac_secret(RP, &id, &[1u8; 32], None, TOUCH, &mut || {
            asked += 1;
            vk.touch();
        })
        .unwrap();
    assert_eq!(asked, 1, "asked once to touch");
    vk.presence(Presence::Auto);
    let again = key
        .hmac_secret(RP, &id, &[1u8; 32], None, TOUCH, &mut || {
            panic!("no touch needed")
        })
        .unwrap();
    assert_eq!(*secret, *again);
    vk.presence(Presence::Deny);
    expect_status(
        key.hmac_secret(RP, &id, &[1u8; 32], None, TOUCH, &mut || {}),
        status::OPERATION_DENIED,
    );
}

#[test]
fn an_unplugged_key_cannot_be_opened_and_comes_back_the_same() {
    let vk = VirtualKey::start(None);
    let mut key = open(&vk);
    let id = key
        .make_credential(RP, true, None, TOUCH, &mut || {})
        .unwrap()
        .id;
    let before = key
        .hmac_secret(RP, &id, &[3u8; 32], None, TOUCH, &mut || {})
        .unwrap();
    vk.unplug();
    assert!(
        key.hmac_secret(RP, &id, &[3u8; 32], None, TOUCH, &mut || {})
            .is_err()
    );
    match Key::open(&Device::parse(&vk.device())) {
        Err(Error::Open(_, e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened an unplugged key"),
    }
    vk.plug();
    let mut key = open(&vk);
    let after = key
        .hmac_secret(RP, &id, &[3u8; 32], None, TOUCH, &mut || {})
        .unwrap();
    assert_eq!(*before, *after);
}

// The `coffer` binary with fido2 slots.

#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use common::Home;
    use std::ffi::OsStr;
    use std::process::Output;

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Panic unless standard error says `what`.
    #[track_caller]
    fn says(o: &Output, what: &str) {
        assert!(text(&o.stderr).contains(what), "{}", text(&o.stderr));
    }

    /// A keyring (recovery slot) with a folder sealed into a.coffer, and
    /// the PIN files.
    fn home() -> Home {
        let h = Home::new();
        h.init();
        h.write("pin.txt", PIN);
        h.write("wrong-pin.txt", "000000");
        std::fs::create_dir(h.path("data")).unwrap();
        h.write("data/f.txt", "fido2\n");
        h
    }

    fn run(h: &Home, device: &str, args: &[&str]) -> Output {
        h.coffer()
            .env("COFFER_FIDO2_DEVICE", device)
            .arg("--no-prompt")
            .args(args)
            .output()
            .unwrap()
    }

    #[track_caller]
    fn expect(out: &Output, code: i32) {
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    }

    fn enroll(h: &Home, key: &VirtualKey, label: &str) {
        enroll_with(h, key, label, "pin.txt", &[]);
    }

    fn enroll_with(h: &Home, key: &VirtualKey, label: &str, pin: &str, more: &[&str]) {
        let mut args = vec![
            "enroll",
            "fido2",
            "--label",
            label,
            "--pin-file",
            pin,
            "--recovery-key-file",
            "recovery.txt",
        ];
        args.extend(more);
        expect(&run(h, &key.device(), &args), 0);
    }

    fn retries(key: &VirtualKey) -> u32 {
        open(key).pin_retries().unwrap()
    }

    #[test]
    fn two_keys_each_open_their_own_slot_and_a_reset_key_is_named() {
        let h = home();
        const PIN_B: &str = "135790";
        h.write("pin-b.txt", PIN_B);
        let (a, b) = (VirtualKey::start(Some(PIN)), VirtualKey::start(Some(PIN_B)));
        enroll_with(&h, &a, "first", "pin.txt", &[]);
        enroll_with(&h, &b, "second", "pin-b.txt", &[]);
        expect(
            &run(&h, &b.device(), &["seal", "data", "-o", "a.coffer"]),
            0,
        );
        let b_tries = retries(&b);
        // Only the second key here: its slot opens, and the first slot's
        // PIN never reaches it (its retry counter stays as it was).
        let o = run(
            &h,
            &b.device(),
            &[
                "-v",
                "open",
                "a.coffer",
                "-o",
                "out",
                "--pin-file",
                "first=pin.txt",
                "--pin-file",
                "second=pin-b.txt",
            ],
        );
        expect(&o, 0);
        says(&o, "second");
        assert_eq!(retries(&b), b_tries, "a PIN went to the wrong key");
        let o = run(
            &h,
            &b.device(),
            &[
                "verify",
                "a.coffer",
                "--slot",
                "first",
                "--pin-file",
                "pin.txt",
            ],
        );
        expect(&o, 5);
        says(&o, "does not hold this slot's credential");
        assert_eq!(retries(&b), b_tries, "a PIN went to the wrong key");
        // A key reset (here: a new key where the old one was): 5, named.
        let reset = VirtualKey::start(Some(PIN_B));
        let o = run(
            &h,
            &reset.device(),
            &[
                "verify",
                "a.coffer",
                "--slot",
                "second",
                "--pin-file",
                "pin-b.txt",
            ],
        );
        expect(&o, 5);
        says(&o, "a reset deletes them all");
    }

    #[test]
    fn enroll_options_as_systemd_cryptenroll_names_them() {
        let h = home();
        let key = VirtualKey::start(Some(PIN));
        // Without the PIN at unlock, on a key that has one: the key wants
        // it once to make the credential, never again.
        enroll_with(
            &h,
            &key,
            "nopin",
            "pin.txt",
            &["--with-pin", "no", "--discoverable"],
        );
        let kr = h.keyring_json();
        let slot = kr["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["label"] == "nopin")
            .unwrap();
        assert_eq!(slot["pin"], false, "{slot}");
        assert_eq!(slot["discoverable"], true, "{slot}");
        expect(
            &run(&h, &key.device(), &["seal", "data", "-o", "a.coffer"]),
            0,
        );
        let before = retries(&key);
        expect(
            &run(
                &h,
                &key.device(),
                &["verify", "a.coffer", "--slot", "nopin"],
            ),
            0,
        );
        assert_eq!(retries(&key), before);
        // Built-in verification the key does not have: refused, nothing
        // enrolled; both ways at once: a usage error.
        let slots = kr["slots"].as_array().unwrap().len();
        let o = run(
            &h,
            &key.device(),
            &[
                "enroll",
                "fido2",
                "--user-verification",
                "yes",
                "--pin-file",
                "pin.txt",
                "--recovery-key-file",
                "recovery.txt",
            ],
        );
        expect(&o, 1);
        says(&o, "no built-in user verification");
        let o = run(
            &h,
            &key.device(),
            &[
                "enroll",
                "fido2",
                "--user-verification",
                "yes",
                "--with-pin",
                "yes",
                "--recovery-key-file",
                "recovery.txt",
            ],
        );
        expect(&o, 2);
        assert_eq!(h.keyring_json()["slots"].as_array().unwrap().len(), slots);
    }

    #[test]
    fn a_blocked_pin_is_5_and_the_recovery_key_still_opens() {
        let h = home();
        let mut key = VirtualKey::start(Some(PIN));
        enroll(&h, &key, "key");
        expect(
            &run(&h, &key.device(), &["seal", "data", "-o", "a.coffer"]),
            0,
        );
        // Wrong PINs until the key blocks it. Three in a row and the key
        // wants a power cycle before the next try (5, and it says so).
        let mut tries_left = Vec::new();
        let mut replugs = 0;
        loop {
            let o = run(
                &h,
                &key.device(),
                &[
                    "verify",
                    "a.coffer",
                    "--slot",
                    "key",
                    "--pin-file",
                    "wrong-pin.txt",
                ],
            );
            let said = text(&o.stderr);
            if o.status.code() == Some(3) {
                let n: u32 = said
                    .split("wrong PIN (")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no tries left in: {said}"));
                tries_left.push(n);
                continue;
            }
            expect(&o, 5);
            if said.contains("unplug the key") {
                replugs += 1;
                assert!(replugs < 5, "{said}");
                key.power_off();
                key.power_on();
                continue;
            }
            assert!(said.contains("blocked after too many wrong PINs"), "{said}");
            break;
        }
        assert!(replugs >= 1);
        assert!(tries_left.windows(2).all(|w| w[1] < w[0]), "{tries_left:?}");
        let o = run(
            &h,
            &key.device(),
            &[
                "verify",
                "a.coffer",
                "--slot",
                "key",
                "--pin-file",
                "pin.txt",
            ],
        );
        expect(&o, 5);
        says(&o, "blocked");
        let o = run(
            &h,
            &key.device(),
            &[
                "open",
                "a.coffer",
                "-o",
                "out",
                "--recovery-key-file",
                "recovery.txt",
            ],
        );
        expect(&o, 0);
    }

    #[test]
    fn a_touch_is_asked_for_when_the_key_waits_for_one() {
        use std::io::{BufRead, BufReader};
        let h = home();
        let key = VirtualKey::start(Some(PIN));
        enroll(&h, &key, "key");
        expect(
            &run(&h, &key.device(), &["seal", "data", "-o", "a.coffer"]),
            0,
        );
        key.presence(Presence::Require);
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"))
            .args(["--no-prompt", "verify", "a.coffer", "--pin-file", "pin.txt"])
            .env_clear()
            .env("HOME", h.dir.path())
            .env("COFFER_KEYRING", h.keyring())
            .env("COFFER_FIDO2_DEVICE", key.device())
            .current_dir(h.dir.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("Touch your security key") {
            let mut line = String::new();
            assert_ne!(
                err.read_line(&mut line).unwrap(),
                0,
                "ended without asking: {said}"
            );
            said.push_str(&line);
        }
        key.touch();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{said}{rest}");
    }

    #[test]
    fn a_slot_from_an_archive_alone_needs_a_yes() {
        let h = home();
        let key = VirtualKey::start(Some(PIN));
        enroll(&h, &key, "key");
        expect(
            &run(&h, &key.device(), &["seal", "data", "-o", "a.coffer"]),
            0,
        );
        // A new laptop: no keyring, the archive and the key.
        std::fs::remove_file(h.keyring()).unwrap();
        let o = run(
            &h,
            &key.device(),
            &["open", "a.coffer", "-o", "out", "--pin-file", "pin.txt"],
        );
        expect(&o, 5);
        says(&o, "FIDO2 security keys");
        let args: Vec<std::ffi::OsString> =
            ["open", "a.coffer", "-o", "out2", "--pin-file", "pin.txt"]
                .iter()
                .map(|s| OsStr::new(s).to_owned())
                .collect();
        let (ok, said) = common::run_on_a_terminal(
            &h,
            &h.keyring(),
            [("COFFER_FIDO2_DEVICE", key.device())],
            &args,
            "yes\n",
        );
        assert!(ok, "{said}");
        assert!(h.path("out2/data/f.txt").exists());
    }

    /// The round trip on a real key, when one is named.
    #[test]
    #[ignore = "needs a real FIDO2 key: COFFER_TEST_FIDO2_DEVICE and COFFER_TEST_FIDO2_PIN_FILE"]
    fn real_fido2_key_enroll_then_open() {
        let device = std::env::var("COFFER_TEST_FIDO2_DEVICE").expect("COFFER_TEST_FIDO2_DEVICE");
        let pin = std::env::var("COFFER_TEST_FIDO2_PIN_FILE").expect("COFFER_TEST_FIDO2_PIN_FILE");
        let h = home();
        let o = run(
            &h,
            &device,
            &[
                "enroll",
                "fido2",
                "--rp-id",
                "coffer-test",
                "--pin-file",
                &pin,
                "--recovery-key-file",
                "recovery.txt",
            ],
        );
        expect(&o, 0);
        expect(&run(&h, &device, &["seal", "data", "-o", "a.coffer"]), 0);
        let o = run(
            &h,
            &device,
            &[
                "open",
                "a.coffer",
                "-o",
                "out",
                "--slot",
                "fido2",
                "--pin-file",
                &pin,
            ],
        );
        expect(&o, 0);
        assert!(h.path("out/data/f.txt").exists());
    }
}

#[test]
fn pin_protocol_one_and_ctap_2_0_tokens_give_the_same_secret() {
    // A CTAP 2.0 key speaks PIN/UV auth protocol 1 and getPinToken only:
    // make the client see this key as one, and compare with protocol 2.
    let vk = VirtualKey::start(Some(PIN));
    let mut key = open(&vk);
    let token = key.pin_token(PIN, PERMISSION_MC, RP).unwrap();
    let id = key
        .make_credential(RP, false, Some(&token), TOUCH, &mut || {})
        .unwrap()
        .id;
    let salt = [9u8; 32];
    let t = key.pin_token(PIN, PERMISSION_GA, RP).unwrap();
    let two = key
        .hmac_secret(RP, &id, &salt, Some(&t), TOUCH, &mut || {})
        .unwrap();
    let plain_two = key
        .hmac_secret(RP, &id, &salt, None, TOUCH, &mut || {})
        .unwrap();
    key.info.pin_protocols = vec![1];
    key.info.versions.retain(|v| v != "FIDO_2_1");
    assert_eq!(key.info.protocol(), coffer::fido2::pin::Protocol::One);
    assert!(!key.info.ctap21());
    let t = key.pin_token(PIN, PERMISSION_GA, RP).unwrap();
    let one = key
        .hmac_secret(RP, &id, &salt, Some(&t), TOUCH, &mut || {})
        .unwrap();
    let plain_one = key
        .hmac_secret(RP, &id, &salt, None, TOUCH, &mut || {})
        .unwrap();
    assert_eq!(*one, *two);
    assert_eq!(*plain_one, *plain_two);
    expect_status(
        key.pin_token("000000", PERMISSION_GA, RP),
        status::PIN_INVALID,
    );
}

#[test]
fn the_silent_check_answers_only_for_the_credential_and_its_key() {
    let vk = VirtualKey::start(None);
    let mut key = open(&vk);
    let cred = key
        .make_credential(RP, false, None, TOUCH, &mut || {})
        .unwrap();
    vk.presence(Presence::Deny);
    // No touch needed, none asked.
    assert!(
        key.has_credential(RP, &cred, &mut || panic!("a touch"))
            .unwrap()
    );
    let other_id = coffer::fido2::Credential {
        id: vec![9u8; cred.id.len()],
        ..cred.clone()
    };
    assert!(!key.has_credential(RP, &other_id, &mut || {}).unwrap());
    assert!(!key.has_credential("elsewhere", &cred, &mut || {}).unwrap());
    // The right id, the wrong public key: the answer does not verify.
    let mut wrong = cred.clone();
    wrong.public_key = coffer::ecdh::sec1(
        &p256::SecretKey::from_slice(&[5u8; 32])
            .unwrap()
            .public_key(),
    );
    assert!(key.has_credential(RP, &wrong, &mut || {}).is_err());
}
