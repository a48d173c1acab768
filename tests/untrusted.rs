//! Opening an archive from storage others can write (issue 12): nothing in
//! an unauthenticated header loads code, spends a PIN, contacts a server,
//! burns unbounded Argon2 time, or crashes coffer. Every archive here is a
//! real sealed one whose header the test rewrote, as an attacker with
//! write access to the storage would; devices are real (SoftHSM2), the
//! hostile module is a real shared library.

// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(feature = "cli")]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Home, rewrite_header};
use predicates::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A keyring (recovery slot only) and `a.coffer` sealed with it.
fn sealed() -> Home {
    let h = Home::new();
    h.init();
    h.write("secret.txt", "the family photos");
    h.coffer()
        .args([
            "seal",
            "secret.txt",
            "-o",
            "a.coffer",
            "--recovery-key-file",
        ])
        .arg(h.recovery_key())
        .assert()
        .success();
    h
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A P-256-shaped point (format-valid; the attacker need not be on-curve).
fn point() -> String {
    let mut p = [7u8; 65];
    p[0] = 4;
    b64(&p)
}

/// A pkcs11 slot as an attacker writes it.
fn pkcs11_slot(id: &str, module: &str, uri: &str) -> Value {
    json!({
        "id": id, "kind": "pkcs11", "created": 1_700_000_000u64,
        "module": module, "uri": uri, "mechanism": "ecdh",
        "public_key": point(), "ephemeral": point(),
        "wrapped": b64(&[1u8; 40]),
    })
}

/// A password slot with the given Argon2id cost and a random-looking wrap.
fn password_slot(id: &str, m_cost_kib: u32, t_cost: u32) -> Value {
    json!({
        "id": id, "kind": "password", "created": 1_700_000_000u64,
        "kdf": "argon2id", "m_cost_kib": m_cost_kib, "t_cost": t_cost, "p_cost": 4,
        "salt": b64(&[3u8; 16]), "wrapped": b64(&[2u8; 40]),
    })
}

/// What the error says of a header slot coffer did not try: refused by the
/// trust rule, or (in a build without that kind) not supported at all.
fn not_tried(id: &str, kind: &str, built: bool) -> String {
    if built {
        format!("not tried: slot {id} ({kind})")
    } else {
        format!("{id} ({kind}) (kind not supported by this build)")
    }
}

/// Compile a shared library whose constructor writes `marker`: the proof
/// that a module was loaded.
fn evil_module(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n\
             __attribute__((constructor)) static void evil(void) {{\n\
               FILE *f = fopen(\"{}\", \"w\");\n\
               if (f) {{ fputs(\"loaded\", f); fclose(f); }}\n\
             }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let so = dir.join("evil.so");
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("cc (a C compiler) is needed to build the test module");
    assert!(st.success());
    // The library works: a program linked with it writes the marker.
    let main = dir.join("loader.c");
    std::fs::write(&main, "int main(void) { return 0; }\n").unwrap();
    let loader = dir.join("loader");
    let st = std::process::Command::new("cc")
        .arg("-o")
        .arg(&loader)
        .arg(&main)
        // Linked although no symbol of it is used.
        .arg("-Wl,--no-as-needed")
        .arg(&so)
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::process::Command::new(&loader)
            .status()
            .unwrap()
            .success()
    );
    assert!(marker.exists(), "the test module's constructor did not run");
    std::fs::remove_file(marker).unwrap();
    so
}

#[test]
fn a_header_pkcs11_module_is_never_loaded() {
    let h = sealed();
    let marker = h.path("marker");
    let so = evil_module(h.dir.path(), &marker);
    rewrite_header(&h.path("a.coffer"), |_, slots| {
        slots.insert(
            0,
            pkcs11_slot(
                "e0e0e0e0",
                &so.display().to_string(),
                "pkcs11:token=owner;object=k",
            ),
        );
    });
    h.write("wrong.txt", "not the password");
    let nowhere = h.path("no-keyring.json");
    let runs: Vec<(&str, Vec<&str>, bool)> = vec![
        // With the keyring, a factor that fits nothing.
        ("open", vec!["--password-file", "wrong.txt"], true),
        // Without the keyring, no factor at all.
        ("open", vec![], false),
        ("verify", vec!["--pin-file", "wrong.txt"], false),
        // Naming the slot authorises nothing but inert slots.
        ("open", vec!["--slot", "e0e0e0e0"], true),
        ("verify", vec!["--slot", "pkcs11"], false),
    ];
    for (cmd, args, keyring) in runs {
        let mut c = h.coffer();
        if !keyring {
            c.env("COFFER_KEYRING", &nowhere);
        }
        c.args(&args).args([cmd, "a.coffer"]);
        if cmd == "open" {
            c.args(["-o", "out"]);
        }
        let done = c.assert();
        assert!(
            !marker.exists(),
            "{cmd} {args:?} loaded the header's module"
        );
        done.code(5).stderr(predicate::str::contains(not_tried(
            "e0e0e0e0",
            "pkcs11",
            cfg!(feature = "pkcs11"),
        )));
        assert!(!h.path("out").exists());
    }
    // A local module named on the command line is what a confirmed slot
    // would load; without a yes, nothing is loaded at all.
    #[cfg(feature = "pkcs11")]
    h.coffer()
        .env("COFFER_KEYRING", &nowhere)
        .args([
            "--pkcs11-module",
            "/nonexistent.so",
            "open",
            "a.coffer",
            "-o",
            "out",
        ])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("terminal prompt"));
    assert!(!marker.exists());
    // The recovery key recovers the backup key without touching the
    // module, and then the edit is caught: exit 4, nothing written.
    h.coffer()
        .args(["open", "a.coffer", "-o", "out", "--recovery-key-file"])
        .arg(h.recovery_key())
        .assert()
        .code(4)
        .stderr(predicate::str::contains("header does not authenticate"));
    assert!(!marker.exists());
    assert!(!h.path("out").exists());
}

#[cfg(feature = "pkcs11")]
mod token {
    use super::*;
    use coffer_hsm_sim::softhsm::SoftHsm;

    fn pin_count_low(hsm: &SoftHsm) -> bool {
        hsm.pkcs11_tool(&["-L"]).contains("user PIN count low")
    }

    #[test]
    fn header_slots_never_spend_a_pin_try_nor_read_a_pin_source() {
        let h = sealed();
        let hsm = SoftHsm::new("coffer");
        h.write("pin.txt", coffer_hsm_sim::softhsm::USER_PIN);
        h.write("owners-file.txt", "000000");
        let coffer = || {
            let mut c = h.coffer();
            for (k, v) in hsm.env() {
                c.env(k, v);
            }
            c.env("COFFER_PKCS11_MODULE", hsm.module());
            c
        };
        coffer()
            .args([
                "enroll",
                "pkcs11",
                "--generate",
                "--uri",
                "pkcs11:token=coffer;object=k",
            ])
            .args(["--pin-file", "pin.txt", "--recovery-key-file"])
            .arg(h.recovery_key())
            .assert()
            .success();
        coffer()
            .args(["seal", "secret.txt", "--force", "-o", "a.coffer"])
            .args(["--slot", "pkcs11", "--pin-file", "pin.txt"])
            .assert()
            .success();
        assert!(!pin_count_low(&hsm));
        let genuine = h.keyring_json()["slots"][1].clone();
        assert_eq!(genuine["kind"], "pkcs11");
        let module = hsm.module().display().to_string();
        rewrite_header(&h.path("a.coffer"), |_, slots| {
            // The owner's token, through the owner's module, with a PIN (or
            // a file to read one from) chosen by the attacker.
            for (id, query) in [
                ("a0000001", "?pin-value=000000".to_owned()),
                (
                    "a0000002",
                    format!("?pin-source=file:{}", h.path("owners-file.txt").display()),
                ),
            ] {
                let mut s = genuine.clone();
                s["id"] = id.into();
                s["module"] = module.clone().into();
                s["uri"] = format!("pkcs11:token=coffer;object=k{query}").into();
                slots.insert(0, s);
            }
        });
        // Without the keyring, and with it (the owner's own slot needs a
        // PIN nobody gave): neither hostile slot is tried.
        for keyring in [false, true] {
            let mut c = coffer();
            if !keyring {
                c.env("COFFER_KEYRING", h.path("no-keyring.json"));
            }
            let done = c.args(["open", "a.coffer", "-o", "out"]).assert();
            assert!(
                !pin_count_low(&hsm),
                "a PIN try was spent (keyring: {keyring})"
            );
            done.code(5)
                .stderr(predicate::str::contains(
                    "not tried: slot a0000001 (pkcs11)",
                ))
                .stderr(predicate::str::contains(
                    "not tried: slot a0000002 (pkcs11)",
                ));
        }
        // The owner's own slot, with the owner's PIN, recovers the backup
        // key; then the edited header is caught (exit 4). No wrong PIN was
        // ever sent.
        coffer()
            .args(["open", "a.coffer", "-o", "out", "--pin-file", "pin.txt"])
            .assert()
            .code(4)
            .stderr(predicate::str::contains("header does not authenticate"));
        assert!(!pin_count_low(&hsm));
    }
}

#[cfg(feature = "pkcs11")]
#[test]
fn a_confirmed_header_token_slot_opens_with_the_local_module_only() {
    use coffer_hsm_sim::softhsm::{SoftHsm, USER_PIN};
    let h = sealed();
    let hsm = SoftHsm::new("coffer");
    h.write("pin.txt", USER_PIN);
    let mut c = h.coffer();
    for (k, v) in hsm.env() {
        c.env(k, v);
    }
    let module = hsm.module().display().to_string();
    c.args(["enroll", "pkcs11", "--module", &module, "--generate"])
        .args([
            "--uri",
            "pkcs11:token=coffer;object=k",
            "--pin-file",
            "pin.txt",
        ])
        .arg("--recovery-key-file")
        .arg(h.recovery_key())
        .assert()
        .success();
    let mut c = h.coffer();
    for (k, v) in hsm.env() {
        c.env(k, v);
    }
    c.args([
        "seal",
        "secret.txt",
        "--force",
        "-o",
        "a.coffer",
        "--recovery-key-file",
    ])
    .arg(h.recovery_key())
    .assert()
    .success();
    // No keyring at hand: the header's copy is all there is. Saying no
    // opens nothing; saying yes loads the module named on the command line.
    let args: Vec<std::ffi::OsString> = [
        "--pkcs11-module",
        &module,
        "--pin-file",
        "pin.txt",
        "open",
        "a.coffer",
        "-o",
        "out",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let keyring = h.path("no-keyring.json");
    let (ok, said) = common::run_on_a_terminal(&h, &keyring, hsm.env(), &args, "n\n");
    assert!(!ok && !h.path("out").exists(), "{said}");
    assert!(
        said.contains(&format!("load the PKCS#11 module {module}")),
        "{said}"
    );
    let (ok, said) = common::run_on_a_terminal(&h, &keyring, hsm.env(), &args, "y\n");
    assert!(ok, "{said}");
    assert_eq!(
        std::fs::read_to_string(h.path("out/secret.txt")).unwrap(),
        "the family photos"
    );
}

#[test]
fn a_header_vault_slot_never_makes_coffer_connect() {
    let h = sealed();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rewrite_header(&h.path("a.coffer"), |_, slots| {
        slots.push(json!({
            "id": "b0b0b0b0", "kind": "vault", "created": 1_700_000_000u64,
            "url": url, "user": "ab".repeat(16), "server_key": b64(&[5u8; 32]),
            "wrapped": b64(&[1u8; 40]),
        }));
    });
    h.write("pw.txt", "the owner's vault password");
    for (keyring, slot) in [(false, None), (true, None), (false, Some("b0b0b0b0"))] {
        let mut c = h.coffer();
        if !keyring {
            c.env("COFFER_KEYRING", h.path("no-keyring.json"));
        }
        if let Some(s) = slot {
            c.args(["--slot", s]);
        }
        let done = c
            .args(["--password-file", "pw.txt", "open", "a.coffer", "-o", "out"])
            .timeout(Duration::from_secs(30))
            .assert();
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("coffer connected to the header's vault URL: {other:?}"),
        }
        done.code(5).stderr(predicate::str::contains(not_tried(
            "b0b0b0b0",
            "vault",
            cfg!(feature = "vault"),
        )));
    }
}

#[test]
fn header_password_slots_share_one_argon2_budget() {
    let h = sealed();
    // Two slots at the default cost (the budget holds exactly two), then
    // 61 slots each costlier than the whole budget: before the budget,
    // about a minute of Argon2id here; with it, two default derivations.
    rewrite_header(&h.path("a.coffer"), |_, slots| {
        for i in 0..63u32 {
            let t = if i < 2 { 3 } else { 7 };
            slots.push(password_slot(&format!("f{i:07}"), 65536, t));
        }
    });
    h.write("pw.txt", "a guess");
    h.coffer()
        .env("COFFER_KEYRING", h.path("no-keyring.json"))
        .args(["--password-file", "pw.txt", "open", "a.coffer", "-o", "out"])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "slot f0000000 (password): wrong password",
        ))
        .stderr(predicate::str::contains(
            "slot f0000001 (password): wrong password",
        ))
        .stderr(predicate::str::contains(
            "not tried: slot f0000002 (password)",
        ))
        .stderr(predicate::str::contains(
            "not tried: slot f0000062 (password)",
        ))
        .stderr(predicate::str::contains("--slot f0000062"));
    assert!(!h.path("out").exists());
    // Named alone by id, one costly slot is tried (it is still one slot's
    // bounded cost).
    h.coffer()
        .env("COFFER_KEYRING", h.path("no-keyring.json"))
        .args(["--password-file", "pw.txt", "--slot", "f0000040"])
        .args(["open", "a.coffer", "-o", "out"])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "slot f0000040 (password): wrong password",
        ));
}

#[test]
fn hostile_times_print_instead_of_panicking() {
    let h = sealed();
    // The header's `created` sits after magic, version, flags, chunk size,
    // key id and salt (docs/format.md §4).
    let at = 8 + 2 + 2 + 4 + 16 + 32;
    for created in [253_402_300_800u64, u64::MAX] {
        rewrite_header(&h.path("a.coffer"), |fixed, _| {
            fixed[at..at + 8].copy_from_slice(&created.to_be_bytes());
        });
        h.coffer()
            .args(["inspect", "a.coffer"])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!(
                "@{created} (after year 9999)"
            )));
        h.coffer()
            .args(["--json", "inspect", "a.coffer"])
            .assert()
            .success();
    }
    let mut kr = h.keyring_json();
    kr["slots"][0]["created"] = u64::MAX.into();
    h.put_keyring_json(&kr);
    h.coffer()
        .arg("slots")
        .assert()
        .success()
        .stdout(predicate::str::contains("after year 9999"));
}

/// (pkcs11: a build without it shows no details of such a slot.)
#[cfg(feature = "pkcs11")]
#[test]
fn header_strings_are_printed_escaped() {
    let h = sealed();
    let spoof = "/x.so\x1b[2K\r\x1b[1A: verified OK\x07";
    rewrite_header(&h.path("a.coffer"), |_, slots| {
        slots.push(pkcs11_slot(
            "c0c0c0c0",
            spoof,
            "pkcs11:token=a%1B%5B2J;object=k",
        ));
    });
    let out = h.coffer().args(["inspect", "a.coffer"]).assert().success();
    let stdout = &out.get_output().stdout;
    assert!(
        !stdout.iter().any(|&b| b == 0x1b || b == 0x07 || b == b'\r'),
        "{}",
        String::from_utf8_lossy(stdout)
    );
    assert!(String::from_utf8_lossy(stdout).contains("\\u{1b}[2K"));
}

#[test]
fn a_crash_while_holding_a_factor_dumps_no_core() {
    let h = sealed();
    let password = "core-dump-canary correct horse battery";
    h.write("pw.txt", password);
    // Core files go to the working directory here (core_pattern `core`);
    // elsewhere this test proves less, never more.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -c unlimited && exec \"$0\" \"$@\"")
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args(["--password-file", "pw.txt", "open", "-", "-o", "out"])
        .env_clear()
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // coffer has read the password and now waits for the archive on
    // standard input; crash it there.
    std::thread::sleep(Duration::from_millis(1500));
    let st = std::process::Command::new("kill")
        .args(["-ABRT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "{status:?}");
    for name in common::listing(h.dir.path()) {
        if name.starts_with("core") {
            let core = std::fs::read(h.path(&name)).unwrap();
            let found = core
                .windows(password.len())
                .any(|w| w == password.as_bytes());
            panic!("a core file {name} was written (holding the password: {found})");
        }
    }
}
