//! Outbound peer messages: one task and one bounded queue per peer, each message a JSON POST to
//! the peer's `/_quasar/msg` with a timeout. The election tolerates loss, so a full queue or a
//! failed POST drops the message; a message that waited too long is dropped rather than sent late.

use base_core::NodeId;
use base_core::quasar::Envelope;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The path every agent accepts peer messages on.
pub const MESSAGE_PATH: &str = "/_quasar/msg";
/// Messages waiting for one peer; beyond this new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 64;

pub struct Transport {
    queues: BTreeMap<NodeId, mpsc::Sender<(Instant, Envelope)>>,
}

impl Transport {
    /// Starts one sender task per peer. `timeout` bounds each POST; `stale_after` drops a message
    /// that waited longer than that in the queue.
    pub fn start(
        peers: &[(NodeId, String)],
        timeout: Duration,
        stale_after: Duration,
    ) -> Result<Transport, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let mut queues = BTreeMap::new();
        for (id, url) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(id.clone(), tx);
            let target = format!("{url}{MESSAGE_PATH}");
            tokio::spawn(send_loop(
                client.clone(),
                id.clone(),
                target,
                rx,
                stale_after,
            ));
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

async fn send_loop(
    client: reqwest::Client,
    peer: NodeId,
    target: String,
    mut rx: mpsc::Receiver<(Instant, Envelope)>,
    stale_after: Duration,
) {
    let mut failing = false;
    while let Some((queued_at, envelope)) = rx.recv().await {
        if queued_at.elapsed() > stale_after {
            continue;
        }
        let kind = envelope.msg.kind();
        match client.post(&target).json(&envelope).send().await {
            Ok(r) if r.status().is_success() => {
                if failing {
                    tracing::info!(%peer, "peer reachable again");
                    failing = false;
                }
            }
            Ok(r) => {
                tracing::debug!(%peer, status = %r.status(), kind, "peer refused a message");
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
