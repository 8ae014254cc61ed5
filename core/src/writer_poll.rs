//! The operator's writer poller: which pods to poll in a round, which answers count, the writer
//! kept with its lease, and when the reconcile must be woken. The tokio loop
//! (adapter-k8s `controller::writers`) and the madsim loop (sim `gateway::operator_poll_loop`)
//! both only start the polls [`WriterPoller::start_round`] returns, feed each answer to
//! [`WriterPoller::on_answer`] as it arrives, and act on what it says.
//!
//! - A round polls every target whose last poll has ended: a pod whose poll still runs (an
//!   unreachable pod holds one until the client's timeout) is skipped, never waited for.
//! - Each answer goes to a [`Tracker`] built for the current targets (rebuilt, with a new
//!   generation, when the reconcile hands over another list: answers to polls of an older list
//!   would land on the wrong replicas, so they are dropped).
//! - The writer the tracker names is kept with the end of its lease; a reconcile that reads it
//!   once the lease has passed sees no writer ([`live_writer`]): by then it may have been deposed.
//! - The reconcile is woken when the writer it may have seen changes ([`writer_changed`]),
//!   including when the kept writer's lease had passed before a new answer renewed it.
//! - While a writer is known, the next round comes before its lease passes
//!   ([`Answered::renew_within`], the tracker's own rule `Tracker::next_poll`).

use crate::ids::{Millis, NodeId};
use crate::reconcile::WriterView;
use crate::tracker::{PollEffect, PollResult, ReplicaIx, Tracker, TrackerConfig};

/// The writer as last polled, and the end of its lease as the tracker reported it.
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

/// One poll to start: target `target` is replica `replica` of tracker `generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poll<T> {
    pub generation: u64,
    pub replica: ReplicaIx,
    pub target: T,
}

/// What one answer changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// What the tracker made of it (`None`: an answer to a poll of an older target list).
    pub effect: Option<PollEffect>,
    /// The writer the reconcile may have seen changed: wake it now.
    pub wake: bool,
    /// A writer is known: start the next round within this long, so it is polled again before
    /// its lease passes.
    pub renew_within: Option<Millis>,
}

/// One Base's writer poller; `T` is how the loop reaches a target (a URL, a simulated host).
#[derive(Clone, Debug)]
pub struct WriterPoller<T> {
    interval: Millis,
    /// The targets the last reconcile handed over.
    targets: Vec<(NodeId, T)>,
    /// The tracker of the current generation and the targets it was built for (index = replica).
    tracker: Option<(Vec<(NodeId, T)>, Tracker)>,
    generation: u64,
    /// Replicas whose poll of the current generation still runs.
    busy: Vec<bool>,
    writer: Option<PolledWriter>,
    /// The planted `stale-operator-writer`: answers held until the round's slowest poll ends.
    #[cfg(madsim)]
    held: Vec<(ReplicaIx, PollResult)>,
}

impl<T: Clone + PartialEq> WriterPoller<T> {
    /// A poller that starts a round every `interval` (sooner while a writer's lease needs it).
    pub fn new(interval: Millis) -> Self {
        WriterPoller {
            interval,
            targets: Vec::new(),
            tracker: None,
            generation: 0,
            busy: Vec::new(),
            writer: None,
            #[cfg(madsim)]
            held: Vec::new(),
        }
    }

    pub fn interval(&self) -> Millis {
        self.interval
    }

    /// The reconcile hands over the pods to poll (each pod with an IP that is not being deleted);
    /// they take effect at the next round.
    pub fn set_targets(&mut self, targets: Vec<(NodeId, T)>) {
        self.targets = targets;
    }

    /// The writer a reconcile at `now` sees ([`live_writer`]).
    pub fn writer(&self, now: Millis) -> Option<WriterView> {
        if crate::buggify!(StaleOperatorWriter) {
            // Planted: the operator before its fix kept the writer past its lease, and had no
            // confirmation time (every view looked fresh).
            return self.writer.as_ref().map(|p| WriterView {
                confirmed_at: now,
                ..p.view.clone()
            });
        }
        live_writer(self.writer.as_ref(), now)
    }

    /// The writer as last polled, whether or not its lease has passed.
    pub fn last_polled(&self) -> Option<&PolledWriter> {
        self.writer.as_ref()
    }

    /// Whether the current round's tracker polls `target`.
    pub fn polls(&self, target: &T) -> bool {
        self.tracker
            .as_ref()
            .is_some_and(|(targets, _)| targets.iter().any(|(_, t)| t == target))
    }

    /// A round is due: the tracker rebuilt if the targets changed, then every target whose last
    /// poll has ended is to be polled now (marked busy until its answer comes).
    pub fn start_round(&mut self) -> Vec<Poll<T>> {
        // Planted `stale-operator-writer`: as the operator before its fix, a round lasts until
        // its slowest poll ends.
        if crate::buggify!(StaleOperatorWriter) && self.busy.iter().any(|b| *b) {
            return Vec::new();
        }
        if self
            .tracker
            .as_ref()
            .is_none_or(|(t, _)| *t != self.targets)
        {
            let ids = self.targets.iter().map(|(id, _)| id.clone()).collect();
            // The operator keeps no read-your-writes pins.
            let cfg = TrackerConfig::new(self.interval, Millis(0));
            self.tracker = Tracker::new(ids, cfg)
                .ok()
                .map(|t| (self.targets.clone(), t));
            self.generation += 1;
            self.busy = vec![false; self.targets.len()];
            #[cfg(madsim)]
            self.held.clear();
        }
        let Some((targets, _)) = &self.tracker else {
            return Vec::new();
        };
        let mut polls = Vec::new();
        for (ix, (_, target)) in targets.iter().enumerate() {
            if !self.busy[ix] {
                self.busy[ix] = true;
                polls.push(Poll {
                    generation: self.generation,
                    replica: ix,
                    target: target.clone(),
                });
            }
        }
        polls
    }

    /// The poll of `replica` of tracker `generation` ended at `now` with `result`.
    pub fn on_answer(
        &mut self,
        now: Millis,
        generation: u64,
        replica: ReplicaIx,
        result: PollResult,
    ) -> Answered {
        if self.tracker.is_none() || generation != self.generation {
            return Answered {
                effect: None,
                wake: false,
                renew_within: None,
            };
        }
        if let Some(b) = self.busy.get_mut(replica) {
            *b = false;
        }
        #[cfg(madsim)]
        if crate::buggify!(StaleOperatorWriter) {
            return self.held_answer(now, replica, result);
        }
        self.apply(now, replica, result)
    }

    /// The planted `stale-operator-writer`: an answer is held until every poll of its round has
    /// ended, then all are fed at once.
    #[cfg(madsim)]
    fn held_answer(&mut self, now: Millis, replica: ReplicaIx, result: PollResult) -> Answered {
        self.held.push((replica, result));
        let mut answered = Answered {
            effect: None,
            wake: false,
            renew_within: None,
        };
        if self.busy.iter().any(|b| *b) {
            return answered;
        }
        for (replica, result) in std::mem::take(&mut self.held) {
            let one = self.apply(now, replica, result);
            answered.wake |= one.wake;
            answered.effect = one.effect.or(answered.effect);
            answered.renew_within = one.renew_within.or(answered.renew_within);
        }
        answered
    }

    /// Feeds one answer of the current generation to its tracker.
    fn apply(&mut self, now: Millis, replica: ReplicaIx, result: PollResult) -> Answered {
        let Some((_, tracker)) = self.tracker.as_mut() else {
            return Answered {
                effect: None,
                wake: false,
                renew_within: None,
            };
        };
        let effect = tracker.on_poll(now, replica, result);
        let named = tracker.writer(now);
        let writer = named.and_then(|(ix, term, lease_expires)| {
            tracker.replica_id(ix).map(|id| PolledWriter {
                view: WriterView {
                    pod: id.to_string(),
                    term: term.0,
                    confirmed_at: tracker.answered_at(ix).unwrap_or(Millis::ZERO),
                },
                lease_expires,
            })
        });
        // Planted `fixed-poll`: no round brought forward for the writer's lease.
        let renew_within = named
            .filter(|_| !crate::buggify!(FixedPoll))
            .map(|(ix, _, _)| {
                let at = tracker.next_poll(now, ix, now, self.interval).at;
                Millis(at.0.saturating_sub(now.0))
            });
        let wake = writer_changed(self.writer.as_ref(), writer.as_ref(), now);
        self.writer = writer;
        Answered {
            effect: Some(effect),
            wake,
            renew_within,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{LeaderClaim, WriterClaim};

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

    fn claim(pod: &str, term: u64, lease_until: u64) -> PollResult {
        PollResult::Answered(LeaderClaim {
            term: crate::Term(term),
            writer: Some(WriterClaim {
                node: NodeId::new(pod),
                lease_expires: Millis(lease_until),
            }),
        })
    }

    fn targets(n: u32) -> Vec<(NodeId, u32)> {
        (0..n).map(|i| (NodeId::new(format!("b-{i}")), i)).collect()
    }

    /// A pod whose poll still runs is not polled again, the others are; an answer to a poll of
    /// an older target list is dropped; a writer's answer brings the next round forward to before
    /// its lease passes.
    #[test]
    fn rounds_skip_busy_pods_and_drop_answers_of_old_targets() {
        let mut p = WriterPoller::new(Millis(1_000));
        p.set_targets(targets(2));
        let first = p.start_round();
        assert_eq!(first.iter().map(|q| q.target).collect::<Vec<_>>(), [0, 1]);
        let a = p.on_answer(Millis(10), first[1].generation, 1, claim("b-1", 3, 910));
        assert!(a.wake);
        assert!(a.renew_within.is_some_and(|d| d < Millis(900)), "{a:?}");
        // b-0's poll still runs: the next round polls only b-1.
        let second = p.start_round();
        assert_eq!(second.iter().map(|q| q.target).collect::<Vec<_>>(), [1]);
        assert!(p.polls(&0) && !p.polls(&5));
        // A new list: b-0's old answer lands nowhere, and the writer is unchanged by it.
        p.set_targets(targets(3));
        let third = p.start_round();
        assert_eq!(third.len(), 3);
        let stale = p.on_answer(Millis(20), first[0].generation, 0, claim("b-0", 9, 5_000));
        assert_eq!((stale.effect, stale.wake), (None, false));
        assert_eq!(p.writer(Millis(20)).map(|w| w.pod), Some("b-1".into()));
    }

    /// The drift this fixed: the simulation's copy of the poller woke the reconcile only when
    /// (pod, term) changed, so when the writer's lease passed on the poller's clock (a reconcile
    /// then planned with no writer) and the same writer answered again, nothing woke the
    /// reconcile; the adapter's `writer_changed` did. Both now run this machine; it must wake.
    #[test]
    fn the_same_writer_answering_after_its_lease_passed_wakes_the_reconcile() {
        let mut p = WriterPoller::new(Millis(1_000));
        p.set_targets(targets(1));
        let g = p.start_round()[0].generation;
        assert!(p.on_answer(Millis(0), g, 0, claim("b-0", 3, 900)).wake);
        assert!(p.start_round().len() == 1);
        // Renewed in time: no wake.
        assert!(!p.on_answer(Millis(500), g, 0, claim("b-0", 3, 1_400)).wake);
        assert_eq!(p.writer(Millis(1_500)), None, "the lease has passed");
        p.start_round();
        let late = p.on_answer(Millis(2_000), g, 0, claim("b-0", 3, 2_900));
        assert!(
            late.wake,
            "the reconcile saw no writer since 1 400 ms: {late:?}"
        );
        assert_eq!(p.writer(Millis(2_000)).map(|w| w.term), Some(3));
    }
}
