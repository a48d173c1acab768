//! `coffer passphrase NAME` as the password command of the tools people
//! already back up with: Debian's real `restic` and `borg`, no mocks. A
//! repository keyed by coffer opens on a new machine from an archive and
//! the recovery key alone, and is re-keyed after `rotate` with `--from`.

// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(feature = "cli")]

mod common;

use common::Home;
use predicates::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coffer_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("coffer")
}

/// The password command for `name`: coffer unlocking `keyring` with the
/// recovery key file `key`, from the key of `from` when given.
fn password_command(home: &Home, name: &str, from: Option<&Path>) -> String {
    let mut c = format!(
        "{} --keyring {} passphrase {name} --recovery-key-file {}",
        coffer_bin().display(),
        home.keyring().display(),
        home.recovery_key().display()
    );
    if let Some(f) = from {
        c.push_str(&format!(" --from {}", f.display()));
    }
    c
}

/// Run a backup tool in `home` with a clean environment plus `env`.
fn tool(home: &Home, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.dir.path())
        .envs(env.iter().copied())
        .current_dir(home.dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} (Debian's {program}, hsm-sim/install-deps.sh installs it): {e}")
        })
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What `coffer passphrase` prints, with the recovery key.
fn passphrase(home: &Home, name: &str, from: Option<&Path>) -> String {
    let mut c = home.coffer();
    c.args(["passphrase", name, "--recovery-key-file"])
        .arg(home.recovery_key());
    if let Some(f) = from {
        c.arg("--from").arg(f);
    }
    let out = c.assert().success();
    if from.is_none() {
        assert!(out.get_output().stderr.is_empty(), "{:?}", out.get_output());
    }
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

fn data(home: &Home) -> PathBuf {
    let d = home.path("data");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("photo.jpg"), vec![42u8; 70_000]).unwrap();
    std::fs::write(d.join("sub/notes.txt"), "keep me\n").unwrap();
    d
}

/// An archive sealed now: on a new machine, it and the recovery key give
/// back the key (and every passphrase) with no keyring.
fn marker(home: &Home) -> PathBuf {
    home.coffer()
        .args(["seal", "-", "-o", "marker.coffer"])
        .write_stdin("marker\n")
        .assert()
        .success();
    home.path("marker.coffer")
}

/// The archive of the old key that `rotate` wrote beside the keyring.
fn retired_archive(home: &Home) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(home.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("retired-") && n.ends_with(".coffer"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(common::mode(&found[0]), 0o600);
    found[0].clone()
}

/// restic's keys, as (id, whether it is the one in use).
fn key_ids(list: &[u8]) -> Vec<(String, bool)> {
    String::from_utf8_lossy(list)
        .lines()
        .filter_map(|l| {
            let current = l.starts_with('*');
            let id = l.get(1..)?.split_whitespace().next()?;
            (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (id.to_owned(), current))
        })
        .collect()
}

/// docs/restic-borg.md's re-key recipe, run by `sh` as written there (with
/// the recovery key file `key` for the new passphrase).
fn rekey_restic(home: &Home, repo: &str, old: &str, key: &str) -> Output {
    let script = format!(
        r#"NEW=$(coffer passphrase restic:photos --recovery-key-file {key}) && [ ${{#NEW}} -eq 43 ] || {{ echo "no new passphrase" >&2; exit 1; }}
printf '%s' "$NEW" | RESTIC_PASSWORD_COMMAND="$OLD" restic --no-cache key add --new-password-file /dev/stdin"#
    );
    let bin_dir = coffer_bin().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.dir.path())
        .env("COFFER_KEYRING", home.keyring())
        .env("RESTIC_REPOSITORY", repo)
        .env("OLD", old)
        .current_dir(home.dir.path())
        .output()
        .unwrap()
}

#[test]
fn a_passphrase_is_43_characters_per_name_on_standard_output_only() {
    let h = Home::new();
    h.init();
    let a = passphrase(&h, "restic:photos", None);
    assert_eq!(a.len(), 44, "{a:?}");
    assert!(a.ends_with('\n'));
    assert!(
        a.trim_end()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_eq!(a, passphrase(&h, "restic:photos", None));
    assert_ne!(a, passphrase(&h, "borg:home", None));
    // The same from an archive of this key, with no keyring at all.
    let archive = marker(&h);
    std::fs::rename(h.keyring(), h.path("away.json")).unwrap();
    assert_eq!(a, passphrase(&h, "restic:photos", Some(&archive)));
    // Bad names are usage errors; without a factor, exit 5; nothing on
    // standard output either way.
    std::fs::rename(h.path("away.json"), h.keyring()).unwrap();
    for bad in ["", "two words", "é"] {
        h.coffer()
            .args(["passphrase", bad, "--recovery-key-file", "recovery.txt"])
            .assert()
            .code(2)
            .stdout("");
    }
    h.coffer()
        .args(["passphrase", "restic:photos"])
        .assert()
        .code(5)
        .stdout("");
    h.write("wrong.txt", &"0".repeat(64));
    h.coffer()
        .args([
            "passphrase",
            "restic:photos",
            "--recovery-key-file",
            "wrong.txt",
        ])
        .assert()
        .code(3)
        .stdout("");
}

#[test]
fn a_passphrase_is_never_printed_on_a_terminal_nor_by_a_seal_only_host() {
    let h = Home::new();
    h.init();
    let (ok, shown) = common::run_on_a_terminal(
        &h,
        &h.keyring(),
        std::iter::empty::<(&str, &str)>(),
        &[
            "passphrase".into(),
            "restic:photos".into(),
            "--recovery-key-file".into(),
            h.recovery_key().into(),
        ],
        "",
    );
    assert!(!ok, "{shown}");
    assert!(shown.contains("refusing"), "{shown}");
    let secret = passphrase(&h, "restic:photos", None);
    assert!(!shown.contains(secret.trim_end()), "{shown}");
    // A seal-only host has no key to derive it from.
    h.export_seal_only("nas", "host.json").assert().success();
    h.coffer()
        .args(["--keyring", "host.json", "passphrase", "restic:photos"])
        .assert()
        .code(5)
        .stdout("")
        .stderr(predicate::str::contains("seal-only"));
}

#[test]
fn restic_keyed_by_coffer_opens_on_a_new_machine_and_is_rekeyed_after_rotate() {
    let h = Home::new();
    h.init();
    let src = data(&h);
    let repo = h.path("restic-repo");
    let repo = repo.to_str().unwrap();
    let archive = marker(&h);
    let restic = |cmd: &str, args: &[&str]| {
        let mut a = vec!["--no-cache"];
        a.extend_from_slice(args);
        tool(
            &h,
            "restic",
            &a,
            &[
                ("RESTIC_REPOSITORY", repo),
                ("RESTIC_PASSWORD_COMMAND", cmd),
            ],
        )
    };
    let current = password_command(&h, "restic:photos", None);
    ok(restic(&current, &["init"]), "restic init");
    ok(
        restic(&current, &["backup", src.to_str().unwrap()]),
        "restic backup",
    );
    let out = h.path("restored");
    ok(
        restic(
            &current,
            &["restore", "latest", "--target", out.to_str().unwrap()],
        ),
        "restic restore",
    );
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(restored.join("photo.jpg")).unwrap(),
        vec![42u8; 70_000]
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("sub/notes.txt")).unwrap(),
        "keep me\n"
    );

    // A new machine: no keyring, the archive and the recovery key only.
    let laptop = Home::new();
    std::fs::copy(h.recovery_key(), laptop.recovery_key()).unwrap();
    let on_laptop = password_command(&laptop, "restic:photos", Some(&archive));
    let snaps = ok(
        restic(&on_laptop, &["snapshots", "--json"]),
        "restic on a new machine",
    );
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);

    // rotate: the derived passphrase changes, so the repository no longer
    // opens with the plain command...
    h.coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    assert!(!restic(&current, &["snapshots"]).status.success());
    // ...until it is re-keyed as docs/restic-borg.md says: the old
    // passphrase, from the archive of the old key that rotate left beside
    // the keyring, adds the new one, which then removes the old.
    let retired = retired_archive(&h);
    let old = password_command(&h, "restic:photos", Some(&retired));
    // With a factor that fails, the recipe's check stops it: no empty key.
    h.write("wrong.txt", &"0".repeat(64));
    let out = rekey_restic(&h, repo, &old, "wrong.txt");
    assert!(!out.status.success());
    let keys = ok(restic(&old, &["key", "list"]), "restic key list");
    assert_eq!(key_ids(&keys.stdout).len(), 1, "a key was added");
    ok(
        rekey_restic(&h, repo, &old, "recovery.txt"),
        "the re-key recipe",
    );
    let keys = ok(restic(&current, &["key", "list"]), "restic key list");
    let old_id = key_ids(&keys.stdout)
        .into_iter()
        .find_map(|(id, current)| (!current).then_some(id))
        .expect("the old key");
    ok(
        restic(&current, &["key", "remove", &old_id]),
        "restic key remove",
    );
    assert!(
        !restic(&old, &["snapshots"]).status.success(),
        "the old key still opens"
    );
    ok(
        restic(&current, &["snapshots"]),
        "restic with the new passphrase",
    );
}

#[test]
fn borg_keyed_by_coffer_opens_on_a_new_machine() {
    let h = Home::new();
    h.init();
    let src = data(&h);
    let repo = h.path("borg-repo");
    let repo = repo.to_str().unwrap();
    let archive = marker(&h);
    let base = h.path("borg-base");
    let borg = |cmd: &str, args: &[&str], cwd: &Path| {
        Command::new("borg")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h.dir.path())
            .env("BORG_BASE_DIR", &base)
            .env("BORG_PASSCOMMAND", cmd)
            .current_dir(cwd)
            .output()
            .expect("borg (Debian's borgbackup, hsm-sim/install-deps.sh installs it)")
    };
    let cmd = password_command(&h, "borg:home", None);
    let here = h.dir.path();
    ok(
        borg(&cmd, &["init", "--encryption=repokey-blake2", repo], here),
        "borg init",
    );
    ok(
        borg(&cmd, &["create", &format!("{repo}::first"), "data"], here),
        "borg create",
    );
    let list = ok(borg(&cmd, &["list", "--short", repo], here), "borg list");
    assert_eq!(String::from_utf8(list.stdout).unwrap().trim(), "first");
    let out = h.path("extracted");
    std::fs::create_dir(&out).unwrap();
    ok(
        borg(&cmd, &["extract", &format!("{repo}::first")], &out),
        "borg extract",
    );
    assert_eq!(
        std::fs::read(out.join("data/photo.jpg")).unwrap(),
        std::fs::read(src.join("photo.jpg")).unwrap()
    );
    // A new machine: the archive and the recovery key only.
    let laptop = Home::new();
    std::fs::copy(h.recovery_key(), laptop.recovery_key()).unwrap();
    let on_laptop = password_command(&laptop, "borg:home", Some(&archive));
    ok(
        borg(&on_laptop, &["list", repo], here),
        "borg on a new machine",
    );
    // Another name's passphrase does not open it.
    let other = password_command(&h, "borg:other", None);
    assert!(!borg(&other, &["list", repo], here).status.success());
    // rotate, then re-key as docs/restic-borg.md says.
    h.coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    assert!(!borg(&cmd, &["list", repo], here).status.success());
    let old = password_command(&h, "borg:home", Some(&retired_archive(&h)));
    let new = passphrase(&h, "borg:home", None);
    let new = new.trim_end();
    assert_eq!(new.len(), 43);
    let out = Command::new("borg")
        .args(["key", "change-passphrase", repo])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.dir.path())
        .env("BORG_BASE_DIR", &base)
        .env("BORG_PASSCOMMAND", &old)
        .env("BORG_NEW_PASSPHRASE", new)
        .output()
        .unwrap();
    ok(out, "borg key change-passphrase");
    ok(
        borg(&cmd, &["list", repo], here),
        "borg with the new passphrase",
    );
    assert!(!borg(&old, &["list", repo], here).status.success());
}

/// restic runs the password command with no factor file: coffer asks on
/// the terminal restic was started from, and the repository opens.
#[test]
fn restic_from_a_terminal_gets_the_factor_asked_there() {
    let h = Home::new();
    h.init();
    let repo = h.path("repo");
    let cmd = password_command(&h, "restic:tty", None);
    ok(
        tool(
            &h,
            "restic",
            &["--no-cache", "init"],
            &[
                ("RESTIC_REPOSITORY", repo.to_str().unwrap()),
                ("RESTIC_PASSWORD_COMMAND", &cmd),
            ],
        ),
        "restic init",
    );
    let no_file = format!(
        "{} --keyring {} passphrase restic:tty",
        coffer_bin().display(),
        h.keyring().display()
    );
    let line = format!(
        "RESTIC_REPOSITORY={} RESTIC_PASSWORD_COMMAND={} restic --no-cache snapshots",
        common::shell_quote(repo.as_os_str()),
        common::shell_quote(std::ffi::OsStr::new(&no_file))
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
}

/// `--from` derives only from an archive that authenticates, and, with the
/// owner's keyring at hand, only from a key that keyring knows: anyone who
/// can write the storage can make an archive under a key of their own.
#[test]
fn from_refuses_a_damaged_archive_and_one_of_a_key_the_keyring_does_not_know() {
    let h = Home::new();
    h.init();
    let mine = marker(&h);
    let stranger = Home::new();
    stranger.init();
    let theirs = marker(&stranger);
    // Their archive opens with their recovery key, but not here.
    std::fs::copy(stranger.recovery_key(), h.path("their-key.txt")).unwrap();
    h.coffer()
        .args([
            "passphrase",
            "restic:photos",
            "--recovery-key-file",
            "their-key.txt",
            "--from",
        ])
        .arg(&theirs)
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("neither holds"));
    // A damaged header (only the header is read): exit 4, nothing printed.
    let mut bytes = std::fs::read(&mine).unwrap();
    bytes[100] ^= 1;
    std::fs::write(h.path("damaged.coffer"), &bytes).unwrap();
    h.coffer()
        .args([
            "passphrase",
            "restic:photos",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .args(["--from", "damaged.coffer"])
        .assert()
        .code(4)
        .stdout("");
    // Its own: the key id it derived from is said on stderr.
    let kid = h.keyring_json()["key_id"].as_str().unwrap().to_owned();
    h.coffer()
        .args([
            "passphrase",
            "restic:photos",
            "--recovery-key-file",
            "recovery.txt",
            "--from",
        ])
        .arg(&mine)
        .assert()
        .success()
        .stderr(predicate::str::contains(&kid));
}
