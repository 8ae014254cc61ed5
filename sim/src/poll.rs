//! The pollers' timeouts, as production sets them. When a poller polls next is the core tracker's
//! rule (`Tracker::next_poll`), which the sim calls as the production gateway and operator do.

/// The gateway's `--poll-timeout` default: one poll of one replica gives up after this.
pub const GATEWAY_POLL_TIMEOUT_MS: u64 = 1_000;
/// The operator's HTTP client timeout (`Writers::new`): one poll gives up after this.
pub const OPERATOR_POLL_TIMEOUT_MS: u64 = 2_000;
