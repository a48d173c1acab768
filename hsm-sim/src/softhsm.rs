//! SoftHSM2 fixture: a private token folder and `SOFTHSM2_CONF` per test.
//!
//! Owns: the temp folder, its config and tokens; deletes them on `Drop`.
//! Must never: touch the system's SoftHSM configuration or token folder, or
//! set `SOFTHSM2_CONF` in this process (tests run in parallel: the variable
//! goes to child processes through [`SoftHsm::env`] and [`SoftHsm::command`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian and Ubuntu put the SoftHSM2 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every token the fixture makes.
pub const USER_PIN: &str = "123456";
/// The security officer PIN of every token the fixture makes.
pub const SO_PIN: &str = "12345678";

const INSTALL_HINT: &str = "SoftHSM2 is missing: install it with `apt-get install softhsm2 opensc` (or run hsm-sim/install-deps.sh)";

/// A private SoftHSM2 instance: a config file and a token folder.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    module: PathBuf,
}

impl SoftHsm {
    /// A fresh instance with one token labelled `label`.
    ///
    /// # Panics
    /// If SoftHSM2 is not installed (with the command that installs it), or
    /// the token cannot be made.
    pub fn new(label: &str) -> Self {
        let module = std::env::var_os("COFFER_TEST_SOFTHSM_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE));
        assert!(
            module.exists(),
            "{INSTALL_HINT} ({} not found)",
            module.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("coffer-softhsm-")
            .tempdir()
            .expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        let hsm = Self { dir, module };
        hsm.add_token(label);
        hsm
    }

    /// Initialise one more token, labelled `label`, with [`SO_PIN`] and
    /// [`USER_PIN`].
    pub fn add_token(&self, label: &str) {
        let out = self
            .command("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} (softhsm2-util: {e})"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The module to load.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The private config file.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The folder holding the tokens.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// A scratch folder inside the instance's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Delete every token: the device is gone.
    pub fn remove_tokens(&self) {
        std::fs::remove_dir_all(self.token_dir()).expect("remove token dir");
    }

    /// Environment for a child process that uses this instance.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf()),
            ("COFFER_PKCS11_MODULE".into(), self.module.clone()),
        ]
    }

    /// `program` with [`SoftHsm::env`] set.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// `pkcs11-tool --module M` with this instance's environment; panics on
    /// failure with its output, returns its standard output.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let out = self
            .command("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("pkcs11-tool is missing ({e}): install it with `apt-get install opensc`")
            });
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
