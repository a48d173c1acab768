//! `seal`, `open`, `verify`, `inspect`: the command-line side of archives.
//!
//! Sealing needs no factor (format 2): it reads the keyring's public
//! sealing key and sealer key, and copies its slots into the archive
//! header; only a version 1 keyring is unlocked first, once, to upgrade it.
//! Opening unlocks with the keyring's slots when the keyring holds the
//! archive's key, and with the archive's own slot copies otherwise, so an
//! archive plus any one factor is enough. A seal-only keyring opens
//! nothing.
//!
//! Output to `-`, a FIFO, a character device or `/dev/fd/N` is written as
//! it authenticates; a reader that closes early (`| head`) is not an error:
//! the command stops quietly with status 0 (see `reader_left`).
//!
//! Archives are read and written through `coffer::storage`: a path, `-`,
//! or an object URL (`s3://bucket/key`, `az://container/blob`) name where, and the same code runs
//! for each. Object stores' credentials and endpoints come from the
//! environment here, the only place that reads it for them.
//!
//! Must never: write an archive to a terminal, or leave partial output.

use super::{Cli, CompressArg, Env, agent_cmd, print_json, unlock};
use coffer::agent;
use coffer::archive::stream::PayloadKey;
use coffer::archive::{self, Compression, Header, NoProgress, Progress, SealOptions, Source};
use coffer::error::{Error, Result};
use coffer::key::BackupKey;
use coffer::passphrase::{self, PassphraseName};
use coffer::slot::{self, SlotRecord};
use coffer::storage::{self, ArchiveSink, ArchiveSource, FileSink, FileSource, Location};
use coffer::ui::escaped;
use serde_json::json;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The progress display on standard error, when it is a terminal and not
/// `-q`: bytes and speed; once the total is known, a bar with the
/// percentage and the time left. Clones show on the same line.
#[derive(Clone)]
struct Display(Option<indicatif::ProgressBar>);

impl Display {
    fn new(cli: &Cli, verb: &str, total: Option<u64>) -> Self {
        if cli.quiet || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner().with_message(verb.to_owned());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .expect("valid template"),
        );
        if bar.is_hidden() {
            // A terminal indicatif will not draw on (TERM unset or dumb).
            return Self(None);
        }
        let shown = Self(Some(bar));
        // A total known now is in the very first frame drawn.
        if let Some(t) = total {
            shown.set_total(t);
        }
        if let Some(bar) = &shown.0 {
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        shown
    }

    /// The total is known (or estimated): show a bar, the percentage and
    /// the time left.
    fn set_total(&self, total: u64) {
        let Some(bar) = &self.0 else { return };
        if bar.is_finished() {
            return;
        }
        bar.set_length(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:24}] {bytes}/{total_bytes} {percent}% ({bytes_per_sec}, {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    }

    fn shown(&self) -> bool {
        self.0.is_some()
    }

    /// The work is done: take the display away before the last line.
    fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn advance(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }
}

/// An archive read through the display: `open` and `verify` count the
/// archive's bytes, whose total the file's size gives.
struct ShownRead {
    inner: Input,
    shown: Display,
}

impl Read for ShownRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.shown.advance(n as u64);
        Ok(n)
    }
}

/// The display of `verb` over an archive of `len` bytes (when known), and
/// the archive read through it.
fn shown_input(
    cli: &Cli,
    verb: &str,
    len: Option<u64>,
    header: &Header,
    input: Input,
) -> (Input, Display) {
    let payload_len = len.map(|n| n.saturating_sub(header.encoded_len() as u64));
    let shown = Display::new(cli, verb, payload_len);
    if !shown.shown() {
        return (input, shown);
    }
    let read = ShownRead {
        inner: input,
        shown: shown.clone(),
    };
    (Box::new(read), shown)
}

/// About how many bytes of tar stream `paths` make, for the display of
/// `seal`: each entry's header and extended header, and each file's data
/// in 512-byte blocks (what is allocated, for sparse files; once per
/// inode, for hard links). Walked on its own thread, the total appearing
/// when known; symlinks are not followed, unreadable folders count as
/// empty.
fn estimate_in_background(paths: &[PathBuf], shown: &Display) {
    if !shown.shown() {
        return;
    }
    let paths = paths.to_vec();
    let shown = shown.clone();
    std::thread::spawn(move || {
        use std::os::unix::fs::MetadataExt;
        let mut total: u64 = 1024;
        let mut todo = paths;
        let mut linked = std::collections::HashSet::new();
        while let Some(p) = todo.pop() {
            let Ok(m) = p.symlink_metadata() else {
                continue;
            };
            total = total.saturating_add(1536);
            if m.is_file() && (m.nlink() == 1 || linked.insert((m.dev(), m.ino()))) {
                let data = m.len().min(m.blocks().saturating_mul(512));
                total = total.saturating_add(data.div_ceil(512) * 512);
            } else if m.is_dir()
                && let Ok(entries) = std::fs::read_dir(&p)
            {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        }
        shown.set_total(total);
    });
}

/// Progress that also counts the content bytes, for `--json`'s `bytes`.
struct Tally {
    shown: Box<dyn Progress>,
    n: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn new(shown: Box<dyn Progress>) -> Self {
        Self {
            shown,
            n: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The bytes counted so far; the display goes when `self` does.
    fn total(self) -> u64 {
        self.n.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Progress for Tally {
    fn advance(&self, n: u64) {
        self.n.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.shown.advance(n);
    }
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Whether `p` is a terminal (a character device that is a tty).
fn is_terminal_path(p: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
        && std::fs::File::options()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(p)
            .is_ok_and(|f| f.is_terminal())
}

/// Whether writing stopped because the reader of a pipe or FIFO closed it
/// (`coffer open x -o - | head`). That is not a failure: the reader took
/// what it wanted, and everything written had authenticated. GNU tools die
/// of SIGPIPE there (a shell reports 141); coffer, as ripgrep does, exits
/// 0 without a message, so `set -o pipefail` scripts that cut output short
/// keep working. Rust ignores SIGPIPE, so the write fails with EPIPE.
fn reader_left<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

type Input = Box<dyn Read + Send>;

/// Standard input as an unbuffered file (a duplicate of fd 0): chunks are
/// read whole, so std's line-oriented buffering would only add copies.
fn stdin_file() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("<stdin>", e))?;
    Ok(std::fs::File::from(fd))
}

/// Standard output as an unbuffered file (a duplicate of fd 1).
fn stdout_file() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("<stdout>", e))?;
    Ok(std::fs::File::from(fd))
}

/// Object stores' settings, from this process's environment (`AWS_*`,
/// `AZURE_*`, `AZURITE_BLOB_STORAGE_URL`).
fn store_options() -> storage::StoreOptions {
    storage::StoreOptions::from_pairs(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

/// Where `path` (a file, `-`, an object URL) is read from.
fn archive_source(path: &Path) -> Result<Box<dyn ArchiveSource>> {
    Ok(match Location::parse(path) {
        Location::Standard => Box::new(FileSource::stream(stdin_file()?)),
        Location::File(p) => Box::new(FileSource::open(&p)?),
        Location::Object(url) => storage::object_source(&url, &store_options())?,
    })
}

/// Where an archive is sealed to: a file (an existing one replaced only
/// with `force`), standard output, or an object.
fn archive_sink(output: &Path, force: bool) -> Result<Box<dyn ArchiveSink>> {
    Ok(match Location::parse(output) {
        Location::Standard => Box::new(FileSink::stream(stdout_file()?)),
        Location::File(p) => Box::new(FileSink::create(&p, force)?),
        Location::Object(url) => storage::object_sink(&url, force, &store_options())?,
    })
}

/// Open the archive and read its header. Also returns the archive's size
/// when known.
fn read_archive(path: &Path) -> Result<(Header, Input, Option<u64>)> {
    let source = archive_source(path)?;
    let len = source.len();
    let mut input = source.into_reader();
    let header = Header::read(&mut input).map_err(|e| match storage::surface(e) {
        Error::Io { source, .. } => Error::io(path, source),
        e => e,
    })?;
    Ok((header, input, len))
}

/// What a command wants of an archive's key.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// Its payload key: to open or verify.
    PayloadKey,
    /// A passphrase derived from it (`passphrase --from`).
    Passphrase(&'a PassphraseName),
}

/// What it got.
enum Got {
    PayloadKey(PayloadKey),
    Passphrase(Zeroizing<String>),
}

impl Got {
    fn payload_key(self) -> PayloadKey {
        match self {
            Got::PayloadKey(k) => k,
            Got::Passphrase(_) => unreachable!("asked for the payload key"),
        }
    }
}

/// How an archive was unlocked, and what to do once it checked out.
struct Unlocked {
    /// The keyring holds this key and is version 1: upgrade it with `bk`
    /// after the archive authenticated (never on the strength of an
    /// unchecked header). Never through the agent, whose keyring is
    /// version 2.
    upgrade: Option<BackupKey>,
    /// The keyring lists this archive's key id as retired by `rotate`.
    retired: bool,
    /// The slot that gave the key up; `None`: the unlock agent answered.
    slot: Option<SlotRecord>,
}

impl Unlocked {
    /// The slot that unlocked, for `--json`: `null` through the agent.
    fn slot_json(&self) -> serde_json::Value {
        self.slot
            .as_ref()
            .map_or(serde_json::Value::Null, super::slot_ref)
    }
}

/// Unlock an archive's key and give what `want`s of it. First a running
/// unlock agent (`coffer agent start`) for the archive's key id, which
/// answers only for a header that authenticates under its key. Else the
/// slots: the keyring's when the keyring holds this key (slots enrolled
/// since sealing count too), then the archive's own copies, which the
/// library tries only as its trust rule allows ([`slot::unlock_with`]).
/// When the key came through the keyring (it holds the key id, or one of
/// its slots gave the key up), the keyring is checked against the key
/// (key id, sealing key, sealer, MAC), and then the header: a swapped or
/// edited keyring is caught by the next `open` or `verify` (exit 4), as
/// `seal`, needing no key, cannot. A seal-only keyring is never used.
///
/// For a passphrase with the owner's keyring at hand, the archive must be
/// of a key it knows (its own, or one `rotate` retired), checked before
/// anything is asked: anyone who can write the storage can make an archive
/// that authenticates under a key of their own, with a copy of a YubiKey
/// or PKCS#11 slot (those wrap to a public key), and a passphrase derived
/// from it would be theirs.
fn unlock_archive(
    cli: &Cli,
    env: &Env,
    path: &Path,
    header: &Header,
    want: Want<'_>,
) -> Result<(Got, Unlocked)> {
    let mut keyring = None;
    let mut seal_only = None;
    match env.keyring.load() {
        Ok(k) if k.is_seal_only() => {
            // A host's keyring: its slots are not the owner's own, and it
            // is never unlocked; the archive's copies remain, under the
            // trust rule, for a factor given by hand.
            seal_only = k.seal_only_error(&env.keyring.path);
        }
        Ok(k) => keyring = Some(k),
        Err(e) if cli.verbose && env.keyring.exists() => env
            .ui
            .info(&format!("{e}; unlocking with the archive's own slots")),
        Err(_) => {}
    }
    let holds_key = keyring
        .as_ref()
        .is_some_and(|k| k.holds_key(header.version, &header.key_id));
    let retired = keyring
        .as_ref()
        .is_some_and(|k| k.is_retired(&header.key_id));
    if let (Want::Passphrase(_), Some(_)) = (want, &keyring)
        && !holds_key
        && !retired
    {
        return Err(Error::Refused(format!(
            "{} is sealed to key id {}, which the keyring {} neither holds nor lists as retired by `coffer rotate`: it is not one of your archives (or is from a keyring you replaced). Nothing derived from it",
            path.display(),
            header.key_id,
            env.keyring.path.display()
        )));
    }
    if let Some(got) = from_agent(cli, env, header, keyring.as_ref(), holds_key, want)? {
        let how = Unlocked {
            upgrade: None,
            retired,
            slot: None,
        };
        return Ok((got, how));
    }
    if keyring.is_some() && !holds_key && cli.verbose {
        env.ui
            .info("the keyring holds another backup key; unlocking with the archive's own slots");
    }
    let keyring_slots = keyring.as_ref().map_or(&[][..], |k| &k.slots[..]);
    let candidates = slot::archive_candidates(keyring_slots, holds_key, &header.slots);
    let locators = cli.unlock.locators();
    let opts = slot::UnlockOptions {
        selector: cli.unlock.slot.as_deref(),
        factors: &env.factors,
        ui: &env.ui,
        locators: &locators,
        kdf_budget: slot::UNAUTHENTICATED_KDF_BUDGET,
    };
    let (bk, used) = match (slot::unlock_with(&candidates, &opts), seal_only) {
        (Ok(v), _) => v,
        (Err(e), Some(seal_only)) if e.category() == coffer::error::Category::NoUsableSlot => {
            return Err(seal_only);
        }
        (Err(e), _) => return Err(e),
    };
    if cli.verbose {
        env.ui.info(&format!("unlocked with slot {}", used.name()));
    }
    // The key came through the keyring (it holds this key id, or one of
    // its own slots, byte for byte, gave it up): then the keyring must be
    // that key's, or it was swapped or edited.
    if let Some(k) = &keyring
        && (holds_key || k.slots.iter().any(|s| s == used))
    {
        k.verify(&bk, &env.keyring.path)?;
    }
    let payload_key = header.open(&bk)?;
    let got = match want {
        Want::PayloadKey => Got::PayloadKey(payload_key),
        Want::Passphrase(name) => Got::Passphrase(passphrase::derive(&bk, name)),
    };
    let upgrade = keyring
        .as_ref()
        .is_some_and(|k| holds_key && k.sealer().is_none());
    let how = Unlocked {
        upgrade: upgrade.then_some(bk),
        retired,
        slot: Some(used.clone()),
    };
    Ok((got, how))
}

/// Ask a running unlock agent for what `want`s of the archive: the agent
/// of the header's key id, or, for a version 1 archive of this keyring's
/// key, the agent of the keyring's key id.
fn from_agent(
    cli: &Cli,
    env: &Env,
    header: &Header,
    keyring: Option<&coffer::keyring::Keyring>,
    holds_key: bool,
    want: Want<'_>,
) -> Result<Option<Got>> {
    let mut ids = vec![header.key_id];
    if let Some(k) = keyring.filter(|k| holds_key && k.key_id != header.key_id) {
        ids.push(k.key_id);
    }
    for id in ids {
        let Some(socket) = agent_cmd::socket_for(cli, &id) else {
            return Ok(None);
        };
        let asked = match want {
            Want::PayloadKey => agent::payload_key(&socket, header).map(|k| k.map(Got::PayloadKey)),
            Want::Passphrase(name) => {
                agent::passphrase(&socket, name, Some(header)).map(|p| p.map(Got::Passphrase))
            }
        };
        if let Some(got) = agent_cmd::asked(cli, env, &socket, asked)? {
            return Ok(Some(got));
        }
    }
    Ok(None)
}

/// The passphrase `name` from the backup key that sealed the archive at
/// `path`, unlocked as `open` unlocks it (the agent included), its header
/// authenticated: for `passphrase --from`. The key id is always said.
pub(super) fn archive_passphrase(
    cli: &Cli,
    env: &Env,
    path: &Path,
    name: &PassphraseName,
) -> Result<Zeroizing<String>> {
    let (header, _, _) = read_archive(path)?;
    let (got, unlocked) = unlock_archive(cli, env, path, &header, Want::Passphrase(name))?;
    after_authenticated(env, path, &header, &unlocked);
    env.ui.warn(&format!(
        "derived from key id {} (of {}): check it is yours (`coffer slots` shows the current one)",
        header.key_id,
        path.display()
    ));
    match got {
        Got::Passphrase(p) => Ok(p),
        Got::PayloadKey(_) => unreachable!("asked for a passphrase"),
    }
}

/// What an archive that authenticated tells the owner, on stderr: who
/// sealed it, and whether its key was retired by `rotate` (then it is an
/// old backup, or was made later by someone holding an old keyring).
fn after_authenticated(env: &Env, archive: &Path, header: &Header, unlocked: &Unlocked) {
    if unlocked.retired {
        let sealer = header
            .sealer()
            .map(|s| format!(" by `{s}`"))
            .unwrap_or_default();
        env.ui.warn(&format!(
            "{} is sealed to key id {}, which `coffer rotate` retired: it is a backup from before that rotation, or was sealed{sealer} later by someone holding an older keyring (a seal-only host's, or a copy of yours). Its date ({}) is what its sealer wrote",
            archive.display(),
            header.key_id,
            super::unix_time_text(header.created)
        ));
    }
    if let Some(bk) = &unlocked.upgrade {
        super::upgrade_keyring_file(env, bk);
    }
}

/// `seal`'s options beyond what to seal and where.
pub(super) struct SealArgs<'a> {
    pub compress: CompressArg,
    pub force: bool,
    pub key_id: Option<&'a str>,
    pub pq_only: bool,
}

/// What `seal` seals with: the keyring's sealer, after the `--key-id`
/// check. A version 1 keyring is unlocked and upgraded first (the one
/// time `seal` needs a factor).
fn sealing_keyring(cli: &Cli, env: &Env, key_id: Option<&str>) -> Result<coffer::keyring::Keyring> {
    let want = key_id
        .map(|k| {
            coffer::key::KeyId::from_hex(&k.to_ascii_lowercase()).ok_or_else(|| {
                Error::Usage(format!(
                    "--key-id {}: a key id is 32 hex digits (`coffer slots` shows it)",
                    coffer::ui::escaped(k)
                ))
            })
        })
        .transpose()?;
    let mut keyring = env.keyring.load()?;
    if keyring.sealer().is_none() {
        env.ui.info(
            "the keyring is format version 1, which has no sealing key: unlocking it once to upgrade it (from then on `seal` needs no factor)",
        );
        let kf = &env.keyring;
        let lock = kf.lock()?;
        keyring = kf.load()?;
        // Another coffer may have upgraded it meanwhile.
        if keyring.sealer().is_none() {
            let _bk = unlock(cli, env, &mut keyring)?;
            kf.store(&keyring, &lock, false)?;
        }
    }
    if let Some(want) = want
        && want != keyring.key_id
    {
        return Err(Error::Refused(format!(
            "the keyring {} seals to key id {}, not {want} (--key-id): nothing sealed. If the key was rotated, export a new seal-only keyring and update --key-id; if not, someone may have replaced this keyring",
            env.keyring.path.display(),
            keyring.key_id
        )));
    }
    Ok(keyring)
}

pub(super) fn seal(
    cli: &Cli,
    env: &Env,
    paths: &[PathBuf],
    output: &Path,
    args: SealArgs<'_>,
) -> Result<()> {
    let SealArgs {
        compress,
        force,
        key_id,
        pq_only,
    } = args;
    let source = if paths.iter().any(|p| is_dash(p)) {
        if paths.len() > 1 {
            return Err(Error::Usage(
                "`-` (standard input) must be the only thing sealed".into(),
            ));
        }
        Source::Stream(Box::new(stdin_file()?))
    } else {
        for p in paths {
            p.symlink_metadata().map_err(|e| Error::io(p, e))?;
        }
        Source::Paths(paths.to_vec())
    };
    if is_dash(output) && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "refusing to write an archive to a terminal: redirect standard output or give -o FILE"
                .into(),
        ));
    }
    if !is_dash(output) && is_terminal_path(output) {
        return Err(Error::Usage(format!(
            "refusing to write an archive to the terminal {}: give -o FILE",
            output.display()
        )));
    }
    let keyring = sealing_keyring(cli, env, key_id)?;
    let sealer = keyring.sealer().expect("version 2 after sealing_keyring");
    const CLASSICAL: &str = "--pq-only";
    let (slots, left_out) = coffer::slot::threshold::prune(&keyring.slots, &|s, _, i| {
        (pq_only
            && s[i]
                .params
                .as_slot()
                .is_some_and(|k| k.classical_public_key()))
        .then(|| CLASSICAL.to_owned())
    });
    for (name, why) in left_out.iter().filter(|(_, why)| why != CLASSICAL) {
        env.ui
            .warn(&format!("slot {name} is left out of the archive: {why}"));
    }
    if slots.is_empty() {
        return Err(Error::Refused(format!(
            "no slot would be left in the archive's header ({}): enroll a recovery key, password or TPM first",
            left_out
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let opts = SealOptions {
        compression: match compress {
            CompressArg::None => Compression::None,
            CompressArg::Zstd => Compression::Zstd,
        },
        ..SealOptions::default()
    };
    let shown = Display::new(cli, "sealing", None);
    if !paths.iter().any(|p| is_dash(p)) {
        estimate_in_background(paths, &shown);
    }
    let bar = Tally::new(Box::new(shown.clone()));
    // A local file written (`-o DIR/x`, or `-o - > DIR/x`) is left out.
    let sealed = archive_sink(output, force)
        .and_then(|sink| archive::seal_to(sealer, &slots, source, opts, sink, &bar));
    shown.done();
    let bytes = bar.total();
    let Some(notices) = reader_left(sealed)? else {
        return Ok(());
    };
    report_notices(env, &notices);
    if cli.json {
        print_json(&json!({
            "archive": output,
            "key_id": keyring.key_id.to_string(),
            "sealer": sealer.id().to_string(),
            "bytes": bytes,
            "notices": notices_json(&notices),
        }))?;
    } else {
        let into = if is_dash(output) {
            "standard output".into()
        } else {
            output.display().to_string()
        };
        env.ui.info(&format!(
            "sealed {bytes} bytes into {into} (key id {}, sealer {})",
            keyring.key_id,
            sealer.id()
        ));
    }
    incomplete(&notices, || format!("sealed into {}", output.display()))
}

/// Name every path not sealed or restored exactly, on stderr (even with
/// `-q`: it changes the exit status).
fn report_notices(env: &Env, notices: &[archive::Notice]) {
    for n in notices {
        let kind = match n.kind {
            archive::NoticeKind::Skipped => "skipped",
            archive::NoticeKind::Changed => "changed",
        };
        env.ui
            .warn(&format!("{}: {kind}: {}", n.path.display(), n.what));
    }
}

fn notices_json(notices: &[archive::Notice]) -> serde_json::Value {
    notices
        .iter()
        .map(|n| {
            json!({
                "path": n.path.to_string_lossy(),
                "kind": match n.kind {
                    archive::NoticeKind::Skipped => "skipped",
                    archive::NoticeKind::Changed => "changed",
                },
                "what": n.what,
            })
        })
        .collect()
}

/// Exit status 6 when anything was noticed.
fn incomplete(notices: &[archive::Notice], what: impl FnOnce() -> String) -> Result<()> {
    if notices.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete {
            what: what(),
            count: notices.len(),
        })
    }
}

pub(super) fn open(
    cli: &Cli,
    env: &Env,
    archive_path: &Path,
    output: &Path,
    force: bool,
    numeric_owner: bool,
) -> Result<()> {
    // The URL is not repeated: one with a query could carry a SAS.
    if let Location::Object(_) = Location::parse(output) {
        return Err(Error::Usage(
            "-o: `open` writes to a local path or `-`, not to an object store; the archive itself may be an object".into(),
        ));
    }
    let (header, input, len) = read_archive(archive_path)?;
    let (got, unlocked) = unlock_archive(cli, env, archive_path, &header, Want::PayloadKey)?;
    let key = got.payload_key();
    let (input, shown) = shown_input(cli, "opening", len, &header, input);
    let bar = Tally::new(Box::new(NoProgress));
    let opened = if is_dash(output) {
        let mut out = stdout_file()?;
        archive::open_to_writer(&header, &key, input, &mut out, &bar).map(|_| Vec::new())
    } else {
        let opts = archive::UnpackOptions {
            numeric_owner,
            ..Default::default()
        };
        archive::open_to_path(&header, &key, input, output, force, opts, &bar)
    };
    shown.done();
    let bytes = bar.total();
    let Some(notices) = reader_left(opened.map_err(storage::surface))? else {
        return Ok(());
    };
    after_authenticated(env, archive_path, &header, &unlocked);
    report_notices(env, &notices);
    if cli.json {
        print_json(&json!({
            "archive": archive_path,
            "output": output,
            "version": header.version,
            "sealer": header.sealer().map(|s| s.to_string()),
            "retired_key": unlocked.retired,
            "slot": unlocked.slot_json(),
            "agent": unlocked.slot.is_none(),
            "bytes": bytes,
            "notices": notices_json(&notices),
        }))?;
    } else if !notices.is_empty() {
        return incomplete(&notices, || format!("opened into {}", output.display()));
    } else if !is_dash(output) {
        env.ui.info(&format!(
            "opened {} into {} ({bytes} bytes){}",
            archive_path.display(),
            output.display(),
            sealed_by(&header)
        ));
    }
    incomplete(&notices, || format!("opened into {}", output.display()))
}

pub(super) fn verify(cli: &Cli, env: &Env, archive_path: &Path) -> Result<()> {
    let (header, input, len) = read_archive(archive_path)?;
    let (got, unlocked) = unlock_archive(cli, env, archive_path, &header, Want::PayloadKey)?;
    let key = got.payload_key();
    let (input, shown) = shown_input(cli, "verifying", len, &header, input);
    let n = archive::verify(&header, &key, input, &NoProgress);
    shown.done();
    let n = n.map_err(storage::surface)?;
    after_authenticated(env, archive_path, &header, &unlocked);
    if cli.json {
        print_json(&json!({
            "archive": archive_path,
            "ok": true,
            "bytes": n,
            "version": header.version,
            "sealer": header.sealer().map(|s| s.to_string()),
            "retired_key": unlocked.retired,
            "slot": unlocked.slot_json(),
            "agent": unlocked.slot.is_none(),
        }))?;
    } else {
        let restorable = if header.flags & archive::header::FLAG_TAR != 0 {
            ", every entry restorable"
        } else {
            ""
        };
        env.ui.info(&format!(
            "{}: intact ({n} bytes of content authenticated{restorable}){}",
            archive_path.display(),
            sealed_by(&header)
        ));
    }
    Ok(())
}

/// ", sealed by ID" once the header authenticated (version 2).
fn sealed_by(header: &Header) -> String {
    match header.sealer() {
        Some(s) if s.is_owner() => ", sealed by the owner".into(),
        Some(s) => format!(", sealed by host `{s}`"),
        None => String::new(),
    }
}

/// Whether `path` looks like a keyring (a JSON object) rather than an
/// archive: its first non-blank byte is `{`.
fn looks_like_keyring(path: &Path) -> bool {
    if is_dash(path) {
        return false;
    }
    let mut first = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut first))
        .unwrap_or(0);
    first[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// `inspect` of a keyring file: its version, key ids, sealer and slots;
/// never the sealer key.
fn inspect_keyring(cli: &Cli, path: &Path) -> Result<()> {
    let keyring = coffer::keyring::KeyringFile::new(path).load()?;
    let sealer = keyring.sealer().map(|s| s.id().to_string());
    if cli.json {
        return print_json(&json!({
            "keyring": path,
            "version": keyring.version(),
            "key_id": keyring.key_id.to_string(),
            "v1_key_id": keyring.v1_key_id().map(|k| k.to_string()),
            "sealer": sealer,
            "seal_only": keyring.is_seal_only(),
            "slots": keyring.slots.iter().map(super::slot_json).collect::<Vec<_>>(),
        }));
    }
    let mut text = String::new();
    let mut w = |line: String| {
        text.push_str(&line);
        text.push('\n');
    };
    w(format!(
        "keyring      {}",
        escaped(&path.display().to_string())
    ));
    w(format!("format version {}", keyring.version()));
    w(format!("key id       {}", keyring.key_id));
    if let Some(v1) = keyring.v1_key_id() {
        w(format!(
            "v1 key id    {v1} (archives sealed before the upgrade)"
        ));
    }
    w(match &sealer {
        Some(s) if keyring.is_seal_only() => {
            format!("sealer       {s} (seal-only: seals, never opens)")
        }
        Some(s) => format!("sealer       {s}"),
        None => "sealer       none (version 1: unlocking upgrades it)".into(),
    });
    w("slots (not authenticated until unlocked):".into());
    slot_lines(&keyring.slots, &mut w);
    reader_left(
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
            .map_err(|e| Error::io("<stdout>", e)),
    )?;
    Ok(())
}

fn slot_lines(slots: &[SlotRecord], w: &mut dyn FnMut(String)) {
    use std::fmt::Write as _;
    for (i, s) in slots.iter().enumerate() {
        let (id, detail) = super::slot_row(slots, i, "not supported by this build");
        let mut line = String::new();
        let label = s.label.as_ref().map(|l| escaped(l.as_str()));
        let _ = write!(
            line,
            "  {id:<10} {:<16} {:<10} {detail}",
            label.as_deref().unwrap_or("-"),
            s.params.kind()
        );
        w(line);
    }
}

pub(super) fn inspect(cli: &Cli, archive_path: &Path) -> Result<()> {
    if looks_like_keyring(archive_path) {
        return inspect_keyring(cli, archive_path);
    }
    let (header, _, size) = read_archive(archive_path)?;
    let content = if header.flags & archive::header::FLAG_TAR != 0 {
        "files"
    } else {
        "stream"
    };
    let compression = if header.flags & archive::header::FLAG_ZSTD != 0 {
        "zstd"
    } else {
        "none"
    };
    let created = super::unix_time_text(header.created);
    if cli.json {
        return print_json(&json!({
            "archive": archive_path,
            "version": header.version,
            "key_id": header.key_id.to_string(),
            "sealer": header.sealer().map(|s| s.to_string()),
            "created": created,
            "content": content,
            "compression": compression,
            "chunk_size": header.chunk_size,
            "size": size,
            "header_size": header.encoded_len(),
            "slots": header.slots.iter().map(super::slot_json).collect::<Vec<_>>(),
        }));
    }
    let mut text = String::new();
    let mut w = |line: String| {
        text.push_str(&line);
        text.push('\n');
    };
    w(format!(
        "archive      {}",
        escaped(&archive_path.display().to_string())
    ));
    w(format!("format version {}", header.version));
    w(format!("key id       {}", header.key_id));
    if let Some(s) = header.sealer() {
        w(format!(
            "sealer       {s} (not authenticated until unlocked)"
        ));
    }
    w(format!("created      {created}"));
    w(format!(
        "content      {content}, compression {compression}, chunks of {} KiB",
        header.chunk_size / 1024
    ));
    if let Some(s) = size {
        w(format!(
            "size         {s} bytes (header {})",
            header.encoded_len()
        ));
    }
    w("slots (not authenticated until unlocked):".into());
    slot_lines(&header.slots, &mut w);
    // A reader that stops early (`| head`) is not an error.
    reader_left(
        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
            .map_err(|e| Error::io("<stdout>", e)),
    )?;
    Ok(())
}
