//! Everything a run does, drawn from its seed before it starts: the cluster's shape, the clocks,
//! the network, and the fault plan. `SimConfig::from_seed` is the only place that decides.

use crate::clock::Clock;
use crate::rng::Rng;
use base_core::Millis;
use base_core::quasar::Timing;

/// The Base the operator manages in every run.
pub const BASE_NAME: &str = "my-app";
pub const NAMESPACE: &str = "hanzo";
/// Ordinals that may ever exist (scale changes move between 3 and 5).
pub const MAX_ORDINALS: i32 = 5;
/// Client tasks issuing requests through the gateway.
pub const CLIENTS: u32 = 3;

/// When the first fault may strike with the default timing (the cluster first elects a writer).
pub const FAULTS_FROM_MS: u64 = 4_000;
/// Faults strike during this long (the mixed plan); then every fault is healed.
pub const FAULT_PHASE_MS: u64 = 20_000;
/// After the heal, a writer must accept writes through the gateway within this (invariant 6),
/// with the default timing ([`Bounds`] scales it with the election timeouts).
/// The budget: a crashed pod restarts within 3 s, a (re)started node waits `election_timeout_min`
/// (1 s) before it votes, an election takes at most a few `election_timeout_max` rounds (2 s each),
/// and the gateway learns the writer within a poll interval (≤ 1 s) plus the poll's timeout.
pub const LIVENESS_BOUND_MS: u64 = 15_000;
/// After the heal and the last spec change, the cluster matches the plan within this (invariant 7).
/// The budget: a scale step or a rolling update touches at most 5 pods, one at a time, each taking
/// at most ~6 s (grace 1 s, re-creation 1.5 s, readiness 1 s, the operator's 0.5 s loop, and a
/// writer transfer bounded by `election_timeout_min`), plus the writer's election.
pub const CONVERGENCE_BOUND_MS: u64 = 60_000;
/// A run ends this long after both the liveness and the convergence checks passed.
pub const SETTLE_MS: u64 = 2_000;
/// The kills plan: this many writer kills per seed, one every `kill_spacing_ms` ([`Bounds`]).
pub const KILLS_PER_SEED: u64 = 3;

/// The election timings a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimingProfile {
    /// Quasar's defaults: heartbeat 100 ms, election timeout 1–2 s, lease 900 ms.
    #[default]
    Quasar,
    /// The pattern of Kubernetes-Lease leader election (client-go's `leaderelection` defaults):
    /// lease duration 15 s, renew deadline 10 s, retry period 2 s. As Quasar timings: a candidate
    /// takes over once the holder has not renewed for the lease duration (election timeout from
    /// 15 s, plus up to one retry period of jitter: 15–17 s); the holder renews every retry period
    /// (heartbeat 2 s) and stops leading when it could not renew for the renew deadline (lease
    /// 10 s: `15 s·(1 − ρ) − 4.25 s` margin).
    K8sLease,
}

impl TimingProfile {
    pub fn parse(s: &str) -> Result<TimingProfile, String> {
        match s {
            "quasar" => Ok(TimingProfile::Quasar),
            "k8s-lease" => Ok(TimingProfile::K8sLease),
            _ => Err(format!(
                "unknown timing {s:?}: expected quasar or k8s-lease"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimingProfile::Quasar => "quasar",
            TimingProfile::K8sLease => "k8s-lease",
        }
    }

    pub fn timing(self) -> Timing {
        match self {
            TimingProfile::Quasar => Timing::default(),
            TimingProfile::K8sLease => Timing::new(
                Millis(2_000),
                Millis(15_000),
                Millis(17_000),
                Timing::default().drift_bound_ppm(),
                Millis(4_250),
            )
            .expect("the Kubernetes-Lease timings satisfy the lease argument"),
        }
    }
}

/// Which faults a run's plan draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultMix {
    /// Every kind of fault, switchovers and fences, overlapping at random.
    #[default]
    Mixed,
    /// Only writer kills (a crash that restarts in place, or `kubectl delete pod`), spaced so that
    /// each failover ends before the next kill: the failover figures of a clean kill.
    Kills,
}

impl FaultMix {
    pub fn parse(s: &str) -> Result<FaultMix, String> {
        match s {
            "mixed" => Ok(FaultMix::Mixed),
            "kills" => Ok(FaultMix::Kills),
            _ => Err(format!("unknown fault mix {s:?}: expected mixed or kills")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultMix::Mixed => "mixed",
            FaultMix::Kills => "kills",
        }
    }
}

/// The run's time bounds, scaled with the election timings (the constants above are the
/// default timing's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// When the first fault may strike: the cluster has elected its first writer by then.
    pub faults_from_ms: u64,
    /// Invariant 6, see [`LIVENESS_BOUND_MS`].
    pub liveness_ms: u64,
    /// Invariant 7, see [`CONVERGENCE_BOUND_MS`].
    pub convergence_ms: u64,
    /// A fault that takes the writer away for at least this long must cost it the seat (its lease
    /// and CheckQuorum end within `election_timeout_min`): its failover is measured.
    pub deposes_after_ms: u64,
    /// The kills plan: time between two kills, longer than any failover of a clean kill.
    pub kill_spacing_ms: u64,
}

impl Bounds {
    pub fn of(timing: &Timing) -> Bounds {
        let (min, max) = (
            timing.election_timeout_min_ms().0,
            timing.election_timeout_max_ms().0,
        );
        Bounds {
            faults_from_ms: FAULTS_FROM_MS.max(2 * max),
            liveness_ms: LIVENESS_BOUND_MS.max(3_000 + min + 3 * max + 2_000),
            convergence_ms: CONVERGENCE_BOUND_MS.max(5 * (6_000 + min) + max),
            deposes_after_ms: min + 500,
            kill_spacing_ms: 6_000.max(2 * max),
        }
    }
}

/// A bug planted on purpose, to show that the checkers catch it. Each is a switch in the shared
/// core code (`base_core::buggify`, compiled only with `--cfg madsim`): the operator's in
/// `reconcile` and `writer_poll`, the gateway's in `tracker`, the agent's in `agent`, the
/// election's in `quasar`, the replication's in `replication::writer` and `replication::replica`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The agent checks the lease when a write arrives but not again right before the store applies
    /// it; a pause in between lets a deposed writer apply a write while its successor accepts
    /// writes (the residual window of `quasar/mod.rs` "What remains", with a Base that ignores the
    /// `X-Base-Term` fencing token).
    NoRecheck,
    /// The agent accepts writes for `base_core::agent::LEASE_OVERRUN_MS` (5 s) past the writer's
    /// lease: a lease longer than the followers' election timeout, which `Timing::new` refuses.
    LeaseOverrun,
    /// The agent never reads its pod's annotations file: fencing never reaches the election.
    IgnoreFence,
    /// The operator reports a switchover `Done` as soon as it asks the writer to hand over.
    EarlyDone,
    /// The operator plans as if the Base had no `hanzo.ai/fenced-instances` annotation.
    UnfencedPlan,
    /// The gateway and the operator poll every replica at the fixed interval, as before the
    /// writer was polled again before its lease passes.
    FixedPoll,
    /// The operator's poll task as adapter-k8s `controller::writers` had it before the fix: each
    /// round waits for its slowest poll (2 s timeout) before feeding the answers, and the
    /// reconcile observes the writer without its lease or the time it confirmed (every view
    /// looks fresh). A round held up by an unreachable pod hands it a writer deposed meanwhile;
    /// before switchovers waited for a fresh confirmation, one to that writer was reported `Done`
    /// while another node wrote (seed 617).
    StaleOperatorWriter,
    /// The agent memoises its election's answer to a vote request by term alone, not by (term,
    /// candidate): a second candidate of a term gets the grant the first one got, so two nodes
    /// can win one term (invariant 1).
    VoteCache,
    /// The gateway caches the route of its last write for a poll interval and sends writes there
    /// without asking the tracker: after a poll showed a newer term, writes still go to the old
    /// writer's term (invariant 3).
    RouteCache,
    /// The gateway routes reads without the client's identity (the `Base-Client` header dropped
    /// on the read path): a read right after the client's write is not pinned to the writer and
    /// may reach a replica that lacks the write (invariant 4).
    NoReadPin,
    /// The operator plans with the other `retentionPolicy`: under `Retain` it deletes the PVCs of
    /// scaled-away ordinals, under `Delete` it keeps them (invariant 7).
    WrongRetention,
    /// The election's writer proposes C(new) as soon as it proposed C(old, new), without waiting
    /// for the joint configuration to be committed: the old voters, cut off, can elect a writer
    /// of their own (invariants 1, 2, 5).
    LeaveJointEarly,
    /// A candidate counts a learner's grant as a voter's (and asks learners for votes): a
    /// minority of voters with learners wins (invariants 1, 2, 5).
    CountLearnerVotes,
    /// A node that is not a voter of its own configuration (a member the operator removed, a
    /// learner) campaigns (invariant 10).
    RemovedCampaigns,
    /// The writer's replication machine releases a held write as committed as soon as its own
    /// store holds it, before a quorum does (invariant 5).
    AckBeforeCommit,
    /// The writer counts an older term's entry held by a quorum as committed (no Raft §5.4.2):
    /// a later writer that never had it cuts it from replicas that applied it (invariant 12).
    OlderTermCommit,
    /// A replica keeps its own entry where the writer's differs, instead of cutting its
    /// conflicting suffix (invariant 5).
    NoTruncate,
    /// A cut or a snapshot does not bump the store's epoch: the lower position it leaves looks
    /// like a stale report, and the election keeps the higher one (invariant 11).
    NoEpoch,
}

impl Bug {
    /// The switch in the core code.
    pub fn in_core(self) -> base_core::buggify::Bug {
        use base_core::buggify::Bug as Core;
        match self {
            Bug::EarlyDone => Core::EarlyDone,
            Bug::UnfencedPlan => Core::UnfencedPlan,
            Bug::WrongRetention => Core::WrongRetention,
            Bug::StaleOperatorWriter => Core::StaleOperatorWriter,
            Bug::FixedPoll => Core::FixedPoll,
            Bug::NoReadPin => Core::NoReadPin,
            Bug::RouteCache => Core::RouteCache,
            Bug::NoRecheck => Core::NoRecheck,
            Bug::LeaseOverrun => Core::LeaseOverrun,
            Bug::IgnoreFence => Core::IgnoreFence,
            Bug::VoteCache => Core::VoteCache,
            Bug::LeaveJointEarly => Core::LeaveJointEarly,
            Bug::CountLearnerVotes => Core::CountLearnerVotes,
            Bug::RemovedCampaigns => Core::RemovedCampaigns,
            Bug::AckBeforeCommit => Core::AckBeforeCommit,
            Bug::OlderTermCommit => Core::OlderTermCommit,
            Bug::NoTruncate => Core::NoTruncate,
            Bug::NoEpoch => Core::NoEpoch,
        }
    }

    pub fn parse(s: &str) -> Result<Bug, String> {
        match s {
            "no-recheck" => Ok(Bug::NoRecheck),
            "lease-overrun" => Ok(Bug::LeaseOverrun),
            "ignore-fence" => Ok(Bug::IgnoreFence),
            "early-done" => Ok(Bug::EarlyDone),
            "unfenced-plan" => Ok(Bug::UnfencedPlan),
            "fixed-poll" => Ok(Bug::FixedPoll),
            "stale-operator-writer" => Ok(Bug::StaleOperatorWriter),
            "vote-cache" => Ok(Bug::VoteCache),
            "route-cache" => Ok(Bug::RouteCache),
            "no-read-pin" => Ok(Bug::NoReadPin),
            "wrong-retention" => Ok(Bug::WrongRetention),
            "leave-joint-early" => Ok(Bug::LeaveJointEarly),
            "count-learner-votes" => Ok(Bug::CountLearnerVotes),
            "removed-campaigns" => Ok(Bug::RemovedCampaigns),
            "ack-before-commit" => Ok(Bug::AckBeforeCommit),
            "older-term-commit" => Ok(Bug::OlderTermCommit),
            "no-truncate" => Ok(Bug::NoTruncate),
            "no-epoch" => Ok(Bug::NoEpoch),
            _ => Err(format!(
                "unknown bug {s:?}: expected no-recheck, lease-overrun, ignore-fence, early-done, unfenced-plan, fixed-poll, stale-operator-writer, vote-cache, route-cache, no-read-pin, wrong-retention, leave-joint-early, count-learner-votes, removed-campaigns, ack-before-commit, older-term-commit, no-truncate or no-epoch"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bug::NoRecheck => "no-recheck",
            Bug::LeaseOverrun => "lease-overrun",
            Bug::IgnoreFence => "ignore-fence",
            Bug::EarlyDone => "early-done",
            Bug::UnfencedPlan => "unfenced-plan",
            Bug::FixedPoll => "fixed-poll",
            Bug::StaleOperatorWriter => "stale-operator-writer",
            Bug::VoteCache => "vote-cache",
            Bug::RouteCache => "route-cache",
            Bug::NoReadPin => "no-read-pin",
            Bug::WrongRetention => "wrong-retention",
            Bug::LeaveJointEarly => "leave-joint-early",
            Bug::CountLearnerVotes => "count-learner-votes",
            Bug::RemovedCampaigns => "removed-campaigns",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::OlderTermCommit => "older-term-commit",
            Bug::NoTruncate => "no-truncate",
            Bug::NoEpoch => "no-epoch",
        }
    }
}

/// Which replica a fault hits, resolved when it strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node that accepts writes now (or any, when none does).
    Writer,
    /// Any replica that is not the writer.
    Follower,
}

/// A change to the Base spec, as a user would `kubectl apply` it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecChange {
    /// A new image tag: a rolling update, writer last.
    Image(String),
    /// A new `spec.replicas` (odd).
    Scale(i32),
}

/// Whom a switchover asks for, resolved when the request is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverTo {
    /// A running replica that is not the writer.
    Follower,
    /// The writer itself (nothing to do: `Done` at once).
    Writer,
    /// A replica the Base fences now (any follower when none is): must be `Refused`.
    Fenced,
    /// This ordinal, whether or not it is a replica of the Base now.
    Ordinal(i32),
}

/// Which replicas a fence takes out of the writer's seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceWhich {
    One(Target),
    /// `["*"]`.
    All,
}

/// A user's request through the Base's annotations, as `kubectl base switchover/fence/unfence`
/// makes it; the operator performs it through the core's plan (`reconcile::operations`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `hanzo.ai/switchover-to: <pod>`.
    Switchover(SwitchoverTo),
    /// Adds the pod (or `*`) to `hanzo.ai/fenced-instances`; with `for_ms`, takes it out again
    /// after that long, else it stays until an `Unfence` or the heal.
    Fence {
        which: FenceWhich,
        for_ms: Option<u64>,
    },
    /// Removes `hanzo.ai/fenced-instances`.
    Unfence,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// One replica cut off from every other host.
    Isolate {
        target: Target,
        for_ms: u64,
    },
    /// The replicas split in two groups; the writer's side is a minority or a majority.
    Partition {
        writer_in_minority: bool,
        for_ms: u64,
    },
    /// Messages from one replica to another are lost; the other direction works.
    OneWay {
        from: Target,
        to: Target,
        for_ms: u64,
    },
    /// The gateway cannot reach one replica (the operator and the peers still can).
    GatewayCut {
        target: Target,
        for_ms: u64,
    },
    /// The process dies and the kubelet restarts it in place: in-memory state is lost, the PVC stays.
    Crash {
        target: Target,
        restart_after_ms: u64,
    },
    /// `kubectl delete pod`: the StatefulSet re-creates the pod (on the update revision).
    DeletePod {
        target: Target,
    },
    /// SIGSTOP … SIGCONT: the process keeps its memory but loses time (a GC pause, a frozen VM).
    Pause {
        target: Target,
        for_ms: u64,
    },
    /// Lossy, duplicating, slow network for a while.
    Chaos {
        loss_pct: u64,
        dup_pct: u64,
        latency_max_ms: u64,
        for_ms: u64,
    },
    Spec(SpecChange),
    /// A switchover or a fence, set on the Base mid-run (not a fault, but struck like one).
    Op(Operation),
    /// The operator's process dies and restarts after this long: its memory (the poll task's
    /// trackers, the writer it observed, its last plan) is lost; what it wrote to the API server
    /// stays. It touches no replica, so it may strike while a scale change rolls out.
    OperatorCrash {
        restart_after_ms: u64,
    },
}

impl Fault {
    /// Faults whose whole point is to take the writer away (their failover is measured).
    pub fn hits_writer(&self) -> bool {
        matches!(
            self,
            Fault::Isolate {
                target: Target::Writer,
                ..
            } | Fault::Crash {
                target: Target::Writer,
                ..
            } | Fault::DeletePod {
                target: Target::Writer
            } | Fault::Pause {
                target: Target::Writer,
                ..
            } | Fault::Partition {
                writer_in_minority: true,
                ..
            }
        )
    }
}

impl Fault {
    /// Faults that may strike while a scale change rolls out even with `--quiet-scaling`: they
    /// neither cut the election's peers apart nor move the writer.
    pub fn membership_safe(&self) -> bool {
        matches!(self, Fault::Spec(_) | Fault::OperatorCrash { .. })
    }
}

#[derive(Clone, Debug)]
pub struct Scheduled {
    pub at_ms: u64,
    pub fault: Fault,
    /// Struck this long after `fault` really struck (a scale change may wait for a quiet
    /// moment): an operator crash in the middle of the rollout a spec change starts.
    pub then: Option<(u64, Fault)>,
}

/// Seeds the operator-crash draws apart from the rest of the plan, so that adding them left
/// every other draw of a seed as it was.
const OPERATOR_CRASH_STREAM: u64 = 0x6f70_6572_6174_6f72;

/// Knobs a caller sets; everything else comes from the seed.
#[derive(Clone, Debug)]
pub struct Options {
    pub bug: Option<Bug>,
    /// Keep the whole event trace (for `run`), not only the ring buffer.
    pub keep_trace: bool,
    /// Let faults, switchovers and fences strike while a scale change is rolling out: on by
    /// default since the election's voters change by joint consensus (issue 18). Off
    /// (`--quiet-scaling`, the plan before it), a scale change waits until no fault is active
    /// and faults wait until the new configuration is in place.
    pub membership_faults: bool,
    /// Force `leaderPollInterval` (ms) instead of drawing it from {200, 500, 1000, 2000}.
    pub poll_ms: Option<u64>,
    pub timing: TimingProfile,
    pub faults: FaultMix,
    /// Force the Base's initial `spec.replicas` (3 or 5) instead of drawing it (5 in a quarter of
    /// the seeds).
    pub replicas: Option<i32>,
    /// When the run could end, crash the writer first (it restarts 0.5 s later): the final check
    /// of invariant 5 must wait for the next writer and check that one (a test's knob).
    pub crash_writer_at_end: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bug: None,
            keep_trace: false,
            membership_faults: true,
            poll_ms: None,
            timing: TimingProfile::default(),
            faults: FaultMix::default(),
            replicas: None,
            crash_writer_at_end: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub bug: Option<Bug>,
    pub keep_trace: bool,
    pub membership_faults: bool,
    pub crash_writer_at_end: bool,
    pub profile: TimingProfile,
    pub timing: Timing,
    pub bounds: Bounds,
    pub initial_replicas: i32,
    pub retention: &'static str,
    pub poll_interval_ms: u64,
    pub ryw_ttl_ms: u64,
    pub replica_clocks: Vec<Clock>,
    pub gateway_clock: Clock,
    pub operator_clock: Clock,
    /// The network's latency range when no chaos is on.
    pub latency_ms: (u64, u64),
    pub fault_mix: FaultMix,
    pub faults: Vec<Scheduled>,
    pub heal_at_ms: u64,
}

impl SimConfig {
    pub fn from_seed(seed: u64, options: &Options) -> SimConfig {
        let mut rng = Rng::new(seed);
        let timing = options.timing.timing();
        let bounds = Bounds::of(&timing);
        // Skews within ±ρ/2 keep every pair of clocks within the drift bound ρ:
        // (1 − ρ/2)/(1 + ρ/2) ≥ 1 − ρ.
        let half_drift = (timing.drift_bound_ppm() / 2) as i64;
        // Offsets stay within ±50 ms of true time plus at most skew·period (≤ 75 ms): clocks
        // kept in step by NTP, each running fast or slow by up to ρ/2 at any instant.
        let clock = |rng: &mut Rng| Clock {
            offset_ms: rng.range_i64(-50, 50),
            skew_ppm: rng.range_i64(-half_drift, half_drift),
            period_ms: rng.range(1_000, 3_000),
        };
        let replica_clocks = (0..MAX_ORDINALS).map(|_| clock(&mut rng)).collect();
        let gateway_clock = clock(&mut rng);
        let operator_clock = clock(&mut rng);
        let drawn_replicas = if rng.percent(25) { 5 } else { 3 };
        let initial_replicas = options.replicas.unwrap_or(drawn_replicas);
        let retention = if rng.percent(50) { "Retain" } else { "Delete" };
        // Shorter and longer than the lease (900 ms): the pollers poll the writer again before
        // its lease passes, whatever the interval (`Tracker::next_poll`); 1 s is the CRD's default.
        let drawn_poll_ms = *rng.pick(&[200, 500, 1_000, 2_000]);
        let poll_interval_ms = options.poll_ms.unwrap_or(drawn_poll_ms);
        let ryw_ttl_ms = *rng.pick(&[1_000, 5_000]);
        let latency_ms = (1, rng.range(2, 10));

        let faults_from_ms = bounds.faults_from_ms;
        let (faults, heal_at_ms) = if options.faults == FaultMix::Kills {
            let faults = (0..KILLS_PER_SEED)
                .map(|k| Scheduled {
                    at_ms: bounds.faults_from_ms + k * bounds.kill_spacing_ms,
                    fault: if rng.percent(50) {
                        Fault::Crash {
                            target: Target::Writer,
                            restart_after_ms: rng.range(100, 3_000),
                        }
                    } else {
                        Fault::DeletePod {
                            target: Target::Writer,
                        }
                    },
                    then: None,
                })
                .collect();
            (
                faults,
                faults_from_ms + KILLS_PER_SEED * bounds.kill_spacing_ms,
            )
        } else {
            let (mut faults, heal_at_ms) =
                Self::mixed_faults(&mut rng, faults_from_ms, initial_replicas);
            Self::operator_crashes(
                &mut Rng::new(seed ^ OPERATOR_CRASH_STREAM),
                faults_from_ms,
                &mut faults,
            );
            (faults, heal_at_ms)
        };
        SimConfig {
            seed,
            bug: options.bug,
            keep_trace: options.keep_trace,
            membership_faults: options.membership_faults,
            crash_writer_at_end: options.crash_writer_at_end,
            profile: options.timing,
            timing,
            bounds,
            initial_replicas,
            retention,
            poll_interval_ms,
            ryw_ttl_ms,
            replica_clocks,
            gateway_clock,
            operator_clock,
            latency_ms,
            fault_mix: options.faults,
            faults,
            heal_at_ms,
        }
    }

    /// Every kind of fault, switchovers and fences, at random times of the fault phase.
    fn mixed_faults(
        rng: &mut Rng,
        faults_from_ms: u64,
        initial_replicas: i32,
    ) -> (Vec<Scheduled>, u64) {
        let mut faults = Vec::new();
        let count = rng.range(4, 10);
        for _ in 0..count {
            let at_ms = faults_from_ms + rng.below(FAULT_PHASE_MS - 2_000);
            let target = |rng: &mut Rng| {
                if rng.percent(60) {
                    Target::Writer
                } else {
                    Target::Follower
                }
            };
            let fault = match rng.below(100) {
                0..=14 => Fault::Isolate {
                    target: target(rng),
                    for_ms: rng.range(500, 5_000),
                },
                15..=26 => Fault::Partition {
                    writer_in_minority: rng.percent(50),
                    for_ms: rng.range(500, 5_000),
                },
                27..=34 => Fault::OneWay {
                    from: target(rng),
                    to: target(rng),
                    for_ms: rng.range(500, 4_000),
                },
                35..=41 => Fault::GatewayCut {
                    target: target(rng),
                    for_ms: rng.range(500, 4_000),
                },
                42..=56 => Fault::Crash {
                    target: target(rng),
                    restart_after_ms: rng.range(100, 3_000),
                },
                57..=63 => Fault::DeletePod {
                    target: target(rng),
                },
                64..=79 => Fault::Pause {
                    target: target(rng),
                    // Mostly longer than the lease (900 ms): the writer must be deposed meanwhile.
                    for_ms: rng.range(300, 4_000),
                },
                80..=89 => Fault::Chaos {
                    loss_pct: rng.range(1, 20),
                    dup_pct: rng.range(0, 20),
                    latency_max_ms: rng.range(10, 120),
                    for_ms: rng.range(1_000, 6_000),
                },
                _ => Fault::Spec(if rng.percent(60) {
                    SpecChange::Image(format!("v1.2.{}", rng.range(4, 99)))
                } else if initial_replicas == 3 {
                    SpecChange::Scale(5)
                } else {
                    SpecChange::Scale(3)
                }),
            };
            faults.push(Scheduled {
                at_ms,
                fault,
                then: None,
            });
        }
        // Switchovers and fences, drawn after the faults so that those keep their draws.
        for _ in 0..rng.range(0, 3) {
            let at_ms = faults_from_ms + rng.below(FAULT_PHASE_MS - 2_000);
            let op = match rng.below(100) {
                0..=44 => Operation::Switchover(match rng.below(100) {
                    0..=59 => SwitchoverTo::Follower,
                    60..=69 => SwitchoverTo::Writer,
                    70..=84 => SwitchoverTo::Fenced,
                    _ => {
                        SwitchoverTo::Ordinal(rng.range_i64(0, i64::from(MAX_ORDINALS) - 1) as i32)
                    }
                }),
                45..=79 => Operation::Fence {
                    which: match rng.below(100) {
                        0..=39 => FenceWhich::One(Target::Writer),
                        40..=74 => FenceWhich::One(Target::Follower),
                        _ => FenceWhich::All,
                    },
                    for_ms: rng.percent(50).then(|| rng.range(1_000, 8_000)),
                },
                _ => Operation::Unfence,
            };
            faults.push(Scheduled {
                at_ms,
                fault: Fault::Op(op),
                then: None,
            });
        }
        faults.sort_by_key(|s| s.at_ms);
        // Scale changes alternate in time order (3 → 5 → 3, 5 → 3 → 5), each from where the last
        // one left the spec (set after the draws, so that every seed keeps its draws).
        let mut replicas = initial_replicas;
        for s in &mut faults {
            if let Fault::Spec(SpecChange::Scale(to)) = &mut s.fault {
                replicas = if replicas == 3 { 5 } else { 3 };
                *to = replicas;
            }
        }
        (faults, faults_from_ms + FAULT_PHASE_MS)
    }

    /// Operator crashes: half the spec changes are followed by one in the middle of the rollout
    /// they start (a rolling update or a scale change), and a third of the seeds get one more
    /// at a random time.
    fn operator_crashes(rng: &mut Rng, faults_from_ms: u64, faults: &mut Vec<Scheduled>) {
        for s in faults.iter_mut() {
            if matches!(s.fault, Fault::Spec(_)) && rng.percent(50) {
                let after_ms = rng.range(300, 6_000);
                let restart_after_ms = rng.range(200, 5_000);
                s.then = Some((after_ms, Fault::OperatorCrash { restart_after_ms }));
            }
        }
        if rng.percent(33) {
            let at_ms = faults_from_ms + rng.below(FAULT_PHASE_MS - 2_000);
            let restart_after_ms = rng.range(200, 5_000);
            faults.push(Scheduled {
                at_ms,
                fault: Fault::OperatorCrash { restart_after_ms },
                then: None,
            });
            faults.sort_by_key(|s| s.at_ms);
        }
    }
}
