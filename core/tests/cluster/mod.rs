//! A simulated cluster of Quasar nodes, shared by the property tests and the scenario
//! interpreter. Real time advances in 1 ms steps; every node reads its own drifting clock; the
//! network delays, drops, duplicates and reorders messages and honours partitions. After every
//! step it checks the two safety properties: at most one writer per term, and at no real instant
//! two nodes whose `can_accept_writes` is true (whatever configurations they count by).
//!
//! With membership changes ([`Cluster::with_members`]: a universe of nodes of which the first few
//! are the initial voters, the rest join when the writer adds them) it also checks, from the
//! effects: no two different configurations persisted under one version; a node whose persisted
//! configuration does not make it a voter never sends a vote request or wins; and every new
//! writer holds a configuration at least as new as every one committed in an earlier term
//! (Raft's leader completeness, for configurations).

#![allow(dead_code)]

use base_core::quasar::{
    ConfigVersion, Effect, Input, Membership, Message, Node, PersistedState, PlantedBug, Role,
    Timing,
};
use base_core::{Millis, NodeId, Term};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

pub const PPM: u64 = 1_000_000;
/// How often each node gets a `Tick` (real ms).
pub const TICK_MS: u64 = 10;
/// The writer accepts a simulated write this often, advancing its replication position.
pub const WRITE_EVERY_MS: u64 = 25;
/// Messages in flight beyond this are dropped (a bounded network buffer).
pub const INFLIGHT_MAX: usize = 10_000;

pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn percent(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

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

pub struct SimNode {
    pub id: NodeId,
    pub node: Option<Node>,
    pub persisted: PersistedState,
    /// Clock rate in parts per million of real time.
    pub rate_ppm: u64,
    pub offset_ms: u64,
    pub paused: bool,
    pub position: u64,
    /// The fence as its source of truth (the pod annotation) says: survives restarts.
    pub fenced: bool,
    /// One of the cluster's initial members (else it joined later, with no configuration).
    pub initial: bool,
    next_tick_real: u64,
    next_write_real: u64,
    restarts: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    msg: MsgBox,
}

/// `Message` has no `Ord`; order in-flight messages by (time, sequence) only.
struct MsgBox(Message);
impl PartialEq for MsgBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for MsgBox {}
impl PartialOrd for MsgBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MsgBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

pub struct Cluster {
    pub real_ms: u64,
    pub nodes: Vec<SimNode>,
    inflight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// `cut[i][j]`: messages from `i` to `j` are lost (partitions, and one-way or single-link cuts).
    pub cut: Vec<Vec<bool>>,
    pub net: NetFaults,
    /// When set, messages wait in flight until `deliver_all`.
    pub hold: bool,
    rng: Rng,
    seed: u64,
    pub timing: Timing,
    /// Term → the node index that became writer in it.
    pub writers: BTreeMap<Term, usize>,
    /// Term → the real time its writer won.
    pub won_real: BTreeMap<Term, u64>,
    pub violation: Option<String>,
    /// Real time at which each node last could accept writes.
    pub last_accepting_real: Vec<Option<u64>>,
    pub trace: bool,
    /// Whether the writer accepts a simulated write every `WRITE_EVERY_MS`.
    pub writes: bool,
    fenced_wins: Vec<Term>,
    /// When set, the effects the nodes produce are recorded here, one line each (see `record`).
    pub log: Option<Vec<String>>,
    /// The desired voters as the operator publishes them (re-read by a restarted node).
    pub target: Option<BTreeSet<NodeId>>,
    /// Every configuration persisted, by version (without its version): one per version.
    pub configs: BTreeMap<ConfigVersion, Membership>,
    /// (term in which a writer saw it committed, version): configurations committed so far.
    pub committed: BTreeSet<(Term, ConfigVersion)>,
    /// A bug planted in every node (and every restarted one).
    pub bug: Option<PlantedBug>,
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
        let bootstrap = Membership::bootstrap(ids[..initial].iter().cloned());
        let mut nodes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let offset_ms = rng.below(1_000_000);
            let peers = ids.iter().filter(|p| *p != id).cloned().collect();
            // A static cluster bootstraps from its environment, as agents always did.
            let persisted = PersistedState {
                membership: (initial < universe && i < initial).then(|| bootstrap.clone()),
                ..PersistedState::default()
            };
            let seed = seed ^ ((i as u64 + 1) << 40);
            let node = if i < initial {
                Node::new(
                    id.clone(),
                    peers,
                    timing,
                    persisted.clone(),
                    seed,
                    Millis(offset_ms),
                )
            } else {
                Node::join(
                    id.clone(),
                    peers,
                    timing,
                    persisted.clone(),
                    seed,
                    Millis(offset_ms),
                )
            }
            .expect("valid node");
            nodes.push(SimNode {
                id: id.clone(),
                node: Some(node),
                initial: i < initial,
                persisted,
                rate_ppm: PPM,
                offset_ms,
                paused: false,
                position: 0,
                fenced: false,
                next_tick_real: rng.below(TICK_MS),
                next_write_real: 0,
                restarts: 0,
            });
        }
        Cluster {
            real_ms: 0,
            nodes,
            inflight: BinaryHeap::new(),
            seq: 0,
            cut: vec![vec![false; n]; n],
            net,
            hold: false,
            rng,
            seed,
            timing,
            writers: BTreeMap::new(),
            won_real: BTreeMap::new(),
            violation: None,
            last_accepting_real: vec![None; n],
            trace: false,
            writes: true,
            fenced_wins: Vec::new(),
            log: None,
            target: None,
            configs: BTreeMap::new(),
            committed: BTreeSet::new(),
            bug: None,
        }
    }

    /// Plant `bug` in every node, now and after restarts.
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        self.bug = Some(bug);
        for n in &mut self.nodes {
            if let Some(node) = n.node.as_mut() {
                node.plant_bug(bug);
            }
        }
    }

    /// The operator publishes the desired voters to every pod (live ones now, restarted ones
    /// when they start).
    pub fn set_members(&mut self, voters: &[usize]) {
        let set: BTreeSet<NodeId> = voters.iter().map(|&i| self.nodes[i].id.clone()).collect();
        self.target = Some(set.clone());
        for i in 0..self.nodes.len() {
            if !self.nodes[i].paused {
                self.step_node(i, Input::SetMembers(set.clone()));
            }
        }
    }

    /// The configuration node `i` holds (alive) or persisted (dead).
    pub fn membership(&self, i: usize) -> Option<Membership> {
        match &self.nodes[i].node {
            Some(n) => n.membership().cloned(),
            None => self.nodes[i].persisted.membership.clone(),
        }
    }

    /// Has the writer (one accepting writes) settled on exactly these voters, committed?
    pub fn settled_on(&self, voters: &[usize]) -> bool {
        let want: BTreeSet<NodeId> = voters.iter().map(|&i| self.nodes[i].id.clone()).collect();
        self.accepting().iter().any(|&w| {
            self.nodes[w].node.as_ref().is_some_and(|n| {
                n.membership_settled() && n.membership().is_some_and(|m| m.voters == want)
            })
        })
    }

    /// Is node `i` a voter of the configuration it persisted (or, before its first persist, of
    /// the one it started with)?
    fn persisted_voter(&self, i: usize) -> bool {
        let id = &self.nodes[i].id;
        match (&self.nodes[i].persisted.membership, &self.nodes[i].node) {
            (Some(m), _) => m.is_voter(id),
            (None, Some(n)) => n.membership().is_some_and(|m| m.is_voter(id)),
            (None, None) => false,
        }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id.as_str() == name)
    }

    /// The local clock of node `i` at the current real time.
    pub fn local(&self, i: usize) -> Millis {
        let n = &self.nodes[i];
        Millis(n.offset_ms + self.real_ms * n.rate_ppm / PPM)
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    /// The nodes that can accept writes right now.
    pub fn accepting(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.can_accept_writes(self.local(i)))
            })
            .collect()
    }

    pub fn role(&self, i: usize) -> Option<Role> {
        self.nodes[i].node.as_ref().map(Node::role)
    }

    pub fn term(&self, i: usize) -> Term {
        match &self.nodes[i].node {
            Some(n) => n.term(),
            None => self.nodes[i].persisted.term,
        }
    }

    pub fn max_term(&self) -> Term {
        (0..self.nodes.len())
            .map(|i| self.term(i))
            .max()
            .unwrap_or_default()
    }

    pub fn step_node(&mut self, i: usize, input: Input) {
        let now = self.local(i);
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        let effects = node.step(now, input);
        let committed = (node.role() == Role::Writer && node.membership_committed())
            .then(|| (node.term(), node.membership().map(|m| m.version)));
        for effect in effects {
            self.perform(i, effect);
        }
        if let Some((term, Some(version))) = committed {
            self.committed.insert((term, version));
        }
    }

    /// Terms in which a fenced node became writer (must stay empty).
    pub fn fenced_wins(&self) -> Vec<Term> {
        self.fenced_wins.clone()
    }

    /// Appends `effect` of node `i` to the log, if one is kept: election traffic, persisted
    /// terms and votes, winning and stepping down. Heartbeats, their granted acks and lease
    /// renewals (every tick) are left out; a refused ack (it deposes a stale writer) is kept.
    /// Sends are recorded as produced, whether or not the network then delivers them.
    fn record(&mut self, i: usize, effect: &Effect) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let id = &self.nodes[i].id;
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
                        Some(w) => {
                            format!("Vote term {term} position {position} transfer from {w}")
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

    fn perform(&mut self, i: usize, effect: Effect) {
        self.record(i, &effect);
        match effect {
            Effect::Send { to, msg } => {
                if matches!(msg, Message::PreVote { .. } | Message::Vote { .. })
                    && !self.persisted_voter(i)
                {
                    let id = self.nodes[i].id.clone();
                    self.violate(format!("{id} asked for votes but is not a voter"));
                }
                let Some(to) = self.index(to.as_str()) else {
                    return;
                };
                self.send(i, to, msg);
            }
            Effect::Persist {
                term,
                voted_for,
                membership,
            } => {
                if let Some(m) = &membership {
                    let content = m.restamped(ConfigVersion::default());
                    match self.configs.get(&m.version) {
                        Some(other) if *other != content => {
                            let v = m.version;
                            self.violate(format!(
                                "two configurations with version {v}: {} and {}",
                                other.describe(),
                                content.describe()
                            ));
                        }
                        _ => {
                            self.configs.insert(m.version, content);
                        }
                    }
                }
                self.nodes[i].persisted = PersistedState {
                    term,
                    voted_for,
                    membership,
                };
            }
            Effect::BecomeWriter { term, lease_until } => {
                if self.trace {
                    eprintln!(
                        "[{:>6}] {} becomes writer of term {} (lease until {})",
                        self.real_ms, self.nodes[i].id, term, lease_until
                    );
                }
                if !self.persisted_voter(i) {
                    let id = self.nodes[i].id.clone();
                    self.violate(format!("{id} became writer of {term} but is not a voter"));
                }
                // Leader completeness for configurations: the winner holds every configuration
                // committed in an earlier term (or a newer one).
                let held = self.membership(i).map(|m| m.version);
                if let Some(&(t, v)) = self
                    .committed
                    .iter()
                    .filter(|(t, _)| *t < term)
                    .max_by_key(|(_, v)| *v)
                    && held < Some(v)
                {
                    let id = self.nodes[i].id.clone();
                    self.violate(format!(
                        "{id} won term {term} holding configuration {held:?}, older than {v} committed in term {t}"
                    ));
                }
                if self.nodes[i].fenced {
                    self.fenced_wins.push(term);
                    let id = self.nodes[i].id.clone();
                    self.violate(format!("fenced node {id} became writer of term {term}"));
                }
                match self.writers.get(&term) {
                    Some(&other) if other != i => {
                        self.violate(format!(
                            "two writers in term {term}: {} and {}",
                            self.nodes[other].id, self.nodes[i].id
                        ));
                    }
                    _ => {
                        self.writers.insert(term, i);
                        self.won_real.entry(term).or_insert(self.real_ms);
                    }
                }
            }
            Effect::StepDown { term } => {
                if self.trace {
                    eprintln!(
                        "[{:>6}] {} steps down from term {}",
                        self.real_ms, self.nodes[i].id, term
                    );
                }
            }
            Effect::LeaseRenewed { .. } => {}
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
                msg: MsgBox(msg.clone()),
            }));
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at real {} ms: {what}", self.real_ms));
        }
    }

    fn deliver(&mut self, m: InFlight) {
        if self.cut[m.from][m.to] || !self.alive(m.to) {
            return;
        }
        // Replication rides on heartbeats: a follower catches up to what the writer had.
        if let Message::Heartbeat { position, .. } = &m.msg.0 {
            let pos = self.nodes[m.to].position.max(*position);
            self.nodes[m.to].position = pos;
            self.step_node(
                m.to,
                Input::Position {
                    epoch: 0,
                    position: pos,
                },
            );
        }
        let from = self.nodes[m.from].id.clone();
        self.step_node(m.to, Input::Message { from, msg: m.msg.0 });
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
            if self.nodes[m.to].paused {
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
        if !self.hold {
            let mut kept = Vec::new();
            while let Some(Reverse(m)) = self.inflight.peek() {
                if m.at > self.real_ms {
                    break;
                }
                let Some(Reverse(m)) = self.inflight.pop() else {
                    break;
                };
                if self.nodes[m.to].paused {
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
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() || self.nodes[i].paused {
                continue;
            }
            if self.real_ms >= self.nodes[i].next_tick_real {
                self.nodes[i].next_tick_real = self.real_ms + TICK_MS;
                self.step_node(i, Input::Tick);
            }
            let now = self.local(i);
            if self.writes
                && self.real_ms >= self.nodes[i].next_write_real
                && self.nodes[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.can_accept_writes(now))
            {
                self.nodes[i].next_write_real = self.real_ms + WRITE_EVERY_MS;
                self.nodes[i].position += 1;
                let pos = self.nodes[i].position;
                self.step_node(
                    i,
                    Input::Position {
                        epoch: 0,
                        position: pos,
                    },
                );
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

    pub fn check(&mut self) {
        let accepting = self.accepting();
        for &i in &accepting {
            self.last_accepting_real[i] = Some(self.real_ms);
            if self.nodes[i].fenced {
                let id = self.nodes[i].id.clone();
                self.violate(format!("fenced node {id} accepts writes"));
            }
        }
        if accepting.len() > 1 {
            let names: Vec<String> = accepting
                .iter()
                .map(|&i| format!("{} (term {})", self.nodes[i].id, self.term(i)))
                .collect();
            self.violate(format!("two nodes accept writes: {}", names.join(", ")));
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].node = None;
        self.nodes[i].paused = false;
    }

    /// Restart a dead node from its persisted state (its Base data, the position, survives).
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].node.is_some() {
            return;
        }
        self.nodes[i].restarts += 1;
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let id = self.nodes[i].id.clone();
        let peers = ids.into_iter().filter(|p| *p != id).collect();
        let seed = self.seed ^ ((i as u64 + 1) << 40) ^ (self.nodes[i].restarts << 20);
        let persisted = self.nodes[i].persisted.clone();
        let mut node = if self.nodes[i].initial {
            Node::new(id, peers, self.timing, persisted, seed, self.local(i))
        } else {
            Node::join(id, peers, self.timing, persisted, seed, self.local(i))
        }
        .expect("valid node");
        if let Some(bug) = self.bug {
            node.plant_bug(bug);
        }
        if let Some(target) = &self.target {
            let _ = node.step(self.local(i), Input::SetMembers(target.clone()));
        }
        let _ = node.step(
            self.local(i),
            Input::Position {
                epoch: 0,
                position: self.nodes[i].position,
            },
        );
        // The agent re-reads the annotation before the node may campaign.
        let _ = node.step(self.local(i), Input::SetFenced(self.nodes[i].fenced));
        self.nodes[i].node = Some(node);
        self.nodes[i].next_tick_real = self.real_ms;
    }

    /// Fence or unfence node `i` (kept across its restarts, like the pod annotation).
    pub fn set_fenced(&mut self, i: usize, fenced: bool) {
        self.nodes[i].fenced = fenced;
        self.step_node(i, Input::SetFenced(fenced));
    }

    pub fn pause(&mut self, i: usize) {
        if self.nodes[i].node.is_some() {
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        let was = std::mem::replace(&mut self.nodes[i].paused, false);
        self.nodes[i].next_tick_real = self.real_ms;
        // The agent re-reads the desired members it missed while paused.
        if let (true, Some(target)) = (was, self.target.clone()) {
            self.step_node(i, Input::SetMembers(target));
        }
    }

    /// Messages cross only within a group; nodes not named form a group of their own each.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.nodes.len();
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
