//! One schedule of scale changes under faults, drawn from a seed: the core's membership
//! property test (`tests/membership_props.rs`) runs it over many seeds, and the planted
//! election bugs' tests (`buggify`, the core's unit tests) require it to catch each bug.
//!
//! The cluster starts with some voters of [`UNIVERSE`] nodes and moves through one of a few
//! scripted targets (3→5→3, 1→3, 5→3, replacing members, removing the writer, 3→1→5, 5→3→5)
//! while partitions, cut links, kills, restarts, pauses, fences, transfers and campaigns strike
//! for [`FAULT_PHASE_MS`]; then the faults stop and the cluster must settle on the last target
//! within [`SETTLE_BOUND_MS`], the removed members staying out. The checker sees every step.

use super::{Cluster, NetFaults, PPM, Rng};
use crate::NodeId;
use crate::quasar::{Input, Role, Timing};

/// How long faults strike (and the scale changes start).
pub const FAULT_PHASE_MS: u64 = 20_000;
/// After the faults stop: a writer (a restarted node's promise, elections), then the steps of
/// the change (each a heartbeat round or two, the learners' catch-up).
pub const SETTLE_BOUND_MS: u64 = 25_000;
/// Nodes in every run (the initial voters are the first of them).
pub const UNIVERSE: usize = 5;

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
    match rng.below(16) {
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
        // A store that lags behind its agent: heartbeats arrive, the log does not.
        14 => c.stalled[i] = true,
        15 => c.stalled[i] = false,
        _ => {
            if !c.paused(i) {
                c.step_node(i, Input::Campaign);
            }
        }
    }
}

/// One run of seed `seed`: `Err` names the first violation, or the failure to settle. With
/// `idle_ticks` every tick before a node's `next_tick_due` is checked to change nothing.
pub fn scale_changes_under_faults(seed: u64, idle_ticks: bool) -> Result<(), String> {
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
    c.stalled.iter_mut().for_each(|s| *s = false);
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
