//! Durable file writes: temp file in the same folder, fsync, rename, fsync
//! of the folder. Files are created mode 0600.
//!
//! Owns: the choice between replacing an output path and writing into it
//! in place ([`open_in_place`]).
//!
//! Must never: leave a half-written file at the target path, or replace
//! anything but a regular file, folder or symlink.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The folder holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temp file beside `path`, mode 0600, named `NAME.tmp-XXXXXX`.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "coffer".into());
    tempfile::Builder::new()
        .prefix(&format!("{name}.tmp-"))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))
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
    options.write(true).custom_flags(libc::O_NOCTTY);
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
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path, replace: bool) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
