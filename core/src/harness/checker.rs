//! The safety checker of a cluster of [`Node`]s, fed by whatever drives them ([`super::Nodes`]
//! feeds it every step): it sees every effect in order and each node's state after each step.
//!
//! Checked:
//! - never two writers in one term (`BecomeWriter`, across restarts);
//! - at no real instant do two nodes accept writes: each node's `can_accept_writes` window is
//!   computed exactly in real time, from the step that opened it to the step that closed it, or
//!   to the real instant its own clock reaches `lease_until` ([`AcceptWindows`]), whatever
//!   configurations the nodes count by; a fenced node never accepts writes nor wins;
//! - a node's term never goes down, across restarts too; it never grants two votes in one term
//!   and never changes a persisted vote; a granted vote and every term-bearing message are sent
//!   only after the term and vote that justify them were persisted; a writer won a persisted
//!   term and vote of its own;
//! - never two configurations persisted under one version, and a node's version never goes back;
//!   a node that is not a voter of its persisted configuration never asks for votes nor wins;
//!   every new writer holds a configuration at least as new as every one committed in an
//!   earlier term (Raft's leader completeness, for configurations);
//! - every new writer holds every position committed in an earlier term (leader completeness for
//!   the data), a position counting as committed once a writer could count it so: a quorum of its
//!   configuration, by the positions its followers acked in its term and its own.

use super::clock::Clock;
use crate::quasar::{ConfigVersion, Effect, Membership, Message, Node, PersistedState, Role};
use crate::{NodeId, Term};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The windows in which each node may accept writes, in real time, and the check that no two
/// of different nodes overlap. Times are in any unit (the harness: ms); the driver reports the
/// steps in real-time order.
///
/// A window opens at the step after which the node can accept writes, and lasts until a step
/// after which it cannot, or until its projected end (the real instant its own clock reaches its
/// lease), whichever comes first. When a window opens while another node's is open, they overlap
/// unless one of them closes at that very instant (a step later in the same instant): such a
/// pair waits until time moves on (or [`AcceptWindows::finish`]) to be judged.
#[derive(Clone, Debug, Default)]
pub struct AcceptWindows {
    /// Per node: the window open since `.0`, ending at `.1` (projected from its lease) at the
    /// latest.
    open: Vec<Option<(u64, u64)>>,
    /// Per node: its closed windows, in time order.
    closed: Vec<Vec<(u64, u64)>>,
    /// (node, other node, instant): the node opened a window at that instant while the other's
    /// was open.
    pending: Vec<(usize, usize, u64)>,
}

/// Two nodes that may both accept writes at real time `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub a: usize,
    pub b: usize,
    pub at: u64,
}

impl AcceptWindows {
    pub fn new(n: usize) -> AcceptWindows {
        AcceptWindows {
            open: vec![None; n],
            closed: vec![Vec::new(); n],
            pending: Vec::new(),
        }
    }

    /// Node `i` stepped at real time `now`: it may accept writes until real time `until`
    /// (`Some`, `until > now`) or not at all (`None`).
    pub fn observe(&mut self, i: usize, now: u64, until: Option<u64>) -> Option<Overlap> {
        let found = self.settle(now);
        match (self.open[i], until) {
            // Still accepting: the window goes on, to the new projection.
            (Some((start, end)), Some(until)) if end > now => {
                self.open[i] = Some((start, until));
            }
            (open, until) => {
                if let Some((start, end)) = open {
                    self.close(i, start, end.min(now));
                }
                self.open[i] = until.map(|u| (now, u));
                if until.is_some() {
                    for j in 0..self.open.len() {
                        if j != i && self.open[j].is_some_and(|(_, e)| e > now) {
                            self.pending.push((i, j, now));
                        }
                    }
                }
            }
        }
        found
    }

    /// Node `i` stopped at `now` (killed): its window ends.
    pub fn stop(&mut self, i: usize, now: u64) -> Option<Overlap> {
        let found = self.settle(now);
        if let Some((start, end)) = self.open[i].take() {
            self.close(i, start, end.min(now));
        }
        found
    }

    /// Time has reached `now`: no more steps before it. Judges the pairs opened before `now`.
    pub fn settle(&mut self, now: u64) -> Option<Overlap> {
        if self.pending.iter().all(|&(_, _, at)| at >= now) {
            return None;
        }
        let mut found = None;
        let pending = std::mem::take(&mut self.pending);
        for (i, j, at) in pending {
            if at >= now {
                self.pending.push((i, j, at));
            } else if found.is_none() && self.accepts_after(i, at) && self.accepts_after(j, at) {
                found = Some(Overlap { a: j, b: i, at });
            }
        }
        found
    }

    /// No more steps: every open window runs to its projected end. The last judgement.
    pub fn finish(&mut self) -> Option<Overlap> {
        let found = self.settle(u64::MAX);
        for i in 0..self.open.len() {
            if let Some((start, end)) = self.open[i].take() {
                self.close(i, start, end);
            }
        }
        found
    }

    /// Once time is past `at`: did node `k` accept writes right after `at` (a window with
    /// `start <= at < end`; an open one lasts at least to its projection or the present)?
    fn accepts_after(&self, k: usize, at: u64) -> bool {
        if let Some((s, e)) = self.open[k]
            && s <= at
        {
            return e > at;
        }
        for &(s, e) in self.closed[k].iter().rev() {
            if e <= at {
                return false;
            }
            if s <= at {
                return true;
            }
        }
        false
    }

    fn close(&mut self, i: usize, start: u64, end: u64) {
        if end > start {
            self.closed[i].push((start, end));
        }
    }

    /// Node `i`'s last window (closed or open), as `(start, projected end)`.
    pub fn last(&self, i: usize) -> Option<(u64, u64)> {
        self.open[i].or_else(|| self.closed[i].last().copied())
    }

    /// How many windows were closed so far.
    pub fn closed_count(&self) -> usize {
        self.closed.iter().map(Vec::len).sum()
    }
}

/// What the checker keeps (see the module doc).
#[derive(Clone, Debug)]
pub struct Checker {
    ids: Vec<NodeId>,
    /// Panic at the first violation (the fuzzer's way) instead of recording it.
    pub panic: bool,
    /// Check leader completeness for the data. Off where positions are not a model of the data
    /// (the election fuzz target moves any node's position anywhere).
    pub data_completeness: bool,
    violation: Option<String>,
    windows: AcceptWindows,
    /// Term → the node that became writer in it.
    writers: BTreeMap<Term, usize>,
    /// Every configuration persisted, by version (without its version): one per version.
    configs: HashMap<ConfigVersion, Membership>,
    /// (term in which a writer saw it committed, version): configurations committed so far.
    committed: BTreeSet<(Term, ConfigVersion)>,
    /// The newest committed version by term, kept with `committed` (for the completeness check).
    newest_committed: Option<(Term, ConfigVersion)>,
    /// Per term: the highest position its writer could count as committed.
    data_committed: BTreeMap<Term, u64>,
    /// Per node and term: the vote it granted.
    votes: HashMap<(usize, Term), NodeId>,
    max_term: Vec<Term>,
    fenced: Vec<bool>,
}

impl Checker {
    pub fn new(ids: Vec<NodeId>) -> Checker {
        let n = ids.len();
        Checker {
            ids,
            panic: false,
            data_completeness: true,
            violation: None,
            windows: AcceptWindows::new(n),
            writers: BTreeMap::new(),
            configs: HashMap::new(),
            committed: BTreeSet::new(),
            newest_committed: None,
            data_committed: BTreeMap::new(),
            votes: HashMap::new(),
            max_term: vec![Term(0); n],
            fenced: vec![false; n],
        }
    }

    /// The first violation, with the real time it was found at.
    pub fn violation(&self) -> Option<&String> {
        self.violation.as_ref()
    }

    pub fn windows(&self) -> &AcceptWindows {
        &self.windows
    }

    /// Term → the node that became writer in it.
    pub fn writers(&self) -> &BTreeMap<Term, usize> {
        &self.writers
    }

    /// The configurations committed so far, as (term a writer saw it committed in, version).
    pub fn committed(&self) -> &BTreeSet<(Term, ConfigVersion)> {
        &self.committed
    }

    pub fn violate(&mut self, now: u64, what: String) {
        assert!(!self.panic, "at real {now} ms: {what}");
        if self.violation.is_none() {
            self.violation = Some(format!("at real {now} ms: {what}"));
        }
    }

    /// Node `i`'s fence (its source of truth, which survives restarts) is now `fenced`.
    pub fn set_fenced(&mut self, i: usize, fenced: bool) {
        self.fenced[i] = fenced;
    }

    /// Node `i` started (or restarted) at real time `now`.
    pub fn started(&mut self, i: usize, now: u64, node: &Node, clock: &Clock) {
        if node.can_accept_writes(clock.local(now)) {
            self.violate(now, format!("{} accepts writes as it starts", self.ids[i]));
        }
        if node.term() < self.max_term[i] {
            let id = &self.ids[i];
            self.violate(now, format!("{id}: its term went down across a restart"));
        }
    }

    /// Node `i` stopped (killed) at real time `now`.
    pub fn stopped(&mut self, i: usize, now: u64) {
        if let Some(o) = self.windows.stop(i, now) {
            self.overlap(now, o);
        }
    }

    /// One effect of node `i` at real time `now`, in order, before it is performed. `disk` is
    /// what the node had persisted before it; `node` the node after the step.
    pub fn effect(
        &mut self,
        i: usize,
        now: u64,
        disk: &PersistedState,
        node: &Node,
        effect: &Effect,
    ) {
        let (role, held) = (node.role(), node.membership().map(|m| m.version));
        // A voter of the configuration it persisted (before its first persist: of the one it
        // started with).
        let voter = match &disk.membership {
            Some(m) => m.is_voter(&self.ids[i]),
            None => node.membership().is_some_and(|m| m.is_voter(&self.ids[i])),
        };
        let id = &self.ids[i];
        match effect {
            Effect::Persist {
                term,
                voted_for,
                membership,
            } => {
                if *term < disk.term {
                    return self.violate(now, format!("{id} persisted a lower term"));
                }
                if *term == disk.term && disk.voted_for.is_some() && *voted_for != disk.voted_for {
                    return self.violate(now, format!("{id} changed its vote in {term}"));
                }
                if let Some(v) = voted_for
                    && let Some(prev) = self.votes.insert((i, *term), v.clone())
                    && prev != *v
                {
                    return self.violate(now, format!("{id} voted twice in term {term}"));
                }
                if let Some(m) = membership {
                    if disk.membership.as_ref().map(|m| m.version) > Some(m.version) {
                        return self.violate(now, format!("{id}'s configuration went back"));
                    }
                    let content = m.restamped(ConfigVersion::default());
                    match self.configs.get(&m.version) {
                        Some(other) if *other != content => {
                            let what = format!(
                                "two configurations with version {}: {} and {}",
                                m.version,
                                other.describe(),
                                content.describe()
                            );
                            self.violate(now, what);
                        }
                        Some(_) => {}
                        None => {
                            self.configs.insert(m.version, content);
                        }
                    }
                }
            }
            Effect::BecomeWriter { term, .. } => {
                let term = *term;
                if role != Role::Writer {
                    return self.violate(now, format!("{id} won {term} but is not writer"));
                }
                if !voter {
                    let what = format!("{id} became writer of {term} but is not a voter");
                    return self.violate(now, what);
                }
                if self.fenced[i] {
                    let what = format!("fenced node {id} became writer of term {term}");
                    return self.violate(now, what);
                }
                if (disk.term, disk.voted_for.as_ref()) != (term, Some(id)) {
                    let what = format!("{id} won {term} with an unpersisted term or vote");
                    return self.violate(now, what);
                }
                // Leader completeness for configurations: the winner holds every configuration
                // committed in an earlier term (or a newer one).
                if let Some(&(t, v)) = self
                    .committed
                    .iter()
                    .filter(|(t, _)| *t < term)
                    .max_by_key(|(_, v)| *v)
                    && held < Some(v)
                {
                    let what = format!(
                        "{id} won term {term} holding configuration {held:?}, older than {v} committed in term {t}"
                    );
                    return self.violate(now, what);
                }
                // Leader completeness for the data: every position committed before.
                if let Some((t, p)) = self
                    .data_committed
                    .range(..term)
                    .map(|(t, p)| (*t, *p))
                    .max_by_key(|(_, p)| *p)
                    && self.data_completeness
                    && node.position() < p
                {
                    let what = format!(
                        "{id} won term {term} at position {}, behind position {p} committed in term {t}",
                        node.position()
                    );
                    return self.violate(now, what);
                }
                match self.writers.get(&term) {
                    Some(&other) if other != i => {
                        let what =
                            format!("two writers in term {term}: {} and {id}", self.ids[other]);
                        self.violate(now, what);
                    }
                    _ => {
                        self.writers.insert(term, i);
                    }
                }
            }
            Effect::Send { to, msg } => {
                if matches!(msg, Message::PreVote { .. } | Message::Vote { .. }) && !voter {
                    return self.violate(now, format!("{id} asked for votes but is not a voter"));
                }
                match msg {
                    Message::PreVote { .. } | Message::PreVoteResponse { .. } => {}
                    Message::VoteResponse {
                        term,
                        granted: true,
                        ..
                    } => {
                        if disk.term != *term || disk.voted_for.as_ref() != Some(to) {
                            let what =
                                format!("{id} granted a vote in {term} before persisting it");
                            self.violate(now, what);
                        }
                    }
                    m => {
                        if m.term() > disk.term {
                            let what = format!("{id} sent {} in an unpersisted term", m.kind());
                            self.violate(now, what);
                        }
                    }
                }
            }
            Effect::StepDown { .. } | Effect::LeaseRenewed { .. } => {}
        }
    }

    /// After node `i` stepped at real time `now` (its effects all seen): its term, the
    /// configuration it saw committed, and its accepting window.
    pub fn after_step(
        &mut self,
        i: usize,
        now: u64,
        node: &Node,
        clock: &Clock,
        term_before: Term,
    ) {
        let term = node.term();
        if term < term_before || term < self.max_term[i] {
            self.violate(now, format!("{}: its term went down", self.ids[i]));
        }
        self.max_term[i] = self.max_term[i].max(term);
        if node.role() == Role::Writer
            && let Some(m) = node.membership()
            && m.version.term == term
            && self.newest_committed != Some((term, m.version))
            && node.membership_committed()
        {
            self.committed.insert((term, m.version));
            self.newest_committed = Some((term, m.version));
        }
        if self.data_completeness
            && node.role() == Role::Writer
            && let Some(q) = node.quorum_config()
        {
            let mut acked = node.peer_positions();
            acked.insert(self.ids[i].clone(), node.position());
            // A follower ahead of its writer holds an older writer's positions, not this one's.
            let commit = q.committed_index(&acked).min(node.position());
            let seen = self.data_committed.entry(term).or_insert(0);
            *seen = (*seen).max(commit);
        }
        self.refresh_window(i, now, node, clock);
    }

    /// Node `i`'s accepting window after a step at `now` (or a change of its clock).
    pub fn refresh_window(&mut self, i: usize, now: u64, node: &Node, clock: &Clock) {
        let local = clock.local(now);
        let until = if node.can_accept_writes(local) {
            if self.fenced[i] {
                self.violate(now, format!("fenced node {} accepts writes", self.ids[i]));
            }
            let view = node.writer_view(local);
            match view.lease_until {
                Some(lease_until) if view.writer.as_ref() == Some(&self.ids[i]) => {
                    let end = clock.real_at(lease_until);
                    if end <= now {
                        let what = format!("{} accepts writes past its lease", self.ids[i]);
                        self.violate(now, what);
                    }
                    Some(end.max(now + 1))
                }
                _ => {
                    let what = format!("{} accepts writes but names no lease", self.ids[i]);
                    self.violate(now, what);
                    Some(now + 1)
                }
            }
        } else {
            None
        };
        if let Some(o) = self.windows.observe(i, now, until) {
            self.overlap(now, o);
        }
    }

    /// No more steps: every window runs to its projected end; the last overlap check.
    pub fn finish(&mut self, now: u64) {
        if let Some(o) = self.windows.finish() {
            self.overlap(now, o);
        }
    }

    /// Time has reached `now` (no more steps before it): judges the accept windows up to it.
    pub fn settle(&mut self, now: u64) {
        if let Some(o) = self.windows.settle(now) {
            self.overlap(now, o);
        }
    }

    fn overlap(&mut self, now: u64, o: Overlap) {
        let (a, b) = (&self.ids[o.a], &self.ids[o.b]);
        let what = format!("{a} and {b} both accept writes at real time {}", o.at);
        self.violate(now, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window opened while another's is open overlaps it, once time moves on.
    #[test]
    fn overlapping_windows_are_found() {
        let mut w = AcceptWindows::new(2);
        assert_eq!(w.observe(0, 10, Some(100)), None);
        assert_eq!(w.observe(1, 50, Some(200)), None);
        assert_eq!(w.settle(51), Some(Overlap { a: 0, b: 1, at: 50 }));
    }

    /// A hand-over within one instant (the old writer stops, then or before the new one
    /// starts) is no overlap; nor is a window that ended at its projection before the next.
    #[test]
    fn handovers_are_not_overlaps() {
        let mut w = AcceptWindows::new(2);
        w.observe(0, 10, Some(100));
        w.observe(1, 50, Some(200));
        w.observe(0, 50, None);
        assert_eq!(w.settle(51), None);
        w.observe(0, 300, Some(400));
        assert_eq!(w.observe(1, 400, Some(500)), None);
        assert_eq!(w.finish(), None);
    }

    /// A window that outlives its step (no step closes it) still overlaps a later one, found at
    /// the end; a window extended by a renewal at the very instant it would end is one window.
    #[test]
    fn open_windows_count_to_their_projection() {
        let mut w = AcceptWindows::new(2);
        w.observe(0, 10, Some(100));
        w.observe(0, 100, Some(190));
        assert_eq!(w.observe(1, 150, Some(160)), None);
        assert_eq!(
            w.finish(),
            Some(Overlap {
                a: 0,
                b: 1,
                at: 150
            })
        );
    }
}
