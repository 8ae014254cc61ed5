//! When the next `/_ha/leader` poll happens: the rule of the production gateway
//! (`adapter-k8s/src/gateway/poll.rs`, `next_poll_in`) and operator
//! (`adapter-k8s/src/controller/writers.rs`, `poll_loop`). Plain Rust, so that it is unit-tested
//! in the ordinary build too.

/// Never poll the writer more often than this, however short its lease looks
/// (`gateway::poll::MIN_WRITER_POLL_MS`, the operator's `.max(50)`).
pub const MIN_WRITER_POLL_MS: u64 = 50;
/// The gateway's `--poll-timeout` default: one poll of one replica gives up after this.
pub const GATEWAY_POLL_TIMEOUT_MS: u64 = 1_000;
/// The operator's HTTP client timeout (`Writers::new`): one poll gives up after this, and a
/// round of polls (every pod at once, `join_all`) lasts until its slowest poll ends.
pub const OPERATOR_POLL_TIMEOUT_MS: u64 = 2_000;

/// The wait after a poll (after a round of polls, for the operator) before the next one:
/// `min(interval, max(50 ms, (lease_expires - now) / 2))` when the tracker names a writer (for
/// the gateway: when the polled replica is that writer), else the interval. `lease_expires` and
/// `now` are on the poller's own clock, as the tracker keeps them.
#[must_use]
pub fn next_poll_in_ms(interval_ms: u64, writer_lease: Option<(u64, u64)>) -> u64 {
    match writer_lease {
        Some((lease_expires, now)) => {
            interval_ms.min((lease_expires.saturating_sub(now) / 2).max(MIN_WRITER_POLL_MS))
        }
        None => interval_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_is_polled_again_before_its_lease_passes() {
        // No writer: the interval.
        assert_eq!(next_poll_in_ms(1_000, None), 1_000);
        // A fresh 900 ms lease under a 1 s interval: half of what is left.
        assert_eq!(next_poll_in_ms(1_000, Some((10_900, 10_000))), 450);
        assert_eq!(next_poll_in_ms(2_000, Some((10_900, 10_000))), 450);
        // A short interval wins.
        assert_eq!(next_poll_in_ms(200, Some((10_900, 10_000))), 200);
        // Never below 50 ms, even for a lease about to end or already past.
        assert_eq!(next_poll_in_ms(1_000, Some((10_060, 10_000))), 50);
        assert_eq!(next_poll_in_ms(1_000, Some((9_000, 10_000))), 50);
        // The poll after the next one still lands inside the lease: a healthy writer that renews
        // its lease is never forgotten between polls.
        let (lease, mut now) = (10_900u64, 10_000u64);
        while now < lease {
            let wait = next_poll_in_ms(1_000, Some((lease, now)));
            assert!(
                now + wait < lease || wait == MIN_WRITER_POLL_MS,
                "{now} + {wait}"
            );
            now += wait;
        }
    }
}
