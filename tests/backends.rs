//! One scenario, written once, run against every slot kind on its real
//! simulator (no mocks): swtpm with and without a PIN, SoftHSM2 with an EC
//! and an AES key, the virtual PIV card through pcscd, the vault server on
//! SQLite and on PostgreSQL, and the password and recovery slots as
//! software baselines. The kinds are in tests/common/backend.rs.
//!
//! Every test starts from a [`Rig`]: `init`, `enroll` the kind, `seal` a
//! small folder. Then one step, so that each (kind, step) is its own test,
//! named `<kind>::<step>`:
//!
//! - the archive opens with that kind's factor alone (`--slot`, `-v`);
//! - a wrong factor is exit 3 and writes nothing; the right one still opens;
//! - the device taken away is exit 5 and writes nothing (the recovery key
//!   still opens), and back, opens; enrolling without it is exit 5;
//! - the factor unlocks the keyring; `remove` the slot, and it no longer
//!   does (exit 5);
//! - the archive sealed before still opens with that factor, from the
//!   slot's copy in its header (a hardware or vault slot from a header
//!   alone only after a yes at a terminal: DESIGN.md, "Trust rule").
//!
//! Exit statuses are the contract's (DESIGN.md): 0 ok, 2 usage, 3 wrong
//! factor, 4 corrupt, 5 no usable slot. A kind that breaks it keeps the
//! test, marked `#[ignore = "bug: ..."]`.
//!
//! Needs every simulator (hsm-sim/install-deps.sh) and pcscd running
//! (hsm-sim/pcsc.sh); a missing one fails, never skips.

mod common;

use common::backend::{Args, Rig, args};

/// `--slot <kind> -v` and the kind's factor, nothing else: in particular
/// no recovery key (unless that is the kind).
fn only_its_factor(r: &Rig, factor: Args) -> Args {
    let mut a = args(["-v", "--slot", r.backend.slot_kind()]);
    if r.backend.slot_kind() != "recovery" {
        assert!(
            !factor.iter().any(|s| s == "--recovery-key-file"),
            "[{}] its factor is the recovery key: {factor:?}",
            r.name()
        );
    }
    a.extend(factor);
    a
}

/// `open a.coffer -o <out>` with `unlock` arguments.
fn open(r: &Rig, unlock: Args, out: &str) -> std::process::Output {
    let mut a = unlock;
    a.extend(args(["open", "a.coffer", "-o", out]));
    r.run(&a)
}

/// The archive opens with the kind's factor alone, and says which slot.
fn opens_with_only_its_factor(r: &mut Rig) {
    let step = "open with only its factor";
    let out = open(r, only_its_factor(r, r.backend.factor_args()), "out");
    r.expect(&out, 0, step);
    let used = format!(
        "unlocked with slot {} ({})",
        r.slot_id,
        r.backend.slot_kind()
    );
    r.expect_said(&out, &used, step);
    if let Some(said) = r.backend.unlock_says() {
        r.expect_said(&out, said, step);
    }
    r.expect_opened("out", step);
}

/// A wrong PIN, password or recovery key: exit 3, nothing written.
fn wrong_factor_exits_3_and_writes_nothing(r: &mut Rig) {
    let step = "wrong factor";
    let wrong = r
        .backend
        .wrong_factor_args()
        .unwrap_or_else(|| panic!("[{}] has no wrong factor", r.name()));
    let before = r.state();
    let out = open(r, only_its_factor(r, wrong), "out");
    r.expect(&out, 3, step);
    assert_eq!(r.state(), before, "[{}] {step}: wrote something", r.name());
    let step = "right factor after a wrong one";
    let out = open(r, only_its_factor(r, r.backend.factor_args()), "out");
    r.expect(&out, 0, step);
    r.expect_opened("out", step);
}

/// The device taken away: exit 5, nothing written; brought back, the same
/// command opens (so the 5 was the absence).
#[cfg_attr(
    not(any(
        feature = "tpm2",
        feature = "pkcs11",
        feature = "yubikey",
        feature = "vault"
    )),
    allow(dead_code, reason = "the software kinds have no device")
)]
fn absent_device_exits_5_and_writes_nothing(r: &mut Rig) {
    let step = "absent device";
    assert!(r.backend.take_away(), "[{}] has no device", r.name());
    let before = r.state();
    let out = open(r, only_its_factor(r, r.backend.factor_args()), "out");
    r.expect(&out, 5, step);
    for said in r.backend.absent_says() {
        r.expect_said(&out, said, step);
    }
    // coffer's message alone: no library's own log lines (libtss2 prints
    // `ERROR:tcti:…` when no TPM answers, unless TSS2_LOG says otherwise).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.lines()
            .any(|l| l.starts_with("ERROR:") || l.starts_with("WARNING:")),
        "[{}] {step}: a library's log lines on stderr:\n{err}",
        r.name()
    );
    if r.backend.slot_kind() == "tpm2" {
        // A TSS2_LOG the person set is theirs.
        let mut a = only_its_factor(r, r.backend.factor_args());
        a.extend(args(["open", "a.coffer", "-o", "out"]));
        let out = r
            .coffer()
            .env("TSS2_LOG", "all+error")
            .args(&a)
            .output()
            .unwrap();
        r.expect(&out, 5, "absent TPM, TSS2_LOG set");
        r.expect_said(&out, "ERROR:", "absent TPM, TSS2_LOG set");
    }
    assert_eq!(r.state(), before, "[{}] {step}: wrote something", r.name());
    // Without --slot, the device is tried and the recovery key opens.
    let step = "absent device, recovery key too";
    let mut unlock = args(["-v"]);
    unlock.extend(r.backend.factor_args());
    unlock.extend(args([
        std::ffi::OsStr::new("--recovery-key-file"),
        r.home.recovery_key().as_os_str(),
    ]));
    let out = open(r, unlock, "out-recovery");
    r.expect(&out, 0, step);
    r.expect_said(&out, "(recovery)", step);
    r.expect_opened("out-recovery", step);
    r.backend.bring_back();
    let step = "device back";
    let out = open(r, only_its_factor(r, r.backend.factor_args()), "out");
    r.expect(&out, 0, step);
    r.expect_opened("out", step);
}

/// With the device away, enrolling another slot of the kind is exit 5 and
/// changes nothing.
#[cfg_attr(
    not(any(
        feature = "tpm2",
        feature = "pkcs11",
        feature = "yubikey",
        feature = "vault"
    )),
    allow(dead_code, reason = "the software kinds have no device")
)]
fn enroll_with_the_device_absent_exits_5(r: &mut Rig) {
    let step = "enroll with the device absent";
    assert!(r.backend.take_away(), "[{}] has no device", r.name());
    let before = r.state();
    let mut a = args(["enroll"]);
    a.extend(r.backend.enroll_args());
    a.extend(r.recovery_args());
    let out = r.run(&a);
    r.expect(&out, 5, step);
    for said in r.backend.absent_says() {
        r.expect_said(&out, said, step);
    }
    assert_eq!(
        r.state(),
        before,
        "[{}] {step}: changed something",
        r.name()
    );
}

/// `coffer remove <slot>`, unlocking with the recovery key.
fn remove(r: &mut Rig) {
    let step = "remove";
    let mut a = args(["remove", &r.slot_id]);
    if r.backend.slot_kind() == "recovery" {
        // The last recovery slot goes only with --force (tests/cli.rs).
        a.extend(args(["--force"]));
    }
    a.extend(r.recovery_args());
    let out = r.run(&a);
    r.expect(&out, 0, step);
    let kr = r.home.keyring_json();
    assert!(
        !kr["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == r.slot_id.as_str()),
        "[{}] {step}: the slot is still in the keyring: {kr}",
        r.name()
    );
}

/// After `remove`, the kind's factor alone unlocks nothing in the keyring:
/// `enroll` with it is exit 5 and adds no slot.
fn removed_slot_no_longer_unlocks_the_keyring(r: &mut Rig) {
    // Before: the factor alone unlocks the keyring (to verify an archive
    // that `seal`, needing no factor, made).
    let out = r.run(&args(["seal", "data", "-o", "b.coffer"]));
    r.expect(&out, 0, "seal with no factor");
    let step = "verify with only its factor";
    let mut a = only_its_factor(r, r.backend.factor_args());
    a.extend(args(["verify", "b.coffer"]));
    let out = r.run(&a);
    r.expect(&out, 0, step);
    let used = format!(
        "unlocked with slot {} ({})",
        r.slot_id,
        r.backend.slot_kind()
    );
    r.expect_said(&out, &used, step);
    remove(r);
    let step = "enroll with the removed slot's factor";
    let new = r.home.write("new-password.txt", "another password\n");
    let before = r.state();
    let mut a = args(["enroll", "password", "--new-password-file"]);
    a.push(new.into());
    a.extend(r.backend.factor_args());
    let out = r.run(&a);
    r.expect(&out, 5, step);
    assert_eq!(
        r.state(),
        before,
        "[{}] {step}: changed something",
        r.name()
    );
}

/// After `remove`, the archive sealed before still opens with the kind's
/// factor: its header carries the slot. An inert slot (recovery,
/// password) is tried as read. Any other is tried from a header alone
/// only after a yes at a terminal prompt (DESIGN.md, "Trust rule"): with
/// no terminal it is refused, exit 5; on one, answering yes, it opens.
fn archive_sealed_before_removal_still_opens(r: &mut Rig) {
    remove(r);
    let step = "open the older archive after remove";
    let mut unlock = only_its_factor(r, r.backend.factor_args());
    unlock.extend(r.backend.locator_args());
    if r.backend.inert() {
        let out = open(r, unlock, "out");
        r.expect(&out, 0, step);
        let used = format!(
            "unlocked with slot {} ({})",
            r.slot_id,
            r.backend.slot_kind()
        );
        r.expect_said(&out, &used, step);
        r.expect_opened("out", step);
        return;
    }
    let before = r.state();
    let out = open(r, unlock.clone(), "out");
    r.expect(&out, 5, step);
    r.expect_said(
        &out,
        &format!(
            "{} ({}): from the archive header only",
            r.slot_id,
            r.backend.slot_kind()
        ),
        step,
    );
    r.expect_said(&out, "needs a yes at a terminal prompt", step);
    assert_eq!(r.state(), before, "[{}] {step}: wrote something", r.name());
    let step = "open the older archive after remove, confirmed at a terminal";
    let mut a = unlock;
    a.extend(args(["open", "a.coffer", "-o", "out"]));
    let (ok, said) = r.run_on_a_terminal(&a, "y\n");
    assert!(ok, "[{}] {step}: failed:\n{said}", r.name());
    assert!(
        said.contains(&format!(
            "Slot {} ({}) is from the archive header only",
            r.slot_id,
            r.backend.slot_kind()
        )),
        "[{}] {step}: no confirmation asked:\n{said}",
        r.name()
    );
    r.expect_opened("out", step);
}

/// `factor` with each factor file bound to `slot` (`--pin-file SLOT=F`):
/// how a script names which slot a secret is for.
fn bound(factor: Args, slot: &str) -> Args {
    let mut out = Args::new();
    let mut it = factor.into_iter();
    while let Some(a) = it.next() {
        let takes_a_file = ["--pin-file", "--password-file", "--recovery-key-file"]
            .iter()
            .any(|f| a == *f);
        out.push(a);
        if takes_a_file {
            let mut v = std::ffi::OsString::from(format!("{slot}="));
            v.push(it.next().expect("a file after the option"));
            out.push(v);
        }
    }
    out
}

/// `rotate` re-wraps the slot for a new backup key, with its factor bound
/// to it (a public-key kind with its device away: it needs none); the
/// slot keeps its id, an archive sealed after opens with its factor alone,
/// and the archive sealed before still does.
fn rotate_rewraps_it_for_a_new_key(r: &mut Rig) {
    let step = "rotate";
    let before = r.home.keyring_json();
    let away = r.backend.rewraps_without_its_device() && r.backend.take_away();
    let mut a = args(["rotate"]);
    a.extend(bound(r.backend.factor_args(), &r.slot_id));
    a.extend(r.backend.other_factors());
    a.extend(args([
        std::ffi::OsStr::new("--recovery-key-file"),
        r.home.recovery_key().as_os_str(),
    ]));
    let out = r.run(&a);
    r.expect(&out, 0, step);
    if away {
        r.backend.bring_back();
    }
    let after = r.home.keyring_json();
    assert_ne!(after["key_id"], before["key_id"], "[{}] {step}", r.name());
    assert!(
        after["slots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == r.slot_id.as_str()),
        "[{}] {step}: the slot lost its id: {after}",
        r.name()
    );
    let step = "seal after rotate";
    let mut a = r.recovery_args();
    a.extend(args(["seal", "data", "-o", "b.coffer"]));
    let out = r.run(&a);
    r.expect(&out, 0, step);
    for (archive, out_dir) in [("b.coffer", "out-new"), ("a.coffer", "out-old")] {
        let step = format!("open {archive} with only its factor after rotate");
        let mut a = only_its_factor(r, r.backend.factor_args());
        a.extend(args(["open", archive, "-o", out_dir]));
        let out = r.run(&a);
        r.expect(&out, 0, &step);
        r.expect_opened(out_dir, &step);
    }
}

/// `enroll --replace SLOT --label main`: a second slot of the kind takes
/// the first one's place in one step; it answers to its label, for
/// `--slot` and for a factor bound to it.
fn replace_puts_a_labelled_slot_in_its_place(r: &mut Rig) {
    let step = "enroll --replace --label";
    let (enroll, factor) = r.backend.reenroll(&r.home);
    let slots_before = r.home.keyring_json()["slots"].as_array().unwrap().clone();
    let pos = slots_before
        .iter()
        .position(|s| s["id"] == r.slot_id.as_str())
        .unwrap();
    let mut a = args(["enroll"]);
    a.extend(enroll);
    a.extend(args(["--replace", &r.slot_id, "--label", "main"]));
    a.extend(r.recovery_args());
    let out = r.run(&a);
    r.expect(&out, 0, step);
    r.expect_said(&out, &format!("in place of slot {}", r.slot_id), step);
    let slots = r.home.keyring_json()["slots"].as_array().unwrap().clone();
    assert_eq!(slots.len(), slots_before.len(), "[{}] {step}", r.name());
    assert_eq!(slots[pos]["label"], "main", "[{}] {step}", r.name());
    assert_ne!(
        slots[pos]["id"],
        r.slot_id.as_str(),
        "[{}] {step}",
        r.name()
    );
    let step = "open by label, factor bound to the label";
    let mut a = args(["-v", "--slot", "main"]);
    a.extend(bound(factor, "main"));
    a.extend(args(["open", "a.coffer", "-o", "out-main"]));
    let out = r.run(&a);
    r.expect(&out, 0, step);
    r.expect_said(&out, "\"main\"", step);
    r.expect_opened("out-main", step);
}

/// For each kind, a module of tests, one per listed step: each test makes
/// a fresh [`Rig`] with the kind's constructor and runs that step.
macro_rules! backend_tests {
    ($(
        $(#[$kind_attr:meta])*
        $kind:ident = $make:expr => [ $( $(#[$step_attr:meta])* $step:ident ),* $(,)? ];
    )*) => {$(
        $(#[$kind_attr])*
        mod $kind {
            #[allow(unused_imports)]
            use super::common::backend::*;
            $(
                #[test]
                $(#[$step_attr])*
                fn $step() {
                    let mut rig = super::Rig::new($make);
                    super::$step(&mut rig);
                }
            )*
        }
    )*};
}

// A new step goes in every kind's list below, as one more function above
// taking `&mut Rig`.
backend_tests! {
    password = Password::new => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    recovery = Recovery::new => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    // No PIN: nothing to get wrong; the TPM itself is the factor.
    #[cfg(feature = "tpm2")]
    tpm2 = Tpm2::without_pin => [
        opens_with_only_its_factor,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "tpm2")]
    tpm2_pin = Tpm2::with_pin => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "pkcs11")]
    pkcs11_ecdh = Pkcs11::ecdh => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "pkcs11")]
    pkcs11_aes_gcm = Pkcs11::aes_gcm => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "yubikey")]
    yubikey = Yubikey::new => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "fido2")]
    fido2 = Fido2::new => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "vault")]
    vault_sqlite = Vault::sqlite => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
    #[cfg(feature = "vault")]
    vault_postgres = Vault::postgres => [
        opens_with_only_its_factor,
        wrong_factor_exits_3_and_writes_nothing,
        absent_device_exits_5_and_writes_nothing,
        enroll_with_the_device_absent_exits_5,
        removed_slot_no_longer_unlocks_the_keyring,
        archive_sealed_before_removal_still_opens,
        rotate_rewraps_it_for_a_new_key,
        replace_puts_a_labelled_slot_in_its_place,
    ];
}
