//! The agent's replication shell (issue 15 §3): it performs what the core
//! [`Coordinator`](base_core::replication::Coordinator) decides and feeds it what it observes.
//! No decision is made here.
//!
//! - **Store state**: a task long-polls the store's `GET /_replica/state?after=P` and feeds every
//!   answer (the store's durable position goes to the election, whose heartbeat acks carry it to
//!   the writer). A `404`, or an answer without `X-Base-Replica-Contract`, means the store does
//!   not implement the contract: the agent proxies it as before, and says so (a warning, the
//!   metric `quasar_replication_contract 0`, and `replication_contract: false` on `/_ha/leader`).
//! - **Role**: a task sends each `PUT /_replica/role` the coordinator orders, one at a time.
//! - **Held writes**: the front door forwards a write and, when the store's answer names its log
//!   entry (`X-Base-Log-Index`, `X-Base-Log-Term`), holds the answer until the coordinator
//!   releases it: the store's answer once committed, `504 {"error":"commit_unknown"}` otherwise.
//! - **Log shipping** (pull): a replica's agent asks the writer's agent, on its control port,
//!   for `GET /_replica/log` (and `GET /_replica/snapshot`), signed like peer messages, and hands
//!   each answer to its own store (`POST /_replica/append`, `PUT /_replica/snapshot`), which
//!   decides with the core replica machine where to pull from next. The writer's agent serves
//!   them only while it is the writer, and takes each pull as proof of the replica's position.

use super::Shared;
use super::auth::{DropReason, HEADER_MAC, HEADER_NONCE, HEADER_TIMESTAMP, PeerAuth};
use super::driver::Control;
use base_core::replication::{
    Contract, Coordinator, CoordinatorEffect, CoordinatorInput, ElectionView, LogPosition, Outcome,
    RoleAnswer, RoleOrder, StoreRole, StoreView, WriteId, shape_from_runs,
};
use base_core::{Millis, NodeId, Term};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

pub const HEADER_CONTRACT: &str = "x-base-replica-contract";
pub const HEADER_LOG_INDEX: &str = "x-base-log-index";
pub const HEADER_LOG_TERM: &str = "x-base-log-term";
/// Names the sending agent of a signed shipping request.
pub const HEADER_FROM: &str = "x-base-from";
/// The shipping headers a replica's agent passes from the writer's answer to its own store.
pub const SHIPMENT_HEADERS: [&str; 6] = [
    "x-base-term",
    "x-base-prev-index",
    "x-base-prev-term",
    "x-base-log-start-index",
    "x-base-log-start-term",
    "x-base-commit",
];
/// Separates the MAC of a shipping request from a peer message's under the same key.
const SHIP_DOMAIN: &str = "hanzo-base/replica-ship/v1";
/// How long a pull waits at the writer for something new.
const PULL_WAIT_MS: u64 = 2_000;
/// How long a state long-poll waits at the store.
const STATE_WAIT_MS: u64 = 2_000;
/// Pause after a failed pull or store call.
const RETRY: Duration = Duration::from_millis(50);
/// How long a snapshot may take to arrive whole from the writer.
const SNAPSHOT_TRANSFER_WAIT: Duration = Duration::from_secs(600);
/// How long the store may take to check and install a snapshot once it is received.
const SNAPSHOT_INSTALL_WAIT: Duration = Duration::from_secs(120);
/// How often a store without the contract is asked again (it may be upgraded in place).
const ABSENT_RECHECK: Duration = Duration::from_secs(10);

/// What the HTTP side and the driver share with the replication tasks.
pub struct Replication {
    coordinator: Mutex<Coordinator>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    next_write: AtomicU64,
    roles: mpsc::UnboundedSender<RoleOrder>,
    /// Bumped after every step, so the puller re-reads whom to pull from.
    changed: watch::Sender<u64>,
    pub commit_timeout: Duration,
}

/// The receiving ends the tasks own.
pub struct Tasks {
    roles: mpsc::UnboundedReceiver<RoleOrder>,
}

impl Replication {
    pub fn new(coordinator: Coordinator, commit_timeout: Duration) -> (Replication, Tasks) {
        let (roles, rx) = mpsc::unbounded_channel();
        let (changed, _) = watch::channel(0);
        (
            Replication {
                coordinator: Mutex::new(coordinator),
                waiters: Mutex::new(HashMap::new()),
                next_write: AtomicU64::new(1),
                roles,
                changed,
                commit_timeout,
            },
            Tasks { roles: rx },
        )
    }

    pub fn lock(&self) -> MutexGuard<'_, Coordinator> {
        self.coordinator.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contract(&self) -> Contract {
        self.lock().contract()
    }
}

/// Steps the coordinator at `now` and performs its effects.
pub fn step(shared: &Shared, now: Millis, input: CoordinatorInput) {
    let r = &shared.replication;
    let effects = r.lock().step(now, input);
    for effect in effects {
        perform(shared, effect);
    }
    r.changed.send_modify(|n| *n = n.wrapping_add(1));
}

fn perform(shared: &Shared, effect: CoordinatorEffect) {
    let r = &shared.replication;
    match effect {
        CoordinatorEffect::PushRole(order) => {
            crate::hop!("agent.push_role", order.commit);
            let _ = r.roles.send(order);
        }
        CoordinatorEffect::Position { epoch, position } => {
            if shared
                .control
                .try_send(Control::Position { epoch, position })
                .is_err()
            {
                tracing::debug!(position, "driver queue full: position report dropped");
            }
        }
        CoordinatorEffect::Release { write, outcome } => {
            crate::hop!("agent.release", write.0);
            let waiter = r
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&write.0);
            match outcome {
                Outcome::Committed => shared.metrics.writes_committed.inc(),
                Outcome::CommitUnknown => shared.metrics.writes_commit_unknown.inc(),
            };
            if let Some(w) = waiter {
                let _ = w.send(outcome);
            }
        }
        CoordinatorEffect::ContractAbsent => {
            shared.metrics.replication_contract.set(0);
            tracing::warn!(
                upstream = %shared.upstream,
                "the local Base does not implement the replica contract (GET /_replica/state: 404 or no X-Base-Replica-Contract): writes are acknowledged as soon as it answers, and a failover can lose them"
            );
        }
        CoordinatorEffect::ContractPresent => {
            shared.metrics.replication_contract.set(1);
            tracing::info!("the local Base implements the replica contract now");
        }
        CoordinatorEffect::Anomaly(what) => {
            tracing::warn!(%what, "replication: a report that cannot be true was ignored");
        }
    }
}

/// The election's view for the coordinator (the core's rule, with this agent's peer URLs).
pub fn election_view(shared: &Shared, node: &base_core::quasar::Node, now: Millis) -> ElectionView {
    ElectionView::of(node, now, |id| shared.url_of(id))
}

/// Holds a write the store logged at `at` until the coordinator releases it.
pub async fn hold(shared: &Shared, at: LogPosition) -> Outcome {
    let r = &shared.replication;
    let id = r.next_write.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    r.waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let now = shared.clock.now();
    let timeout = u64::try_from(r.commit_timeout.as_millis()).unwrap_or(u64::MAX / 2);
    let deadline = Millis(now.0.saturating_add(timeout));
    step(
        shared,
        now,
        CoordinatorInput::Hold {
            write: WriteId(id),
            at,
            deadline,
        },
    );
    // The coordinator releases every hold by its deadline (on a tick); a dropped sender is the
    // same answer.
    rx.await.unwrap_or(Outcome::CommitUnknown)
}

/// Starts the replication tasks.
pub fn start(shared: Arc<Shared>, tasks: Tasks) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(
            PULL_WAIT_MS.max(STATE_WAIT_MS) + 10_000,
        ))
        .connect_timeout(Duration::from_secs(2))
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the replication client: replication is off");
            return;
        }
    };
    tokio::spawn(poll_state(shared.clone(), client.clone()));
    tokio::spawn(push_roles(shared.clone(), client.clone(), tasks.roles));
    tokio::spawn(pull(shared, client));
}

fn u64_field(v: &Value, name: &str) -> Option<u64> {
    v.get(name)?.as_u64()
}

/// A store's state answer, as the coordinator reads it.
pub fn parse_state(v: &Value) -> Option<StoreView> {
    let role = match v.get("role")?.as_str()? {
        "writer" => StoreRole::Writer,
        "replica" => StoreRole::Replica,
        _ => return None,
    };
    Some(StoreView {
        role,
        term: Term(u64_field(v, "term")?),
        epoch: u64_field(v, "epoch").unwrap_or(0),
        last: LogPosition::new(
            Term(u64_field(v, "last_term")?),
            u64_field(v, "last_index")?,
        ),
        commit: u64_field(v, "commit")?,
        term_start: u64_field(v, "term_start").unwrap_or(0),
    })
}

fn parse_shape(v: &Value) -> Option<base_core::replication::LogShape> {
    let base = LogPosition::new(
        Term(u64_field(v, "base_term")?),
        u64_field(v, "base_index")?,
    );
    let runs = v
        .get("runs")?
        .as_array()?
        .iter()
        .map(|r| Some((Term(r.get(0)?.as_u64()?), r.get(1)?.as_u64()?)))
        .collect::<Option<Vec<_>>>()?;
    shape_from_runs(base, &runs, u64_field(v, "last_index")?).ok()
}

async fn poll_state(shared: Arc<Shared>, client: reqwest::Client) {
    let mut after: Option<u64> = None;
    loop {
        let url = match after {
            None => format!("{}/_replica/state", shared.upstream),
            Some(p) => format!(
                "{}/_replica/state?after={p}&wait_ms={STATE_WAIT_MS}",
                shared.upstream
            ),
        };
        let answer = client.get(&url).send().await;
        let now = || shared.clock.now();
        match answer {
            Ok(r)
                if r.status() == reqwest::StatusCode::NOT_FOUND
                    || !r.headers().contains_key(HEADER_CONTRACT) =>
            {
                step(&shared, now(), CoordinatorInput::ContractAbsent);
                after = None;
                tokio::time::sleep(ABSENT_RECHECK).await;
            }
            Ok(r) if r.status().is_success() => {
                match r.json::<Value>().await.ok().as_ref().and_then(parse_state) {
                    Some(view) => {
                        after = view.last.encode().ok();
                        step(&shared, now(), CoordinatorInput::Store(view));
                    }
                    None => {
                        tracing::warn!("the store's /_replica/state answer is not the contract's");
                        after = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(r) => {
                tracing::debug!(status = %r.status(), "store state");
                after = None;
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "store state");
                after = None;
                tokio::time::sleep(RETRY * 4).await;
            }
        }
    }
}

async fn push_roles(
    shared: Arc<Shared>,
    client: reqwest::Client,
    mut orders: mpsc::UnboundedReceiver<RoleOrder>,
) {
    while let Some(order) = orders.recv().await {
        let body = serde_json::json!({
            "role": match order.role { StoreRole::Writer => "writer", StoreRole::Replica => "replica" },
            "term": order.term.0,
            "writer_id": order.writer_id.as_ref().map(|w| w.as_str()).unwrap_or(""),
            "writer_url": order.writer_url,
            "commit": order.commit,
        });
        let shape = if order.want_shape { "?shape=1" } else { "" };
        let url = format!("{}/_replica/role{shape}", shared.upstream);
        let answer = match client.put(&url).json(&body).send().await {
            Ok(r) => {
                let status = r.status();
                let value = r.json::<Value>().await.unwrap_or(Value::Null);
                if status.is_success() {
                    match parse_state(&value) {
                        Some(state) => RoleAnswer::Done {
                            state,
                            shape: value.get("log_shape").and_then(parse_shape),
                        },
                        None => RoleAnswer::Failed,
                    }
                } else if status == reqwest::StatusCode::CONFLICT
                    && value.get("error").and_then(Value::as_str) == Some("stale_term")
                {
                    RoleAnswer::StaleTerm {
                        store_term: Term(u64_field(&value, "term").unwrap_or(0)),
                    }
                } else {
                    tracing::warn!(%status, answer = %value, role = ?order.role, term = %order.term, "the store refused the role");
                    RoleAnswer::Failed
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "role push");
                RoleAnswer::Failed
            }
        };
        step(
            &shared,
            shared.clock.now(),
            CoordinatorInput::RoleAnswered { order, answer },
        );
    }
}

/// The bytes a shipping request's MAC covers: who asks whom for what.
pub fn ship_canonical(from: &str, to: &str, path_and_query: &str) -> Vec<u8> {
    format!("{SHIP_DOMAIN}\n{from}\n{to}\nGET {path_and_query}").into_bytes()
}

fn signed(
    client: &reqwest::Client,
    auth: &PeerAuth,
    me: &NodeId,
    to: &NodeId,
    base: &str,
    path_and_query: &str,
    now_ms: u64,
) -> reqwest::RequestBuilder {
    let mut req = client
        .get(format!("{base}{path_and_query}"))
        .header(HEADER_FROM, me.as_str());
    let body = ship_canonical(me.as_str(), to.as_str(), path_and_query);
    if let Some(sig) = auth.sign(&body, now_ms, false) {
        req = req
            .header(HEADER_TIMESTAMP, sig.timestamp_ms.to_string())
            .header(HEADER_NONCE, sig.nonce)
            .header(HEADER_MAC, sig.mac);
    }
    req
}

/// Checks a shipping request on the control port: signed by a peer for this node, fresh, not
/// replayed (nonces kept apart from the election's, so a burst of pulls never pushes a
/// heartbeat past the replay watermark). Returns the peer.
pub fn admit_ship(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
    path_and_query: &str,
) -> Result<NodeId, DropReason> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from = header(HEADER_FROM).ok_or(DropReason::Malformed)?;
    let body = ship_canonical(from, shared.id.as_str(), path_and_query);
    let stamp = shared.auth.check_mac(
        header(HEADER_TIMESTAMP),
        header(HEADER_NONCE),
        header(HEADER_MAC),
        &body,
    )?;
    let from = NodeId::new(from);
    if !shared.peers.contains_key(&from) {
        return Err(DropReason::UnknownPeer);
    }
    if let Some(stamp) = &stamp {
        let namespace = NodeId::new(format!("{from}#ship"));
        shared
            .auth
            .check_fresh(&namespace, stamp, shared.clock.now().0)?;
    }
    Ok(from)
}

/// Where the replica pulls from next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    after: LogPosition,
    /// The writer's commit in its last shipment (the long poll waits for it to change).
    commit: Option<u64>,
}

async fn pull(shared: Arc<Shared>, client: reqwest::Client) {
    let mut changed = shared.replication.changed.subscribe();
    let mut cursor: Option<(NodeId, Term, Cursor)> = None;
    loop {
        let source = shared.replication.lock().pull_source();
        let Some((writer, term)) = source else {
            cursor = None;
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
            continue;
        };
        let from_store = shared.replication.lock().store().map(|s| s.last);
        let c = match &cursor {
            Some((w, t, c)) if *w == writer && *t == term => *c,
            _ => match from_store {
                Some(last) => Cursor {
                    after: last,
                    commit: None,
                },
                None => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
                    continue;
                }
            },
        };
        let Some(base) = shared.peer_control_urls.get(&writer).cloned() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // A pull to a writer that was deposed or cut off meanwhile is dropped, not awaited to
        // the client's timeout: until this store pulls from the new writer, that one cannot
        // count it, and commits nothing without it in a three-node cluster.
        let pulled = tokio::select! {
            r = pull_once(&shared, &client, &writer, &base, c) => r,
            () = source_changed(&shared, &mut changed, &writer, term) => {
                cursor = None;
                continue;
            }
        };
        match pulled {
            Ok(Some(next)) => cursor = Some((writer, term, next)),
            Ok(None) => cursor = None,
            Err(what) => {
                tracing::debug!(%writer, %what, "pull");
                cursor = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Resolves once the coordinator names another source to pull from than `(writer, term)`.
async fn source_changed(
    shared: &Shared,
    changed: &mut watch::Receiver<u64>,
    writer: &NodeId,
    term: Term,
) {
    loop {
        if changed.changed().await.is_err() {
            return std::future::pending().await;
        }
        let source = shared.replication.lock().pull_source();
        if source
            .as_ref()
            .is_none_or(|(w, t)| w != writer || *t != term)
        {
            return;
        }
    }
}

/// One pull from the writer and its append to the local store (or a snapshot). Returns where
/// to pull from next (`None`: start again from the store's state).
async fn pull_once(
    shared: &Shared,
    client: &reqwest::Client,
    writer: &NodeId,
    base: &str,
    c: Cursor,
) -> Result<Option<Cursor>, String> {
    let mut pq = format!(
        "/_replica/log?after_index={}&after_term={}&wait_ms={PULL_WAIT_MS}",
        c.after.index, c.after.term.0
    );
    if let Some(commit) = c.commit {
        pq.push_str(&format!("&commit={commit}"));
    }
    let now = shared.clock.now().0;
    let r = signed(client, &shared.auth, &shared.id, writer, base, &pq, now)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("the writer answered {}", r.status()));
    }
    let mut append = client.post(format!("{}/_replica/append", shared.upstream));
    let mut writer_commit = None;
    for h in SHIPMENT_HEADERS {
        let v = r
            .headers()
            .get(h)
            .cloned()
            .ok_or_else(|| format!("the shipment lacks {h}"))?;
        if h == "x-base-commit" {
            writer_commit = v.to_str().ok().and_then(|s| s.parse::<u64>().ok());
        }
        append = append.header(h, v);
    }
    let writer_term = r
        .headers()
        .get("x-base-term")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let frames = r.bytes().await.map_err(|e| e.to_string())?;
    crate::hop!("replica_agent.shipment", frames.len() as u64);
    let a = append
        .body(frames)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = a.status();
    let answer: Value = a.json().await.map_err(|e| e.to_string())?;
    crate::hop!("replica_agent.appended", 0);
    if !status.is_success() {
        tracing::warn!(%status, %answer, "the store refused a shipment");
        return Err(format!("append answered {status}"));
    }
    if let Some(view) = answer.get("state").and_then(parse_state) {
        step(shared, shared.clock.now(), CoordinatorInput::Store(view));
    }
    let next = &answer["next"];
    let at = |p: &Value| {
        Some(LogPosition::new(
            Term(p.get("term")?.as_u64()?),
            p.get("index")?.as_u64()?,
        ))
    };
    if let Some(after) = next.get("pull_after").and_then(at) {
        return Ok(Some(Cursor {
            after,
            commit: writer_commit,
        }));
    }
    if next.get("fetch_snapshot").is_none() {
        return Err(format!("the store's answer names no next step: {answer}"));
    }
    // The writer no longer holds what this store needs: its snapshot, installed atomically.
    let now = shared.clock.now().0;
    let snap = signed(
        client,
        &shared.auth,
        &shared.id,
        writer,
        base,
        "/_replica/snapshot",
        now,
    )
    .timeout(SNAPSHOT_TRANSFER_WAIT)
    .send()
    .await
    .map_err(|e| e.to_string())?;
    if !snap.status().is_success() {
        return Err(format!("snapshot: the writer answered {}", snap.status()));
    }
    let mut put = axum::http::Request::builder()
        .method(axum::http::Method::PUT)
        .uri(format!("{}/_replica/snapshot", shared.upstream))
        .header("x-base-term", writer_term);
    for h in ["x-base-snapshot-index", "x-base-snapshot-term"] {
        let v = snap
            .headers()
            .get(h)
            .cloned()
            .ok_or_else(|| format!("the snapshot lacks {h}"))?;
        put = put.header(h, v);
    }
    // Streamed from the writer into the store's incoming file, never whole in the agent's
    // memory (a database can be larger than the agent's memory limit). A stream cut short is
    // an error body: the store drops the incomplete file and installs nothing.
    let put = put
        .body(axum::body::Body::from_stream(chunks(snap)))
        .map_err(|e| e.to_string())?;
    let install_wait = shared.upstream_timeout.max(SNAPSHOT_INSTALL_WAIT);
    let installed = tokio::time::timeout(install_wait, shared.client.request(put))
        .await
        .map_err(|_| "snapshot install: the store did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let status = installed.status();
    let answer = http_body_util::BodyExt::collect(installed.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let state: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("snapshot install answered {status}: {state}"));
    }
    tracing::info!(index = ?state.get("last_index"), "snapshot installed");
    if let Some(view) = parse_state(&state) {
        step(shared, shared.clock.now(), CoordinatorInput::Store(view));
    }
    Ok(None)
}

/// A response's body as a stream of chunks (reqwest's own needs its `stream` feature); it ends
/// after the first error.
fn chunks(
    r: reqwest::Response,
) -> impl futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static {
    futures::stream::unfold(Some(r), |r| async move {
        let mut r = r?;
        match r.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes the store answers are read as the coordinator needs them; anything else is
    /// refused, not guessed.
    #[test]
    fn parses_store_answers() {
        let v = serde_json::json!({"role": "writer", "term": 3, "epoch": 1, "last_term": 3,
            "last_index": 9, "commit": 7, "term_start": 8});
        let s = parse_state(&v).unwrap();
        assert_eq!(s.last, LogPosition::new(Term(3), 9));
        assert_eq!((s.commit, s.term_start, s.epoch), (7, 8, 1));
        assert!(parse_state(&serde_json::json!({"role": "boss", "term": 1})).is_none());
        let shape = serde_json::json!({"base_index": 2, "base_term": 1,
            "runs": [[1, 3], [3, 8]], "last_index": 9});
        let shape = parse_shape(&shape).unwrap();
        assert_eq!(shape.first_index_of(Term(3)), Some(8));
        let bad = serde_json::json!({"base_index": 2, "base_term": 1,
            "runs": [[3, 3], [1, 8]], "last_index": 9});
        assert!(parse_shape(&bad).is_none());
    }
}
