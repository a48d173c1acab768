//! The vault's storage: OPAQUE records, guess counters, tombstones, and
//! the sealed server secrets, in one schema on two backends. SQLite (WAL,
//! `synchronous=FULL`): every guess is counted in one `BEGIN IMMEDIATE`
//! transaction. PostgreSQL (for several replicas): the record's row is
//! locked with `SELECT ... FOR UPDATE` in the counting transaction. Either
//! way the count is committed before the server answers, so concurrent
//! logins (threads, processes, replicas) cannot get past the limit.
//!
//! Must never: store anything that lets the server test a password
//! (OPAQUE records do not), or answer a login without the counted guess
//! having been committed first.

use super::VaultError;
use super::audit::Entry as AuditEntry;
use super::state::{AuditVisitor, EpochRow, Record, Tx};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Schema version this build writes: 2 adds the records' MACs, stamps
/// and prevs and the epoch tables (`epoch.rs`); a version 1 database is
/// migrated at start-up.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    user_id TEXT PRIMARY KEY,
    registration BLOB,
    failed_guesses INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    destroyed INTEGER
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state BLOB NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    record TEXT NOT NULL,
    outcome TEXT NOT NULL,
    guesses_left INTEGER,
    client TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE IF NOT EXISTS epoch (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    mac BLOB NOT NULL
);
";

/// Version 2's columns, added to version 1's tables: table, column, its
/// SQLite type, its PostgreSQL type.
const V2_COLUMNS: [(&str, &str, &str, &str); 5] = [
    (
        "records",
        "stamp",
        "INTEGER NOT NULL DEFAULT 0",
        "BIGINT NOT NULL DEFAULT 0",
    ),
    (
        "records",
        "version",
        "INTEGER NOT NULL DEFAULT 0",
        "BIGINT NOT NULL DEFAULT 0",
    ),
    ("records", "prev", "BLOB", "BYTEA"),
    ("records", "mac", "BLOB", "BYTEA"),
    (
        "audit_log",
        "stamp",
        "INTEGER NOT NULL DEFAULT 0",
        "BIGINT NOT NULL DEFAULT 0",
    ),
];

/// Version 2's indexes: an advance reads the rows stamped with the
/// current epoch.
const V2_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS records_stamp ON records (stamp);
CREATE INDEX IF NOT EXISTS audit_log_stamp ON audit_log (stamp);
";

/// What a login start found.
pub enum LoginRecord {
    /// The record, with the guesses left after the one just counted.
    Found {
        /// The OPAQUE server registration, serialized.
        registration: Vec<u8>,
        /// Guesses left if this one is wrong.
        guesses_left: u32,
    },
    /// The record was destroyed (too many guesses, or deleted) before.
    Destroyed,
    /// The record had no guess left: this request destroyed it.
    Exhausted,
    /// No record for this user.
    Missing,
}

/// What [`Store::take_session`] found.
#[derive(Debug)]
pub enum Taken {
    /// The session, now gone from the store: its user and sealed state.
    Live {
        /// The record the login is for.
        user: String,
        /// The sealed server login state.
        state: Vec<u8>,
    },
    /// The session was there but had expired (now gone too).
    Expired,
    /// No such session (never, already finished, or swept as expired).
    Missing,
}

const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    user_id TEXT PRIMARY KEY,
    registration BYTEA,
    failed_guesses BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    destroyed BIGINT
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    sealed BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state BYTEA NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    record TEXT NOT NULL,
    outcome TEXT NOT NULL,
    guesses_left BIGINT,
    client TEXT NOT NULL,
    mac BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE IF NOT EXISTS epoch (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    epoch BIGINT NOT NULL,
    confirmed BOOLEAN NOT NULL,
    sealed BYTEA NOT NULL,
    mac BYTEA NOT NULL
);
";

/// The vault database.
pub struct Store {
    db: Db,
    /// The highest epoch this process has seen (`state.rs`): the database
    /// is never accepted at a lower one while the server runs.
    epoch_seen: std::sync::atomic::AtomicI64,
    /// The records this process changed in epochs not yet sealed twice
    /// over, and the epoch and version it wrote (`state.rs`); kept only
    /// while a counter advances the epoch (else nothing would prune it).
    pending: Mutex<Option<Pending>>,
}

/// Records a process changed lately: user id to the epoch and version it
/// wrote (`Store::pending`).
pub(crate) type Pending = std::collections::HashMap<String, (i64, i64)>;

enum Db {
    /// A SQLite file.
    Sqlite(Mutex<Connection>),
    /// A PostgreSQL database, possibly shared by several replicas.
    Postgres(Box<Mutex<PgConn>>),
}

/// A PostgreSQL connection that reconnects after it was lost (its URL may
/// name a primary and its standbys, with `target_session_attrs=read-write`:
/// after a failover the next request finds the new primary), and that
/// notices a commit PostgreSQL made only locally.
pub struct PgConn {
    config: postgres::Config,
    client: postgres::Client,
    /// Set by a WARNING that a wait for synchronous replication was
    /// cancelled: the commit is local only.
    replication_cancelled: Arc<AtomicBool>,
    /// When a reconnection was last tried.
    last_attempt: Option<std::time::Instant>,
}

impl PgConn {
    fn connect(url: &str) -> Result<Self, VaultError> {
        let mut config: postgres::Config = url.parse().map_err(pg)?;
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        // Any WARNING fails the write it came with: the one that matters
        // ("canceling wait for synchronous replication", translated with
        // the server's lc_messages) is told by its untranslated severity.
        config.notice_callback(move |notice| {
            if notice.parsed_severity() == Some(postgres::error::Severity::Warning) {
                seen.store(true, Ordering::SeqCst);
            }
        });
        // A primary that vanishes without a reset (a machine dying) must
        // not hold the store for TCP's two hours: unless the URL says.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config
                .keepalives_idle(Duration::from_secs(30))
                .keepalives_interval(Duration::from_secs(10))
                .keepalives_retries(3);
        }
        let client = Self::open(&config)?;
        Ok(Self {
            config,
            client,
            replication_cancelled: flag,
            last_attempt: None,
        })
    }

    /// Fail a write whose commit came with a WARNING (a cancelled wait for
    /// the synchronous standby: the commit is local only); the flag is
    /// cleared each time the store is taken ([`Store::pg`]).
    fn confirm(&self) -> Result<(), VaultError> {
        if self.replication_cancelled.swap(false, Ordering::SeqCst) {
            return Err(VaultError::Store(
                "PostgreSQL committed with a warning (a cancelled wait for the synchronous standby, or another): the write may be on this server only; not answering".into(),
            ));
        }
        Ok(())
    }

    fn open(config: &postgres::Config) -> Result<postgres::Client, VaultError> {
        let mut client = config.connect(postgres::NoTls).map_err(pg)?;
        // Never time out while a commit waits for the standby; and wait
        // for it at least until it has the commit on disk.
        client
            .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
            .map_err(pg)?;
        let commit: String = client
            .query_one("SHOW synchronous_commit", &[])
            .map_err(pg)?
            .get(0);
        if matches!(commit.as_str(), "off" | "local" | "remote_write") {
            client
                .batch_execute("SET synchronous_commit = on")
                .map_err(pg)?;
        }
        Ok(client)
    }

    /// Reconnect if the connection was lost (at most once a second, so a
    /// database that is down is not hammered); if reconnecting fails, the
    /// next query reports it.
    fn ensure_open(&mut self) {
        let now = std::time::Instant::now();
        if self.client.is_closed()
            && self
                .last_attempt
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_attempt = Some(now);
            if let Ok(c) = Self::open(&self.config) {
                self.client = c;
            }
        }
    }
}

impl std::ops::Deref for PgConn {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

fn pg(e: postgres::Error) -> VaultError {
    VaultError::Store(format!("PostgreSQL: {e}"))
}

/// Whether a database of schema `version` needs version 2's columns.
fn check_version(version: Option<String>) -> Result<bool, VaultError> {
    match version.as_deref() {
        None | Some("1") => Ok(true),
        Some(v) if v == SCHEMA_VERSION.to_string() => Ok(false),
        Some(v) => Err(VaultError::Store(format!(
            "database schema version {v} is not one this build knows ({SCHEMA_VERSION})"
        ))),
    }
}

fn db(e: rusqlite::Error) -> VaultError {
    VaultError::Store(e.to_string())
}

fn now() -> i64 {
    crate::slot::now_unix() as i64
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Self, VaultError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        if check_version(version)? {
            for (table, name, sqlite, _) in V2_COLUMNS {
                let has: bool = conn
                    .query_row(
                        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                        params![table, name],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(db)?
                    > 0;
                if !has {
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {sqlite}"))
                        .map_err(db)?;
                }
            }
        }
        conn.execute_batch(V2_INDEXES).map_err(db)?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(db)?;
        Ok(Self::new(Db::Sqlite(Mutex::new(conn))))
    }

    /// Connect to PostgreSQL at `url` (`postgres://...`; TLS is not
    /// supported: keep the database on a private network or a socket) and
    /// create the schema if needed.
    pub fn open_postgres(url: &str) -> Result<Self, VaultError> {
        let mut client = PgConn::connect(url)?;
        let mut tx = client.transaction().map_err(pg)?;
        // Replicas starting together must not race on CREATE TABLE.
        tx.execute("SELECT pg_advisory_xact_lock(7307206)", &[])
            .map_err(pg)?;
        tx.batch_execute(PG_SCHEMA).map_err(pg)?;
        let version: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema'", &[])
            .map_err(pg)?
            .map(|r| r.get(0));
        if check_version(version)? {
            for (table, name, _, postgres) in V2_COLUMNS {
                tx.batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {postgres}"
                ))
                .map_err(pg)?;
            }
        }
        tx.batch_execute(V2_INDEXES).map_err(pg)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(pg)?;
        tx.commit().map_err(pg)?;
        Ok(Self::new(Db::Postgres(Box::new(Mutex::new(client)))))
    }

    /// Open `sqlite:PATH`, `postgres://...` or a bare path to read only:
    /// no file, schema or row is created (`vault audit verify`; also on a
    /// read-only standby or with a role that may only read).
    pub fn open_read_only(url: &str) -> Result<Self, VaultError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut client = PgConn::connect(url)?;
            client
                .batch_execute("SET default_transaction_read_only = on")
                .map_err(pg)?;
            return Ok(Self::new(Db::Postgres(Box::new(Mutex::new(client)))));
        }
        let path = Path::new(url.strip_prefix("sqlite:").unwrap_or(url));
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| VaultError::Store(format!("{}: {e}", path.display())))?;
        Ok(Self::new(Db::Sqlite(Mutex::new(conn))))
    }

    fn new(db: Db) -> Self {
        Self {
            db,
            epoch_seen: std::sync::atomic::AtomicI64::new(i64::MIN),
            pending: Mutex::default(),
        }
    }

    /// The records this process changed lately (`state.rs`): `None`
    /// unless [`Store::track_changes`] was called.
    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the records this process changes until their epoch is sealed
    /// twice over (a counter advances the epoch).
    pub(crate) fn track_changes(&self) {
        self.pending().get_or_insert_default();
    }

    /// Note that the database was seen at `epoch`; an error if this
    /// process saw it at a later one before (a stale epoch row put back
    /// while the server runs: nothing is answered from it).
    ///
    /// An open epoch counts as much as a confirmed one. (Counting it as
    /// the one before would let a stale row of that epoch be put back
    /// under a server at rest, and a change stamped in it escape both
    /// advances' checks.) The cost: after a failover that lost an epoch
    /// the old primary had opened, a server that saw it refuses changes
    /// until it is restarted (docs/backends/vault.md).
    pub(crate) fn saw_epoch(&self, epoch: i64) -> Result<(), VaultError> {
        let before = self.epoch_seen.fetch_max(epoch, Ordering::SeqCst);
        if epoch < before {
            return Err(VaultError::Tampered(format!(
                "the database's epoch went back from {before} to {epoch} while the server ran (a stale epoch row put back?)"
            )));
        }
        Ok(())
    }

    /// Run `f` in one transaction (`write`: one that may write, holding
    /// SQLite's write lock from the start; otherwise a consistent
    /// read-only snapshot), and commit. On PostgreSQL, a commit that came
    /// with a WARNING fails (`PgConn::confirm`).
    pub(crate) fn with_tx<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        if let Some(mut c) = self.pg() {
            // A write sees what others committed before each statement
            // (an advance sums the rows stamped so far); a read is one
            // snapshot.
            let b = if write {
                c.build_transaction()
                    .isolation_level(postgres::IsolationLevel::ReadCommitted)
            } else {
                c.build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
            };
            let out = {
                let mut tx = PgTx {
                    tx: b.start().map_err(pg)?,
                    write,
                };
                let out = f(&mut tx)?;
                tx.tx.commit().map_err(pg)?;
                out
            };
            c.confirm()?;
            return Ok(out);
        }
        let mut conn = self.conn();
        let behavior = if write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let mut tx = SqliteTx(conn.transaction_with_behavior(behavior).map_err(db)?);
        let out = f(&mut tx)?;
        tx.0.commit().map_err(db)?;
        Ok(out)
    }

    /// Open `sqlite:PATH`, `postgres://...`, or a bare path (SQLite).
    pub fn open(url: &str) -> Result<Self, VaultError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url)
        } else {
            Self::open_sqlite(Path::new(url.strip_prefix("sqlite:").unwrap_or(url)))
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.db {
            Db::Sqlite(c) => c.lock().unwrap_or_else(|p| p.into_inner()),
            Db::Postgres(_) => unreachable!("sqlite only"),
        }
    }

    fn pg(&self) -> Option<std::sync::MutexGuard<'_, PgConn>> {
        match &self.db {
            Db::Postgres(c) => {
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                c.ensure_open();
                c.replication_cancelled.store(false, Ordering::SeqCst);
                Some(c)
            }
            Db::Sqlite(_) => None,
        }
    }

    /// Whether a PostgreSQL database is replicated as a guess limit needs:
    /// `None` when it is (or for SQLite), else what is missing, for the
    /// operator to hear at start-up.
    pub fn replication_warning(&self) -> Result<Option<String>, VaultError> {
        let Some(mut c) = self.pg() else {
            return Ok(None);
        };
        let show = |c: &mut PgConn, what: &str| -> Result<String, VaultError> {
            Ok(c.query_one(&format!("SHOW {what}"), &[])
                .map_err(pg)?
                .get(0))
        };
        // (synchronous_commit needs no check: every connection raises a
        // weaker one to `on`, PgConn::open.)
        let names = show(&mut c, "synchronous_standby_names")?;
        // sync_state is NULL to a role without pg_read_all_stats: then
        // nothing is said about it.
        let (sync, hidden): (i64, i64) = c
            .query_one(
                "SELECT count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')), count(*) FILTER (WHERE sync_state IS NULL) FROM pg_stat_replication",
                &[],
            )
            .map_err(pg)
            .map(|r| (r.get(0), r.get(1)))?;
        Ok(if names.trim().is_empty() {
            Some("the database is not synchronously replicated (synchronous_standby_names is empty): a failover to a standby can lose charged guesses, giving them back to a guesser".into())
        } else if sync == 0 && hidden == 0 {
            Some(format!(
                "no synchronous standby is connected (synchronous_standby_names = `{names}`): every login start will wait until one is"
            ))
        } else {
            None
        })
    }

    /// The sealed secret `name`, if stored.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
        if let Some(mut c) = self.pg() {
            return c
                .query_opt("SELECT sealed FROM secrets WHERE name = $1", &[&name])
                .map(|r| r.map(|r| r.get(0)))
                .map_err(pg);
        }
        self.conn()
            .query_row(
                "SELECT sealed FROM secrets WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// Store `sealed` as `name` unless one is there already; returns what
    /// is stored afterwards (another replica may have won the race).
    pub fn put_secret_once(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if let Some(mut c) = self.pg() {
            c.execute(
                "INSERT INTO secrets (name, sealed) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &sealed],
            )
            .map_err(pg)?;
            return c
                .query_one("SELECT sealed FROM secrets WHERE name = $1", &[&name])
                .map(|r| r.get(0))
                .map_err(pg);
        }
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO secrets (name, sealed) VALUES (?1, ?2)",
            params![name, sealed],
        )
        .map_err(db)?;
        conn.query_row(
            "SELECT sealed FROM secrets WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .map_err(db)
    }

    /// Whether `user` has a record or tombstone.
    pub fn exists(&self, user: &str) -> Result<bool, VaultError> {
        if let Some(mut c) = self.pg() {
            return c
                .query_opt("SELECT 1 FROM records WHERE user_id = $1", &[&user])
                .map(|r| r.is_some())
                .map_err(pg);
        }
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE user_id = ?1",
                params![user],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    /// Keep a login's sealed server state until `expires` (Unix seconds),
    /// dropping expired ones. Returns how many expired ones were dropped.
    pub fn put_session(
        &self,
        id: &str,
        user: &str,
        state: &[u8],
        expires: i64,
    ) -> Result<u64, VaultError> {
        if let Some(mut c) = self.pg() {
            let swept = c
                .execute("DELETE FROM sessions WHERE expires < $1", &[&now()])
                .map_err(pg)?;
            c.execute(
                "INSERT INTO sessions (id, user_id, state, expires) VALUES ($1, $2, $3, $4)",
                &[&id, &user, &state, &expires],
            )
            .map_err(pg)?;
            c.confirm()?;
            return Ok(swept);
        }
        let conn = self.conn();
        let swept = conn
            .execute("DELETE FROM sessions WHERE expires < ?1", params![now()])
            .map_err(db)?;
        conn.execute(
            "INSERT INTO sessions (id, user_id, state, expires) VALUES (?1, ?2, ?3, ?4)",
            params![id, user, state, expires],
        )
        .map_err(db)?;
        Ok(swept as u64)
    }

    /// Take (delete and return) the login state `id` if it has not
    /// expired. Atomic, so a finish is accepted once even when replayed to
    /// several replicas at once.
    pub fn take_session(&self, id: &str) -> Result<Taken, VaultError> {
        let row = if let Some(mut c) = self.pg() {
            c.query_opt(
                "DELETE FROM sessions WHERE id = $1 RETURNING user_id, state, expires",
                &[&id],
            )
            .map_err(pg)?
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2)))
        } else {
            self.conn()
                .query_row(
                    "DELETE FROM sessions WHERE id = ?1 RETURNING user_id, state, expires",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?)),
                )
                .optional()
                .map_err(db)?
        };
        Ok(match row {
            None => Taken::Missing,
            Some((_, _, expires)) if expires < now() => Taken::Expired,
            Some((user, state, _)) => Taken::Live { user, state },
        })
    }

    /// Every audit row with its MAC, ordered by chain and place, passed to
    /// `f` one at a time (the table is never held in memory). Stops at
    /// `f`'s first error, which is returned inside the `Ok`.
    pub fn each_audit_row<E>(
        &self,
        mut f: impl FnMut(AuditEntry, Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<(), E>, VaultError> {
        const Q: &str = "SELECT chain, seq, at, event, record, outcome, guesses_left, client, mac FROM audit_log ORDER BY chain, seq";
        // A negative place, or guesses beyond u32, cannot have been
        // written by coffer: make them fail the check, not the read.
        let place = |seq: i64| u64::try_from(seq).unwrap_or(u64::MAX);
        let guesses = |g: Option<i64>| g.map(|g| u32::try_from(g).unwrap_or(u32::MAX));
        if let Some(mut c) = self.pg() {
            use postgres::fallible_iterator::FallibleIterator;
            let no_params: [&(dyn postgres::types::ToSql + Sync); 0] = [];
            let mut rows = c.query_raw(Q, no_params).map_err(pg)?;
            while let Some(r) = rows.next().map_err(pg)? {
                let e = AuditEntry {
                    chain: r.get(0),
                    seq: place(r.get(1)),
                    at: r.get(2),
                    event: r.get(3),
                    record: r.get(4),
                    outcome: r.get(5),
                    guesses_left: guesses(r.get(6)),
                    client: r.get(7),
                };
                if let Err(stop) = f(e, r.get(8)) {
                    return Ok(Err(stop));
                }
            }
            return Ok(Ok(()));
        }
        let conn = self.conn();
        let mut stmt = conn.prepare(Q).map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let e = AuditEntry {
                chain: r.get(0).map_err(db)?,
                seq: place(r.get(1).map_err(db)?),
                at: r.get(2).map_err(db)?,
                event: r.get(3).map_err(db)?,
                record: r.get(4).map_err(db)?,
                outcome: r.get(5).map_err(db)?,
                guesses_left: guesses(r.get(6).map_err(db)?),
                client: r.get(7).map_err(db)?,
            };
            if let Err(stop) = f(e, r.get(8).map_err(db)?) {
                return Ok(Err(stop));
            }
        }
        Ok(Ok(()))
    }

    /// Code the database would run on the vault's own tables: triggers,
    /// views, rules, row-level security. None of it is the vault's; it
    /// could rewrite rows inside the server's own transactions, so the
    /// server refuses to start on such a database (`state.rs`).
    pub fn foreign_objects(&self) -> Result<Vec<String>, VaultError> {
        const TABLES: &str = "('records', 'epoch', 'audit_log', 'secrets', 'sessions', 'meta')";
        if let Some(mut c) = self.pg() {
            let q = format!(
                "SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 WHERE c.relname IN {TABLES} AND NOT t.tgisinternal \
                 UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE tablename IN {TABLES} \
                 UNION ALL SELECT 'row security on ' || relname FROM pg_class \
                 WHERE relname IN {TABLES} AND (relrowsecurity OR relforcerowsecurity) \
                 UNION ALL SELECT 'view ' || viewname FROM pg_views WHERE viewname IN {TABLES}"
            );
            return c
                .query(&q, &[])
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .map_err(pg);
        }
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT type || ' ' || name FROM sqlite_master WHERE type IN ('trigger', 'view')",
            )
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db)
    }

    /// Whether the database answers (`/healthz`): a read of a real row,
    /// so SQLite touches its file.
    pub fn ping(&self) -> Result<(), VaultError> {
        const Q: &str = "SELECT value FROM meta WHERE key = 'schema'";
        if let Some(mut c) = self.pg() {
            return c.query_one(Q, &[]).map(drop).map_err(pg);
        }
        self.conn().query_row(Q, [], |_| Ok(())).map_err(db)
    }

    /// Unrefunded guesses for `user` (for tests and operators).
    pub fn failed_guesses(&self, user: &str) -> Result<Option<u32>, VaultError> {
        if let Some(mut c) = self.pg() {
            return c
                .query_opt(
                    "SELECT failed_guesses FROM records WHERE user_id = $1",
                    &[&user],
                )
                .map(|r| r.map(|r| r.get::<_, i64>(0) as u32))
                .map_err(pg);
        }
        self.conn()
            .query_row(
                "SELECT failed_guesses FROM records WHERE user_id = ?1",
                params![user],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|n| n as u32))
            .map_err(db)
    }
}

const RECORD: &str =
    "user_id, registration, failed_guesses, created, destroyed, stamp, version, prev, mac";

/// An update of `user`'s record must change exactly one row: the table's
/// key keeps ids unique, and a table rebuilt without it could hold copies
/// of one record (copies that the multiset sum of `epoch.rs` counts only
/// modulo 2^16).
fn one_row(changed: u64, user: &str) -> Result<(), VaultError> {
    match changed {
        1 => Ok(()),
        0 => Err(VaultError::Tampered(format!(
            "record {} vanished under a change",
            super::server::audit_record(user)
        ))),
        n => Err(VaultError::Tampered(format!(
            "record {} is stored {n} times (its table has lost its key)",
            super::server::audit_record(user)
        ))),
    }
}

/// The epoch row, of at most one (a table rebuilt without its key could
/// hold two).
fn one_epoch_row(mut rows: Vec<EpochRow>) -> Result<Option<EpochRow>, VaultError> {
    match rows.len() {
        0 | 1 => Ok(rows.pop()),
        _ => Err(VaultError::Tampered(
            "the epoch table holds more than one row (it has lost its key)".into(),
        )),
    }
}

/// `WHERE stamp = …` for a row filter, with the placeholder given.
fn stamped(stamp: Option<i64>, placeholder: &str) -> String {
    match stamp {
        Some(_) => format!(" WHERE stamp = {placeholder}"),
        None => String::new(),
    }
}

/// A transaction on SQLite.
struct SqliteTx<'c>(rusqlite::Transaction<'c>);

fn sqlite_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        user: r.get(0)?,
        registration: r.get(1)?,
        failed: r.get(2)?,
        created: r.get(3)?,
        destroyed: r.get(4)?,
        stamp: r.get(5)?,
        version: r.get(6)?,
        prev: r.get(7)?,
        mac: r.get(8)?,
    })
}

impl Tx for SqliteTx<'_> {
    fn epoch_row(&mut self, _exclusive: bool) -> Result<Option<EpochRow>, VaultError> {
        // A write transaction holds SQLite's one write lock already.
        let mut stmt = self
            .0
            .prepare("SELECT epoch, confirmed, sealed, mac FROM epoch WHERE id = 0 LIMIT 2")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EpochRow {
                    epoch: r.get(0)?,
                    confirmed: r.get::<_, i64>(1)? != 0,
                    sealed: r.get(2)?,
                    mac: r.get(3)?,
                })
            })
            .map_err(db)?;
        one_epoch_row(rows.collect::<rusqlite::Result<_>>().map_err(db)?)
    }

    fn put_epoch_row(&mut self, e: &EpochRow) -> Result<(), VaultError> {
        self.0
            .execute(
                "INSERT OR REPLACE INTO epoch (id, epoch, confirmed, sealed, mac) VALUES (0, ?1, ?2, ?3, ?4)",
                params![e.epoch, i64::from(e.confirmed), e.sealed, e.mac],
            )
            .map(drop)
            .map_err(db)
    }

    fn record(&mut self, user: &str) -> Result<Option<Record>, VaultError> {
        self.0
            .query_row(
                &format!("SELECT {RECORD} FROM records WHERE user_id = ?1"),
                params![user],
                sqlite_record,
            )
            .optional()
            .map_err(db)
    }

    fn insert_record(&mut self, r: &Record) -> Result<bool, VaultError> {
        self.0
            .execute(
                &format!("INSERT OR IGNORE INTO records ({RECORD}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![r.user, r.registration, r.failed, r.created, r.destroyed, r.stamp, r.version, r.prev, r.mac],
            )
            .map(|n| n == 1)
            .map_err(db)
    }

    fn update_record(&mut self, r: &Record) -> Result<(), VaultError> {
        self.0
            .execute(
                "UPDATE records SET registration = ?2, failed_guesses = ?3, destroyed = ?4, stamp = ?5, version = ?6, prev = ?7, mac = ?8 WHERE user_id = ?1",
                params![r.user, r.registration, r.failed, r.destroyed, r.stamp, r.version, r.prev, r.mac],
            )
            .map_err(db)
            .and_then(|n| one_row(n as u64, &r.user))
    }

    fn lock_for_preparing(&mut self) -> Result<(), VaultError> {
        // A write transaction holds SQLite's one write lock already.
        Ok(())
    }

    fn insert_audit(&mut self, e: &AuditEntry, mac: &[u8], stamp: i64) -> Result<(), VaultError> {
        let seq = audit_seq(e)?;
        let guesses = e.guesses_left.map(i64::from);
        self.0
            .execute(
                "INSERT INTO audit_log (chain, seq, at, event, record, outcome, guesses_left, client, mac, stamp) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![e.chain, seq, e.at, e.event, e.record, e.outcome, guesses, e.client, mac, stamp],
            )
            .map(drop)
            .map_err(db)
    }

    fn each_audit(
        &mut self,
        stamp: Option<i64>,
        f: &mut AuditVisitor<'_>,
    ) -> Result<(), VaultError> {
        let q = format!(
            "SELECT chain, seq, mac, stamp FROM audit_log{} ORDER BY chain COLLATE BINARY, seq",
            stamped(stamp, "?1")
        );
        self.each_row(&q, stamp, &mut |r| {
            let (chain, seq, mac, stamp): (String, i64, Vec<u8>, i64) = (
                r.get(0).map_err(db)?,
                r.get(1).map_err(db)?,
                r.get(2).map_err(db)?,
                r.get(3).map_err(db)?,
            );
            f(&chain, seq, &mac, stamp)
        })
    }

    fn restamp_audit(&mut self, stamp: i64) -> Result<(), VaultError> {
        self.0
            .execute("UPDATE audit_log SET stamp = ?1", params![stamp])
            .map(drop)
            .map_err(db)
    }

    fn each_record(
        &mut self,
        stamp: Option<i64>,
        f: &mut dyn FnMut(Record) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let q = format!(
            "SELECT {RECORD} FROM records{} ORDER BY user_id COLLATE BINARY",
            stamped(stamp, "?1")
        );
        self.each_row(&q, stamp, &mut |r| f(sqlite_record(r).map_err(db)?))
    }
}

impl SqliteTx<'_> {
    /// Every row `query` returns (with `stamp` as its one parameter, if
    /// given), in turn.
    fn each_row(
        &mut self,
        query: &str,
        stamp: Option<i64>,
        f: &mut dyn FnMut(&rusqlite::Row<'_>) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let mut stmt = self.0.prepare(query).map_err(db)?;
        let mut rows = match stamp {
            Some(s) => stmt.query(params![s]),
            None => stmt.query([]),
        }
        .map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            f(r)?;
        }
        Ok(())
    }
}

/// An audit row's place as stored.
fn audit_seq(e: &AuditEntry) -> Result<i64, VaultError> {
    i64::try_from(e.seq).map_err(|_| VaultError::Store("audit chain full".into()))
}

/// A transaction on PostgreSQL.
struct PgTx<'c> {
    tx: postgres::Transaction<'c>,
    write: bool,
}

fn pg_record(r: &postgres::Row) -> Record {
    Record {
        user: r.get(0),
        registration: r.get(1),
        failed: r.get(2),
        created: r.get(3),
        destroyed: r.get(4),
        stamp: r.get(5),
        version: r.get(6),
        prev: r.get(7),
        mac: r.get(8),
    }
}

impl PgTx<'_> {
    /// Every row `query` returns (with `stamp` as its one parameter, if
    /// given), streamed: a large table is never held in memory.
    fn each_row(
        &mut self,
        query: &str,
        stamp: Option<i64>,
        f: &mut dyn FnMut(&postgres::Row) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        use postgres::fallible_iterator::FallibleIterator;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = match &stamp {
            Some(s) => vec![s],
            None => Vec::new(),
        };
        let mut rows = self.tx.query_raw(query, params).map_err(pg)?;
        while let Some(r) = rows.next().map_err(pg)? {
            f(&r)?;
        }
        Ok(())
    }
}

impl Tx for PgTx<'_> {
    fn epoch_row(&mut self, exclusive: bool) -> Result<Option<EpochRow>, VaultError> {
        // Shared by every change, taken alone by an advance: no change is
        // in flight while the epoch moves (`state.rs`). A read-only
        // snapshot locks nothing.
        let lock = match (self.write, exclusive) {
            (false, _) => "",
            (true, false) => " FOR SHARE",
            (true, true) => " FOR UPDATE",
        };
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT epoch, confirmed, sealed, mac FROM epoch WHERE id = 0 LIMIT 2{lock}"
                ),
                &[],
            )
            .map_err(pg)?;
        one_epoch_row(
            rows.iter()
                .map(|r| EpochRow {
                    epoch: r.get(0),
                    confirmed: r.get(1),
                    sealed: r.get(2),
                    mac: r.get(3),
                })
                .collect(),
        )
    }

    fn put_epoch_row(&mut self, e: &EpochRow) -> Result<(), VaultError> {
        self.tx
            .execute(
                "INSERT INTO epoch (id, epoch, confirmed, sealed, mac) VALUES (0, $1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET epoch = $1, confirmed = $2, sealed = $3, mac = $4",
                &[&e.epoch, &e.confirmed, &e.sealed, &e.mac],
            )
            .map(drop)
            .map_err(pg)
    }

    fn record(&mut self, user: &str) -> Result<Option<Record>, VaultError> {
        let lock = if self.write { " FOR UPDATE" } else { "" };
        self.tx
            .query_opt(
                &format!("SELECT {RECORD} FROM records WHERE user_id = $1{lock}"),
                &[&user],
            )
            .map(|r| r.as_ref().map(pg_record))
            .map_err(pg)
    }

    fn insert_record(&mut self, r: &Record) -> Result<bool, VaultError> {
        self.tx
            .execute(
                &format!("INSERT INTO records ({RECORD}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING"),
                &[&r.user, &r.registration, &r.failed, &r.created, &r.destroyed, &r.stamp, &r.version, &r.prev, &r.mac],
            )
            .map(|n| n == 1)
            .map_err(pg)
    }

    fn update_record(&mut self, r: &Record) -> Result<(), VaultError> {
        self.tx
            .execute(
                "UPDATE records SET registration = $2, failed_guesses = $3, destroyed = $4, stamp = $5, version = $6, prev = $7, mac = $8 WHERE user_id = $1",
                &[&r.user, &r.registration, &r.failed, &r.destroyed, &r.stamp, &r.version, &r.prev, &r.mac],
            )
            .map_err(pg)
            .and_then(|n| one_row(n, &r.user))
    }

    fn lock_for_preparing(&mut self) -> Result<(), VaultError> {
        self.tx
            .execute("SELECT pg_advisory_xact_lock(7307207)", &[])
            .map(drop)
            .map_err(pg)
    }

    fn insert_audit(&mut self, e: &AuditEntry, mac: &[u8], stamp: i64) -> Result<(), VaultError> {
        let seq = audit_seq(e)?;
        let guesses = e.guesses_left.map(i64::from);
        self.tx
            .execute(
                "INSERT INTO audit_log (chain, seq, at, event, record, outcome, guesses_left, client, mac, stamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[&e.chain, &seq, &e.at, &e.event, &e.record, &e.outcome, &guesses, &e.client, &mac, &stamp],
            )
            .map(drop)
            .map_err(pg)
    }

    fn each_audit(
        &mut self,
        stamp: Option<i64>,
        f: &mut AuditVisitor<'_>,
    ) -> Result<(), VaultError> {
        let q = format!(
            "SELECT chain, seq, mac, stamp FROM audit_log{} ORDER BY chain COLLATE \"C\", seq",
            stamped(stamp, "$1")
        );
        self.each_row(&q, stamp, &mut |r| {
            let (chain, mac): (String, Vec<u8>) = (r.get(0), r.get(2));
            f(&chain, r.get(1), &mac, r.get(3))
        })
    }

    fn restamp_audit(&mut self, stamp: i64) -> Result<(), VaultError> {
        self.tx
            .execute("UPDATE audit_log SET stamp = $1", &[&stamp])
            .map(drop)
            .map_err(pg)
    }

    fn each_record(
        &mut self,
        stamp: Option<i64>,
        f: &mut dyn FnMut(Record) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let q = format!(
            "SELECT {RECORD} FROM records{} ORDER BY user_id COLLATE \"C\"",
            stamped(stamp, "$1")
        );
        self.each_row(&q, stamp, &mut |r| f(pg_record(r)))
    }
}
