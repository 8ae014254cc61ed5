//! Membership changes by joint consensus (issue 18) on the simulated cluster of the core's
//! harness (`base_core::harness`), whose checker sees every step: never two writers in one term; at no real
//! instant two nodes accepting writes, whatever configurations they count by (leases never
//! overlap across configurations); never two configurations under one version; a node that is
//! not a voter of its persisted configuration never asks for votes nor wins; every new writer
//! holds every configuration committed in an earlier term.
//!
//! - `membership_changes_are_safe_and_converge_under_faults`: scale changes (3→5, 5→3, 1→3, 3→1,
//!   replacing members, removing the writer) while partitions, cut links, kills, restarts, pauses,
//!   fences, transfers and campaigns strike; once the faults stop, the cluster settles on the
//!   last target within a bound.
//! - three planted bugs, each caught by the checks: leaving the joint configuration early;
//!   counting a learner's vote; a removed node campaigning. Each test also runs its schedule
//!   without the bug and requires it to pass, so that what fails is the bug.

use base_core::NodeId;
use base_core::harness::{Cluster, NetFaults, PPM, Rng};
use base_core::quasar::{Input, PlantedBug, Role, Timing};

const FAULT_PHASE_MS: u64 = 20_000;
/// After the faults stop: a writer (a restarted node's promise, elections), then the steps of
/// the change (each a heartbeat round or two, the learners' catch-up).
const SETTLE_BOUND_MS: u64 = 25_000;
const UNIVERSE: usize = 5;

/// The scale changes the campaign draws from: (initial voters, then the targets in turn).
fn script(rng: &mut Rng) -> (usize, Vec<Vec<usize>>) {
    match rng.below(7) {
        0 => (3, vec![vec![0, 1, 2, 3, 4], vec![0, 1, 2]]),
        1 => (1, vec![vec![0, 1, 2]]),
        2 => (5, vec![vec![0, 1, 2]]),
        3 => (3, vec![vec![0, 3, 4]]),
        4 => (3, vec![vec![1, 2, 3]]),
        5 => (3, vec![vec![0], vec![0, 1, 2, 3, 4]]),
        _ => (5, vec![vec![2, 3, 4], vec![0, 1, 2, 3, 4]]),
    }
}

fn fault(c: &mut Cluster, rng: &mut Rng) {
    let n = c.len();
    let i = rng.below(n as u64) as usize;
    match rng.below(14) {
        0 | 1 => {
            let mask = rng.below(1 << n);
            let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|k| mask >> k & 1 == 1);
            c.partition(&[a, b]);
        }
        2 => c.cut_link(i, rng.below(n as u64) as usize),
        3 | 4 => c.heal(),
        5 => c.kill(i),
        6 | 7 => c.restart(i),
        8 => {
            c.kill(i);
            c.restart(i);
        }
        9 => c.pause(i),
        10 => c.resume(i),
        11 => {
            if let Some(&w) = c.accepting().first() {
                let to = NodeId::new(c.id(i).as_str());
                c.step_node(w, Input::TransferWriter { to });
            }
        }
        12 => {
            let fence = rng.percent(50);
            c.set_fenced(i, fence);
        }
        _ => {
            if !c.paused(i) {
                c.step_node(i, Input::Campaign);
            }
        }
    }
}

/// One run: `Err` names the first violation, or the failure to settle.
fn run(seed: u64, bug: Option<PlantedBug>) -> Result<(), String> {
    run_checking(seed, bug, false)
}

/// [`run`], and with `idle_ticks` every tick before a node's `next_tick_due` is checked to
/// change nothing.
fn run_checking(seed: u64, bug: Option<PlantedBug>, idle_ticks: bool) -> Result<(), String> {
    let mut rng = Rng(seed);
    let (initial, targets) = script(&mut rng);
    let net = NetFaults {
        drop_pct: rng.below(20),
        dup_pct: rng.below(10),
        delay_min_ms: 1,
        delay_max_ms: 1 + rng.below(30),
    };
    let t = Timing::default();
    let mut c = Cluster::with_members(UNIVERSE, initial, t, seed, net);
    c.nodes.check_idle_ticks = idle_ticks;
    for k in 0..UNIVERSE {
        c.set_rate(k, PPM - rng.below(t.drift_bound_ppm() + 1));
    }
    if let Some(bug) = bug {
        c.plant_bug(bug);
    }
    let mut faults: Vec<u64> = (0..rng.below(30))
        .map(|_| rng.below(FAULT_PHASE_MS))
        .collect();
    faults.sort_unstable();
    let mut faults = faults.into_iter().peekable();
    let change_at: Vec<u64> = (0..targets.len())
        .map(|k| 2_000 + (k as u64) * FAULT_PHASE_MS / targets.len() as u64 + rng.below(3_000))
        .collect();
    let mut next_change = 0;
    while c.real_ms < FAULT_PHASE_MS {
        if next_change < targets.len() && c.real_ms >= change_at[next_change] {
            c.set_members(&targets[next_change]);
            next_change += 1;
        }
        while faults.next_if(|&at| at <= c.real_ms).is_some() {
            fault(&mut c, &mut rng);
        }
        c.step_ms();
        if let Some(v) = c.violation() {
            return Err(format!("seed {seed}: safety: {v}"));
        }
    }
    // The faults stop.
    c.heal();
    c.net.drop_pct = 0;
    c.net.dup_pct = 0;
    for k in 0..UNIVERSE {
        c.restart(k);
        c.resume(k);
        c.set_fenced(k, false);
    }
    let last = targets.last().expect("a target");
    let settled = c.advance_until(SETTLE_BOUND_MS, |c| c.settled_on(last));
    if let Some(v) = c.violation() {
        return Err(format!("seed {seed}: safety: {v}"));
    }
    if settled.is_none() {
        let held: Vec<String> = (0..UNIVERSE)
            .map(|k| {
                format!(
                    "{}: {:?} {}",
                    c.id(k),
                    c.role(k),
                    c.membership(k).map_or("none".into(), |m| m.describe())
                )
            })
            .collect();
        return Err(format!(
            "seed {seed}: not settled on {last:?} {SETTLE_BOUND_MS} ms after the faults stopped: {}",
            held.join("; ")
        ));
    }
    // Removed members hold a configuration without them, and stay out.
    c.advance(3_000);
    for k in 0..UNIVERSE {
        if !last.contains(&k) && matches!(c.role(k), Some(Role::PreCandidate | Role::Candidate)) {
            return Err(format!("seed {seed}: removed node {} campaigns", c.id(k)));
        }
    }
    match c.violation() {
        Some(v) => Err(format!("seed {seed}: safety: {v}")),
        None => Ok(()),
    }
}

/// Safety under every fault while the configuration changes, and convergence once they stop.
#[test]
fn membership_changes_are_safe_and_converge_under_faults() {
    let failures: Vec<String> = (0..120u64).filter_map(|s| run(s, None).err()).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `Node::next_tick_due` is a promise that drivers sleep on (the `election` fuzz target jumps
/// time by it): a tick before it changes no state and returns no effect. The cluster ticks every
/// node every 10 ms whatever it promised, and the harness compares each node's whole state
/// around every tick that came early, through the schedules above (elections, hand-overs,
/// fences, every step of scale changes, faults). Fails if `next_tick_due` names a time later than
/// one at which a tick acts.
#[test]
fn ticks_before_next_tick_due_change_nothing() {
    let failures: Vec<String> = (0..12u64)
        .filter_map(|s| run_checking(s, None, true).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn first_writer(c: &mut Cluster) -> usize {
    c.advance_until(10_000, |c| !c.accepting().is_empty())
        .expect("a first writer");
    c.accepting()[0]
}

/// Leaving C(old, new) before it is committed: the writer counts by C(new) while the old
/// majority, cut off as the joint configuration went out, never learned it and elects its own
/// writer. Caught as two nodes accepting writes at once, or as that writer winning without the
/// configuration C(new) that the early leaver committed with the new members alone; without the
/// bug the writer, unable to commit the joint configuration, loses its lease first.
fn leave_joint_early(bug: bool) -> Result<(), String> {
    let mut c = Cluster::with_members(5, 3, Timing::default(), 11, NetFaults::clean(2));
    if bug {
        c.plant_bug(PlantedBug::LeaveJointEarly);
    }
    let w = first_writer(&mut c);
    c.advance(500);
    let old: Vec<usize> = (0..3).filter(|&k| k != w).collect();
    c.set_members(&[w, 3, 4]);
    let joint = c.advance_until(5_000, |c| c.membership(w).is_some_and(|m| m.is_joint()));
    if joint.is_none() {
        return Err("the writer never proposed the joint configuration".into());
    }
    c.partition(&[vec![w, 3, 4], old.clone()]);
    c.advance(6_000);
    if let Some(v) = c.violation() {
        return Err(v.clone());
    }
    c.heal();
    if c.advance_until(SETTLE_BOUND_MS, |c| c.settled_on(&[w, 3, 4]))
        .is_none()
        && !c.settled_on(&[w, 3, 4])
    {
        // Another writer may carry the change out: any writer settled on the target will do.
        return Err("not settled after the heal".into());
    }
    c.violation().cloned().map_or(Ok(()), Err)
}

#[test]
fn planted_leave_joint_early_is_caught() {
    leave_joint_early(false).expect("the correct machine passes the schedule");
    let caught = leave_joint_early(true).expect_err("the planted bug must be caught");
    // Either check may see it first: the old majority's writer while the early leaver still
    // writes, or that writer winning without the configuration the early leaver committed.
    assert!(
        caught.contains("accept writes") || caught.contains("committed in term"),
        "{caught}"
    );
}

/// Counting a learner's grant (the bug also sends it vote requests): a voter cut off with a
/// learner wins with the learner's vote while the writer keeps its lease with the other voter.
/// The learners stay learners because one of them is dead and never catches up.
fn count_learner_votes(bug: bool) -> Result<(), String> {
    let mut c = Cluster::with_members(5, 3, Timing::default(), 5, NetFaults::clean(2));
    if bug {
        c.plant_bug(PlantedBug::CountLearnerVotes);
    }
    let w = first_writer(&mut c);
    c.kill(4);
    c.set_members(&[0, 1, 2, 3, 4]);
    let learners = c.advance_until(5_000, |c| {
        c.membership(w).is_some_and(|m| m.learners.len() == 2)
            && c.membership(3).is_some_and(|m| m.learners.len() == 2)
    });
    if learners.is_none() {
        return Err("the new members never became learners".into());
    }
    let others: Vec<usize> = (0..3).filter(|&k| k != w).collect();
    let (x, y) = (others[0], others[1]);
    c.partition(&[vec![w, y], vec![x, 3]]);
    c.advance(8_000);
    if c.membership(w).is_some_and(|m| m.is_joint()) {
        return Err("the joint configuration came without the dead learner".into());
    }
    c.violation().cloned().map_or(Ok(()), Err)
}

#[test]
fn planted_count_learner_votes_is_caught() {
    count_learner_votes(false).expect("the correct machine passes the schedule");
    let caught = count_learner_votes(true).expect_err("the planted bug must be caught");
    assert!(caught.contains("accept writes"), "{caught}");
}

/// A removed node campaigning: after 3 → 2 the removed node holds the configuration without it
/// (the writer keeps sending it heartbeats until it acks that); with the bug it campaigns once
/// the writer's heartbeats stop reaching it.
fn removed_campaigns(bug: bool) -> Result<(), String> {
    let mut c = Cluster::with_members(3, 3, Timing::default(), 3, NetFaults::clean(2));
    if bug {
        c.plant_bug(PlantedBug::RemovedCampaigns);
    }
    let w = first_writer(&mut c);
    let removed = (w + 1) % 3;
    let keep: Vec<usize> = (0..3).filter(|&k| k != removed).collect();
    c.set_members(&keep);
    if c.advance_until(5_000, |c| c.settled_on(&keep)).is_none() {
        return Err("3 → 2 did not settle".into());
    }
    let learned = c.advance_until(2_000, |c| {
        c.membership(removed)
            .is_some_and(|m| !m.is_member(c.id(removed)))
    });
    if learned.is_none() {
        return Err("the removed node never learned it was removed".into());
    }
    c.advance(5_000);
    c.violation().cloned().map_or(Ok(()), Err)
}

#[test]
fn planted_removed_node_campaigning_is_caught() {
    removed_campaigns(false).expect("the correct machine passes the schedule");
    let caught = removed_campaigns(true).expect_err("the planted bug must be caught");
    assert!(caught.contains("not a voter"), "{caught}");
}

/// A transfer to a learner or a stranger is refused at once, with the reason; the writer keeps
/// accepting writes.
#[test]
fn transfer_outside_the_voters_is_refused_at_once() {
    use base_core::quasar::TransferRefused;
    let mut c = Cluster::with_members(5, 3, Timing::default(), 9, NetFaults::clean(2));
    let w = first_writer(&mut c);
    c.kill(4);
    c.set_members(&[0, 1, 2, 3, 4]);
    c.advance(1_000);
    let node = c.node(w).expect("alive");
    assert!(node.membership().expect("held").learners.contains(c.id(3)));
    assert_eq!(
        node.transfer_refusal(c.id(3)),
        Some(TransferRefused::NotAVoter)
    );
    assert_eq!(
        node.transfer_refusal(&NodeId::from("stranger")),
        Some(TransferRefused::NotAVoter)
    );
    let to = c.id(3).clone();
    c.step_node(w, Input::TransferWriter { to });
    assert_eq!(c.accepting(), vec![w]);
    assert!(c.node(w).expect("alive").transferring_to().is_none());
}
