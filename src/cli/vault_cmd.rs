//! `coffer vault serve`: argument glue around the server side of
//! [`coffer::vault`] (feature `vault-server`). `coffer enroll vault`, the
//! client side, is in the parent module.
//!
//! Must never: start a server whose secrets would sit on disk in the clear
//! without `--insecure-local-key`, or print a secret.

use super::read_secret_file;
use clap::{Args, Subcommand};
use coffer::error::{Error, Result};
use coffer::vault::epoch::EpochOptions;
use coffer::vault::hsm::{Sealer, TokenKey};
use coffer::vault::protocol::DEFAULT_MAX_GUESSES;
use coffer::vault::server::{Limits, Server, Tls, Vault};
use coffer::vault::store::Store;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `coffer vault ...`
#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Run the key vault server (HTTPS with --tls-cert/--tls-key; plain
    /// HTTP on a loopback address only)
    Serve(ServeArgs),
    /// The vault's tamper-evident audit table
    #[command(subcommand)]
    Audit(AuditCmd),
}

impl VaultCmd {
    /// Whether it may open a TPM (`serve --epoch-tpm`).
    #[cfg(feature = "tpm2")]
    pub fn may_reach_a_tpm(&self) -> bool {
        matches!(self, VaultCmd::Serve(a) if a.epoch_tpm.is_some())
    }
}

/// `coffer vault audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check every chain of the audit table: exit 0 when intact, 4 naming
    /// the first entry that does not check (needs the vault's HSM key)
    Verify(DbArgs),
}

/// The vault's database and the key that seals its secrets: `serve`'s and
/// `audit verify`'s.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Database: `sqlite:PATH`, a path, or `postgres://USER@HOST/DB` (shared by replicas)
    #[arg(long, value_name = "URL", default_value = "sqlite:coffer-vault.sqlite")]
    db: String,
    /// PKCS#11 module holding the key that seals the server's secrets
    #[arg(long, value_name = "PATH", requires = "hsm_uri")]
    hsm_module: Option<PathBuf>,
    /// The token and key: pkcs11:token=LABEL;object=LABEL
    #[arg(long, value_name = "URI", requires = "hsm_module")]
    hsm_uri: Option<String>,
    /// Read the token's user PIN from FILE
    #[arg(long, value_name = "FILE", requires = "hsm_module")]
    hsm_pin_file: Option<PathBuf>,
    /// Seal the server's secrets with a key file beside the database
    /// instead of an HSM (demos only: whoever reads the disk gets them)
    #[arg(long, conflicts_with = "hsm_module")]
    insecure_local_key: bool,
}

/// `coffer vault serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:8443 (without TLS: a loopback
    /// address only)
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (leaf first)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client may take for a TLS handshake, a request's headers
    /// or its body before it is dropped
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    client_timeout: u64,
    /// Connections served at once (more wait in the listen backlog)
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_connections: u64,
    #[command(flatten)]
    store: DbArgs,
    /// Unrefunded wrong guesses before a record is destroyed
    #[arg(long, default_value_t = DEFAULT_MAX_GUESSES, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_guesses: u32,
    /// How the audit trail (one line per registration, login start, login
    /// finish and deletion) is written to standard error
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also serve /metrics (Prometheus) and /healthz on this address, in
    /// plain HTTP with no authentication: one only monitoring reaches
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Keep the vault's epoch in an NV counter of the TPM at TCTI
    /// (device:/dev/tpmrm0, swtpm:host=H,port=P): a database restored from
    /// before the last answered guess is refused at start
    #[arg(long, value_name = "TCTI")]
    epoch_tpm: Option<String>,
    /// The NV index of --epoch-tpm's counter (created if missing)
    #[arg(long, value_name = "INDEX", default_value = "0x0130c0ff", value_parser = nv_index, requires = "epoch_tpm")]
    epoch_nv_index: u32,
    /// Seal the database as it is now at the counter's value, whatever the
    /// rollback check says (after a deliberate restore, a new or cleared
    /// TPM, or to start using --epoch-tpm on an existing vault), and exit
    /// without serving: with every replica stopped, once
    #[arg(long, requires = "epoch_tpm")]
    epoch_adopt: bool,
}

/// An NV index, `0x…` or decimal, in the owner range TPM 2.0 allows
/// (0x01000000 to 0x01ffffff).
fn nv_index(s: &str) -> std::result::Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("not a number: {e}"))?;
    if !(0x0100_0000..=0x01ff_ffff).contains(&v) {
        return Err("an NV index is between 0x01000000 and 0x01ffffff".into());
    }
    Ok(v)
}

/// The epoch's counter and options from `serve`'s arguments.
fn epoch_options(a: &ServeArgs) -> Result<EpochOptions> {
    let counter: Option<Box<dyn coffer::vault::epoch::Counter>> = match &a.epoch_tpm {
        None => {
            eprintln!(
                "coffer vault: WARNING: no --epoch-tpm: a database restored from a backup would go unnoticed, giving guessers their spent guesses back (docs/backends/vault.md, \"Rollback detection\")"
            );
            None
        }
        #[cfg(feature = "tpm2")]
        Some(tcti) => Some(Box::new(coffer::vault::epoch::TpmCounter::new(
            tcti,
            a.epoch_nv_index,
        ))),
        #[cfg(not(feature = "tpm2"))]
        Some(_) => {
            return Err(Error::Usage(
                "--epoch-tpm: this build of coffer has no TPM support (cargo feature `tpm2`)"
                    .into(),
            ));
        }
    };
    Ok(EpochOptions {
        counter,
        adopt: a.epoch_adopt,
    })
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line each
    Text,
    /// One JSON object per line (for a log collector)
    Json,
}

/// Write the server's audit events (and nothing more verbose than INFO)
/// to standard error.
fn audit_to_stderr(format: LogFormat) -> Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| Error::Refused(format!("cannot start the audit log: {e}")))
}

fn vault_err(e: coffer::vault::VaultError) -> Error {
    Error::Refused(e.to_string())
}

fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Run a `coffer vault` command.
pub fn run(cmd: &VaultCmd) -> Result<()> {
    match cmd {
        VaultCmd::Serve(a) => serve(a),
        VaultCmd::Audit(AuditCmd::Verify(d)) => audit_verify(d),
    }
}

/// The SQLite file of `db`, or `None` for PostgreSQL.
fn sqlite_path(db: &str) -> Option<PathBuf> {
    (!is_postgres(db)).then(|| PathBuf::from(db.strip_prefix("sqlite:").unwrap_or(db)))
}

/// What seals the vault's secrets: the HSM key, or with
/// `--insecure-local-key` a key file beside the database.
fn sealer(d: &DbArgs, command: &str, create: bool) -> Result<Sealer> {
    match (&d.hsm_module, &d.hsm_uri) {
        (Some(module), Some(uri)) => {
            let uri = TokenKey::parse(uri).map_err(|e| Error::Usage(format!("--hsm-uri: {e}")))?;
            let pin = match &d.hsm_pin_file {
                Some(f) => read_secret_file(f)?,
                None => {
                    return Err(Error::Usage(
                        "--hsm-module needs --hsm-pin-file FILE (the token's user PIN)".into(),
                    ));
                }
            };
            Sealer::token(module, uri, pin).map_err(vault_err)
        }
        _ if d.insecure_local_key => {
            let mut key = sqlite_path(&d.db)
                .unwrap_or_else(|| PathBuf::from("coffer-vault"))
                .into_os_string();
            key.push(".key");
            if !create && !Path::new(&key).exists() {
                return Err(Error::Usage(format!(
                    "--insecure-local-key: no key file at {}",
                    Path::new(&key).display()
                )));
            }
            let s = Sealer::local_file(Path::new(&key)).map_err(vault_err)?;
            eprintln!(
                "coffer vault: WARNING: --insecure-local-key: the server's secrets are sealed by {}; whoever can read it and the database can test passwords offline. Use --hsm-module for anything but a demo.",
                Path::new(&key).display()
            );
            Ok(s)
        }
        _ => Err(Error::Usage(format!(
            "coffer vault {command} needs the vault's HSM key: give --hsm-module, --hsm-uri and --hsm-pin-file, or --insecure-local-key for a demo"
        ))),
    }
}

/// `coffer vault audit verify`.
fn audit_verify(d: &DbArgs) -> Result<()> {
    let sealer = sealer(d, "audit verify", false)?;
    let store = Store::open_read_only(&d.db).map_err(vault_err)?;
    let (key, state_key) = Vault::check_keys(&store, &sealer).map_err(vault_err)?;
    let mut check = coffer::vault::audit::Verifier::new(&key);
    let checked = store
        .each_audit_row(|e, mac| check.push(e, &mac))
        .map_err(vault_err)?;
    let c = checked
        .map(|()| check.finish())
        .map_err(|broken| Error::AuditBroken {
            what: broken.to_string(),
        })?;
    // The rows against the sum sealed with the epoch: a tail cut off, or
    // a chain removed, shows there.
    let tails = match Vault::check_epoch(&store, &state_key) {
        Ok(Some(epoch)) => {
            format!("no sealed row missing (epoch {epoch}; rows since it began are not sealed yet)")
        }
        Ok(None) => "a chain's missing tail cannot be seen: this database has no epoch yet".into(),
        Err(e) => {
            return Err(Error::AuditBroken {
                what: e.to_string(),
            });
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "audit table intact: {} entries in {} chains; {tails}",
        c.entries, c.chains
    )
    .map_err(|e| Error::io("<stdout>", e))
}

fn serve(a: &ServeArgs) -> Result<()> {
    audit_to_stderr(a.log_format)?;
    // The TLS identity first: a typo there should not wait for the HSM.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key).map_err(vault_err)?),
        _ => None,
    };
    let sqlite = sqlite_path(&a.store.db);
    let sealer = sealer(&a.store, "serve", true)?;
    let store = Store::open(&a.store.db).map_err(vault_err)?;
    if let Some(w) = store.replication_warning().map_err(vault_err)? {
        eprintln!("coffer vault: WARNING: {w} (docs/backends/vault.md, \"High availability\")");
    }
    // Never print a PostgreSQL URL: it may hold a password.
    let db = match &sqlite {
        Some(p) => p.display().to_string(),
        None => "PostgreSQL".to_owned(),
    };
    let log = std::sync::Arc::new(|m: &str| eprintln!("coffer vault: {m}"));
    let epoch = epoch_options(a)?;
    let vault = Vault::open(store, &sealer, a.max_guesses, log, epoch).map_err(vault_err)?;
    if a.epoch_adopt {
        // Once, not at every start: left in a service's command line it
        // would accept every restored backup from then on.
        eprintln!(
            "coffer vault: adopted database {db} as it is now, at the counter's value; start the server again without --epoch-adopt"
        );
        return Ok(());
    }
    let key = hex::encode(vault.public_key());
    let limits = Limits {
        io_timeout: Duration::from_secs(a.client_timeout),
        max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
        ..Limits::default()
    };
    let mut server = Server::bind(a.listen, vault, tls)
        .map_err(vault_err)?
        .with_limits(limits);
    if let Some(m) = a.metrics_listen {
        if !m.ip().is_loopback() {
            eprintln!(
                "coffer vault: WARNING: /metrics and /healthz on {m} are plain HTTP with no authentication: keep that address reachable by the monitoring only"
            );
        }
        server = server.with_metrics(m).map_err(vault_err)?;
    }
    let url = server.url();
    eprintln!(
        "coffer vault: secrets sealed by {}; database {}; max guesses {}; server key {key}",
        sealer.describe(),
        db,
        a.max_guesses
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {url}")
        .and_then(|_| match server.metrics_addr() {
            Some(m) => writeln!(out, "metrics on http://{m}/metrics"),
            None => Ok(()),
        })
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("<stdout>", e))?;
    drop(out);
    server.run().map_err(vault_err)
}
