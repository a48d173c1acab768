//! The unlock agent (`coffer agent start|stop|status`), run as a user
//! would: the real binary, a detached agent, its socket in a private
//! $XDG_RUNTIME_DIR, and other processes (another uid among them) talking
//! to it.
#![cfg(feature = "cli")]

mod common;

use common::Home;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The vector keyring (docs/format.md §8.9): its backup key is 00 01 .. 1f,
/// so a test can look for it byte for byte.
const VECTOR_BK: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

/// A home with the version 2 vector keyring, a password slot enrolled
/// (password.txt), a folder `data` sealed into a.coffer, and a private
/// runtime folder `run` for the agent's socket.
struct Rig {
    home: Home,
}

impl Rig {
    fn new() -> Self {
        let home = Home::new();
        std::fs::copy(common::vectors().join("keyring-v2.json"), home.keyring()).unwrap();
        std::fs::copy(
            common::vectors().join("recovery-v1.txt"),
            home.recovery_key(),
        )
        .unwrap();
        let rig = Self { home };
        std::fs::create_dir(rig.runtime()).unwrap();
        std::fs::set_permissions(rig.runtime(), std::fs::Permissions::from_mode(0o700)).unwrap();
        rig.home.write("password.txt", "correct horse\n");
        rig.ok(&[
            "enroll",
            "password",
            "--new-password-file",
            "password.txt",
            "--recovery-key-file",
            "recovery.txt",
        ]);
        std::fs::create_dir(rig.home.path("data")).unwrap();
        rig.home.write("data/notes.txt", "agent test\n");
        rig.ok(&["seal", "data", "-o", "a.coffer"]);
        rig
    }

    fn runtime(&self) -> PathBuf {
        self.home.path("run")
    }

    fn coffer(&self) -> assert_cmd::Command {
        let mut c = self.home.coffer();
        c.env("XDG_RUNTIME_DIR", self.runtime()).arg("--no-prompt");
        c
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.coffer().args(args).output().unwrap()
    }

    #[track_caller]
    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        out
    }

    #[track_caller]
    fn fails<S: AsRef<OsStr>>(&self, code: i32, args: &[S]) -> Output {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        out
    }

    /// `agent start` with the password and `more`; the agent is stopped
    /// when the guard drops, whatever the test did.
    fn start(&self, more: &[&str]) -> Agent {
        let mut args = vec!["agent", "start", "--password-file", "password.txt"];
        args.extend(more);
        let out = self.ok(&args);
        says(
            &out,
            "agent started for key id 646a6f1a3e48f3fe8c988224ce56427e",
        );
        let status = self.ok(&["--json", "agent", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        Agent {
            pid: v["pid"].as_u64().unwrap() as u32,
            socket: PathBuf::from(v["socket"].as_str().unwrap()),
        }
    }

    /// `open a.coffer -o OUT` with no factor at all.
    fn open(&self, out: &str) -> Output {
        self.run(&["open", "a.coffer", "-o", out])
    }
}

/// A running agent; SIGTERM on drop (it is gone already, normally).
struct Agent {
    pid: u32,
    socket: PathBuf,
}

impl Agent {
    fn alive(&self) -> bool {
        // A zombie is not: the agent is not our child, so it is reaped
        // by init as soon as it exits.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|s| !s.contains(") Z "))
    }

    /// Wait until the process is gone and its socket removed.
    #[track_caller]
    fn wait_gone(&self, within: Duration) {
        let t = Instant::now();
        while self.alive() || self.socket.exists() {
            assert!(
                t.elapsed() < within,
                "the agent {} is still there after {within:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.alive() {
            let _ = std::process::Command::new("kill")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panic unless standard error says `what`.
#[track_caller]
fn says(o: &Output, what: &str) {
    assert!(text(&o.stderr).contains(what), "{}", text(&o.stderr));
}

#[test]
fn one_unlock_then_opens_verifies_and_passphrases_with_no_factor() {
    let r = Rig::new();
    // Without an agent and without a factor, nothing opens.
    r.fails(5, &["verify", "a.coffer"]);
    let agent = r.start(&[]);
    for out in ["one", "two"] {
        let o = r.open(out);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        common::tree::assert_same(
            &r.home.path("data"),
            &r.home.path(out).join("data"),
            Default::default(),
        );
    }
    let v = r.ok(&["--json", "verify", "a.coffer"]);
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["agent"], true, "{v}");
    assert_eq!(v["slot"], serde_json::Value::Null, "{v}");
    // The same passphrase as from the slots.
    let via_agent = r.ok(&["passphrase", "restic:photos"]).stdout;
    let via_slot = r
        .ok(&[
            "passphrase",
            "restic:photos",
            "--no-agent",
            "--recovery-key-file",
            "recovery.txt",
        ])
        .stdout;
    assert_eq!(via_agent, via_slot);
    // --slot names how to unlock: the agent is not asked.
    r.fails(5, &["verify", "a.coffer", "--slot", "password"]);
    // A second agent for the same key is refused, before any factor.
    let o = r.fails(1, &["agent", "start"]);
    says(&o, "already holds key id");

    let o = r.ok(&["agent", "stop"]);
    says(&o, "stopped: it forgot the key");
    agent.wait_gone(Duration::from_secs(10));
    r.fails(5, &["verify", "a.coffer"]);
    let o = r.fails(1, &["agent", "status"]);
    says(&o, "no agent is running");
    // Stopping none is no error.
    let o = r.ok(&["agent", "stop"]);
    says(&o, "no agent was running");
}

#[test]
fn the_agent_forgets_the_key_when_its_time_runs_out() {
    let r = Rig::new();
    let agent = r.start(&["--ttl", "3s"]);
    let s = r.ok(&["--json", "agent", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert!(s["expires_in_seconds"].as_u64().unwrap() <= 3, "{s}");
    agent.wait_gone(Duration::from_secs(30));
    r.fails(5, &["verify", "a.coffer"]);
    r.fails(1, &["agent", "status"]);
}

#[test]
fn the_agent_forgets_the_key_after_its_last_use() {
    let r = Rig::new();
    let agent = r.start(&["--max-uses", "2"]);
    r.ok(&["verify", "a.coffer"]);
    // Status is no use.
    r.ok(&["agent", "status"]);
    r.ok(&["passphrase", "borg:home"]);
    agent.wait_gone(Duration::from_secs(10));
    r.fails(5, &["verify", "a.coffer"]);
}

#[test]
fn an_archive_of_another_key_is_not_answered() {
    let r = Rig::new();
    let _agent = r.start(&[]);
    // Another owner's archive: its key id names no running agent, so the
    // agent is never asked, and nothing else can open it.
    let other = Home::new();
    other.init();
    std::fs::create_dir(other.path("d")).unwrap();
    other
        .coffer()
        .args(["seal", "d", "-o"])
        .arg(r.home.path("b.coffer"))
        .assert()
        .success();
    r.fails(5, &["verify", "b.coffer"]);
    // A header edited to carry this key id fails to authenticate at the
    // agent: corrupt (4), not a key.
    let mut bytes = std::fs::read(r.home.path("a.coffer")).unwrap();
    let header_len = coffer::archive::Header::read(&mut &bytes[..])
        .unwrap()
        .encoded_len();
    bytes[header_len - 1] ^= 1;
    std::fs::write(r.home.path("c.coffer"), &bytes).unwrap();
    let o = r.fails(4, &["verify", "c.coffer"]);
    says(&o, "unlock agent:");
    // The agent still serves.
    r.ok(&["verify", "a.coffer"]);
}

/// Everything that crosses the socket, both ways, through a proxy at
/// `socket` in front of the agent's socket `real` (an agent whose socket
/// is moved away ends: it cannot be put in its place).
fn record_traffic(
    socket: &Path,
    real: PathBuf,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let dir = socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let listener = UnixListener::bind(socket).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let t = std::thread::spawn(move || {
        for client in listener.incoming() {
            let mut client = client.unwrap();
            let mut agent = UnixStream::connect(&real).unwrap();
            // One request, one answer: the client sends its frame whole.
            let mut len = [0u8; 4];
            client.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            client.read_exact(&mut body).unwrap();
            // [protocol version, STOP]
            let stop = body == [1, 4];
            agent.write_all(&len).unwrap();
            agent.write_all(&body).unwrap();
            let mut answer = Vec::new();
            agent.read_to_end(&mut answer).unwrap();
            client.write_all(&answer).unwrap();
            let mut l = log.lock().unwrap();
            l.extend_from_slice(&len);
            l.extend_from_slice(&body);
            l.extend_from_slice(&answer);
            if stop {
                return;
            }
        }
    });
    (seen, t)
}

/// Whether `hay` holds the vector backup key: raw, in hex or in base64.
fn holds_the_key(hay: &[u8]) -> bool {
    use base64::Engine as _;
    let forms = [
        VECTOR_BK.to_vec(),
        hex::encode(VECTOR_BK).into_bytes(),
        hex::encode_upper(VECTOR_BK).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(VECTOR_BK)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(VECTOR_BK)
            .into_bytes(),
    ];
    forms
        .iter()
        .any(|f| hay.windows(f.len()).any(|w| w == f.as_slice()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn the_backup_key_never_crosses_the_socket_and_is_never_written() {
    let r = Rig::new();
    // The agent's own runtime folder; the commands look in r.runtime(),
    // where the proxy listens.
    let agent_runtime = r.home.path("run-agent");
    std::fs::create_dir(&agent_runtime).unwrap();
    std::fs::set_permissions(&agent_runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = r
        .coffer()
        .env("XDG_RUNTIME_DIR", &agent_runtime)
        .args(["agent", "start", "--password-file", "password.txt"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let real = agent_runtime.join("coffer/agent-646a6f1a3e48f3fe8c988224ce56427e.sock");
    let proxied = r
        .runtime()
        .join("coffer/agent-646a6f1a3e48f3fe8c988224ce56427e.sock");
    let (seen, proxy) = record_traffic(&proxied, real.clone());
    let s = r.ok(&["--json", "agent", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    let agent = Agent {
        pid: s["pid"].as_u64().unwrap() as u32,
        socket: real,
    };
    r.ok(&["verify", "a.coffer"]);
    assert_eq!(r.open("out").status.code(), Some(0));
    r.ok(&["passphrase", "kopia:x"]);
    r.ok(&["passphrase", "kopia:x", "--from", "a.coffer"]);
    r.ok(&["agent", "status"]);
    r.ok(&["agent", "stop"]);
    proxy.join().unwrap();
    std::fs::remove_file(&proxied).unwrap();
    let seen = seen.lock().unwrap();
    // The agent did answer: the payload key of a.coffer went through.
    let header =
        coffer::archive::Header::read(&mut std::fs::File::open(r.home.path("a.coffer")).unwrap())
            .unwrap();
    let bk = coffer::key::BackupKey::from_bytes(VECTOR_BK);
    let payload_key = header.payload_key_bytes(&bk).unwrap();
    assert!(
        seen.windows(32).any(|w| w == &payload_key[..]),
        "the proxy saw no payload key: it was not in the way"
    );
    assert!(!holds_the_key(&seen), "the backup key crossed the socket");
    agent.wait_gone(Duration::from_secs(10));
    // Nothing in the home or the runtime folder holds it, nor did the
    // agent's command line.
    let mut files = Vec::new();
    files_under(r.home.dir.path(), &mut files);
    assert!(files.len() > 5);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !holds_the_key(&bytes),
            "{} holds the backup key",
            f.display()
        );
    }
}

#[test]
fn the_agents_own_command_line_and_environment_hold_no_key() {
    let r = Rig::new();
    let agent = r.start(&[]);
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{}/{what}", agent.pid)).unwrap();
        assert!(!holds_the_key(&bytes), "/proc/{}/{what}", agent.pid);
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid)).unwrap();
    assert!(
        text(&cmdline).contains("agent\0serve"),
        "{}",
        text(&cmdline)
    );
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run `program args` as the unprivileged user `nobody` (setpriv,
/// util-linux), with `input` on its standard input.
fn as_nobody(program: &OsStr, args: &[&OsStr], env: &[(&str, &OsStr)], input: &[u8]) -> Output {
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A raw client: sends an `OPEN` request with the header on standard
/// input, prints the answer's bytes.
const RAW_CLIENT: &str = r#"
import socket, struct, sys
header = sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = b"\x01" + header
s.sendall(struct.pack(">I", len(body)) + body)
answer = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
sys.stdout.buffer.write(answer)
"#;

#[test]
fn another_user_is_refused_and_spends_no_use() {
    assert!(
        is_root(),
        "this test runs a client as another uid (setpriv): run it as root (CI does)"
    );
    let r = Rig::new();
    let agent = r.start(&["--max-uses", "1"]);
    // Open the way to the socket, as a careless chmod would: only the
    // agent's own check is left between that user and the key.
    for (dir, mode) in [
        (r.home.dir.path().to_path_buf(), 0o711),
        (r.runtime(), 0o711),
        (r.runtime().join("coffer"), 0o711),
        (agent.socket.clone(), 0o777),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let archive = std::fs::read(r.home.path("a.coffer")).unwrap();
    let header_len = coffer::archive::Header::read(&mut &archive[..])
        .unwrap()
        .encoded_len();
    let o = as_nobody(
        OsStr::new("python3"),
        &[
            OsStr::new("-c"),
            OsStr::new(RAW_CLIENT),
            agent.socket.as_os_str(),
        ],
        &[],
        &archive[..header_len],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let answer = o.stdout;
    assert!(answer.len() > 5, "{answer:?}");
    assert_eq!(answer[4], 1, "status: a failure of kind Other");
    let message = text(&answer[5..]);
    assert!(
        message.contains("refused") && message.contains("not uid 65534"),
        "{message}"
    );
    // coffer itself, as that user, does not use an agent of another uid.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let copy = dir.path().join("a.coffer");
    std::fs::write(&copy, &archive).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exe = assert_cmd::cargo::cargo_bin("coffer");
    let o = as_nobody(
        exe.as_os_str(),
        &[
            OsStr::new("--no-prompt"),
            OsStr::new("verify"),
            copy.as_os_str(),
        ],
        &[
            ("XDG_RUNTIME_DIR", r.runtime().as_os_str()),
            ("COFFER_KEYRING", dir.path().join("none.json").as_os_str()),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    says(&o, "served by uid 0, not by you (uid 65534): not used");
    // Neither spent the one use the owner allowed.
    assert!(agent.alive());
    r.ok(&["verify", "a.coffer"]);
    agent.wait_gone(Duration::from_secs(10));
}

#[test]
fn the_agent_refuses_a_folder_others_can_enter_and_needs_a_runtime_folder() {
    let r = Rig::new();
    std::fs::create_dir(r.runtime().join("coffer")).unwrap();
    std::fs::set_permissions(
        r.runtime().join("coffer"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let o = r.fails(1, &["agent", "start", "--password-file", "password.txt"]);
    says(&o, "no one else can enter");
    let o = r
        .home
        .coffer()
        .args([
            "--no-prompt",
            "agent",
            "start",
            "--password-file",
            "password.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    says(&o, "XDG_RUNTIME_DIR");
    // A wrong password starts nothing.
    std::fs::set_permissions(
        r.runtime().join("coffer"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    r.home.write("wrong.txt", "wrong\n");
    r.fails(3, &["agent", "start", "--password-file", "wrong.txt"]);
    assert_eq!(
        common::listing(&r.runtime().join("coffer")),
        Vec::<String>::new()
    );
}

#[test]
fn rotate_stops_the_agent_of_the_old_key() {
    let r = Rig::new();
    let agent = r.start(&[]);
    let o = r.ok(&[
        "rotate",
        "--recovery-key-file",
        "recovery.txt",
        "--password-file",
        "password.txt",
        "--recovery-key-out",
        "new.txt",
    ]);
    assert!(
        text(&o.stderr)
            .contains("the agent holding the old key 646a6f1a3e48f3fe8c988224ce56427e was stopped"),
        "{}",
        text(&o.stderr)
    );
    agent.wait_gone(Duration::from_secs(10));
}

/// The issue's case: one PIN (a TPM's, on swtpm), then the TPM is gone
/// altogether, and archives still open through the agent.
#[cfg(feature = "tpm2")]
#[test]
fn one_tpm_pin_then_opens_with_the_tpm_gone() {
    let mut rig = common::backend::Rig::new(common::backend::Tpm2::with_pin);
    let runtime = rig.home.path("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut start = common::backend::args(["agent", "start"]);
    start.extend(rig.backend.factor_args());
    let o = run_with_runtime(&rig, &runtime, &start);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(rig.backend.take_away());
    for out in ["one", "two", "three"] {
        let o = run_with_runtime(
            &rig,
            &runtime,
            &common::backend::args(["open", "a.coffer", "-o", out]),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        rig.expect_opened(out, "open through the agent");
    }
    let o = run_with_runtime(&rig, &runtime, &common::backend::args(["agent", "stop"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // Without the agent and the TPM, only the recovery key is left.
    let o = run_with_runtime(
        &rig,
        &runtime,
        &common::backend::args(["verify", "a.coffer"]),
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    rig.backend.bring_back();
}

#[cfg(feature = "tpm2")]
fn run_with_runtime(
    rig: &common::backend::Rig,
    runtime: &Path,
    args: &[std::ffi::OsString],
) -> Output {
    rig.coffer()
        .env("XDG_RUNTIME_DIR", runtime)
        .arg("--no-prompt")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_foreground_agent_serves_until_signalled_and_removes_its_socket() {
    let r = Rig::new();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"))
        .args([
            "--no-prompt",
            "agent",
            "start",
            "--foreground",
            "--ttl",
            "none",
            "--password-file",
            "password.txt",
        ])
        .env_clear()
        .env("HOME", r.home.dir.path())
        .env("COFFER_KEYRING", r.home.keyring())
        .env("XDG_RUNTIME_DIR", r.runtime())
        .current_dir(r.home.dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = r
        .runtime()
        .join("coffer/agent-646a6f1a3e48f3fe8c988224ce56427e.sock");
    let t = Instant::now();
    while !socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let s = r.ok(&["--json", "agent", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["pid"], child.id(), "{s}");
    assert_eq!(s["expires_in_seconds"], serde_json::Value::Null, "{s}");
    r.ok(&["verify", "a.coffer"]);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    // Ended by the agent itself, on the signal: the key dropped on the
    // way out, and the socket removed.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ended (interrupted): it forgot the key"));
    assert!(!socket.exists());
    r.fails(5, &["verify", "a.coffer"]);
}

#[test]
fn an_agent_whose_socket_is_removed_forgets_the_key_and_exits() {
    // As logind removes $XDG_RUNTIME_DIR at the last logout: no command
    // could reach the agent any more, so it must not go on holding the key.
    let r = Rig::new();
    let agent = r.start(&["--ttl", "none"]);
    std::fs::remove_dir_all(r.runtime().join("coffer")).unwrap();
    agent.wait_gone(Duration::from_secs(10));
    // And a new one starts.
    let again = r.start(&[]);
    r.ok(&["agent", "stop"]);
    again.wait_gone(Duration::from_secs(10));
}

#[test]
fn a_socket_left_by_a_dead_agent_is_replaced_and_only_one_of_two_starts_wins() {
    let r = Rig::new();
    let dir = r.runtime().join("coffer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A socket nobody listens on any more.
    drop(UnixListener::bind(dir.join("agent-646a6f1a3e48f3fe8c988224ce56427e.sock")).unwrap());
    let agent = r.start(&[]);
    r.ok(&["verify", "a.coffer"]);
    r.ok(&["agent", "stop"]);
    agent.wait_gone(Duration::from_secs(10));

    // Two at once: one agent, one clear refusal.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
            c.args([
                "--no-prompt",
                "agent",
                "start",
                "--password-file",
                "password.txt",
            ])
            .env_clear()
            .env("HOME", r.home.dir.path())
            .env("COFFER_KEYRING", r.home.keyring())
            .env("XDG_RUNTIME_DIR", r.runtime())
            .current_dir(r.home.dir.path());
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        outs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    let refused = outs.iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    says(refused, "already");
    let s = r.ok(&["--json", "agent", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    let agent = Agent {
        pid: s["pid"].as_u64().unwrap() as u32,
        socket: PathBuf::from(s["socket"].as_str().unwrap()),
    };
    // The loser's agent, if it got as far as starting, was killed.
    let agents = std::process::Command::new("pgrep")
        .args(["-f", &format!("agent serve .*{}", r.runtime().display())])
        .output()
        .unwrap();
    assert_eq!(
        text(&agents.stdout).lines().count(),
        1,
        "{}",
        text(&agents.stdout)
    );
    r.ok(&["agent", "stop"]);
    agent.wait_gone(Duration::from_secs(10));
}

#[test]
fn a_silent_caller_holds_up_no_one() {
    let r = Rig::new();
    let agent = r.start(&[]);
    // Half a request, then nothing: the agent serves others meanwhile.
    let mut silent = UnixStream::connect(&agent.socket).unwrap();
    silent.write_all(&[0, 0, 0, 9, 1]).unwrap();
    let t = Instant::now();
    r.ok(&["verify", "a.coffer"]);
    r.ok(&["agent", "stop"]);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    agent.wait_gone(Duration::from_secs(10));
    drop(silent);
}

#[test]
fn a_factor_given_is_checked_not_the_agent() {
    let r = Rig::new();
    let _agent = r.start(&[]);
    r.home.write("wrong.txt", "wrong\n");
    // Checking a password: the agent must not answer in its stead.
    r.fails(3, &["verify", "a.coffer", "--password-file", "wrong.txt"]);
    r.ok(&["verify", "a.coffer", "--password-file", "password.txt"]);
    r.fails(3, &["passphrase", "x:y", "--password-file", "wrong.txt"]);
    // --no-agent alone: no factor, nothing opens.
    r.fails(5, &["verify", "a.coffer", "--no-agent"]);
    // An archive of a key the keyring does not know: refused before the
    // agent (or any factor) is asked.
    let other = Home::new();
    other.init();
    std::fs::create_dir(other.path("d")).unwrap();
    other
        .coffer()
        .args(["seal", "d", "-o"])
        .arg(r.home.path("b.coffer"))
        .assert()
        .success();
    let o = r.fails(1, &["passphrase", "x:y", "--from", "b.coffer"]);
    says(&o, "neither holds nor lists");
    assert!(o.stdout.is_empty());
}
