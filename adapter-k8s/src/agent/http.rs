//! The agent's HTTP side, in two planes.
//!
//! - The **client port** (`--listen`): the front door that forwards to the local Base (reads
//!   always, writes only while this node holds a valid writer lease, never while fenced, at most
//!   `--proxy-max-concurrent` at once, idle bodies cut: see [`proxy`](super::proxy)), plus the
//!   read-only wire of the Hanzo gateway (`GET /_ha/leader`, `GET /_ha/peers`, the `X-Base-*`
//!   headers) and `/healthz`, `/readyz`. Every other control path
//!   ([`base_core::control::is_control_path`]) gets a `404 {"error":"control_path"}` of the
//!   agent's own, never Base's, counted (`quasar_control_refused_total{reason="client_port"}`).
//! - The **control port** (`--peer-port`): HMAC-signed peer messages (`POST /_quasar/msg`) and
//!   `GET /_quasar/metrics`; anything else `404`, counted as `unknown_path`. Without
//!   `--peer-port` (development only, warned at start) both are served on the client port.
//!
//! No HTTP request moves the writer: transfers come from the pod annotation
//! (`Control::Annotations`) or, between agents, as the election's own signed messages. The
//! answers (`/_ha/leader`, `/_ha/peers`, `/readyz`, the headers) and the write admission are the
//! core agent machine's (`base_core::agent::Agent`); this module only maps them to HTTP.
//! Refusals are logged once per source address a minute.

use super::Shared;
use super::auth::{DropReason, HEADER_MAC, HEADER_NONCE, HEADER_TIMESTAMP};
use super::driver::Control;
use super::metrics::ControlRefusal;
use super::proxy::IdleTimeout;
use super::replication::{HEADER_LOG_INDEX, HEADER_LOG_TERM};
use super::transport::MESSAGE_PATH;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base_core::Term;
use base_core::agent::{Admission, ReadAdmission, Readiness};
use base_core::quasar::Role;
use base_core::quasar::{Envelope, MAX_MESSAGE_BYTES};
use base_core::replication::{Contract, CoordinatorInput, LogPosition, Outcome};
use base_core::wire::{HEADER_LEADER, HEADER_TERM, HEADER_WRITER_REQUIRED, NO_WRITER_BODY};
use std::net::SocketAddr;
use std::sync::Arc;

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Marks `/_ha/peers` and `/readyz` answers of a fenced replica.
const HEADER_FENCED: &str = "x-base-fenced";

/// The client port. Without `--peer-port` it also serves the control port's endpoints.
pub fn router(shared: Arc<Shared>) -> Router {
    let base = if shared.separate_peer_port {
        Router::new()
    } else {
        Router::new()
            .route(MESSAGE_PATH, post(peer_message))
            .route("/_quasar/metrics", get(metrics))
            .route("/_replica/log", get(ship))
            .route("/_replica/snapshot", get(ship))
    };
    base.route("/_ha/leader", get(leader))
        .route("/_ha/peers", get(peers))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(front_door)
        .layer(axum::middleware::map_response_with_state(
            shared.clone(),
            stamp_headers,
        ))
        .with_state(shared)
}

/// Counts a refused control request and logs it, once per source a minute.
fn refuse_control(
    shared: &Shared,
    reason: ControlRefusal,
    source: SocketAddr,
    method: &Method,
    uri: &Uri,
) -> Response {
    shared.metrics.control_refused(reason);
    if shared.refusals.should_log(Some(source.ip())) {
        tracing::warn!(reason = reason.as_str(), source = %source.ip(), %method, path = %uri.path(),
            "refused a control-plane request (logged once a minute per source)");
    }
    error(StatusCode::NOT_FOUND, "control_path")
}

async fn stamp_headers(State(shared): State<Arc<Shared>>, mut response: Response) -> Response {
    let now = shared.clock.now();
    let (url, term) = shared.lock_agent().leader_headers(now);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&url) {
        headers.insert(HeaderName::from_static("x-base-leader"), v);
    }
    headers.insert(
        HeaderName::from_static("x-base-term"),
        HeaderValue::from(term.0),
    );
    response
}

/// The control port (`--peer-port`): peer messages and the metrics; anything else 404.
pub fn peer_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(MESSAGE_PATH, post(peer_message))
        .route("/_quasar/metrics", get(metrics))
        .route("/_replica/log", get(ship))
        .route("/_replica/snapshot", get(ship))
        .fallback(
            |State(shared): State<Arc<Shared>>,
             ConnectInfo(source): ConnectInfo<SocketAddr>,
             request: Request| async move {
                refuse_control(
                    &shared,
                    ControlRefusal::UnknownPath,
                    source,
                    request.method(),
                    request.uri(),
                )
            },
        )
        .with_state(shared)
}

fn drop_response(reason: DropReason) -> Response {
    let status = match reason {
        DropReason::BadMac => StatusCode::UNAUTHORIZED,
        DropReason::StaleTimestamp | DropReason::Replay | DropReason::Malformed => {
            StatusCode::BAD_REQUEST
        }
        DropReason::WrongReceiver => StatusCode::MISDIRECTED_REQUEST,
        DropReason::UnknownPeer => StatusCode::FORBIDDEN,
        DropReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        DropReason::Busy => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, reason.as_str())
}

/// Checks one peer message (see [`auth`](super::auth) for the order of the checks) and queues it
/// for the driver.
async fn peer_message(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    match admit_peer_message(&shared, request).await {
        Ok(()) => {
            shared.metrics.accepted.inc();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(reason) => {
            shared.metrics.dropped(reason);
            if reason != DropReason::Busy && shared.refusals.should_log(Some(source.ip())) {
                tracing::warn!(reason = reason.as_str(), source = %source.ip(),
                    "peer message dropped (logged once a minute per source)");
            } else {
                tracing::debug!(reason = reason.as_str(), "peer message dropped");
            }
            drop_response(reason)
        }
    }
}

async fn admit_peer_message(shared: &Shared, request: Request) -> Result<(), DropReason> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE_BYTES)
        .await
        .map_err(|_| DropReason::TooLarge)?;
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let stamp = shared.auth.check_mac(
        header(HEADER_TIMESTAMP),
        header(HEADER_NONCE),
        header(HEADER_MAC),
        &bytes,
    )?;
    let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|_| DropReason::Malformed)?;
    if envelope.to != shared.id {
        return Err(DropReason::WrongReceiver);
    }
    if !shared.peers.contains_key(&envelope.from) {
        return Err(DropReason::UnknownPeer);
    }
    let now = shared.clock.now();
    if let Some(stamp) = &stamp {
        shared.auth.check_fresh(&envelope.from, stamp, now.0)?;
    }
    let control = Control::Peer {
        from: envelope.from,
        msg: envelope.msg,
    };
    shared
        .control
        .try_send(control)
        .map_err(|_| DropReason::Busy)
}

/// `GET /_quasar/metrics`: Prometheus text.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let (term, writer, fenced, position) = {
        let agent = shared.lock_agent();
        let node = agent.node();
        (
            node.term(),
            node.role() == Role::Writer,
            node.is_fenced(),
            node.position(),
        )
    };
    let m = &shared.metrics;
    m.term.set(i64::try_from(term.0).unwrap_or(i64::MAX));
    m.position.set(i64::try_from(position).unwrap_or(i64::MAX));
    m.is_writer.set(i64::from(writer));
    m.fenced.set(i64::from(fenced));
    let commit = shared.replication.lock().commit().unwrap_or(0);
    m.commit.set(i64::try_from(commit).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        m.render(),
    )
        .into_response()
}

fn fenced_header(shared: &Shared, response: &mut Response) {
    let fenced = shared.lock_agent().is_fenced();
    response.headers_mut().insert(
        HeaderName::from_static(HEADER_FENCED),
        HeaderValue::from_static(if fenced { "true" } else { "false" }),
    );
}

async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.clock.now();
    let answer = shared.lock_agent().leader_answer(now);
    let mut response = axum::Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The operator reports a Base without the contract (`ReplicationContract=False`).
    let contract = match shared.replication.contract() {
        Contract::Supported => Some("1"),
        Contract::Absent => Some("0"),
        Contract::Unknown => None,
    };
    if let Some(c) = contract {
        response.headers_mut().insert(
            HeaderName::from_static("x-base-replica-contract"),
            HeaderValue::from_static(c),
        );
    }
    response
}

async fn peers(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.clock.now();
    let list = shared.lock_agent().peers_answer(now);
    let mut response = axum::Json(list).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    fenced_header(&shared, &mut response);
    response
}

/// Ready once a writer was seen. A fenced replica stays ready: it serves reads (and redirects
/// writes); the body and `X-Base-Fenced` say it is fenced.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = shared.lock_agent().readiness();
    let mut response = match readiness {
        Readiness::Ready => (StatusCode::OK, "ready").into_response(),
        Readiness::ReadyFenced => (StatusCode::OK, "ready (fenced: reads only)").into_response(),
        Readiness::NoWriterSeen => error(StatusCode::SERVICE_UNAVAILABLE, "no_writer_seen"),
    };
    fenced_header(&shared, &mut response);
    response
}

fn error(status: StatusCode, code: &str) -> Response {
    let body = serde_json::json!({ "error": code }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn is_write(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Not the writer (or not inside the lease): send the client to the writer, or 503.
fn not_here(admission: Admission, uri: &Uri) -> Response {
    let url = match admission {
        Admission::Redirect { url } => url,
        Admission::NoWriter | Admission::Forward { .. } => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                NO_WRITER_BODY,
            )
                .into_response();
        }
    };
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match HeaderValue::from_str(&format!("{url}{path_and_query}")) {
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => error(StatusCode::BAD_REQUEST, "bad_request_target"),
    }
}

async fn front_door(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if base_core::control::is_control_path(request.method().as_str(), request.uri().path()) {
        return refuse_control(
            &shared,
            ControlRefusal::ClientPort,
            peer,
            request.method(),
            request.uri(),
        );
    }
    let Ok(permit) = shared.proxy_limit.clone().try_acquire_owned() else {
        shared.metrics.proxy_rejected.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::RETRY_AFTER, HeaderValue::from_static("1")),
            ],
            r#"{"error":"overloaded"}"#,
        )
            .into_response();
    };
    let (parts, body) = request.into_parts();
    crate::hop!("agent.in", 0);
    let writer_required = parts
        .headers
        .get(HEADER_WRITER_REQUIRED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("required"));
    let write = is_write(&parts.method);
    // The gateway marks the reads it pins to the writer after a client's write: they must see it.
    let writer_read = !write && (writer_required || is_strong_read(&parts.uri));
    let mut admitted = Term(0);
    if write {
        let now = shared.clock.now();
        match shared.lock_agent().admit_write(now) {
            Admission::Forward { term } => admitted = term,
            other => return not_here(other, &parts.uri),
        }
    }
    if writer_read {
        // One lock at a time: the term start is looked up for the term of now, and a term that
        // moved meanwhile counts as not committed.
        let term_now = shared.lock_agent().node().term();
        let ready = shared.replication.contract() != Contract::Supported
            || shared.replication.lock().strong_reads_ready(term_now);
        let now = shared.clock.now();
        match shared
            .lock_agent()
            .admit_writer_read(now, |term| ready && term == term_now)
        {
            ReadAdmission::Serve => {}
            ReadAdmission::Refuse(other) => return not_here(other, &parts.uri),
            ReadAdmission::TermStartNotCommitted => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "term_start_not_committed");
            }
        }
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("{}{}", shared.upstream, path_and_query).parse() {
        Ok(uri) => uri,
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request_target"),
    };
    let mut headers = forward_headers(&parts.headers, peer);
    let body = Body::new(IdleTimeout::new(body, shared.proxy_idle_timeout, None));
    let mut outgoing = axum::http::Request::new(body);
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = uri;
    // The fencing check, as late as it can be: right before the request leaves for Base.
    if write {
        let now = shared.clock.now();
        let term = match shared.lock_agent().recheck_write(now, admitted) {
            Admission::Forward { term } => term,
            other => return not_here(other, &parts.uri),
        };
        headers.insert(
            HeaderName::from_static("x-base-term"),
            HeaderValue::from(term.0),
        );
    }
    *outgoing.headers_mut() = headers;
    let sent = tokio::time::timeout(shared.upstream_timeout, shared.client.request(outgoing)).await;
    match sent {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The store logged the write: its answer is final only once the entry commits.
            if let Some(at) = logged_entry(&parts.headers)
                && write
            {
                crate::hop!("agent.store_answered", at.index);
                match super::replication::hold(&shared, at).await {
                    Outcome::Committed => {
                        crate::hop!("agent.released", at.index);
                    }
                    Outcome::CommitUnknown => {
                        return error(StatusCode::GATEWAY_TIMEOUT, "commit_unknown");
                    }
                }
            }
            let body = IdleTimeout::new(body, shared.proxy_idle_timeout, Some(permit));
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            error(StatusCode::BAD_GATEWAY, "upstream_unreachable")
        }
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
    }
}

/// A read the writer must serve within its lease after its term's no-op committed: rqlite's
/// `level=strong`.
fn is_strong_read(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.eq_ignore_ascii_case("level=strong"))
    })
}

/// The log entry a store's answer names (`X-Base-Log-Index`, `X-Base-Log-Term`).
fn logged_entry(headers: &HeaderMap) -> Option<LogPosition> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(LogPosition::new(
        Term(num(HEADER_LOG_TERM)?),
        num(HEADER_LOG_INDEX)?,
    ))
}

/// `GET /_replica/log` and `GET /_replica/snapshot` on the control port: a replica's agent asks
/// for the writer's log (signed like a peer message). Served only while this node is the
/// writer and its store holds the role; a pull proves the replica holds the entry it pulls after.
async fn ship(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let pq = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let peer = match super::replication::admit_ship(&shared, request.headers(), &pq) {
        Ok(peer) => peer,
        Err(reason) => {
            shared.metrics.dropped(reason);
            if shared.refusals.should_log(Some(source.ip())) {
                tracing::warn!(reason = reason.as_str(), source = %source.ip(), path = %pq,
                    "shipping request refused (logged once a minute per source)");
            }
            return drop_response(reason);
        }
    };
    let (writer, term) = {
        let agent = shared.lock_agent();
        (agent.node().role() == Role::Writer, agent.node().term())
    };
    if !writer || !shared.replication.lock().writer_ready(term) {
        return error(StatusCode::CONFLICT, "not_writer");
    }
    if request.uri().path() == "/_replica/log" {
        let q: std::collections::HashMap<String, String> = request
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(index), Some(t)) = (num("after_index"), num("after_term")) {
            let now = shared.clock.now();
            let after = LogPosition::new(Term(t), index);
            crate::hop!("agent.pull_in", index);
            super::replication::step(&shared, now, CoordinatorInput::Pull { peer, after });
        }
    }
    let uri: Uri = match format!("{}{}", shared.upstream, pq).parse() {
        Ok(uri) => uri,
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request_target"),
    };
    let mut outgoing = axum::http::Request::new(Body::empty());
    *outgoing.uri_mut() = uri;
    // Long polls wait up to 30 s at the store.
    let wait = shared
        .upstream_timeout
        .max(std::time::Duration::from_secs(35));
    match tokio::time::timeout(wait, shared.client.request(outgoing)).await {
        Ok(Ok(response)) => {
            crate::hop!("agent.pull_served", 0);
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            error(StatusCode::BAD_GATEWAY, "upstream_unreachable")
        }
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn forward_headers(incoming: &HeaderMap, peer: SocketAddr) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    // A client must not choose the fencing token.
    headers.remove(HEADER_TERM);
    headers.remove(HEADER_LEADER);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers
}
