//! The PKCS#11 slot against a real SoftHSM2 token (no mocks), driven
//! through the real `coffer` binary: each test has its own token folder and
//! `SOFTHSM2_CONF`, passed to each child process, so tests run in parallel.
//! Keys are made by coffer (`--generate`) and by a third-party tool
//! (`pkcs11-tool`).
// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(all(feature = "pkcs11", feature = "cli"))]

mod common;

use coffer_hsm_sim::softhsm::{SoftHsm, USER_PIN};
use common::Home;
use predicates::prelude::*;
use std::path::PathBuf;

/// A keyring (recovery slot) and a SoftHSM with token `coffer`.
struct Rig {
    h: Home,
    hsm: SoftHsm,
}

impl Rig {
    fn new() -> Self {
        let h = Home::new();
        h.init();
        h.write("pin.txt", USER_PIN);
        h.write("wrong-pin.txt", "654321");
        h.write("secret.txt", "the family photos");
        Self {
            h,
            hsm: SoftHsm::new("coffer"),
        }
    }

    /// `coffer` with this rig's keyring and SoftHSM environment.
    fn coffer(&self) -> assert_cmd::Command {
        let mut c = self.h.coffer();
        for (k, v) in self.hsm.env() {
            c.env(k, v);
        }
        c
    }

    /// `coffer enroll pkcs11 ARGS` unlocking with the recovery key, PIN from
    /// pin.txt.
    fn enroll(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        self.coffer()
            .args(["--json", "enroll", "pkcs11"])
            .args(args)
            .arg("--recovery-key-file")
            .arg(self.h.recovery_key())
            .args(["--pin-file", "pin.txt"])
            .assert()
    }

    /// Seal a.coffer (no factor needed), then verify it with the token
    /// only: the keyring's token slot unlocks with `pin_file`.
    fn seal_with_token(&self, pin_file: &str) -> assert_cmd::assert::Assert {
        self.coffer()
            .args(["seal", "secret.txt", "--force", "-o", "a.coffer"])
            .assert()
            .success();
        self.coffer()
            .args(["--slot", "pkcs11", "--pin-file", pin_file])
            .args(["verify", "a.coffer"])
            .assert()
    }

    /// Open a.coffer with the token only; check what comes out.
    fn open_with_token(&self) {
        let out = self.h.path("out");
        let _ = std::fs::remove_dir_all(&out);
        self.coffer()
            .args(["--slot", "pkcs11", "--pin-file", "pin.txt"])
            .args(["open", "a.coffer", "-o"])
            .arg(&out)
            .assert()
            .success();
        assert_eq!(
            std::fs::read_to_string(out.join("secret.txt")).unwrap(),
            "the family photos"
        );
    }

    fn pkcs11_slot(&self) -> serde_json::Value {
        let kr = self.h.keyring_json();
        kr["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == "pkcs11")
            .expect("a pkcs11 slot")
            .clone()
    }

    fn tool(&self, args: &[&str]) -> String {
        let mut a = vec!["--token-label", "coffer", "--login", "--pin", USER_PIN];
        a.extend_from_slice(args);
        self.hsm.pkcs11_tool(&a)
    }
}

#[test]
fn generated_ecdh_key_unlocks_and_stores_no_pin() {
    let r = Rig::new();
    // A PIN in --uri would be in the process list: refused, nothing made.
    r.enroll(&[
        "--generate",
        "--uri",
        "pkcs11:token=coffer;object=backup?pin-value=123456",
    ])
    .code(2)
    .stderr(predicate::str::contains("--pin-file"));
    assert_eq!(r.h.keyring_json()["slots"].as_array().unwrap().len(), 1);
    r.enroll(&["--generate", "--uri", "pkcs11:token=coffer;object=backup"])
        .success()
        .stdout(predicate::str::contains("\"pkcs11\""));
    let slot = r.pkcs11_slot();
    assert_eq!(slot["mechanism"], "ecdh");
    assert_eq!(slot["uri"], "pkcs11:token=coffer;object=backup");
    assert!(!r.h.keyring_json().to_string().contains(USER_PIN));
    r.seal_with_token("pin.txt").success();
    r.open_with_token();
    // The private key is sensitive and never extractable.
    let objs = r.tool(&["--list-objects", "--type", "privkey"]);
    assert!(objs.contains("backup"), "{objs}");
    assert!(
        objs.contains("sensitive") && objs.contains("never extractable"),
        "{objs}"
    );
}

#[test]
fn keys_made_by_pkcs11_tool_enroll_by_uri() {
    let r = Rig::new();
    r.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "tool-ec",
        "--id",
        "01",
        "--usage-derive",
    ]);
    r.tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "tool-aes",
        "--id",
        "02",
        "--usage-decrypt",
    ]);
    r.enroll(&["--uri", "pkcs11:token=coffer;id=%01"]).success();
    r.seal_with_token("pin.txt").success();
    r.open_with_token();
    // Now the AES key; then only that slot is tried (--slot by id).
    let out = r
        .enroll(&[
            "--mechanism",
            "aes-gcm",
            "--uri",
            "pkcs11:token=coffer;object=tool-aes",
        ])
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let id = v["slot"]["id"].as_str().unwrap();
    r.coffer()
        .args(["seal", "secret.txt", "--force", "-o", "b.coffer"])
        .assert()
        .success();
    r.coffer()
        .args(["--slot", id, "--pin-file", "pin.txt"])
        .args(["verify", "b.coffer"])
        .assert()
        .success();
}

#[test]
fn wrong_pin_is_exit_3_and_the_right_one_still_works() {
    // SoftHSM2 never locks a user PIN, so CKR_PIN_LOCKED (exit 5) is
    // covered by the unit test of the error mapping, not here.
    let r = Rig::new();
    r.enroll(&["--generate", "--uri", "pkcs11:token=coffer;object=k"])
        .success();
    for _ in 0..3 {
        r.seal_with_token("wrong-pin.txt")
            .code(3)
            .stderr(predicate::str::contains("wrong PIN"));
    }
    r.seal_with_token("pin.txt").success();
    // A wrong PIN at enrollment is exit 3 too, and adds no slot.
    r.coffer()
        .args([
            "enroll",
            "pkcs11",
            "--generate",
            "--uri",
            "pkcs11:token=coffer;object=k2",
        ])
        .args(["--pin-file", "wrong-pin.txt", "--recovery-key-file"])
        .arg(r.h.recovery_key())
        .assert()
        .code(3);
    assert_eq!(r.h.keyring_json()["slots"].as_array().unwrap().len(), 2);
}

#[test]
fn the_pin_comes_from_pin_source_or_the_slot_is_skipped() {
    let r = Rig::new();
    let pin = r.h.path("pin.txt");
    let uri = format!(
        "pkcs11:token=coffer;object=k?pin-source=file:{}",
        pin.display()
    );
    r.enroll(&["--generate", "--uri", &uri]).success();
    assert_eq!(r.pkcs11_slot()["uri"], uri);
    // No --pin-file: the URI's pin-source is read.
    r.coffer()
        .args(["seal", "secret.txt", "-o", "a.coffer"])
        .assert()
        .success();
    r.coffer()
        .args(["--slot", "pkcs11", "verify", "a.coffer"])
        .assert()
        .success();
    // Without any PIN and no terminal the slot is skipped: exit 5.
    r.enroll(&["--generate", "--uri", "pkcs11:token=coffer;object=k2"])
        .success();
    let kr = r.h.keyring_json();
    let id = kr["slots"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    r.coffer()
        .args(["seal", "secret.txt", "--force", "-o", "a.coffer"])
        .assert()
        .success();
    r.coffer()
        .args(["--slot", &id, "verify", "a.coffer"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("for want of a factor"));
}

#[test]
fn a_uri_without_token_is_pinned_to_the_only_token() {
    let r = Rig::new();
    r.enroll(&["--generate", "--uri", "pkcs11:object=k"])
        .success();
    assert_eq!(r.pkcs11_slot()["uri"], "pkcs11:object=k;token=coffer");
    r.seal_with_token("pin.txt").success();
}

#[test]
fn missing_object_module_or_token_is_exit_5_naming_it() {
    let r = Rig::new();
    r.enroll(&["--uri", "pkcs11:token=coffer;object=nothing-here"])
        .code(5)
        .stderr(predicate::str::contains("object=nothing-here"));
    r.enroll(&["--uri", "pkcs11:token=nope;object=k"])
        .code(5)
        .stderr(predicate::str::contains("token=nope"));
    r.enroll(&[
        "--module",
        "/nonexistent/libnothing.so",
        "--uri",
        "pkcs11:token=coffer;object=k",
    ])
    .code(5)
    .stderr(predicate::str::contains("/nonexistent/libnothing.so"));
    // A slot whose key was deleted from the token after enrolling.
    r.enroll(&["--generate", "--uri", "pkcs11:token=coffer;object=k"])
        .success();
    r.tool(&["--delete-object", "--type", "privkey", "--label", "k"]);
    r.seal_with_token("pin.txt")
        .code(5)
        .stderr(predicate::str::contains("EC private key object=k"));
    // Bad URIs are usage errors.
    r.enroll(&["--uri", "pkcs11:token=coffer"]).code(2);
    r.enroll(&["--uri", "http://example"]).code(2);
}

#[test]
fn the_uri_picks_the_right_one_of_two_tokens() {
    let r = Rig::new();
    r.hsm.add_token("other");
    r.enroll(&["--generate", "--uri", "pkcs11:token=other;object=k"])
        .success();
    // The same label on the first token: a different key.
    r.hsm.pkcs11_tool(&[
        "--token-label",
        "coffer",
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "k",
        "--usage-derive",
    ]);
    r.seal_with_token("pin.txt").success();
    r.open_with_token();
    // A token added later takes another slot number; still found by label.
    r.hsm.add_token("third");
    r.seal_with_token("pin.txt").success();
}

#[test]
fn a_slot_wrapped_from_the_exported_public_key_unlocks_on_the_token() {
    let r = Rig::new();
    r.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "pub-only",
        "--usage-derive",
    ]);
    let der: PathBuf = r.h.path("pub.der");
    r.hsm.pkcs11_tool(&[
        "--token-label",
        "coffer",
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "pub-only",
        "--output-file",
        der.to_str().unwrap(),
    ]);
    // Enrolled with no module able to reach the token and no PIN.
    r.coffer()
        .args(["enroll", "pkcs11", "--module", "/nonexistent.so"])
        .args([
            "--uri",
            "pkcs11:token=coffer;object=pub-only",
            "--public-key",
        ])
        .arg(&der)
        .arg("--recovery-key-file")
        .arg(r.h.recovery_key())
        .assert()
        .success();
    // The stored module is gone: COFFER_PKCS11_MODULE says where it is now.
    r.seal_with_token("pin.txt").success();
    r.open_with_token();
}
