//! The `coffer` command line: the grammar ([`args`]), reading factor files
//! and building what a run needs ([`Env`]), and dispatching to the
//! commands ([`keyring_cmd`], [`archive_cmd`], `vault_cmd`). Terminal
//! prompts live in [`term`].
//!
//! Must never: print a secret except a new recovery key, and that only to
//! the terminal or the file the person named.

mod agent_cmd;
mod archive_cmd;
pub mod args;
mod interrupt;
mod keyring_cmd;
mod passphrase_cmd;
pub mod term;
#[cfg(feature = "vault-server")]
mod vault_cmd;

pub use args::{Cli, Command, CompressArg, EnrollKind};
use coffer::error::{Error, Result};
use coffer::keyring::{Keyring, KeyringFile};
use coffer::slot::{FactorKind, Factors};
use secrecy::SecretString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use term::TerminalUi;
use zeroize::Zeroizing;

/// Largest secret file read, bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// What a command run needs besides its arguments.
pub struct Env {
    /// Prompts and messages.
    pub ui: TerminalUi,
    /// Factors read from files (and typed during the run).
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

fn check_one_stdin<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let n = paths.into_iter().filter(|p| p.as_os_str() == "-").count();
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
        let new_secret = match &self.command {
            Command::Enroll(e) => match &e.kind {
                EnrollKind::Password { new_password_file } => new_password_file.as_ref(),
                #[cfg(feature = "tpm2")]
                EnrollKind::Tpm2 { new_pin_file, .. } => new_pin_file.as_ref(),
                #[cfg(feature = "vault")]
                EnrollKind::Vault {
                    new_password_file, ..
                } => new_password_file.as_ref(),
                _ => None,
            },
            _ => None,
        };
        let dash = PathBuf::from("-");
        let data_from_stdin = match &self.command {
            Command::Seal { paths, .. } => paths.iter().any(|p| p == &dash),
            Command::Open { archive, .. }
            | Command::Verify { archive }
            | Command::Inspect { archive } => archive == &dash,
            Command::Passphrase { from, .. } => from.as_ref() == Some(&dash),
            _ => false,
        };
        let files = [
            (FactorKind::RecoveryKey, &u.recovery_key_file),
            (FactorKind::Password, &u.password_file),
            (FactorKind::Pin, &u.pin_file),
        ];
        check_one_stdin(
            files
                .iter()
                .flat_map(|(_, v)| v.iter().map(|f| f.path.as_path()))
                .chain(new_secret.map(PathBuf::as_path))
                .chain(data_from_stdin.then_some(dash.as_path())),
        )?;
        let mut factors = Factors::new();
        for (kind, list) in files {
            for f in list {
                factors.add(kind, f.slot.clone(), read_secret_file(&f.path)?);
            }
        }
        Ok(Env {
            // With --json, stderr carries only errors (and warnings that
            // change the exit status), never progress lines.
            ui: TerminalUi::new(self.quiet || self.json, self.no_prompt),
            factors,
            keyring: KeyringFile::new(self.keyring_path()?),
        })
    }

    /// `--keyring`, else [`default_keyring_path`].
    fn keyring_path(&self) -> Result<PathBuf> {
        match &self.keyring {
            Some(p) => Ok(p.clone()),
            None => default_keyring_path().ok_or_else(|| {
                Error::Usage("no keyring path: set --keyring, COFFER_KEYRING or HOME".into())
            }),
        }
    }

    /// Whether this run may reach a TPM (`main` then quiets libtss2's
    /// logs, before anything is read). `seal` reaches one only to upgrade
    /// a version 1 keyring: its keyring is looked at first, and with a
    /// sealing key it is not counted (any doubt, and it is).
    #[cfg(feature = "tpm2")]
    pub fn may_reach_a_tpm(&self) -> bool {
        if !self.command.may_reach_a_tpm() {
            return false;
        }
        if !matches!(self.command, Command::Seal { .. }) {
            return true;
        }
        let seals_alone = self
            .keyring_path()
            .and_then(|p| KeyringFile::new(p).load())
            .is_ok_and(|k| k.sealer().is_some());
        !seals_alone
    }
}

/// `$COFFER_KEYRING`, else `$XDG_CONFIG_HOME/coffer/keyring.json`, else
/// `$HOME/.config/coffer/keyring.json`. The binary reads the environment;
/// the library reads none.
fn default_keyring_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COFFER_KEYRING").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("coffer").join("keyring.json"))
}

/// Run the parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    #[cfg(feature = "vault-server")]
    if let Command::Vault(cmd) = &cli.command {
        return vault_cmd::run(cmd);
    }
    // Generated from the definitions: no keyring, no environment needed.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man_page(dir.as_deref()),
        _ => {}
    }
    // The agent handles its own signals: it must drop, and wipe, the key.
    if let Command::Agent(cmd) = &cli.command {
        return agent_cmd::run(cli, cmd);
    }
    interrupt::remove_temporaries_on_signals()?;
    let mut env = cli.env()?;
    match &cli.command {
        Command::Init { recovery_key_out } => {
            keyring_cmd::init(cli, &env, recovery_key_out.as_deref())
        }
        Command::Enroll(e) => keyring_cmd::enroll(cli, &mut env, e),
        Command::Slots => keyring_cmd::slots(cli, &env),
        Command::Remove { which, force } => keyring_cmd::remove(cli, &env, which, *force),
        Command::Rotate {
            drop,
            recovery_key_out,
        } => keyring_cmd::rotate(cli, &env, drop, recovery_key_out.as_deref()),
        Command::Seal {
            paths,
            output,
            compress,
            force,
            key_id,
            pq_only,
        } => archive_cmd::seal(
            cli,
            &env,
            paths,
            output,
            archive_cmd::SealArgs {
                compress: *compress,
                force: *force,
                key_id: key_id.as_deref(),
                pq_only: *pq_only,
            },
        ),
        Command::Export {
            seal_only: _,
            sealer,
            pq_only,
            output,
            force,
        } => keyring_cmd::export_seal_only(cli, &env, sealer, *pq_only, output, *force),
        Command::Open {
            archive,
            output,
            force,
            numeric_owner,
        } => archive_cmd::open(cli, &env, archive, output, *force, *numeric_owner),
        Command::Verify { archive } => archive_cmd::verify(cli, &env, archive),
        Command::Inspect { archive } => archive_cmd::inspect(cli, archive),
        Command::Completions { .. } | Command::Man { .. } | Command::Agent(_) => {
            unreachable!("handled above")
        }
        Command::Passphrase { name, from } => {
            passphrase_cmd::passphrase(cli, &env, name, from.as_deref())
        }
        #[cfg(feature = "vault-server")]
        Command::Vault(_) => unreachable!("handled above"),
    }
}

/// `coffer completions SHELL`: the script clap_complete makes from the
/// command definitions.
fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut out);
    stdout_result(std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        &out,
    ))
}

/// `coffer man`: the manual page, in roff, from the command definitions.
/// `coffer man`: the top-level page on standard output, or with `dir`
/// that page and one per subcommand at any depth (`coffer-enroll-tpm2.1`),
/// each in its own file.
fn man_page(dir: Option<&Path>) -> Result<()> {
    use clap::CommandFactory;
    fn render(cmd: clap::Command) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| Error::io("<manual page>", e))?;
        Ok(out)
    }
    let mut top = Cli::command();
    top.build();
    let Some(dir) = dir else {
        return stdout_result(std::io::Write::write_all(
            &mut std::io::stdout().lock(),
            &render(top)?,
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut pages = vec![("coffer".to_owned(), top)];
    let mut i = 0;
    while i < pages.len() {
        let (name, cmd) = (pages[i].0.clone(), pages[i].1.clone());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_name = format!("{name}-{}", sub.get_name());
            pages.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        i += 1;
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(cmd)?).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The unlock options of this run.
pub(crate) fn unlock_options<'a>(
    cli: &'a Cli,
    env: &'a Env,
    locators: &'a coffer::slot::Locators,
) -> coffer::slot::UnlockOptions<'a> {
    coffer::slot::UnlockOptions {
        selector: cli.unlock.slot.as_deref(),
        factors: &env.factors,
        ui: &env.ui,
        locators,
        kdf_budget: coffer::slot::UNAUTHENTICATED_KDF_BUDGET,
    }
}

/// Unlock `keyring` with the factors and prompts at hand. A version 1
/// keyring is upgraded in memory ([`Keyring::upgrade`]); the caller holds
/// the lock and writes it back (every caller changes the keyring anyway).
pub(crate) fn unlock(
    cli: &Cli,
    env: &Env,
    keyring: &mut Keyring,
) -> Result<coffer::key::BackupKey> {
    let locators = cli.unlock.locators();
    let opts = unlock_options(cli, env, &locators);
    let (bk, used) = keyring.unlock_with(&env.keyring.path, &opts)?;
    if cli.verbose {
        env.ui.info(&format!("unlocked with slot {}", used.name()));
    }
    if keyring.upgrade(&bk) {
        say_upgraded(env, keyring);
    }
    Ok(bk)
}

/// Under the keyring's lock: load it and unlock it, writing it back when
/// unlocking upgraded it from version 1. The lock stays held (returned)
/// for callers that write something derived from it.
pub(crate) fn unlock_and_store_upgrade(
    cli: &Cli,
    env: &Env,
) -> Result<(
    Keyring,
    coffer::key::BackupKey,
    coffer::keyring::KeyringLock,
)> {
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    let was_v1 = keyring.sealer().is_none();
    let bk = unlock(cli, env, &mut keyring)?;
    if was_v1 {
        kf.store(&keyring, &lock, false)?;
    }
    Ok((keyring, bk, lock))
}

fn say_upgraded(env: &Env, keyring: &Keyring) {
    env.ui.info(&format!(
        "keyring upgraded to format version 2 (key id {}): `seal` needs no factor from now on",
        keyring.key_id
    ));
}

/// After `bk` unlocked an archive through the keyring at `env`'s path, and
/// that keyring is still version 1: upgrade it in place (under the lock,
/// re-read, checked against `bk` first). Best effort: a keyring that
/// cannot be upgraded now (read-only, changed meanwhile) stays as it was.
pub(crate) fn upgrade_keyring_file(env: &Env, bk: &coffer::key::BackupKey) {
    let kf = &env.keyring;
    let result = (|| -> Result<()> {
        let lock = kf.lock()?;
        let mut keyring = kf.load()?;
        keyring.verify(bk, &kf.path)?;
        if keyring.upgrade(bk) {
            kf.store(&keyring, &lock, false)?;
            say_upgraded(env, &keyring);
        }
        Ok(())
    })();
    if let Err(e) = result {
        env.ui
            .warn(&format!("keyring left at format version 1: {e}"));
    }
}

/// A slot named in `--json` output: `{"id", "kind", "label"}` (docs/json.md).
pub(crate) fn slot_ref(s: &coffer::slot::SlotRecord) -> serde_json::Value {
    serde_json::json!({
        "id": s.id.as_str(),
        "kind": s.params.kind(),
        "label": s.label.as_ref().map(|l| l.as_str()),
    })
}

/// A slot in full in `--json` output: its members as in the keyring
/// (docs/format.md §2), `created` as RFC 3339, and for a member of a
/// threshold group its `group` (the group's id) beside its `x`.
pub(crate) fn slot_json(s: &coffer::slot::SlotRecord) -> serde_json::Value {
    let mut v = s.to_json();
    v["created"] = unix_time_text(s.created).into();
    if let Some(m) = &s.member {
        v["group"] = m.group.as_str().into();
    }
    v
}

/// One slot of a list as a row: its id indented under its threshold
/// group, and its public detail (a group's "k of n", a member's x before
/// its kind's own); `unknown` for a kind this build does not know. Every
/// string from the file is escaped.
pub(crate) fn slot_row(
    slots: &[coffer::slot::SlotRecord],
    i: usize,
    unknown: &str,
) -> (String, String) {
    use coffer::slot::threshold;
    let s = &slots[i];
    let id = format!("{}{}", "  ".repeat(threshold::depth(slots, i)), s.id);
    let mut detail = match threshold::need(s) {
        Some(k) => {
            let n = threshold::members(slots, &s.id).len();
            if threshold::complete(slots, i) {
                format!("{k} of {n} members")
            } else {
                format!("{k} of {n} members: incomplete, opens nothing until {k} can")
            }
        }
        None => s
            .params
            .as_slot()
            .map(|k| coffer::ui::escaped(&k.describe()))
            .unwrap_or_else(|| unknown.to_owned()),
    };
    if let Some(m) = &s.member {
        detail = format!("member {} of {}: {detail}", m.x, m.group);
    }
    (id, detail)
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
    let written = serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|_| writeln!(out));
    stdout_result(written)
}

/// A write to standard output: a reader that left (`| head`) is not an
/// error, as for `open -o -` (see `archive_cmd::reader_left`).
pub(crate) fn stdout_result(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Error::io("<stdout>", e)),
    }
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
