//! A simulated cluster of Quasar nodes, the driver of the core tests and the scenario scripts.
//! Real time advances in 1 ms steps; every node reads its own drifting clock; the network
//! delays, drops, duplicates and reorders messages and honours partitions; the writer accepts a
//! simulated write every [`WRITE_EVERY_MS`]. Every step of every node goes through [`Nodes`],
//! so the [`super::Checker`] sees it all (see there what is checked).

use super::nodes::Nodes;
use super::rng::Rng;
use crate::quasar::{ConfigVersion, Effect, Input, Membership, Message, Node, Role, Timing};
use crate::{Millis, NodeId, Term};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// How often each node gets a `Tick` (real ms).
pub const TICK_MS: u64 = 10;
/// The writer accepts a simulated write this often, advancing its replication position.
pub const WRITE_EVERY_MS: u64 = 25;
/// Messages in flight beyond this are dropped (a bounded network buffer).
pub const INFLIGHT_MAX: usize = 10_000;

#[derive(Clone, Debug)]
pub struct NetFaults {
    pub drop_pct: u64,
    pub dup_pct: u64,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

impl NetFaults {
    pub fn clean(delay_ms: u64) -> NetFaults {
        NetFaults {
            drop_pct: 0,
            dup_pct: 0,
            delay_min_ms: delay_ms,
            delay_max_ms: delay_ms,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    msg: Message,
}

// `Message` has no `Ord`: in-flight messages are ordered by (time, sequence) only.
impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Per node, what the cluster's driver keeps beside the node (see [`Nodes`] for the rest).
#[derive(Clone, Debug)]
struct Driving {
    position: u64,
    next_tick_real: u64,
    next_write_real: u64,
    restarts: u64,
}

pub struct Cluster {
    pub real_ms: u64,
    pub nodes: Nodes,
    driving: Vec<Driving>,
    inflight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// `cut[i][j]`: messages from `i` to `j` are lost (partitions, and one-way or single-link cuts).
    pub cut: Vec<Vec<bool>>,
    /// `stalled[i]`: the log stops reaching node `i` while heartbeats still do (a store that
    /// lags behind its agent: holding a configuration says nothing of holding the data).
    pub stalled: Vec<bool>,
    pub net: NetFaults,
    /// When set, messages wait in flight until `deliver_all`.
    pub hold: bool,
    rng: Rng,
    seed: u64,
    /// Term → the real time its writer won.
    pub won_real: BTreeMap<Term, u64>,
    /// Real time at which each node last could accept writes.
    pub last_accepting_real: Vec<Option<u64>>,
    pub trace: bool,
    /// Whether the writer accepts a simulated write every `WRITE_EVERY_MS`.
    pub writes: bool,
    /// When set, the effects the nodes produce are recorded here, one line each (see `record`).
    pub log: Option<Vec<String>>,
}

impl Cluster {
    /// `n` nodes named "1".."n", all starting at real time 0 with clock offsets drawn from `seed`.
    pub fn new(n: usize, timing: Timing, seed: u64, net: NetFaults) -> Cluster {
        Cluster::with_members(n, n, timing, seed, net)
    }

    /// `universe` nodes named "1".."universe": the first `initial` are the cluster's initial
    /// voters (they persisted the bootstrap configuration before starting, as a driver does),
    /// the others start as joiners, holding no configuration until a writer adds them.
    pub fn with_members(
        universe: usize,
        initial: usize,
        timing: Timing,
        seed: u64,
        net: NetFaults,
    ) -> Cluster {
        let n = universe;
        let mut rng = Rng(seed);
        let ids: Vec<NodeId> = (1..=n).map(|i| NodeId::new(i.to_string())).collect();
        let mut offsets = Vec::new();
        let mut driving = Vec::new();
        for _ in 0..n {
            offsets.push(rng.below(1_000_000));
            driving.push(Driving {
                position: 0,
                next_tick_real: rng.below(TICK_MS),
                next_write_real: 0,
                restarts: 0,
            });
        }
        let mut c = Cluster {
            real_ms: 0,
            nodes: Nodes::new(ids, initial, timing, &offsets),
            driving,
            inflight: BinaryHeap::new(),
            seq: 0,
            cut: vec![vec![false; n]; n],
            stalled: vec![false; n],
            net,
            hold: false,
            rng,
            seed,
            won_real: BTreeMap::new(),
            last_accepting_real: vec![None; n],
            trace: false,
            writes: true,
            log: None,
        };
        for i in 0..n {
            let effects = c.nodes.start(i, 0, c.node_seed(i));
            c.perform(i, effects);
        }
        c
    }

    fn node_seed(&self, i: usize) -> u64 {
        self.seed ^ ((i as u64 + 1) << 40) ^ (self.driving[i].restarts << 20)
    }

    /// The first safety violation the checker found, with its real time.
    pub fn violation(&self) -> Option<&String> {
        self.nodes.checker.violation()
    }

    /// Term → the node index that became writer in it.
    pub fn writers(&self) -> &BTreeMap<Term, usize> {
        self.nodes.checker.writers()
    }

    pub fn id(&self, i: usize) -> &NodeId {
        self.nodes.id(i)
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.node(i)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn paused(&self, i: usize) -> bool {
        self.nodes.slots[i].paused
    }

    pub fn fenced(&self, i: usize) -> bool {
        self.nodes.slots[i].fenced
    }

    /// Node `i`'s clock runs at `ppm` parts per million of real time from now on.
    pub fn set_rate(&mut self, i: usize, ppm: u64) {
        self.nodes.set_rate(i, self.real_ms, ppm);
    }

    /// The operator publishes the desired voters to every pod (live ones now, restarted ones
    /// when they start).
    pub fn set_members(&mut self, voters: &[usize]) {
        let set: BTreeSet<NodeId> = voters.iter().map(|&i| self.id(i).clone()).collect();
        self.nodes.target = Some(set.clone());
        for i in 0..self.len() {
            self.step_node(i, Input::SetMembers(set.clone()));
        }
    }

    /// The configuration node `i` holds (alive) or persisted (dead).
    pub fn membership(&self, i: usize) -> Option<Membership> {
        match self.node(i) {
            Some(n) => n.membership().cloned(),
            None => self.nodes.slots[i].disk.membership.clone(),
        }
    }

    /// Has the writer (one accepting writes) settled on exactly these voters, committed?
    pub fn settled_on(&self, voters: &[usize]) -> bool {
        let want: BTreeSet<NodeId> = voters.iter().map(|&i| self.id(i).clone()).collect();
        self.accepting().iter().any(|&w| {
            self.node(w).is_some_and(|n| {
                n.membership_settled() && n.membership().is_some_and(|m| m.voters == want)
            })
        })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.slots.iter().position(|s| s.id.as_str() == name)
    }

    /// The local clock of node `i` at the current real time.
    pub fn local(&self, i: usize) -> Millis {
        self.nodes.local(i, self.real_ms)
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes.alive(i)
    }

    /// The nodes that can accept writes right now.
    pub fn accepting(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.nodes.accepts(i, self.real_ms))
            .collect()
    }

    pub fn role(&self, i: usize) -> Option<Role> {
        self.node(i).map(Node::role)
    }

    pub fn term(&self, i: usize) -> Term {
        match self.node(i) {
            Some(n) => n.term(),
            None => self.nodes.slots[i].disk.term,
        }
    }

    pub fn max_term(&self) -> Term {
        (0..self.len())
            .map(|i| self.term(i))
            .max()
            .unwrap_or_default()
    }

    /// Feed `input` to node `i` now (nothing if it is dead or paused) and perform its effects.
    pub fn step_node(&mut self, i: usize, input: Input) {
        let effects = self.nodes.step(i, self.real_ms, input);
        self.perform(i, effects);
    }

    /// Appends `effect` of node `i` to the log, if one is kept: election traffic, persisted
    /// terms, votes and configurations, winning and stepping down. Heartbeats, their granted
    /// acks and lease renewals (every tick) are left out; a refused ack (it deposes a stale
    /// writer) is kept. Sends are recorded as produced, whether or not the network then
    /// delivers them.
    fn record(&mut self, i: usize, effect: &Effect) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let id = self.nodes.id(i);
        let granted = |g: &bool| if *g { "granted" } else { "refused" };
        let what = match effect {
            Effect::Send { to, msg } => {
                let msg = match msg {
                    Message::Heartbeat { .. } | Message::HeartbeatAck { ok: true, .. } => return,
                    Message::HeartbeatAck {
                        term, ok: false, ..
                    } => {
                        format!("HeartbeatAck term {term} refused")
                    }
                    Message::PreVote { term, position, .. } => {
                        format!("PreVote term {term} position {position}")
                    }
                    Message::PreVoteResponse {
                        term, granted: g, ..
                    } => {
                        format!("PreVoteResponse term {term} {}", granted(g))
                    }
                    Message::Vote {
                        term,
                        position,
                        transfer_from,
                        ..
                    } => match transfer_from {
                        Some(f) => {
                            format!("Vote term {term} position {position} transfer from {f}")
                        }
                        None => format!("Vote term {term} position {position}"),
                    },
                    Message::VoteResponse {
                        term, granted: g, ..
                    } => {
                        format!("VoteResponse term {term} {}", granted(g))
                    }
                    Message::TimeoutNow { term } => format!("TimeoutNow term {term}"),
                };
                format!("{id} -> {to} {msg}")
            }
            Effect::Persist {
                term,
                voted_for,
                membership,
            } => {
                // The bootstrap configuration is not news: static scripts record as before.
                let config = match membership {
                    Some(m) if m.version != ConfigVersion::default() => {
                        format!(" config {}", m.describe())
                    }
                    _ => String::new(),
                };
                match voted_for {
                    Some(v) => format!("{id} persists term {term} vote {v}{config}"),
                    None => format!("{id} persists term {term} no vote{config}"),
                }
            }
            Effect::BecomeWriter { term, .. } => format!("{id} becomes writer of term {term}"),
            Effect::StepDown { term } => format!("{id} steps down from term {term}"),
            Effect::LeaseRenewed { .. } => return,
        };
        log.push(format!("[{:>6}] {what}", self.real_ms));
    }

    /// Performs what the checker left to the driver: records, and routes the sends.
    fn perform(&mut self, i: usize, effects: Vec<Effect>) {
        for effect in effects {
            self.record(i, &effect);
            match effect {
                Effect::Send { to, msg } => {
                    if let Some(to) = self.index(to.as_str()) {
                        self.send(i, to, msg);
                    }
                }
                Effect::BecomeWriter { term, lease_until } => {
                    if self.trace {
                        eprintln!(
                            "[{:>6}] {} becomes writer of term {term} (lease until {lease_until})",
                            self.real_ms,
                            self.id(i),
                        );
                    }
                    self.won_real.entry(term).or_insert(self.real_ms);
                }
                Effect::StepDown { term } => {
                    if self.trace {
                        eprintln!(
                            "[{:>6}] {} steps down from term {term}",
                            self.real_ms,
                            self.id(i)
                        );
                    }
                }
                Effect::Persist { .. } | Effect::LeaseRenewed { .. } => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        if self.cut[from][to] || self.rng.percent(self.net.drop_pct) {
            return;
        }
        let copies = if self.rng.percent(self.net.dup_pct) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.inflight.len() >= INFLIGHT_MAX {
                return;
            }
            let span = self.net.delay_max_ms.saturating_sub(self.net.delay_min_ms) + 1;
            let at = self.real_ms + self.net.delay_min_ms + self.rng.below(span);
            self.seq += 1;
            self.inflight.push(Reverse(InFlight {
                at,
                seq: self.seq,
                from,
                to,
                msg: msg.clone(),
            }));
        }
    }

    fn deliver(&mut self, m: InFlight) {
        if self.cut[m.from][m.to] || !self.alive(m.to) {
            return;
        }
        // Replication rides on heartbeats: a follower catches up to what the writer had.
        if let Message::Heartbeat { position, .. } = &m.msg
            && !self.stalled[m.to]
        {
            let pos = self.driving[m.to].position.max(*position);
            self.driving[m.to].position = pos;
            self.step_node(
                m.to,
                Input::Position {
                    epoch: 0,
                    position: pos,
                },
            );
        }
        let from = self.id(m.from).clone();
        self.step_node(m.to, Input::Message { from, msg: m.msg });
    }

    /// Deliver every message in flight now (ignoring its delay), in send order.
    pub fn deliver_all(&mut self) {
        let mut pending: Vec<InFlight> = std::mem::take(&mut self.inflight)
            .into_iter()
            .map(|Reverse(m)| m)
            .collect();
        pending.sort_by_key(|m| m.seq);
        let mut kept = Vec::new();
        for m in pending {
            if self.paused(m.to) {
                kept.push(m);
            } else {
                self.deliver(m);
            }
        }
        for m in kept {
            self.inflight.push(Reverse(m));
        }
        self.check();
    }

    /// Drop every message in flight.
    pub fn drop_all(&mut self) {
        self.inflight.clear();
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// One real millisecond: deliver what is due, tick who is due, simulate writes, check.
    pub fn step_ms(&mut self) {
        self.real_ms += 1;
        self.nodes.checker.settle(self.real_ms);
        if !self.hold {
            let mut kept = Vec::new();
            while let Some(Reverse(m)) = self.inflight.peek() {
                if m.at > self.real_ms {
                    break;
                }
                let Some(Reverse(m)) = self.inflight.pop() else {
                    break;
                };
                if self.paused(m.to) {
                    kept.push(m);
                } else {
                    self.deliver(m);
                }
            }
            for mut m in kept {
                m.at = self.real_ms + 1;
                self.inflight.push(Reverse(m));
            }
        }
        for i in 0..self.len() {
            if !self.alive(i) || self.paused(i) {
                continue;
            }
            if self.real_ms >= self.driving[i].next_tick_real {
                self.driving[i].next_tick_real = self.real_ms + TICK_MS;
                self.step_node(i, Input::Tick);
            }
            if self.writes
                && self.real_ms >= self.driving[i].next_write_real
                && self.nodes.accepts(i, self.real_ms)
            {
                self.driving[i].next_write_real = self.real_ms + WRITE_EVERY_MS;
                self.driving[i].position += 1;
                let position = self.driving[i].position;
                self.step_node(i, Input::Position { epoch: 0, position });
            }
        }
        self.check();
    }

    pub fn advance(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step_ms();
        }
    }

    /// Advance until `pred` holds (checked every ms) or `limit_ms` pass. Returns the time waited.
    pub fn advance_until(
        &mut self,
        limit_ms: u64,
        mut pred: impl FnMut(&Cluster) -> bool,
    ) -> Option<u64> {
        for waited in 0..=limit_ms {
            if pred(self) {
                return Some(waited);
            }
            if waited < limit_ms {
                self.step_ms();
            }
        }
        None
    }

    /// Advance until some node accepts writes (at most `limit_ms`): that node.
    pub fn first_writer(&mut self, limit_ms: u64) -> Option<usize> {
        self.advance_until(limit_ms, |c| !c.accepting().is_empty())?;
        self.accepting().first().copied()
    }

    /// Notes who accepts writes now (for `last_accepting_real`); the checker has seen every
    /// step already.
    pub fn check(&mut self) {
        for i in self.accepting() {
            self.last_accepting_real[i] = Some(self.real_ms);
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes.kill(i, self.real_ms);
    }

    /// Restart a dead node from its persisted state (its Base data, the position, survives).
    pub fn restart(&mut self, i: usize) {
        if self.alive(i) {
            return;
        }
        self.driving[i].restarts += 1;
        let effects = self.nodes.start(i, self.real_ms, self.node_seed(i));
        self.perform(i, effects);
        let position = self.driving[i].position;
        self.step_node(i, Input::Position { epoch: 0, position });
        self.driving[i].next_tick_real = self.real_ms;
    }

    /// Fence or unfence node `i` (kept across its restarts, like the pod annotation).
    pub fn set_fenced(&mut self, i: usize, fenced: bool) {
        let effects = self.nodes.set_fenced(i, self.real_ms, fenced);
        self.perform(i, effects);
    }

    pub fn pause(&mut self, i: usize) {
        if self.alive(i) {
            self.nodes.slots[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        let was = std::mem::replace(&mut self.nodes.slots[i].paused, false);
        self.driving[i].next_tick_real = self.real_ms;
        // The agent re-reads the desired members it missed while paused.
        if let (true, Some(target)) = (was, self.nodes.target.clone()) {
            self.step_node(i, Input::SetMembers(target));
        }
    }

    /// Messages cross only within a group; nodes not named form a group of their own each.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.len();
        let mut group: Vec<usize> = (groups.len()..groups.len() + n).collect();
        for (k, members) in groups.iter().enumerate() {
            for &i in members {
                group[i] = k;
            }
        }
        for i in 0..n {
            for j in 0..n {
                self.cut[i][j] = group[i] != group[j];
            }
        }
    }

    /// Cut the link between `i` and `j` in both directions (a non-transitive partition).
    pub fn cut_link(&mut self, i: usize, j: usize) {
        self.cut[i][j] = true;
        self.cut[j][i] = true;
    }

    pub fn heal(&mut self) {
        self.cut
            .iter_mut()
            .for_each(|row| row.iter_mut().for_each(|c| *c = false));
    }
}
