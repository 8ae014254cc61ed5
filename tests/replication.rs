//! Real processes on loopback (issue 15 §6): three `base-operator store`s, each behind its own
//! `base-operator agent` (peer keys, control ports on their own addresses), and a
//! `base-operator gateway` in front. Clients insert unique rows through the gateway while the
//! writer — agent and store together — is SIGKILLed and restarted, and later SIGSTOPped past its
//! lease and continued. Afterwards every acknowledged row is on every replica exactly once, and
//! in a strong read through the gateway.
//!
//! An acknowledgement is a `200` whose result inserted the row; `504 commit_unknown` and every
//! other answer are "unknown" (the row may or may not be there, but at most once). Everything is
//! waited for on conditions with generous deadlines.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::BIN;

const DEADLINE: Duration = Duration::from_secs(60);
const KEY: &str = "replication-test-peer-key-0123456789abcdef";

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn pid_signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}

/// One pod: a store and its agent.
struct Pod {
    id: String,
    host: String,
    agent_port: u16,
    peer_port: u16,
    store_port: u16,
    dir: PathBuf,
    peers: String,
    agent: Option<Child>,
    store: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Extra arguments of `base-operator store`.
    store_args: Vec<String>,
}

fn sink(log: &Arc<Mutex<Vec<String>>>, child: &mut Child, tag: String) {
    let stderr = child.stderr.take().expect("piped stderr");
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}: {line}"));
        }
    });
}

impl Pod {
    fn store_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.store_port)
    }

    fn start(&mut self) {
        self.start_store();
        self.start_agent();
    }

    fn start_store(&mut self) {
        let mut store = Command::new(BIN)
            .arg("store")
            .args(["--listen", &format!("127.0.0.1:{}", self.store_port)])
            .arg("--data-dir")
            .arg(self.dir.join("store"))
            .args(&self.store_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the store");
        sink(&self.log, &mut store, format!("{} store", self.id));
        self.store = Some(store);
    }

    fn start_agent(&mut self) {
        let mut agent = Command::new(BIN)
            .arg("agent")
            .args(["--node-id", &self.id, "--peers", &self.peers])
            .args(["--listen", &format!("{}:{}", self.host, self.agent_port)])
            .args(["--peer-port", &self.peer_port.to_string()])
            .args([
                "--upstream",
                &format!("http://127.0.0.1:{}", self.store_port),
            ])
            .arg("--state-dir")
            .arg(self.dir.join("quasar"))
            .arg("--peer-key-dir")
            .arg(self.dir.join("keys"))
            .args(["--commit-timeout-ms", "3000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        sink(&self.log, &mut agent, format!("{} agent", self.id));
        self.agent = Some(agent);
    }

    /// SIGKILL of the store alone; its agent runs on.
    fn kill_store(&mut self) {
        if let Some(mut c) = self.store.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, both processes: nothing is flushed, nothing handed over.
    fn kill(&mut self) {
        for mut c in [self.agent.take(), self.store.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, signal: &str) {
        for c in [&self.agent, &self.store].into_iter().flatten() {
            pid_signal(c, signal);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(replicas: &str) -> Gateway {
    let mut child = Command::new(BIN)
        .args(["gateway", "--listen", "127.0.0.1:0", "--replicas", replicas])
        .args(["--poll-interval", "200ms"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("gateway listening")
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = v["fields"]["addr"].as_str().or(v["addr"].as_str())
            {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(DEADLINE)
        .expect("the gateway did not start");
    Gateway {
        child,
        base: format!("http://{addr}"),
    }
}

struct Cluster {
    pods: Vec<Pod>,
    gateway: Gateway,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// A cluster whose stores run with `store_args` too.
    fn start_with(store_args: &[&str]) -> Cluster {
        // One directory per cluster: the tests of this file run at the same time.
        static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("base-replication-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let hosts: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}")).collect();
        // The control port is one number for the whole Base (as in a pod template), each agent
        // on its own loopback address.
        let peer_port = loop {
            let p = free_port("127.0.0.1");
            if hosts
                .iter()
                .all(|h| std::net::TcpListener::bind((h.as_str(), p)).is_ok())
            {
                break p;
            }
        };
        let agent_ports: Vec<u16> = hosts.iter().map(|h| free_port(h)).collect();
        let peers = (0..3)
            .map(|i| format!("b-{i}=http://{}:{}", hosts[i], agent_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pods: Vec<Pod> = (0..3)
            .map(|i| {
                let d = dir.join(format!("b-{i}"));
                std::fs::create_dir_all(d.join("keys")).expect("dirs");
                std::fs::write(d.join("keys/current"), KEY).expect("key");
                Pod {
                    id: format!("b-{i}"),
                    host: hosts[i].clone(),
                    agent_port: agent_ports[i],
                    peer_port,
                    store_port: free_port("127.0.0.1"),
                    dir: d,
                    peers: peers.clone(),
                    agent: None,
                    store: None,
                    log: log.clone(),
                    store_args: store_args.iter().map(|a| a.to_string()).collect(),
                }
            })
            .collect();
        for p in &mut pods {
            p.start();
        }
        let gateway = start_gateway(&peers);
        Cluster { pods, gateway, dir }
    }

    fn logs(&self) -> String {
        let log = self.pods[0].log.lock().unwrap_or_else(|e| e.into_inner());
        let n = log.len();
        log[n.saturating_sub(400)..].join("\n")
    }

    /// Log lines (of every process) that contain `needle`.
    fn log_lines_with(&self, needle: &str) -> Vec<String> {
        let log = self.pods[0].log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.signal("-CONT");
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The writer the gateway routes to, if it knows one.
async fn gateway_writer(client: &reqwest::Client, gw: &Gateway) -> Option<String> {
    let v: Value = client
        .get(format!("{}/_gateway/state", gw.base))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["writer"].as_str().map(str::to_owned)
}

/// Writes `stmts` through the gateway; `Some(results)` only for a `200`.
async fn execute(client: &reqwest::Client, gw: &Gateway, stmts: Value) -> Option<Vec<Value>> {
    let r = client
        .post(format!("{}/db/execute", gw.base))
        .header("content-type", "application/json")
        .body(stmts.to_string())
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["results"].as_array().cloned()
}

async fn wait_for<F, Fut>(what: &str, cluster: &Cluster, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; logs:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row's tag and how often it is there, read from one store directly (`level=none`: what
/// it applied, which on a replica is exactly its commit).
async fn tags_on_store(client: &reqwest::Client, pod: &Pod) -> Option<BTreeMap<String, u64>> {
    let q = "SELECT tag, count(*) FROM t GROUP BY tag";
    let r = client
        .get(pod.store_url(&format!("/db/query?q={}", encode(q))))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    let values = v["results"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Some(
        values
            .iter()
            .filter_map(|row| Some((row[0].as_str()?.to_string(), row[1].as_u64()?)))
            .collect(),
    )
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn writer_index(name: &str) -> usize {
    name.trim_start_matches("b-").parse().expect("b-<i>")
}

/// Clients inserting unique tags through the gateway, one insert per request; a tag never
/// repeats, so a row twice would be a duplicate made by the system.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    unknown: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn spawn(base: &str, clients: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
        let unknown = Arc::new(Mutex::new(0u64));
        let mut tasks = Vec::new();
        for k in 0..clients {
            let (stop, acked, unknown, base) = (
                stop.clone(),
                acked.clone(),
                unknown.clone(),
                base.to_string(),
            );
            let c = http();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let tag = format!("c{k}-{n}");
                    let body = json!([["INSERT INTO t(tag) VALUES(?)", tag]]);
                    let r = c
                        .post(format!("{base}/db/execute"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) if r.status() == StatusCode::OK => r
                            .json::<Value>()
                            .await
                            .ok()
                            .is_some_and(|v| v["results"][0]["rows_affected"] == 1),
                        _ => false,
                    };
                    if ok {
                        acked.lock().unwrap().insert(tag);
                    } else {
                        *unknown.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        Writers {
            stop,
            acked,
            unknown,
            tasks,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the clients; the acknowledged tags.
    async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let acked = self.acked.lock().unwrap().clone();
        let unknown = *self.unknown.lock().unwrap();
        eprintln!(
            "{} writes acknowledged, {unknown} unknown or refused",
            acked.len()
        );
        acked
    }
}

/// Waits for a writer and creates the table `t`.
async fn table_ready(cluster: &Cluster, client: &reqwest::Client) {
    wait_for("a writer", cluster, || {
        let c = client.clone();
        let gw = &cluster.gateway;
        async move { gateway_writer(&c, gw).await.is_some() }
    })
    .await;
    wait_for("the table", cluster, || {
        let c = client.clone();
        let gw = &cluster.gateway;
        async move {
            let ddl =
                json!(["CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, tag TEXT NOT NULL)"]);
            execute(&c, gw, ddl)
                .await
                .is_some_and(|r| r.first().is_some_and(|r| r.get("error").is_none()))
        }
    })
    .await;
}

/// Waits until `more` further writes are acknowledged.
async fn acks_grow(what: &str, cluster: &Cluster, writers: &Writers, more: usize) {
    let before = writers.acked_count();
    wait_for(what, cluster, || {
        let n = writers.acked_count();
        async move { n >= before + more }
    })
    .await;
}

/// Fails if an acknowledged write can be lost or duplicated across a writer crash and a writer
/// paused past its lease: the agent answering before a majority holds the entry, a new writer
/// cutting committed entries, a replica applying past commit, or a store losing a durable write
/// on SIGKILL would each leave an acknowledged tag missing from some store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_writer_crash_and_pause() {
    let mut cluster = Cluster::start();
    let client = http();
    table_ready(&cluster, &client).await;
    let writers = Writers::spawn(&cluster.gateway.base, 4);
    acks_grow("writes acknowledged", &cluster, &writers, 50).await;

    // 1. SIGKILL the writer's agent and store together; restart both on the same disks.
    let w = gateway_writer(&client, &cluster.gateway)
        .await
        .expect("writer");
    let w = writer_index(&w);
    cluster.pods[w].kill();
    acks_grow(
        "writes acknowledged by a new writer",
        &cluster,
        &writers,
        50,
    )
    .await;
    cluster.pods[w].start();

    // 2. SIGSTOP the (new) writer past its lease (900 ms, and more), then let it go on.
    let w2 = loop {
        if let Some(name) = gateway_writer(&client, &cluster.gateway).await
            && writer_index(&name) != w
        {
            break writer_index(&name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.pods[w2].signal("-STOP");
    acks_grow(
        "writes acknowledged while the old writer is stopped",
        &cluster,
        &writers,
        50,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pods[w2].signal("-CONT");
    acks_grow("writes after the pause", &cluster, &writers, 50).await;
    let acked = writers.stop().await;
    every_acknowledged_row_everywhere(&cluster, &client, &acked).await;
}

/// Fails if an acknowledged write can be lost when the writer's store dies under its agent, or
/// when a replica falls so far behind that it must be sent a snapshot: the agent vouching for
/// an entry its store did not hold durably, a restarted store forgetting its log, term or role,
/// or a snapshot missing committed rows (or holding uncommitted ones) would each leave an
/// acknowledged tag missing from (or twice on) some store. The stores keep only 20 log entries
/// below commit, so the stopped replica's catch-up must go through a snapshot streamed by the
/// agents, and the test checks that one was installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_store_kill_under_its_agent_and_a_snapshot_catch_up() {
    let mut cluster = Cluster::start_with(&["--log-keep", "20"]);
    let client = http();
    table_ready(&cluster, &client).await;
    let writers = Writers::spawn(&cluster.gateway.base, 4);
    acks_grow("writes acknowledged", &cluster, &writers, 50).await;

    // 1. SIGKILL the writer's store alone; its agent stays writer. Writes in flight are
    //    answered unknown (never success), and writes go on once the store is back on its disk.
    let w = gateway_writer(&client, &cluster.gateway)
        .await
        .expect("writer");
    let w = writer_index(&w);
    cluster.pods[w].kill_store();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pods[w].start_store();
    acks_grow("writes after the store restarted", &cluster, &writers, 50).await;

    // 2. SIGSTOP a replica (agent and store) while more than its log's worth is written, then
    //    let it go on: it is behind the writer's log start and must be sent a snapshot.
    let w_now = writer_index(
        &gateway_writer(&client, &cluster.gateway)
            .await
            .expect("writer"),
    );
    let r = (w_now + 1) % 3;
    cluster.pods[r].signal("-STOP");
    acks_grow("writes while a replica is stopped", &cluster, &writers, 200).await;
    cluster.pods[r].signal("-CONT");
    wait_for(
        "a snapshot installed by the stopped replica",
        &cluster,
        || {
            let agent = format!("{} agent:", cluster.pods[r].id);
            let installed = cluster
                .log_lines_with("snapshot installed")
                .iter()
                .any(|l| l.starts_with(&agent));
            async move { installed }
        },
    )
    .await;
    acks_grow("writes after the catch-up", &cluster, &writers, 50).await;
    let acked = writers.stop().await;
    every_acknowledged_row_everywhere(&cluster, &client, &acked).await;
}

/// Every acknowledged row is on every store exactly once (no row of any tag twice anywhere),
/// and in a strong read through the gateway.
async fn every_acknowledged_row_everywhere(
    cluster: &Cluster,
    client: &reqwest::Client,
    acked: &BTreeSet<String>,
) {
    for pod in &cluster.pods {
        let start = Instant::now();
        loop {
            let tags = tags_on_store(client, pod).await.unwrap_or_default();
            let dup: Vec<_> = tags.iter().filter(|(_, n)| **n > 1).collect();
            assert!(dup.is_empty(), "{}: rows twice: {dup:?}", pod.id);
            let missing: Vec<_> = acked.iter().filter(|t| !tags.contains_key(*t)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{}: {} acknowledged rows missing, e.g. {:?}; logs:\n{}",
                pod.id,
                missing.len(),
                &missing[..missing.len().min(5)],
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And in a strong read through the gateway (served by the writer within its lease, after its
    // term's no-op committed; a replica redirects to it).
    let start = Instant::now();
    let strong: BTreeMap<String, u64> = loop {
        let r = client
            .get(format!(
                "{}/db/query?level=strong&q={}",
                cluster.gateway.base,
                encode("SELECT tag, count(*) FROM t GROUP BY tag")
            ))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == StatusCode::OK
            && let Ok(v) = r.json::<Value>().await
        {
            break v["results"][0]["values"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|row| Some((row[0].as_str()?.to_string(), row[1].as_u64()?)))
                .collect();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no strong read; logs:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for t in acked {
        assert_eq!(strong.get(t), Some(&1), "strong read: {t}");
    }
    // A read that needs the writer (the gateway pins a client's reads after its write so, with
    // `X-Base-Writer: required`): the writer's agent serves it with every acknowledged row, a
    // replica's agent refuses it (`307`, `503`) rather than answer from what it applied.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let q = encode("SELECT tag, count(*) FROM t GROUP BY tag");
    let start = Instant::now();
    loop {
        let mut served = 0;
        for pod in &cluster.pods {
            let url = format!("http://{}:{}/db/query?q={q}", pod.host, pod.agent_port);
            let Ok(r) = no_redirects
                .get(url)
                .header("x-base-writer", "required")
                .send()
                .await
            else {
                continue;
            };
            let status = r.status();
            if status == StatusCode::OK {
                let v: Value = r.json().await.expect("a query answer");
                let rows = v["results"][0]["values"].as_array().cloned();
                let tags: BTreeSet<String> = rows
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|row| row[0].as_str().map(str::to_owned))
                    .collect();
                let missing: Vec<&String> = acked.difference(&tags).collect();
                assert!(missing.is_empty(), "{}: served without {missing:?}", pod.id);
                served += 1;
            } else {
                assert!(
                    matches!(status.as_u16(), 307 | 503),
                    "{}: a read that needs the writer answered {status}",
                    pod.id
                );
            }
        }
        assert!(served <= 1, "{served} agents served as the writer");
        if served == 1 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no agent served a read that needs the writer; logs:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Base that does not implement the replica contract (`404` on `GET /_replica/state`) still
/// works as before — a write goes through the writer's agent and is answered at once — but is
/// reported, never silent: `X-Base-Replica-Contract: 0` on `/_ha/leader` (what the operator
/// turns into `ReplicationContract=False`), the metric `quasar_replication_contract 0`, and a
/// warning in the agent's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_without_the_contract_runs_as_before_and_is_reported() {
    use axum::Router;
    use axum::http::StatusCode as S;
    let writes = Arc::new(Mutex::new(0u64));
    let seen = writes.clone();
    let app = Router::new()
        .route(
            "/_replica/state",
            axum::routing::get(|| async { S::NOT_FOUND }),
        )
        .fallback(move |req: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                if req.method() == axum::http::Method::POST {
                    *seen.lock().unwrap() += 1;
                }
                (S::OK, "legacy")
            }
        });
    let mut ports = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        ports.push(listener.local_addr().expect("addr").port());
        let app = app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let agent_ports: Vec<u16> = (0..3).map(|_| free_port("127.0.0.1")).collect();
    let peers = (0..3)
        .map(|i| format!("b-{i}=http://127.0.0.1:{}", agent_ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let dir = std::env::temp_dir().join(format!("base-replication-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut child = Command::new(BIN)
            .arg("agent")
            .args(["--node-id", &format!("b-{i}"), "--peers", &peers])
            .args(["--listen", &format!("127.0.0.1:{}", agent_ports[i])])
            .args(["--upstream", &format!("http://127.0.0.1:{}", ports[i])])
            .arg("--state-dir")
            .arg(dir.join(format!("b-{i}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stderr = child.stderr.take().expect("stderr");
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        agents.push(KillOnDrop(child));
    }
    let client = http();
    let start = Instant::now();
    let writer = loop {
        let mut found = None;
        for port in &agent_ports {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/_ha/leader"))
                .send()
                .await
                && r.headers()
                    .get("x-base-replica-contract")
                    .map(|v| v.as_bytes())
                    == Some(b"0")
                && let Ok(v) = r.json::<Value>().await
                && let Some(url) = v["leader_url"].as_str()
                && !url.is_empty()
            {
                found = Some(url.to_string());
            }
        }
        if let Some(url) = found {
            break url;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no writer reporting the contract absent; log:\n{}",
            log.lock().unwrap().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = client
        .post(format!("{writer}/db/execute"))
        .body("[]")
        .send()
        .await
        .expect("write");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the legacy write is answered as before"
    );
    assert_eq!(r.text().await.unwrap_or_default(), "legacy");
    assert_eq!(*writes.lock().unwrap(), 1);
    let metrics = client
        .get(format!("{writer}/_quasar/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l == "quasar_replication_contract 0"),
        "{metrics}"
    );
    let warned = log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("WARN") && l.contains("does not implement the replica contract"));
    assert!(warned, "no warning in the agents' log");
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
