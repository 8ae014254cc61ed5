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

/// RFC 3339 formatting lives next to its parser, in `base_core::wire`.
pub use base_core::wire::format_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotone() {
        let c = Clock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
