//! Quasar: the writer election of a Base cluster, as a pure state machine in the manner of
//! etcd-io/raft. No I/O, no clock, no randomness but a seed: [`Node::step`] takes the local time
//! and one [`Input`], and returns the [`Effect`]s for the driver (the agent, the simulation, the
//! tests) to perform in order.
//!
//! - [`node`]: the machine — roles Follower, PreCandidate, Candidate, Writer; `step` dispatches to
//!   per-role handlers (`step_follower`, `step_candidate`, `step_writer`).
//! - [`message`]: what nodes send one another (serde, sent as JSON by the agent).
//! - [`timing`]: the timing configuration and the lease argument it must satisfy.
//!
//! # The protocol
//! Terms only grow and are persisted with the vote (`Persist` comes before every `Send` that
//! depends on it), so a node votes at most once per term even across restarts; a candidate needs
//! a majority, so each term has at most one writer. A voter grants only a candidate whose
//! replication position is at least its own (see "Positions" below). An election starts with a *pre-vote* that changes no
//! state, so a node back from a partition cannot raise the term and depose a healthy writer.
//! *CheckQuorum*: a writer that has no majority ack of anything it sent in the last
//! `election_timeout_min_ms` steps down.
//!
//! # Positions: why the writer holds every committed entry
//! A node's position is `(last term << 32) | last index` of its store's durable log, which orders
//! like Raft's "at least as up to date" (§5.4.1); the replication machine
//! ([`crate::replication`]) commits an entry only once a majority holds it *and* it is of the
//! writer's own term. A candidate needs the votes of a majority, which shares a member with the
//! majority holding any committed entry, and that member grants only if the candidate's position
//! is at least its own: so the winner's log holds the entry (Raft §5.4.3).
//!
//! Positions reach the node as reports (`Input::Position { epoch, position }`) that may be late,
//! and a store's log can lose a suffix (a replica cuts entries that conflict with the writer's, or
//! replaces its log by a snapshot), so a position can go down. The store's epoch grows with every
//! such loss, persisted with it; the node keeps the newest report by `(epoch, position)`, so a
//! lower position of a newer epoch is taken, and a late report of an older epoch is not. The
//! argument holds for whatever report the node holds, because (a) every report describes a log
//! the store really had, and (b) the store only ever loses entries that are not committed (it cuts
//! only entries that differ from the current writer's, which holds every committed entry, and
//! installs a snapshot only past its own end). A *voter* holding an out-of-date report: too high
//! only makes it refuse more; too low cannot hide a committed entry from the writer's count,
//! because the writer counts a follower only at the position the follower itself reported. A
//! *candidate* holding a report higher than its log (the report from before a cut): that log
//! held every committed entry a voter's log up to that position implies (Raft's argument, applied
//! to the earlier log), and the cut removed none of them. Epochs are never compared between
//! nodes: messages carry positions only.
//!
//! # Safety: fencing by lease
//! A write is accepted only by the writer, only while `now < lease_until` (`can_accept_writes`).
//! A node that acks a heartbeat (or grants a vote) at local time `a` promises to ignore every
//! vote and pre-vote request from anyone else until `a + election_timeout_min_ms`; the writer counts
//! its lease from the *send* time `s` of the newest heartbeat a majority acked:
//! `lease_until = s + election_timeout_min_ms·(1 − ρ) − margin`. With the clocks' relative drift
//! bounded by ρ, the lease ends (in real time) before any member of that majority will vote for a
//! rival, and any rival needs one of them: so at no real instant do two nodes accept writes. The
//! full argument is in [`timing`]; `Timing::new` refuses configurations that break it and the
//! machine `assert!`s the lease bound every time it sets a lease. A node that (re)starts has
//! forgotten its promises, so it neither votes nor campaigns for `election_timeout_min_ms`.
//!
//! Writer transfer (raft's `MsgTimeoutNow`): on `TransferWriter { to }` the writer stops accepting
//! writes, waits (bounded by `election_timeout_min_ms`) until `to` reports a position at least its
//! own, then gives up its lease, steps down, and sends `TimeoutNow`. The target campaigns at once,
//! skipping the pre-vote, with `transfer_from` set; a voter lets that request through its promise
//! only when the promise is to exactly that old writer and the request is for the very next term
//! — the old writer had stopped accepting writes before the target could learn of the transfer.
//!
//! # Fencing
//! `Input::SetFenced(true)` takes a replica out of the running without taking it out of the quorum
//! (an operator's or a user's decision, e.g. a node on failing hardware). A fenced node never
//! campaigns or pre-votes for itself and refuses `TimeoutNow`; `can_accept_writes` is false while it
//! is fenced, so a fenced writer stops accepting writes at once, then hands over as above to the
//! best up-to-date peer (or steps down without a successor if none catches up within
//! `election_timeout_min_ms`). It still grants votes and acks heartbeats, so a cluster with a fenced
//! member keeps its full fault tolerance for elections. Reads are not the machine's business: the
//! agent keeps serving them. Fencing is not persisted: the driver re-applies it from its source of
//! truth (the pod annotation) before the restarted node may campaign.
//!
//! # What remains
//! The lease is checked when a write is admitted, not when the Base process applies it. A write
//! checked inside the lease and then delayed (a GC or scheduling pause, a slow socket) may reach
//! Base after the lease ended and after a rival won. The agent narrows the window by re-checking
//! the lease immediately before forwarding, and forwards the term as a fencing token
//! (`X-Base-Term`): a Base that remembers the highest term it has seen and refuses lower ones closes
//! the window; one that ignores the header leaves it open for the length of such a pause.
//! The clock-drift bound is an assumption, not a measurement: clocks that drift more than ρ
//! relative to one another (or a node whose monotonic clock stalls while the process runs) void
//! the argument. Peer messages are not authenticated here; that is the transport's job (the
//! agent signs them with a per-Base HMAC key).

pub mod message;
pub mod node;
pub mod timing;

pub use message::{Envelope, MAX_MESSAGE_BYTES, Message};
pub use node::{
    CLUSTER_SIZE_MAX, DropCounts, Effect, Input, Node, NodeError, PersistedState, Role, WriterView,
};
pub use timing::{Timing, TimingError};
