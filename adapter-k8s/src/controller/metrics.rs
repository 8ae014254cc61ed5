//! Prometheus metrics of the operator, and the `/metrics`, `/healthz`, `/readyz` endpoints.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BaseLabel {
    pub namespace: String,
    pub base: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    pub verb: String,
    pub kind: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub api_writes: Family<WriteLabel, Counter>,
    pub leader: Gauge,
    /// Per Base: pods whose Base does not implement the replica contract.
    pub replication_contract_absent: Family<BaseLabel, Gauge>,
    /// Set once the operator can serve (it has a client and, if elected, runs the controller).
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("base_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let api_writes = Family::<WriteLabel, Counter>::default();
        let leader = Gauge::default();
        let replication_contract_absent = Family::<BaseLabel, Gauge>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "api_writes",
            "API writes issued, by verb and kind",
            api_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the operator Lease",
            leader.clone(),
        );
        registry.register(
            "replication_contract_absent",
            "Pods of a Base whose Base image does not implement the replica contract (writes acknowledged without a quorum)",
            replication_contract_absent.clone(),
        );
        Metrics {
            registry,
            replication_contract_absent,
            reconciles,
            failures,
            duration,
            api_writes,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn write(&self, verb: &str, kind: &str) {
        self.api_writes
            .get_or_create(&WriteLabel {
                verb: verb.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn contract_absent(&self, namespace: &str, base: &str, pods: i64) {
        self.replication_contract_absent
            .get_or_create(&BaseLabel {
                namespace: namespace.into(),
                base: base.into(),
            })
            .set(pods);
    }

    pub fn fail(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` (the process runs) and `/readyz` (it can do its job).
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = metrics.clone();
                async move {
                    if m.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
