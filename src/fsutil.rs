//! Durable file writes: temp file in the same folder, fsync, rename, fsync
//! of the folder. Files are created mode 0600.
//!
//! Owns: the registry of temporary output (temp files and folders beside a
//! target, uploads not yet completed) that a program removes with
//! [`remove_temporaries`] when it is interrupted, and the choice between replacing an output path and
//! writing into it in place ([`open_in_place`]).
//!
//! Must never: leave a half-written file at the target path, replace
//! anything but a regular file, folder or symlink, install a signal
//! handler (the program that handles signals calls [`remove_temporaries`]).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The folder holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Temporary output of this process not yet renamed into place.
struct Temps {
    next_id: u64,
    live: Vec<(u64, Temporary)>,
    /// [`remove_temporaries`] ran: nothing may be registered or committed.
    removed: bool,
}

static TEMPS: Mutex<Temps> = Mutex::new(Temps {
    next_id: 0,
    live: Vec::new(),
    removed: false,
});

/// One piece of temporary output.
enum Temporary {
    /// A file or folder, removed.
    Path(PathBuf),
    /// Anything else (an upload in progress), undone by this.
    Undo(Box<dyn FnOnce() + Send>),
}

fn temps() -> MutexGuard<'static, Temps> {
    TEMPS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn interrupted(path: &Path) -> Error {
    Error::io(
        path,
        io::Error::new(
            io::ErrorKind::Interrupted,
            "interrupted; temporary output removed",
        ),
    )
}

/// A temporary file or folder listed for [`remove_temporaries`]; dropping
/// it takes it off the list (its owner removes or commits it).
#[derive(Debug)]
#[must_use = "dropping the registration unlists the path at once"]
pub struct TempRegistration {
    id: u64,
}

/// List `path` (a temp file or folder this process just created) for
/// [`remove_temporaries`]. Fails once that has run.
pub fn register_temp(path: &Path) -> Result<TempRegistration> {
    create_listed(path, || Ok(((), path.to_path_buf()))).map(|((), reg)| reg)
}

/// Make temporary output that is not a file with `make` (an upload, to be
/// aborted unless completed), which returns it and how to undo it, and
/// list it for [`remove_temporaries`], under one lock: no interruption
/// falls between the two (one waits for `make`). `what` names it in the
/// error when [`remove_temporaries`] already ran.
pub fn register_undo_with<T>(
    what: &str,
    make: impl FnOnce() -> Result<(T, Box<dyn FnOnce() + Send>)>,
) -> Result<(T, TempRegistration)> {
    let mut t = temps();
    if t.removed {
        return Err(interrupted(Path::new(what)));
    }
    let (made, undo) = make()?;
    let id = t.next_id;
    t.next_id += 1;
    t.live.push((id, Temporary::Undo(undo)));
    Ok((made, TempRegistration { id }))
}

/// Create a temporary with `make` (which returns its path) and list it,
/// under one lock: no interruption falls between the two.
fn create_listed<T>(
    near: &Path,
    make: impl FnOnce() -> Result<(T, PathBuf)>,
) -> Result<(T, TempRegistration)> {
    let mut t = temps();
    if t.removed {
        return Err(interrupted(near));
    }
    let (made, path) = make()?;
    let id = t.next_id;
    t.next_id += 1;
    t.live.push((id, Temporary::Path(path)));
    Ok((made, TempRegistration { id }))
}

impl TempRegistration {
    /// Run `commit`, the renames that move the temporary output into
    /// place, unless [`remove_temporaries`] already ran; it waits for a
    /// commit under way to finish, so output is never half moved.
    pub fn commit<T>(self, commit: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut t = temps();
        if t.removed {
            return Err(interrupted(Path::new("<temporary output>")));
        }
        t.live.retain(|(id, _)| *id != self.id);
        let r = commit();
        drop(t);
        r
    }
}

impl Drop for TempRegistration {
    fn drop(&mut self) {
        temps().live.retain(|(id, _)| *id != self.id);
    }
}

/// Refuse to go on when `path` exists (even as a dangling symlink), unless
/// `force`.
pub fn refuse_existing(path: &Path, force: bool) -> Result<()> {
    if !force && path.symlink_metadata().is_ok() {
        return Err(exists(path));
    }
    Ok(())
}

fn exists(path: &Path) -> Error {
    Error::AlreadyExists {
        path: path.to_path_buf(),
        hint: ": give --force to replace it".into(),
    }
}

/// Rename `from` to `to` only if nothing is at `to` (`RENAME_NOREPLACE`):
/// a plain rename replaces an empty folder, such as one made at `to`
/// after [`refuse_existing`] looked. On a file system without that flag
/// (`EINVAL`), a look and the plain rename, as before.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags};
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(exists(to)),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            refuse_existing(to, false)?;
            std::fs::rename(from, to).map_err(|e| Error::io(to, e))
        }
        Err(e) => Err(Error::io(to, e.into())),
    }
}

/// Remove every registered temporary file and folder, undo every other
/// temporary output (abort uploads), and refuse any later
/// registration or commit. For a program interrupted by a signal, just
/// before it exits; safe to call from any thread.
///
/// Folders are removed without following symlinks inside them
/// ([`std::fs::remove_dir_all`] works through descriptors with
/// `O_NOFOLLOW` and removes a symlink itself, never its target).
pub fn remove_temporaries() {
    let mut t = temps();
    t.removed = true;
    for (_, temp) in t.live.drain(..) {
        match temp {
            Temporary::Path(path) => remove_temporary(&path),
            Temporary::Undo(undo) => undo(),
        }
    }
}

/// Give every folder under `root` (a temp folder of ours) mode 0700, so
/// that it can be removed even when an archive made some read-only or
/// mode 0000 and we are not root. Walks with descriptors, never following
/// a symlink; best effort.
///
/// Nothing to do as root, who removes read-only folders anyway; and there
/// the tree's folders may belong to the owners restored, any of whom could
/// swap one for a symlink between the listing and the `chmodat` (which
/// follows it) and have root change the mode of any path. Not as root,
/// every folder in the tree is ours.
pub fn make_removable(root: &Path) {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    if rustix::process::geteuid().is_root() {
        return;
    }
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(top) = rustix::fs::open(root, dir_flags, Mode::empty()) else {
        return;
    };
    let _ = rustix::fs::fchmod(&top, Mode::from_raw_mode(0o700));
    let mut stack = vec![top];
    while let Some(fd) = stack.pop() {
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
            continue;
        };
        for ent in entries.flatten() {
            let name = ent.file_name();
            if ent.file_type() != FileType::Directory || name == c"." || name == c".." {
                continue;
            }
            // By name in its parent: a mode 0000 folder cannot be opened
            // before its mode changes. `name` was a folder when listed, in
            // a folder only we can write (not being root: see above).
            let _ = rustix::fs::chmodat(&fd, name, Mode::from_raw_mode(0o700), AtFlags::empty());
            if let Ok(sub) = rustix::fs::openat(&fd, name, dir_flags, Mode::empty()) {
                stack.push(sub);
            }
        }
    }
}

fn remove_temporary(path: &Path) {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => {
            // Another thread may still be writing into the folder; once the
            // folder itself is gone, nothing can be created in it.
            make_removable(path);
            for _ in 0..100 {
                match std::fs::remove_dir_all(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => continue,
                    _ => return,
                }
            }
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// A temp file beside its target: removed when dropped, and by
/// [`remove_temporaries`] while it is not yet [`persist`]ed.
pub struct TempFile {
    // Declared first, dropped first: the file is gone before it is unlisted.
    file: tempfile::NamedTempFile,
    reg: TempRegistration,
}

impl TempFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
    /// The open file.
    pub fn as_file(&self) -> &File {
        self.file.as_file()
    }
    /// A second handle on the same file.
    pub fn reopen(&self) -> io::Result<File> {
        self.file.reopen()
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A temp file beside `path`, mode 0600, named `NAME.tmp-XXXXXX`.
pub fn temp_beside(path: &Path) -> Result<TempFile> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "coffer".into());
    let (file, reg) = create_listed(path, || {
        let file = tempfile::Builder::new()
            .prefix(&format!("{name}.tmp-"))
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        let path = file.path().to_path_buf();
        Ok((file, path))
    })?;
    Ok(TempFile { file, reg })
}

/// A temp folder: removed when dropped, and by [`remove_temporaries`] until
/// its registration is committed.
pub struct TempDir {
    // Declared first, dropped first: the folder is gone before it is unlisted.
    dir: tempfile::TempDir,
    reg: TempRegistration,
}

impl TempDir {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The folder and its registration, to move it into place with
    /// [`TempRegistration::commit`].
    pub fn into_parts(self) -> (tempfile::TempDir, TempRegistration) {
        (self.dir, self.reg)
    }
}

/// A new temp folder in `dir`, mode 0700, named `PREFIX` + random letters.
pub fn temp_dir_in(dir: &Path, prefix: &str) -> Result<TempDir> {
    let (dir, reg) = create_listed(dir, || {
        let made = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let path = made.path().to_path_buf();
        Ok((made, path))
    })?;
    Ok(TempDir { dir, reg })
}

/// Whether `path` names an inherited descriptor: `/dev/fd/N`,
/// `/proc/self/fd/N` (process substitution, `-o >(cmd)`), `/dev/stdout`.
fn is_descriptor_path(path: &Path) -> bool {
    let Some(s) = path.to_str() else {
        return false;
    };
    ["/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"]
        .iter()
        .any(|p| s.starts_with(p))
        || matches!(s, "/dev/stdout" | "/dev/stderr")
}

/// Open `path` for writing in place when it must never be replaced: a
/// FIFO, a character device (`/dev/null`, a tape), or an inherited
/// descriptor (`/dev/fd/N`, `/proc/self/fd/N`, `/dev/stdout`; appended to
/// when it is a regular file). `None` for a regular file, folder, symlink
/// to one, or a new path: those go through temp-and-rename. Block devices
/// and sockets are refused. Opening a FIFO waits for its reader.
pub fn open_in_place(path: &Path) -> Result<Option<File>> {
    let fd_path = is_descriptor_path(path);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if fd_path => return Err(Error::io(path, e)),
        Err(_) => return Ok(None),
    };
    let ft = meta.file_type();
    let mut options = File::options();
    options
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32);
    if ft.is_fifo() || ft.is_char_device() {
        // Write-only, no truncation: a FIFO or device is written as a pipe.
    } else if ft.is_block_device() || ft.is_socket() {
        let what = if ft.is_socket() {
            "a socket"
        } else {
            "a block device"
        };
        return Err(Error::Usage(format!(
            "{} is {what}; coffer writes only to regular files, folders, FIFOs, character devices and /dev/fd/N",
            path.display()
        )));
    } else if fd_path {
        options.append(true);
    } else {
        return Ok(None);
    }
    options.open(path).map(Some).map_err(|e| Error::io(path, e))
}

/// fsync a folder, so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Finish a temp file: fsync it, rename it to `path` (refusing to replace
/// an existing file unless `replace`), fsync the folder.
pub fn persist(tmp: TempFile, path: &Path, replace: bool) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    let TempFile { file: tmp, reg } = tmp;
    reg.commit(|| {
        if replace {
            tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
        } else {
            tmp.persist_noclobber(path).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists {
                        path: path.to_path_buf(),
                        hint: String::new(),
                    }
                } else {
                    Error::io(path, e.error)
                }
            })?;
        }
        Ok(())
    })?;
    sync_dir(&parent_dir(path))
}

/// Write `bytes` to `path` atomically, mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    persist(tmp, path, replace)
}

/// Create `dir` (and parents) mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// `/proc/self/fd/N`: the node an `O_PATH` descriptor holds (a FIFO, a
/// device, a symlink itself, never its target), for calls with no
/// descriptor form that accepts `O_PATH`. Shared by sealing and opening.
pub fn proc_fd_path(fd: rustix::fd::BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_restored_folder_never_replaces_an_empty_folder_made_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("r.tmp"), dir.path().join("r"));
        std::fs::create_dir(&from).unwrap();
        std::fs::write(from.join("f"), b"restored").unwrap();
        // Made after the check that nothing is there: std's rename would
        // replace it.
        std::fs::create_dir(&to).unwrap();
        let e = rename_noreplace(&from, &to).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
        assert!(from.join("f").exists() && std::fs::read_dir(&to).unwrap().count() == 0);
        std::fs::remove_dir(&to).unwrap();
        rename_noreplace(&from, &to).unwrap();
        assert_eq!(std::fs::read(to.join("f")).unwrap(), b"restored");
    }

    #[test]
    fn atomic_write_is_0600_and_refuses_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", false).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            write_atomic(&p, b"two", false),
            Err(Error::AlreadyExists { .. })
        ));
        write_atomic(&p, b"three", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
