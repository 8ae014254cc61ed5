//! Quasar: the writer election of a Base cluster, as a pure state machine in the manner of
//! etcd-io/raft. No I/O, no clock, no randomness but a seed: [`Node::step`] takes the local time
//! and one [`Input`], and returns the [`Effect`]s for the driver (the agent, the simulation, the
//! tests) to perform in order.
//!
//! - [`node`]: the machine — roles Follower, PreCandidate, Candidate, Writer; `step` dispatches to
//!   per-role handlers (`step_follower`, `step_candidate`, `step_writer`).
//! - [`message`]: what nodes send one another (serde, sent as JSON by the agent).
//! - [`timing`]: the timing configuration and the lease argument it must satisfy.
//! - [`membership`]: the voting configuration (versions, joint halves, learners).
//!
//! # The protocol
//! Terms only grow and are persisted with the vote (`Persist` comes before every `Send` that
//! depends on it), so a node votes at most once per term even across restarts; a candidate needs
//! a quorum of its configuration (a majority; of both halves in a joint configuration, see
//! "Membership changes" below), so each term has at most one writer. A voter grants only a candidate whose
//! replication position is at least its own (see "Positions" below). An election starts with a *pre-vote* that changes no
//! state, so a node back from a partition cannot raise the term and depose a healthy writer.
//! Granting a pre-vote changes only timers: a follower holds its own campaign back for two
//! heartbeat intervals at most, and a pre-candidate yields to a better candidate (a higher
//! position; equal ones, the smaller id). Two nodes whose timeouts end together then do not split
//! the vote and wait a second timeout (liveness only; `Node::make_way`).
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
//! # Membership changes: joint consensus
//! The voters are state the election agrees on ([`membership`], Raft §6 and etcd-io/raft's
//! `ConfChangeV2` with learners and auto-leave), not what the environment says: a configuration
//! is a set of voters — simple, or joint C(old, new) where every election, every lease and (for
//! the replication writer, which counts by [`Node::quorum_config`]) every commit needs a
//! majority of *both* halves — plus learners, who get heartbeats (and the log) but are never
//! counted and never campaign. Each configuration has a version `(term, index)`: the term of the
//! writer that proposed it, then a counter, ordered term first, like Raft's logs by their last
//! entry. It is persisted with the term and vote (`Effect::Persist` carries all three); a node
//! takes its voters from its environment only at its very first start, as one of the cluster's
//! initial members (`Node::new`, version `(0, 0)`, the same at all of them); a member added
//! later starts with none (`Node::join`) and neither campaigns nor counts until a writer sends
//! it the configuration that made it a learner.
//!
//! The rules. (1) Only a writer creates a configuration, one at a time: it proposes the next
//! only once its current one is *committed in its own term* — a quorum of the current
//! configuration acked a heartbeat of this term while holding (persisted) it — and an inherited
//! configuration is first stamped anew with the writer's term (as Raft's leader commits an entry
//! of its own term first; counting holders of an older term's configuration would be Raft's
//! Figure 8). The writer counts by a configuration from the moment it proposes it. (2) The next
//! configuration of a simple C is C plus or minus learners, or C(C, new); the next of C(old, new)
//! is C(new) (auto-leave, also by a writer that inherited the joint configuration). So any two
//! configurations one proposal apart — and any two *siblings* (proposed from the same
//! configuration by writers of different terms) — have intersecting quorums: both contain a
//! majority of one same voter set. (3) A node's version only grows; it takes a configuration
//! from the writer's heartbeat, or from a voter's refusal (which carries the voter's newer
//! configuration, so that a candidate with the newest log and one with the newest configuration
//! cannot refuse each other forever), and persists it before acking. (4) A voter grants a vote
//! (and a pre-vote) only if the candidate's version is at least its own, *and* its position too.
//! (5) A node campaigns only if it is a voter of its own configuration; `TimeoutNow` to a
//! learner or a removed node is dropped, and a transfer to a non-voter is refused at once
//! ([`Node::transfer_refusal`], `control::TransferRefusal::NotAVoter`). (6) New members join as
//! learners and the joint configuration is proposed only once each has reported a position at
//! least the writer's when their configuration committed. (7) A writer that C(new) leaves out
//! does not propose it: once C(old, new) is committed it hands over to an incoming voter, which
//! leaves the joint configuration itself. Members removed are sent heartbeats (with the
//! configuration) until they ack holding it: they learn they are out and never campaign again.
//! (8) A writer leaves C(old, new) only once a quorum of the incoming voters has reported a
//! position at least its own when it proposed C(old, new): a configuration is not a log entry,
//! so holding it says nothing of the data, and C(new) alone must not elect a writer without what
//! the outgoing voters alone committed (writes committed during C(old, new) had both halves).
//!
//! By rule 1 an uncommitted configuration has no child, and of two siblings at most one is ever
//! committed (each committed one's completeness, below, rules out the other's proposer), so every
//! configuration lies on the chain of committed ones or is an uncommitted child of one.
//!
//! *Configuration completeness* (Raft's leader completeness, for configurations): if `c` is
//! committed in term `T`, every writer of a term after `T` holds `c` or a descendant of it. By
//! induction on the terms: a writer `W` of a later term won votes from a quorum of its
//! configuration `cW`. If `cW` is older than `c`, then `cW` is an ancestor of `c` or a sibling of
//! one on `c`'s chain, and the configuration after it on that chain is committed (rule 1: nothing
//! is proposed on top of an uncommitted configuration), so a quorum of it holds at least that
//! version; by rule 2 that quorum meets `W`'s, and by rules 3 and 4 the voter in both refuses
//! `W`: a contradiction. So `cW` is at least `c`; every configuration at least `c` was proposed
//! in `T` after `c` (by rule 1 from `c`) or by a writer of a later term, which by induction held
//! a descendant of `c`: so `cW` descends from `c`. (Gossip in refusals moves only configurations
//! some writer proposed, and only upwards, so it changes none of this.)
//!
//! *One writer per term, and leases that never overlap, across configurations.* Two candidates
//! of one term count by configurations whose quorums meet: both hold a descendant of the newest
//! committed configuration `c`, and at most one proposal separates each from `c` on its chain,
//! so they are `c`, a child, or siblings (rule 2). The lease argument above (a voter in promise
//! to the writer refuses any rival) needs the same: the writer counts its lease by its current
//! configuration, which is `c` or `c`'s one uncommitted child, and a rival's configuration is a
//! descendant of `c` no further than a sibling of that child — their quorums meet, and the voter
//! in both is in promise. A lease taken under `c` and kept after proposing the child is counted
//! by the child from then on, and the child meets `c`. *Commits* (data) are safe the same way:
//! the replication writer must count by the election's configuration, and a new writer's votes
//! meet every quorum that committed an entry, whose member holds it and refuses a shorter log:
//! an entry committed by C is held by a quorum of C's successor too, because C(old, new) counts
//! both halves and rule 8 carries what C(old) committed to a quorum of C(new) before it is left.
//!
//! What the checks show: `tests/membership_props.rs` runs scale changes (3→5→3, 1→3, 5→3, 3→1,
//! replacements, removing the writer) under partitions, kills, pauses, fences, transfers and
//! campaigns, checking after every simulated millisecond one writer per term, never two nodes
//! accepting writes, one configuration per version, no vote request or win by a non-voter, and
//! configuration completeness, and that every new writer holds every position committed
//! before, with stores that lag behind their heartbeats among the faults (as real ones do), and a
//! targeted test where the incoming voters' stores lag. Three planted bugs (`crate::buggify` switches, in the core's unit
//! tests and the simulation only: leaving the joint configuration early, counting a learner's
//! vote, a removed node campaigning) must each be caught, by the harness's checker
//! (`harness/planted.rs`) and by the simulation's.
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

pub mod membership;
pub mod message;
pub mod node;
pub mod timing;

pub use membership::{ConfigVersion, Membership, MembershipError, validate_target};
pub use message::{Envelope, MAX_MESSAGE_BYTES, Message};
pub use node::{
    CLUSTER_SIZE_MAX, DropCounts, Effect, Input, Node, NodeError, PersistedState, Role,
    TransferRefused, WriterView,
};
pub use timing::{Timing, TimingError};
