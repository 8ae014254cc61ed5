//! `base-operator gateway` as a real process, in front of three stand-in replicas served by this
//! test. Each stand-in answers `/_ha/leader` from a script the test changes (who is writer, term,
//! lease) and records every other request it gets, so the test can see where requests went.
//!
//! No assertion depends on how fast the machine is: the test waits for conditions with generous
//! deadlines, and checks "never" properties only over requests sent after the condition held.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEADLINE: Duration = Duration::from_secs(30);

// -------------------------------------------------------------------------------------------------
// Stand-in replicas
// -------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Lease {
    /// Renewed on every answer: `now + d`.
    Renewing(Duration),
    /// Fixed: the writer stopped renewing, followers still report its last lease.
    Until(SystemTime),
}

/// What the cluster says, and how each replica deviates from it.
#[derive(Debug)]
struct Script {
    writer: Option<usize>,
    term: u64,
    lease: Lease,
    /// Replicas whose `/_ha/leader` answers 500 (they still serve proxied requests).
    polls_fail: [bool; 3],
    /// Replicas whose `/_ha/leader` answers 200 with a body that is not a leader answer.
    garbled: [bool; 3],
    /// A replica stuck at an older view: (term, writer it names).
    stale: [Option<(u64, Option<usize>)>; 3],
    /// Replicas that refuse writes as an agent that is no longer the writer does: `503
    /// {"error":"no_writer"}`, or `307` to the new writer when `redirect`.
    refuse_writes: [bool; 3],
    redirect: bool,
    /// What a refusal changes first: the cluster moves on to this (writer, term), which the
    /// refusing replica knows of (a hand-over).
    on_refusal: Option<(usize, u64)>,
}

#[derive(Clone, Debug)]
struct Hit {
    method: Method,
    path: String,
    forwarded_for: Option<String>,
    /// The request came with `X-Base-Writer: required`.
    writer_required: bool,
    body_len: usize,
    at: SystemTime,
}

struct Cluster {
    script: Mutex<Script>,
    hits: Vec<Mutex<Vec<Hit>>>,
    addrs: Vec<SocketAddr>,
}

fn name(i: usize) -> String {
    format!("b-{i}")
}

fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    base_core::wire::format_rfc3339(base_core::Millis(ms as u64))
}

#[derive(Clone)]
struct ReplicaState {
    cluster: Arc<Cluster>,
    me: usize,
}

async fn leader(State(s): State<ReplicaState>) -> Response {
    let script = s.cluster.script.lock().unwrap();
    if script.polls_fail[s.me] {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    if script.garbled[s.me] {
        return (StatusCode::OK, r#"{"node_id": 7, "term": "#).into_response();
    }
    let (term, writer) = script.stale[s.me].unwrap_or((script.term, script.writer));
    let lease = match script.lease {
        Lease::Renewing(d) => SystemTime::now() + d,
        Lease::Until(t) => t,
    };
    let addrs = &s.cluster.addrs;
    let body = match writer {
        Some(w) => serde_json::json!({
            "leader_url": format!("http://{}", addrs[w]),
            "node_id": name(w),
            "term": term,
            "lease_expires": rfc3339(lease),
        }),
        None => {
            serde_json::json!({"leader_url": "", "node_id": "", "term": term, "lease_expires": ""})
        }
    };
    axum::Json(body).into_response()
}

async fn record(
    State(s): State<ReplicaState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let hit = Hit {
        method,
        path: uri.path().to_owned(),
        forwarded_for: headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        writer_required: headers
            .get("x-base-writer")
            .is_some_and(|v| v.as_bytes() == b"required"),
        body_len: body.len(),
        at: SystemTime::now(),
    };
    s.cluster.hits[s.me].lock().unwrap().push(hit);
    {
        let mut script = s.cluster.script.lock().unwrap();
        if script.refuse_writes[s.me] && write {
            script.refuse_writes[s.me] = false;
            if let Some((writer, term)) = script.on_refusal.take() {
                script.writer = Some(writer);
                script.term = term;
            }
            if script.redirect {
                let to = format!(
                    "http://{}{}",
                    s.cluster.addrs[script.writer.unwrap_or(0)],
                    uri
                );
                return (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response();
            }
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                r#"{"error":"no_writer"}"#,
            )
                .into_response();
        }
    }
    (
        [("x-replica", name(s.me))],
        format!(r#"{{"replica":"{}","len":{}}}"#, name(s.me), body.len()),
    )
        .into_response()
}

/// Three stand-ins on loopback, serving from a shared script, on a runtime of their own so that
/// blocking test code does not stall them.
struct StandIns {
    cluster: Arc<Cluster>,
    _runtime: tokio::runtime::Runtime,
}

impl StandIns {
    fn start(writer: Option<usize>, term: u64, lease: Lease) -> StandIns {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listeners: Vec<_> = (0..3)
            .map(|_| {
                runtime
                    .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .unwrap()
            })
            .collect();
        let cluster = Arc::new(Cluster {
            script: Mutex::new(Script {
                writer,
                term,
                lease,
                polls_fail: [false; 3],
                garbled: [false; 3],
                stale: [None; 3],
                refuse_writes: [false; 3],
                redirect: false,
                on_refusal: None,
            }),
            hits: (0..3).map(|_| Mutex::new(Vec::new())).collect(),
            addrs: listeners.iter().map(|l| l.local_addr().unwrap()).collect(),
        });
        for (me, listener) in listeners.into_iter().enumerate() {
            let app = Router::new()
                .route("/_ha/leader", axum::routing::get(leader))
                .fallback(record)
                .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
                .with_state(ReplicaState {
                    cluster: Arc::clone(&cluster),
                    me,
                });
            runtime.spawn(async move { axum::serve(listener, app).await });
        }
        StandIns {
            cluster,
            _runtime: runtime,
        }
    }

    fn script(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.cluster.script.lock().unwrap());
    }

    fn replicas_flag(&self) -> String {
        (0..3)
            .map(|i| format!("{}=http://{}", name(i), self.cluster.addrs[i]))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn hits(&self, i: usize) -> Vec<Hit> {
        self.cluster.hits[i].lock().unwrap().clone()
    }

    fn clear(&self) {
        for h in &self.cluster.hits {
            h.lock().unwrap().clear();
        }
    }

    /// Which replicas got a request since `since`, as (replica, method) pairs.
    fn hits_since(&self, since: SystemTime) -> Vec<(usize, Hit)> {
        (0..3)
            .flat_map(|i| {
                self.hits(i)
                    .into_iter()
                    .filter(move |h| h.at >= since)
                    .map(move |h| (i, h))
            })
            .collect()
    }
}

// -------------------------------------------------------------------------------------------------
// The gateway process
// -------------------------------------------------------------------------------------------------

/// The gateway child process; killed when dropped.
struct Gateway {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    fn start(replicas: &str, extra: &[&str]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_base-operator"))
            .args(["gateway", "--listen", "127.0.0.1:0", "--replicas", replicas])
            .args(extra)
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
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gateway listening")
                    && let Some(addr) = json_field(&line, "addr")
                {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut gateway = Gateway {
            child,
            base: String::new(),
            log,
        };
        match rx.recv_timeout(DEADLINE) {
            Ok(addr) => gateway.base = format!("http://{addr}"),
            Err(_) => panic!("gateway did not start; log:\n{}", gateway.log_text()),
        }
        gateway
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_field(line: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields").unwrap_or(&value);
    fields.get(field)?.as_str().map(str::to_owned)
}

// -------------------------------------------------------------------------------------------------
// Client helpers (blocking on a small runtime of the test's own)
// -------------------------------------------------------------------------------------------------

struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    replica: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Client {
    fn new() -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        self.rt.block_on(async {
            let mut request = self.http.request(method, url).body(body);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let response = request.send().await.expect("gateway answers");
            let status = response.status();
            let replica = response
                .headers()
                .get("x-replica")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.text().await.expect("body");
            Answer {
                status,
                replica,
                retry_after,
                body,
            }
        })
    }

    fn get(&self, url: &str, client: &str) -> Answer {
        self.send(Method::GET, url, &[("x-base-client", client)], Vec::new())
    }

    fn post(&self, url: &str, client: &str, body: Vec<u8>) -> Answer {
        self.send(Method::POST, url, &[("x-base-client", client)], body)
    }

    /// A client that takes a `307` as the answer it is, never following it.
    fn no_redirects() -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            ..Client::new()
        }
    }

    /// The gateway's Prometheus text.
    fn metrics(&self, gw: &Gateway) -> String {
        self.send(Method::GET, &gw.url("/_gateway/metrics"), &[], Vec::new())
            .body
    }

    fn state(&self, gw: &Gateway) -> serde_json::Value {
        let answer = self.send(Method::GET, &gw.url("/_gateway/state"), &[], Vec::new());
        serde_json::from_str(&answer.body).expect("state is JSON")
    }
}

fn wait_until(what: &str, gw: &Gateway, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting until {what}; gateway log:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_ready(client: &Client, gw: &Gateway, writer: &str) -> bool {
    let state = client.state(gw);
    state["writer"] == writer
        && state["replicas"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["ready"] == true))
}

const POLL: &str = "300ms";

// -------------------------------------------------------------------------------------------------
// Tests
// -------------------------------------------------------------------------------------------------

#[test]
fn writes_go_to_the_writer_reads_spread_and_a_writers_reads_follow_it() {
    let replicas = StandIns::start(Some(1), 5, Lease::Renewing(Duration::from_secs(3)));
    let gw = Gateway::start(
        &replicas.replicas_flag(),
        &["--poll-interval", POLL, "--ryw-ttl", "1m"],
    );
    let client = Client::new();
    wait_until(
        "the gateway knows b-1 and all replicas are ready",
        &gw,
        || all_ready(&client, &gw, "b-1"),
    );
    replicas.clear();

    for i in 0..10 {
        let a = client.post(
            &gw.url("/api/collections/x/records"),
            &format!("w{i}"),
            b"{}".to_vec(),
        );
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.replica.as_deref(), Some("b-1"), "writes go to the writer");
    }
    let mut per_replica = [0; 3];
    for i in 0..30 {
        let a = client.get(
            &gw.url("/api/collections/x/records"),
            &format!("reader-{i}"),
        );
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        let r: usize = a.replica.expect("x-replica")[2..].parse().unwrap();
        per_replica[r] += 1;
    }
    assert!(
        per_replica.iter().all(|&n| n >= 1),
        "reads spread over every ready replica: {per_replica:?}"
    );

    // Read-your-writes: a client's reads right after its write go to the writer, marked so that
    // an agent that is no longer the writer refuses them rather than answer without the write.
    assert!(
        replicas.hits(1).iter().all(|h| !h.writer_required),
        "plain reads and writes go unmarked"
    );
    let a = client.post(&gw.url("/api/items"), "me", b"{\"a\":1}".to_vec());
    assert_eq!(a.replica.as_deref(), Some("b-1"));
    for _ in 0..6 {
        let a = client.get(&gw.url("/api/items"), "me");
        assert_eq!(a.replica.as_deref(), Some("b-1"), "pinned read: {a:?}");
    }
    let pinned: Vec<Hit> = replicas
        .hits(1)
        .into_iter()
        .filter(|h| h.method == Method::GET && h.path == "/api/items")
        .collect();
    assert_eq!(pinned.len(), 6);
    assert!(pinned.iter().all(|h| h.writer_required), "{pinned:?}");
    // X-Base-Writer: required sends a read to the writer too.
    for _ in 0..3 {
        let a = client.send(
            Method::GET,
            &gw.url("/api/health"),
            &[("x-base-writer", "required"), ("x-base-client", "fresh")],
            Vec::new(),
        );
        assert_eq!(a.replica.as_deref(), Some("b-1"));
    }

    // Bodies stream through: one that fits the retry buffer and one larger than it.
    for size in [1_000usize, 9 * 1024 * 1024] {
        let a = client.post(&gw.url("/api/files"), "uploader", vec![7u8; size]);
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, format!(r#"{{"replica":"b-1","len":{size}}}"#));
    }

    let hits = replicas.hits(1);
    assert!(
        hits.iter().all(|h| h
            .forwarded_for
            .as_deref()
            .is_some_and(|x| x.contains("127.0.0.1"))),
        "X-Forwarded-For carries the client's address"
    );
    assert!(
        hits.iter()
            .any(|h| h.method == Method::POST && h.path == "/api/files")
    );
    assert!(hits.iter().any(|h| h.body_len == 9 * 1024 * 1024));

    let metrics = client.metrics(&gw);
    assert!(metrics.contains(r#"base_gateway_requests_routed_total{kind="write",why="write"}"#));
    assert!(metrics.contains("base_gateway_term 5"), "{metrics}");
    let root = client.send(Method::GET, &gw.url("/metrics"), &[], Vec::new());
    assert!(root.body.contains("base_gateway_requests_routed_total"));
}

#[test]
fn routing_follows_a_new_writer_at_a_higher_term_and_shuns_a_stale_replica() {
    let replicas = StandIns::start(Some(0), 3, Lease::Renewing(Duration::from_secs(3)));
    let gw = Gateway::start(&replicas.replicas_flag(), &["--poll-interval", POLL]);
    let client = Client::new();
    wait_until("the gateway knows b-0", &gw, || {
        all_ready(&client, &gw, "b-0")
    });
    let a = client.post(&gw.url("/w"), "c", Vec::new());
    assert_eq!(a.replica.as_deref(), Some("b-0"));

    // An election: b-2 leads term 4; b-0 did not hear of it and still believes in term 3.
    replicas.script(|s| {
        s.writer = Some(2);
        s.term = 4;
        s.stale[0] = Some((3, Some(0)));
    });
    wait_until("writes follow b-2", &gw, || {
        client
            .post(&gw.url("/w"), "c", Vec::new())
            .replica
            .as_deref()
            == Some("b-2")
    });
    wait_until("the gateway sees b-0 as stale", &gw, || {
        client.state(&gw)["replicas"][0]["ready"] == false
    });
    let since = SystemTime::now();
    for i in 0..20 {
        let w = client.post(&gw.url("/w"), &format!("c{i}"), Vec::new());
        assert_eq!(w.replica.as_deref(), Some("b-2"), "{w:?}");
        let r = client.get(&gw.url("/r"), &format!("r{i}"));
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(
        replicas.hits_since(since).iter().all(|(i, _)| *i != 0),
        "a replica at a lower term gets no requests"
    );
    assert_eq!(client.state(&gw)["term"], 4);
}

#[test]
fn a_writer_whose_lease_passes_is_forgotten_and_never_used_after() {
    let replicas = StandIns::start(Some(1), 7, Lease::Renewing(Duration::from_millis(1_500)));
    let gw = Gateway::start(
        &replicas.replicas_flag(),
        &["--poll-interval", POLL, "--ryw-ttl", "1m"],
    );
    let client = Client::new();
    wait_until("the gateway knows b-1", &gw, || {
        all_ready(&client, &gw, "b-1")
    });
    let a = client.post(&gw.url("/w"), "pinned", Vec::new());
    assert_eq!(a.replica.as_deref(), Some("b-1"));

    // b-1 vanishes from the election: its polls fail, nobody renews its lease; the followers keep
    // naming it with its last lease. It still answers proxied requests (and records them).
    let lease_end = SystemTime::now() + Duration::from_millis(1_500);
    replicas.script(|s| {
        s.polls_fail[1] = true;
        s.lease = Lease::Until(lease_end);
    });
    while SystemTime::now() < lease_end + Duration::from_millis(50) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let since = SystemTime::now();
    for i in 0..10 {
        let w = client.post(&gw.url("/w"), &format!("c{i}"), Vec::new());
        assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE, "{w:?}");
        assert_eq!(w.body, r#"{"error":"no_writer"}"#);
        let pinned = client.get(&gw.url("/r"), "pinned");
        assert_eq!(
            pinned.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a pinned read is refused rather than sent to a follower: {pinned:?}"
        );
        let r = client.get(&gw.url("/r"), &format!("r{i}"));
        assert_eq!(r.status, StatusCode::OK, "followers still serve reads");
        assert_ne!(r.replica.as_deref(), Some("b-1"));
    }
    assert!(
        replicas.hits(1).iter().all(|h| h.at < since),
        "nothing reached the dead writer after its lease"
    );
    let ready = client.send(Method::GET, &gw.url("/_gateway/readyz"), &[], Vec::new());
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    // A new writer at a higher term brings writes back.
    replicas.script(|s| {
        s.writer = Some(2);
        s.term = 8;
        s.lease = Lease::Renewing(Duration::from_secs(3));
    });
    wait_until("writes go to b-2", &gw, || {
        client
            .post(&gw.url("/w"), "c", Vec::new())
            .replica
            .as_deref()
            == Some("b-2")
    });
}

#[test]
fn nothing_known_means_503_and_a_garbled_answer_is_a_failed_poll() {
    let replicas = StandIns::start(None, 1, Lease::Renewing(Duration::from_secs(3)));
    let gw = Gateway::start(&replicas.replicas_flag(), &["--poll-interval", POLL]);
    let client = Client::new();
    // Replicas answer but name no writer: writes are refused, reads served.
    wait_until("replicas are ready", &gw, || {
        client.state(&gw)["replicas"][2]["ready"] == true
    });
    let w = client.post(&gw.url("/w"), "c", Vec::new());
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(w.body, r#"{"error":"no_writer"}"#);
    // With a hint: the gateway is looking, a failover is usually over within a second or two.
    assert_eq!(w.retry_after.as_deref(), Some("1"));
    assert_eq!(client.get(&gw.url("/r"), "c").status, StatusCode::OK);
    // A garbled answer is a failed poll: that replica leaves the read rotation, nothing panics.
    replicas.script(|s| s.garbled[0] = true);
    wait_until("b-0 is not ready", &gw, || {
        client.state(&gw)["replicas"][0]["ready"] == false
    });
    // The log arrives through a pipe read by another thread: it may trail the state a little.
    wait_until("the garbled answer is logged", &gw, || {
        gw.log_text().contains("garbled answer")
    });
    let since = SystemTime::now();
    for i in 0..9 {
        assert_eq!(
            client.get(&gw.url("/r"), &format!("r{i}")).status,
            StatusCode::OK
        );
    }
    assert!(replicas.hits_since(since).iter().all(|(i, _)| *i != 0));
    // Every poll fails: reads have nowhere to go either.
    replicas.script(|s| s.polls_fail = [true; 3]);
    wait_until("no replica is ready", &gw, || {
        client.get(&gw.url("/r"), "c").status == StatusCode::SERVICE_UNAVAILABLE
    });
    wait_until("the failed polls are logged", &gw, || {
        gw.log_text().contains("poll failed")
    });
}

/// A write the writer refuses as not the writer (`503 no_writer`, then `307`) reached it but was
/// not applied: the gateway loses the writer, re-polls every replica at once, holds the write and
/// sends it to the writer the re-poll finds. With `--poll-interval 1h` and 60 s leases nothing but
/// the re-poll polls the followers (the writer is polled every 30 s): without it the client got
/// the refusal (or a pod's `307`) and the next writes went to the old writer for half a minute.
#[test]
fn a_write_the_writer_refuses_is_held_and_sent_to_the_writer_the_re_poll_finds() {
    let replicas = StandIns::start(Some(0), 1, Lease::Renewing(Duration::from_secs(60)));
    let gw = Gateway::start(&replicas.replicas_flag(), &["--poll-interval", "1h"]);
    let client = Client::no_redirects();
    wait_until("b-0 is the writer", &gw, || {
        client.state(&gw)["writer"] == "b-0"
    });
    for (from, to, redirect) in [(0, 1, false), (1, 2, true)] {
        let term = (to + 1) as u64;
        replicas.script(|s| {
            s.refuse_writes[from] = true;
            s.redirect = redirect;
            s.on_refusal = Some((to, term));
        });
        let before = client.state(&gw)["replicas"][to]["polls"]
            .as_u64()
            .expect("polls");
        let since = SystemTime::now();
        let answer = client.post(&gw.url("/w"), "c", b"row".to_vec());
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{answer:?}; gateway:\n{}",
            gw.log_text()
        );
        assert_eq!(answer.replica, Some(name(to)));
        // The order of events: refused by the old writer, then taken by the new one, once each.
        let writes: Vec<usize> = replicas
            .hits_since(since)
            .into_iter()
            .filter(|(_, h)| h.method == Method::POST)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(writes.contains(&from) && writes.contains(&to), "{writes:?}");
        let state = client.state(&gw);
        assert_eq!(state["writer"], name(to).as_str());
        assert_eq!(state["term"], term);
        assert!(
            state["replicas"][to]["polls"].as_u64().expect("polls") > before,
            "the new writer was not re-polled: {state}"
        );
    }
    let metrics = client.metrics(&gw);
    assert_eq!(
        metric(
            &metrics,
            r#"base_gateway_writer_lost_total{how="not_writer"}"#
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"base_gateway_requests_held_total{result="forwarded"}"#
        ),
        2.0,
        "{metrics}"
    );
}

// -------------------------------------------------------------------------------------------------
// With real agents
// -------------------------------------------------------------------------------------------------

/// A `base-operator agent` process with its own state dir; killed (SIGKILL: a crash, no hand-over)
/// when dropped.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(
        i: usize,
        peers: &str,
        port: u16,
        upstream: SocketAddr,
        state_dir: &std::path::Path,
        extra: &[&str],
    ) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_base-operator"))
            .arg("agent")
            .args(["--node-id", &name(i), "--peers", peers])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("http://{upstream}")])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start base-operator agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, log }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the agents must know each other's ports before they start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a test of three real agents starts from: Base stand-ins behind them (upstream i behind
/// agent b-i; their script is unused), a free port each, the `--peers` list, a fresh state dir.
struct AgentSetup {
    upstreams: StandIns,
    ports: Vec<u16>,
    peers: String,
    dir: std::path::PathBuf,
}

impl AgentSetup {
    fn new(tag: &str) -> AgentSetup {
        let upstreams = StandIns::start(None, 0, Lease::Renewing(Duration::from_secs(1)));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = (0..3)
            .map(|i| format!("{}=http://127.0.0.1:{}", name(i), ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("base-gateway-{tag}-{}-{nanos}", std::process::id()));
        AgentSetup {
            upstreams,
            ports,
            peers,
            dir,
        }
    }
}

#[test]
fn with_real_agents_the_gateway_never_routes_to_a_killed_writer_after_its_lease() {
    let AgentSetup {
        upstreams,
        ports,
        peers,
        dir,
    } = AgentSetup::new("agents");
    let mut agents: Vec<Option<Agent>> = (0..3)
        .map(|i| {
            let state = dir.join(name(i));
            std::fs::create_dir_all(&state).unwrap();
            Some(Agent::start(
                i,
                &peers,
                ports[i],
                upstreams.cluster.addrs[i],
                &state,
                &[],
            ))
        })
        .collect();
    let gw = Gateway::start(&peers, &["--poll-interval", "200ms", "--ryw-ttl", "2s"]);
    // Redirects are answers here: a 307 from an agent must be seen, not followed.
    let client = Client::no_redirects();
    let agent_logs = |agents: &[Option<Agent>]| {
        agents
            .iter()
            .flatten()
            .map(|a| a.log.lock().unwrap().join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    let mut writer = String::new();
    let start = Instant::now();
    while writer.is_empty() {
        if let Some(w) = client.state(&gw)["writer"].as_str() {
            writer = w.to_owned();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no writer elected; agents:\n{}\ngateway:\n{}",
            agent_logs(&agents),
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dead: usize = writer[2..].parse().expect("b-<i>");
    wait_until("a write goes through the writer's agent", &gw, || {
        let a = client.post(&gw.url("/api/w"), "c", b"{}".to_vec());
        a.status == StatusCode::OK && a.replica.as_deref() == Some(writer.as_str())
    });

    // Crash the writer. Until the gateway lets go of it (its lease passes, or a higher term is
    // seen) writes may still be tried there and fail; from then on, never.
    agents[dead] = None;
    wait_until("the gateway forgets the killed writer", &gw, || {
        client.state(&gw)["writer"] != writer.as_str()
    });
    let start = Instant::now();
    let (mut sent, mut served_by_new_writer) = (0, 0);
    while served_by_new_writer < 10 || sent < 30 {
        assert!(
            start.elapsed() < DEADLINE,
            "no new writer took writes; agents:\n{}\ngateway:\n{}",
            agent_logs(&agents),
            gw.log_text()
        );
        let a = client.post(&gw.url("/api/w"), &format!("c{sent}"), b"{}".to_vec());
        sent += 1;
        match a.status {
            StatusCode::OK => {
                assert_ne!(a.replica.as_deref(), Some(writer.as_str()));
                served_by_new_writer += 1;
            }
            // No writer yet, or an agent fencing a write it may no longer take: both are answers
            // that do not involve the dead writer.
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TEMPORARY_REDIRECT => {}
            other => panic!(
                "after the killed writer's lease, a write got {other}: {a:?}; gateway:\n{}",
                gw.log_text()
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = client.state(&gw)["term"].as_u64().unwrap_or(0);
    assert!(term >= 2, "a new term was elected: {term}");
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM (what `kubectl delete pod` sends), then wait for the process to exit by itself.
fn terminate(agent: &mut Agent) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(Some(_)) = agent.child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The value of one sample line of the Prometheus text (`name{labels} value`), 0 if absent.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The deleted-writer failover through the gateway, on real agents. The writer gets SIGTERM,
/// hands over and exits; the gateway still trusts it (its lease runs on in the gateway's view,
/// and with `--poll-interval 1h` no follower is polled while a writer is known), so the next
/// write finds no process at the writer's port. The gateway loses the writer, re-polls every
/// replica at once, holds the write and sends it to the new writer: the write succeeds (without
/// the re-poll it got `502`, retried at the same dead writer), the re-poll is logged before the
/// new writer is, and the new writer was polled only after the loss. Nothing here depends on
/// how fast the machine is: a round in which the gateway happened to learn of the new writer
/// before the old one exited proves nothing and is run again.
#[test]
fn with_real_agents_a_write_after_the_writer_exits_is_held_and_lands_on_the_new_writer() {
    let AgentSetup {
        upstreams,
        ports,
        peers,
        dir,
    } = AgentSetup::new("handover");
    // A lease of ~2.8 s: the gateway's copy of it outlives the writer's exit by at least half.
    let timing = [
        "--election-timeout-min-ms",
        "3000",
        "--election-timeout-max-ms",
        "3500",
    ];
    let start_agent = |i: usize| {
        let state = dir.join(name(i));
        std::fs::create_dir_all(&state).unwrap();
        Agent::start(
            i,
            &peers,
            ports[i],
            upstreams.cluster.addrs[i],
            &state,
            &timing,
        )
    };
    let mut agents: Vec<Agent> = (0..3).map(start_agent).collect();
    let gw = Gateway::start(&peers, &["--poll-interval", "1h", "--failover-hold", "30s"]);
    let client = Client::new();
    let agent_logs = |agents: &[Agent]| {
        agents
            .iter()
            .map(|a| a.log.lock().unwrap().join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let polls = |state: &serde_json::Value| -> Vec<u64> {
        (0..3)
            .map(|i| state["replicas"][i]["polls"].as_u64().expect("polls"))
            .collect()
    };

    for round in 0..3 {
        let mut writer = String::new();
        wait_until("the gateway knows a writer", &gw, || {
            match client.state(&gw)["writer"].as_str() {
                Some(w) => {
                    writer = w.to_owned();
                    true
                }
                None => false,
            }
        });
        let old: usize = writer[2..].parse().expect("b-<i>");
        // The writer hands over only to a peer it has heard from.
        wait_until("the writer hears from both peers", &gw, || {
            let peers = client.send(
                Method::GET,
                &format!("http://127.0.0.1:{}/_ha/peers", ports[old]),
                &[],
                Vec::new(),
            );
            serde_json::from_str::<serde_json::Value>(&peers.body)
                .ok()
                .and_then(|v| v.as_array().map(|a| a.iter().all(|p| p["up"] == true)))
                .unwrap_or(false)
        });
        let first = client.post(&gw.url("/api/w"), "c", b"{}".to_vec());
        assert_eq!(first.status, StatusCode::OK, "{first:?}");
        assert_eq!(first.replica.as_deref(), Some(writer.as_str()));
        let before = client.state(&gw);
        let term_before = before["term"].as_u64().expect("term");

        assert!(
            terminate(&mut agents[old]),
            "the writer did not exit after SIGTERM; agents:\n{}",
            agent_logs(&agents)
        );
        let stale = client.state(&gw);
        if stale["writer"] != writer.as_str() {
            // The gateway heard of the successor before the exit: nothing to prove this round.
            eprintln!("round {round}: the gateway already moved on ({stale}); again");
            agents[old] = start_agent(old);
            continue;
        }
        let polls_stale = polls(&stale);
        let log_mark = gw.log.lock().unwrap().len();

        let answer = client.post(&gw.url("/api/w"), "c", b"{}".to_vec());
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the first write after the writer exited: {answer:?}; gateway:\n{}\nagents:\n{}",
            gw.log_text(),
            agent_logs(&agents)
        );
        let new = answer.replica.clone().expect("served by a replica");
        assert_ne!(new, writer, "served by the writer that exited");
        let after = client.state(&gw);
        assert_eq!(after["writer"], new.as_str());
        assert!(
            after["term"].as_u64().expect("term") > term_before,
            "{after}"
        );

        // The order of events: the loss and its re-poll, then the new writer.
        let log: Vec<String> = gw.log.lock().unwrap()[log_mark..].to_vec();
        let repoll = log
            .iter()
            .position(|l| l.contains("re-polling every replica"))
            .unwrap_or_else(|| panic!("no re-poll logged:\n{}", log.join("\n")));
        let found = log
            .iter()
            .position(|l| l.contains("writer changed") && l.contains(&new))
            .unwrap_or_else(|| panic!("the new writer was not logged:\n{}", log.join("\n")));
        assert!(
            repoll < found,
            "re-poll after the new writer:\n{}",
            log.join("\n")
        );
        // With a one-hour interval, the new writer is polled again only because of the loss.
        let new_ix: usize = new[2..].parse().expect("b-<i>");
        assert!(
            polls(&after)[new_ix] > polls_stale[new_ix],
            "{stale} -> {after}"
        );
        let metrics = client.metrics(&gw);
        assert_eq!(
            metric(
                &metrics,
                r#"base_gateway_requests_held_total{result="forwarded"}"#
            ),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                r#"base_gateway_writer_lost_total{how="unreachable"}"#
            ),
            1.0,
            "{metrics}"
        );
        drop(agents);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!(
        "in three rounds the gateway always learned of the successor before the writer exited; gateway:\n{}",
        gw.log_text()
    );
}
