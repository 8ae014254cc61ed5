//! The gateway's Prometheus metrics (text exposition format).

use base_core::tracker::{Delivery, Reject, RequestKind, Why};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Counters and gauges, cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    routed: Family<Labels2, Counter>,
    rejected: Family<Labels, Counter>,
    control_refused: Counter,
    retries: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    polls: Family<Labels, Counter>,
    writer_lost: Family<Labels, Counter>,
    held: Family<Labels, Counter>,
    term: Gauge,
    writer_known: Gauge,
    pins: Gauge,
}

/// How a poll went, for `base_gateway_polls_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollKind {
    Ok,
    Stale,
    Failed,
}

/// How forwarding failed, for `base_gateway_upstream_errors_total{error}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (the request never reached the replica).
    Connect,
    /// No response headers within `--upstream-timeout`.
    Timeout,
    /// The connection broke after the request was (maybe partly) sent.
    Broken,
}

fn kind_label(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Read => "read",
        RequestKind::Write => "write",
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("base_gateway");
        let routed = Family::<Labels2, Counter>::default();
        registry.register(
            "requests_routed",
            "Requests forwarded to a replica, by kind (read/write) and why (read, pinned_read, writer_required, write)",
            routed.clone(),
        );
        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "requests_rejected",
            "Requests answered 503 by the gateway, by reason (no_writer, no_replica)",
            rejected.clone(),
        );
        let control_refused = Counter::default();
        registry.register(
            "control_refused",
            "Requests for the agents' control plane (/_ha/*, /_quasar/*, /_replica/* but the read-only /_ha/leader and /_ha/peers) answered 404 by the gateway, never forwarded",
            control_refused.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "retries",
            "Requests sent a second time because the first try never reached a replica, by kind",
            retries.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Forwarding failures, by error (connect, timeout, broken)",
            upstream_errors.clone(),
        );
        let polls = Family::<Labels, Counter>::default();
        registry.register(
            "polls",
            "Polls of /_ha/leader, by result (ok, stale, failed)",
            polls.clone(),
        );
        let writer_lost = Family::<Labels, Counter>::default();
        registry.register(
            "writer_lost",
            "Requests the writer failed, each losing it and re-polling every replica at once, by how (not_writer, unreachable, no_answer)",
            writer_lost.clone(),
        );
        let held = Family::<Labels, Counter>::default();
        registry.register(
            "requests_held",
            "Requests held after the writer failed them until a poll found a writer, by result (forwarded, expired)",
            held.clone(),
        );
        let term = Gauge::default();
        registry.register(
            "term",
            "The highest election term any replica reported",
            term.clone(),
        );
        let writer_known = Gauge::default();
        registry.register(
            "writer_known",
            "1 while a writer with a live lease is known, else 0",
            writer_known.clone(),
        );
        let pins = Gauge::default();
        registry.register(
            "ryw_pins",
            "Clients whose reads are pinned to the writer (read-your-writes)",
            pins.clone(),
        );
        Metrics {
            registry,
            routed,
            rejected,
            control_refused,
            retries,
            upstream_errors,
            polls,
            writer_lost,
            held,
            term,
            writer_known,
            pins,
        }
    }

    pub fn routed(&self, why: Why) {
        let why_label = match why {
            Why::Write => "write",
            Why::WriterRequired => "writer_required",
            Why::PinnedRead => "pinned_read",
            Why::Read => "read",
        };
        self.routed
            .get_or_create(&[("kind", kind_label(why.kind())), ("why", why_label)])
            .inc();
    }

    pub fn rejected(&self, reject: Reject) {
        let reason = match reject {
            Reject::NoWriter => "no_writer",
            Reject::NoReplica => "no_replica",
        };
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn control_refused(&self) {
        self.control_refused.inc();
    }

    pub fn retried(&self, kind: RequestKind) {
        self.retries
            .get_or_create(&[("kind", kind_label(kind))])
            .inc();
    }

    pub fn upstream_error(&self, error: UpstreamError) {
        let label = match error {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Broken => "broken",
        };
        self.upstream_errors
            .get_or_create(&[("error", label)])
            .inc();
    }

    pub fn polled(&self, kind: PollKind) {
        let label = match kind {
            PollKind::Ok => "ok",
            PollKind::Stale => "stale",
            PollKind::Failed => "failed",
        };
        self.polls.get_or_create(&[("result", label)]).inc();
    }

    pub fn writer_lost(&self, delivery: Delivery) {
        let how = match delivery {
            Delivery::NotWriter => "not_writer",
            Delivery::NotReached => "unreachable",
            Delivery::Reached { .. } => "no_answer",
        };
        self.writer_lost.get_or_create(&[("how", how)]).inc();
    }

    pub fn held(&self, forwarded: bool) {
        let result = if forwarded { "forwarded" } else { "expired" };
        self.held.get_or_create(&[("result", result)]).inc();
    }

    /// Sets the gauges that mirror the tracker's state.
    pub fn set_state(&self, term: u64, writer_known: bool, pins: usize) {
        self.term.set(i64::try_from(term).unwrap_or(i64::MAX));
        self.writer_known.set(i64::from(writer_known));
        self.pins.set(i64::try_from(pins).unwrap_or(i64::MAX));
    }

    /// The text exposition of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
