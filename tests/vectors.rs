//! Known-answer vectors (docs/format.md) and the archive testkit.
//!
//! The keyring and archive vectors are built from fixed inputs and must
//! match the files in tests/vectors/ byte for byte: a change to the format
//! or to a derivation fails here. The testkit (tests/testdata/archives/)
//! holds archives made by this version, one file per case with the expected
//! outcome beside it, so every later version must still open them.
//!
//! `cargo test --test vectors -- --ignored regenerate` rewrites them; only
//! ever do that for a new format version.

#[cfg(feature = "cli")] // the `coffer` binary, for the testkit
mod common;

use coffer::archive::header::Header;
#[cfg(feature = "cli")]
use coffer::archive::header::{FLAG_TAR, FLAG_ZSTD};
use coffer::archive::stream::StreamWriter;
use coffer::key::{BackupKey, Kek};
use coffer::keyring::Keyring;
use coffer::sealing::Sealer;
#[cfg(feature = "cli")]
use coffer::sealing::{SealerId, SealerKey};
use coffer::slot::recovery::RecoveryKey;
use coffer::slot::{SlotId, SlotParams, SlotRecord, recovery::RecoveryParams};
#[cfg(feature = "cli")]
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[cfg(feature = "cli")] // runs the `coffer` binary
fn testkit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/archives")
}

/// BK = 00 01 .. 1f; recovery entropy = 00 01 .. 1d.
fn vector_key() -> BackupKey {
    BackupKey::from_bytes(core::array::from_fn(|i| i as u8))
}

fn vector_recovery() -> RecoveryKey {
    RecoveryKey::from_entropy(&core::array::from_fn(|i| i as u8))
}

fn vector_keyring() -> Keyring {
    let bk = vector_key();
    let slot = SlotRecord {
        id: SlotId::parse("00000001").unwrap(),
        label: None,
        created: 1_700_000_000,
        wrapped: bk.wrap(&vector_recovery().kek()),
        params: SlotParams::Recovery(RecoveryParams {}),
        member: None,
    };
    Keyring::v1(&bk, vec![slot])
}

fn seal_with(bk: &BackupKey, flags: u16, chunk: u32, salt: u8, payload: &[u8]) -> Vec<u8> {
    seal_with_slots(bk, vector_keyring().slots, flags, chunk, salt, payload)
}

fn seal_with_slots(
    bk: &BackupKey,
    slots: Vec<SlotRecord>,
    flags: u16,
    chunk: u32,
    salt: u8,
    payload: &[u8],
) -> Vec<u8> {
    let (header, payload_key) =
        Header::v1_with_salt(bk, flags, chunk, slots, [salt; 32], 1_700_000_000);
    archive_bytes(&header, payload_key, chunk, payload)
}

/// An archive: `header`, then `payload` sealed under `key` in chunks of
/// `chunk` bytes.
fn archive_bytes(
    header: &Header,
    key: coffer::archive::stream::PayloadKey,
    chunk: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = header.to_bytes();
    let mut w = StreamWriter::new(key, chunk as usize, Vec::new()).unwrap();
    w.write_all(payload).unwrap();
    out.extend(w.finish().unwrap());
    out
}

/// The keyring file `name` in tests/vectors/ is `built`, byte for byte,
/// and verifies under the vector key.
fn keyring_file_is(name: &str, built: &Keyring) {
    let want = std::fs::read(vectors().join(name)).unwrap();
    assert_eq!(
        String::from_utf8(built.to_bytes()).unwrap(),
        String::from_utf8(want.clone()).unwrap(),
        "{name}"
    );
    Keyring::parse(&want, Path::new(name))
        .unwrap()
        .verify(&vector_key(), Path::new(name))
        .unwrap();
}

/// `folder/hello.txt` (6 bytes) as a ustar stream: the testkit's folder.
#[cfg(feature = "cli")] // the testkit
fn folder_tar() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_ustar();
    hd.set_path("folder/hello.txt").unwrap();
    hd.set_size(6);
    hd.set_mode(0o644);
    hd.set_mtime(1_700_000_000);
    hd.set_cksum();
    tar.append(&hd, &b"hello\n"[..]).unwrap();
    tar.into_inner().unwrap()
}

fn stream_vector() -> Vec<u8> {
    seal_with(&vector_key(), 0, 4096, 0x11, b"hello, coffer\n")
}

#[test]
fn keyring_vector_matches_the_spec() {
    keyring_file_is("keyring-v1.json", &vector_keyring());
    let want = std::fs::read(vectors().join("keyring-v1.json")).unwrap();
    let parsed = Keyring::parse(&want, Path::new("keyring-v1.json")).unwrap();
    let key_text = std::fs::read_to_string(vectors().join("recovery-v1.txt")).unwrap();
    assert_eq!(key_text.trim(), vector_recovery().display().as_str());
    let kek = RecoveryKey::parse(&key_text).unwrap().kek();
    assert_eq!(
        parsed.slots[0].wrapped.unwrap(&kek).unwrap().expose(),
        vector_key().expose()
    );
}

#[test]
fn derived_values_match_the_spec() {
    // The numbers docs/format.md quotes for the vector key.
    let bk = vector_key();
    let kek: Kek = vector_recovery().kek();
    let text = std::fs::read_to_string(vectors().join("derived-v1.txt")).unwrap();
    let want = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_owned()
    };
    assert_eq!(bk.key_id_v1().to_string(), want("key id"));
    assert_eq!(hex::encode(kek.expose()), want("recovery kek"));
    assert_eq!(hex::encode(bk.wrap(&kek).0), want("wrapped"));
}

#[test]
fn archive_vector_matches_the_spec() {
    let want = std::fs::read(vectors().join("archive-v1-stream.coffer")).unwrap();
    assert_eq!(hex::encode(stream_vector()), hex::encode(&want));
}

#[cfg(feature = "cli")] // runs the `coffer` binary
#[test]
fn archive_vector_opens_with_the_recovery_key() {
    let h = common::Home::new();
    std::fs::copy(vectors().join("recovery-v1.txt"), h.recovery_key()).unwrap();
    h.coffer()
        .arg("open")
        .arg(vectors().join("archive-v1-stream.coffer"))
        .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
        .assert()
        .success()
        .stdout("hello, coffer\n");
}

/// The testkit cases: name, and how to make the archive bytes.
#[cfg(feature = "cli")] // runs the `coffer` binary
fn testkit_cases() -> Vec<(&'static str, Vec<u8>)> {
    let bk = vector_key();
    let three_chunks: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let tar = folder_tar();
    let zstd_tar = zstd::encode_all(&tar[..], 3).unwrap();

    let good = seal_with(&bk, 0, 4096, 0x22, &three_chunks);
    let mut cases = vec![
        ("stream-empty", seal_with(&bk, 0, 4096, 0x21, b"")),
        ("stream-three-chunks", good.clone()),
        (
            "stream-exact-chunk",
            seal_with(&bk, 0, 4096, 0x23, &[9u8; 4096]),
        ),
        ("folder", seal_with(&bk, FLAG_TAR, 4096, 0x24, &tar)),
        (
            "folder-zstd",
            seal_with(&bk, FLAG_TAR | FLAG_ZSTD, 4096, 0x25, &zstd_tar),
        ),
    ];
    let hl = Header::read(&mut &good[..]).unwrap().encoded_len();
    let mut flip = good.clone();
    flip[hl - 10] ^= 1;
    cases.push(("bad-header-mac", flip));
    let mut flip = good.clone();
    flip[40] ^= 1; // inside the salt
    cases.push(("bad-header-salt", flip));
    // A damaged wrapped key in the slot copy reads as a wrong factor: no
    // check can tell the two apart before the key is recovered.
    let mut flip = good.clone();
    flip[hl - 40] ^= 1;
    cases.push(("damaged-slot", flip));
    let mut flip = good.clone();
    flip[hl + 4096 + 16 + 3] ^= 0x80;
    cases.push(("bad-chunk", flip));
    cases.push(("truncated-last-chunk", good[..good.len() - 10].to_vec()));
    cases.push((
        "truncated-at-boundary",
        good[..hl + 2 * (4096 + 16)].to_vec(),
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0u8; 16]);
    cases.push(("trailing-data", trailing));
    // Sealed under another backup key, with that key's own recovery slot:
    // our recovery key is the wrong factor.
    let other = BackupKey::from_bytes([0xee; 32]);
    let other_slot = SlotRecord {
        id: SlotId::parse("00000002").unwrap(),
        label: None,
        created: 1_700_000_000,
        wrapped: other.wrap(&RecoveryKey::from_entropy(&[0xdd; 30]).kek()),
        params: SlotParams::Recovery(RecoveryParams {}),
        member: None,
    };
    cases.push((
        "other-key",
        seal_with_slots(&other, vec![other_slot], 0, 4096, 0x26, b"not yours"),
    ));
    // Our slots, but a header naming (and MACed under) another key: the
    // slots unwrap a key whose id does not match.
    cases.push(("swapped-key", seal_with(&other, 0, 4096, 0x27, b"swapped")));
    let mut version = good.clone();
    version[9] = 3;
    cases.push(("unknown-version", version));
    cases
}

/// The recovery slot of the vectors, with a label (version 2 only).
fn vector_slot_v2() -> SlotRecord {
    let mut slot = vector_keyring().slots.remove(0);
    slot.label = Some(coffer::slot::Label::parse("paper").unwrap());
    slot
}

/// The version 2 keyring of the vector key: one labelled recovery slot.
fn vector_keyring_v2() -> Keyring {
    Keyring::new(&vector_key(), vec![vector_slot_v2()])
}

/// The version 1 vector keyring after coffer upgraded it.
fn vector_keyring_upgraded() -> Keyring {
    let mut k = vector_keyring();
    assert!(k.upgrade(&vector_key()));
    k
}

/// A version 2 archive of the vector key, sealed by `sealer` with salt
/// `salt` × 32, encapsulation randomness `eseed` × 64 and the v2 slot.
fn seal_v2(sealer: &Sealer, flags: u16, salt: u8, eseed: u8, payload: &[u8]) -> Vec<u8> {
    seal_v2_slots(sealer, vec![vector_slot_v2()], flags, salt, eseed, payload)
}

fn seal_v2_slots(
    sealer: &Sealer,
    slots: Vec<SlotRecord>,
    flags: u16,
    salt: u8,
    eseed: u8,
    payload: &[u8],
) -> Vec<u8> {
    let (header, key) = Header::seal_with(
        sealer,
        flags,
        4096,
        slots,
        [salt; 32],
        1_700_000_000,
        [eseed; 64],
    );
    archive_bytes(&header, key, 4096, payload)
}

/// `hello, coffer\n` sealed by the owner: salt `33` × 32, randomness
/// `22` × 64 (those of tests/vectors/sealing-v2.txt).
fn stream_vector_v2() -> Vec<u8> {
    seal_v2(
        &Sealer::owner(&vector_key()),
        0,
        0x33,
        0x22,
        b"hello, coffer\n",
    )
}

/// The recovery key of the threshold vector's member at `x` (1 to 3):
/// entropy `11`, `22` or `33` × 30.
fn threshold_member_key(x: u8) -> RecoveryKey {
    RecoveryKey::from_entropy(&[0x11 * x; 30])
}

/// docs/format.md §10.5: the vector key's group `a1b2c3d4` ("two-of-three",
/// need 2, next_x 4) with three recovery members, ids `000000b1`–`000000b3`
/// at x 1–3, all created at 1700000000.
fn vector_group_slots() -> Vec<SlotRecord> {
    use coffer::slot::threshold::{self, ThresholdParams};
    let bk = vector_key();
    let blank = coffer::key::WrappedKey([0; 40]);
    let group_id = SlotId::parse("a1b2c3d4").unwrap();
    let mut slots = vec![SlotRecord {
        id: group_id.clone(),
        label: Some(coffer::slot::Label::parse("two-of-three").unwrap()),
        created: 1_700_000_000,
        wrapped: blank.clone(),
        params: SlotParams::Threshold(ThresholdParams { need: 2, next_x: 4 }),
        member: None,
    }];
    for x in 1..=3u8 {
        slots.push(SlotRecord {
            id: SlotId::parse(&format!("000000b{x}")).unwrap(),
            label: None,
            created: 1_700_000_000,
            wrapped: blank.clone(),
            params: SlotParams::Recovery(RecoveryParams {}),
            member: Some(coffer::slot::Membership {
                group: group_id.clone(),
                x,
            }),
        });
    }
    slots[0].wrapped = threshold::rewrapped(&slots, 0, &bk).unwrap();
    for x in 1..=3u8 {
        let i = usize::from(x);
        slots[i].wrapped = threshold::target_of(&slots, i, &bk)
            .unwrap()
            .wrap(&threshold_member_key(x).kek());
    }
    slots
}

/// `hello, coffer\n` sealed by the owner with the group as its only slot:
/// salt `34` × 32, randomness `23` × 64.
fn threshold_archive_vector() -> Vec<u8> {
    seal_v2_slots(
        &Sealer::owner(&vector_key()),
        vector_group_slots(),
        0,
        0x34,
        0x23,
        b"hello, coffer\n",
    )
}

/// The recovery key of member `n` (1 to 3) of the nested threshold vector:
/// entropy `44`, `55` or `66` × 30.
fn nested_member_key(n: u8) -> RecoveryKey {
    RecoveryKey::from_entropy(&[0x33 + 0x11 * n; 30])
}

/// docs/format.md §10.5, the second vector: group `b0b1b2b3` ("all-three",
/// need 3, next_x 256) with a recovery member `000000c5` at x 5, one
/// `000000c6` at x 130, and at x 255 the group `c0c1c2c3` (need 1, next_x 2)
/// whose one member is the recovery slot `000000c7` at x 1. All created at
/// 1700000000.
fn nested_group_slots() -> Vec<SlotRecord> {
    use coffer::slot::threshold::{self, ThresholdParams};
    let bk = vector_key();
    let blank = coffer::key::WrappedKey([0; 40]);
    let outer = SlotId::parse("b0b1b2b3").unwrap();
    let inner = SlotId::parse("c0c1c2c3").unwrap();
    let slot = |id: &str, params, member: Option<(&SlotId, u8)>| SlotRecord {
        id: SlotId::parse(id).unwrap(),
        label: None,
        created: 1_700_000_000,
        wrapped: blank.clone(),
        params,
        member: member.map(|(g, x)| coffer::slot::Membership {
            group: g.clone(),
            x,
        }),
    };
    let recovery = || SlotParams::Recovery(RecoveryParams {});
    let mut slots = vec![
        slot(
            "b0b1b2b3",
            SlotParams::Threshold(ThresholdParams {
                need: 3,
                next_x: 256,
            }),
            None,
        ),
        slot("000000c5", recovery(), Some((&outer, 5))),
        slot("000000c6", recovery(), Some((&outer, 130))),
        slot(
            "c0c1c2c3",
            SlotParams::Threshold(ThresholdParams { need: 1, next_x: 2 }),
            Some((&outer, 255)),
        ),
        slot("000000c7", recovery(), Some((&inner, 1))),
    ];
    slots[0].label = Some(coffer::slot::Label::parse("all-three").unwrap());
    for g in [0, 3] {
        slots[g].wrapped = threshold::rewrapped(&slots, g, &bk).unwrap();
    }
    for (i, n) in [(1, 1), (2, 2), (4, 3)] {
        slots[i].wrapped = threshold::target_of(&slots, i, &bk)
            .unwrap()
            .wrap(&nested_member_key(n).kek());
    }
    slots
}

/// `hello, coffer\n` sealed by the owner with the nested group as its only
/// slot: salt `35` × 32, randomness `24` × 64.
fn nested_archive_vector() -> Vec<u8> {
    seal_v2_slots(
        &Sealer::owner(&vector_key()),
        nested_group_slots(),
        0,
        0x35,
        0x24,
        b"hello, coffer\n",
    )
}

#[test]
fn the_nested_threshold_vectors_match_the_spec() {
    keyring_file_is(
        "keyring-v2-threshold-nested.json",
        &Keyring::new(&vector_key(), nested_group_slots()),
    );
    let want = std::fs::read(vectors().join("archive-v2-threshold-nested.coffer")).unwrap();
    assert_eq!(hex::encode(nested_archive_vector()), hex::encode(&want));
    for n in 1..=3u8 {
        let text =
            std::fs::read_to_string(vectors().join(format!("recovery-threshold-nested-{n}.txt")))
                .unwrap();
        assert_eq!(text.trim(), nested_member_key(n).display().as_str());
    }
}

#[test]
#[ignore = "writes the nested threshold vectors; only when they are new"]
fn regenerate_threshold_nested() {
    std::fs::write(
        vectors().join("keyring-v2-threshold-nested.json"),
        Keyring::new(&vector_key(), nested_group_slots()).to_bytes(),
    )
    .unwrap();
    std::fs::write(
        vectors().join("archive-v2-threshold-nested.coffer"),
        nested_archive_vector(),
    )
    .unwrap();
    for n in 1..=3u8 {
        std::fs::write(
            vectors().join(format!("recovery-threshold-nested-{n}.txt")),
            format!("{}\n", nested_member_key(n).display().as_str()),
        )
        .unwrap();
    }
}

#[test]
fn threshold_vectors_match_the_spec() {
    keyring_file_is(
        "keyring-v2-threshold.json",
        &Keyring::new(&vector_key(), vector_group_slots()),
    );
    let want = std::fs::read(vectors().join("archive-v2-threshold.coffer")).unwrap();
    assert_eq!(hex::encode(threshold_archive_vector()), hex::encode(&want));
    for x in 1..=3u8 {
        let text =
            std::fs::read_to_string(vectors().join(format!("recovery-threshold-{x}.txt"))).unwrap();
        assert_eq!(text.trim(), threshold_member_key(x).display().as_str());
    }
}

#[test]
#[ignore = "writes the threshold vectors; only when they are new"]
fn regenerate_threshold() {
    std::fs::write(
        vectors().join("keyring-v2-threshold.json"),
        Keyring::new(&vector_key(), vector_group_slots()).to_bytes(),
    )
    .unwrap();
    std::fs::write(
        vectors().join("archive-v2-threshold.coffer"),
        threshold_archive_vector(),
    )
    .unwrap();
    for x in 1..=3u8 {
        std::fs::write(
            vectors().join(format!("recovery-threshold-{x}.txt")),
            format!("{}\n", threshold_member_key(x).display().as_str()),
        )
        .unwrap();
    }
}

#[test]
fn version_2_vectors_match_the_spec() {
    keyring_file_is("keyring-v2.json", &vector_keyring_v2());
    keyring_file_is("keyring-v2-upgraded.json", &vector_keyring_upgraded());
    let want = std::fs::read(vectors().join("archive-v2-stream.coffer")).unwrap();
    assert_eq!(hex::encode(stream_vector_v2()), hex::encode(&want));
}

/// The version 2 testkit cases (`v2-*`), sealed by the owner or the host
/// `nas-1` of the vector key.
#[cfg(feature = "cli")] // runs the `coffer` binary
fn testkit_cases_v2() -> Vec<(&'static str, Vec<u8>)> {
    let bk = vector_key();
    let owner = Sealer::owner(&bk);
    let host = Sealer::derive(&bk, SealerId::host("nas-1").unwrap());
    let three_chunks: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let good = seal_v2(&owner, 0, 0x42, 0x52, &three_chunks);
    let tar = folder_tar();
    let zstd_tar = zstd::encode_all(&tar[..], 3).unwrap();
    let mut cases = vec![
        ("v2-stream-three-chunks", good.clone()),
        ("v2-stream-empty", seal_v2(&owner, 0, 0x41, 0x51, b"")),
        (
            "v2-folder-zstd",
            seal_v2(&owner, FLAG_TAR | FLAG_ZSTD, 0x43, 0x53, &zstd_tar),
        ),
        (
            "v2-host",
            seal_v2(&host, 0, 0x44, 0x54, b"sealed by a host\n"),
        ),
    ];
    let hl = Header::read(&mut &good[..]).unwrap().encoded_len();
    let enc_at = coffer::archive::header::FIXED_LEN;
    let m_at = enc_at + coffer::sealing::ENCAPSULATION_LEN;
    let mut flip = good.clone();
    flip[hl - 10] ^= 1;
    cases.push(("v2-bad-header-mac", flip));
    let mut flip = good.clone();
    flip[enc_at + 500] ^= 1;
    cases.push(("v2-bad-encapsulation", flip));
    // The host's archive, its sealer id rewritten to another host's.
    let mut renamed = seal_v2(&host, 0, 0x45, 0x55, b"renamed");
    assert_eq!(&renamed[m_at + 1..m_at + 6], b"nas-1");
    renamed[m_at + 5] = b'2';
    cases.push(("v2-renamed-sealer", renamed));
    let mut no_id = good.clone();
    no_id[m_at] = 0;
    cases.push(("v2-empty-sealer-id", no_id));
    // Built from the public key alone, with a sealer key made up for
    // `owner`: the header does not authenticate.
    let forger = Sealer::from_parts(
        owner.public_key().clone(),
        SealerId::owner(),
        SealerKey::from_bytes([0x66; 32]),
    );
    cases.push((
        "v2-forged-from-public-key",
        seal_v2(&forger, 0, 0x46, 0x56, b"forged"),
    ));
    // Another key's archive, with that key's own slot: a wrong factor.
    let other = BackupKey::from_bytes([0xee; 32]);
    let other_slot = SlotRecord {
        id: SlotId::parse("00000002").unwrap(),
        label: None,
        created: 1_700_000_000,
        wrapped: other.wrap(&RecoveryKey::from_entropy(&[0xdd; 30]).kek()),
        params: SlotParams::Recovery(RecoveryParams {}),
        member: None,
    };
    cases.push((
        "v2-other-key",
        seal_v2_slots(
            &Sealer::owner(&other),
            vec![other_slot],
            0,
            0x47,
            0x57,
            b"not yours",
        ),
    ));
    // Our slot, sealed to (and MACed under) another key.
    cases.push((
        "v2-swapped-key",
        seal_v2(&Sealer::owner(&other), 0, 0x48, 0x58, b"swapped"),
    ));
    cases
}

#[cfg(feature = "cli")] // runs the `coffer` binary
#[test]
#[ignore = "rewrites the version 2 vectors; only for a new format version"]
fn regenerate_v2() {
    std::fs::write(
        vectors().join("keyring-v2.json"),
        vector_keyring_v2().to_bytes(),
    )
    .unwrap();
    std::fs::write(
        vectors().join("keyring-v2-upgraded.json"),
        vector_keyring_upgraded().to_bytes(),
    )
    .unwrap();
    std::fs::write(
        vectors().join("archive-v2-stream.coffer"),
        stream_vector_v2(),
    )
    .unwrap();
    let three: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for (name, bytes) in testkit_cases_v2() {
        std::fs::write(testkit_dir().join(format!("{name}.coffer")), &bytes).unwrap();
        let payload: Option<Vec<u8>> = match name {
            "v2-stream-three-chunks" => Some(three.clone()),
            "v2-stream-empty" => Some(vec![]),
            "v2-host" => Some(b"sealed by a host\n".to_vec()),
            "v2-folder-zstd" => {
                let h = common::Home::new();
                std::fs::copy(vectors().join("recovery-v1.txt"), h.recovery_key()).unwrap();
                let out = h
                    .coffer()
                    .arg("open")
                    .arg(testkit_dir().join(format!("{name}.coffer")))
                    .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
                    .assert()
                    .success();
                Some(out.get_output().stdout.clone())
            }
            _ => None,
        };
        let expect = match (name, payload) {
            ("v2-other-key", None) => "expect: exit 3\n".into(),
            (name, p) => expectation(name, p.as_deref()),
        };
        std::fs::write(testkit_dir().join(format!("{name}.expect")), expect).unwrap();
    }
}

/// The version 2 testkit files are what this build makes.
#[cfg(feature = "cli")] // runs the `coffer` binary
#[test]
fn version_2_testkit_matches_its_construction() {
    for (name, bytes) in testkit_cases_v2() {
        let want = std::fs::read(testkit_dir().join(format!("{name}.coffer"))).unwrap();
        assert!(want == bytes, "{name} differs from its construction");
    }
}

/// What a testkit case expects: `ok` with the payload's SHA-256 (as
/// `open -o -` writes it: the tar stream for folders), or an exit status.
#[cfg(feature = "cli")] // runs the `coffer` binary
fn expectation(name: &str, payload: Option<&[u8]>) -> String {
    match (name, payload) {
        (_, Some(p)) => format!(
            "expect: ok\npayload-sha256: {}\n",
            hex::encode(Sha256::digest(p))
        ),
        ("other-key" | "damaged-slot", None) => "expect: exit 3\n".into(),
        _ => "expect: exit 4\n".into(),
    }
}

#[cfg(feature = "cli")] // runs the `coffer` binary
#[test]
#[ignore = "rewrites the vectors; only for a new format version"]
fn regenerate() {
    std::fs::create_dir_all(vectors()).unwrap();
    std::fs::create_dir_all(testkit_dir()).unwrap();
    std::fs::write(
        vectors().join("keyring-v1.json"),
        vector_keyring().to_bytes(),
    )
    .unwrap();
    std::fs::write(
        vectors().join("recovery-v1.txt"),
        format!("{}\n", vector_recovery().display().as_str()),
    )
    .unwrap();
    let bk = vector_key();
    let kek = vector_recovery().kek();
    std::fs::write(
        vectors().join("derived-v1.txt"),
        format!(
            "key id: {}\nrecovery kek: {}\nwrapped: {}\n",
            bk.key_id_v1(),
            hex::encode(kek.expose()),
            hex::encode(bk.wrap(&kek).0)
        ),
    )
    .unwrap();
    std::fs::write(vectors().join("archive-v1-stream.coffer"), stream_vector()).unwrap();
    let three: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for (name, bytes) in testkit_cases() {
        std::fs::write(testkit_dir().join(format!("{name}.coffer")), &bytes).unwrap();
        let payload: Option<Vec<u8>> = match name {
            "stream-empty" => Some(vec![]),
            "stream-three-chunks" => Some(three.clone()),
            "stream-exact-chunk" => Some(vec![9u8; 4096]),
            "folder" | "folder-zstd" => None, // filled below from the real open
            _ => None,
        };
        let expect = match name {
            "folder" | "folder-zstd" => {
                let h = common::Home::new();
                std::fs::copy(vectors().join("recovery-v1.txt"), h.recovery_key()).unwrap();
                let out = h
                    .coffer()
                    .arg("open")
                    .arg(testkit_dir().join(format!("{name}.coffer")))
                    .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
                    .assert()
                    .success();
                expectation(name, Some(&out.get_output().stdout))
            }
            _ => expectation(name, payload.as_deref()),
        };
        std::fs::write(testkit_dir().join(format!("{name}.expect")), expect).unwrap();
    }
}

/// Every testkit archive opens (or fails) exactly as its .expect says.
#[cfg(feature = "cli")] // runs the `coffer` binary
#[test]
fn testkit() {
    let h = common::Home::new();
    std::fs::copy(vectors().join("recovery-v1.txt"), h.recovery_key()).unwrap();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(testkit_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "coffer"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "testkit is incomplete: {cases:?}");
    for case in cases {
        let expect = std::fs::read_to_string(case.with_extension("expect")).unwrap();
        let out = h
            .coffer()
            .arg("open")
            .arg(&case)
            .args(["-o", "-", "--recovery-key-file", "recovery.txt"])
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        if let Some(sum) = expect
            .lines()
            .find_map(|l| l.strip_prefix("payload-sha256: "))
        {
            assert_eq!(
                code,
                0,
                "{}: {}",
                case.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                hex::encode(Sha256::digest(&out.stdout)),
                sum,
                "{}",
                case.display()
            );
        } else {
            let want: i32 = expect
                .trim()
                .strip_prefix("expect: exit ")
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                code,
                want,
                "{}: {}",
                case.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
