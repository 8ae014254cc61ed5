//! The agent's clock: Unix milliseconds read once at start, then advanced by the monotonic clock,
//! so `now` never jumps back or forth with NTP steps (the lease argument measures durations on
//! one node's clock), yet stays close to wall time for `lease_expires`.

use base_core::Millis;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_ms: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_unix_ms,
        }
    }

    pub fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        Millis(self.start_unix_ms.saturating_add(elapsed))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// `Millis` since the Unix epoch as RFC 3339 UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
pub fn format_rfc3339(t: Millis) -> String {
    let ms = t.0 % 1000;
    let secs = t.0 / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_rfc3339(Millis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(Millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        for t in [
            1,
            86_399_999,
            1_700_000_000_000,
            4_102_444_800_000,
            1_709_251_199_999,
        ] {
            let text = format_rfc3339(Millis(t));
            assert_eq!(
                base_core::wire::parse_rfc3339(&text).unwrap(),
                Millis(t),
                "{text}"
            );
        }
    }

    #[test]
    fn clock_is_monotone() {
        let c = Clock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
