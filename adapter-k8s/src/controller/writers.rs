//! Writer tracking for the operator: one task per Base polls each ready pod's agent `/_ha/leader`
//! every `leaderPollInterval`, feeds the core leader tracker, and wakes the Base's reconcile when the
//! writer changes, so the writer label and `status.currentWriter` follow within one poll.

use base_core::reconcile::WriterView;
use base_core::tracker::{PollResult, Tracker, TrackerConfig, parse_leader_claim};
use base_core::{Millis, NodeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// Which Base a poll task serves: (kind, namespace, name).
pub type BaseKey = (base_core::crd::Kind, String, String);

/// A pod to poll: its name (the agent's node id) and the agent's base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    pub url: String,
}

struct Entry {
    targets: Vec<Target>,
    interval: Duration,
    writer: Option<WriterView>,
    task: tokio::task::JoinHandle<()>,
}

/// Shared by the reconcilers and the poll tasks.
#[derive(Clone)]
pub struct Writers {
    inner: Arc<Mutex<HashMap<BaseKey, Entry>>>,
    http: reqwest::Client,
    wake: mpsc::UnboundedSender<BaseKey>,
}

pub fn now_ms() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(d.as_millis() as u64)
}

impl Writers {
    pub fn new(wake: mpsc::UnboundedSender<BaseKey>) -> Self {
        Writers {
            inner: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BaseKey, Entry>> {
        // A poisoned map only means a poll task panicked mid-update; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts or updates tracking of a Base; returns the writer as last polled.
    pub fn track(
        &self,
        key: BaseKey,
        targets: Vec<Target>,
        interval: Duration,
    ) -> Option<WriterView> {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&key)
            && e.interval == interval
            && !e.task.is_finished()
        {
            e.targets = targets;
            return e.writer.clone();
        }
        if let Some(old) = map.remove(&key) {
            old.task.abort();
        }
        let task = tokio::spawn(poll_loop(self.clone(), key.clone(), interval));
        map.insert(
            key,
            Entry {
                targets,
                interval,
                writer: None,
                task,
            },
        );
        None
    }

    pub fn untrack(&self, key: &BaseKey) {
        if let Some(e) = self.lock().remove(key) {
            e.task.abort();
        }
    }

    fn targets(&self, key: &BaseKey) -> Option<Vec<Target>> {
        self.lock().get(key).map(|e| e.targets.clone())
    }

    fn set_writer(&self, key: &BaseKey, writer: Option<WriterView>) -> bool {
        let mut map = self.lock();
        match map.get_mut(key) {
            Some(e) if e.writer != writer => {
                e.writer = writer;
                true
            }
            _ => false,
        }
    }
}

async fn poll_one(http: &reqwest::Client, url: &str) -> PollResult {
    let answer = async {
        let resp = http.get(format!("{url}/_ha/leader")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.bytes().await.ok()?;
        parse_leader_claim(&body).ok()
    };
    match answer.await {
        Some(claim) => PollResult::Answered(claim),
        None => PollResult::Failed,
    }
}

async fn poll_loop(w: Writers, key: BaseKey, interval: Duration) {
    let mut tracker: Option<(Vec<Target>, Tracker)> = None;
    loop {
        let Some(targets) = w.targets(&key) else {
            return;
        };
        if tracker.as_ref().is_none_or(|(t, _)| *t != targets) {
            let ids = targets.iter().map(|t| NodeId::new(t.pod.clone())).collect();
            let cfg = TrackerConfig::new(Millis(interval.as_millis() as u64), Millis(0));
            tracker = Tracker::new(ids, cfg).ok().map(|t| (targets.clone(), t));
        }
        if let Some((targets, t)) = tracker.as_mut() {
            let results =
                futures::future::join_all(targets.iter().map(|tg| poll_one(&w.http, &tg.url)))
                    .await;
            let now = now_ms();
            for (ix, r) in results.into_iter().enumerate() {
                let effect = t.on_poll(now, ix, r);
                debug!(base = %key.2, replica = ix, ?effect, "polled");
            }
            let writer = t.writer(now).and_then(|(ix, term, _)| {
                t.replica_id(ix).map(|id| WriterView {
                    pod: id.to_string(),
                    term: term.0,
                })
            });
            if w.set_writer(&key, writer.clone()) {
                info!(base = %key.2, namespace = %key.1, writer = ?writer, "writer changed");
                let _ = w.wake.send(key.clone());
            }
        }
        // Poll again before the writer's lease passes (it may be shorter than the interval), so a
        // healthy writer is never forgotten between polls and its label never flaps.
        let wait = tracker
            .as_ref()
            .and_then(|(_, t)| t.writer(now_ms()))
            .map_or(interval, |(_, _, lease)| {
                interval.min(Duration::from_millis(
                    (lease.0.saturating_sub(now_ms().0) / 2).max(50),
                ))
            });
        tokio::time::sleep(wait).await;
    }
}
