//! A plain-HTTP proxy in front of the apiserver, for an operator under test: every request goes on
//! to the apiserver as the operator's own user (through a client built from its kubeconfig, so the
//! audit log and RBAC see `base-operator`), and one chosen request can be held at the proxy while
//! the test changes the world. That places a concurrent write exactly between the operator's read
//! and its write, which no timing can do reliably.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use kube::Client;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One held request: the first whose method and path match.
struct Gate {
    method: Method,
    path: String,
    reached: oneshot::Sender<()>,
    go: oneshot::Receiver<()>,
}

#[derive(Clone)]
struct Shared {
    upstream: Client,
    gate: Arc<Mutex<Option<Gate>>>,
}

pub struct ApiProxy {
    /// A kubeconfig that points at the proxy (no credentials: the proxy adds the operator's).
    pub kubeconfig: PathBuf,
    gate: Arc<Mutex<Option<Gate>>>,
}

/// The held request: `reached` fires when it arrives; sending on `go` lets it through.
pub struct Held {
    pub reached: oneshot::Receiver<()>,
    pub go: oneshot::Sender<()>,
}

impl ApiProxy {
    /// Starts the proxy for the user of `operator_kubeconfig`, writing its own kubeconfig into `dir`.
    pub async fn start(operator_kubeconfig: &Path, dir: &Path) -> ApiProxy {
        let upstream = super::client_for(operator_kubeconfig).await;
        let gate = Arc::new(Mutex::new(None));
        let app = axum::Router::new().fallback(forward).with_state(Shared {
            upstream,
            gate: gate.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API proxy");
        let addr = listener.local_addr().expect("proxy address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let kubeconfig = dir.join("kubeconfig-via-proxy");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: proxy\n\
                 clusters: [{{name: proxy, cluster: {{server: \"http://{addr}\"}}}}]\n\
                 users: [{{name: proxy, user: {{}}}}]\n\
                 contexts: [{{name: proxy, context: {{cluster: proxy, user: proxy}}}}]\n"
            ),
        )
        .expect("write the proxy's kubeconfig");
        ApiProxy { kubeconfig, gate }
    }

    /// Holds the next request with this method whose path ends with `path_suffix`.
    pub fn hold_next(&self, method: Method, path_suffix: &str) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        *self.gate.lock().unwrap() = Some(Gate {
            method,
            path: path_suffix.to_string(),
            reached: reached_tx,
            go: go_rx,
        });
        Held { reached, go }
    }
}

/// Hop-by-hop headers and the ones the upstream client sets itself.
fn passes(name: &HeaderName) -> bool {
    ![
        header::HOST,
        header::AUTHORIZATION,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
}

async fn forward(State(s): State<Shared>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let held = {
        let mut gate = s.gate.lock().unwrap();
        match gate.as_ref() {
            Some(g) if g.method == parts.method && parts.uri.path().ends_with(&g.path) => {
                gate.take()
            }
            _ => None,
        }
    };
    if let Some(g) = held {
        let _ = g.reached.send(());
        // A dropped `go` (the test gave up) lets the request through as well.
        let _ = g.go.await;
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut up = axum::http::Request::builder()
        .method(parts.method)
        .uri(path);
    for (k, v) in parts.headers.iter().filter(|(k, _)| passes(k)) {
        up = up.header(k, v);
    }
    let up = match up.body(kube::client::Body::from(body)) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match s.upstream.send(up).await {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            let mut out = Response::builder().status(parts.status);
            for (k, v) in parts.headers.iter().filter(|(k, _)| passes(k)) {
                out = out.header(k, v);
            }
            out.body(Body::new(body))
                .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
