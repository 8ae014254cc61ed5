//! Local write throughput of the reference store against plain SQLite, in one run on one machine:
//! the same one-row INSERT per write, durable before it is answered, by 1, 8 and 64 concurrent
//! clients. (a) `base-operator store` (a real process; HTTP on loopback, rqlite's
//! `/db/execute`, group commit); (b) SQLite with WAL and `synchronous=FULL`, one connection per
//! client thread, one transaction per write (the durable floor without group commit).
//!
//!     cargo bench -p base-adapter-k8s --bench store            # BENCH_SECS=5 by default
//!
//! Prints one line per (system, clients): writes/s, p50 and p99 latency. A measurement, never a
//! test: the figures go to BENCHMARKS.md.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const PAYLOAD: usize = 100;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("base-store-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

struct Figures {
    writes: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut lat: Vec<Duration>, secs: f64) -> Figures {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Figures {
        writes: lat.len(),
        secs,
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn print(system: &str, clients: usize, f: &Figures) {
    println!(
        "{system:<28} clients={clients:<3} writes/s={:>8.0} p50_ms={:>7.2} p99_ms={:>7.2} (n={})",
        f.writes as f64 / f.secs,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.writes
    );
}

fn sqlite(clients: usize, run: Duration) -> Figures {
    let dir = temp_dir(&format!("sqlite-{clients}"));
    let (lat, secs) = common::local_sqlite_writes(&dir, clients, run, PAYLOAD);
    let _ = std::fs::remove_dir_all(&dir);
    figures(lat, secs)
}

struct StoreProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn store(clients: usize, run: Duration) -> Figures {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = temp_dir(&format!("store-{clients}"));
    let child = Command::new(BIN)
        .args(["store", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the store");
    let _proc = StoreProcess { child, dir };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let up = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "store did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let role = http
        .put(format!("{base}/_replica/role"))
        .body(r#"{"role":"writer","term":1}"#)
        .send()
        .await
        .expect("role");
    assert!(role.status().is_success());
    let schema = http
        .post(format!("{base}/db/execute"))
        .header("x-base-term", "1")
        .body(
            r#"["CREATE TABLE rows (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL)"]"#,
        )
        .send()
        .await
        .expect("schema");
    assert!(schema.status().is_success());
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, url) = (http.clone(), format!("{base}/db/execute"));
            tokio::spawn(async move {
                let payload = "x".repeat(PAYLOAD);
                let mut mine = Vec::new();
                let mut seq = 0u64;
                while start.elapsed() < run {
                    let body = format!(
                        r#"[["INSERT INTO rows(client, seq, payload) VALUES (?, ?, ?)", {client}, {seq}, "{payload}"]]"#
                    );
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .header("x-base-term", "1")
                        .body(body)
                        .send()
                        .await
                        .expect("write");
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await;
                    mine.push(t.elapsed());
                    seq += 1;
                }
                mine
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    figures(lat, start.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for clients in [1, 8, 64] {
        let f = rt.block_on(store(clients, run));
        print("base-operator store (HTTP)", clients, &f);
        let f = sqlite(clients, run);
        print("sqlite WAL synchronous=FULL", clients, &f);
    }
}
