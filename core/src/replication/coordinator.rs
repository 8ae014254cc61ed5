//! The agent's replication decisions, between the election ([`crate::quasar::Node`]) and its
//! store (the replica contract, `docs/replica-contract.md`): which role and term to push to the
//! store and when, what commit the writer's store is told, which client write answers may be
//! released, whom a replica pulls from, when a new writer may serve strong reads, and the store
//! position the election is given. Inputs in, effects out, time passed in; the agent's tokio
//! shell performs the effects and feeds back what it observed.
//!
//! One [`Coordinator`] per agent. While the node is writer of a term, and once the store has
//! confirmed that role (its answer names its log's shape), a [`Writer`] of that term counts
//! commit from the peers' positions (heartbeat acks and the pulls of their agents) and holds the
//! client writes; every other case releases a held write as `CommitUnknown`, never `Committed`.

use super::log::{LogPosition, LogShape, ShapeError};
use super::quorum::QuorumConfig;
use super::writer::{Outcome, WriteId, Writer, WriterEffect, WriterInput};
use crate::{Millis, NodeId, Term};
use std::collections::BTreeMap;

/// Whether the local store implements the replica contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    /// Not known yet (the store has not answered).
    Unknown,
    /// `GET /_replica/state` answers with the contract's header.
    Supported,
    /// It answered 404, or without the contract's header: the agent runs it as before the
    /// contract (no held writes, no role push), and says so.
    Absent,
}

/// The store's role, as it reports it and as the agent orders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreRole {
    Writer,
    Replica,
}

/// What the election says, after each of its steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElectionView {
    pub term: Term,
    /// This node holds the writer role of `term` (its lease is checked separately, at use).
    pub is_writer: bool,
    /// The writer this node follows or is (`None` if none is known).
    pub leader: Option<NodeId>,
    /// The leader's client URL (for the store's `307` on strong reads).
    pub leader_url: String,
    /// For a writer: each peer's position from its last ok heartbeat ack of this term.
    pub peer_positions: BTreeMap<NodeId, u64>,
    /// The election's configuration as a quorum rule (`quasar::Node::quorum_config`): the
    /// writer counts commits by it, both majorities while it is joint. `None` (a node that
    /// joined and holds no configuration yet) keeps the last one known.
    pub config: Option<QuorumConfig>,
}

impl ElectionView {
    /// The view of `node` at `now`, as every shell gives it to its [`Coordinator`] after each
    /// step of the election: the leader is the node itself while it is writer; the peers'
    /// positions count only while it is the writer of its current term (acks of an older term
    /// say nothing about this term's log); `url_of` names a node's client URL.
    pub fn of(
        node: &crate::quasar::Node,
        now: Millis,
        url_of: impl Fn(&NodeId) -> String,
    ) -> ElectionView {
        let is_writer = node.role() == crate::quasar::Role::Writer;
        let leader = if is_writer {
            Some(node.id().clone())
        } else {
            node.leader().cloned()
        };
        ElectionView {
            term: node.term(),
            is_writer,
            leader_url: leader.as_ref().map(&url_of).unwrap_or_default(),
            leader,
            peer_positions: if is_writer && node.writer_view(now).term == node.term() {
                node.peer_positions()
            } else {
                BTreeMap::new()
            },
            config: node.quorum_config().cloned(),
        }
    }
}

/// What the store reported (`GET /_replica/state`, or an answer that carries its state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreView {
    pub role: StoreRole,
    pub term: Term,
    pub epoch: u64,
    pub last: LogPosition,
    pub commit: u64,
    pub term_start: u64,
}

/// `PUT /_replica/role`'s body. `want_shape` asks the answer to carry the log's shape (the
/// writer's agent needs it once per term to start its [`Writer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleOrder {
    pub role: StoreRole,
    pub term: Term,
    pub writer_id: Option<NodeId>,
    pub writer_url: String,
    pub commit: u64,
    pub want_shape: bool,
}

/// How the store answered a [`RoleOrder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleAnswer {
    /// Done: its state, and its log's shape if asked.
    Done {
        state: StoreView,
        shape: Option<LogShape>,
    },
    /// `409 stale_term`: the store follows a later term than the order's.
    StaleTerm { store_term: Term },
    /// Anything else (unreachable, 5xx, `needs_snapshot`): retried.
    Failed,
}

/// One input to [`Coordinator::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorInput {
    /// Time passed: role re-sends, held writes past their deadline.
    Tick,
    /// The election's view after one of its steps.
    Election(ElectionView),
    /// The store's state, from any answer that carries it.
    Store(StoreView),
    /// The store does not implement the contract.
    ContractAbsent,
    /// The answer to the last [`CoordinatorEffect::PushRole`].
    RoleAnswered {
        order: RoleOrder,
        answer: RoleAnswer,
    },
    /// A replica's agent pulled the log after `after`: its store durably holds that entry.
    Pull { peer: NodeId, after: LogPosition },
    /// The store answered a client write with its log entry `at`: hold the answer until that
    /// entry commits, or release it as unknown at `deadline`.
    Hold {
        write: WriteId,
        at: LogPosition,
        deadline: Millis,
    },
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorEffect {
    /// Send this to the store (`PUT /_replica/role`) and report the answer; at most one is in
    /// flight.
    PushRole(RoleOrder),
    /// Give the election the store's durable position (`quasar::Input::Position`).
    Position { epoch: u64, position: u64 },
    /// Answer a held client write.
    Release { write: WriteId, outcome: Outcome },
    /// The store does not implement the contract (report it: a warning, a metric).
    ContractAbsent,
    /// The store turned out to implement the contract after all (it was absent before).
    ContractPresent,
    /// Something that cannot be true was reported (a log line); the state stayed safe.
    Anomaly(String),
}

/// After a failed role push, wait this long before the next attempt.
pub const ROLE_RETRY_MS: u64 = 50;

#[derive(Clone, Debug)]
struct Parked {
    at: LogPosition,
    deadline: Millis,
}

/// The agent's replication bookkeeping (see the module docs).
#[derive(Clone, Debug)]
pub struct Coordinator {
    me: NodeId,
    self_url: String,
    config: QuorumConfig,
    resend_ms: u64,
    contract: Contract,
    election: ElectionView,
    store: Option<StoreView>,
    writer: Option<Writer>,
    /// Holds that came before the [`Writer`] of their term (the store answered a write between
    /// confirming the role and the agent hearing of it).
    parked: BTreeMap<WriteId, Parked>,
    in_flight: Option<RoleOrder>,
    /// The last order the store confirmed, and when it was sent.
    confirmed: Option<(RoleOrder, Millis)>,
    retry_at: Millis,
    /// The last `(epoch, position)` given to the election.
    reported: Option<(u64, u64)>,
}

impl Coordinator {
    /// The coordinator of `me` (reachable by clients at `self_url`) in a cluster of `config`
    /// (until the election's view brings its configuration, which then always wins); the
    /// store's role is re-sent every `resend_ms` even when nothing changed.
    pub fn new(me: NodeId, self_url: String, config: QuorumConfig, resend_ms: u64) -> Self {
        Coordinator {
            me,
            self_url,
            config,
            resend_ms: resend_ms.max(1),
            contract: Contract::Unknown,
            election: ElectionView::default(),
            store: None,
            writer: None,
            parked: BTreeMap::new(),
            in_flight: None,
            confirmed: None,
            retry_at: Millis(0),
            reported: None,
        }
    }

    pub fn contract(&self) -> Contract {
        self.contract
    }
    /// The quorum rule commits are counted by (the election's configuration, once it gave one).
    pub fn config(&self) -> &QuorumConfig {
        &self.config
    }
    pub fn store(&self) -> Option<&StoreView> {
        self.store.as_ref()
    }
    /// The writer's commit index, while this node is a writer whose store confirmed the role.
    pub fn commit(&self) -> Option<u64> {
        self.writer.as_ref().map(Writer::commit)
    }
    pub fn held_count(&self) -> usize {
        self.writer.as_ref().map_or(0, Writer::held_count) + self.parked.len()
    }

    /// The store confirmed the writer role of `term` and the agent counts its commit.
    pub fn writer_ready(&self, term: Term) -> bool {
        self.writer.as_ref().is_some_and(|w| w.term() == term)
    }

    /// Strong reads may be served (with the election's lease, checked by the caller): the
    /// writer's no-op of `term` is committed, so its commit includes every write acknowledged
    /// by an earlier writer (Raft §8).
    pub fn strong_reads_ready(&self, term: Term) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.term() == term && w.strong_reads_ready())
    }

    /// Whom this node's store pulls the log from: the writer it follows (never itself).
    pub fn pull_source(&self) -> Option<(NodeId, Term)> {
        if self.contract != Contract::Supported || self.election.is_writer {
            return None;
        }
        let leader = self.election.leader.clone()?;
        (leader != self.me).then_some((leader, self.election.term))
    }

    /// Feed one input at `now`.
    #[must_use = "the effects must be performed"]
    pub fn step(&mut self, now: Millis, input: CoordinatorInput) -> Vec<CoordinatorEffect> {
        let mut out = Vec::new();
        match input {
            CoordinatorInput::Tick => {
                if let Some(w) = self.writer.as_mut() {
                    Self::perform_result(w.step(now, WriterInput::Tick), &mut out);
                }
                let late: Vec<WriteId> = self
                    .parked
                    .iter()
                    .filter(|(_, p)| now >= p.deadline)
                    .map(|(w, _)| *w)
                    .collect();
                for write in late {
                    self.parked.remove(&write);
                    out.push(release(write, Outcome::CommitUnknown));
                }
            }
            CoordinatorInput::Election(view) => self.on_election(now, view, &mut out),
            CoordinatorInput::Store(view) => self.on_store(now, view, &mut out),
            CoordinatorInput::ContractAbsent => {
                if self.contract != Contract::Absent {
                    self.contract = Contract::Absent;
                    out.push(CoordinatorEffect::ContractAbsent);
                    // Nothing can be vouched for by a store that names no entries.
                    self.step_down(now, &mut out);
                }
            }
            CoordinatorInput::RoleAnswered { order, answer } => {
                self.on_role_answer(now, order, answer, &mut out)
            }
            CoordinatorInput::Pull { peer, after } => {
                if let Some(w) = self.writer.as_mut() {
                    let input = WriterInput::PeerPosition {
                        peer,
                        position: after,
                    };
                    Self::perform_result(w.step(now, input), &mut out);
                }
            }
            CoordinatorInput::Hold {
                write,
                at,
                deadline,
            } => self.hold(now, write, at, deadline, &mut out),
        }
        self.maybe_push(now, &mut out);
        self.check();
        out
    }

    fn on_election(&mut self, now: Millis, view: ElectionView, out: &mut Vec<CoordinatorEffect>) {
        let was = (self.election.term, self.election.is_writer);
        if was != (view.term, view.is_writer) && self.writer.is_some() {
            self.step_down(now, out);
        }
        if !view.is_writer || view.term != was.0 {
            // Holds parked for a term this node no longer writes can never be vouched for.
            for (write, _) in std::mem::take(&mut self.parked) {
                out.push(release(write, Outcome::CommitUnknown));
            }
        }
        let fresh: Vec<(NodeId, u64)> = view
            .peer_positions
            .iter()
            .filter(|(p, pos)| self.election.peer_positions.get(*p) != Some(*pos))
            .map(|(p, pos)| (p.clone(), *pos))
            .collect();
        if let Some(config) = view.config.clone()
            && config != self.config
        {
            self.config = config.clone();
            if let Some(w) = self.writer.as_mut() {
                Self::perform(w.set_config(config), out);
            }
        }
        self.election = view;
        if let Some(w) = self.writer.as_mut() {
            for (peer, position) in fresh {
                let input = WriterInput::PeerPosition {
                    peer,
                    position: LogPosition::decode(position),
                };
                Self::perform_result(w.step(now, input), out);
            }
        }
    }

    fn on_store(&mut self, now: Millis, view: StoreView, out: &mut Vec<CoordinatorEffect>) {
        if self.contract == Contract::Absent {
            out.push(CoordinatorEffect::ContractPresent);
        }
        self.contract = Contract::Supported;
        let report = (view.epoch, encode(view.last));
        if self.reported.is_none_or(|r| report > r) {
            self.reported = Some(report);
            out.push(CoordinatorEffect::Position {
                epoch: report.0,
                position: report.1,
            });
        }
        if let Some(w) = self.writer.as_mut()
            && view.role == StoreRole::Writer
            && view.term == w.term()
            && view.last.term == w.term()
            && view.last.index > w.log().last().index
        {
            let input = WriterInput::Appended { last: view.last };
            Self::perform_result(w.step(now, input), out);
        }
        self.store = Some(view);
    }

    fn on_role_answer(
        &mut self,
        now: Millis,
        order: RoleOrder,
        answer: RoleAnswer,
        out: &mut Vec<CoordinatorEffect>,
    ) {
        if self.in_flight.as_ref() == Some(&order) {
            self.in_flight = None;
        }
        match answer {
            RoleAnswer::Done { state, shape } => {
                self.on_store(now, state.clone(), out);
                self.confirmed = Some((order.clone(), now));
                let ours = order.role == StoreRole::Writer
                    && self.election.is_writer
                    && order.term == self.election.term
                    && state.role == StoreRole::Writer
                    && state.term == order.term;
                if ours && self.writer.is_none() {
                    match shape {
                        Some(shape) => self.start_writer(now, order.term, shape, &state, out),
                        None => self.confirmed = None, // ask again, with the shape
                    }
                }
            }
            RoleAnswer::StaleTerm { store_term } => {
                out.push(CoordinatorEffect::Anomaly(format!(
                    "the store follows term {store_term}, later than the election's {}",
                    order.term
                )));
                self.retry_at = Millis(now.0.saturating_add(self.resend_ms));
            }
            RoleAnswer::Failed => {
                self.retry_at = Millis(now.0.saturating_add(ROLE_RETRY_MS));
            }
        }
    }

    fn start_writer(
        &mut self,
        now: Millis,
        term: Term,
        shape: LogShape,
        state: &StoreView,
        out: &mut Vec<CoordinatorEffect>,
    ) {
        if shape.last().term != term || shape.first_index_of(term) != Some(state.term_start) {
            out.push(CoordinatorEffect::Anomaly(format!(
                "the store's log {} does not start term {term} at its no-op {}",
                shape.last(),
                state.term_start
            )));
            self.confirmed = None;
            return;
        }
        let (writer, effects) = Writer::new(
            self.me.clone(),
            term,
            self.config.clone(),
            shape,
            state.commit,
        );
        // The store appended the no-op when it took the role (its `term_start`).
        assert!(
            effects == vec![WriterEffect::AppendNoop { term }],
            "replication: a new writer's first effect is its no-op"
        );
        let w = self.writer.insert(writer);
        for (peer, position) in &self.election.peer_positions {
            let input = WriterInput::PeerPosition {
                peer: peer.clone(),
                position: LogPosition::decode(*position),
            };
            Self::perform_result(w.step(now, input), out);
        }
        for (write, p) in std::mem::take(&mut self.parked) {
            self.hold(now, write, p.at, p.deadline, out);
        }
    }

    fn hold(
        &mut self,
        now: Millis,
        write: WriteId,
        at: LogPosition,
        deadline: Millis,
        out: &mut Vec<CoordinatorEffect>,
    ) {
        match self.writer.as_mut() {
            Some(w) if w.term() == at.term => {
                // The store's answer proves it holds everything up to `at`, all of our term
                // after its no-op: the state it published may simply not have reached us yet.
                if at.index > w.log().last().index {
                    let input = WriterInput::Appended { last: at };
                    Self::perform_result(w.step(now, input), out);
                }
                let input = WriterInput::Hold {
                    write,
                    at,
                    deadline,
                };
                Self::perform_result(w.step(now, input), out);
            }
            None if self.election.is_writer
                && self.election.term == at.term
                && self.contract != Contract::Absent
                && now < deadline =>
            {
                self.parked.insert(write, Parked { at, deadline });
            }
            _ => out.push(release(write, Outcome::CommitUnknown)),
        }
    }

    fn step_down(&mut self, now: Millis, out: &mut Vec<CoordinatorEffect>) {
        if let Some(mut w) = self.writer.take() {
            Self::perform_result(w.step(now, WriterInput::StepDown), out);
        }
        for (write, _) in std::mem::take(&mut self.parked) {
            out.push(release(write, Outcome::CommitUnknown));
        }
    }

    /// The order the store should hold now, if any.
    fn desired(&self) -> Option<RoleOrder> {
        if self.contract != Contract::Supported {
            return None;
        }
        let e = &self.election;
        Some(if e.is_writer {
            RoleOrder {
                role: StoreRole::Writer,
                term: e.term,
                writer_id: Some(self.me.clone()),
                writer_url: self.self_url.clone(),
                commit: self.writer.as_ref().map_or(0, Writer::commit),
                want_shape: self.writer.is_none(),
            }
        } else {
            RoleOrder {
                role: StoreRole::Replica,
                term: e.term,
                writer_id: e.leader.clone(),
                writer_url: e.leader_url.clone(),
                commit: 0,
                want_shape: false,
            }
        })
    }

    fn maybe_push(&mut self, now: Millis, out: &mut Vec<CoordinatorEffect>) {
        if self.in_flight.is_some() || now < self.retry_at {
            return;
        }
        let Some(order) = self.desired() else { return };
        // A fresh election term 0 (nothing known yet) is nothing to tell the store.
        if order.term == Term(0) {
            return;
        }
        let due = match &self.confirmed {
            None => true,
            Some((sent, at)) => *sent != order || now.0 >= at.0.saturating_add(self.resend_ms),
        };
        if due {
            self.in_flight = Some(order.clone());
            self.confirmed = None;
            out.push(CoordinatorEffect::PushRole(order));
        }
    }

    fn perform_result(
        result: Result<Vec<WriterEffect>, super::WriterError>,
        out: &mut Vec<CoordinatorEffect>,
    ) {
        match result {
            Ok(effects) => Self::perform(effects, out),
            Err(e) => out.push(CoordinatorEffect::Anomaly(e.to_string())),
        }
    }

    fn perform(effects: Vec<WriterEffect>, out: &mut Vec<CoordinatorEffect>) {
        for effect in effects {
            match effect {
                WriterEffect::Release { write, outcome } => out.push(release(write, outcome)),
                // A new commit reaches the store with the next role push (`desired`); the
                // store appended its no-op itself; shipments are the store's (the agents carry
                // bytes).
                WriterEffect::Committed { .. }
                | WriterEffect::AppendNoop { .. }
                | WriterEffect::Ship { .. } => {}
            }
        }
    }

    fn check(&self) {
        assert!(
            self.writer.is_none()
                || (self.election.is_writer
                    && self.writer.as_ref().map(Writer::term) == Some(self.election.term)),
            "replication: a Writer kept for a term this node does not write"
        );
        assert!(
            self.contract != Contract::Absent || (self.writer.is_none() && self.parked.is_empty()),
            "replication: writes held for a store without the contract"
        );
    }
}

fn release(write: WriteId, outcome: Outcome) -> CoordinatorEffect {
    CoordinatorEffect::Release { write, outcome }
}

/// The election's encoding of a store position (saturated: a store past the encoding's range
/// only ever reports more).
fn encode(p: LogPosition) -> u64 {
    p.encode().unwrap_or(u64::MAX)
}

/// A log's shape from its wire form: the base `(term, index)`, each run's `(term, first index)`,
/// and the last index. Refused (never a panic) if the runs are not a log.
pub fn shape_from_runs(
    base: LogPosition,
    runs: &[(Term, u64)],
    last_index: u64,
) -> Result<LogShape, ShapeError> {
    let mut shape = LogShape::new(base);
    for (k, &(term, first)) in runs.iter().enumerate() {
        let end = runs.get(k + 1).map_or(last_index, |&(_, next)| next - 1);
        if first != shape.last().index + 1 || end < first {
            return Err(ShapeError::PastEnd {
                index: first,
                last: shape.last().index,
            });
        }
        shape.append(term, end - first + 1)?;
    }
    if shape.last().index != last_index {
        return Err(ShapeError::PastEnd {
            index: last_index,
            last: shape.last().index,
        });
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }
    fn pos(term: u64, index: u64) -> LogPosition {
        LogPosition::new(Term(term), index)
    }
    fn coordinator() -> Coordinator {
        let config = QuorumConfig::simple(ids(&["a", "b", "c"])).unwrap();
        Coordinator::new(NodeId::from("a"), "http://a".into(), config, 1000)
    }
    fn store(role: StoreRole, term: u64, last: LogPosition, commit: u64, start: u64) -> StoreView {
        StoreView {
            role,
            term: Term(term),
            epoch: 0,
            last,
            commit,
            term_start: start,
        }
    }
    fn writer_view(term: u64, positions: &[(&str, LogPosition)]) -> ElectionView {
        ElectionView {
            term: Term(term),
            is_writer: true,
            leader: Some(NodeId::from("a")),
            leader_url: "http://a".into(),
            peer_positions: positions
                .iter()
                .map(|(p, l)| (NodeId::from(*p), l.encode().unwrap()))
                .collect(),
            config: None,
        }
    }
    fn pushes(out: &[CoordinatorEffect]) -> Vec<RoleOrder> {
        out.iter()
            .filter_map(|e| match e {
                CoordinatorEffect::PushRole(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }
    fn released(out: &[CoordinatorEffect]) -> Vec<(u64, Outcome)> {
        out.iter()
            .filter_map(|e| match e {
                CoordinatorEffect::Release { write, outcome } => Some((write.0, *outcome)),
                _ => None,
            })
            .collect()
    }

    /// A writer whose store holds `(1, 1..=3)` then its no-op `(2, 4)`, commit 3.
    fn promoted(c: &mut Coordinator) {
        let out = c.step(
            Millis(0),
            CoordinatorInput::Store(store(StoreRole::Replica, 1, pos(1, 3), 3, 0)),
        );
        assert!(out.contains(&CoordinatorEffect::Position {
            epoch: 0,
            position: pos(1, 3).encode().unwrap()
        }));
        let out = c.step(Millis(1), CoordinatorInput::Election(writer_view(2, &[])));
        let order = pushes(&out).pop().expect("the writer role is pushed");
        assert_eq!(
            (order.role, order.term, order.want_shape),
            (StoreRole::Writer, Term(2), true)
        );
        assert!(!c.writer_ready(Term(2)));
        let shape = shape_from_runs(pos(0, 0), &[(Term(1), 1), (Term(2), 4)], 4).unwrap();
        let answer = RoleAnswer::Done {
            state: store(StoreRole::Writer, 2, pos(2, 4), 3, 4),
            shape: Some(shape),
        };
        let _ = c.step(Millis(2), CoordinatorInput::RoleAnswered { order, answer });
        assert!(c.writer_ready(Term(2)));
    }

    /// A write is released Committed only once a majority holds its entry (a pull or an ack
    /// proving the peer holds it); strong reads wait for the term's no-op to commit; the commit
    /// reaches the store with the next role push.
    #[test]
    fn writes_are_released_at_commit_and_strong_reads_wait_for_the_noop() {
        let mut c = coordinator();
        promoted(&mut c);
        assert!(!c.strong_reads_ready(Term(2)));
        let hold = CoordinatorInput::Hold {
            write: WriteId(7),
            at: pos(2, 5),
            deadline: Millis(1000),
        };
        assert!(released(&c.step(Millis(3), hold)).is_empty());
        // The older term's entries on a majority commit nothing (§5.4.2).
        let pull = |after| CoordinatorInput::Pull {
            peer: NodeId::from("b"),
            after,
        };
        assert!(released(&c.step(Millis(4), pull(pos(1, 3)))).is_empty());
        assert_eq!(c.commit(), Some(3));
        let out = c.step(Millis(5), pull(pos(2, 4)));
        assert!(released(&out).is_empty());
        assert!(c.strong_reads_ready(Term(2)));
        let out = c.step(
            Millis(6),
            CoordinatorInput::Election(writer_view(2, &[("c", pos(2, 5))])),
        );
        assert_eq!(released(&out), vec![(7, Outcome::Committed)]);
        assert_eq!(c.commit(), Some(5));
        // One push in flight at a time: the new commit goes out once the previous one is
        // answered.
        assert!(pushes(&c.step(Millis(7), CoordinatorInput::Tick)).is_empty());
        let order = c.in_flight.clone().expect("a push in flight");
        assert_eq!(order.commit, 3);
        let answer = RoleAnswer::Done {
            state: store(StoreRole::Writer, 2, pos(2, 5), 3, 4),
            shape: None,
        };
        let out = c.step(Millis(8), CoordinatorInput::RoleAnswered { order, answer });
        let sent: Vec<u64> = pushes(&out).iter().map(|o| o.commit).collect();
        assert_eq!(sent, vec![5], "the new commit is pushed");
    }

    /// Every other ending is CommitUnknown: the deadline, a step-down, a hold for another term,
    /// and a hold before the store confirmed the role that the term then never gets.
    #[test]
    fn holds_end_unknown_without_a_quorum() {
        let mut c = coordinator();
        promoted(&mut c);
        let hold = |w, index, deadline| CoordinatorInput::Hold {
            write: WriteId(w),
            at: pos(2, index),
            deadline: Millis(deadline),
        };
        let _ = c.step(Millis(3), hold(1, 5, 10));
        let _ = c.step(Millis(3), hold(2, 6, 1000));
        assert_eq!(
            released(&c.step(Millis(10), CoordinatorInput::Tick)),
            vec![(1, Outcome::CommitUnknown)]
        );
        let other = CoordinatorInput::Hold {
            write: WriteId(3),
            at: pos(1, 2),
            deadline: Millis(1000),
        };
        assert_eq!(
            released(&c.step(Millis(11), other)),
            vec![(3, Outcome::CommitUnknown)]
        );
        let mut lost = writer_view(3, &[]);
        lost.is_writer = false;
        lost.leader = Some(NodeId::from("b"));
        let out = c.step(Millis(12), CoordinatorInput::Election(lost));
        assert_eq!(released(&out), vec![(2, Outcome::CommitUnknown)]);
        assert!(!c.writer_ready(Term(2)));
        assert_eq!(c.pull_source(), Some((NodeId::from("b"), Term(3))));

        // A hold that arrives before the role is confirmed is parked, then dropped with the term.
        let mut c = coordinator();
        let _ = c.step(
            Millis(0),
            CoordinatorInput::Store(store(StoreRole::Replica, 1, pos(1, 3), 3, 0)),
        );
        let _ = c.step(Millis(1), CoordinatorInput::Election(writer_view(2, &[])));
        assert!(released(&c.step(Millis(2), hold(4, 5, 100))).is_empty());
        assert_eq!(c.held_count(), 1);
        assert_eq!(
            released(&c.step(Millis(100), CoordinatorInput::Tick)),
            vec![(4, Outcome::CommitUnknown)]
        );
    }

    /// A store without the contract gets no role push and holds nothing; the shape of a log
    /// is checked, not believed; the role is re-sent regularly and retried after a failure.
    #[test]
    fn contract_absence_shapes_and_resends() {
        let mut c = coordinator();
        let out = c.step(Millis(0), CoordinatorInput::ContractAbsent);
        assert_eq!(out, vec![CoordinatorEffect::ContractAbsent]);
        let out = c.step(Millis(1), CoordinatorInput::Election(writer_view(2, &[])));
        assert!(pushes(&out).is_empty());
        let hold = CoordinatorInput::Hold {
            write: WriteId(1),
            at: pos(2, 5),
            deadline: Millis(100),
        };
        assert_eq!(
            released(&c.step(Millis(2), hold)),
            vec![(1, Outcome::CommitUnknown)]
        );

        assert!(shape_from_runs(pos(0, 0), &[(Term(2), 1), (Term(1), 3)], 4).is_err());
        assert!(shape_from_runs(pos(0, 0), &[(Term(1), 2)], 4).is_err());
        assert!(shape_from_runs(pos(0, 0), &[(Term(1), 1)], 0).is_err());
        assert!(shape_from_runs(pos(1, 5), &[], 5).is_ok());

        let mut c = coordinator();
        let mut view = writer_view(1, &[]);
        view.is_writer = false;
        view.leader = Some(NodeId::from("b"));
        let _ = c.step(Millis(0), CoordinatorInput::Election(view));
        let out = c.step(
            Millis(0),
            CoordinatorInput::Store(store(StoreRole::Replica, 0, pos(0, 0), 0, 0)),
        );
        let order = pushes(&out).pop().expect("the replica role is pushed");
        assert_eq!(order.writer_id, Some(NodeId::from("b")));
        let failed = CoordinatorInput::RoleAnswered {
            order: order.clone(),
            answer: RoleAnswer::Failed,
        };
        assert!(pushes(&c.step(Millis(1), failed)).is_empty());
        assert!(pushes(&c.step(Millis(1 + ROLE_RETRY_MS), CoordinatorInput::Tick)).len() == 1);
        let done = CoordinatorInput::RoleAnswered {
            order,
            answer: RoleAnswer::Done {
                state: store(StoreRole::Replica, 1, pos(0, 0), 0, 0),
                shape: None,
            },
        };
        assert!(pushes(&c.step(Millis(60), done)).is_empty());
        assert!(pushes(&c.step(Millis(500), CoordinatorInput::Tick)).is_empty());
        assert_eq!(
            pushes(&c.step(Millis(1060), CoordinatorInput::Tick)).len(),
            1
        );
    }
}
