//! The agent's counters, served as Prometheus text at `GET /_quasar/metrics` (the control port):
//! `quasar_peer_messages_accepted_total`, `quasar_peer_messages_dropped_total{reason}` (see
//! [`DropReason`]), `quasar_control_refused_total{reason}` (see [`ControlRefusal`]),
//! `quasar_transfer_requests_total{outcome}` (`started` or a
//! [`TransferRefusal`](base_core::control::TransferRefusal)), `quasar_transfers_total`,
//! `quasar_proxy_rejected_total`, and the gauges `quasar_fenced`, `quasar_term`,
//! `quasar_is_writer`, `quasar_position` (the local Base's replication position as the election
//! uses it: the highest polled from `--position-url`, 0 without), `quasar_peer_auth` (1 when peer
//! messages are authenticated).

use super::auth::DropReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Why a control-plane HTTP request was answered 404 (peer messages have their own counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRefusal {
    /// A control path (`base_core::control::is_control_path`) on the client port.
    ClientPort,
    /// A path the control port does not serve (e.g. the removed `POST /_ha/transfer`).
    UnknownPath,
}

impl ControlRefusal {
    pub const ALL: [ControlRefusal; 2] = [ControlRefusal::ClientPort, ControlRefusal::UnknownPath];

    pub fn as_str(self) -> &'static str {
        match self {
            ControlRefusal::ClientPort => "client_port",
            ControlRefusal::UnknownPath => "unknown_path",
        }
    }
}

/// The `outcome` of a transfer request that started a hand-over.
pub const TRANSFER_STARTED: &str = "started";

pub struct AgentMetrics {
    registry: Registry,
    pub accepted: Counter,
    dropped: Family<ReasonLabel, Counter>,
    control_refused: Family<ReasonLabel, Counter>,
    transfer_requests: Family<OutcomeLabel, Counter>,
    pub transfers: Counter,
    pub proxy_rejected: Counter,
    pub fenced: Gauge,
    pub term: Gauge,
    pub is_writer: Gauge,
    pub position: Gauge,
    pub peer_auth: Gauge,
    pub replication_contract: Gauge,
    pub commit: Gauge,
    pub writes_committed: Counter,
    pub writes_commit_unknown: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quasar");
        let accepted = Counter::default();
        let dropped = Family::<ReasonLabel, Counter>::default();
        let control_refused = Family::<ReasonLabel, Counter>::default();
        let transfer_requests = Family::<OutcomeLabel, Counter>::default();
        let transfers = Counter::default();
        let proxy_rejected = Counter::default();
        let fenced = Gauge::default();
        let term = Gauge::default();
        let is_writer = Gauge::default();
        let position = Gauge::default();
        let peer_auth = Gauge::default();
        let replication_contract = Gauge::default();
        replication_contract.set(-1);
        let commit = Gauge::default();
        let writes_committed = Counter::default();
        let writes_commit_unknown = Counter::default();
        registry.register(
            "peer_messages_accepted",
            "Peer messages that passed every check and reached the election",
            accepted.clone(),
        );
        registry.register(
            "peer_messages_dropped",
            "Peer messages dropped, by reason",
            dropped.clone(),
        );
        registry.register(
            "control_refused",
            "Control-plane HTTP requests answered 404, by reason (client_port, unknown_path)",
            control_refused.clone(),
        );
        registry.register(
            "transfer_requests",
            "Transfer requests read from the pod annotation, by outcome",
            transfer_requests.clone(),
        );
        registry.register(
            "transfers",
            "Writer hand-overs this node started (requests, shutdown, fencing)",
            transfers.clone(),
        );
        registry.register(
            "proxy_rejected",
            "Proxied requests refused with 503 because too many were in flight",
            proxy_rejected.clone(),
        );
        registry.register("fenced", "1 while this replica is fenced", fenced.clone());
        registry.register("term", "The election term", term.clone());
        registry.register(
            "is_writer",
            "1 while this node is the writer",
            is_writer.clone(),
        );
        registry.register(
            "position",
            "The local Base's replication position the election uses (highest polled; 0 without --position-url)",
            position.clone(),
        );
        registry.register(
            "peer_auth",
            "1 when peer messages are authenticated",
            peer_auth.clone(),
        );
        registry.register(
            "replication_contract",
            "1 while the local Base implements the replica contract, 0 when it does not (404 on /_replica/state: writes are not held for a quorum), -1 before it answered",
            replication_contract.clone(),
        );
        registry.register(
            "commit",
            "The writer's commit index (the highest entry a majority holds); 0 on a replica",
            commit.clone(),
        );
        registry.register(
            "writes_committed",
            "Client writes answered after a majority held them",
            writes_committed.clone(),
        );
        registry.register(
            "writes_commit_unknown",
            "Client writes answered 504 commit_unknown (deadline, step-down, or too many held)",
            writes_commit_unknown.clone(),
        );
        // Every reason shows from the start, at 0.
        for reason in DropReason::ALL {
            let _ = dropped.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
        }
        for reason in ControlRefusal::ALL {
            let _ = control_refused.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
        }
        let outcomes = std::iter::once(TRANSFER_STARTED).chain(
            base_core::control::TransferRefusal::ALL
                .iter()
                .map(|r| r.as_str()),
        );
        for outcome in outcomes {
            let _ = transfer_requests.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            });
        }
        AgentMetrics {
            registry,
            accepted,
            dropped,
            control_refused,
            transfer_requests,
            transfers,
            proxy_rejected,
            fenced,
            term,
            is_writer,
            position,
            peer_auth,
            replication_contract,
            commit,
            writes_committed,
            writes_commit_unknown,
        }
    }
}

impl AgentMetrics {
    pub fn dropped(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            })
            .get()
    }

    pub fn control_refused(&self, reason: ControlRefusal) {
        self.control_refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// A transfer request was considered: `started`, or why not.
    pub fn transfer_request(&self, outcome: &str) {
        self.transfer_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition (OpenMetrics text, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the agent's metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason() {
        let m = AgentMetrics::default();
        m.dropped(DropReason::Replay);
        m.accepted.inc();
        let text = m.render();
        assert!(
            text.contains(r#"quasar_peer_messages_dropped_total{reason="replay"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"quasar_peer_messages_dropped_total{reason="bad_mac"} 0"#));
        assert!(text.contains("quasar_peer_messages_accepted_total 1"));
        assert!(text.contains("quasar_fenced 0"));
        assert_eq!(m.dropped_count(DropReason::Replay), 1);
    }
}
