//! Logging refused control requests once per source: a loop of forged or misrouted requests from
//! one address must not flood the log, yet every source shows up (the counters count them all).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source is logged again after this long.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered; beyond it the memory starts over (a flood of addresses logs more often,
/// never unboundedly much memory).
const SOURCES_MAX: usize = 4096;

/// When each source was last logged.
#[derive(Debug, Default)]
pub struct SourceLog {
    last: Mutex<HashMap<Option<IpAddr>, Instant>>,
}

impl SourceLog {
    /// Should a refusal from `source` be logged now? True at most once per [`LOG_EVERY`] each.
    pub fn should_log(&self, source: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last.get(&source)
            && now.duration_since(*at) < LOG_EVERY
        {
            return false;
        }
        if last.len() >= SOURCES_MAX {
            last.clear();
        }
        last.insert(source, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_source() {
        let log = SourceLog::default();
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        assert!(log.should_log(a));
        assert!(!log.should_log(a));
        assert!(log.should_log(b));
        assert!(log.should_log(None));
        assert!(!log.should_log(None));
    }
}
