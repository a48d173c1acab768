//! The vault's tamper-evident audit table, `audit_log`: every audited
//! request (registration start and finish, login start and finish,
//! deletion) is a row, chained to the one before it by an HMAC under a key
//! derived from the server setup, which only the HSM unseals.
//!
//! One chain per server process ("replica"): each starts its own, with a
//! random id, at start-up and again after any row it could not store, so
//! replicas never serialise on one another; within a process, rows are
//! appended in order under one lock.
//!
//! What a check ([`verify`]) detects, for someone who can write the
//! database but not use the HSM: a row altered, inserted, reordered or
//! removed from within a chain, and a chain that does not start at 0. A
//! chain's tail cut off, or a whole chain removed, it cannot see alone:
//! every row is also a term of the sum sealed with the epoch (`epoch.rs`),
//! which does, for the rows that were in the table when an advance sealed
//! their epoch.
//!
//! Owns: the row's canonical encoding and its MAC.
//!
//! Must never: hold a password, an OPAQUE message, a session id or a key
//! in a row (the same fields as the audit log lines).

use crate::key::{HmacSha256, label};
use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The chain it belongs to (one of a server process's): 16 hex digits.
    pub chain: String,
    /// Its place in the chain, from 0.
    pub seq: u64,
    /// When it was answered, Unix seconds.
    pub at: i64,
    /// `register_start`, `register_finish`, `login_start`, `login_finish`
    /// or `delete`.
    pub event: String,
    /// The record's id, hashed (`server::audit_record`), or `-`.
    pub record: String,
    /// `ok`, or the error code the client got.
    pub outcome: String,
    /// Guesses left, on an answered login start.
    pub guesses_left: Option<u32>,
    /// The client's IP address, or `-`.
    pub client: String,
}

/// The chain key.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl AuditKey {
    /// Derived from the unsealed server setup.
    pub fn derive(setup: &[u8]) -> Self {
        let k = crate::key::Kek::derive(None, setup, label::VAULT_AUDIT_CHAIN);
        Self(Zeroizing::new(*k.expose()))
    }

    /// HMAC(key, label ‖ prev ‖ the row's fields, each length-prefixed).
    pub fn mac(&self, prev: &[u8; 32], e: &Entry) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&*self.0).expect("any key length");
        let field = |m: &mut HmacSha256, b: &[u8]| {
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        };
        field(&mut m, label::VAULT_AUDIT_ROW);
        m.update(prev);
        field(&mut m, e.chain.as_bytes());
        m.update(&e.seq.to_be_bytes());
        m.update(&e.at.to_be_bytes());
        field(&mut m, e.event.as_bytes());
        field(&mut m, e.record.as_bytes());
        field(&mut m, e.outcome.as_bytes());
        match e.guesses_left {
            None => m.update(&[0]),
            Some(g) => {
                m.update(&[1]);
                m.update(&u64::from(g).to_be_bytes());
            }
        }
        field(&mut m, e.client.as_bytes());
        m.finalize().into_bytes().into()
    }
}

/// The chain this process appends to.
pub struct Chain {
    id: String,
    next: u64,
    prev: [u8; 32],
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A new chain with a random id.
    pub fn new() -> Self {
        let mut id = [0u8; 8];
        crate::key::random_bytes(&mut id);
        Self {
            id: hex::encode(id),
            next: 0,
            prev: [0; 32],
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next row's place.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The MAC of `e` (which must carry this chain's id and next place)
    /// after the last row appended.
    pub fn mac(&self, key: &AuditKey, e: &Entry) -> [u8; 32] {
        key.mac(&self.prev, e)
    }

    /// `mac` was stored: it is the one the next row follows.
    pub fn appended(&mut self, mac: [u8; 32]) {
        self.prev = mac;
        self.next += 1;
    }
}

/// What [`verify`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Chains seen.
    pub chains: usize,
    /// Rows checked.
    pub entries: u64,
}

/// The first row that does not check, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// Its chain.
    pub chain: String,
    /// Its place, as stored.
    pub seq: u64,
    /// What is wrong.
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit chain {} breaks at entry {}: {}",
            self.chain, self.seq, self.why
        )
    }
}

/// Checks rows one at a time, in the order of the table (by chain, then
/// place): each chain starts at 0, has no gap, and every MAC follows from
/// the one before.
pub struct Verifier<'k> {
    key: &'k AuditKey,
    checked: Checked,
    /// The chain being checked: its id, next place and last MAC.
    current: Option<(String, u64, [u8; 32])>,
}

impl<'k> Verifier<'k> {
    /// A check under `key`.
    pub fn new(key: &'k AuditKey) -> Self {
        Self {
            key,
            checked: Checked::default(),
            current: None,
        }
    }

    /// Check the next row.
    pub fn push(&mut self, e: Entry, mac: &[u8]) -> Result<(), Broken> {
        let (next, prev) = match &self.current {
            Some((chain, next, prev)) if *chain == e.chain => (*next, *prev),
            _ => {
                self.checked.chains += 1;
                (0, [0; 32])
            }
        };
        let broken = |why: &str| Broken {
            chain: e.chain.clone(),
            seq: e.seq,
            why: why.to_owned(),
        };
        if e.seq != next {
            return Err(broken(&format!(
                "expected entry {next} (entries removed, or the chain's start)"
            )));
        }
        let want = self.key.mac(&prev, &e);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], mac)) {
            return Err(broken(
                "its MAC does not match (it, or an entry before it, was altered)",
            ));
        }
        self.checked.entries += 1;
        self.current = Some((e.chain, next + 1, want));
        Ok(())
    }

    /// What was checked.
    pub fn finish(self) -> Checked {
        self.checked
    }
}

/// Check `rows` (every row, ordered by chain then place) with a
/// [`Verifier`].
pub fn verify(
    key: &AuditKey,
    rows: impl IntoIterator<Item = (Entry, Vec<u8>)>,
) -> Result<Checked, Broken> {
    let mut v = Verifier::new(key);
    for (e, mac) in rows {
        v.push(e, &mac)?;
    }
    Ok(v.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(chain: &Chain, event: &str) -> Entry {
        Entry {
            chain: chain.id().to_owned(),
            seq: chain.next_seq(),
            at: 1_800_000_000,
            event: event.into(),
            record: "f915158a87cbee9028ffcfae6acb796a".into(),
            outcome: "ok".into(),
            guesses_left: (event == "login_start").then_some(4),
            client: "127.0.0.1".into(),
        }
    }

    fn rows(key: &AuditKey, n: usize) -> Vec<(Entry, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..2 {
            let mut c = Chain::new();
            for i in 0..n {
                let e = entry(
                    &c,
                    if i % 2 == 0 {
                        "login_start"
                    } else {
                        "login_finish"
                    },
                );
                let mac = c.mac(key, &e);
                c.appended(mac);
                out.push((e, mac.to_vec()));
            }
        }
        out.sort_by(|a, b| (&a.0.chain, a.0.seq).cmp(&(&b.0.chain, b.0.seq)));
        out
    }

    #[test]
    fn intact_chains_check_and_every_kind_of_tampering_is_named() {
        let key = AuditKey::derive(b"setup");
        let good = rows(&key, 5);
        assert_eq!(
            verify(&key, good.clone()),
            Ok(Checked {
                chains: 2,
                entries: 10
            })
        );
        // Altered fields.
        for (i, change) in [
            |e: &mut Entry| e.outcome = "unauthenticated".into(),
            |e: &mut Entry| e.guesses_left = Some(9),
            |e: &mut Entry| e.guesses_left = None,
            |e: &mut Entry| e.client = "10.0.0.1".into(),
            |e: &mut Entry| e.at += 1,
            |e: &mut Entry| e.record = "-".into(),
        ]
        .into_iter()
        .enumerate()
        {
            let mut bad = good.clone();
            change(&mut bad[2].0);
            let b = verify(&key, bad).unwrap_err();
            assert_eq!(b.seq, 2, "change {i}");
            assert!(b.why.contains("MAC"), "{b}");
        }
        // A row removed from the middle, or the first.
        for gone in [2, 0] {
            let mut bad = good.clone();
            bad.remove(gone);
            let b = verify(&key, bad).unwrap_err();
            assert!(b.why.contains(&format!("expected entry {gone}")), "{b}");
        }
        // Two rows swapped, seq kept in order (their MACs do not follow).
        let mut bad = good.clone();
        let (a, b) = (bad[1].clone(), bad[2].clone());
        bad[1] = (Entry { seq: 1, ..b.0 }, b.1);
        bad[2] = (Entry { seq: 2, ..a.0 }, a.1);
        assert_eq!(verify(&key, bad).unwrap_err().seq, 1);
        // Another key (another vault) does not check.
        assert!(verify(&AuditKey::derive(b"other"), good.clone()).is_err());
        // What this cannot see: a tail cut off.
        let mut cut = good;
        cut.truncate(3);
        assert!(verify(&key, cut).is_ok());
    }
}
