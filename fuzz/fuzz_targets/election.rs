//! `election`: the Quasar writer election (`base_core::quasar::Node`) on a simulated cluster of 3
//! or 5 nodes, driven by the fuzzer: ticks, message delays, drops, duplicates, late replays of old
//! (out-of-term) messages, garbled bytes on the wire, messages from strangers, partitions, kills,
//! restarts (with the persisted term, vote and configuration), pauses, transfers, campaigns, and
//! membership changes: any nonempty subset of the nodes as the operator's desired voters, at any
//! time, from an initial voter set of 1 to all of them (the others join). Every node reads
//! its own clock: any offset, and a rate in `[1 − ρ, 1]` of real time, so that any two clocks drift
//! apart by at most the bound ρ the timing was validated for.
//!
//! Checked, besides the machine's own `assert!`s:
//! - never two writers in one term (`BecomeWriter` effects, across restarts);
//! - at no real instant do two nodes accept writes: each node's `can_accept_writes` window is
//!   computed exactly in real time (from the step that opened it to the step that closed it, or
//!   to the real instant its own clock reaches `lease_until`), and windows of different nodes must
//!   not overlap;
//! - a node's term never goes down, across restarts too; it never grants two votes in one term;
//!   a granted vote and every term-bearing message are sent only after the term and vote that
//!   justify them were persisted;
//! - never two configurations persisted under one version; a node that is not a voter of its
//!   persisted configuration never asks for votes nor wins; every new writer holds a
//!   configuration at least as new as every one committed in an earlier term.
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
use base_core::quasar::{
    ConfigVersion, Effect, Envelope, Input, Membership, Message, Node, PersistedState, Role, Timing,
};
use base_core::{Millis, NodeId, Term};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const PPM: u64 = 1_000_000;
/// Bounds per input, so that one run stays in the milliseconds.
const MAX_REAL_MS: u64 = 120_000;
const MAX_STEPS: usize = 20_000;
const MAX_INFLIGHT: usize = 2_000;

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
    /// `node_id(i)` for each node, made once.
    ids: Vec<NodeId>,
    /// Nodes below this index are the initial voters; the others join.
    initial: usize,
    /// The desired voters, as the operator last published them (re-read on restart).
    target: Option<BTreeSet<NodeId>>,
    /// Every configuration persisted, by version (content only): one per version.
    configs: HashMap<ConfigVersion, Membership>,
    /// (term, version) of every configuration a writer saw committed in its term.
    committed: BTreeSet<(Term, ConfigVersion)>,
    timing: Timing,
    rho: u64,
    nodes: Vec<Option<Node>>,
    /// What each node made durable (`Persist` effects), read back on restart.
    disk: Vec<PersistedState>,
    rate_ppm: Vec<u64>,
    offset_ms: Vec<u64>,
    paused: Vec<bool>,
    /// Messages that reached a paused process, read when it resumes.
    mailbox: Vec<Vec<(usize, Message)>>,
    seeds: Vec<u64>,
    now: u64,
    next_tick: u64,
    tick_ms: u64,
    cut: Vec<Vec<bool>>,
    loss_pct: u8,
    dup_pct: u8,
    delay_max_ms: u64,
    /// (deliver at real ms, seq) → (from, to, message).
    inflight: BTreeMap<(u64, u64), (usize, usize, Message)>,
    seq: u64,
    history: Vec<(usize, usize, Message)>,
    steps: usize,
    // Safety bookkeeping.
    writer_of_term: HashMap<Term, usize>,
    /// Per node: the accepting window open since real time `.0`, ending at `.1` at the latest.
    open: Vec<Option<(u64, u64)>>,
    windows: Vec<(u64, u64, usize)>,
    /// Per node and term: the vote it granted (from its `Persist` effects and its responses).
    votes: HashMap<(usize, Term), NodeId>,
    max_term_seen: Vec<Term>,
}

impl Sim {
    fn local(&self, i: usize, real: u64) -> Millis {
        Millis(
            self.offset_ms[i]
                + ((u128::from(real) * u128::from(self.rate_ppm[i])) / u128::from(PPM)) as u64,
        )
    }

    /// The first real ms at which node `i`'s clock reads at least `t`.
    fn real_at(&self, i: usize, t: Millis) -> u64 {
        let Some(d) = t.0.checked_sub(self.offset_ms[i]) else {
            return 0;
        };
        let r = u128::from(self.rate_ppm[i]);
        let real = (u128::from(d) * u128::from(PPM)).div_ceil(r);
        u64::try_from(real).unwrap_or(u64::MAX)
    }

    fn peers_of(&self, i: usize) -> Vec<NodeId> {
        (0..self.n)
            .filter(|&j| j != i)
            .map(|j| self.ids[j].clone())
            .collect()
    }

    /// Is node `i` a voter of the configuration it persisted (before its first persist: of the
    /// one it started with)?
    fn persisted_voter(&self, i: usize) -> bool {
        let id = &self.ids[i];
        match (&self.disk[i].membership, &self.nodes[i]) {
            (Some(m), _) => m.is_voter(id),
            (None, Some(n)) => n.membership().is_some_and(|m| m.is_voter(id)),
            (None, None) => false,
        }
    }

    fn start(&mut self, i: usize) {
        let now = self.local(i, self.now);
        self.seeds[i] = self.seeds[i]
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let mut node = if i < self.initial {
            Node::new(
                self.ids[i].clone(),
                self.peers_of(i),
                self.timing,
                self.disk[i].clone(),
                self.seeds[i],
                now,
            )
        } else {
            Node::join(
                self.ids[i].clone(),
                self.peers_of(i),
                self.timing,
                self.disk[i].clone(),
                self.seeds[i],
                now,
            )
        }
        .expect("a valid node");
        if let Some(t) = &self.target {
            let _ = node.step(now, Input::SetMembers(t.clone()));
        }
        assert!(
            !node.can_accept_writes(now),
            "a node accepts writes as it starts"
        );
        self.nodes[i] = Some(node);
        self.paused[i] = false;
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        self.mailbox[i].clear();
        self.close_window(i);
    }

    fn close_window(&mut self, i: usize) {
        if let Some((start, end)) = self.open[i].take() {
            let end = end.min(self.now);
            if end > start {
                self.windows.push((start, end, i));
            }
        }
    }

    /// After node `i` stepped at real time `now`: its accepting window restarts from here.
    fn refresh_window(&mut self, i: usize) {
        self.close_window(i);
        let Some(node) = &self.nodes[i] else { return };
        let local = self.local(i, self.now);
        if node.can_accept_writes(local) {
            let view = node.writer_view(local);
            assert_eq!(view.writer.as_ref(), Some(&self.ids[i]));
            let lease_until = view.lease_until.expect("a writer has a lease");
            assert!(lease_until > local);
            let end = self.real_at(i, lease_until);
            assert!(end > self.now);
            self.open[i] = Some((self.now, end));
        }
    }

    fn step(&mut self, i: usize, input: Input, u: &mut Unstructured) {
        if self.paused[i] {
            return;
        }
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let local = Millis(
            self.offset_ms[i]
                + ((u128::from(self.now) * u128::from(self.rate_ppm[i])) / u128::from(PPM)) as u64,
        );
        let term_before = node.term();
        let effects = node.step(local, input);
        let term_after = node.term();
        let role = node.role();
        let committed = (role == Role::Writer && node.membership_committed())
            .then(|| node.membership().map(|m| m.version))
            .flatten();
        let held = node.membership().map(|m| m.version);
        self.steps += 1;
        assert!(term_after >= term_before);
        assert!(
            term_after >= self.max_term_seen[i],
            "node {i}: term went down across a restart"
        );
        self.max_term_seen[i] = term_after;
        for e in effects {
            match e {
                Effect::Persist {
                    term,
                    voted_for,
                    membership,
                } => {
                    assert!(term >= self.disk[i].term, "node {i} persisted a lower term");
                    if term == self.disk[i].term && self.disk[i].voted_for.is_some() {
                        assert_eq!(
                            voted_for, self.disk[i].voted_for,
                            "node {i} changed its vote in {term}"
                        );
                    }
                    if let Some(v) = &voted_for {
                        if let Some(prev) = self.votes.insert((i, term), v.clone()) {
                            assert_eq!(&prev, v, "node {i} voted twice in term {term}");
                        }
                    }
                    if let Some(m) = &membership {
                        let before = self.disk[i].membership.as_ref().map(|m| m.version);
                        assert!(
                            before <= Some(m.version),
                            "node {i}'s configuration went back"
                        );
                        let content = m.restamped(ConfigVersion::default());
                        if let Some(other) = self.configs.get(&m.version) {
                            assert_eq!(
                                other, &content,
                                "two configurations with version {}",
                                m.version
                            );
                        } else {
                            self.configs.insert(m.version, content);
                        }
                    }
                    self.disk[i] = PersistedState {
                        term,
                        voted_for,
                        membership,
                    };
                }
                Effect::BecomeWriter { term, lease_until } => {
                    if debug() {
                        eprintln!(
                            "real {} q-{i} local {} writer of {term} lease_until {lease_until}",
                            self.now, local
                        );
                    }
                    assert_eq!(role, Role::Writer);
                    assert!(self.persisted_voter(i), "q-{i} won {term} but is not a voter");
                    if let Some(&(t, v)) = self
                        .committed
                        .iter()
                        .filter(|(t, _)| *t < term)
                        .max_by_key(|(_, v)| *v)
                    {
                        assert!(
                            held >= Some(v),
                            "q-{i} won {term} holding {held:?}, older than {v} committed in {t}"
                        );
                    }
                    if let Some(prev) = self.writer_of_term.insert(term, i) {
                        assert_eq!(prev, i, "two writers in term {term}: q-{prev} and q-{i}");
                    }
                    assert_eq!(
                        (self.disk[i].term, self.disk[i].voted_for.as_ref()),
                        (term, Some(&self.ids[i])),
                        "won an unpersisted term or vote"
                    );
                    let _ = lease_until;
                }
                Effect::LeaseRenewed { .. } | Effect::StepDown { .. } => {}
                Effect::Send { to, msg } => {
                    if matches!(msg, Message::PreVote { .. } | Message::Vote { .. }) {
                        assert!(
                            self.persisted_voter(i),
                            "q-{i} asked for votes but is not a voter"
                        );
                    }
                    let persisted = &self.disk[i];
                    match &msg {
                        Message::PreVote { .. } | Message::PreVoteResponse { .. } => {}
                        Message::VoteResponse {
                            term,
                            granted: true,
                            ..
                        } => {
                            assert_eq!(
                                persisted.term, *term,
                                "vote granted before its term was persisted"
                            );
                            assert_eq!(
                                persisted.voted_for.as_ref(),
                                Some(&to),
                                "vote granted before it was persisted"
                            );
                        }
                        m => assert!(
                            m.term() <= persisted.term,
                            "{} sent in an unpersisted term",
                            m.kind()
                        ),
                    }
                    let j = index_of(&to)
                        .filter(|&j| j < self.n)
                        .expect("sent to a peer");
                    self.send(i, j, msg, u);
                }
            }
        }
        if let Some(v) = committed {
            self.committed.insert((term_after, v));
        }
        self.refresh_window(i);
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
        let copies = if (roll / 3) % 100 < self.dup_pct % 101 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d: u16 = u.arbitrary().unwrap_or(0);
            let delay = if self.delay_max_ms == 0 {
                0
            } else {
                u64::from(d) % (self.delay_max_ms + 1)
            };
            self.seq += 1;
            self.inflight
                .insert((self.now + delay, self.seq), (from, to, msg.clone()));
        }
    }

    fn deliver(&mut self, from_id: NodeId, to: usize, msg: Message, u: &mut Unstructured) {
        self.step(to, Input::Message { from: from_id, msg }, u);
    }

    /// Runs real time forward to `until`, in order: message deliveries, then ticks.
    fn run(&mut self, until: u64, u: &mut Unstructured) {
        while self.steps < MAX_STEPS {
            let next_msg = self.inflight.keys().next().map(|k| k.0);
            let next = match next_msg {
                Some(t) if t <= self.next_tick => t,
                _ => self.next_tick,
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_msg == Some(next) {
                let (key, (from, to, msg)) = self.inflight.pop_first().expect("a message");
                let _ = key;
                if self.cut[from][to] {
                    continue;
                }
                if self.paused[to] {
                    // The paused process reads it when it resumes.
                    if self.mailbox[to].len() < 512 {
                        self.mailbox[to].push((from, msg));
                    }
                    continue;
                }
                self.deliver(self.ids[from].clone(), to, msg, u);
            } else {
                for i in 0..self.n {
                    self.step(i, Input::Tick, u);
                }
                self.next_tick += self.tick_ms;
            }
        }
        self.now = self.now.max(until);
        // Time passed without steps: windows that ended are ended.
    }

    fn check_windows(&mut self) {
        for i in 0..self.n {
            if let Some((start, end)) = self.open[i].take() {
                self.windows.push((start, end, i));
            }
        }
        self.windows.sort_unstable();
        let mut max_end = vec![0u64; self.n];
        for &(start, end, i) in &self.windows {
            for (j, &e) in max_end.iter().enumerate() {
                assert!(
                    j == i || e <= start,
                    "q-{j} and q-{i} both accept writes at real time {start} (q-{j} until {e}, q-{i} from {start} to {end})"
                );
            }
            max_end[i] = max_end[i].max(end);
        }
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
    // The initial voters: all (a static cluster, bootstrapped from the environment), or the
    // first few, which persisted the bootstrap configuration; the others join. The self-test
    // needs the others to be able to elect once the writer is cut off: all.
    let initial = if selftest || u.arbitrary::<bool>()? {
        n
    } else {
        u.int_in_range(1..=n)?
    };
    let ids: Vec<NodeId> = (0..n).map(node_id).collect();
    let bootstrap = Membership::bootstrap(ids[..initial].iter().cloned());
    let disk = (0..n)
        .map(|i| PersistedState {
            membership: (initial < n && i < initial).then(|| bootstrap.clone()),
            ..PersistedState::default()
        })
        .collect();
    let mut sim = Sim {
        n,
        ids,
        initial,
        target: None,
        configs: HashMap::new(),
        committed: BTreeSet::new(),
        timing,
        rho,
        nodes: (0..n).map(|_| None).collect(),
        disk,
        rate_ppm,
        offset_ms,
        paused: vec![false; n],
        mailbox: vec![Vec::new(); n],
        seeds,
        now: 0,
        next_tick: 0,
        tick_ms,
        cut: vec![vec![false; n]; n],
        loss_pct: 0,
        dup_pct: 0,
        delay_max_ms: 10,
        inflight: BTreeMap::new(),
        seq: 0,
        history: Vec::new(),
        steps: 0,
        writer_of_term: HashMap::new(),
        open: vec![None; n],
        windows: Vec::new(),
        votes: HashMap::new(),
        max_term_seen: vec![Term(0); n],
    };
    let _ = sim.rho;
    for i in 0..n {
        sim.start(i);
    }
    let mut script: Vec<Action> = Vec::new();
    if selftest {
        sim.loss_pct = 0;
        sim.delay_max_ms = 0;
        script.extend((0..100).map(|_| Action::Run(300)));
    }
    let mut script = script.into_iter();
    loop {
        let writer = (0..n).find(|&i| {
            sim.nodes[i]
                .as_ref()
                .is_some_and(|x| x.role() == Role::Writer)
        });
        if let (true, Some(w)) = (selftest, writer) {
            let local = sim.local(w, sim.now).0;
            // 1%, not half speed: at half speed the lease it holds can still end before the others
            // elect a writer (a slow election), and the run passes although the checker works.
            sim.rate_ppm[w] = PPM / 100;
            sim.offset_ms[w] = local - sim.now / 100;
            for a in 0..n {
                for b in 0..n {
                    sim.cut[a][b] = (a == w) != (b == w);
                }
            }
            let until = sim.now + 10_000;
            sim.run(until, &mut u);
            break;
        }
        let action: Action = match script.next() {
            Some(a) => a,
            None if selftest => break,
            None if u.is_empty() || sim.now >= MAX_REAL_MS || sim.steps >= MAX_STEPS => break,
            None => u.arbitrary()?,
        };
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
                if sim.nodes[i].is_none() {
                    sim.start(i);
                }
            }
            Action::Bounce(i) => {
                let i = pick(i);
                sim.kill(i);
                sim.start(i);
            }
            Action::Pause(i) => sim.paused[pick(i)] = true,
            Action::Resume(i) => {
                let i = pick(i);
                sim.paused[i] = false;
                // The agent re-reads the desired members it missed while paused.
                if let Some(t) = sim.target.clone() {
                    sim.step(i, Input::SetMembers(t), &mut u);
                }
                for (from, msg) in std::mem::take(&mut sim.mailbox[i]) {
                    sim.deliver(sim.ids[from].clone(), i, msg, &mut u);
                }
            }
            Action::Transfer { from, to } => {
                // From the writer when there is one, else from whoever was picked.
                let writer = (0..n).find(|&i| {
                    sim.nodes[i]
                        .as_ref()
                        .is_some_and(|x| x.role() == Role::Writer)
                });
                let from = writer.unwrap_or(pick(from));
                sim.step(
                    from,
                    Input::TransferWriter {
                        to: sim.ids[pick(to)].clone(),
                    },
                    &mut u,
                );
            }
            Action::Campaign(i) => sim.step(pick(i), Input::Campaign, &mut u),
            Action::Position { node, delta, cut } => {
                let i = pick(node);
                let (epoch, pos) = sim.nodes[i]
                    .as_ref()
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
                        sim.deliver(sim.ids[from].clone(), to, msg, &mut u);
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
                    .map(|i| sim.ids[i].clone())
                    .collect();
                if !voters.is_empty() {
                    sim.target = Some(voters.clone());
                    for i in 0..n {
                        sim.step(i, Input::SetMembers(voters.clone()), &mut u);
                    }
                }
            }
        }
    }
    // Let the cluster settle a while, so that elections the actions set up finish.
    let until = sim.now + 5_000;
    sim.run(until, &mut u);
    sim.check_windows();
    if std::env::var_os("ELECTION_DEBUG").is_some() {
        eprintln!(
            "n={n} real={}ms steps={} terms with a writer={} windows={} timing={:?}",
            sim.now,
            sim.steps,
            sim.writer_of_term.len(),
            sim.windows.len(),
            sim.timing
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
