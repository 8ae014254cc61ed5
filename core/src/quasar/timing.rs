//! The timing configuration of a Quasar cluster, and the lease argument it must satisfy.
//!
//! # Clock model
//! Every node measures durations with its own clock. The clocks may have any offset from one
//! another (only differences taken on one node's clock are ever used), but their *rates* are
//! bounded: over any real-time interval, every node's clock advances by at least `(1 − ρ)` times
//! what any other node's clock advances, where `ρ = drift_bound_ppm / 1_000_000`.
//!
//! # The lease argument
//! Write `E = election_timeout_min_ms`, `m = lease_margin_ms`.
//! 1. A follower that acks a writer's heartbeat (or grants a vote) at its local time `a` promises
//!    not to vote or pre-vote for anyone else until its local time `a + E`.
//! 2. The writer sends that heartbeat at its local time `s`, so every ack of it happens at a real
//!    time at or after the send. Once a majority (counting the writer itself) has acked, the writer
//!    accepts writes until `lease_until = s + E·(1 − ρ) − m` on its own clock.
//! 3. When the writer's clock reads `lease_until`, it has advanced `E·(1 − ρ) − m` since the send;
//!    by the rate bound, no other clock has advanced more than `(E·(1 − ρ) − m) / (1 − ρ) < E`, so
//!    every follower of that majority is still inside its promise.
//! 4. Any rival needs a majority of votes; every majority shares a node with the acking majority,
//!    and that node will not vote before its promise ends. So the old writer's lease ends (in real
//!    time) before any rival can win, for every `m > 0`; the margin also absorbs the granularity of
//!    the clocks and of the steps.
//! 5. A node that restarts has forgotten its promises, so it grants nothing (and does not campaign)
//!    for `E` after it starts. Election timeouts are drawn from `[E, election_timeout_max_ms)`, so
//!    no node campaigns within `E` of its last ack either.
//!
//! [`Timing::new`] rejects a configuration for which the lease would be empty, shorter than two
//! heartbeat intervals (it would lapse between renewals), or out of the bounds below.

use crate::Millis;

/// Parts per million: the unit of the drift bound.
pub const PPM: u64 = 1_000_000;
/// Shortest heartbeat interval accepted (a tighter loop only burns CPU and network).
pub const HEARTBEAT_INTERVAL_MIN_MS: u64 = 5;
/// Longest election timeout accepted: failover must stay bounded.
pub const ELECTION_TIMEOUT_LIMIT_MS: u64 = 60_000;
/// Largest drift bound accepted (20%): beyond that the lease is too short to be useful.
pub const DRIFT_BOUND_PPM_MAX: u64 = 200_000;
/// The lease must span at least this many heartbeat intervals, or it lapses between renewals.
pub const LEASE_HEARTBEATS_MIN: u64 = 2;

pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;
pub const DEFAULT_DRIFT_BOUND_PPM: u64 = 50_000;
pub const DEFAULT_LEASE_MARGIN_MS: u64 = 50;

/// A configuration that breaks the lease argument or a bound, naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "heartbeat_interval_ms: {heartbeat_interval_ms} is below the minimum {HEARTBEAT_INTERVAL_MIN_MS}"
    )]
    HeartbeatTooShort { heartbeat_interval_ms: u64 },
    #[error(
        "election_timeout_max_ms: {election_timeout_max_ms} must be greater than election_timeout_min_ms {election_timeout_min_ms} (the jitter breaks split votes)"
    )]
    ElectionTimeoutRange {
        election_timeout_min_ms: u64,
        election_timeout_max_ms: u64,
    },
    #[error(
        "election_timeout_max_ms: {election_timeout_max_ms} exceeds the limit {ELECTION_TIMEOUT_LIMIT_MS}"
    )]
    ElectionTimeoutTooLong { election_timeout_max_ms: u64 },
    #[error("drift_bound_ppm: {drift_bound_ppm} exceeds the limit {DRIFT_BOUND_PPM_MAX}")]
    DriftBoundTooLarge { drift_bound_ppm: u64 },
    #[error("lease_margin_ms: must be greater than zero")]
    MarginZero,
    #[error(
        "lease_margin_ms: a lease of {lease_ms} ms (election_timeout_min_ms·(1−ρ) − margin) must span at least {LEASE_HEARTBEATS_MIN} heartbeat intervals of {heartbeat_interval_ms} ms"
    )]
    LeaseTooShort {
        lease_ms: u64,
        heartbeat_interval_ms: u64,
    },
}

/// A validated timing configuration. Construct with [`Timing::new`] (or `Default`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    heartbeat_interval_ms: Millis,
    election_timeout_min_ms: Millis,
    election_timeout_max_ms: Millis,
    drift_bound_ppm: u64,
    lease_margin_ms: Millis,
    lease_ms: Millis,
}

impl Timing {
    /// Checks the configuration against the lease argument (see the module doc) and the bounds.
    pub fn new(
        heartbeat_interval_ms: Millis,
        election_timeout_min_ms: Millis,
        election_timeout_max_ms: Millis,
        drift_bound_ppm: u64,
        lease_margin_ms: Millis,
    ) -> Result<Timing, TimingError> {
        if heartbeat_interval_ms.0 < HEARTBEAT_INTERVAL_MIN_MS {
            return Err(TimingError::HeartbeatTooShort {
                heartbeat_interval_ms: heartbeat_interval_ms.0,
            });
        }
        if election_timeout_max_ms.0 > ELECTION_TIMEOUT_LIMIT_MS {
            return Err(TimingError::ElectionTimeoutTooLong {
                election_timeout_max_ms: election_timeout_max_ms.0,
            });
        }
        if election_timeout_max_ms <= election_timeout_min_ms {
            return Err(TimingError::ElectionTimeoutRange {
                election_timeout_min_ms: election_timeout_min_ms.0,
                election_timeout_max_ms: election_timeout_max_ms.0,
            });
        }
        if drift_bound_ppm > DRIFT_BOUND_PPM_MAX {
            return Err(TimingError::DriftBoundTooLarge { drift_bound_ppm });
        }
        if lease_margin_ms.0 == 0 {
            return Err(TimingError::MarginZero);
        }
        // Both factors are bounded above (60_000 · 1_000_000), so this cannot overflow.
        let shrunk_ms = election_timeout_min_ms.0 * (PPM - drift_bound_ppm) / PPM;
        let lease_ms = shrunk_ms.saturating_sub(lease_margin_ms.0);
        if lease_ms < LEASE_HEARTBEATS_MIN * heartbeat_interval_ms.0 {
            return Err(TimingError::LeaseTooShort {
                lease_ms,
                heartbeat_interval_ms: heartbeat_interval_ms.0,
            });
        }
        let timing = Timing {
            heartbeat_interval_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            drift_bound_ppm,
            lease_margin_ms,
            lease_ms: Millis(lease_ms),
        };
        timing.assert_lease_argument();
        Ok(timing)
    }

    /// The inequality of the lease argument, in exact integer arithmetic: the lease, stretched by
    /// the worst relative drift, still ends strictly before the followers' promise `E` ends:
    /// `(lease + margin) · PPM ≤ E · (PPM − ρ)` with `margin > 0`, hence `lease · PPM < E · (PPM − ρ)`.
    pub fn assert_lease_argument(&self) {
        assert!(
            self.lease_margin_ms.0 > 0,
            "quasar timing: margin must be positive"
        );
        assert!(
            (self.lease_ms.0 + self.lease_margin_ms.0) * PPM
                <= self.election_timeout_min_ms.0 * (PPM - self.drift_bound_ppm),
            "quasar timing: lease {} + margin {} exceeds election_timeout_min {}·(1−ρ)",
            self.lease_ms,
            self.lease_margin_ms,
            self.election_timeout_min_ms
        );
        assert!(self.lease_ms < self.election_timeout_min_ms);
        assert!(self.heartbeat_interval_ms < self.lease_ms);
        assert!(self.election_timeout_min_ms < self.election_timeout_max_ms);
    }

    pub fn heartbeat_interval_ms(&self) -> Millis {
        self.heartbeat_interval_ms
    }
    pub fn election_timeout_min_ms(&self) -> Millis {
        self.election_timeout_min_ms
    }
    pub fn election_timeout_max_ms(&self) -> Millis {
        self.election_timeout_max_ms
    }
    pub fn drift_bound_ppm(&self) -> u64 {
        self.drift_bound_ppm
    }
    pub fn lease_margin_ms(&self) -> Millis {
        self.lease_margin_ms
    }
    /// The lease a majority ack buys, counted from the heartbeat's send time:
    /// `election_timeout_min_ms·(1 − ρ) − lease_margin_ms`.
    pub fn lease_ms(&self) -> Millis {
        self.lease_ms
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(
            Millis(DEFAULT_HEARTBEAT_INTERVAL_MS),
            Millis(DEFAULT_ELECTION_TIMEOUT_MIN_MS),
            Millis(DEFAULT_ELECTION_TIMEOUT_MAX_MS),
            DEFAULT_DRIFT_BOUND_PPM,
            Millis(DEFAULT_LEASE_MARGIN_MS),
        )
        .expect("the default timing satisfies the lease argument")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lease_is_900_ms() {
        let t = Timing::default();
        assert_eq!(t.lease_ms(), Millis(900));
    }

    #[test]
    fn rejects_bad_configs() {
        let ok = |h, lo, hi, d, m| Timing::new(Millis(h), Millis(lo), Millis(hi), d, Millis(m));
        assert!(ok(100, 1000, 2000, 50_000, 50).is_ok());
        assert_eq!(ok(100, 1000, 2000, 50_000, 0), Err(TimingError::MarginZero));
        assert!(matches!(
            ok(100, 1000, 1000, 50_000, 50),
            Err(TimingError::ElectionTimeoutRange { .. })
        ));
        assert!(matches!(
            ok(1, 1000, 2000, 50_000, 50),
            Err(TimingError::HeartbeatTooShort { .. })
        ));
        assert!(matches!(
            ok(100, 1000, 2000, 300_000, 50),
            Err(TimingError::DriftBoundTooLarge { .. })
        ));
        assert!(matches!(
            ok(400, 1000, 2000, 50_000, 200),
            Err(TimingError::LeaseTooShort { .. })
        ));
        assert!(matches!(
            ok(100, 1000, 90_000, 50_000, 50),
            Err(TimingError::ElectionTimeoutTooLong { .. })
        ));
    }
}
