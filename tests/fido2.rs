//! The CTAP2 client (`coffer::fido2`) against an independent authenticator
//! (trussed-dev's fido-authenticator in hsm-sim's `fido2-key`), through the
//! same CTAPHID packets a hidraw node carries.
#![cfg(feature = "fido2")]

use coffer::fido2::ctap2::{PERMISSION_GA, PERMISSION_MC};
use coffer::fido2::{Device, Error, Key, Options, status};
use coffer_hsm_sim::fido2::{Presence, VirtualKey};

const PIN: &str = "246810";
const RP: &str = "coffer";
const TOUCH: Options = Options {
    up: true,
    builtin_uv: false,
};

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
        .unwrap();
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
    match key.pin_token("000000", PERMISSION_GA, RP) {
        Err(Error::Ctap(status::PIN_INVALID)) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a wrong PIN gave a token"),
    }
    assert_eq!(key.pin_retries().unwrap(), before - 1);
    key.pin_token(PIN, PERMISSION_GA, RP).unwrap();
    assert_eq!(
        key.pin_retries().unwrap(),
        before,
        "a right PIN resets the count"
    );
    match key.hmac_secret(RP, &[1u8; 64], &[0u8; 32], None, TOUCH, &mut || {}) {
        Err(Error::Ctap(status::NO_CREDENTIALS)) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn touch_is_waited_for_with_keepalives_and_refusal_is_an_error() {
    let vk = VirtualKey::start(None);
    let mut key = open(&vk);
    assert!(!key.info.pin_set());
    let id = key
        .make_credential(RP, false, None, TOUCH, &mut || {})
        .unwrap();
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
    match key.hmac_secret(RP, &id, &[1u8; 32], None, TOUCH, &mut || {}) {
        Err(Error::Ctap(status::OPERATION_DENIED)) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn an_unplugged_key_cannot_be_opened_and_comes_back_the_same() {
    let vk = VirtualKey::start(None);
    let mut key = open(&vk);
    let id = key
        .make_credential(RP, true, None, TOUCH, &mut || {})
        .unwrap();
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
