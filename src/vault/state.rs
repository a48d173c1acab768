//! The records and the epoch (`epoch.rs`) in the database: every change to
//! a record, written once over both backends through [`Tx`], keeps the
//! record's MAC, its stamp and prev, and this process's running sum; and
//! the epoch's preparation at start-up, its check, and its advance.
//!
//! Owns: the transactions that change records (each holds the epoch row
//! shared, then the record, then this process's sum), and the one that
//! advances the epoch (holding the epoch row alone).
//!
//! Must never: change a record without its MAC, stamp and the running
//! sum in the same transaction, or take a row whose MAC does not check.

use super::VaultError;
use super::audit::Entry as AuditEntry;
use super::epoch::{self, Counter, Elem, Row, StateKey, Verdict};
use super::store::{LoginRecord, Store};

/// An audit row's place as stored (a negative one cannot be coffer's:
/// its term then fails the sum).
fn audit_place(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(u64::MAX)
}

/// A record row as stored.
#[derive(Clone)]
pub struct Record {
    pub user: String,
    pub registration: Option<Vec<u8>>,
    pub failed: i64,
    pub created: i64,
    pub destroyed: Option<i64>,
    pub stamp: i64,
    pub prev: Option<Vec<u8>>,
    pub mac: Option<Vec<u8>>,
}

impl Record {
    fn row(&self) -> Row<'_> {
        Row {
            user: &self.user,
            registration: self.registration.as_deref(),
            failed: self.failed,
            destroyed: self.destroyed,
            stamp: self.stamp,
            prev: self
                .prev
                .as_deref()
                .and_then(Elem::from_slice)
                .unwrap_or(Elem::ZERO),
        }
    }

    /// Its MAC, checked: a row without one, or with one that does not
    /// check, was not written by a server holding the key.
    fn checked_mac(&self, key: &StateKey) -> Result<Elem, VaultError> {
        let stored = self.mac.as_deref().and_then(Elem::from_slice);
        match stored {
            Some(m) if m == key.row(&self.row()) && self.prev_ok() => Ok(m),
            _ => Err(VaultError::Tampered(format!(
                "record {} does not carry its MAC (edited, or put there by someone without the server's key)",
                super::server::audit_record(&self.user)
            ))),
        }
    }

    fn prev_ok(&self) -> bool {
        self.prev.as_deref().is_none_or(|p| p.len() == 64)
    }

    /// Set stamp, prev and MAC for a change in epoch `epoch`, from the MAC
    /// it had (`None`: a new row).
    fn seal(&mut self, key: &StateKey, epoch: i64, old: Option<Elem>) -> Elem {
        let (stamp, prev) = match old {
            None => (epoch, Elem::ZERO),
            Some(m) => {
                let prev = self.row().prev;
                epoch::restamp(epoch, self.stamp, m, prev)
            }
        };
        self.stamp = stamp;
        self.prev = Some(prev.0.to_vec());
        let mac = key.row(&self.row());
        self.mac = Some(mac.0.to_vec());
        mac
    }
}

/// The epoch row as stored.
pub struct EpochRow {
    pub epoch: i64,
    pub sealed: Vec<u8>,
    pub mac: Vec<u8>,
}

impl EpochRow {
    fn checked(self, key: &StateKey) -> Result<(i64, Elem), VaultError> {
        let sealed = Elem::from_slice(&self.sealed);
        match sealed {
            Some(s) if key.epoch(self.epoch, &s)[..] == self.mac[..] => Ok((self.epoch, s)),
            _ => Err(VaultError::Tampered(
                "the epoch row does not carry its MAC".into(),
            )),
        }
    }
}

/// Called with each audit row's chain, place, MAC and stamp.
pub type AuditVisitor<'a> = dyn FnMut(&str, i64, &[u8], i64) -> Result<(), VaultError> + 'a;

/// What a transaction on either backend offers the operations below.
pub trait Tx {
    /// The epoch row: shared (a change), or for update (an advance).
    fn epoch_row(&mut self, exclusive: bool) -> Result<Option<EpochRow>, VaultError>;
    fn put_epoch_row(&mut self, row: &EpochRow) -> Result<(), VaultError>;
    /// A record, locked for update.
    fn record(&mut self, user: &str) -> Result<Option<Record>, VaultError>;
    /// Insert `r` unless its user id is taken; whether it was inserted.
    fn insert_record(&mut self, r: &Record) -> Result<bool, VaultError>;
    fn update_record(&mut self, r: &Record) -> Result<(), VaultError>;
    /// Add `plus - minus` to `owner`'s running sum.
    fn add_to_sum(&mut self, owner: &str, plus: &Elem, minus: &Elem) -> Result<(), VaultError>;
    /// Serialise start-up preparations (`prepare`) across replicas.
    fn lock_for_preparing(&mut self) -> Result<(), VaultError>;
    /// Every running sum.
    fn sums(&mut self) -> Result<Vec<Vec<u8>>, VaultError>;
    /// Replace every running sum by one, `total`.
    fn reset_sums(&mut self, total: &Elem) -> Result<(), VaultError>;
    /// Append an audit row stamped `stamp`.
    fn insert_audit(&mut self, e: &AuditEntry, mac: &[u8], stamp: i64) -> Result<(), VaultError>;
    /// Every audit row's chain, place, MAC and stamp, in turn.
    fn each_audit(&mut self, f: &mut AuditVisitor<'_>) -> Result<(), VaultError>;
    /// Stamp every audit row `stamp`.
    fn restamp_audit(&mut self, stamp: i64) -> Result<(), VaultError>;
    /// Every record, in turn.
    fn each_record(
        &mut self,
        f: &mut dyn FnMut(Record) -> Result<(), VaultError>,
    ) -> Result<(), VaultError>;
}

/// The records of `store`, under `key`.
pub struct State<'s> {
    pub store: &'s Store,
    pub key: &'s StateKey,
}

/// A change's outcome, and the epoch it was stamped in if it wrote.
pub type Stamped<T> = (T, Option<i64>);

impl State<'_> {
    fn epoch_for_change(tx: &mut dyn Tx, key: &StateKey) -> Result<i64, VaultError> {
        let row = tx
            .epoch_row(false)?
            .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?;
        Ok(row.checked(key)?.0)
    }

    /// Change `user`'s record with `f` (which returns the outcome and
    /// whether it changed the record), keeping MAC, stamp and sum.
    fn change<T>(
        &self,
        user: &str,
        f: impl FnOnce(Option<&mut Record>) -> (T, bool),
    ) -> Result<Stamped<T>, VaultError> {
        let key = self.key;
        let owner = self.store.owner();
        self.store.with_tx(true, |tx| {
            let epoch = Self::epoch_for_change(tx, key)?;
            let mut record = tx.record(user)?;
            let old = record.as_ref().map(|r| r.checked_mac(key)).transpose()?;
            let (out, changed) = f(record.as_mut());
            match (record, old) {
                (Some(mut r), Some(old)) if changed => {
                    let mac = r.seal(key, epoch, Some(old));
                    tx.update_record(&r)?;
                    tx.add_to_sum(owner, &mac, &old)?;
                    Ok((out, Some(epoch)))
                }
                _ => Ok((out, None)),
            }
        })
    }

    /// Store a new record; `false` if the id is taken (or was: ids are
    /// never reused).
    pub fn register(&self, user: &str, registration: &[u8]) -> Result<Stamped<bool>, VaultError> {
        let key = self.key;
        let owner = self.store.owner();
        self.store.with_tx(true, |tx| {
            let epoch = Self::epoch_for_change(tx, key)?;
            let mut r = Record {
                user: user.to_owned(),
                registration: Some(registration.to_vec()),
                failed: 0,
                created: crate::slot::now_unix() as i64,
                destroyed: None,
                stamp: epoch,
                prev: None,
                mac: None,
            };
            let mac = r.seal(key, epoch, None);
            if !tx.insert_record(&r)? {
                return Ok((false, None));
            }
            tx.add_to_sum(owner, &mac, &Elem::ZERO)?;
            Ok((true, Some(epoch)))
        })
    }

    /// Append one row to the audit table (`audit.rs`), its term added to
    /// the sum: a sealed row cut off later fails the check.
    pub fn append_audit(&self, e: &AuditEntry, mac: &[u8]) -> Result<(), VaultError> {
        let key = self.key;
        let owner = self.store.owner();
        self.store.with_tx(true, |tx| {
            let epoch = Self::epoch_for_change(tx, key)?;
            tx.insert_audit(e, mac, epoch)?;
            tx.add_to_sum(owner, &key.audit(&e.chain, e.seq, mac, epoch), &Elem::ZERO)
        })
    }

    /// Count one guess for `user` and return the record to answer with;
    /// with `max` guesses already unrefunded, destroy it instead.
    pub fn login_start(&self, user: &str, max: u32) -> Result<Stamped<LoginRecord>, VaultError> {
        self.change(user, |r| match r {
            None => (LoginRecord::Missing, false),
            Some(r) => match &r.registration {
                None => (LoginRecord::Destroyed, false),
                Some(_) if r.failed >= i64::from(max) => {
                    r.registration = None;
                    r.destroyed = Some(crate::slot::now_unix() as i64);
                    (LoginRecord::Exhausted, true)
                }
                Some(registration) => {
                    let out = LoginRecord::Found {
                        registration: registration.clone(),
                        guesses_left: (i64::from(max) - r.failed - 1).max(0) as u32,
                    };
                    r.failed += 1;
                    (out, true)
                }
            },
        })
    }

    /// A valid login finish: refund every counted guess. Whether the
    /// record was there (not destroyed meanwhile).
    pub fn login_succeeded(&self, user: &str) -> Result<Stamped<bool>, VaultError> {
        self.change(user, |r| match r {
            Some(r) if r.registration.is_some() => {
                let changed = r.failed != 0;
                r.failed = 0;
                (true, changed)
            }
            _ => (false, false),
        })
    }

    /// Destroy `user`'s record, leaving a tombstone. Whether this call
    /// destroyed it.
    pub fn destroy(&self, user: &str) -> Result<Stamped<bool>, VaultError> {
        self.change(user, |r| match r {
            Some(r) if r.registration.is_some() => {
                r.registration = None;
                r.destroyed = Some(crate::slot::now_unix() as i64);
                (true, true)
            }
            _ => (false, false),
        })
    }

    /// Make the database's epoch ready at start-up, and return it:
    ///
    /// - a vault without an epoch row (new, or from before rollback
    ///   detection), or with `adopt`: every record is sealed as it is now,
    ///   at the counter's value (created if missing), or 0 with no counter;
    /// - otherwise the whole check (`epoch.rs`), against the counter if
    ///   there is one.
    pub fn prepare(
        &self,
        counter: Option<&mut dyn Counter>,
        adopt: bool,
    ) -> Result<i64, VaultError> {
        let key = self.key;
        // Under one lock: replicas starting together on a new database
        // seal it once, and the others check what it sealed.
        let sealed_now = self.store.with_tx(true, |tx| {
            tx.lock_for_preparing()?;
            let stored = tx.epoch_row(true)?.map(|r| r.epoch);
            let mut counter = counter;
            let value = match counter.as_deref_mut() {
                Some(c) => c.read()?,
                None => None,
            };
            let fresh = match (&counter, adopt) {
                (_, true) => true,
                (None, false) => stored.is_none(),
                (Some(c), false) => epoch::compare(stored, value, &c.describe())? == Verdict::Fresh,
            };
            if !fresh {
                return Ok(Err(value));
            }
            let epoch = match counter {
                Some(c) => {
                    let v = match value {
                        Some(v) => v,
                        None => c.increment()?,
                    };
                    i64::try_from(v).map_err(|_| {
                        VaultError::Epoch(format!("{} is beyond 2^63", c.describe()))
                    })?
                }
                None => stored.unwrap_or(0),
            };
            // Every record and audit row sealed in the epoch before this
            // one: its term is what the sum holds, and a copy of a record
            // from before is no longer valid.
            let mut rows = Vec::new();
            tx.each_record(&mut |r| {
                rows.push(r);
                Ok(())
            })?;
            let mut total = Elem::ZERO;
            for mut r in rows {
                r.stamp = epoch - 1;
                r.prev = None;
                let mac = key.row(&r.row());
                r.mac = Some(mac.0.to_vec());
                total.add(&mac);
                tx.update_record(&r)?;
            }
            tx.restamp_audit(epoch - 1)?;
            tx.each_audit(&mut |chain, seq, mac, _| {
                total.add(&key.audit(chain, audit_place(seq), mac, epoch - 1));
                Ok(())
            })?;
            tx.reset_sums(&total)?;
            tx.put_epoch_row(&EpochRow {
                epoch,
                sealed: total.0.to_vec(),
                mac: key.epoch(epoch, &total).to_vec(),
            })?;
            Ok(Ok(epoch))
        })?;
        match sealed_now {
            Ok(epoch) => Ok(epoch),
            Err(counter) => self.check(counter),
        }
    }

    /// Whether the database has an epoch row.
    pub fn has_epoch(&self) -> Result<bool, VaultError> {
        self.store
            .with_tx(false, |tx| Ok(tx.epoch_row(false)?.is_some()))
    }

    /// The whole check of a database whose counter reads `counter`
    /// (`None`: no counter in use): see `epoch.rs`. Returns the epoch.
    pub fn check(&self, counter: Option<u64>) -> Result<i64, VaultError> {
        let key = self.key;
        let epoch = self.store.with_tx(false, |tx| {
            let (epoch, sealed) = tx
                .epoch_row(false)?
                .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?
                .checked(key)?;
            let mut from_records = Elem::ZERO;
            let mut current = Elem::ZERO;
            tx.each_record(&mut |r| {
                let mac = r.checked_mac(key)?;
                current.add(&mac);
                if r.stamp > epoch {
                    return Err(VaultError::Tampered(format!(
                        "record {} is stamped with a later epoch than the database's",
                        super::server::audit_record(&r.user)
                    )));
                }
                from_records.add(&if r.stamp < epoch { mac } else { r.row().prev });
                Ok(())
            })?;
            tx.each_audit(&mut |chain, seq, mac, stamp| {
                let term = key.audit(chain, audit_place(seq), mac, stamp);
                current.add(&term);
                if stamp > epoch {
                    return Err(VaultError::Tampered(
                        "an audit row is stamped with a later epoch than the database's".into(),
                    ));
                }
                if stamp < epoch {
                    from_records.add(&term);
                }
                Ok(())
            })?;
            if from_records != sealed {
                return Err(VaultError::Tampered(format!(
                    "the records and audit rows are not those sealed at epoch {epoch}: one was removed (an audit chain's tail cut off?), added, or put back as an older copy of itself"
                )));
            }
            let mut sums = Elem::ZERO;
            for s in tx.sums()? {
                sums.add(&Elem::from_slice(&s).ok_or_else(|| {
                    VaultError::Tampered("a running sum is malformed".into())
                })?);
            }
            if sums != current {
                return Err(VaultError::Tampered(
                    "the running sums do not match the records".into(),
                ));
            }
            Ok(epoch)
        })?;
        if let Some(c) = counter {
            epoch::compare(Some(epoch), Some(c), "the counter")?;
        }
        Ok(epoch)
    }

    /// Advance the epoch once: holding the epoch row, bring the counter to
    /// one past the larger of the epoch and itself, then write that epoch
    /// and the running sums' total, and commit. Returns the new epoch.
    pub fn advance(&self, counter: &mut dyn Counter) -> Result<i64, VaultError> {
        let key = self.key;
        self.store.with_tx(true, |tx| {
            let (epoch, _) = tx
                .epoch_row(true)?
                .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?
                .checked(key)?;
            let read = counter.read()?;
            epoch::compare(Some(epoch), read, &counter.describe())?;
            let mut value = i64::try_from(read.unwrap_or(0)).unwrap_or(i64::MAX);
            let target = epoch.max(value) + 1;
            while value < target {
                value = i64::try_from(counter.increment()?).unwrap_or(i64::MAX);
            }
            if value != target {
                return Err(VaultError::Epoch(format!(
                    "{} moved by itself (to {value}, expected {target}): another writer?",
                    counter.describe()
                )));
            }
            let mut total = Elem::ZERO;
            for s in tx.sums()? {
                total
                    .add(&Elem::from_slice(&s).ok_or_else(|| {
                        VaultError::Tampered("a running sum is malformed".into())
                    })?);
            }
            tx.reset_sums(&total)?;
            tx.put_epoch_row(&EpochRow {
                epoch: target,
                sealed: total.0.to_vec(),
                mac: key.epoch(target, &total).to_vec(),
            })?;
            Ok(target)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A counter in memory, shared with the test.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Option<u64>>>);

    impl Counter for Fake {
        fn read(&mut self) -> Result<Option<u64>, VaultError> {
            Ok(*self.0.lock().unwrap())
        }
        fn increment(&mut self) -> Result<u64, VaultError> {
            let mut v = self.0.lock().unwrap();
            *v = Some(v.map_or(1, |v| v + 1));
            Ok(v.unwrap())
        }
        fn describe(&self) -> String {
            "the fake counter".into()
        }
    }

    #[test]
    fn a_crash_between_the_increment_and_the_commit_is_accepted_and_two_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("v.db")).unwrap();
        let key = StateKey::derive(b"setup");
        let state = State {
            store: &store,
            key: &key,
        };
        let mut counter = Fake::default();
        assert_eq!(state.prepare(Some(&mut counter), false).unwrap(), 1);
        let (registered, stamp) = state.register("u", b"reg").unwrap();
        assert!(registered);
        assert_eq!(stamp, Some(1));
        assert_eq!(state.advance(&mut counter).unwrap(), 2);
        // The counter moved, the commit was lost: one ahead.
        counter.increment().unwrap();
        assert_eq!(state.prepare(Some(&mut counter), false).unwrap(), 2);
        assert_eq!(state.advance(&mut counter).unwrap(), 4, "past both");
        assert_eq!(counter.read().unwrap(), Some(4));
        // Two ahead: the database is older than an answered change.
        counter.increment().unwrap();
        counter.increment().unwrap();
        let e = state.prepare(Some(&mut counter), false).unwrap_err();
        assert!(e.to_string().contains("rolled back"), "{e}");
        assert!(state.advance(&mut counter).is_err(), "nor advanced");
        // Adopted deliberately: sealed at the counter's value.
        assert_eq!(state.prepare(Some(&mut counter), true).unwrap(), 6);
        assert_eq!(state.check(Some(6)).unwrap(), 6);
    }

    #[test]
    fn changes_in_the_current_epoch_count_by_their_prev() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("v.db")).unwrap();
        let key = StateKey::derive(b"setup");
        let state = State {
            store: &store,
            key: &key,
        };
        let mut counter = Fake::default();
        state.prepare(Some(&mut counter), false).unwrap();
        state.register("u", b"reg").unwrap();
        state.advance(&mut counter).unwrap();
        // Changed twice in one epoch, then checked before it is sealed.
        state.login_start("u", 10).unwrap();
        state.login_start("u", 10).unwrap();
        state.check(counter.read().unwrap()).unwrap();
        state.advance(&mut counter).unwrap();
        state.check(counter.read().unwrap()).unwrap();
        assert_eq!(store.failed_guesses("u").unwrap(), Some(2));
    }
}
