//! Rollback detection for the vault's database: an epoch kept in a
//! monotonic counter outside it (a TPM NV counter on the vault host), and
//! every record bound to it under MACs only the HSM-held secret gives.
//!
//! **The state.** Each record row carries a MAC (HMAC-SHA512 under a key
//! derived from the server setup, [`StateKey`]) over its fields, its
//! *stamp* (the epoch it last changed in) and its *prev* (what its MAC
//! was when that epoch began; zero for a row new in it). One row of table
//! `epoch` holds the epoch number `E` and *sealed*, the sum (mod 2^512) of
//! every record's MAC when `E` began, under a MAC of its own. Running sums
//! (`epoch_sums`, one row per server process, so replicas never wait on
//! one another) make that sum cheap to take.
//!
//! **Advancing.** A single writer per process advances the epoch for a
//! batch of changes ([`Epochs`]): in one transaction that holds the epoch
//! row (every change holds it shared, so none is in flight), it increments
//! the counter to `E + 1`, then writes `E + 1` and the running sums' total
//! as the new sealed sum, and commits. A change stamped `s` is answered
//! only once the epoch is `s + 2`: a crash between the increment and the
//! commit leaves the counter one ahead, which start-up accepts.
//!
//! **The check** (`state.rs`, at start-up): the epoch row's MAC; the counter
//! `C` against `E` (`C` is `E` or `E + 1`; more is a database older than
//! the last answered change); every record's MAC; and the sealed sum, equal
//! to the sum over records of their MAC (stamp below `E`) or their prev
//! (stamp `E`). What that detects, for someone who can write the database
//! but not use the HSM or the TPM:
//!
//! - a database (or a file-system snapshot of it) restored from before the
//!   last answered change: its epoch is too old;
//! - a record edited (counters reset), added, or removed, and a record put
//!   back as an older copy of itself, alone or with others and with the
//!   current epoch row spliced in: each changes the sum;
//! - the epoch row edited.
//!
//! It cannot see changes not yet answered (the current epoch: their loss
//! costs no guess), login sessions (a replayed finish only refunds), the
//! audit table (`audit.rs`), nor anything done by whoever holds the HSM
//! key or can reset the TPM.
//!
//! Owns: the canonical encoding of a record's MAC and of the epoch row's,
//! the sum's arithmetic, and the epoch rules above.
//!
//! Must never: answer a change before its epoch is two behind the counter,
//! let a crash leave the counter where start-up refuses, or put a secret
//! in an error.

use super::VaultError;
use crate::key::{HmacSha256, HmacSha512, label};
use hmac::{KeyInit, Mac};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A record's MAC, and a sum of them (mod 2^512, big-endian).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Elem(pub [u8; 64]);

impl Elem {
    /// Zero: a row's prev when it is new in its epoch, and an empty sum.
    pub const ZERO: Elem = Elem([0; 64]);

    /// From stored bytes; `None` unless exactly 64.
    pub fn from_slice(b: &[u8]) -> Option<Elem> {
        b.try_into().ok().map(Elem)
    }

    /// `self += o`, mod 2^512.
    pub fn add(&mut self, o: &Elem) {
        let mut carry = 0u16;
        for i in (0..64).rev() {
            let t = u16::from(self.0[i]) + u16::from(o.0[i]) + carry;
            self.0[i] = t as u8;
            carry = t >> 8;
        }
    }

    /// `self -= o`, mod 2^512.
    pub fn sub(&mut self, o: &Elem) {
        let mut borrow = 0i16;
        for i in (0..64).rev() {
            let mut t = i16::from(self.0[i]) - i16::from(o.0[i]) - borrow;
            borrow = i16::from(t < 0);
            if t < 0 {
                t += 256;
            }
            self.0[i] = t as u8;
        }
    }
}

impl std::fmt::Debug for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Elem({}…)", hex::encode(&self.0[..8]))
    }
}

/// One record row, as its MAC covers it.
pub struct Row<'a> {
    /// The record's id.
    pub user: &'a str,
    /// Its OPAQUE registration; `None` once destroyed.
    pub registration: Option<&'a [u8]>,
    /// Unrefunded guesses.
    pub failed: i64,
    /// When it was destroyed, if it was.
    pub destroyed: Option<i64>,
    /// The epoch it last changed in.
    pub stamp: i64,
    /// Its MAC when that epoch began (zero if new in it).
    pub prev: Elem,
}

/// The key of the records' and the epoch's MACs.
pub struct StateKey(Zeroizing<[u8; 32]>);

impl StateKey {
    /// Derived from the unsealed server setup.
    pub fn derive(setup: &[u8]) -> Self {
        let k = crate::key::Kek::derive(None, setup, label::VAULT_STATE_KEY);
        Self(Zeroizing::new(*k.expose()))
    }

    /// A record row's MAC: HMAC-SHA512(key, label ‖ its fields, each
    /// length-prefixed or fixed-size).
    pub fn row(&self, r: &Row<'_>) -> Elem {
        let mut m = <HmacSha512 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        let field = |m: &mut HmacSha512, b: &[u8]| {
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        };
        field(&mut m, label::VAULT_STATE_ROW);
        m.update(&[0]);
        field(&mut m, r.user.as_bytes());
        match r.registration {
            None => m.update(&[0]),
            Some(reg) => {
                m.update(&[1]);
                field(&mut m, reg);
            }
        }
        m.update(&r.failed.to_be_bytes());
        match r.destroyed {
            None => m.update(&[0]),
            Some(t) => {
                m.update(&[1]);
                m.update(&t.to_be_bytes());
            }
        }
        m.update(&r.stamp.to_be_bytes());
        m.update(&r.prev.0);
        Elem(m.finalize().into_bytes().into())
    }

    /// An audit row's term in the sum: HMAC-SHA512(key, label ‖ 0x01 ‖
    /// chain ‖ place ‖ the row's chain MAC ‖ stamp). Audit rows never
    /// change, so their prev is always zero.
    pub fn audit(&self, chain: &str, seq: u64, mac: &[u8], stamp: i64) -> Elem {
        let mut m = <HmacSha512 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        let field = |m: &mut HmacSha512, b: &[u8]| {
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        };
        field(&mut m, label::VAULT_STATE_ROW);
        m.update(&[1]);
        field(&mut m, chain.as_bytes());
        m.update(&seq.to_be_bytes());
        field(&mut m, mac);
        m.update(&stamp.to_be_bytes());
        Elem(m.finalize().into_bytes().into())
    }

    /// The epoch row's MAC: HMAC-SHA256(key, label ‖ epoch ‖ sealed sum).
    pub fn epoch(&self, epoch: i64, sealed: &Elem) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        m.update(&(label::VAULT_STATE_EPOCH.len() as u64).to_be_bytes());
        m.update(label::VAULT_STATE_EPOCH);
        m.update(&epoch.to_be_bytes());
        m.update(&sealed.0);
        m.finalize().into_bytes().into()
    }
}

/// A record's new stamp and prev when it changes in epoch `epoch`: a row
/// last changed in an earlier epoch keeps its MAC as prev; one changed in
/// this epoch already keeps the prev it has.
pub fn restamp(epoch: i64, stamp: i64, mac: Elem, prev: Elem) -> (i64, Elem) {
    if stamp < epoch {
        (epoch, mac)
    } else {
        (epoch, prev)
    }
}

/// A monotonic counter outside the database.
pub trait Counter: Send {
    /// Its value; `None` if it does not exist.
    fn read(&mut self) -> Result<Option<u64>, VaultError>;
    /// Add one (creating it if it does not exist); the new value.
    fn increment(&mut self) -> Result<u64, VaultError>;
    /// What it is, for messages: "TPM NV counter 0x01c0ffee at TCTI …".
    fn describe(&self) -> String;
}

/// A TPM 2.0 NV counter (`slot::tpm2::device`). The connection is kept
/// between uses, and opened again after any failure (a TPM restarted, a
/// resource manager gone).
#[cfg(feature = "tpm2")]
pub struct TpmCounter {
    tcti: String,
    index: u32,
    tpm: Option<crate::slot::tpm2::device::Tpm>,
}

#[cfg(feature = "tpm2")]
impl TpmCounter {
    /// The counter at NV index `index` of the TPM at `tcti`.
    pub fn new(tcti: &str, index: u32) -> Self {
        Self {
            tcti: tcti.to_owned(),
            index,
            tpm: None,
        }
    }

    /// Run `f` on the connection (opened if needed); drop it on failure.
    fn with_tpm<T>(
        &mut self,
        f: impl FnOnce(&mut crate::slot::tpm2::device::Tpm, u32) -> Result<T, crate::error::SlotError>,
    ) -> Result<T, VaultError> {
        let tpm = match self.tpm.take() {
            Some(t) => t,
            None => crate::slot::tpm2::device::Tpm::open(&self.tcti).map_err(|e| self.error(e))?,
        };
        let mut tpm = tpm;
        match f(&mut tpm, self.index) {
            Ok(v) => {
                self.tpm = Some(tpm);
                Ok(v)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: crate::error::SlotError) -> VaultError {
        VaultError::Epoch(format!("{}: {e}", self.describe()))
    }
}

#[cfg(feature = "tpm2")]
impl Counter for TpmCounter {
    fn read(&mut self) -> Result<Option<u64>, VaultError> {
        self.with_tpm(|t, index| t.counter_read(index))
    }

    fn increment(&mut self) -> Result<u64, VaultError> {
        self.with_tpm(|t, index| t.counter_increment(index))
    }

    fn describe(&self) -> String {
        format!("TPM NV counter {:#010x} at {}", self.index, self.tcti)
    }
}

/// How a server keeps its epoch: the counter (none: records are still
/// MAC'd and checked at start-up, but a restored database goes unnoticed),
/// and whether to adopt the database as it is (`--epoch-adopt`).
#[derive(Default)]
pub struct EpochOptions {
    /// The monotonic counter, if any.
    pub counter: Option<Box<dyn Counter>>,
    /// Seal the database as it is at the counter's value, whatever the
    /// check would say.
    pub adopt: bool,
}

/// The database's epoch and the counter, compared at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In step (the counter is the epoch, or one ahead after a crash).
    Current,
    /// Neither exists yet: a new vault, to be started at the counter.
    Fresh,
}

/// Compare the database's epoch (`None`: no epoch row) with the counter's
/// value (`None`: no counter).
pub fn compare(
    epoch: Option<i64>,
    counter: Option<u64>,
    what: &str,
) -> Result<Verdict, VaultError> {
    let adopt = "if this is intended (a new TPM, a TPM cleared, or a database deliberately restored and accepted as it is), start once with --epoch-adopt";
    match (epoch, counter) {
        (None, None) => Ok(Verdict::Fresh),
        (None, Some(c)) => Err(VaultError::Epoch(format!(
            "the database has no epoch, but {what} exists (at {c}): a database from before rollback detection, or another vault's; {adopt}"
        ))),
        (Some(e), None) => Err(VaultError::Epoch(format!(
            "the database is at epoch {e}, but {what} does not exist: another TPM, or one cleared; {adopt}"
        ))),
        (Some(e), Some(c)) => {
            let c = i64::try_from(c).unwrap_or(i64::MAX);
            if c == e || c == e.saturating_add(1) {
                Ok(Verdict::Current)
            } else if c > e {
                Err(VaultError::Epoch(format!(
                    "the database was rolled back: it is at epoch {e}, but {what} is at {c}; guesses answered since epoch {e} are missing from it (a restored backup or snapshot?). Restore the latest database; {adopt}"
                )))
            } else {
                Err(VaultError::Epoch(format!(
                    "the database is at epoch {e}, ahead of {what} (at {c}): another TPM, or a counter re-created; {adopt}"
                )))
            }
        }
    }
}

/// How long a request waits for its change's epoch to be sealed.
const WAIT: Duration = Duration::from_secs(10);

/// Advances the epoch for the changes waiting on it: one writer thread
/// per process, batching every change that arrives while it works.
pub struct Epochs {
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    /// The epoch this process last saw committed.
    committed: i64,
    /// The epoch some waiting request needs.
    wanted: i64,
    /// Why advancing failed last (answered to the waiters).
    failed: Option<String>,
    /// Bumped on every attempt, so waiters know a failure is new.
    attempts: u64,
}

impl Epochs {
    /// Start the writer, with the database at epoch `epoch`; `advance`
    /// advances it once and returns the new epoch.
    pub fn start(
        epoch: i64,
        mut advance: impl FnMut() -> Result<i64, VaultError> + Send + 'static,
        log: super::server::Log,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            state: Mutex::new(State {
                committed: epoch,
                wanted: epoch,
                failed: None,
                attempts: 0,
            }),
            cv: Condvar::new(),
        });
        let writer = me.clone();
        std::thread::Builder::new()
            .name("coffer-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut s = writer.lock();
                        while s.wanted <= s.committed {
                            s = writer.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    let r = advance();
                    let mut s = writer.lock();
                    s.attempts += 1;
                    match r {
                        Ok(e) => {
                            s.committed = s.committed.max(e);
                            s.failed = None;
                        }
                        Err(e) => {
                            log(&format!("advancing the epoch failed: {e}"));
                            s.failed = Some(e.to_string());
                        }
                    }
                    writer.cv.notify_all();
                    if s.failed.is_some() {
                        // Not in a tight loop against a failing TPM or database.
                        drop(s);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
            .expect("start the epoch writer thread");
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until a change stamped `stamp` may be answered: the epoch is
    /// `stamp + 2` or more (at most 10 seconds).
    pub fn wait_sealed(&self, stamp: i64) -> Result<(), VaultError> {
        let target = stamp.saturating_add(2);
        let deadline = Instant::now() + WAIT;
        let mut s = self.lock();
        let start = s.attempts;
        if s.wanted < target {
            s.wanted = target;
            self.cv.notify_all();
        }
        while s.committed < target {
            if let (Some(why), true) = (&s.failed, s.attempts > start) {
                return Err(VaultError::Epoch(format!(
                    "the change is stored but its epoch could not be advanced: {why}"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VaultError::Epoch(
                    "the epoch did not advance in time; the change is stored".into(),
                ));
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elem(b: u8) -> Elem {
        let mut e = Elem::ZERO;
        e.0[63] = b;
        e
    }

    #[test]
    fn sums_wrap_and_undo() {
        let mut a = Elem([0xff; 64]);
        a.add(&elem(1));
        assert_eq!(a, Elem::ZERO, "wraps mod 2^512");
        a.sub(&elem(1));
        assert_eq!(a, Elem([0xff; 64]));
        let mut b = elem(200);
        b.add(&elem(100));
        assert_eq!((b.0[62], b.0[63]), (1, 44), "carries");
        b.sub(&elem(100));
        assert_eq!(b, elem(200));
    }

    #[test]
    fn every_field_is_covered() {
        let k = StateKey::derive(b"setup");
        let base = Row {
            user: "u",
            registration: Some(b"reg"),
            failed: 1,
            destroyed: None,
            stamp: 5,
            prev: Elem::ZERO,
        };
        let m = k.row(&base);
        let variants = [
            Row { user: "v", ..base },
            Row {
                registration: None,
                ..base
            },
            Row {
                registration: Some(b"reh"),
                ..base
            },
            Row { failed: 0, ..base },
            Row {
                destroyed: Some(0),
                ..base
            },
            Row { stamp: 4, ..base },
            Row {
                prev: elem(1),
                ..base
            },
        ];
        for v in &variants {
            assert_ne!(k.row(v), m);
        }
        assert_ne!(StateKey::derive(b"other").row(&base), m);
        assert_ne!(k.epoch(1, &m), k.epoch(2, &m));
    }

    #[test]
    fn a_change_keeps_the_value_its_epoch_began_with() {
        let (m1, m2) = (elem(1), elem(2));
        // Changed first in epoch 7: prev is the MAC it had.
        assert_eq!(restamp(7, 6, m1, Elem::ZERO), (7, m1));
        // Changed again in 7: prev stays.
        assert_eq!(restamp(7, 7, m2, m1), (7, m1));
    }

    #[test]
    fn the_counter_may_be_the_epoch_or_one_ahead_only() {
        let w = "the counter";
        assert_eq!(compare(None, None, w).unwrap(), Verdict::Fresh);
        assert_eq!(compare(Some(5), Some(5), w).unwrap(), Verdict::Current);
        assert_eq!(compare(Some(5), Some(6), w).unwrap(), Verdict::Current);
        let rolled = compare(Some(5), Some(7), w).unwrap_err().to_string();
        assert!(rolled.contains("rolled back"), "{rolled}");
        assert!(compare(Some(5), Some(4), w).is_err());
        assert!(compare(None, Some(4), w).is_err());
        assert!(compare(Some(4), None, w).is_err());
    }
}
