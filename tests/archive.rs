//! Archives through the real binary: round trips, tampering, traversal,
//! safe output. Every failure case also checks that nothing was left
//! behind: no output, no temp files.

// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(feature = "cli")]

mod common;

use coffer::archive::header::{DEFAULT_CHUNK, Header};
use coffer::archive::stream::TAG_LEN;
use common::{Home, listing};
use predicates::prelude::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

const CHUNK: usize = DEFAULT_CHUNK as usize;

fn home() -> Home {
    let h = Home::new();
    h.init();
    h
}

/// Seal `input` (as a stream) with the recovery key; return the archive bytes.
fn seal_stream(h: &Home, input: &[u8], name: &str) -> Vec<u8> {
    h.seal_stream(input, name)
}

fn open_stream(h: &Home, archive: &str) -> assert_cmd::assert::Assert {
    h.coffer()
        .args([
            "open",
            archive,
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
}

#[test]
fn stream_round_trips_at_every_interesting_size() {
    let h = home();
    for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 5 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let ct = seal_stream(&h, &data, "s.coffer");
        let header_len = Header::read(&mut &ct[..]).unwrap().encoded_len();
        let chunks = len.div_ceil(CHUNK).max(1);
        assert_eq!(
            ct.len(),
            header_len + len + chunks * TAG_LEN,
            "size for {len}"
        );
        let out = open_stream(&h, "s.coffer").success();
        assert!(out.get_output().stdout == data, "content for {len}");
        std::fs::remove_file(h.path("s.coffer")).unwrap();
    }
}

#[test]
fn stream_opens_into_a_file_and_with_compression() {
    let h = home();
    let data = b"hello hello hello hello hello hello".repeat(1000);
    h.coffer()
        .args([
            "seal",
            "-",
            "-o",
            "z.coffer",
            "--compress",
            "zstd",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .write_stdin(data.clone())
        .assert()
        .success();
    assert!(std::fs::metadata(h.path("z.coffer")).unwrap().len() < 2000);
    h.coffer()
        .args([
            "open",
            "z.coffer",
            "-o",
            "plain.bin",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read(h.path("plain.bin")).unwrap(), data);
}

/// A folder with the oddities a backup meets.
fn odd_folder(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(root.join("sub/deeper/b.bin"), vec![0xabu8; 200_000]).unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"non-utf8-\xff\xfe")),
        "x",
    )
    .unwrap();
    std::fs::write(root.join("space and ünïcode"), "u").unwrap();
    std::fs::write(root.join(format!("{}.txt", "long".repeat(60))), "long name").unwrap();
    symlink("a.txt", root.join("link-to-a")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(
        root.join("sub/deeper"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::open(root.join("a.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Every entry under `root`: relative path, type, mode, mtime, content or
/// link target.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.mode() & 0o777)
            } else {
                format!(
                    "file {:o} {} {:x?}",
                    m.mode() & 0o777,
                    m.mtime(),
                    &std::fs::read(&p).unwrap()[..1]
                )
            };
            out.push(format!("{rel}: {what}"));
        }
    }
    out.sort();
    out
}

#[test]
fn folders_round_trip_with_their_oddities() {
    let h = home();
    let src = h.path("data");
    odd_folder(&src);
    std::fs::write(h.path("single.txt"), "one file").unwrap();
    for compress in ["none", "zstd"] {
        let _ = std::fs::remove_file(h.path("f.coffer"));
        h.coffer()
            .args([
                "seal",
                "data",
                "single.txt",
                "-o",
                "f.coffer",
                "--compress",
                compress,
            ])
            .args(["--recovery-key-file", "recovery.txt"])
            .assert()
            .success();
        let out = h.path(format!("restored-{compress}").as_str());
        h.coffer()
            .args(["open", "f.coffer", "-o"])
            .arg(&out)
            .args(["--recovery-key-file", "recovery.txt"])
            .assert()
            .success();
        assert_eq!(describe(&out.join("data")), describe(&src), "{compress}");
        assert_eq!(
            std::fs::read_to_string(out.join("single.txt")).unwrap(),
            "one file"
        );
    }
    // Restore write permission so the temp dir can be removed.
    std::fs::set_permissions(
        src.join("sub/deeper"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for c in ["none", "zstd"] {
        let d = h.path(&format!("restored-{c}/data/sub/deeper"));
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn open_works_with_only_the_archive_and_the_recovery_key() {
    let h = home();
    std::fs::write(h.path("note.txt"), "keep").unwrap();
    h.coffer()
        .args([
            "seal",
            "note.txt",
            "-o",
            "n.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    // A new laptop: no keyring, just the archive and the written-down key.
    let laptop = Home::new();
    std::fs::copy(h.path("n.coffer"), laptop.path("n.coffer")).unwrap();
    std::fs::copy(h.recovery_key(), laptop.recovery_key()).unwrap();
    laptop
        .coffer()
        .args([
            "open",
            "n.coffer",
            "-o",
            "out",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(laptop.path("out/note.txt")).unwrap(),
        "keep"
    );
    assert!(!laptop.keyring().exists());
}

#[test]
fn a_slot_enrolled_after_sealing_opens_older_archives() {
    let h = home();
    let ct = seal_stream(&h, b"old backup", "old.coffer");
    assert!(!ct.is_empty());
    h.enroll_password("new password");
    let pw = h.write("pw.txt", "new password");
    h.coffer()
        .args(["open", "old.coffer", "-o", "-", "--password-file"])
        .arg(&pw)
        .assert()
        .success()
        .stdout("old backup");
}

#[test]
fn verify_and_inspect() {
    let h = home();
    seal_stream(&h, &vec![5u8; 100_000], "v.coffer");
    h.coffer()
        .args(["verify", "v.coffer", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("100000 bytes"));
    let out = h
        .coffer()
        .args(["inspect", "v.coffer", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["content"], "stream");
    assert_eq!(v["chunk_size"], 65536);
    assert_eq!(v["slots"][0]["kind"], "recovery");
    assert_eq!(v["key_id"], h.keyring_json()["key_id"]);
    // inspect needs no factor and writes nothing.
    let before = listing(h.dir.path());
    h.coffer().args(["inspect", "v.coffer"]).assert().success();
    assert_eq!(listing(h.dir.path()), before);
}

/// Open `bytes` as an archive and expect `code`, with nothing left behind;
/// `verify` must refuse it too.
fn expect_refused(h: &Home, bytes: &[u8], code: i32, why: &str) {
    expect_open_refused(h, bytes, code, why);
    let o = h
        .coffer()
        .args([
            "verify",
            "bad.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{why}: verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Open `bytes` as an archive and expect `code`, with nothing left behind.
fn expect_open_refused(h: &Home, bytes: &[u8], code: i32, why: &str) {
    std::fs::write(h.path("bad.coffer"), bytes).unwrap();
    let before = listing(h.dir.path());
    h.coffer()
        .args([
            "open",
            "bad.coffer",
            "-o",
            "restored",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(code);
    assert_eq!(listing(h.dir.path()), before, "{why}: output left behind");
}

#[test]
fn tampering_is_detected_and_leaves_nothing() {
    let h = home();
    let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| i as u8).collect();
    let ct = seal_stream(&h, &data, "t.coffer");
    let hl = Header::read(&mut &ct[..]).unwrap().encoded_len();
    let full = CHUNK + TAG_LEN;
    // Truncation at every chunk boundary and inside chunks and header.
    let mut cuts = vec![0, 8, hl - 1, hl, hl + 1, hl + full / 2, ct.len() - 1];
    cuts.extend((1..=3).map(|i| hl + i * full));
    for cut in cuts {
        expect_refused(&h, &ct[..cut], 4, &format!("cut at {cut}"));
    }
    // A flipped bit in the header and in each chunk.
    let mut flips = vec![0, 9, 20, 40, 70, hl - 33, hl - 1];
    flips.extend((0..4).map(|i| hl + i * full + 5));
    flips.push(ct.len() - 1);
    for at in flips {
        let mut bad = ct.clone();
        bad[at] ^= 0x04;
        expect_refused(&h, &bad, 4, &format!("flip at {at}"));
    }
    // Two chunks swapped.
    let mut swapped = ct.clone();
    swapped[hl..hl + full].copy_from_slice(&ct[hl + full..hl + 2 * full]);
    swapped[hl + full..hl + 2 * full].copy_from_slice(&ct[hl..hl + full]);
    expect_refused(&h, &swapped, 4, "swapped");
    // Trailing garbage.
    let mut longer = ct.clone();
    longer.extend_from_slice(b"garbage");
    expect_refused(&h, &longer, 4, "trailing");
}

#[test]
fn tampered_folder_archive_leaves_no_folder() {
    let h = home();
    odd_folder(&h.path("data"));
    h.coffer()
        .args([
            "seal",
            "data",
            "-o",
            "f.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    std::fs::set_permissions(
        h.path("data/sub/deeper"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let ct = std::fs::read(h.path("f.coffer")).unwrap();
    // Damage the last chunk: every earlier chunk is fine and unpacks, but
    // the folder must not appear.
    let mut bad = ct.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    expect_refused(&h, &bad, 4, "last chunk");
    expect_refused(&h, &ct[..ct.len() - 20], 4, "truncated");
}

#[test]
fn wrong_factor_exits_3_and_writes_nothing() {
    let h = home();
    seal_stream(&h, b"secret", "w.coffer");
    let other = Home::new();
    other.init();
    let before = listing(h.dir.path());
    h.coffer()
        .args(["open", "w.coffer", "-o", "out", "--recovery-key-file"])
        .arg(other.recovery_key())
        .assert()
        .code(3);
    assert_eq!(listing(h.dir.path()), before);
}

#[test]
fn existing_targets_are_not_overwritten_without_force() {
    let h = home();
    seal_stream(&h, b"new", "a.coffer");
    std::fs::write(h.path("plain"), "old").unwrap();
    h.coffer()
        .args([
            "open",
            "a.coffer",
            "-o",
            "plain",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--force"));
    assert_eq!(std::fs::read_to_string(h.path("plain")).unwrap(), "old");
    h.coffer()
        .args([
            "open",
            "a.coffer",
            "-o",
            "plain",
            "--force",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(h.path("plain")).unwrap(), "new");
    // Sealing over an existing archive too.
    h.coffer()
        .args([
            "seal",
            "-",
            "-o",
            "a.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .write_stdin("x")
        .assert()
        .code(1);
    // And a folder target.
    std::fs::write(h.path("f.txt"), "f").unwrap();
    h.coffer()
        .args([
            "seal",
            "f.txt",
            "-o",
            "f.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    std::fs::create_dir(h.path("dir")).unwrap();
    std::fs::write(h.path("dir/keep"), "k").unwrap();
    h.coffer()
        .args([
            "open",
            "f.coffer",
            "-o",
            "dir",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(1);
    assert!(h.path("dir/keep").exists());
    h.coffer()
        .args([
            "open",
            "f.coffer",
            "-o",
            "dir",
            "--force",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success();
    assert!(!h.path("dir/keep").exists());
    assert!(h.path("dir/f.txt").exists());
    assert_eq!(
        listing(h.dir.path())
            .iter()
            .filter(|n| n.contains("tmp") || n.contains("replaced"))
            .count(),
        0
    );
}

fn craft_tar_archive(h: &Home, tar_bytes: &[u8]) -> Vec<u8> {
    h.seal_tar_payload(tar_bytes)
}

fn raw_tar(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut hd = tar::Header::new_gnu();
        hd.set_entry_type(*kind);
        hd.set_size(if kind.is_file() { 4 } else { 0 });
        hd.set_mode(0o644);
        let name = hd.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            hd.set_link_name(l).unwrap();
        }
        hd.set_cksum();
        let body: &[u8] = if kind.is_file() { b"evil" } else { b"" };
        b.append(&hd, body).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn traversal_archives_are_refused() {
    use tar::EntryType::{Regular, Symlink};
    let h = home();
    let outside = tempfile::tempdir().unwrap();
    let out_str = outside.path().to_str().unwrap().to_owned();
    let abs = format!("{out_str}/abs");
    let cases: Vec<Vec<(&str, tar::EntryType, Option<&str>)>> = vec![
        vec![("../escape", Regular, None)],
        vec![("ok/../../escape", Regular, None)],
        vec![(&abs, Regular, None)],
        vec![
            ("link", Symlink, Some(&out_str)),
            ("link/through", Regular, None),
        ],
        vec![
            ("d/link", Symlink, Some("..")),
            ("d/link/up", Regular, None),
        ],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let ct = craft_tar_archive(&h, &raw_tar(entries));
        // The bytes authenticate, but neither open nor verify takes them.
        expect_refused(&h, &ct, 4, &format!("traversal case {i}"));
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "case {i} escaped"
        );
        assert!(!h.path("escape").exists());
        assert!(!h.dir.path().parent().unwrap().join("escape").exists());
    }
}

#[test]
fn a_killed_seal_leaves_nothing_at_the_target() {
    let h = home();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"))
        .env_clear()
        .env("COFFER_KEYRING", h.keyring())
        .current_dir(h.dir.path())
        .args([
            "seal",
            "-",
            "-o",
            "killed.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..64 {
        stdin.write_all(&[7u8; 65536]).unwrap();
    }
    stdin.flush().unwrap();
    // Wait until the temp file has received data, then kill mid-way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !listing(h.dir.path())
        .iter()
        .any(|n| n.starts_with("killed.coffer.tmp-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "seal never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(stdin);
    assert!(!h.path("killed.coffer").exists());
}

#[test]
fn seal_refuses_to_write_to_a_missing_path_and_says_which() {
    let h = home();
    h.coffer()
        .args([
            "seal",
            "nope",
            "-o",
            "x.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nope"));
    assert!(!h.path("x.coffer").exists());
}

#[test]
fn not_an_archive_is_corrupt() {
    let h = home();
    h.write(
        "junk.coffer",
        "this is not an archive at all, just text that is long enough",
    );
    h.coffer()
        .args(["inspect", "junk.coffer"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("not a coffer archive"));
}

/// An OpenSSL whose configuration allows only FIPS algorithms (as on a
/// host in FIPS mode) has no ChaCha20-Poly1305: `seal` and `open` say so
/// and exit 1, and leave no archive or output behind (the keyring's lock
/// file stays, as it always does).
#[test]
fn an_openssl_without_chacha20_poly1305_is_a_clear_error_and_writes_nothing() {
    let h = Home::new();
    h.init();
    let conf = h.write(
        "fips-only.cnf",
        "openssl_conf = init\n[init]\nalg_section = algs\n[algs]\ndefault_properties = fips=yes\n",
    );
    let data = h.write("data.txt", "some data");
    let said = "the system's OpenSSL: cannot use ChaCha20-Poly1305";
    h.coffer()
        .env("OPENSSL_CONF", &conf)
        .args(["seal", "data.txt", "-o", "a.coffer"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(said));
    // Standard output is written in place: not even the header reaches it.
    h.coffer()
        .env("OPENSSL_CONF", &conf)
        .args(["seal", "data.txt", "-o", "-"])
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(said));
    assert_eq!(
        listing(h.dir.path()),
        [
            "data.txt",
            "fips-only.cnf",
            "keyring.json",
            "keyring.json.lock",
            "recovery.txt"
        ]
    );
    h.coffer()
        .arg("seal")
        .arg(&data)
        .args(["-o", "a.coffer"])
        .assert()
        .success();
    h.coffer()
        .env("OPENSSL_CONF", &conf)
        .args(["open", "a.coffer", "-o", "out", "--recovery-key-file"])
        .arg(h.recovery_key())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(said));
    assert!(!h.path("out").exists());
    assert_eq!(
        listing(h.dir.path()),
        [
            "a.coffer",
            "data.txt",
            "fips-only.cnf",
            "keyring.json",
            "keyring.json.lock",
            "recovery.txt"
        ]
    );
}
