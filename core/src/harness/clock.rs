//! A node's local clock as a function of real (simulated) time: an offset and a rate.

use crate::Millis;

/// Parts per million: a clock at `PPM` runs at real speed.
pub const PPM: u64 = 1_000_000;

/// `local(real) = offset_ms + real · rate_ppm / PPM`, rounded down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub offset_ms: u64,
    /// Rate in parts per million of real time (> 0).
    pub rate_ppm: u64,
}

impl Clock {
    pub fn new(offset_ms: u64) -> Clock {
        Clock {
            offset_ms,
            rate_ppm: PPM,
        }
    }

    /// The local time at real time `real` (ms).
    pub fn local(&self, real: u64) -> Millis {
        let scaled = u128::from(real) * u128::from(self.rate_ppm) / u128::from(PPM);
        Millis(
            self.offset_ms
                .saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX)),
        )
    }

    /// The first real ms at which this clock reads at least `t` (`u64::MAX`: never).
    pub fn real_at(&self, t: Millis) -> u64 {
        let Some(d) = t.0.checked_sub(self.offset_ms) else {
            return 0;
        };
        if self.rate_ppm == 0 {
            return if d == 0 { 0 } else { u64::MAX };
        }
        let real = (u128::from(d) * u128::from(PPM)).div_ceil(u128::from(self.rate_ppm));
        u64::try_from(real).unwrap_or(u64::MAX)
    }

    /// Change the rate at real time `real` without a jump of the local time.
    pub fn set_rate_at(&mut self, real: u64, rate_ppm: u64) {
        let local = self.local(real).0;
        let scaled = u128::from(real) * u128::from(rate_ppm) / u128::from(PPM);
        let scaled = u64::try_from(scaled).unwrap_or(u64::MAX);
        // A clock never goes back: when the new rate's line lies above, it waits (offset 0).
        self.offset_ms = local.saturating_sub(scaled);
        self.rate_ppm = rate_ppm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `real_at` is the inverse of `local`: the first real ms reaching a local time.
    #[test]
    fn real_at_inverts_local() {
        for rate in [1, 10_000, 950_000, PPM, 1_052_000] {
            let c = Clock {
                offset_ms: 77,
                rate_ppm: rate,
            };
            for t in [77, 78, 100, 1_000, 123_456] {
                let r = c.real_at(Millis(t));
                assert!(c.local(r) >= Millis(t), "rate {rate} t {t}");
                assert!(r == 0 || c.local(r - 1) < Millis(t), "rate {rate} t {t}");
            }
        }
    }
}
