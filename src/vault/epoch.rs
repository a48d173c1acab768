//! Rollback detection for the vault's database: an epoch kept in a
//! monotonic counter outside it (a TPM NV counter on the vault host), and
//! every record bound to it under MACs only the HSM-held secret gives.
//!
//! **The state.** Each record row carries a MAC (HMAC-SHA512 under a key
//! derived from the server setup, [`StateKey`]) over its fields, its
//! *stamp* (the epoch it last changed in), its *version* (how many times it
//! changed) and its *prev* (its MAC when that epoch began; none for a row
//! new in it). One row of table `epoch` holds the epoch number `E`, whether
//! it is *confirmed*, and *sealed*: the multiset hash ([`Sum`], an LtHash)
//! of every record's and every audit row's MAC when `E` began, all under a
//! MAC of its own.
//!
//! **Advancing** (`state.rs`), by one writer thread per process for every
//! change waiting ([`Epochs`]):
//!
//! 1. holding the epoch row (every change holds it shared, so none is in
//!    flight), open epoch `E + 1`, unconfirmed: its sealed sum is epoch
//!    `E`'s, plus, for every row stamped `E`, its MAC's term less its
//!    prev's (each MAC checked), plus every audit row stamped `E`; commit;
//! 2. holding it again, increment the counter from `E` to `E + 1` and
//!    confirm; commit.
//!
//! So the counter never passes the committed epoch: it is the epoch, or
//! one below it while an epoch is open. Any failure leaves a state the next
//! advance (or start) finishes: once running, a crash never locks the vault
//! out (a crash in the very first start needs `--epoch-adopt`). A change
//! stamped `s` is answered only once epoch `s + 2` is confirmed (a database
//! lacking it has an epoch of `s` or less, or, on a branch cut off at a
//! failover, an open `s + 1`: both below the counter), and its record still
//! holds the version it wrote.
//!
//! **The check** (`state.rs`, at start-up): the epoch row's MAC; the counter
//! against it ([`compare`]); every record's MAC; and the sealed sum, equal
//! to the sum over records of their MAC's term (stamp below `E`) or their
//! prev's (stamp `E`), plus the audit rows stamped below `E`. While the
//! server runs, an epoch lower than one it has seen is refused. What that
//! detects, for someone who can write the database but neither use the HSM
//! nor roll back the TPM, is in docs/backends/vault.md ("Rollback
//! detection").
//!
//! Owns: the canonical encoding of a record's MAC and of the epoch row's,
//! the sum's arithmetic, and the epoch rules above.
//!
//! Must never: answer a change before epoch `stamp + 2` is confirmed, let
//! the counter pass a committed epoch, or put a secret in an error.

use super::VaultError;
use crate::key::{HmacSha256, HmacSha512, label};
use hmac::{KeyInit, Mac as _};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A row's MAC (HMAC-SHA512).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 64]);

impl Mac {
    /// From stored bytes; `None` unless exactly 64.
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        b.try_into().ok().map(Mac)
    }

    /// Its term in the sum: 2048 bytes expanded from it (HKDF-SHA256,
    /// info `coffer/v1 vault state term`), as 1024 16-bit lanes.
    pub fn term(&self) -> Sum {
        let mut bytes = [0u8; 2 * LANES];
        crate::key::hkdf_sha256(None, &self.0, label::VAULT_STATE_TERM, &mut bytes);
        let mut s = Sum::ZERO;
        for (lane, b) in s.0.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([b[0], b[1]]);
        }
        s
    }
}

impl std::fmt::Debug for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mac({}…)", hex::encode(&self.0[..8]))
    }
}

/// Lanes of a [`Sum`].
pub const LANES: usize = 1024;

/// A multiset hash of rows: the lane-wise sum, mod 2^16, of their terms
/// (LtHash, as Facebook's: 1024 lanes of 16 bits). Terms are public (a
/// MAC is stored with its row, and anyone can expand it), so the sum must
/// resist finding other rows with the same sum: an additive hash over a
/// few hundred bits falls to Wagner's generalized-birthday attack, this
/// one's security rests on a lattice problem.
#[derive(Clone, PartialEq, Eq)]
pub struct Sum(pub [u16; LANES]);

impl Sum {
    /// The empty sum.
    pub const ZERO: Sum = Sum([0; LANES]);

    /// `self += o`.
    pub fn add(&mut self, o: &Sum) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// `self -= o`.
    pub fn sub(&mut self, o: &Sum) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    /// As stored: the lanes little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    /// From stored bytes; `None` unless exactly `2 * LANES`.
    pub fn from_bytes(b: &[u8]) -> Option<Sum> {
        if b.len() != 2 * LANES {
            return None;
        }
        let mut s = Sum::ZERO;
        for (lane, c) in s.0.iter_mut().zip(b.chunks_exact(2)) {
            *lane = u16::from_le_bytes([c[0], c[1]]);
        }
        Some(s)
    }
}

impl std::fmt::Debug for Sum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sum({:?}…)", &self.0[..4])
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
    /// How many times it changed: a server that answers a change checks,
    /// once the change is sealed, that the row is no older.
    pub version: i64,
    /// Its MAC when that epoch began (`None`: new in it).
    pub prev: Option<Mac>,
}

/// The key of the records' and the epoch's MACs.
pub struct StateKey(Zeroizing<[u8; 32]>);

impl StateKey {
    /// Derived from the unsealed server setup.
    pub fn derive(setup: &[u8]) -> Self {
        let k = crate::key::Kek::derive(None, setup, label::VAULT_STATE_KEY);
        Self(Zeroizing::new(*k.expose()))
    }

    fn hmac512(&self) -> HmacSha512 {
        let mut m = <HmacSha512 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        field(&mut m, label::VAULT_STATE_ROW);
        m
    }

    /// A record row's MAC: HMAC-SHA512(key, label ‖ 0x00 ‖ its fields,
    /// each length-prefixed or fixed-size).
    pub fn row(&self, r: &Row<'_>) -> Mac {
        let mut m = self.hmac512();
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
        m.update(&r.version.to_be_bytes());
        match &r.prev {
            None => m.update(&[0]),
            Some(p) => {
                m.update(&[1]);
                m.update(&p.0);
            }
        }
        Mac(m.finalize().into_bytes().into())
    }

    /// An audit row's MAC for the sum: HMAC-SHA512(key, label ‖ 0x01 ‖
    /// chain ‖ place ‖ the row's chain MAC ‖ stamp). Audit rows never
    /// change: a row new in the current epoch counts nothing yet.
    pub fn audit(&self, chain: &str, seq: u64, mac: &[u8], stamp: i64) -> Mac {
        let mut m = self.hmac512();
        m.update(&[1]);
        field(&mut m, chain.as_bytes());
        m.update(&seq.to_be_bytes());
        field(&mut m, mac);
        m.update(&stamp.to_be_bytes());
        Mac(m.finalize().into_bytes().into())
    }

    /// The epoch row's MAC: HMAC-SHA256(key, label ‖ epoch ‖ confirmed ‖
    /// sealed sum).
    pub fn epoch(&self, epoch: i64, confirmed: bool, sealed: &Sum) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        m.update(&(label::VAULT_STATE_EPOCH.len() as u64).to_be_bytes());
        m.update(label::VAULT_STATE_EPOCH);
        m.update(&epoch.to_be_bytes());
        m.update(&[u8::from(confirmed)]);
        m.update(&sealed.to_bytes());
        m.finalize().into_bytes().into()
    }
}

fn field(m: &mut impl hmac::Mac, b: &[u8]) {
    m.update(&(b.len() as u64).to_be_bytes());
    m.update(b);
}

/// A record's stamp and prev when it changes in epoch `epoch`, from the
/// stamp, MAC and prev it had: a row last changed in an earlier epoch
/// keeps its MAC as prev; one changed in this epoch already keeps its prev.
pub fn restamp(epoch: i64, stamp: i64, mac: Mac, prev: Option<Mac>) -> (i64, Option<Mac>) {
    if stamp < epoch {
        (epoch, Some(mac))
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

/// The database's epoch and the counter, compared.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In step: the epoch confirmed at the counter's value.
    Current,
    /// An advance was cut short: the epoch is open (its row committed,
    /// not confirmed); the counter is to be brought to it (if one below)
    /// and the epoch confirmed.
    Open,
    /// Neither exists yet: a new vault, to be started at the counter.
    Fresh,
}

const ADOPT: &str = "if this is intended (a new TPM, a TPM cleared, or a database deliberately restored and accepted as it is), start once with --epoch-adopt";

/// Compare the database's epoch (`None`: no epoch row; else the epoch and
/// whether it is confirmed) with the counter's value (`None`: no counter).
/// The counter never passes the database: an advance commits the next
/// epoch (open) before it increments the counter, and confirms it after.
pub fn compare(
    epoch: Option<(i64, bool)>,
    counter: Option<u64>,
    what: &str,
) -> Result<Verdict, VaultError> {
    match (epoch, counter) {
        (None, None) => Ok(Verdict::Fresh),
        (None, Some(c)) => Err(VaultError::Epoch(format!(
            "the database has no epoch, but {what} exists (at {c}): a database from before rollback detection, or another vault's; {ADOPT}"
        ))),
        (Some((e, _)), None) => Err(VaultError::Epoch(format!(
            "the database is at epoch {e}, but {what} does not exist: another TPM, or one cleared; {ADOPT}"
        ))),
        (Some((e, confirmed)), Some(c)) => {
            let c = i64::try_from(c).unwrap_or(i64::MAX);
            match (c - e, confirmed) {
                (0, true) => Ok(Verdict::Current),
                (0 | -1, false) => Ok(Verdict::Open),
                (1.., _) => Err(VaultError::Epoch(format!(
                    "the database was rolled back: it is at epoch {e}, but {what} is at {c}; guesses answered since are missing from it (a restored backup or snapshot?). Restore the latest database; {ADOPT}"
                ))),
                _ => Err(VaultError::Epoch(format!(
                    "the database is at epoch {e}, ahead of {what} (at {c}): another TPM, or a counter re-created; {ADOPT}"
                ))),
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
    /// Why advancing failed last, and whether it is tampering (answered
    /// at once; anything else is retried until a waiter's deadline).
    failed: Option<(String, bool)>,
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
                            let tampered = matches!(e, VaultError::Tampered(_));
                            s.failed = Some((e.to_string(), tampered));
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
            if let (Some((why, true)), true) = (&s.failed, s.attempts > start) {
                return Err(VaultError::Epoch(format!(
                    "the change is stored but its epoch cannot be advanced: {why}"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = s.failed.as_ref().map_or("", |(w, _)| w.as_str());
                return Err(VaultError::Epoch(format!(
                    "the epoch did not advance in time; the change is stored ({why})"
                )));
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

    fn lane(v: u16) -> Sum {
        let mut s = Sum::ZERO;
        s.0[0] = v;
        s
    }

    #[test]
    fn sums_wrap_lane_by_lane_and_undo() {
        let mut a = lane(u16::MAX);
        a.add(&lane(1));
        assert_eq!(a, Sum::ZERO, "wraps mod 2^16");
        a.sub(&lane(1));
        assert_eq!(a, lane(u16::MAX));
        let t = Mac([7; 64]).term();
        assert_ne!(t, Sum::ZERO);
        assert_eq!(Sum::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(Sum::from_bytes(&[0; 10]), None);
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
            version: 3,
            prev: None,
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
            Row { version: 2, ..base },
            Row {
                prev: Some(Mac([0; 64])),
                ..base
            },
        ];
        for v in &variants {
            assert_ne!(k.row(v), m);
        }
        assert_ne!(StateKey::derive(b"other").row(&base), m);
        let s = Sum::ZERO;
        assert_ne!(k.epoch(1, true, &s), k.epoch(2, true, &s));
        assert_ne!(k.epoch(1, true, &s), k.epoch(1, false, &s));
        assert_ne!(k.audit("c", 1, b"m", 1), k.audit("c", 1, b"m", 2));
    }

    #[test]
    fn a_change_keeps_the_value_its_epoch_began_with() {
        let (m1, m2) = (Mac([1; 64]), Mac([2; 64]));
        // Changed first in epoch 7: prev is the MAC it had.
        assert_eq!(restamp(7, 6, m1, None), (7, Some(m1)));
        // Changed again in 7: prev stays.
        assert_eq!(restamp(7, 7, m2, Some(m1)), (7, Some(m1)));
    }

    #[test]
    fn the_counter_never_passes_the_database() {
        let w = "the counter";
        assert_eq!(compare(None, None, w).unwrap(), Verdict::Fresh);
        assert_eq!(
            compare(Some((5, true)), Some(5), w).unwrap(),
            Verdict::Current
        );
        // An advance cut short, before or after its increment.
        assert_eq!(
            compare(Some((5, false)), Some(4), w).unwrap(),
            Verdict::Open
        );
        assert_eq!(
            compare(Some((5, false)), Some(5), w).unwrap(),
            Verdict::Open
        );
        for (e, c) in [((5, true), 6), ((5, false), 6), ((5, true), 9)] {
            let rolled = compare(Some(e), Some(c), w).unwrap_err().to_string();
            assert!(rolled.contains("rolled back"), "{rolled}");
        }
        assert!(
            compare(Some((5, true)), Some(4), w).is_err(),
            "confirmed above"
        );
        assert!(compare(Some((5, false)), Some(3), w).is_err());
        assert!(compare(None, Some(4), w).is_err());
        assert!(compare(Some((4, true)), None, w).is_err());
    }
}
