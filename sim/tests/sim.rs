//! The simulation's tests (`cargo sim-test`): a few hundred seeds, the determinism check, the
//! planted bugs the checkers must catch, the poll and scale-change regressions, switchover and
//! fencing coverage, and `replay`.
//!
//! Replay any seed with its whole timeline:
//! `MADSIM_TEST_SEED=123 cargo sim-test --test sim replay -- --nocapture`
//! (add `SIM_BUG=no-recheck`, `SIM_QUIET_SCALING=1`, `SIM_POLL_MS=1000`,
//! `SIM_TIMING=k8s-lease` or `SIM_FAULTS=kills` as the failure says).

#![cfg(madsim)]

use base_sim::config::{Bug, FaultMix, Options, TimingProfile};
use base_sim::run::{Report, run_seed};
use base_sim::stats::FailoverKind;

/// Seeds per CI test; four tests run in parallel, so 4 × this many seeds in all.
const SEEDS_PER_TEST: u64 = 75;

fn options() -> Options {
    Options::default()
}

fn run_seeds(from: u64) {
    for seed in from..from + SEEDS_PER_TEST {
        let report = run_seed(seed, &options());
        if let Some(text) = report.failure_text() {
            panic!("{text}");
        }
        assert!(
            report.stats.acked_writes > 0,
            "seed {seed}: no write was ever acknowledged"
        );
        assert!(
            report.live_ms.is_some() && report.converge_ms.is_some(),
            "seed {seed}: ended early"
        );
    }
}

#[test]
fn seeds_000_074() {
    run_seeds(0);
}

#[test]
fn seeds_075_149() {
    run_seeds(75);
}

#[test]
fn seeds_150_224() {
    run_seeds(150);
}

#[test]
fn seeds_225_299() {
    run_seeds(225);
}

/// The same seed twice gives the same run, event for event (the trace hash covers every recorded
/// event and the number of messages sent).
#[test]
fn same_seed_same_run() {
    for seed in [3, 17, 42] {
        let a = run_seed(seed, &options());
        let b = run_seed(seed, &options());
        assert_eq!(
            (
                a.trace_hash,
                a.trace_events,
                a.sim_ms,
                a.messages,
                a.stats.acked_writes
            ),
            (
                b.trace_hash,
                b.trace_events,
                b.sim_ms,
                b.messages,
                b.stats.acked_writes
            ),
            "seed {seed} is not deterministic"
        );
    }
    // And different seeds differ.
    assert_ne!(
        run_seed(1, &options()).trace_hash,
        run_seed(2, &options()).trace_hash
    );
}

/// The failover campaign's configurations stay exercised: writer kills only, under both timings,
/// with no violation, every kill measured (also when a kill is due before the first writer is
/// elected: it waits for one), and no crash failover faster than the election allows:
/// followers wait at least `election_timeout_min` after their last heartbeat (up to one interval
/// before the crash), on clocks that run at most ρ slow.
#[test]
fn kill_plans_under_both_timings_fail_over_within_the_election_bounds() {
    for timing in [TimingProfile::Quasar, TimingProfile::K8sLease] {
        let t = timing.timing();
        let earliest_ms = (t.election_timeout_min_ms().0 - t.heartbeat_interval_ms().0)
            * (1_000_000 - t.drift_bound_ppm())
            / 1_000_000
            - 50;
        let liveness_ms = base_sim::config::Bounds::of(&t).liveness_ms;
        let mut crashes = 0;
        // Seed 1162: its first kill was due before the first writer was elected.
        for seed in (0..15).chain([1162]) {
            let options = Options {
                timing,
                faults: FaultMix::Kills,
                ..Options::default()
            };
            let report = run_seed(seed, &options);
            if let Some(text) = report.failure_text() {
                panic!("{text}");
            }
            let failovers = &report.stats.failovers;
            assert_eq!(failovers.len(), 3, "{timing:?} seed {seed}: {failovers:?}");
            for f in failovers {
                assert!(f.kind.is_kill() && f.clean, "{timing:?} seed {seed}: {f:?}");
                assert!(f.ms <= liveness_ms, "{timing:?} seed {seed}: {f:?}");
                if f.kind == FailoverKind::Crash {
                    crashes += 1;
                    assert!(
                        f.ms >= earliest_ms,
                        "{timing:?} seed {seed}: a crash failover in {} ms, before any follower may campaign ({earliest_ms} ms)",
                        f.ms
                    );
                }
            }
        }
        assert!(crashes > 5, "{timing:?}: only {crashes} crashes");
    }
}

const ONE_WRITER_PER_TERM: &str = "1 one writer per term";
const TWO_ACCEPTORS: &str = "2 at most one node accepts writes at any instant";
const SUPERSEDED_ROUTE: &str = "3 no write routed to a superseded term";
const READ_YOUR_WRITES: &str = "4 read-your-writes";
const LOST_WRITE: &str = "5 no acknowledged write is lost";
const CONVERGES: &str = "7 reconcile converges, PVCs follow retentionPolicy";
const SWITCHOVER: &str = "9 switchover and fencing";
const NOT_A_VOTER: &str = base_sim::agent::NOT_A_VOTER;
const POSITION: &str = "11 the election holds its store's position";
const APPLIED: &str = "12 an applied entry is never contradicted";
/// Seeds searched for the figure-8 interleaving `older-term-commit` needs.
const SEARCH_OLDER_TERM: u64 = 300;

/// The report's violation is of `invariant` (the planted bug broke what it must break, not
/// something else first); prints the report.
fn assert_invariant(report: &Report, invariant: &str) {
    let text = report.failure_text().expect("a violation");
    println!("{text}");
    let v = report.violation.as_ref().expect("a violation");
    assert_eq!(v.invariant, invariant, "{text}");
    assert!(text.contains(&report.replay_command()), "{text}");
    assert!(!v.trace.is_empty());
}

/// The final check of invariant 5 never skips: when the newest writer is gone at the moment the
/// run could end (here crashed on purpose), the run waits for the next writer and checks that
/// one's log for every acknowledged write.
#[test]
fn final_lost_write_check_waits_for_the_next_writer() {
    let crash = Options {
        crash_writer_at_end: true,
        ..Options::default()
    };
    for seed in 0..5 {
        // Same seed, same run up to the end: the writer this one crashes is the one checked there.
        let plain = run_seed(seed, &options());
        let (old_term, _) = plain.stats.final_checked.expect("the final check ran");
        let report = run_seed(seed, &crash);
        if let Some(text) = report.failure_text() {
            panic!("{text}");
        }
        let (term, _) = report.stats.final_checked.expect("the final check ran");
        assert!(
            report.stats.final_check_wait_ms > 0 && term > old_term,
            "seed {seed}: checked term {term} after {} ms (the writer at the end had term {old_term})",
            report.stats.final_check_wait_ms
        );
    }
}

/// Finds the first seed in `0..limit` that the bug breaks, and checks that it replays exactly.
fn first_caught(options: &Options, limit: u64) -> Option<Report> {
    let report = (0..limit)
        .map(|seed| run_seed(seed, options))
        .find(|r| !r.ok())?;
    let again = run_seed(report.seed, options);
    assert_eq!(
        (
            again.trace_hash,
            again
                .violation
                .as_ref()
                .map(|v| (v.invariant, v.detail.clone()))
        ),
        (
            report.trace_hash,
            report
                .violation
                .as_ref()
                .map(|v| (v.invariant, v.detail.clone()))
        ),
        "seed {} does not replay",
        report.seed
    );
    Some(report)
}

/// The planted bug of the brief: the agent checks the lease when a write arrives but not again
/// right before the store applies it. A pause in between lets a deposed writer apply a write while
/// its successor accepts writes: invariant 2 must say so (at the moment the store applies it),
/// with a seed that replays.
#[test]
fn planted_bug_no_recheck_is_caught() {
    let options = Options {
        bug: Some(Bug::NoRecheck),
        ..Options::default()
    };
    let report = first_caught(&options, 40).expect("the checkers miss the planted no-recheck bug");
    assert_invariant(&report, TWO_ACCEPTORS);
    assert!(report.replay_command().contains("--bug no-recheck"));
}

/// The other planted bug: a store that keeps accepting writes past the writer's lease (a lease
/// longer than the election timeout, which `Timing::new` refuses, planted on the sim side). A
/// deposed writer's store applies writes while its successor accepts writes: invariant 2 must
/// say so, not merely some failure.
#[test]
fn planted_bug_lease_overrun_is_caught() {
    let options = Options {
        bug: Some(Bug::LeaseOverrun),
        ..Options::default()
    };
    let report = first_caught(&options, 60).expect("the checkers miss a lease past its end");
    assert_invariant(&report, TWO_ACCEPTORS);
}

/// Scale changes under faults, the hole issue 18 closed: the election's peer set used to change
/// by restarting pods, without joint consensus, and a partition while a scale change rolled out
/// let old and new peer sets each elect a writer (this test, then named
/// `known_hole_scale_change_under_faults_splits_the_brain`, found two writers or a lost
/// acknowledged write within these seeds; seed 990 never converged). Now the pods' agents carry
/// out the members the operator publishes (learners, C(old, new), C(new)) and faults, switchovers
/// and fences strike while scale changes roll out (the default plan): 0 violations, and every
/// seed converges within the bounds. The seeds are past the CI seeds' (which run the same plan),
/// and enough of them must have had faults strike mid-scale that the window is exercised.
#[test]
fn regression_scale_change_under_faults_keeps_one_writer() {
    let mut mid_scale = 0;
    for seed in (300..400).chain([990]) {
        let report = run_seed(seed, &options());
        if let Some(text) = report.failure_text() {
            panic!("{text}");
        }
        assert!(
            report.live_ms.is_some() && report.converge_ms.is_some(),
            "seed {seed}: ended early"
        );
        mid_scale += u64::from(report.stats.faults_mid_scale > 0);
    }
    assert!(
        mid_scale >= MID_SCALE_SEEDS_MIN,
        "only {mid_scale} seeds had faults strike while a scale change rolled out"
    );
}

/// Seeds of the regression test above that must have had a fault strike mid-scale.
const MID_SCALE_SEEDS_MIN: u64 = 5;

/// The election's planted `removed-campaigns` (issue 18, a switch in `quasar::node`): a member
/// the operator removed (or a learner) campaigns. Caught as invariant 10 itself under the
/// default plan. (Its two siblings, `leave-joint-early` and `count-learner-votes`, need a
/// partition inside the joint phase or a voter cut off with an uncaught-up learner: no seed of
/// the first 720 catches them; the core harness's schedules do, `core/src/harness/planted.rs`.)
#[test]
fn planted_bug_removed_campaigns_is_caught() {
    let options = Options {
        bug: Some(Bug::RemovedCampaigns),
        ..Options::default()
    };
    let report =
        first_caught(&options, 200).expect("the checkers miss a removed member campaigning");
    assert_invariant(&report, NOT_A_VOTER);
}

/// A planted agent that never reads its pod's annotations file: a fenced writer keeps writing.
/// Invariant 8 must catch it (a write applied after the file said fenced for a whole read period).
#[test]
fn planted_bug_ignore_fence_is_caught() {
    let options = Options {
        bug: Some(Bug::IgnoreFence),
        ..Options::default()
    };
    let report =
        first_caught(&options, 60).expect("the checkers miss an agent that ignores fencing");
    assert_invariant(&report, "8 a fenced node accepts no write");
}

/// A planted operator that reports a switchover `Done` as soon as it asks the writer to hand
/// over: invariant 9 must see that the target did not win the writer's seat.
#[test]
fn planted_bug_early_done_is_caught() {
    let options = Options {
        bug: Some(Bug::EarlyDone),
        ..Options::default()
    };
    let report = first_caught(&options, 60).expect("the checkers miss a switchover done too early");
    assert_invariant(&report, SWITCHOVER);
    let detail = &report.violation.as_ref().expect("a violation").detail;
    assert!(detail.contains("done"), "{detail}");
}

/// A planted operator that plans as if nothing were fenced: a switchover to a fenced replica is
/// not refused, and invariant 9 must say so.
#[test]
fn planted_bug_unfenced_plan_is_caught() {
    let options = Options {
        bug: Some(Bug::UnfencedPlan),
        ..Options::default()
    };
    let report =
        first_caught(&options, 120).expect("the checkers miss a switchover to a fenced replica");
    assert_invariant(&report, SWITCHOVER);
    let detail = &report.violation.as_ref().expect("a violation").detail;
    assert!(detail.contains("is not refused"), "{detail}");
}

/// A planted agent that answers a vote request from a memo keyed by term alone: when two
/// candidates campaign in one term, a voter grants both, and both win it. Invariant 1 must say
/// so (five replicas: with three, a writer taken away leaves no third voter for a split vote).
#[test]
fn planted_bug_vote_cache_is_caught() {
    let options = Options {
        bug: Some(Bug::VoteCache),
        replicas: Some(5),
        ..Options::default()
    };
    // Bound 400: the bug needs a split vote, and since a pre-candidate yields to a better one
    // and a follower that granted a pre-vote holds its own campaign back (`Node::make_way`),
    // split votes are rare: the first catch is seed 319 (it was 74, and below 60 before issue 15
    // moved the timelines).
    let report = first_caught(&options, 400).expect("the checkers miss two winners of one term");
    assert_invariant(&report, ONE_WRITER_PER_TERM);
}

/// A planted writer that releases a held write as committed as soon as its own store holds it:
/// a writer that loses its seat before a quorum holds the write leaves an acknowledged write the
/// next writer never had. Invariant 5 must say so.
#[test]
fn planted_bug_ack_before_commit_is_caught() {
    let options = Options {
        bug: Some(Bug::AckBeforeCommit),
        ..Options::default()
    };
    let report =
        first_caught(&options, 60).expect("the checkers miss a write acknowledged before commit");
    assert_invariant(&report, LOST_WRITE);
}

/// A planted writer that counts an older term's entry on a quorum as committed (Raft §5.4.2
/// left out, the paper's figure 8): replicas apply it, and a later writer that never had it
/// ships over it. Invariant 12 must say so. Not caught yet: the random fault plans never make
/// the figure-8 interleaving (three writers in a row, the middle one's entries on a minority);
/// 0 of 300 seeds did. Needs a directed fault plan; run it with `--ignored`.
#[test]
#[ignore = "the random fault plans do not reach figure 8 (0 of 300 seeds)"]
fn planted_bug_older_term_commit_is_caught() {
    let options = Options {
        bug: Some(Bug::OlderTermCommit),
        ..Options::default()
    };
    let report = first_caught(&options, SEARCH_OLDER_TERM)
        .expect("the checkers miss a commit of an older term's entries");
    assert_invariant(&report, APPLIED);
}

/// A planted replica that keeps its own entry where the writer's differs (no cut): its log
/// disagrees with the writer's under matching positions, and once it writes it lacks what was
/// acknowledged. Invariant 5 must say so.
#[test]
fn planted_bug_no_truncate_is_caught() {
    let options = Options {
        bug: Some(Bug::NoTruncate),
        ..Options::default()
    };
    let report = first_caught(&options, 60).expect("the checkers miss a replica that never cuts");
    assert_invariant(&report, LOST_WRITE);
}

/// A planted store whose epoch does not grow with a cut or a snapshot: the lower position it
/// then reports looks stale, and the election keeps the higher one. Invariant 11 must say so.
/// Not caught yet: a cut or snapshot lowers a position only when the writer ships an older
/// term's entries over a deposed writer's later ones, and the random plans never make that
/// (cuts and snapshots happen in most seeds; `positions lowered` stays 0). Needs a directed
/// fault plan; run it with `--ignored`.
#[test]
#[ignore = "the random fault plans never lower a position (0 of 60 seeds)"]
fn planted_bug_no_epoch_is_caught() {
    let options = Options {
        bug: Some(Bug::NoEpoch),
        ..Options::default()
    };
    let report =
        first_caught(&options, 60).expect("the checkers miss a position that never goes down");
    assert_invariant(&report, POSITION);
}

/// Seeds 808 and 1039 lost acknowledged writes: a duplicated snapshot answer reached a replica
/// after it had installed the first copy and appended committed entries past it, and was
/// installed again at the replica's commit, cutting them (invariant 5). A snapshot is installed
/// only past the store's commit, and only as the answer to the request in flight.
#[test]
fn regression_a_duplicated_snapshot_answer_is_not_installed_again() {
    for seed in [808, 1039] {
        let report = run_seed(seed, &options());
        if let Some(text) = report.failure_text() {
            panic!("{text}");
        }
        assert!(
            report.stats.snapshots_installed > 0,
            "seed {seed}: no snapshot"
        );
    }
}

/// A planted gateway that reuses its last write's route for a poll interval: a write goes to
/// the old writer's term after a poll showed a newer one. Invariant 3 must say so.
#[test]
fn planted_bug_route_cache_is_caught() {
    let options = Options {
        bug: Some(Bug::RouteCache),
        ..Options::default()
    };
    let report =
        first_caught(&options, 60).expect("the checkers miss a write routed to an old term");
    assert_invariant(&report, SUPERSEDED_ROUTE);
}

/// A planted gateway that routes reads without the client's identity: a read right after the
/// client's write is not pinned to the writer and reaches a replica without that write.
/// Invariant 4 must say so.
#[test]
fn planted_bug_no_read_pin_is_caught() {
    let options = Options {
        bug: Some(Bug::NoReadPin),
        ..Options::default()
    };
    let report = first_caught(&options, 60).expect("the checkers miss a read that misses a write");
    assert_invariant(&report, READ_YOUR_WRITES);
}

/// A planted operator that plans with the other `retentionPolicy`, scaling 5 replicas down to
/// 3: under `Retain` it deletes the scaled-away PVCs, under `Delete` it keeps them. Invariant 7
/// must catch both.
#[test]
fn planted_bug_wrong_retention_is_caught_under_both_policies() {
    let options = Options {
        bug: Some(Bug::WrongRetention),
        replicas: Some(5),
        ..Options::default()
    };
    let mut caught = Vec::new();
    for seed in 0..200 {
        let report = run_seed(seed, &options);
        if let Some(v) = &report.violation {
            assert_invariant(&report, CONVERGES);
            let policy = if v.detail.contains("Retain") {
                "Retain"
            } else {
                assert!(v.detail.contains("under Delete"), "{}", v.detail);
                "Delete"
            };
            if !caught.contains(&policy) {
                caught.push(policy);
            }
            if caught.len() == 2 {
                return;
            }
        }
    }
    panic!("the checkers caught the wrong retention only under {caught:?}");
}

/// Switchovers, fences, operator crashes and scale-downs really happen under faults, in 100
/// seeds beyond the CI tests' 0–299: switchovers done, refused because the target is fenced, a
/// fenced writer handing over, writes a fenced node refused; operator crashes in the middle of a
/// rolling update and of a scale change; PVCs of scaled-away ordinals checked removed under
/// `Delete` and kept under `Retain`; agents exiting on SIGTERM before their kill, writers after
/// handing over; and nothing breaks (every seed converges).
#[test]
fn operations_and_operator_crashes_are_exercised_under_faults() {
    let (mut done, mut refused_fenced, mut fenced_writers, mut refused_writes) = (0, 0, 0, 0);
    let (mut crashes, mut mid_update, mut mid_scale) = (0, 0, 0);
    let (mut removed, mut kept) = (0, 0);
    let (mut exits, mut writer_exits) = (0, 0);
    for seed in 300..400 {
        let report = run_seed(seed, &options());
        if let Some(text) = report.failure_text() {
            panic!("{text}");
        }
        assert!(
            report.live_ms.is_some() && report.converge_ms.is_some(),
            "seed {seed}: ended early"
        );
        let s = &report.stats;
        done += s.switchovers_done;
        refused_fenced += s.switchovers_refused_fenced;
        fenced_writers += s.fenced_writers;
        refused_writes += s.writes_refused_fenced;
        crashes += s.operator_crashes;
        mid_update += s.operator_crashes_mid_update;
        mid_scale += s.operator_crashes_mid_scale;
        removed += s.pvcs_removed_on_scale_down;
        kept += s.pvcs_kept_on_scale_down;
        exits += s.sigterm_exits;
        writer_exits += s.sigterm_exits_after_hand_over;
    }
    println!(
        "seeds 300-399: {done} switchovers done, {refused_fenced} refused (fenced target), {fenced_writers} fenced writers, {refused_writes} writes refused by fenced nodes; {crashes} operator crashes ({mid_update} mid rolling update, {mid_scale} mid scale change); scaled-away PVCs {removed} removed (Delete), {kept} kept (Retain)"
    );
    assert!(
        done >= 5 && refused_fenced >= 1 && fenced_writers >= 3 && refused_writes >= 1,
        "the fault plans no longer exercise switchover and fencing"
    );
    assert!(
        mid_update >= 1 && mid_scale >= 1,
        "the fault plans no longer crash the operator mid-rollout"
    );
    assert!(
        removed >= 1 && kept >= 1,
        "the fault plans no longer scale down under both retention policies"
    );
    // Drift fixed (issue 14): the production agent exits on SIGTERM at once when it is not the
    // writer, and a writer once its successor leads; the simulation's copy kept every
    // terminating process running (voting, answering) until its kill. Failed before (0 exits).
    println!(
        "{exits} agents exited on SIGTERM before their kill, {writer_exits} of them writers that had handed over"
    );
    assert!(
        exits >= 5 && writer_exits >= 1,
        "terminating agents do not exit as the production agent does"
    );
}

/// Regression (the finding of the first simulation: a `leaderPollInterval` at or above the
/// writer's 900 ms lease lost a healthy writer between polls; 100 seeds at 1 s: 86 never
/// converged). The pollers now poll the writer again before its lease passes: at the CRD's
/// default 1 s, and at 2 s, every seed converges and no poller ever forgets a writer that still
/// accepts writes while the cluster is whole. The same measure sees the old fixed-interval
/// polling forget it (`--bug fixed-poll`), so it is not blind.
#[test]
fn regression_default_poll_interval_keeps_the_writer() {
    for poll_ms in [1_000, 2_000] {
        let options = Options {
            poll_ms: Some(poll_ms),
            ..Options::default()
        };
        let mut forgot = 0;
        for seed in 0..25 {
            let report = run_seed(seed, &options);
            if let Some(text) = report.failure_text() {
                panic!("{text}");
            }
            assert!(
                report.live_ms.is_some() && report.converge_ms.is_some(),
                "seed {seed} with {poll_ms} ms polls did not converge"
            );
            forgot +=
                report.stats.gateway_forgot_live_writer + report.stats.operator_forgot_live_writer;
        }
        assert_eq!(forgot, 0, "{poll_ms} ms polls forgot a healthy writer");
    }
    let old = Options {
        poll_ms: Some(1_000),
        bug: Some(Bug::FixedPoll),
        ..Options::default()
    };
    let forgot: u64 = (0..10)
        .map(|seed| run_seed(seed, &old).stats.gateway_forgot_live_writer)
        .sum();
    println!("fixed 1 s polling forgot a healthy writer {forgot} times over 10 seeds");
    assert!(
        forgot > 0,
        "the measure no longer sees fixed-interval polling lose the writer"
    );
}

/// Regression: a switchover is `Done` only on the target's own answer from after the request.
/// Two reports it once made from a stale view of the writer:
/// - seed 617, with the operator's writer polling as it was before its fix planted back
///   (`Bug::StaleOperatorWriter`: rounds wait for the slowest pod, no lease, every view fresh):
///   a switchover reported `Done` to a node that had lost the writer's seat 1.3 s earlier;
/// - seed 2134 (a 4000-seed campaign): a switchover back to a writer that had just handed over,
///   while 20% message loss kept the operator from hearing of the new term, reported `Done` on its
///   term-1 answers, whose lease had not run out (a hand-over ends the node's lease, not the
///   copies pollers hold).
#[test]
fn regression_switchover_done_needs_a_fresh_confirmation() {
    let planted = Options {
        bug: Some(Bug::StaleOperatorWriter),
        ..Options::default()
    };
    for (seed, options) in [(617, planted), (2134, options())] {
        let report = run_seed(seed, &options);
        assert!(report.ok(), "{:?}", report.failure_text());
        assert!(
            report.stats.switchovers_done > 0,
            "seed {seed}: no switchover done"
        );
    }
}

/// The planted `stale-operator-writer`'s other half is a switch in the core poller itself (the
/// loop no longer re-implements it): a round's answers are held until its slowest poll ends, and
/// no round starts meanwhile. Without the bug each answer counts as it arrives and a round skips
/// only the pod still being polled. Runs on a thread of its own (plants are per thread).
#[test]
fn planted_stale_operator_writer_holds_a_round_for_its_slowest_poll() {
    use base_core::tracker::PollResult;
    use base_core::writer_poll::WriterPoller;
    use base_core::{Millis, NodeId};
    std::thread::spawn(|| {
        for planted in [false, true] {
            base_core::buggify::plant(
                planted.then_some(base_core::buggify::Bug::StaleOperatorWriter),
            );
            let mut p = WriterPoller::new(Millis(1_000));
            p.set_targets(vec![(NodeId::new("a-0"), 0), (NodeId::new("a-1"), 1)]);
            let polls = p.start_round();
            assert_eq!(polls.len(), 2);
            let (g, fast, slow) = (polls[0].generation, polls[0].replica, polls[1].replica);
            let first = p.on_answer(Millis(10), g, fast, PollResult::Failed);
            assert_eq!(first.effect.is_none(), planted, "planted: {planted}");
            let next = p.start_round();
            assert_eq!(next.len(), usize::from(!planted), "planted: {planted}");
            let last = p.on_answer(Millis(2_000), g, slow, PollResult::Failed);
            assert!(last.effect.is_some());
        }
    })
    .join()
    .expect("the poller behaves as planted");
}

#[test]
fn replay() {
    let seed = std::env::var("MADSIM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let options = Options {
        bug: env("SIM_BUG").map(|b| Bug::parse(&b).expect("SIM_BUG")),
        keep_trace: true,
        membership_faults: env("SIM_QUIET_SCALING").is_none(),
        poll_ms: env("SIM_POLL_MS").and_then(|v| v.parse().ok()),
        timing: env("SIM_TIMING").map_or(TimingProfile::Quasar, |t| {
            TimingProfile::parse(&t).expect("SIM_TIMING")
        }),
        faults: env("SIM_FAULTS").map_or(FaultMix::Mixed, |f| {
            FaultMix::parse(&f).expect("SIM_FAULTS")
        }),
        replicas: env("SIM_REPLICAS").and_then(|n| n.parse().ok()),
        crash_writer_at_end: false,
    };
    let report = run_seed(seed, &options);
    for line in &report.trace_all {
        println!("{line}");
    }
    if let Some(text) = report.failure_text() {
        panic!("{text}");
    }
}
