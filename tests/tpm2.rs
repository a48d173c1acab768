//! The tpm2 slot against a real software TPM (swtpm), one per test, no
//! mocks: enroll → unlock for every policy, across fresh connections and a
//! TPM reboot; PCR changes, wrong PINs and lockout reported as such; blobs
//! that tpm2-tools loads and unseals; and the command line, unattended and
//! falling back to the recovery key.
//!
//! swtpm and tpm2-tools must be installed (`hsm-sim/install-deps.sh`); a
//! missing one fails the suite, it never skips.
// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(all(feature = "tpm2", feature = "cli"))]

mod common;

use coffer::error::{Category, Error, SlotError};
use coffer::key::BackupKey;
use coffer::slot::tpm2::{self, EnrollOptions, PcrSpec, Tpm2Params};
use coffer::slot::{self, FactorKind, Factors, SlotParams, SlotRecord, recovery};
use coffer::ui::NonInteractive;
use coffer_hsm_sim::SwTpm;
use secrecy::SecretString;

const PCR_CHANGE: [u8; 32] = [0x5a; 32];

fn pin(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn enroll(tpm: &SwTpm, pcrs: Option<&str>, with_pin: Option<&str>) -> (BackupKey, SlotRecord) {
    let bk = BackupKey::generate();
    let rec = tpm2::enroll(
        &bk,
        &EnrollOptions {
            tcti: Some(tpm.tcti()),
            pcrs: pcrs.map(|p| p.parse::<PcrSpec>().unwrap()),
            pin: with_pin.map(pin),
        },
    )
    .expect("enroll");
    (bk, rec)
}

fn params(rec: &SlotRecord) -> &Tpm2Params {
    match &rec.params {
        SlotParams::Tpm2(p) => p,
        other => panic!("not a tpm2 slot: {other:?}"),
    }
}

/// Unlock through a fresh connection to `tpm`.
fn unlock(tpm: &SwTpm, rec: &SlotRecord, with_pin: Option<&str>) -> Result<BackupKey, SlotError> {
    let kek = params(rec).kek_via(&rec.wrapped, &tpm.tcti(), with_pin.map(pin).as_ref())?;
    Ok(rec.wrapped.unwrap(&kek).expect("kek_via checks the KEK"))
}

/// Nothing left loaded: swtpm has no resource manager.
fn assert_nothing_loaded(tpm: &SwTpm) {
    for what in ["handles-transient", "handles-loaded-session"] {
        let out = tpm.run("tpm2_getcap", &[what]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().is_empty(), "{what} left in the TPM: {text}");
    }
}

fn round_trip(pcrs: Option<&str>, with_pin: Option<&str>) {
    let mut tpm = SwTpm::start();
    let (bk, rec) = enroll(&tpm, pcrs, with_pin);
    let p = params(&rec);
    assert_eq!(p.pin, with_pin.is_some());
    assert_eq!(!p.pcrs.is_empty(), pcrs.is_some());
    // Nothing secret in the slot: the record's JSON has no KEK, BK or PIN.
    let json = rec.to_json().to_string();
    assert!(!json.contains(&hex::encode(bk.expose())));
    if let Some(pin) = with_pin {
        assert!(!json.contains(pin));
    }
    for _ in 0..2 {
        let got = unlock(&tpm, &rec, with_pin).expect("unlock");
        assert_eq!(got.expose(), bk.expose());
    }
    assert_nothing_loaded(&tpm);
    tpm.restart();
    let got = unlock(&tpm, &rec, with_pin).expect("unlock after a TPM restart");
    assert_eq!(got.expose(), bk.expose());
    // The record survives the keyring's JSON round trip.
    let again = SlotRecord::from_json(&rec.to_json(), false).unwrap();
    assert_eq!(again, rec);
    let got = unlock(&tpm, &again, with_pin).unwrap();
    assert_eq!(got.expose(), bk.expose());
    assert_nothing_loaded(&tpm);
}

#[test]
fn round_trip_no_policy() {
    round_trip(None, None);
}

#[test]
fn round_trip_pin() {
    round_trip(None, Some("4711"));
}

#[test]
fn round_trip_pcr7() {
    round_trip(Some("7"), None);
}

#[test]
fn round_trip_pcr7_and_pin() {
    round_trip(Some("sha256:0,7"), Some("123456"));
}

#[test]
fn changed_pcr_is_refused_as_boot_state() {
    let tpm = SwTpm::start();
    let (_, rec) = enroll(&tpm, Some("7"), None);
    tpm.pcr_extend(7, PCR_CHANGE);
    let err = unlock(&tpm, &rec, None).expect_err("refused");
    assert!(matches!(err, SlotError::PolicyRefused(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("boot state differs from enrollment"),
        "{err}"
    );
    assert_eq!(err.category(), Category::NoUsableSlot);
    assert_nothing_loaded(&tpm);
    // A PCR the slot does not bind changes nothing.
    let (bk, rec) = enroll(&tpm, Some("7"), None);
    tpm.pcr_extend(8, PCR_CHANGE);
    assert_eq!(unlock(&tpm, &rec, None).unwrap().expose(), bk.expose());
}

#[test]
fn pcrs_of_an_inactive_bank_are_refused_at_enrollment() {
    let mut tpm = SwTpm::start();
    // Leave only the sha256 bank active (takes effect at the next boot).
    tpm.run(
        "tpm2_pcrallocate",
        &["sha1:none+sha256:all+sha384:none+sha512:none"],
    );
    tpm.restart();
    let err = tpm2::enroll(
        &BackupKey::generate(),
        &EnrollOptions {
            tcti: Some(tpm.tcti()),
            pcrs: Some("sha1:7".parse().unwrap()),
            pin: None,
        },
    )
    .expect_err("sha1 is not measured");
    assert!(
        matches!(err, SlotError::PolicyRefused(ref m) if m.contains("does not measure PCR 7")),
        "{err:?}"
    );
    assert_nothing_loaded(&tpm);
    let (bk, rec) = enroll(&tpm, Some("sha256:7"), None);
    assert_eq!(unlock(&tpm, &rec, None).unwrap().expose(), bk.expose());
}

#[test]
fn changed_pcr_with_right_pin_is_still_refused() {
    let tpm = SwTpm::start();
    let (_, rec) = enroll(&tpm, Some("7"), Some("2468"));
    tpm.pcr_extend(7, PCR_CHANGE);
    let err = unlock(&tpm, &rec, Some("2468")).expect_err("refused");
    assert!(matches!(err, SlotError::PolicyRefused(_)), "{err:?}");
}

#[test]
fn wrong_pin_tells_tries_left() {
    let tpm = SwTpm::start();
    let (bk, rec) = enroll(&tpm, None, Some("2468"));
    let err = unlock(&tpm, &rec, Some("2469")).expect_err("wrong PIN");
    assert!(
        matches!(err, SlotError::WrongPin { tries_left: Some(n) } if n == coffer_hsm_sim::swtpm::DA_MAX_TRIES - 1),
        "{err:?}"
    );
    assert_eq!(err.category(), Category::WrongFactor);
    assert_nothing_loaded(&tpm);
    assert_eq!(
        unlock(&tpm, &rec, Some("2468")).unwrap().expose(),
        bk.expose()
    );
}

#[test]
fn repeated_wrong_pins_lock_out_and_say_for_how_long() {
    let tpm = SwTpm::start();
    let (_, rec) = enroll(&tpm, Some("7"), Some("2468"));
    let (bk_nopin, rec_nopin) = enroll(&tpm, None, None);
    let mut last = None;
    for _ in 0..coffer_hsm_sim::swtpm::DA_MAX_TRIES {
        let err = unlock(&tpm, &rec, Some("0000")).expect_err("wrong PIN");
        assert!(matches!(err, SlotError::WrongPin { .. }), "{err:?}");
        last = Some(err);
    }
    assert!(
        matches!(
            last,
            Some(SlotError::WrongPin {
                tries_left: Some(0)
            })
        ),
        "{last:?}"
    );
    // Now even the right PIN is refused, and the error says why and how long.
    let err = unlock(&tpm, &rec, Some("2468")).expect_err("locked out");
    assert!(matches!(err, SlotError::LockedOut { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("locked") && msg.contains("60 s"), "{msg}");
    assert_eq!(err.category(), Category::NoUsableSlot);
    // The storage primary of tpm2-tools' template is itself DA-protected,
    // so during lockout a slot without PIN cannot load either: it says so.
    let err = unlock(&tpm, &rec_nopin, None).expect_err("locked out");
    assert!(matches!(err, SlotError::LockedOut { .. }), "{err:?}");
    // Clearing the lockout (lockout hierarchy auth) brings both back.
    tpm.run("tpm2_dictionarylockout", &["-c"]);
    assert_eq!(
        unlock(&tpm, &rec_nopin, None).unwrap().expose(),
        bk_nopin.expose()
    );
    assert!(unlock(&tpm, &rec, Some("2468")).is_ok());
    assert_nothing_loaded(&tpm);
}

#[test]
fn absent_tpm_is_device_not_found() {
    let tpm = SwTpm::start();
    let (_, rec) = enroll(&tpm, None, None);
    let tcti = tpm.tcti();
    drop(tpm);
    let err = params(&rec)
        .kek_via(&rec.wrapped, &tcti, None)
        .expect_err("no TPM");
    assert!(matches!(err, SlotError::DeviceNotFound { .. }), "{err:?}");
    assert_eq!(err.category(), Category::NoUsableSlot);
    let err = tpm2::enroll(
        &BackupKey::generate(),
        &EnrollOptions {
            tcti: Some(tcti),
            ..Default::default()
        },
    )
    .expect_err("no TPM to enroll with");
    assert!(matches!(err, SlotError::DeviceNotFound { .. }), "{err:?}");
}

#[test]
fn blob_from_another_tpm_is_refused() {
    let a = SwTpm::start();
    let b = SwTpm::start();
    let (_, rec) = enroll(&a, None, None);
    let err = unlock(&b, &rec, None).expect_err("other TPM");
    assert!(
        matches!(err, SlotError::PolicyRefused(ref m) if m.contains("another TPM")),
        "{err:?}"
    );
    assert_nothing_loaded(&b);
}

#[test]
fn unlock_falls_back_to_the_recovery_key() {
    // In-process, the TPM slot uses the environment's TCTI, which names no
    // TPM this blob belongs to (none, or the machine's own): either way it
    // fails and the recovery key opens.
    let tpm = SwTpm::start();
    let bk = BackupKey::generate();
    let tpm_rec = tpm2::enroll(
        &bk,
        &EnrollOptions {
            tcti: Some(tpm.tcti()),
            ..Default::default()
        },
    )
    .unwrap();
    let (rec_rec, key) = recovery::enroll(&bk);
    let slots = vec![rec_rec, tpm_rec];
    drop(tpm);
    let factors = Factors::new().with(
        FactorKind::RecoveryKey,
        SecretString::from(key.display().as_str().to_owned()),
    );
    let ui = NonInteractive::default();
    let (got, used) = slot::unlock(&slots, None, &factors, &ui).expect("fallback");
    assert_eq!(got.expose(), bk.expose());
    assert_eq!(used.params.kind(), "recovery");
    // With no other factor, the failure is the TPM's, exit 5.
    let err = slot::unlock(&slots, None, &Factors::default(), &ui)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Unlock(_)));
    assert_eq!(err.category(), Category::NoUsableSlot);
    assert!(err.to_string().contains("tpm2"), "{err}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_kek_never_crosses_the_bus_in_the_clear() {
    let tpm = SwTpm::start();
    for (pcrs, with_pin) in [(None, None), (Some("7"), Some("1357"))] {
        let (bk, rec) = enroll(&tpm, pcrs, with_pin);
        assert_eq!(unlock(&tpm, &rec, with_pin).unwrap().expose(), bk.expose());
        let kek = params(&rec)
            .unseal_kek(&tpm.tcti(), with_pin.map(pin).as_ref())
            .unwrap();
        let traffic = tpm.bus_traffic();
        assert!(traffic.len() > 1000, "swtpm logged no traffic");
        // Sealed (TPM2_Create) and unsealed three times: never in the clear.
        assert!(!contains(&traffic, kek.expose()), "KEK seen on the bus");
        // The probe works: tpm2_unseal without an encrypted session shows it.
        if pcrs.is_none() {
            unseal_with_tpm2_tools(&tpm, &rec, &[]);
            assert!(contains(&tpm.bus_traffic(), kek.expose()));
        }
    }
}

/// Write the slot's blobs as tpm2-tools' files; unseal them with
/// tpm2_createprimary + tpm2_load + tpm2_unseal; return what came out.
fn unseal_with_tpm2_tools(tpm: &SwTpm, rec: &SlotRecord, auth: &[&str]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let p = params(rec);
    let dir = tpm.state_dir();
    std::fs::write(dir.join("seal.pub"), b64.decode(&p.public).unwrap()).unwrap();
    std::fs::write(dir.join("seal.priv"), b64.decode(&p.private).unwrap()).unwrap();
    tpm.run(
        "tpm2_createprimary",
        &["-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"],
    );
    tpm.run(
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "seal.pub",
            "-r",
            "seal.priv",
            "-c",
            "seal.ctx",
        ],
    );
    tpm.run("tpm2_flushcontext", &["-t"]);
    let mut args = vec!["-c", "seal.ctx", "-o", "kek.bin"];
    args.extend_from_slice(auth);
    tpm.run("tpm2_unseal", &args);
    tpm.run("tpm2_flushcontext", &["-t"]);
    std::fs::read(dir.join("kek.bin")).unwrap()
}

#[test]
fn tpm2_tools_unseal_the_kek_that_unwraps_the_slot() {
    let tpm = SwTpm::start();
    let (bk, rec) = enroll(&tpm, None, None);
    let kek = unseal_with_tpm2_tools(&tpm, &rec, &[]);
    let kek = coffer::key::Kek::from_bytes(kek.try_into().expect("32 bytes"));
    assert_eq!(rec.wrapped.unwrap(&kek).unwrap().expose(), bk.expose());
    // And coffer agrees on the KEK.
    let ours = params(&rec).unseal_kek(&tpm.tcti(), None).unwrap();
    assert_eq!(ours.expose(), kek.expose());
}

#[test]
fn tpm2_tools_unseal_a_pcr_bound_kek() {
    let tpm = SwTpm::start();
    let (bk, rec) = enroll(&tpm, Some("7"), None);
    let kek = unseal_with_tpm2_tools(&tpm, &rec, &["-p", "pcr:sha256:7"]);
    let kek = coffer::key::Kek::from_bytes(kek.try_into().expect("32 bytes"));
    assert_eq!(rec.wrapped.unwrap(&kek).unwrap().expose(), bk.expose());
}

#[test]
fn primary_matches_tpm2_createprimary() {
    // The same template on the same TPM gives the same key: compare names.
    let tpm = SwTpm::start();
    tpm.run(
        "tpm2_createprimary",
        &["-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"],
    );
    let theirs = tpm.run(
        "tpm2_readpublic",
        &["-c", "primary.ctx", "-n", "theirs.name"],
    );
    drop(theirs);
    tpm.run("tpm2_flushcontext", &["-t"]);
    let ours = coffer::slot::tpm2::device::Tpm::open(&tpm.tcti())
        .unwrap()
        .primary_name()
        .unwrap();
    let theirs = std::fs::read(tpm.state_dir().join("theirs.name")).unwrap();
    assert_eq!(hex::encode(ours), hex::encode(theirs));
    assert_nothing_loaded(&tpm);
}

// ---------------------------------------------------------------------------
// The command line: the real binary, no terminal, a fresh process (and so a
// fresh TPM connection) for every step.

use common::Home;
use predicates::prelude::*;

/// `coffer` aimed at `tpm` through TPM2TOOLS_TCTI.
fn coffer(h: &Home, tpm: &SwTpm) -> assert_cmd::Command {
    let mut c = h.coffer();
    c.env("TPM2TOOLS_TCTI", tpm.tcti());
    c
}

/// init + `enroll tpm2 ARGS` (unlocking with the recovery key) + a sealed
/// archive `a.coffer`.
fn home_with_tpm_slot(tpm: &SwTpm, args: &[&str]) -> Home {
    let h = Home::new();
    h.init();
    coffer(&h, tpm)
        .args(["enroll", "tpm2", "--recovery-key-file", "recovery.txt"])
        .args(args)
        .assert()
        .success()
        .stderr(predicate::str::contains("(tpm2)"));
    h.write("data.txt", "nightly backup\n");
    coffer(&h, tpm)
        .args([
            "seal",
            "data.txt",
            "-o",
            "a.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    h
}

#[test]
fn cli_unattended_unlock_needs_no_terminal_and_no_factor() {
    let tpm = SwTpm::start();
    let h = home_with_tpm_slot(&tpm, &[]);
    let kr = h.keyring_json();
    let slot = kr["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "tpm2")
        .expect("tpm2 slot in the keyring")
        .clone();
    assert_eq!(slot["pin"], false);
    assert!(slot.get("pcrs").is_none());
    // No terminal, no factor files: the TPM slot opens by itself (and
    // sealing needs no factor at all).
    coffer(&h, &tpm)
        .args(["seal", "data.txt", "-o", "b.coffer"])
        .assert()
        .success();
    for cmd in [&["verify", "a.coffer"][..], &["verify", "b.coffer"]] {
        coffer(&h, &tpm)
            .arg("-v")
            .args(cmd)
            .assert()
            .success()
            .stderr(predicate::str::contains("(tpm2)"));
    }
    // --tcti names the TPM as well as the environment does, for open (the
    // keyring, and the archive's copy).
    h.coffer()
        .args(["--tcti", &tpm.tcti(), "seal", "data.txt", "-o", "c.coffer"])
        .assert()
        .success();
    h.coffer()
        .args(["--tcti", &tpm.tcti(), "open", "c.coffer", "-o", "out-c"])
        .assert()
        .success();
    coffer(&h, &tpm)
        .args(["open", "b.coffer", "-o", "out"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(h.path("out/data.txt")).unwrap(),
        "nightly backup\n"
    );
    coffer(&h, &tpm)
        .arg("slots")
        .assert()
        .success()
        .stdout(predicate::str::contains("TPM 2.0"));
    // After a reboot of the TPM too.
    let mut tpm = tpm;
    tpm.restart();
    coffer(&h, &tpm)
        .args(["verify", "a.coffer"])
        .assert()
        .success();
}

#[test]
fn cli_changed_pcr_exits_5_and_falls_back_to_the_recovery_key() {
    let tpm = SwTpm::start();
    let h = home_with_tpm_slot(&tpm, &["--pcrs", "7"]);
    coffer(&h, &tpm)
        .args(["verify", "a.coffer"])
        .assert()
        .success();
    tpm.pcr_extend(7, PCR_CHANGE);
    coffer(&h, &tpm)
        .args(["verify", "a.coffer"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains(
            "boot state differs from enrollment",
        ));
    coffer(&h, &tpm)
        .args([
            "-v",
            "verify",
            "a.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("(recovery)"));
    // Re-enrolling binds the new boot state.
    coffer(&h, &tpm)
        .args([
            "enroll",
            "tpm2",
            "--pcrs",
            "sha256:7",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    coffer(&h, &tpm)
        .args(["seal", "data.txt", "-o", "c.coffer"])
        .assert()
        .success();
    coffer(&h, &tpm)
        .args(["-v", "verify", "c.coffer"])
        .assert()
        .success()
        .stderr(predicate::str::contains("(tpm2)"));
}

#[test]
fn cli_pin_slot_wrong_pin_exits_3_then_lockout_exits_5() {
    let tpm = SwTpm::start();
    let h = Home::new();
    h.init();
    h.write("pin.txt", "24680\n");
    h.write("bad-pin.txt", "13579\n");
    coffer(&h, &tpm)
        .args(["enroll", "tpm2", "--pcrs", "7", "--new-pin-file", "pin.txt"])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    assert_eq!(h.keyring_json()["slots"][1]["pin"], true);
    // Without a PIN and without a terminal the slot is skipped: exit 5.
    coffer(&h, &tpm)
        .args(["enroll", "password", "--new-password-file", "pin.txt"])
        .assert()
        .code(5);
    coffer(&h, &tpm)
        .arg("slots")
        .assert()
        .success()
        .stdout(predicate::str::contains("PCRs sha256:7, PIN"));
    // The right PIN opens.
    h.write("new.txt", "another password");
    coffer(&h, &tpm)
        .args(["-v", "enroll", "password", "--new-password-file", "new.txt"])
        .args(["--pin-file", "pin.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("(tpm2)"));
    // A wrong PIN: exit 3, with the tries left.
    let tries = coffer_hsm_sim::swtpm::DA_MAX_TRIES;
    h.write("data.txt", "x");
    coffer(&h, &tpm)
        .args(["seal", "data.txt", "-o", "x.coffer"])
        .assert()
        .success();
    for left in (0..tries).rev() {
        coffer(&h, &tpm)
            .args(["verify", "x.coffer", "--slot", "tpm2"])
            .args(["--pin-file", "bad-pin.txt"])
            .assert()
            .code(3)
            .stderr(predicate::str::contains(format!(
                "wrong PIN ({left} tries left)"
            )));
    }
    // Locked out: exit 5, saying so and for how long; even the right PIN.
    coffer(&h, &tpm)
        .args(["verify", "x.coffer", "--slot", "tpm2"])
        .args(["--pin-file", "pin.txt"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("locked").and(predicate::str::contains("60 s")));
    // The other slots still work.
    coffer(&h, &tpm)
        .args(["verify", "x.coffer"])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    coffer(&h, &tpm)
        .args(["verify", "x.coffer"])
        .args(["--password-file", "new.txt"])
        .assert()
        .success();
}

#[test]
fn cli_bad_pcr_list_is_a_usage_error() {
    let h = Home::new();
    h.init();
    for bad in ["24", "md5:7", "seven"] {
        h.coffer()
            .args([
                "enroll",
                "tpm2",
                "--pcrs",
                bad,
                "--recovery-key-file",
                "recovery.txt",
            ])
            .assert()
            .code(2);
    }
}
