//! The virtual FIDO2 key fixture: one `fido2-key` process (trussed-dev's
//! fido-authenticator on trussed's software platform) serving CTAPHID
//! packets on a Unix socket in a temp folder, with its controls: touch,
//! unplug and plug, restart on the same state.
//!
//! Owns: the process and its folder (socket, control FIFO, flash image,
//! log). Every [`VirtualKey::start`] is a new key. Must never: skip
//! silently: a key that does not come up panics with its log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

static BUILD: Once = Once::new();

/// How the key answers a request for a touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Touched at once.
    Auto,
    /// Waits (sending KEEPALIVE) until [`VirtualKey::touch`], or times out.
    Require,
    /// Refuses.
    Deny,
}

/// A virtual FIDO2 key, stopped on drop.
pub struct VirtualKey {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pin: Option<String>,
}

impl VirtualKey {
    /// A new key with `pin` set (or none), touch confirmed at once.
    pub fn start(pin: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("coffer-fido2-")
            .tempdir()
            .expect("temp dir for the key");
        let status = Command::new("mkfifo")
            .arg(dir.path().join("control"))
            .status()
            .expect("mkfifo (coreutils)");
        assert!(status.success(), "mkfifo failed");
        let mut key = Self {
            child: None,
            dir,
            pin: pin.map(str::to_owned),
        };
        key.power_on();
        key
    }

    /// The socket the key serves on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("key.sock")
    }

    /// What coffer is told to reach it with: `unix:PATH`
    /// (`--fido2-device` or `COFFER_FIDO2_DEVICE`).
    pub fn device(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// The key's folder (its flash image and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn control(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("control"))
            .expect("the key's control FIFO");
        writeln!(f, "{line}").expect("write a control line");
    }

    /// How it answers a request for a touch from now on.
    pub fn presence(&self, p: Presence) {
        self.control(match p {
            Presence::Auto => "presence auto",
            Presence::Require => "presence require",
            Presence::Deny => "presence deny",
        });
    }

    /// One touch (for [`Presence::Require`]).
    pub fn touch(&self) {
        self.control("touch");
    }

    /// Pull the key out: its socket goes away, an open connection closes.
    pub fn unplug(&self) {
        self.control("unplug");
        self.wait(|| !self.socket().exists(), "the key to go away");
    }

    /// Plug it back in, with its state.
    pub fn plug(&self) {
        self.control("plug");
        self.wait(|| self.socket().exists(), "the key to come back");
    }

    /// Stop its process (a power cycle: CTAP's "PIN auth blocked" clears);
    /// [`VirtualKey::power_on`] brings the same key back.
    pub fn power_off(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Start its process on its flash image.
    pub fn power_on(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("key.log"))
            .expect("key log");
        let mut cmd = Command::new(key_binary());
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--state")
            .arg(self.dir.path().join("flash.bin"))
            .arg("--control")
            .arg(self.dir.path().join("control"))
            .args(["--up-timeout-ms", "3000"]);
        if let Some(pin) = &self.pin {
            cmd.args(["--pin", pin]);
        }
        self.child = Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start fido2-key"),
        );
        self.wait(|| self.socket().exists(), "the key to come up");
    }

    fn wait(&self, done: impl Fn() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("key.log")).unwrap_or_default();
                panic!("timed out waiting for {what}; fido2-key's log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VirtualKey {
    fn drop(&mut self) {
        self.power_off();
    }
}

/// The `fido2-key` binary, built once per test process (or
/// `$COFFER_FIDO2_KEY`).
pub fn key_binary() -> PathBuf {
    crate::built_binary(&BUILD, "COFFER_FIDO2_KEY", "fido2", "fido2-key")
}
