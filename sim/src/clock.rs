//! Per-node clocks. Real (simulated) time is madsim's, in nanoseconds since the run started; each
//! node reads its own clock, which has an offset and a rate error (`skew_ppm`) within the
//! configured drift bound. Only the local clock is ever given to the core state machines.

use base_core::Millis;

/// Unix time of the simulation's real time zero: 2026-01-01T00:00:00Z. The wire carries leases as
/// RFC 3339 times, so local clocks read like Unix time.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
const NS_PER_MS: u128 = 1_000_000;
const PPM: i128 = 1_000_000;

/// A node's clock: an offset, plus a rate error that alternates in sign every `period_ms` (as
/// NTP slews a clock back and forth), so that the offset stays bounded while, at every instant,
/// the rate is `1 ± skew`: `local(t) = EPOCH + offset + t + drift(t)`, with `drift` a triangle
/// wave between 0 and `±skew·period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub offset_ms: i64,
    /// Rate error in parts per million during the first period (then its opposite, and so on).
    pub skew_ppm: i64,
    pub period_ms: u64,
}

impl Clock {
    /// The perfect clock.
    pub const TRUE: Clock = Clock {
        offset_ms: 0,
        skew_ppm: 0,
        period_ms: 1_000,
    };

    /// The largest distance from true time plus `offset_ms`.
    pub fn max_drift_ms(&self) -> u64 {
        self.skew_ppm.unsigned_abs() * self.period_ms / PPM as u64
    }

    fn local_ns(&self, real_ns: u64) -> i128 {
        let t = i128::from(real_ns);
        let period_ns = i128::from(self.period_ms) * NS_PER_MS as i128;
        let j = t / period_ns;
        let within = t - j * period_ns;
        let skew = i128::from(self.skew_ppm);
        // Even periods drift away by `skew`, odd ones come back.
        let (start, rate) = if j % 2 == 0 {
            (0, skew)
        } else {
            (i128::from(self.period_ms) * skew, -skew)
        };
        let drift = start + (within * rate).div_euclid(PPM);
        i128::from(EPOCH_MS as i64 + self.offset_ms) * NS_PER_MS as i128 + t + drift
    }

    /// The local time at real time `real_ns`.
    #[must_use]
    pub fn local_ms(&self, real_ns: u64) -> Millis {
        Millis(self.local_ns(real_ns).div_euclid(NS_PER_MS as i128) as u64)
    }

    /// The first real instant at which this clock reads `local` or later.
    #[must_use]
    pub fn real_ns_at(&self, local: Millis) -> u64 {
        // `local_ms` never decreases (|skew| < 1), so a binary search finds the first instant.
        let (mut lo, mut hi) = (0u64, 1u64 << 50);
        if self.local_ms(lo) >= local {
            return 0;
        }
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if self.local_ms(mid) >= local {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_of_a_local_time_is_exact() {
        for clock in [
            Clock::TRUE,
            Clock {
                offset_ms: -37,
                skew_ppm: 25_000,
                period_ms: 2_000,
            },
            Clock {
                offset_ms: 12,
                skew_ppm: -25_000,
                period_ms: 1_300,
            },
        ] {
            for local in [EPOCH_MS + 5, EPOCH_MS + 999, EPOCH_MS + 123_457] {
                let t = clock.real_ns_at(Millis(local));
                assert!(clock.local_ms(t) >= Millis(local));
                assert!(t == 0 || clock.local_ms(t - 1) < Millis(local));
            }
        }
    }

    #[test]
    fn drift_is_bounded_and_the_rate_stays_within_the_skew() {
        let clock = Clock {
            offset_ms: 0,
            skew_ppm: 25_000,
            period_ms: 2_000,
        };
        let mut last = clock.local_ms(0);
        for ms in 1..20_000u64 {
            let t = ms * 1_000_000;
            let local = clock.local_ms(t);
            assert!(local >= last, "time went backwards at {ms} ms");
            let drift = local.0 as i64 - (EPOCH_MS + ms) as i64;
            assert!((-1..=50).contains(&drift), "drift {drift} at {ms} ms");
            last = local;
        }
        // Over any 1 s the clock advances 1 s ± 2.5% (± 1 ms of rounding).
        for start in (0..18_000u64).step_by(250) {
            let a = clock.local_ms(start * 1_000_000).0;
            let b = clock.local_ms((start + 1_000) * 1_000_000).0;
            assert!((974..=1026).contains(&(b - a)), "{} ms at {start}", b - a);
        }
    }
}
