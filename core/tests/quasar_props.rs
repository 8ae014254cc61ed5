//! Properties of the Quasar election over random schedules on a simulated network of 3 and 5
//! nodes with per-node clock drift inside the configured bound: drops, duplicates, reorders
//! (random delays), partitions, pauses, kills and restarts (with persisted state), transfers.
//!
//! - never two writers in one term;
//! - a fenced node never becomes writer and never accepts writes (fences come and go as faults);
//! - at no real instant two nodes whose `can_accept_writes` is true (each node's window computed
//!   exactly from its own clock and lease by the harness's checker, which also checks votes,
//!   terms and configurations: see `base_core::harness::Checker`);
//! - once the faults stop, a connected cluster elects a writer within a bound;
//! - a stable connected majority elects a writer within a bound, and fails over within one.

use base_core::NodeId;
use base_core::harness::{Cluster, NetFaults, PPM, TICK_MS};
use base_core::quasar::{Input, Role, Timing};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// Faults are injected during this much simulated time.
const FAULT_PHASE_MS: u64 = 15_000;
/// After the faults stop (healed, everyone restarted and resumed, no loss), a writer must be
/// elected within this bound: a restarted node's promise (E), then an election timeout (≤ Emax),
/// a few times over for split votes.
const LIVENESS_BOUND_MS: u64 = 12_000;
const NETWORK_DELAY_MAX_MS: u64 = 40;

#[derive(Clone, Debug)]
enum Fault {
    Partition(Vec<u8>),
    CutLink(usize, usize),
    Heal,
    /// Kill and restart at once: the node forgets its promises but not its term and vote.
    Bounce(usize),
    Kill(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    TransferFromWriter(usize),
    Campaign(usize),
    Fence(usize),
    Unfence(usize),
}

#[derive(Clone, Debug)]
struct Plan {
    size: usize,
    seed: u64,
    drop_pct: u64,
    dup_pct: u64,
    delay_max_ms: u64,
    /// The adversary's election timeouts: every follower campaigns the moment its promise allows
    /// (the lowest timeout the argument permits), so leases are tested at their very edge.
    eager: bool,
    /// Clock rates: each in [1 − ρ, 1], so any two clocks differ in rate by at most ρ.
    rate_ppm: Vec<u64>,
    /// (time in ms, fault), applied in time order during the fault phase.
    faults: Vec<(u64, Fault)>,
}

fn below(g: &mut Gen, n: u64) -> u64 {
    u64::arbitrary(g) % n
}

impl Arbitrary for Fault {
    fn arbitrary(g: &mut Gen) -> Fault {
        // Node indices are reduced modulo the cluster size when applied.
        let i = below(g, 5) as usize;
        match below(g, 17) {
            15 => Fault::Fence(i),
            16 => Fault::Unfence(i),
            0 | 1 => Fault::Partition((0..5).map(|_| below(g, 2) as u8).collect()),
            12 => Fault::CutLink(i, below(g, 5) as usize),
            13 | 14 => Fault::Bounce(i),
            2 | 3 => Fault::Heal,
            4 => Fault::Kill(i),
            5 | 6 => Fault::Restart(i),
            7 => Fault::Pause(i),
            8 | 9 => Fault::Resume(i),
            10 => Fault::TransferFromWriter(i),
            _ => Fault::Campaign(i),
        }
    }
}

impl Arbitrary for Plan {
    fn arbitrary(g: &mut Gen) -> Plan {
        let size = if bool::arbitrary(g) { 3 } else { 5 };
        let drift = Timing::default().drift_bound_ppm();
        let n_faults = below(g, 24) as usize;
        let mut faults: Vec<(u64, Fault)> = (0..n_faults)
            .map(|_| (below(g, FAULT_PHASE_MS), Fault::arbitrary(g)))
            .collect();
        faults.sort_by_key(|(t, _)| *t);
        Plan {
            size,
            seed: u64::arbitrary(g),
            drop_pct: below(g, 30),
            dup_pct: below(g, 20),
            delay_max_ms: 1 + below(g, NETWORK_DELAY_MAX_MS),
            eager: bool::arbitrary(g),
            rate_ppm: (0..size).map(|_| PPM - below(g, drift + 1)).collect(),
            faults,
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Plan>> {
        let base = self.clone();
        let mut out = Vec::new();
        for k in 0..self.faults.len() {
            let mut p = base.clone();
            p.faults.remove(k);
            out.push(p);
        }
        if self.drop_pct > 0 || self.dup_pct > 0 {
            let mut p = base.clone();
            p.drop_pct = 0;
            p.dup_pct = 0;
            out.push(p);
        }
        Box::new(out.into_iter())
    }
}

fn build(plan: &Plan) -> Cluster {
    let mut c = Cluster::new(
        plan.size,
        Timing::default(),
        plan.seed,
        NetFaults {
            drop_pct: plan.drop_pct,
            dup_pct: plan.dup_pct,
            delay_min_ms: 1,
            delay_max_ms: plan.delay_max_ms,
        },
    );
    for (i, rate) in plan.rate_ppm.iter().enumerate() {
        c.set_rate(i, *rate);
    }
    c
}

fn apply(c: &mut Cluster, fault: &Fault) {
    let n = c.len();
    match fault {
        Fault::Partition(groups) => {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (i, side) in groups.iter().take(n).enumerate() {
                if *side == 0 { a.push(i) } else { b.push(i) }
            }
            c.partition(&[a, b]);
        }
        Fault::CutLink(i, j) => c.cut_link(i % n, j % n),
        Fault::Heal => c.heal(),
        Fault::Bounce(i) => {
            c.kill(i % n);
            c.restart(i % n);
        }
        Fault::Kill(i) => c.kill(i % n),
        Fault::Restart(i) => c.restart(i % n),
        Fault::Pause(i) => c.pause(i % n),
        Fault::Resume(i) => c.resume(i % n),
        Fault::TransferFromWriter(i) => {
            if let Some(&w) = c.accepting().first() {
                let to = i % n;
                if to != w {
                    let to = NodeId::new(c.id(to).as_str());
                    c.step_node(w, Input::TransferWriter { to });
                }
            }
        }
        Fault::Fence(i) => c.set_fenced(i % n, true),
        Fault::Unfence(i) => c.set_fenced(i % n, false),
        Fault::Campaign(i) => {
            if !c.paused(i % n) {
                c.step_node(i % n, Input::Campaign);
            }
        }
    }
}

/// Safety under every fault, then liveness once the faults stop.
fn safe_and_live(plan: Plan) -> TestResult {
    let mut c = build(&plan);
    let mut faults = plan.faults.iter().peekable();
    while c.real_ms < FAULT_PHASE_MS {
        while let Some((_, f)) = faults.next_if(|(t, _)| *t <= c.real_ms) {
            apply(&mut c, f);
        }
        if plan.eager && c.real_ms.is_multiple_of(TICK_MS) {
            for i in 0..c.len() {
                let waiting = matches!(c.role(i), Some(Role::Follower | Role::PreCandidate));
                if !c.paused(i) && waiting {
                    c.step_node(i, Input::Campaign);
                }
            }
        }
        c.step_ms();
        if let Some(v) = c.violation() {
            return TestResult::error(format!("safety: {v}"));
        }
    }
    // The faults stop: heal, restart, resume; a lossless, bounded-delay network.
    c.heal();
    c.net.drop_pct = 0;
    c.net.dup_pct = 0;
    for i in 0..c.len() {
        c.restart(i);
        c.resume(i);
        c.set_fenced(i, false);
    }
    let elected = c.advance_until(LIVENESS_BOUND_MS, |c| !c.accepting().is_empty());
    if let Some(v) = c.violation() {
        return TestResult::error(format!("safety: {v}"));
    }
    if elected.is_none() {
        return TestResult::error(format!(
            "liveness: no writer {LIVENESS_BOUND_MS} ms after the faults stopped (max term {})",
            c.max_term()
        ));
    }
    TestResult::passed()
}

/// A fenced writer never accepts a write: it stops at once, and its successor wins a later term;
/// a fenced minority does not stop the others from electing (it still votes).
fn fenced_never_writes(seed: u64, five: bool, fence_count: u8) -> TestResult {
    let size = if five { 5 } else { 3 };
    let mut c = Cluster::new(
        size,
        Timing::default(),
        seed,
        NetFaults::clean(1 + seed % 10),
    );
    if c.advance_until(10_000, |c| !c.accepting().is_empty())
        .is_none()
    {
        return TestResult::error("no first writer");
    }
    c.advance(500);
    let w = c.accepting()[0];
    let term = c.term(w);
    c.set_fenced(w, true);
    if !c.accepting().is_empty() {
        return TestResult::error("the fenced writer still accepts writes");
    }
    // Fence more, keeping a majority unfenced minus one: the fenced still vote.
    let extra = usize::from(fence_count) % (size / 2);
    for k in 1..=extra {
        c.set_fenced((w + k) % size, true);
    }
    if c.advance_until(5_000, |c| !c.accepting().is_empty())
        .is_none()
    {
        return TestResult::error("no writer after the fence");
    }
    let w2 = c.accepting()[0];
    if c.fenced(w2) || c.term(w2) <= term {
        return TestResult::error(format!("bad successor {w2} in term {}", c.term(w2)));
    }
    c.advance(3_000);
    match c.violation() {
        Some(v) => TestResult::error(format!("safety: {v}")),
        None => TestResult::passed(),
    }
}

#[test]
fn quasar_fenced_writer_never_accepts_writes() {
    QuickCheck::new()
        .tests(60)
        .quickcheck(fenced_never_writes as fn(u64, bool, u8) -> TestResult);
}

#[test]
fn quasar_safety_and_liveness_under_faults() {
    QuickCheck::new()
        .tests(100)
        .quickcheck(safe_and_live as fn(Plan) -> TestResult);
}

/// A majority, connected from the start (the rest partitioned away or dead), elects a writer
/// within the startup promise plus a few election timeouts; killing that writer elects another
/// with a higher term within a bound well under 3 s in the typical case.
fn majority_elects_and_fails_over(seed: u64, five: bool, minority_dead: bool) -> TestResult {
    let size = if five { 5 } else { 3 };
    let t = Timing::default();
    let mut c = Cluster::new(size, t, seed, NetFaults::clean(1 + seed % 20));
    let mut rng = base_core::harness::Rng(seed);
    for i in 0..size {
        c.set_rate(i, PPM - rng.below(t.drift_bound_ppm() + 1));
    }
    let majority = size / 2 + 1;
    let minority: Vec<usize> = (majority..size).collect();
    if minority_dead {
        for &i in &minority {
            c.kill(i);
        }
    } else {
        c.partition(&[(0..majority).collect(), minority.clone()]);
    }
    let e = t.election_timeout_min_ms().0;
    let emax = t.election_timeout_max_ms().0;
    let bound = e + 3 * emax;
    if c.advance_until(bound, |c| !c.accepting().is_empty())
        .is_none()
    {
        return TestResult::error(format!("no writer within {bound} ms"));
    }
    let w = c.accepting()[0];
    if w >= majority {
        return TestResult::error("the writer is outside the majority".to_string());
    }
    let old_term = c.term(w);
    c.kill(w);
    // The rest of the majority still forms one only if the minority is reachable; bring it in.
    c.heal();
    for &i in &minority {
        c.restart(i);
    }
    // Worst case: restarted nodes wait E; followers wait out their promise and timeout (≤ Emax).
    let failover_bound = e + 3 * emax;
    let waited = c.advance_until(failover_bound, |c| !c.accepting().is_empty());
    if let Some(v) = c.violation() {
        return TestResult::error(format!("safety: {v}"));
    }
    match waited {
        None => TestResult::error(format!("no failover within {failover_bound} ms")),
        Some(_) => {
            let w2 = c.accepting()[0];
            if c.term(w2) <= old_term {
                return TestResult::error("new writer's term is not higher".to_string());
            }
            TestResult::passed()
        }
    }
}

#[test]
fn quasar_majority_elects_and_fails_over() {
    QuickCheck::new()
        .tests(60)
        .quickcheck(majority_elects_and_fails_over as fn(u64, bool, bool) -> TestResult);
}

/// With a clean network, killing the writer of a healthy cluster fails over in under 3 s.
#[test]
fn quasar_failover_is_well_under_three_seconds() {
    for seed in 0..20u64 {
        let mut c = Cluster::new(3, Timing::default(), seed, NetFaults::clean(2));
        assert!(
            c.advance_until(5_000, |c| !c.accepting().is_empty())
                .is_some()
        );
        c.advance(1_000);
        let w = c.accepting()[0];
        c.kill(w);
        let waited = c
            .advance_until(3_000, |c| !c.accepting().is_empty())
            .unwrap_or_else(|| panic!("seed {seed}: no failover within 3 s"));
        assert!(waited < 2_500, "seed {seed}: failover took {waited} ms");
        assert!(c.violation().is_none(), "{:?}", c.violation());
    }
}
