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
//!
//! The schedule is the harness's (`harness::scale_changes_under_faults`); the three planted
//! election bugs (leaving the joint configuration early, counting a learner's vote, a removed
//! node campaigning) are `buggify` switches, planted by the core's unit tests
//! (`core/src/harness/planted.rs`), which require this schedule and targeted ones to catch them.

use base_core::NodeId;
use base_core::harness::{Cluster, NetFaults, scale_changes_under_faults};
use base_core::quasar::{Input, Timing};

/// Safety under every fault while the configuration changes, and convergence once they stop.
#[test]
fn membership_changes_are_safe_and_converge_under_faults() {
    let failures: Vec<String> = (0..120u64)
        .filter_map(|s| scale_changes_under_faults(s, false).err())
        .collect();
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
        .filter_map(|s| scale_changes_under_faults(s, true).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A transfer to a learner or a stranger is refused at once, with the reason; the writer keeps
/// accepting writes.
#[test]
fn transfer_outside_the_voters_is_refused_at_once() {
    use base_core::quasar::TransferRefused;
    let mut c = Cluster::with_members(5, 3, Timing::default(), 9, NetFaults::clean(2));
    let w = c.first_writer(10_000).expect("a first writer");
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

/// Positions committed by the outgoing voters alone must reach a quorum of the incoming ones
/// before the joint configuration is left: on 5 → 3, two of the three incoming voters lag (their
/// stores stall, heartbeats still arrive), so C(new) alone could elect one of them without the
/// acknowledged writes (the simulation's seed 3900). The writer stays joint until they catch up;
/// killed meanwhile, it is succeeded by a node holding every committed position.
#[test]
fn the_joint_configuration_is_left_only_once_the_incoming_voters_hold_the_data() {
    for seed in 0..8u64 {
        let mut c = Cluster::new(5, Timing::default(), seed, NetFaults::clean(2));
        let w = c.first_writer(10_000).expect("a first writer");
        let lagging: Vec<usize> = (0..5).filter(|&i| i != w).take(2).collect();
        for &i in &lagging {
            c.stalled[i] = true;
        }
        c.advance(1_000);
        let committed = c.node(w).expect("alive").position();
        assert!(committed > 0, "seed {seed}: writes were committed");
        let incoming = [w, lagging[0], lagging[1]];
        c.set_members(&incoming);
        c.advance(3_000);
        let m = c.membership(w).expect("held");
        assert!(
            m.is_joint(),
            "seed {seed}: left the joint configuration with the incoming voters behind: {}",
            m.describe()
        );
        c.kill(w);
        c.advance(5_000);
        assert!(c.violation().is_none(), "seed {seed}: {:?}", c.violation());
        let next = c.nodes.writer().expect("a writer after the kill");
        assert!(c.node(next).expect("alive").position() >= committed);
        // Once the stores catch up and the old writer is back, the change completes.
        c.stalled.iter_mut().for_each(|s| *s = false);
        c.restart(w);
        c.advance_until(20_000, |c| c.settled_on(&incoming));
        assert!(
            c.settled_on(&incoming),
            "seed {seed}: did not settle: {:?}",
            c.membership(c.nodes.writer().unwrap_or(w))
                .map(|m| m.describe())
        );
        assert!(c.violation().is_none(), "seed {seed}: {:?}", c.violation());
    }
}
