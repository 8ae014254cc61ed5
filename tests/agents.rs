//! Three real `base-operator agent` processes on loopback, each in front of a tiny stand-in Base
//! (an in-process HTTP server that records the writes it receives). A writer is elected; its
//! process is killed; another agent wins a higher term and only it forwards writes; the killed
//! one, restarted with its state dir, rejoins as a follower without raising the term; a voter
//! restarted with every peer down is back in its term and still bound by its vote. A writer
//! that gets SIGTERM hands its role over before it exits. A transfer request written into the
//! writer's annotations file (`hanzo.ai/transfer-to`, as the kubelet would) hands the role to a
//! named follower (term + 1). A fenced replica (downward-API annotations file) hands over, stays
//! ready for reads, and never becomes writer again while fenced. With peer keys and a peer port,
//! a rogue process on loopback (wrong key, another Base's key, replays, stale and misaddressed
//! messages) changes neither the term nor the writer, and the drop counters show it; a key
//! rotation goes through without an outage. The proxy bounds concurrency and cuts idle bodies.
//! Positions polled from `--position-url` decide who may be handed the role and who may win.
//!
//! Everything is polled with generous deadlines; nothing asserts on a fixed sleep.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const DEADLINE: Duration = Duration::from_secs(20);
const NODES: usize = 3;

fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

fn free_port_on(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The peer key every agent of the test Base starts with, and the one it rotates to.
const KEY_1: &str = "test-base-peer-key-one-0123456789abcdef";
const KEY_2: &str = "test-base-peer-key-two-fedcba9876543210";
const OTHER_BASE_KEY: &str = "another-base-peer-key-0000000000000000";

/// One write as the stand-in Base saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    term: Option<u64>,
}

#[derive(Clone, Default)]
struct Upstream {
    writes: Arc<Mutex<Vec<Seen>>>,
    /// `/slow` has been entered; it answers once `release` is notified (or after 10 s).
    slow_started: Arc<std::sync::atomic::AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    /// The body `GET /_position` answers (the replication position), and how often it was asked.
    position: Arc<Mutex<String>>,
    position_polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    fn set_position(&self, body: &str) {
        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = body.to_string();
    }

    fn position_polls(&self) -> usize {
        self.position_polls
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn writes(&self) -> Vec<Seen> {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn record(State(up): State<Upstream>, request: Request) -> (StatusCode, String) {
    if request.method() != axum::http::Method::GET {
        let term = request
            .headers()
            .get("x-base-term")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        up.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen {
                path: request.uri().path().to_string(),
                term,
            });
    }
    (StatusCode::OK, "stand-in".to_string())
}

/// Answers when the test says so (to hold a proxy permit).
async fn slow(State(up): State<Upstream>) -> &'static str {
    let released = up.release.notified();
    up.slow_started
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
    "slow"
}

async fn position(State(up): State<Upstream>) -> String {
    up.position_polls
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    up.position
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Sends one chunk, then nothing, forever.
async fn stall() -> axum::body::Body {
    use futures::StreamExt;
    let first = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"first chunk"))
    });
    axum::body::Body::from_stream(first.chain(futures::stream::pending()))
}

/// Starts a stand-in Base on a free port; returns its recorder and port.
async fn start_upstream() -> (Upstream, u16) {
    let up = Upstream::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route("/slow", axum::routing::get(slow))
        .route("/stall", axum::routing::get(stall))
        .route("/_position", axum::routing::get(position))
        .fallback(record)
        .with_state(up.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (up, port)
}

/// Stands in for a stopped agent at its address, to hear what the others send it: every peer
/// message POSTed to it, in order.
#[derive(Clone, Default)]
struct PeerStub {
    heard: Arc<Mutex<Vec<Value>>>,
}

impl PeerStub {
    /// Listens on `host:port` (the address of an agent that was just killed: SO_REUSEADDR, as its
    /// old connections may linger).
    async fn bind(host: &str, port: u16) -> PeerStub {
        let stub = PeerStub::default();
        let addr: std::net::SocketAddr = format!("{host}:{port}").parse().expect("address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind the stopped agent's address");
        let listener = socket.listen(64).expect("listen");
        let app = Router::new()
            .route(
                "/_quasar/msg",
                axum::routing::post(
                    |State(stub): State<PeerStub>, axum::Json(envelope): axum::Json<Value>| async move {
                        stub.heard
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(envelope);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(stub.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        stub
    }

    /// How many messages it has heard so far.
    fn heard_count(&self) -> usize {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The first message (the envelope's `msg`) heard after the first `skip` that satisfies
    /// `pick`, if any yet.
    fn find(&self, skip: usize, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .skip(skip)
            .map(|e| e["msg"].clone())
            .find(|m| pick(m))
    }
}

struct Agent {
    id: String,
    host: String,
    port: u16,
    upstream_port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    peers: String,
    /// More flags.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .arg("agent")
            .args(["--node-id", &self.id])
            .args(["--peers", &self.peers])
            .args(["--listen", &format!("{}:{}", self.host, self.port)])
            .args([
                "--upstream",
                &format!("http://127.0.0.1:{}", self.upstream_port),
            ])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn base-operator agent");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the process to exit by itself.
    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test cluster runs with beyond the defaults.
#[derive(Clone, Copy, Default)]
struct Options {
    /// `--peer-key-dir <dir>/keys-<i>` (one dir per agent, so rotations can be staggered).
    keys: bool,
    /// `--peer-port`: agent i listens on 127.0.0.<i+1>, peer messages on one shared port number.
    peer_port: bool,
    /// `--fence-file <dir>/annotations-<i>` (absent at start).
    fence: bool,
    /// `--position-url` on the stand-in Base's `/_position` (which answers 0 until set).
    position: bool,
}

/// Writes a file the way the kubelet updates a mounted volume: all at once.
fn write_atomically(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Cluster {
    dir: PathBuf,
    agents: Vec<Agent>,
    upstreams: Vec<Upstream>,
    http: reqwest::Client,
    peer_port: Option<u16>,
}

impl Cluster {
    async fn start(name: &str) -> Cluster {
        Cluster::start_with(name, Options::default()).await
    }

    async fn start_with(name: &str, options: Options) -> Cluster {
        let dir = std::env::temp_dir().join(format!("base-agents-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hosts: Vec<String> = (0..NODES)
            .map(|i| {
                if options.peer_port {
                    format!("127.0.0.{}", i + 1)
                } else {
                    "127.0.0.1".to_string()
                }
            })
            .collect();
        let ports: Vec<u16> = hosts.iter().map(|h| free_port_on(h)).collect();
        let peer_port = options.peer_port.then(free_port);
        let peers = (0..NODES)
            .map(|i| format!("base-{i}=http://{}:{}", hosts[i], ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut agents = Vec::new();
        let mut upstreams = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (up, upstream_port) = start_upstream().await;
            upstreams.push(up.clone());
            let mut extra: Vec<String> = Vec::new();
            if options.keys {
                let keys = dir.join(format!("keys-{i}"));
                std::fs::create_dir_all(&keys).expect("key dir");
                write_atomically(&keys.join("current"), KEY_1);
                extra.push("--peer-key-dir".into());
                extra.push(keys.display().to_string());
                extra.extend(["--peer-key-reload-ms".into(), "300".into()]);
            }
            if let Some(p) = peer_port {
                extra.extend(["--peer-port".into(), p.to_string()]);
            }
            if options.position {
                up.set_position("0");
                extra.push("--position-url".into());
                extra.push(format!("http://127.0.0.1:{upstream_port}/_position"));
            }
            if options.fence {
                extra.push("--fence-file".into());
                extra.push(dir.join(format!("annotations-{i}")).display().to_string());
            }
            let mut agent = Agent {
                id: format!("base-{i}"),
                host: hosts[i].clone(),
                port: *port,
                upstream_port,
                state_dir: dir.join(format!("state-{i}")),
                log: dir.join(format!("agent-{i}.log")),
                peers: peers.clone(),
                extra,
                child: None,
            };
            agent.start();
            agents.push(agent);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Cluster {
            dir,
            agents,
            upstreams,
            http,
            peer_port,
        }
    }

    /// The agent's metrics: on the control port when there is one.
    async fn metrics(&self, i: usize) -> String {
        let url = match self.peer_port {
            Some(port) => format!("http://{}:{port}", self.agents[i].host),
            None => self.agents[i].url(),
        };
        self.http
            .get(format!("{url}/_quasar/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until the writer has heard from every live peer (it hands over only to an up-to-date
    /// one).
    async fn wait_peers_up(&self, w: usize) {
        let start = Instant::now();
        loop {
            let peers: Option<Value> = match self
                .http
                .get(format!("{}/_ha/peers", self.agents[w].url()))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let all_up = peers.as_ref().and_then(Value::as_array).is_some_and(|a| {
                a.iter().all(|p| {
                    let alive = self
                        .agents
                        .iter()
                        .any(|x| p["node_id"] == x.id.as_str() && x.child.is_some());
                    p["up"] == true || !alive
                })
            });
            if all_up {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "peers never up: {peers:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets `hanzo.ai/transfer-to` in agent `i`'s annotations file to `value` (kept: the other
    /// annotations), as the kubelet does after the operator patches the pod.
    fn annotate_transfer(&self, i: usize, value: &str) {
        let path = self.dir.join(format!("annotations-{i}"));
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| !l.starts_with("hanzo.ai/transfer-to="))
            .map(|l| format!("{l}\n"))
            .collect();
        let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!("hanzo.ai/transfer-to=\"{quoted}\"\n"));
        write_atomically(&path, &text);
    }

    /// Asks agent `i` (as writer of `term`) to hand over to `to` (empty: the best peer), through
    /// its annotations file. Each call is a new request.
    fn request_transfer(&self, i: usize, to: &str, term: u64) {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let at = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = serde_json::json!({"to": to, "term": term, "at": at, "by": "test"});
        self.annotate_transfer(i, &value.to_string());
    }

    /// Waits until agent `i` counted `n` transfer requests with this outcome.
    async fn wait_transfer_outcome(&self, i: usize, outcome: &str, n: u64) {
        let name = format!("quasar_transfer_requests_total{{outcome=\"{outcome}\"}}");
        let start = Instant::now();
        loop {
            let m = self.metrics(i).await;
            if sample(&m, &name) >= n {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "agent {i} never counted {name} {n}: {m}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn leader_view(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/_ha/leader", self.agents[i].url()))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Polls until a live agent reports itself as writer and every other live agent agrees.
    /// Returns (index, term).
    async fn agreed_writer(&self, what: &str, accept: impl Fn(usize, u64) -> bool) -> (usize, u64) {
        let start = Instant::now();
        loop {
            let mut views = Vec::new();
            for i in 0..NODES {
                if self.agents[i].child.is_some() {
                    views.push((i, self.leader_view(i).await));
                }
            }
            let claimed = views.iter().find_map(|(i, v)| {
                let v = v.as_ref()?;
                let term = v["term"].as_u64()?;
                (v["node_id"] == self.agents[*i].id.as_str()).then_some((*i, term))
            });
            if let Some((w, term)) = claimed {
                let all_agree = views.iter().all(|(_, v)| {
                    v.as_ref().is_some_and(|v| {
                        v["node_id"] == self.agents[w].id.as_str()
                            && v["term"].as_u64() == Some(term)
                            && v["leader_url"] == self.agents[w].url().as_str()
                    })
                });
                if all_agree && accept(w, term) {
                    return (w, term);
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last views: {views:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until agent `i`'s metric `name` reads `value`.
    async fn wait_metric(&self, i: usize, name: &str, value: u64) {
        let start = Instant::now();
        loop {
            // Not answering yet (just started) counts as not there yet.
            let url = match self.peer_port {
                Some(port) => format!("http://{}:{port}", self.agents[i].host),
                None => self.agents[i].url(),
            };
            let m = match self.http.get(format!("{url}/_quasar/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if sample(&m, name) == value {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "agent {i}: {name} never reached {value}: {m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every (node, term) any agent logged "became the writer" for, from all its runs.
    fn terms_won(&self) -> Vec<(usize, u64)> {
        let mut won = Vec::new();
        for (i, agent) in self.agents.iter().enumerate() {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            for line in log.lines() {
                let Ok(event) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let fields = &event["fields"];
                if fields["message"] == "became the writer" {
                    let term = fields["term"].as_str().and_then(|t| t.parse().ok());
                    won.push((i, term.expect("a term in the log line")));
                }
            }
        }
        won
    }

    /// Waits until some agent has logged winning `term`; returns which one. A hand-over is an
    /// election without the timeouts: the target wins the very next term. (What the cluster
    /// agrees on later may have moved on; the record of who won this term does not.)
    async fn winner_of(&self, term: u64) -> usize {
        let start = Instant::now();
        loop {
            let won = self.terms_won();
            let winners: Vec<usize> = won
                .iter()
                .filter(|(_, t)| *t == term)
                .map(|(i, _)| *i)
                .collect();
            assert!(winners.len() <= 1, "two writers in term {term}: {won:?}");
            if let Some(w) = winners.first() {
                return *w;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "nobody won term {term}: {won:?}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When agent `i` last accepted a message from each peer (its `/_ha/peers`), in Unix ms (0:
    /// never).
    async fn heard_by(&self, i: usize) -> BTreeMap<String, u64> {
        let peers: Value = self
            .http
            .get(format!("{}/_ha/peers", self.agents[i].url()))
            .send()
            .await
            .expect("peers answer")
            .json()
            .await
            .expect("peers JSON");
        peers
            .as_array()
            .expect("a list of peers")
            .iter()
            .map(|p| {
                let seen = p["last_seen"].as_str().unwrap_or("");
                let ms = base_core::wire::parse_rfc3339(seen).map_or(0, |m| m.0);
                (p["node_id"].as_str().unwrap_or("").to_string(), ms)
            })
            .collect()
    }

    /// For each live follower f of `w`: when w last accepted a message from f, and f from w.
    async fn links(&self, w: usize) -> Vec<(usize, u64, u64)> {
        let by_writer = self.heard_by(w).await;
        let mut links = Vec::new();
        for f in 0..NODES {
            if f == w || self.agents[f].child.is_none() {
                continue;
            }
            let by_follower = self.heard_by(f).await;
            links.push((
                f,
                by_writer.get(&self.agents[f].id).copied().unwrap_or(0),
                by_follower.get(&self.agents[w].id).copied().unwrap_or(0),
            ));
        }
        links
    }

    /// `rounds` times over: every link between the writer `w` and a live follower is seen
    /// carrying a newly accepted message in both directions (heartbeats one way, their acks the
    /// other), and every agent still agrees on (w, t). A broken link (a key a peer refuses) stops
    /// its side and the wait fails; an election moves the term.
    async fn links_hold(&self, what: &str, w: usize, t: u64, rounds: usize) {
        let mut before = self.links(w).await;
        for _ in 0..rounds {
            let start = Instant::now();
            loop {
                let now = self.links(w).await;
                let advanced = now.iter().zip(&before).all(|(n, b)| n.1 > b.1 && n.2 > b.2);
                if advanced {
                    before = now;
                    break;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "{what}: a link between the writer and a follower went quiet: \
                     before {before:?}, now {now:?}; logs in {}",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let got = self.agreed_writer(what, |_, _| true).await;
            assert_eq!(got, (w, t), "{what}: the writer or the term changed");
        }
    }

    async fn post(&self, i: usize, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.agents[i].url()))
            .body("{}")
            .send()
            .await
            .expect("agent answers")
    }
}

/// The writer forwards a write (200) with the term as fencing token; a follower redirects (307)
/// to the writer's URL with the same path and query, or says 503 `no_writer`.
async fn check_writes(c: &Cluster, writer: usize, term: u64, tag: &str) {
    let before: Vec<usize> = c.upstreams.iter().map(|u| u.writes().len()).collect();
    let path = format!("/api/collections/items/records?tag={tag}");
    let start = Instant::now();
    // The writer's lease is fresh right after the agreement; allow a retry if it was renewing.
    loop {
        let r = c.post(writer, &path).await;
        let status = r.status();
        assert_eq!(
            r.headers()["x-base-term"].to_str().unwrap(),
            term.to_string()
        );
        if status == StatusCode::OK {
            assert_eq!(
                r.headers()["x-base-leader"].to_str().unwrap(),
                c.agents[writer].url()
            );
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the writer answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..NODES {
        if i == writer || c.agents[i].child.is_none() {
            continue;
        }
        let r = c.post(i, &path).await;
        match r.status() {
            StatusCode::TEMPORARY_REDIRECT => {
                let location = r.headers()["location"].to_str().unwrap();
                assert_eq!(location, format!("{}{path}", c.agents[writer].url()));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.text().await.unwrap(), r#"{"error":"no_writer"}"#);
            }
            other => panic!("follower {i} answered a write with {other}"),
        }
    }
    // Only the writer's Base saw the write, carrying the term.
    for (i, up) in c.upstreams.iter().enumerate() {
        let writes = up.writes();
        let new = &writes[before[i]..];
        if i == writer {
            assert!(
                new.iter()
                    .any(|s| s.path == "/api/collections/items/records" && s.term == Some(term)),
                "the writer's Base did not get the write with term {term}: {new:?}"
            );
        } else {
            assert!(new.is_empty(), "follower {i}'s Base got a write: {new:?}");
        }
    }
}

/// Sends agent `x` the peer message `make(k)` as if from agent `from` (client port,
/// unauthenticated), and returns the first message `stub` (listening at `from`'s address) hears
/// after that which `answers(message, k)`. Right after its start, or while it holds a promise to a writer, a
/// node ignores some requests: the message is sent again (with the next `k`) until answered.
async fn ask(
    c: &Cluster,
    stub: &PeerStub,
    x: usize,
    from: usize,
    make: impl Fn(u64) -> Value,
    answers: impl Fn(&Value, u64) -> bool,
) -> Value {
    let start = Instant::now();
    let skip = stub.heard_count();
    for k in 0.. {
        let envelope = serde_json::json!({
            "from": c.agents[from].id, "to": c.agents[x].id, "msg": make(k),
        });
        let status = c
            .http
            .post(format!("{}/_quasar/msg", c.agents[x].url()))
            .json(&envelope)
            .send()
            .await
            .expect("the agent answers")
            .status();
        assert_eq!(status, StatusCode::NO_CONTENT);
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(300) {
            if let Some(m) = stub.find(skip, |m| answers(m, k)) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no answer to {}; heard: {:?}",
            make(k),
            stub.heard.lock().unwrap_or_else(|e| e.into_inner())
        );
    }
    unreachable!("the loop above only ends by returning or failing")
}

/// Agent `x`'s answer to a vote request from `from` for `term` (see [`ask`]).
async fn vote_answer(
    c: &Cluster,
    stub: &PeerStub,
    x: usize,
    from: usize,
    term: u64,
    tag: u64,
) -> Value {
    let sent_ms = |k: u64| tag * 1_000_000 + k;
    ask(
        c,
        stub,
        x,
        from,
        |k| serde_json::json!({"type": "vote", "term": term, "position": 0, "sent_ms": sent_ms(k)}),
        |m, k| m["type"] == "vote_response" && m["sent_ms"] == sent_ms(k),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_writer_then_rejoin() {
    let mut c = Cluster::start("kill").await;

    // Health and readiness.
    for i in 0..NODES {
        let start = Instant::now();
        loop {
            let ok = c
                .http
                .get(format!("{}/healthz", c.agents[i].url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ok {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "agent {i} never became healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (w1, t1) = c.agreed_writer("a first writer", |_, _| true).await;
    for i in 0..NODES {
        let r = c
            .http
            .get(format!("{}/readyz", c.agents[i].url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "agent {i} not ready");
    }
    let view = c.leader_view(w1).await.unwrap();
    assert!(
        base_core::wire::parse_rfc3339(view["lease_expires"].as_str().unwrap()).is_ok(),
        "{view}"
    );
    let peers: Value = c
        .http
        .get(format!("{}/_ha/peers", c.agents[w1].url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(peers.as_array().map(Vec::len), Some(NODES - 1), "{peers}");

    // Reads go to the local Base on every agent.
    for i in 0..NODES {
        let r = c
            .http
            .get(format!("{}/api/health", c.agents[i].url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "stand-in");
    }
    check_writes(&c, w1, t1, "first").await;

    // Kill the writer's process: a new writer with a higher term.
    c.agents[w1].kill();
    let killed_at = Instant::now();
    let (w2, t2) = c
        .agreed_writer("a new writer after the kill", |w, t| w != w1 && t > t1)
        .await;
    eprintln!("failover took {:?}", killed_at.elapsed());
    let old_writes = c.upstreams[w1].writes().len();
    check_writes(&c, w2, t2, "second").await;
    assert_eq!(c.upstreams[w1].writes().len(), old_writes);

    // Restart the killed one with its state dir: it follows, and the term stays.
    c.agents[w1].start();
    let start = Instant::now();
    loop {
        let v = c.leader_view(w1).await;
        let follows = v.as_ref().is_some_and(|v| {
            v["node_id"] == c.agents[w2].id.as_str() && v["term"].as_u64() == Some(t2)
        });
        if follows {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the restarted agent never followed {}: {v:?}",
            c.agents[w2].id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let it run for a while as a member: nobody's term moves.
    let (w3, t3) = c.agreed_writer("the same writer", |_, _| true).await;
    assert_eq!(
        (w3, t3),
        (w2, t2),
        "the rejoin changed the writer or the term"
    );
    check_writes(&c, w2, t2, "third").await;
    let (w4, t4) = c.agreed_writer("the same writer, still", |_, _| true).await;
    assert_eq!((w4, t4), (w2, t2));

    // The state dir is what keeps the term and the vote. The third node `x` voted for w2 in t2
    // (w1 was down, so w2 could not win t2 without it). Stopped first (w2 stays the writer, x's
    // state stays (t2, w2)), then restarted with every peer down, x is back in t2 — alone it
    // cannot move its term (pre-votes) — and still bound by that vote: a vote request from w1
    // for t2 is refused, while w2's is granted again. Started from scratch it would be in term 0
    // and grant w1 a second vote in t2.
    let x = (0..NODES)
        .find(|&i| i != w1 && i != w2)
        .expect("a third node");
    c.agents[x].kill();
    c.agents[w1].kill();
    c.agents[w2].kill();
    let hear_w1 = PeerStub::bind(&c.agents[w1].host, c.agents[w1].port).await;
    let hear_w2 = PeerStub::bind(&c.agents[w2].host, c.agents[w2].port).await;
    c.agents[x].start();
    let start = Instant::now();
    let view = loop {
        if let Some(v) = c.leader_view(x).await {
            break v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the restarted agent never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        view["term"].as_u64(),
        Some(t2),
        "the term went back: {view}"
    );
    assert_eq!(view["node_id"], "", "alone, it knows no writer: {view}");
    assert_eq!(sample(&c.metrics(x).await, "quasar_term"), t2);
    let refused = vote_answer(&c, &hear_w1, x, w1, t2, 1).await;
    assert_eq!(
        refused["granted"], false,
        "a second vote in term {t2}: {refused}"
    );
    assert_eq!(refused["term"].as_u64(), Some(t2), "{refused}");
    let granted = vote_answer(&c, &hear_w2, x, w2, t2, 2).await;
    assert_eq!(
        granted["granted"], true,
        "its own candidate refused: {granted}"
    );
    assert_eq!(granted["term"].as_u64(), Some(t2), "{granted}");
    assert_eq!(sample(&c.metrics(x).await, "quasar_term"), t2);
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_writer_role_over() {
    let mut c = Cluster::start("term").await;
    let (w1, t1) = c.agreed_writer("a first writer", |_, _| true).await;
    // Wait until the writer has heard from both peers (it transfers only to an up-to-date one).
    let start = Instant::now();
    loop {
        let peers: Option<Value> = match c
            .http
            .get(format!("{}/_ha/peers", c.agents[w1].url()))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let all_up = peers
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(|p| p["up"] == true));
        if all_up {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "peers never up: {peers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_at = Instant::now();
    assert!(
        c.agents[w1].terminate(),
        "the writer did not exit after SIGTERM"
    );
    // A hand-over is an election without the timeouts: the term moves by one.
    let (w2, t2) = c
        .agreed_writer("a writer after SIGTERM", |w, t| w != w1 && t > t1)
        .await;
    eprintln!(
        "hand-over: new writer {} in term {t2}, {:?} after SIGTERM",
        c.agents[w2].id,
        stopped_at.elapsed()
    );
    let log = std::fs::read_to_string(&c.agents[w1].log).unwrap_or_default();
    assert!(
        log.contains("handing the writer role over"),
        "the writer did not try to hand over; its log:\n{log}"
    );
    assert_ne!(
        c.winner_of(t1 + 1).await,
        w1,
        "a hand-over needs exactly one new term, won by another node"
    );
    check_writes(&c, w2, t2, "after-term").await;
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// An agent whose peers are all missing knows no writer: writes get 503 `no_writer`, reads are
/// still served, and it is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_writes_get_no_writer() {
    let dir = std::env::temp_dir().join(format!("base-agents-lone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (up, upstream_port) = start_upstream().await;
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let peers = (0..NODES)
        .map(|i| format!("base-{i}=http://127.0.0.1:{}", ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut agent = Agent {
        id: "base-0".to_string(),
        host: "127.0.0.1".to_string(),
        extra: Vec::new(),
        port: ports[0],
        upstream_port,
        state_dir: dir.join("state-0"),
        log: dir.join("agent-0.log"),
        peers,
        child: None,
    };
    agent.start();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let start = Instant::now();
    let response = loop {
        if let Ok(r) = http
            .post(format!("{}/api/collections/items/records", agent.url()))
            .body("{}")
            .send()
            .await
        {
            break r;
        }
        assert!(start.elapsed() < DEADLINE, "the agent never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-base-leader"], "");
    assert_eq!(response.headers()["x-base-term"], "0");
    assert_eq!(response.text().await.unwrap(), r#"{"error":"no_writer"}"#);
    let read = http
        .get(format!("{}/api/health", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let ready = http
        .get(format!("{}/readyz", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let leader: Value = http
        .get(format!("{}/_ha/leader", agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader["leader_url"], "");
    assert_eq!(leader["lease_expires"], "");
    assert!(
        up.writes().is_empty(),
        "a write reached Base without a lease"
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of one sample line of Prometheus text (`name` includes the labels), or 0.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn dropped(metrics: &str, reason: &str) -> u64 {
    sample(
        metrics,
        &format!("quasar_peer_messages_dropped_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_on_request() {
    let c = Cluster::start_with(
        "transfer",
        Options {
            fence: true,
            ..Options::default()
        },
    )
    .await;
    let (w1, t1) = c.agreed_writer("a first writer", |_, _| true).await;
    c.wait_peers_up(w1).await;
    let f = (w1 + 1) % NODES;
    let target = c.agents[f].id.clone();
    // Refused, each counted under its outcome: on a follower, to an unknown node, for another
    // term than the writer's, and not a request at all.
    c.request_transfer(f, "base-0", t1);
    c.wait_transfer_outcome(f, "not_writer", 1).await;
    c.request_transfer(w1, "base-9", t1);
    c.wait_transfer_outcome(w1, "unknown_target", 1).await;
    c.request_transfer(w1, &target, t1 + 1);
    c.wait_transfer_outcome(w1, "stale_term", 1).await;
    c.annotate_transfer(w1, "not json");
    c.wait_transfer_outcome(w1, "malformed", 1).await;
    // Still the writer after the refusals.
    assert_eq!(
        c.agreed_writer("the same writer", |_, _| true).await,
        (w1, t1)
    );

    c.request_transfer(w1, &target, t1);
    let (w2, t2) = c
        .agreed_writer("the named follower as writer", |w, t| w != w1 && t > t1)
        .await;
    assert_eq!(
        c.winner_of(t1 + 1).await,
        f,
        "a hand-over is exactly one new term, won by the node named"
    );
    check_writes(&c, w2, t2, "after-transfer").await;
    let m = c.metrics(w1).await;
    assert_eq!(sample(&m, "quasar_transfers_total"), 1, "{m}");
    assert_eq!(
        sample(&m, "quasar_transfer_requests_total{outcome=\"started\"}"),
        1,
        "{m}"
    );
    assert_eq!(sample(&m, "quasar_is_writer"), 0, "{m}");
    assert_eq!(sample(&c.metrics(w2).await, "quasar_is_writer"), 1);

    // No target named: the best up-to-date peer.
    c.wait_peers_up(w2).await;
    c.request_transfer(w2, "", t2);
    let (w3, _) = c
        .agreed_writer("a writer after the second transfer", |w, t| {
            w != w2 && t > t2
        })
        .await;
    assert_eq!(c.winner_of(t2 + 1).await, w3, "one new term again");
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_replica_hands_over_and_keeps_serving_reads() {
    let mut c = Cluster::start_with(
        "fence",
        Options {
            fence: true,
            ..Options::default()
        },
    )
    .await;
    let (w1, t1) = c.agreed_writer("a first writer", |_, _| true).await;
    c.wait_peers_up(w1).await;
    let annotations = c.dir.join(format!("annotations-{w1}"));
    write_atomically(
        &annotations,
        "hanzo.ai/base=\"base\"\nhanzo.ai/fenced=\"true\"\n",
    );
    let (w2, t2) = c
        .agreed_writer("a writer other than the fenced one", |w, t| {
            w != w1 && t > t1
        })
        .await;
    assert_ne!(
        c.winner_of(t1 + 1).await,
        w1,
        "a fenced writer hands over (one new term)"
    );
    // Fenced: ready, serving reads, redirecting writes; metrics say so.
    let r = c
        .http
        .get(format!("{}/readyz", c.agents[w1].url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-base-fenced"], "true");
    assert!(r.text().await.unwrap().contains("fenced"));
    let read = c
        .http
        .get(format!("{}/api/health", c.agents[w1].url()))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    check_writes(&c, w2, t2, "fenced").await;
    assert_eq!(sample(&c.metrics(w1).await, "quasar_fenced"), 1);
    assert_eq!(sample(&c.metrics(w2).await, "quasar_fenced"), 0);
    // The writer dies: the third node wins, with the fenced node's vote; never the fenced one.
    c.agents[w2].kill();
    let (w3, t3) = c
        .agreed_writer("a writer after the kill", |w, t| w != w2 && t > t2)
        .await;
    assert_ne!(w3, w1, "a fenced replica became writer");
    // Unfenced, it may be handed the role again.
    write_atomically(&annotations, "hanzo.ai/fenced=\"false\"\n");
    let start = Instant::now();
    while sample(&c.metrics(w1).await, "quasar_fenced") != 0 {
        assert!(start.elapsed() < DEADLINE, "never unfenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_peers_up(w3).await;
    c.request_transfer(w3, &c.agents[w1].id, t3);
    let (w4, t4) = c
        .agreed_writer("the unfenced node as writer", |w, t| w == w1 && t > t3)
        .await;
    check_writes(&c, w4, t4, "unfenced").await;
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// A rogue process on loopback sends signed-looking peer messages to every agent's peer port.
struct Rogue<'a> {
    c: &'a Cluster,
}

impl Rogue<'_> {
    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    }

    fn body(from: &str, to: &str, msg: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"from": from, "to": to, "msg": msg})).unwrap()
    }

    /// Posts `body` to agent `i`'s peer port with the given auth headers (`None`: unsigned).
    async fn post(&self, i: usize, body: &[u8], auth: Option<(u64, &str, &str)>) -> StatusCode {
        let port = self.c.peer_port.expect("peer port");
        let mut r = self
            .c
            .http
            .post(format!(
                "http://{}:{port}/_quasar/msg",
                self.c.agents[i].host
            ))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some((ts, nonce, mac)) = auth {
            r = r
                .header("x-quasar-timestamp", ts.to_string())
                .header("x-quasar-nonce", nonce)
                .header("x-quasar-mac", mac);
        }
        r.send().await.expect("peer port answers").status()
    }

    async fn post_signed(
        &self,
        i: usize,
        key: &str,
        ts: u64,
        nonce: &str,
        body: &[u8],
    ) -> StatusCode {
        use base_adapter_k8s::agent::auth::mac_hex;
        let mac = mac_hex(key.as_bytes(), ts, nonce, body);
        self.post(i, body, Some((ts, nonce, &mac))).await
    }
}

fn nonce(k: u64) -> String {
    format!("{k:032x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_peers_drop_forgeries_and_replays_and_rotate_keys() {
    let c = Cluster::start_with(
        "auth",
        Options {
            keys: true,
            peer_port: true,
            fence: true, // the files are absent: not fenced, with a warning
            position: false,
        },
    )
    .await;
    let (w, t) = c.agreed_writer("a first writer", |_, _| true).await;
    check_writes(&c, w, t, "auth").await;
    // Peer messages are not served on the client port.
    let r = c
        .http
        .post(format!("{}/_quasar/msg", c.agents[w].url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let rogue = Rogue { c: &c };
    let now = Rogue::now_ms;
    let high = t + 100;
    for i in 0..NODES {
        let me = format!("base-{i}");
        let peer = format!("base-{}", (i + 1) % NODES);
        let third = format!("base-{}", (i + 2) % NODES);
        let vote = Rogue::body(
            &peer,
            &me,
            serde_json::json!({"type": "vote", "term": high, "position": u64::MAX >> 2, "sent_ms": 0}),
        );
        let heartbeat = Rogue::body(
            &peer,
            &me,
            serde_json::json!({"type": "heartbeat", "term": high, "sent_ms": 0, "position": 0}),
        );
        // (a) Unsigned, and signed with a wrong key.
        assert_eq!(rogue.post(i, &vote, None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            rogue
                .post_signed(i, "guessed", now(), &nonce(1), &heartbeat)
                .await,
            StatusCode::UNAUTHORIZED
        );
        // ... and a message whose MAC was made for another body.
        let mac = base_adapter_k8s::agent::auth::mac_hex(KEY_1.as_bytes(), now(), &nonce(2), b"{}");
        assert_eq!(
            rogue.post(i, &vote, Some((now(), &nonce(2), &mac))).await,
            StatusCode::UNAUTHORIZED
        );
        // (b) Another Base's key.
        assert_eq!(
            rogue
                .post_signed(i, OTHER_BASE_KEY, now(), &nonce(3), &vote)
                .await,
            StatusCode::UNAUTHORIZED
        );
        // (c) A valid message captured long ago.
        assert_eq!(
            rogue
                .post_signed(i, KEY_1, now() - 60_000, &nonce(4), &heartbeat)
                .await,
            StatusCode::BAD_REQUEST
        );
        // (d) Addressed to another node.
        let elsewhere = Rogue::body(
            &peer,
            &third,
            serde_json::json!({"type": "heartbeat", "term": high, "sent_ms": 0, "position": 0}),
        );
        assert_eq!(
            rogue
                .post_signed(i, KEY_1, now(), &nonce(5), &elsewhere)
                .await,
            StatusCode::MISDIRECTED_REQUEST
        );
        // (e) Replay: a harmless valid message goes through once; sent again it is dropped, and
        // its nonce cannot be reused for a message that would matter.
        let harmless = Rogue::body(
            &peer,
            &me,
            serde_json::json!({"type": "pre_vote_response", "term": 0, "granted": false}),
        );
        let ts = now();
        let n = nonce(0xfeed + i as u64);
        assert_eq!(
            rogue.post_signed(i, KEY_1, ts, &n, &harmless).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            rogue.post_signed(i, KEY_1, ts, &n, &harmless).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            rogue.post_signed(i, KEY_1, ts, &n, &heartbeat).await,
            StatusCode::BAD_REQUEST
        );
    }
    // Nothing moved; every drop is counted under its reason.
    let (w_after, t_after) = c.agreed_writer("the same writer", |_, _| true).await;
    assert_eq!(
        (w_after, t_after),
        (w, t),
        "a rogue message moved the election"
    );
    for i in 0..NODES {
        let m = c.metrics(i).await;
        assert!(dropped(&m, "bad_mac") >= 4, "agent {i}: {m}");
        assert!(dropped(&m, "stale_timestamp") >= 1, "agent {i}: {m}");
        assert!(dropped(&m, "wrong_receiver") >= 1, "agent {i}: {m}");
        assert!(dropped(&m, "replay") >= 2, "agent {i}: {m}");
        assert!(
            sample(&m, "quasar_peer_messages_accepted_total") > 0,
            "agent {i}: {m}"
        );
        assert_eq!(sample(&m, "quasar_peer_auth"), 1);
        assert_eq!(sample(&m, "quasar_term"), t);
        assert_eq!(sample(&m, "quasar_is_writer"), u64::from(i == w));
    }

    // Rotation, one pod at a time as the kubelet would (new `current`, old one as `previous`),
    // then the old key retired everywhere. Each step is first seen to have taken effect on its
    // pod (it accepts the new key; later, refuses the old one); then every writer–follower link
    // is seen carrying newly accepted messages both ways, several times over, with the writer and
    // term unchanged throughout: no outage and no election at any step.
    let mut probes = 0xb000_u64;
    let mut accepts = |i: usize, key: &'static str| {
        probes += 1;
        let n = nonce(probes);
        let rogue = &rogue;
        async move {
            let me = format!("base-{i}");
            let peer = format!("base-{}", (i + 1) % NODES);
            let harmless = Rogue::body(
                &peer,
                &me,
                serde_json::json!({"type": "pre_vote_response", "term": 0, "granted": false}),
            );
            rogue.post_signed(i, key, now(), &n, &harmless).await
        }
    };
    for i in 0..NODES {
        let keys = c.dir.join(format!("keys-{i}"));
        write_atomically(&keys.join("previous"), KEY_1);
        write_atomically(&keys.join("current"), KEY_2);
        let start = Instant::now();
        while accepts(i, KEY_2).await != StatusCode::NO_CONTENT {
            assert!(
                start.elapsed() < DEADLINE,
                "agent {i} never took the new key"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.links_hold("during the rotation", w, t, 3).await;
    }
    for i in 0..NODES {
        let _ = std::fs::remove_file(c.dir.join(format!("keys-{i}")).join("previous"));
        let start = Instant::now();
        while accepts(i, KEY_1).await != StatusCode::UNAUTHORIZED {
            assert!(
                start.elapsed() < DEADLINE,
                "agent {i} never retired the old key"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.links_hold("while the old key is retired", w, t, 3).await;
    }
    c.links_hold("after the rotation", w, t, 5).await;
    check_writes(&c, w, t, "rotated").await;
    // The old key is no longer accepted; the new one is.
    let f = (w + 1) % NODES;
    let harmless = Rogue::body(
        &format!("base-{w}"),
        &format!("base-{f}"),
        serde_json::json!({"type": "pre_vote_response", "term": 0, "granted": false}),
    );
    assert_eq!(
        rogue
            .post_signed(f, KEY_1, now(), &nonce(0xa1), &harmless)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        rogue
            .post_signed(f, KEY_2, now(), &nonce(0xa2), &harmless)
            .await,
        StatusCode::NO_CONTENT
    );
    let logs: Vec<String> = (0..NODES)
        .map(|i| std::fs::read_to_string(&c.agents[i].log).unwrap_or_default())
        .collect();
    assert!(
        logs[0].contains("cannot read the fence file"),
        "{}",
        logs[0]
    );
    assert!(logs.iter().all(|l| l.contains("peer keys reloaded")));
    // The first pod to rotate met peers that did not know the new key yet, and fell back.
    assert!(
        logs[0].contains("peer accepted the other key"),
        "{}",
        logs[0]
    );
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// `--proxy-max-concurrent`: beyond it, 503 `overloaded`; `--proxy-idle-timeout-ms`: a response
/// body that stalls is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_bounds_concurrency_and_cuts_idle_bodies() {
    let dir = std::env::temp_dir().join(format!("base-agents-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (up, upstream_port) = start_upstream().await;
    let port = free_port();
    let mut agent = Agent {
        id: "base-0".to_string(),
        host: "127.0.0.1".to_string(),
        port,
        upstream_port,
        state_dir: dir.join("state-0"),
        log: dir.join("agent-0.log"),
        peers: String::new(),
        extra: [
            "--proxy-max-concurrent",
            "1",
            "--proxy-idle-timeout-ms",
            "500",
        ]
        .map(String::from)
        .to_vec(),
        child: None,
    };
    agent.start();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let start = Instant::now();
    while http
        .get(format!("{}/healthz", agent.url()))
        .send()
        .await
        .is_err()
    {
        assert!(start.elapsed() < DEADLINE, "the agent never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), agent.url());
        async move {
            http.get(format!("{url}/slow"))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    // While the slow request holds the only permit, another is refused.
    let start = Instant::now();
    while !up.slow_started.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(start.elapsed() < DEADLINE, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http
        .get(format!("{}/api/health", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.unwrap(), r#"{"error":"overloaded"}"#);
    up.release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap(), StatusCode::OK);
    // The permit is back.
    let r = http
        .get(format!("{}/api/health", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A stalled body is cut after the idle timeout, not held forever; the permit comes back.
    let started = Instant::now();
    let r = http
        .get(format!("{}/stall", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "a stalled body ended cleanly");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = http
        .get(format!("{}/api/health", agent.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m = http
        .get(format!("{}/_quasar/metrics", agent.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sample(&m, "quasar_proxy_rejected_total") >= 1, "{m}");
    assert_eq!(sample(&m, "quasar_peer_auth"), 0);
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(log.contains("NOT authenticated"), "{log}");
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--position-url`: each agent polls its Base's replication position (a plain number, or JSON
/// `{"position": N}`) and reports the one the election uses (`quasar_position`); a smaller answer
/// never moves it back. The election follows it: a writer hands over only to a peer at least as
/// advanced (a transfer request is refused `no_target` while every peer is behind; the advanced one
/// is handed the role once it has caught up), and when the writer dies a replica that is behind cannot win while a more
/// advanced one is up (it refuses its vote).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_follows_the_polled_positions() {
    let mut c = Cluster::start_with(
        "position",
        Options {
            position: true,
            fence: true,
            ..Options::default()
        },
    )
    .await;
    // Even nodes' Bases answer a bare number, odd ones JSON.
    let set = |c: &Cluster, i: usize, position: u64| {
        let body = if i.is_multiple_of(2) {
            format!("{position}\n")
        } else {
            format!(r#"{{"position": {position}, "lag_ms": 0}}"#)
        };
        c.upstreams[i].set_position(&body);
    };
    for i in 0..NODES {
        set(&c, i, 10);
    }
    for i in 0..NODES {
        c.wait_metric(i, "quasar_position", 10).await;
    }
    let (w, t) = c.agreed_writer("a first writer", |_, _| true).await;

    // The writer's Base moves ahead: no peer is up to date, so none is handed the role.
    set(&c, w, 500);
    c.wait_metric(w, "quasar_position", 500).await;
    c.wait_peers_up(w).await;
    c.request_transfer(w, "", t);
    c.wait_transfer_outcome(w, "no_target", 1).await;

    // One follower's Base overtakes it: once the writer has heard so (heartbeat acks carry the
    // position), that follower, and only it, can be handed the role.
    let f = (w + 1) % NODES;
    let behind = (w + 2) % NODES;
    set(&c, f, 1_000);
    c.wait_metric(f, "quasar_position", 1_000).await;
    let outcome = |m: &str, o: &str| {
        sample(
            m,
            &format!("quasar_transfer_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    let start = Instant::now();
    let mut no_target = 1;
    loop {
        c.request_transfer(w, "", t);
        let m = loop {
            let m = c.metrics(w).await;
            if outcome(&m, "started") + outcome(&m, "no_target") > no_target {
                break m;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the request was never read: {m}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if outcome(&m, "started") == 1 {
            break;
        }
        no_target = outcome(&m, "no_target");
        assert!(
            start.elapsed() < DEADLINE,
            "the writer never heard the new position"
        );
    }
    assert_eq!(c.winner_of(t + 1).await, f);
    let (w2, t2) = c
        .agreed_writer("the advanced follower as writer", |x, tt| x == f && tt > t)
        .await;

    // The new writer dies. Of the two left, the one behind (10) cannot win while the old
    // writer (500) is up: the old writer refuses it even a pre-vote (asked here as if by the
    // dead writer, whose address the test now holds, at a position below its own; a candidate
    // ahead of it is granted one), and wins.
    c.agents[w2].kill();
    let hear = PeerStub::bind(&c.agents[w2].host, c.agents[w2].port).await;
    let pre_vote = |term: u64, position: u64| {
        let (c, hear) = (&c, &hear);
        async move {
            ask(
                c,
                hear,
                w,
                w2,
                |_| serde_json::json!({"type": "pre_vote", "term": term, "position": position}),
                |m, _| m["type"] == "pre_vote_response",
            )
            .await
        }
    };
    let behind_it = pre_vote(t2 + 100, 10).await;
    assert_eq!(behind_it["granted"], false, "{behind_it}");
    let ahead_of_it = pre_vote(t2 + 200, 5_000).await;
    assert_eq!(ahead_of_it["granted"], true, "{ahead_of_it}");
    let (w3, _) = c
        .agreed_writer("a writer after the kill", |x, tt| x != w2 && tt > t2)
        .await;
    assert_eq!(w3, w, "the replica behind ({behind}) won");

    // A smaller answer (a Base restored from an older snapshot, a glitch) is ignored.
    set(&c, w, 3);
    let polls = c.upstreams[w].position_polls();
    let start = Instant::now();
    while c.upstreams[w].position_polls() < polls + 3 {
        assert!(start.elapsed() < DEADLINE, "the position is not polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&c.metrics(w).await, "quasar_position"), 500);
    let _ = std::fs::remove_dir_all(&c.dir);
}
