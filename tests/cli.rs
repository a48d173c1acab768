//! The command line, driven as a user would: the real `coffer` binary, no
//! terminal, factors from files. Each test asserts the exit status of the
//! contract (DESIGN.md) and what is left on disk.

// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(feature = "cli")]

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
    // The last recovery slot goes only with --force, saying what it means.
    h.coffer()
        .args(["remove", &rec_id, "--password-file"])
        .arg(&pw)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("last recovery key"))
        .stderr(predicate::str::contains("--force"));
    assert_eq!(h.keyring_json()["slots"].as_array().unwrap().len(), 2);
    h.coffer()
        .args(["remove", &rec_id, "--force", "--password-file"])
        .arg(&pw)
        .assert()
        .success()
        .stderr(predicate::str::contains("coffer rotate"));
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

// ---- Output that is not a regular file, interruption, closed pipes ----

/// `coffer` as a plain process (to spawn, signal and feed it by hand).
fn coffer_process(h: &Home) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.dir.path())
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path());
    c
}

/// A home with a keyring, and `name` sealed from `data` as a stream.
fn sealed_stream(data: &[u8], name: &str) -> Home {
    let h = Home::new();
    h.init();
    seal_stream_into(&h, data, name);
    h
}

/// Seal `data` as a stream into `name` in `h`.
fn seal_stream_into(h: &Home, data: &[u8], name: &str) {
    h.seal_stream(data, name);
}

fn pseudo_random(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn mkfifo(p: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", p.display());
}

fn is_fifo(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).unwrap().file_type().is_fifo()
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn no_temporaries(h: &Home) {
    let left: Vec<String> = listing(h.dir.path())
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n.contains("coffer-replaced"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Run `coffer args` while `cat` reads `fifo`; the bytes `cat` read. `cat`
/// is killed if coffer fails (it would otherwise wait for a writer forever).
fn through_fifo(
    h: &Home,
    fifo: &str,
    args: &[&str],
    stdin: &[u8],
) -> (std::process::Output, Vec<u8>) {
    use std::io::Read;
    let mut cat = std::process::Command::new("cat")
        .arg(h.path(fifo))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut cat_out = cat.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        cat_out.read_to_end(&mut v).unwrap();
        v
    });
    let out = h.coffer().args(args).write_stdin(stdin).output().unwrap();
    if !out.status.success() {
        let _ = cat.kill();
    }
    cat.wait().unwrap();
    (out, reader.join().unwrap())
}

#[test]
fn open_and_seal_write_into_a_fifo_instead_of_replacing_it() {
    let data = pseudo_random(300_000);
    let h = sealed_stream(&data, "s.coffer");
    mkfifo(&h.path("pipe"));
    let open = [
        "open",
        "s.coffer",
        "-o",
        "pipe",
        "--recovery-key-file",
        "recovery.txt",
    ];
    let (out, got) = through_fifo(&h, "pipe", &open, b"");
    assert!(out.status.success(), "{out:?}");
    assert!(got == data, "the reader got {} bytes", got.len());
    assert!(is_fifo(&h.path("pipe")));
    // With --force it is still written into, never replaced.
    let forced = [&open[..], &["--force"]].concat();
    let (out, got) = through_fifo(&h, "pipe", &forced, b"");
    assert!(out.status.success(), "{out:?}");
    assert!(got == data);
    assert!(is_fifo(&h.path("pipe")));
    // seal -o FIFO: the reader receives the archive, which opens.
    let seal = [
        "seal",
        "-",
        "-o",
        "pipe",
        "--recovery-key-file",
        "recovery.txt",
    ];
    let (out, archive) = through_fifo(&h, "pipe", &seal, b"through a fifo");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(h.path("fifo.coffer"), archive).unwrap();
    h.coffer()
        .args([
            "open",
            "fifo.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stdout("through a fifo");
    assert!(is_fifo(&h.path("pipe")));
    no_temporaries(&h);
}

#[test]
fn a_folder_archive_opened_into_a_fifo_is_its_tar_stream() {
    let h = Home::new();
    h.init();
    std::fs::create_dir(h.path("d")).unwrap();
    h.write("d/hello.txt", "hello");
    h.coffer()
        .args([
            "seal",
            "d",
            "-o",
            "d.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    mkfifo(&h.path("pipe"));
    let open = [
        "open",
        "d.coffer",
        "-o",
        "pipe",
        "--recovery-key-file",
        "recovery.txt",
    ];
    let (out, tar_bytes) = through_fifo(&h, "pipe", &open, b"");
    assert!(out.status.success(), "{out:?}");
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.iter().any(|n| n == "d/hello.txt"), "{names:?}");
    assert!(is_fifo(&h.path("pipe")));
}

#[test]
fn dev_null_is_written_into_with_or_without_force_never_replaced() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let h = sealed_stream(&pseudo_random(100_000), "s.coffer");
    let before = std::fs::metadata("/dev/null").unwrap();
    // Without --force first: the old code refused here, before it could
    // ever reach the --force case below and replace /dev/null as root.
    let open = |target: &str, force: bool| {
        let mut c = h.coffer();
        c.args([
            "open",
            "s.coffer",
            "-o",
            target,
            "--recovery-key-file",
            "recovery.txt",
        ]);
        if force {
            c.arg("--force");
        }
        c.assert().success();
    };
    open("/dev/null", false);
    h.coffer()
        .args([
            "seal",
            "-",
            "-o",
            "/dev/null",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .write_stdin("x")
        .assert()
        .success();
    if is_root() {
        // A private character device first (same numbers as /dev/null),
        // so a regression replaces that and not the machine's.
        let made = std::process::Command::new("mknod")
            .arg(h.path("null"))
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success();
        if made {
            open("null", true);
            assert!(
                std::fs::symlink_metadata(h.path("null"))
                    .unwrap()
                    .file_type()
                    .is_char_device()
            );
        } else {
            eprintln!("mknod refused (no CAP_MKNOD); the private device case is skipped");
        }
        open("/dev/null", true);
        h.coffer()
            .args([
                "seal",
                "-",
                "-o",
                "/dev/null",
                "--force",
                "--recovery-key-file",
                "recovery.txt",
            ])
            .write_stdin("x")
            .assert()
            .success();
    } else {
        eprintln!("not root: --force on /dev/null could not replace it anyway; skipped");
    }
    let after = std::fs::symlink_metadata("/dev/null").unwrap();
    assert!(after.file_type().is_char_device());
    assert_eq!(after.rdev(), before.rdev());
    assert_eq!(after.ino(), before.ino());
    no_temporaries(&h);
}

#[test]
fn dev_fd_targets_are_written_in_place() {
    let data = pseudo_random(200_000);
    let h = sealed_stream(&data, "s.coffer");
    let bin = assert_cmd::cargo::cargo_bin("coffer");
    // Process substitution (a pipe as /dev/fd/63), and a file on fd 3.
    let script = r#"set -e
"$COFFER" open s.coffer -o >(cat > from-pipe) --recovery-key-file recovery.txt
"$COFFER" open s.coffer -o /dev/fd/3 --recovery-key-file recovery.txt 3> from-fd3
"$COFFER" open s.coffer -o /proc/self/fd/4 --recovery-key-file recovery.txt 4> from-proc
"$COFFER" seal - -o /dev/stdout --recovery-key-file recovery.txt < from-fd3 | cat > again.coffer
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script])
        .env("COFFER", &bin)
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reader of >(...) may finish after the script; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(h.path("from-pipe"))
        .map(|m| m.len())
        .unwrap_or(0)
        < data.len() as u64
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for f in ["from-pipe", "from-fd3", "from-proc"] {
        assert!(std::fs::read(h.path(f)).unwrap() == data, "{f}");
    }
    h.coffer()
        .args([
            "open",
            "again.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stdout(predicate::function(|o: &[u8]| o == data.as_slice()));
    no_temporaries(&h);
}

/// Whether this test process inherited `signal` as ignored (then so does
/// the child, and coffer rightly leaves it so: nothing to test).
fn ignored(signal: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (signal - 1)) != 0
}

fn send(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Poll until `ready` holds (30 s at most).
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

const SIGNALS: [(&str, u32); 3] = [("INT", 2), ("TERM", 15), ("HUP", 1)];

#[test]
fn an_interrupted_seal_removes_its_temp_file_and_exits_128_plus_signal() {
    use std::io::Write;
    let h = Home::new();
    h.init();
    for (name, number) in SIGNALS {
        if ignored(number) {
            eprintln!("SIG{name} is ignored in this test process; skipped");
            continue;
        }
        let mut child = coffer_process(&h)
            .args([
                "seal",
                "-",
                "-o",
                "slow.coffer",
                "--recovery-key-file",
                "recovery.txt",
            ])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Standard input stays open: the seal waits for more, mid-way.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&pseudo_random(1 << 20)).unwrap();
        wait_for("the temp file", || {
            listing(h.dir.path())
                .iter()
                .any(|n| n.starts_with("slow.coffer.tmp-"))
        });
        send(&child, name);
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(
            out.status.code(),
            Some(128 + number as i32),
            "SIG{name}: {out:?}"
        );
        assert!(!h.path("slow.coffer").exists());
        no_temporaries(&h);
    }
}

/// Feed `archive` to `coffer open - -o out` a piece at a time until
/// `started` sees the partial output, then send `signal`.
fn interrupt_open(h: &Home, archive: &[u8], signal: (&str, u32), started: impl Fn() -> bool) {
    use std::io::Write;
    let mut child = coffer_process(h)
        .args([
            "open",
            "-",
            "-o",
            "out",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut sent = 0;
    for piece in archive.chunks(32 << 10) {
        if let Err(e) = stdin.write_all(piece) {
            let _ = child.kill();
            panic!("{e}: coffer stopped early: {:?}", child.wait_with_output());
        }
        sent += piece.len();
        if started() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        sent < archive.len(),
        "the whole archive went in before any output"
    );
    // Let the output that was fed land, then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        listing(h.dir.path())
            .iter()
            .any(|n| n.starts_with("out.tmp-"))
    );
    send(&child, signal.0);
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(
        out.status.code(),
        Some(128 + signal.1 as i32),
        "SIG{}: {out:?}",
        signal.0
    );
    assert!(!h.path("out").exists());
    no_temporaries(h);
}

#[test]
fn an_interrupted_open_removes_its_partial_output() {
    let h = Home::new();
    h.init();
    // A folder: `a` is a symlink to a folder outside, then big files.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep").unwrap();
    std::fs::create_dir(h.path("d")).unwrap();
    std::os::unix::fs::symlink(outside.path(), h.path("d/a")).unwrap();
    for i in 0..8 {
        std::fs::write(h.path(&format!("d/big{i}")), pseudo_random(1 << 20)).unwrap();
    }
    h.coffer()
        .args([
            "seal",
            "d",
            "-o",
            "d.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    let folder = std::fs::read(h.path("d.coffer")).unwrap();
    seal_stream_into(&h, &pseudo_random(8 << 20), "s.coffer");
    let stream = std::fs::read(h.path("s.coffer")).unwrap();
    for signal in SIGNALS {
        if ignored(signal.1) {
            eprintln!("SIG{} is ignored in this test process; skipped", signal.0);
            continue;
        }
        // The partial tree holds the symlink and part of the files:
        // removing it must not follow the link.
        let dir = h.dir.path().to_path_buf();
        interrupt_open(&h, &folder, signal, || {
            listing(&dir)
                .iter()
                .any(|n| n.starts_with("out.tmp-") && dir.join(n).join("d/big0").exists())
        });
        assert_eq!(
            std::fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep"
        );
        // A stream opened into a file.
        let dir = h.dir.path().to_path_buf();
        interrupt_open(&h, &stream, signal, || {
            listing(&dir).iter().any(|n| {
                n.starts_with("out.tmp-")
                    && std::fs::metadata(dir.join(n)).is_ok_and(|m| m.len() > 0)
            })
        });
    }
}

/// Read `n` bytes of `cmd`'s standard output, then close it, as `| head -c
/// n` does; the command's output.
fn read_then_close(mut cmd: std::process::Command, n: usize) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = vec![0; n];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    child.wait_with_output().unwrap()
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let data = pseudo_random(8 << 20);
    let h = sealed_stream(&data, "s.coffer");
    let mut open = coffer_process(&h);
    open.args([
        "open",
        "s.coffer",
        "-o",
        "-",
        "--recovery-key-file",
        "recovery.txt",
    ]);
    let out = read_then_close(open, 10);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    std::fs::write(h.path("big"), &data).unwrap();
    let mut seal = coffer_process(&h);
    seal.args([
        "seal",
        "-",
        "-o",
        "-",
        "--recovery-key-file",
        "recovery.txt",
    ])
    .stdin(std::fs::File::open(h.path("big")).unwrap());
    let out = read_then_close(seal, 10);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // And through a shell, as people write it.
    let out = std::process::Command::new("bash")
        .args(["-c", r#"set -o pipefail; "$COFFER" open s.coffer -o - --recovery-key-file recovery.txt | head -c 10 > /dev/null"#])
        .env("COFFER", assert_cmd::cargo::cargo_bin("coffer"))
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn sockets_are_refused_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let h = sealed_stream(b"x", "s.coffer");
    let _listener = std::os::unix::net::UnixListener::bind(h.path("sock")).unwrap();
    for force in [false, true] {
        let mut c = h.coffer();
        c.args([
            "open",
            "s.coffer",
            "-o",
            "sock",
            "--recovery-key-file",
            "recovery.txt",
        ]);
        if force {
            c.arg("--force");
        }
        c.assert()
            .code(2)
            .stderr(predicate::str::contains("sock is a socket"));
        let ft = std::fs::symlink_metadata(h.path("sock"))
            .unwrap()
            .file_type();
        assert!(ft.is_socket());
    }
    no_temporaries(&h);
}

#[test]
fn a_hangup_ignored_by_nohup_stays_ignored() {
    use std::io::Write;
    let h = Home::new();
    h.init();
    let mut child = std::process::Command::new("nohup")
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args([
            "seal",
            "-",
            "-o",
            "kept.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pseudo_random(1 << 20)).unwrap();
    wait_for("the temp file", || {
        listing(h.dir.path())
            .iter()
            .any(|n| n.starts_with("kept.coffer.tmp-"))
    });
    send(&child, "HUP");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stdin.write_all(b"more").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(h.path("kept.coffer").exists());
    no_temporaries(&h);
}

/// `coffer inspect a.coffer | head -1`: a reader that left is not an error
/// (before, `println!` panicked on the closed pipe: exit 101).
#[test]
fn inspect_into_a_closed_pipe_exits_0_quietly() {
    let h = Home::new();
    h.init();
    h.write("data.txt", "x");
    h.coffer()
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
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"))
        .args(["inspect", "a.coffer"])
        .current_dir(h.dir.path())
        .env("COFFER_KEYRING", h.keyring())
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a pipeline the archive comes in on standard input, yet the factor is
/// asked on the terminal (`/dev/tty`), as `ssh host cat a.coffer | coffer
/// open - -o - | psql` needs.
#[test]
fn a_pipeline_asks_for_the_factor_on_the_terminal() {
    let h = Home::new();
    h.init();
    h.seal_stream(b"through a pipe\n", "a.coffer");
    let line = format!(
        "cat a.coffer | {} open - -o - > out.txt",
        common::shell_quote(assert_cmd::cargo::cargo_bin("coffer").as_os_str())
    );
    let key = h.recovery_key_text();
    let (ok, shown) = common::run_line_on_a_terminal(
        &h,
        &h.keyring(),
        std::iter::empty::<(&str, &str)>(),
        &line,
        &format!("{key}\n"),
    );
    assert!(ok, "{shown}");
    assert!(shown.to_lowercase().contains("recovery key"), "{shown}");
    assert_eq!(
        std::fs::read_to_string(h.path("out.txt")).unwrap(),
        "through a pipe\n"
    );
}

#[test]
fn completions_and_the_manual_page_come_from_the_definitions() {
    let h = Home::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = h.coffer().args(["completions", shell]).assert().success();
        let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
        for word in [
            "coffer",
            "passphrase",
            "export",
            "seal-only",
            "recovery-key-file",
        ] {
            assert!(text.contains(word), "{shell}: no {word}");
        }
    }
    h.coffer().args(["completions", "tcsh"]).assert().code(2);
    let out = h.coffer().arg("man").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.starts_with(".ie") || text.contains(".TH"), "{text}");
    for word in ["coffer", "seal", "open", "passphrase", "rotate"] {
        assert!(text.contains(word), "man page has no {word}");
    }
    // With --dir: that page and one per subcommand, at any depth.
    h.coffer().args(["man", "--dir", "man"]).assert().success();
    let page = |name: &str| std::fs::read_to_string(h.path("man").join(name)).unwrap();
    assert!(page("coffer.1").contains(".TH coffer 1"));
    assert!(
        page("coffer-seal.1").contains("key\\-id"),
        "{}",
        page("coffer-seal.1")
    );
    assert!(page("coffer-enroll-threshold.1").contains("\\-\\-need"));
    #[cfg(feature = "vault-server")]
    assert!(page("coffer-vault-serve.1").contains("tls\\-cert"));
    // Neither needs a keyring, nor writes one.
    assert!(!h.keyring().exists());
}

/// With --json an error is one JSON object on stderr, with the exit status
/// the process ends with, and nothing else is printed there.
#[test]
fn json_errors_are_one_object_on_stderr() {
    let h = Home::new();
    h.init();
    h.seal_stream(b"x", "a.coffer");
    h.write("wrong.txt", &"0".repeat(64));
    for (args, code) in [
        (vec!["open", "missing.coffer", "-o", "-"], 1),
        (
            vec![
                "open",
                "a.coffer",
                "-o",
                "-",
                "--recovery-key-file",
                "wrong.txt",
            ],
            3,
        ),
        (vec!["open", "a.coffer", "-o", "-"], 5),
        (vec!["passphrase", "two words"], 2),
    ] {
        let out = h.coffer().arg("--json").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["exit"], code, "{args:?}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{err}");
    }
}

/// Never asked, though a terminal is there: with --no-prompt, or when
/// coffer runs in the background (GNU timeout puts it in a process group
/// of its own), where reading the terminal would stop it for good.
#[test]
fn no_prompt_and_background_jobs_are_never_asked() {
    let h = Home::new();
    h.init();
    h.seal_stream(b"x", "a.coffer");
    let coffer = common::shell_quote(assert_cmd::cargo::cargo_bin("coffer").as_os_str());
    for line in [
        format!("cat a.coffer | {coffer} --no-prompt open - -o - > out.txt; echo status=$?"),
        format!("timeout 30 {coffer} open a.coffer -o - > out.txt; echo status=$?"),
    ] {
        let (ok, shown) = common::run_line_on_a_terminal(
            &h,
            &h.keyring(),
            std::iter::empty::<(&str, &str)>(),
            &line,
            &format!("{}\n", h.recovery_key_text()),
        );
        assert!(ok, "{line}: {shown}");
        assert!(shown.contains("status=5"), "{line}: {shown}");
        assert!(
            !shown.to_lowercase().contains("recovery key for slot"),
            "{line}: {shown}"
        );
    }
}

/// One JSON schema (docs/json.md): a slot is `{"id", "kind", "label"}`
/// wherever a command names one, times are RFC 3339, and `open`/`verify`
/// say which slot unlocked.
#[test]
fn json_names_slots_one_way_and_times_in_rfc_3339() {
    let h = Home::new();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = h.coffer().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let init = json(&["init", "--recovery-key-out", "recovery.txt"]);
    assert_eq!(init["slot"]["kind"], "recovery");
    let first = init["slot"]["id"].as_str().unwrap().to_owned();
    h.write("pw.txt", "a password");
    let enrolled = json(&[
        "enroll",
        "password",
        "--label",
        "laptop",
        "--new-password-file",
        "pw.txt",
        "--recovery-key-file",
        "recovery.txt",
    ]);
    assert_eq!(enrolled["slot"]["kind"], "password");
    assert_eq!(enrolled["slot"]["label"], "laptop");
    assert!(enrolled["replaced"].is_null());
    let listed = json(&["slots"]);
    for s in listed["slots"].as_array().unwrap() {
        let created = s["created"].as_str().unwrap();
        assert!(created.len() == 20 && created.ends_with('Z'), "{created}");
    }
    h.seal_stream(b"x", "a.coffer");
    let verified = json(&["verify", "a.coffer", "--password-file", "pw.txt"]);
    assert_eq!(verified["slot"]["label"], "laptop");
    assert_eq!(verified["bytes"], 1);
    // Byte counts are the content's, before compression, both ways.
    for compress in ["none", "zstd"] {
        let out = h
            .coffer()
            .args([
                "--json",
                "seal",
                "-",
                "-o",
                "z.coffer",
                "--force",
                "--compress",
                compress,
            ])
            .write_stdin(vec![0u8; 100_000])
            .assert()
            .success();
        let sealed: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(sealed["bytes"], 100_000, "{compress}");
        let opened = json(&[
            "open",
            "z.coffer",
            "-o",
            "z.out",
            "--force",
            "--password-file",
            "pw.txt",
        ]);
        assert_eq!(opened["bytes"], 100_000, "{compress}");
        assert_eq!(opened["slot"]["kind"], "password");
    }
    let removed = json(&["remove", &first, "--force", "--password-file", "pw.txt"]);
    assert_eq!(removed["removed"]["id"], first.as_str());
    assert_eq!(removed["removed"]["kind"], "recovery");
}

/// On a terminal, `open` and `verify` show a bar with the percentage (the
/// archive's size gives the total); `seal` and `open` end saying how many
/// bytes of content they sealed or restored. Off a terminal, no display.
#[test]
fn progress_on_a_terminal_has_a_total_and_the_end_says_the_bytes() {
    let h = Home::new();
    h.init();
    std::fs::write(h.path("big"), vec![7u8; 24 << 20]).unwrap();
    let none = std::iter::empty::<(&str, &str)>();
    let a = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
    let (ok, out) = common::run_on_a_terminal(
        &h,
        &h.keyring(),
        none,
        &a(&["seal", "big", "-o", "a.coffer"]),
        "",
    );
    assert!(ok, "{out}");
    let sealed = out
        .lines()
        .find_map(|l| {
            l.split("sealed ")
                .nth(1)?
                .split(" bytes into a.coffer")
                .next()
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no `sealed N bytes into a.coffer`: {out}"));
    assert!(sealed > 24 << 20, "{sealed}");
    let rk = h.recovery_key();
    let rk = rk.to_str().unwrap();
    // A terminal that says what it is, as a person's does.
    let term = [("TERM", "xterm-256color")];
    let (ok, out) = common::run_on_a_terminal(
        &h,
        &h.keyring(),
        term,
        &a(&["--recovery-key-file", rk, "open", "a.coffer", "-o", "out"]),
        "",
    );
    assert!(ok, "{out}");
    assert!(out.contains('%'), "no percentage: {out}");
    assert!(out.contains(&format!("into out ({sealed} bytes)")), "{out}");
    // Not on a terminal: the last line alone.
    let out = h
        .coffer()
        .args(["--recovery-key-file", rk, "verify", "a.coffer"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('%'), "{err}");
}
