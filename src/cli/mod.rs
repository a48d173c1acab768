//! The `coffer` command line: argument definitions (clap), reading factor
//! files, and the commands. Terminal prompts live in [`term`].
//!
//! Must never: print a secret except the new recovery key at `init`, and
//! that only to the terminal or the file the person named.

mod archive_cmd;
mod interrupt;
pub mod term;
#[cfg(feature = "vault-server")]
mod vault_cmd;

use clap::{Args, Parser, Subcommand};
use coffer::error::{Error, Result};
use coffer::keyring::{Keyring, KeyringFile};
use coffer::slot::{Factors, password, recovery};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use term::TerminalUi;
use zeroize::Zeroizing;

/// Largest secret file read, bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// coffer keeps backups readable only by their owner.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, long_about = None)]
pub struct Cli {
    /// Keyring file [default: $COFFER_KEYRING, else $XDG_CONFIG_HOME/coffer/keyring.json]
    #[arg(long, global = true, value_name = "PATH")]
    pub keyring: Option<PathBuf>,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Say nothing but errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say which slot unlocked, and more
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to unlock, for commands that need the backup key.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Read the recovery key from FILE (- for standard input)
    #[arg(long, global = true, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    /// Read the password from FILE (- for standard input)
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Read the PIN of a hardware slot from FILE (- for standard input)
    #[arg(long, global = true, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Unlock with this slot only (a slot id, or a kind such as `password`).
    /// For a slot found only in an archive header this lifts nothing but
    /// the password-cost budget (see docs/threat-model.md)
    #[arg(long, global = true, value_name = "ID|KIND")]
    pub slot: Option<String>,
    /// The PKCS#11 module for a pkcs11 slot found only in an archive
    /// header (a header never names code to load) [default:
    /// $COFFER_PKCS11_MODULE]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "COFFER_PKCS11_MODULE",
        hide_env = true
    )]
    pub pkcs11_module: Option<PathBuf>,
    /// The vault server for a vault slot found only in an archive header
    /// (a header never names a server to contact)
    #[arg(long, global = true, value_name = "URL")]
    pub vault_url: Option<String>,
    /// The TPM, as a tpm2-tss TCTI, for enrolling and unlocking tpm2 slots
    /// [default: $TPM2TOOLS_TCTI, else $TCTI, else device:/dev/tpmrm0]
    #[arg(long, global = true, value_name = "TCTI")]
    pub tcti: Option<String>,
}

impl UnlockArgs {
    /// The locally trusted names of code and services.
    pub fn locators(&self) -> coffer::slot::Locators {
        coffer::slot::Locators {
            pkcs11_module: self.pkcs11_module.clone(),
            vault_url: self.vault_url.clone(),
            tcti: self.tcti.clone(),
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a keyring: a new backup key and its recovery slot. Shows the
    /// recovery key once.
    Init {
        /// Write the new recovery key to FILE (mode 0600) instead of showing it
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// Add a slot (unlocks with an existing one first)
    #[command(subcommand)]
    Enroll(EnrollKind),
    /// List the slots
    Slots,
    /// Remove a slot (never the last one)
    Remove {
        /// The slot's id, as `coffer slots` shows it
        slot_id: String,
    },
    /// Seal files and folders (or standard input, `-`) into an archive
    Seal {
        /// Files and folders to seal, each stored under its own name; `-`
        /// alone seals standard input as a single stream
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The archive to write (`-` for standard output); a FIFO, a
        /// character device or /dev/fd/N is written into, not replaced
        #[arg(short, long, value_name = "ARCHIVE")]
        output: PathBuf,
        /// Compress before encrypting
        #[arg(long, value_enum, default_value_t = CompressArg::None)]
        compress: CompressArg,
        /// Replace the archive if it is an existing regular file
        #[arg(long)]
        force: bool,
    },
    /// Open an archive into a folder (or a file, or `-` for standard output)
    Open {
        /// The archive (`-` for standard input)
        archive: PathBuf,
        /// Where to put what it holds: a new folder for files and folders, a
        /// file for a sealed stream, `-` for standard output; a FIFO, a
        /// character device or /dev/fd/N is written into as `-` is (a
        /// folder archive as its tar stream): check the exit status
        #[arg(short, long, value_name = "DIR|FILE|-")]
        output: PathBuf,
        /// Replace the output if it is an existing file or folder
        #[arg(long)]
        force: bool,
        /// Restore owners by uid/gid, not by user and group name (as root)
        #[arg(long)]
        numeric_owner: bool,
    },
    /// Authenticate every byte of an archive and check that it would
    /// restore; write nothing
    Verify {
        /// The archive (`-` for standard input)
        archive: PathBuf,
    },
    /// Show an archive's header and slots (needs no factor)
    Inspect {
        /// The archive (`-` for standard input)
        archive: PathBuf,
    },
    /// The key vault server
    #[cfg(feature = "vault-server")]
    #[command(subcommand)]
    Vault(vault_cmd::VaultCmd),
}

/// `--compress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Store as is (fastest; right for data that is already compressed)
    None,
    /// zstd level 3
    Zstd,
}

/// The kinds of slot `enroll` can add.
#[derive(Debug, Subcommand)]
pub enum EnrollKind {
    /// A password (Argon2id)
    Password {
        /// Read the new password from FILE (- for standard input);
        /// otherwise it is asked for twice on the terminal
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// A TPM 2.0: a key sealed in the TPM; unlocks with nobody present
    /// unless a PIN is set
    #[cfg(feature = "tpm2")]
    Tpm2 {
        /// Bind to the boot state in these PCRs: `7`, `0,7` or `sha256:0,7`
        /// (none by default)
        #[arg(long, value_name = "LIST")]
        pcrs: Option<coffer::slot::tpm2::PcrSpec>,
        /// Also require a PIN (asked twice on the terminal, or --new-pin-file)
        #[arg(long)]
        with_pin: bool,
        /// Read the new PIN from FILE (- for standard input); implies
        /// --with-pin
        #[arg(long, value_name = "FILE")]
        new_pin_file: Option<PathBuf>,
    },
    /// A key on a PKCS#11 token (HSM, smart card, SoftHSM); the PIN comes
    /// from the URI's pin-source, --pin-file, or a prompt
    #[cfg(feature = "pkcs11")]
    Pkcs11 {
        /// The token's PKCS#11 module (a shared library)
        #[arg(long, env = "COFFER_PKCS11_MODULE", value_name = "PATH")]
        module: Option<PathBuf>,
        /// RFC 7512 URI naming the token and key, e.g.
        /// 'pkcs11:token=backup;object=coffer'
        #[arg(long, value_name = "URI")]
        uri: String,
        /// Make the key on the token (sensitive, never extractable)
        #[arg(long)]
        generate: bool,
        /// How the token protects the key-encryption key
        #[arg(long, value_enum, default_value_t = MechanismArg::Ecdh)]
        mechanism: MechanismArg,
        /// ecdh: wrap to this public key (DER or PEM SubjectPublicKeyInfo,
        /// e.g. from `pkcs11-tool --read-object --type pubkey`) without
        /// touching the token
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        public_key: Option<PathBuf>,
    },
    /// A YubiKey (PIV): a P-256 key in one of its PIV slots. The card's PIN
    /// comes from --pin-file or a prompt; the default PIN and management
    /// key are refused.
    #[cfg(feature = "yubikey")]
    Yubikey {
        /// The card's serial number (needed when several cards are present)
        #[arg(long)]
        serial: Option<u32>,
        /// The PIV slot holding the key: a retired slot 82..95, or 9d
        #[arg(long, value_name = "SLOT", default_value = "82", value_parser = coffer::slot::yubikey::parse_piv_slot)]
        piv_slot: u8,
        /// Generate a new P-256 key on the card in that PIV slot (replacing
        /// what is there); needs the management key
        #[arg(long)]
        generate: bool,
        /// With --generate: when the key needs the PIN
        #[arg(long, value_enum, default_value_t = coffer::slot::yubikey::DEFAULT_PIN_POLICY, requires = "generate")]
        pin_policy: coffer::slot::yubikey::PinPolicyArg,
        /// With --generate: when the key needs a touch
        #[arg(long, value_enum, default_value_t = coffer::slot::yubikey::DEFAULT_TOUCH_POLICY, requires = "generate")]
        touch_policy: coffer::slot::yubikey::TouchPolicyArg,
        /// With --generate: read the management key (48 hex digits) from
        /// FILE; without it, the card's PIN-protected management key
        #[arg(long, value_name = "FILE", requires = "generate")]
        management_key_file: Option<PathBuf>,
        /// Without --generate: the public key (PEM) of the key already in
        /// the PIV slot, e.g. what `yubico-piv-tool -a generate -o` wrote;
        /// without it, the card is asked (YubiKey firmware 5.3+)
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        public_key_file: Option<PathBuf>,
    },
    /// A password checked by a coffer key vault server (OPAQUE, guess limit)
    #[cfg(feature = "vault")]
    Vault {
        /// The vault server, https://... (or http:// to a loopback address)
        #[arg(long)]
        url: String,
        /// Trust the CA certificate(s) in this PEM file for the server
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Read the new vault password from FILE (- for standard input);
        /// otherwise it is asked for twice on the terminal
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

/// `--mechanism` values of `enroll pkcs11`.
#[cfg(feature = "pkcs11")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismArg {
    /// EC P-256 key on the token; wrapping needs only its public key
    Ecdh,
    /// AES-256 key on the token encrypts the key-encryption key
    AesGcm,
}

/// What a command run needs besides its arguments.
pub struct Env {
    /// Prompts and messages.
    pub ui: TerminalUi,
    /// Factors read from files.
    pub factors: Factors,
    /// The keyring.
    pub keyring: KeyringFile,
}

/// Read a secret from a file, or standard input for `-`; one trailing
/// newline is dropped. Refuses files over 64 KiB.
pub fn read_secret_file(path: &Path) -> Result<SecretString> {
    let mut bytes = Zeroizing::new(Vec::new());
    let res = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_SECRET_FILE + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes))
    };
    res.map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(Error::Usage(format!(
            "{}: larger than {MAX_SECRET_FILE} bytes; that is not a secret file",
            path.display()
        )));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Usage(format!("{}: not UTF-8 text", path.display())))?;
    Ok(SecretString::from(text.to_owned()))
}

fn check_one_stdin(paths: &[Option<&PathBuf>]) -> Result<()> {
    let n = paths
        .iter()
        .flatten()
        .filter(|p| p.as_os_str() == "-")
        .count();
    if n > 1 {
        return Err(Error::Usage(
            "only one secret can be read from standard input (-)".into(),
        ));
    }
    Ok(())
}

impl Cli {
    /// Build the environment: keyring path, factors from files, the Ui.
    pub fn env(&self) -> Result<Env> {
        let u = &self.unlock;
        let new_pw = match &self.command {
            Command::Enroll(EnrollKind::Password { new_password_file }) => {
                new_password_file.as_ref()
            }
            #[cfg(feature = "tpm2")]
            Command::Enroll(EnrollKind::Tpm2 { new_pin_file, .. }) => new_pin_file.as_ref(),
            #[cfg(feature = "vault")]
            Command::Enroll(EnrollKind::Vault {
                new_password_file, ..
            }) => new_password_file.as_ref(),
            _ => None,
        };
        let dash = PathBuf::from("-");
        let data_from_stdin = match &self.command {
            Command::Seal { paths, .. } => paths.iter().any(|p| p == &dash),
            Command::Open { archive, .. }
            | Command::Verify { archive }
            | Command::Inspect { archive } => archive == &dash,
            _ => false,
        };
        check_one_stdin(&[
            u.recovery_key_file.as_ref(),
            u.password_file.as_ref(),
            u.pin_file.as_ref(),
            new_pw,
            data_from_stdin.then_some(&dash),
        ])?;
        let read = |p: &Option<PathBuf>| p.as_deref().map(read_secret_file).transpose();
        let factors = Factors {
            recovery_key: read(&u.recovery_key_file)?,
            password: read(&u.password_file)?,
            pin: read(&u.pin_file)?,
        };
        let path = match &self.keyring {
            Some(p) => p.clone(),
            None => KeyringFile::default_path().ok_or_else(|| {
                Error::Usage("no keyring path: set --keyring, COFFER_KEYRING or HOME".into())
            })?,
        };
        Ok(Env {
            ui: TerminalUi::new(self.quiet),
            factors,
            keyring: KeyringFile::new(path),
        })
    }
}

/// Run the parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    #[cfg(feature = "vault-server")]
    if let Command::Vault(cmd) = &cli.command {
        return vault_cmd::run(cmd);
    }
    interrupt::remove_temporaries_on_signals()?;
    let env = cli.env()?;
    match &cli.command {
        Command::Init { recovery_key_out } => init(cli, &env, recovery_key_out.as_deref()),
        Command::Enroll(kind) => enroll(cli, &env, kind),
        Command::Slots => slots(cli, &env),
        Command::Remove { slot_id } => remove(cli, &env, slot_id),
        Command::Seal {
            paths,
            output,
            compress,
            force,
        } => archive_cmd::seal(cli, &env, paths, output, *compress, *force),
        Command::Open {
            archive,
            output,
            force,
            numeric_owner,
        } => archive_cmd::open(cli, &env, archive, output, *force, *numeric_owner),
        Command::Verify { archive } => archive_cmd::verify(cli, &env, archive),
        Command::Inspect { archive } => archive_cmd::inspect(cli, archive),
        #[cfg(feature = "vault-server")]
        Command::Vault(_) => unreachable!("handled above"),
    }
}

/// Unlock `keyring` with the factors and prompts at hand.
pub(crate) fn unlock(cli: &Cli, env: &Env, keyring: &Keyring) -> Result<coffer::key::BackupKey> {
    let locators = cli.unlock.locators();
    let opts = coffer::slot::UnlockOptions {
        selector: cli.unlock.slot.as_deref(),
        factors: &env.factors,
        ui: &env.ui,
        locators: &locators,
        kdf_budget: coffer::slot::UNAUTHENTICATED_KDF_BUDGET,
    };
    let (bk, used) = keyring.unlock_with(&env.keyring.path, &opts)?;
    if cli.verbose {
        env.ui.info(&format!("unlocked with slot {}", used.label()));
    }
    Ok(bk)
}

/// A Unix time as RFC 3339 (UTC, seconds); beyond year 9999, which RFC 3339
/// cannot write, the number itself. Times come from files anyone may have
/// written: any 8 bytes must print.
pub(crate) fn unix_time_text(secs: u64) -> String {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(t) if secs < YEAR_10000 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("@{secs} (after year 9999)"),
    }
}

pub(crate) fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|_| writeln!(out))
        .map_err(|e| Error::io("<stdout>", e))
}

fn init(cli: &Cli, env: &Env, recovery_out: Option<&Path>) -> Result<()> {
    let kf = &env.keyring;
    let exists = || {
        Error::AlreadyExists {
        path: kf.path.clone(),
        hint: ": a keyring is there already (`coffer slots` shows it); move it away first if you mean to start over".into(),
    }
    };
    if kf.exists() {
        return Err(exists());
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if recovery_out.is_none() && !interactive {
        return Err(Error::Usage(
            "init shows the new recovery key on a terminal; without one, give --recovery-key-out FILE".into(),
        ));
    }
    let lock = kf.lock()?;
    if kf.exists() {
        return Err(exists());
    }
    let bk = coffer::key::BackupKey::generate();
    let (record, key) = recovery::enroll(&bk);
    let slot_id = record.id.clone();
    let keyring = Keyring::new(&bk, vec![record]);

    let mut written: Option<&Path> = None;
    match recovery_out {
        Some(p) if p == Path::new("-") => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", key.display().as_str()).map_err(|e| Error::io("<stdout>", e))?;
        }
        Some(p) => {
            let mut text = Zeroizing::new(key.display().to_string());
            text.push('\n');
            coffer::fsutil::write_atomic(p, text.as_bytes(), false).map_err(|e| match e {
                Error::AlreadyExists { path, .. } => Error::AlreadyExists {
                    path,
                    hint: ": choose another --recovery-key-out".into(),
                },
                e => e,
            })?;
            written = Some(p);
        }
        None => env.ui.show_recovery_key(&key)?,
    }
    if let Err(e) = kf.store(&keyring, &lock, true) {
        if let Some(p) = written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let key_id = keyring.key_id.to_string();
    if cli.json {
        print_json(&json!({
            "keyring": kf.path,
            "key_id": key_id,
            "slot": slot_id.as_str(),
        }))?;
    } else {
        env.ui.info(&format!(
            "created keyring {} (key id {key_id}) with recovery slot {slot_id}",
            kf.path.display()
        ));
        if let Some(p) = written {
            env.ui.info(&format!(
                "the recovery key is in {}: write it down or store it offline, then delete the file",
                p.display()
            ));
        }
    }
    Ok(())
}

pub(crate) fn new_password(env: &Env, file: Option<&Path>, kind: &str) -> Result<SecretString> {
    if let Some(f) = file {
        return read_secret_file(f);
    }
    let what = if kind == "password" {
        "New password".to_owned()
    } else {
        format!("New {kind} password")
    };
    env.ui.new_secret(&what)?.ok_or_else(|| {
        Error::Usage(format!(
            "enroll {kind} needs a terminal to ask for the new password, or --new-password-file FILE"
        ))
    })
}

#[cfg(feature = "tpm2")]
fn new_pin(env: &Env, file: Option<&Path>) -> Result<SecretString> {
    if let Some(f) = file {
        return read_secret_file(f);
    }
    env.ui.new_secret("New TPM PIN")?.ok_or_else(|| {
        Error::Usage(
            "enroll tpm2 --with-pin needs a terminal to ask for the new PIN, or --new-pin-file FILE"
                .into(),
        )
    })
}

fn enroll(cli: &Cli, env: &Env, kind: &EnrollKind) -> Result<()> {
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    let bk = unlock(cli, env, &keyring)?;
    let record = match kind {
        EnrollKind::Password { new_password_file } => {
            let pw = new_password(env, new_password_file.as_deref(), "password")?;
            if pw.expose_secret().is_empty() {
                return Err(Error::Usage("the new password is empty".into()));
            }
            password::enroll(&bk, &pw, password::Cost::default())
                .map_err(|e| Error::Refused(e.to_string()))?
        }
        #[cfg(feature = "tpm2")]
        EnrollKind::Tpm2 {
            pcrs,
            with_pin,
            new_pin_file,
        } => {
            let pin = if *with_pin || new_pin_file.is_some() {
                let pin = new_pin(env, new_pin_file.as_deref())?;
                if pin.expose_secret().is_empty() {
                    return Err(Error::Usage("the new PIN is empty".into()));
                }
                Some(pin)
            } else {
                None
            };
            let opts = coffer::slot::tpm2::EnrollOptions {
                tcti: cli.unlock.tcti.clone(),
                pcrs: pcrs.clone(),
                pin,
            };
            coffer::slot::tpm2::enroll(&bk, &opts).map_err(Error::Enroll)?
        }
        #[cfg(feature = "pkcs11")]
        EnrollKind::Pkcs11 {
            module,
            uri,
            generate,
            mechanism,
            public_key,
        } => enroll_pkcs11(
            env,
            &bk,
            module.as_deref(),
            uri,
            *generate,
            *mechanism,
            public_key.as_deref(),
        )?,
        #[cfg(feature = "yubikey")]
        EnrollKind::Yubikey {
            serial,
            piv_slot,
            generate,
            pin_policy,
            touch_policy,
            management_key_file,
            public_key_file,
        } => {
            use coffer::slot::yubikey as yk;
            let key = if *generate {
                let management_key = management_key_file
                    .as_deref()
                    .map(|f| {
                        let text = read_secret_file(f)?;
                        hex::decode(text.expose_secret().trim())
                            .map(Zeroizing::new)
                            .map_err(|_| Error::Usage(format!("{}: not hex digits", f.display())))
                    })
                    .transpose()?;
                yk::KeySource::Generate {
                    pin_policy: *pin_policy,
                    touch_policy: *touch_policy,
                    management_key,
                }
            } else {
                let public = public_key_file
                    .as_deref()
                    .map(|f| {
                        let pem = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
                        yk::public_key_from_pem(&pem)
                            .map_err(|e| Error::Usage(format!("{}: {e}", f.display())))
                    })
                    .transpose()?;
                yk::KeySource::Existing(public)
            };
            let pin = match &env.factors.pin {
                Some(p) => p.clone(),
                None => {
                    coffer::ui::Ui::request_secret(&env.ui, "YubiKey PIN: ").ok_or_else(|| {
                        Error::Usage(
                            "enroll yubikey needs the card's PIN: --pin-file FILE, or a terminal"
                                .into(),
                        )
                    })?
                }
            };
            let opts = yk::EnrollOptions {
                serial: *serial,
                piv_slot: *piv_slot,
                key,
            };
            yk::enroll(&bk, opts, &pin, &env.ui).map_err(|e| match e {
                coffer::error::SlotError::PolicyRefused(m) => Error::Refused(m),
                e => Error::Enroll(e),
            })?
        }
        #[cfg(feature = "vault")]
        EnrollKind::Vault {
            url,
            ca,
            new_password_file,
        } => enroll_vault(env, &bk, url, ca.as_deref(), new_password_file.as_deref())?,
    };
    let (id, kind) = (record.id.clone(), record.params.kind().to_owned());
    keyring.add_slot(&bk, record)?;
    kf.store(&keyring, &lock, false)?;
    if cli.json {
        print_json(&json!({"slot": id.as_str(), "kind": kind}))?;
    } else {
        env.ui.info(&format!("enrolled slot {id} ({kind})"));
    }
    Ok(())
}

/// `coffer enroll vault`.
#[cfg(feature = "vault")]
fn enroll_vault(
    env: &Env,
    bk: &coffer::key::BackupKey,
    url: &str,
    ca: Option<&Path>,
    new_password_file: Option<&Path>,
) -> Result<coffer::slot::SlotRecord> {
    let ca_pem = ca
        .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(p, e)))
        .transpose()?;
    let pw = new_password(env, new_password_file, "vault")?;
    if pw.expose_secret().is_empty() {
        return Err(Error::Usage("the new vault password is empty".into()));
    }
    coffer::slot::vault::enroll(bk, url, ca_pem.as_deref(), &pw)
        .map_err(|e| Error::Refused(format!("enrolling the vault slot: {e}")))
}

#[cfg(feature = "pkcs11")]
fn enroll_pkcs11(
    env: &Env,
    bk: &coffer::key::BackupKey,
    module: Option<&Path>,
    uri: &str,
    generate: bool,
    mechanism: MechanismArg,
    public_key: Option<&Path>,
) -> Result<coffer::slot::SlotRecord> {
    use coffer::slot::pkcs11;
    let parsed =
        pkcs11::uri::Pkcs11Uri::parse(uri).map_err(|e| Error::Usage(format!("--uri: {e}")))?;
    if parsed.attr("pin-value").is_some() {
        return Err(Error::Usage(
            "--uri: pin-value= would put the PIN in the process list; give it with --pin-file FILE, or name a file with pin-source=".into(),
        ));
    }
    let module = module
        .map(Path::to_path_buf)
        .or_else(|| parsed.attr("module-path").map(PathBuf::from))
        .ok_or_else(|| {
            Error::Usage(format!(
                "enroll pkcs11 needs the token's module: --module PATH, {} or module-path= in the URI",
                pkcs11::MODULE_ENV
            ))
        })?;
    let mechanism = match mechanism {
        MechanismArg::Ecdh => pkcs11::Pkcs11Mechanism::Ecdh,
        MechanismArg::AesGcm => pkcs11::Pkcs11Mechanism::AesGcm,
    };
    let public_key = match public_key {
        None => None,
        Some(_) if mechanism != pkcs11::Pkcs11Mechanism::Ecdh => {
            return Err(Error::Usage(
                "--public-key works with --mechanism ecdh only".into(),
            ));
        }
        Some(p) => Some(read_public_key(p)?),
    };
    let opts = pkcs11::EnrollOptions {
        module,
        uri: uri.to_owned(),
        mechanism,
        generate,
        public_key,
    };
    pkcs11::enroll(bk, &opts, env.factors.pin.as_ref(), &env.ui).map_err(|e| match e {
        coffer::error::SlotError::Malformed { field, reason } => {
            Error::Usage(format!("{field}: {reason}"))
        }
        e => Error::Enroll(e),
    })
}

/// A public key file: DER, or PEM (`-----BEGIN PUBLIC KEY-----`).
#[cfg(feature = "pkcs11")]
fn read_public_key(p: &Path) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    let Some(text) = std::str::from_utf8(&bytes)
        .ok()
        .filter(|t| t.trim_start().starts_with("-----BEGIN PUBLIC KEY-----"))
    else {
        return Ok(bytes);
    };
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| Error::Usage(format!("{}: PEM body is not base64", p.display())))
}

fn slots(cli: &Cli, env: &Env) -> Result<()> {
    let keyring = env.keyring.load()?;
    if cli.json {
        return print_json(&json!({
            "keyring": env.keyring.path,
            "key_id": keyring.key_id.to_string(),
            "slots": keyring.slots.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        }));
    }
    let mut out = std::io::stdout().lock();
    let mut w = |s: String| writeln!(out, "{s}").map_err(|e| Error::io("<stdout>", e));
    w(format!(
        "keyring {} (key id {})",
        env.keyring.path.display(),
        keyring.key_id
    ))?;
    w(format!(
        "{:<10} {:<10} {:<20} DETAILS",
        "ID", "KIND", "ENROLLED"
    ))?;
    for s in &keyring.slots {
        let when = unix_time_text(s.created);
        let detail = s
            .params
            .as_slot()
            .map(|k| coffer::ui::escaped(&k.describe()))
            .unwrap_or_else(|| "not supported by this build; kept as is".into());
        w(format!(
            "{:<10} {:<10} {:<20} {detail}",
            s.id,
            s.params.kind(),
            when
        ))?;
    }
    Ok(())
}

fn remove(cli: &Cli, env: &Env, id: &str) -> Result<()> {
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    if !keyring.slots.iter().any(|s| s.id.as_str() == id) {
        return Err(Error::Refused(format!(
            "no slot {id} (`coffer slots` lists them)"
        )));
    }
    let bk = unlock(cli, env, &keyring)?;
    let removed = keyring.remove_slot(&bk, id)?;
    kf.store(&keyring, &lock, false)?;
    if cli.json {
        print_json(&json!({"removed": removed.id.as_str(), "kind": removed.params.kind()}))?;
    } else {
        env.ui.info(&format!("removed slot {}", removed.label()));
    }
    Ok(())
}
