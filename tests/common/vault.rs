//! The key vault's fixtures: a SoftHSM token sealing the server's secrets,
//! a real `coffer vault serve` on loopback, and a throwaway PostgreSQL
//! cluster. Shared by tests/vault.rs and tests/backends.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const PIN: &str = "4321";

/// A SoftHSM token of its own, in a temp dir.
pub struct Token {
    pub dir: tempfile::TempDir,
}

impl Token {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), PIN).unwrap();
        let t = Self { dir };
        let ok = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", t.conf())
            .args(["--init-token", "--free", "--label", "vault-test"])
            .args(["--so-pin", "123456", "--pin", PIN])
            .stdout(Stdio::null())
            .status()
            .expect("softhsm2-util (hsm-sim/install-deps.sh installs it)");
        assert!(ok.success());
        t
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }
}

/// A running `coffer vault serve`, killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    /// `http://ADDR` of `/metrics` and `/healthz`, with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Server {
    pub fn start(token: &Token, db: &Path, max_guesses: u32) -> Self {
        Self::start_db(token, &format!("sqlite:{}", db.display()), max_guesses)
    }

    pub fn start_db(token: &Token, db: &str, max_guesses: u32) -> Self {
        Self::start_with(token, db, max_guesses, &["--listen", "127.0.0.1:0"])
    }

    /// With `args` (which include `--listen`).
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        token: &Token,
        db: &str,
        max_guesses: u32,
        args: &[S],
    ) -> Self {
        Self::start_logging(token, db, max_guesses, args, Stdio::inherit())
    }

    /// [`Server::start_with`], its standard error (the audit trail) to
    /// `stderr`.
    pub fn start_logging<S: AsRef<std::ffi::OsStr>>(
        token: &Token,
        db: &str,
        max_guesses: u32,
        args: &[S],
        stderr: Stdio,
    ) -> Self {
        let mut child = serve_command(token, db, args)
            .args(["--max-guesses", &max_guesses.to_string()])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .to_owned();
        let metrics = args
            .iter()
            .any(|a| a.as_ref() == "--metrics-listen")
            .then(|| {
                line.clear();
                out.read_line(&mut line).unwrap();
                line.trim()
                    .strip_prefix("metrics on ")
                    .and_then(|m| m.strip_suffix("/metrics"))
                    .unwrap_or_else(|| panic!("no metrics address: {line:?}"))
                    .to_owned()
            });
        Self {
            child,
            url,
            metrics,
        }
    }
}

/// `coffer vault serve --db DB ARGS`, its secrets sealed by `token`.
fn serve_command<S: AsRef<std::ffi::OsStr>>(token: &Token, db: &str, args: &[S]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("coffer"));
    c.env("SOFTHSM2_CONF", token.conf())
        .args(["vault", "serve", "--db", db])
        .args(args)
        .args(["--hsm-module", SOFTHSM])
        .args(["--hsm-uri", "pkcs11:token=vault-test;object=coffer-vault"])
        .arg("--hsm-pin-file")
        .arg(token.dir.path().join("pin"));
    c
}

/// `coffer vault serve` with `args` (which include `--listen`), run to be
/// refused or to adopt a database: its output once it exited
/// (at most 30 s; a server that starts instead fails the test).
pub fn serve_until_exit(token: &Token, db: &str, args: &[&str]) -> std::process::Output {
    let mut child = serve_command(token, db, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the server started: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster on a free loopback port, stopped on drop.
/// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    pub fn as_pg(&self, prog: &str) -> Command {
        let exe = self.bin.join(prog);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A cluster started with `extra` server options (`-c name=value ...`).
    pub fn start_with(extra: &str) -> Self {
        let pg = Self::new_dir();
        let data = pg.data();
        let out = pg
            .as_pg("initdb")
            .args(["-A", "trust", "-U", "coffer", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        succeeded(&out);
        pg.run(extra);
        pg
    }

    /// A hot standby of `primary` (pg_basebackup -R), connecting as
    /// `application_name=NAME`, started.
    pub fn start_with_standby(primary: &Postgres, name: &str) -> Self {
        let pg = Self::new_dir();
        let conn = format!(
            "host=127.0.0.1 port={} user=coffer application_name={name}",
            primary.port
        );
        let out = pg
            .as_pg("pg_basebackup")
            .args(["-R", "-X", "stream", "-d", &conn, "-D"])
            .arg(pg.data())
            .output()
            .unwrap();
        succeeded(&out);
        pg.run("");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL the postmaster, as a machine dying would (its backends end
    /// when they notice).
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        let ok = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(ok.success());
    }

    /// Promote a standby to primary and wait until it is.
    pub fn promote(&self) {
        let out = self
            .as_pg("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.data())
            .arg("promote")
            .output()
            .unwrap();
        succeeded(&out);
    }

    /// `psql -tA -c SQL` on this cluster: its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-tA", "-h", "127.0.0.1", "-U", "coffer", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn new_dir() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (hsm-sim/install-deps.sh installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("no initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        pg
    }

    fn run(&self, extra: &str) {
        let pg = self;
        let data = pg.data();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on {extra}",
            pg.port,
            pg.dir.path().display()
        );
        let out = pg
            .as_pg("pg_ctl")
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(pg.dir.path().join("log"))
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        succeeded(&out);
    }

    pub fn url(&self) -> String {
        format!("postgres://coffer@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_pg("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

/// Fail with its standard error unless the command `out` came from
/// succeeded.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
