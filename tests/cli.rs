//! The command line, driven as a user would: the real `coffer` binary, no
//! terminal, factors from files. Each test asserts the exit status of the
//! contract (DESIGN.md) and what is left on disk.

mod common;

use common::{Home, listing, mode};
use predicates::prelude::*;

#[test]
fn init_writes_keyring_and_recovery_key_0600() {
    let h = Home::new();
    h.coffer()
        .args(["--json", "init", "--recovery-key-out", "recovery.txt"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"key_id\""));
    assert_eq!(mode(&h.keyring()), 0o600);
    assert_eq!(mode(&h.recovery_key()), 0o600);
    let key = h.recovery_key_text();
    assert_eq!(key.len(), 64 + 15);
    assert_eq!(key.split('-').count(), 16);
    let kr = h.keyring_json();
    assert_eq!(kr["format"], "coffer-keyring");
    assert_eq!(kr["slots"][0]["kind"], "recovery");
    // The recovery key is nowhere in the keyring.
    let text = std::fs::read_to_string(h.keyring()).unwrap();
    assert!(!text.contains(&key.replace('-', "")[..16]));
}

#[test]
fn init_never_overwrites_a_keyring() {
    let h = Home::new();
    h.init();
    let before = std::fs::read(h.keyring()).unwrap();
    h.coffer()
        .args(["init", "--recovery-key-out", "other.txt"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists"));
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
    assert!(!h.path("other.txt").exists());
}

#[test]
fn init_without_terminal_or_output_file_is_a_usage_error() {
    let h = Home::new();
    h.coffer()
        .arg("init")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--recovery-key-out"));
    assert!(!h.keyring().exists());
}

#[test]
fn init_refuses_to_overwrite_the_recovery_key_file() {
    let h = Home::new();
    h.write("recovery.txt", "keep me");
    h.coffer()
        .args(["init", "--recovery-key-out", "recovery.txt"])
        .assert()
        .code(1);
    assert_eq!(
        std::fs::read_to_string(h.recovery_key()).unwrap(),
        "keep me"
    );
    assert!(!h.keyring().exists());
}

#[test]
fn enroll_password_then_unlock_with_either_factor() {
    let h = Home::new();
    h.init();
    h.enroll_password("correct horse battery staple");
    let pw = h.write("pw.txt", "correct horse battery staple\n");
    // Unlock with the password (enroll another slot to prove the key).
    let other = h.write("other.txt", "second password");
    h.coffer()
        .args([
            "-v",
            "enroll",
            "password",
            "--slot",
            "password",
            "--password-file",
        ])
        .arg(&pw)
        .arg("--new-password-file")
        .arg(&other)
        .assert()
        .success()
        .stderr(predicate::str::contains("(password)"));
    // And with the recovery key alone.
    h.coffer()
        .args([
            "-v",
            "enroll",
            "password",
            "--slot",
            "recovery",
            "--recovery-key-file",
        ])
        .arg(h.recovery_key())
        .arg("--new-password-file")
        .arg(&other)
        .assert()
        .success()
        .stderr(predicate::str::contains("(recovery)"));
    let out = h.coffer().arg("slots").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(" password ")).count(),
        3,
        "{text}"
    );
    assert_eq!(h.keyring_json()["slots"].as_array().unwrap().len(), 4);
    assert_eq!(mode(&h.keyring()), 0o600);
}

#[test]
fn password_from_standard_input() {
    let h = Home::new();
    h.init();
    h.enroll_password("from stdin");
    let other = h.write("other.txt", "x");
    h.coffer()
        .args([
            "enroll",
            "password",
            "--slot",
            "password",
            "--password-file",
            "-",
            "--new-password-file",
        ])
        .arg(&other)
        .write_stdin("from stdin\n")
        .assert()
        .success();
}

#[test]
fn wrong_password_exits_3_and_leaves_the_keyring_untouched() {
    let h = Home::new();
    h.init();
    h.enroll_password("right");
    let before = std::fs::read(h.keyring()).unwrap();
    let wrong = h.write("wrong.txt", "wrong");
    h.coffer()
        .args(["enroll", "password", "--password-file"])
        .arg(&wrong)
        .arg("--new-password-file")
        .arg(&wrong)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("wrong password"))
        .stderr(predicate::str::contains("wrong").and(predicate::str::contains("right").not()));
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
}

#[test]
fn wrong_recovery_key_exits_3() {
    let h = Home::new();
    h.init();
    let other = Home::new();
    other.init();
    h.coffer()
        .args([
            "enroll",
            "password",
            "--new-password-file",
            "recovery.txt",
            "--recovery-key-file",
        ])
        .arg(other.recovery_key())
        .assert()
        .code(3)
        .stderr(predicate::str::contains("wrong recovery key"))
        .stderr(predicate::str::contains("another keyring"));
}

#[test]
fn a_mistyped_recovery_digit_is_named_and_corrected() {
    let h = Home::new();
    h.init();
    let key = h.recovery_key_text();
    // Change digit 23 (group 6, position 3: index 22 + 5 dashes).
    let mut chars: Vec<char> = key.chars().collect();
    let at = 22 + 5;
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    let typo: String = chars.into_iter().collect();
    let typo_file = h.write("typo.txt", &typo.to_uppercase().replace('-', " "));
    let pw = h.write("pw.txt", "pw");
    h.coffer()
        .args(["enroll", "password", "--new-password-file"])
        .arg(&pw)
        .arg("--recovery-key-file")
        .arg(&typo_file)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "digit 23 (group 6, position 3) was mistyped",
        ));
}

#[test]
fn a_recovery_key_with_two_typos_is_refused_with_a_hint() {
    let h = Home::new();
    h.init();
    let key = h.recovery_key_text();
    let mut chars: Vec<char> = key.chars().collect();
    for at in [0, 10] {
        chars[at] = if chars[at] == 'f' { 'e' } else { 'f' };
    }
    let bad = h.write("bad.txt", &chars.into_iter().collect::<String>());
    h.coffer()
        .args([
            "enroll",
            "password",
            "--new-password-file",
            "bad.txt",
            "--recovery-key-file",
        ])
        .arg(&bad)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("checksum"));
}

#[test]
fn no_factor_and_no_terminal_exits_5() {
    let h = Home::new();
    h.init();
    h.coffer()
        .args(["enroll", "password", "--new-password-file", "recovery.txt"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("--recovery-key-file"));
}

#[test]
fn an_edited_keyring_is_detected_after_unlock() {
    let h = Home::new();
    h.init();
    h.enroll_password("pw");
    let mut kr = h.keyring_json();
    kr["slots"][1]["created"] = 12345.into();
    h.put_keyring_json(&kr);
    let pw = h.write("pw.txt", "pw");
    h.coffer()
        .args(["enroll", "password", "--password-file"])
        .arg(&pw)
        .arg("--new-password-file")
        .arg(&pw)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("modified outside coffer"));
}

#[test]
fn a_swapped_key_id_is_detected() {
    let h = Home::new();
    h.init();
    let mut kr = h.keyring_json();
    kr["key_id"] = "00112233445566778899aabbccddeeff".into();
    h.put_keyring_json(&kr);
    h.coffer()
        .args([
            "enroll",
            "password",
            "--new-password-file",
            "recovery.txt",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("key id"));
}

#[test]
fn a_malformed_keyring_exits_4_naming_the_field() {
    let h = Home::new();
    h.init();
    let mut kr = h.keyring_json();
    kr["slots"][0]["wrapped"] = "not base64!".into();
    std::fs::write(h.keyring(), serde_json::to_vec(&kr).unwrap()).unwrap();
    h.coffer()
        .arg("slots")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("`wrapped`"));
    std::fs::write(h.keyring(), b"{\"format\": ").unwrap();
    h.coffer()
        .arg("slots")
        .assert()
        .code(4)
        .stderr(predicate::str::contains("not JSON"));
}

#[test]
fn hostile_argon2_parameters_are_refused_before_allocation() {
    let h = Home::new();
    h.init();
    h.enroll_password("pw");
    let mut kr = h.keyring_json();
    kr["slots"][1]["m_cost_kib"] = (100u64 * 1024 * 1024).into(); // 100 GiB
    h.put_keyring_json(&kr);
    let pw = h.write("pw.txt", "pw");
    // If the limit were missing this would try to allocate 100 GiB and die.
    h.coffer()
        .args([
            "enroll",
            "password",
            "--slot",
            "password",
            "--password-file",
        ])
        .arg(&pw)
        .arg("--new-password-file")
        .arg(&pw)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("m_cost_kib"));
}

#[test]
fn concurrent_enrolls_both_survive() {
    let h = Home::new();
    h.init();
    let pw = h.write("pw.txt", "pw");
    let spawn = || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"))
            .env_clear()
            .env("COFFER_KEYRING", h.keyring())
            .args(["enroll", "password", "--recovery-key-file"])
            .arg(h.recovery_key())
            .arg("--new-password-file")
            .arg(&pw)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4).map(|_| spawn()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(h.keyring_json()["slots"].as_array().unwrap().len(), 5);
    // Only the keyring, its lock and our files: no temp files left.
    assert_eq!(
        listing(h.dir.path()),
        [
            "keyring.json",
            "keyring.json.lock",
            "pw.txt",
            "recovery.txt"
        ]
    );
}

#[test]
fn remove_refuses_the_last_slot_and_removes_others() {
    let h = Home::new();
    h.init();
    let rec_id = h.keyring_json()["slots"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.coffer()
        .args(["remove", &rec_id, "--recovery-key-file", "recovery.txt"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("last"));
    h.enroll_password("pw");
    let pw = h.write("pw.txt", "pw");
    h.coffer()
        .args(["remove", &rec_id, "--password-file"])
        .arg(&pw)
        .assert()
        .success();
    let kr = h.keyring_json();
    assert_eq!(kr["slots"].as_array().unwrap().len(), 1);
    assert_eq!(kr["slots"][0]["kind"], "password");
}

#[test]
fn unknown_slot_selector_is_a_usage_error() {
    let h = Home::new();
    h.init();
    h.coffer()
        .args([
            "enroll",
            "password",
            "--new-password-file",
            "recovery.txt",
            "--slot",
            "nonesuch",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(2);
}

#[test]
fn no_keyring_says_to_run_init() {
    let h = Home::new();
    h.coffer()
        .arg("slots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("coffer init"));
}

#[test]
fn bad_arguments_exit_2() {
    let h = Home::new();
    h.coffer().arg("frobnicate").assert().code(2);
    h.coffer()
        .args(["slots", "--password-file", "-", "--recovery-key-file", "-"])
        .assert()
        .code(2);
}

#[test]
fn slots_json_lists_public_fields_only() {
    let h = Home::new();
    h.init();
    h.enroll_password("pw");
    let out = h.coffer().args(["slots", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let slots = v["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[1]["kind"], "password");
    assert_eq!(slots[1]["m_cost_kib"], 65536);
}
