//! One replica: the production agent's machines driven as the tokio agent drives them, in front
//! of the simulated Base store (`store.rs`, on the pod's PVC). The election side is
//! `base_core::agent::Agent` (ticks, peer messages, the pod's annotations, SIGTERM, write
//! admission on arrival and right before the store applies, `/_ha/leader`, the members the
//! operator publishes); the replication side
//! is `base_core::replication::Coordinator`, fed as adapter-k8s `agent::driver` and
//! `agent::replication` feed it: the election's view and a tick after every step of the
//! election, the store's state after every change, each role push's answer, each pull a replica
//! makes, each client write the store logged (held until the coordinator releases it: committed,
//! or unknown). Replicas pull the writer's log (`GET /_replica/log`, long-polled at the writer)
//! and hand each shipment to their store, which performs the core `Replica` machine's decisions;
//! a replica whose needs the writer's log no longer holds fetches a snapshot. This file keeps the
//! madsim plumbing and the checkers; no decision is made here.

use crate::config::MAX_ORDINALS;
use crate::k8s::PodPhase;
use crate::store::{Next, Refusal};
use crate::world::{
    Agent, Entry, Out, Packet, Shared, World, WriteId, WriteReply, agent_addr, lock, ordinal_of,
    pod_id, send_all,
};
use base_core::agent::{
    Admission, Annotations, Config, Effect, HandOverCause, Input, ReadAdmission,
};
use base_core::control::TransferDecision;
use base_core::quasar::{Message, Role};
use base_core::replication::{
    Coordinator, CoordinatorEffect, CoordinatorInput, ElectionView, LogPosition, Outcome,
    QuorumConfig, ReplicaError, Shipment,
};
use base_core::{Millis, NodeId, Term};
use madsim::net::Endpoint;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// Real time between two `Tick`s of a node.
pub const TICK_MS: u64 = 10;
/// The hop from the agent to the Base process on localhost (where a pause can strike).
pub const FORWARD_HOP_MS: u64 = 2;
/// The agent's `--commit-timeout-ms`: how long a write's answer is held for its commit.
pub const COMMIT_TIMEOUT_MS: u64 = 1_000;
const COMMIT_POLL_MS: u64 = 5;
/// How long a pull waits at the writer for something new (adapter-k8s `PULL_WAIT_MS`).
pub const PULL_WAIT_MS: u64 = 2_000;
/// A pull (or snapshot request) to the same writer with no answer this long after it was sent
/// is given up (a lost packet stands for a TCP connection that stalls about that long; a writer
/// that changed drops the request at once).
const PULL_LOST_MS: u64 = PULL_WAIT_MS + 500;
/// Pause after a failed pull (adapter-k8s `agent::replication::RETRY`).
const PULL_RETRY_MS: u64 = 50;
/// How often the agent re-reads its pod's annotations file (adapter-k8s `agent::fence::FENCE_POLL`).
pub const FENCE_POLL_MS: u64 = 1_000;
/// The agent's default `--shutdown-transfer-timeout-ms`.
pub const SHUTDOWN_TRANSFER_TIMEOUT_MS: u64 = 3_000;
/// Invariant 8's name in reports.
const FENCED: &str = "8 a fenced node accepts no write";
/// Invariant 10's name in reports.
pub const NOT_A_VOTER: &str = "10 only a voter stands for election";
/// Invariant 5's name in reports.
const LOST: &str = "5 no acknowledged write is lost";
/// Invariant 11: what the election compares is the store's durable log.
const POSITION: &str = "11 the election holds its store's position";
/// Invariant 12: a replica applies only committed entries (no writer contradicts one).
const APPLIED: &str = "12 an applied entry is never contradicted";

/// The URL clients and peers reach the agent of `ordinal` at.
pub fn agent_url(ordinal: i32) -> String {
    format!(
        "http://{}.{}-hs.{}.svc:{}",
        pod_id(ordinal),
        crate::config::BASE_NAME,
        crate::config::NAMESPACE,
        crate::world::AGENT_PORT
    )
}

/// Where a pending write stands.
pub enum Commit {
    Pending,
    Done(WriteReply),
}

impl World {
    fn store(&self, ordinal: i32) -> &crate::store::Store {
        &self.k8s.pvcs[&ordinal].store
    }

    fn store_mut(&mut self, ordinal: i32) -> &mut crate::store::Store {
        &mut self
            .k8s
            .pvcs
            .get_mut(&ordinal)
            .expect("a pod has its PVC")
            .store
    }

    fn agent_mut(&mut self, ordinal: i32) -> Option<&mut Agent> {
        self.replicas[ordinal as usize].agent.as_mut()
    }

    /// The process of `ordinal` starts: a new agent from what its PVC holds.
    pub fn boot_agent(&mut self, ordinal: i32) -> Option<u64> {
        let pod = self.k8s.pods.get(&ordinal)?;
        // The agent reads its annotations before its node may campaign (adapter-k8s
        // `agent::run`); a transfer request already there is old, and never acts.
        let annotations = annotations_file(pod);
        let pvc = self.k8s.pvcs.get(&ordinal)?;
        let persisted = pvc.persisted.clone();
        let store = pvc.store.view();
        let log_len = pvc.store.len();
        // The address book lists every ordinal a Base may have, as production's `BASE_PEERS`
        // does: whom the agent may talk to. Its voters are the election's configuration, which
        // it takes from the `hanzo.ai/members` annotation (and persists) as production does.
        let peers: Vec<i32> = (0..MAX_ORDINALS).filter(|&o| o != ordinal).collect();
        let now = self.local(ordinal);
        let seed = self.rng.next_u64();
        let config = Config {
            id: pod_id(ordinal),
            self_url: agent_url(ordinal),
            peers: peers.iter().map(|&o| (pod_id(o), agent_url(o))).collect(),
            timing: self.cfg.timing,
            shutdown_timeout: Millis(SHUTDOWN_TRANSFER_TIMEOUT_MS),
            members_from_annotations: true,
        };
        let machine =
            base_core::agent::Agent::new(config, persisted.clone(), seed, now, &annotations)
                .expect("a valid peer set");
        let fenced = machine.is_fenced();
        // As adapter-k8s `agent::run`: itself and its peers until the election brings its
        // configuration, the role re-sent every heartbeat interval.
        let quorum = QuorumConfig::simple((0..MAX_ORDINALS).map(pod_id)).expect("a valid cluster");
        let resend = self.cfg.timing.heartbeat_interval_ms().0;
        let coordinator = Coordinator::new(pod_id(ordinal), agent_url(ordinal), quorum, resend);
        let slot = &mut self.replicas[ordinal as usize];
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        slot.agent = Some(Agent {
            machine,
            incarnation,
            writer_term: None,
            coordinator,
            positions: Vec::new(),
            released: BTreeMap::new(),
            next_hold: 1,
            cursor: None,
            pull_sent: None,
            fetching: false,
            pull_retry_at: now,
            parked_pulls: Vec::new(),
            next_fence_read: now.saturating_add(Millis(FENCE_POLL_MS)),
            sigterm: false,
            handed_over_on_sigterm: false,
        });
        // The first answer of the store's state (adapter-k8s `poll_state`): its position reaches
        // the election before the node may campaign.
        self.coordinate(ordinal, CoordinatorInput::Store(store));
        let mut positions = self
            .agent_mut(ordinal)
            .map(|a| std::mem::take(&mut a.positions))
            .unwrap_or_default();
        if positions.is_empty() {
            let s = self.store(ordinal);
            positions.push((s.epoch, s.position()));
        }
        // The first step also returns the start's effects: a bootstrap (the annotation names
        // this node an initial member) persists its configuration.
        for (epoch, position) in positions {
            let a = self.agent_mut(ordinal)?;
            let effects = a.machine.step(now, Input::Position { epoch, position });
            let out = self.perform(ordinal, effects);
            assert!(out.is_empty(), "a starting node sends nothing");
        }
        self.stats.pod_starts += 1;
        self.ev(format!(
            "{} starts: term {} voted {:?} log {} configuration {}{}",
            pod_id(ordinal),
            persisted.term,
            persisted.voted_for.map(|v| v.0),
            log_len,
            persisted
                .membership
                .map_or("none".to_string(), |m| m.describe()),
            if fenced { ", fenced" } else { "" }
        ));
        Some(incarnation)
    }

    /// The process of `ordinal` dies: its memory is gone, its PVC stays.
    pub fn drop_agent(&mut self, ordinal: i32) {
        let now = self.now_ns();
        let slot = &mut self.replicas[ordinal as usize];
        slot.agent = None;
        slot.paused = false;
        if let Some((from, until)) = slot.accept
            && until > now
        {
            slot.accept = Some((from, now));
        }
    }

    pub fn alive(&self, ordinal: i32, incarnation: u64) -> bool {
        self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.incarnation == incarnation)
    }

    /// Feeds one input to the agent of `ordinal` and performs the effects, in order, then gives
    /// the coordinator the election's view and a tick (adapter-k8s `agent::driver::step`), and
    /// the positions the coordinator gave back to the election (the driver's control queue). On
    /// `Exit` the process ends.
    pub fn step_agent(&mut self, ordinal: i32, input: Input) -> Vec<Out> {
        let mut out = Vec::new();
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let now = self.local(ordinal);
            let Some(agent) = self.agent_mut(ordinal) else {
                break;
            };
            let effects = agent.machine.step(now, input);
            out.extend(self.perform(ordinal, effects));
            self.after_step(ordinal);
            if self.replicas[ordinal as usize]
                .agent
                .as_ref()
                .is_some_and(|a| a.machine.exited())
            {
                self.drop_agent(ordinal);
                return out;
            }
            let Some(a) = self.replicas[ordinal as usize].agent.as_ref() else {
                break;
            };
            let view = ElectionView::of(a.node(), now, |id| {
                ordinal_of(id.as_str()).map(agent_url).unwrap_or_default()
            });
            self.coordinate(ordinal, CoordinatorInput::Election(view));
            self.coordinate(ordinal, CoordinatorInput::Tick);
            if let Some(a) = self.agent_mut(ordinal) {
                inputs.extend(
                    a.positions
                        .drain(..)
                        .map(|(epoch, position)| Input::Position { epoch, position }),
                );
            }
        }
        out.extend(self.serve_parked(ordinal));
        self.check_position(ordinal);
        out
    }

    /// The positions the coordinator gave outside a step of the election, fed to it.
    fn flush_positions(&mut self, ordinal: i32) -> Vec<Out> {
        let Some(first) = self
            .agent_mut(ordinal)
            .and_then(|a| (!a.positions.is_empty()).then(|| a.positions.remove(0)))
        else {
            self.check_position(ordinal);
            return self.serve_parked(ordinal);
        };
        // `step_agent` drains the rest after this one.
        self.step_agent(
            ordinal,
            Input::Position {
                epoch: first.0,
                position: first.1,
            },
        )
    }

    /// Steps the coordinator of `ordinal` and performs its effects (adapter-k8s
    /// `agent::replication::step` / `perform`): a role push goes to the store and its answer
    /// comes back as the next input.
    fn coordinate(&mut self, ordinal: i32, input: CoordinatorInput) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let now = self.local(ordinal);
            let Some(a) = self.agent_mut(ordinal) else {
                return;
            };
            let effects = a.coordinator.step(now, input);
            for effect in effects {
                match effect {
                    CoordinatorEffect::PushRole(order) => {
                        let answer = self.store_mut(ordinal).set_role(&order);
                        inputs.push_back(CoordinatorInput::RoleAnswered { order, answer });
                    }
                    CoordinatorEffect::Position { epoch, position } => {
                        if let Some(a) = self.agent_mut(ordinal) {
                            a.positions.push((epoch, position));
                        }
                    }
                    CoordinatorEffect::Release { write, outcome } => {
                        if let Some(a) = self.agent_mut(ordinal) {
                            a.released.insert(write.0, outcome);
                        }
                    }
                    CoordinatorEffect::ContractAbsent | CoordinatorEffect::ContractPresent => {
                        self.fail(
                            "harness",
                            format!("{}: the simulated store has the contract", pod_id(ordinal)),
                        );
                    }
                    CoordinatorEffect::Anomaly(what) => {
                        self.ev(format!("{} replication anomaly: {what}", pod_id(ordinal)));
                    }
                }
            }
        }
    }

    /// The store of `ordinal` changed: its state for the coordinator (adapter-k8s `poll_state`,
    /// or the answer that carried it), and the positions that follows for the election.
    fn store_changed(&mut self, ordinal: i32) -> Vec<Out> {
        let view = self.store(ordinal).view();
        self.coordinate(ordinal, CoordinatorInput::Store(view));
        self.flush_positions(ordinal)
    }

    /// Invariant 11, after every step: the election holds exactly its store's durable position
    /// (each report newer than the last by `(epoch, position)`, so none was taken as stale).
    fn check_position(&mut self, ordinal: i32) {
        let Some(a) = self.replicas[ordinal as usize].agent.as_ref() else {
            return;
        };
        let held = (a.node().position_epoch(), a.node().position());
        let store = self.store(ordinal);
        let real = (store.epoch, store.position());
        if held != real {
            self.fail(
                POSITION,
                format!(
                    "{}'s election holds (epoch {}, {}) but its store is at (epoch {}, {})",
                    pod_id(ordinal),
                    held.0,
                    LogPosition::decode(held.1),
                    real.0,
                    LogPosition::decode(real.1)
                ),
            );
        }
    }

    fn perform(&mut self, ordinal: i32, effects: Vec<Effect>) -> Vec<Out> {
        let mut out = Vec::new();
        let me = pod_id(ordinal);
        for effect in effects {
            match effect {
                Effect::Persist(state) => {
                    let pvc = self.k8s.pvcs.get_mut(&ordinal).expect("a pod has its PVC");
                    pvc.persisted = state;
                }
                Effect::Send { to, msg } => {
                    if let Some(o) = ordinal_of(to.as_str()) {
                        let packet = Packet::Peer {
                            from: me.clone(),
                            msg,
                        };
                        let o = self.out(agent_addr(o), packet);
                        out.push(o);
                    }
                }
                Effect::BecomeWriter { term, .. } => {
                    out.extend(self.on_become_writer(ordinal, term));
                }
                Effect::StepDown { term } => {
                    if let Some(a) = self.agent_mut(ordinal) {
                        a.writer_term = None;
                    }
                    self.ev(format!("{me} steps down (writer of term {term})"));
                }
                Effect::LeaseRenewed { .. } | Effect::NoHandOverTarget => {}
                Effect::Members { bootstrap, voters } => {
                    let voters = voters.map(|v| v.iter().map(|n| n.0.clone()).collect::<Vec<_>>());
                    self.ev(format!(
                        "{me} reads its members: {}desired voters {voters:?}",
                        if bootstrap { "bootstraps, " } else { "" }
                    ));
                }
                Effect::MembersUnreadable(why) => {
                    // The plan writes the annotation: an unreadable one is the core's bug.
                    self.fail("harness", format!("{me} cannot read its members: {why}"));
                }
                Effect::FenceChanged { fenced, role } => {
                    self.ev(format!(
                        "{me} reads its annotations: {} ({role:?})",
                        if fenced { "fenced" } else { "unfenced" }
                    ));
                    if fenced {
                        self.stats.fences_applied += 1;
                        if role == Role::Writer {
                            self.stats.fenced_writers += 1;
                        }
                    }
                }
                Effect::TransferRequest(considered) => match considered.decision {
                    TransferDecision::Start(to) => {
                        self.ev(format!("{me} reads a transfer request: hands over to {to}"));
                        self.stats.transfers += 1;
                    }
                    TransferDecision::Refused(why) => {
                        self.ev(format!("{me} reads a transfer request: {}", why.as_str()));
                    }
                },
                Effect::HandOver { to, cause } => {
                    if cause == HandOverCause::Shutdown {
                        self.stats.transfers += 1;
                        if let Some(a) = self.agent_mut(ordinal) {
                            a.handed_over_on_sigterm = true;
                        }
                    }
                    let to = to.map_or("nobody".to_string(), |t| t.to_string());
                    self.ev(format!("{me} hands over to {to} ({cause:?})"));
                }
                Effect::Exit { handed_over } => {
                    self.stats.sigterm_exits += 1;
                    let writer = self
                        .agent_mut(ordinal)
                        .is_some_and(|a| a.handed_over_on_sigterm);
                    if handed_over && writer {
                        self.stats.sigterm_exits_after_hand_over += 1;
                    }
                    self.ev(format!(
                        "{me} exits after SIGTERM ({})",
                        if handed_over {
                            "handed over"
                        } else {
                            "no successor by the deadline"
                        }
                    ));
                }
            }
        }
        out
    }

    fn on_become_writer(&mut self, ordinal: i32, term: Term) -> Vec<Out> {
        // Invariant 1: at most one writer per term.
        match self.checks.writer_of_term.get(&term) {
            Some(&other) if other != ordinal => self.fail(
                "1 one writer per term",
                format!(
                    "{} and {} both won term {term}",
                    pod_id(other),
                    pod_id(ordinal)
                ),
            ),
            _ => {
                self.checks.writer_of_term.insert(term, ordinal);
            }
        }
        self.stats.terms += 1;
        if self.agent_fenced(ordinal) {
            self.fail(
                FENCED,
                format!("{} is fenced and wins term {term}", pod_id(ordinal)),
            );
        }
        if let Some(a) = self.agent_mut(ordinal) {
            a.writer_term = Some(term);
        }
        let log_len = self.store(ordinal).len();
        self.ev(format!(
            "{} becomes writer of term {term} (log {log_len})",
            pod_id(ordinal)
        ));
        // The store takes the role (and appends the term's no-op) when the coordinator pushes
        // it, right after this step of the election.
        self.check_has_acked(ordinal, term);
        Vec::new()
    }

    /// Invariant 2, after every step of `ordinal`: the interval in which it may accept writes
    /// (from its `can_accept_writes`, projected to real time through its clock) overlaps no other's.
    fn after_step(&mut self, ordinal: i32) {
        let now_ns = self.now_ns();
        let now = self.local(ordinal);
        let slot = &self.replicas[ordinal as usize];
        let Some(agent) = slot.agent.as_ref() else {
            return;
        };
        // Invariant 10: only a voter of its own configuration stands for election or writes
        // (a removed member, a learner, a joiner never does).
        if agent.node().role() != Role::Follower && !agent.node().is_voter() {
            let (role, term) = (agent.node().role(), agent.node().term());
            let held = agent
                .node()
                .membership()
                .map_or("none".to_string(), |m| m.describe());
            self.fail(
                NOT_A_VOTER,
                format!(
                    "{} is {role:?} in term {term} but not a voter of its configuration ({held})",
                    pod_id(ordinal)
                ),
            );
            return;
        }
        if agent.node().can_accept_writes(now) {
            if agent.node().is_fenced() {
                let term = agent.node().term();
                self.fail(
                    FENCED,
                    format!(
                        "{} is fenced and may accept writes in term {term}",
                        pod_id(ordinal)
                    ),
                );
                return;
            }
            let lease_until = agent
                .node()
                .writer_view(now)
                .lease_until
                .expect("a writer has a lease");
            let term = agent.node().term();
            let accept = slot.accept;
            let (until, fresh) = match slot.lease_real {
                Some((local, real)) if local == lease_until => (real, false),
                _ => (slot.clock.real_ns_at(lease_until), true),
            };
            if fresh {
                self.replicas[ordinal as usize].lease_real = Some((lease_until, until));
            }
            match accept {
                Some((from, old_until)) if old_until > now_ns => {
                    self.replicas[ordinal as usize].accept = Some((from, until.max(old_until)));
                }
                _ => {
                    self.replicas[ordinal as usize].accept = Some((now_ns, until));
                    self.check_sole_acceptor(ordinal, term, "starts accepting writes");
                }
            }
        } else if let Some((from, until)) = slot.accept
            && until > now_ns
        {
            self.replicas[ordinal as usize].accept = Some((from, now_ns));
        }
    }

    /// Invariant 2: nobody but `ordinal` may accept writes at this real instant.
    fn check_sole_acceptor(&mut self, ordinal: i32, term: Term, what: &str) {
        let now_ns = self.now_ns();
        for other in 0..self.replicas.len() as i32 {
            if other == ordinal {
                continue;
            }
            if let Some((_, until)) = self.replicas[other as usize].accept
                && until > now_ns
            {
                let other_term = self.replicas[other as usize]
                    .agent
                    .as_ref()
                    .map_or("?".to_string(), |a| a.node().term().to_string());
                self.fail(
                    "2 at most one node accepts writes at any instant",
                    format!(
                        "{} {what} in term {term} while {} (term {other_term}) may accept writes for {} ms more",
                        pod_id(ordinal),
                        pod_id(other),
                        (until - now_ns) / 1_000_000
                    ),
                );
            }
        }
    }

    /// Invariant 5: a writer of `term` holds every write acknowledged in an earlier term.
    fn check_has_acked(&mut self, ordinal: i32, term: Term) {
        let store = self.store(ordinal);
        let missing = self
            .checks
            .acked
            .iter()
            .find(|(i, e)| e.term < term && store.entry(**i) != Some(**e))
            .map(|(i, e)| (*i, *e));
        if let Some((index, entry)) = missing {
            let found = store
                .entry(index)
                .map_or("nothing".to_string(), |e| e.to_string());
            self.fail(
                LOST,
                format!(
                    "{} writes in term {term} but holds {found} at index {index}, where the acknowledged {entry} was",
                    pod_id(ordinal)
                ),
            );
        }
    }

    /// Invariant 5: no store loses an acknowledged write it held (a cut, a snapshot).
    fn check_lost(&mut self, ordinal: i32, gone: &[(u64, Entry)], how: &str) {
        let lost = gone
            .iter()
            .find(|(i, e)| self.checks.acked.get(i) == Some(e))
            .copied();
        if let Some((index, e)) = lost {
            self.fail(
                LOST,
                format!(
                    "{} {how} and loses the acknowledged {e} at index {index}",
                    pod_id(ordinal)
                ),
            );
        }
    }

    /// Every `TICK_MS`: the election's clock input (and with it the coordinator's), the
    /// annotations file, SIGTERM, and the replica's pull loop.
    pub fn agent_tick(&mut self, ordinal: i32, incarnation: u64) -> Option<Vec<Out>> {
        if !self.alive(ordinal, incarnation) {
            return None;
        }
        let mut out = self.step_agent(ordinal, Input::Tick);
        let now = self.local(ordinal);
        out.extend(self.read_fence_file(ordinal, now));
        out.extend(self.on_sigterm(ordinal));
        out.extend(self.pull(ordinal));
        Some(out)
    }

    /// The replica's pull loop (adapter-k8s `agent::replication::pull`): one request in flight
    /// at a time, to the writer the coordinator names, from the cursor it left off at (or the
    /// store's last entry when the writer or its term changed).
    fn pull(&mut self, ordinal: i32) -> Vec<Out> {
        let now = self.local(ordinal);
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let source = a.coordinator.pull_source();
        // A request in flight is awaited while it goes to the source the coordinator names (a
        // source that changed drops it, as adapter-k8s `pull` does); a lost one is given up.
        let same = a.cursor.as_ref().map(|(w, t, ..)| (w.clone(), *t)) == source;
        if a.pull_sent
            .is_some_and(|t| same && now < t.saturating_add(Millis(PULL_LOST_MS)))
            || now < a.pull_retry_at
        {
            return Vec::new();
        }
        a.pull_sent = None;
        a.fetching = false;
        let Some((writer, term)) = source else {
            a.cursor = None;
            return Vec::new();
        };
        let (after, commit) = match &a.cursor {
            Some((w, t, after, commit)) if *w == writer && *t == term => (*after, *commit),
            _ => match a.coordinator.store() {
                Some(s) => (s.last, None),
                None => return Vec::new(),
            },
        };
        let Some(to) = ordinal_of(writer.as_str()) else {
            return Vec::new();
        };
        a.cursor = Some((writer, term, after, commit));
        a.pull_sent = Some(now);
        let packet = Packet::Pull {
            from: ordinal,
            after,
            commit,
        };
        vec![self.out(agent_addr(to), packet)]
    }

    /// Is `ordinal` a writer whose store confirmed the role (what a pull or a snapshot request
    /// needs, adapter-k8s `agent::http::ship`)?
    fn serves_log(&self, ordinal: i32) -> bool {
        self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .is_some_and(|a| {
                a.node().role() == Role::Writer && a.coordinator.writer_ready(a.node().term())
            })
    }

    /// A replica's pull reached the writer `ordinal`: it proves the replica's store holds
    /// `after` (the coordinator's `Pull`); the store answers now, or once it has something new.
    fn on_pull(
        &mut self,
        ordinal: i32,
        from: i32,
        after: LogPosition,
        commit: Option<u64>,
    ) -> Vec<Out> {
        if !self.serves_log(ordinal) {
            let ship = Packet::Ship {
                from: ordinal,
                shipment: None,
            };
            return vec![self.out(agent_addr(from), ship)];
        }
        let peer = pod_id(from);
        self.coordinate(ordinal, CoordinatorInput::Pull { peer, after });
        let now = self.local(ordinal);
        if let Some(a) = self.agent_mut(ordinal) {
            a.parked_pulls.retain(|(p, ..)| *p != from);
            let until = now.saturating_add(Millis(PULL_WAIT_MS));
            a.parked_pulls.push((from, after, commit, until));
        }
        // Positions first (the commit may have moved), then whatever the pulls may have now.
        self.flush_positions(ordinal)
    }

    /// The writer `ordinal` answers the pulls held at its store that have something new, or
    /// whose wait is over (the store's long poll: `replication::pull_ready`).
    fn serve_parked(&mut self, ordinal: i32) -> Vec<Out> {
        let now = self.local(ordinal);
        let serves = self.serves_log(ordinal);
        let store = self.store(ordinal);
        let (role, last, commit) = (store.role, store.last().index, store.commit);
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        if a.parked_pulls.is_empty() {
            return Vec::new();
        }
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut a.parked_pulls)
            .into_iter()
            .partition(|(_, after, known, until)| {
                !serves
                    || now >= *until
                    || base_core::replication::pull_ready(role, last, commit, after.index, *known)
            });
        a.parked_pulls = held;
        let mut out = Vec::new();
        for (peer, after, _, _) in due {
            let shipment = if serves {
                self.store(ordinal).serve(after)
            } else {
                None
            };
            let ship = Packet::Ship {
                from: ordinal,
                shipment,
            };
            out.push(self.out(agent_addr(peer), ship));
        }
        out
    }

    /// The writer's answer to this replica's pull: the store takes the shipment (the core
    /// replica machine decides), and the agent pulls again from where the store says, or fetches
    /// the snapshot.
    fn on_ship(
        &mut self,
        ordinal: i32,
        from: i32,
        shipment: Option<(Shipment, Vec<Entry>)>,
    ) -> Vec<Out> {
        let now = self.local(ordinal);
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let source = a.cursor.as_ref().and_then(|(w, ..)| ordinal_of(w.as_str()));
        if source != Some(from) || a.fetching {
            return Vec::new(); // an answer from a source given up, or to no request in flight
        }
        a.pull_sent = None;
        let Some((s, data)) = shipment else {
            a.cursor = None;
            a.pull_retry_at = now.saturating_add(Millis(PULL_RETRY_MS));
            return Vec::new();
        };
        let before = {
            let st = self.store(ordinal);
            (st.epoch, st.position())
        };
        match self.store_mut(ordinal).append(&s, &data) {
            Err(refusal) => {
                if let Refusal::Shipment(ReplicaError::CommittedConflict { .. }) = refusal {
                    self.fail(
                        APPLIED,
                        format!(
                            "{} refuses the shipment of {}'s writer of term {}: {refusal}",
                            pod_id(ordinal),
                            pod_id(from),
                            s.term
                        ),
                    );
                }
                self.ev(format!("{} refuses a shipment: {refusal}", pod_id(ordinal)));
                if let Some(a) = self.agent_mut(ordinal) {
                    a.cursor = None;
                    a.pull_retry_at = now.saturating_add(Millis(PULL_RETRY_MS));
                }
                self.store_changed(ordinal)
            }
            Ok((next, cut)) => {
                if !cut.is_empty() {
                    self.stats.log_cuts += 1;
                    self.ev(format!(
                        "{} cuts {} entries after {} (writer of term {})",
                        pod_id(ordinal),
                        cut.len(),
                        cut[0].0 - 1,
                        s.term
                    ));
                    self.check_lost(ordinal, &cut, "cuts its log on a shipment");
                }
                let after = {
                    let st = self.store(ordinal);
                    (st.epoch, st.position())
                };
                if after.1 < before.1 {
                    self.stats.positions_lowered += 1;
                }
                let mut out = self.store_changed(ordinal);
                let Some(a) = self.agent_mut(ordinal) else {
                    return out;
                };
                match next {
                    Next::Pull { after } => {
                        if let Some(c) = a.cursor.as_mut() {
                            c.2 = after;
                            c.3 = Some(s.commit);
                        }
                        // The next pull goes at once (adapter-k8s `pull` loops).
                        out.extend(self.pull(ordinal));
                    }
                    Next::FetchSnapshot => {
                        a.pull_sent = Some(now);
                        a.fetching = true;
                        let request = Packet::SnapshotRequest { from: ordinal };
                        out.push(self.out(agent_addr(from), request));
                    }
                }
                out
            }
        }
    }

    /// `GET /_replica/snapshot` at the writer `ordinal`.
    fn on_snapshot_request(&mut self, ordinal: i32, from: i32) -> Vec<Out> {
        let snapshot = if self.serves_log(ordinal) {
            self.store(ordinal).snapshot()
        } else {
            None
        };
        let term = self.store(ordinal).term;
        let answer = Packet::Snapshot {
            from: ordinal,
            term,
            snapshot,
        };
        vec![self.out(agent_addr(from), answer)]
    }

    /// The writer's snapshot reached this replica: its store installs it (the core's rule),
    /// and the pull loop starts again from the store's state.
    fn on_snapshot(
        &mut self,
        ordinal: i32,
        from: i32,
        term: Term,
        snapshot: Option<(LogPosition, Vec<Entry>)>,
    ) -> Vec<Out> {
        let now = self.local(ordinal);
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        // One answer per request, as over HTTP: a late or duplicated copy (the network
        // duplicates packets) is no answer to anything in flight.
        if a.cursor.as_ref().and_then(|(w, ..)| ordinal_of(w.as_str())) != Some(from) || !a.fetching
        {
            return Vec::new();
        }
        a.fetching = false;
        a.pull_sent = None;
        a.cursor = None;
        let Some((at, data)) = snapshot else {
            a.pull_retry_at = now.saturating_add(Millis(PULL_RETRY_MS));
            return Vec::new();
        };
        let before = self.store(ordinal).position();
        match self.store_mut(ordinal).install_snapshot(term, at, data) {
            Err(refusal) => {
                self.ev(format!(
                    "{} refuses {}'s snapshot at {at}: {refusal}",
                    pod_id(ordinal),
                    pod_id(from)
                ));
                if let Some(a) = self.agent_mut(ordinal) {
                    a.pull_retry_at = now.saturating_add(Millis(PULL_RETRY_MS));
                }
                Vec::new()
            }
            Ok(replaced) => {
                self.stats.snapshots_installed += 1;
                if self.store(ordinal).position() < before {
                    self.stats.positions_lowered += 1;
                }
                self.ev(format!(
                    "{} installs {}'s snapshot at {at}",
                    pod_id(ordinal),
                    pod_id(from)
                ));
                self.check_lost(ordinal, &replaced, "installs a snapshot");
                let mut out = self.store_changed(ordinal);
                out.extend(self.pull(ordinal));
                out
            }
        }
    }

    /// The pod is terminating: the kubelet's SIGTERM makes a writer hand its role to an
    /// up-to-date peer before the process exits (the machine's `Input::Shutdown`, as adapter-k8s
    /// `agent::driver` feeds it), so that a deleted writer costs a hand-over, not an election
    /// timeout; the process exits when the machine says so.
    fn on_sigterm(&mut self, ordinal: i32) -> Vec<Out> {
        let terminating = self
            .k8s
            .pods
            .get(&ordinal)
            .is_some_and(|p| matches!(p.phase, PodPhase::Terminating { .. }));
        let Some(a) = self
            .agent_mut(ordinal)
            .filter(|a| terminating && !a.sigterm)
        else {
            return Vec::new();
        };
        a.sigterm = true;
        self.ev(format!("{} got SIGTERM", pod_id(ordinal)));
        self.step_agent(ordinal, Input::Shutdown)
    }

    /// How long (ms) the fence of `ordinal` is overdue: its pod's annotations file has said fenced
    /// for longer than the agent takes to read it (one `FENCE_POLL_MS` on a clock up to ρ/2 slow,
    /// plus a tick), counted from the later of that change and the process' last resume.
    pub fn fence_overdue(&self, ordinal: i32) -> Option<u64> {
        let since = self.k8s.pods.get(&ordinal)?.fence_file_since?;
        let from = since.max(self.replicas[ordinal as usize].resumed_ns);
        let half_drift = self.cfg.timing.drift_bound_ppm() / 2;
        let bound_ms = FENCE_POLL_MS + FENCE_POLL_MS * half_drift / 1_000_000 + 2 * TICK_MS;
        let late = self.now_ns().checked_sub(from + bound_ms * 1_000_000)?;
        (late > 0).then_some(late / 1_000_000 + bound_ms)
    }

    /// Every `FENCE_POLL_MS`: the agent re-reads its pod's annotations file and gives the machine
    /// its content (adapter-k8s `agent::fence::watch`): a fence change, a new transfer request.
    fn read_fence_file(&mut self, ordinal: i32, now: Millis) -> Vec<Out> {
        let Some(a) = self.agent_mut(ordinal).filter(|a| now >= a.next_fence_read) else {
            return Vec::new();
        };
        a.next_fence_read = now.saturating_add(Millis(FENCE_POLL_MS));
        let Some(pod) = self.k8s.pods.get(&ordinal) else {
            return Vec::new();
        };
        let annotations = annotations_file(pod);
        let out = self.step_agent(ordinal, Input::Annotations(annotations));
        // Invariant 8: from this instant on, a fenced node may not accept writes.
        let now_ns = self.now_ns();
        if self.agent_fenced(ordinal)
            && self.replicas[ordinal as usize]
                .accept
                .is_some_and(|(_, until)| until > now_ns)
        {
            self.fail(
                FENCED,
                format!("{} is fenced but may still accept writes", pod_id(ordinal)),
            );
        }
        out
    }

    /// A packet reached the agent of `ordinal`.
    pub fn agent_receive(&mut self, ordinal: i32, packet: Packet, src: SocketAddr) -> Vec<Out> {
        if self.replicas[ordinal as usize].agent.is_none() {
            return Vec::new();
        }
        match packet {
            Packet::Peer { from, msg } => {
                if !matches!(
                    msg,
                    Message::Heartbeat { .. } | Message::HeartbeatAck { .. }
                ) {
                    self.ev(format!("{} <- {from}: {msg:?}", pod_id(ordinal)));
                }
                self.step_agent(ordinal, Input::Message { from, msg })
            }
            Packet::Pull {
                from,
                after,
                commit,
            } => self.on_pull(ordinal, from, after, commit),
            Packet::Ship { from, shipment } => self.on_ship(ordinal, from, shipment),
            Packet::SnapshotRequest { from } => self.on_snapshot_request(ordinal, from),
            Packet::Snapshot {
                from,
                term,
                snapshot,
            } => self.on_snapshot(ordinal, from, term, snapshot),
            Packet::LeaderQuery { seq } => {
                let body = self.leader_answer(ordinal);
                vec![self.out(src, Packet::LeaderAnswer { seq, body })]
            }
            Packet::Read {
                req,
                writer_required,
                must_have,
            } => {
                // As adapter-k8s `agent::http::front_door`: a read that needs the writer.
                if writer_required {
                    let now = self.local(ordinal);
                    let Some(a) = self.replicas[ordinal as usize].agent.as_ref() else {
                        return Vec::new();
                    };
                    let admission = a
                        .machine
                        .admit_writer_read(now, |term| a.coordinator.strong_reads_ready(term));
                    let refused = match admission {
                        ReadAdmission::Serve => None,
                        ReadAdmission::Refuse(_) => Some(true),
                        ReadAdmission::TermStartNotCommitted => Some(false),
                    };
                    if let Some(not_writer) = refused {
                        self.stats.reads_refused += 1;
                        return vec![self.out(src, Packet::ReadRefused { req, not_writer })];
                    }
                }
                let store = self.store(ordinal);
                let log_len = store.applied;
                if let Some((index, entry)) = must_have {
                    let held = store.applied_entry(index);
                    if held != Some(entry) {
                        self.fail(
                            "4 read-your-writes",
                            format!(
                                "a read within the TTL of acknowledged {entry} (index {index}) went to {}, which shows {}",
                                pod_id(ordinal),
                                held.map_or("nothing".into(), |e| e.to_string())
                            ),
                        );
                    }
                }
                self.stats.reads += 1;
                vec![self.out(src, Packet::ReadReply { req, log_len })]
            }
            // Writes are admitted by `admit_write` in the receive loop; nothing else is for agents.
            _ => Vec::new(),
        }
    }

    /// `GET /_ha/leader` of `ordinal`, as JSON (the machine's answer).
    fn leader_answer(&self, ordinal: i32) -> Vec<u8> {
        let now = self.local(ordinal);
        let a = self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .expect("only a running agent answers");
        let answer = a.machine.leader_answer(now);
        serde_json::to_vec(&answer).expect("a leader answer serialises")
    }

    /// The machine's write admission when a write arrives, or (`recheck`) right before the
    /// store applies it. The sim's gateway names the term it routed the write for, and the model
    /// store applies it only in that term (as a Base fencing by `X-Base-Term` would).
    fn may_write(
        &self,
        ordinal: i32,
        incarnation: u64,
        term: Term,
        recheck: bool,
    ) -> Result<(), Term> {
        let Some(a) = self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .filter(|a| a.incarnation == incarnation)
        else {
            return Err(Term(0));
        };
        let now = self.local(ordinal);
        let admission = if recheck {
            a.machine.recheck_write(now, term)
        } else {
            a.machine.admit_write(now)
        };
        match admission {
            Admission::Forward { term: t } if t == term => Ok(()),
            _ => Err(a.node().term()),
        }
    }

    /// The agent's check when a write arrives.
    pub fn admit_write(&mut self, ordinal: i32, incarnation: u64, term: Term) -> Result<(), Term> {
        let admitted = self.may_write(ordinal, incarnation, term, false);
        if admitted.is_err() && self.agent_fenced(ordinal) {
            self.stats.writes_refused_fenced += 1;
        }
        admitted
    }

    /// A pause armed for this writer strikes between the agent's check and the store applying the
    /// write (the residual window of `quasar/mod.rs` "What remains").
    pub fn pause_mid_write(&mut self, ordinal: i32) {
        if let Some((o, for_ms, _)) = self.armed_pause
            && o == ordinal
        {
            self.armed_pause = None;
            self.pause_now(ordinal, for_ms, " (mid-write)");
        }
    }

    /// The store applies a write admitted earlier: the agent's re-check right before forwarding
    /// (the machine's; the planted `no-recheck` skips it there), then the store logs it (only as
    /// the writer of exactly that term) and the coordinator holds its answer. Returns the entry
    /// and the coordinator's id of the held answer.
    pub fn apply_write(
        &mut self,
        ordinal: i32,
        incarnation: u64,
        term: Term,
        write: WriteId,
    ) -> (Result<(LogPosition, u64), Term>, Vec<Out>) {
        if !self.alive(ordinal, incarnation) {
            return (Err(Term(0)), Vec::new());
        }
        if let Err(t) = self.may_write(ordinal, incarnation, term, true) {
            return (Err(t), Vec::new());
        }
        let entry = Entry {
            term,
            write: Some(write),
        };
        if self.agent_fenced(ordinal) {
            self.fail(
                FENCED,
                format!("{} is fenced and applies {entry}", pod_id(ordinal)),
            );
        }
        if let Some(ms) = self.fence_overdue(ordinal) {
            self.fail(
                FENCED,
                format!(
                    "{} applies {entry} {ms} ms after its pod's annotations file said fenced",
                    pod_id(ordinal)
                ),
            );
        }
        let at = match self.store_mut(ordinal).execute(term, write) {
            Ok(at) => at,
            Err(t) => {
                self.ev(format!(
                    "{}'s store refuses {entry}: not the writer of term {term}",
                    pod_id(ordinal)
                ));
                return (Err(t), Vec::new());
            }
        };
        self.ev(format!(
            "{} applies {entry} at {}",
            pod_id(ordinal),
            at.index
        ));
        // Invariant 2, at the moment a store applies a write.
        self.check_sole_acceptor(ordinal, term, &format!("applies {entry}"));
        let mut out = self.store_changed(ordinal);
        let now = self.local(ordinal);
        let Some(a) = self.agent_mut(ordinal) else {
            return (Err(Term(0)), out);
        };
        let id = a.next_hold;
        a.next_hold += 1;
        let hold = CoordinatorInput::Hold {
            write: base_core::replication::WriteId(id),
            at,
            deadline: now.saturating_add(Millis(COMMIT_TIMEOUT_MS)),
        };
        self.coordinate(ordinal, hold);
        out.extend(self.flush_positions(ordinal));
        (Ok((at, id)), out)
    }

    /// Whether the coordinator released the held write `hold` (the store logged it at `at`).
    pub fn commit_status(
        &mut self,
        ordinal: i32,
        incarnation: u64,
        at: LogPosition,
        hold: u64,
    ) -> Commit {
        let Some(a) = self.replicas[ordinal as usize]
            .agent
            .as_mut()
            .filter(|a| a.incarnation == incarnation)
        else {
            return Commit::Done(WriteReply::Unknown);
        };
        match a.released.remove(&hold) {
            None => Commit::Pending,
            Some(Outcome::Committed) => Commit::Done(WriteReply::Ok {
                term: at.term,
                index: at.index,
            }),
            Some(Outcome::CommitUnknown) => Commit::Done(WriteReply::Unknown),
        }
    }
}

/// The process of one replica: what `Handle::restart` runs.
pub async fn replica_main(world: Shared, ordinal: i32) {
    let ep = match Endpoint::bind(agent_addr(ordinal)).await {
        Ok(ep) => ep,
        Err(e) => {
            lock(&world).fail("harness", format!("{} cannot bind: {e}", pod_id(ordinal)));
            return;
        }
    };
    let Some(incarnation) = lock(&world).boot_agent(ordinal) else {
        return;
    };
    let (w, tick_ep) = (world.clone(), ep.clone());
    madsim::task::spawn(async move {
        loop {
            madsim::time::sleep(Duration::from_millis(TICK_MS)).await;
            let Some(out) = lock(&w).agent_tick(ordinal, incarnation) else {
                return;
            };
            send_all(&tick_ep, out).await;
        }
    });
    loop {
        let Ok((payload, src)) = ep.recv_from_raw(0).await else {
            return;
        };
        // The process exited (after SIGTERM): it answers nothing more.
        if !lock(&world).alive(ordinal, incarnation) {
            return;
        }
        let Ok(packet) = payload.downcast::<Packet>() else {
            continue;
        };
        if let Packet::Write { req, term, write } = *packet {
            let admitted = lock(&world).admit_write(ordinal, incarnation, term);
            match admitted {
                Err(t) => {
                    let reply = WriteReply::Refused { term: t };
                    let packet = Packet::WriteReply { req, reply };
                    let _ = ep.send_to_raw(src, 0, Box::new(packet)).await;
                }
                Ok(()) => {
                    let (w, ep) = (world.clone(), ep.clone());
                    madsim::task::spawn(async move {
                        let reply = write_task(&w, &ep, ordinal, incarnation, term, write).await;
                        let packet = Packet::WriteReply { req, reply };
                        let _ = ep.send_to_raw(src, 0, Box::new(packet)).await;
                    });
                }
            }
            continue;
        }
        let out = lock(&world).agent_receive(ordinal, *packet, src);
        send_all(&ep, out).await;
    }
}

async fn write_task(
    world: &Shared,
    ep: &Endpoint,
    ordinal: i32,
    incarnation: u64,
    term: Term,
    write: WriteId,
) -> WriteReply {
    // The agent forwards to Base over localhost: a pause may strike in between.
    lock(world).pause_mid_write(ordinal);
    madsim::time::sleep(Duration::from_millis(FORWARD_HOP_MS)).await;
    let (applied, out) = lock(world).apply_write(ordinal, incarnation, term, write);
    send_all(ep, out).await;
    let (at, hold) = match applied {
        Ok(x) => x,
        Err(t) => return WriteReply::Refused { term: t },
    };
    // The coordinator releases every hold by its deadline (on a tick, on its clock); twice the
    // timeout covers a slow clock. A process that died meanwhile answers nothing: unknown.
    for _ in 0..2 * COMMIT_TIMEOUT_MS / COMMIT_POLL_MS {
        madsim::time::sleep(Duration::from_millis(COMMIT_POLL_MS)).await;
        if let Commit::Done(reply) = lock(world).commit_status(ordinal, incarnation, at, hold) {
            return reply;
        }
    }
    WriteReply::Unknown
}

/// The id other nodes know `ordinal` by (for logs).
pub fn id(ordinal: i32) -> NodeId {
    pod_id(ordinal)
}

/// What the pod's downward-API annotations file says now (the kubelet's copy of the pod's
/// annotations, as the agent reads it).
fn annotations_file(pod: &crate::k8s::Pod) -> Annotations {
    Annotations {
        fenced: pod.fence_file,
        transfer: pod.transfer_file.clone(),
        members: pod.members_file.clone(),
    }
}
