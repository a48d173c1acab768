//! The unlock agent: a process that holds the backup key after one unlock,
//! so that the commands after it need no PIN, touch or password, and that
//! never hands the key out (docs/agent.md).
//!
//! It answers, over a Unix stream socket, with what the key derives: an
//! archive's payload key, once the archive's header authenticated under the
//! key; a passphrase for another tool. Never the key itself, nor anything a
//! client could turn into it. One request and one answer per connection;
//! the peer must run as the agent's own user (`SO_PEERCRED`), and the client
//! checks the same of the agent.
//!
//! # Wire format
//!
//! Integers are big-endian. A request is `len:u32 ‖ op:u8 ‖ body`, `len`
//! counting `op` and `body`, at most [`MAX_REQUEST`]:
//!
//! | op | name         | body                                                        |
//! |----|--------------|-------------------------------------------------------------|
//! | 1  | `OPEN`       | an archive header, byte for byte as stored (magic to MAC)   |
//! | 2  | `PASSPHRASE` | `name_len:u16 ‖ name ‖ header?` (a header, if any, must authenticate first) |
//! | 3  | `STATUS`     | empty                                                       |
//! | 4  | `STOP`       | empty: forget the key and exit                              |
//!
//! An answer is `len:u32 ‖ status:u8 ‖ body`, at most [`MAX_ANSWER`].
//! Status 0 is success: the 32-byte payload key, the passphrase (UTF-8), a
//! JSON [`Status`], or nothing, for the four ops. Status 1 to 6 is a
//! failure of the [`Category`] `Other`, `Usage`, `WrongFactor`, `Corrupt`,
//! `NoUsableSlot`, `Incomplete`, the body its message (UTF-8). To `OPEN`
//! and `PASSPHRASE`, `NoUsableSlot` means the agent no longer serves (its
//! time or uses ran out): the client unlocks as if there were no agent.
//!
//! Owns: the wire format, the agent's loop and limits, its socket, and the
//! client's side. The command line starts it, detaches it and reads the
//! environment ($XDG_RUNTIME_DIR).
//!
//! Must never: put the backup key on the socket or in a file; answer a
//! peer of another user; answer `OPEN` or `PASSPHRASE` once its time or its
//! uses ran out.

use crate::archive::Header;
use crate::archive::stream::PayloadKey;
use crate::error::{Category, Error, Result};
use crate::key::{BackupKey, KeyId};
use crate::passphrase::{self, PassphraseName};
use crate::sealing::SealingPublicKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Largest request, bytes: an archive header (its slot list at most 1 MiB)
/// with room to spare.
pub const MAX_REQUEST: usize = 2 << 20;
/// Largest answer, bytes.
pub const MAX_ANSWER: usize = 64 << 10;
/// How long either side waits for the other to send or take a frame.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

const OPEN: u8 = 1;
const PASSPHRASE: u8 = 2;
const STATUS: u8 = 3;
const STOP: u8 = 4;
const OK: u8 = 0;

/// The agent of key id `id`, under the runtime folder `runtime_dir`
/// (`$XDG_RUNTIME_DIR`): `runtime_dir/coffer/agent-<id>.sock`.
pub fn socket_path(runtime_dir: &Path, id: &KeyId) -> PathBuf {
    runtime_dir.join("coffer").join(format!("agent-{id}.sock"))
}

/// How long the agent keeps the key, and for how many answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Forget the key this long after starting (time asleep counts);
    /// `None`: until stopped.
    pub ttl: Option<Duration>,
    /// Forget the key after this many payload keys and passphrases;
    /// `None`: no limit.
    pub max_uses: Option<u64>,
}

/// What `STATUS` tells: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The key id of the key it holds (of its sealing public key).
    pub key_id: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds until it forgets the key; `None`: until stopped.
    pub expires_in_seconds: Option<u64>,
    /// Answers left before it forgets the key; `None`: no limit.
    pub uses_left: Option<u64>,
    /// Whether its memory is locked (kept out of swap).
    pub memory_locked: bool,
}

/// Why [`Agent::serve`] returned; the key is forgotten in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `coffer agent stop` (a `STOP` request).
    Stopped,
    /// Its time ran out.
    Expired,
    /// It gave its last allowed answer.
    UsedUp,
    /// The wake descriptor became readable (a signal, for the binary).
    Woken,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ended::Stopped => "stopped",
            Ended::Expired => "its time ran out",
            Ended::UsedUp => "it gave its last allowed answer",
            Ended::Woken => "interrupted",
        })
    }
}

/// The key-holding side. Its `Debug` shows no key.
pub struct Agent {
    /// Boxed once, so that moving the agent copies no key bytes.
    bk: Box<BackupKey>,
    key_id: KeyId,
    /// On the boot-time clock, which counts time asleep.
    deadline: Option<Duration>,
    uses_left: Option<u64>,
    memory_locked: bool,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("key_id", &self.key_id)
            .field("uses_left", &self.uses_left)
            .finish_non_exhaustive()
    }
}

/// Now, on `CLOCK_BOOTTIME`: unlike the monotonic clock it goes on while
/// the machine sleeps, so a 15-minute agent does not outlive a suspend.
fn boot_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl Agent {
    /// An agent for `bk`; its key id is that of the sealing public key
    /// `bk` derives (a version 2 keyring's key id).
    pub fn new(bk: BackupKey, limits: Limits) -> Self {
        let bk = Box::new(bk);
        let key_id = SealingPublicKey::derive(&bk).key_id();
        Self {
            bk,
            key_id,
            deadline: limits.ttl.map(|t| boot_time().saturating_add(t)),
            uses_left: limits.max_uses,
            memory_locked: false,
        }
    }

    /// The key id it answers for.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Lock this process's memory, present and future, out of swap
    /// (`mlockall`). Needs `CAP_IPC_LOCK` or an `RLIMIT_MEMLOCK` above the
    /// process's whole address space, so as an ordinary user it usually
    /// fails: then nothing is locked, and [`Status::memory_locked`] says so.
    pub fn lock_memory(&mut self) -> bool {
        use rustix::mm::MlockAllFlags as F;
        self.memory_locked = rustix::mm::mlockall(F::CURRENT | F::FUTURE | F::ONFAULT).is_ok();
        self.memory_locked
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_sub(boot_time()))
    }

    fn expired(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// Answer on `listener` until stopped, out of time or uses, or `wake`
    /// (if any) becomes readable. The key is dropped, and wiped, on return.
    pub fn serve(mut self, listener: &UnixListener, wake: Option<BorrowedFd<'_>>) -> Result<Ended> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let err = |e: io::Error| Error::io("<agent socket>", e);
        listener.set_nonblocking(true).map_err(err)?;
        loop {
            let remaining = self.remaining();
            if remaining.is_some_and(|r| r.is_zero()) {
                return Ok(Ended::Expired);
            }
            let timeout = remaining.map(|r| Timespec {
                tv_sec: r.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: r.subsec_nanos().into(),
            });
            let mut fds = vec![PollFd::new(listener, PollFlags::IN)];
            if let Some(w) = wake {
                fds.push(PollFd::from_borrowed_fd(w, PollFlags::IN));
            }
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(err(e.into())),
            }
            if fds.get(1).is_some_and(|w| !w.revents().is_empty()) {
                return Ok(Ended::Woken);
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(err(e)),
            };
            if let Some(end) = self.serve_one(stream) {
                return Ok(end);
            }
        }
    }

    /// One connection: check the peer, read its request, answer it. A
    /// peer that sends nothing well-formed in time is dropped unanswered.
    fn serve_one(&mut self, mut stream: UnixStream) -> Option<Ended> {
        let set = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
        if set.is_err() {
            return None;
        }
        let me = rustix::process::geteuid();
        let (answer, end) = match peer_uid(&stream) {
            Ok(uid) if uid == me => match read_frame(&mut stream, MAX_REQUEST) {
                Ok(request) => self.answer(&request),
                Err(_) => return None,
            },
            Ok(uid) => {
                // Read (and drop) its request first: closing on unread
                // bytes would reset the connection before it read why.
                let _ = read_frame(&mut stream, MAX_REQUEST);
                (
                    failure(
                        Category::Other,
                        &format!(
                            "refused: this agent answers only its own user (uid {}), not uid {}",
                            me.as_raw(),
                            uid.as_raw()
                        ),
                    ),
                    None,
                )
            }
            Err(_) => return None,
        };
        let _ = write_frame(&mut stream, &answer);
        end
    }

    /// The answer to one request, and whether to end after sending it.
    fn answer(&mut self, request: &[u8]) -> (Zeroizing<Vec<u8>>, Option<Ended>) {
        let Some((&op, body)) = request.split_first() else {
            return (failure(Category::Usage, "empty request"), None);
        };
        match op {
            STATUS => (success(&self.status_json()), None),
            STOP => (success(b""), Some(Ended::Stopped)),
            OPEN | PASSPHRASE => {
                if self.expired() {
                    let why = "its time ran out: it forgot the key";
                    return (failure(Category::NoUsableSlot, why), Some(Ended::Expired));
                }
                let result = if op == OPEN {
                    self.payload_key(body)
                } else {
                    self.passphrase(body)
                };
                match result {
                    Ok(secret) => {
                        let end = self.spend();
                        (success(&secret), end)
                    }
                    Err(e) => (failure(e.category(), &e.to_string()), None),
                }
            }
            _ => (
                failure(Category::Usage, &format!("unknown request {op}")),
                None,
            ),
        }
    }

    /// Count one answer given; `Some` when that was the last allowed.
    fn spend(&mut self) -> Option<Ended> {
        let left = self.uses_left.as_mut()?;
        *left = left.saturating_sub(1);
        (*left == 0).then_some(Ended::UsedUp)
    }

    /// `OPEN`: authenticate the header under the key, give its payload key.
    fn payload_key(&self, header: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let key = Header::read(&mut &header[..])?.payload_key_bytes(&self.bk)?;
        Ok(Zeroizing::new(key.to_vec()))
    }

    /// `PASSPHRASE`: the name, and a header to authenticate first if any.
    fn passphrase(&self, body: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let bad = || Error::Usage("malformed passphrase request".into());
        let (len, rest) = body.split_first_chunk::<2>().ok_or_else(bad)?;
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad());
        }
        let (name, header) = rest.split_at(len);
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        let name = PassphraseName::parse(name).map_err(Error::Usage)?;
        if !header.is_empty() {
            Header::read(&mut &header[..])?.payload_key_bytes(&self.bk)?;
        }
        let secret = passphrase::derive(&self.bk, &name);
        Ok(Zeroizing::new(secret.as_bytes().to_vec()))
    }

    fn status_json(&self) -> Vec<u8> {
        let status = Status {
            key_id: self.key_id.to_string(),
            pid: std::process::id(),
            expires_in_seconds: self.remaining().map(|r| r.as_secs()),
            uses_left: self.uses_left,
            memory_locked: self.memory_locked,
        };
        serde_json::to_vec(&status).expect("a status serialises")
    }
}

fn success(body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(1 + body.len()));
    v.push(OK);
    v.extend_from_slice(body);
    v
}

fn failure(category: Category, message: &str) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(1 + message.len()));
    v.push(category_code(category));
    v.extend_from_slice(message.as_bytes());
    v
}

fn category_code(c: Category) -> u8 {
    match c {
        Category::Other => 1,
        Category::Usage => 2,
        Category::WrongFactor => 3,
        Category::Corrupt => 4,
        Category::NoUsableSlot => 5,
        Category::Incomplete => 6,
    }
}

fn code_category(code: u8) -> Option<Category> {
    Some(match code {
        1 => Category::Other,
        2 => Category::Usage,
        3 => Category::WrongFactor,
        4 => Category::Corrupt,
        5 => Category::NoUsableSlot,
        6 => Category::Incomplete,
        _ => return None,
    })
}

fn peer_uid(stream: &UnixStream) -> io::Result<rustix::process::Uid> {
    Ok(rustix::net::sockopt::socket_peercred(stream.as_fd())?.uid)
}

/// One frame: its length, then its bytes (at most `max`), read into a
/// buffer sized once (no reallocation leaves an unwiped copy).
fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (1 to {max} allowed)"),
        ));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()
}

/// Create the agents' folder under `runtime_dir` (0700) if missing, and
/// check it is the caller's own and closed to others: what [`Socket::bind`]
/// does first, and a command can do before it asks for any factor.
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

/// The agent's listening socket; its file is removed when this is dropped
/// (if it is still the one bound here).
#[derive(Debug)]
pub struct Socket {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl Socket {
    /// Bind the socket of `key_id`'s agent under `runtime_dir`
    /// ([`socket_path`]): its folder is created 0700 if missing and refused
    /// if it is another user's or open to others; the socket is 0600. A
    /// socket left by an agent that died is replaced; a live agent's is
    /// not (an error says to stop it first).
    pub fn bind(runtime_dir: &Path, key_id: &KeyId) -> Result<Self> {
        prepare_dir(runtime_dir)?;
        let path = socket_path(runtime_dir, key_id);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(&path) {
                Ok(_) => {
                    return Err(Error::Refused(format!(
                        "an agent is already running for key id {key_id} ({}): `coffer agent stop` first",
                        path.display()
                    )));
                }
                // Left by an agent that died: nobody listens.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
                Err(e) => return Err(Error::io(&path, e)),
            },
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
        let ino = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .ino();
        Ok(Self {
            listener,
            path,
            ino,
        })
    }

    /// The listener, for [`Agent::serve`].
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Ask the agent at `socket`. `Ok(None)`: no agent listens there.
fn ask(socket: &Path, request: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let err = |e: io::Error| Error::io(socket, e);
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(err(e)),
    };
    let me = rustix::process::geteuid();
    let uid = peer_uid(&stream).map_err(err)?;
    if uid != me {
        return Err(Error::Refused(format!(
            "{}: served by uid {}, not by you (uid {}): not used",
            socket.display(),
            uid.as_raw(),
            me.as_raw()
        )));
    }
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(err)?;
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + request.len()));
    frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
    frame.extend_from_slice(request);
    stream.write_all(&frame).map_err(err)?;
    let answer = read_frame(&mut stream, MAX_ANSWER).map_err(err)?;
    let (&status, body) = answer.split_first().expect("frames are not empty");
    if status == OK {
        return Ok(Some(Zeroizing::new(body.to_vec())));
    }
    Err(Error::Agent {
        category: code_category(status).unwrap_or(Category::Other),
        message: crate::ui::escaped(&String::from_utf8_lossy(body)),
    })
}

/// [`ask`] for a key or passphrase: an agent that no longer serves (its
/// time or uses ran out) counts as none.
fn ask_secret(socket: &Path, request: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
    match ask(socket, request) {
        Err(Error::Agent {
            category: Category::NoUsableSlot,
            ..
        }) => Ok(None),
        other => other,
    }
}

fn header_request(op: u8, prefix: &[u8], header: Option<&Header>) -> Zeroizing<Vec<u8>> {
    let header = header.map(Header::to_bytes).unwrap_or_default();
    let mut req = Zeroizing::new(Vec::with_capacity(1 + prefix.len() + header.len()));
    req.push(op);
    req.extend_from_slice(prefix);
    req.extend_from_slice(&header);
    req
}

/// `header`'s payload key from the agent at `socket`, which authenticates
/// the header under its key first. `Ok(None)`: no agent serves there.
pub fn payload_key(socket: &Path, header: &Header) -> Result<Option<PayloadKey>> {
    let Some(key) = ask_secret(socket, &header_request(OPEN, &[], Some(header)))? else {
        return Ok(None);
    };
    let key: &[u8; 32] = key[..].try_into().map_err(|_| Error::Agent {
        category: Category::Other,
        message: format!("answered {} bytes for a 32-byte payload key", key.len()),
    })?;
    Ok(Some(PayloadKey::new(key)))
}

/// The passphrase for `name` from the agent at `socket`; with `header`,
/// only if that header authenticates under the agent's key. `Ok(None)`: no
/// agent serves there.
pub fn passphrase(
    socket: &Path,
    name: &PassphraseName,
    header: Option<&Header>,
) -> Result<Option<Zeroizing<String>>> {
    let name = name.as_str().as_bytes();
    let mut prefix = Vec::with_capacity(2 + name.len());
    prefix.extend_from_slice(&(name.len() as u16).to_be_bytes());
    prefix.extend_from_slice(name);
    let Some(secret) = ask_secret(socket, &header_request(PASSPHRASE, &prefix, header))? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&secret).map_err(|_| Error::Agent {
        category: Category::Other,
        message: "answered a passphrase that is not text".into(),
    })?;
    Ok(Some(Zeroizing::new(text.to_owned())))
}

/// The status of the agent at `socket`; `Ok(None)`: none runs there.
pub fn status(socket: &Path) -> Result<Option<Status>> {
    let Some(body) = ask(socket, &[STATUS])? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| Error::Agent {
            category: Category::Other,
            message: format!("answered a status that does not parse: {e}"),
        })
}

/// Tell the agent at `socket` to forget its key and exit. Returns whether
/// one was running.
pub fn stop(socket: &Path) -> Result<bool> {
    Ok(ask(socket, &[STOP])?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::header::{DEFAULT_CHUNK, FLAG_TAR};
    use crate::sealing::Sealer;
    use crate::slot::recovery;

    fn agent(limits: Limits) -> (Agent, Header, Header) {
        let bk = BackupKey::from_bytes([7; 32]);
        let (rec, _) = recovery::enroll(&bk);
        let (mine, _) = Header::seal(&Sealer::owner(&bk), FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        let other = BackupKey::from_bytes([8; 32]);
        let (rec, _) = recovery::enroll(&other);
        let (theirs, _) = Header::seal(&Sealer::owner(&other), FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        (Agent::new(bk, limits), mine, theirs)
    }

    fn open_request(h: &Header) -> Vec<u8> {
        header_request(OPEN, &[], Some(h)).to_vec()
    }

    #[test]
    fn gives_the_payload_key_of_its_own_archives_only() {
        let (mut a, mine, theirs) = agent(Limits::default());
        let (answer, end) = a.answer(&open_request(&mine));
        assert_eq!(end, None);
        assert_eq!(answer[0], OK);
        let bk = BackupKey::from_bytes([7; 32]);
        assert_eq!(&answer[1..], &mine.payload_key_bytes(&bk).unwrap()[..]);
        assert_ne!(&answer[1..], bk.expose(), "never the backup key");
        let (answer, _) = a.answer(&open_request(&theirs));
        assert_eq!(answer[0], category_code(Category::Corrupt));
    }

    #[test]
    fn stops_after_its_last_use_and_refuses_once_expired() {
        let (mut a, mine, _) = agent(Limits {
            ttl: None,
            max_uses: Some(2),
        });
        assert_eq!(a.answer(&open_request(&mine)).1, None);
        assert_eq!(a.answer(&open_request(&mine)).1, Some(Ended::UsedUp));

        let (mut a, mine, _) = agent(Limits {
            ttl: Some(Duration::ZERO),
            max_uses: None,
        });
        let (answer, end) = a.answer(&open_request(&mine));
        assert_eq!(answer[0], category_code(Category::NoUsableSlot));
        assert_eq!(end, Some(Ended::Expired));
        // Status never spends a use nor needs the key.
        assert_eq!(a.answer(&[STATUS]).0[0], OK);
    }

    #[test]
    fn passphrases_match_the_library_and_check_the_header() {
        let (mut a, mine, theirs) = agent(Limits::default());
        let name = PassphraseName::parse("restic:photos").unwrap();
        let want = passphrase::derive(&BackupKey::from_bytes([7; 32]), &name);
        let prefix = [&[0u8, 13][..], b"restic:photos"].concat();
        for header in [None, Some(&mine)] {
            let (answer, _) = a.answer(&header_request(PASSPHRASE, &prefix, header));
            assert_eq!(&answer[1..], want.as_bytes());
        }
        let (answer, _) = a.answer(&header_request(PASSPHRASE, &prefix, Some(&theirs)));
        assert_eq!(answer[0], category_code(Category::Corrupt));
        for bad in [
            &[PASSPHRASE][..],
            &[PASSPHRASE, 0, 9, b'x'],
            &[PASSPHRASE, 0, 1, b' '],
        ] {
            assert_eq!(a.answer(bad).0[0], category_code(Category::Usage));
        }
    }

    #[test]
    fn frames_are_bounded() {
        let mut big = Vec::from(((MAX_REQUEST + 1) as u32).to_be_bytes());
        big.push(OPEN);
        assert!(read_frame(&mut &big[..], MAX_REQUEST).is_err());
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..], MAX_REQUEST).is_err());
        assert!(read_frame(&mut &[0u8, 0, 0, 2, 1][..], MAX_REQUEST).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let (a, _, _) = agent(Limits::default());
        let text = format!("{a:?}");
        assert!(!text.contains("0707") && !text.contains("7, 7"), "{text}");
    }
}
