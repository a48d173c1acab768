//! `coffer agent start|stop|status`: the unlock agent's life around
//! [`coffer::agent`], and how the other commands find it.
//!
//! `start` unlocks in this process (prompts and all), then either serves
//! here (`--foreground`) or runs `coffer agent serve` (hidden) in a new
//! process group, hands it the key through a pipe on its standard input,
//! and returns once it says its socket listens. The key never goes through
//! argv, the environment or a file.
//!
//! Must never: print the key, or start a second agent for one key.

use super::interrupt;
use super::{Cli, Env, print_json};
use clap::{Args, Subcommand};
use coffer::agent::{self, Agent, Ended, Limits, Socket, Status};
use coffer::error::{Category, Error, Result};
use coffer::key::{BackupKey, KEY_LEN, KeyId};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use zeroize::Zeroizing;

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
}

/// `--ttl`: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Ttl(Option<Duration>);

fn parse_ttl(s: &str) -> std::result::Result<Ttl, String> {
    if s == "none" {
        return Ok(Ttl(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Ttl(Some(d))),
        Ok(_) => Err("a TTL of zero would forget the key at once".into()),
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
/// to unlock; `None` when it should not ask one (--no-agent, --slot, no
/// runtime folder).
pub(super) fn socket_for(cli: &Cli, key_id: &KeyId) -> Option<PathBuf> {
    if cli.unlock.no_agent || cli.unlock.slot.is_some() {
        return None;
    }
    runtime_dir().map(|d| agent::socket_path(&d, key_id))
}

/// Ask the agent through `ask`; `Ok(None)` to unlock with the slots
/// instead (no agent, or one that failed for reasons of its own, said as
/// a warning). A verdict on the archive itself (corrupt, a bad name) is
/// final: the slots would reach the same.
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
        Err(e) if matches!(e.category(), Category::Corrupt | Category::Usage) => Err(e),
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
    let env = cli.env()?;
    let runtime = need_runtime_dir()?;
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
    let limits = Limits {
        ttl: args.ttl.0,
        max_uses: args.max_uses,
    };
    if args.foreground {
        let agent = Agent::new(bk, limits);
        if agent.key_id() != keyring.key_id {
            return Err(Error::Refused(format!(
                "the key unlocked is not key id {}: nothing served",
                keyring.key_id
            )));
        }
        return serve_here(&env.ui, agent, &runtime);
    }
    spawn(cli, &env, bk, args, &runtime, &keyring.key_id)
}

/// Start `coffer agent serve` in its own process group (a Ctrl-C at this
/// terminal does not reach it), give it the key through its standard
/// input, and wait for the line that says it listens.
fn spawn(
    cli: &Cli,
    env: &Env,
    bk: BackupKey,
    args: &StartArgs,
    runtime: &Path,
    key_id: &KeyId,
) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<this program>", e))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["agent", "serve", "--ttl", &args.ttl.arg(), "--runtime-dir"])
        .arg(runtime);
    if let Some(n) = args.max_uses {
        cmd.args(["--max-uses", &n.to_string()]);
    }
    let mut child = cmd
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&exe, e))?;
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
        let _ = child.wait();
        return Err(child_error(&line));
    }
    let socket = agent::socket_path(runtime, key_id);
    match agent::status(&socket)? {
        Some(s) if s.key_id == key_id.to_string() => report(cli, env, &socket, &s, "started"),
        _ => Err(Error::Refused(format!(
            "the agent started but does not answer for key id {key_id} at {}",
            socket.display()
        ))),
    }
}

/// What the detached agent prints once its socket listens.
const READY: &str = "ready";

/// The error the detached agent reported on its standard output
/// (`error CODE MESSAGE`), or that it ended without a word.
fn child_error(line: &str) -> Error {
    let mut parts = line.trim_end().splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("error"), Some(code), Some(message)) => Error::Agent {
            category: match code {
                "2" => Category::Usage,
                "4" => Category::Corrupt,
                "5" => Category::NoUsableSlot,
                _ => Category::Other,
            },
            message: coffer::ui::escaped(message),
        },
        _ => Error::Refused("the agent ended before its socket listened".into()),
    }
}

/// `coffer agent serve`: read the key from the pipe `start` wrote it to,
/// bind, say `ready` (or `error CODE MESSAGE`) on standard output, serve.
fn serve_detached(args: &ServeArgs) -> Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Error::Usage(
            "`coffer agent serve` is what `coffer agent start` runs, and reads the key from a pipe: use `coffer agent start`".into(),
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let mut rest = [0u8; 1];
    let mut input = stdin.lock();
    let read = input
        .read_exact(&mut key[..])
        .and_then(|()| input.read(&mut rest));
    let limits = Limits {
        ttl: args.ttl.0,
        max_uses: args.max_uses,
    };
    let bound = match read {
        Ok(0) => {
            let agent = Agent::new(BackupKey::from_bytes(*key), limits);
            drop(key);
            Socket::bind(&args.runtime_dir, &agent.key_id()).map(|s| (agent, s))
        }
        _ => Err(Error::Usage(
            "expected the 32-byte key on standard input".into(),
        )),
    };
    let mut out = std::io::stdout().lock();
    let (mut agent, socket) = match bound {
        Ok(b) => b,
        Err(e) => {
            let code = match e.category() {
                Category::Usage => 2,
                Category::Corrupt => 4,
                Category::NoUsableSlot => 5,
                _ => 1,
            };
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

/// `--foreground`: serve in this process until the agent ends, saying when
/// it listens and when it ended.
fn serve_here(ui: &super::term::TerminalUi, mut agent: Agent, runtime: &Path) -> Result<()> {
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
    agent.serve(socket.listener(), Some(wake.as_fd()))
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
        Some(s) => report(cli, &env, &socket, &s, "running"),
        None => Err(Error::Refused(format!(
            "no agent is running for key id {id}"
        ))),
    }
}

/// Say what an agent is: on stderr, or as JSON on stdout.
fn report(cli: &Cli, env: &Env, socket: &Path, s: &Status, verb: &str) -> Result<()> {
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
    env.ui.info(&format!(
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
        assert_eq!(e.category(), Category::Usage);
        assert!(e.to_string().contains("expected the key"));
        assert_eq!(child_error("").category(), Category::Other);
    }
}
