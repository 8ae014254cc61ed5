//! The two planes, with real processes: three `base-operator agent`s on loopback (each on its
//! own 127.0.0.x, a client port and the control port, the Base's peer key, an annotations file as
//! the downward API writes it), each in front of a stand-in Base that records every request it
//! gets, and a `base-operator gateway` in front of the agents.
//!
//! Nothing sent over HTTP moves the writer: a transfer through the gateway, straight to a client
//! port, to the control port, and forged peer messages (unsigned, a wrong key, another Base's
//! key, a replayed nonce) change neither term nor writer; each is refused and counted, no control
//! path reaches Base, and refusals are logged once per source. A transfer request written into the
//! writer's annotations file (as the kubelet does after the operator's patch) moves the writer,
//! once.
//!
//! Everything is polled with generous deadlines; the only fixed waits are the windows in which a
//! refused request would have had to show its effect.

use axum::Router;
use axum::extract::{Request, State};
use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const DEADLINE: Duration = Duration::from_secs(20);
const NODES: usize = 3;
const KEY: &str = "control-plane-test-key-0123456789abcdef";
const OTHER_BASE_KEY: &str = "another-base-peer-key-0000000000000000";
/// Long enough for a refused transfer to have shown (the annotations file is read every second,
/// a hand-over takes a few heartbeats).
const SETTLE: Duration = Duration::from_secs(3);

fn free_port_on(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A stand-in Base: answers 200 to anything and records the paths.
#[derive(Clone, Default)]
struct Upstream {
    paths: Arc<Mutex<Vec<String>>>,
}

async fn record(State(u): State<Upstream>, request: Request) -> &'static str {
    u.paths
        .lock()
        .unwrap()
        .push(request.uri().path().to_string());
    "ok"
}

async fn start_upstream() -> (Upstream, u16) {
    let upstream = Upstream::default();
    let app = Router::new().fallback(record).with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (upstream, port)
}

struct Agent {
    id: String,
    host: String,
    port: u16,
    log: PathBuf,
    annotations: PathBuf,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Gateway {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: PathBuf,
    agents: Vec<Agent>,
    upstreams: Vec<Upstream>,
    peer_port: u16,
    http: reqwest::Client,
}

/// Writes a file the way the kubelet updates a mounted volume: all at once.
fn write_atomically(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// An annotations file line, the value quoted as Go's `%q` does (enough for JSON text).
fn annotation_line(key: &str, value: &str) -> String {
    let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{key}=\"{quoted}\"\n")
}

fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

impl Cluster {
    async fn start(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("base-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hosts: Vec<String> = (0..NODES).map(|i| format!("127.0.0.{}", i + 1)).collect();
        let ports: Vec<u16> = hosts.iter().map(|h| free_port_on(h)).collect();
        let peer_port = free_port_on("127.0.0.1");
        let peers = (0..NODES)
            .map(|i| format!("base-{i}=http://{}:{}", hosts[i], ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut agents = Vec::new();
        let mut upstreams = Vec::new();
        for i in 0..NODES {
            let (upstream, upstream_port) = start_upstream().await;
            upstreams.push(upstream);
            let keys = dir.join(format!("keys-{i}"));
            std::fs::create_dir_all(&keys).expect("key dir");
            write_atomically(&keys.join("current"), KEY);
            let annotations = dir.join(format!("annotations-{i}"));
            write_atomically(&annotations, &annotation_line("hanzo.ai/base", "base"));
            let log = dir.join(format!("agent-{i}.log"));
            let child = Command::new(BIN)
                .arg("agent")
                .args(["--node-id", &format!("base-{i}")])
                .args(["--peers", &peers])
                .args(["--listen", &format!("{}:{}", hosts[i], ports[i])])
                .args(["--upstream", &format!("http://127.0.0.1:{upstream_port}")])
                .arg("--state-dir")
                .arg(dir.join(format!("state-{i}")))
                .args(["--peer-port", &peer_port.to_string()])
                .arg("--peer-key-dir")
                .arg(&keys)
                .arg("--fence-file")
                .arg(&annotations)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn base-operator agent");
            agents.push(Agent {
                id: format!("base-{i}"),
                host: hosts[i].clone(),
                port: ports[i],
                log,
                annotations,
                child,
            });
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
            peer_port,
            http,
        }
    }

    fn control_url(&self, i: usize) -> String {
        format!("http://{}:{}", self.agents[i].host, self.peer_port)
    }

    async fn metrics(&self, i: usize) -> String {
        self.http
            .get(format!("{}/_quasar/metrics", self.control_url(i)))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
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

    /// Polls until an agent reports itself as writer and every agent agrees. (index, term)
    async fn agreed_writer(&self, what: &str, accept: impl Fn(usize, u64) -> bool) -> (usize, u64) {
        let start = Instant::now();
        loop {
            let mut views = Vec::new();
            for i in 0..NODES {
                views.push(self.leader_view(i).await);
            }
            let claimed = views.iter().enumerate().find_map(|(i, v)| {
                let v = v.as_ref()?;
                (v["node_id"] == self.agents[i].id.as_str()).then(|| (i, v["term"].as_u64()))
            });
            if let Some((w, Some(term))) = claimed {
                let all_agree = views.iter().all(|v| {
                    v.as_ref().is_some_and(|v| {
                        v["node_id"] == self.agents[w].id.as_str() && v["term"] == term
                    })
                });
                if all_agree && accept(w, term) {
                    return (w, term);
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: never agreed: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until writer `w` has heard from every peer (it hands over only to one it knows).
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
            let up = peers
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().all(|p| p["up"] == true));
            if up {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "peers never up: {peers:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start_gateway(&self) -> Gateway {
        let replicas = (0..NODES)
            .map(|i| format!("{}={}", self.agents[i].id, self.agents[i].url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new(BIN)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--replicas",
                &replicas,
            ])
            .args(["--poll-interval", "200ms"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start base-operator gateway");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gateway listening")
                    && let Some(addr) = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
                        let fields = v.get("fields").unwrap_or(&v);
                        fields.get("addr")?.as_str().map(str::to_owned)
                    })
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("gateway did not start: {:?}", log.lock().unwrap()));
        Gateway {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// Posts a peer message to agent `i`'s control port, signed with `key` (or unsigned).
    async fn post_peer(&self, i: usize, body: &[u8], key: Option<&str>, nonce: &str) -> StatusCode {
        let mut r = self
            .http
            .post(format!("{}/_quasar/msg", self.control_url(i)))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(key) = key {
            let ts = now_ms();
            let mac = base_adapter_k8s::agent::auth::mac_hex(key.as_bytes(), ts, nonce, body);
            r = r
                .header("x-quasar-timestamp", ts.to_string())
                .header("x-quasar-nonce", nonce)
                .header("x-quasar-mac", mac);
        }
        r.send().await.expect("control port answers").status()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `method path` to `base` and returns (status, the body's `error`).
async fn send(http: &reqwest::Client, method: &str, url: String) -> (StatusCode, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let r = http
        .request(method, &url)
        .header("content-type", "application/json")
        .body(r#"{"to":"base-1"}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// Control requests as a client could send them, including spellings that a naive prefix
/// check would let through.
const CONTROL_REQUESTS: [(&str, &str); 7] = [
    ("POST", "/_ha/transfer"),
    ("POST", "/_ha/fence"),
    ("POST", "/_quasar/msg"),
    ("GET", "/_quasar/metrics"),
    ("POST", "/_replica/role"),
    ("POST", "//_ha/transfer"),
    ("POST", "/%5Fha/transfer"),
];

/// Proves: no HTTP request on any port moves the writer. A transfer (and every other control
/// path) through the gateway is a 404 of the gateway's own, never forwarded; straight to a client
/// port a 404 of the agent's own, never proxied to Base; on the control port a 404 too; forged
/// `TimeoutNow`s (unsigned, a guessed key, another Base's key, a replayed nonce) are dropped.
/// Term and writer stay, each refusal is counted under its reason, and logged once per source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_on_any_port_moves_the_writer() {
    let c = Cluster::start("refuse").await;
    let (w, t) = c.agreed_writer("a first writer", |_, _| true).await;
    c.wait_peers_up(w).await;
    let f = (w + 1) % NODES;

    // -- through the gateway
    let gw = c.start_gateway();
    let start = Instant::now();
    while c
        .http
        .get(format!("{}/_gateway/readyz", gw.base))
        .send()
        .await
        .map_or(true, |r| r.status() != StatusCode::OK)
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the gateway never found the writer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (method, path) in CONTROL_REQUESTS {
        let (status, error) = send(&c.http, method, format!("{}{path}", gw.base)).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::NOT_FOUND, "control_path"),
            "gateway {method} {path}"
        );
    }
    // The read-only wire still goes through.
    let (status, _) = send(&c.http, "GET", format!("{}/_ha/leader", gw.base)).await;
    assert_eq!(status, StatusCode::OK);
    let gm = c
        .http
        .get(format!("{}/_gateway/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&gm, "base_gateway_control_refused_total"),
        CONTROL_REQUESTS.len() as u64,
        "{gm}"
    );

    // -- straight to the client ports of the writer and a follower
    for i in [w, f] {
        for (method, path) in CONTROL_REQUESTS {
            let (status, error) =
                send(&c.http, method, format!("{}{path}", c.agents[i].url())).await;
            assert_eq!(
                (status, error.as_str()),
                (StatusCode::NOT_FOUND, "control_path"),
                "agent {i} client port {method} {path}"
            );
        }
    }
    // -- the control port serves no transfer either
    let (status, _) = send(
        &c.http,
        "POST",
        format!("{}/_ha/transfer", c.control_url(w)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // -- forged peer messages: "campaign now" to the follower, as if from the writer
    let timeout_now = serde_json::to_vec(&serde_json::json!({
        "from": c.agents[w].id, "to": c.agents[f].id,
        "msg": {"type": "timeout_now", "term": t},
    }))
    .unwrap();
    let nonce = |k: u64| format!("{k:032x}");
    assert_eq!(
        c.post_peer(f, &timeout_now, None, &nonce(1)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.post_peer(f, &timeout_now, Some("guessed-key"), &nonce(2))
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.post_peer(f, &timeout_now, Some(OTHER_BASE_KEY), &nonce(3))
            .await,
        StatusCode::UNAUTHORIZED
    );
    // A replay: the nonce of a genuine (harmless) message, reused for a TimeoutNow signed with
    // the right key.
    let harmless = serde_json::to_vec(&serde_json::json!({
        "from": c.agents[w].id, "to": c.agents[f].id,
        "msg": {"type": "pre_vote_response", "term": 0, "granted": false},
    }))
    .unwrap();
    assert_eq!(
        c.post_peer(f, &harmless, Some(KEY), &nonce(4)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.post_peer(f, &timeout_now, Some(KEY), &nonce(4)).await,
        StatusCode::BAD_REQUEST
    );

    // -- nothing moved
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        c.agreed_writer("the same writer", |_, _| true).await,
        (w, t),
        "a refused request moved the writer"
    );
    for i in 0..NODES {
        let m = c.metrics(i).await;
        assert_eq!(sample(&m, "quasar_term"), t, "agent {i}: {m}");
        assert_eq!(sample(&m, "quasar_transfers_total"), 0, "agent {i}: {m}");
    }
    // -- every refusal counted under its reason
    let m = c.metrics(w).await;
    let refused = |m: &str, reason: &str| {
        sample(
            m,
            &format!("quasar_control_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        refused(&m, "client_port"),
        CONTROL_REQUESTS.len() as u64,
        "{m}"
    );
    assert_eq!(refused(&m, "unknown_path"), 1, "{m}");
    let m = c.metrics(f).await;
    assert_eq!(
        refused(&m, "client_port"),
        CONTROL_REQUESTS.len() as u64,
        "{m}"
    );
    let dropped = |reason: &str| {
        sample(
            &m,
            &format!("quasar_peer_messages_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(dropped("bad_mac"), 3, "{m}");
    assert_eq!(dropped("replay"), 1, "{m}");
    // -- no control path reached Base
    for (i, u) in c.upstreams.iter().enumerate() {
        // The agent's own probe of the replica contract (`GET /_replica/state`, which no client
        // request above names) is the agent's business with its Base; nothing else may arrive.
        let paths: Vec<String> = u
            .paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.as_str() != "/_replica/state")
            .cloned()
            .collect();
        assert!(
            paths.iter().all(|p| {
                !base_core::control::is_control_path("POST", p)
                    && !base_core::control::is_control_path("GET", p)
            }),
            "Base {i} got a control path: {paths:?}"
        );
    }
    // -- logged once per source (this test is one source), not once per request
    let lines = |text: &str| text.matches("refused a control-plane request").count();
    assert_eq!(
        lines(&c.agents[w].log_text()),
        1,
        "{}",
        c.agents[w].log_text()
    );
    let gw_log = gw.log.lock().unwrap().join("\n");
    assert_eq!(lines(&gw_log), 1, "{gw_log}");
}

/// Proves: the transfer path the operator uses works end to end and acts once. A request written
/// into the writer's annotations file (as the kubelet writes the operator's pod annotation) hands
/// the role to the named follower in exactly one new term, is counted and logged with who asked;
/// the same file read again, and the now stale request, move nothing further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_written_to_the_annotations_file_moves_the_writer_once() {
    let c = Cluster::start("annotation").await;
    let (w, t) = c.agreed_writer("a first writer", |_, _| true).await;
    c.wait_peers_up(w).await;
    let f = (w + 2) % NODES;
    let request =
        serde_json::json!({"to": c.agents[f].id, "term": t, "at": now_ms(), "by": "switchover"});
    let file = format!(
        "{}{}",
        annotation_line("hanzo.ai/base", "base"),
        annotation_line("hanzo.ai/transfer-to", &request.to_string())
    );
    write_atomically(&c.agents[w].annotations, &file);
    let (w2, t2) = c
        .agreed_writer("the named follower as writer", |x, term| x != w && term > t)
        .await;
    assert_eq!(
        (w2, t2),
        (f, t + 1),
        "not the named target, or not one term"
    );
    let m = c.metrics(w).await;
    assert_eq!(
        sample(&m, "quasar_transfer_requests_total{outcome=\"started\"}"),
        1,
        "{m}"
    );
    let log = c.agents[w].log_text();
    assert!(
        log.contains("hanzo.ai/transfer-to") && log.contains("switchover"),
        "the hand-over is logged with who asked: {log}"
    );
    // The kubelet rewrites the same content; the old writer is asked nothing new.
    write_atomically(&c.agents[w].annotations, &file);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        c.agreed_writer("still the new writer", |_, _| true).await,
        (f, t + 1)
    );
    // The old request, copied onto the new writer's pod, names a past term: inert.
    write_atomically(&c.agents[f].annotations, &file);
    let start = Instant::now();
    while sample(
        &c.metrics(f).await,
        "quasar_transfer_requests_total{outcome=\"stale_term\"}",
    ) != 1
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the stale request was never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.agreed_writer("still the new writer", |_, _| true).await,
        (f, t + 1)
    );
}
