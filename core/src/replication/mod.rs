//! Replication bookkeeping of a Base's log, as pure state machines (no I/O, no clock: time is
//! passed in) in the manner of etcd-io/raft's `tracker/` and `quorum/`. The stores hold the
//! entries; these machines decide what is committed, what a replica appends or cuts, and when it
//! needs a snapshot. The election ([`crate::quasar`]) decides who the writer is.
//!
//! - [`log`]: [`LogPosition`] `(term, index)` and [`LogShape`], a log's start, end and term runs.
//! - [`quorum`]: [`QuorumConfig`], who must hold an entry (a majority, or both majorities of a
//!   joint configuration; learners never count).
//! - [`writer`]: [`Writer`], one per writer term: per-peer match index, commit, held client
//!   writes, the no-op, and the [`Shipment`] answering a replica's pull.
//! - [`replica`]: [`Replica`]: append / truncate / fetch a snapshot, apply up to commit, report
//!   the durable position with its epoch.
//! - [`store`]: a store's own rules (role changes, the writer's commit, compaction).
//! - [`coordinator`]: [`Coordinator`], the agent's side: the role and term pushed to the store,
//!   a [`Writer`] per confirmed writer term, held client writes, whom a replica pulls from, the
//!   store's position for the election.
//!
//! # The data flow
//! The writer's store appends a client write (data and log entry in one transaction) and reports
//! it (`WriterInput::Appended`); the agent holds the answer (`Hold`). A replica pulls entries after
//! its last entry (`Pull` → `Ship`), appends them durably, and reports its position to the
//! election (`ReplicaEffect::Position` → `quasar::Input::Position`), whose heartbeat acks carry
//! it; the writer's agent passes the ack's position on (`PeerPosition`, or the pull itself proves
//! it), commit advances, and the held answer is released (`Release { Committed }`). A write whose deadline passes, or
//! whose writer steps down first, is answered `CommitUnknown`: never success without a quorum.
//!
//! # Why an acknowledged write survives
//! 1. *Match*: the writer counts a peer as holding index `i` only when the peer reported (by ack
//!    or pull) an entry `(t, i)` that the writer's log holds too. Log Matching (each index of a
//!    term is written by that term's one writer; a replica appends only after its `prev` matched)
//!    makes the two logs equal up to `i`.
//! 2. *Commit*: the highest index a quorum holds, counted only if that entry is of the writer's
//!    own term (Raft §5.4.2, `Writer::advance_commit`): an older term's entry on a majority may
//!    still be cut by a writer that never had it; an entry of the current term on a majority
//!    cannot, because every later writer needs votes from that majority (3.).
//! 3. *Election*: a voter grants only a candidate whose position `(last term, last index)` is at
//!    least its own, so a winner holds every committed entry (Raft §5.4.3; `quasar/mod.rs` gives
//!    the argument with positions that can go down).
//! 4. *Truncation*: a replica cuts only entries that differ from the writer's at the same index
//!    (after a matching `prev`); by 3. the writer holds every committed entry, so only uncommitted
//!    entries are ever cut. The replica refuses, with an error and without cutting, a shipment
//!    that disagrees at or below the commit it knows (`ReplicaError::CommittedConflict`).
//! 5. *Snapshot*: a replica fetches one only when its last entry is below the writer's log start;
//!    the snapshot holds every committed entry up to its index, which is past the replica's end,
//!    so nothing committed that the replica held is lost.
//! 6. *Apply*: a replica applies only up to `min(writer's commit, end of what the shipment proved
//!    to match)`.
//!
//! 7. *Shipping before the writer's fsync*: the writer's store may ship an entry while its own
//!    fsync of it runs (the reference store does: committed to the OS, shipped, then fsynced),
//!    so the replicas' fsyncs overlap the writer's. The writer counts itself only for what its
//!    store reported durable (`WriterInput::Appended`), and a peer's report of an entry of its
//!    term past that is held back until its own log reaches it (`Writer::on_peer_position`),
//!    so commit is still the highest index a quorum holds *durably*, the writer among them (as
//!    Raft's leader counts its own match index only once its log write is persisted). An
//!    entry the writer never made durable is therefore never committed, and losing it cannot
//!    break Log Matching as long as the writer's store never writes another entry at that index
//!    in the same term: the store must survive its own crash with what it shipped (the OS holds
//!    it), and only a power cut, which restarts the agent too, can lose it; a restarted agent is
//!    writer only of a later term (`quasar`: a node becomes writer only by campaigning, with a
//!    new term), so the index is written again, if ever, with another term, and a replica's copy
//!    conflicts by term and is cut as in 4. (`docs/replica-contract.md`, *Durability*).
//!
//! A truncation or snapshot can lower a replica's position; the epoch it carries grows with each,
//! so the election takes the lower position as news rather than as a stale report.

pub mod coordinator;
pub mod log;
pub mod quorum;
pub mod replica;
pub mod store;
pub mod writer;

pub use coordinator::{
    Contract, Coordinator, CoordinatorEffect, CoordinatorInput, ElectionView, RoleAnswer,
    RoleOrder, StoreRole, StoreView, shape_from_runs,
};
pub use log::{LogPosition, LogShape, PositionTooLarge, ShapeError};
pub use quorum::{Majority, QuorumConfig, QuorumError};
pub use replica::{
    Replica, ReplicaEffect, ReplicaError, ReplicaInput, ReplicaState, snapshot_installed,
};
pub use store::{RoleChange, compaction_floor, pull_ready, role_change, writer_commit};
pub use writer::{
    HELD_WRITES_MAX, Outcome, SHIP_ENTRIES_MAX, WriteId, Writer, WriterEffect, WriterError,
    WriterInput,
};

use crate::Term;
use serde::{Deserialize, Serialize};

/// What the writer sends a replica: the terms of the entries after `prev` (entry `k` has index
/// `prev.index + 1 + k`; the shell sends their data alongside), the writer's commit, and where
/// the writer's log starts (its snapshot: entries up to it can only come as a snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub term: Term,
    pub prev: LogPosition,
    pub entries: Vec<Term>,
    pub commit: u64,
    pub log_start: LogPosition,
}
