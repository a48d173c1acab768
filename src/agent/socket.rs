//! Where the agent listens: `RUNTIME/coffer/agent-<key id>.sock`, in a
//! folder that must be the user's own and closed to others, guarded by a
//! lock file that one agent per key holds for its whole life.

use crate::error::{Error, Result};
use crate::key::KeyId;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The agent of key id `id`, under the runtime folder `runtime_dir`
/// (`$XDG_RUNTIME_DIR`): `runtime_dir/coffer/agent-<id>.sock`.
pub fn socket_path(runtime_dir: &Path, id: &KeyId) -> PathBuf {
    runtime_dir.join("coffer").join(format!("agent-{id}.sock"))
}

/// Create the agents' folder under `runtime_dir` (0700) if missing, and
/// check it is the caller's own and closed to others: what [`Socket::bind`]
/// does first, and what a command can check before it asks for a factor.
pub fn prepare_dir(runtime_dir: &Path) -> Result<()> {
    let dir = runtime_dir.join("coffer");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| Error::io(&dir, e))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(Error::Refused(format!(
            "{}: the agent's folder must be a folder of yours (uid {me}) that no one else can enter (chmod 700); it is not, so no agent was started",
            dir.display()
        )));
    }
    Ok(())
}

/// The agent's listening socket, and the lock that makes it the only one
/// for its key. Its file is removed on drop, if it is still the one bound
/// here.
#[derive(Debug)]
pub struct Socket {
    listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// `agent-<id>.lock`, locked (`flock`) for as long as this lives.
    _lock: File,
}

impl Socket {
    /// Bind the socket of `key_id`'s agent under `runtime_dir`
    /// ([`socket_path`]; folder as [`prepare_dir`]; socket mode 0600).
    /// Refused while another agent for that key holds its lock; a socket
    /// left by one that died is replaced.
    pub fn bind(runtime_dir: &Path, key_id: &KeyId) -> Result<Self> {
        prepare_dir(runtime_dir)?;
        let path = socket_path(runtime_dir, key_id);
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(Error::Refused(format!(
                    "an agent is already running for key id {key_id} ({}): `coffer agent stop` first",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io(&lock_path, e.into())),
        }
        // Holding the lock: any socket there was left by an agent that died.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
            Ok(_) => {
                return Err(Error::Refused(format!(
                    "{}: exists and is not a socket; move it away",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(&path, e))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            listener,
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            _lock: lock,
        })
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names this socket: not when its folder was
    /// removed (logind removes `$XDG_RUNTIME_DIR` at the last logout) or
    /// the file replaced. An agent no command can reach must not go on
    /// holding the key.
    pub fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
