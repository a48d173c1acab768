//! The virtual PIV card fixture: one `vpiv-card` process attached to the
//! running pcscd's second vpcd reader ("Virtual PCD 00 01", port 35964), so
//! that the card `hsm-sim/pcsc.sh` starts for people (first reader) never
//! collides with a test's.
//!
//! Owns: the card process, its state folder (a temp dir: every
//! [`VirtualCard::start`] is a factory-fresh card), and a process-wide lock:
//! there is one reader, so tests using a card run one at a time.
//!
//! Must never: start or stop pcscd (that needs root and is shared: see
//! `hsm-sim/pcsc.sh`), or skip silently: with pcscd or vpcd missing it
//! panics with what to install and start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// The vpcd port of the reader the fixture's card plugs into.
pub const FIXTURE_PORT: u16 = 35964;
/// The PC/SC name of that reader.
pub const FIXTURE_READER: &str = "Virtual PCD 00 01";
/// The serial the fixture's card reports, unless told otherwise.
pub const DEFAULT_SERIAL: u32 = 17_000_001;

static ONE_CARD_AT_A_TIME: Mutex<()> = Mutex::new(());
static BUILD: Once = Once::new();

const INSTALL_HINT: &str = "the YubiKey tests need pcscd with vsmartcard's vpcd reader: run `sudo hsm-sim/pcsc.sh` (installs pcscd, vsmartcard-vpcd, yubico-piv-tool, opensc and starts pcscd)";

/// A virtual PIV card in pcscd's vpcd reader, removed on drop.
pub struct VirtualCard {
    child: Option<Child>,
    state: tempfile::TempDir,
    serial: u32,
    _lock: MutexGuard<'static, ()>,
}

impl VirtualCard {
    /// A factory-fresh card (PIN 123456, PUK 12345678, default management
    /// key) with serial [`DEFAULT_SERIAL`], present in [`FIXTURE_READER`].
    pub fn start() -> Self {
        Self::start_with_serial(DEFAULT_SERIAL)
    }

    /// As [`VirtualCard::start`], reporting `serial`.
    pub fn start_with_serial(serial: u32) -> Self {
        let lock = ONE_CARD_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        check_pcscd();
        let mut card = Self {
            child: None,
            state: tempfile::Builder::new()
                .prefix("coffer-vpiv-")
                .tempdir()
                .expect("temp dir for the card's state"),
            serial,
            _lock: lock,
        };
        card.insert();
        card
    }

    /// The serial the card reports.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The PC/SC reader name (for `yubico-piv-tool -r`).
    pub fn reader(&self) -> &'static str {
        FIXTURE_READER
    }

    /// Run `yubico-piv-tool` against this card's reader: whether it
    /// succeeded, and what it printed (stdout, then stderr).
    pub fn piv_tool(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("yubico-piv-tool")
            .arg("-r")
            .arg(self.reader())
            .args(args)
            .output()
            .expect("yubico-piv-tool is installed (sudo hsm-sim/pcsc.sh)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Take the card out of the reader (stop its process); its keys stay.
    pub fn remove(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for(|present| !present, "the card to leave the reader");
    }

    /// Put the card back (start its process on the same state).
    pub fn insert(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::File::create(self.state.path().join("card.log")).expect("card log");
        let child = Command::new(card_binary())
            .arg("--port")
            .arg(FIXTURE_PORT.to_string())
            .arg("--serial")
            .arg(self.serial.to_string())
            .arg("--state")
            .arg(self.state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vpiv-card");
        self.child = Some(child);
        wait_for(|present| present, "the card to show up in the reader");
    }

    /// Where the card keeps its flash and log.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Let pcscd notice the removal before the next test's card arrives.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && card_present() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn check_pcscd() {
    let vpcd = Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so");
    assert!(
        vpcd.exists(),
        "vsmartcard-vpcd is not installed: {INSTALL_HINT}"
    );
    let socket = Path::new("/run/pcscd/pcscd.comm");
    assert!(socket.exists(), "pcscd is not running: {INSTALL_HINT}");
    assert!(
        Command::new("opensc-tool")
            .arg("-l")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "opensc-tool is missing: {INSTALL_HINT}"
    );
}

/// Whether pcscd sees a card in the fixture's reader.
fn card_present() -> bool {
    let Ok(out) = Command::new("opensc-tool").arg("-l").output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 3 && cols[1] == "Yes" && l.trim_end().ends_with(FIXTURE_READER)
    })
}

fn wait_for(want: impl Fn(bool) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if want(card_present()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what} ({FIXTURE_READER}); {INSTALL_HINT}");
}

/// The `vpiv-card` binary, built once per test process.
fn card_binary() -> PathBuf {
    crate::built_binary(&BUILD, "COFFER_VPIV_CARD", "card", "vpiv-card")
}
