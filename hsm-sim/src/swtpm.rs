//! A private `swtpm` TPM 2.0 per test: its own state folder and TCP ports,
//! reached through tpm2-tss's `swtpm` TCTI, stopped on `Drop`.
//!
//! Owns: starting, restarting (same state, a fresh boot: PCRs reset, NV and
//! the dictionary-attack counter kept) and stopping swtpm, and running
//! tpm2-tools against it. Must never: share a TPM between tests, or skip
//! quietly when swtpm or tpm2-tools is missing (it panics with the install
//! command instead).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How to install what this fixture needs.
pub const INSTALL_HINT: &str = "install them with `sudo apt-get install swtpm swtpm-tools tpm2-tools libtss2-dev` (or `sudo bash hsm-sim/install-deps.sh`)";

/// Dictionary-attack settings applied at start: lockout after this many
/// wrong authorizations…
pub const DA_MAX_TRIES: u32 = 3;
/// …one failure forgiven every this many seconds…
pub const DA_RECOVERY_SECS: u32 = 60;
/// …and the lockout hierarchy's own lockout, in seconds.
pub const DA_LOCKOUT_RECOVERY_SECS: u32 = 60;

/// A running swtpm with its own state folder.
pub struct SwTpm {
    state: tempfile::TempDir,
    child: Child,
    port: u16,
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "`{tool}` not found on PATH: {INSTALL_HINT}");
}

/// Two consecutive free TCP ports on loopback (server, control).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        let p = a.local_addr().expect("local addr").port();
        if p < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free TCP ports on 127.0.0.1");
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

impl SwTpm {
    /// Start a fresh TPM (manufactured, started up) and set its
    /// dictionary-attack parameters to [`DA_MAX_TRIES`] tries,
    /// [`DA_RECOVERY_SECS`] s recovery.
    ///
    /// # Panics
    /// If swtpm or tpm2-tools is missing, or swtpm does not come up.
    pub fn start() -> Self {
        for tool in ["swtpm", "swtpm_ioctl", "tpm2_dictionarylockout"] {
            require(tool);
        }
        let state = tempfile::Builder::new()
            .prefix("swtpm-")
            .tempdir()
            .expect("temp dir for swtpm state");
        let (child, port) = Self::spawn(state.path());
        let tpm = Self { state, child, port };
        tpm.run(
            "tpm2_dictionarylockout",
            &[
                "-s",
                "-n",
                &DA_MAX_TRIES.to_string(),
                "-t",
                &DA_RECOVERY_SECS.to_string(),
                "-l",
                &DA_LOCKOUT_RECOVERY_SECS.to_string(),
            ],
        );
        tpm
    }

    fn spawn(state: &Path) -> (Child, u16) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let log = state.join("swtpm.log");
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .args(["--flags", "startup-clear,not-need-init"])
                .arg("--log")
                // Level 20 logs every command and response in hex, which
                // `bus_traffic` reads back.
                .arg(format!("file={},level=20", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run swtpm ({e}): {INSTALL_HINT}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().expect("wait for swtpm") {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    last = format!("swtpm exited with {status}: {err}");
                    break; // port taken meanwhile: try others
                }
                if listening(port + 1) && listening(port) {
                    return (child, port);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "swtpm did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start swtpm: {last}");
    }

    /// The TCTI string for this TPM (`TPM2TOOLS_TCTI`, `--tcti`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Reboot: an orderly TPM2_Shutdown (so the dictionary-attack counter
    /// is not charged for it), stop swtpm, start it again on the same state.
    /// PCRs and transient objects are reset; the seeds and NV stay. The
    /// TCP port may change: read [`SwTpm::tcti`] again.
    pub fn restart(&mut self) {
        self.power_off();
        self.power_on();
    }

    /// Take the TPM away: an orderly TPM2_Shutdown, then swtpm stops.
    /// Nothing listens at [`SwTpm::tcti`] until [`SwTpm::power_on`].
    pub fn power_off(&mut self) {
        if !self.running() {
            return;
        }
        let _ = self.tool("tpm2_shutdown").arg("-c").output();
        self.stop();
    }

    /// Start swtpm again on the same state (a fresh boot, as in
    /// [`SwTpm::restart`]); the TCP port may change. Does nothing while it
    /// runs.
    pub fn power_on(&mut self) {
        if self.running() {
            return;
        }
        let (child, port) = Self::spawn(self.state.path());
        self.child = child;
        self.port = port;
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        let _ = Command::new("swtpm_ioctl")
            .args(["--tcp", &format!("127.0.0.1:{}", self.port + 1), "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A tpm2-tools command (`tpm2_unseal`, …) aimed at this TPM.
    ///
    /// # Panics
    /// If the tool is not installed.
    pub fn tool(&self, name: &str) -> Command {
        require(name);
        let mut c = Command::new(name);
        c.env("TPM2TOOLS_TCTI", self.tcti())
            .current_dir(self.state.path());
        c
    }

    /// Run a tpm2-tools command; panic with its output if it fails.
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        let out = self
            .tool(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        assert!(
            out.status.success(),
            "{name} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Every byte of every command and response swtpm has seen so far
    /// (from its level-20 log), concatenated: what a probe on the bus
    /// between the host and a hardware TPM would capture.
    pub fn bus_traffic(&self) -> Vec<u8> {
        let log = std::fs::read_to_string(self.state.path().join("swtpm.log")).unwrap_or_default();
        let mut out = Vec::new();
        for line in log.lines() {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let hex_line = !tokens.is_empty()
                && tokens
                    .iter()
                    .all(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()));
            if hex_line {
                out.extend(tokens.iter().map(|t| u8::from_str_radix(t, 16).unwrap()));
            }
        }
        out
    }

    /// Extend a PCR of the sha256 bank with `digest` (changes the boot state).
    pub fn pcr_extend(&self, pcr: u8, digest: [u8; 32]) {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.run("tpm2_pcrextend", &[&format!("{pcr}:sha256={hex}")]);
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
