//! The Quasar state machine of one replica: [`Node::step`] takes one input at a time and returns
//! the effects for the caller to perform, in order.

use super::membership::{ConfigVersion, Membership, validate_target};
use super::message::Message;
use super::timing::Timing;
use crate::replication::{Majority, QuorumConfig, QuorumError};
use crate::{Millis, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Largest cluster a node accepts (the operator runs at most 9 replicas; this leaves room).
pub const CLUSTER_SIZE_MAX: usize = 15;

/// No real cluster reaches this term (2^63 elections); a message claiming more is garbage, and
/// adopting it would leave the cluster no term to grow into.
pub const TERM_MAX: Term = Term(u64::MAX >> 1);

/// What a node must find again after a restart: written durably *before* any message that
/// depends on it is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// The voting configuration. `None` only in a state written before membership changes
    /// existed, or by a member that joined and has not yet been sent one: once a node holds a
    /// configuration it never takes its voters from its environment again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<Membership>,
}

/// One input to [`Node::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed: fire heartbeats, election timeouts, CheckQuorum, transfer deadlines.
    Tick,
    /// A message from a peer.
    Message { from: NodeId, msg: Message },
    /// The local store's replication position: `(last term << 32) | last index` of its durable
    /// log, with the store's `epoch`, which grows whenever the log may have lost a suffix (a
    /// truncation of uncommitted entries, a snapshot install). The node keeps the newest report
    /// by `(epoch, position)`: within an epoch a smaller position is a stale report and ignored;
    /// a higher epoch replaces the position even when it is smaller; an older epoch is ignored.
    Position { epoch: u64, position: u64 },
    /// Hand the writer role to `to` (ignored unless this node is the writer and `to` a peer).
    TransferWriter { to: NodeId },
    /// The voters the operator wants (its desired member set). Every node keeps the newest
    /// (not persisted: the driver re-reads it from its source of truth); the writer carries it
    /// out by joint consensus: new members join as learners, catch up, then C(old, new), then
    /// C(new). An invalid set is dropped (`drops().bad_membership`).
    SetMembers(BTreeSet<NodeId>),
    /// The cluster's initial members, as the operator publishes them while the cluster has never
    /// reported a configuration (`crate::members`). A node that holds no configuration (it
    /// started with [`Node::join`]) and is one of them takes the bootstrap configuration of these
    /// voters, version `(0, 0)`, persisted — exactly what [`Node::new`] gives an initial member.
    /// Ignored by a node that holds a configuration, or is not one of them; an invalid set is
    /// dropped (`drops().bad_membership`).
    Bootstrap(BTreeSet<NodeId>),
    /// Start an election now, as if the election timeout had fired (still pre-votes, and still
    /// honours this node's promise). For operators and scripted tests. Ignored while fenced.
    Campaign,
    /// Fence (`true`) or unfence this replica. A fenced node accepts no writes and does not stand
    /// for election: it never campaigns or pre-votes for itself and refuses `TimeoutNow`; a
    /// fenced writer stops accepting writes at once and hands over to the best up-to-date peer
    /// (stepping down if none catches up within `election_timeout_min_ms`). It still votes for
    /// others: it is a healthy member of the quorum. Not persisted: the driver re-applies it
    /// from its source of truth (the pod annotation) after a restart.
    SetFenced(bool),
}

/// What the caller must do, in the order given. `Persist` always comes before the `Send`s that
/// depend on it: the caller must make it durable before sending them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// This node won `term`; it may accept writes while `now < lease_until` (see `can_accept_writes`).
    BecomeWriter {
        term: Term,
        lease_until: Millis,
    },
    LeaseRenewed {
        lease_until: Millis,
    },
    /// This node was the writer of `term` and no longer is (it accepts no more writes).
    StepDown {
        term: Term,
    },
    /// Make this durable, all three together (the caller replaces its persisted state).
    Persist {
        term: Term,
        voted_for: Option<NodeId>,
        membership: Option<Membership>,
    },
}

/// A node's role, as in Raft with PreVote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Writer,
}

/// Who this node believes is the writer, for `/_ha/leader`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterView {
    pub writer: Option<NodeId>,
    pub term: Term,
    /// For the writer itself: its lease. For a follower: when the writer's lease (as seen from
    /// the follower's last ack) ends at the latest. `None` when no writer is known.
    pub lease_until: Option<Millis>,
}

/// Counters of inputs dropped as invalid; nonzero values are worth a log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Messages from a node that is not a peer.
    pub unknown_peer: u64,
    /// A second node claiming to be writer of a term that already has one.
    pub conflicting_writer: u64,
    /// Echoed send times that this node cannot have sent in the current term.
    pub bad_echo: u64,
    /// Vote and pre-vote requests ignored because of a promise.
    pub in_promise: u64,
    /// Messages carrying a term above [`TERM_MAX`].
    pub bad_term: u64,
    /// `TimeoutNow` refused because this node is fenced.
    pub fenced: u64,
    /// Configurations (from a peer, or `SetMembers`) that are not valid.
    pub bad_membership: u64,
    /// `TimeoutNow` refused, or a campaign not started, because this node is not a voter.
    pub not_voter: u64,
}

/// "I will not vote or pre-vote for anyone but `holder` until `until`" (on this node's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Promise {
    /// The term in which the promise was made.
    term: Term,
    /// The writer (or candidate) promised to; `None` after a restart (the promise is forgotten,
    /// so the node waits it out whoever it was to).
    holder: Option<NodeId>,
    until: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Transfer {
    to: NodeId,
    deadline: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct WriterState {
    /// When this node's campaign for the term started: no echo of this term can be older.
    campaign_at: Millis,
    /// Per peer: the latest send time (ours) of a vote request or heartbeat it acked in this term.
    acked_sent: BTreeMap<NodeId, Millis>,
    /// Per peer: the replication position it last reported.
    peer_position: BTreeMap<NodeId, u64>,
    /// Per peer: the configuration version it last acked holding.
    peer_config: BTreeMap<NodeId, ConfigVersion>,
    /// Members removed by this writer's changes that have not yet acked the configuration that
    /// removed them: they are sent heartbeats until they do, so that they learn it and never
    /// campaign again.
    departing: BTreeSet<NodeId>,
    /// The position the new learners must reach before the joint configuration is proposed.
    catch_up: Option<u64>,
    /// The writer's position when it proposed the joint configuration it is in: a quorum of the
    /// incoming voters must hold it before the joint configuration is left.
    leave_goal: Option<u64>,
    last_heartbeat_sent: Millis,
    next_heartbeat_at: Millis,
    /// The send time of the newest heartbeat (or the campaign) a majority has acked.
    lease_basis: Millis,
    lease_until: Millis,
    transfer: Option<Transfer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CampaignState {
    started_at: Millis,
    /// Peers that granted (with the echoed send time for real votes).
    granted: BTreeMap<NodeId, Millis>,
    refused: BTreeMap<NodeId, ()>,
}

/// The smallest deterministic PRNG that is good enough for timeout jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }
}

/// Why a writer would not hand over to a node (see [`Node::transfer_refusal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    #[error("this node is not the writer")]
    NotWriter,
    #[error("the target is this node")]
    ToSelf,
    #[error("the target is not a voter of the current configuration (a learner or not a member)")]
    NotAVoter,
    #[error("this writer is leaving the configuration: the target must be an incoming voter")]
    Departing,
}

/// Errors constructing a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("peers: {count} nodes exceed the cluster size limit {CLUSTER_SIZE_MAX}")]
    TooManyPeers { count: usize },
    #[error("peers: {peer} is listed twice")]
    DuplicatePeer { peer: NodeId },
    #[error("peers: the node's own id {id} is listed as a peer")]
    SelfInPeers { id: NodeId },
    #[error("node id: must not be empty")]
    EmptyId,
    #[error("persisted membership: {0}")]
    BadMembership(QuorumError),
}

/// One replica's election state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    id: NodeId,
    /// Whom the environment says this node may talk to (the driver's address book). Never a
    /// source of voters after the first start.
    contacts: Vec<NodeId>,
    /// The configuration, and the quorum rule it decides by (both `None` for a member that
    /// joined and has not been sent one yet: it neither campaigns nor counts).
    membership: Option<Membership>,
    quorum: Option<QuorumConfig>,
    /// The members of `membership` but this node, sorted: whom heartbeats go to.
    peers: Vec<NodeId>,
    /// The voters of either half but this node, sorted: whom vote requests go to.
    voters_but_me: Vec<NodeId>,
    /// The voters the operator wants (see [`Input::SetMembers`]).
    target: Option<BTreeSet<NodeId>>,
    timing: Timing,
    rng: SplitMix64,

    term: Term,
    voted_for: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    position: u64,
    /// The epoch of `position` (see [`Input::Position`]).
    position_epoch: u64,

    promise: Promise,
    election_deadline: Millis,
    /// When this node last acked the current leader's heartbeat (followers).
    leader_contact_at: Option<Millis>,
    /// The last heartbeat acked: its term, its writer, its send time (echoed again when the
    /// position advances, see [`Input::Position`]).
    last_heartbeat: Option<(Term, NodeId, Millis)>,
    campaign: CampaignState,
    writer: Option<WriterState>,

    last_now: Millis,
    drops: DropCounts,
    /// Fenced: accepts no writes, does not stand for election (see [`Input::SetFenced`]).
    fenced: bool,
}

impl Node {
    /// A node of the cluster's initial members starting (or restarting) at local time `now` with
    /// the state it persisted. On its first start (no persisted configuration) its voters are
    /// itself and `peers`, at the bootstrap version; after that, `peers` are only whom it may
    /// talk to, and its voters are the configuration it persisted.
    /// It forgot any promise it made before, so it grants no vote and does not campaign until
    /// `now + election_timeout_min_ms`. `seed` drives the election-timeout jitter.
    pub fn new(
        id: NodeId,
        peers: Vec<NodeId>,
        timing: Timing,
        persisted: PersistedState,
        seed: u64,
        now: Millis,
    ) -> Result<Node, NodeError> {
        let bootstrap = Membership::bootstrap(peers.iter().cloned().chain([id.clone()]));
        Node::start(id, peers, Some(bootstrap), timing, persisted, seed, now)
    }

    /// A member added after the cluster was created (a scale-up's new pod): with no persisted
    /// configuration it holds none, so it never campaigns and its vote counts nowhere, until the
    /// writer sends it the configuration that made it a learner. `contacts` as in [`Node::new`].
    pub fn join(
        id: NodeId,
        contacts: Vec<NodeId>,
        timing: Timing,
        persisted: PersistedState,
        seed: u64,
        now: Millis,
    ) -> Result<Node, NodeError> {
        Node::start(id, contacts, None, timing, persisted, seed, now)
    }

    fn start(
        id: NodeId,
        contacts: Vec<NodeId>,
        bootstrap: Option<Membership>,
        timing: Timing,
        persisted: PersistedState,
        seed: u64,
        now: Millis,
    ) -> Result<Node, NodeError> {
        if id.as_str().is_empty() {
            return Err(NodeError::EmptyId);
        }
        if contacts.len() + 1 > CLUSTER_SIZE_MAX {
            return Err(NodeError::TooManyPeers {
                count: contacts.len() + 1,
            });
        }
        let mut sorted = contacts;
        sorted.sort();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(NodeError::DuplicatePeer {
                    peer: pair[0].clone(),
                });
            }
        }
        if sorted.contains(&id) {
            return Err(NodeError::SelfInPeers { id });
        }
        timing.assert_lease_argument();
        // What the node persisted wins over its environment, always.
        let membership = persisted.membership.clone().or(bootstrap);
        let quorum = match &membership {
            Some(m) => Some(m.quorum().map_err(NodeError::BadMembership)?),
            None => None,
        };
        let mut node = Node {
            id,
            contacts: sorted,
            membership: None,
            quorum: None,
            peers: Vec::new(),
            voters_but_me: Vec::new(),
            target: None,
            timing,
            rng: SplitMix64(seed),
            term: persisted.term,
            voted_for: persisted.voted_for,
            role: Role::Follower,
            leader: None,
            position: 0,
            position_epoch: 0,
            promise: Promise {
                term: persisted.term,
                holder: None,
                until: now.saturating_add(timing.election_timeout_min_ms()),
            },
            election_deadline: now,
            leader_contact_at: None,
            last_heartbeat: None,
            campaign: CampaignState::default(),
            writer: None,
            last_now: now,
            drops: DropCounts::default(),
            fenced: false,
        };
        if let (Some(m), Some(q)) = (membership, quorum) {
            node.install(m, q);
        }
        node.reset_election_deadline(now);
        Ok(node)
    }

    // ----- queries -------------------------------------------------------------------------

    pub fn id(&self) -> &NodeId {
        &self.id
    }
    /// The members of this node's configuration but itself (whom its heartbeats go to).
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }
    /// Whom the environment said this node may talk to.
    pub fn contacts(&self) -> &[NodeId] {
        &self.contacts
    }
    /// The voting configuration this node holds (and has persisted); `None` for a member that
    /// joined and has not been sent one yet.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }
    /// The quorum rule of [`Node::membership`]: what the replication writer must count commits by.
    pub fn quorum_config(&self) -> Option<&QuorumConfig> {
        self.quorum.as_ref()
    }
    /// Is this node a voter (of either half) of its own configuration?
    pub fn is_voter(&self) -> bool {
        self.membership
            .as_ref()
            .is_some_and(|m| m.is_voter(&self.id))
    }
    /// The voters the operator wants, as last given by [`Input::SetMembers`].
    pub fn target_members(&self) -> Option<&BTreeSet<NodeId>> {
        self.target.as_ref()
    }
    /// For a writer: is its configuration committed in its own term (a quorum of it has acked
    /// holding it)? Only then does it propose the next one.
    pub fn membership_committed(&self) -> bool {
        let (Some(m), Some(q), Some(w)) = (&self.membership, &self.quorum, &self.writer) else {
            return false;
        };
        if m.version.term != self.term {
            return false;
        }
        let mut yes: BTreeSet<NodeId> = w
            .peer_config
            .iter()
            .filter(|(_, v)| **v >= m.version)
            .map(|(p, _)| p.clone())
            .collect();
        yes.insert(self.id.clone());
        q.is_quorum(&yes)
    }
    /// For a writer: has the configuration reached the operator's target (simple, its voters
    /// exactly the target, no learner left) and been committed?
    pub fn membership_settled(&self) -> bool {
        let Some(m) = &self.membership else {
            return false;
        };
        let on_target = self.target.as_ref().is_none_or(|t| *t == m.voters);
        !m.is_joint() && m.learners.is_empty() && on_target && self.membership_committed()
    }
    /// For a writer: settled ([`Node::membership_settled`]) and every member a change removed
    /// has acked holding the configuration that removed it (it knows it is out and will never
    /// campaign): only then may the operator delete a removed member's pod.
    pub fn membership_done(&self) -> bool {
        self.membership_settled() && self.writer.as_ref().is_some_and(|w| w.departing.is_empty())
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn voted_for(&self) -> Option<&NodeId> {
        self.voted_for.as_ref()
    }
    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }
    pub fn position(&self) -> u64 {
        self.position
    }
    /// The epoch of [`Node::position`].
    pub fn position_epoch(&self) -> u64 {
        self.position_epoch
    }
    pub fn timing(&self) -> &Timing {
        &self.timing
    }
    pub fn drops(&self) -> DropCounts {
        self.drops
    }
    /// Is this node fenced (no writes, not standing for election)?
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }
    /// For a writer handing over: the peer it is handing to.
    pub fn transferring_to(&self) -> Option<&NodeId> {
        self.writer
            .as_ref()
            .and_then(|w| w.transfer.as_ref())
            .map(|t| &t.to)
    }
    /// The earliest local time at which an [`Input::Tick`] can do anything: a tick before it
    /// changes no state and returns no effect, so a driver may sleep until then (and must wake
    /// again after any other input, which can move it). A follower's or candidate's election
    /// deadline; a writer's next heartbeat, CheckQuorum or transfer deadline, or now (the last
    /// input's time) while a membership change may be waiting for its next step.
    #[must_use]
    pub fn next_tick_due(&self) -> Millis {
        let Some(w) = self.writer.as_ref().filter(|_| self.role == Role::Writer) else {
            return self.election_deadline;
        };
        if !self.membership_idle() {
            return self.last_now;
        }
        let check_quorum = w
            .lease_basis
            .saturating_add(self.timing.election_timeout_min_ms());
        let due = w.next_heartbeat_at.min(check_quorum);
        match &w.transfer {
            Some(t) => due.min(t.deadline),
            None => due,
        }
    }

    /// For the test harness: does this node hold the same state as `before`, bar the time of
    /// its last input? (What a tick before [`Node::next_tick_due`] must leave unchanged.)
    #[cfg(feature = "harness")]
    pub(crate) fn same_state_as(&self, before: &Node) -> bool {
        let mut before = before.clone();
        before.last_now = self.last_now;
        before == *self
    }

    /// Would [`Node::advance_membership`] return at once, changing nothing? (Its early returns,
    /// as a pure predicate: a tick may be skipped only then.)
    fn membership_idle(&self) -> bool {
        if self.role != Role::Writer || self.fenced || self.transferring_to().is_some() {
            return true;
        }
        let Some(m) = &self.membership else {
            return true;
        };
        // `membership_committed` counts a quorum (it allocates): asked only when it decides.
        let ours = m.version.term == self.term;
        if m.is_joint() {
            let early = crate::buggify!(LeaveJointEarly) && ours;
            return ours && !early && !self.membership_committed();
        }
        let Some(target) = &self.target else {
            return true;
        };
        let on_target = target == &m.voters && m.learners.is_empty();
        // Uncommitted, it waits on its own term's configuration (an inherited one it stamps
        // anew); committed, it is idle only on target.
        if ours {
            on_target || !self.membership_committed()
        } else {
            on_target && self.membership_committed()
        }
    }

    pub fn persisted(&self) -> PersistedState {
        PersistedState {
            term: self.term,
            voted_for: self.voted_for.clone(),
            membership: self.membership.clone(),
        }
    }

    /// May this node accept a write at local time `now`? Only the writer of the current term,
    /// not fenced, not handing over, and strictly inside its lease.
    pub fn can_accept_writes(&self, now: Millis) -> bool {
        match &self.writer {
            Some(w) => {
                self.role == Role::Writer
                    && !self.fenced
                    && w.transfer.is_none()
                    && now < w.lease_until
            }
            None => false,
        }
    }

    /// Who this node believes is the writer, the term, and the lease expiry.
    pub fn writer_view(&self, now: Millis) -> WriterView {
        match (&self.writer, &self.leader) {
            (Some(w), _) => WriterView {
                writer: Some(self.id.clone()),
                term: self.term,
                lease_until: Some(if w.transfer.is_some() || self.fenced {
                    now.min(w.lease_until)
                } else {
                    w.lease_until
                }),
            },
            (None, Some(leader)) => WriterView {
                writer: Some(leader.clone()),
                term: self.term,
                lease_until: self
                    .leader_contact_at
                    .map(|a| a.saturating_add(self.timing.lease_ms())),
            },
            (None, None) => WriterView {
                writer: None,
                term: self.term,
                lease_until: None,
            },
        }
    }

    /// For a writer: the replication position each peer last reported.
    pub fn peer_positions(&self) -> BTreeMap<NodeId, u64> {
        self.writer
            .as_ref()
            .map(|w| w.peer_position.clone())
            .unwrap_or_default()
    }

    /// For a writer: the peer with the highest reported position that is at least as up to date
    /// as this node (ties go to the peer that acked most recently, then to the smaller id).
    pub fn best_transfer_target(&self) -> Option<NodeId> {
        let w = self.writer.as_ref()?;
        w.peer_position
            .iter()
            .filter(|(peer, _)| self.transfer_refusal(peer).is_none())
            .filter(|(_, pos)| **pos >= self.position)
            .max_by_key(|(peer, pos)| {
                let acked = w.acked_sent.get(*peer).copied().unwrap_or(Millis::ZERO);
                (**pos, acked, std::cmp::Reverse((*peer).clone()))
            })
            .map(|(peer, _)| peer.clone())
    }

    /// For a writer: whom to hand the role to when it must go (fenced, shutting down): the best
    /// up-to-date peer, else the most advanced one (the transfer stops new writes and waits,
    /// bounded, for it to catch up: under a steady stream of writes no peer is ever exactly up
    /// to date), else none.
    pub fn hand_over_target(&self) -> Option<NodeId> {
        self.best_transfer_target().or_else(|| {
            let w = self.writer.as_ref()?;
            w.peer_position
                .iter()
                .filter(|(peer, _)| self.transfer_refusal(peer).is_none())
                .max_by_key(|(peer, pos)| (**pos, std::cmp::Reverse((*peer).clone())))
                .map(|(peer, _)| peer.clone())
        })
    }

    /// Why this node would not hand the writer role to `to` now, if it would not: the target
    /// must be another voter of the configuration (a learner or a stranger cannot win), and while
    /// this node is leaving through a joint configuration, a voter of the incoming half.
    pub fn transfer_refusal(&self, to: &NodeId) -> Option<TransferRefused> {
        if self.role != Role::Writer {
            return Some(TransferRefused::NotWriter);
        }
        if *to == self.id {
            return Some(TransferRefused::ToSelf);
        }
        let m = self.membership.as_ref()?;
        if !m.is_voter(to) {
            return Some(TransferRefused::NotAVoter);
        }
        if !m.voters.contains(&self.id) && !m.voters.contains(to) {
            return Some(TransferRefused::Departing);
        }
        None
    }

    /// Do the `yes` nodes and this one form a quorum of the configuration?
    fn has_quorum<'a>(&self, yes: impl Iterator<Item = &'a NodeId>) -> bool {
        let (Some(m), Some(q)) = (&self.membership, &self.quorum) else {
            return false;
        };
        let mut set: BTreeSet<NodeId> = yes.cloned().collect();
        set.insert(self.id.clone());
        if crate::buggify!(CountLearnerVotes) {
            // The planted bug: a learner's grant counted like an incoming voter's.
            let incoming = set
                .iter()
                .filter(|n| m.voters.contains(*n) || m.learners.contains(*n))
                .count();
            return incoming > m.voters.len() / 2
                && Majority::new(m.outgoing.iter().cloned()).is_quorum(&set);
        }
        q.is_quorum(&set)
    }

    /// Can a campaign still win with every voter but the `refused` ones?
    fn can_still_win(&self, refused: &BTreeMap<NodeId, ()>) -> bool {
        let open: Vec<&NodeId> = self
            .voters_but_me
            .iter()
            .filter(|v| !refused.contains_key(*v))
            .collect();
        self.has_quorum(open.into_iter())
    }

    /// Whom a candidate asks: the voters (with the planted bug, the learners too).
    fn vote_recipients(&self) -> &[NodeId] {
        if crate::buggify!(CountLearnerVotes) {
            &self.peers
        } else {
            &self.voters_but_me
        }
    }

    /// May this node stand for election (campaign, pre-vote for itself, obey `TimeoutNow`)?
    fn may_stand(&self) -> bool {
        !self.fenced
            && self.membership.is_some()
            && (self.is_voter() || crate::buggify!(RemovedCampaigns))
    }

    fn is_peer(&self, id: &NodeId) -> bool {
        self.contacts.binary_search(id).is_ok()
            || self.membership.as_ref().is_some_and(|m| m.is_member(id))
    }

    /// Takes `m` (already checked into `q`) as this node's configuration.
    fn install(&mut self, m: Membership, q: QuorumConfig) {
        self.peers = m.members().into_iter().filter(|p| *p != self.id).collect();
        self.voters_but_me = m
            .all_voters()
            .into_iter()
            .filter(|p| *p != self.id)
            .collect();
        self.membership = Some(m);
        self.quorum = Some(q);
    }

    /// Takes a configuration a peer sent, if it is newer than ours and valid; persists it.
    fn adopt(&mut self, m: Membership, out: &mut Vec<Effect>) -> bool {
        if self
            .membership
            .as_ref()
            .is_some_and(|c| m.version <= c.version)
        {
            return false;
        }
        if m.version.term > TERM_MAX {
            self.drops.bad_term += 1;
            return false;
        }
        let Ok(q) = m.quorum() else {
            self.drops.bad_membership += 1;
            return false;
        };
        self.install(m, q);
        self.persist(out);
        true
    }

    fn persist(&self, out: &mut Vec<Effect>) {
        out.push(Effect::Persist {
            term: self.term,
            voted_for: self.voted_for.clone(),
            membership: self.membership.clone(),
        });
    }

    /// A configuration a voter sent with its refusal: a candidate takes it if newer, and then
    /// abandons its campaign (it was counting by an older configuration).
    fn adopt_gossip(&mut self, now: Millis, m: Option<Box<Membership>>, out: &mut Vec<Effect>) {
        let Some(m) = m else { return };
        if self.role == Role::Writer {
            return; // a writer's configuration changes only by its own proposals
        }
        if self.adopt(*m, out) && matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.become_follower(now, self.term, None, out);
        }
    }

    /// Does a promise forbid voting (or pre-voting) for `candidate` at `now`?
    fn in_promise(&self, now: Millis, candidate: &NodeId) -> bool {
        now < self.promise.until && self.promise.holder.as_ref() != Some(candidate)
    }

    // ----- the one entry point -------------------------------------------------------------

    /// Feed one input at local time `now` (which never goes backwards). Returns the effects to
    /// perform, in order.
    #[must_use]
    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        assert!(
            now >= self.last_now,
            "quasar: time went backwards on {}: {} < {}",
            self.id,
            now,
            self.last_now
        );
        self.last_now = now;
        let before = (
            self.term,
            self.voted_for.clone(),
            self.membership.as_ref().map(|m| m.version),
        );
        let mut out = Vec::new();
        match input {
            Input::Tick => self.tick(now, &mut out),
            Input::Message { from, msg } => self.receive(now, from, msg, &mut out),
            Input::Position { epoch, position } => self.set_position(epoch, position, &mut out),
            Input::TransferWriter { to } => self.start_transfer(now, to, &mut out),
            Input::SetMembers(voters) => match validate_target(&voters) {
                Ok(()) => self.target = Some(voters),
                Err(_) => self.drops.bad_membership += 1,
            },
            Input::Bootstrap(voters) => {
                if self.membership.is_none() && voters.contains(&self.id) {
                    let checked = validate_target(&voters).is_ok();
                    let m = Membership::bootstrap(voters);
                    match m.quorum() {
                        Ok(q) if checked => {
                            self.install(m, q);
                            self.persist(&mut out);
                        }
                        _ => self.drops.bad_membership += 1,
                    }
                }
            }
            Input::Campaign => {
                if self.role != Role::Writer
                    && self.may_stand()
                    && !self.in_promise(now, &self.id.clone())
                {
                    self.pre_campaign(now, &mut out);
                }
            }
            Input::SetFenced(fenced) => self.set_fenced(now, fenced, &mut out),
        }
        self.check_invariants(now, before, &out);
        out
    }

    fn config_version(&self) -> ConfigVersion {
        self.membership
            .as_ref()
            .map(|m| m.version)
            .unwrap_or_default()
    }

    /// A newer position is news for the writer this node follows: the ack of its last heartbeat
    /// goes again at once with it (the same echoed send time, so it extends no lease), and the
    /// writer's commit need not wait for the next heartbeat.
    fn set_position(&mut self, epoch: u64, position: u64, out: &mut Vec<Effect>) {
        if (epoch, position) <= (self.position_epoch, self.position) {
            return; // stale: an older epoch, or an older report of this one
        }
        self.position_epoch = epoch;
        self.position = position;
        if self.role == Role::Follower
            && let Some((term, writer, sent_ms)) = &self.last_heartbeat
            && *term == self.term
            && self.leader.as_ref() == Some(writer)
        {
            out.push(Effect::Send {
                to: writer.clone(),
                msg: Message::HeartbeatAck {
                    term: self.term,
                    ok: true,
                    sent_ms: *sent_ms,
                    position,
                    config: self.membership.as_ref().map(|m| m.version),
                },
            });
        }
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        match self.role {
            Role::Writer => self.tick_writer(now, out),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if now < self.election_deadline {
                    return;
                }
                if !self.may_stand() {
                    // A fenced node, a learner, a removed node: not standing for election.
                    self.reset_election_deadline(now);
                    return;
                }
                let me = self.id.clone();
                if self.in_promise(now, &me) {
                    // Not before the promise ends, not even for ourselves.
                    self.election_deadline = self.promise.until;
                    return;
                }
                self.pre_campaign(now, out);
            }
        }
    }

    fn tick_writer(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let election_timeout_min_ms = self.timing.election_timeout_min_ms();
        let Some(w) = self.writer.as_mut() else {
            unreachable!("role Writer without writer state")
        };
        if w.transfer.as_ref().is_some_and(|t| now >= t.deadline) {
            if self.fenced {
                // Fenced, and the target never caught up: give the role up without a successor
                // (the followers' promises run out, then they elect one of themselves).
                self.become_follower(now, self.term, None, out);
                return;
            }
            // The target never caught up: keep the role, accept writes again.
            w.transfer = None;
        }
        // CheckQuorum: no quorum has acked anything we sent in the last E → step down.
        if now >= w.lease_basis.saturating_add(election_timeout_min_ms) {
            self.become_follower(now, self.term, None, out);
            return;
        }
        let due = now >= w.next_heartbeat_at;
        // A proposal broadcasts at once; otherwise heartbeats go out when due.
        if !self.advance_membership(now, out) && due && self.role == Role::Writer {
            self.broadcast_heartbeat(now, out);
        }
    }

    /// The writer's side of a membership change, one step at a time, each only once the
    /// configuration before it is committed in this term (see the module doc): stamp an
    /// inherited configuration with this term; add the new members as learners; once they have
    /// caught up, C(old, new); once that is committed, C(new) (auto-leave, also when no target
    /// is known: a new writer that finds a joint configuration finishes it). A writer that the
    /// change removes hands over to an incoming voter instead of leaving itself. Returns whether
    /// it proposed (and so broadcast).
    fn advance_membership(&mut self, now: Millis, out: &mut Vec<Effect>) -> bool {
        if self.role != Role::Writer || self.fenced || self.transferring_to().is_some() {
            return false;
        }
        let Some(m) = self.membership.clone() else {
            return false;
        };
        let committed = self.membership_committed();
        let ours = m.version.term == self.term;
        if m.is_joint() {
            let early = crate::buggify!(LeaveJointEarly) && ours;
            if !committed && !early {
                if !ours {
                    return self.propose(now, m.clone(), out);
                }
                return false;
            }
            if !m.voters.contains(&self.id) {
                if let Some(to) = self.hand_over_target() {
                    self.start_transfer(now, to, out);
                }
                return false;
            }
            // A configuration is not a log entry: a quorum holding C(old, new) says nothing of
            // the data. What the outgoing voters alone committed before it must be on a quorum
            // of the incoming ones before they count alone, or C(new) could elect a writer
            // without it (the simulation's seed 3900: an acknowledged write lost on 5 → 3).
            if !early && !self.incoming_quorum_holds_leave_goal(&m) {
                return false;
            }
            let next = Membership {
                outgoing: BTreeSet::new(),
                ..m
            };
            return self.propose(now, next, out);
        }
        let Some(target) = self.target.clone() else {
            return false;
        };
        // With a target known, the configuration is first committed in this term (stamped anew
        // if inherited), even when it is on target: only then can the writer say it is settled.
        if !committed {
            if !ours {
                return self.propose(now, m.clone(), out);
            }
            return false;
        }
        let joiners: BTreeSet<NodeId> = target.difference(&m.voters).cloned().collect();
        if joiners.is_empty() && target == m.voters && m.learners.is_empty() {
            return false; // on target
        }
        if m.learners != joiners {
            // New members join as learners; learners the target no longer wants leave.
            let next = Membership {
                learners: joiners,
                ..m
            };
            return self.propose(now, next, out);
        }
        let position = self.position;
        let Some(w) = self.writer.as_mut() else {
            return false;
        };
        let goal = *w.catch_up.get_or_insert(position);
        let caught_up = joiners
            .iter()
            .all(|j| w.peer_position.get(j).is_some_and(|p| *p >= goal));
        if !caught_up {
            return false;
        }
        let next = Membership {
            version: m.version,
            outgoing: m.voters,
            voters: target,
            learners: BTreeSet::new(),
        };
        self.propose(now, next, out)
    }

    /// For a writer in the joint configuration `m`: does a quorum of the incoming voters (the
    /// writer counting with its own position) hold the position it had when it proposed `m`?
    fn incoming_quorum_holds_leave_goal(&mut self, m: &Membership) -> bool {
        let position = self.position;
        let Some(w) = self.writer.as_mut() else {
            return false;
        };
        let goal = *w.leave_goal.get_or_insert(position);
        let holders: BTreeSet<NodeId> = m
            .voters
            .iter()
            .filter(|v| {
                if **v == self.id {
                    position >= goal
                } else {
                    w.peer_position.get(*v).is_some_and(|p| *p >= goal)
                }
            })
            .cloned()
            .collect();
        QuorumConfig::simple(m.voters.iter().cloned()).is_ok_and(|q| q.is_quorum(&holders))
    }

    /// The writer takes `next` (its version set here) as its configuration at once, persists it
    /// and sends it with a heartbeat to everyone it concerns.
    fn propose(&mut self, now: Millis, next: Membership, out: &mut Vec<Effect>) -> bool {
        let Some(current) = self.membership.as_ref() else {
            return false;
        };
        let before = current.members();
        let version = ConfigVersion {
            term: self.term,
            index: current.version.index.saturating_add(1),
        };
        let next = next.restamped(version);
        assert!(
            next.is_voter(&self.id),
            "quasar: a writer proposed a configuration without itself"
        );
        let Ok(q) = next.quorum() else {
            self.drops.bad_membership += 1;
            return false;
        };
        let after = next.members();
        let joint = next.is_joint();
        self.install(next, q);
        let position = self.position;
        if let Some(w) = self.writer.as_mut() {
            w.departing.extend(before.difference(&after).cloned());
            w.departing.retain(|d| !after.contains(d));
            // Learners catch up to where the writer is once their configuration is committed.
            w.catch_up = None;
            // Everything committed so far is at or below the writer's position.
            w.leave_goal = joint.then_some(position);
        }
        self.persist(out);
        self.broadcast_heartbeat(now, out);
        true
    }

    fn receive(&mut self, now: Millis, from: NodeId, msg: Message, out: &mut Vec<Effect>) {
        if !self.is_peer(&from) {
            self.drops.unknown_peer += 1;
            return;
        }
        if msg.term() > TERM_MAX {
            self.drops.bad_term += 1;
            return;
        }
        let msg = match msg {
            Message::PreVoteResponse {
                term,
                granted,
                membership,
            } => {
                self.adopt_gossip(now, membership, out);
                Message::PreVoteResponse {
                    term,
                    granted,
                    membership: None,
                }
            }
            Message::VoteResponse {
                term,
                granted,
                sent_ms,
                membership,
            } => {
                self.adopt_gossip(now, membership, out);
                Message::VoteResponse {
                    term,
                    granted,
                    sent_ms,
                    membership: None,
                }
            }
            other => other,
        };
        match msg {
            Message::PreVote {
                term,
                position,
                config,
            } => self.on_pre_vote(now, from, term, position, config, out),
            Message::Vote {
                term,
                position,
                sent_ms,
                transfer_from,
                config,
            } => self.on_vote(
                now,
                from,
                term,
                position,
                sent_ms,
                transfer_from,
                config,
                out,
            ),
            Message::PreVoteResponse { term, granted, .. } => {
                if granted {
                    // Granted responses carry our *future* term: not a reason to change ours.
                    let me = self.id.clone();
                    if self.role == Role::PreCandidate
                        && self.may_stand()
                        && Some(term.0) == self.term.0.checked_add(1)
                        && !self.in_promise(now, &me)
                    {
                        self.campaign.granted.insert(from, now);
                        if self.has_quorum(self.campaign.granted.keys()) {
                            self.campaign(now, None, out);
                        }
                    }
                } else if term > self.term {
                    self.become_follower(now, term, None, out);
                }
            }
            other => {
                let term = other.term();
                if term > self.term {
                    let leader = match &other {
                        Message::Heartbeat { .. } | Message::TimeoutNow { .. } => {
                            Some(from.clone())
                        }
                        _ => None,
                    };
                    self.become_follower(now, term, leader, out);
                } else if term < self.term {
                    if let Message::Heartbeat { sent_ms, .. } = other {
                        // A stale writer: tell it the term so it steps down.
                        out.push(Effect::Send {
                            to: from,
                            msg: Message::HeartbeatAck {
                                term: self.term,
                                ok: false,
                                sent_ms,
                                position: self.position,
                                config: self.membership.as_ref().map(|m| m.version),
                            },
                        });
                    }
                    return;
                }
                match self.role {
                    Role::Writer => self.step_writer(now, from, other, out),
                    Role::Candidate => self.step_candidate(now, from, other, out),
                    Role::PreCandidate | Role::Follower => {
                        self.step_follower(now, from, other, out)
                    }
                }
            }
        }
    }

    // ----- per-role handlers (messages at our current term) -------------------------------

    fn step_follower(&mut self, now: Millis, from: NodeId, msg: Message, out: &mut Vec<Effect>) {
        match msg {
            Message::Heartbeat {
                sent_ms,
                membership,
                ..
            } => self.on_heartbeat(now, from, sent_ms, membership, out),
            Message::TimeoutNow { .. } => {
                if self.fenced {
                    // A fenced node does not stand for election, not even when asked to.
                    self.drops.fenced += 1;
                    return;
                }
                if !self.may_stand() {
                    // A learner or a removed node cannot win: it must not raise the term.
                    self.drops.not_voter += 1;
                    return;
                }
                // Only the writer we follow (whose promise we hold) can release us from it.
                let from_leader = self.leader.as_ref() == Some(&from)
                    || self.promise.holder.as_ref() == Some(&from);
                let me = self.id.clone();
                if from_leader || !self.in_promise(now, &me) {
                    self.campaign(now, Some(from), out);
                }
            }
            // Stale responses to a campaign that is over.
            Message::VoteResponse { .. } | Message::HeartbeatAck { .. } => {}
            Message::PreVote { .. } | Message::Vote { .. } | Message::PreVoteResponse { .. } => {
                unreachable!("handled in receive")
            }
        }
    }

    fn step_candidate(&mut self, now: Millis, from: NodeId, msg: Message, out: &mut Vec<Effect>) {
        match msg {
            Message::Heartbeat {
                sent_ms,
                membership,
                ..
            } => {
                // Someone else won our term.
                self.become_follower(now, self.term, Some(from.clone()), out);
                self.on_heartbeat(now, from, sent_ms, membership, out);
            }
            Message::VoteResponse {
                granted, sent_ms, ..
            } => {
                if !granted {
                    self.campaign.refused.insert(from, ());
                    if !self.can_still_win(&self.campaign.refused) {
                        self.become_follower(now, self.term, None, out);
                    }
                    return;
                }
                if sent_ms < self.campaign.started_at || sent_ms > now {
                    self.drops.bad_echo += 1;
                    return;
                }
                self.campaign.granted.insert(from, sent_ms);
                if self.has_quorum(self.campaign.granted.keys()) {
                    self.become_writer(now, out);
                }
            }
            Message::TimeoutNow { .. } | Message::HeartbeatAck { .. } => {}
            Message::PreVote { .. } | Message::Vote { .. } | Message::PreVoteResponse { .. } => {
                unreachable!("handled in receive")
            }
        }
    }

    fn step_writer(&mut self, now: Millis, from: NodeId, msg: Message, out: &mut Vec<Effect>) {
        match msg {
            Message::HeartbeatAck {
                ok: true,
                sent_ms,
                position,
                config,
                ..
            } => {
                let Some(w) = self.writer.as_mut() else {
                    unreachable!("role Writer without writer state")
                };
                if sent_ms < w.campaign_at || sent_ms > now {
                    self.drops.bad_echo += 1;
                    return;
                }
                let acked = w.acked_sent.entry(from.clone()).or_insert(sent_ms);
                *acked = (*acked).max(sent_ms);
                w.peer_position.insert(from.clone(), position);
                match config {
                    Some(v) => {
                        w.peer_config.insert(from.clone(), v);
                        let current = self.membership.as_ref().map(|m| m.version);
                        if current.is_some_and(|c| v >= c) {
                            w.departing.remove(&from);
                        }
                    }
                    None => {
                        w.peer_config.remove(&from);
                    }
                }
                self.renew_lease(now, out);
                self.try_finish_transfer(now, out);
            }
            Message::Heartbeat { .. } => {
                // Another node claims our term: impossible with one vote per term. Drop it.
                self.drops.conflicting_writer += 1;
            }
            Message::HeartbeatAck { ok: false, .. }
            | Message::VoteResponse { .. }
            | Message::TimeoutNow { .. } => {}
            Message::PreVote { .. } | Message::Vote { .. } | Message::PreVoteResponse { .. } => {
                unreachable!("handled in receive")
            }
        }
    }

    // ----- requests any role answers ----------------------------------------------------

    fn on_heartbeat(
        &mut self,
        now: Millis,
        from: NodeId,
        sent_ms: Millis,
        membership: Option<Box<Membership>>,
        out: &mut Vec<Effect>,
    ) {
        if self.leader.as_ref().is_some_and(|l| *l != from) {
            self.drops.conflicting_writer += 1;
            return;
        }
        if self.role != Role::Follower || self.leader.is_none() {
            self.become_follower(now, self.term, Some(from.clone()), out);
        }
        // The writer's configuration, persisted (by the `Persist` first) before the ack says so.
        if let Some(m) = membership {
            self.adopt(*m, out);
        }
        self.make_promise(now, from.clone());
        self.leader_contact_at = Some(now);
        self.last_heartbeat = Some((self.term, from.clone(), sent_ms));
        self.reset_election_deadline(now);
        out.push(Effect::Send {
            to: from,
            msg: Message::HeartbeatAck {
                term: self.term,
                ok: true,
                sent_ms,
                position: self.position,
                config: self.membership.as_ref().map(|m| m.version),
            },
        });
    }

    fn on_pre_vote(
        &mut self,
        now: Millis,
        from: NodeId,
        term: Term,
        position: u64,
        config: ConfigVersion,
        out: &mut Vec<Effect>,
    ) {
        if self.in_promise(now, &from) {
            self.drops.in_promise += 1;
            return;
        }
        let granted = term > self.term && position >= self.position && self.config_ok(config);
        if granted {
            self.make_way(now, &from, position);
        }
        out.push(Effect::Send {
            to: from,
            msg: Message::PreVoteResponse {
                term: if granted { term } else { self.term },
                granted,
                membership: self.gossip_for(config),
            },
        });
    }

    /// Having granted `from` a pre-vote: give its vote round time to arrive before standing
    /// ourselves. Two nodes whose election timeouts end together otherwise split the vote and
    /// both wait another timeout (on real pods 3 of 20 writer kills took a second one). A
    /// follower holds its own campaign back until `2 × heartbeat` from now at the most; a
    /// pre-candidate yields to a candidate with a better position (ties: the smaller id), so of
    /// two that pre-campaign together exactly one goes on. Liveness only: no vote, term or
    /// promise changes here, and the delay is bounded, so a candidate that never follows up
    /// (or never can win) holds no one back for longer than that, once per pre-vote it sends,
    /// and it sends those at most once per election timeout.
    fn make_way(&mut self, now: Millis, from: &NodeId, position: u64) {
        let grace = now.saturating_add(Millis(
            self.timing.heartbeat_interval_ms().0.saturating_mul(2),
        ));
        match self.role {
            Role::Follower => self.election_deadline = self.election_deadline.max(grace),
            Role::PreCandidate
                if (position, Reverse(from)) > (self.position, Reverse(&self.id)) =>
            {
                self.role = Role::Follower;
                self.campaign = CampaignState::default();
                self.election_deadline = grace;
            }
            _ => {}
        }
    }

    /// Is a candidate's configuration at least as new as ours? (Raft's "at least as up to
    /// date", for the configuration; a node that holds none has nothing to protect.)
    fn config_ok(&self, config: ConfigVersion) -> bool {
        self.membership.as_ref().is_none_or(|m| config >= m.version)
    }

    /// Our configuration, for a candidate whose configuration is older.
    fn gossip_for(&self, config: ConfigVersion) -> Option<Box<Membership>> {
        self.membership
            .as_ref()
            .filter(|m| config < m.version)
            .map(|m| Box::new(m.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote(
        &mut self,
        now: Millis,
        from: NodeId,
        term: Term,
        position: u64,
        sent_ms: Millis,
        transfer_from: Option<NodeId>,
        config: ConfigVersion,
        out: &mut Vec<Effect>,
    ) {
        // A transfer releases the promise only if it comes from the writer we promised to, for
        // the very next term: that writer gave up its lease before it sent TimeoutNow.
        let honoured_transfer = transfer_from.is_some()
            && transfer_from == self.promise.holder
            && Some(term.0) == self.promise.term.0.checked_add(1);
        if !honoured_transfer && self.in_promise(now, &from) {
            // Ignored entirely: not even our term moves (this is what keeps a node back from a
            // partition from deposing a healthy writer).
            self.drops.in_promise += 1;
            return;
        }
        if term < self.term {
            out.push(Effect::Send {
                to: from,
                msg: Message::VoteResponse {
                    term: self.term,
                    granted: false,
                    sent_ms,
                    membership: None,
                },
            });
            return;
        }
        if term > self.term {
            self.become_follower(now, term, None, out);
        }
        let free = self.voted_for.is_none() || self.voted_for.as_ref() == Some(&from);
        let granted = free
            && position >= self.position
            && self.config_ok(config)
            && self.role != Role::Writer;
        if granted {
            if self.role == Role::PreCandidate {
                // Our own pre-campaign is over: we now promise to this candidate.
                self.role = Role::Follower;
                self.campaign = CampaignState::default();
            }
            if self.voted_for.is_none() {
                self.voted_for = Some(from.clone());
                self.persist(out);
            }
            self.make_promise(now, from.clone());
            self.reset_election_deadline(now);
        }
        out.push(Effect::Send {
            to: from,
            msg: Message::VoteResponse {
                term: self.term,
                granted,
                sent_ms,
                membership: self.gossip_for(config),
            },
        });
    }

    // ----- transitions ------------------------------------------------------------------

    fn make_promise(&mut self, now: Millis, holder: NodeId) {
        let until = now.saturating_add(self.timing.election_timeout_min_ms());
        assert!(
            until >= self.promise.until,
            "quasar: a new promise must not end before an older one"
        );
        self.promise = Promise {
            term: self.term,
            holder: Some(holder),
            until,
        };
    }

    fn reset_election_deadline(&mut self, now: Millis) {
        let min = self.timing.election_timeout_min_ms().0;
        let jitter = self
            .rng
            .below(self.timing.election_timeout_max_ms().0 - min);
        self.election_deadline = Millis(now.0.saturating_add(min + jitter));
    }

    fn set_term(&mut self, term: Term, out: &mut Vec<Effect>) {
        assert!(term >= self.term, "quasar: terms only grow");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.persist(out);
        }
    }

    fn become_follower(
        &mut self,
        now: Millis,
        term: Term,
        leader: Option<NodeId>,
        out: &mut Vec<Effect>,
    ) {
        let was_writer_of = (self.role == Role::Writer).then_some(self.term);
        self.set_term(term, out);
        if let Some(old_term) = was_writer_of {
            out.push(Effect::StepDown { term: old_term });
        }
        self.role = Role::Follower;
        self.writer = None;
        self.campaign = CampaignState::default();
        if leader.is_none() || self.leader != leader {
            self.leader_contact_at = None;
        }
        self.leader = leader;
        self.reset_election_deadline(now);
    }

    /// Election timeout: ask whether we could win before raising any term.
    fn pre_campaign(&mut self, now: Millis, out: &mut Vec<Effect>) {
        assert!(self.role != Role::Writer);
        assert!(!self.fenced, "quasar: a fenced node pre-campaigned");
        assert!(self.may_stand(), "quasar: a non-voter pre-campaigned");
        if self.term.0 == u64::MAX {
            return; // no term left to campaign for (only a corrupt persisted state gets here)
        }
        self.role = Role::PreCandidate;
        self.leader = None;
        self.leader_contact_at = None;
        self.campaign = CampaignState {
            started_at: now,
            ..CampaignState::default()
        };
        self.reset_election_deadline(now);
        if self.has_quorum(std::iter::empty()) {
            self.campaign(now, None, out);
            return;
        }
        let msg = Message::PreVote {
            term: Term(self.term.0 + 1),
            position: self.position,
            config: self.config_version(),
        };
        for peer in self.vote_recipients() {
            out.push(Effect::Send {
                to: peer.clone(),
                msg: msg.clone(),
            });
        }
    }

    /// A real campaign: new term, vote for ourselves, persist, then ask the peers.
    fn campaign(&mut self, now: Millis, transfer_from: Option<NodeId>, out: &mut Vec<Effect>) {
        let me = self.id.clone();
        assert!(
            transfer_from.is_some() || !self.in_promise(now, &me),
            "quasar: campaign inside a promise"
        );
        assert!(!self.fenced, "quasar: a fenced node campaigned");
        assert!(self.may_stand(), "quasar: a non-voter campaigned");
        assert!(self.role != Role::Writer);
        if self.term.0 == u64::MAX {
            return;
        }
        self.term = Term(self.term.0 + 1);
        self.voted_for = Some(me.clone());
        self.persist(out);
        self.role = Role::Candidate;
        self.leader = None;
        self.leader_contact_at = None;
        // Our own vote is an ack at `now`: the same promise as every voter's.
        self.promise = Promise {
            term: self.term,
            holder: Some(me),
            until: self
                .promise
                .until
                .max(now.saturating_add(self.timing.election_timeout_min_ms())),
        };
        self.campaign = CampaignState {
            started_at: now,
            ..CampaignState::default()
        };
        self.reset_election_deadline(now);
        if self.has_quorum(std::iter::empty()) {
            self.become_writer(now, out);
            return;
        }
        let msg = Message::Vote {
            term: self.term,
            position: self.position,
            sent_ms: now,
            transfer_from,
            config: self.config_version(),
        };
        for peer in self.vote_recipients() {
            out.push(Effect::Send {
                to: peer.clone(),
                msg: msg.clone(),
            });
        }
    }

    fn become_writer(&mut self, now: Millis, out: &mut Vec<Effect>) {
        assert_eq!(self.role, Role::Candidate);
        assert!(!self.fenced, "quasar: a fenced node won an election");
        assert_eq!(self.voted_for.as_ref(), Some(&self.id));
        assert!(self.has_quorum(self.campaign.granted.keys()));
        let campaign_at = self.campaign.started_at;
        self.role = Role::Writer;
        self.leader = Some(self.id.clone());
        self.writer = Some(WriterState {
            campaign_at,
            acked_sent: std::mem::take(&mut self.campaign.granted),
            peer_position: BTreeMap::new(),
            peer_config: BTreeMap::new(),
            departing: BTreeSet::new(),
            catch_up: None,
            leave_goal: None,
            last_heartbeat_sent: campaign_at,
            next_heartbeat_at: now,
            lease_basis: campaign_at,
            lease_until: Millis::ZERO,
            transfer: None,
        });
        self.campaign = CampaignState::default();
        let lease_until = self.lease_from(campaign_at);
        if let Some(w) = self.writer.as_mut() {
            w.lease_until = lease_until;
        }
        out.push(Effect::BecomeWriter {
            term: self.term,
            lease_until,
        });
        self.broadcast_heartbeat(now, out);
    }

    /// `lease_until` for a majority ack of something we sent at `sent`.
    fn lease_from(&self, sent: Millis) -> Millis {
        let lease_until = sent.saturating_add(self.timing.lease_ms());
        assert!(
            lease_until.saturating_add(self.timing.lease_margin_ms())
                <= sent.saturating_add(self.timing.election_timeout_min_ms()),
            "quasar: lease_until must end a margin before the followers' promise"
        );
        lease_until
    }

    fn broadcast_heartbeat(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let interval = self.timing.heartbeat_interval_ms();
        let Some(w) = self.writer.as_mut() else {
            unreachable!("heartbeat without writer state")
        };
        w.last_heartbeat_sent = now;
        w.next_heartbeat_at = now.saturating_add(interval);
        // We ack our own heartbeat as we send it, and promise like any follower.
        let me = self.id.clone();
        self.make_promise(now, me);
        // The configuration rides along to every peer that has not acked holding it, and to the
        // members just removed (so that they learn it and never campaign again).
        let Some(w) = self.writer.as_ref() else {
            unreachable!("heartbeat without writer state")
        };
        let membership = self.membership.as_ref();
        let version = membership.map(|m| m.version);
        for peer in self.peers.iter().chain(w.departing.iter()) {
            let behind = version.is_some() && w.peer_config.get(peer).copied() != version;
            out.push(Effect::Send {
                to: peer.clone(),
                msg: Message::Heartbeat {
                    term: self.term,
                    sent_ms: now,
                    position: self.position,
                    membership: membership.filter(|_| behind).map(|m| Box::new(m.clone())),
                },
            });
        }
        self.renew_lease(now, out);
    }

    /// The lease counts from the newest send time that a quorum (us included) has acked: in a
    /// joint configuration, a majority of each half.
    fn renew_lease(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let (Some(w), Some(q)) = (self.writer.as_ref(), self.quorum.as_ref()) else {
            return;
        };
        let mut acked: BTreeMap<NodeId, u64> =
            w.acked_sent.iter().map(|(p, t)| (p.clone(), t.0)).collect();
        acked.insert(self.id.clone(), w.last_heartbeat_sent.0);
        let basis = Millis(q.committed_index(&acked));
        assert!(basis <= now, "quasar: lease basis in the future");
        if basis <= w.lease_basis {
            return;
        }
        let lease_until = self.lease_from(basis);
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        w.lease_basis = basis;
        if lease_until > w.lease_until {
            w.lease_until = lease_until;
            out.push(Effect::LeaseRenewed { lease_until });
        }
    }

    fn set_fenced(&mut self, now: Millis, fenced: bool, out: &mut Vec<Effect>) {
        let was = std::mem::replace(&mut self.fenced, fenced);
        if !fenced || was {
            return;
        }
        match self.role {
            Role::Follower => {}
            // Abandon our own campaign (always safe: it only forgoes a win).
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(now, self.term, None, out);
            }
            Role::Writer => {
                // No more writes from here on (`can_accept_writes` checks `fenced`); hand over
                // (`hand_over_target`), else give the role up at once.
                let in_progress = self.transferring_to().is_some();
                match self.hand_over_target() {
                    _ if in_progress => {}
                    Some(to) => self.start_transfer(now, to, out),
                    None => self.become_follower(now, self.term, None, out),
                }
            }
        }
    }

    fn start_transfer(&mut self, now: Millis, to: NodeId, out: &mut Vec<Effect>) {
        if self.transfer_refusal(&to).is_some() {
            return;
        }
        let deadline = now.saturating_add(self.timing.election_timeout_min_ms());
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        if w.transfer.is_some() {
            return;
        }
        // From here on no write is accepted; the lease is given up when TimeoutNow is sent.
        w.transfer = Some(Transfer { to, deadline });
        self.try_finish_transfer(now, out);
    }

    fn try_finish_transfer(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let Some(t) = &w.transfer else {
            return;
        };
        let caught_up = w
            .peer_position
            .get(&t.to)
            .is_some_and(|p| *p >= self.position);
        if !caught_up {
            return;
        }
        let to = t.to.clone();
        // Give the lease up first: once TimeoutNow is out, the target may win at once.
        w.lease_until = w.lease_until.min(now);
        let term = self.term;
        self.become_follower(now, term, None, out);
        assert!(!self.can_accept_writes(now));
        out.push(Effect::Send {
            to,
            msg: Message::TimeoutNow { term },
        });
    }

    // ----- invariants -------------------------------------------------------------------

    fn check_invariants(
        &self,
        now: Millis,
        before: (Term, Option<NodeId>, Option<ConfigVersion>),
        out: &[Effect],
    ) {
        let (term_before, voted_before, config_before) = before;
        assert!(self.term >= term_before, "quasar: term went down");
        let config_now = self.membership.as_ref().map(|m| m.version);
        assert!(
            config_now >= config_before,
            "quasar: the configuration went back from {config_before:?} to {config_now:?}"
        );
        if config_now != config_before {
            assert!(
                out.iter().any(|e| matches!(
                    e,
                    Effect::Persist { membership, .. } if membership.as_ref().map(|m| m.version) == config_now
                )),
                "quasar: a configuration taken without being persisted"
            );
        }
        if self.role != Role::Follower && !crate::buggify!(RemovedCampaigns) {
            assert!(
                self.is_voter(),
                "quasar: {} stands for election or writes but is not a voter",
                self.id
            );
        }
        if self.term == term_before && voted_before.is_some() {
            assert_eq!(
                self.voted_for, voted_before,
                "quasar: voted twice in term {}",
                self.term
            );
        }
        if self.fenced {
            assert!(
                !self.can_accept_writes(now),
                "quasar: a fenced node accepts writes"
            );
            assert!(
                matches!(self.role, Role::Follower | Role::Writer),
                "quasar: a fenced node stands for election"
            );
            if self.role == Role::Writer {
                assert!(
                    self.transferring_to().is_some(),
                    "quasar: a fenced writer that is not handing over"
                );
            }
        }
        match self.role {
            Role::Writer => {
                assert_eq!(self.leader.as_ref(), Some(&self.id));
                assert_eq!(self.voted_for.as_ref(), Some(&self.id));
                let w = self.writer.as_ref().expect("writer state");
                assert!(w.lease_basis <= now);
                assert!(
                    w.lease_until
                        <= w.lease_basis
                            .saturating_add(self.timing.election_timeout_min_ms())
                );
            }
            _ => {
                assert!(self.writer.is_none());
                assert!(!self.can_accept_writes(now));
            }
        }
        // Persist must come before any Send that depends on it.
        if let Some(last_persist) = out
            .iter()
            .rposition(|e| matches!(e, Effect::Persist { .. }))
        {
            assert!(
                !out[..last_persist]
                    .iter()
                    .any(|e| matches!(e, Effect::Send { .. })),
                "quasar: a Send precedes a Persist"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    fn node(id: &str, peers: &[&str]) -> Node {
        Node::new(
            NodeId::from(id),
            ids(peers),
            Timing::default(),
            PersistedState::default(),
            7,
            Millis(0),
        )
        .unwrap()
    }

    #[test]
    fn single_node_elects_itself_after_waiting_out_its_promise() {
        let mut n = node("a", &[]);
        assert!(n.step(Millis(500), Input::Tick).is_empty());
        let mut now = 500;
        while n.role() != Role::Writer {
            now += 10;
            let _ = n.step(Millis(now), Input::Tick);
            assert!(now < 3000);
        }
        assert!(now >= 1000);
        assert!(n.can_accept_writes(Millis(now)));
        assert_eq!(n.term(), Term(1));
    }

    #[test]
    fn restarted_node_ignores_votes_for_e() {
        let mut n = node("a", &["b", "c"]);
        let out = n.step(
            Millis(999),
            Input::Message {
                from: NodeId::from("b"),
                msg: Message::Vote {
                    term: Term(1),
                    position: 0,
                    sent_ms: Millis(0),
                    transfer_from: None,
                    config: ConfigVersion::default(),
                },
            },
        );
        assert!(out.is_empty());
        assert_eq!(n.term(), Term(0));
        let out = n.step(
            Millis(1000),
            Input::Message {
                from: NodeId::from("b"),
                msg: Message::Vote {
                    term: Term(1),
                    position: 0,
                    sent_ms: Millis(0),
                    transfer_from: None,
                    config: ConfigVersion::default(),
                },
            },
        );
        assert_eq!(
            out[0],
            Effect::Persist {
                term: Term(1),
                voted_for: None,
                membership: n.membership().cloned(),
            }
        );
        assert!(out.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: Message::VoteResponse { granted: true, .. },
                ..
            }
        )));
    }

    fn elect_single(n: &mut Node) -> u64 {
        let mut now = 0;
        while n.role() != Role::Writer {
            now += 10;
            let _ = n.step(Millis(now), Input::Tick);
            assert!(now < 3000, "never elected");
        }
        now
    }

    #[test]
    fn a_fenced_node_never_stands_for_election() {
        let mut n = node("a", &[]);
        let _ = n.step(Millis(0), Input::SetFenced(true));
        assert!(n.is_fenced());
        for now in (10..6000).step_by(10) {
            let _ = n.step(Millis(now), Input::Tick);
            let _ = n.step(Millis(now), Input::Campaign);
            assert_eq!(n.role(), Role::Follower);
            assert!(!n.can_accept_writes(Millis(now)));
        }
        let _ = n.step(Millis(6000), Input::SetFenced(false));
        let mut now = 6000;
        while n.role() != Role::Writer {
            now += 10;
            let _ = n.step(Millis(now), Input::Tick);
            assert!(now < 9000);
        }
    }

    #[test]
    fn a_fenced_writer_stops_accepting_writes_at_once() {
        // Alone, it has nobody to hand over to: it steps down.
        let mut n = node("a", &[]);
        let now = elect_single(&mut n);
        assert!(n.can_accept_writes(Millis(now)));
        let out = n.step(Millis(now), Input::SetFenced(true));
        assert!(!n.can_accept_writes(Millis(now)));
        assert!(out.contains(&Effect::StepDown { term: Term(1) }), "{out:?}");
        assert_eq!(n.role(), Role::Follower);
    }

    #[test]
    fn a_fenced_node_refuses_timeout_now_but_still_votes() {
        let mut n = node("a", &["b", "c"]);
        let _ = n.step(Millis(0), Input::SetFenced(true));
        let out = n.step(
            Millis(1500),
            Input::Message {
                from: NodeId::from("b"),
                msg: Message::TimeoutNow { term: Term(0) },
            },
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(n.role(), Role::Follower);
        assert_eq!(n.drops().fenced, 1);
        let out = n.step(
            Millis(1500),
            Input::Message {
                from: NodeId::from("b"),
                msg: Message::Vote {
                    term: Term(1),
                    position: 0,
                    sent_ms: Millis(1400),
                    transfer_from: None,
                    config: ConfigVersion::default(),
                },
            },
        );
        assert!(out.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: Message::VoteResponse { granted: true, .. },
                ..
            }
        )));
    }

    fn position(epoch: u64, position: u64) -> Input {
        Input::Position { epoch, position }
    }

    /// The node keeps the newest position report by (epoch, position): a smaller position of the
    /// same epoch is a late report and ignored, a smaller one of a newer epoch (a truncation, a
    /// snapshot) is taken, an older epoch is ignored. And a voter whose position went down
    /// grants a candidate it refused before.
    #[test]
    fn position_goes_down_only_with_a_new_epoch() {
        let mut n = node("a", &["b", "c"]);
        let _ = n.step(Millis(0), position(0, 50));
        let _ = n.step(Millis(0), position(0, 40));
        assert_eq!((n.position_epoch(), n.position()), (0, 50));
        let _ = n.step(Millis(0), position(1, 30));
        assert_eq!((n.position_epoch(), n.position()), (1, 30));
        let _ = n.step(Millis(0), position(0, 90));
        assert_eq!((n.position_epoch(), n.position()), (1, 30));
        let vote = |position| Input::Message {
            from: NodeId::from("b"),
            msg: Message::Vote {
                term: Term(1),
                position,
                sent_ms: Millis(1000),
                transfer_from: None,
                config: ConfigVersion::default(),
            },
        };
        let granted = |out: &[Effect]| {
            out.iter().any(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: Message::VoteResponse { granted: true, .. },
                        ..
                    }
                )
            })
        };
        let mut high = n.clone();
        let _ = high.step(Millis(0), position(1, 50));
        assert!(!granted(&high.step(Millis(1000), vote(40))));
        assert!(granted(&n.step(Millis(1000), vote(40))));
    }

    /// A follower whose position advances re-sends the ack of the writer's last heartbeat at
    /// once, with the new position and the same echoed send time (no lease is extended); a
    /// stale report, or no writer followed, sends nothing.
    #[test]
    fn an_advanced_position_is_acked_at_once() {
        let mut n = node("a", &["b", "c"]);
        assert!(
            n.step(Millis(0), position(0, 5)).is_empty(),
            "no writer yet"
        );
        let heartbeat = Input::Message {
            from: NodeId::from("b"),
            msg: Message::Heartbeat {
                term: Term(1),
                sent_ms: Millis(700),
                position: 9,
                membership: None,
            },
        };
        let _ = n.step(Millis(10), heartbeat);
        let acks = |out: &[Effect]| -> Vec<(NodeId, u64, Millis)> {
            out.iter()
                .filter_map(|e| match e {
                    Effect::Send {
                        to,
                        msg:
                            Message::HeartbeatAck {
                                ok: true,
                                position,
                                sent_ms,
                                ..
                            },
                    } => Some((to.clone(), *position, *sent_ms)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            acks(&n.step(Millis(20), position(0, 9))),
            vec![(NodeId::from("b"), 9, Millis(700))]
        );
        assert!(acks(&n.step(Millis(21), position(0, 8))).is_empty());
    }

    #[test]
    fn rejects_bad_peer_lists() {
        let t = Timing::default();
        let p = PersistedState::default();
        assert!(matches!(
            Node::new(
                NodeId::from("a"),
                ids(&["b", "b"]),
                t,
                p.clone(),
                0,
                Millis(0)
            ),
            Err(NodeError::DuplicatePeer { .. })
        ));
        assert!(matches!(
            Node::new(NodeId::from("a"), ids(&["a"]), t, p, 0, Millis(0)),
            Err(NodeError::SelfInPeers { .. })
        ));
    }
}
