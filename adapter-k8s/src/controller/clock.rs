//! The operator's one clock. Every time the operator compares is read from it: a writer's lease
//! end and its confirmation (`writers`), the plan's `Observed::now` (switchover timeouts against
//! the `Switchover` condition's time, a switchover's confirmation, transfer retries), and the
//! cleanup timeout. Unix milliseconds read once at start, then advanced by the monotonic clock:
//! a step of the wall clock (NTP) moves none of them, nor one against another.

use crate::agent::clock::Clock;
use base_core::Millis;

#[derive(Clone, Copy, Debug)]
pub struct OperatorClock {
    mono: Clock,
    /// Tests: as if the wall clock read at start had been this far off.
    shift_ms: i64,
}

impl Default for OperatorClock {
    fn default() -> Self {
        OperatorClock::new()
    }
}

impl OperatorClock {
    pub fn new() -> Self {
        OperatorClock {
            mono: Clock::new(),
            shift_ms: 0,
        }
    }

    /// A clock whose start reading was `shift_ms` off the system's (tests: a wall clock stepped
    /// against this one).
    #[cfg(test)]
    pub fn shifted(shift_ms: i64) -> Self {
        OperatorClock {
            mono: Clock::new(),
            shift_ms,
        }
    }

    pub fn now(&self) -> Millis {
        Millis(self.mono.now().0.saturating_add_signed(self.shift_ms))
    }

    /// The `now` a plan is made at: condition times are stored with second precision, so the
    /// plan works with the same.
    pub fn plan_now(&self) -> Millis {
        Millis(self.now().0 / 1000 * 1000)
    }
}
