//! What both write benchmarks compare against, in the same run.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The durable floor: `clients` threads each inserting rows of `payload` bytes, one transaction
/// per row, into one local SQLite database in `dir` (WAL, `synchronous=FULL`) for `run`.
/// Returns every write's latency and the seconds it took.
pub fn local_sqlite_writes(
    dir: &Path,
    clients: usize,
    run: Duration,
    payload: usize,
) -> (Vec<Duration>, f64) {
    let path = dir.join("bench.db");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE rows (id INTEGER PRIMARY KEY, client INTEGER NOT NULL,
                                seq INTEGER NOT NULL, payload TEXT NOT NULL);",
        )
        .expect("schema");
    }
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (path, lat) = (path.clone(), lat.clone());
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&path).expect("open");
                c.execute_batch("PRAGMA synchronous = FULL")
                    .expect("pragma");
                c.busy_timeout(Duration::from_secs(30)).expect("busy");
                let payload = "x".repeat(payload);
                let mut mine = Vec::new();
                let mut stmt = c
                    .prepare("INSERT INTO rows(client, seq, payload) VALUES (?1, ?2, ?3)")
                    .expect("prepare");
                let mut seq = 0i64;
                while start.elapsed() < run {
                    let t = Instant::now();
                    stmt.execute(rusqlite::params![client as i64, seq, payload])
                        .expect("insert");
                    mine.push(t.elapsed());
                    seq += 1;
                }
                lat.lock().expect("lock").extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("join");
    }
    let secs = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().expect("lock"));
    (lat, secs)
}
