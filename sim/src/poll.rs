//! How soon the operator polls the writer again: the rule of
//! `adapter-k8s/src/controller/writers.rs` (`poll_loop`: an answer naming a writer brings the next
//! round forward to `max(50 ms, half of what is left of its lease)`). (The gateway's rule is the
//! core tracker's `next_poll`, which the sim calls as the production gateway does.) Plain Rust, so
//! that it is unit-tested in the ordinary build too.

/// Never poll the writer more often than this, however short its lease looks (the operator's
/// `.max(50)`, `tracker::MIN_WRITER_POLL`).
pub const MIN_WRITER_POLL_MS: u64 = 50;
/// The gateway's `--poll-timeout` default: one poll of one replica gives up after this.
pub const GATEWAY_POLL_TIMEOUT_MS: u64 = 1_000;
/// The operator's HTTP client timeout (`Writers::new`): one poll gives up after this.
pub const OPERATOR_POLL_TIMEOUT_MS: u64 = 2_000;

/// How soon after an answer naming a writer whose lease ends at `lease_expires` (at `now`, both
/// on the poller's clock) the next round starts, at the latest: `max(50 ms, (lease − now) / 2)`.
#[must_use]
pub fn renew_poll_in_ms(lease_expires: u64, now: u64) -> u64 {
    (lease_expires.saturating_sub(now) / 2).max(MIN_WRITER_POLL_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_is_polled_again_before_its_lease_passes() {
        // A fresh 900 ms lease: half of what is left.
        assert_eq!(renew_poll_in_ms(10_900, 10_000), 450);
        // Never below 50 ms, even for a lease about to end or already past.
        assert_eq!(renew_poll_in_ms(10_060, 10_000), 50);
        assert_eq!(renew_poll_in_ms(9_000, 10_000), 50);
        // The poll after the next one still lands inside the lease: a healthy writer that renews
        // its lease is never forgotten between polls.
        let (lease, mut now) = (10_900u64, 10_000u64);
        while now < lease {
            let wait = renew_poll_in_ms(lease, now);
            assert!(
                now + wait < lease || wait == MIN_WRITER_POLL_MS,
                "{now} + {wait}"
            );
            now += wait;
        }
    }
}
