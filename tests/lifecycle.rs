//! The key lifecycle through the real binary: labels, `enroll recovery`,
//! `enroll --replace`, `remove`, `rotate`, and which slot each factor may
//! go to. Hardware slots run on their simulators (swtpm, SoftHSM2).

mod common;

use common::Home;
use predicates::prelude::*;
use serde_json::Value;

fn slots(h: &Home) -> Vec<Value> {
    h.keyring_json()["slots"].as_array().unwrap().clone()
}

fn slot_id(h: &Home, kind: &str) -> String {
    slots(h)
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} slot"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// init, a password slot labelled `laptop`, and `old.coffer` sealed.
fn home() -> Home {
    let h = Home::new();
    h.init();
    h.write("pw.txt", "correct horse");
    h.write("data.txt", "tax returns\n");
    h.coffer()
        .args(["enroll", "password", "--label", "laptop"])
        .args([
            "--new-password-file",
            "pw.txt",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("\"laptop\" (password)"));
    seals(&h, "old.coffer", &["--password-file", "pw.txt"]);
    h
}

/// `seal data.txt -o ARCHIVE`, unlocking with `factor`; must succeed.
fn seals(h: &Home, archive: &str, factor: &[&str]) {
    h.coffer()
        .args(["seal", "data.txt", "-o", archive])
        .args(factor)
        .assert()
        .success();
}

fn opens(h: &Home, archive: &str, factor: &[&str]) -> assert_cmd::assert::Assert {
    let out = h.path("out");
    let _ = std::fs::remove_dir_all(&out);
    h.coffer()
        .args(["open", archive, "-o"])
        .arg(&out)
        .args(factor)
        .assert()
}

#[test]
fn labels_name_slots_everywhere_and_make_the_keyring_version_2() {
    let h = home();
    let kr = h.keyring_json();
    assert_eq!(kr["version"], 2);
    assert_eq!(slots(&h)[1]["label"], "laptop");
    h.coffer()
        .arg("slots")
        .assert()
        .success()
        .stdout(predicate::str::contains("laptop"));
    // --slot takes the label, and so does a bound factor.
    h.coffer()
        .args([
            "-v",
            "--slot",
            "laptop",
            "--password-file",
            "pw.txt",
            "slots",
        ])
        .assert()
        .success();
    opens(&h, "old.coffer", &["--password-file", "laptop=pw.txt"]).success();
    // The archive carries the label too (version 2 header).
    h.coffer()
        .args(["--json", "inspect", "old.coffer"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"label\": \"laptop\""));
    // Labels are unique, and never a kind name.
    for (label, why) in [("laptop", "already answers"), ("password", "kind")] {
        h.coffer()
            .args(["enroll", "password", "--label", label])
            .args(["--new-password-file", "pw.txt", "--password-file", "pw.txt"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
    assert_eq!(slots(&h).len(), 2, "nothing enrolled");
    // Every new keyring is version 2 (it has a sealing key), labels or not.
    let plain = Home::new();
    plain.init();
    assert_eq!(plain.keyring_json()["version"], 2);
}

#[test]
fn a_version_1_keyring_with_a_label_is_refused_as_corrupt() {
    let h = home();
    let vector = common::vectors().join("keyring-v1.json");
    let mut kr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vector).unwrap()).unwrap();
    kr["slots"][0]["label"] = "paper".into();
    h.put_keyring_json(&kr);
    h.coffer()
        .arg("slots")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("label").and(predicate::str::contains("version 2")));
}

#[test]
fn ambiguous_or_unknown_slot_names_are_usage_errors() {
    let h = home();
    // Two recovery slots: `recovery` names no single one.
    h.coffer()
        .args(["enroll", "recovery", "--recovery-key-out", "second.txt"])
        .args(["--password-file", "pw.txt"])
        .assert()
        .success();
    h.coffer()
        .args(["remove", "recovery", "--password-file", "pw.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("2 slots are of that kind"));
    for args in [
        &["remove", "nonesuch"][..],
        &["rotate", "--drop", "nonesuch"],
        &["--password-file", "nonesuch=pw.txt", "verify", "old.coffer"],
    ] {
        h.coffer()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("nonesuch"));
    }
    // A factor bound to a slot that takes another kind of factor.
    h.coffer()
        .args(["--pin-file", "laptop=pw.txt", "--password-file", "pw.txt"])
        .args(["enroll", "recovery", "--recovery-key-out", "third.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("takes no PIN"));
}

#[test]
fn enroll_recovery_issues_another_key_that_opens_everything() {
    let h = home();
    h.coffer()
        .args(["enroll", "recovery", "--password-file", "pw.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--recovery-key-out"));
    h.coffer()
        .args(["enroll", "recovery", "--label", "drawer"])
        .args([
            "--recovery-key-out",
            "second.txt",
            "--password-file",
            "pw.txt",
        ])
        .assert()
        .success();
    let mode = std::fs::metadata(h.path("second.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    opens(
        &h,
        "old.coffer",
        &["--recovery-key-file", "drawer=second.txt"],
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(h.path("out/data.txt")).unwrap(),
        "tax returns\n"
    );
    // Now the first recovery slot can go without --force.
    let first = slot_id(&h, "recovery");
    h.coffer()
        .args(["remove", &first, "--password-file", "pw.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("coffer rotate"));
}

#[test]
fn replace_swaps_a_slot_in_one_step_and_may_reuse_its_label() {
    let h = home();
    let old_id = slot_id(&h, "password");
    h.write("pw2.txt", "battery staple");
    h.coffer()
        .args([
            "enroll",
            "password",
            "--replace",
            "laptop",
            "--label",
            "laptop",
        ])
        .args([
            "--new-password-file",
            "pw2.txt",
            "--password-file",
            "pw.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("in place of slot"));
    let s = slots(&h);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1]["label"], "laptop");
    assert_ne!(s[1]["id"], old_id.as_str());
    h.coffer()
        .args(["--password-file", "pw.txt", "slots"])
        .assert()
        .success();
    // The old password no longer unlocks the keyring; the new one does.
    h.coffer()
        .args(["enroll", "recovery", "--recovery-key-out", "r2.txt"])
        .args(["--password-file", "pw.txt"])
        .assert()
        .code(3);
    h.coffer()
        .args(["enroll", "recovery", "--recovery-key-out", "r2.txt"])
        .args(["--password-file", "pw2.txt"])
        .assert()
        .success();
}

/// `--replace` is no way around `remove`'s guard: the last recovery slot
/// is replaced only by another recovery slot.
#[test]
fn replace_keeps_the_last_recovery_slot_unless_the_new_slot_is_one() {
    let h = home();
    let before = std::fs::read(h.keyring()).unwrap();
    h.write("pw2.txt", "battery staple");
    h.coffer()
        .args(["enroll", "password", "--replace", "recovery"])
        .args([
            "--new-password-file",
            "pw2.txt",
            "--password-file",
            "pw.txt",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("last recovery key"));
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
    h.coffer()
        .args(["enroll", "recovery", "--replace", "recovery"])
        .args([
            "--recovery-key-out",
            "new-rk.txt",
            "--password-file",
            "pw.txt",
        ])
        .assert()
        .success();
    opens(&h, "old.coffer", &["--recovery-key-file", "new-rk.txt"]).success();
}

/// The point of rotate: a factor dropped from the keyring opens archives
/// sealed before, but not those sealed after — not even with a copy of the
/// old keyring, or the old archive's header, in hand.
#[test]
fn rotate_cuts_a_dropped_factor_off_from_later_archives_only() {
    let h = home();
    let old_keyring = std::fs::read(h.keyring()).unwrap();
    let old_key_id = h.keyring_json()["key_id"].clone();
    h.coffer()
        .args([
            "rotate",
            "--drop",
            "laptop",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("left out"));
    let kr = h.keyring_json();
    assert_ne!(kr["key_id"], old_key_id);
    assert_eq!(slots(&h).len(), 1);
    // Same recovery key, given: kept.
    seals(&h, "new.coffer", &["--recovery-key-file", "recovery.txt"]);
    opens(&h, "new.coffer", &["--recovery-key-file", "recovery.txt"]).success();
    // The dropped password still opens the old archive (it carries it)...
    opens(&h, "old.coffer", &["--password-file", "pw.txt"]).success();
    // ...but not the new one, with the current keyring or the old one.
    opens(&h, "new.coffer", &["--password-file", "pw.txt"]).code(5);
    std::fs::write(h.keyring(), &old_keyring).unwrap();
    opens(&h, "new.coffer", &["--password-file", "pw.txt"])
        .failure()
        .stderr(predicate::str::contains("tax returns").not());
    assert!(!h.path("out").exists());
}

#[test]
fn rotate_changes_nothing_while_a_slot_can_be_neither_rewrapped_nor_dropped() {
    let h = home();
    let before = std::fs::read(h.keyring()).unwrap();
    // The password slot's factor is not given: exit 5, named.
    h.coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("nothing was changed"))
        .stderr(predicate::str::contains("laptop"));
    // A wrong one: exit 3.
    h.write("bad.txt", "wrong");
    h.coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .args(["--password-file", "laptop=bad.txt"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("nothing was changed"));
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
    // --drop of every slot is refused.
    let rec = slot_id(&h, "recovery");
    h.coffer()
        .args(["rotate", "--drop", &rec, "--drop", "laptop"])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .code(2);
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
}

#[test]
fn rotate_issues_a_new_recovery_key_when_the_old_one_is_not_given() {
    let h = home();
    let rec_id = slot_id(&h, "recovery");
    h.coffer()
        .args([
            "rotate",
            "--password-file",
            "pw.txt",
            "--recovery-key-out",
            "new-rk.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("new recovery key"));
    assert_eq!(slot_id(&h, "recovery"), rec_id, "same slot, new key");
    seals(&h, "new.coffer", &["--password-file", "pw.txt"]);
    opens(&h, "new.coffer", &["--recovery-key-file", "new-rk.txt"]).success();
    opens(&h, "new.coffer", &["--recovery-key-file", "recovery.txt"]).code(3);
    // The old key still opens what was sealed before.
    opens(&h, "old.coffer", &["--recovery-key-file", "recovery.txt"]).success();
    // Without a terminal or --recovery-key-out, it refuses up front.
    let before = std::fs::read(h.keyring()).unwrap();
    h.coffer()
        .args(["rotate", "--password-file", "pw.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--recovery-key-out"));
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
}

/// A password typed for one password slot is not sent to a vault slot
/// either: see tests/vault.rs. Here: two password slots with different
/// passwords, each bound to its own file, both re-wrapped.
#[test]
fn rotate_rewraps_each_password_slot_with_its_own_bound_password() {
    let h = home();
    h.write("pw2.txt", "second");
    h.coffer()
        .args([
            "enroll",
            "password",
            "--label",
            "desk",
            "--new-password-file",
            "pw2.txt",
        ])
        .args(["--password-file", "pw.txt"])
        .assert()
        .success();
    h.coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .args([
            "--password-file",
            "laptop=pw.txt",
            "--password-file",
            "desk=pw2.txt",
        ])
        .assert()
        .success();
    seals(&h, "new.coffer", &["--recovery-key-file", "recovery.txt"]);
    for (slot, file) in [("laptop", "pw.txt"), ("desk", "pw2.txt")] {
        opens(&h, "new.coffer", &["--slot", slot, "--password-file", file]).success();
    }
}

#[cfg(all(feature = "tpm2", feature = "pkcs11"))]
mod hardware {
    use super::*;
    use coffer_hsm_sim::softhsm::{SoftHsm, USER_PIN};
    use coffer_hsm_sim::swtpm::SwTpm;

    /// A keyring with a TPM slot with PIN `24680`, a PKCS#11 ECDH slot and
    /// a PKCS#11 AES-GCM slot on SoftHSM (PIN USER_PIN).
    struct Rig {
        h: Home,
        tpm: SwTpm,
        hsm: SoftHsm,
    }

    impl Rig {
        fn new() -> Self {
            let h = home();
            h.write("tpm-pin.txt", "24680");
            h.write("hsm-pin.txt", USER_PIN);
            let rig = Self {
                h,
                tpm: SwTpm::start(),
                hsm: SoftHsm::new("coffer"),
            };
            rig.coffer()
                .args([
                    "enroll",
                    "tpm2",
                    "--label",
                    "tpm",
                    "--new-pin-file",
                    "tpm-pin.txt",
                ])
                .args(["--password-file", "pw.txt"])
                .assert()
                .success();
            for (label, mech, key) in [("ecdh", "ecdh", "k1"), ("gcm", "aes-gcm", "k2")] {
                rig.coffer()
                    .args(["enroll", "pkcs11", "--label", label, "--generate"])
                    .args(["--mechanism", mech, "--module"])
                    .arg(rig.hsm.module())
                    .arg("--uri")
                    .arg(format!("pkcs11:token=coffer;object={key}"))
                    .args(["--pin-file", "hsm-pin.txt", "--password-file", "pw.txt"])
                    .assert()
                    .success();
            }
            rig
        }

        fn coffer(&self) -> assert_cmd::Command {
            let mut c = self.h.coffer();
            c.env("TPM2TOOLS_TCTI", self.tpm.tcti());
            for (k, v) in self.hsm.env() {
                c.env(k, v);
            }
            c
        }

        fn tpm_tries_left(&self) -> Option<u32> {
            coffer::slot::tpm2::device::Tpm::open(&self.tpm.tcti())
                .unwrap()
                .tries_left()
        }
    }

    /// A PIN meant for one device never reaches another: unbound, with two
    /// slots that take one, it is refused before anything is tried; bound,
    /// it goes to its slot only, and the TPM's lockout counter is untouched.
    #[test]
    fn a_pin_goes_only_to_the_slot_it_is_meant_for() {
        let r = Rig::new();
        let tries = r.tpm_tries_left();
        assert!(tries.is_some());
        r.h.write("data.txt", "x");
        // Sealing needs no factor: the PIN given is not even read.
        r.coffer()
            .args(["seal", "data.txt", "-o", "a.coffer"])
            .args(["--pin-file", "hsm-pin.txt"])
            .assert()
            .success();
        assert_eq!(r.tpm_tries_left(), tries);
        r.coffer()
            .args(["verify", "a.coffer", "--pin-file", "hsm-pin.txt"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("say which"));
        assert_eq!(r.tpm_tries_left(), tries);
        // Bound to the token (by kind, then by label): it opens there; the
        // TPM slot, tried first (a device), gets no PIN and is skipped.
        for bound in ["pkcs11=hsm-pin.txt", "ecdh=hsm-pin.txt"] {
            r.coffer()
                .args(["-v", "verify", "a.coffer"])
                .args(["--pin-file", bound])
                .assert()
                .success()
                .stderr(predicate::str::contains("(pkcs11)"));
            assert_eq!(r.tpm_tries_left(), tries, "{bound}");
        }
        // Chosen with --slot, an unbound PIN has one slot to go to.
        r.coffer()
            .args(["--slot", "tpm", "--pin-file", "tpm-pin.txt"])
            .args(["verify", "a.coffer"])
            .assert()
            .success();
    }

    /// Public-key slots re-wrap with no device at all; TPM and AES-GCM slots
    /// with theirs (and their PINs, each bound); the TPM's TCTI comes from
    /// the environment here and from the keyring in `tcti_hint`.
    #[test]
    fn rotate_rewraps_every_hardware_kind() {
        let r = Rig::new();
        let ecdh_before = slots(&r.h)
            .into_iter()
            .find(|s| s["label"] == "ecdh")
            .unwrap();
        r.coffer()
            .args(["rotate", "--recovery-key-file", "recovery.txt"])
            .args(["--password-file", "pw.txt", "--pin-file", "tpm=tpm-pin.txt"])
            .args(["--pin-file", "gcm=hsm-pin.txt"])
            .assert()
            .success();
        let after = slots(&r.h);
        assert_eq!(after.len(), 5);
        let ecdh = after.iter().find(|s| s["label"] == "ecdh").unwrap();
        assert_eq!(ecdh["id"], ecdh_before["id"]);
        assert_ne!(ecdh["ephemeral"], ecdh_before["ephemeral"]);
        r.h.write("data.txt", "after rotate\n");
        r.coffer()
            .args(["seal", "data.txt", "-o", "new.coffer"])
            .args(["--recovery-key-file", "recovery.txt"])
            .assert()
            .success();
        for (slot, pin) in [
            ("tpm", "tpm-pin.txt"),
            ("ecdh", "hsm-pin.txt"),
            ("gcm", "hsm-pin.txt"),
        ] {
            let out = r.h.path(&format!("out-{slot}"));
            r.coffer()
                .args([
                    "--slot",
                    slot,
                    "--pin-file",
                    pin,
                    "open",
                    "new.coffer",
                    "-o",
                ])
                .arg(&out)
                .assert()
                .success();
            assert_eq!(
                std::fs::read_to_string(out.join("data.txt")).unwrap(),
                "after rotate\n",
                "{slot}"
            );
        }
        // The ECDH slot re-wrapped with the token gone.
        r.hsm.remove_tokens();
        r.coffer()
            .args(["rotate", "--recovery-key-file", "recovery.txt"])
            .args(["--password-file", "pw.txt", "--pin-file", "tpm=tpm-pin.txt"])
            .args(["--drop", "gcm"])
            .assert()
            .success();
    }

    /// The TCTI a slot was enrolled with is the default for that slot when
    /// neither --tcti nor the environment names one.
    #[test]
    fn the_keyring_remembers_where_the_tpm_is() {
        let h = home();
        let tpm = SwTpm::start();
        h.coffer()
            .args([
                "--tcti",
                &tpm.tcti(),
                "enroll",
                "tpm2",
                "--password-file",
                "pw.txt",
            ])
            .assert()
            .success();
        h.coffer()
            .args(["seal", "data.txt", "-o", "t.coffer"])
            .assert()
            .success();
        h.coffer()
            .args(["-v", "--slot", "tpm2", "verify", "t.coffer"])
            .assert()
            .success()
            .stderr(predicate::str::contains("(tpm2)"));
        // From the archive header alone (another keyring), the hint is
        // not used: a header never names the TPM to talk to.
        std::fs::remove_file(h.keyring()).unwrap();
        h.coffer()
            .args(["--slot", "tpm2", "open", "t.coffer", "-o", "out"])
            .assert()
            .code(5);
    }
}

/// A TPM slot with a PIN next to a YubiKey slot (issue 13): the TPM's
/// lockout counter and the card's PIN retry counter are read before and
/// after each step, so a PIN that reached the wrong device shows up as a
/// spent try, not just as a failure.
#[cfg(all(feature = "tpm2", feature = "yubikey"))]
mod tpm_and_yubikey {
    use super::*;
    use coffer_hsm_sim::{SwTpm, VirtualCard};

    const YK_PIN: &str = "271828";
    const MGM: &str = "0f0e0d0c0b0a09080706050403020100a1a2a3a4a5a6a7a8";

    struct Rig {
        h: Home,
        tpm: SwTpm,
        card: VirtualCard,
    }

    impl Rig {
        /// `home()`, a TPM slot labelled `tpm` with PIN `24680`, and a
        /// YubiKey slot (key generated on the virtual card, PIN once,
        /// no touch).
        fn new() -> Self {
            let h = home();
            h.write("tpm-pin.txt", "24680");
            h.write("wrong-tpm-pin.txt", "13579");
            h.write("yk-pin.txt", YK_PIN);
            h.write("mgm.txt", MGM);
            let card = VirtualCard::start();
            for a in [
                &["-a", "change-pin", "-P", "123456", "-N", YK_PIN][..],
                &["-a", "set-mgm-key", "-n", MGM],
            ] {
                let (ok, text) = card.piv_tool(a);
                assert!(ok, "yubico-piv-tool {a:?}: {text}");
            }
            let rig = Self {
                h,
                tpm: SwTpm::start(),
                card,
            };
            rig.coffer()
                .args(["enroll", "tpm2", "--label", "tpm"])
                .args(["--new-pin-file", "tpm-pin.txt", "--password-file", "pw.txt"])
                .assert()
                .success();
            let serial = rig.card.serial().to_string();
            rig.coffer()
                .args(["enroll", "yubikey", "--generate", "--serial", &serial])
                .args([
                    "--touch-policy",
                    "never",
                    "--management-key-file",
                    "mgm.txt",
                ])
                .args(["--pin-file", "yk-pin.txt", "--password-file", "pw.txt"])
                .assert()
                .success();
            rig
        }

        fn coffer(&self) -> assert_cmd::Command {
            let mut c = self.h.coffer();
            c.env("TPM2TOOLS_TCTI", self.tpm.tcti());
            c
        }

        fn tpm_tries_left(&self) -> u32 {
            coffer::slot::tpm2::device::Tpm::open(&self.tpm.tcti())
                .unwrap()
                .tries_left()
                .expect("the TPM reports its lockout counter")
        }

        /// The card's PIN retry counter, as `yubico-piv-tool -a status`
        /// reports it (a VERIFY without a PIN: it spends no try).
        fn card_tries_left(&self) -> u32 {
            let (ok, text) = self.card.piv_tool(&["-a", "status"]);
            assert!(ok, "{text}");
            text.lines()
                .find_map(|l| l.trim().strip_prefix("PIN tries left:"))
                .unwrap_or_else(|| panic!("no PIN tries in {text}"))
                .trim()
                .parse()
                .unwrap()
        }

        /// Both counters, to compare before and after a step.
        fn tries(&self) -> (u32, u32) {
            (self.tpm_tries_left(), self.card_tries_left())
        }

        fn open(&self, pin: &str) -> assert_cmd::assert::Assert {
            let out = self.h.path("out");
            let _ = std::fs::remove_dir_all(&out);
            self.coffer()
                .args(["-v", "open", "old.coffer", "-o"])
                .arg(&out)
                .args(["--pin-file", pin])
                .assert()
        }

        /// Seal `new.coffer` (no factor needed), then verify it, the
        /// keyring unlocking with `pin`.
        fn seal(&self, pin: &str) -> assert_cmd::assert::Assert {
            self.coffer()
                .args(["seal", "data.txt", "-o", "new.coffer", "--force"])
                .assert()
                .success();
            self.coffer()
                .args(["-v", "verify", "new.coffer"])
                .args(["--pin-file", pin])
                .assert()
        }
    }

    #[test]
    fn a_yubikey_pin_never_reaches_the_tpm() {
        let r = Rig::new();
        let full = r.tries();
        assert_eq!(full.1, 3, "a fresh card has 3 PIN tries");
        // (a) Unbound: two slots take a PIN, so neither gets it.
        r.open("yk-pin.txt")
            .code(2)
            .stderr(predicate::str::contains("say which"));
        r.seal("yk-pin.txt")
            .code(2)
            .stderr(predicate::str::contains("say which"));
        assert_eq!(r.tries(), full, "an unbound PIN spent a try");
        // (b) Bound to the card, by kind and by id: it opens there, the
        // TPM (a device, tried as early) gets nothing.
        let yk = format!("{}=yk-pin.txt", slot_id(&r.h, "yubikey"));
        for bound in ["yubikey=yk-pin.txt", yk.as_str()] {
            r.open(bound)
                .success()
                .stderr(predicate::str::contains("(yubikey)"));
            assert_eq!(
                std::fs::read_to_string(r.h.path("out/data.txt")).unwrap(),
                "tax returns\n"
            );
            r.seal(bound)
                .success()
                .stderr(predicate::str::contains("(yubikey)"));
            assert_eq!(r.tries(), full, "{bound}");
        }
        // (c) A wrong PIN bound to the TPM costs the TPM one try, the
        // card none; the card's PIN, bound to the TPM, the same.
        r.open("tpm=wrong-tpm-pin.txt").code(3);
        assert_eq!(r.tries(), (full.0 - 1, full.1));
        r.open("tpm2=yk-pin.txt").code(3);
        assert_eq!(r.tries(), (full.0 - 2, full.1));
        // The right one opens and resets nothing on the card.
        r.open("tpm=tpm-pin.txt")
            .success()
            .stderr(predicate::str::contains("(tpm2)"));
        assert_eq!(r.card_tries_left(), full.1);
    }

    /// A header may carry copies of the owner's device slots (new ids,
    /// same device: trusted as the keyring's slot is). A wrong PIN found
    /// wrong on one of them is not tried again on the others: one try
    /// spent per device, however many copies an archive carries.
    #[test]
    fn copies_of_a_device_slot_in_a_header_cost_one_try_in_all() {
        let r = Rig::new();
        r.seal("yubikey=yk-pin.txt").success();
        let archive = r.h.path("new.coffer");
        common::rewrite_header(&archive, |_, slots| {
            let copies: Vec<Value> = slots
                .iter()
                .filter(|s| s["kind"] == "tpm2" || s["kind"] == "yubikey")
                .flat_map(|s| {
                    (0..3).map(move |i| {
                        let mut c = s.clone();
                        c.as_object_mut().unwrap().remove("label");
                        c["id"] = format!("{}-copy{i}", s["kind"].as_str().unwrap()).into();
                        c
                    })
                })
                .collect();
            slots.extend(copies);
        });
        let full = r.tries();
        h_open(&r, "tpm2=wrong-tpm-pin.txt").code(3);
        assert_eq!(r.tries(), (full.0 - 1, full.1), "TPM copies");
        r.h.write("wrong-yk-pin.txt", "999999");
        h_open(&r, "yubikey=wrong-yk-pin.txt").code(3);
        assert_eq!(r.tries(), (full.0 - 1, full.1 - 1), "card copies");
    }

    fn h_open(r: &Rig, pin: &str) -> assert_cmd::assert::Assert {
        let out = r.h.path("out");
        let _ = std::fs::remove_dir_all(&out);
        r.coffer()
            .args(["open", "new.coffer", "-o"])
            .arg(&out)
            .args(["--pin-file", pin])
            .assert()
    }
}
