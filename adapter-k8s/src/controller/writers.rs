//! Writer tracking for the operator: one task per Base polls each ready pod's agent `/_ha/leader`
//! every `leaderPollInterval`, feeds the core leader tracker, and wakes the Base's reconcile when the
//! writer changes, so the writer label and `status.currentWriter` follow within one poll.
//!
//! Each replica's answer goes to the tracker as it arrives, and a replica whose poll is still
//! running (an unreachable pod holds one for the 2 s timeout) is skipped, not waited for, so it
//! never holds up the others. The writer is kept with its lease, and a reconcile that reads it
//! after the lease has passed sees no writer: by then it may have been deposed.

use base_core::reconcile::WriterView;
use base_core::tracker::{PollResult, ReplicaIx, Tracker, TrackerConfig, parse_leader_claim};
use base_core::{Millis, NodeId};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
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

/// The writer as last polled, and the end of its lease as the tracker reported it (on
/// [`lease_clock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolledWriter {
    pub view: WriterView,
    pub lease_expires: Millis,
}

/// The writer a reconcile at `now` may act on: the one last polled, while its lease lasts. Once the
/// lease has passed it may have been deposed (a poll round held up, a partition): no writer, so the
/// plan waits rather than, say, report a switchover done because the old writer is still named.
pub fn live_writer(polled: Option<&PolledWriter>, now: Millis) -> Option<WriterView> {
    polled
        .filter(|p| p.lease_expires > now)
        .map(|p| p.view.clone())
}

/// Whether replacing the polled writer `old` with `new` at `now` must wake the reconcile: the
/// writer changed, or `old`'s lease had passed (a reconcile may have planned with no writer since).
pub fn writer_changed(old: Option<&PolledWriter>, new: Option<&PolledWriter>, now: Millis) -> bool {
    // Which node at which term: a fresh confirmation of the same writer is no change.
    fn who(p: Option<&PolledWriter>) -> Option<(&str, u64)> {
        p.map(|p| (p.view.pod.as_str(), p.view.term))
    }
    let live = |p: &&PolledWriter| p.lease_expires > now;
    who(old) != who(new) || who(old.filter(live)) != who(new.filter(live))
}

/// The clock the poll tasks feed the tracker and leases are judged on: Unix milliseconds read once,
/// then advanced by the monotonic clock, so a step of the wall clock cannot stretch a lease.
pub fn lease_clock() -> Millis {
    static CLOCK: OnceLock<crate::agent::clock::Clock> = OnceLock::new();
    CLOCK.get_or_init(crate::agent::clock::Clock::new).now()
}

struct Entry {
    targets: Vec<Target>,
    interval: Duration,
    writer: Option<PolledWriter>,
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

/// How long one `/_ha/leader` poll may take before it counts as failed.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

impl Writers {
    pub fn new(wake: mpsc::UnboundedSender<BaseKey>) -> Self {
        Self::with_poll_timeout(wake, POLL_TIMEOUT)
    }

    /// As [`Writers::new`], with another poll timeout (tests use one that never fires, so what
    /// they observe cannot come from a poll giving up).
    pub fn with_poll_timeout(wake: mpsc::UnboundedSender<BaseKey>, timeout: Duration) -> Self {
        Writers {
            inner: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BaseKey, Entry>> {
        // A poisoned map only means a poll task panicked mid-update; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts or updates tracking of a Base; returns the writer as last polled, if its lease has not
    /// passed ([`live_writer`]).
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
            return live_writer(e.writer.as_ref(), lease_clock());
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

    /// Stores the writer just polled; true when the reconcile must be woken ([`writer_changed`]).
    fn set_writer(&self, key: &BaseKey, writer: Option<PolledWriter>, now: Millis) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(key) else {
            return false;
        };
        let changed = writer_changed(e.writer.as_ref(), writer.as_ref(), now);
        e.writer = writer;
        changed
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

async fn poll_tagged(http: reqwest::Client, url: String, ix: ReplicaIx) -> (ReplicaIx, PollResult) {
    (ix, poll_one(&http, &url).await)
}

/// The writer the tracker knows at `now`, with its lease.
fn polled_writer(t: &Tracker, now: Millis) -> Option<PolledWriter> {
    t.writer(now).and_then(|(ix, term, lease_expires)| {
        t.replica_id(ix).map(|id| PolledWriter {
            view: WriterView {
                pod: id.to_string(),
                term: term.0,
                confirmed_at: t.answered_at(ix).unwrap_or(Millis::ZERO),
            },
            lease_expires,
        })
    })
}

/// Every `interval` each replica whose last poll has ended is polled again; each answer goes to the
/// tracker as it arrives. While a writer is known, the next round comes before its lease passes
/// (the lease may be shorter than the interval), so a healthy writer is never forgotten between
/// polls and its label never flaps.
async fn poll_loop(w: Writers, key: BaseKey, interval: Duration) {
    let mut tracker: Option<(Vec<Target>, Tracker)> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut busy: Vec<bool> = Vec::new();
    let mut next_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            Some((ix, result)) = in_flight.next(), if !in_flight.is_empty() => {
                busy[ix] = false;
                let Some((_, t)) = tracker.as_mut() else {
                    continue;
                };
                let now = lease_clock();
                let effect = t.on_poll(now, ix, result);
                debug!(base = %key.2, replica = ix, ?effect, "polled");
                let writer = polled_writer(t, now);
                // Poll the writer again before its lease passes: the core tracker's rule, the
                // gateway's too (`Tracker::next_poll`).
                if let Some((writer_ix, _, _)) = t.writer(now) {
                    let interval_ms = Millis(interval.as_millis() as u64);
                    let at = t.next_poll(now, writer_ix, now, interval_ms).at;
                    let soon = Duration::from_millis(at.0.saturating_sub(now.0));
                    next_round = next_round.min(tokio::time::Instant::now() + soon);
                }
                let view = writer.as_ref().map(|w| w.view.clone());
                if w.set_writer(&key, writer, now) {
                    info!(base = %key.2, namespace = %key.1, writer = ?view, "writer changed");
                    let _ = w.wake.send(key.clone());
                }
            }
            () = tokio::time::sleep_until(next_round) => {
                let Some(targets) = w.targets(&key) else {
                    return;
                };
                if tracker.as_ref().is_none_or(|(t, _)| *t != targets) {
                    let ids = targets.iter().map(|t| NodeId::new(t.pod.clone())).collect();
                    let cfg = TrackerConfig::new(Millis(interval.as_millis() as u64), Millis(0));
                    tracker = Tracker::new(ids, cfg).ok().map(|t| (targets.clone(), t));
                    // Answers to polls of the old list would land on the wrong replicas.
                    in_flight = FuturesUnordered::new();
                    busy = vec![false; targets.len()];
                }
                if let Some((targets, _)) = &tracker {
                    for (ix, tg) in targets.iter().enumerate() {
                        if !busy[ix] {
                            busy[ix] = true;
                            in_flight.push(poll_tagged(w.http.clone(), tg.url.clone(), ix));
                        }
                    }
                }
                next_round = tokio::time::Instant::now() + interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::clock::format_rfc3339;
    use base_core::crd::Kind;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn polled(pod: &str, term: u64, lease_expires: u64) -> PolledWriter {
        PolledWriter {
            view: WriterView {
                pod: pod.into(),
                term,
                confirmed_at: Millis::ZERO,
            },
            lease_expires: Millis(lease_expires),
        }
    }

    #[test]
    fn a_writer_whose_lease_has_passed_is_no_writer() {
        let w = polled("b-0", 3, 1_000);
        assert_eq!(live_writer(Some(&w), Millis(0)), Some(w.view.clone()));
        assert_eq!(live_writer(Some(&w), Millis(999)), Some(w.view.clone()));
        // The tracker's own rule: a lease ending at `now` is over.
        assert_eq!(live_writer(Some(&w), Millis(1_000)), None);
        assert_eq!(live_writer(Some(&w), Millis(3_000)), None);
        assert_eq!(live_writer(None, Millis(0)), None);
    }

    #[test]
    fn the_reconcile_is_woken_when_the_writer_it_may_have_seen_changes() {
        let (a, a_later) = (polled("b-0", 3, 1_000), polled("b-0", 3, 2_000));
        let b = polled("b-1", 4, 2_000);
        // A renewed lease, confirmed by a newer answer, changes nothing a reconcile sees.
        let mut a_confirmed = a_later.clone();
        a_confirmed.view.confirmed_at = Millis(400);
        assert!(!writer_changed(Some(&a), Some(&a_later), Millis(500)));
        assert!(!writer_changed(Some(&a), Some(&a_confirmed), Millis(500)));
        assert!(!writer_changed(None, None, Millis(500)));
        // Another writer, a new term, or none.
        assert!(writer_changed(Some(&a), Some(&b), Millis(500)));
        assert!(writer_changed(
            Some(&a),
            Some(&polled("b-0", 4, 2_000)),
            Millis(500)
        ));
        assert!(writer_changed(Some(&a), None, Millis(500)));
        assert!(writer_changed(None, Some(&a), Millis(500)));
        // `a`'s lease passed before it was renewed: a reconcile in between planned with no writer.
        assert!(writer_changed(Some(&a), Some(&a_later), Millis(1_500)));
    }

    /// A fake agent naming itself the writer, with a lease `lease_ms` from each answer; while
    /// `silent` is set it takes requests and never answers (an unreachable pod).
    async fn fake_agent(pod: &'static str, lease_ms: u64, silent: Arc<AtomicBool>) -> String {
        let app = axum::Router::new().route(
            "/_ha/leader",
            axum::routing::get(move || {
                let silent = silent.clone();
                async move {
                    if silent.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let lease = format_rfc3339(Millis(lease_clock().0 + lease_ms));
                    format!(
                        r#"{{"leader_url":"http://{pod}:8090","node_id":"{pod}","term":3,"lease_expires":"{lease}"}}"#
                    )
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    fn target(pod: &str, url: String) -> Target {
        Target {
            pod: pod.into(),
            url,
        }
    }

    const INTERVAL: Duration = Duration::from_millis(300);
    /// A poll that never gives up within a test.
    const NO_TIMEOUT: Duration = Duration::from_secs(3_600);
    /// Bound on waiting for a condition: generous, so only a real failure reaches it.
    const DEADLINE: Duration = Duration::from_secs(60);

    /// Starts tracking `targets` (polls never time out) and waits, bounded, for the first
    /// wake-up, which must be for this Base.
    async fn track_until_woken(targets: &[Target]) -> (Writers, BaseKey) {
        let (wake, mut woken) = mpsc::unbounded_channel();
        let w = Writers::with_poll_timeout(wake, NO_TIMEOUT);
        let key: BaseKey = (Kind::Base, "ns".into(), "b".into());
        assert_eq!(w.track(key.clone(), targets.to_vec(), INTERVAL), None);
        let got = tokio::time::timeout(DEADLINE, woken.recv()).await;
        assert_eq!(got.ok().flatten().as_ref(), Some(&key), "never woken");
        (w, key)
    }

    /// Polls `track` until `done` holds for the writer it returns, bounded by [`DEADLINE`].
    async fn until_writer(
        w: &Writers,
        key: &BaseKey,
        targets: &[Target],
        what: &str,
        done: impl Fn(&Option<WriterView>) -> bool,
    ) {
        let start = tokio::time::Instant::now();
        loop {
            let writer = w.track(key.clone(), targets.to_vec(), INTERVAL);
            if done(&writer) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "{what}: last {writer:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// b-0 takes every poll and never answers, and here a poll never times out: the wake-up can
    /// only come from b-1's answer reaching the tracker while b-0's poll is still open. A loop
    /// that waited for every poll of a round (or for b-0 before b-1) would never wake.
    #[tokio::test]
    async fn an_unreachable_pod_does_not_hold_up_the_writer() {
        let targets = vec![
            target(
                "b-0",
                fake_agent("b-0", 60_000, Arc::new(AtomicBool::new(true))).await,
            ),
            target("b-1", fake_agent("b-1", 60_000, Arc::default()).await),
        ];
        let (w, key) = track_until_woken(&targets).await;
        let writer = w.track(key.clone(), targets, INTERVAL);
        assert_eq!(writer.map(|v| (v.pod, v.term)), Some(("b-1".into(), 3)));
        w.untrack(&key);
    }

    /// Once b-0 stops answering (its polls hang and, here, never fail), only the end of its last
    /// lease can make it no writer: a reconcile then sees none. Kept forever, it never would.
    #[tokio::test]
    async fn a_writer_that_stops_answering_is_no_writer_once_its_lease_passes() {
        let silent = Arc::new(AtomicBool::new(false));
        let targets = vec![target(
            "b-0",
            fake_agent("b-0", 2_000, silent.clone()).await,
        )];
        let (w, key) = track_until_woken(&targets).await;
        until_writer(&w, &key, &targets, "b-0 as the writer", |v| {
            v.as_ref().is_some_and(|v| v.pod == "b-0")
        })
        .await;
        silent.store(true, Ordering::SeqCst);
        until_writer(&w, &key, &targets, "no writer once the lease passed", |v| {
            v.is_none()
        })
        .await;
        w.untrack(&key);
    }
}
