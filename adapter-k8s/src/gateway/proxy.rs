//! Forwarding one request: ask the tracker where, stream it there, retry once if it never arrived
//! or the replica refused it as not the writer (held, first, until a poll finds the new writer
//! when the writer itself failed it).

use super::Shared;
use super::metrics::UpstreamError;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use base_core::tracker::{
    self, AfterOutcome, Attempt, ClientHeaders, Delivery, Forward, Held, Outcome, Reject,
    RequestKind, Route, Why,
};
use base_core::wire::HEADER_WRITER_REQUIRED;
use bytes::Bytes;
use futures::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn StdError + Send + Sync>;

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

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_ORG_ID: &str = "x-org-id";
const X_BASE_CLIENT: &str = "x-base-client";

/// A request body ready to send: whole in memory (can be sent twice) or a stream (once).
enum Outgoing {
    Replayable(Bytes),
    Streaming(Body),
}

impl Outgoing {
    fn replayable(&self) -> bool {
        matches!(self, Outgoing::Replayable(_))
    }

    /// The body for one try. A stream is handed out once; a second call gives an empty body, but
    /// the tracker never asks for a retry of a body that is not replayable.
    fn take(&mut self) -> Body {
        match self {
            Outgoing::Replayable(bytes) => Body::from(bytes.clone()),
            Outgoing::Streaming(body) => std::mem::replace(body, Body::empty()),
        }
    }
}

/// The axum handler for every path that is not the gateway's own.
pub(super) async fn proxy(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    crate::hop!("gw.in", 0);
    let (parts, body) = request.into_parts();
    if base_core::control::is_control_path(parts.method.as_str(), parts.uri.path()) {
        shared.metrics.control_refused();
        if shared.refusals.should_log(peer) {
            tracing::warn!(source = ?peer, method = %parts.method, path = %parts.uri.path(),
                "refused a control-plane request: the gateway never forwards it (logged once a minute per source)");
        }
        return json_error(StatusCode::NOT_FOUND, "control_path");
    }
    let kind = RequestKind::from_method(parts.method.as_str());
    let writer_required = header_str(&parts.headers, HEADER_WRITER_REQUIRED)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("required"));
    let peer_text = peer.map(|ip| ip.to_string());
    let client = tracker::client_identity(ClientHeaders {
        base_client: header_str(&parts.headers, X_BASE_CLIENT),
        forwarded_for: header_str(&parts.headers, X_FORWARDED_FOR),
        org_id: header_str(&parts.headers, X_ORG_ID),
        peer: peer_text.as_deref(),
    });
    let request = tracker::Request {
        kind,
        writer_required,
        client: client.as_ref(),
    };

    let route = shared.lock_tracker().route(super::now_ms(), request);
    let mut forward = match route {
        Route::Forward(forward) => forward,
        Route::Reject(reject) => return shared.reject(reject),
    };

    let mut outgoing = match prepare_body(body, kind, &parts.headers, &shared).await {
        Ok(outgoing) => outgoing,
        Err(response) => return response,
    };
    if matches!(&outgoing, Outgoing::Replayable(bytes) if !bytes.is_empty()) {
        // Reading the body took time: decide again, so that the write goes to the writer of now.
        match shared.lock_tracker().route(super::now_ms(), request) {
            Route::Forward(again) => forward = again,
            Route::Reject(reject) => return shared.reject(reject),
        }
    }
    let Some(path_and_query) = parts.uri.path_and_query().map(|pq| pq.as_str().to_owned()) else {
        return json_error(StatusCode::BAD_REQUEST, "bad_request_target");
    };
    let headers = forward_headers(&parts.headers, peer_text.as_deref());
    // A read pinned to the writer says so: the agent serves it only as the writer.
    let mut writer_headers: Option<HeaderMap> = None;

    let mut attempt = Attempt::First;
    loop {
        shared.metrics.routed(forward.why);
        let target = &shared.replicas[forward.replica];
        let uri = match target.uri_for(&path_and_query) {
            Ok(uri) => uri,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "bad_request_target"),
        };
        crate::hop!("gw.send", 0);
        let sent_headers = if forward.why.needs_the_writer() {
            &*writer_headers.get_or_insert_with(|| with_writer_required(&headers))
        } else {
            &headers
        };
        let result = send(&shared, &parts.method, uri, sent_headers, outgoing.take()).await;
        let (delivery, failure) = match result {
            Ok(response) => match refused_as_not_writer(response, forward.why, &shared).await {
                Answer::Passed(response) => {
                    crate::hop!("gw.answered", 0);
                    let outcome = Outcome {
                        request,
                        replica: forward.replica,
                        attempt,
                        delivery: Delivery::Reached { acknowledged: true },
                        replayable: outgoing.replayable(),
                    };
                    let _done = shared.lock_tracker().on_outcome(super::now_ms(), outcome);
                    return response;
                }
                Answer::NotWriter => (Delivery::NotWriter, None),
            },
            Err(error) => {
                shared.metrics.upstream_error(error);
                let delivery = match error {
                    UpstreamError::Connect => Delivery::NotReached,
                    UpstreamError::Timeout | UpstreamError::Broken => Delivery::Reached {
                        acknowledged: false,
                    },
                };
                (delivery, Some(error))
            }
        };
        let outcome = Outcome {
            request,
            replica: forward.replica,
            attempt,
            delivery,
            replayable: outgoing.replayable(),
        };
        let after = shared.lock_tracker().on_outcome(super::now_ms(), outcome);
        if after.repoll() {
            shared.metrics.writer_lost(delivery);
            shared.repoll();
            tracing::info!(replica = %target.id, ?delivery, ?failure,
                "the writer failed a request: re-polling every replica");
        } else {
            tracing::debug!(replica = %target.id, ?delivery, ?failure, ?after, "forwarding failed");
        }
        let next = match after {
            AfterOutcome::Retry(next) => Ok(next),
            AfterOutcome::Hold { until } => hold(&shared, request, until).await,
            AfterOutcome::Reject(reject) => Err(reject),
            AfterOutcome::Done | AfterOutcome::GiveUp | AfterOutcome::WriterLost => {
                return match failure {
                    Some(UpstreamError::Timeout) => {
                        json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                    }
                    Some(UpstreamError::Connect | UpstreamError::Broken) => {
                        json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable")
                    }
                    // Refused, nothing applied, and not sent again: the client may retry.
                    None => shared.reject(Reject::NoWriter),
                };
            }
        };
        match next {
            Ok(next) => {
                shared.metrics.retried(kind);
                attempt = Attempt::Retry;
                forward = next;
            }
            Err(reject) => return shared.reject(reject),
        }
    }
}

/// Holds a request that the lost writer could not take until a poll finds a writer
/// (`Tracker::route_held`, asked after every poll result) or the hold ends.
async fn hold(
    shared: &Shared,
    request: tracker::Request<'_>,
    until: base_core::Millis,
) -> Result<Forward, Reject> {
    let mut polled = shared.polled.subscribe();
    loop {
        // Marked seen before asking: a poll result after this wakes the wait below.
        polled.borrow_and_update();
        let held = shared
            .lock_tracker()
            .route_held(super::now_ms(), request, until);
        match held {
            Held::Forward(forward) => {
                shared.metrics.held(true);
                return Ok(forward);
            }
            Held::Reject(reject) => {
                shared.metrics.held(false);
                return Err(reject);
            }
            Held::Wait { until } => {
                let left = until.0.saturating_sub(super::now_ms().0).max(1);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(left)) => {}
                    changed = polled.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(Duration::from_millis(left)).await;
                        }
                    }
                }
            }
        }
    }
}

/// A replica's response, seen by the gateway before passing it on.
enum Answer {
    Passed(Response),
    /// The replica said it is not the writer and did nothing (`tracker::refusal_says_not_writer`).
    NotWriter,
}

/// The most of a `503`/`409` body read to tell a not-writer refusal (agents' errors are tiny).
const REFUSAL_BODY_BYTES: u64 = 4 * 1024;

/// Tells a refusal of a request sent to the writer (`why` not a plain read: those pass as they
/// are, a strong read's `307` included) from any other answer, which is passed on.
async fn refused_as_not_writer(
    response: axum::http::Response<hyper::body::Incoming>,
    why: Why,
    shared: &Shared,
) -> Answer {
    let status = response.status();
    let looks = matches!(status.as_u16(), 307 | 409 | 503) && why != Why::Read;
    if !looks {
        return Answer::Passed(response_to_client(response, shared.body_idle_timeout));
    }
    if status == StatusCode::TEMPORARY_REDIRECT {
        return Answer::NotWriter;
    }
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n <= REFUSAL_BODY_BYTES);
    if !small {
        return Answer::Passed(response_to_client(response, shared.body_idle_timeout));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match tokio::time::timeout(shared.body_idle_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        // The answer broke off: as for any broken answer, the client gets a 502.
        _ => return Answer::Passed(json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable")),
    };
    if tracker::refusal_says_not_writer(status.as_u16(), &bytes) {
        return Answer::NotWriter;
    }
    parts.headers = strip_hop_by_hop(&parts.headers);
    Answer::Passed(Response::from_parts(parts, Body::from(bytes)))
}

/// Sends one try; classifies failures by whether the request can have reached the replica.
async fn send(
    shared: &Shared,
    method: &Method,
    uri: Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::http::Response<hyper::body::Incoming>, UpstreamError> {
    let body = Body::new(IdleTimeout::new(body, shared.body_idle_timeout));
    let mut request = axum::http::Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers.clone();
    match tokio::time::timeout(shared.upstream_timeout, shared.client.request(request)).await {
        Err(_elapsed) => Err(UpstreamError::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if never_sent(&e) => Err(UpstreamError::Connect),
        Ok(Err(_)) => Err(UpstreamError::Broken),
    }
}

/// True when the request cannot have reached the replica: no connection was made, or hyper
/// cancelled it before writing it (a pooled connection that closed under it).
fn never_sent(error: &hyper_util::client::legacy::Error) -> bool {
    error.is_connect()
        || error
            .source()
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_canceled)
}

/// Reads (bounded) or passes on the request body. Reads stream through; a write is kept in memory
/// up to `retry_buffer_bytes` so that it can be sent again if the first try never arrived; a larger
/// one streams through and is not retried.
async fn prepare_body(
    mut body: Body,
    kind: RequestKind,
    headers: &HeaderMap,
    shared: &Shared,
) -> Result<Outgoing, Response> {
    if body.is_end_stream() {
        return Ok(Outgoing::Replayable(Bytes::new()));
    }
    let cap = shared.retry_buffer_bytes;
    let declared = header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_big = declared.is_some_and(|n| n > cap as u64);
    if kind == RequestKind::Read || too_big {
        return Ok(Outgoing::Streaming(body));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout(shared.body_idle_timeout, body.frame()).await {
            Err(_) => return Err(json_error(StatusCode::REQUEST_TIMEOUT, "body_timeout")),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(json_error(StatusCode::BAD_REQUEST, "body_error")),
            Ok(Some(Ok(frame))) => frame,
        };
        // Request trailers are rare and Base ignores them: only data frames are kept.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        chunks.push(data);
        if total > cap {
            // Too big to keep: send what was read, then the rest as it comes. No retry.
            let prefix = futures::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>));
            let rest = body.into_data_stream();
            return Ok(Outgoing::Streaming(Body::from_stream(prefix.chain(rest))));
        }
    }
    let bytes = if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        let mut all = Vec::with_capacity(total);
        for chunk in &chunks {
            all.extend_from_slice(chunk);
        }
        Bytes::from(all)
    };
    Ok(Outgoing::Replayable(bytes))
}

/// The headers sent upstream: the client's, less hop-by-hop ones and `Host` (the replica gets its
/// own), plus `X-Forwarded-For` with the client's address appended, `X-Forwarded-Host` and
/// `X-Forwarded-Proto` when the client did not set them.
/// `headers` with `X-Base-Writer: required`.
fn with_writer_required(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    if let Ok(name) = HeaderName::from_bytes(HEADER_WRITER_REQUIRED.as_bytes()) {
        headers.insert(name, HeaderValue::from_static("required"));
    }
    headers
}

pub(crate) fn forward_headers(incoming: &HeaderMap, peer: Option<&str>) -> HeaderMap {
    let mut headers = strip_hop_by_hop(incoming);
    if let Some(host) = headers.remove(header::HOST)
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        headers.insert(HeaderName::from_static(X_FORWARDED_HOST), host);
    }
    if let Some(peer) = peer {
        let prior: Vec<&str> = incoming
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let value = if prior.is_empty() {
            peer.to_owned()
        } else {
            format!("{}, {peer}", prior.join(", "))
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(X_FORWARDED_FOR), value);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(
            HeaderName::from_static(X_FORWARDED_PROTO),
            HeaderValue::from_static("http"),
        );
    }
    headers
}

/// A copy without hop-by-hop headers, including any that `Connection` names.
pub(crate) fn strip_hop_by_hop(incoming: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = incoming
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let mut headers = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || named.iter().any(|n| n == name_str) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers
}

fn response_to_client(
    response: axum::http::Response<hyper::body::Incoming>,
    idle: Duration,
) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers = strip_hop_by_hop(&parts.headers);
    Response::from_parts(parts, Body::new(IdleTimeout::new(body, idle)))
}

pub(super) fn json_error(status: StatusCode, error: &str) -> Response {
    json_response(status, format!(r#"{{"error":"{error}"}}"#))
}

pub(super) fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The gateway's own `503`: no writer (or no replica) known now. `Retry-After: 1`: a failover
/// usually ends within a second or two, and the gateway is already looking.
pub(super) fn reject_response(reject: Reject) -> Response {
    let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, reject.body().to_owned());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A body that fails when no frame arrives for `idle`: a stalled peer cannot hold a connection
/// (and its upstream connection) forever, while a long download that keeps moving is fine.
pub(crate) struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// A body stalled longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeoutError(Duration);

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeoutError(this.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let h = strip_hop_by_hop(&map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("x-org-id", "acme"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-org-id", "cookie"]);
        assert_eq!(h.get_all("cookie").iter().count(), 2);
    }

    #[test]
    fn forwarded_for_gets_the_peer_appended() {
        let h = forward_headers(
            &map(&[
                ("host", "app.example"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-for", "10.0.0.1"),
            ]),
            Some("10.0.0.9"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.1, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("host"));
        let h = forward_headers(&HeaderMap::new(), Some("10.0.0.9"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let body = IdleTimeout::new(Body::from_stream(stream), Duration::from_millis(20));
        let result = body.collect().await;
        assert!(result.is_err());
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
