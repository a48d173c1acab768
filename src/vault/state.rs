//! The records and the epoch (`epoch.rs`) in the database: every change to
//! a record, written once over both backends through [`Tx`], keeps the
//! record's MAC, stamp, version and prev; the epoch is prepared at
//! start-up, checked, and advanced here.
//!
//! Owns: the transactions that change records (each holds the epoch row
//! shared, then the record), and the advance: one transaction that opens
//! the next epoch (holding the epoch row alone, sealing the rows changed in
//! the current one from their own MACs), then one that brings the counter
//! to it and confirms it.
//!
//! Must never: change a record without its MAC, stamp and version in the
//! same transaction; take a row whose MAC does not check; let the counter
//! pass a committed epoch; accept an epoch lower than one already seen.

use super::VaultError;
use super::audit::Entry as AuditEntry;
use super::epoch::{self, Counter, Mac, Row, StateKey, Sum, Verdict};
use super::store::{LoginRecord, Store};

/// An audit row's place as stored, as the sum takes it. A negative one is
/// never coffer's and counts as `u64::MAX` (sealed like any row stamped
/// before an advance; `vault audit verify` finds it out of its chain).
fn audit_place(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(u64::MAX)
}

/// Every record (with `stamp`: those stamped so) in turn, each id once.
/// The rows come ordered by id, bytewise (a collation of the table's own
/// could call distinct ids equal), so a copy would come next to its original:
/// a table rebuilt without its key could otherwise hold 2^16 copies of an
/// older row, which the sum (16-bit lanes) would not see.
fn each_record(
    tx: &mut dyn Tx,
    stamp: Option<i64>,
    f: &mut dyn FnMut(Record) -> Result<(), VaultError>,
) -> Result<(), VaultError> {
    let mut last: Option<String> = None;
    tx.each_record(stamp, &mut |r| {
        if last.as_deref() == Some(&r.user[..]) {
            return Err(VaultError::Tampered(format!(
                "record {} is stored more than once (its table has lost its key)",
                super::server::audit_record(&r.user)
            )));
        }
        last = Some(r.user.clone());
        f(r)
    })
}

/// Every audit row (with `stamp`: those stamped so) in turn, each place
/// once (as [`each_record`]).
fn each_audit(
    tx: &mut dyn Tx,
    stamp: Option<i64>,
    f: &mut AuditVisitor<'_>,
) -> Result<(), VaultError> {
    let mut last: Option<(String, i64)> = None;
    tx.each_audit(stamp, &mut |chain, seq, mac, stamp| {
        if last.as_ref().is_some_and(|(c, s)| c == chain && *s == seq) {
            return Err(VaultError::Tampered(format!(
                "audit row {seq} of chain {chain} is stored more than once (its table has lost its key)"
            )));
        }
        last = Some((chain.to_owned(), seq));
        f(chain, seq, mac, stamp)
    })
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
    pub version: i64,
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
            version: self.version,
            prev: self.prev.as_deref().and_then(Mac::from_slice),
        }
    }

    /// Its MAC, checked: a row without one, or with one that does not
    /// check, was not written by a server holding the key.
    fn checked_mac(&self, key: &StateKey) -> Result<Mac, VaultError> {
        let stored = self.mac.as_deref().and_then(Mac::from_slice);
        let prev_ok = self.prev.as_deref().is_none_or(|p| p.len() == 64);
        match stored {
            Some(m) if prev_ok && m == key.row(&self.row()) => Ok(m),
            _ => Err(VaultError::Tampered(format!(
                "record {} does not carry its MAC (edited, or put there by someone without the server's key)",
                super::server::audit_record(&self.user)
            ))),
        }
    }

    /// What it adds to the sum sealed when epoch `epoch` began: its MAC's
    /// term if it last changed before, its prev's if it changed since.
    fn sealed_term(&self, mac: &Mac, epoch: i64) -> Sum {
        if self.stamp < epoch {
            mac.term()
        } else {
            self.row().prev.map_or(Sum::ZERO, |p| p.term())
        }
    }

    /// Set stamp, version, prev and MAC for a change in epoch `epoch`,
    /// from the MAC it had (`None`: a new row).
    fn seal(&mut self, key: &StateKey, epoch: i64, old: Option<Mac>) {
        let (stamp, prev) = match old {
            None => (epoch, None),
            Some(m) => epoch::restamp(epoch, self.stamp, m, self.row().prev),
        };
        self.stamp = stamp;
        self.version += 1;
        self.prev = prev.map(|p| p.0.to_vec());
        self.mac = Some(key.row(&self.row()).0.to_vec());
    }
}

/// The epoch row as stored.
pub struct EpochRow {
    pub epoch: i64,
    pub confirmed: bool,
    pub sealed: Vec<u8>,
    pub mac: Vec<u8>,
}

/// The epoch row, checked.
struct Epoch {
    epoch: i64,
    confirmed: bool,
    sealed: Sum,
}

impl EpochRow {
    fn new(key: &StateKey, epoch: i64, confirmed: bool, sealed: &Sum) -> Self {
        Self {
            epoch,
            confirmed,
            sealed: sealed.to_bytes(),
            mac: key.epoch(epoch, confirmed, sealed).to_vec(),
        }
    }

    fn checked(self, key: &StateKey) -> Result<Epoch, VaultError> {
        match Sum::from_bytes(&self.sealed) {
            Some(s) if key.epoch(self.epoch, self.confirmed, &s)[..] == self.mac[..] => Ok(Epoch {
                epoch: self.epoch,
                confirmed: self.confirmed,
                sealed: s,
            }),
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
    /// Serialise start-up preparations (`prepare`) across replicas.
    fn lock_for_preparing(&mut self) -> Result<(), VaultError>;
    /// Append an audit row stamped `stamp`.
    fn insert_audit(&mut self, e: &AuditEntry, mac: &[u8], stamp: i64) -> Result<(), VaultError>;
    /// Every audit row (with `stamp`: those stamped so) in turn.
    fn each_audit(
        &mut self,
        stamp: Option<i64>,
        f: &mut AuditVisitor<'_>,
    ) -> Result<(), VaultError>;
    /// Stamp every audit row `stamp`.
    fn restamp_audit(&mut self, stamp: i64) -> Result<(), VaultError>;
    /// Every record (with `stamp`: those stamped so) in turn.
    fn each_record(
        &mut self,
        stamp: Option<i64>,
        f: &mut dyn FnMut(Record) -> Result<(), VaultError>,
    ) -> Result<(), VaultError>;
}

/// The records of `store`, under `key`.
pub struct State<'s> {
    pub store: &'s Store,
    pub key: &'s StateKey,
}

/// A change that wrote: the record, the epoch it was stamped in, and the
/// version it wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub user: String,
    pub stamp: i64,
    pub version: i64,
}

/// A change's outcome, and what it wrote, if it wrote.
pub type Stamped<T> = (T, Option<Written>);

impl State<'_> {
    /// The epoch a change is stamped in, from the row held shared; never
    /// one below an epoch this process has seen (a stale epoch row put
    /// back while the server runs).
    fn epoch_for_change(&self, tx: &mut dyn Tx) -> Result<i64, VaultError> {
        let e = tx
            .epoch_row(false)?
            .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?
            .checked(self.key)?;
        self.store.saw_epoch(e.epoch)?;
        Ok(e.epoch)
    }

    /// Change `user`'s record with `f` (which returns the outcome and
    /// whether it changed the record), keeping MAC, stamp and version.
    fn change<T>(
        &self,
        user: &str,
        f: impl FnOnce(Option<&mut Record>) -> (T, bool),
    ) -> Result<Stamped<T>, VaultError> {
        let done = self.store.with_tx(true, |tx| {
            let epoch = self.epoch_for_change(tx)?;
            let mut record = tx.record(user)?;
            let old = record
                .as_ref()
                .map(|r| r.checked_mac(self.key))
                .transpose()?;
            // A record this process changed lately is never older than
            // what it wrote: else someone put it back under the running
            // server, to fork its history.
            let wrote = self
                .store
                .pending()
                .as_ref()
                .and_then(|p| p.get(user).map(|(_, v)| *v));
            if let (Some(r), Some(wrote)) = (&record, wrote)
                && r.version < wrote
            {
                return Err(VaultError::Tampered(format!(
                    "record {} went back to an older version under the running server",
                    super::server::audit_record(user)
                )));
            }
            let (out, changed) = f(record.as_mut());
            match (record, old) {
                (Some(mut r), Some(old)) if changed => {
                    r.seal(self.key, epoch, Some(old));
                    tx.update_record(&r)?;
                    let written = Written {
                        user: r.user,
                        stamp: epoch,
                        version: r.version,
                    };
                    Ok((out, Some(written)))
                }
                _ => Ok((out, None)),
            }
        })?;
        self.remember(&done.1);
        Ok(done)
    }

    /// Note a committed change, to check later that it stays
    /// (`epoch_for_change`'s version check, and the advance's).
    fn remember(&self, written: &Option<Written>) {
        if let (Some(p), Some(w)) = (self.store.pending().as_mut(), written) {
            p.insert(w.user.clone(), (w.stamp, w.version));
        }
    }

    /// After a change was sealed: its record still holds what it wrote,
    /// or a later version (else the row was put back meanwhile, and the
    /// change must not be answered).
    pub fn still_written(&self, w: &Written) -> Result<(), VaultError> {
        self.store.with_tx(false, |tx| {
            let r = tx.record(&w.user)?.ok_or_else(|| {
                VaultError::Tampered(format!(
                    "record {} vanished after a change",
                    super::server::audit_record(&w.user)
                ))
            })?;
            r.checked_mac(self.key)?;
            if r.version < w.version {
                return Err(VaultError::Tampered(format!(
                    "record {} was put back to an older version after a change",
                    super::server::audit_record(&w.user)
                )));
            }
            Ok(())
        })
    }

    /// Store a new record; `false` if the id is taken (or was: ids are
    /// never reused).
    pub fn register(&self, user: &str, registration: &[u8]) -> Result<Stamped<bool>, VaultError> {
        let done = self.store.with_tx(true, |tx| {
            let epoch = self.epoch_for_change(tx)?;
            let mut r = Record {
                user: user.to_owned(),
                registration: Some(registration.to_vec()),
                failed: 0,
                created: crate::slot::now_unix() as i64,
                destroyed: None,
                stamp: epoch,
                version: 0,
                prev: None,
                mac: None,
            };
            r.seal(self.key, epoch, None);
            if !tx.insert_record(&r)? {
                return Ok((false, None));
            }
            let written = Written {
                user: r.user,
                stamp: epoch,
                version: r.version,
            };
            Ok((true, Some(written)))
        })?;
        self.remember(&done.1);
        Ok(done)
    }

    /// Append one row to the audit table (`audit.rs`), stamped with the
    /// epoch: sealed with the next one, it cannot be cut off unseen.
    pub fn append_audit(&self, e: &AuditEntry, mac: &[u8]) -> Result<(), VaultError> {
        self.store.with_tx(true, |tx| {
            let epoch = self.epoch_for_change(tx)?;
            tx.insert_audit(e, mac, epoch)
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

    /// Whether the database has an epoch row.
    pub fn has_epoch(&self) -> Result<bool, VaultError> {
        self.store
            .with_tx(false, |tx| Ok(tx.epoch_row(false)?.is_some()))
    }

    /// Make the database's epoch ready at start-up, and return it:
    ///
    /// - a vault without an epoch row (new, or from before rollback
    ///   detection), or with `adopt`: every record and audit row is sealed
    ///   as it is now, at the counter's value (created if missing), or 0
    ///   with no counter;
    /// - otherwise the whole check (`epoch.rs`), against the counter if
    ///   there is one, and an advance cut short is finished.
    pub fn prepare(
        &self,
        mut counter: Option<&mut dyn Counter>,
        adopt: bool,
    ) -> Result<i64, VaultError> {
        let key = self.key;
        let has_counter = counter.is_some();
        if has_counter {
            self.store.track_changes();
        }
        for _ in 0..5 {
            // The rows first, in a snapshot of their own: a long read does
            // not hold up other replicas.
            let scanned = if adopt || !self.has_epoch()? {
                None
            } else {
                Some(self.scan()?.0)
            };
            // Then under one lock, against the epoch row as the scan saw
            // it: replicas starting together on a new database seal it
            // once, and the others check what it sealed.
            let done = self.store.with_tx(true, |tx| {
                tx.lock_for_preparing()?;
                let raw = tx.epoch_row(true)?;
                let seen = raw.as_ref().map(|r| r.mac.clone());
                // Adopting takes the database whatever its epoch row says.
                let stored = match adopt {
                    true => None,
                    false => raw.map(|r| r.checked(key)).transpose()?,
                };
                let value = match counter.as_deref_mut() {
                    Some(c) => c.read()?,
                    None => None,
                };
                let verdict = match (&counter, adopt) {
                    (_, true) => Verdict::Fresh,
                    (None, false) if stored.is_none() => Verdict::Fresh,
                    (None, false) => Verdict::Current,
                    (Some(c), false) => epoch::compare(
                        stored.as_ref().map(|e| (e.epoch, e.confirmed)),
                        value,
                        &c.describe(),
                    )?,
                };
                match (verdict, stored, scanned) {
                    (Verdict::Fresh, ..) => {
                        let epoch = match counter.as_deref_mut() {
                            Some(c) => {
                                let v = match value {
                                    Some(v) => v,
                                    None => c.increment()?,
                                };
                                i64::try_from(v).map_err(|_| {
                                    VaultError::Epoch(format!("{} is beyond 2^63", c.describe()))
                                })?
                            }
                            None => 0,
                        };
                        self.seal_as_is(tx, epoch, has_counter && !adopt)?;
                        Ok(Some((epoch, false)))
                    }
                    // What the scan checked is what is there.
                    (verdict, Some(now), Some(checked))
                        if seen.as_deref() == Some(&checked[..]) =>
                    {
                        self.store.saw_epoch(now.epoch)?;
                        Ok(Some((now.epoch, verdict == Verdict::Open)))
                    }
                    // Another replica sealed or advanced it since: again.
                    _ => Ok(None),
                }
            })?;
            match done {
                Some((epoch, false)) => return Ok(epoch),
                Some((epoch, true)) => {
                    let c = counter.expect("only a counter leaves an epoch open");
                    return self.finish(c, epoch);
                }
                None => continue,
            }
        }
        Err(VaultError::Epoch(
            "the epoch kept moving while the database was checked; try again".into(),
        ))
    }

    /// Seal every record and audit row as it is, in the epoch before
    /// `epoch`, and start `epoch` (confirmed) with their sum.
    ///
    /// Only rows this vault wrote are taken: every record carries its MAC
    /// and it checks, or none carries one (a version 1 database, from
    /// before MACs: trust on first use). Records that carry MACs in a
    /// database without an epoch row had it removed (sealing and the
    /// epoch row commit together): with `refuse_sealed` (a counter, and
    /// no `--epoch-adopt`) that is refused.
    fn seal_as_is(
        &self,
        tx: &mut dyn Tx,
        epoch: i64,
        refuse_sealed: bool,
    ) -> Result<(), VaultError> {
        let key = self.key;
        let mut rows = Vec::new();
        each_record(tx, None, &mut |r| {
            rows.push(r);
            Ok(())
        })?;
        let with_mac = rows.iter().filter(|r| r.mac.is_some()).count();
        if with_mac > 0 {
            if let Some(r) = rows.iter().find(|r| r.mac.is_none()) {
                return Err(VaultError::Tampered(format!(
                    "record {} carries no MAC while other records do (its MAC was removed)",
                    super::server::audit_record(&r.user)
                )));
            }
            for r in &rows {
                r.checked_mac(key)?;
            }
            if refuse_sealed {
                return Err(VaultError::Epoch(format!(
                    "the epoch row is missing, but the database's {with_mac} records were sealed by this vault: it was removed; to take the database as it is now (accepting that guesses counted since it was last sealed may come back), start once with --epoch-adopt"
                )));
            }
        }
        let mut total = Sum::ZERO;
        for mut r in rows {
            r.stamp = epoch - 1;
            r.prev = None;
            let mac = key.row(&r.row());
            r.mac = Some(mac.0.to_vec());
            total.add(&mac.term());
            tx.update_record(&r)?;
        }
        tx.restamp_audit(epoch - 1)?;
        each_audit(tx, None, &mut |chain, seq, mac, _| {
            total.add(&key.audit(chain, audit_place(seq), mac, epoch - 1).term());
            Ok(())
        })?;
        tx.put_epoch_row(&EpochRow::new(key, epoch, true, &total))?;
        self.store.saw_epoch(epoch)
    }

    /// The whole check of the rows against the epoch row, in one
    /// snapshot: every MAC, and the sealed sum (`epoch.rs`). Returns the
    /// epoch row's MAC (which names it) and its epoch.
    fn scan(&self) -> Result<(Vec<u8>, i64), VaultError> {
        let key = self.key;
        self.store.with_tx(false, |tx| {
            let raw = tx
                .epoch_row(false)?
                .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?;
            let mac = raw.mac.clone();
            let e = raw.checked(key)?;
            let mut from_rows = Sum::ZERO;
            each_record(tx, None, &mut |r| {
                let mac = r.checked_mac(key)?;
                if r.stamp > e.epoch {
                    return Err(VaultError::Tampered(format!(
                        "record {} is stamped with a later epoch than the database's",
                        super::server::audit_record(&r.user)
                    )));
                }
                from_rows.add(&r.sealed_term(&mac, e.epoch));
                Ok(())
            })?;
            each_audit(tx, None, &mut |chain, seq, mac, stamp| {
                if stamp > e.epoch {
                    return Err(VaultError::Tampered(
                        "an audit row is stamped with a later epoch than the database's".into(),
                    ));
                }
                if stamp < e.epoch {
                    from_rows.add(&key.audit(chain, audit_place(seq), mac, stamp).term());
                }
                Ok(())
            })?;
            if from_rows != e.sealed {
                return Err(VaultError::Tampered(format!(
                    "the records and audit rows are not those sealed at epoch {}: one was removed (an audit chain's tail cut off?), added, or put back as an older copy of itself",
                    e.epoch
                )));
            }
            Ok((mac, e.epoch))
        })
    }

    /// The whole check without a counter (`vault audit verify`): the
    /// epoch, if the database has one.
    pub fn check(&self) -> Result<Option<i64>, VaultError> {
        if !self.has_epoch()? {
            return Ok(None);
        }
        self.scan().map(|(_, epoch)| Some(epoch))
    }

    /// Bring the counter to the open epoch `e` (one increment if it is
    /// one below) and confirm the epoch, in `tx`, which holds the epoch
    /// row: a failure anywhere leaves a state the next try finishes.
    fn confirm(
        &self,
        tx: &mut dyn Tx,
        counter: &mut dyn Counter,
        e: &Epoch,
    ) -> Result<(), VaultError> {
        let value = counter.read()?;
        match epoch::compare(Some((e.epoch, false)), value, &counter.describe())? {
            Verdict::Open => {}
            _ => unreachable!("compare on an open epoch gives Open or an error"),
        }
        if value.and_then(|v| i64::try_from(v).ok()) == Some(e.epoch - 1) {
            let v = counter.increment()?;
            if i64::try_from(v).ok() != Some(e.epoch) {
                return Err(VaultError::Epoch(format!(
                    "{} moved by itself (to {v}, expected {}): another writer?",
                    counter.describe(),
                    e.epoch
                )));
            }
        }
        tx.put_epoch_row(&EpochRow::new(self.key, e.epoch, true, &e.sealed))
    }

    /// Advance the epoch once, and return the new one, confirmed:
    ///
    /// 1. holding the epoch row, open epoch `E + 1`: its sealed sum is
    ///    epoch `E`'s, plus the change of every row stamped `E` (each MAC
    ///    checked), plus every audit row stamped `E`; commit;
    /// 2. holding it again, increment the counter from `E` to `E + 1`,
    ///    confirm `E + 1`, commit.
    ///
    /// An epoch left open by a failure is taken up at step 2.
    pub fn advance(&self, counter: &mut dyn Counter) -> Result<i64, VaultError> {
        let key = self.key;
        let next = self.store.with_tx(true, |tx| {
            let e = tx
                .epoch_row(true)?
                .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?
                .checked(key)?;
            self.store.saw_epoch(e.epoch)?;
            if !e.confirmed {
                return Ok(e.epoch);
            }
            epoch::compare(Some((e.epoch, true)), counter.read()?, &counter.describe())?;
            let mut sealed = e.sealed;
            // What this process changed in epoch E must be among the rows
            // sealed now, at the version it wrote or later.
            let mut mine: std::collections::HashMap<String, i64> = self
                .store
                .pending()
                .iter()
                .flatten()
                .filter(|(_, (stamp, _))| *stamp == e.epoch)
                .map(|(u, (_, v))| (u.clone(), *v))
                .collect();
            each_record(tx, Some(e.epoch), &mut |r| {
                let mac = r.checked_mac(key)?;
                sealed.add(&mac.term());
                if let Some(p) = r.row().prev {
                    sealed.sub(&p.term());
                }
                if mine.get(&r.user).is_some_and(|wrote| r.version >= *wrote) {
                    mine.remove(&r.user);
                }
                Ok(())
            })?;
            if let Some(user) = mine.keys().next() {
                return Err(VaultError::Tampered(format!(
                    "record {} is not as this server wrote it in epoch {} (put back under the running server?)",
                    super::server::audit_record(user),
                    e.epoch
                )));
            }
            each_audit(tx, Some(e.epoch), &mut |chain, seq, mac, stamp| {
                sealed.add(&key.audit(chain, audit_place(seq), mac, stamp).term());
                Ok(())
            })?;
            tx.put_epoch_row(&EpochRow::new(key, e.epoch + 1, false, &sealed))?;
            Ok(e.epoch + 1)
        })?;
        self.finish(counter, next)
    }

    /// Finish opening epoch `next`: first make the open epoch durable
    /// (a write whose commit PostgreSQL confirms replicated: an open epoch
    /// committed on a primary alone must not move the counter, or the
    /// promoted standby would be refused), then, holding the epoch row,
    /// bring the counter to it and confirm it. Returns the confirmed epoch
    /// (later, if another replica went on meanwhile).
    fn finish(&self, counter: &mut dyn Counter, next: i64) -> Result<i64, VaultError> {
        let key = self.key;
        let row = |tx: &mut dyn Tx| -> Result<Epoch, VaultError> {
            let e = tx
                .epoch_row(true)?
                .ok_or_else(|| VaultError::Tampered("the epoch row is missing".into()))?
                .checked(key)?;
            self.store.saw_epoch(e.epoch)?;
            if e.epoch < next {
                return Err(VaultError::Tampered(format!(
                    "the epoch went back from {next} to {} under an advance",
                    e.epoch
                )));
            }
            Ok(e)
        };
        self.store.with_tx(true, |tx| {
            let e = row(tx)?;
            if !e.confirmed {
                tx.put_epoch_row(&EpochRow::new(key, e.epoch, false, &e.sealed))?;
            }
            Ok(())
        })?;
        let confirmed = self.store.with_tx(true, |tx| {
            let e = row(tx)?;
            if !e.confirmed {
                self.confirm(tx, counter, &e)?;
            }
            Ok(e.epoch)
        })?;
        // Changes two epochs back are sealed for good.
        if let Some(p) = self.store.pending().as_mut() {
            p.retain(|_, (stamp, _)| *stamp + 2 > confirmed);
        }
        Ok(confirmed)
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

    /// A counter whose increments fail (after moving it, or before).
    struct Failing {
        inner: Fake,
        after: bool,
    }

    impl Counter for Failing {
        fn read(&mut self) -> Result<Option<u64>, VaultError> {
            self.inner.read()
        }
        fn increment(&mut self) -> Result<u64, VaultError> {
            if self.after {
                self.inner.increment()?;
            }
            Err(VaultError::Epoch("the TPM went away".into()))
        }
        fn describe(&self) -> String {
            "the failing counter".into()
        }
    }

    fn vault() -> (tempfile::TempDir, Store, StateKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("v.db")).unwrap();
        (dir, store, StateKey::derive(b"setup"))
    }

    /// The state of `store`, prepared at a new counter's first value.
    fn prepared<'s>(store: &'s Store, key: &'s StateKey) -> (State<'s>, Fake) {
        let state = State { store, key };
        let mut counter = Fake::default();
        assert_eq!(state.prepare(Some(&mut counter), false).unwrap(), 1);
        (state, counter)
    }

    #[test]
    fn failed_advances_never_lock_the_vault_out() {
        let (_d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.register("u", b"reg").unwrap();
        assert_eq!(state.advance(&mut counter).unwrap(), 2);
        // Increments that fail, after moving the counter or before, many
        // times over: every state left is finished by the next advance or
        // start.
        for (after, at_start) in [
            (true, true),
            (false, false),
            (true, false),
            (true, true),
            (false, true),
        ] {
            let mut failing = Failing {
                inner: counter.clone(),
                after,
            };
            assert!(state.advance(&mut failing).is_err());
            // Again: it fails, or, the counter moved already, finishes.
            let _ = state.advance(&mut failing);
            let e = if at_start {
                state.prepare(Some(&mut counter), false).unwrap()
            } else {
                state.advance(&mut counter).unwrap()
            };
            assert_eq!(Some(e as u64), counter.read().unwrap(), "finished");
            assert_eq!(state.check().unwrap(), Some(e));
        }
        let e = state.advance(&mut counter).unwrap();
        assert_eq!(Some(e as u64), counter.read().unwrap());
        state.login_start("u", 10).unwrap();
        state.advance(&mut counter).unwrap();
        assert_eq!(state.check().unwrap(), Some(e + 1));
    }

    #[test]
    fn a_counter_past_the_database_is_a_rollback_and_adopting_takes_it() {
        let (_d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.advance(&mut counter).unwrap();
        counter.increment().unwrap();
        let e = state.prepare(Some(&mut counter), false).unwrap_err();
        assert!(e.to_string().contains("rolled back"), "{e}");
        assert!(state.advance(&mut counter).is_err(), "nor advanced");
        assert_eq!(state.prepare(Some(&mut counter), true).unwrap(), 3);
        state.advance(&mut counter).unwrap();
    }

    /// `user`'s row as it is now, and a way to put it back.
    fn snapshot(dir: &std::path::Path, user: &str) -> impl Fn() {
        let conn = rusqlite::Connection::open(dir.join("v.db")).unwrap();
        type Row = (i64, i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);
        let row: Row = conn
            .query_row(
                "SELECT failed_guesses, stamp, version, prev, mac FROM records WHERE user_id = ?1",
                [user],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        let (path, user) = (dir.join("v.db"), user.to_owned());
        move || {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute(
                    "UPDATE records SET failed_guesses = ?2, stamp = ?3, version = ?4, prev = ?5, mac = ?6 WHERE user_id = ?1",
                    rusqlite::params![user, row.0, row.1, row.2, row.3, row.4],
                )
                .unwrap();
        }
    }

    /// A vault with record `u` sealed, `u` changed once, then put back
    /// as it was before the change (under the running server): what `then`
    /// says of it, which must fail.
    fn forked(then: impl FnOnce(&State<'_>, &mut Fake) -> Result<(), VaultError>) -> String {
        let (d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.register("u", b"reg").unwrap();
        state.advance(&mut counter).unwrap();
        let put_back = snapshot(d.path(), "u");
        state.login_start("u", 10).unwrap();
        put_back();
        then(&state, &mut counter)
            .expect_err("the older copy went through")
            .to_string()
    }

    #[test]
    fn a_record_put_back_under_the_running_server_is_caught() {
        // At the next change from the older copy.
        let e = forked(|state, _| state.login_start("u", 10).map(drop));
        assert!(e.contains("older version"), "{e}");
        // At the advance that would seal it.
        let e = forked(|state, counter| state.advance(counter).map(drop));
        assert!(e.contains("not as this server wrote it"), "{e}");
    }

    /// SQL run on the test vault's file, as someone who can write it.
    fn edit(dir: &std::path::Path, sql: &str) {
        rusqlite::Connection::open(dir.join("v.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }

    /// The test vault's store opened again, as at a restart.
    fn restarted(dir: &std::path::Path) -> Store {
        Store::open_sqlite(&dir.join("v.db")).unwrap()
    }

    #[test]
    fn copies_of_an_older_row_are_refused_though_they_cancel_in_the_sum() {
        let (d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.register("u", b"reg").unwrap();
        state.advance(&mut counter).unwrap();
        state.advance(&mut counter).unwrap();
        edit(d.path(), "CREATE TABLE kept AS SELECT * FROM records");
        for _ in 0..3 {
            state.login_start("u", 10).unwrap();
        }
        state.advance(&mut counter).unwrap();
        state.advance(&mut counter).unwrap();
        // The table rebuilt without its key, holding the current row once
        // and 2^16 copies of the older one: each lane of the sum is 16
        // bits, so the copies add nothing to it.
        edit(
            d.path(),
            "CREATE TABLE plain AS SELECT * FROM records; DROP TABLE records; \
             ALTER TABLE plain RENAME TO records; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 65536) \
             INSERT INTO records SELECT kept.* FROM kept, n; DROP TABLE kept;",
        );
        // A change under the running server finds more than one row.
        let e = state
            .login_start("u", 10)
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stored 65537 times"), "{e}");
        // At the next start, the scan finds the copies.
        let again = restarted(d.path());
        let state = State {
            store: &again,
            key: &key,
        };
        let e = state
            .prepare(Some(&mut counter), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stored more than once"), "{e}");
    }

    #[test]
    fn sealing_as_is_takes_no_edited_record_and_no_removed_epoch_row() {
        let (d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.register("u", b"reg").unwrap();
        state.register("v", b"reg").unwrap();
        for _ in 0..3 {
            state.login_start("u", 10).unwrap();
        }
        state.advance(&mut counter).unwrap();
        let start = |counter: Option<&mut dyn Counter>, adopt: bool| {
            let store = restarted(d.path());
            let state = State {
                store: &store,
                key: &key,
            };
            state.prepare(counter, adopt).map_err(|e| e.to_string())
        };
        // The epoch row removed, on a counter cleared with the TPM: that
        // takes --epoch-adopt, or an operator would never hear of it.
        edit(d.path(), "DELETE FROM epoch");
        let e = start(Some(&mut Fake::default()), false).unwrap_err();
        assert!(
            e.contains("the epoch row is missing") && e.contains("--epoch-adopt"),
            "{e}"
        );
        // A count reset as well: refused, adopting or not, with a counter
        // or none (sealed anew, it would have been taken as it is).
        edit(
            d.path(),
            "UPDATE records SET failed_guesses = 0 WHERE user_id = 'u'",
        );
        for (with_counter, adopt) in [(true, true), (false, false)] {
            let mut c = counter.clone();
            let c = with_counter.then_some(&mut c as &mut dyn Counter);
            let e = start(c, adopt).unwrap_err();
            assert!(e.contains("does not carry its MAC"), "{e}");
        }
        // Its MAC removed too, beside others that carry theirs: refused.
        edit(
            d.path(),
            "UPDATE records SET mac = NULL WHERE user_id = 'u'",
        );
        let e = start(Some(&mut counter.clone()), true).unwrap_err();
        assert!(e.contains("carries no MAC while other records do"), "{e}");
        // Every MAC removed: a version 1 database, taken on first use.
        edit(d.path(), "UPDATE records SET mac = NULL");
        start(Some(&mut counter.clone()), true).unwrap();
        assert_eq!(store.failed_guesses("u").unwrap(), Some(0));
    }

    #[test]
    fn changes_in_the_current_epoch_count_by_their_prev() {
        let (_d, store, key) = vault();
        let (state, mut counter) = prepared(&store, &key);
        state.register("u", b"reg").unwrap();
        state.advance(&mut counter).unwrap();
        // Changed twice in one epoch, then checked before it is sealed.
        state.login_start("u", 10).unwrap();
        let (_, w) = state.login_start("u", 10).unwrap();
        state.check().unwrap();
        state.advance(&mut counter).unwrap();
        state.check().unwrap();
        state.still_written(&w.unwrap()).unwrap();
        assert_eq!(store.failed_guesses("u").unwrap(), Some(2));
    }
}
