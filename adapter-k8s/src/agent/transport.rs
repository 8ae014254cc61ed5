//! Outbound peer messages: one task and one bounded queue per peer, each message a JSON POST to
//! the peer's `/_quasar/msg` (on its `--peer-port` when set) with a timeout, signed when the
//! agent has peer keys (see [`auth`](super::auth)). The election tolerates loss, so a full queue
//! or a failed POST drops the message; a message that waited too long is dropped rather than sent
//! late. A `401` (the peer does not know our `current` key yet: a rotation in progress) makes the
//! sender re-send the message at once signed with `previous`, and keep to `previous` for that peer
//! for [`KEY_FALLBACK`].

use super::auth::{HEADER_MAC, HEADER_NONCE, HEADER_TIMESTAMP, KEY_FALLBACK, PeerAuth};
use super::clock::Clock;
use base_core::NodeId;
use base_core::quasar::Envelope;
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The path every agent accepts peer messages on.
pub const MESSAGE_PATH: &str = "/_quasar/msg";
/// Messages waiting for one peer; beyond this new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 64;

pub struct Transport {
    queues: BTreeMap<NodeId, mpsc::Sender<(Instant, Envelope)>>,
}

/// What every per-peer sender shares.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    auth: Arc<PeerAuth>,
    clock: Clock,
    stale_after: Duration,
}

impl Transport {
    /// Starts one sender task per peer (`(id, base URL for peer messages)`). `timeout` bounds each
    /// POST; `stale_after` drops a message that waited longer than that in the queue.
    pub fn start(
        peers: &[(NodeId, String)],
        timeout: Duration,
        stale_after: Duration,
        auth: Arc<PeerAuth>,
        clock: Clock,
    ) -> Result<Transport, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let sender = Sender {
            client,
            auth,
            clock,
            stale_after,
        };
        let mut queues = BTreeMap::new();
        for (id, url) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(id.clone(), tx);
            let target = format!("{url}{MESSAGE_PATH}");
            tokio::spawn(sender.clone().send_loop(id.clone(), target, rx));
        }
        Ok(Transport { queues })
    }

    /// Queues a message; drops it (and says so at debug level) if the peer's queue is full.
    pub fn send(&self, envelope: Envelope) {
        let Some(queue) = self.queues.get(&envelope.to) else {
            tracing::warn!(to = %envelope.to, "message to an unknown peer dropped");
            return;
        };
        if let Err(e) = queue.try_send((Instant::now(), envelope)) {
            tracing::debug!(error = %e, "peer queue full: message dropped");
        }
    }
}

impl Sender {
    async fn post(
        &self,
        target: &str,
        body: &[u8],
        use_previous: bool,
    ) -> Result<StatusCode, reqwest::Error> {
        let mut request = self
            .client
            .post(target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(sig) = self.auth.sign(body, self.clock.now().0, use_previous) {
            request = request
                .header(HEADER_TIMESTAMP, sig.timestamp_ms.to_string())
                .header(HEADER_NONCE, sig.nonce)
                .header(HEADER_MAC, sig.mac);
        }
        Ok(request.send().await?.status())
    }

    async fn send_loop(
        self,
        peer: NodeId,
        target: String,
        mut rx: mpsc::Receiver<(Instant, Envelope)>,
    ) {
        let mut failing = false;
        let mut key_refused = false;
        // Sign with `previous` for this peer until then (it refused our `current`).
        let mut previous_until: Option<Instant> = None;
        while let Some((queued_at, envelope)) = rx.recv().await {
            if queued_at.elapsed() > self.stale_after {
                continue;
            }
            let kind = envelope.msg.kind();
            let body = match serde_json::to_vec(&envelope) {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!(error = %e, kind, "cannot encode a peer message");
                    continue;
                }
            };
            let use_previous = previous_until.is_some_and(|t| Instant::now() < t);
            let mut sent = self.post(&target, &body, use_previous).await;
            if matches!(sent, Ok(StatusCode::UNAUTHORIZED)) && self.auth.has_previous() {
                // A rotation under way: try the other key once, and remember which one worked.
                let retried = self.post(&target, &body, !use_previous).await;
                if matches!(&retried, Ok(s) if s.is_success()) {
                    previous_until = (!use_previous).then(|| Instant::now() + KEY_FALLBACK);
                    tracing::info!(%peer, previous = !use_previous, "peer accepted the other key");
                }
                sent = retried;
            }
            let refused = matches!(sent, Ok(StatusCode::UNAUTHORIZED));
            if refused != key_refused {
                key_refused = refused;
                if refused {
                    tracing::warn!(%peer, "the peer refuses our peer key (another Base's key, or a rotation it has not seen)");
                } else {
                    tracing::info!(%peer, "the peer accepts our peer key again");
                }
            }
            match sent {
                Ok(status) if status.is_success() => {
                    if failing {
                        tracing::info!(%peer, "peer reachable again");
                        failing = false;
                    }
                }
                Ok(status) => {
                    tracing::debug!(%peer, %status, kind, "peer refused a message");
                }
                Err(e) => {
                    if !failing {
                        tracing::info!(%peer, error = %e, "cannot reach peer");
                        failing = true;
                    }
                }
            }
        }
    }
}
