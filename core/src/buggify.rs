//! Planted bugs, in the manner of FoundationDB's BUGGIFY: switches in the shared code that the
//! simulation turns on to show that its checkers catch what they claim. The module exists only
//! in the simulation's build (`--cfg madsim`) and in the core's own unit tests (`cfg(test)`: the
//! harness tests plant the election's bugs too); elsewhere `buggify!` (crate root) is the
//! constant `false`, so no release build can reach a planted bug.
//!
//! Planted here (the production logic itself, not a copy): the operator's `early-done`,
//! `unfenced-plan`, `wrong-retention` (in `reconcile`) and `stale-operator-writer` (the
//! writer kept past its lease and every view fresh, and a round that lasts until its slowest
//! poll ends, in `writer_poll`); the gateway's
//! `fixed-poll`, `no-read-pin` and `route-cache` (in `tracker`); the agent's `no-recheck`,
//! `lease-overrun`, `ignore-fence` and `vote-cache` (in `agent`); the election's
//! `leave-joint-early`, `count-learner-votes` and `removed-campaigns` (in `quasar::node`, issue 18);
//! the replication's `ack-before-commit` and `older-term-commit` (in `replication::writer`),
//! `no-truncate` and `no-epoch` (in `replication::replica`).

use std::cell::Cell;

/// A bug to plant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A switchover the plan is still performing is reported `Done`.
    EarlyDone,
    /// The plan ignores `hanzo.ai/fenced-instances`.
    UnfencedPlan,
    /// The plan uses the other `retentionPolicy`.
    WrongRetention,
    /// The operator's writer as before its fix: kept past its lease, every view fresh, and a
    /// round's answers held until its slowest poll ends.
    StaleOperatorWriter,
    /// Pollers poll every interval, never sooner for the writer's lease.
    FixedPoll,
    /// The gateway routes reads without the client's identity (no read-your-writes pin).
    NoReadPin,
    /// The gateway reuses its last write's route for a poll interval.
    RouteCache,
    /// The agent checks the lease when a write arrives but not again right before forwarding it.
    NoRecheck,
    /// The agent accepts writes for `agent::LEASE_OVERRUN_MS` past the writer's lease.
    LeaseOverrun,
    /// The agent never applies its pod's fence annotation.
    IgnoreFence,
    /// The agent answers a vote request from a memo keyed by term alone.
    VoteCache,
    /// The writer proposes C(new) as soon as it proposed C(old, new), without waiting for the
    /// joint configuration to be committed.
    LeaveJointEarly,
    /// A candidate counts a learner's grant as an incoming voter's (and asks learners for votes).
    CountLearnerVotes,
    /// A node that is not a voter of its own configuration (removed, or a learner) campaigns.
    RemovedCampaigns,
    /// The writer releases a held client write as committed as soon as its store holds it.
    AckBeforeCommit,
    /// The writer counts an older term's entry on a quorum as committed (no Raft §5.4.2).
    OlderTermCommit,
    /// A replica keeps its own entry where the writer's differs (no cut of the conflicting suffix).
    NoTruncate,
    /// A cut or a snapshot does not bump the epoch: the lower position looks stale to the election.
    NoEpoch,
}

thread_local! {
    // Per thread: the simulation runs one seed per thread at a time, and tests run several.
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) for what runs on this thread from now on.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
pub fn planted(bug: Bug) -> bool {
    PLANTED.with(|p| p.get()) == Some(bug)
}
