//! Quorum-committed writes against the durable floor and dqlite, in one run on one machine
//! (issue 15 §6): the same one-row INSERT per write, by 1, 8 and 64 concurrent clients.
//!
//! (a) **base (3 replicas)**: three `base-operator store`s, each behind a `base-operator agent`
//!     (peer keys, control ports), and a `base-operator gateway`; each write goes through the
//!     gateway to the writer's agent and is answered once a majority of the stores holds it
//!     durably (`POST /db/execute`, rqlite's API).
//! (b) **sqlite**: one local SQLite, WAL, `synchronous=FULL`, one connection per client thread,
//!     one transaction per write (the durable floor).
//! (c) **dqlite (3 nodes)**: `dqlite-demo` (Debian's `go-dqlite`: `apt-get install -y
//!     go-dqlite`), three nodes on loopback, `PUT /KEY` over HTTP to the first (the leader);
//!     skipped, and said so, when `dqlite-demo` is not installed.
//!
//!     cargo bench -p base-adapter-k8s --bench replication     # BENCH_SECS=5 by default
//!
//! `BENCH_CLIENTS=1,8` measures only those client counts, `BENCH_SYSTEMS=base,dqlite` only those
//! systems; `BENCH_BIN=PATH` runs another `base-operator` binary (an older build, for a before /
//! after comparison in one sitting); `BENCH_LOG=base_hop=trace` is the base processes'
//! `RUST_LOG` and keeps their logs (the directory is printed) for `scripts/hops.py`.
//!
//! Prints one line per (system, clients): writes/s, p50 and p99 latency. A measurement, never a
//! test: the figures go to BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_base-operator").to_string())
}

/// The base processes' `RUST_LOG` (`BENCH_LOG`, else `warn`), and whether to keep their logs.
fn log_filter() -> (String, bool) {
    match std::env::var("BENCH_LOG") {
        Ok(f) if !f.is_empty() => (format!("warn,{f}"), true),
        _ => ("warn".to_string(), false),
    }
}
const PAYLOAD: usize = 100;
const KEY: &str = "replication-bench-peer-key-0123456789abcdef";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("base-repl-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

struct Figures {
    writes: usize,
    failed: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(mut lat: Vec<Duration>, failed: usize, secs: f64) -> Figures {
    lat.sort();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        writes: lat.len(),
        failed,
        secs,
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn print(system: &str, clients: usize, f: &Figures) {
    println!(
        "{system:<30} clients={clients:<3} writes/s={:>8.0} p50_ms={:>7.2} p99_ms={:>8.2} (n={}, failed={})",
        f.writes as f64 / f.secs,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.writes,
        f.failed
    );
}

fn sqlite(clients: usize, run: Duration) -> Figures {
    let dir = temp_dir(&format!("sqlite-{clients}"));
    let (lat, secs) = common::local_sqlite_writes(&dir, clients, run, PAYLOAD);
    let _ = std::fs::remove_dir_all(&dir);
    figures(lat, 0, secs)
}

/// Child processes killed on drop, with the directory they used.
struct Procs {
    children: Vec<Child>,
    dir: PathBuf,
    keep: bool,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.keep {
            println!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn")
}

/// Three stores, three agents and a gateway; returns the processes and the gateway's URL.
async fn base_cluster() -> (Procs, String) {
    let dir = temp_dir("base");
    let hosts: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}")).collect();
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
    let mut children = Vec::new();
    let (rust_log, keep) = log_filter();
    let bin = bin();
    for i in 0..3 {
        let d = dir.join(format!("b-{i}"));
        std::fs::create_dir_all(d.join("keys")).expect("dirs");
        std::fs::write(d.join("keys/current"), KEY).expect("key");
        let store_port = free_port("127.0.0.1");
        children.push(spawn(
            Command::new(&bin)
                .args(["store", "--listen", &format!("127.0.0.1:{store_port}")])
                .arg("--data-dir")
                .arg(d.join("store"))
                .env("RUST_LOG", &rust_log),
            &d.join("store.log"),
        ));
        children.push(spawn(
            Command::new(&bin)
                .args(["agent", "--node-id", &format!("b-{i}"), "--peers", &peers])
                .args(["--listen", &format!("{}:{}", hosts[i], agent_ports[i])])
                .args(["--peer-port", &peer_port.to_string()])
                .args(["--upstream", &format!("http://127.0.0.1:{store_port}")])
                .arg("--state-dir")
                .arg(d.join("quasar"))
                .arg("--peer-key-dir")
                .arg(d.join("keys"))
                .env("RUST_LOG", &rust_log),
            &d.join("agent.log"),
        ));
    }
    let gw_port = free_port("127.0.0.1");
    children.push(spawn(
        Command::new(&bin)
            .args(["gateway", "--listen", &format!("127.0.0.1:{gw_port}")])
            .args(["--replicas", &peers, "--poll-interval", "200ms"])
            .env("RUST_LOG", &rust_log),
        &dir.join("gateway.log"),
    ));
    let procs = Procs {
        children,
        dir,
        keep,
    };
    let base = format!("http://127.0.0.1:{gw_port}");
    let http = reqwest::Client::new();
    let up = Instant::now();
    loop {
        let r = http
            .post(format!("{base}/db/execute"))
            .body(r#"["CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL)"]"#)
            .send()
            .await;
        if let Ok(r) = r
            && r.status().is_success()
        {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the cluster did not take a write; logs in {}",
            procs.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (procs, base)
}

/// `clients` tasks writing through `write` for `run`; a failed write is counted, not timed.
async fn drive<F, Fut>(clients: usize, run: Duration, write: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let write = write.clone();
            tokio::spawn(async move {
                let (mut mine, mut failed) = (Vec::new(), 0);
                let mut seq = 0u64;
                while start.elapsed() < run {
                    let t = Instant::now();
                    if write(client, seq).await {
                        mine.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                    seq += 1;
                }
                (mine, failed)
            })
        })
        .collect();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.expect("task");
        lat.extend(l);
        failed += f;
    }
    figures(lat, failed, start.elapsed().as_secs_f64())
}

async fn base_writes(base: &str, clients: usize, run: Duration) -> Figures {
    let http = reqwest::Client::new();
    let url = format!("{base}/db/execute");
    drive(clients, run, move |client, seq| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let payload = "x".repeat(PAYLOAD);
            let body = format!(
                r#"[["INSERT INTO rows(client, seq, payload) VALUES (?, ?, ?)", {client}, {seq}, "{payload}"]]"#
            );
            match http.post(&url).body(body).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Three `dqlite-demo` nodes; `None` when it is not installed.
async fn dqlite_cluster() -> Option<(Procs, String)> {
    let found = Command::new("dqlite-demo")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return None;
    }
    let dir = temp_dir("dqlite");
    let mut children = Vec::new();
    let db: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port("127.0.0.1")))
        .collect();
    let api: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port("127.0.0.1")))
        .collect();
    for i in 0..3 {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).expect("dir");
        let mut cmd = Command::new("dqlite-demo");
        cmd.args(["-a", &api[i], "-d", &db[i]]).arg("-D").arg(&d);
        if i > 0 {
            cmd.args(["-j", &db[0]]);
        }
        children.push(spawn(&mut cmd, &dir.join(format!("n{i}.log"))));
        // Each node joins once the first is up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let procs = Procs {
        children,
        dir,
        keep: false,
    };
    let base = format!("http://{}", api[0]);
    let http = reqwest::Client::new();
    let up = Instant::now();
    loop {
        if let Ok(r) = http.put(format!("{base}/warmup")).body("x").send().await
            && r.status().is_success()
        {
            break;
        }
        if up.elapsed() > Duration::from_secs(60) {
            println!(
                "dqlite-demo did not answer; logs in {}",
                procs.dir.display()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the other two join as voters before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Some((procs, base))
}

async fn dqlite_writes(base: &str, clients: usize, run: Duration) -> Figures {
    let http = reqwest::Client::new();
    let base = base.to_string();
    drive(clients, run, move |client, seq| {
        let (http, url) = (http.clone(), format!("{base}/k-{clients}-{client}-{seq}"));
        async move {
            match http.put(&url).body("x".repeat(PAYLOAD)).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
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
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64]);
    let systems = std::env::var("BENCH_SYSTEMS").unwrap_or_else(|_| "base,sqlite,dqlite".into());
    let wanted = |s: &str| systems.split(',').any(|w| w.trim() == s);
    rt.block_on(async {
        if wanted("base") {
            let (procs, base) = base_cluster().await;
            for &c in &clients {
                print(
                    "base 3 replicas (gateway)",
                    c,
                    &base_writes(&base, c, run).await,
                );
            }
            drop(procs);
        }
        if wanted("sqlite") {
            for &c in &clients {
                print("sqlite WAL synchronous=FULL", c, &sqlite(c, run));
            }
        }
        if !wanted("dqlite") {
            return;
        }
        match dqlite_cluster().await {
            Some((procs, base)) => {
                for &c in &clients {
                    print(
                        "dqlite-demo 3 nodes",
                        c,
                        &dqlite_writes(&base, c, run).await,
                    );
                }
                drop(procs);
            }
            None => println!("dqlite-demo not installed (apt-get install -y go-dqlite): skipped"),
        }
    });
}
