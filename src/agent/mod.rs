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
//! Integers are big-endian. A request is `len:u32 ‖ version:u8 ‖ op:u8 ‖
//! body`, `len` counting what follows it, at most [`MAX_REQUEST`]; the
//! version is [`PROTOCOL`]:
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
//! `NoUsableSlot`, `Incomplete`, the body its message (UTF-8).
//! `NoUsableSlot` means the agent declines: its time or uses ran out, the
//! request is of another protocol version, or it cannot read the header
//! (a newer format than its build's). The client then unlocks as if there
//! were no agent. `Corrupt` to `OPEN` or `PASSPHRASE` means the header did
//! not authenticate under the key its key id names: final.
//!
//! Each connection is served on its own thread, with one deadline
//! ([`IO_TIMEOUT`]) for reading the request and writing the answer; the
//! key is behind a lock, and taken out and wiped when the agent ends.
//!
//! Owns: the agent's loop and limits ([`Agent`]), the wire format
//! ([`wire`]), its socket ([`Socket`]) and the client's side
//! ([`payload_key`], [`passphrase`], [`status`], [`stop`]). The command
//! line starts it, detaches it and reads the environment
//! (`$XDG_RUNTIME_DIR`).
//!
//! Must never: put the backup key on the socket or in a file; answer a
//! peer of another user; answer `OPEN` or `PASSPHRASE` once its time or its
//! uses ran out.

mod client;
mod socket;
pub mod wire;

pub use client::{passphrase, payload_key, status, stop};
pub use socket::{Socket, prepare_dir, socket_path};
pub use wire::{IO_TIMEOUT, MAX_ANSWER, MAX_REQUEST, PROTOCOL};

use crate::archive::Header;
use crate::error::Category;
use crate::key::{BackupKey, KeyId};
use crate::passphrase::PassphraseName;
use crate::sealing::SealingPublicKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wire::{Answer, OPEN, PASSPHRASE, STATUS, STOP, failure, success};
use zeroize::Zeroizing;

/// Connections served at once; more are closed unanswered (their callers
/// unlock without the agent).
pub const MAX_CLIENTS: usize = 16;
/// The longest the agent sleeps between checks of its time and its
/// socket: the poll timeout runs on the monotonic clock, which stops
/// while the machine sleeps, so the boot-time deadline is checked at
/// least this often once it wakes.
const TICK: Duration = Duration::from_secs(1);

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
    /// Whether the key's memory is locked (kept out of swap).
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
    /// Its socket is gone or replaced: no command could reach it.
    SocketGone,
    /// The wake descriptor became readable (a signal, for the binary).
    Woken,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ended::Stopped => "stopped",
            Ended::Expired => "its time ran out",
            Ended::UsedUp => "it gave its last allowed answer",
            Ended::SocketGone => "its socket was removed",
            Ended::Woken => "interrupted",
        })
    }
}

/// The key-holding side, before it serves. Its `Debug` shows no key.
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

fn remaining(deadline: Option<Duration>) -> Option<Duration> {
    deadline.map(|d| d.saturating_sub(boot_time()))
}

impl Agent {
    /// An agent for `bk`; its key id is that of the sealing public key
    /// `bk` derives (a version 2 keyring's key id).
    pub fn new(bk: Box<BackupKey>, limits: Limits) -> Self {
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

    /// Lock the pages this process has touched, the key's among them, out
    /// of swap (`mlockall(MCL_CURRENT | MCL_ONFAULT)`; not `MCL_FUTURE`,
    /// which would make a later allocation past the limit abort). Tried
    /// only as root or with `RLIMIT_MEMLOCK` unlimited: the kernel refuses
    /// anyone else whose whole address space exceeds the limit, as an
    /// ordinary user's always does. Returns whether memory is locked.
    pub fn lock_memory(&mut self) -> bool {
        use rustix::mm::MlockAllFlags as F;
        use rustix::process::{Resource, geteuid, getrlimit};
        let may = geteuid().is_root() || getrlimit(Resource::Memlock).current.is_none();
        self.memory_locked = may && rustix::mm::mlockall(F::CURRENT | F::ONFAULT).is_ok();
        self.memory_locked
    }

    /// Answer on `socket` until stopped, out of time or uses, the socket
    /// is gone, or `wake` (if any) becomes readable. The key is taken out
    /// and wiped before this returns, whatever connection threads remain.
    pub fn serve(self, socket: &Socket, wake: Option<BorrowedFd<'_>>) -> crate::Result<Ended> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let err = |e: io::Error| crate::Error::io(socket.path(), e);
        let (inner, waker) = UnixStream::pair().map_err(err)?;
        inner.set_nonblocking(true).map_err(err)?;
        waker.set_nonblocking(true).map_err(err)?;
        let listener = socket.listener();
        listener.set_nonblocking(true).map_err(err)?;
        let shared = Arc::new(Shared::new(self, waker));
        let ended = loop {
            if let Some(e) = shared.lock().end_if_expired(shared.deadline) {
                break e;
            }
            if !socket.still_ours() {
                break Ended::SocketGone;
            }
            let tick = remaining(shared.deadline).map_or(TICK, |r| r.min(TICK));
            let timeout = Timespec {
                tv_sec: tick.as_secs() as i64,
                tv_nsec: tick.subsec_nanos().into(),
            };
            let mut fds = vec![
                PollFd::new(listener, PollFlags::IN),
                PollFd::new(&inner, PollFlags::IN),
            ];
            if let Some(w) = wake {
                fds.push(PollFd::from_borrowed_fd(w, PollFlags::IN));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => break Err(err(e.into()))?,
            }
            if fds.get(2).is_some_and(|w| !w.revents().is_empty()) {
                break Ended::Woken;
            }
            let (new_clients, woken) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if woken {
                let _ = (&inner).read(&mut [0u8; 64]);
            }
            if new_clients {
                accept_all(&shared, listener);
            }
        };
        shared.lock().forget(ended);
        Ok(ended)
    }
}

/// Take every pending connection, each to a thread of its own (at most
/// [`MAX_CLIENTS`] at once).
fn accept_all(shared: &Arc<Shared>, listener: &std::os::unix::net::UnixListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock: none left; anything else (a client gone before
            // it was taken, out of descriptors): try again at the next wake.
            Err(_) => return,
        };
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("agent client".into())
            .spawn(move || {
                s.handle(stream);
                s.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What the connection threads share with the loop.
struct Shared {
    key_id: KeyId,
    deadline: Option<Duration>,
    memory_locked: bool,
    state: Mutex<State>,
    /// Written to when a connection ended the agent (STOP, last use), to
    /// wake the loop at once.
    waker: UnixStream,
    clients: AtomicUsize,
}

/// The key, while the agent has it.
struct State {
    bk: Option<Box<BackupKey>>,
    uses_left: Option<u64>,
    ended: Option<Ended>,
}

impl State {
    /// Drop (and wipe) the key, remembering why first.
    fn forget(&mut self, why: Ended) {
        self.bk = None;
        self.ended.get_or_insert(why);
    }

    fn end_if_expired(&mut self, deadline: Option<Duration>) -> Option<Ended> {
        if remaining(deadline).is_some_and(|r| r.is_zero()) {
            self.forget(Ended::Expired);
        }
        self.ended
    }

    /// Count one answer given; the last allowed one ends the agent.
    fn spend(&mut self) {
        if let Some(left) = self.uses_left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.forget(Ended::UsedUp);
            }
        }
    }
}

impl Shared {
    fn new(agent: Agent, waker: UnixStream) -> Self {
        Self {
            key_id: agent.key_id,
            deadline: agent.deadline,
            memory_locked: agent.memory_locked,
            state: Mutex::new(State {
                bk: Some(agent.bk),
                uses_left: agent.uses_left,
                ended: None,
            }),
            waker,
            clients: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One connection: check the peer, read its request, answer it, all
    /// by one deadline. A peer that sends nothing well-formed in time is
    /// dropped unanswered.
    fn handle(&self, mut stream: UnixStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let deadline = Instant::now() + IO_TIMEOUT;
        let me = rustix::process::geteuid();
        let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else {
            return;
        };
        if cred.uid != me {
            let why = format!(
                "refused: this agent answers only its own user (uid {}), not uid {}",
                me.as_raw(),
                cred.uid.as_raw()
            );
            let _ = wire::write_frame(&mut stream, &failure(Category::Other, &why), deadline);
            // Take what it sent, unread, before closing: closing on unread
            // bytes would reset the connection before it read why.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            let mut left = MAX_REQUEST + 4;
            while left > 0 && wire::read_exact_by(&mut stream, &mut sink[..1], deadline).is_ok() {
                left -= 1;
                let _ = stream.read(&mut sink);
            }
            return;
        }
        let Ok(request) = wire::read_frame(&mut stream, MAX_REQUEST, deadline) else {
            return;
        };
        let answer = self.answer(&request);
        let _ = wire::write_frame(&mut stream, &answer, deadline);
        if self.lock().ended.is_some() {
            let _ = (&self.waker).write(&[1]);
        }
    }

    /// The answer to one request.
    fn answer(&self, request: &[u8]) -> Answer {
        let malformed = || failure(Category::Usage, "malformed request");
        let Some((&version, rest)) = request.split_first() else {
            return malformed();
        };
        if version != PROTOCOL {
            return failure(
                Category::NoUsableSlot,
                &format!("this agent speaks protocol version {PROTOCOL}, not {version}"),
            );
        }
        let Some((&op, body)) = rest.split_first() else {
            return malformed();
        };
        let mut state = self.lock();
        match op {
            STATUS => success(&self.status_json(&state)),
            STOP => {
                state.forget(Ended::Stopped);
                success(b"")
            }
            OPEN | PASSPHRASE => {
                if let Some(why) = state.end_if_expired(self.deadline) {
                    return failure(
                        Category::NoUsableSlot,
                        &format!("it forgot the key ({why})"),
                    );
                }
                let Some(bk) = state.bk.as_deref() else {
                    return failure(Category::NoUsableSlot, "it forgot the key");
                };
                let result = if op == OPEN {
                    open(bk, body)
                } else {
                    derive_passphrase(bk, body)
                };
                match result {
                    Ok(secret) => {
                        state.spend();
                        success(&secret)
                    }
                    Err(answer) => answer,
                }
            }
            _ => failure(Category::Usage, &format!("unknown request {op}")),
        }
    }

    fn status_json(&self, state: &State) -> Vec<u8> {
        let status = Status {
            key_id: self.key_id.to_string(),
            pid: std::process::id(),
            expires_in_seconds: remaining(self.deadline).map(|r| r.as_secs()),
            uses_left: state.uses_left,
            memory_locked: self.memory_locked,
        };
        serde_json::to_vec(&status).expect("a status serialises")
    }
}

/// Exactly one header, as this build reads it; what it cannot read it
/// declines (the client's build may be newer), rather than call corrupt.
fn one_header(bytes: &[u8]) -> Result<Header, Answer> {
    let mut rest = bytes;
    let header = Header::read(&mut rest).map_err(|e| {
        failure(
            Category::NoUsableSlot,
            &format!("it cannot read this header ({e})"),
        )
    })?;
    if !rest.is_empty() {
        return Err(failure(
            Category::NoUsableSlot,
            "the request holds more than one header",
        ));
    }
    Ok(header)
}

/// Authenticate `header` under `bk` (its key id, sealer and MAC); a
/// failure is final (`Corrupt`).
fn authenticated(bk: &BackupKey, header: &Header) -> Result<Zeroizing<[u8; 32]>, Answer> {
    header
        .payload_key_bytes(bk)
        .map_err(|e| failure(e.category(), &e.to_string()))
}

/// `OPEN`: the payload key of an authenticated header.
fn open(bk: &BackupKey, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Answer> {
    let key = authenticated(bk, &one_header(body)?)?;
    Ok(Zeroizing::new(key.to_vec()))
}

/// `PASSPHRASE`: the name, and a header to authenticate first if any.
fn derive_passphrase(bk: &BackupKey, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Answer> {
    let malformed = || failure(Category::Usage, "malformed passphrase request");
    let (len, rest) = body.split_first_chunk::<2>().ok_or_else(malformed)?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(malformed());
    }
    let (name, header) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| malformed())?;
    let name = PassphraseName::parse(name).map_err(|e| failure(Category::Usage, &e))?;
    if !header.is_empty() {
        authenticated(bk, &one_header(header)?)?;
    }
    let secret = crate::passphrase::derive(bk, &name);
    Ok(Zeroizing::new(secret.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::wire::category_code;
    use super::*;
    use crate::archive::header::{DEFAULT_CHUNK, FLAG_TAR};
    use crate::sealing::Sealer;
    use crate::slot::recovery;

    fn agent(limits: Limits) -> (Shared, Header, Header) {
        let bk = BackupKey::from_bytes([7; 32]);
        let (rec, _) = recovery::enroll(&bk);
        let (mine, _) = Header::seal(&Sealer::owner(&bk), FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        let other = BackupKey::from_bytes([8; 32]);
        let (rec, _) = recovery::enroll(&other);
        let (theirs, _) = Header::seal(&Sealer::owner(&other), FLAG_TAR, DEFAULT_CHUNK, vec![rec]);
        let (_, waker) = UnixStream::pair().unwrap();
        let a = Agent::new(Box::new(bk), limits);
        (Shared::new(a, waker), mine, theirs)
    }

    fn request(op: u8, body: &[u8]) -> Vec<u8> {
        [&[PROTOCOL, op][..], body].concat()
    }

    fn open_request(h: &Header) -> Vec<u8> {
        request(OPEN, &h.to_bytes())
    }

    #[test]
    fn gives_the_payload_key_of_its_own_archives_only() {
        let (a, mine, theirs) = agent(Limits::default());
        let answer = a.answer(&open_request(&mine));
        assert_eq!(answer[0], wire::OK);
        let bk = BackupKey::from_bytes([7; 32]);
        assert_eq!(&answer[1..], &mine.payload_key_bytes(&bk).unwrap()[..]);
        assert_ne!(&answer[1..], bk.expose(), "never the backup key");
        let answer = a.answer(&open_request(&theirs));
        assert_eq!(answer[0], category_code(Category::Corrupt));
        // Two headers in one request, or one it cannot read: declined.
        let two = request(OPEN, &[mine.to_bytes(), mine.to_bytes()].concat());
        assert_eq!(a.answer(&two)[0], category_code(Category::NoUsableSlot));
        let mut newer = mine.to_bytes();
        newer[9] = 9; // format version 9
        assert_eq!(
            a.answer(&request(OPEN, &newer))[0],
            category_code(Category::NoUsableSlot)
        );
        // Another protocol version: declined, whatever it asks.
        let mut v2 = open_request(&mine);
        v2[0] = PROTOCOL + 1;
        assert_eq!(a.answer(&v2)[0], category_code(Category::NoUsableSlot));
        assert_eq!(a.lock().ended, None);
    }

    #[test]
    fn forgets_the_key_after_its_last_use_and_once_expired() {
        let (a, mine, _) = agent(Limits {
            ttl: None,
            max_uses: Some(2),
        });
        assert_eq!(a.answer(&open_request(&mine))[0], wire::OK);
        // Status is no use.
        assert_eq!(a.answer(&request(STATUS, &[]))[0], wire::OK);
        assert_eq!(a.answer(&open_request(&mine))[0], wire::OK);
        let state = a.lock();
        assert_eq!(state.ended, Some(Ended::UsedUp));
        assert!(state.bk.is_none(), "the key is dropped at once");
        drop(state);
        let answer = a.answer(&open_request(&mine));
        assert_eq!(answer[0], category_code(Category::NoUsableSlot));

        let (a, mine, _) = agent(Limits {
            ttl: Some(Duration::ZERO),
            max_uses: None,
        });
        let answer = a.answer(&open_request(&mine));
        assert_eq!(answer[0], category_code(Category::NoUsableSlot));
        assert_eq!(a.lock().ended, Some(Ended::Expired));
        assert!(a.lock().bk.is_none());
    }

    #[test]
    fn stop_forgets_the_key() {
        let (a, mine, _) = agent(Limits::default());
        assert_eq!(a.answer(&request(STOP, &[]))[0], wire::OK);
        assert!(a.lock().bk.is_none());
        let answer = a.answer(&open_request(&mine));
        assert_eq!(answer[0], category_code(Category::NoUsableSlot));
    }

    #[test]
    fn passphrases_match_the_library_and_check_the_header() {
        let (a, mine, theirs) = agent(Limits::default());
        let name = PassphraseName::parse("restic:photos").unwrap();
        let want = crate::passphrase::derive(&BackupKey::from_bytes([7; 32]), &name);
        let prefix = [&[0u8, 13][..], b"restic:photos"].concat();
        for header in [Vec::new(), mine.to_bytes()] {
            let answer = a.answer(&request(PASSPHRASE, &[&prefix[..], &header].concat()));
            assert_eq!(&answer[1..], want.as_bytes());
        }
        let answer = a.answer(&request(
            PASSPHRASE,
            &[&prefix[..], &theirs.to_bytes()].concat(),
        ));
        assert_eq!(answer[0], category_code(Category::Corrupt));
        for bad in [&[][..], &[0, 9, b'x'], &[0, 1, b' ']] {
            let answer = a.answer(&request(PASSPHRASE, bad));
            assert_eq!(answer[0], category_code(Category::Usage));
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let a = Agent::new(Box::new(BackupKey::from_bytes([7; 32])), Limits::default());
        let text = format!("{a:?}");
        assert!(!text.contains("0707") && !text.contains("7, 7"), "{text}");
    }
}
