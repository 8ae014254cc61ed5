//! `election`: the Quasar writer election (`base_core::quasar::Node`) on a simulated cluster of 3
//! or 5 nodes, driven by the fuzzer: ticks, message delays, drops, duplicates, late replays of old
//! (out-of-term) messages, garbled bytes on the wire, messages from strangers, partitions, kills,
//! restarts (with the persisted term, vote and configuration), pauses, fences, transfers,
//! campaigns, and membership changes: any nonempty subset of the nodes as the operator's desired
//! voters, at any time, from an initial voter set of 1 to all of them (the others join). Every
//! node reads its own clock: any offset, and a rate in `[1 − ρ, 1]` of real time, so that any two
//! clocks drift apart by at most the bound ρ the timing was validated for.
//!
//! The nodes, their disks and clocks, and the safety checker are the core's test harness
//! (`base_core::harness::{Nodes, Checker}`, shared with the core tests): what it checks is listed
//! there — never two writers in one term; at no real instant two nodes accepting writes (each
//! node's `can_accept_writes` window computed exactly in real time from its own clock and lease);
//! terms never down, one vote per term, persisted before anything that depends on it; one
//! configuration per version, never going back; no vote request or win by a non-voter; leader
//! completeness for configurations; no fenced writer — plus the machine's own `assert!`s. The
//! network (delays, loss, duplicates by the fuzzer's bytes; replays; garbling) is this file's.
//!
//! Time jumps from event to event: a message's delivery, or the next tick of the grid
//! (`tick_ms`) at which some node's `next_tick_due` has come; ticks before it do nothing (the
//! node's promise). One input in 64 ticks every node at every grid point instead, checking that
//! promise (`Nodes::check_idle_ticks`: such a tick changes no state and has no effect).
//!
//! `ELECTION_DEBUG=1` prints a summary of each run (and every election); `ELECTION_SELFTEST=1`
//! checks the checker: it slows an elected writer's clock to 1% speed, far outside the drift
//! bound, and cuts it off, so that runs must end in "both accept writes" (see fuzz/README.md).
//!
//! The network has integrity (as TCP and the agent's JSON parsing give): a garbled message is
//! parsed as the agent would; it is delivered only if it still reads as the message sent, else
//! it is lost. Peers are not Byzantine: strangers (ids outside the cluster) may send anything.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use base_core::harness::{Nodes, PPM};
use base_core::quasar::{Effect, Envelope, Input, Message, Timing};
use base_core::{Millis, NodeId, Term};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

/// Bounds per input, so that one run stays in the milliseconds.
const MAX_REAL_MS: u64 = 120_000;
const MAX_STEPS: usize = 20_000;
/// Inputs that tick densely (and compare each node's whole state around every early tick) stop
/// sooner: their steps are mostly those ticks, and their point is the check, not the depth.
const MAX_STEPS_DENSE: usize = 2_000;
const MAX_INFLIGHT: usize = 2_000;
/// Actions per input at most (longer inputs are cut: their tails add little but time).
const MAX_ACTIONS: usize = 400;

#[derive(Arbitrary, Debug)]
enum Action {
    /// Let real time pass (ms): ticks and deliveries happen in time order.
    Run(u16),
    /// Nodes in the mask on one side, the rest on the other.
    Partition(u8),
    Heal,
    CutLink(u8, u8),
    Kill(u8),
    Restart(u8),
    /// Kill and restart at once.
    Bounce(u8),
    Pause(u8),
    Resume(u8),
    Transfer {
        from: u8,
        to: u8,
    },
    Campaign(u8),
    /// The store's position moves: up by `delta`, or (with `cut`) down by `delta` in a new
    /// epoch, as after a truncation or a snapshot.
    Position {
        node: u8,
        delta: u16,
        cut: bool,
    },
    /// Deliver again, now, a message sent earlier (possibly many terms ago), to its recipient.
    Replay(u16),
    /// Flip bytes of a message in flight, as a bad link would; the agent's parser decides.
    Garble {
        index: u16,
        at: u16,
        xor: u8,
    },
    /// A message from an id outside the cluster.
    Stranger {
        to: u8,
        msg: FuzzMsg,
    },
    Network {
        loss_pct: u8,
        dup_pct: u8,
        delay_max_ms: u16,
    },
    /// The operator publishes these nodes (a bit mask; empty: ignored) as the desired voters.
    Members(u8),
    /// The operator fences (or unfences) a node; the fence outlives its restarts.
    Fence {
        node: u8,
        on: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum FuzzMsg {
    PreVote {
        term: u64,
        position: u64,
    },
    PreVoteResponse {
        term: u64,
        granted: bool,
    },
    Vote {
        term: u64,
        position: u64,
        sent_ms: u64,
        transfer_from: Option<u8>,
    },
    VoteResponse {
        term: u64,
        granted: bool,
        sent_ms: u64,
    },
    Heartbeat {
        term: u64,
        sent_ms: u64,
        position: u64,
    },
    HeartbeatAck {
        term: u64,
        ok: bool,
        sent_ms: u64,
        position: u64,
    },
    TimeoutNow {
        term: u64,
    },
}

impl FuzzMsg {
    fn message(&self) -> Message {
        match *self {
            FuzzMsg::PreVote { term, position } => Message::PreVote {
                term: Term(term),
                position,
                config: Default::default(),
            },
            FuzzMsg::PreVoteResponse { term, granted } => Message::PreVoteResponse {
                term: Term(term),
                granted,
                membership: None,
            },
            FuzzMsg::Vote {
                term,
                position,
                sent_ms,
                transfer_from,
            } => Message::Vote {
                term: Term(term),
                position,
                sent_ms: Millis(sent_ms),
                transfer_from: transfer_from.map(|i| node_id(usize::from(i % 6))),
                config: Default::default(),
            },
            FuzzMsg::VoteResponse {
                term,
                granted,
                sent_ms,
            } => Message::VoteResponse {
                term: Term(term),
                granted,
                sent_ms: Millis(sent_ms),
                membership: None,
            },
            FuzzMsg::Heartbeat {
                term,
                sent_ms,
                position,
            } => Message::Heartbeat {
                term: Term(term),
                sent_ms: Millis(sent_ms),
                position,
                membership: None,
            },
            FuzzMsg::HeartbeatAck {
                term,
                ok,
                sent_ms,
                position,
            } => Message::HeartbeatAck {
                term: Term(term),
                ok,
                sent_ms: Millis(sent_ms),
                position,
                config: None,
            },
            FuzzMsg::TimeoutNow { term } => Message::TimeoutNow { term: Term(term) },
        }
    }
}

fn debug() -> bool {
    std::env::var_os("ELECTION_DEBUG").is_some()
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("q-{i}"))
}

/// The index of a node id `q-<i>`, without allocating (the hot path of every send).
fn index_of(id: &NodeId) -> Option<usize> {
    id.as_str().strip_prefix("q-")?.parse().ok()
}

struct Sim {
    n: usize,
    /// The nodes with their clocks and disks, and the checker (the core's harness).
    nodes: Nodes,
    /// Per node: the seed of its next start.
    seeds: Vec<u64>,
    /// Messages that reached a paused process, read when it resumes.
    mailbox: Vec<Vec<(usize, Message)>>,
    now: u64,
    /// The next point of the tick grid (multiples of `tick_ms`) not yet passed.
    next_grid: u64,
    tick_ms: u64,
    /// Tick every node at every grid point (and check that the skipped ones would do nothing).
    dense: bool,
    /// Per node: the real time from which its tick can do anything (`Nodes::tick_due_real`),
    /// kept up to date after everything that changes the node.
    due: Vec<Option<u64>>,
    cut: Vec<Vec<bool>>,
    loss_pct: u8,
    dup_pct: u8,
    delay_max_ms: u64,
    /// (deliver at real ms, seq) → (from, to, message).
    inflight: BTreeMap<(u64, u64), (usize, usize, Message)>,
    seq: u64,
    history: Vec<(usize, usize, Message)>,
    steps: usize,
    max_steps: usize,
}

impl Sim {
    fn start(&mut self, i: usize, u: &mut Unstructured) {
        self.seeds[i] = self.seeds[i]
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let effects = self.nodes.start(i, self.now, self.seeds[i]);
        self.due[i] = self.nodes.tick_due_real(i);
        self.route(i, effects, u);
    }

    fn kill(&mut self, i: usize) {
        self.nodes.kill(i, self.now);
        self.mailbox[i].clear();
        self.due[i] = None;
    }

    fn set_paused(&mut self, i: usize, paused: bool) {
        self.nodes.slots[i].paused = paused;
        self.due[i] = self.nodes.tick_due_real(i);
    }

    fn step(&mut self, i: usize, input: Input, u: &mut Unstructured) {
        if self.nodes.slots[i].paused || !self.nodes.alive(i) {
            return;
        }
        self.steps += 1;
        let effects = self.nodes.step(i, self.now, input);
        self.due[i] = self.nodes.tick_due_real(i);
        self.route(i, effects, u);
    }

    /// The sends of node `i`'s effects, into the network (the harness performed the rest).
    fn route(&mut self, i: usize, effects: Vec<Effect>, u: &mut Unstructured) {
        for e in effects {
            match e {
                Effect::Send { to, msg } => {
                    let j = index_of(&to)
                        .filter(|&j| j < self.n)
                        .expect("sent to a peer");
                    self.send(i, j, msg, u);
                }
                Effect::BecomeWriter { term, lease_until } if debug() => {
                    let local = self.nodes.local(i, self.now);
                    eprintln!(
                        "real {} q-{i} local {local} writer of {term} lease_until {lease_until}",
                        self.now
                    );
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message, u: &mut Unstructured) {
        if self.history.len() < 4_096 {
            self.history.push((from, to, msg.clone()));
        }
        if self.cut[from][to] || self.inflight.len() >= MAX_INFLIGHT {
            return;
        }
        let roll: u8 = u.arbitrary().unwrap_or(0);
        if roll % 100 < self.loss_pct % 101 {
            return;
        }
        let twice = (roll / 3) % 100 < self.dup_pct % 101;
        let delay = |u: &mut Unstructured, max: u64| {
            let d: u16 = u.arbitrary().unwrap_or(0);
            if max == 0 {
                0
            } else {
                u64::from(d) % (max + 1)
            }
        };
        if twice {
            let d = delay(u, self.delay_max_ms);
            self.seq += 1;
            self.inflight
                .insert((self.now + d, self.seq), (from, to, msg.clone()));
        }
        let d = delay(u, self.delay_max_ms);
        self.seq += 1;
        self.inflight
            .insert((self.now + d, self.seq), (from, to, msg));
    }

    fn deliver(&mut self, from_id: NodeId, to: usize, msg: Message, u: &mut Unstructured) {
        self.step(to, Input::Message { from: from_id, msg }, u);
    }

    /// The first grid point at or after `t`.
    fn grid_ceil(&self, t: u64) -> u64 {
        t.div_ceil(self.tick_ms).saturating_mul(self.tick_ms)
    }

    /// The next grid point at which some node's tick can do anything (dense: the next one).
    /// Never before now: the grid points passed were visited (their ticks did nothing).
    fn next_tick_at(&self) -> u64 {
        let from = self.next_grid.max(self.now);
        if self.dense {
            return self.grid_ceil(from);
        }
        self.due
            .iter()
            .flatten()
            .map(|&due| self.grid_ceil(due.max(from)))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Runs real time forward to `until`, in order: message deliveries, then ticks.
    fn run(&mut self, until: u64, u: &mut Unstructured) {
        while self.steps < self.max_steps {
            let next_msg = self.inflight.keys().next().map(|k| k.0);
            let next_tick = self.next_tick_at();
            let next = match next_msg {
                Some(t) if t <= next_tick => t,
                _ => next_tick,
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_msg == Some(next) {
                let (_, (from, to, msg)) = self.inflight.pop_first().expect("a message");
                if self.cut[from][to] {
                    continue;
                }
                if self.nodes.slots[to].paused {
                    // The paused process reads it when it resumes.
                    if self.mailbox[to].len() < 512 {
                        self.mailbox[to].push((from, msg));
                    }
                    continue;
                }
                let from = self.nodes.id(from).clone();
                self.deliver(from, to, msg, u);
            } else {
                for i in 0..self.n {
                    let due = self.dense || self.due[i].is_some_and(|d| d <= next);
                    if due {
                        self.step(i, Input::Tick, u);
                    }
                }
                self.next_grid = next + self.tick_ms;
            }
        }
        // Time passed without steps: windows that ended are ended; the grid points up to
        // `until` are passed.
        self.now = self.now.max(until);
        self.next_grid = self.next_grid.max(self.grid_ceil(until.saturating_add(1)));
    }
}

fn timing(u: &mut Unstructured) -> Result<Timing> {
    if u.arbitrary::<bool>()? {
        return Ok(Timing::default());
    }
    let hb = u.int_in_range(5..=300)?;
    let emin = u.int_in_range(20..=5_000)?;
    let emax = emin + u.int_in_range(1..=5_000)?;
    let drift = u.int_in_range(0..=200_000)?;
    let margin = u.int_in_range(1..=200)?;
    Ok(Timing::new(
        Millis(hb),
        Millis(emin),
        Millis(emax),
        drift,
        Millis(margin),
    )
    .unwrap_or_default())
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let n = if u.arbitrary::<bool>()? { 5 } else { 3 };
    let timing = timing(&mut u)?;
    let rho = timing.drift_bound_ppm();
    let mut rate_ppm = Vec::new();
    let mut offset_ms = Vec::new();
    let mut seeds = Vec::new();
    for _ in 0..n {
        rate_ppm.push(PPM - u.int_in_range(0..=rho)?);
        offset_ms.push(u64::from(u.arbitrary::<u32>()?));
        seeds.push(u.arbitrary::<u64>()?);
    }
    // Self-test of the checker (ELECTION_SELFTEST=1): once a writer is elected, its clock slows
    // to 1% speed (far outside the drift bound) and it is cut off from the others. The run must
    // end in "both accept writes"; if it does not, the checker is broken.
    let selftest = std::env::var_os("ELECTION_SELFTEST").is_some();
    let tick_ms = u.int_in_range(1..=timing.heartbeat_interval_ms().0.max(1))?;
    let dense = u.arbitrary::<u8>()? % 64 == 0;
    // The initial voters: all (a static cluster, bootstrapped from the environment), or the
    // first few, which persisted the bootstrap configuration; the others join. The self-test
    // needs the others to be able to elect once the writer is cut off: all.
    let initial = if selftest || u.arbitrary::<bool>()? {
        n
    } else {
        u.int_in_range(1..=n)?
    };
    let ids: Vec<NodeId> = (0..n).map(node_id).collect();
    let mut nodes = Nodes::new(ids, initial, timing, &offset_ms);
    for (i, rate) in rate_ppm.into_iter().enumerate() {
        nodes.set_rate(i, 0, rate);
    }
    nodes.checker.panic = true;
    // Positions here move at random, on any node: they are not a model of the data.
    nodes.checker.data_completeness = false;
    nodes.check_idle_ticks = dense;
    let mut sim = Sim {
        n,
        nodes,
        seeds,
        mailbox: vec![Vec::new(); n],
        now: 0,
        next_grid: 0,
        tick_ms,
        dense,
        due: vec![None; n],
        cut: vec![vec![false; n]; n],
        loss_pct: 0,
        dup_pct: 0,
        delay_max_ms: 10,
        inflight: BTreeMap::new(),
        seq: 0,
        history: Vec::new(),
        steps: 0,
        max_steps: if dense { MAX_STEPS_DENSE } else { MAX_STEPS },
    };
    for i in 0..n {
        sim.start(i, &mut u);
    }
    let mut script: Vec<Action> = Vec::new();
    if selftest {
        sim.loss_pct = 0;
        sim.delay_max_ms = 0;
        script.extend((0..100).map(|_| Action::Run(300)));
    }
    let mut script = script.into_iter();
    let mut actions = 0;
    loop {
        if let (true, Some(w)) = (selftest, sim.nodes.writer()) {
            // 1%, not half speed: at half speed the lease it holds can still end before the others
            // elect a writer (a slow election), and the run passes although the checker works.
            sim.nodes.set_rate(w, sim.now, PPM / 100);
            sim.due[w] = sim.nodes.tick_due_real(w);
            for a in 0..n {
                for b in 0..n {
                    sim.cut[a][b] = (a == w) != (b == w);
                }
            }
            let until = sim.now + 10_000;
            sim.run(until, &mut u);
            break;
        }
        let done = u.is_empty()
            || sim.now >= MAX_REAL_MS
            || sim.steps >= sim.max_steps
            || actions >= MAX_ACTIONS;
        let action: Action = match script.next() {
            Some(a) => a,
            None if selftest || done => break,
            None => u.arbitrary()?,
        };
        actions += 1;
        let pick = |x: u8| usize::from(x) % n;
        match action {
            Action::Run(ms) => {
                let until = sim.now + u64::from(ms % 5_000);
                sim.run(until, &mut u);
            }
            Action::Partition(mask) => {
                for a in 0..n {
                    for b in 0..n {
                        sim.cut[a][b] = (mask >> a & 1) != (mask >> b & 1);
                    }
                }
            }
            Action::Heal => sim.cut = vec![vec![false; n]; n],
            Action::CutLink(a, b) => {
                let (a, b) = (pick(a), pick(b));
                sim.cut[a][b] = true;
                sim.cut[b][a] = true;
            }
            Action::Kill(i) => sim.kill(pick(i)),
            Action::Restart(i) => {
                let i = pick(i);
                if !sim.nodes.alive(i) {
                    sim.start(i, &mut u);
                }
            }
            Action::Bounce(i) => {
                let i = pick(i);
                sim.kill(i);
                sim.start(i, &mut u);
            }
            Action::Pause(i) => sim.set_paused(pick(i), true),
            Action::Resume(i) => {
                let i = pick(i);
                sim.set_paused(i, false);
                // The agent re-reads the desired members it missed while paused.
                if let Some(t) = sim.nodes.target.clone() {
                    sim.step(i, Input::SetMembers(t), &mut u);
                }
                for (from, msg) in std::mem::take(&mut sim.mailbox[i]) {
                    let from = sim.nodes.id(from).clone();
                    sim.deliver(from, i, msg, &mut u);
                }
            }
            Action::Transfer { from, to } => {
                // From the writer when there is one, else from whoever was picked.
                let from = sim.nodes.writer().unwrap_or(pick(from));
                let to = sim.nodes.id(pick(to)).clone();
                sim.step(from, Input::TransferWriter { to }, &mut u);
            }
            Action::Campaign(i) => sim.step(pick(i), Input::Campaign, &mut u),
            Action::Position { node, delta, cut } => {
                let i = pick(node);
                let (epoch, pos) = sim
                    .nodes
                    .node(i)
                    .map_or((0, 0), |n| (n.position_epoch(), n.position()));
                let input = if cut {
                    Input::Position {
                        epoch: epoch.saturating_add(1),
                        position: pos.saturating_sub(u64::from(delta)),
                    }
                } else {
                    Input::Position {
                        epoch,
                        position: pos.saturating_add(u64::from(delta)),
                    }
                };
                sim.step(i, input, &mut u);
            }
            Action::Replay(index) => {
                if !sim.history.is_empty() {
                    let (from, to, msg) =
                        sim.history[usize::from(index) % sim.history.len()].clone();
                    if !sim.cut[from][to] {
                        let from = sim.nodes.id(from).clone();
                        sim.deliver(from, to, msg, &mut u);
                    }
                }
            }
            Action::Garble { index, at, xor } => {
                if !sim.inflight.is_empty() {
                    let key = *sim
                        .inflight
                        .keys()
                        .nth(usize::from(index) % sim.inflight.len())
                        .expect("in range");
                    let (from, to, msg) = sim.inflight.remove(&key).expect("present");
                    let env = Envelope {
                        from: node_id(from),
                        to: node_id(to),
                        msg,
                    };
                    let mut bytes = serde_json::to_vec(&env).expect("an envelope serialises");
                    let at = usize::from(at) % bytes.len();
                    bytes[at] ^= xor;
                    // The wire has integrity: a message that no longer reads as sent is lost.
                    if let Ok(back) = serde_json::from_slice::<Envelope>(&bytes)
                        && back == env
                    {
                        sim.inflight.insert(key, (from, to, back.msg));
                    }
                }
            }
            Action::Stranger { to, msg } => {
                let to = pick(to);
                sim.deliver(NodeId::new("intruder"), to, msg.message(), &mut u);
            }
            Action::Network {
                loss_pct,
                dup_pct,
                delay_max_ms,
            } => {
                sim.loss_pct = loss_pct % 101;
                sim.dup_pct = dup_pct % 101;
                sim.delay_max_ms = u64::from(delay_max_ms % 2_000);
            }
            Action::Members(mask) => {
                let voters: BTreeSet<NodeId> = (0..n)
                    .filter(|&i| mask >> i & 1 == 1)
                    .map(|i| sim.nodes.id(i).clone())
                    .collect();
                if !voters.is_empty() {
                    sim.nodes.target = Some(voters.clone());
                    for i in 0..n {
                        sim.step(i, Input::SetMembers(voters.clone()), &mut u);
                    }
                }
            }
            Action::Fence { node, on } => {
                let i = pick(node);
                if !sim.nodes.slots[i].paused {
                    sim.steps += 1;
                    let effects = sim.nodes.set_fenced(i, sim.now, on);
                    sim.due[i] = sim.nodes.tick_due_real(i);
                    sim.route(i, effects, &mut u);
                }
            }
        }
    }
    // Let the cluster settle a while, so that elections the actions set up finish.
    let until = sim.now + 5_000;
    sim.run(until, &mut u);
    sim.nodes.checker.finish(sim.now);
    if debug() {
        eprintln!(
            "n={n} real={}ms steps={} actions={actions} dense={dense} terms with a writer={} windows={} timing={:?}",
            sim.now,
            sim.steps,
            sim.nodes.checker.writers().len(),
            sim.nodes.checker.windows().closed_count(),
            sim.nodes.timing
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
