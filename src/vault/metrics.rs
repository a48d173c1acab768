//! The vault server's counters, in the Prometheus text format.
//!
//! Named for what the server knows: it never learns that a password was
//! wrong, only that a login start was answered (a guess charged) and
//! whether a valid finish came (the guesses refunded).
//!
//! Owns: the metric names and their meaning (docs/backends/vault.md lists
//! them).
//!
//! Must never: carry a label drawn from a request (a record id, an
//! address): the set of series is fixed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The requests timed, as the audit trail names them.
pub const EVENTS: [&str; 5] = [
    "register_start",
    "register_finish",
    "login_start",
    "login_finish",
    "delete",
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    /// Cumulative as Prometheus wants it is computed when rendered (and
    /// `_count` is the last sum, so the two always agree); each slot
    /// counts the observations of its own bucket (the last: above every
    /// bound).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Why a record was destroyed.
#[derive(Debug, Clone, Copy)]
pub enum Destroyed {
    /// A login start found no guess left.
    Exhausted,
    /// Its owner deleted it (a valid login finish asking so).
    Deleted,
}

/// Counters of one vault server process.
#[derive(Default)]
pub struct Metrics {
    guesses_charged: AtomicU64,
    guesses_refunded: AtomicU64,
    records_exhausted: AtomicU64,
    records_deleted: AtomicU64,
    sessions_expired: AtomicU64,
    database_errors: AtomicU64,
    latency: [Histogram; EVENTS.len()],
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// A login start was answered: one guess charged.
    pub fn guess_charged(&self) {
        inc(&self.guesses_charged, 1);
    }
    /// A valid login finish: the record's guesses refunded.
    pub fn guesses_refunded(&self) {
        inc(&self.guesses_refunded, 1);
    }
    /// A record was destroyed.
    pub fn record_destroyed(&self, why: Destroyed) {
        inc(
            match why {
                Destroyed::Exhausted => &self.records_exhausted,
                Destroyed::Deleted => &self.records_deleted,
            },
            1,
        );
    }
    /// `n` login sessions expired without a finish.
    pub fn sessions_expired(&self, n: u64) {
        inc(&self.sessions_expired, n);
    }
    /// The database failed a request.
    pub fn database_error(&self) {
        inc(&self.database_errors, 1);
    }

    /// One request of kind `event` (one of [`EVENTS`]) took `took`.
    pub fn observe(&self, event: &str, took: Duration) {
        let Some(i) = EVENTS.iter().position(|e| *e == event) else {
            return;
        };
        let h = &self.latency[i];
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        inc(&h.buckets[b], 1);
        inc(
            &h.sum_nanos,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Everything, in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "coffer_vault_guesses_charged_total",
                "Login starts answered; each had charged one guess (a start that charged and then failed is not counted).",
                &self.guesses_charged,
            ),
            (
                "coffer_vault_guesses_refunded_total",
                "Valid login finishes that refunded their record's charged guesses.",
                &self.guesses_refunded,
            ),
            (
                "coffer_vault_login_sessions_expired_total",
                "Login sessions that expired without a finish.",
                &self.sessions_expired,
            ),
            (
                "coffer_vault_database_errors_total",
                "Requests the database failed (answered 500).",
                &self.database_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "coffer_vault_records_destroyed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Records destroyed, by cause: a login start that found no guess left, or a deletion by their owner."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (cause, value) in [
            ("exhausted", &self.records_exhausted),
            ("deleted", &self.records_deleted),
        ] {
            let _ = writeln!(
                out,
                "{name}{{cause=\"{cause}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "coffer_vault_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer a request, by kind, from its body read to its answer."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (event, h) in EVENTS.iter().zip(&self.latency) {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{event=\"{event}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{event=\"{event}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{event=\"{event}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{event=\"{event}\"}} {cumulative}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.guess_charged();
        m.guess_charged();
        m.sessions_expired(3);
        m.observe("login_start", Duration::from_micros(700));
        m.observe("login_start", Duration::from_secs(9));
        m.observe("not-an-event", Duration::from_secs(1));
        let text = m.render();
        assert!(text.contains("\ncoffer_vault_guesses_charged_total 2\n"));
        assert!(text.contains("\ncoffer_vault_login_sessions_expired_total 3\n"));
        let b = "coffer_vault_request_duration_seconds_bucket{event=\"login_start\"";
        assert!(text.contains(&format!("{b},le=\"0.0005\"}} 0\n")));
        assert!(text.contains(&format!("{b},le=\"0.001\"}} 1\n")));
        assert!(text.contains(&format!("{b},le=\"2.5\"}} 1\n")));
        assert!(text.contains(&format!("{b},le=\"+Inf\"}} 2\n")));
        assert!(
            text.contains("coffer_vault_request_duration_seconds_count{event=\"login_start\"} 2\n")
        );
        assert!(
            text.contains(
                "coffer_vault_request_duration_seconds_sum{event=\"login_start\"} 9.0007\n"
            )
        );
    }
}
