//! One replica: the Quasar agent (the core election, driven by ticks and peer messages) in front of
//! a small model of the Base store. The store's log lives on the pod's PVC and survives restarts;
//! the agent's memory does not. Writes are admitted only while the election says so
//! (`can_accept_writes` on the node's own skewed clock) and are recorded with their term; the log
//! is replicated to the followers in the manner of Raft's AppendEntries, and a write is
//! acknowledged once a majority holds it. The store's replication position
//! `(last term << 32) | length` is fed to the election, so a voter grants only candidates whose
//! log is at least as up to date as its own.

use crate::config::Bug;
use crate::k8s::PodPhase;
use crate::world::{
    Agent, Entry, Out, Packet, Shared, World, WriteId, WriteReply, agent_addr, lock, ordinal_of,
    pod_id, send_all,
};
use base_core::control::{TransferDecision, TransferInbox};
use base_core::quasar::{Effect, Input, Message, Node, Role};
use base_core::wire::LeaderAnswer;
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
/// Invariant 8's name in reports.
const FENCED: &str = "8 a fenced node accepts no write";

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
        let size = self.k8s.pods.get(&ordinal)?.cluster_size;
        // The agent reads the fence before its node may campaign (adapter-k8s `agent::run`).
        let fenced =
            self.k8s.pods.get(&ordinal)?.fence_file && self.cfg.bug != Some(Bug::IgnoreFence);
        let pvc = self.k8s.pvcs.get(&ordinal)?;
        let persisted = pvc.persisted.clone();
        let pos = position(&pvc.log);
        let log_len = pvc.log.len();
        let peers: Vec<i32> = (0..size).filter(|&o| o != ordinal).collect();
        let now = self.local(ordinal);
        let seed = self.rng.next_u64();
        let mut node = Node::new(
            pod_id(ordinal),
            peers.iter().map(|&o| pod_id(o)).collect(),
            self.cfg.timing,
            persisted.clone(),
            seed,
            now,
        )
        .expect("a valid peer set");
        let effects = node.step(now, Input::SetFenced(fenced));
        assert!(effects.is_empty());
        // A request already in the file is old: refused (and remembered) by a node with no role.
        let mut inbox = TransferInbox::default();
        let _ = inbox.offer(self.k8s.pods.get(&ordinal)?.transfer_file.as_deref(), &node);
        let effects = node.step(
            now,
            Input::Position {
                epoch: 0,
                position: pos,
            },
        );
        assert!(effects.is_empty());
        let slot = &mut self.replicas[ordinal as usize];
        slot.incarnation += 1;
        let incarnation = slot.incarnation;
        slot.agent = Some(Agent {
            node,
            peers,
            incarnation,
            writer_term: None,
            next_index: BTreeMap::new(),
            match_index: BTreeMap::new(),
            commit: 0,
            next_append_at: now,
            next_fence_read: now.saturating_add(Millis(FENCE_POLL_MS)),
            sigterm: false,
            granted_term: None,
            inbox,
        });
        self.stats.pod_starts += 1;
        self.ev(format!(
            "{} starts: term {} voted {:?} log {} cluster of {}{}",
            pod_id(ordinal),
            persisted.term,
            persisted.voted_for.map(|v| v.0),
            log_len,
            size,
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

    fn alive(&self, ordinal: i32, incarnation: u64) -> bool {
        self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.incarnation == incarnation)
    }

    /// Feeds one input to the election of `ordinal` and performs the effects.
    pub fn step_agent(&mut self, ordinal: i32, input: Input) -> Vec<Out> {
        let now = self.local(ordinal);
        let Some(agent) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let effects = agent.node.step(now, input);
        let out = self.perform(ordinal, effects);
        self.after_step(ordinal);
        out
    }

    fn perform(&mut self, ordinal: i32, effects: Vec<Effect>) -> Vec<Out> {
        let mut out = Vec::new();
        let me = pod_id(ordinal);
        for effect in effects {
            match effect {
                Effect::Persist {
                    term, voted_for, ..
                } => {
                    let pvc = self.k8s.pvcs.get_mut(&ordinal).expect("a pod has its PVC");
                    // As the agent does: the configuration is not persisted until the operator
                    // publishes members (issue 18); the peer set follows the pod's cluster size.
                    pvc.persisted = base_core::quasar::PersistedState {
                        term,
                        voted_for,
                        membership: None,
                    };
                }
                Effect::Send { to, msg } => {
                    if self.cfg.bug == Some(Bug::VoteCache)
                        && let Message::VoteResponse {
                            term,
                            granted: true,
                            ..
                        } = msg
                        && let Some(a) = self.agent_mut(ordinal)
                    {
                        a.granted_term = Some(term);
                    }
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
                Effect::LeaseRenewed { .. } => {}
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
        let effects = a.node.step(
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
        if agent.node.can_accept_writes(now) {
            if agent.node.is_fenced() {
                let term = agent.node.term();
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
                .node
                .writer_view(now)
                .lease_until
                .expect("a writer has a lease");
            let term = agent.node.term();
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
                    .map_or("?".to_string(), |a| a.node.term().to_string());
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

    /// Append messages from the writer `ordinal` to one peer, or to all.
    fn appends(&mut self, ordinal: i32, only: Option<i32>) -> Vec<Out> {
        let Some(a) = self.replicas[ordinal as usize].agent.as_ref() else {
            return Vec::new();
        };
        let Some(term) = a.writer_term else {
            return Vec::new();
        };
        let targets: Vec<(i32, u64)> = a
            .next_index
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o == **p))
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
    /// up-to-date peer before the process exits (adapter-k8s `agent::driver`, `Control::Shutdown`),
    /// so that a deleted writer costs a hand-over, not an election timeout.
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
        if a.node.role() != Role::Writer {
            return Vec::new();
        }
        let Some(to) = a.node.hand_over_target() else {
            return Vec::new();
        };
        self.ev(format!(
            "{} got SIGTERM: hands over to {to}",
            pod_id(ordinal)
        ));
        self.stats.transfers += 1;
        self.step_agent(ordinal, Input::TransferWriter { to })
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

    /// Every `FENCE_POLL_MS`: the agent re-reads its pod's annotations file; a change of the
    /// fence becomes `Input::SetFenced`, a new transfer request is decided by the core
    /// (`control::TransferInbox`) as in adapter-k8s `agent::fence::watch` and `agent::driver`.
    fn read_fence_file(&mut self, ordinal: i32, now: Millis) -> Vec<Out> {
        let Some(a) = self.agent_mut(ordinal).filter(|a| now >= a.next_fence_read) else {
            return Vec::new();
        };
        a.next_fence_read = now.saturating_add(Millis(FENCE_POLL_MS));
        let mut out = self.read_fence(ordinal);
        out.extend(self.read_transfer_request(ordinal));
        out
    }

    /// The transfer request in the annotations file, considered once.
    fn read_transfer_request(&mut self, ordinal: i32) -> Vec<Out> {
        let value = self
            .k8s
            .pods
            .get(&ordinal)
            .and_then(|p| p.transfer_file.clone());
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let Some(considered) = a.inbox.offer(value.as_deref(), &a.node) else {
            return Vec::new();
        };
        match considered.decision {
            TransferDecision::Start(to) => {
                self.ev(format!(
                    "{} reads a transfer request: hands over to {to}",
                    pod_id(ordinal)
                ));
                self.stats.transfers += 1;
                self.step_agent(ordinal, Input::TransferWriter { to })
            }
            TransferDecision::Refused(why) => {
                self.ev(format!(
                    "{} reads a transfer request: {}",
                    pod_id(ordinal),
                    why.as_str()
                ));
                Vec::new()
            }
        }
    }

    fn read_fence(&mut self, ordinal: i32) -> Vec<Out> {
        let Some(a) = self.agent_mut(ordinal) else {
            return Vec::new();
        };
        let (was, role) = (a.node.is_fenced(), a.node.role());
        let fenced = self.k8s.pods.get(&ordinal).is_some_and(|p| p.fence_file)
            && self.cfg.bug != Some(Bug::IgnoreFence);
        if fenced == was {
            return Vec::new();
        }
        self.ev(format!(
            "{} reads its annotations: {} ({role:?})",
            pod_id(ordinal),
            if fenced { "fenced" } else { "unfenced" }
        ));
        if fenced {
            self.stats.fences_applied += 1;
            if role == Role::Writer {
                self.stats.fenced_writers += 1;
            }
        }
        let out = self.step_agent(ordinal, Input::SetFenced(fenced));
        // Invariant 8: from this instant on, the node may not accept writes.
        let now_ns = self.now_ns();
        if fenced
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

    /// The planted `vote-cache`: a vote request of a term the election already granted a vote in
    /// is answered from the memo, without asking the election, whoever the candidate.
    fn plant_vote_cache(&mut self, ordinal: i32, from: &NodeId, msg: &Message) -> Option<Vec<Out>> {
        let Message::Vote { term, sent_ms, .. } = *msg else {
            return None;
        };
        let a = self.replicas[ordinal as usize].agent.as_ref()?;
        if self.cfg.bug != Some(Bug::VoteCache) || a.granted_term != Some(term) {
            return None;
        }
        let to = ordinal_of(from.as_str())?;
        self.ev(format!(
            "{} answers the vote request of {from} for term {term} from its memo (planted vote-cache)",
            pod_id(ordinal)
        ));
        let reply = Packet::Peer {
            from: pod_id(ordinal),
            msg: Message::VoteResponse {
                term,
                granted: true,
                sent_ms,
                membership: None,
            },
        };
        Some(vec![self.out(agent_addr(to), reply)])
    }

    /// A packet reached the agent of `ordinal`.
    pub fn agent_receive(&mut self, ordinal: i32, packet: Packet, src: SocketAddr) -> Vec<Out> {
        match packet {
            Packet::Peer { from, msg } => {
                if let Some(reply) = self.plant_vote_cache(ordinal, &from, &msg) {
                    return reply;
                }
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
        let node = &a.node;
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
        // The highest index a majority (the writer included) holds, if it is of this term.
        let mut matched: Vec<u64> = a.match_index.values().copied().collect();
        matched.push(log_len);
        matched.sort_unstable_by(|x, y| y.cmp(x));
        let cluster = a.peers.len() + 1;
        let quorum = cluster / 2 + 1;
        let candidate = matched[quorum - 1];
        if candidate > a.commit
            && self.k8s.pvcs[&ordinal].log[candidate as usize - 1].term == term
            && let Some(a) = self.agent_mut(ordinal)
        {
            a.commit = candidate;
        }
        Vec::new()
    }

    /// `GET /_ha/leader` of `ordinal`, as JSON.
    fn leader_answer(&self, ordinal: i32) -> Vec<u8> {
        let now = self.local(ordinal);
        let a = self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .expect("only a running agent answers");
        let view = a.node.writer_view(now);
        let (leader_url, node_id, lease_expires) = match (&view.writer, view.lease_until) {
            (Some(w), Some(lease)) => (
                format!(
                    "http://{w}.{}-hs.{}.svc:{}",
                    crate::config::BASE_NAME,
                    crate::config::NAMESPACE,
                    crate::world::AGENT_PORT
                ),
                w.to_string(),
                base_core::wire::format_rfc3339(lease),
            ),
            _ => (String::new(), String::new(), String::new()),
        };
        let answer = LeaderAnswer {
            leader_url,
            node_id,
            term: view.term.0,
            lease_expires,
        };
        serde_json::to_vec(&answer).expect("a leader answer serialises")
    }

    /// The agent's check when a write arrives (and again right before the store applies it): the
    /// writer of exactly the term the gateway named, inside its lease.
    fn may_write(&self, ordinal: i32, incarnation: u64, term: Term) -> Result<(), Term> {
        let Some(a) = self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .filter(|a| a.incarnation == incarnation)
        else {
            return Err(Term(0));
        };
        let now = self.local(ordinal);
        let lease_ok = match self.cfg.bug {
            Some(Bug::LeaseOverrun(ms)) => {
                a.node.role() == Role::Writer
                    && a.node.can_accept_writes(now.saturating_sub(Millis(ms)))
            }
            _ => a.node.can_accept_writes(now),
        };
        if lease_ok && a.node.term() == term && a.writer_term == Some(term) {
            Ok(())
        } else {
            Err(a.node.term())
        }
    }

    /// The agent's check when a write arrives.
    pub fn admit_write(&mut self, ordinal: i32, incarnation: u64, term: Term) -> Result<(), Term> {
        let admitted = self.may_write(ordinal, incarnation, term);
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

    /// The store applies a write admitted earlier: re-checks the lease (unless the planted bug
    /// skips it), appends, and starts replicating. Returns the entry's index.
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
        if self.cfg.bug != Some(Bug::NoRecheck)
            && let Err(t) = self.may_write(ordinal, incarnation, term)
        {
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
