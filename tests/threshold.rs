//! Threshold groups (docs/threshold.md) on the real simulators: the TPM
//! **and** a YubiKey (swtpm, the virtual PIV card behind pcscd), any two of
//! a PKCS#11 token (SoftHSM2), a password and a vault password (the real
//! vault server), a group inside a group, members added and removed, a
//! member's wrong factor, and a group left one member short: exit 5 and
//! nothing written. Each member is enrolled with `coffer enroll KIND
//! --group GROUP` and unlocked with its factor bound to its label.
//!
//! Needs every simulator (hsm-sim/install-deps.sh) and pcscd running
//! (hsm-sim/pcsc.sh); a missing one fails, never skips.
// Without the hardware features only the software scenario is built.
#![cfg_attr(
    not(all(
        feature = "tpm2",
        feature = "yubikey",
        feature = "pkcs11",
        feature = "vault"
    )),
    allow(dead_code)
)]

mod common;

use common::Home;
use common::backend::{Args, Backend, args};
use std::ffi::{OsStr, OsString};
use std::process::Output;

/// A keyring (`init`'s recovery slot), the devices of its members, and the
/// labels they were enrolled under.
struct Keyring {
    home: Home,
    members: Vec<(String, Box<dyn Backend>)>,
}

impl Keyring {
    fn new() -> Self {
        let home = Home::new();
        home.init();
        Self {
            home,
            members: Vec::new(),
        }
    }

    /// `coffer` with every member's device environment.
    fn coffer(&self) -> assert_cmd::Command {
        let mut c = self.home.coffer();
        for (_, d) in &self.members {
            c.envs(d.env());
        }
        c
    }

    fn run<S: AsRef<OsStr>>(&self, a: impl IntoIterator<Item = S>) -> Output {
        self.coffer().args(a).output().expect("run coffer")
    }

    /// The owner's recovery slot alone, to unlock the keyring for changes.
    fn recovery(&self) -> Args {
        let mut a = args(["--slot", "recovery", "--recovery-key-file"]);
        a.push(self.home.recovery_key().into());
        a
    }

    /// `enroll threshold --need NEED --label LABEL [--group IN]`.
    fn group(&self, label: &str, need: u8, inside: Option<&str>) {
        let mut a = args(["enroll", "threshold", "--need", &need.to_string()]);
        a.extend(args(["--label", label]));
        if let Some(g) = inside {
            a.extend(args(["--group", g]));
        }
        a.extend(self.recovery());
        let out = self.run(&a);
        expect(&out, 0, &format!("enroll threshold {label}"));
    }

    /// Enroll `device`'s kind as `label`, a member of `group`.
    fn member(&mut self, group: &str, label: &str, device: Box<dyn Backend>) {
        self.members.push((label.to_owned(), device));
        let device = &self.members.last().unwrap().1;
        let mut a = args(["enroll"]);
        a.extend(device.enroll_args());
        a.extend(args(["--group", group, "--label", label]));
        a.extend(self.recovery());
        let out = self.run(&a);
        expect(&out, 0, &format!("enroll {label} into {group}"));
        said(&out, &format!("\"{label}\" ({})", device.slot_kind()));
    }

    fn device(&mut self, label: &str) -> &mut Box<dyn Backend> {
        &mut self
            .members
            .iter_mut()
            .find(|(l, _)| l == label)
            .expect("a member")
            .1
    }

    /// The member's factor, each secret bound to its label
    /// (`--pin-file LABEL=FILE`): several members take a password or PIN.
    fn factor(&self, label: &str) -> Args {
        let (_, d) = self.members.iter().find(|(l, _)| l == label).unwrap();
        bind(label, d.factor_args())
    }

    fn wrong_factor(&self, label: &str) -> Args {
        let (_, d) = self.members.iter().find(|(l, _)| l == label).unwrap();
        bind(label, d.wrong_factor_args().expect("a wrong factor"))
    }

    /// `open ARCHIVE -o OUT` with the factors of `labels`.
    fn open(&self, archive: &str, out: &str, factors: &[Args]) -> Output {
        let mut a: Args = factors.iter().flatten().cloned().collect();
        a.extend(args(["open", archive, "-o", out]));
        self.run(&a)
    }

    fn seal(&self, archive: &str) {
        if !self.home.path("data").exists() {
            std::fs::create_dir_all(self.home.path("data/sub")).unwrap();
            std::fs::write(self.home.path("data/notes.txt"), "for two of three\n").unwrap();
            std::fs::write(self.home.path("data/sub/b.bin"), vec![7u8; 70_000]).unwrap();
        }
        let out = self.run(["seal", "data", "-o", archive]);
        expect(&out, 0, "seal");
    }

    /// `out/data` is the sealed folder.
    fn opened(&self, out: &str) {
        common::tree::assert_same(
            &self.home.path("data"),
            &self.home.path(out).join("data"),
            Default::default(),
        );
    }

    /// Nothing was written at `out`.
    fn nothing_at(&self, out: &str) {
        assert!(
            self.home.path(out).symlink_metadata().is_err(),
            "{out} was written"
        );
    }
}

/// `--pin-file F` → `--pin-file LABEL=F`, and the same for passwords.
fn bind(label: &str, factor: Args) -> Args {
    let mut out = Args::new();
    let mut bind_next = false;
    for a in factor {
        if bind_next {
            let mut bound = OsString::from(format!("{label}="));
            bound.push(&a);
            out.push(bound);
            bind_next = false;
            continue;
        }
        bind_next = a == "--pin-file" || a == "--password-file" || a == "--recovery-key-file";
        out.push(a);
    }
    out
}

#[track_caller]
fn expect(out: &Output, code: i32, step: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{step}: exit {:?}, want {code}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn said(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(what), "stderr does not say {what:?}:\n{err}");
}

#[track_caller]
fn not_said(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(what), "stderr says {what:?}:\n{err}");
}

/// "The TPM and my YubiKey": 2 of 2. Either alone opens nothing (exit 5,
/// nothing written); a member is never tried on its own; the sealing host
/// keeps the group, since its TPM alone cannot open it.
#[cfg(all(feature = "tpm2", feature = "yubikey"))]
#[test]
fn the_tpm_and_a_yubikey() {
    use common::backend::{Tpm2, Yubikey};
    let mut k = Keyring::new();
    k.group("both", 2, None);
    let tpm = Box::new(Tpm2::without_pin(&k.home));
    k.member("both", "tpm", tpm);
    let yk = Box::new(Yubikey::new(&k.home));
    k.member("both", "yk", yk);
    k.seal("a.coffer");

    let both = [k.factor("tpm"), k.factor("yk")];
    let out = k.open("a.coffer", "out", &both);
    expect(&out, 0, "open with both");
    said(
        &out,
        "\"both\" (threshold): 2 of 2 needed, 2 opened (tpm2, yubikey)",
    );
    said(&out, "Touch your YubiKey");
    k.opened("out");

    // The TPM alone: the YubiKey member is not tried for want of its PIN.
    let out = k.open("a.coffer", "tpm-only", &[k.factor("tpm")]);
    expect(&out, 5, "the TPM alone");
    said(&out, "1 of the 2 members it needs opened");
    said(&out, "\"yk\" (yubikey): not tried (no factor given)");
    k.nothing_at("tpm-only");

    // The card away: named, and exit 5 even with its PIN given.
    assert!(k.device("yk").take_away());
    let out = k.open("a.coffer", "no-card", &both);
    expect(&out, 5, "the card away");
    said(&out, "\"yk\" (yubikey): ");
    said(&out, "not found");
    k.nothing_at("no-card");
    k.device("yk").bring_back();

    // A wrong PIN for the card: the group is short, exit 5 (not 3), and
    // the member's failure says why.
    let out = k.open(
        "a.coffer",
        "wrong-pin",
        &[k.factor("tpm"), k.wrong_factor("yk")],
    );
    expect(&out, 5, "a wrong card PIN");
    said(&out, "wrong PIN");
    k.nothing_at("wrong-pin");

    // A member alone is refused before anything is tried.
    let mut alone = args(["--slot", "tpm"]);
    alone.extend(k.factor("tpm"));
    let out = k.open("a.coffer", "alone", &[alone]);
    expect(&out, 2, "--slot a member");
    said(&out, "opens only with its group");
    k.nothing_at("alone");

    // The sealing host keeps the group (the TPM there opens one share of
    // two); a TPM-only group would open unattended and is left out.
    k.group("tpm-only", 1, None);
    let tpm2 = Box::new(Tpm2::without_pin(&k.home));
    k.member("tpm-only", "tpm-b", tpm2);
    let mut export = args([
        "export",
        "--seal-only",
        "--sealer",
        "nas",
        "-o",
        "host.json",
    ]);
    export.extend(k.recovery());
    let out = k.run(&export);
    expect(&out, 0, "export --seal-only");
    said(
        &out,
        "\"tpm-only\" (threshold) left out: enough of its members open with no person present",
    );
    not_said(&out, "\"both\"");
    not_said(&out, "\"tpm\" (tpm2) left out");
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(k.home.path("host.json")).unwrap()).unwrap();
    let labels: Vec<&str> = host["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["label"].as_str())
        .collect();
    assert_eq!(labels, ["both"], "{host}");
    assert_eq!(host["slots"][1]["members"].as_array().unwrap().len(), 2);

    // Rotation re-wraps the group: the YubiKey needs no card for that.
    let mut rotate = args(["rotate", "--drop", "tpm-only"]);
    rotate.extend(k.recovery());
    rotate.extend(k.factor("tpm"));
    let out = k.run(&rotate);
    expect(&out, 0, "rotate");
    k.seal("b.coffer");
    let out = k.open("b.coffer", "out-b", &both);
    expect(&out, 0, "open after rotate");
    k.opened("out-b");
}

/// Any two of a PKCS#11 token, a password and a vault password: opens
/// with any two present, the third absent; a member's wrong factor is
/// reported and the others still open it; one short is exit 5, nothing
/// written, whatever wrong factors were met; rotate re-wraps all three.
#[cfg(all(feature = "pkcs11", feature = "vault"))]
#[test]
fn any_two_of_a_token_a_password_and_the_vault() {
    use common::backend::{Password, Pkcs11, Vault};
    let mut k = Keyring::new();
    k.group("two", 2, None);
    let token = Box::new(Pkcs11::ecdh(&k.home));
    k.member("two", "token", token);
    let pw = Box::new(Password::new(&k.home));
    k.member("two", "pw", pw);
    let vault = Box::new(Vault::sqlite(&k.home));
    k.member("two", "remote", vault);
    let out = k.run(["slots"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(list.contains("2 of 3 members"), "{list}");
    k.seal("a.coffer");

    // The vault down: the token and the password.
    assert!(k.device("remote").take_away());
    let out = k.open("a.coffer", "o1", &[k.factor("token"), k.factor("pw")]);
    expect(&out, 0, "token and password, vault down");
    said(&out, "2 of 3 needed, 2 opened");
    k.opened("o1");

    // The token away, the vault back: the password and the vault.
    k.device("remote").bring_back();
    assert!(k.device("token").take_away());
    let out = k.open("a.coffer", "o2", &[k.factor("pw"), k.factor("remote")]);
    expect(&out, 0, "password and vault, token away");
    k.opened("o2");

    // Only the password: exit 5, the others named.
    let out = k.open("a.coffer", "o3", &[k.factor("pw")]);
    expect(&out, 5, "the password alone");
    said(&out, "1 of the 2 members it needs opened");
    said(&out, "\"token\" (pkcs11): ");
    said(&out, "\"remote\" (vault): not tried (no factor given)");
    k.nothing_at("o3");

    // A wrong password and the vault, the token away: one short. A wrong
    // factor was met, and still exit 5 (the group is not usable).
    let out = k.open(
        "a.coffer",
        "o4",
        &[k.wrong_factor("pw"), k.factor("remote")],
    );
    expect(&out, 5, "wrong password and the vault");
    said(&out, "\"pw\" (password): wrong password");
    k.nothing_at("o4");

    // The token back: the wrong password is reported, and the two others open.
    k.device("token").bring_back();
    let out = k.open(
        "a.coffer",
        "o5",
        &[k.wrong_factor("pw"), k.factor("token"), k.factor("remote")],
    );
    expect(&out, 0, "wrong password, token and vault");
    said(&out, "\"pw\" (password): wrong password");
    k.opened("o5");

    // Rotate: every member re-wrapped (the token's ECDH needs no PIN).
    let mut rotate = args(["rotate"]);
    rotate.extend(k.recovery());
    rotate.extend(k.factor("pw"));
    rotate.extend(k.factor("remote"));
    let out = k.run(&rotate);
    expect(&out, 0, "rotate");
    k.seal("b.coffer");
    let out = k.open("b.coffer", "o6", &[k.factor("token"), k.factor("remote")]);
    expect(&out, 0, "after rotate: token and vault");
    k.opened("o6");

    // From the archive alone (no keyring): the password member is inert
    // and tried; the token and vault members, named only by the header,
    // are not tried without a yes at a terminal; the group is short.
    let stranger = Home::new();
    std::fs::copy(k.home.path("b.coffer"), stranger.path("b.coffer")).unwrap();
    let mut a: Args = k.factor("pw");
    a.extend(k.factor("remote"));
    a.extend(args(["open", "b.coffer", "-o", "o7"]));
    let out = stranger.coffer().args(&a).output().unwrap();
    expect(&out, 5, "header only, no yes");
    said(&out, "1 of the 2 members it needs opened");
    said(&out, "\"remote\" (vault): from the archive header only");
    assert!(stranger.path("o7").symlink_metadata().is_err());
}

/// A group inside a group; members added after sealing (they open older
/// archives through the keyring, which holds the key); a removed member's
/// share still opens the archives whose header carries it, until `rotate`.
#[test]
fn nested_groups_and_members_added_and_removed() {
    use common::backend::Password;
    let pw = |k: &Keyring, name: &str| Box::new(Password::named(&k.home, name));
    let mut k = Keyring::new();
    // outer: 2 of {a, inner: 1 of {b}}.
    k.group("outer", 2, None);
    let a = pw(&k, "a");
    k.member("outer", "a", a);
    k.group("inner", 1, Some("outer"));
    let b = pw(&k, "b");
    k.member("inner", "b", b);
    let out = k.run(["slots"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.contains("\n    "),
        "members indented under their group: {list}"
    );
    // A group is never replaced, and that is known before anything is
    // enrolled.
    let before = std::fs::read(k.home.keyring()).unwrap();
    let mut replace = args([
        "enroll",
        "password",
        "--replace",
        "outer",
        "--new-password-file",
    ]);
    replace.push(k.home.write("new.txt", "new\n").into());
    replace.extend(k.recovery());
    let out = k.run(&replace);
    expect(&out, 2, "--replace a group");
    said(&out, "it is a threshold group");
    assert_eq!(std::fs::read(k.home.keyring()).unwrap(), before);
    k.seal("a.coffer");
    let out = k.open("a.coffer", "o1", &[k.factor("a"), k.factor("b")]);
    expect(&out, 0, "a and b");
    said(&out, "2 of 2 needed, 2 opened (password, threshold)");
    k.opened("o1");

    // A third member, added after a.coffer was sealed.
    let c = pw(&k, "c");
    k.member("outer", "c", c);
    let out = k.run(["slots"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(list.contains("2 of 3 members"), "{list}");
    k.seal("b.coffer");
    // Through the keyring, c opens the older archive too (same key).
    let out = k.open("a.coffer", "o2", &[k.factor("a"), k.factor("c")]);
    expect(&out, 0, "a and c, old archive, through the keyring");
    // From a.coffer's header alone (no keyring), the nested group opens.
    let no_keyring = args(["--keyring", "no-such-keyring.json"]);
    let out = k.open(
        "a.coffer",
        "o3",
        &[no_keyring.clone(), k.factor("a"), k.factor("b")],
    );
    expect(&out, 0, "a and b, header only");
    k.opened("o3");

    // Remove c: it no longer counts through the keyring; b.coffer's header
    // still carries it, and opens with it there (revoked by rotate only).
    let mut rm = args(["remove", "c"]);
    rm.extend(k.recovery());
    let out = k.run(&rm);
    expect(&out, 0, "remove c");
    said(&out, "until `coffer rotate`");
    let out = k.open("b.coffer", "o4", &[k.factor("a"), k.factor("c")]);
    expect(&out, 2, "a and c through the keyring, c removed");
    said(
        &out,
        "--password-file c=…: no slot has that id, label or kind",
    );
    k.nothing_at("o4");
    let out = k.open(
        "b.coffer",
        "o5",
        &[no_keyring, k.factor("a"), k.factor("c")],
    );
    expect(&out, 0, "a and c from b.coffer's header");
    k.opened("o5");

    // Removing the inner group takes b with it; the outer group is then
    // short, and says so.
    let mut rm = args(["remove", "inner"]);
    rm.extend(k.recovery());
    let out = k.run(&rm);
    expect(&out, 0, "remove inner");
    said(&out, "with the 1 slot(s) inside it");
    said(&out, "opens nothing");
    // Sealing leaves the short group out of the header, and says so.
    let out = k.run(["seal", "data", "-o", "c.coffer"]);
    expect(&out, 0, "seal with a short group");
    said(
        &out,
        "\"outer\" (threshold) is left out of the archive: it needs 2 members and 1 would be left",
    );
}

/// docs/format.md §10.5: the vector archive opens with any two of its
/// three member recovery keys, given unbound (each is tried on each
/// member), and not with one.
#[test]
fn the_vector_archive_opens_with_any_two_member_keys() {
    let h = Home::new();
    let vectors = common::vectors();
    let key = |x: u8| vectors.join(format!("recovery-threshold-{x}.txt"));
    for (a, b) in [(1, 2), (1, 3), (3, 2)] {
        let out = h
            .coffer()
            .arg("--recovery-key-file")
            .arg(key(a))
            .arg("--recovery-key-file")
            .arg(key(b))
            .arg("open")
            .arg(vectors.join("archive-v2-threshold.coffer"))
            .args(["-o", "-"])
            .output()
            .unwrap();
        expect(&out, 0, &format!("members {a} and {b}"));
        assert_eq!(out.stdout, b"hello, coffer\n");
    }
    let out = h
        .coffer()
        .arg("--recovery-key-file")
        .arg(key(2))
        .arg("open")
        .arg(vectors.join("archive-v2-threshold.coffer"))
        .args(["-o", "-"])
        .output()
        .unwrap();
    expect(&out, 5, "one member");
    said(&out, "1 of the 2 members it needs opened");
    assert!(out.stdout.is_empty());
}

/// The second vector (format.md §10.5): a 3-of-3 group at x 5, 130 and
/// 255, the last a nested 1-of-1 group. All three keys open it, given
/// unbound; any two do not.
#[test]
fn the_nested_vector_archive_opens_with_all_three_keys_only() {
    let h = Home::new();
    let vectors = common::vectors();
    let key = |n: u8| vectors.join(format!("recovery-threshold-nested-{n}.txt"));
    let open = |keys: &[u8]| {
        let mut c = h.coffer();
        for &n in keys {
            c.arg("--recovery-key-file").arg(key(n));
        }
        c.arg("open")
            .arg(vectors.join("archive-v2-threshold-nested.coffer"))
            .args(["-o", "-"])
            .output()
            .unwrap()
    };
    let out = open(&[3, 1, 2]);
    expect(&out, 0, "all three");
    assert_eq!(out.stdout, b"hello, coffer\n");
    for two in [[1, 2], [1, 3], [2, 3]] {
        let out = open(&two);
        expect(&out, 5, &format!("members {two:?}"));
        assert!(out.stdout.is_empty());
    }
}
