//! Packing: walking files and folders into a tar stream ([`super::tar`]).
//!
//! Keeps what GNU tar keeps as root (`--xattrs --acls`): files (sparse
//! ones with their holes), folders, symlinks, hard links (stored once),
//! FIFOs and device nodes, owners (ids and names), modes with set-id and
//! sticky bits, nanosecond mtimes, xattrs and POSIX ACLs. Every path is
//! opened relative to its parent folder's descriptor with `O_NOFOLLOW`, so
//! paths of any length work and nothing is followed.
//!
//! What cannot be sealed as found is named in a [`Notice`] and the rest is
//! sealed: a socket, an unreadable file or folder, a file deleted during the
//! walk (skipped); a file whose size or mtime changed while it was read
//! (stored with exactly the size first seen — read at most that much, zeros
//! if it shrank — so the stream stays well-formed whatever happens to it).
//!
//! Must never: follow a symlink; write more or fewer content bytes than
//! its header announced.

use super::tar::{self, Entry, Kind, Segment, Time, write};
use super::{Notice, NoticeKind};
use crate::error::{Error, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// At most this many bytes are read from a file at a time.
const READ_MAX: usize = 1 << 20;

/// A file's identity: device and inode.
pub type FileId = (u64, u64);

/// The name a sealed path is stored under: its last component.
fn top_name(p: &Path) -> Result<OsString> {
    if let Some(n) = p.file_name() {
        return Ok(n.to_owned());
    }
    // ".", "..", "/": use the real folder's name.
    let canon = p.canonicalize().map_err(|e| Error::io(p, e))?;
    canon.file_name().map(|n| n.to_owned()).ok_or_else(|| {
        Error::Usage(format!(
            "{}: cannot seal the root folder by that name",
            p.display()
        ))
    })
}

/// A file whose content is in the stream, to be checked for changes
/// (a second `fstat`) and closed off the walker's thread.
type Sealed = (OwnedFd, rustix::fs::Stat, PathBuf);

/// Files checked and closed per hand-over to the closing thread.
const CLOSE_BATCH: usize = 64;

/// The closing thread: compares each file's `stat` after it was read with
/// the one its header was made from, then closes it. Two of the six system
/// calls a small file costs leave the walker's thread this way, in
/// batches, so no file waits on another thread.
fn close_files(
    rx: crossbeam_channel::Receiver<Vec<Sealed>>,
    spent: crossbeam_channel::Sender<Vec<PathBuf>>,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    for batch in rx {
        let mut paths = Vec::with_capacity(batch.len());
        for (fd, st, shown) in batch {
            let changed = rustix::fs::fstat(&fd).map_or(true, |a| {
                a.st_size != st.st_size
                    || a.st_mtime != st.st_mtime
                    || a.st_mtime_nsec != st.st_mtime_nsec
            });
            if changed {
                notices.push(Notice {
                    path: shown,
                    kind: NoticeKind::Changed,
                    what: "changed while it was sealed".into(),
                });
            } else {
                paths.push(shown);
            }
            drop(fd);
        }
        // Freed by the walker that made them: freeing many small
        // allocations on another thread makes the two contend for the
        // allocator.
        let _ = spent.try_send(paths);
    }
    notices
}

struct Packer<'n> {
    /// The tar stream, batched for the cipher; file content is read
    /// straight into it.
    w: Batches,
    /// Files waiting for the closing thread, and the way there.
    to_close: Vec<Sealed>,
    closer: crossbeam_channel::Sender<Vec<Sealed>>,
    /// The closing thread's spent paths, to be freed here.
    spent: crossbeam_channel::Receiver<Vec<PathBuf>>,
    exclude: &'n [FileId],
    notices: &'n mut Vec<Notice>,
    /// First archive path of each multiply-linked inode.
    links: HashMap<FileId, Vec<u8>>,
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

/// Write `paths` as a tar stream into `w`. Each path is stored under its
/// own name; two paths with the same name are refused. Files in `exclude`
/// (the archive being written, standard output) are left out. What could
/// not be sealed as found is pushed to `notices`.
pub fn pack<W: Write>(
    paths: &[PathBuf],
    w: W,
    exclude: &[FileId],
    notices: &mut Vec<Notice>,
) -> Result<W> {
    let mut names = BTreeSet::new();
    let mut tops = Vec::new();
    for p in paths {
        let name = top_name(p)?;
        if !names.insert(name.clone()) {
            return Err(Error::Usage(format!(
                "two paths are named {}; seal them from different folders or in separate archives",
                Path::new(&name).display()
            )));
        }
        tops.push((p, name));
    }
    // The walk (every system call on the sealed files) runs on its own
    // thread and hands the tar stream over in large batches, so this thread
    // only feeds the cipher: no per-file synchronisation.
    let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(BATCHES);
    // Room for every buffer that can exist but the walker's own: it makes
    // one only when none is waiting here, so at most BATCHES in `full`,
    // one being written and one being filled. The writing side's `send`
    // back must never block.
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(BATCHES + 2);
    let mut w = w;
    let mut write_err = None;
    let walked = std::thread::scope(|scope| {
        // The walk recurses once per folder level: a stack that holds any
        // depth the descriptor limit allows (reserved, touched only as
        // deep as the tree goes).
        let walker = std::thread::Builder::new()
            .name("coffer-walk".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(scope, move || -> Result<()> {
                let out = Batches {
                    buf: vec![0; BATCH],
                    filled: 0,
                    full: full_tx,
                    empty: empty_rx,
                };
                let (close_tx, close_rx) = crossbeam_channel::bounded(4);
                let (spent_tx, spent_rx) = crossbeam_channel::bounded(8);
                let closer = std::thread::spawn(move || close_files(close_rx, spent_tx));
                let mut pk = Packer {
                    w: out,
                    to_close: Vec::with_capacity(CLOSE_BATCH),
                    closer: close_tx,
                    spent: spent_rx,
                    exclude,
                    notices,
                    links: HashMap::new(),
                    users: HashMap::new(),
                    groups: HashMap::new(),
                };
                for (p, name) in tops {
                    // The top path itself is named by the person sealing:
                    // resolve its folders normally, but not a symlink in its
                    // last component.
                    // "x/..", "..", ".": the real folder, by its real name.
                    let real;
                    let p = if p.file_name().is_none() {
                        real = p.canonicalize().map_err(|e| Error::io(p, e))?;
                        &real
                    } else {
                        p
                    };
                    let parent = crate::fsutil::parent_dir(p);
                    let pfd = rustix::fs::open(
                        &parent,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| Error::io(&parent, e.into()))?;
                    let last = p
                        .file_name()
                        .map(OsStr::to_owned)
                        .unwrap_or_else(|| ".".into());
                    pk.add(pfd.as_fd(), &last, p, name.as_bytes().to_vec())?;
                }
                pk.out(&write::END)?;
                let last = std::mem::take(&mut pk.to_close);
                let _ = pk.closer.send(last);
                let Packer {
                    mut w,
                    closer: close_tx,
                    notices,
                    ..
                } = pk;
                drop(close_tx);
                notices.extend(closer.join().expect("the closing thread does not panic"));
                w.send().map_err(|e| Error::io("<archive output>", e))
            })
            .map_err(|e| Error::io("<walker thread>", e))?;
        for (buf, n) in full_rx.iter() {
            if let Err(e) = w.write_all(&buf[..n]) {
                write_err = Some(e);
                break;
            }
            // Give the buffer back; the walker may have finished.
            let _ = empty_tx.send(buf);
        }
        // Dropping the receiver stops a walker still sending.
        drop(full_rx);
        walker.join().expect("the walker does not panic")
    });
    if let Some(e) = write_err {
        return Err(Error::io("<archive output>", e));
    }
    walked?;
    Ok(w)
}

/// The walker thread's stack: about 2.5 KiB a folder level, so some
/// 100,000 levels (each also holds a descriptor: the binary raises its
/// descriptor limit to the hard limit); only what a walk touches is ever
/// committed.
const WALK_STACK: usize = 256 << 20;

/// Bytes of tar stream handed over at a time.
const BATCH: usize = 1 << 20;
/// Batches in flight between the walker and the cipher.
const BATCHES: usize = 4;

/// The walker's side of the hand-over: the tar stream collected into
/// batch buffers (kept at their full length, zeroed once; the count of
/// bytes filled travels with each), the full ones sent to the cipher.
struct Batches {
    buf: Vec<u8>,
    filled: usize,
    full: crossbeam_channel::Sender<(Vec<u8>, usize)>,
    empty: crossbeam_channel::Receiver<Vec<u8>>,
}

impl Batches {
    fn send(&mut self) -> std::io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let next = self.empty.try_recv().unwrap_or_else(|_| vec![0; BATCH]);
        let full = std::mem::replace(&mut self.buf, next);
        let n = std::mem::take(&mut self.filled);
        self.full.send((full, n)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the archive writer stopped")
        })
    }

    /// Free room for at most `want` bytes (at least one: a full batch is
    /// sent first), to be filled in place and counted by [`Self::commit`].
    fn room(&mut self, want: usize) -> std::io::Result<&mut [u8]> {
        if self.filled == self.buf.len() {
            self.send()?;
        }
        debug_assert!(want > 0, "room for nothing");
        let end = self.buf.len().min(self.filled + want);
        Ok(&mut self.buf[self.filled..end])
    }

    /// `n` bytes of the room were filled.
    fn commit(&mut self, n: usize) {
        debug_assert!(self.filled + n <= self.buf.len(), "committed past the room");
        self.filled += n;
    }
}

impl Write for Batches {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.filled + data.len() > self.buf.len() {
            self.send()?;
            // Headers and a sparse map larger than a batch (a map of many
            // segments can be megabytes).
            if data.len() > self.buf.len() {
                self.buf.resize(data.len(), 0);
            }
        }
        self.buf[self.filled..self.filled + data.len()].copy_from_slice(data);
        self.filled += data.len();
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn is_gone(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NOTDIR
}

fn time(secs: i64, nanos: i64) -> Time {
    Time {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

impl Packer<'_> {
    fn notice(&mut self, path: &Path, kind: NoticeKind, what: impl Into<String>) {
        self.notices.push(Notice {
            path: path.to_path_buf(),
            kind,
            what: what.into(),
        });
    }

    /// A path that could not be looked at: gone since its folder was
    /// listed, or not readable.
    fn unreadable(&mut self, shown: &Path, e: rustix::io::Errno) {
        if is_gone(e) {
            self.notice(shown, NoticeKind::Changed, "deleted before it was sealed");
        } else {
            self.notice(shown, NoticeKind::Skipped, format!("cannot read it: {e}"));
        }
    }

    fn out(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .write_all(bytes)
            .map_err(|e| Error::io("<archive output>", e))
    }

    fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users
            .entry(uid)
            .or_insert_with(|| super::owner::user_name(uid))
            .clone()
    }

    fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups
            .entry(gid)
            .or_insert_with(|| super::owner::group_name(gid))
            .clone()
    }

    /// An entry's metadata from its `stat`.
    fn entry_from(&mut self, st: &rustix::fs::Stat, arc: Vec<u8>) -> Entry {
        Entry {
            kind: None,
            path: arc,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            uname: self.user(st.st_uid),
            gname: self.group(st.st_gid),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ..Entry::default()
        }
    }

    /// A hard link to an inode already stored, as an entry naming it; the
    /// first path of an inode with several is remembered.
    fn link_to_earlier(&mut self, st: &rustix::fs::Stat, e: &Entry) -> Option<Entry> {
        if st.st_nlink <= 1 {
            return None;
        }
        let id = (st.st_dev, st.st_ino);
        if let Some(first) = self.links.get(&id) {
            return Some(Entry {
                kind: Some(Kind::HardLink),
                link: first.clone(),
                mode: 0,
                ..e.clone()
            });
        }
        self.links.insert(id, e.path.clone());
        None
    }

    /// `e`'s headers (and a sparse file's map after them), within what
    /// every reader accepts: an entry whose pax header would pass
    /// [`tar::MAX_EXTENDED`] loses its xattrs and ACLs, and is left out if
    /// that is not enough (a notice says which). A sparse map is part of
    /// the content, not of that limit. `None`: left out; a hard link
    /// naming it must then not be written.
    fn header(&mut self, e: &mut Entry, shown: &Path) -> Option<Vec<u8>> {
        let within = |e: &Entry| {
            let (mut h, map) = write::encode_parts(e);
            (h.len() as u64 <= tar::MAX_EXTENDED).then(|| {
                h.extend_from_slice(&map);
                h
            })
        };
        if let Some(h) = within(e) {
            return Some(h);
        }
        if !e.xattrs.is_empty() || e.acl_access.is_some() || e.acl_default.is_some() {
            e.xattrs.clear();
            e.acl_access = None;
            e.acl_default = None;
            self.notice(
                shown,
                NoticeKind::Skipped,
                "its xattrs and ACLs, more than 1 MiB together, were not sealed",
            );
            if let Some(h) = within(e) {
                return Some(h);
            }
        }
        self.notice(shown, NoticeKind::Skipped, "its path is longer than 1 MiB");
        self.links.retain(|_, p| *p != e.path);
        None
    }

    fn changed_notice(&mut self, shown: &Path, short: bool, changed: bool) {
        if short {
            self.notice(
                shown,
                NoticeKind::Changed,
                "shrank while it was sealed; stored with zeros past its new end",
            );
        } else if changed {
            self.notice(shown, NoticeKind::Changed, "changed while it was sealed");
        }
    }

    /// Add the entry `name` of folder `dir` (`shown` for messages) as
    /// `arc` in the archive.
    fn add(&mut self, dir: BorrowedFd<'_>, name: &OsStr, shown: &Path, arc: Vec<u8>) -> Result<()> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                self.unreadable(shown, e);
                return Ok(());
            }
        };
        let id = (st.st_dev, st.st_ino);
        if self.exclude.contains(&id) {
            return Ok(());
        }
        let ft = FileType::from_raw_mode(st.st_mode);
        let mut e = self.entry_from(&st, arc);
        let kind = match ft {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            _ => {
                self.notice(
                    shown,
                    NoticeKind::Skipped,
                    "a socket: not sealed (GNU tar skips them too)",
                );
                return Ok(());
            }
        };
        e.kind = Some(kind);
        if kind != Kind::Dir
            && let Some(mut link) = self.link_to_earlier(&st, &e)
        {
            return match self.header(&mut link, shown) {
                Some(h) => self.out(&h),
                None => Ok(()),
            };
        }
        match kind {
            Kind::Dir => self.add_dir(dir, name, shown, e),
            Kind::File => self.add_file(dir, name, shown, e),
            Kind::Symlink => {
                match rustix::fs::readlinkat(dir, name, Vec::new()) {
                    Ok(t) => e.link = t.into_bytes(),
                    Err(err) => {
                        self.notice(
                            shown,
                            NoticeKind::Changed,
                            format!("cannot read the link: {err}"),
                        );
                        // Later names of this inode must not link to it.
                        self.links.retain(|_, p| *p != e.path);
                        return Ok(());
                    }
                }
                special_xattrs(dir, name, &st, &mut e);
                match self.header(&mut e, shown) {
                    Some(h) => self.out(&h),
                    None => Ok(()),
                }
            }
            _ => {
                if matches!(kind, Kind::Char | Kind::Block) {
                    e.dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
                }
                special_xattrs(dir, name, &st, &mut e);
                match self.header(&mut e, shown) {
                    Some(h) => self.out(&h),
                    None => Ok(()),
                }
            }
        }
    }

    /// Open an entry for reading without following it or blocking on it.
    fn open(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        flags: OFlags,
    ) -> Option<OwnedFd> {
        let flags = flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => Some(fd),
            Err(e) => {
                self.unreadable(shown, e);
                None
            }
        }
    }

    fn add_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        mut e: Entry,
    ) -> Result<()> {
        let Some(fd) = self.open(dir, name, shown, OFlags::DIRECTORY) else {
            return Ok(());
        };
        super::xattrs::read(fd.as_fd(), &mut e, true);
        let mut names: Vec<(OsString, FileType)> = Vec::new();
        match rustix::fs::Dir::read_from(&fd) {
            Ok(d) => {
                for ent in d {
                    match ent {
                        Ok(ent) => {
                            let n = ent.file_name().to_bytes();
                            if n != b"." && n != b".." {
                                names.push((OsStr::from_bytes(n).to_owned(), ent.file_type()));
                            }
                        }
                        Err(err) => {
                            self.notice(
                                shown,
                                NoticeKind::Skipped,
                                format!("cannot list it: {err}"),
                            );
                            names.clear();
                            break;
                        }
                    }
                }
            }
            Err(err) => {
                self.notice(shown, NoticeKind::Skipped, format!("cannot list it: {err}"));
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let Some(h) = self.header(&mut e, shown) else {
            return Ok(());
        };
        self.out(&h)?;
        for (n, ft) in &names {
            let mut arc = e.path.clone();
            arc.push(b'/');
            arc.extend_from_slice(n.as_bytes());
            if *ft == FileType::RegularFile {
                self.add_listed_file(fd.as_fd(), n, &shown.join(n), arc)?;
            } else {
                self.add(fd.as_fd(), n, &shown.join(n), arc)?;
            }
        }
        Ok(())
    }

    /// A file the folder listing says is regular: opened straight away
    /// (its `stat` comes from the open descriptor, one system call fewer
    /// than [`Self::add`]); if it is something else by now, it is taken
    /// as it is, through [`Self::add`].
    fn add_listed_file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        arc: Vec<u8>,
    ) -> Result<()> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Replaced by a symlink since the listing.
            Err(rustix::io::Errno::LOOP) => return self.add(dir, name, shown, arc),
            Err(e) => {
                self.unreadable(shown, e);
                return Ok(());
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|err| Error::io(shown, err.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            drop(fd);
            return self.add(dir, name, shown, arc);
        }
        if self.exclude.contains(&(st.st_dev, st.st_ino)) {
            return Ok(());
        }
        let mut e = self.entry_from(&st, arc);
        e.kind = Some(Kind::File);
        if let Some(mut link) = self.link_to_earlier(&st, &e) {
            return match self.header(&mut link, shown) {
                Some(h) => self.out(&h),
                None => Ok(()),
            };
        }
        super::xattrs::read(fd.as_fd(), &mut e, false);
        self.write_file(fd, st, shown, e)
    }

    fn add_file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        shown: &Path,
        e: Entry,
    ) -> Result<()> {
        let Some(fd) = self.open(dir, name, shown, OFlags::NONBLOCK) else {
            // A hard link to an inode we did not store must not be taken
            // for one that is stored.
            self.links.retain(|_, p| *p != e.path);
            return Ok(());
        };
        let st = rustix::fs::fstat(&fd).map_err(|err| Error::io(shown, err.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            self.notice(
                shown,
                NoticeKind::Changed,
                "replaced while it was sealed; skipped",
            );
            self.links.retain(|_, p| *p != e.path);
            return Ok(());
        }
        let mut e = e;
        super::xattrs::read(fd.as_fd(), &mut e, false);
        self.write_file(fd, st, shown, e)
    }

    /// Stream an open file: exactly the size its `stat` gave, its holes
    /// left out.
    fn write_file(
        &mut self,
        fd: OwnedFd,
        st: rustix::fs::Stat,
        shown: &Path,
        mut e: Entry,
    ) -> Result<()> {
        let size = st.st_size as u64;
        e.size = size;
        e.mtime = time(st.st_mtime, st.st_mtime_nsec as i64);
        if (st.st_blocks as u64).saturating_mul(512) < size {
            e.sparse = sparse_map(fd.as_fd(), size);
        }
        let Some(h) = self.header(&mut e, shown) else {
            return Ok(());
        };
        self.out(&h)?;
        let segs = e.sparse.clone().unwrap_or_else(|| {
            vec![Segment {
                offset: 0,
                len: size,
            }]
        });
        let mut short = false;
        for s in &segs {
            short |= self.copy_range(fd.as_fd(), shown, s.offset, s.len)?;
        }
        let pad = write::padding(e.stored_len());
        self.out(&[0u8; tar::BLOCK][..pad])?;
        if short {
            self.changed_notice(shown, true, false);
            return Ok(());
        }
        self.to_close.push((fd, st, shown.to_path_buf()));
        if self.to_close.len() >= CLOSE_BATCH {
            let batch = std::mem::replace(&mut self.to_close, Vec::with_capacity(CLOSE_BATCH));
            while let Ok(paths) = self.spent.try_recv() {
                drop(paths);
            }
            // The closing thread lives until the walk ends.
            let _ = self.closer.send(batch);
        }
        Ok(())
    }

    /// Copy exactly `len` bytes from `offset`, read straight into the
    /// stream's batch buffer: at most that many are read, and zeros stand
    /// in for what is missing. Returns whether any were.
    fn copy_range(
        &mut self,
        fd: BorrowedFd<'_>,
        shown: &Path,
        offset: u64,
        len: u64,
    ) -> Result<bool> {
        let out_err = |e| Error::io("<archive output>", e);
        let mut done = 0u64;
        let mut short = false;
        while done < len {
            let want = (len - done).min(READ_MAX as u64) as usize;
            let room = self.w.room(want).map_err(out_err)?;
            let got = if short {
                Ok(0)
            } else {
                loop {
                    match rustix::io::pread(fd, &mut *room, offset + done) {
                        Err(rustix::io::Errno::INTR) => continue,
                        r => break r,
                    }
                }
            };
            let n = match got {
                Ok(n) => n,
                Err(err) => {
                    let at = offset + done;
                    self.notice(
                        shown,
                        NoticeKind::Changed,
                        format!("read error at byte {at}: {err}; stored with zeros from there"),
                    );
                    0
                }
            };
            if n == 0 {
                short = true;
                let room = self.w.room(want).map_err(out_err)?;
                room.fill(0);
                let k = room.len();
                self.w.commit(k);
                done += k as u64;
                continue;
            }
            self.w.commit(n);
            done += n as u64;
        }
        Ok(short)
    }
}

/// The data segments of a file with holes (`SEEK_DATA`/`SEEK_HOLE`), or
/// `None` when it has none the file system reports, or too many.
fn sparse_map(fd: BorrowedFd<'_>, size: u64) -> Option<Vec<Segment>> {
    use rustix::fs::SeekFrom;
    let mut segs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(fd, SeekFrom::Hole(data)).ok()?.min(size);
        if hole <= data {
            return None;
        }
        segs.push(Segment {
            offset: data,
            len: hole - data,
        });
        // Room for the closing empty segment below.
        if segs.len() as u64 >= tar::MAX_SPARSE_SEGMENTS {
            return None;
        }
        pos = hole;
    }
    if segs.len() == 1 && segs[0].offset == 0 && segs[0].len == size {
        return None;
    }
    // A file ending in a hole ends its map with an empty segment at its
    // length, as GNU tar writes it: readers that take the length from the
    // map (GNU tar does) then restore the whole length.
    if segs.last().is_none_or(|s| s.offset + s.len < size) {
        segs.push(Segment {
            offset: size,
            len: 0,
        });
    }
    Some(segs)
}

/// The xattrs of a symlink, FIFO or device (`trusted.*`, `security.*`:
/// Linux allows no `user.*` there), as GNU tar keeps them. The node is
/// never opened for reading (a FIFO would block, a device could act) nor
/// followed: an `O_PATH | O_NOFOLLOW` descriptor, checked to be the inode
/// already seen, is read through its `/proc/self/fd/N` path (which names
/// the node itself, a symlink included, as glibc's `fchmodat` relies on).
/// Nothing is read if that fails (as tar, which leaves out what it cannot
/// read).
fn special_xattrs(dir: BorrowedFd<'_>, name: &OsStr, st: &rustix::fs::Stat, e: &mut Entry) {
    let Ok(fd) = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    match rustix::fs::fstat(&fd) {
        Ok(now) if now.st_dev == st.st_dev && now.st_ino == st.st_ino => {}
        _ => return,
    }
    let via = crate::fsutil::proc_fd_path(fd.as_fd());
    super::xattrs::read_from(super::xattrs::Source::Proc(&via), e, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where full batches arrive, and where their buffers go back.
    type Ends = (
        crossbeam_channel::Receiver<(Vec<u8>, usize)>,
        crossbeam_channel::Sender<Vec<u8>>,
    );

    /// A walker's hand-over as in `pack`, with its receiving end.
    fn batches() -> (Batches, Ends) {
        let (full_tx, full_rx) = crossbeam_channel::bounded(BATCHES);
        let (empty_tx, empty_rx) = crossbeam_channel::bounded(BATCHES + 2);
        let b = Batches {
            buf: vec![0; BATCH],
            filled: 0,
            full: full_tx,
            empty: empty_rx,
        };
        (b, (full_rx, empty_tx))
    }

    /// A walker writing into `w`, its closing thread's ends left hanging.
    fn packer(w: Batches, notices: &mut Vec<Notice>) -> Packer<'_> {
        let (closer, _) = crossbeam_channel::bounded(1);
        let (_, spent) = crossbeam_channel::bounded(1);
        Packer {
            w,
            to_close: Vec::new(),
            closer,
            spent,
            exclude: &[],
            notices,
            links: HashMap::new(),
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Take what was handed over, giving the buffers back as `pack` does.
    fn drain(
        full: &crossbeam_channel::Receiver<(Vec<u8>, usize)>,
        empty: &crossbeam_channel::Sender<Vec<u8>>,
        got: &mut Vec<u8>,
    ) {
        while let Ok((buf, n)) = full.try_recv() {
            got.extend_from_slice(&buf[..n]);
            let _ = empty.try_send(buf);
        }
    }

    /// Whatever mix of headers (larger than a batch among them: a sparse
    /// map can be) and content filled in place goes in, exactly those
    /// bytes come out in order, through buffers given back and reused
    /// (an oversized one included).
    #[test]
    fn batches_hand_over_exactly_what_was_written_and_read() {
        let (mut b, (full, empty)) = batches();
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let mut n = 0u8;
        let mut next = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect()
        };
        for len in [
            512,
            BATCH - 700,
            3000,
            3 * BATCH + 4096,
            10,
            BATCH,
            1,
            2 * BATCH,
        ] {
            let h = next(len);
            b.write_all(&h).unwrap();
            expected.extend_from_slice(&h);
            let content = next(len / 2 + 1);
            let mut done = 0;
            while done < content.len() {
                let room = b.room(content.len() - done).unwrap();
                let k = room.len();
                assert!(k > 0);
                room.copy_from_slice(&content[done..done + k]);
                b.commit(k);
                done += k;
            }
            expected.extend_from_slice(&content);
            drain(&full, &empty, &mut got);
        }
        b.send().unwrap();
        drain(&full, &empty, &mut got);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
    }

    /// `copy_range` on real descriptors: a file shorter than the range
    /// asked (it shrank), read across a batch boundary, gives its bytes
    /// then zeros, exactly the range's length, and says it was short; a
    /// descriptor that cannot be read gives zeros and a notice naming the
    /// byte.
    #[test]
    fn copy_range_stores_exactly_the_range_zeros_for_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &data).unwrap();
        let (w, (full, empty)) = batches();
        let mut notices = Vec::new();
        let mut pk = packer(w, &mut notices);
        // 100 bytes before the batch ends: the read crosses into the next.
        let lead = vec![7u8; BATCH - 100];
        pk.w.write_all(&lead).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let short = pk.copy_range(file.as_fd(), &path, 1000, 5000).unwrap();
        assert!(short);
        let folder = std::fs::File::open(dir.path()).unwrap();
        let short = pk.copy_range(folder.as_fd(), dir.path(), 0, 700).unwrap();
        assert!(short);
        pk.w.send().unwrap();
        drop(pk);
        let mut got = Vec::new();
        drain(&full, &empty, &mut got);
        let mut expected = lead;
        expected.extend_from_slice(&data[1000..]);
        expected.resize(expected.len() + 3000, 0);
        expected.resize(expected.len() + 700, 0);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
        assert_eq!(notices.len(), 1);
        assert!(
            notices[0].what.starts_with("read error at byte 0:"),
            "{}",
            notices[0].what
        );
    }

    /// A sparse file's map is content, not header: one of 100,000
    /// segments (megabytes of map) is stored, and reads back.
    #[test]
    fn a_sparse_map_larger_than_the_header_limit_is_stored() {
        let (w, _ends) = batches();
        let mut notices = Vec::new();
        let mut pk = packer(w, &mut notices);
        let segs: Vec<Segment> = (0..100_000u64)
            .map(|i| Segment {
                offset: 1_000_000_000_000 + i * 8192,
                len: 1,
            })
            .collect();
        let mut e = Entry {
            kind: Some(Kind::File),
            path: b"img".to_vec(),
            mode: 0o644,
            size: 1_000_000_000_000 + 100_000 * 8192,
            sparse: Some(segs.clone()),
            ..Entry::default()
        };
        let h = pk.header(&mut e, Path::new("img")).expect("stored");
        drop(pk);
        assert!(notices.is_empty());
        assert!(h.len() as u64 > tar::MAX_EXTENDED);
        let mut v = h;
        v.extend(std::iter::repeat_n(1u8, segs.len()));
        v.resize(v.len() + write::padding(segs.len() as u64), 0);
        v.extend_from_slice(&write::END);
        let mut p = tar::read::Parser::new(&v[..]);
        let back = p.next_entry().unwrap().unwrap();
        assert_eq!(back.sparse.as_deref(), Some(&segs[..]));
        assert_eq!(back.size, e.size);
    }
}
