//! `base-operator gateway`: a small reverse proxy that tracks the writer.
//!
//! It polls every replica's `GET /_ha/leader` each `--poll-interval` and routes each request with
//! [`base_core::tracker`]: writes (and `X-Base-Writer: required`) to the writer, reads round robin
//! to the ready replicas, a client's reads to the writer for `--ryw-ttl` after its write, `503
//! {"error":"no_writer"}` (with `Retry-After: 1`) when no writer with a live lease is known.
//! Bodies stream both ways; a write is held in memory (up to `--retry-buffer-bytes`) only so that
//! it can be sent once more if the first try never reached a replica or was refused by one that
//! is not the writer.
//!
//! When a request sent to the writer fails there (the agent answers `307` or `503 no_writer`, the
//! connection is refused, reset or times out), the tracker loses the writer and every poller wakes
//! at once ([`base_core::tracker::AfterOutcome::repoll`]); a request that cannot have been applied
//! is held (up to `--failover-hold`) until a poll finds the new writer, then sent there. One that
//! may have been applied (sent, then a timeout or a broken connection) is never sent again: the
//! client gets `504 upstream_timeout` / `502 upstream_unreachable`. A refusal that cannot be
//! retried is answered `503 {"error":"no_writer"}` with `Retry-After: 1`, never the agent's `307`
//! (its `Location` is a pod's address).
//!
//! The gateway's own endpoints, on the same listener:
//! - `/_gateway/metrics`: Prometheus text format (also at `/metrics` unless `--root-metrics=false`,
//!   in which case `/metrics` is proxied to the replicas like any other path);
//! - `/_gateway/healthz`: the process is alive; `/_gateway/readyz`: a writer is known;
//! - `/_gateway/state`: the tracker's view as JSON, for people and tests.
//!
//! It never forwards the agents' control plane ([`base_core::control::is_control_path`]: everything
//! under `/_ha/`, `/_quasar/`, `/_replica/` but `GET /_ha/leader` and `GET /_ha/peers`): such a
//! request gets a `404 {"error":"control_path"}` of the gateway's own, is counted
//! (`base_gateway_control_refused_total`) and logged once per source address a minute.
//!
//! Lease times are compared with this machine's clock: the gateway trusts that the replicas' clocks
//! and its own agree within the election's drift bound, as the Hanzo gateway does.

mod metrics;
mod poll;
mod proxy;

pub use metrics::Metrics;
pub use poll::{PollError, poll_once};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base_core::tracker::{Reject, Tracker, TrackerConfig, TrackerError};
use base_core::{Millis, NodeId};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Default cap on a write body kept in memory for a retry.
pub const DEFAULT_RETRY_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// The shortest poll interval accepted: faster polling only loads the replicas.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// `base-operator gateway`: route to the replicas at `--replicas`, following their writer.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the bound address is logged).
    #[arg(long, env = "BASE_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// The replicas, as ID=URL,… (ID as the replica names itself in /_ha/leader; URL http://…).
    #[arg(long, env = "BASE_GATEWAY_REPLICAS", value_delimiter = ',', required = true,
          value_parser = parse_replica)]
    pub replicas: Vec<ReplicaArg>,

    /// How often each replica's /_ha/leader is polled (Go form: 500ms, 1s, 1m30s).
    #[arg(long, env = "BASE_GATEWAY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How long a client's reads go to the writer after its write (read-your-writes).
    #[arg(long, env = "BASE_GATEWAY_RYW_TTL", default_value = "5s", value_parser = parse_duration)]
    pub ryw_ttl: Duration,

    /// Time limit of one poll.
    #[arg(long, env = "BASE_GATEWAY_POLL_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// Time limit for connecting to a replica.
    #[arg(long, env = "BASE_GATEWAY_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time limit from sending a request until the replica's response headers arrive.
    #[arg(long, env = "BASE_GATEWAY_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// A request or response body that sends nothing for this long is cut off.
    #[arg(long, env = "BASE_GATEWAY_BODY_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub body_idle_timeout: Duration,

    /// How long a request the writer could not take (refused, or unreachable: nothing applied) is
    /// held while the gateway looks for the new writer, then sent there; 0 answers 503 at once.
    #[arg(long, env = "BASE_GATEWAY_FAILOVER_HOLD", default_value = "5s", value_parser = parse_duration)]
    pub failover_hold: Duration,

    /// A write body up to this size is kept so it can be retried; a larger one streams, no retry.
    #[arg(long, env = "BASE_GATEWAY_RETRY_BUFFER_BYTES", default_value_t = DEFAULT_RETRY_BUFFER_BYTES)]
    pub retry_buffer_bytes: usize,

    /// Also serve the metrics at /metrics (else /metrics is proxied to the replicas).
    #[arg(long, env = "BASE_GATEWAY_ROOT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub root_metrics: bool,
}

/// One `ID=URL` of `--replicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaArg {
    pub id: String,
    /// The base URL, without a trailing slash.
    pub url: String,
}

/// A gateway that cannot start as configured.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("replica {id}: {problem}")]
    Replica { id: String, problem: String },
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error("--poll-interval must be at least {MIN_POLL_INTERVAL:?}")]
    PollInterval,
    #[error("cannot build the poll client: {0}")]
    PollClient(#[source] reqwest::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Parses `ID=URL` (URL `http://host[:port][/prefix]`).
pub fn parse_replica(s: &str) -> Result<ReplicaArg, String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not ID=URL"))?;
    let (id, url) = (id.trim(), url.trim().trim_end_matches('/'));
    if id.is_empty() {
        return Err(format!("`{s}`: the ID is empty"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// replicas are supported"));
    }
    if uri.authority().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    Ok(ReplicaArg {
        id: id.to_owned(),
        url: url.to_owned(),
    })
}

/// Parses a duration in Go/Kubernetes form (`500ms`, `2s`, `1m30s`, `1.5h`; `0` alone is zero).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    base_core::validate::parse_std_duration(s)
}

/// A replica's addresses, resolved once.
#[derive(Debug)]
struct Target {
    id: NodeId,
    /// Base URL without a trailing slash.
    base: String,
    leader_url: String,
    /// Polls of this replica so far (shown in `/_gateway/state`).
    polls: AtomicU64,
}

impl Target {
    fn uri_for(&self, path_and_query: &str) -> Result<Uri, axum::http::uri::InvalidUri> {
        format!("{}{}", self.base, path_and_query).parse()
    }
}

/// What every request handler and poller shares.
#[derive(Debug)]
struct Shared {
    tracker: Mutex<Tracker>,
    replicas: Vec<Target>,
    client: Client<HttpConnector, axum::body::Body>,
    poll_client: reqwest::Client,
    metrics: Metrics,
    poll_interval: Duration,
    poll_timeout: Duration,
    upstream_timeout: Duration,
    body_idle_timeout: Duration,
    retry_buffer_bytes: usize,
    /// Refused control requests are logged once per source.
    refusals: crate::refusals::SourceLog,
    /// Bumped when the tracker lost its writer: every poller wakes and asks when to poll.
    repoll: watch::Sender<u64>,
    /// Bumped after every poll result: held requests ask the tracker again.
    polled: watch::Sender<u64>,
}

impl Shared {
    /// The tracker lock is held only for one pure step. A poisoned lock means a tracker assertion
    /// failed: stop serving rather than route on a state that broke an invariant.
    fn lock_tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .expect("tracker lock poisoned: a tracker invariant failed")
    }

    fn reject(&self, reject: Reject) -> Response {
        self.metrics.rejected(reject);
        proxy::reject_response(reject)
    }

    /// The tracker lost its writer: wake every poller (each asks `Tracker::poll_wait` again and
    /// finds itself due).
    fn repoll(&self) {
        self.repoll.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Unix time in ms, as the tracker and the replicas' RFC 3339 leases count it.
fn now_ms() -> Millis {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(d: Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A configured gateway: build it, then [`Gateway::serve`] it (or take its [`Gateway::router`] and
/// run the pollers yourself, as the benchmark does).
#[derive(Clone, Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    root_metrics: bool,
}

impl Gateway {
    pub fn new(args: &GatewayArgs) -> Result<Gateway, GatewayError> {
        if args.poll_interval < MIN_POLL_INTERVAL {
            return Err(GatewayError::PollInterval);
        }
        let mut replicas = Vec::with_capacity(args.replicas.len());
        for r in &args.replicas {
            let checked = parse_replica(&format!("{}={}", r.id, r.url)).map_err(|problem| {
                GatewayError::Replica {
                    id: r.id.clone(),
                    problem,
                }
            })?;
            replicas.push(Target {
                id: NodeId::new(checked.id),
                leader_url: format!("{}/_ha/leader", checked.url),
                base: checked.url,
                polls: AtomicU64::new(0),
            });
        }
        let tracker = Tracker::new(
            replicas.iter().map(|t| t.id.clone()).collect(),
            TrackerConfig {
                hold: duration_ms(args.failover_hold),
                ..TrackerConfig::new(duration_ms(args.poll_interval), duration_ms(args.ryw_ttl))
            },
        )?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(args.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        let poll_client = reqwest::Client::builder()
            .connect_timeout(args.connect_timeout.min(args.poll_timeout))
            .pool_max_idle_per_host(1)
            .build()
            .map_err(GatewayError::PollClient)?;
        Ok(Gateway {
            shared: Arc::new(Shared {
                tracker: Mutex::new(tracker),
                replicas,
                client,
                poll_client,
                metrics: Metrics::new(),
                poll_interval: args.poll_interval,
                poll_timeout: args.poll_timeout,
                upstream_timeout: args.upstream_timeout,
                body_idle_timeout: args.body_idle_timeout,
                retry_buffer_bytes: args.retry_buffer_bytes,
                refusals: crate::refusals::SourceLog::default(),
                repoll: watch::Sender::new(0),
                polled: watch::Sender::new(0),
            }),
            root_metrics: args.root_metrics,
        })
    }

    /// The gateway's endpoints and the proxy for every other path. Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so `X-Forwarded-For` gets the peer.
    pub fn router(&self) -> Router {
        let mut router = Router::new()
            .route("/_gateway/metrics", get(metrics_handler))
            .route("/_gateway/healthz", get(healthz))
            .route("/_gateway/readyz", get(readyz))
            .route("/_gateway/state", get(state));
        if self.root_metrics {
            router = router.route("/metrics", get(metrics_handler));
        }
        router
            .fallback(proxy::proxy)
            .with_state(Arc::clone(&self.shared))
    }

    /// Polls every replica once, concurrently (each poll bounded by `--poll-timeout`).
    pub async fn poll_all_once(&self) {
        let polls = (0..self.shared.replicas.len()).map(|ix| {
            let shared = Arc::clone(&self.shared);
            async move {
                let mut last = metrics::PollKind::Ok;
                poll::poll_and_record(&shared, ix, &mut last).await;
            }
        });
        futures::future::join_all(polls).await;
    }

    /// Starts one polling task per replica; they stop when the returned set is dropped.
    pub fn spawn_pollers(&self) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for ix in 0..self.shared.replicas.len() {
            tasks.spawn(poll::poll_loop(Arc::clone(&self.shared), ix));
        }
        tasks
    }

    /// Polls and serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let _pollers = self.spawn_pollers();
        let app = self
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(crate::net::nodelay(listener), app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(GatewayError::Serve)
    }
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> Response {
    {
        let t = shared.lock_tracker();
        let now = now_ms();
        shared
            .metrics
            .set_state(t.highest_term().0, t.writer(now).is_some(), t.pin_count());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    // Taking the lock proves it is not poisoned: a failed invariant makes the probe fail.
    let _ = shared.lock_tracker().highest_term();
    (StatusCode::OK, "ok").into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.lock_tracker().writer(now_ms()).is_some() {
        (StatusCode::OK, "ok").into_response()
    } else {
        proxy::reject_response(Reject::NoWriter)
    }
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    let view = {
        let t = shared.lock_tracker();
        let now = now_ms();
        let writer = t.writer(now);
        serde_json::json!({
            "term": t.highest_term().0,
            "writer": writer.and_then(|(ix, _, _)| t.replica_id(ix)).map(NodeId::as_str),
            "writer_lease_expires_ms": writer.map(|(_, _, lease)| lease.0),
            "pins": t.pin_count(),
            "replicas": shared.replicas.iter().enumerate().map(|(ix, r)| serde_json::json!({
                "id": r.id.as_str(),
                "url": r.base,
                "ready": t.is_ready(now, ix),
                "reported_term": t.reported_term(ix).map(|term| term.0),
                "polls": r.polls.load(std::sync::atomic::Ordering::Relaxed),
            })).collect::<Vec<_>>(),
        })
    };
    proxy::json_response(StatusCode::OK, view.to_string())
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing the pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// The `gateway` subcommand: build, bind, poll and serve until SIGINT/SIGTERM.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    init_logging();
    let gateway = Gateway::new(&args)?;
    let listener =
        TcpListener::bind(&args.listen)
            .await
            .map_err(|source| GatewayError::Listen {
                addr: args.listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    tracing::info!(
        %addr,
        replicas = args.replicas.len(),
        poll_interval = ?args.poll_interval,
        ryw_ttl = ?args.ryw_ttl,
        "gateway listening"
    );
    gateway.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// JSON logs on stderr (level from `RUST_LOG`, default info), unless the binary set up logging.
fn init_logging() {
    crate::controller::init_logging(crate::controller::LogFormat::Json);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_go_form() {
        let ms = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1.5h"), Ok(5_400_000));
        assert_eq!(ms(".5s"), Ok(500));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1_500)));
        for bad in [
            "",
            "5",
            "s",
            "1x",
            "-1s",
            "1..5s",
            "1s5",
            "1 s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn replicas_parse() {
        assert_eq!(
            parse_replica("b-0=http://10.0.0.1:8090/"),
            Ok(ReplicaArg {
                id: "b-0".into(),
                url: "http://10.0.0.1:8090".into()
            })
        );
        assert_eq!(
            parse_replica("b-1=http://b-1.b-hs:8090/prefix")
                .unwrap()
                .url,
            "http://b-1.b-hs:8090/prefix"
        );
        for bad in [
            "b-0",
            "=http://x",
            "b-0=https://x",
            "b-0=x:80",
            "b-0=http://x/?q=1",
        ] {
            assert!(parse_replica(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn args_parse_with_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: GatewayArgs,
        }
        let cli = Cli::try_parse_from([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--replicas",
            "b-0=http://127.0.0.1:1,b-1=http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(cli.args.replicas.len(), 2);
        assert_eq!(cli.args.poll_interval, Duration::from_secs(1));
        assert_eq!(cli.args.ryw_ttl, Duration::from_secs(5));
        assert!(cli.args.root_metrics);
        let cli = Cli::try_parse_from([
            "gateway",
            "--replicas",
            "b-0=http://127.0.0.1:1",
            "--poll-interval",
            "200ms",
            "--ryw-ttl",
            "1m",
            "--root-metrics",
            "false",
        ])
        .unwrap();
        assert_eq!(cli.args.poll_interval, Duration::from_millis(200));
        assert_eq!(cli.args.ryw_ttl, Duration::from_secs(60));
        assert!(!cli.args.root_metrics);
    }
}
