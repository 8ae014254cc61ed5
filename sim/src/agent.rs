//! One replica: the production agent's machine (`base_core::agent::Agent`, around the core
//! election), driven by ticks, peer messages, the pod's annotations and SIGTERM as the tokio
//! agent drives it, in front of a small model of the Base store. Every agent decision is the
//! machine's (write admission on arrival and right before the store applies, fence, transfers,
//! shutdown, `/_ha/leader`, the members the operator publishes); this file keeps the madsim
//! plumbing, the model store and checkers.
//! The store's log lives on the pod's PVC and survives restarts; the agent's memory does not.
//! Writes are recorded with their term; the log is replicated to the members of the writer's
//! configuration in the manner of Raft's AppendEntries, and a write is acknowledged once a
//! quorum of that configuration holds it (`Node::quorum_config`: both majorities while joint). The store's
//! replication position `(last term << 32) | length` is fed to the election, so a voter grants
//! only candidates whose log is at least as up to date as its own.

use crate::config::MAX_ORDINALS;
use crate::k8s::PodPhase;
use crate::world::{
    Agent, Entry, Out, Packet, Shared, World, WriteId, WriteReply, agent_addr, lock, ordinal_of,
    pod_id, send_all,
};
use base_core::agent::{Admission, Annotations, Config, Effect, HandOverCause, Input};
use base_core::control::TransferDecision;
use base_core::quasar::{Message, Role};
use base_core::{Millis, NodeId, Term};
use madsim::net::Endpoint;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Real time between two `Tick`s of a node.
pub const TICK_MS: u64 = 10;
/// The hop from the agent to the Base process on localhost (where a pause can strike).
pub const FORWARD_HOP_MS: u64 = 2;
/// How long the agent waits for a majority to hold a write before answering "unknown".
pub const COMMIT_TIMEOUT_MS: u64 = 1_000;
const COMMIT_POLL_MS: u64 = 5;
/// How often the agent re-reads its pod's annotations file (adapter-k8s `agent::fence::FENCE_POLL`).
pub const FENCE_POLL_MS: u64 = 1_000;
/// The agent's default `--shutdown-transfer-timeout-ms`.
pub const SHUTDOWN_TRANSFER_TIMEOUT_MS: u64 = 3_000;
/// Invariant 8's name in reports.
const FENCED: &str = "8 a fenced node accepts no write";
/// Invariant 10's name in reports.
pub const NOT_A_VOTER: &str = "10 only a voter stands for election";

/// The replication position of a log: compares like Raft's (last term, last index).
pub fn position(log: &[Entry]) -> u64 {
    match log.last() {
        None => 0,
        Some(e) => {
            assert!(e.term.0 < 1 << 31 && (log.len() as u64) < 1 << 32);
            (e.term.0 << 32) | log.len() as u64
        }
    }
}

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
    fn log(&self, ordinal: i32) -> &Vec<Entry> {
        &self.k8s.pvcs[&ordinal].log
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
        let pos = position(&pvc.log);
        let log_len = pvc.log.len();
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
        let mut machine =
            base_core::agent::Agent::new(config, persisted.clone(), seed, now, &annotations)
                .expect("a valid peer set");
        let fenced = machine.is_fenced();
        // The first step also returns the start's effects: a bootstrap (the annotation names this
        // node an initial member) persists its configuration.
        let effects = machine.step(
            now,
            Input::Position {
                epoch: 0,
                position: pos,
            },
        );
        let slot = &mut self.replicas[ordinal as usize];
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        slot.agent = Some(Agent {
            machine,
            peers,
            incarnation,
            writer_term: None,
            next_index: BTreeMap::new(),
            match_index: BTreeMap::new(),
            commit: 0,
            next_append_at: now,
            next_fence_read: now.saturating_add(Millis(FENCE_POLL_MS)),
            sigterm: false,
            handed_over_on_sigterm: false,
        });
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
        let out = self.perform(ordinal, effects);
        assert!(out.is_empty(), "a starting node sends nothing");
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

    /// Feeds one input to the agent of `ordinal` and performs the effects, in order (adapter-k8s
    /// `agent::driver`). On `Exit` the process ends.
    pub fn step_agent(&mut self, ordinal: i32, input: Input) -> Vec<Out> {
        let now = self.local(ordinal);
        let Some(agent) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let effects = agent.machine.step(now, input);
        let out = self.perform(ordinal, effects);
        self.after_step(ordinal);
        if self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.machine.exited())
        {
            self.drop_agent(ordinal);
        }
        out
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
        let log_len = self.log(ordinal).len() as u64;
        // Raft's no-op: the first entry of the term, so that every append of this term ends with
        // an entry of this term and a follower's position only grows.
        let pvc = self.k8s.pvcs.get_mut(&ordinal).expect("a pod has its PVC");
        pvc.log.push(Entry { term, write: None });
        let pos = position(&pvc.log);
        let now = self.local(ordinal);
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        a.writer_term = Some(term);
        a.commit = 0;
        a.next_index = a.peers.iter().map(|&p| (p, log_len + 1)).collect();
        a.match_index = a.peers.iter().map(|&p| (p, 0)).collect();
        let effects = a.machine.step(
            now,
            Input::Position {
                epoch: 0,
                position: pos,
            },
        );
        assert!(effects.is_empty());
        self.ev(format!(
            "{} becomes writer of term {term} (log {})",
            pod_id(ordinal),
            log_len + 1
        ));
        self.check_has_acked(ordinal, term);
        self.appends(ordinal, None)
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
        let log = self.log(ordinal);
        let missing = self
            .checks
            .acked
            .iter()
            .find(|(i, e)| e.term < term && log.get(**i as usize - 1) != Some(e))
            .map(|(i, e)| (*i, *e));
        if let Some((index, entry)) = missing {
            let found = self
                .log(ordinal)
                .get(index as usize - 1)
                .map_or("nothing".to_string(), |e| e.to_string());
            self.fail(
                "5 no acknowledged write is lost",
                format!(
                    "{} writes in term {term} but holds {found} at index {index}, where the acknowledged {entry} was",
                    pod_id(ordinal)
                ),
            );
        }
    }

    /// Append messages from the writer `ordinal` to one member of its configuration, or to all.
    fn appends(&mut self, ordinal: i32, only: Option<i32>) -> Vec<Out> {
        let log_len = self.log(ordinal).len() as u64;
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let Some(term) = a.writer_term else {
            return Vec::new();
        };
        let members = a
            .node()
            .membership()
            .map(|m| m.members())
            .unwrap_or_default();
        // A peer out of the configuration counts for nothing when it comes back (its PVC may be
        // a new one): it starts over as a new member would.
        for p in a.peers.clone() {
            if !members.contains(&pod_id(p)) {
                a.next_index.insert(p, log_len + 1);
                a.match_index.insert(p, 0);
            }
        }
        let targets: Vec<(i32, u64)> = a
            .next_index
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o == **p) && members.contains(&pod_id(**p)))
            .map(|(p, n)| (*p, *n))
            .collect();
        let log = &self.k8s.pvcs[&ordinal].log;
        let packets: Vec<(i32, Packet)> = targets
            .into_iter()
            .map(|(peer, next)| {
                let prev_index = next.saturating_sub(1).min(log.len() as u64);
                let prev_term = match prev_index {
                    0 => Term(0),
                    i => log[i as usize - 1].term,
                };
                let packet = Packet::Append {
                    from: ordinal,
                    term,
                    prev_index,
                    prev_term,
                    entries: log[prev_index as usize..].to_vec(),
                };
                (peer, packet)
            })
            .collect();
        packets
            .into_iter()
            .map(|(peer, p)| self.out(agent_addr(peer), p))
            .collect()
    }

    /// Every `TICK_MS`: the election's clock input, and the writer's periodic appends.
    pub fn agent_tick(&mut self, ordinal: i32, incarnation: u64) -> Option<Vec<Out>> {
        if !self.alive(ordinal, incarnation) {
            return None;
        }
        let mut out = self.step_agent(ordinal, Input::Tick);
        let now = self.local(ordinal);
        out.extend(self.read_fence_file(ordinal, now));
        out.extend(self.on_sigterm(ordinal));
        let heartbeat = self.cfg.timing.heartbeat_interval_ms();
        let due = self
            .agent_mut(ordinal)
            .filter(|a| a.writer_term.is_some() && now >= a.next_append_at)
            .map(|a| a.next_append_at = now.saturating_add(heartbeat))
            .is_some();
        if due {
            out.extend(self.appends(ordinal, None));
        }
        Some(out)
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
            Packet::Append {
                from,
                term,
                prev_index,
                prev_term,
                entries,
            } => self.on_append(ordinal, from, term, prev_index, prev_term, entries),
            Packet::AppendAck {
                from,
                term,
                success,
                index,
            } => self.on_append_ack(ordinal, from, term, success, index),
            Packet::LeaderQuery { seq } => {
                let body = self.leader_answer(ordinal);
                vec![self.out(src, Packet::LeaderAnswer { seq, body })]
            }
            Packet::Read { req, must_have } => {
                let log_len = self.log(ordinal).len() as u64;
                if let Some((index, entry)) = must_have {
                    let held = self.log(ordinal).get(index as usize - 1).copied();
                    if held != Some(entry) {
                        self.fail(
                            "4 read-your-writes",
                            format!(
                                "a read within the TTL of acknowledged {entry} (index {index}) went to {}, which holds {}",
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

    fn on_append(
        &mut self,
        ordinal: i32,
        from: i32,
        term: Term,
        prev_index: u64,
        prev_term: Term,
        entries: Vec<Entry>,
    ) -> Vec<Out> {
        let Some(a) = self.replicas[ordinal as usize].agent.as_ref() else {
            return Vec::new();
        };
        let node = a.node();
        let from_id = pod_id(from);
        let my_term = node.term();
        // Only from the writer this node follows, in its own term.
        if my_term != term || node.role() == Role::Writer || node.leader() != Some(&from_id) {
            let len = self.log(ordinal).len() as u64;
            let ack = Packet::AppendAck {
                from: ordinal,
                term: my_term,
                success: false,
                index: len,
            };
            return vec![self.out(agent_addr(from), ack)];
        }
        let log = self.log(ordinal);
        let consistent = prev_index <= log.len() as u64
            && (prev_index == 0 || log[prev_index as usize - 1].term == prev_term);
        if !consistent {
            let hint = (log.len() as u64).min(prev_index.saturating_sub(1));
            let ack = Packet::AppendAck {
                from: ordinal,
                term,
                success: false,
                index: hint,
            };
            return vec![self.out(agent_addr(from), ack)];
        }
        let mut truncated: Vec<(u64, Entry)> = Vec::new();
        let pvc = self.k8s.pvcs.get_mut(&ordinal).expect("a pod has its PVC");
        for (k, entry) in entries.iter().enumerate() {
            let index = prev_index as usize + k + 1;
            match pvc.log.get(index - 1) {
                Some(e) if e.term == entry.term => {}
                Some(_) => {
                    truncated.extend(
                        pvc.log[index - 1..]
                            .iter()
                            .enumerate()
                            .map(|(j, e)| ((index + j) as u64, *e)),
                    );
                    pvc.log.truncate(index - 1);
                    pvc.log.push(*entry);
                }
                None => pvc.log.push(*entry),
            }
        }
        let pos = position(&pvc.log);
        let matched = prev_index + entries.len() as u64;
        // Invariant 5: an acknowledged write is never cut from a log that holds it.
        for (index, e) in truncated {
            if self.checks.acked.get(&index) == Some(&e) {
                self.fail(
                    "5 no acknowledged write is lost",
                    format!(
                        "{} cuts the acknowledged {e} at index {index} on an append from {} (term {term})",
                        pod_id(ordinal),
                        pod_id(from)
                    ),
                );
            }
        }
        let mut out = self.step_agent(
            ordinal,
            Input::Position {
                epoch: 0,
                position: pos,
            },
        );
        let ack = Packet::AppendAck {
            from: ordinal,
            term,
            success: true,
            index: matched,
        };
        out.push(self.out(agent_addr(from), ack));
        out
    }

    fn on_append_ack(
        &mut self,
        ordinal: i32,
        from: i32,
        term: Term,
        success: bool,
        index: u64,
    ) -> Vec<Out> {
        let log_len = self.log(ordinal).len() as u64;
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        if a.writer_term != Some(term) || !a.next_index.contains_key(&from) {
            return Vec::new();
        }
        if !success {
            let next = a.next_index[&from];
            let back = (index + 1).min(next.saturating_sub(1)).max(1);
            a.next_index.insert(from, back.min(log_len + 1));
            return self.appends(ordinal, Some(from));
        }
        let m = a.match_index.entry(from).or_insert(0);
        *m = (*m).max(index);
        let n = a.next_index.entry(from).or_insert(1);
        *n = (*n).max(index + 1);
        // The highest index a quorum of the election's configuration (the writer included, if
        // a voter) holds, if it is of this term.
        let Some(quorum) = a.node().quorum_config() else {
            return Vec::new();
        };
        let mut acked: BTreeMap<NodeId, u64> = a
            .match_index
            .iter()
            .map(|(p, m)| (pod_id(*p), *m))
            .collect();
        acked.insert(pod_id(ordinal), log_len);
        let candidate = quorum.committed_index(&acked);
        if candidate > a.commit
            && self.k8s.pvcs[&ordinal].log[candidate as usize - 1].term == term
            && let Some(a) = self.agent_mut(ordinal)
        {
            a.commit = candidate;
        }
        Vec::new()
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
    /// (the machine's; the planted `no-recheck` skips it there), then append and replicate.
    /// Returns the entry's index.
    pub fn apply_write(
        &mut self,
        ordinal: i32,
        incarnation: u64,
        term: Term,
        write: WriteId,
    ) -> (Result<u64, Term>, Vec<Out>) {
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
        let pvc = self.k8s.pvcs.get_mut(&ordinal).expect("a pod has its PVC");
        pvc.log.push(entry);
        let index = pvc.log.len() as u64;
        let pos = position(&pvc.log);
        self.ev(format!("{} applies {entry} at {index}", pod_id(ordinal)));
        // Invariant 2, at the moment a store applies a write.
        self.check_sole_acceptor(ordinal, term, &format!("applies {entry}"));
        let mut out = self.step_agent(
            ordinal,
            Input::Position {
                epoch: 0,
                position: pos,
            },
        );
        out.extend(self.appends(ordinal, None));
        (Ok(index), out)
    }

    /// Whether the write at `index` is held by a majority of the writer's term.
    pub fn commit_status(&self, ordinal: i32, incarnation: u64, index: u64, term: Term) -> Commit {
        let Some(a) = self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .filter(|a| a.incarnation == incarnation)
        else {
            return Commit::Done(WriteReply::Unknown);
        };
        if a.writer_term != Some(term) {
            return Commit::Done(WriteReply::Unknown);
        }
        if a.commit >= index {
            Commit::Done(WriteReply::Ok { term, index })
        } else {
            Commit::Pending
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
    let index = match applied {
        Ok(index) => index,
        Err(t) => return WriteReply::Refused { term: t },
    };
    for _ in 0..COMMIT_TIMEOUT_MS / COMMIT_POLL_MS {
        madsim::time::sleep(Duration::from_millis(COMMIT_POLL_MS)).await;
        if let Commit::Done(reply) = lock(world).commit_status(ordinal, incarnation, index, term) {
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
