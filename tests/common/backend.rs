//! The slot kinds of tests/backends.rs, each on its real simulator: what
//! one scenario needs to know of a kind, and nothing of the scenario.
//!
//! A [`Backend`] starts its device (swtpm, SoftHSM2, the virtual PIV card
//! behind pcscd, the vault server) when made and stops it when dropped; it
//! says how to enroll a slot of its kind, which arguments unlock with it
//! alone, which arguments are a wrong factor, and how to take the device
//! away and bring it back. [`Rig`] is one keyring with one such slot and a
//! small folder sealed while the slot was enrolled.

use super::Home;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Output;

/// Command-line arguments.
pub type Args = Vec<OsString>;

/// `["a", "b"]` (strings or paths) as [`Args`].
pub fn args<S: AsRef<OsStr>>(items: impl IntoIterator<Item = S>) -> Args {
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// One kind of slot on its device.
pub trait Backend {
    /// The kind's name in test names and messages (`tpm2-pin`).
    fn name(&self) -> &'static str;
    /// The slot kind it enrolls, as `--slot` and `coffer slots` name it.
    fn slot_kind(&self) -> &'static str;
    /// Environment for every `coffer` run (where the device is).
    fn env(&self) -> Vec<(OsString, OsString)> {
        Vec::new()
    }
    /// What follows `coffer enroll` (the rig adds the recovery key that
    /// unlocks the keyring).
    fn enroll_args(&self) -> Args;
    /// The factor that unlocks a slot of this kind, and nothing else.
    fn factor_args(&self) -> Args;
    /// A wrong factor (wrong PIN or password), when the kind has one.
    fn wrong_factor_args(&self) -> Option<Args>;
    /// What a slot of this kind found only in an archive header loads or
    /// contacts, named from local trust (a header never names it).
    fn locator_args(&self) -> Args {
        Vec::new()
    }
    /// Whether a header-only slot of this kind is tried without asking
    /// (DESIGN.md, "Trust rule"): recovery and password slots are.
    fn inert(&self) -> bool {
        false
    }
    /// Check what enrollment stored in the keyring for the slot.
    fn check_enrolled(&self, _slot: &serde_json::Value) {}
    /// What unlocking with the slot tells the person (a touch request).
    fn unlock_says(&self) -> Option<&'static str> {
        None
    }
    /// What the error says when the device is away.
    fn absent_says(&self) -> &'static [&'static str] {
        unreachable!("a kind without a device")
    }
    /// Factors of the other slots the kind's rig enrolled (for `rotate`,
    /// which re-wraps every slot).
    fn other_factors(&self) -> Args {
        Args::new()
    }
    /// Whether `rotate` re-wraps it with the device away (public-key kinds).
    fn rewraps_without_its_device(&self) -> bool {
        false
    }
    /// `enroll` arguments for a second slot of this kind to put in place
    /// of the first (`--replace`), and that slot's factor arguments.
    fn reenroll(&self, _h: &Home) -> (Args, Args) {
        (self.enroll_args(), self.factor_args())
    }
    /// Take the device away; `false` if the kind has none.
    fn take_away(&mut self) -> bool {
        false
    }
    /// Bring the device back after [`Backend::take_away`].
    fn bring_back(&mut self) {}
}

/// A keyring (recovery slot from `init`, plus the backend's slot), and a
/// folder `data` sealed into `a.coffer` with the recovery key.
pub struct Rig {
    pub home: Home,
    pub backend: Box<dyn Backend>,
    /// The id of the slot under test.
    pub slot_id: String,
}

impl Rig {
    /// `init`, `enroll` the backend's kind (unlocking with the recovery
    /// key), make the folder, `seal` it.
    pub fn new<B: Backend + 'static>(make: impl FnOnce(&Home) -> B) -> Self {
        let home = Home::new();
        home.init();
        let backend = Box::new(make(&home));
        let mut rig = Self {
            home,
            backend,
            slot_id: String::new(),
        };
        let mut enroll = args(["enroll"]);
        enroll.extend(rig.backend.enroll_args());
        enroll.extend(rig.recovery_args());
        let out = rig.run(&enroll);
        rig.expect(&out, 0, "enroll");
        rig.slot_id = rig.the_slot_id();
        if rig.backend.slot_kind() != "recovery" {
            let said = format!(
                "enrolled slot {} ({})",
                rig.slot_id,
                rig.backend.slot_kind()
            );
            rig.expect_said(&out, &said, "enroll");
        }
        rig.check_keyring();
        make_tree(&rig.home.path("data"));
        let mut seal = args(["seal", "data", "-o", "a.coffer"]);
        seal.extend(rig.recovery_args());
        let out = rig.run(&seal);
        rig.expect(&out, 0, "seal");
        rig
    }

    /// `--slot recovery --recovery-key-file recovery.txt`.
    pub fn recovery_args(&self) -> Args {
        let mut a = args(["--slot", "recovery", "--recovery-key-file"]);
        a.push(self.home.recovery_key().into());
        a
    }

    /// The kind's own checks of its slot; and no secret of its factor
    /// (a file's content) is in the keyring.
    fn check_keyring(&self) {
        let kr = self.home.keyring_json();
        let slot = kr["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == self.slot_id.as_str())
            .unwrap();
        self.backend.check_enrolled(slot);
        let text = kr.to_string();
        for a in self.backend.factor_args() {
            let Ok(secret) = std::fs::read_to_string(&a) else {
                continue;
            };
            let secret = secret.trim();
            assert!(
                secret.len() < 4 || !text.contains(secret),
                "[{}] the keyring holds the factor {a:?}: {text}",
                self.name()
            );
        }
    }

    /// The one keyring slot of the backend's kind.
    fn the_slot_id(&self) -> String {
        let kr = self.home.keyring_json();
        let ids: Vec<String> = kr["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == self.backend.slot_kind())
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 1, "[{}] slots of its kind: {kr}", self.name());
        ids.into_iter().next().unwrap()
    }

    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// `coffer` with the home's keyring and the backend's environment.
    pub fn coffer(&self) -> assert_cmd::Command {
        let mut c = self.home.coffer();
        c.envs(self.backend.env());
        c
    }

    /// Run `coffer ARGS`.
    pub fn run(&self, a: &[OsString]) -> Output {
        self.coffer().args(a).output().expect("run coffer")
    }

    /// Panic, naming the kind and `step`, unless `out` exited with `code`.
    #[track_caller]
    pub fn expect(&self, out: &Output, code: i32, step: &str) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "[{}] {step}: exit status {:?}, want {code}\nstderr:\n{}",
            self.name(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Panic, naming the kind and `step`, unless standard error says `what`.
    #[track_caller]
    pub fn expect_said(&self, out: &Output, what: &str, step: &str) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(what),
            "[{}] {step}: stderr does not say {what:?}:\n{err}",
            self.name()
        );
    }

    /// Every file name in the home folder and the keyring's bytes: what a
    /// refused command must leave as it was.
    pub fn state(&self) -> (Vec<String>, Vec<u8>) {
        (
            super::listing(self.home.dir.path()),
            std::fs::read(self.home.keyring()).unwrap(),
        )
    }

    /// Panic, naming the kind and `step`, unless `out/data` is the sealed
    /// folder.
    #[track_caller]
    pub fn expect_opened(&self, out: &str, step: &str) {
        let got = self.home.path(out).join("data");
        assert!(got.is_dir(), "[{}] {step}: {out}/data missing", self.name());
        super::tree::assert_same(&self.home.path("data"), &got, Default::default());
    }

    /// Run `coffer ARGS` on a pseudo-terminal, typing `answer` at its
    /// prompt ([`super::run_on_a_terminal`]).
    pub fn run_on_a_terminal(&self, a: &[OsString], answer: &str) -> (bool, String) {
        super::run_on_a_terminal(
            &self.home,
            &self.home.keyring(),
            self.backend.env(),
            a,
            answer,
        )
    }
}

/// A small folder: files, a subfolder, an empty folder, a symlink.
fn make_tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("photos/2024")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::write(root.join("notes.txt"), "for the owner only\n").unwrap();
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("photos/2024/beach.raw"), bytes).unwrap();
    std::os::unix::fs::symlink("2024/beach.raw", root.join("photos/latest")).unwrap();
}

// ---------------------------------------------------------------------------
// The kinds.

/// A password slot (software baseline).
pub struct Password {
    right: PathBuf,
    wrong: PathBuf,
}

impl Password {
    pub fn new(h: &Home) -> Self {
        Self {
            right: h.write("password.txt", "correct horse battery staple\n"),
            wrong: h.write("wrong-password.txt", "correct horse battery stapler\n"),
        }
    }

    /// A password of its own, `NAME.txt` (several in one home).
    pub fn named(h: &Home, name: &str) -> Self {
        Self {
            right: h.write(&format!("{name}.txt"), &format!("the password of {name}\n")),
            wrong: h.write(
                &format!("wrong-{name}.txt"),
                &format!("not the password of {name}\n"),
            ),
        }
    }
}

impl Backend for Password {
    fn name(&self) -> &'static str {
        "password"
    }
    fn slot_kind(&self) -> &'static str {
        "password"
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["password", "--new-password-file"]);
        a.push(self.right.clone().into());
        a
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--password-file"), self.right.as_os_str()])
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([
            OsStr::new("--password-file"),
            self.wrong.as_os_str(),
        ]))
    }
    fn inert(&self) -> bool {
        true
    }
}

/// The recovery slot `init` made (software baseline). `enroll recovery`
/// does not exist, so its enroll step adds a password slot instead: the
/// keyring must keep a slot when the recovery slot is removed.
pub struct Recovery {
    key: PathBuf,
    keeper: PathBuf,
    /// The recovery key of another keyring: checksum right, key wrong.
    other_key: PathBuf,
}

impl Recovery {
    pub fn new(h: &Home) -> Self {
        let other = Home::new();
        other.init();
        Self {
            key: h.recovery_key(),
            keeper: h.write("keeper-password.txt", "the slot that stays\n"),
            other_key: h.write("other-recovery.txt", &other.recovery_key_text()),
        }
    }
}

impl Backend for Recovery {
    fn name(&self) -> &'static str {
        "recovery"
    }
    fn slot_kind(&self) -> &'static str {
        "recovery"
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["password", "--new-password-file"]);
        a.push(self.keeper.clone().into());
        a
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--recovery-key-file"), self.key.as_os_str()])
    }
    fn other_factors(&self) -> Args {
        let mut a = args(["--password-file"]);
        a.push(self.keeper.clone().into());
        a
    }
    /// Another recovery key, issued into a file.
    fn reenroll(&self, h: &Home) -> (Args, Args) {
        let key = h.path("second-recovery.txt");
        let mut a = args(["recovery", "--recovery-key-out"]);
        a.push(key.clone().into());
        (
            a,
            args([OsStr::new("--recovery-key-file"), key.as_os_str()]),
        )
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([
            OsStr::new("--recovery-key-file"),
            self.other_key.as_os_str(),
        ]))
    }
    fn inert(&self) -> bool {
        true
    }
}

/// A TPM 2.0 slot on swtpm, with or without a PIN; the TPM is named with
/// `--tcti` (part of the factor: it is the device).
#[cfg(feature = "tpm2")]
pub struct Tpm2 {
    tpm: coffer_hsm_sim::SwTpm,
    pin: Option<(PathBuf, PathBuf)>,
}

#[cfg(feature = "tpm2")]
impl Tpm2 {
    pub fn without_pin(_: &Home) -> Self {
        Self {
            tpm: coffer_hsm_sim::SwTpm::start(),
            pin: None,
        }
    }

    pub fn with_pin(h: &Home) -> Self {
        Self {
            tpm: coffer_hsm_sim::SwTpm::start(),
            pin: Some((
                h.write("tpm-pin.txt", "24680\n"),
                h.write("wrong-tpm-pin.txt", "13579\n"),
            )),
        }
    }

    fn tcti(&self) -> Args {
        args(["--tcti".to_owned(), self.tpm.tcti()])
    }
}

#[cfg(feature = "tpm2")]
impl Backend for Tpm2 {
    fn name(&self) -> &'static str {
        if self.pin.is_some() {
            "tpm2-pin"
        } else {
            "tpm2"
        }
    }
    fn slot_kind(&self) -> &'static str {
        "tpm2"
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["tpm2"]);
        a.extend(self.tcti());
        if let Some((pin, _)) = &self.pin {
            a.extend(args([OsStr::new("--new-pin-file"), pin.as_os_str()]));
        }
        a
    }
    fn factor_args(&self) -> Args {
        let mut a = self.tcti();
        if let Some((pin, _)) = &self.pin {
            a.extend(args([OsStr::new("--pin-file"), pin.as_os_str()]));
        }
        a
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        let (_, wrong) = self.pin.as_ref()?;
        let mut a = self.tcti();
        a.extend(args([OsStr::new("--pin-file"), wrong.as_os_str()]));
        Some(a)
    }
    fn check_enrolled(&self, slot: &serde_json::Value) {
        assert_eq!(slot["pin"], self.pin.is_some(), "{slot}");
        assert!(slot.get("pcrs").is_none(), "{slot}");
    }
    fn absent_says(&self) -> &'static [&'static str] {
        &["not found"]
    }
    /// swtpm stops; `--tcti` still names its port, where nothing listens.
    fn take_away(&mut self) -> bool {
        self.tpm.power_off();
        true
    }
    fn bring_back(&mut self) {
        self.tpm.power_on();
    }
}

/// A PKCS#11 slot on a SoftHSM2 token, with an EC key (ECDH) or an AES key
/// (AES-GCM) that coffer generates.
#[cfg(feature = "pkcs11")]
pub struct Pkcs11 {
    hsm: coffer_hsm_sim::softhsm::SoftHsm,
    aes_gcm: bool,
    pin: PathBuf,
    wrong_pin: PathBuf,
    /// A SoftHSM2 configuration whose token folder is empty: set while
    /// the token is taken away.
    absent_conf: Option<PathBuf>,
}

#[cfg(feature = "pkcs11")]
impl Pkcs11 {
    pub fn ecdh(h: &Home) -> Self {
        Self::new(h, false)
    }

    pub fn aes_gcm(h: &Home) -> Self {
        Self::new(h, true)
    }

    fn new(h: &Home, aes_gcm: bool) -> Self {
        Self {
            hsm: coffer_hsm_sim::softhsm::SoftHsm::new("coffer"),
            aes_gcm,
            pin: h.write("pin.txt", coffer_hsm_sim::softhsm::USER_PIN),
            wrong_pin: h.write("wrong-pin.txt", "654321"),
            absent_conf: None,
        }
    }
}

#[cfg(feature = "pkcs11")]
impl Backend for Pkcs11 {
    fn name(&self) -> &'static str {
        if self.aes_gcm {
            "pkcs11-aes-gcm"
        } else {
            "pkcs11-ecdh"
        }
    }
    fn slot_kind(&self) -> &'static str {
        "pkcs11"
    }
    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .hsm
            .env()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if let Some(conf) = &self.absent_conf {
            for (k, v) in &mut env {
                if k == "SOFTHSM2_CONF" {
                    *v = conf.clone().into();
                }
            }
        }
        env
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["pkcs11", "--generate"]);
        a.extend(args(["--uri", "pkcs11:token=coffer;object=backup"]));
        if self.aes_gcm {
            a.extend(args(["--mechanism", "aes-gcm"]));
        }
        a.extend(args([OsStr::new("--pin-file"), self.pin.as_os_str()]));
        a
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--pin-file"), self.pin.as_os_str()])
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([OsStr::new("--pin-file"), self.wrong_pin.as_os_str()]))
    }
    fn locator_args(&self) -> Args {
        args([OsStr::new("--pkcs11-module"), self.hsm.module().as_os_str()])
    }
    fn rewraps_without_its_device(&self) -> bool {
        !self.aes_gcm
    }
    /// A second key on the same token.
    fn reenroll(&self, _h: &Home) -> (Args, Args) {
        let enroll = self
            .enroll_args()
            .into_iter()
            .map(|a| {
                if a == "pkcs11:token=coffer;object=backup" {
                    "pkcs11:token=coffer;object=second".into()
                } else {
                    a
                }
            })
            .collect();
        (enroll, self.factor_args())
    }
    fn check_enrolled(&self, slot: &serde_json::Value) {
        let mechanism = if self.aes_gcm { "aes-gcm" } else { "ecdh" };
        assert_eq!(slot["mechanism"], mechanism, "{slot}");
        assert_eq!(slot["uri"], "pkcs11:token=coffer;object=backup", "{slot}");
        // AES-GCM: the token's key encrypted the KEK, stored in the slot.
        assert_eq!(slot["sealed_kek"].is_string(), self.aes_gcm, "{slot}");
    }
    fn absent_says(&self) -> &'static [&'static str] {
        &["PKCS#11 token"]
    }
    /// The module now reads a configuration whose token folder is empty.
    fn take_away(&mut self) -> bool {
        let tokens = self.hsm.path("absent-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = self.hsm.path("absent.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        self.absent_conf = Some(conf);
        true
    }
    fn bring_back(&mut self) {
        self.absent_conf = None;
    }
}

/// A YubiKey (PIV) slot on the virtual PIV card through pcscd and vpcd;
/// the key is generated on the card at enrollment.
#[cfg(feature = "yubikey")]
pub struct Yubikey {
    card: coffer_hsm_sim::VirtualCard,
    pin: PathBuf,
    wrong_pin: PathBuf,
    mgm: PathBuf,
}

#[cfg(feature = "yubikey")]
impl Yubikey {
    pub const PIN: &str = "271828";
    pub const MGM: &str = "0f0e0d0c0b0a09080706050403020100a1a2a3a4a5a6a7a8";

    /// A fresh card with the owner's own PIN and management key (coffer
    /// refuses the defaults).
    pub fn new(h: &Home) -> Self {
        let card = coffer_hsm_sim::VirtualCard::start();
        for a in [
            &["-a", "change-pin", "-P", "123456", "-N", Self::PIN][..],
            &["-a", "set-mgm-key", "-n", Self::MGM],
        ] {
            let (ok, text) = card.piv_tool(a);
            assert!(ok, "yubico-piv-tool {a:?}: {text}");
        }
        Self {
            card,
            pin: h.write("pin.txt", Self::PIN),
            wrong_pin: h.write("wrong-pin.txt", "999999"),
            mgm: h.write("mgm.txt", Self::MGM),
        }
    }
}

#[cfg(feature = "yubikey")]
impl Backend for Yubikey {
    fn name(&self) -> &'static str {
        "yubikey"
    }
    fn slot_kind(&self) -> &'static str {
        "yubikey"
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["yubikey", "--generate", "--serial"]);
        a.push(self.card.serial().to_string().into());
        a.extend(args([
            OsStr::new("--management-key-file"),
            self.mgm.as_os_str(),
        ]));
        a.extend(args([OsStr::new("--pin-file"), self.pin.as_os_str()]));
        a
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--pin-file"), self.pin.as_os_str()])
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([OsStr::new("--pin-file"), self.wrong_pin.as_os_str()]))
    }
    /// The defaults: a retired PIV slot, PIN once, touch always.
    fn check_enrolled(&self, slot: &serde_json::Value) {
        assert_eq!(slot["serial"], self.card.serial(), "{slot}");
        assert_eq!(slot["piv_slot"], "82", "{slot}");
        assert_eq!(slot["pin_policy"], "once", "{slot}");
        assert_eq!(slot["touch_policy"], "always", "{slot}");
    }
    fn unlock_says(&self) -> Option<&'static str> {
        Some("Touch your YubiKey")
    }
    fn rewraps_without_its_device(&self) -> bool {
        true
    }
    fn absent_says(&self) -> &'static [&'static str] {
        &["not found", "pcscd"]
    }
    /// The card leaves the reader; its keys stay.
    fn take_away(&mut self) -> bool {
        self.card.remove();
        true
    }
    fn bring_back(&mut self) {
        self.card.insert();
    }
}

/// A vault slot on the real vault server (`coffer vault serve`), its
/// secrets sealed by a SoftHSM token, on SQLite or PostgreSQL.
#[cfg(feature = "vault")]
pub struct Vault {
    token: super::vault::Token,
    db: String,
    server: Option<super::vault::Server>,
    url: String,
    password: PathBuf,
    wrong: PathBuf,
    // Dropped last: the server goes before its database.
    _postgres: Option<super::vault::Postgres>,
}

#[cfg(feature = "vault")]
impl Vault {
    /// The server on SQLite (a file in the home folder).
    pub fn sqlite(h: &Home) -> Self {
        let db = format!("sqlite:{}", h.path("vault.db").display());
        Self::new(h, db, None)
    }

    /// The server on a throwaway PostgreSQL cluster (which must be
    /// installed: as in tests/vault.rs, its absence fails the test).
    pub fn postgres(h: &Home) -> Self {
        let pg = super::vault::Postgres::start();
        Self::new(h, pg.url(), Some(pg))
    }

    fn new(h: &Home, db: String, pg: Option<super::vault::Postgres>) -> Self {
        let token = super::vault::Token::new();
        let server = super::vault::Server::start_db(&token, &db, 10);
        Self {
            url: server.url.clone(),
            server: Some(server),
            token,
            db,
            password: h.write("vault-password.txt", "vault password\n"),
            wrong: h.write("wrong-password.txt", "not it\n"),
            _postgres: pg,
        }
    }
}

#[cfg(feature = "vault")]
impl Backend for Vault {
    fn name(&self) -> &'static str {
        if self._postgres.is_some() {
            "vault-postgres"
        } else {
            "vault-sqlite"
        }
    }
    fn slot_kind(&self) -> &'static str {
        "vault"
    }
    fn enroll_args(&self) -> Args {
        let mut a = args(["vault", "--url", &self.url, "--new-password-file"]);
        a.push(self.password.clone().into());
        a
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--password-file"), self.password.as_os_str()])
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([
            OsStr::new("--password-file"),
            self.wrong.as_os_str(),
        ]))
    }
    fn locator_args(&self) -> Args {
        args(["--vault-url", &self.url])
    }
    /// The server's key is pinned in the slot.
    fn check_enrolled(&self, slot: &serde_json::Value) {
        assert_eq!(slot["url"], self.url.as_str(), "{slot}");
        assert!(slot["server_key"].is_string(), "{slot}");
    }
    fn absent_says(&self) -> &'static [&'static str] {
        &["unreachable"]
    }
    /// The server stops; its database stays.
    fn take_away(&mut self) -> bool {
        self.server = None;
        true
    }
    /// The server starts again on the same address (the slot names it)
    /// and database.
    fn bring_back(&mut self) {
        let listen = self.url.strip_prefix("http://").expect("an http:// URL");
        let server =
            super::vault::Server::start_with(&self.token, &self.db, 10, &["--listen", listen]);
        assert_eq!(server.url, self.url);
        self.server = Some(server);
    }
}

/// A FIDO2 slot on hsm-sim's virtual key (trussed-dev's fido-authenticator
/// behind CTAPHID packets on a socket), with a PIN; touch is given at once.
#[cfg(feature = "fido2")]
pub struct Fido2 {
    key: coffer_hsm_sim::VirtualKey,
    pin: PathBuf,
    wrong_pin: PathBuf,
}

#[cfg(feature = "fido2")]
impl Fido2 {
    pub const PIN: &str = "482016";

    pub fn new(h: &Home) -> Self {
        Self {
            key: coffer_hsm_sim::VirtualKey::start(Some(Self::PIN)),
            pin: h.write("fido2-pin.txt", Self::PIN),
            wrong_pin: h.write("fido2-wrong-pin.txt", "111111"),
        }
    }
}

#[cfg(feature = "fido2")]
impl Backend for Fido2 {
    fn name(&self) -> &'static str {
        "fido2"
    }
    fn slot_kind(&self) -> &'static str {
        "fido2"
    }
    fn env(&self) -> Vec<(OsString, OsString)> {
        vec![("COFFER_FIDO2_DEVICE".into(), self.key.device().into())]
    }
    fn enroll_args(&self) -> Args {
        args([
            OsStr::new("fido2"),
            OsStr::new("--pin-file"),
            self.pin.as_os_str(),
        ])
    }
    fn factor_args(&self) -> Args {
        args([OsStr::new("--pin-file"), self.pin.as_os_str()])
    }
    fn wrong_factor_args(&self) -> Option<Args> {
        Some(args([OsStr::new("--pin-file"), self.wrong_pin.as_os_str()]))
    }
    /// The defaults: relying party coffer, PIN (the key has one), touch,
    /// no built-in verification, not discoverable.
    fn check_enrolled(&self, slot: &serde_json::Value) {
        assert_eq!(slot["rp_id"], "coffer", "{slot}");
        assert_eq!(slot["pin"], true, "{slot}");
        assert_eq!(slot["up"], true, "{slot}");
        assert_eq!(slot["uv"], false, "{slot}");
        assert_eq!(slot["discoverable"], false, "{slot}");
    }
    fn absent_says(&self) -> &'static [&'static str] {
        &["not found", "plug"]
    }
    /// Pulled out: its socket goes away; its credentials stay.
    fn take_away(&mut self) -> bool {
        self.key.unplug();
        true
    }
    fn bring_back(&mut self) {
        self.key.plug();
    }
}
