//! Real `base-operator store` processes on loopback, driven over HTTP the way the agent drives
//! them (docs/replica-contract.md): rqlite's data API, term fencing, durability across SIGKILL,
//! and log shipping between two or three stores — entries applied on replicas only up to
//! commit, a deposed writer's suffix undone and truncated, a snapshot for a replica behind the
//! log start.
//!
//! Everything is polled with generous deadlines; nothing asserts on a fixed sleep.

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "base-store-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Store {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    http: Client,
}

impl Store {
    async fn start(extra: &[&str]) -> Store {
        let mut s = Store {
            port: free_port(),
            dir: temp_dir(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: Client::new(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new(BIN)
            .arg("store")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the store");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "the store did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn state(&self) -> Value {
        self.http
            .get(self.url("/_replica/state"))
            .send()
            .await
            .expect("state")
            .json()
            .await
            .expect("state json")
    }

    async fn role(&self, role: &str, term: u64, commit: u64) -> Response {
        self.http
            .put(self.url("/_replica/role"))
            .json(&json!({"role": role, "term": term, "writer_id": "w", "writer_url": "http://writer", "commit": commit}))
            .send()
            .await
            .expect("role")
    }

    async fn execute_raw(&self, term: Option<u64>, query: &str, body: String) -> Response {
        let mut req = self
            .http
            .post(self.url(&format!("/db/execute{query}")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = term {
            req = req.header("x-base-term", t);
        }
        req.send().await.expect("execute")
    }

    /// Executes as the writer of `term`; returns the results and the entry's index.
    async fn execute(&self, term: u64, query: &str, stmts: Value) -> (Vec<Value>, u64) {
        let r = self.execute_raw(Some(term), query, stmts.to_string()).await;
        assert_eq!(r.status(), StatusCode::OK, "execute {stmts}");
        let index = r.headers()["x-base-log-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body: Value = r.json().await.unwrap();
        (body["results"].as_array().unwrap().clone(), index)
    }

    async fn query(&self, sql: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/db/query?q={}", encode(sql))))
            .send()
            .await
            .expect("query");
        assert_eq!(r.status(), StatusCode::OK, "query {sql}");
        let body: Value = r.json().await.unwrap();
        body["results"][0].clone()
    }

    async fn values(&self, sql: &str) -> Vec<Value> {
        let r = self.query(sql).await;
        assert!(r.get("error").is_none(), "{sql}: {r}");
        r["values"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// What the replica's agent does: fetch from the writer after where the replica's machine says
/// (first: its last entry), hand the shipment to the replica's store with the writer's headers,
/// install a snapshot when told to. Returns the replica's state once an empty shipment changed
/// nothing.
async fn ship(writer: &Store, replica: &Store) -> Value {
    let http = &writer.http;
    let st = replica.state().await;
    let (mut after_index, mut after_term) = (u(&st["last_index"]), u(&st["last_term"]));
    for _ in 0..20 {
        let r = http
            .get(writer.url(&format!(
                "/_replica/log?after_index={after_index}&after_term={after_term}&max_bytes=512"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "log");
        let mut append = http.post(replica.url("/_replica/append"));
        for h in [
            "x-base-term",
            "x-base-prev-index",
            "x-base-prev-term",
            "x-base-log-start-index",
            "x-base-log-start-term",
            "x-base-commit",
        ] {
            append = append.header(h, r.headers()[h].clone());
        }
        let frames = r.bytes().await.unwrap();
        let empty = frames.is_empty();
        let a = append.body(frames).send().await.unwrap();
        let status = a.status();
        let answer: Value = a.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "append: {answer}");
        let next = &answer["next"];
        if let Some(p) = next.get("pull_after") {
            let (i, t) = (u(&p["index"]), u(&p["term"]));
            if empty && (i, t) == (after_index, after_term) {
                return answer["state"].clone();
            }
            (after_index, after_term) = (i, t);
            continue;
        }
        assert!(next.get("fetch_snapshot").is_some(), "{answer}");
        let snap = http
            .get(writer.url("/_replica/snapshot"))
            .send()
            .await
            .unwrap();
        assert_eq!(snap.status(), StatusCode::OK);
        let index = snap.headers()["x-base-snapshot-index"].clone();
        let term = snap.headers()["x-base-snapshot-term"].clone();
        let file = snap.bytes().await.unwrap();
        let writer_term = writer.state().await["term"].clone();
        let put = http
            .put(replica.url("/_replica/snapshot"))
            .header("x-base-term", u(&writer_term))
            .header("x-base-snapshot-index", index)
            .header("x-base-snapshot-term", term)
            .body(file)
            .send()
            .await
            .unwrap();
        let status = put.status();
        let st: Value = put.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "install: {st}");
        (after_index, after_term) = (u(&st["last_index"]), u(&st["last_term"]));
    }
    panic!("shipping did not converge");
}

/// rqlite's data API: statements as strings or `[sql, params…]` (positional and named), results
/// with `last_insert_id`/`rows_affected`, queries with `columns`/`types`/`values`, `timings`;
/// `transaction` is all or nothing; a bad statement gets its own error and changes nothing;
/// malformed JSON and an oversized body are refused whole. Fails if any of these shapes or
/// refusals changes.
#[tokio::test]
async fn the_rqlite_data_api() {
    let s = Store::start(&["--max-body-bytes", "2048"]).await;
    assert_eq!(s.role("writer", 1, 0).await.status(), StatusCode::OK);
    let (r, _) = s
        .execute(
            1,
            "",
            json!(["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)"]),
        )
        .await;
    assert!(r[0].get("error").is_none(), "{r:?}");
    let (r, index) = s
        .execute(
            1,
            "?timings",
            json!([
                ["INSERT INTO foo(name, score) VALUES(?, ?)", "fiona", 1.5],
                ["INSERT INTO foo(name, score, data) VALUES(:name, :score, x'0102')", {"name": "sinead", "score": 2}],
                "INSERT INTO nosuch VALUES (1)",
                "INSERT INTO foo(id, name) VALUES (1, 'duplicate')",
            ]),
        )
        .await;
    assert_eq!(r[0]["last_insert_id"], 1);
    assert_eq!(r[0]["rows_affected"], 1);
    assert!(r[0]["time"].is_f64());
    assert_eq!(r[1]["last_insert_id"], 2);
    assert!(
        r[2]["error"].as_str().unwrap().contains("no such table"),
        "{}",
        r[2]
    );
    assert!(
        r[3]["error"].as_str().unwrap().contains("UNIQUE"),
        "{}",
        r[3]
    );
    assert_eq!(index, 3, "no-op, DDL, this request");

    let q = s
        .query("SELECT id, name, score, data FROM foo ORDER BY id")
        .await;
    assert_eq!(q["columns"], json!(["id", "name", "score", "data"]));
    assert_eq!(q["types"], json!(["integer", "text", "real", "blob"]));
    assert_eq!(
        q["values"],
        json!([[1, "fiona", 1.5, null], [2, "sinead", 2.0, "AQI="]])
    );
    // POST /db/query, several statements, parameters.
    let r: Value = s
        .http
        .post(s.url("/db/query?timings"))
        .json(&json!([
            ["SELECT name FROM foo WHERE id = ?", 2],
            "SELECT count(*) AS n FROM foo"
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"][0]["values"], json!([["sinead"]]));
    assert_eq!(r["results"][1]["values"], json!([[2]]));
    assert!(r["time"].is_f64());
    // A write through /db/query is refused.
    let q = s.query("DELETE FROM foo").await;
    assert!(q["error"].as_str().unwrap().contains("read-only"), "{q}");

    // All or nothing.
    let (r, _) = s
        .execute(
            1,
            "?transaction",
            json!([
                "INSERT INTO foo(name) VALUES ('t1')",
                "INSERT INTO foo(id) VALUES (1)"
            ]),
        )
        .await;
    assert!(r[1]["error"].is_string(), "{r:?}");
    assert_eq!(s.values("SELECT count(*) FROM foo").await, vec![json!([2])]);

    // Refused whole, nothing runs.
    let before = s.state().await["last_index"].clone();
    let r = s
        .execute_raw(
            Some(1),
            "",
            r#"["INSERT INTO foo(name) VALUES ('x')""#.into(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("not JSON"), "{e}");
    let big = json!([["INSERT INTO foo(name) VALUES (?)", "y".repeat(4096)]]).to_string();
    let r = s.execute_raw(Some(1), "", big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = s
        .execute_raw(
            Some(1),
            "",
            r#"[["INSERT INTO foo(name) VALUES (?)", [1, 2]]]"#.into(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.values("SELECT count(*) FROM foo").await, vec![json!([2])]);
    assert_eq!(s.state().await["last_index"], before);

    // A table the session cannot track is refused with the rule.
    let (r, _) = s
        .execute(1, "", json!(["CREATE TABLE bare (v TEXT)"]))
        .await;
    assert!(
        r[0]["error"].as_str().unwrap().contains("PRIMARY KEY"),
        "{r:?}"
    );
}

/// Writes need the writer's exact term; a lower term is refused by the role push (409) and by
/// writes; a replica refuses writes; the role push is idempotent and the term survives restart.
/// Fails if a write of a wrong term is accepted or a term goes down.
#[tokio::test]
async fn writes_are_fenced_by_term() {
    let mut s = Store::start(&[]).await;
    let create = json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]).to_string();
    // No role yet: a replica in term 0.
    let r = s.execute_raw(Some(0), "", create.clone()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(s.role("writer", 3, 0).await.status(), StatusCode::OK);
    let once = s.state().await;
    assert_eq!(s.role("writer", 3, 0).await.status(), StatusCode::OK);
    assert_eq!(s.state().await, once, "the same push changes nothing");
    assert_eq!(once["term_start"], once["last_index"], "the writer's no-op");

    let r = s.execute_raw(None, "", create.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "term_required");
    for wrong in [2, 4] {
        let r = s.execute_raw(Some(wrong), "", create.clone()).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "term {wrong}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_writer");
    }
    let (_, index) = s
        .execute(3, "", json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"]))
        .await;
    assert_eq!(index, u(&once["last_index"]) + 1);

    let r = s.role("writer", 2, 0).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "stale_term");
    assert_eq!(s.role("replica", 5, 0).await.status(), StatusCode::OK);
    let r = s.execute_raw(Some(5), "", create.clone()).await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a replica takes no writes"
    );

    s.kill();
    s.spawn().await;
    let st = s.state().await;
    assert_eq!(
        (st["term"].clone(), st["role"].clone()),
        (json!(5), json!("replica"))
    );
    let r = s.role("writer", 4, 0).await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "the term survived the restart"
    );
}

/// Clients insert unique rows concurrently; the store is SIGKILLed mid-load and restarted on its
/// directory: every acknowledged row is there exactly once, and the position, term and role are
/// what they were (the log holds every acknowledged index). Fails if an acknowledged write is
/// lost or doubled, or the state is not recovered from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let mut s = Store::start(&[]).await;
    assert_eq!(s.role("writer", 7, 0).await.status(), StatusCode::OK);
    s.execute(
        7,
        "",
        json!(["CREATE TABLE rows (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, seq INTEGER NOT NULL)"]),
    )
    .await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64, u64)>::new()));
    let url = s.url("/db/execute");
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let (acked, url) = (acked.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let http = Client::new();
            for seq in 0.. {
                let body = json!([["INSERT INTO rows(client, seq) VALUES (?, ?)", client, seq]]);
                let sent = http
                    .post(&url)
                    .header("x-base-term", 7)
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = sent else { return };
                if r.status() != StatusCode::OK {
                    return;
                }
                let index = r.headers()["x-base-log-index"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let Ok(b) = r.json::<Value>().await else {
                    return;
                };
                assert!(b["results"][0].get("error").is_none(), "{b}");
                acked.lock().unwrap().push((client, seq, index));
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 300 {
        assert!(start.elapsed() < DEADLINE, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    s.spawn().await;
    let st = s.state().await;
    assert_eq!(
        (st["term"].clone(), st["role"].clone()),
        (json!(7), json!("writer"))
    );
    let max_acked = acked.iter().map(|a| a.2).max().unwrap();
    assert!(
        u(&st["last_index"]) >= max_acked,
        "{st} vs index {max_acked}"
    );
    assert_eq!(u(&st["applied"]), u(&st["last_index"]));
    let mut counts: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for row in s
        .values("SELECT client, seq, count(*) FROM rows GROUP BY client, seq")
        .await
    {
        counts.insert((u(&row[0]), u(&row[1])), u(&row[2]));
    }
    for (client, seq, _) in &acked {
        assert_eq!(counts.get(&(*client, *seq)), Some(&1), "row {client}/{seq}");
    }
    assert!(counts.values().all(|&n| n == 1), "a row was doubled");
    // The log and the data agree: one entry per row written (after the no-op and the DDL).
    let rows = counts.len() as u64;
    assert_eq!(u(&st["last_index"]), 2 + rows, "{st}");
}

/// Three stores driven as their agents would drive them. Replicas hold shipped entries but show
/// them only once commit covers them; a writer deposed with an uncommitted suffix undoes it, and
/// the new writer's log truncates it; a replica behind the log start gets a snapshot; at the end
/// all three hold the same rows. Fails if a replica applies past commit, if the deposed suffix
/// survives anywhere, or if the snapshot path loses or doubles rows.
#[tokio::test]
async fn log_shipping_between_three_stores() {
    let keep = ["--log-keep", "4"];
    let (a, b, c) = tokio::join!(
        Store::start(&keep),
        Store::start(&keep),
        Store::start(&keep)
    );
    assert_eq!(a.role("writer", 1, 0).await.status(), StatusCode::OK);
    for s in [&b, &c] {
        assert_eq!(s.role("replica", 1, 0).await.status(), StatusCode::OK);
    }
    a.execute(
        1,
        "",
        json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, at TEXT NOT NULL)"]),
    )
    .await;
    let (_, i1) = a
        .execute(
            1,
            "",
            json!(["INSERT INTO t VALUES (1, hex(randomblob(4)), datetime('now'))"]),
        )
        .await;
    let st = ship(&a, &b).await;
    assert_eq!(u(&st["last_index"]), i1);
    assert_eq!(u(&st["applied"]), 0, "nothing is committed yet");
    assert!(
        b.values("SELECT * FROM sqlite_schema WHERE name = 't'")
            .await
            .is_empty()
    );
    // a and b hold 1..=i1: a majority. The writer's agent tells a; b learns it on the next poll.
    assert_eq!(a.role("writer", 1, i1).await.status(), StatusCode::OK);
    let st = ship(&a, &b).await;
    assert_eq!((u(&st["commit"]), u(&st["applied"])), (i1, i1));
    let all = "SELECT id, v, at FROM t ORDER BY id";
    assert_eq!(
        b.values(all).await,
        a.values(all).await,
        "row images, not statements"
    );

    // a writes two more entries that reach no one, then loses its term.
    a.execute(1, "", json!(["INSERT INTO t VALUES (2, 'lost', 'x')"]))
        .await;
    a.execute(1, "", json!(["UPDATE t SET v = 'lost too' WHERE id = 1"]))
        .await;
    assert_eq!(b.role("writer", 2, 0).await.status(), StatusCode::OK);
    let (_, i2) = b
        .execute(2, "", json!(["INSERT INTO t VALUES (3, 'b', 'y')"]))
        .await;
    assert_eq!(a.role("replica", 2, 0).await.status(), StatusCode::OK);
    assert_eq!(
        a.values(all).await,
        b.values(&format!("{all} LIMIT 1")).await,
        "undone"
    );
    // b commits its term (b and a will hold it) and a converges by truncation.
    assert_eq!(b.role("writer", 2, i2).await.status(), StatusCode::OK);
    let epoch = u(&a.state().await["epoch"]);
    let st = ship(&b, &a).await;
    assert_eq!((u(&st["last_index"]), u(&st["last_term"])), (i2, 2));
    assert_eq!(
        u(&st["epoch"]),
        epoch + 1,
        "the cut is news to the election: {st}"
    );
    assert_eq!(u(&st["applied"]), i2);
    assert_eq!(a.values(all).await, b.values(all).await);
    assert!(
        a.values("SELECT id FROM t WHERE v LIKE 'lost%'")
            .await
            .is_empty()
    );

    // Enough writes for b to compact past where c stopped: c needs a snapshot.
    for k in 10..30 {
        b.execute(
            2,
            "",
            json!([format!("INSERT INTO t VALUES ({k}, 'v{k}', 'z')")]),
        )
        .await;
    }
    let st = ship(&b, &a).await;
    assert_eq!(
        b.role("writer", 2, u(&st["last_index"])).await.status(),
        StatusCode::OK
    );
    let b_state = b.state().await;
    assert!(u(&b_state["log_start"]) > 2, "compacted: {b_state}");
    let st = ship(&b, &c).await;
    assert_eq!(u(&st["last_index"]), u(&b_state["last_index"]));
    assert_eq!(u(&st["commit"]), u(&b_state["commit"]));
    assert_eq!(c.values(all).await, b.values(all).await);
    assert_eq!(c.values("SELECT count(*) FROM t").await, vec![json!([22])]);
}
