//! The vault's storage: OPAQUE records, guess counters, tombstones, and
//! the sealed server secrets. SQLite (WAL, `synchronous=FULL`); every guess
//! is counted in one `BEGIN IMMEDIATE` transaction, committed before the
//! server answers, so concurrent logins (threads or processes sharing the
//! file) cannot get past the limit.
//!
//! Must never: store anything that lets the server test a password
//! (OPAQUE records do not), or answer a login without the counted guess
//! having been committed first.

use super::VaultError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

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
    /// The record was destroyed (too many guesses, or deleted).
    Destroyed,
    /// No record for this user.
    Missing,
}

/// The vault database.
pub struct Store {
    conn: Mutex<Connection>,
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
        match version {
            None => {
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(db)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(VaultError::Store(format!(
                    "database schema version {v} is not one this build knows ({SCHEMA_VERSION})"
                )));
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sealed secret `name`, if stored.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, VaultError> {
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

    /// Store a new record. `false` if the user id is taken (or was
    /// destroyed: ids are never reused).
    pub fn register(&self, user: &str, registration: &[u8]) -> Result<bool, VaultError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO records (user_id, registration, failed_guesses, created) VALUES (?1, ?2, 0, ?3)",
                params![user, registration, now()],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Whether `user` has a record or tombstone.
    pub fn exists(&self, user: &str) -> Result<bool, VaultError> {
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

    /// Count one guess for `user`, durably, and return the record to answer
    /// with. When `max` guesses are already unrefunded the record is
    /// destroyed instead (a tombstone stays).
    pub fn login_start(&self, user: &str, max: u32) -> Result<LoginRecord, VaultError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let row: Option<(Option<Vec<u8>>, i64)> = tx
            .query_row(
                "SELECT registration, failed_guesses FROM records WHERE user_id = ?1",
                params![user],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)?;
        let out = match row {
            None => LoginRecord::Missing,
            Some((None, _)) => LoginRecord::Destroyed,
            Some((Some(_), failed)) if failed >= i64::from(max) => {
                tx.execute(
                    "UPDATE records SET registration = NULL, destroyed = ?2 WHERE user_id = ?1",
                    params![user, now()],
                )
                .map_err(db)?;
                LoginRecord::Destroyed
            }
            Some((Some(registration), failed)) => {
                tx.execute(
                    "UPDATE records SET failed_guesses = failed_guesses + 1 WHERE user_id = ?1",
                    params![user],
                )
                .map_err(db)?;
                LoginRecord::Found {
                    registration,
                    guesses_left: (i64::from(max) - failed - 1).max(0) as u32,
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// A valid login finish: refund every counted guess.
    pub fn login_succeeded(&self, user: &str) -> Result<(), VaultError> {
        self.conn()
            .execute(
                "UPDATE records SET failed_guesses = 0 WHERE user_id = ?1 AND registration IS NOT NULL",
                params![user],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Destroy `user`'s record, leaving a tombstone.
    pub fn destroy(&self, user: &str) -> Result<(), VaultError> {
        self.conn()
            .execute(
                "UPDATE records SET registration = NULL, destroyed = ?2 WHERE user_id = ?1",
                params![user, now()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Unrefunded guesses for `user` (for tests and operators).
    pub fn failed_guesses(&self, user: &str) -> Result<Option<u32>, VaultError> {
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
