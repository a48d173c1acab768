//! Write-only sealing (format version 2, docs/format.md §8): a host given
//! `coffer export --seal-only` seals unattended and can never open; no one
//! holding only the public key can forge an archive; rotation retires a
//! host's keyring; version 1 keyrings and archives keep working. The real
//! binary throughout, and archives forged from real ones.

// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(feature = "cli")]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use coffer::archive::header::{DEFAULT_CHUNK, Header};
use coffer::archive::stream::StreamWriter;
use coffer::key::BackupKey;
use coffer::keyring::KeyringFile;
use coffer::sealing::{Sealer, SealerId, SealerKey, SealingPublicKey};
use common::{Home, mode};
use predicates::prelude::*;
use std::io::Write;
use std::path::Path;

/// An owner with a recovery key and a password, and a host holding only
/// the owner's `export --seal-only --sealer nas-1` as its keyring.
fn owner_and_host() -> (Home, Home) {
    let owner = Home::new();
    owner.init();
    owner.enroll_password("correct horse");
    let host = Home::new();
    owner
        .export_seal_only("nas-1", host.keyring())
        .assert()
        .success()
        .stderr(predicate::str::contains("seals as `nas-1`"));
    (owner, host)
}

fn tree(home: &Home) -> std::path::PathBuf {
    let d = home.path("docs");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(d.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    d
}

#[test]
fn a_seal_only_host_seals_unattended_and_cannot_open() {
    let (owner, host) = owner_and_host();
    assert_eq!(mode(&host.keyring()), 0o600);
    let docs = tree(&host);
    // No factor, stdin closed, no TPM (the TCTI names nothing), no card.
    host.coffer()
        .args(["seal", "docs", "-o", "docs.coffer"])
        .env("TPM2TOOLS_TCTI", "swtpm:host=127.0.0.1,port=1")
        .write_stdin(Vec::<u8>::new())
        .assert()
        .success()
        .stderr(predicate::str::contains("sealer nas-1"));
    // Standard input sealed as a stream works the same.
    host.coffer()
        .args(["seal", "-", "-o", "stream.coffer"])
        .write_stdin("a log line\n")
        .assert()
        .success();
    // The host cannot open or verify what it sealed, nor change slots.
    for args in [
        vec!["open", "docs.coffer", "-o", "out"],
        vec!["verify", "docs.coffer"],
        vec!["open", "stream.coffer", "-o", "-"],
    ] {
        host.coffer()
            .args(&args)
            .write_stdin(Vec::<u8>::new())
            .assert()
            .code(5)
            .stderr(predicate::str::contains("seal-only"));
    }
    assert!(!host.path("out").exists());
    host.coffer()
        .args(["remove", "password"])
        .write_stdin(Vec::<u8>::new())
        .assert()
        .code(5)
        .stderr(predicate::str::contains("seal-only"));
    // The owner opens it, and is told which host sealed it.
    let archive = host.path("docs.coffer");
    owner
        .coffer()
        .arg("open")
        .arg(&archive)
        .args(["-o", "restored", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("sealed by host `nas-1`"));
    common::tree::assert_same(
        &docs,
        &owner.path("restored/docs"),
        common::tree::Ignore::default(),
    );
    // Nothing the host holds derives the key: every 32 bytes it could take
    // for a backup key (any window of every file, decoded base64 included)
    // fails to open the archive's header.
    let header = Header::read(&mut std::fs::File::open(&archive).unwrap()).unwrap();
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(host.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        candidates.push(bytes.clone());
        for word in bytes.split(|b| !(b.is_ascii_alphanumeric() || b"+/=".contains(b))) {
            if let Ok(d) = B64.decode(word) {
                candidates.push(d);
            }
        }
    }
    let mut tried = 0;
    for c in &candidates {
        for w in c.windows(32).take(4096) {
            let bk = BackupKey::from_bytes(w.try_into().unwrap());
            assert!(header.open(&bk).is_err(), "a host file derives the key");
            tried += 1;
        }
    }
    assert!(tried > 1000, "{tried}");
}

#[test]
fn seal_needs_no_factor_and_ignores_the_ones_given() {
    let h = Home::new();
    h.init();
    // A wrong recovery key and a password file: neither is read for sealing.
    h.write("wrong.txt", &"0".repeat(64));
    h.write("pw.txt", "not the password");
    h.coffer()
        .args(["seal", "-", "-o", "a.coffer"])
        .args([
            "--recovery-key-file",
            "wrong.txt",
            "--password-file",
            "pw.txt",
        ])
        .write_stdin("hello\n")
        .assert()
        .success();
    h.coffer()
        .args([
            "open",
            "a.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stdout("hello\n");
    h.coffer()
        .args(["verify", "a.coffer", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("sealed by the owner"));
}

#[test]
fn key_id_pins_the_key_a_scheduled_seal_uses() {
    let (owner, host) = owner_and_host();
    let kid = host.keyring_json()["key_id"].as_str().unwrap().to_owned();
    assert_eq!(kid, owner.keyring_json()["key_id"].as_str().unwrap());
    host.write("f", "x");
    host.coffer()
        .args([
            "seal",
            "f",
            "-o",
            "ok.coffer",
            "--key-id",
            &kid.to_uppercase(),
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains(&kid));
    // A keyring swapped for another owner's: refused, nothing written.
    let other = Home::new();
    other.init();
    std::fs::copy(other.keyring(), host.keyring()).unwrap();
    host.coffer()
        .args(["seal", "f", "-o", "swapped.coffer", "--key-id", &kid])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing sealed"));
    assert!(!host.path("swapped.coffer").exists());
    host.coffer()
        .args(["seal", "f", "-o", "x.coffer", "--key-id", "12"])
        .assert()
        .code(2);
}

/// An archive built by hand: `sealer` authenticates the header, the file
/// key is sealed to `pk`, the slots are a real header's.
fn forge(pk: &SealingPublicKey, sealer: &Sealer, slots_from: &Path, payload: &[u8]) -> Vec<u8> {
    let real = Header::read(&mut std::fs::File::open(slots_from).unwrap()).unwrap();
    assert!(real.is_sealed_to(pk));
    let (header, key) = Header::seal(sealer, 0, DEFAULT_CHUNK, real.slots.clone());
    let mut out = header.to_bytes();
    let mut w = StreamWriter::new(key, DEFAULT_CHUNK as usize, Vec::new()).unwrap();
    w.write_all(payload).unwrap();
    out.extend(w.finish().unwrap());
    out
}

#[test]
fn the_public_key_alone_forges_nothing_and_a_host_key_only_its_own_name() {
    let (owner, host) = owner_and_host();
    host.write("f", "genuine\n");
    host.coffer()
        .args(["seal", "f", "-o", "genuine.coffer"])
        .assert()
        .success();
    let genuine = host.path("genuine.coffer");
    let pk = {
        let v = host.keyring_json();
        let b = B64
            .decode(v["sealing_public_key"].as_str().unwrap())
            .unwrap();
        SealingPublicKey::from_bytes(&b).unwrap()
    };
    let host_key = {
        let v = host.keyring_json();
        let b = B64.decode(v["sealer"]["key"].as_str().unwrap()).unwrap();
        b.try_into().unwrap()
    };
    let open = |name: &str, bytes: &[u8]| {
        std::fs::write(owner.path(name), bytes).unwrap();
        owner
            .coffer()
            .args([
                "open",
                name,
                "-o",
                "-",
                "--recovery-key-file",
                "recovery.txt",
            ])
            .assert()
    };
    // Public key only: whatever sealer key the forger makes up, as owner
    // or as the host, the header does not authenticate.
    for (id, key) in [
        ("owner", [0u8; 32]),
        ("nas-1", [1u8; 32]),
        ("owner", host_key),
    ] {
        let guess = Sealer::from_parts(
            pk.clone(),
            SealerId::parse(id).unwrap(),
            SealerKey::from_bytes(key),
        );
        let forged = forge(&pk, &guess, &genuine, b"forged\n");
        open("forged.coffer", &forged)
            .code(4)
            .stdout("")
            .stderr(predicate::str::contains("does not authenticate"));
        owner
            .coffer()
            .args([
                "verify",
                "forged.coffer",
                "--recovery-key-file",
                "recovery.txt",
            ])
            .assert()
            .code(4);
    }
    // The host's own key: opens, and names the host (a compromised host
    // forges in its own name only, until `rotate`).
    let as_host = Sealer::from_parts(
        pk.clone(),
        SealerId::host("nas-1").unwrap(),
        SealerKey::from_bytes(host_key),
    );
    open(
        "host.coffer",
        &forge(&pk, &as_host, &genuine, b"from the host\n"),
    )
    .success()
    .stdout("from the host\n");
    owner
        .coffer()
        .args([
            "verify",
            "host.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("sealed by host `nas-1`"));
    // A genuine header whose sealer id is rewritten to `owner`: refused.
    let mut renamed = std::fs::read(&genuine).unwrap();
    let at = coffer::archive::header::FIXED_LEN + coffer::sealing::ENCAPSULATION_LEN;
    assert_eq!(&renamed[at + 1..at + 6], b"nas-1");
    renamed[at + 1..at + 6].copy_from_slice(b"owner");
    open("renamed.coffer", &renamed).code(4);
}

#[test]
fn rotation_retires_a_seal_only_keyring() {
    let (owner, host) = owner_and_host();
    host.coffer()
        .args(["seal", "-", "-o", "old.coffer"])
        .write_stdin("before\n")
        .assert()
        .success();
    let old_kid = host.keyring_json()["key_id"].as_str().unwrap().to_owned();
    owner
        .coffer()
        .args(["rotate", "--recovery-key-file", "recovery.txt"])
        .args(["--password-file", "new-password.txt"])
        .assert()
        .success()
        .stderr(predicate::str::contains("export them again"));
    let new_kid = owner.keyring_json()["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    // The old host keyring still seals, to the old key; `inspect` says so.
    host.coffer()
        .args(["seal", "-", "-o", "still-old.coffer"])
        .write_stdin("before\n")
        .assert()
        .success()
        .stderr(predicate::str::contains(&old_kid));
    host.coffer()
        .args(["inspect", "still-old.coffer"])
        .assert()
        .success()
        .stdout(predicate::str::contains(&old_kid));
    // Both open with the old factors (the recovery key kept its key, the
    // password is the same), through the slots they carry; both are
    // flagged as sealed to a key `rotate` retired (the second was sealed
    // after it, by a host still holding the old keyring).
    for name in ["old.coffer", "still-old.coffer"] {
        let p = host.path(name);
        owner
            .coffer()
            .arg("open")
            .arg(&p)
            .args(["-o", "-", "--password-file", "new-password.txt"])
            .assert()
            .success()
            .stdout("before\n")
            .stderr(predicate::str::contains("retired"));
    }
    // A fresh export seals to the new key.
    let fresh = Home::new();
    owner
        .export_seal_only("nas-1", fresh.keyring())
        .assert()
        .success();
    assert_eq!(fresh.keyring_json()["key_id"].as_str().unwrap(), new_kid);
    fresh
        .coffer()
        .args(["seal", "-", "-o", "new.coffer", "--key-id", &new_kid])
        .write_stdin("after\n")
        .assert()
        .success();
    owner
        .coffer()
        .arg("open")
        .arg(fresh.path("new.coffer"))
        .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stdout("after\n");
}

#[test]
fn export_refuses_owner_bad_ids_and_an_existing_file() {
    let h = Home::new();
    h.init();
    for id in ["owner", "Bad", "", &"a".repeat(33)] {
        h.export_seal_only(id, "h.json").assert().code(2);
    }
    h.write("h.json", "keep me");
    h.export_seal_only("nas", "h.json")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(h.path("h.json")).unwrap(),
        "keep me"
    );
    // A wrong factor: nothing written.
    h.write("wrong.txt", &"0".repeat(64));
    h.coffer()
        .args(["export", "--seal-only", "--sealer", "nas", "-o", "h2.json"])
        .args(["--recovery-key-file", "wrong.txt"])
        .assert()
        .code(3);
    assert!(!h.path("h2.json").exists());
}

#[cfg(feature = "pkcs11")]
#[test]
fn pq_only_leaves_classical_slot_copies_out() {
    let h = Home::new();
    h.init();
    // An ECDH slot enrolled from a public key alone (no token needed).
    std::fs::write(h.path("pub.pem"), p256_base_point()).unwrap();
    h.coffer()
        .args(["enroll", "pkcs11", "--module", "/nonexistent/module.so"])
        .args([
            "--uri",
            "pkcs11:token=t;object=o",
            "--public-key",
            "pub.pem",
        ])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    h.write("f", "x");
    let kinds = |name: &str| -> Vec<String> {
        let out = h
            .coffer()
            .args(["--json", "inspect", name])
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    h.coffer()
        .args(["seal", "f", "-o", "all.coffer"])
        .assert()
        .success();
    assert_eq!(kinds("all.coffer"), ["recovery", "pkcs11"]);
    h.coffer()
        .args(["seal", "f", "-o", "pq.coffer", "--pq-only"])
        .assert()
        .success();
    assert_eq!(kinds("pq.coffer"), ["recovery"]);
    // The keyring setting for a host: its keyring leaves them out.
    h.export_seal_only("nas", "host.json")
        .arg("--pq-only")
        .assert()
        .success()
        .stderr(predicate::str::contains("left out"));
    assert_eq!(kinds("host.json"), ["recovery"]);
}

#[test]
fn the_sealer_key_is_never_printed() {
    let (owner, host) = owner_and_host();
    for home in [&owner, &host] {
        let key = home.keyring_json()["sealer"]["key"]
            .as_str()
            .unwrap()
            .to_owned();
        host.write("f", "x");
        home.coffer()
            .args(["seal"])
            .arg(host.path("f"))
            .args(["-o", "s.coffer", "--force"])
            .assert()
            .success();
        for args in [
            vec!["slots"],
            vec!["--json", "slots"],
            vec!["inspect", "keyring.json"],
            vec!["--json", "inspect", "keyring.json"],
            vec!["inspect", "s.coffer"],
            vec!["--json", "inspect", "s.coffer"],
        ] {
            let out = home.coffer().args(&args).output().unwrap();
            let all = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&all);
            assert!(!text.contains(&key), "{args:?} printed the sealer key");
            let raw = B64.decode(&key).unwrap();
            assert!(!text.contains(&hex::encode(&raw)), "{args:?}");
        }
        home.coffer()
            .args(["inspect", "keyring.json"])
            .assert()
            .success()
            .stdout(predicate::str::contains("format version 2"));
    }
}

#[test]
fn a_version_1_keyring_seals_once_unlocked_and_is_upgraded() {
    let vectors = common::vectors();
    let h = Home::with_v1_vector_keyring();
    std::fs::copy(
        vectors.join("archive-v1-stream.coffer"),
        h.path("v1.coffer"),
    )
    .unwrap();
    h.coffer()
        .args(["inspect", "keyring.json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("format version 1"));
    h.write("f", "new\n");
    // Version 1 has no sealing key: without a factor, seal cannot.
    h.coffer()
        .args(["seal", "f", "-o", "a.coffer"])
        .write_stdin(Vec::<u8>::new())
        .assert()
        .code(5)
        .stderr(predicate::str::contains("version 1"));
    assert!(!h.path("a.coffer").exists());
    assert_eq!(h.keyring_json()["version"], 1);
    h.coffer()
        .args([
            "seal",
            "f",
            "-o",
            "a.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("upgraded"));
    let kr = h.keyring_json();
    assert_eq!(kr["version"], 2);
    assert_eq!(kr["v1_key_id"], "f2c9c09aa336883c2a67cb726e4b3633");
    assert_eq!(mode(&h.keyring()), 0o600);
    KeyringFile::new(h.keyring()).load().unwrap();
    // From now on: no factor to seal; new archives are version 2.
    h.coffer()
        .args(["seal", "-", "-o", "b.coffer"])
        .write_stdin("new\n")
        .assert()
        .success();
    h.coffer()
        .args(["inspect", "b.coffer"])
        .assert()
        .success()
        .stdout(predicate::str::contains("format version 2"));
    // The version 1 archive still opens, through the keyring (its v1 key
    // id matches), and so does the new one.
    h.coffer()
        .args([
            "-v",
            "open",
            "v1.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stdout("hello, coffer\n")
        .stderr(predicate::str::contains("another backup key").not());
    h.coffer()
        .args([
            "open",
            "b.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .success()
        .stdout("new\n");
}

#[test]
fn opening_a_version_1_archive_upgrades_a_version_1_keyring() {
    let vectors = common::vectors();
    let h = Home::with_v1_vector_keyring();
    h.coffer()
        .arg("open")
        .arg(vectors.join("archive-v1-stream.coffer"))
        .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stdout("hello, coffer\n");
    assert_eq!(h.keyring_json()["version"], 2);
    // A tampered version 1 keyring is not upgraded (its MAC is checked).
    let h2 = Home::new();
    let mut kr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors.join("keyring-v1.json")).unwrap()).unwrap();
    kr["slots"][0]["created"] = 5.into();
    h2.put_keyring_json(&kr);
    std::fs::copy(vectors.join("recovery-v1.txt"), h2.recovery_key()).unwrap();
    h2.coffer()
        .args([
            "seal",
            "-",
            "-o",
            "x.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .write_stdin("x")
        .assert()
        .code(4);
    assert_eq!(h2.keyring_json()["version"], 1);
    assert!(!h2.path("x.coffer").exists());
}

#[test]
fn a_host_keyring_made_of_another_key_is_caught_before_sealing() {
    // key_id must name the public key: an edited key id is refused (4)
    // before anything is sealed.
    let (_, host) = owner_and_host();
    let mut kr = host.keyring_json();
    kr["key_id"] = "00000000000000000000000000000000".into();
    host.put_keyring_json(&kr);
    host.write("f", "x");
    host.coffer()
        .args(["seal", "f", "-o", "a.coffer"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("key_id"));
    assert!(!host.path("a.coffer").exists());
}

#[test]
fn a_swapped_keyring_is_caught_by_the_next_open_or_verify() {
    let h = Home::new();
    h.init();
    h.coffer()
        .args(["seal", "-", "-o", "before-swap.coffer"])
        .write_stdin("before\n")
        .assert()
        .success();
    // Someone who can write the keyring swaps in another key's public key
    // (with its matching key id): seal cannot tell, having no factor...
    let other = Home::new();
    other.init();
    let theirs = other.keyring_json();
    let mut kr = h.keyring_json();
    kr["sealing_public_key"] = theirs["sealing_public_key"].clone();
    kr["key_id"] = theirs["key_id"].clone();
    h.put_keyring_json(&kr);
    h.coffer()
        .args(["seal", "-", "-o", "after-swap.coffer"])
        .write_stdin("to the attacker\n")
        .assert()
        .success();
    // ...but the owner's next open or verify, of any archive, is refused
    // naming the keyring: its own slots unwrap the owner's key, whose
    // sealing key is not the one it names.
    for cmd in [
        vec!["verify", "after-swap.coffer"],
        vec!["open", "after-swap.coffer", "-o", "-"],
        vec!["verify", "before-swap.coffer"],
        vec!["open", "before-swap.coffer", "-o", "-"],
    ] {
        h.coffer()
            .args(&cmd)
            .args(["--recovery-key-file", "recovery.txt"])
            .assert()
            .code(4)
            .stdout("")
            .stderr(predicate::str::contains("modified outside coffer"));
    }
}

#[test]
fn another_sealer_cannot_move_a_payload_under_its_own_header() {
    let (owner, host) = owner_and_host();
    owner
        .coffer()
        .args(["seal", "-", "-o", "owners.coffer"])
        .write_stdin("the owner's backup\n")
        .assert()
        .success();
    // The host keeps the owner's salt, encapsulation and payload, and
    // writes a header of its own (its sealer id, no slots but one, its MAC).
    let bytes = std::fs::read(owner.path("owners.coffer")).unwrap();
    let real = Header::read(&mut &bytes[..]).unwrap();
    let v = host.keyring_json();
    let host_key: [u8; 32] = B64
        .decode(v["sealer"]["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sealed = real.sealed.clone().unwrap();
    let id = b"nas-1";
    let mut raw = bytes[..coffer::archive::header::FIXED_LEN].to_vec();
    raw.extend_from_slice(sealed.encapsulation.as_bytes());
    raw.push(id.len() as u8);
    raw.extend_from_slice(id);
    let slots = serde_json::to_vec(&vec![real.slots[0].to_json()]).unwrap();
    raw[72..76].copy_from_slice(&(slots.len() as u32).to_be_bytes());
    raw.extend_from_slice(&slots);
    let mac_key = SealerKey::from_bytes(host_key).header_mac_key(&real.salt);
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(&*mac_key).unwrap();
    mac.update(&raw);
    let mut forged = raw;
    forged.extend_from_slice(&mac.finalize().into_bytes());
    forged.extend_from_slice(&bytes[real.encoded_len()..]);
    std::fs::write(owner.path("claimed.coffer"), &forged).unwrap();
    owner
        .coffer()
        .args([
            "open",
            "claimed.coffer",
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(4)
        .stdout("");
}

#[test]
fn export_never_writes_over_the_keyring_and_needs_a_sealer_id() {
    let h = Home::new();
    h.init();
    let before = std::fs::read(h.keyring()).unwrap();
    for out in ["keyring.json", "./keyring.json"] {
        h.export_seal_only("nas", out)
            .arg("--force")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("keyring itself"));
    }
    assert_eq!(std::fs::read(h.keyring()).unwrap(), before);
    h.coffer()
        .args(["export", "--seal-only", "-o", "h.json"])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--sealer"));
}

#[test]
fn a_damaged_v1_archive_does_not_upgrade_the_keyring() {
    let vectors = common::vectors();
    let h = Home::with_v1_vector_keyring();
    let mut bytes = std::fs::read(vectors.join("archive-v1-stream.coffer")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(h.path("damaged.coffer"), bytes).unwrap();
    h.coffer()
        .args([
            "verify",
            "damaged.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .assert()
        .code(4);
    assert_eq!(
        h.keyring_json()["version"],
        1,
        "upgraded on a failed verify"
    );
}

#[cfg(feature = "pkcs11")]
#[test]
fn export_leaves_out_a_token_slot_with_a_stored_pin_source() {
    let h = Home::new();
    h.init();
    std::fs::write(h.path("pub.pem"), p256_base_point()).unwrap();
    h.write("pin", "123456");
    let uri = format!(
        "pkcs11:token=t;object=o?pin-source={}",
        h.path("pin").display()
    );
    h.coffer()
        .args(["enroll", "pkcs11", "--module", "/nonexistent/module.so"])
        .args(["--uri", &uri, "--public-key", "pub.pem"])
        .args(["--recovery-key-file", "recovery.txt"])
        .assert()
        .success();
    h.export_seal_only("nas", "host.json")
        .assert()
        .success()
        .stderr(predicate::str::contains("no person present"));
    let kinds: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(h.path("host.json")).unwrap())
            .unwrap()["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(kinds, ["recovery"]);
}

/// The P-256 base point as a raw SEC1 public key: a valid key for slots
/// enrolled from a public key alone.
#[cfg(feature = "pkcs11")]
fn p256_base_point() -> Vec<u8> {
    hex::decode(concat!(
        "04",
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
    ))
    .unwrap()
}
