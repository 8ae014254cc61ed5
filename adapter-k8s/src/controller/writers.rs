//! Writer tracking for the operator: one task per Base polls each ready pod's agent `/_ha/leader`
//! every `leaderPollInterval` and wakes the Base's reconcile when the writer changes, so the
//! writer label and `status.currentWriter` follow within one poll.
//!
//! Every decision (rounds, busy pods, the writer kept with its lease, when to wake) is the core
//! machine `base_core::writer_poll::WriterPoller`'s; this is its tokio loop (the simulation has
//! the madsim one).

use super::clock::OperatorClock;
use base_core::reconcile::WriterView;
use base_core::tracker::{PollResult, ReplicaIx};
use base_core::wire::ConfigurationReport;
use base_core::writer_poll::WriterPoller;
use base_core::{Millis, NodeId};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Which Base a poll task serves: (kind, namespace, name).
pub type BaseKey = (base_core::crd::Kind, String, String);

/// A pod to poll: its name (the agent's node id) and the agent's base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod: String,
    pub url: String,
}

/// One Base's poller (the core machine) and the task that drives it.
struct Entry {
    poller: WriterPoller<Target>,
    task: tokio::task::JoinHandle<()>,
    /// Per pod: what its agent last said of its Base and the replica contract.
    contract: std::collections::BTreeMap<String, bool>,
    /// Per pod: the voting configuration its agent last reported.
    configurations: std::collections::BTreeMap<String, ConfigurationReport>,
}

/// Shared by the reconcilers and the poll tasks.
#[derive(Clone)]
pub struct Writers {
    inner: Arc<Mutex<HashMap<BaseKey, Entry>>>,
    http: reqwest::Client,
    wake: mpsc::UnboundedSender<BaseKey>,
    /// The operator's one clock: the tracker is fed on it and leases are judged on it.
    clock: OperatorClock,
}

/// How long one `/_ha/leader` poll may take before it counts as failed.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

fn millis(d: Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Writers {
    pub fn new(wake: mpsc::UnboundedSender<BaseKey>) -> Self {
        Self::with_poll_timeout(wake, POLL_TIMEOUT)
    }

    /// As [`Writers::new`], with another poll timeout (tests use one that never fires, so what
    /// they observe cannot come from a poll giving up).
    pub fn with_poll_timeout(wake: mpsc::UnboundedSender<BaseKey>, timeout: Duration) -> Self {
        Self::with_clock(wake, timeout, OperatorClock::new())
    }

    pub fn with_clock(
        wake: mpsc::UnboundedSender<BaseKey>,
        timeout: Duration,
        clock: OperatorClock,
    ) -> Self {
        Writers {
            inner: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            wake,
            clock,
        }
    }

    /// The operator's one clock (see `controller::clock`).
    pub fn clock(&self) -> OperatorClock {
        self.clock
    }

    /// The `now` a reconcile plans at (`Observed::now`): on the clock the writers it returns are
    /// confirmed on, which `reconcile::operations` compares it with.
    pub fn plan_now(&self) -> Millis {
        self.clock.plan_now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BaseKey, Entry>> {
        // A poisoned map only means a poll task panicked mid-update; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts or updates tracking of a Base; returns the writer as last polled, if its lease has not
    /// passed (`writer_poll::live_writer`).
    pub fn track(
        &self,
        key: BaseKey,
        targets: Vec<Target>,
        interval: Duration,
    ) -> Option<WriterView> {
        let targets: Vec<(NodeId, Target)> = targets
            .into_iter()
            .map(|t| (NodeId::new(t.pod.clone()), t))
            .collect();
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&key)
            && e.poller.interval() == millis(interval)
            && !e.task.is_finished()
        {
            // A pod no longer polled says nothing any more.
            e.contract
                .retain(|pod, _| targets.iter().any(|(id, _)| id.as_str() == pod));
            e.configurations
                .retain(|pod, _| targets.iter().any(|(id, _)| id.as_str() == pod));
            e.poller.set_targets(targets);
            return e.poller.writer(self.clock.now());
        }
        if let Some(old) = map.remove(&key) {
            old.task.abort();
        }
        let mut poller = WriterPoller::new(millis(interval));
        poller.set_targets(targets);
        let task = tokio::spawn(poll_loop(self.clone(), key.clone()));
        map.insert(
            key,
            Entry {
                poller,
                task,
                contract: Default::default(),
                configurations: Default::default(),
            },
        );
        None
    }

    /// Per pod: whether its Base implements the replica contract, as its agent last said
    /// (`X-Base-Replica-Contract` on `/_ha/leader`); pods not heard from are absent.
    pub fn replication_contract(&self, key: &BaseKey) -> std::collections::BTreeMap<String, bool> {
        self.lock()
            .get(key)
            .map(|e| e.contract.clone())
            .unwrap_or_default()
    }

    /// Per pod: the voting configuration its agent last reported (`/_ha/leader`).
    pub fn configurations(
        &self,
        key: &BaseKey,
    ) -> std::collections::BTreeMap<String, ConfigurationReport> {
        self.lock()
            .get(key)
            .map(|e| e.configurations.clone())
            .unwrap_or_default()
    }

    /// Records a pod's reported configuration; true when it changed (the rollout waits on it).
    fn set_configuration(&self, key: &BaseKey, pod: &str, c: Option<ConfigurationReport>) -> bool {
        let mut map = self.lock();
        let Some(e) = map.get_mut(key) else {
            return false;
        };
        match c {
            Some(c) => e.configurations.insert(pod.to_string(), c.clone()) != Some(c),
            None => e.configurations.remove(pod).is_some(),
        }
    }

    /// Records what a pod's agent said; true when it changed (the reconcile must hear of it).
    fn set_contract(&self, key: &BaseKey, pod: &str, ok: bool) -> bool {
        self.lock()
            .get_mut(key)
            .is_some_and(|e| e.contract.insert(pod.to_string(), ok) != Some(ok))
    }

    pub fn untrack(&self, key: &BaseKey) {
        if let Some(e) = self.lock().remove(key) {
            e.task.abort();
        }
    }

    /// Runs `f` on the poller of `key`; `None` once the Base is no longer tracked.
    fn with<R>(&self, key: &BaseKey, f: impl FnOnce(&mut WriterPoller<Target>) -> R) -> Option<R> {
        self.lock().get_mut(key).map(|e| f(&mut e.poller))
    }
}

/// One poll; with the answer, what the agent says of its Base and the replica contract
/// (`X-Base-Replica-Contract`: `Some(true)` implemented, `Some(false)` not, `None` not said).
async fn poll_one(
    http: &reqwest::Client,
    url: &str,
) -> (PollResult, Option<bool>, Option<ConfigurationReport>) {
    let answer = async {
        let resp = http.get(format!("{url}/_ha/leader")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let contract = resp
            .headers()
            .get(base_core::wire::HEADER_REPLICA_CONTRACT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v.trim() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            });
        let body = resp.bytes().await.ok()?;
        let answer = base_core::wire::parse_leader_answer(&body).ok()?;
        let claim = base_core::tracker::LeaderClaim::from_answer(&answer).ok()?;
        Some((claim, contract, answer.configuration))
    };
    match answer.await {
        Some((claim, contract, configuration)) => {
            (PollResult::Answered(claim), contract, configuration)
        }
        None => (PollResult::Failed, None, None),
    }
}

/// What one poll said besides the claim: the pod, its agent's word on the replica contract, and
/// the configuration it reported (`None` after a failed poll: nothing was said).
type Said = (String, Option<bool>, Option<Option<ConfigurationReport>>);

/// One poll of `target`, tagged with where its answer goes.
async fn poll_tagged(
    http: reqwest::Client,
    target: Target,
    generation: u64,
    ix: ReplicaIx,
) -> (u64, ReplicaIx, PollResult, Said) {
    let (result, contract, configuration) = poll_one(&http, &target.url).await;
    let answered = matches!(result, PollResult::Answered(_));
    let said = (target.pod, contract, answered.then_some(configuration));
    (generation, ix, result, said)
}

/// The tokio loop of the core `WriterPoller`: start the polls a round asks for, feed each answer
/// as it arrives, wake the reconcile and bring the next round forward when it says so.
async fn poll_loop(w: Writers, key: BaseKey) {
    let mut in_flight = FuturesUnordered::new();
    let mut next_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            Some((generation, ix, result, said)) = in_flight.next(), if !in_flight.is_empty() => {
                let (pod, contract, configuration): Said = said;
                if let Some(c) = configuration
                    && w.set_configuration(&key, pod.as_str(), c)
                {
                    let _ = w.wake.send(key.clone());
                }
                if let Some(ok) = contract
                    && w.set_contract(&key, pod.as_str(), ok)
                {
                    if ok {
                        info!(base = %key.2, namespace = %key.1, %pod, "the Base implements the replica contract");
                    } else {
                        warn!(base = %key.2, namespace = %key.1, %pod,
                            "the Base does not implement the replica contract: its writes are acknowledged without a quorum and a failover can lose them");
                    }
                    let _ = w.wake.send(key.clone());
                }
                let now = w.clock.now();
                let Some((answered, writer)) = w.with(&key, |p| {
                    let a = p.on_answer(now, generation, ix, result);
                    (a, p.writer(now))
                }) else {
                    return;
                };
                debug!(base = %key.2, replica = ix, effect = ?answered.effect, "polled");
                if let Some(within) = answered.renew_within {
                    let at = tokio::time::Instant::now() + Duration::from_millis(within.0);
                    next_round = next_round.min(at);
                }
                if answered.wake {
                    info!(base = %key.2, namespace = %key.1, ?writer, "writer changed");
                    let _ = w.wake.send(key.clone());
                }
            }
            () = tokio::time::sleep_until(next_round) => {
                let Some((polls, interval)) = w.with(&key, |p| (p.start_round(), p.interval())) else {
                    return;
                };
                for poll in polls {
                    in_flight.push(poll_tagged(w.http.clone(), poll.target, poll.generation, poll.replica));
                }
                next_round = tokio::time::Instant::now() + Duration::from_millis(interval.0);
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

    /// A fake agent naming itself the writer, with a lease `lease_ms` from each answer; while
    /// `silent` is set it takes requests and never answers (an unreachable pod).
    async fn fake_agent(
        pod: &'static str,
        lease_ms: u64,
        silent: Arc<AtomicBool>,
        clock: OperatorClock,
    ) -> String {
        let app = axum::Router::new().route(
            "/_ha/leader",
            axum::routing::get(move || {
                let silent = silent.clone();
                async move {
                    if silent.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let lease = format_rfc3339(Millis(clock.now().0 + lease_ms));
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
    async fn track_until_woken(targets: &[Target], clock: OperatorClock) -> (Writers, BaseKey) {
        let (wake, mut woken) = mpsc::unbounded_channel();
        let w = Writers::with_clock(wake, NO_TIMEOUT, clock);
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

    /// What an agent says of its Base and the replica contract (`X-Base-Replica-Contract`) is
    /// kept per pod and reaches the reconcile (which reports `ReplicationContract=False`); a pod
    /// that says nothing is not listed, and one no longer polled is forgotten.
    #[tokio::test]
    async fn the_agents_word_on_the_replica_contract_is_kept_per_pod() {
        let agent = |header: Option<&'static str>| async move {
            let app = axum::Router::new().route(
                "/_ha/leader",
                axum::routing::get(move || async move {
                    let body = r#"{"leader_url":"","node_id":"","term":1,"lease_expires":""}"#;
                    let mut r = axum::response::IntoResponse::into_response(body);
                    if let Some(h) = header {
                        r.headers_mut().insert(
                            "x-base-replica-contract",
                            axum::http::HeaderValue::from_static(h),
                        );
                    }
                    r
                }),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", l.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(l, app).await });
            url
        };
        let targets = vec![
            target("b-0", agent(Some("0")).await),
            target("b-1", agent(Some("1")).await),
            target("b-2", agent(None).await),
        ];
        let (wake, _woken) = mpsc::unbounded_channel();
        let w = Writers::with_clock(wake, NO_TIMEOUT, OperatorClock::new());
        let key: BaseKey = (Kind::Base, "ns".into(), "b".into());
        let _ = w.track(key.clone(), targets.clone(), INTERVAL);
        let want: std::collections::BTreeMap<String, bool> =
            [("b-0".to_string(), false), ("b-1".to_string(), true)].into();
        let start = tokio::time::Instant::now();
        while w.replication_contract(&key) != want {
            assert!(
                start.elapsed() < DEADLINE,
                "{:?}",
                w.replication_contract(&key)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = w.track(key.clone(), targets[1..].to_vec(), INTERVAL);
        assert_eq!(
            w.replication_contract(&key),
            [("b-1".to_string(), true)].into()
        );
        w.untrack(&key);
    }

    /// b-0 takes every poll and never answers, and here a poll never times out: the wake-up can
    /// only come from b-1's answer reaching the tracker while b-0's poll is still open. A loop
    /// that waited for every poll of a round (or for b-0 before b-1) would never wake.
    #[tokio::test]
    async fn an_unreachable_pod_does_not_hold_up_the_writer() {
        let clock = OperatorClock::new();
        let targets = vec![
            target(
                "b-0",
                fake_agent("b-0", 60_000, Arc::new(AtomicBool::new(true)), clock).await,
            ),
            target(
                "b-1",
                fake_agent("b-1", 60_000, Arc::default(), clock).await,
            ),
        ];
        let (w, key) = track_until_woken(&targets, clock).await;
        let writer = w.track(key.clone(), targets, INTERVAL);
        assert_eq!(writer.map(|v| (v.pod, v.term)), Some(("b-1".into(), 3)));
        w.untrack(&key);
    }

    /// Once b-0 stops answering (its polls hang and, here, never fail), only the end of its last
    /// lease can make it no writer: a reconcile then sees none. Kept forever, it never would.
    #[tokio::test]
    async fn a_writer_that_stops_answering_is_no_writer_once_its_lease_passes() {
        let clock = OperatorClock::new();
        let silent = Arc::new(AtomicBool::new(false));
        let targets = vec![target(
            "b-0",
            fake_agent("b-0", 2_000, silent.clone(), clock).await,
        )];
        let (w, key) = track_until_woken(&targets, clock).await;
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

    /// One clock (the drift this fixed): the `now` a reconcile plans at and the writer's
    /// `confirmed_at`, which `reconcile::operations` compares (a switchover is `Done` on an answer
    /// from after the request), must be read from one clock. Here the operator's clock started
    /// 10 minutes off the system's wall clock, as after an NTP step; the agent's lease is on the
    /// operator's clock. The writer answered just now, so its confirmation is within the poll
    /// interval of the plan's `now`. Before, `observe` stamped the system's wall clock while the
    /// confirmation was on the lease clock: 10 minutes apart here, a switchover `Done` early (or
    /// refused late) in a real cluster.
    #[tokio::test]
    async fn the_plan_and_the_writers_confirmation_read_one_clock() {
        let clock = OperatorClock::shifted(-600_000);
        let targets = vec![target(
            "b-0",
            fake_agent("b-0", 60_000, Arc::default(), clock).await,
        )];
        let (w, key) = track_until_woken(&targets, clock).await;
        let writer = w
            .track(key.clone(), targets, INTERVAL)
            .expect("b-0 is the writer");
        let plan_now = w.plan_now();
        assert!(
            plan_now.0 + 1_000 >= writer.confirmed_at.0
                && writer.confirmed_at.0 + DEADLINE.as_millis() as u64 >= plan_now.0,
            "the plan's now {plan_now:?} and the confirmation {:?} are on two clocks",
            writer.confirmed_at
        );
        w.untrack(&key);
    }
}
