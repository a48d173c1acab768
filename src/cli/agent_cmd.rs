//! `coffer agent start|stop|status`: the unlock agent's life around
//! [`coffer::agent`], and how the other commands find it.
//!
//! `start` unlocks in this process (prompts and all), then either serves
//! here (`--foreground`) or runs `coffer agent serve` (hidden), which
//! starts a session of its own (no terminal), hands it the key through a
//! pipe on its standard input, and returns once it says its socket
//! listens. The key never goes through argv, the environment or a file.
//!
//! Must never: print the key, or start a second agent for one key.

use super::interrupt;
use super::term::TerminalUi;
use super::{Cli, Env, print_json};
use clap::{Args, Subcommand};
use coffer::agent::{self, Agent, Ended, Limits, Socket, Status, wire};
use coffer::error::{Category, Error, Result};
use coffer::key::{BackupKey, KEY_LEN, KeyId};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// `coffer agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Unlock once and keep the backup key in an agent, until --ttl,
    /// --max-uses or `coffer agent stop`
    Start(StartArgs),
    /// Make the agent forget the key and exit
    Stop,
    /// Whether an agent holds the keyring's key, and for how long
    Status,
    /// The detached agent `start` runs: reads the key from a pipe on
    /// standard input (internal)
    #[command(hide = true)]
    Serve(ServeArgs),
}

/// `coffer agent start` options.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Forget the key this long after starting (15m, 2h, 1d; time asleep
    /// counts), or `none` to keep it until stopped
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_ttl)]
    ttl: Ttl,
    /// Forget the key after giving this many archive keys and passphrases
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_uses: Option<u64>,
    /// Stay attached and serve here until stopped or signalled (for a
    /// systemd service)
    #[arg(long)]
    foreground: bool,
}

/// `coffer agent serve` options (set by `start`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, value_parser = parse_ttl)]
    ttl: Ttl,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_uses: Option<u64>,
    #[arg(long)]
    runtime_dir: PathBuf,
    /// The key id the key on standard input must have.
    #[arg(long)]
    key_id: String,
}

/// `--ttl`: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Ttl(Option<Duration>);

/// The longest TTL: past it, say `none`.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

fn parse_ttl(s: &str) -> std::result::Result<Ttl, String> {
    if s == "none" {
        return Ok(Ttl(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("a TTL of zero would forget the key at once".into()),
        Ok(d) if d > MAX_TTL => {
            Err("a TTL is at most a year; `none` keeps the key until stopped".into())
        }
        Ok(d) => Ok(Ttl(Some(d))),
        Err(e) => Err(format!("{e} (such as 15m, 2h, 1d, or none)")),
    }
}

impl Ttl {
    /// As `serve --ttl` reads it back.
    fn arg(self) -> String {
        self.0
            .map_or_else(|| "none".into(), |d| format!("{}ms", d.as_millis()))
    }
}

/// `$XDG_RUNTIME_DIR`: the per-login folder (tmpfs, the user's own) the
/// agent's socket lives under; `None` when unset or not absolute.
fn runtime_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn need_runtime_dir() -> Result<PathBuf> {
    runtime_dir().ok_or_else(|| {
        Error::Usage(
            "$XDG_RUNTIME_DIR is not set (or not an absolute path): the agent's socket lives there. A login session sets it; so does systemd for a user service".into(),
        )
    })
}

/// The socket of the agent that would hold `key_id`, for a command about
/// to unlock; `None` when it should not ask one: --no-agent, --slot or a
/// factor file given (the person said how to unlock, perhaps to check
/// that factor), or no runtime folder.
pub(super) fn socket_for(cli: &Cli, key_id: &KeyId) -> Option<PathBuf> {
    let u = &cli.unlock;
    let named = u.slot.is_some()
        || !u.recovery_key_file.is_empty()
        || !u.password_file.is_empty()
        || !u.pin_file.is_empty();
    if u.no_agent || named {
        return None;
    }
    runtime_dir().map(|d| agent::socket_path(&d, key_id))
}

/// Ask the agent through `ask`; `Ok(None)` to unlock with the slots
/// instead: no agent, one that declined, or one that failed for reasons of
/// its own (said as a warning). Only a header that did not authenticate
/// under its key (`Corrupt`) is final: the slots would reach the same.
pub(super) fn asked<T>(
    cli: &Cli,
    env: &Env,
    socket: &Path,
    result: Result<Option<T>>,
) -> Result<Option<T>> {
    match result {
        Ok(Some(v)) => {
            if cli.verbose {
                env.ui
                    .info(&format!("unlocked by the agent ({})", socket.display()));
            }
            Ok(Some(v))
        }
        Ok(None) => Ok(None),
        Err(e) if e.category() == Category::Corrupt => Err(e),
        Err(e) => {
            env.ui.warn(&format!("{e}; unlocking with the slots"));
            Ok(None)
        }
    }
}

/// After `rotate`: stop the agent holding the retired key, if one runs, so
/// no process keeps a key the owner just retired. Returns whether one was
/// stopped; a failure to reach it is a warning.
pub(super) fn stop_retired(env: &Env, old: &KeyId) -> bool {
    let Some(socket) = runtime_dir().map(|d| agent::socket_path(&d, old)) else {
        return false;
    };
    match agent::stop(&socket) {
        Ok(true) => {
            env.ui
                .info(&format!("the agent holding the old key {old} was stopped"));
            true
        }
        Ok(false) => false,
        Err(e) => {
            env.ui.warn(&format!(
                "{e}: an agent holding the old key may still run (its socket: {}); end its process",
                socket.display()
            ));
            false
        }
    }
}

/// `coffer agent ...`.
pub(super) fn run(cli: &Cli, cmd: &AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::Start(args) => start(cli, args),
        AgentCmd::Stop => stop(cli),
        AgentCmd::Status => status(cli),
        AgentCmd::Serve(args) => serve_detached(args),
    }
}

/// The keyring's key id, and the agent socket for it.
fn keyring_socket(env: &Env) -> Result<(KeyId, PathBuf)> {
    let keyring = env.keyring.load()?;
    keyring.refuse_seal_only(&env.keyring.path)?;
    Ok((
        keyring.key_id,
        agent::socket_path(&need_runtime_dir()?, &keyring.key_id),
    ))
}

fn start(cli: &Cli, args: &StartArgs) -> Result<()> {
    let runtime = need_runtime_dir()?;
    let env = cli.env()?;
    // Before any factor is asked for: a second agent would only cost a PIN.
    let (old_id, socket) = keyring_socket(&env)?;
    agent::prepare_dir(&runtime)?;
    if agent::status(&socket)?.is_some() {
        return Err(Error::Refused(format!(
            "an agent already holds key id {old_id} ({}): `coffer agent stop` first",
            socket.display()
        )));
    }
    let (keyring, bk, lock) = super::unlock_and_store_upgrade(cli, &env)?;
    drop(lock);
    // The factors read or typed for that unlock: not kept for the agent's
    // life (a password outlives a `rotate`, the key does not).
    let Env { ui, factors, .. } = env;
    drop(factors);
    let limits = Limits {
        ttl: args.ttl.0,
        max_uses: args.max_uses,
    };
    if args.foreground {
        let agent = Agent::new(Box::new(bk), limits);
        if agent.key_id() != keyring.key_id {
            return Err(Error::Refused(format!(
                "the key unlocked is not key id {}: nothing served",
                keyring.key_id
            )));
        }
        return serve_here(&ui, agent, &runtime);
    }
    spawn(cli, &ui, bk, args, &runtime, &keyring.key_id)
}

/// Start `coffer agent serve`, give it the key through its standard
/// input, and wait for the line that says it listens. On any failure after
/// it started, it is killed: no agent is left holding the key unreported.
fn spawn(
    cli: &Cli,
    ui: &TerminalUi,
    bk: BackupKey,
    args: &StartArgs,
    runtime: &Path,
    key_id: &KeyId,
) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<this program>", e))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["agent", "serve", "--ttl", &args.ttl.arg(), "--runtime-dir"])
        .arg(runtime)
        .args(["--key-id", &key_id.to_string()]);
    if let Some(n) = args.max_uses {
        cmd.args(["--max-uses", &n.to_string()]);
    }
    let mut child = cmd
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&exe, e))?;
    let started = (|| {
        let mut input = child.stdin.take().expect("piped");
        let sent = input.write_all(bk.expose());
        drop(input);
        drop(bk);
        sent.map_err(|e| Error::io("<agent's standard input>", e))?;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped");
        std::io::BufReader::new(out)
            .take(64 * 1024)
            .read_line(&mut line)
            .map_err(|e| Error::io("<agent's standard output>", e))?;
        if line.trim_end() != READY {
            return Err(child_error(&line));
        }
        let socket = agent::socket_path(runtime, key_id);
        match agent::status(&socket)? {
            Some(s) if s.key_id == key_id.to_string() && s.pid == child.id() => Ok((socket, s)),
            _ => Err(Error::Refused(format!(
                "the agent started but does not answer for key id {key_id} at {}",
                socket.display()
            ))),
        }
    })();
    match started {
        Ok((socket, s)) => report(cli, ui, &socket, &s, "started"),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// What the detached agent prints once its socket listens.
const READY: &str = "ready";

/// The error the detached agent reported on its standard output
/// (`error CODE MESSAGE`, CODE as on the agent's wire), or that it ended
/// without a word.
fn child_error(line: &str) -> Error {
    let mut parts = line.trim_end().splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("error"), Some(code), Some(message)) => Error::Agent {
            category: code
                .parse()
                .ok()
                .and_then(wire::code_category)
                .unwrap_or(Category::Other),
            message: coffer::ui::escaped(message),
        },
        _ => Error::Refused("the agent ended before its socket listened".into()),
    }
}

/// `coffer agent serve`: leave the caller's session (no controlling
/// terminal; its hangup and Ctrl-C do not reach the agent), read the key
/// from the pipe `start` wrote it to, check its key id, bind, say `ready`
/// (or `error CODE MESSAGE`) on standard output, serve.
fn serve_detached(args: &ServeArgs) -> Result<()> {
    if std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "`coffer agent serve` is what `coffer agent start` runs, and reads the key from a pipe: use `coffer agent start`".into(),
        ));
    }
    let _ = rustix::process::setsid();
    let limits = Limits {
        ttl: args.ttl.0,
        max_uses: args.max_uses,
    };
    let bound = read_key().and_then(|bk| {
        let agent = Agent::new(bk, limits);
        if agent.key_id().to_string() != args.key_id {
            return Err(Error::Usage(format!(
                "the key given is not key id {}",
                args.key_id
            )));
        }
        Socket::bind(&args.runtime_dir, &agent.key_id()).map(|s| (agent, s))
    });
    let mut out = std::io::stdout().lock();
    let (mut agent, socket) = match bound {
        Ok(b) => b,
        Err(e) => {
            let code = wire::category_code(e.category());
            let message = e.to_string().replace('\n', " ");
            let _ = writeln!(out, "error {code} {message}");
            return Err(e);
        }
    };
    agent.lock_memory();
    writeln!(out, "{READY}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("<standard output>", e))?;
    drop(out);
    serve(agent, &socket).map(|_| ())
}

/// The 32-byte key, and nothing more, from standard input: read straight
/// from the descriptor into its box (std's buffered standard input would
/// keep a copy for the life of the process).
fn read_key() -> Result<Box<BackupKey>> {
    let mut key = Box::new(BackupKey::from_bytes([0; KEY_LEN]));
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 1]);
    let stdin = std::io::stdin();
    let mut n = 0;
    loop {
        match rustix::io::read(stdin.as_fd(), &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("<standard input>", e.into())),
        }
        if n > KEY_LEN {
            break;
        }
    }
    if n != KEY_LEN {
        return Err(Error::Usage(
            "expected the 32-byte key on standard input".into(),
        ));
    }
    let mut bytes = [0u8; KEY_LEN];
    bytes.copy_from_slice(&buf[..KEY_LEN]);
    *key = BackupKey::from_bytes(bytes);
    bytes.zeroize();
    Ok(key)
}

/// `--foreground`: serve in this process until the agent ends, saying when
/// it listens and when it ended.
fn serve_here(ui: &TerminalUi, mut agent: Agent, runtime: &Path) -> Result<()> {
    let locked = agent.lock_memory();
    let socket = Socket::bind(runtime, &agent.key_id())?;
    let id = agent.key_id();
    ui.info(&format!(
        "agent for key id {id} listening on {}{}",
        socket.path().display(),
        if locked {
            ""
        } else {
            " (memory not locked: see docs/agent.md)"
        }
    ));
    let ended = serve(agent, &socket)?;
    ui.info(&format!(
        "agent for key id {id} ended ({ended}): it forgot the key"
    ));
    Ok(())
}

/// Serve until the agent ends or SIGINT, SIGTERM or SIGHUP arrives (those
/// not inherited as ignored): a signal wakes the loop through a socket
/// pair, so the key is dropped, and wiped, on the way out.
fn serve(agent: Agent, socket: &Socket) -> Result<Ended> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (wake, waker) = UnixStream::pair().map_err(|e| Error::io("<socket pair>", e))?;
    let ignored = interrupt::inherited_ignored();
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        if ignored & (1u64 << (signal - 1)) == 0 {
            let w = waker
                .try_clone()
                .map_err(|e| Error::io("<socket pair>", e))?;
            signal_hook::low_level::pipe::register(signal, w)
                .map_err(|e| Error::io("<signal handler>", e))?;
        }
    }
    agent.serve(socket, Some(wake.as_fd()))
}

fn stop(cli: &Cli) -> Result<()> {
    let env = cli.env()?;
    let (id, socket) = keyring_socket(&env)?;
    let was = agent::stop(&socket)?;
    if cli.json {
        return print_json(&json!({"key_id": id.to_string(), "stopped": was}));
    }
    env.ui.info(&if was {
        format!("agent for key id {id} stopped: it forgot the key")
    } else {
        format!("no agent was running for key id {id}")
    });
    Ok(())
}

fn status(cli: &Cli) -> Result<()> {
    let env = cli.env()?;
    let (id, socket) = keyring_socket(&env)?;
    match agent::status(&socket)? {
        Some(s) => report(cli, &env.ui, &socket, &s, "running"),
        None => Err(Error::Refused(format!(
            "no agent is running for key id {id}"
        ))),
    }
}

/// Say what an agent is: on stderr, or as JSON on stdout.
fn report(cli: &Cli, ui: &TerminalUi, socket: &Path, s: &Status, verb: &str) -> Result<()> {
    if cli.json {
        return print_json(&json!({
            "key_id": s.key_id,
            "pid": s.pid,
            "socket": socket,
            "expires_in_seconds": s.expires_in_seconds,
            "uses_left": s.uses_left,
            "memory_locked": s.memory_locked,
        }));
    }
    let until = match (s.expires_in_seconds, s.uses_left) {
        (Some(0), _) => "forgets the key now".to_owned(),
        (Some(t), Some(n)) => format!(
            "forgets the key in {} or after {n} more answers",
            humantime::format_duration(Duration::from_secs(t))
        ),
        (Some(t), None) => format!(
            "forgets the key in {}",
            humantime::format_duration(Duration::from_secs(t))
        ),
        (None, Some(n)) => format!("forgets the key after {n} more answers"),
        (None, None) => "keeps the key until `coffer agent stop`".into(),
    };
    let memory = if s.memory_locked {
        "memory locked"
    } else {
        "memory not locked: see docs/agent.md"
    };
    ui.info(&format!(
        "agent {verb} for key id {} (pid {}, {}): {until}; {memory}",
        s.key_id,
        s.pid,
        socket.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("15m").unwrap().0, Some(Duration::from_secs(900)));
        assert_eq!(parse_ttl("none").unwrap().0, None);
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        for t in ["15m", "1d", "none", "1500ms"] {
            let ttl = parse_ttl(t).unwrap();
            assert_eq!(parse_ttl(&ttl.arg()).unwrap().0, ttl.0);
        }
    }

    #[test]
    fn child_errors_keep_their_kind() {
        let e = child_error("error 2 expected the key\n");
        assert_eq!(child_error("error 4 x").category(), Category::Corrupt);
        assert_eq!(e.category(), Category::Usage);
        assert!(e.to_string().contains("expected the key"));
        assert_eq!(child_error("").category(), Category::Other);
    }
}
