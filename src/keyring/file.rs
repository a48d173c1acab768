//! The keyring's place on disk: finding it, reading it with a size limit,
//! replacing it atomically with mode 0600, and the lock that serialises
//! read-modify-write between coffer processes.
//!
//! Must never: leave a half-written keyring, or let two processes each
//! lock a different file.

use super::{Keyring, MAX_FILE_LEN};
use crate::error::{Error, Result};
use crate::fsutil;
use std::fs::File;
use std::path::PathBuf;

/// The keyring's place on disk, and the lock beside it.
#[derive(Debug, Clone)]
pub struct KeyringFile {
    /// The keyring file.
    pub path: PathBuf,
}

/// Held while a keyring is read, changed and written; released on drop.
#[derive(Debug)]
pub struct KeyringLock {
    _file: File,
}

impl KeyringFile {
    /// The keyring at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Whether a keyring exists at the path.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Take the exclusive lock (`PATH.lock`), waiting for other coffer
    /// processes that hold it. The lock file is never deleted, so two
    /// processes cannot each lock a different file.
    pub fn lock(&self) -> Result<KeyringLock> {
        fsutil::ensure_private_dir(&fsutil::parent_dir(&self.path))?;
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode_0600()
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        file.lock().map_err(|e| Error::io(&lock_path, e))?;
        Ok(KeyringLock { _file: file })
    }

    /// Read and parse the keyring.
    pub fn load(&self) -> Result<Keyring> {
        let file = File::open(&self.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NoKeyring {
                    path: self.path.clone(),
                }
            } else {
                Error::io(&self.path, e)
            }
        })?;
        use std::io::Read;
        // It holds the sealer key: wiped once parsed.
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        Keyring::parse(&bytes, &self.path)
    }

    /// Write the keyring atomically (mode 0600). `create` refuses to
    /// replace an existing file. Callers changing a keyring hold the lock.
    pub fn store(&self, keyring: &Keyring, _lock: &KeyringLock, create: bool) -> Result<()> {
        fsutil::ensure_private_dir(&fsutil::parent_dir(&self.path))?;
        let bytes = zeroize::Zeroizing::new(keyring.to_bytes());
        fsutil::write_atomic(&self.path, &bytes, !create).map_err(|e| match e {
            Error::AlreadyExists { path, .. } => Error::AlreadyExists {
                path,
                hint: ": move it away first if you mean to start over".into(),
            },
            e => e,
        })
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}
