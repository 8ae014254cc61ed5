//! Three real `base-operator agent` processes on loopback, each in front of a tiny stand-in Base
//! (an in-process HTTP server that records the writes it receives). A writer is elected; its
//! process is killed; another agent wins a higher term and only it forwards writes; the killed
//! one, restarted with its state dir, rejoins as a follower without raising the term. A writer
//! that gets SIGTERM hands its role over before it exits.
//!
//! Everything is polled with generous deadlines; nothing asserts on a fixed sleep.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const DEADLINE: Duration = Duration::from_secs(20);
const NODES: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One write as the stand-in Base saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    term: Option<u64>,
}

#[derive(Clone, Default)]
struct Upstream {
    writes: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
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

/// Starts a stand-in Base on a free port; returns its recorder and port.
async fn start_upstream() -> (Upstream, u16) {
    let up = Upstream::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new().fallback(record).with_state(up.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (up, port)
}

struct Agent {
    id: String,
    port: u16,
    upstream_port: u16,
    state_dir: PathBuf,
    log: PathBuf,
    peers: String,
    child: Option<Child>,
}

impl Agent {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--upstream",
                &format!("http://127.0.0.1:{}", self.upstream_port),
            ])
            .arg("--state-dir")
            .arg(&self.state_dir)
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

struct Cluster {
    dir: PathBuf,
    agents: Vec<Agent>,
    upstreams: Vec<Upstream>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("base-agents-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let peers = (0..NODES)
            .map(|i| format!("base-{i}=http://127.0.0.1:{}", ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut agents = Vec::new();
        let mut upstreams = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (up, upstream_port) = start_upstream().await;
            upstreams.push(up);
            let mut agent = Agent {
                id: format!("base-{i}"),
                port: *port,
                upstream_port,
                state_dir: dir.join(format!("state-{i}")),
                log: dir.join(format!("agent-{i}.log")),
                peers: peers.clone(),
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
    assert_eq!(t2, t1 + 1, "a hand-over needs exactly one new term");
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
