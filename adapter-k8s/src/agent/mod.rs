//! `base-operator agent`: the Quasar agent that runs beside Base in every pod. It runs the core
//! election (`base_core::quasar`) with its peers over HTTP and is the pod's front door: reads go to
//! the local Base; a write goes there only while this node holds a valid writer lease (checked
//! again right before forwarding, with the term as the fencing token `X-Base-Term`), otherwise the
//! client gets `307` to the writer or `503 {"error":"no_writer"}`.
//!
//! Endpoints. Client port (`--listen`): `GET /_ha/leader`, `GET /_ha/peers`, `GET /healthz`,
//! `GET /readyz`; every other path under `/_ha/`, `/_quasar/`, `/_replica/` is a `404` of the
//! agent's own (counted); everything else is proxied. Control port (`--peer-port`):
//! `POST /_quasar/msg` (peers, HMAC-signed) and `GET /_quasar/metrics`; without `--peer-port`
//! (development only) these two are on the client port. Every response of the client port
//! carries `X-Base-Leader` (the writer's URL, empty if none is known) and `X-Base-Term`.
//!
//! - **Transfer** — by the pod annotation `hanzo.ai/transfer-to`, read from the downward-API
//!   annotations file (`--fence-file`, as the fence): a JSON request `{"to","term","at","by"}`
//!   that acts at most once and only on the writer of that term (`base_core::control`); the
//!   writer stops accepting writes at once and hands over (`Input::TransferWriter`). The operator
//!   sets it for writer-last rolling updates and switchovers, so who may move the writer is who
//!   may patch the pod. No HTTP endpoint moves the writer (there is no `POST /_ha/transfer`).
//! - **Fencing** — `--fence-file` (the downward-API annotations file, re-read every second, see
//!   [`fence`]): while the pod holds `hanzo.ai/fenced="true"` the replica accepts no writes and does
//!   not stand for election (a writer hands over first); it still votes, serves reads and stays
//!   ready (`/readyz` says `ready (fenced: reads only)`; `/readyz` and `/_ha/peers` carry
//!   `X-Base-Fenced`). A missing or unreadable file is "not fenced", with a warning.
//! - **Peer authentication** — `--peer-key-dir` (a mounted Secret: `current`, optional `previous`,
//!   re-read every `--peer-key-reload-ms`): every peer message is signed with HMAC-SHA256 over the
//!   sender, receiver, timestamp, nonce and body; forged, foreign, stale, replayed and misaddressed
//!   messages are dropped and counted (see [`auth`], which also says why an HMAC and not mTLS, and
//!   how a rotation proceeds without an outage). Without the flag, messages are not authenticated
//!   (a warning at start).
//! - **Control port** — `--peer-port`: peer messages and metrics are served only on that port
//!   (same host as `--listen`), and messages are sent to that port of each peer's host, so a
//!   NetworkPolicy can admit only the Base's own pods to it.
//! - **Proxy hygiene** — `--proxy-max-concurrent` proxied requests at most (503 `overloaded`
//!   beyond), and `--proxy-idle-timeout-ms` cuts a request or response body that stays idle (see
//!   [`proxy`]).
//! - **Metrics** — `GET /_quasar/metrics` on the control port (Prometheus text, see [`metrics`]):
//!   messages accepted, dropped by reason, control requests refused by reason, transfer requests
//!   by outcome, transfers, fenced, term, is_writer, position, proxy rejections.
//! - **Replica contract** (`docs/replica-contract.md`, [`replication`]) — by default, with no
//!   flag: the agent long-polls its Base's `GET /_replica/state` and gives the election the
//!   store's durable position (with its epoch); it pushes role, term, writer and (on the writer)
//!   commit with `PUT /_replica/role`; it holds each write's answer until the entry the store
//!   names (`X-Base-Log-Index`/`-Term`) is held by a majority, else `504
//!   {"error":"commit_unknown"}` after `--commit-timeout-ms`; a strong read (`level=strong`, and
//!   any read with `X-Base-Writer: required`, which the gateway sets on the reads it pins to the
//!   writer) is served only by the writer within its lease once its term's no-op committed
//!   (`Agent::admit_writer_read`; else `307`/`503 no_writer`, or `503 term_start_not_committed`);
//!   replicas pull
//!   the log from the writer's agent on its control port (signed like peer messages). Every
//!   decision is the core `replication::Coordinator`'s. A Base answering `404` (or without
//!   `X-Base-Replica-Contract`) runs as before, reported by a warning and
//!   `quasar_replication_contract 0`.
//! - **Position** — for a Base without the contract only: `--position-url` (polled every 200 ms;
//!   a number or `{"position": N}`). A node grants its (pre-)vote only to a candidate at least
//!   as advanced, and a writer hands over only to a peer at least as advanced; a smaller answer
//!   is ignored. Without either every node is at 0 (equally up to date).
//!
//! Layers: every decision above is the core agent machine's (`base_core::agent::Agent`, which
//! the simulation drives too); [`driver`] feeds it and performs its effects in order (persisting
//! through [`state`] before sending through [`transport`]); [`http`] serves from its queries;
//! [`clock`] gives a monotonic Unix-millisecond `now`. On SIGTERM/SIGINT a writer hands its role
//! to an up-to-date peer (bounded by `--shutdown-transfer-timeout-ms`) before the process exits.

pub mod auth;
pub mod clock;
pub mod config;
pub mod driver;
pub mod fence;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod replication;
pub mod state;
pub mod transport;

use base_core::Millis;
use base_core::NodeId;
use base_core::agent::Agent;
use base_core::quasar::{PersistedState, timing as qt};
use clock::Clock;
use config::{ConfigError, PeerSpec};
use driver::{CONTROL_QUEUE_MAX, Control, Driver};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use state::StateStore;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Longest accepted `--tick-ms`: the tick must be well inside the heartbeat interval.
pub const TICK_MS_MAX: u64 = 50;
/// How often `--position-url` is polled.
const POSITION_POLL: Duration = Duration::from_millis(200);

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// This replica's id (the pod name).
    #[arg(long, env = "BASE_NODE_ID")]
    pub node_id: String,
    /// The cluster's agents: `id=http://host:port,…`, or plain URLs whose first DNS label is the
    /// id (`http://<name>-<i>.<name>-hs.<ns>.svc.cluster.local:<port>`). This node's own entry, if
    /// present, gives its advertised URL.
    #[arg(long, env = "BASE_PEERS", default_value = "")]
    pub peers: String,
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "BASE_AGENT_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: String,
    /// The local Base process (`http://127.0.0.1:<internal port>`).
    #[arg(
        long,
        env = "BASE_AGENT_UPSTREAM",
        default_value = "http://127.0.0.1:8091"
    )]
    pub upstream: String,
    /// Where the term and vote are kept (must survive restarts: the pod's volume).
    #[arg(long, env = "BASE_AGENT_STATE_DIR", default_value = "/data/quasar")]
    pub state_dir: PathBuf,
    /// The URL peers and clients reach this agent at (default: this node's `--peers` entry, else
    /// `http://<listen>`).
    #[arg(long, env = "BASE_AGENT_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Optional: a URL on the local Base answering its replication position (a number, or JSON
    /// `{"position": N, "epoch": E}`; the epoch, 0 if absent, grows whenever the store's log lost a
    /// suffix, and lets the position go down). Without it every node counts as equally up to date.
    #[arg(long, env = "BASE_AGENT_POSITION_URL")]
    pub position_url: Option<String>,
    #[arg(long, env = "BASE_QUASAR_HEARTBEAT_MS", default_value_t = qt::DEFAULT_HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval_ms: u64,
    #[arg(long, env = "BASE_QUASAR_ELECTION_TIMEOUT_MIN_MS", default_value_t = qt::DEFAULT_ELECTION_TIMEOUT_MIN_MS)]
    pub election_timeout_min_ms: u64,
    #[arg(long, env = "BASE_QUASAR_ELECTION_TIMEOUT_MAX_MS", default_value_t = qt::DEFAULT_ELECTION_TIMEOUT_MAX_MS)]
    pub election_timeout_max_ms: u64,
    /// Bound on the relative clock drift between any two nodes, in parts per million.
    #[arg(long, env = "BASE_QUASAR_DRIFT_BOUND_PPM", default_value_t = qt::DEFAULT_DRIFT_BOUND_PPM)]
    pub drift_bound_ppm: u64,
    #[arg(long, env = "BASE_QUASAR_LEASE_MARGIN_MS", default_value_t = qt::DEFAULT_LEASE_MARGIN_MS)]
    pub lease_margin_ms: u64,
    /// How often the election is ticked.
    #[arg(long, env = "BASE_QUASAR_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Timeout of each message POST to a peer.
    #[arg(long, env = "BASE_QUASAR_PEER_TIMEOUT_MS", default_value_t = 500)]
    pub peer_timeout_ms: u64,
    /// Timeout for the local Base to answer a forwarded request (response headers).
    #[arg(long, env = "BASE_AGENT_UPSTREAM_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_timeout_ms: u64,
    /// How long a writer waits for its successor on SIGTERM before exiting anyway.
    #[arg(
        long,
        env = "BASE_AGENT_SHUTDOWN_TRANSFER_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub shutdown_transfer_timeout_ms: u64,
    /// The pod's annotations as the downward API writes them (`key="value"` lines). The replica
    /// is fenced (no writes, not standing for election; reads go on) while it holds
    /// `hanzo.ai/fenced="true"`; `hanzo.ai/transfer-to` asks the writer to hand over. Re-read
    /// every second; missing or unreadable = not fenced, no request.
    #[arg(long, env = "BASE_FENCE_FILE")]
    pub fence_file: Option<PathBuf>,
    /// The desired members come from the pod annotation `hanzo.ai/members` in `--fence-file`
    /// (the operator's pods): a node with no persisted configuration starts joined (no voters,
    /// never campaigns) and bootstraps only if the annotation names it one of the cluster's
    /// initial members; the writer carries out changes of the desired members by joint
    /// consensus, and `/_ha/leader` reports the configuration. `--peers` is then only whom the
    /// agent may talk to. Without it, `--peers` are the initial members (use without the operator).
    #[arg(long, env = "BASE_MEMBERS_FROM_ANNOTATIONS")]
    pub members_from_annotations: bool,
    /// A mounted Secret with the Base's peer key: `current` (required) and `previous`
    /// (optional, still accepted during a rotation). Peer messages are then signed and checked
    /// (HMAC-SHA256); without it they are not authenticated.
    #[arg(long, env = "BASE_PEER_KEY_DIR")]
    pub peer_key_dir: Option<PathBuf>,
    /// How often the peer key files are re-read (a rotation needs no restart).
    #[arg(long, env = "BASE_PEER_KEY_RELOAD_MS", default_value_t = auth::KEY_RELOAD_DEFAULT_MS)]
    pub peer_key_reload_ms: u64,
    /// The control port: serve peer messages and `/_quasar/metrics` only on this port (same host
    /// as `--listen`), and send messages to this port of each peer's host. Without it both share
    /// the client port (development only).
    #[arg(long, env = "BASE_PEER_PORT")]
    pub peer_port: Option<u16>,
    /// How long a write's answer is held for its entry to commit (a majority holds it) before
    /// the client gets `504 {"error":"commit_unknown"}` (stores with the replica contract).
    #[arg(long, env = "BASE_AGENT_COMMIT_TIMEOUT_MS", default_value_t = 10_000)]
    pub commit_timeout_ms: u64,
    /// Most proxied requests in flight at once; beyond it clients get 503 `overloaded`.
    #[arg(long, env = "BASE_AGENT_PROXY_MAX_CONCURRENT", default_value_t = proxy::PROXY_MAX_CONCURRENT_DEFAULT)]
    pub proxy_max_concurrent: usize,
    /// A proxied request or response body that produces nothing for this long while the other
    /// side waits is cut.
    #[arg(long, env = "BASE_AGENT_PROXY_IDLE_TIMEOUT_MS", default_value_t = proxy::PROXY_IDLE_TIMEOUT_DEFAULT_MS)]
    pub proxy_idle_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "--tick-ms: {tick_ms} must be between 1 and {TICK_MS_MAX} and below the heartbeat interval"
    )]
    Tick { tick_ms: u64 },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    #[error("--proxy-max-concurrent and --proxy-idle-timeout-ms must be positive")]
    Proxy,
    #[error("quasar node: {0}")]
    Node(#[from] base_core::quasar::NodeError),
    #[error("peer transport: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("election driver: {0}")]
    Driver(#[from] driver::DriverError),
    #[error("replication: {0}")]
    Replication(String),
    #[error("election driver stopped unexpectedly: {0}")]
    DriverPanicked(String),
}

/// A peer as the HTTP side sees it.
pub struct PeerEntry {
    pub url: String,
}

/// State shared by the driver and the HTTP handlers.
pub struct Shared {
    pub id: NodeId,
    pub self_url: String,
    pub peers: BTreeMap<NodeId, PeerEntry>,
    /// The agent's decisions (`base_core::agent`): the driver steps it, the handlers ask it.
    agent: Mutex<Agent>,
    pub clock: Clock,
    pub control: mpsc::Sender<Control>,
    /// `scheme://authority` of the local Base, without a trailing slash.
    pub upstream: String,
    pub client: Client<HttpConnector, axum::body::Body>,
    pub upstream_timeout: Duration,
    /// Peer keys and nonce caches (no keys: unauthenticated).
    pub auth: Arc<auth::PeerAuth>,
    pub metrics: metrics::AgentMetrics,
    /// Peer messages arrive on `--peer-port`, not on the client port.
    pub separate_peer_port: bool,
    /// Permits for proxied requests in flight.
    pub proxy_limit: Arc<Semaphore>,
    pub proxy_idle_timeout: Duration,
    /// Refused control requests are logged once per source.
    pub refusals: crate::refusals::SourceLog,
    /// The replica contract with the local store (see [`replication`]).
    pub replication: replication::Replication,
    /// Per peer: the base URL of its control port (shipping requests go there).
    pub peer_control_urls: BTreeMap<NodeId, String>,
}

impl Shared {
    /// The agent machine, even if a panicking thread poisoned the lock (the driver's panics end
    /// the process anyway; readers must not add their own).
    pub fn lock_agent(&self) -> MutexGuard<'_, Agent> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url_of(&self, id: &NodeId) -> String {
        if *id == self.id {
            return self.self_url.clone();
        }
        self.peers
            .get(id)
            .map(|p| p.url.clone())
            .unwrap_or_default()
    }
}

/// Validated arguments, ready to start.
struct Plan {
    id: NodeId,
    self_url: String,
    peers: Vec<PeerSpec>,
    timing: base_core::quasar::Timing,
    listen: SocketAddr,
    upstream: String,
    /// Where peer messages are served, when not on `listen`.
    peer_listen: Option<SocketAddr>,
    /// Per peer: the base URL its messages go to (its `--peer-port` when set).
    message_urls: Vec<(NodeId, String)>,
}

fn plan(args: &AgentArgs) -> Result<Plan, AgentError> {
    let id = args.node_id.trim();
    if id.is_empty() {
        return Err(ConfigError::EmptyNodeId.into());
    }
    let id = NodeId::new(id);
    let listen: SocketAddr = args.listen.parse().map_err(|_| ConfigError::Listen {
        value: args.listen.clone(),
    })?;
    let upstream = args.upstream.trim().trim_end_matches('/').to_string();
    let upstream_ok = upstream
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    if !upstream_ok {
        return Err(ConfigError::Upstream {
            value: args.upstream.clone(),
        }
        .into());
    }
    let timing = config::timing(
        args.heartbeat_interval_ms,
        args.election_timeout_min_ms,
        args.election_timeout_max_ms,
        args.drift_bound_ppm,
        args.lease_margin_ms,
    )?;
    if args.tick_ms == 0 || args.tick_ms > TICK_MS_MAX || args.tick_ms >= args.heartbeat_interval_ms
    {
        return Err(AgentError::Tick {
            tick_ms: args.tick_ms,
        });
    }
    if args.proxy_max_concurrent == 0 || args.proxy_idle_timeout_ms == 0 {
        return Err(AgentError::Proxy);
    }
    let mut all = config::parse_peers(&args.peers)?;
    let own = all.iter().position(|p| p.id == id).map(|k| all.remove(k));
    let self_url = args
        .advertise_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .or(own.map(|p| p.url))
        .unwrap_or_else(|| format!("http://{listen}"));
    let peer_listen = match args.peer_port {
        None => None,
        Some(port) if port == 0 || port == listen.port() => {
            return Err(ConfigError::PeerPort { port }.into());
        }
        Some(port) => Some(SocketAddr::new(listen.ip(), port)),
    };
    let message_urls = all
        .iter()
        .map(|p| {
            let url = match args.peer_port {
                Some(port) => config::with_port(&p.url, port)?,
                None => p.url.clone(),
            };
            Ok((p.id.clone(), url))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(Plan {
        id,
        self_url,
        peers: all,
        timing,
        listen,
        upstream,
        peer_listen,
        message_urls,
    })
}

/// Runs the agent until SIGTERM/SIGINT (after handing the writer role over) or a fatal error.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging();
    let plan = plan(&args)?;
    let store = StateStore::open(&args.state_dir)?;
    let persisted: PersistedState = store.load()?;
    let keys = match &args.peer_key_dir {
        Some(dir) => {
            let keys = auth::load_keys(dir)?;
            if keys.current.len() < auth::KEY_BYTES_RECOMMENDED {
                tracing::warn!(
                    bytes = keys.current.len(),
                    "the peer key is shorter than {} bytes",
                    auth::KEY_BYTES_RECOMMENDED
                );
            }
            Some(keys)
        }
        None => {
            tracing::warn!(
                "no --peer-key-dir: peer messages are NOT authenticated; anyone who can reach the peer endpoint can vote"
            );
            None
        }
    };
    let peer_auth = Arc::new(auth::PeerAuth::new(keys));
    // The fence is read before the node may campaign (a restarted node waits out its promise).
    let mut fence_seen = None;
    let annotations = args
        .fence_file
        .as_deref()
        .map(|f| fence::read_and_log(f, &mut fence_seen))
        .unwrap_or_default();
    let fenced = annotations.fenced;
    let clock = Clock::new();
    let seed =
        std::collections::hash_map::RandomState::new().hash_one((plan.id.as_str(), clock.now().0));
    // A transfer request already in the file at start is old: the machine refuses (and
    // remembers) it, and it never acts later (see `base_core::control`).
    let agent = Agent::new(
        base_core::agent::Config {
            id: plan.id.clone(),
            self_url: plan.self_url.clone(),
            peers: plan
                .peers
                .iter()
                .map(|p| (p.id.clone(), p.url.clone()))
                .collect(),
            timing: plan.timing,
            shutdown_timeout: Millis(args.shutdown_transfer_timeout_ms),
            members_from_annotations: args.members_from_annotations,
        },
        persisted.clone(),
        seed,
        clock.now(),
        &annotations,
    )
    .map_err(AgentError::from)?;
    if plan.peer_listen.is_none() {
        tracing::warn!(
            "no --peer-port: peer messages and /_quasar/metrics share the client port (for development only)"
        );
    }
    tracing::info!(
        node_id = %plan.id, url = %plan.self_url, term = %persisted.term,
        voted_for = ?persisted.voted_for, peers = plan.peers.len(), fenced,
        authenticated = peer_auth.enabled(), peer_listen = ?plan.peer_listen,
        "quasar agent starting"
    );

    let (control, rx) = mpsc::channel(CONTROL_QUEUE_MAX);
    let peer_timeout = Duration::from_millis(args.peer_timeout_ms.max(1));
    let transport = transport::Transport::start(
        &plan.message_urls,
        peer_timeout,
        Duration::from_millis(plan.timing.election_timeout_min_ms().0 / 2),
        peer_auth.clone(),
        clock,
    )
    .map_err(AgentError::from)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let quorum = base_core::replication::QuorumConfig::simple(
        std::iter::once(plan.id.clone()).chain(plan.peers.iter().map(|p| p.id.clone())),
    )
    .map_err(|e| AgentError::Replication(e.to_string()))?;
    let coordinator = base_core::replication::Coordinator::new(
        plan.id.clone(),
        plan.self_url.clone(),
        quorum,
        args.heartbeat_interval_ms,
    );
    let (repl, repl_tasks) = replication::Replication::new(
        coordinator,
        Duration::from_millis(args.commit_timeout_ms.max(1)),
    );
    let shared = Arc::new(Shared {
        id: plan.id.clone(),
        self_url: plan.self_url.clone(),
        peers: plan
            .peers
            .iter()
            .map(|p| (p.id.clone(), PeerEntry { url: p.url.clone() }))
            .collect(),
        agent: Mutex::new(agent),
        clock,
        control: control.clone(),
        upstream: plan.upstream.clone(),
        client,
        upstream_timeout: Duration::from_millis(args.upstream_timeout_ms.max(1)),
        auth: peer_auth.clone(),
        metrics: metrics::AgentMetrics::default(),
        separate_peer_port: plan.peer_listen.is_some(),
        proxy_limit: Arc::new(Semaphore::new(args.proxy_max_concurrent)),
        proxy_idle_timeout: Duration::from_millis(args.proxy_idle_timeout_ms),
        refusals: crate::refusals::SourceLog::default(),
        replication: repl,
        peer_control_urls: plan.message_urls.iter().cloned().collect(),
    });
    shared.metrics.peer_auth.set(i64::from(peer_auth.enabled()));

    let driver = Driver {
        shared: shared.clone(),
        store,
        transport,
        rx,
        tick: Duration::from_millis(args.tick_ms),
    };
    let mut driver_task = tokio::spawn(driver.run());
    replication::start(shared.clone(), repl_tasks);
    if let Some(url) = args.position_url.clone() {
        tokio::spawn(poll_position(
            shared.clone(),
            url,
            control.clone(),
            peer_timeout,
        ));
    }
    if let Some(file) = args.fence_file.clone() {
        tokio::spawn(fence::watch(file, fence_seen, annotations, control.clone()));
    }
    if let Some(dir) = args.peer_key_dir.clone() {
        let every = Duration::from_millis(args.peer_key_reload_ms.max(100));
        tokio::spawn(auth::reload_keys(peer_auth.clone(), dir, every));
    }

    let listener = tokio::net::TcpListener::bind(plan.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: plan.listen.to_string(),
            source,
        })?;
    tracing::info!(addr = %plan.listen, upstream = %plan.upstream, "serving");
    let app = http::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let peer_server = match plan.peer_listen {
        Some(addr) => {
            let peer_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(%addr, "serving the control port (peer messages, metrics)");
            let peer_app = http::peer_router(shared.clone())
                .into_make_service_with_connect_info::<SocketAddr>();
            let until = stopped(http_stopped.clone());
            Some(tokio::spawn(async move {
                axum::serve(crate::net::nodelay(peer_listener), peer_app)
                    .with_graceful_shutdown(until)
                    .await
            }))
        }
        None => None,
    };
    let until = stopped(http_stopped.clone());
    let server = tokio::spawn(async move {
        axum::serve(crate::net::nodelay(listener), app)
            .with_graceful_shutdown(until)
            .await
    });

    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            let (done, handed_over) = oneshot::channel();
            if control.send(Control::Shutdown { done }).await.is_ok() {
                let _ = handed_over.await;
            }
            match driver_task.await {
                Ok(result) => result.map_err(AgentError::from),
                Err(e) => Err(AgentError::DriverPanicked(e.to_string())),
            }
        }
        joined = &mut driver_task => match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AgentError::from(e)),
            Err(e) => Err(AgentError::DriverPanicked(e.to_string())),
        },
    };
    let _ = stop_http.send(true);
    for server in std::iter::once(server).chain(peer_server) {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("HTTP connections still open at exit"),
        }
    }
    outcome?;
    tracing::info!("quasar agent stopped");
    Ok(())
}

/// `--position-url`, for a store without the replica contract (with it, the position comes from
/// `GET /_replica/state`, and this poll is ignored).
async fn poll_position(
    shared: Arc<Shared>,
    url: String,
    control: mpsc::Sender<Control>,
    timeout: Duration,
) {
    let Ok(client) = reqwest::Client::builder().timeout(timeout).build() else {
        tracing::warn!("cannot build the position client");
        return;
    };
    let mut interval = tokio::time::interval(POSITION_POLL);
    loop {
        interval.tick().await;
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        let contract = shared.replication.contract();
        if contract == base_core::replication::Contract::Supported {
            continue;
        }
        if let Some((epoch, position)) = parse_position(&text)
            && control
                .send(Control::Position { epoch, position })
                .await
                .is_err()
        {
            return;
        }
    }
}

/// A position answer: a bare integer (epoch 0), or JSON with `position` and optionally `epoch`
/// (which the store raises whenever its log loses a suffix, so the position may go down).
fn parse_position(text: &str) -> Option<(u64, u64)> {
    if let Ok(position) = text.trim().parse::<u64>() {
        return Some((0, position));
    }
    let value = serde_json::from_str::<serde_json::Value>(text).ok()?;
    let position = value.get("position")?.as_u64()?;
    let epoch = match value.get("epoch") {
        None => 0,
        Some(e) => e.as_u64()?,
    };
    Some((epoch, position))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
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
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn init_logging() {
    crate::controller::init_logging(crate::controller::LogFormat::Json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn own_entry_gives_the_advertised_url() {
        let cli = Cli::parse_from([
            "x",
            "--node-id",
            "app-1",
            "--peers",
            "http://app-0.app-hs.ns.svc.cluster.local:8090,http://app-1.app-hs.ns.svc.cluster.local:8090",
            "--listen",
            "127.0.0.1:0",
        ]);
        let p = plan(&cli.agent).unwrap();
        assert_eq!(p.self_url, "http://app-1.app-hs.ns.svc.cluster.local:8090");
        assert_eq!(p.peers.len(), 1);
        assert_eq!(p.peers[0].id.as_str(), "app-0");
    }

    #[test]
    fn peer_port_moves_peer_messages() {
        let base = [
            "x",
            "--node-id",
            "app-0",
            "--listen",
            "0.0.0.0:8090",
            "--peers",
            "http://app-0.app-hs.ns.svc.cluster.local:8090,http://app-1.app-hs.ns.svc.cluster.local:8090",
        ];
        let cli = Cli::parse_from(base.iter().chain(&["--peer-port", "8092"]));
        let p = plan(&cli.agent).unwrap();
        assert_eq!(p.peer_listen, Some("0.0.0.0:8092".parse().unwrap()));
        assert_eq!(
            p.message_urls,
            vec![(
                NodeId::from("app-1"),
                "http://app-1.app-hs.ns.svc.cluster.local:8092".to_string()
            )]
        );
        // Clients and the gateway still see the client port.
        assert_eq!(
            p.peers[0].url,
            "http://app-1.app-hs.ns.svc.cluster.local:8090"
        );
        let cli = Cli::parse_from(base.iter().chain(&["--peer-port", "8090"]));
        assert!(plan(&cli.agent).is_err());
        let cli = Cli::parse_from(base);
        let p = plan(&cli.agent).unwrap();
        assert_eq!(p.peer_listen, None);
        assert_eq!(
            p.message_urls[0].1,
            "http://app-1.app-hs.ns.svc.cluster.local:8090"
        );
        let cli = Cli::parse_from(base.iter().chain(&["--proxy-max-concurrent", "0"]));
        assert!(plan(&cli.agent).is_err());
    }

    #[test]
    fn refuses_a_bad_upstream_and_timing() {
        let base = ["x", "--node-id", "a", "--listen", "127.0.0.1:0"];
        let cli = Cli::parse_from(base.iter().chain(&["--upstream", "https://x/y"]));
        assert!(plan(&cli.agent).is_err());
        let cli = Cli::parse_from(base.iter().chain(&["--lease-margin-ms", "0"]));
        assert!(plan(&cli.agent).is_err());
    }

    /// The store's answer gives the election its position and epoch: a bare number is epoch 0,
    /// JSON may name the epoch, and anything malformed is ignored rather than taken as 0.
    #[test]
    fn parses_position_answers() {
        assert_eq!(parse_position("42\n"), Some((0, 42)));
        assert_eq!(parse_position(r#"{"position": 7}"#), Some((0, 7)));
        assert_eq!(
            parse_position(r#"{"position": 7, "epoch": 3}"#),
            Some((3, 7))
        );
        assert_eq!(parse_position(r#"{"position": 7, "epoch": "x"}"#), None);
        assert_eq!(parse_position(r#"{"epoch": 3}"#), None);
        assert_eq!(parse_position("-1"), None);
        assert_eq!(parse_position(""), None);
    }
}
