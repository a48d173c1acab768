//! Unpacking a tar stream into a folder, every step beneath that folder's
//! descriptor; and [`validate`], the same rules over a model of the tree,
//! writing nothing (what `verify` runs).
//!
//! How each operation stays inside the target (no string checks on
//! parents; the kernel resolves one component at a time, never a symlink):
//!
//! | operation | call |
//! |---|---|
//! | enter / create a folder | `openat(parent, name, O_DIRECTORY \| O_NOFOLLOW)`, `mkdirat(parent, name, 0700)` |
//! | create a file | `openat(parent, name, O_CREAT \| O_EXCL \| O_NOFOLLOW \| O_WRONLY, 0600)` |
//! | write content | `write`/`pwrite` on that descriptor; `ftruncate` for a sparse file's length |
//! | symlink | `symlinkat(target, parent, name)` (the target is stored, never followed) |
//! | hard link | `linkat(source_parent, source_name, parent, name, 0)` (flags 0: a symlink source is linked, not followed); the source's folders are walked as above |
//! | FIFO, device | `mknodat(parent, name, type, 0600, dev)` |
//! | replace an entry of the same name | `unlinkat(parent, name, 0)` (a folder is never replaced) |
//! | owner | files, folders: `fchown(fd)`; symlinks: `fchownat(parent, name, AT_SYMLINK_NOFOLLOW)`; FIFOs, devices: `fchownat(O_PATH fd, "", AT_EMPTY_PATH)` |
//! | mode | files, folders: `fchmod(fd)`; FIFOs, devices: `chmod("/proc/self/fd/N")` on an `O_PATH \| O_NOFOLLOW` descriptor (no `fchmodat2` on Debian 12's kernel; `fchmod` refuses `O_PATH`) |
//! | xattrs, ACLs | files, folders: `fsetxattr(fd)`; FIFOs, devices, symlinks: `setxattr("/proc/self/fd/N")` of an `O_PATH \| O_NOFOLLOW` descriptor (it names the node itself, never a link's target) |
//! | times | files, folders: `futimens(fd)`; symlinks: `utimensat(parent, name, AT_SYMLINK_NOFOLLOW)`; FIFOs, devices: `utimensat("/proc/self/fd/N")` |
//!
//! Folder metadata (mode, owner, times) is set when the walk leaves the
//! folder, so a read-only folder does not stop its own contents from being
//! written and its mtime is not disturbed afterwards. Cost is linear in the
//! stream: the open folders are kept as a stack of descriptors (all of
//! them down to depth [`KEEP_ALL`], every [`CHECKPOINT`]th below), so an
//! entry resolves only the components it does not share with the one
//! before.
//!
//! Must never: follow a symlink, create or change anything outside the
//! target folder, or replace a folder with something else.

use super::tar::{self, Entry, Kind, display_bytes, read::Parser};
use super::{Notice, NoticeKind, owner};
use crate::error::{Error, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Folders down to this depth keep their descriptor while open.
pub const KEEP_ALL: usize = 256;
/// Below [`KEEP_ALL`], every this many levels keeps its descriptor.
pub const CHECKPOINT: usize = 64;
/// Bytes of content written at a time.
const WRITE_BUF: usize = 1 << 20;

/// How to restore owners, and what the target is like.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Restore owners by id, ignoring names (tar's `--numeric-owner`).
    pub numeric_owner: bool,
    /// Whether the target tells names apart only up to case. `None`:
    /// ask it (two probe folders, made and removed first). A test may
    /// say `Some(true)` of a file system that does not.
    pub names_fold: Option<bool>,
}

/// What an unpack or validation did, for tests of its cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries in the stream.
    pub entries: u64,
    /// Path components looked up or created (one system call each).
    pub components: u64,
}

fn corrupt(what: String) -> Error {
    Error::ArchiveCorrupt { what }
}

/// An entry's path as components: relative, no `..`, each at most 255
/// bytes; empty components and `.` are dropped.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.first() == Some(&b'/') {
        return Err(corrupt(format!(
            "entry {} is an absolute path: refusing to write outside the target folder",
            display_bytes(path)
        )));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(corrupt(format!(
                    "entry {} goes up with `..`: refusing to write outside the target folder",
                    display_bytes(path)
                )));
            }
            c if c.len() > 255 => {
                return Err(corrupt(format!(
                    "entry {} has a name longer than 255 bytes",
                    display_bytes(path)
                )));
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(corrupt("an entry has an empty path".into()));
    }
    Ok(out)
}

fn through_non_folder(path: &[u8]) -> Error {
    corrupt(format!(
        "entry {} goes through a symlink or a file: refusing to write outside the target folder",
        display_bytes(path)
    ))
}

fn replaces_folder(path: &[u8]) -> Error {
    corrupt(format!(
        "entry {} would replace a folder of the same name",
        display_bytes(path)
    ))
}

fn bad_link(path: &[u8], link: &[u8]) -> Error {
    corrupt(format!(
        "entry {} is a hard link to {}, which is not a file earlier in the archive",
        display_bytes(path),
        display_bytes(link)
    ))
}

/// Check every entry of the stream as [`unpack`] would, writing nothing:
/// headers, paths, types, sizes, sparse maps, pax records, and the tree
/// they build (no entry through a symlink or file, no folder replaced, no
/// hard link to anything but an earlier file). Returns the reader after
/// the end-of-archive marker.
pub fn validate<R: Read>(r: R) -> Result<(R, Stats)> {
    let mut p = Parser::new(r);
    // A model of the tree: (parent node, name) → (node, is a folder).
    // Grows with the entry count; this is what lets verify predict what
    // unpack would refuse. Node 0 is the target folder.
    let mut tree: HashMap<(u64, Vec<u8>), (u64, bool)> = HashMap::new();
    // The folders of the previous entry, as unpack keeps them open, so an
    // entry costs only the components it does not share with the one
    // before.
    let mut stack: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut next_node = 1u64;
    let mut stats = Stats::default();
    while let Some(e) = p.next_entry()? {
        stats.entries += 1;
        check_entry(&e)?;
        let comps = components(&e.path)?;
        let (last, parents) = comps.split_last().expect("never empty");
        let common = stack
            .iter()
            .zip(parents)
            .take_while(|((n, _), c)| n == *c)
            .count();
        stack.truncate(common);
        for c in &parents[common..] {
            stats.components += 1;
            let parent = stack.last().map_or(0, |&(_, id)| id);
            let id = match tree.get(&(parent, c.to_vec())) {
                Some(&(_, false)) => return Err(through_non_folder(&e.path)),
                Some(&(id, true)) => id,
                None => {
                    let id = next_node;
                    next_node += 1;
                    tree.insert((parent, c.to_vec()), (id, true));
                    id
                }
            };
            stack.push((c.to_vec(), id));
        }
        let parent = stack.last().map_or(0, |&(_, id)| id);
        let is_dir = e.kind() == Kind::Dir;
        let existing = tree.get(&(parent, last.to_vec())).copied();
        match (existing, is_dir) {
            (Some((_, true)), false) => return Err(replaces_folder(&e.path)),
            (Some((_, false)), true) => return Err(through_non_folder(&e.path)),
            _ => {}
        }
        if e.kind() == Kind::HardLink {
            // The source, resolved from the top: as long as its path.
            let t = components(&e.link)?;
            let mut node = 0u64;
            let mut found = None;
            for (i, c) in t.iter().enumerate() {
                stats.components += 1;
                match tree.get(&(node, c.to_vec())) {
                    Some(&(id, true)) if i + 1 < t.len() => node = id,
                    Some(&(id, false)) if i + 1 == t.len() => found = Some(id),
                    _ => break,
                }
            }
            let same = existing.is_some_and(|(id, _)| Some(id) == found);
            if found.is_none() || same {
                return Err(bad_link(&e.path, &e.link));
            }
        }
        match existing {
            Some((_, true)) => {}
            _ => {
                let id = next_node;
                next_node += 1;
                tree.insert((parent, last.to_vec()), (id, is_dir));
            }
        }
    }
    Ok((p.into_inner(), stats))
}

/// What no file system takes, refused in verify and open alike: a NUL in
/// a path or link (the kernel's strings end there), a symlink target of
/// PATH_MAX or more.
fn check_entry(e: &Entry) -> Result<()> {
    if e.path.contains(&0) || e.link.contains(&0) {
        return Err(corrupt(format!(
            "entry {} has a NUL byte in its name or link",
            display_bytes(&e.path)
        )));
    }
    if e.kind() == Kind::Symlink && e.link.len() >= 4096 {
        return Err(corrupt(format!(
            "entry {} is a symlink to a target of 4096 bytes or more",
            display_bytes(&e.path)
        )));
    }
    Ok(())
}

/// One open folder on the walk's stack.
struct Level {
    name: Vec<u8>,
    fd: Option<OwnedFd>,
    /// The folder's own entry, applied when the walk leaves it.
    meta: Option<Entry>,
}

struct Unpacker<'n> {
    root: OwnedFd,
    root_path: PathBuf,
    levels: Vec<Level>,
    opts: UnpackOptions,
    root_user: bool,
    notices: &'n mut Vec<Notice>,
    stats: Stats,
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
    buf: Vec<u8>,
    writers: Writers,
    /// Paths of entries left out (devices when not root).
    skipped: std::collections::HashSet<Vec<u8>>,
    /// On a target that does not tell names apart by case (vfat, exFAT,
    /// a casefolded ext4 folder, some CIFS shares): the names this run
    /// made, as keyed by [`Unpacker::path_key`]. Any other name found
    /// there is another entry's under a folded name (`collides`).
    folds: Option<(std::collections::HashSet<u64>, std::hash::RandomState)>,
}

/// Whether the empty folder `root` finds a name under another case: a
/// probe folder made, looked up under its name in capitals (the same
/// folder: the file system folds case), and removed. Only a lookup, so a
/// retransmitted NFS `mkdir` cannot pass for a fold.
fn folds_names(root: BorrowedFd<'_>, dst: &Path) -> Result<bool> {
    let io = |e: Errno| Error::io(dst, e.into());
    let (lower, upper) = (".coffer-name-probe", ".COFFER-NAME-PROBE");
    rustix::fs::mkdirat(root, lower, Mode::from_raw_mode(0o700)).map_err(io)?;
    let probe = rustix::fs::statat(root, lower, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
    let folds = match rustix::fs::statat(root, upper, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st.st_dev == probe.st_dev && st.st_ino == probe.st_ino,
        Err(Errno::NOENT) => false,
        Err(e) => return Err(io(e)),
    };
    rustix::fs::unlinkat(root, lower, AtFlags::REMOVEDIR).map_err(io)?;
    Ok(folds)
}

fn collides(path: &[u8], dst: &Path) -> Error {
    Error::Refused(format!(
        "entry {} has the name of another entry restored before it, but for case: the file system at {} does not tell such names apart, so one would be lost; nothing was restored. Restore onto a file system that does (or `coffer open … -o - | tar -x` to choose)",
        display_bytes(path),
        dst.display()
    ))
}

/// Unpack the tar stream `r` into the existing, empty folder `dst`.
/// Entries that cannot be restored here (devices when not root) and
/// metadata that could not be set are pushed to `notices`. Returns the
/// reader after the end-of-archive marker.
pub fn unpack<R: Read>(
    r: R,
    dst: &Path,
    opts: UnpackOptions,
    notices: &mut Vec<Notice>,
) -> Result<(R, Stats)> {
    let root = rustix::fs::open(
        dst,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(dst, e.into()))?;
    super::xattrs::drop_inherited_acls(root.as_fd());
    let folds = match opts.names_fold {
        Some(f) => f,
        None => folds_names(root.as_fd(), dst)?,
    }
    .then(Default::default);
    let mut u = Unpacker {
        root,
        root_path: dst.to_path_buf(),
        levels: Vec::new(),
        opts,
        root_user: rustix::process::geteuid().is_root(),
        notices,
        stats: Stats::default(),
        users: HashMap::new(),
        groups: HashMap::new(),
        buf: vec![0u8; WRITE_BUF],
        writers: Writers::new(super::stream::workers()),
        skipped: Default::default(),
        folds,
    };
    let mut p = Parser::new(r);
    while let Some(e) = p.next_entry()? {
        u.stats.entries += 1;
        u.entry(&mut p, e)?;
    }
    while !u.levels.is_empty() {
        u.pop()?;
    }
    let written = u.writers.finish()?;
    u.notices.extend(written);
    // On disk before the folder is put in place: a power loss after
    // "opened" must not leave files empty, and a write that fails only at
    // write-back (a full disk, an NFS quota) must fail the restore.
    rustix::fs::syncfs(&u.root).map_err(|e| Error::io(dst, e.into()))?;
    Ok((p.into_inner(), u.stats))
}

fn keeps_fd(depth_index: usize) -> bool {
    depth_index < KEEP_ALL || depth_index.is_multiple_of(CHECKPOINT)
}

/// The descriptor of the innermost open folder (the target itself when
/// none is open). The top of the stack always has one.
fn top_fd<'a>(levels: &'a [Level], root: &'a OwnedFd) -> BorrowedFd<'a> {
    match levels.last() {
        Some(l) => {
            l.fd.as_ref()
                .expect("the top level keeps its descriptor")
                .as_fd()
        }
        None => root.as_fd(),
    }
}

/// Open (creating if missing, mode 0700 until its own metadata is set)
/// folder `name` in `parent`, without following a symlink.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &[u8],
    create: bool,
    shown: &[u8],
    stats: &mut Stats,
    root_path: &Path,
) -> Result<OwnedFd> {
    stats.components += 1;
    let io = |e: Errno| Error::io(shown_path(root_path, shown), e.into());
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) if create => {}
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(through_non_folder(shown)),
        Err(e) => return Err(io(e)),
    }
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io(e)),
    }
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(through_non_folder(shown)),
        Err(e) => Err(io(e)),
    }
}

fn shown_path(root: &Path, path: &[u8]) -> PathBuf {
    root.join(display_bytes(path))
}

fn timestamps(t: tar::Time) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: t.secs,
            tv_nsec: i64::from(t.nanos) as _,
        },
    }
}

/// An entry's metadata with owners resolved: what a writer thread needs.
struct Meta {
    owner: Option<(rustix::fs::Uid, rustix::fs::Gid)>,
    mode: Mode,
    entry: Entry,
}

/// Owner, mode, xattrs and ACLs, then times, on an open file or folder.
/// Returns what could not be set (noted, not fatal: the content is there).
fn apply_meta(fd: BorrowedFd<'_>, m: &Meta) -> Vec<String> {
    let mut failed = Vec::new();
    let mut mode = m.mode;
    if let Some((u, g)) = m.owner
        && let Err(err) = rustix::fs::fchown(fd, Some(u), Some(g))
    {
        failed.push(format!("owner not restored: {err}"));
        // Never a set-id file owned by whoever restores it.
        mode = Mode::from_raw_mode(mode.as_raw_mode() & !0o6000);
    }
    // After chown, which clears set-id bits.
    if let Err(err) = rustix::fs::fchmod(fd, mode) {
        failed.push(format!("mode not restored: {err}"));
    }
    failed.extend(super::xattrs::write(fd, &m.entry));
    if let Err(err) = rustix::fs::futimens(fd, &timestamps(m.entry.mtime)) {
        failed.push(format!("mtime not restored: {err}"));
    }
    failed
}

/// Files at most this long are written, with their metadata, by writer
/// threads while the next entries are read.
const SMALL: u64 = 128 * 1024;

/// A small file created (so later entries, hard links included, see it)
/// and read, for a writer thread to fill.
struct WriteJob {
    fd: OwnedFd,
    content: Vec<u8>,
    meta: Meta,
    shown: PathBuf,
}

/// What writer threads report back.
#[derive(Default)]
struct Outcome {
    error: Option<Error>,
    notices: Vec<Notice>,
}

/// Writer threads for small files. Writing content and setting a file's
/// metadata never changes its folder, so folder metadata need not wait for
/// them; the unpack waits for all of them before it succeeds.
struct Writers {
    jobs: Option<crossbeam_channel::Sender<WriteJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    outcome: std::sync::Arc<std::sync::Mutex<Outcome>>,
}

impl Writers {
    fn new(n: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<WriteJob>(64);
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(Outcome::default()));
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                let outcome = outcome.clone();
                std::thread::spawn(move || {
                    for job in rx {
                        let mut f = std::fs::File::from(job.fd);
                        if let Err(e) = f.write_all(&job.content) {
                            let mut o = outcome.lock().expect("no panics hold it");
                            o.error.get_or_insert(Error::io(&job.shown, e));
                            continue;
                        }
                        let failed = apply_meta(f.as_fd(), &job.meta);
                        if !failed.is_empty() {
                            let mut o = outcome.lock().expect("no panics hold it");
                            for what in failed {
                                o.notices.push(Notice {
                                    path: PathBuf::from(display_bytes(&job.meta.entry.path)),
                                    kind: NoticeKind::Skipped,
                                    what,
                                });
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(tx),
            threads,
            outcome,
        }
    }

    fn submit(&self, job: WriteJob) {
        self.jobs
            .as_ref()
            .expect("open until finished")
            .send(job)
            .expect("writer threads live as long as the pool");
    }

    /// Wait for every job; the first error, or the notices.
    fn finish(&mut self) -> Result<Vec<Notice>> {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut o = self.outcome.lock().expect("threads joined");
        match o.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut o.notices)),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

use crate::fsutil::proc_fd_path as proc_path;

impl Unpacker<'_> {
    fn io(&self, path: &[u8], e: Errno) -> Error {
        Error::io(shown_path(&self.root_path, path), e.into())
    }

    fn notice(&mut self, path: &[u8], kind: NoticeKind, what: String) {
        self.notices.push(Notice {
            path: PathBuf::from(display_bytes(path)),
            kind,
            what,
        });
    }

    /// Leave the innermost folder, setting its metadata. The new innermost
    /// folder's descriptor is re-opened only when next needed
    /// ([`Self::ensure_top_fd`]), so leaving many levels at once costs
    /// nothing per level.
    fn pop(&mut self) -> Result<()> {
        if self.levels.last().is_some_and(|l| l.meta.is_some()) {
            self.ensure_top_fd()?;
        }
        let level = self.levels.pop().expect("pop on an empty stack");
        if let (Some(fd), Some(meta)) = (&level.fd, &level.meta) {
            self.set_meta(fd.as_fd(), meta);
        }
        Ok(())
    }

    /// Give the innermost folder a descriptor again if it gave it up:
    /// re-open it from the nearest level that kept one, at most
    /// [`CHECKPOINT`] components away.
    fn ensure_top_fd(&mut self) -> Result<()> {
        let n = self.levels.len();
        if n == 0 || self.levels[n - 1].fd.is_some() {
            return Ok(());
        }
        let j = (0..n).rev().find(|&i| self.levels[i].fd.is_some());
        let base = match j {
            Some(j) => self.levels[j].fd.as_ref().expect("kept"),
            None => &self.root,
        };
        let mut fd = base
            .try_clone()
            .map_err(|e| Error::io(&self.root_path, e))?;
        for i in j.map_or(0, |j| j + 1)..n {
            let name = &self.levels[i].name;
            fd = open_dir(
                fd.as_fd(),
                name,
                false,
                name,
                &mut self.stats,
                &self.root_path,
            )?;
        }
        self.levels[n - 1].fd = Some(fd);
        Ok(())
    }

    /// Make the stack hold exactly the folders `comps`, creating the
    /// missing ones.
    fn descend(&mut self, comps: &[&[u8]], shown: &[u8]) -> Result<()> {
        let common = self
            .levels
            .iter()
            .zip(comps)
            .take_while(|(l, c)| l.name == **c)
            .count();
        while self.levels.len() > common {
            self.pop()?;
        }
        self.ensure_top_fd()?;
        for c in &comps[common..] {
            // On a target that folds names, a folder there already that
            // this run did not make is another entry's.
            if self.folds.is_some() && !self.made(c) {
                match rustix::fs::statat(
                    top_fd(&self.levels, &self.root),
                    *c,
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Err(Errno::NOENT) => self.mark_made(c),
                    Ok(_) => return Err(collides(shown, &self.root_path)),
                    Err(e) => return Err(Error::io(shown_path(&self.root_path, shown), e.into())),
                }
            }
            let fd = open_dir(
                top_fd(&self.levels, &self.root),
                c,
                true,
                shown,
                &mut self.stats,
                &self.root_path,
            )?;
            let n = self.levels.len();
            if n > 0 && !keeps_fd(n - 1) {
                self.levels[n - 1].fd = None;
            }
            self.levels.push(Level {
                name: c.to_vec(),
                fd: Some(fd),
                meta: None,
            });
        }
        Ok(())
    }

    /// Make room for a new non-folder entry `name` in the innermost
    /// folder: an existing non-folder of that name is removed (tar does the
    /// same); an existing folder is never replaced.
    fn make_room(&mut self, name: &[u8], shown: &[u8]) -> Result<()> {
        let dir = top_fd(&self.levels, &self.root);
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(shown, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(replaces_folder(shown))
            }
            Ok(_) => {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| self.io(shown, e))
            }
        }
    }

    /// Run `make(innermost folder)`; if the name exists, make room
    /// ([`Self::make_room`]) and run it once more. Trying first saves a
    /// lookup per entry in the common case.
    fn create<T>(
        &mut self,
        name: &[u8],
        shown: &[u8],
        make: impl Fn(BorrowedFd<'_>) -> std::result::Result<T, Errno>,
    ) -> Result<std::result::Result<T, Errno>> {
        let made = match make(top_fd(&self.levels, &self.root)) {
            // On a target that folds names, only a name this run made is
            // an earlier entry of the same name (replaced, as tar does).
            Err(Errno::EXIST) if self.folds.is_some() && !self.made(name) => {
                return Err(collides(shown, &self.root_path));
            }
            Err(Errno::EXIST) => {
                self.make_room(name, shown)?;
                make(top_fd(&self.levels, &self.root))
            }
            r => r,
        };
        if made.is_ok() {
            self.mark_made(name);
        }
        Ok(made)
    }

    /// `name` in the innermost folder, as a key of `folds`: the folder
    /// names and `name`, hashed with the run's own random key (so no
    /// archive can be made to collide in it).
    fn path_key(&self, name: &[u8]) -> Option<u64> {
        use std::hash::{BuildHasher, Hasher};
        let (_, state) = self.folds.as_ref()?;
        let mut h = state.build_hasher();
        for l in &self.levels {
            h.write(&l.name);
            h.write_u8(0);
        }
        h.write(name);
        Some(h.finish())
    }

    /// Whether this run made `name` in the innermost folder (always, on a
    /// target that does not fold names: not tracked there).
    fn made(&self, name: &[u8]) -> bool {
        match (self.path_key(name), &self.folds) {
            (Some(k), Some((set, _))) => set.contains(&k),
            _ => true,
        }
    }

    fn mark_made(&mut self, name: &[u8]) {
        if let Some(k) = self.path_key(name)
            && let Some((set, _)) = self.folds.as_mut()
        {
            set.insert(k);
        }
    }

    fn uid(&mut self, e: &Entry) -> u32 {
        let numeric = u32::try_from(e.uid).unwrap_or(u32::MAX - 1);
        if self.opts.numeric_owner || e.uname.is_empty() {
            return numeric;
        }
        let by_name = *self
            .users
            .entry(e.uname.clone())
            .or_insert_with(|| owner::user_id(&e.uname));
        by_name.unwrap_or(numeric)
    }

    fn gid(&mut self, e: &Entry) -> u32 {
        let numeric = u32::try_from(e.gid).unwrap_or(u32::MAX - 1);
        if self.opts.numeric_owner || e.gname.is_empty() {
            return numeric;
        }
        let by_name = *self
            .groups
            .entry(e.gname.clone())
            .or_insert_with(|| owner::group_id(&e.gname));
        by_name.unwrap_or(numeric)
    }

    /// The mode to set: everything as root; without set-id and sticky bits
    /// otherwise (as tar does when it cannot restore the owner).
    fn mode(&self, e: &Entry) -> Mode {
        let m = if self.root_user {
            e.mode & 0o7777
        } else {
            e.mode & 0o777
        };
        Mode::from_raw_mode(m)
    }

    /// `e`'s metadata with its owner resolved (by name unless
    /// `numeric_owner`; only as root).
    fn resolve(&mut self, e: &Entry) -> Meta {
        let owner = self.root_user.then(|| {
            (
                rustix::fs::Uid::from_raw(self.uid(e)),
                rustix::fs::Gid::from_raw(self.gid(e)),
            )
        });
        let mut mode = self.mode(e);
        if owner.is_some_and(|(u, g)| u.as_raw() == u32::MAX || g.as_raw() == u32::MAX) {
            // Id -1 means "leave as is" to chown: the file would keep the
            // restorer as owner, so it gets no set-id bits.
            mode = Mode::from_raw_mode(mode.as_raw_mode() & !0o6000);
        }
        Meta {
            owner,
            mode,
            entry: Entry {
                // Content metadata is not needed to set metadata.
                sparse: None,
                ..e.clone()
            },
        }
    }

    /// Owner, mode, xattrs and ACLs, then times, on an open file or
    /// folder. What fails is noted, not fatal: the content is there.
    fn set_meta(&mut self, fd: BorrowedFd<'_>, e: &Entry) {
        let m = self.resolve(e);
        for f in apply_meta(fd, &m) {
            self.notice(&e.path, NoticeKind::Skipped, f);
        }
    }

    fn entry<R: Read>(&mut self, p: &mut Parser<R>, e: Entry) -> Result<()> {
        check_entry(&e)?;
        let comps = components(&e.path)?;
        let (last, parents) = comps.split_last().expect("components are never empty");
        let kind = e.kind();
        if kind == Kind::Dir {
            self.descend(&comps, &e.path)?;
            self.levels.last_mut().expect("just pushed").meta = Some(e);
            return Ok(());
        }
        self.descend(parents, &e.path)?;
        if matches!(kind, Kind::Char | Kind::Block) && !self.root_user {
            self.notice(
                &e.path,
                NoticeKind::Skipped,
                format!("a {} is restored only as root", kind.name()),
            );
            // Hard links to it are left out too, not refused.
            self.skipped.insert(comps.join(&b'/'));
            return Ok(());
        }
        match kind {
            Kind::File => self.file(p, &e, last),
            Kind::Symlink => self.symlink(&e, last),
            Kind::HardLink => self.hard_link(&e, last),
            Kind::Fifo | Kind::Char | Kind::Block => self.node(&e, last, kind),
            Kind::Dir => unreachable!("handled above"),
        }
    }

    fn file<R: Read>(&mut self, p: &mut Parser<R>, e: &Entry, name: &[u8]) -> Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self
            .create(name, &e.path, |dir| {
                rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
            })?
            .map_err(|err| self.io(&e.path, err))?;
        let write_err =
            |this: &Self, err: std::io::Error| Error::io(shown_path(&this.root_path, &e.path), err);
        match &e.sparse {
            None if e.size <= SMALL => {
                let mut content = vec![0u8; e.size as usize];
                let mut got = 0;
                while got < content.len() {
                    let n = p.read_content(&mut content[got..])?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let meta = self.resolve(e);
                let shown = shown_path(&self.root_path, &e.path);
                self.writers.submit(WriteJob {
                    fd,
                    content,
                    meta,
                    shown,
                });
            }
            None => {
                let mut f = std::fs::File::from(fd);
                loop {
                    let n = p.read_content(&mut self.buf)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&self.buf[..n])
                        .map_err(|err| write_err(self, err))?;
                }
                let fd = OwnedFd::from(f);
                self.set_meta(fd.as_fd(), e);
            }
            Some(segs) => {
                for s in segs {
                    let mut done = 0u64;
                    while done < s.len {
                        let want = (s.len - done).min(self.buf.len() as u64) as usize;
                        let n = p.read_content(&mut self.buf[..want])?;
                        if n == 0 {
                            return Err(corrupt(format!(
                                "entry {}: sparse content shorter than its map",
                                display_bytes(&e.path)
                            )));
                        }
                        write_at(fd.as_fd(), &self.buf[..n], s.offset + done)
                            .map_err(|err| self.io(&e.path, err))?;
                        done += n as u64;
                    }
                }
                rustix::fs::ftruncate(&fd, e.size).map_err(|err| self.io(&e.path, err))?;
                self.set_meta(fd.as_fd(), e);
            }
        }
        Ok(())
    }

    fn symlink(&mut self, e: &Entry, name: &[u8]) -> Result<()> {
        self.create(name, &e.path, |dir| {
            rustix::fs::symlinkat(&e.link[..], dir, name)
        })?
        .map_err(|err| self.io(&e.path, err))?;
        let mut failed = Vec::new();
        if self.root_user {
            let (uid, gid) = (self.uid(e), self.gid(e));
            let dir = top_fd(&self.levels, &self.root);
            if let Err(err) = rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                failed.push(format!("owner not restored: {err}"));
            }
        }
        let dir = top_fd(&self.levels, &self.root);
        if !e.xattrs.is_empty() {
            // On the link itself, never its target: an O_PATH | O_NOFOLLOW
            // descriptor's /proc path names the link (as for FIFOs).
            match rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => match rustix::fs::fstat(&fd) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                        let via = proc_path(fd.as_fd());
                        for (k, v) in &e.xattrs {
                            if let Err(err) = rustix::fs::setxattr(
                                &via,
                                &k[..],
                                v,
                                rustix::fs::XattrFlags::empty(),
                            ) {
                                failed.push(format!(
                                    "xattr {} not restored: {err}",
                                    display_bytes(k)
                                ));
                            }
                        }
                    }
                    _ => failed.push("xattrs not restored: it is no longer a symlink".into()),
                },
                Err(err) => failed.push(format!("xattrs not restored: {err}")),
            }
        }
        if let Err(err) =
            rustix::fs::utimensat(dir, name, &timestamps(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
        {
            failed.push(format!("mtime not restored: {err}"));
        }
        for f in failed {
            self.notice(&e.path, NoticeKind::Skipped, f);
        }
        Ok(())
    }

    fn hard_link(&mut self, e: &Entry, name: &[u8]) -> Result<()> {
        let t = components(&e.link)?;
        if !self.skipped.is_empty() && self.skipped.contains(&t.join(&b'/')) {
            self.notice(
                &e.path,
                NoticeKind::Skipped,
                "a hard link to an entry that was left out".into(),
            );
            return Ok(());
        }
        let (tlast, tparents) = t.split_last().expect("never empty");
        // The source's folders, walked from the target like any path.
        let mut fd = self
            .root
            .try_clone()
            .map_err(|err| Error::io(&self.root_path, err))?;
        for c in tparents {
            fd = open_dir(
                fd.as_fd(),
                c,
                false,
                &e.link,
                &mut self.stats,
                &self.root_path,
            )
            .map_err(|_| bad_link(&e.path, &e.link))?;
        }
        self.stats.components += 1;
        let made = self.create(name, &e.path, |dir| {
            rustix::fs::linkat(&fd, *tlast, dir, name, AtFlags::empty())
        })?;
        match made {
            Ok(()) => Ok(()),
            Err(Errno::NOENT | Errno::ISDIR) => Err(bad_link(&e.path, &e.link)),
            // EPERM for a folder (a corrupt archive), else from the file
            // system: one that takes no hard links (vfat, exFAT), or a
            // kernel rule (fs.protected_hardlinks) refusing this one.
            Err(Errno::PERM) => match rustix::fs::statat(&fd, *tlast, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    Err(bad_link(&e.path, &e.link))
                }
                _ => Err(Error::Refused(format!(
                    "entry {} is a hard link to {}, which the file system at {} refused (EPERM: a file system without hard links, such as vfat or exFAT, or fs.protected_hardlinks): nothing was restored",
                    display_bytes(&e.path),
                    display_bytes(&e.link),
                    self.root_path.display()
                ))),
            },
            Err(err) => Err(self.io(&e.path, err)),
        }
    }

    fn node(&mut self, e: &Entry, name: &[u8], kind: Kind) -> Result<()> {
        let ft = match kind {
            Kind::Fifo => FileType::Fifo,
            Kind::Char => FileType::CharacterDevice,
            _ => FileType::BlockDevice,
        };
        let dev = rustix::fs::makedev(e.dev.0, e.dev.1);
        self.create(name, &e.path, |dir| {
            rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), dev)
        })?
        .map_err(|err| self.io(&e.path, err))?;
        let dir = top_fd(&self.levels, &self.root);
        // An O_PATH descriptor of the node itself: opening a device or
        // FIFO for real could block or act on the device.
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| self.io(&e.path, err))?;
        let st = rustix::fs::fstat(&fd).map_err(|err| self.io(&e.path, err))?;
        if FileType::from_raw_mode(st.st_mode) != ft {
            return Err(self.io(&e.path, Errno::NOTSUP));
        }
        let mut failed = Vec::new();
        if self.root_user {
            let (uid, gid) = (self.uid(e), self.gid(e));
            if let Err(err) = rustix::fs::chownat(
                &fd,
                "",
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::EMPTY_PATH,
            ) {
                failed.push(format!("owner not restored: {err}"));
            }
        }
        let via = proc_path(fd.as_fd());
        if let Err(err) = rustix::fs::chmod(&via, self.mode(e)) {
            failed.push(format!("mode not restored: {err}"));
        }
        for (k, v) in &e.xattrs {
            if let Err(err) = rustix::fs::setxattr(&via, &k[..], v, rustix::fs::XattrFlags::empty())
            {
                failed.push(format!("xattr {} not restored: {err}", display_bytes(k)));
            }
        }
        if let Err(err) = rustix::fs::utimensat(
            rustix::fs::CWD,
            &via,
            &timestamps(e.mtime),
            AtFlags::empty(),
        ) {
            failed.push(format!("mtime not restored: {err}"));
        }
        for f in failed {
            self.notice(&e.path, NoticeKind::Skipped, f);
        }
        Ok(())
    }
}

/// Write all of `buf` at `offset`.
fn write_at(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> std::result::Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_finds_no_fold_on_a_case_sensitive_folder_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert!(!folds_names(fd.as_fd(), dir.path()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A name in capitals alone is no fold: the probe looks for its own
        // folder under that name, not for any entry.
        std::fs::create_dir(dir.path().join(".COFFER-NAME-PROBE")).unwrap();
        assert!(!folds_names(fd.as_fd(), dir.path()).unwrap());
    }
}
