//! The store's HTTP surface and the thread that owns the write connection.

// Helpers return the finished error response as their `Err`: built once, at most, per request.
#![allow(clippy::result_large_err)]

use super::StoreArgs;
use super::db::{ExecAnswer, ExecRequest, Next, Refusal, ShipmentHeaders, State, Store, pos};
use super::log::Role;
use super::read::Reads;
use super::sql;
use super::tail::Tail;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base_core::replication::{LogPosition, ReplicaError};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

pub const HEADER_CONTRACT: &str = "x-base-replica-contract";
pub const HEADER_TERM: &str = "x-base-term";
pub const HEADER_LOG_INDEX: &str = "x-base-log-index";
pub const HEADER_LOG_TERM: &str = "x-base-log-term";
pub const HEADER_COMMIT: &str = "x-base-commit";
pub const HEADER_PREV_INDEX: &str = "x-base-prev-index";
pub const HEADER_PREV_TERM: &str = "x-base-prev-term";
pub const HEADER_LOG_START_INDEX: &str = "x-base-log-start-index";
pub const HEADER_LOG_START_TERM: &str = "x-base-log-start-term";
pub const HEADER_SNAPSHOT_INDEX: &str = "x-base-snapshot-index";
pub const HEADER_SNAPSHOT_TERM: &str = "x-base-snapshot-term";
/// Long polls wait at most this long.
pub const MAX_WAIT_MS: u64 = 30_000;
/// The most write requests one transaction takes.
const MAX_BATCH: usize = 256;
/// The largest shipment `POST /_replica/append` takes (entries are whole write requests).
const MAX_APPEND_BYTES: usize = 256 << 20;
const DEFAULT_SHIP_BYTES: usize = 4 << 20;

/// A job for the writer thread; it publishes the state it leaves before it answers.
type Work = Box<dyn FnOnce(&mut Store, &watch::Sender<State>) + Send>;

enum Job {
    Execute(ExecRequest, oneshot::Sender<Result<ExecAnswer, Refusal>>),
    Other(Work),
}

pub struct App {
    jobs: mpsc::Sender<Job>,
    state: watch::Receiver<State>,
    /// The newest entries, for pulls answered without the writer thread, and a counter bumped
    /// when a batch's entries can be shipped (before its fsync).
    tail: Arc<Mutex<Tail>>,
    shippable: watch::Receiver<u64>,
    reads: Arc<Reads>,
    max_body: usize,
    max_snapshot: u64,
    incoming: PathBuf,
    installing: tokio::sync::Mutex<()>,
}

impl App {
    /// Starts the thread that owns `store`.
    pub fn start(store: Store, args: &StoreArgs) -> App {
        let (tx, rx) = mpsc::channel::<Job>();
        let (state_tx, state_rx) = watch::channel(store.state());
        let (ship_tx, ship_rx) = watch::channel(0);
        let incoming = store.incoming_path();
        let tail = store.tail();
        let reads = Arc::new(Reads::new(&args.data_dir));
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(store, rx, state_tx, ship_tx))
            .expect("spawning the store's writer thread");
        App {
            jobs: tx,
            state: state_rx,
            tail,
            shippable: ship_rx,
            reads,
            max_body: args.max_body_bytes,
            max_snapshot: args.max_snapshot_bytes,
            incoming,
            installing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T, Response> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |s, state| {
            let out = f(s);
            // A caller that reads /_replica/state after the answer must see this job's effect.
            publish(s, state);
            let _ = tx.send(out);
        });
        if self.jobs.send(Job::Other(work)).is_err() {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_stopped",
                "the writer thread stopped",
            ));
        }
        rx.await.map_err(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the job was dropped",
            )
        })
    }
}

fn writer_loop(
    mut store: Store,
    rx: mpsc::Receiver<Job>,
    state: watch::Sender<State>,
    shippable: watch::Sender<u64>,
) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Other(f) => f(&mut store, &state),
            Job::Execute(first, reply) => {
                // Everything queued meanwhile commits with it.
                let mut reqs = vec![first];
                let mut replies = vec![reply];
                while reqs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Job::Execute(r, t)) => {
                            reqs.push(r);
                            replies.push(t);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                crate::hop!("store.batch_start", reqs.len() as u64);
                let answers = store.execute(reqs, || {
                    shippable.send_modify(|n| *n = n.wrapping_add(1));
                });
                crate::hop!("store.batch_committed", store.last_index);
                // Publish the new position before anyone hears of the write.
                publish(&store, &state);
                for (a, t) in answers.into_iter().zip(replies) {
                    let _ = t.send(a);
                }
            }
        }
        publish(&store, &state);
    }
}

fn publish(store: &Store, state: &watch::Sender<State>) {
    // Before the state: a pull woken by it finds the tail in line with it.
    if let Err(e) = store.sync_tail() {
        tracing::warn!(error = %e, "the log's tail could not be brought in line");
    }
    let now = store.state();
    state.send_if_modified(|s| {
        if *s == now {
            false
        } else {
            *s = now;
            true
        }
    });
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/_replica/state", get(replica_state))
        .route("/_replica/role", put(replica_role))
        .route("/_replica/log", get(replica_log))
        .route("/_replica/append", post(replica_append))
        .route("/_replica/snapshot", get(snapshot_get).put(snapshot_put))
        .route("/db/execute", post(db_execute))
        .route("/db/query", get(db_query_get).post(db_query_post))
        .layer(middleware::from_fn(guard))
        .with_state(app)
}

/// Only loopback peers (the agent) get anything but `/healthz`; every answer names the contract.
async fn guard(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let mut resp = if req.uri().path() == "/healthz" || peer.ip().is_loopback() {
        next.run(req).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the store answers only its pod's agent (loopback)",
        )
    };
    resp.headers_mut().insert(
        HeaderName::from_static(HEADER_CONTRACT),
        HeaderValue::from_static("1"),
    );
    resp
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.to_string()})),
    )
        .into_response()
}

fn refusal(r: Refusal) -> Response {
    let msg = r.to_string();
    let (status, body) = match &r {
        Refusal::NotWriter { term, role } => (
            StatusCode::CONFLICT,
            json!({"error": "not_writer", "term": term, "role": role.as_str()}),
        ),
        Refusal::StaleTerm { term, .. } => (
            StatusCode::CONFLICT,
            json!({"error": "stale_term", "term": term}),
        ),
        Refusal::Shipment(e) => {
            let code = match e {
                ReplicaError::StaleWriter { .. } => "stale_term",
                ReplicaError::CommittedConflict { .. } => "committed_conflict",
                _ => "bad_shipment",
            };
            (StatusCode::CONFLICT, json!({"error": code}))
        }
        Refusal::NeedsSnapshot => (StatusCode::CONFLICT, json!({"error": "needs_snapshot"})),
        Refusal::SnapshotBehind { commit, .. } => (
            StatusCode::CONFLICT,
            json!({"error": "snapshot_behind", "commit": commit}),
        ),
        Refusal::BadSnapshot(_) => (StatusCode::BAD_REQUEST, json!({"error": "bad_snapshot"})),
        Refusal::BadFrames(_) => (StatusCode::BAD_REQUEST, json!({"error": "bad_frames"})),
        Refusal::SnapshotUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "snapshot_unavailable"}),
        ),
        Refusal::Internal(e) => {
            tracing::error!(error = %e, "internal error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal"}),
            )
        }
    };
    let mut body = body;
    body["message"] = json!(msg);
    (status, axum::Json(body)).into_response()
}

fn header_u64(h: &HeaderMap, name: &str) -> Result<Option<u64>, Response> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_header",
                    format!("{name} must be a non-negative integer"),
                )
            }),
    }
}

fn required(h: &HeaderMap, name: &str) -> Result<u64, Response> {
    header_u64(h, name)?.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            if name == HEADER_TERM {
                "term_required"
            } else {
                "bad_header"
            },
            format!("{name} is required"),
        )
    })
}

async fn body_bytes(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes (or was cut off)"),
        )
    })
}

/// The JSON array of statements of `POST /db/execute` and `POST /db/query`, or the error answer.
async fn statements(body: Body, limit: usize) -> Result<Vec<sql::Statement>, Response> {
    let bytes = body_bytes(body, limit).await?;
    sql::parse_statements(&bytes).map_err(|msg| error(StatusCode::BAD_REQUEST, "bad_request", msg))
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v != "false" && v != "0")
}

fn state_response(s: &State) -> Response {
    axum::Json(s).into_response()
}

async fn replica_state(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut rx = app.state.clone();
    let now = rx.borrow().clone();
    if let Some(after) = q.get("after") {
        let Ok(after) = after.parse::<u64>() else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "after must be a position",
            );
        };
        let wait = q
            .get("wait_ms")
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_WAIT_MS);
        let commit = now.commit;
        if wait > 0 {
            let _ = tokio::time::timeout(
                Duration::from_millis(wait),
                rx.wait_for(|s| s.position != after || s.commit != commit),
            )
            .await;
        }
        let s = rx.borrow().clone();
        return state_response(&s);
    }
    state_response(&now)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
    term: u64,
    #[serde(default)]
    writer_id: String,
    #[serde(default)]
    writer_url: String,
    #[serde(default)]
    commit: u64,
}

async fn replica_role(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let with_shape = flag(&q, "shape");
    let bytes = match body_bytes(body, 64 << 10).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: RoleBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_role", e),
    };
    let role = match b.role.as_str() {
        "writer" => Role::Writer,
        "replica" => Role::Replica,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_role",
                format!("role {other:?} is neither writer nor replica"),
            );
        }
    };
    crate::hop!("store.role_in", b.commit);
    match app
        .call(move |s| {
            let state = s.set_role(role, b.term, b.writer_id, b.writer_url, b.commit)?;
            let shape = match with_shape {
                true => Some(s.shape_json().map_err(Refusal::from)?),
                false => None,
            };
            Ok((state, shape))
        })
        .await
    {
        Ok(Ok((state, None))) => state_response(&state),
        Ok(Ok((state, Some(shape)))) => {
            let mut body = serde_json::to_value(&state).unwrap_or_default();
            body["log_shape"] = shape;
            axum::Json(body).into_response()
        }
        Ok(Err(r)) => refusal(r),
        Err(resp) => resp,
    }
}

async fn replica_log(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let num = |k: &str| q.get(k).map(|v| v.parse::<u64>());
    let (Some(Ok(after_index)), Some(Ok(after_term))) = (num("after_index"), num("after_term"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "after_index and after_term are required integers",
        );
    };
    let known_commit = match num("commit") {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad_query", "commit"),
    };
    let wait = match num("wait_ms") {
        None => 0,
        Some(Ok(w)) => w.min(MAX_WAIT_MS),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad_query", "wait_ms"),
    };
    let max_bytes = match num("max_bytes") {
        None => DEFAULT_SHIP_BYTES,
        Some(Ok(b)) => usize::try_from(b).unwrap_or(usize::MAX).max(1),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad_query", "max_bytes"),
    };
    if wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
        let (mut state, mut shippable) = (app.state.clone(), app.shippable.clone());
        loop {
            // Marked seen before the check: a change after it wakes the select below.
            state.mark_unchanged();
            shippable.mark_unchanged();
            // The log has grown once a batch is shippable, before it is durable (`super::tail`).
            let shipped_to = app.lock_tail().last().index;
            let s = state.borrow().clone();
            let role = if s.role == Role::Writer.as_str() {
                Role::Writer
            } else {
                Role::Replica
            };
            if base_core::replication::pull_ready(
                role,
                s.last_index.max(shipped_to),
                s.commit,
                after_index,
                known_commit,
            ) {
                break;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { break },
                changed = shippable.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    crate::hop!("store.pull_woke", after_index);
    let after = pos(after_term, after_index);
    // From memory if the tail holds `after`; else by the writer thread, from the log.
    let fast = app.lock_tail().serve(after, max_bytes);
    let served = match fast {
        Some(served) => served,
        None => {
            let served = app
                .call(move |s| {
                    if s.meta.role != Role::Writer {
                        return Err(Refusal::NotWriter {
                            term: s.meta.term,
                            role: s.meta.role,
                        });
                    }
                    s.serve_log(after, max_bytes)
                })
                .await;
            match served {
                Ok(Ok(x)) => x,
                Ok(Err(r)) => return refusal(r),
                Err(resp) => return resp,
            }
        }
    };
    crate::hop!("store.pull_served", served.frames.len() as u64);
    let h = |name: &'static str, v: u64| (HeaderName::from_static(name), HeaderValue::from(v));
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-base-log"),
            ),
            h(HEADER_TERM, served.term),
            h(HEADER_PREV_INDEX, served.prev.index),
            h(HEADER_PREV_TERM, served.prev.term.0),
            h(HEADER_LOG_START_INDEX, served.log_start.index),
            h(HEADER_LOG_START_TERM, served.log_start.term.0),
            h(HEADER_COMMIT, served.commit),
        ],
        served.frames,
    )
        .into_response()
}

async fn replica_append(
    AxState(app): AxState<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let parsed = (|| {
        Ok::<_, Response>(ShipmentHeaders {
            term: required(&headers, HEADER_TERM)?,
            prev: pos(
                required(&headers, HEADER_PREV_TERM)?,
                required(&headers, HEADER_PREV_INDEX)?,
            ),
            log_start: pos(
                required(&headers, HEADER_LOG_START_TERM)?,
                required(&headers, HEADER_LOG_START_INDEX)?,
            ),
            commit: required(&headers, HEADER_COMMIT)?,
        })
    })();
    let shipment = match parsed {
        Ok(x) => x,
        Err(r) => return r,
    };
    let frames = match body_bytes(body, MAX_APPEND_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    crate::hop!("store.append_in", frames.len() as u64);
    match app.call(move |s| s.append(&shipment, &frames)).await {
        Ok(Ok(a)) => {
            crate::hop!("store.appended", a.state.last_index);
            let at = |p: LogPosition| json!({"index": p.index, "term": p.term.0});
            let next = match a.next {
                Next::Pull { after } => json!({"pull_after": at(after)}),
                Next::FetchSnapshot { at_least } => json!({"fetch_snapshot": at(at_least)}),
            };
            axum::Json(json!({"state": a.state, "next": next})).into_response()
        }
        Ok(Err(r)) => refusal(r),
        Err(resp) => resp,
    }
}

async fn snapshot_get(AxState(app): AxState<Arc<App>>) -> Response {
    let made = match app.call(|s| s.make_snapshot()).await {
        Ok(Ok(x)) => x,
        Ok(Err(r)) => return refusal(r),
        Err(resp) => return resp,
    };
    let (path, index, term) = made;
    // Streamed from the file, not read whole into memory; the open file stays readable once
    // its name is gone.
    let opened = async {
        let file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        Ok::<_, std::io::Error>((file, len))
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    match opened {
        Ok((file, len)) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/vnd.sqlite3"),
                ),
                (header::CONTENT_LENGTH, HeaderValue::from(len)),
                (
                    HeaderName::from_static(HEADER_SNAPSHOT_INDEX),
                    HeaderValue::from(index),
                ),
                (
                    HeaderName::from_static(HEADER_SNAPSHOT_TERM),
                    HeaderValue::from(term),
                ),
            ],
            Body::from_stream(file_chunks(file)),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn snapshot_put(AxState(app): AxState<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let parsed = (|| {
        Ok::<_, Response>((
            required(&headers, HEADER_TERM)?,
            required(&headers, HEADER_SNAPSHOT_INDEX)?,
            required(&headers, HEADER_SNAPSHOT_TERM)?,
        ))
    })();
    let (term, index, snap_term) = match parsed {
        Ok(x) => x,
        Err(r) => return r,
    };
    // One install at a time: they share the incoming file.
    let _one = app.installing.lock().await;
    if let Err(resp) = receive_file(&app.incoming, body, app.max_snapshot).await {
        let _ = tokio::fs::remove_file(&app.incoming).await;
        return resp;
    }
    let reads = app.reads.clone();
    match app
        .call(move |s| {
            s.install_snapshot(term, index, snap_term, &reads.gate, || reads.close_all())
        })
        .await
    {
        Ok(Ok(state)) => state_response(&state),
        Ok(Err(r)) => refusal(r),
        Err(resp) => resp,
    }
}

/// A file's bytes as a stream of chunks; it ends after the first error.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Streams a body into `path` and fsyncs it.
async fn receive_file(path: &PathBuf, body: Body, limit: u64) -> Result<(), Response> {
    let internal = |e: std::io::Error| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, "bad_body", e))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the snapshot is larger than {limit} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(())
}

async fn db_execute(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let term = match required(&headers, HEADER_TERM) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let stmts = match statements(body, app.max_body).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    crate::hop!("store.execute_in", 0);
    let timings = flag(&q, "timings");
    let req = ExecRequest {
        term,
        stmts,
        transaction: flag(&q, "transaction"),
        timings,
    };
    let (tx, rx) = oneshot::channel();
    if app.jobs.send(Job::Execute(req, tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_stopped",
            "the writer thread stopped",
        );
    }
    let answer = match rx.await {
        Ok(Ok(a)) => a,
        Ok(Err(r)) => return refusal(r),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "dropped"),
    };
    crate::hop!("store.execute_answered", answer.index);
    let mut body = json!({"results": answer.results});
    if timings {
        body["time"] = json!(answer.seconds);
    }
    (
        StatusCode::OK,
        [
            (
                HeaderName::from_static(HEADER_LOG_INDEX),
                HeaderValue::from(answer.index),
            ),
            (
                HeaderName::from_static(HEADER_LOG_TERM),
                HeaderValue::from(answer.term),
            ),
        ],
        axum::Json(body),
    )
        .into_response()
}

/// Where a read of `level` may be served (docs/replica-contract.md, reads).
fn read_allowed(s: &State, level: &str, path_and_query: &str) -> Result<(), Response> {
    if s.needs_snapshot {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "needs_snapshot",
            "this store waits for a snapshot",
        ));
    }
    let writer = s.role == "writer";
    let ok = match level {
        "" | "none" => return Ok(()),
        "weak" => writer,
        "strong" => {
            if writer && s.commit < s.term_start {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "term_start_not_committed",
                    "the writer's first entry of its term is not committed yet",
                ));
            }
            writer
        }
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_level",
                format!("level {other:?}: none, weak or strong"),
            ));
        }
    };
    if ok {
        return Ok(());
    }
    if !s.writer_url.is_empty() {
        let target = [s.writer_url.trim_end_matches('/'), path_and_query].concat();
        if let Ok(v) = HeaderValue::from_str(&target) {
            return Err((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response());
        }
    }
    Err(error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_writer",
        "this store is not the writer and knows of none",
    ))
}

async fn run_query(
    app: &App,
    q: &HashMap<String, String>,
    uri: &str,
    stmts: Vec<sql::Statement>,
) -> Response {
    let level = q.get("level").map_or("", String::as_str);
    if let Err(r) = read_allowed(&app.state.borrow(), level, uri) {
        return r;
    }
    let timings = flag(q, "timings");
    let reads = app.reads.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || reads.query(&stmts, timings)).await;
    match out {
        Ok(Ok(results)) => {
            let mut body = json!({"results": results});
            if timings {
                body["time"] = json!(started.elapsed().as_secs_f64());
            }
            axum::Json(body).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn db_query_get(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
) -> Response {
    let Some(sql) = q.get("q") else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "q (the SQL) is required",
        );
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    run_query(&app, &q, &pq, vec![sql::Statement::plain(sql.clone())]).await
}

async fn db_query_post(
    AxState(app): AxState<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    let stmts = match statements(body, app.max_body).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    run_query(&app, &q, &pq, stmts).await
}
