//! The agent: the decisions of the process that runs beside Base in every pod, around its
//! election node (`quasar::Node`). Inputs in ([`Input`]: ticks, peer messages, the store's
//! position, the pod's annotations, SIGTERM), effects out ([`Effect`], performed in the order
//! given), time passed in; no I/O, no clock, no randomness but the seed given. Both the tokio
//! agent (`adapter-k8s/src/agent/driver.rs`) and the simulation (`sim/src/agent.rs`) only feed it
//! and perform what it returns; their HTTP sides answer from its queries.
//!
//! What it decides:
//! - **effect order**: the node's `Persist` comes before the `Send`s that depend on it (the
//!   caller makes it durable before sending them), and this machine adds its own effects after
//!   the node's;
//! - **fencing** from the pod annotation `hanzo.ai/fenced` (a fenced writer hands over);
//! - **transfer requests** from the pod annotation `hanzo.ai/transfer-to`, each considered once
//!   ([`TransferInbox`]), with the result as an effect ([`Effect::TransferRequest`]);
//! - **shutdown** (SIGTERM): a writer hands its role to the best peer and the process may exit
//!   once another node leads, or at the deadline ([`Effect::Exit`]);
//! - **write admission**: when a write arrives ([`Agent::admit_write`]) and again right before
//!   it is forwarded to the store ([`Agent::recheck_write`]);
//! - **members** from the pod annotation `hanzo.ai/members` (with
//!   [`Config::members_from_annotations`]): a node with no persisted configuration starts joined
//!   and bootstraps only when the annotation names it an initial member; the desired voters go to
//!   the node (`quasar::Input::SetMembers`), whose writer carries them out; every decision is
//!   [`crate::members::agent_inputs`]'s, the reasons in [`crate::members`];
//! - the answers of `GET /_ha/leader` (with the configuration, for the operator's rollout),
//!   `GET /_ha/peers` and `GET /readyz`.

use crate::control::{ANNOTATION_TRANSFER, Considered, TransferDecision, TransferInbox};
use crate::members::{ANNOTATION_MEMBERS, MembersAnnotation};
use crate::quasar::{self, Message, Node, NodeError, PersistedState, Role, Timing};
use crate::wire::{ConfigurationReport, LeaderAnswer, PeerAnswer, format_rfc3339};
use crate::{Millis, NodeId, Term};
use std::collections::{BTreeMap, BTreeSet};

/// The pod annotation that fences a replica (the operator sets it to `"true"`).
pub const ANNOTATION_FENCED: &str = "hanzo.ai/fenced";

/// How far past its lease a store accepts writes under the planted `lease-overrun` (more than
/// the followers' election timeout, which `Timing::new` refuses for a real lease).
#[cfg(madsim)]
pub const LEASE_OVERRUN_MS: u64 = 5_000;

/// What the agent reads from its pod's annotations (the downward-API file), as a whole: each
/// [`Input::Annotations`] carries the file's current content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `hanzo.ai/fenced` is `true` (trimmed, any case).
    pub fenced: bool,
    /// The raw value of `hanzo.ai/transfer-to`, if present.
    pub transfer: Option<String>,
    /// The raw value of `hanzo.ai/members` (the desired members), if present.
    pub members: Option<String>,
}

impl Annotations {
    /// From the file's `key → value` pairs.
    pub fn from_map(map: &BTreeMap<String, String>) -> Annotations {
        Annotations {
            fenced: map
                .get(ANNOTATION_FENCED)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            transfer: map.get(ANNOTATION_TRANSFER).cloned(),
            members: map.get(ANNOTATION_MEMBERS).cloned(),
        }
    }
}

/// Who the agent is and whom it knows.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The URL clients and peers reach this agent at.
    pub self_url: String,
    /// The address book: each peer's client URL (what `/_ha/leader` and redirects name).
    pub peers: Vec<(NodeId, String)>,
    pub timing: Timing,
    /// How long a writer waits for a successor on SIGTERM before it exits anyway.
    pub shutdown_timeout: Millis,
    /// The desired members come from the annotation `hanzo.ai/members` (the operator's pods):
    /// the address book is then only whom the agent may talk to, a node with no persisted
    /// configuration starts joined, and `/_ha/leader` reports the configuration. Without it the
    /// address book are the initial members (for use without the operator).
    pub members_from_annotations: bool,
}

/// What happens to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// A peer's message (authenticated by the caller).
    Message { from: NodeId, msg: Message },
    /// The local store's replication position (see `quasar::Input::Position`).
    Position { epoch: u64, position: u64 },
    /// The pod's annotations as they are now (the file re-read; unreadable: the default).
    Annotations(Annotations),
    /// SIGTERM: hand the writer role over if held, then exit ([`Effect::Exit`]).
    Shutdown,
}

/// Why a hand-over started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOverCause {
    /// A transfer request (the pod annotation).
    Request,
    /// The pod was fenced.
    Fenced,
    /// SIGTERM.
    Shutdown,
}

/// What the caller must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Make this durable (replace the stored state) before performing any later effect.
    Persist(PersistedState),
    Send {
        to: NodeId,
        msg: Message,
    },
    BecomeWriter {
        term: Term,
        lease_until: Millis,
    },
    LeaseRenewed {
        lease_until: Millis,
    },
    StepDown {
        term: Term,
    },
    /// The fence now applied (the role is the one the node had when it was applied).
    FenceChanged {
        fenced: bool,
        role: Role,
    },
    /// A new transfer request was read, with what became of it (the request's result).
    TransferRequest(Considered),
    /// A hand-over of the writer role started (to `to`; `None` when the node stepped down with
    /// no peer to hand to).
    HandOver {
        to: Option<NodeId>,
        cause: HandOverCause,
    },
    /// SIGTERM reached a writer that knows no peer to hand over to.
    NoHandOverTarget,
    /// The annotation `hanzo.ai/members` was acted on: this node bootstrapped as one of the
    /// initial members (`bootstrap`), and/or the node was told new desired voters.
    Members {
        bootstrap: bool,
        voters: Option<BTreeSet<NodeId>>,
    },
    /// The annotation `hanzo.ai/members` cannot be read; nothing changed.
    MembersUnreadable(String),
    /// Shutdown may finish: the process exits. `handed_over`: another node leads (or this one
    /// was not the writer); `false` when the deadline passed first.
    Exit {
        handed_over: bool,
    },
}

/// Where a write goes, as this agent decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Forward it to the local store, fenced by this term (`X-Base-Term`).
    Forward { term: Term },
    /// Another node is the writer: send the client there (`307`).
    Redirect { url: String },
    /// No writer is known (`503 no_writer`).
    NoWriter,
}

/// Whether a read that must see every acknowledged write is served here, as this agent decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadAdmission {
    /// Serve it from the local store.
    Serve,
    /// Not the writer (or not within its lease): refused as a write would be (`307`, `503
    /// no_writer`), so that the gateway looks for the writer again.
    Refuse(Admission),
    /// The writer, but no entry of its term is committed yet, so its commit may not cover every
    /// write acknowledged by an earlier writer (`503 term_start_not_committed`).
    TermStartNotCommitted,
}

/// The answer of `GET /readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// No writer seen since start (`503 no_writer_seen`).
    NoWriterSeen,
    Ready,
    /// Ready, fenced: reads only.
    ReadyFenced,
}

struct Shutdown {
    deadline: Millis,
    was_writer: bool,
}

/// One pod's agent (see the module doc).
pub struct Agent {
    node: Node,
    self_url: String,
    /// Peer → (client URL, last message received, if any).
    peers: BTreeMap<NodeId, (String, Option<Millis>)>,
    shutdown_timeout: Millis,
    inbox: TransferInbox,
    members_from_annotations: bool,
    /// The last `hanzo.ai/members` value acted on (a re-read of the same file does nothing).
    members_seen: Option<String>,
    /// Effects of the start (a bootstrap's `Persist`), returned by the first step.
    pending: Vec<Effect>,
    seen_writer: bool,
    shutdown: Option<Shutdown>,
    exited: bool,
    /// The planted `vote-cache`: the term of the last vote granted.
    #[cfg(madsim)]
    granted_term: Option<Term>,
}

impl Agent {
    /// An agent starting at `now` with its persisted election state and the pod's annotations as
    /// read before the node may campaign. A transfer request already there is old: this node
    /// holds no role yet, so it is refused and remembered, and never acts later.
    pub fn new(
        config: Config,
        persisted: PersistedState,
        seed: u64,
        now: Millis,
        annotations: &Annotations,
    ) -> Result<Agent, NodeError> {
        let ids = config.peers.iter().map(|(id, _)| id.clone()).collect();
        // See `crate::members` for why a new node joins and bootstraps only from the annotation.
        let start = if config.members_from_annotations && persisted.membership.is_none() {
            Node::join
        } else {
            Node::new
        };
        let mut node = start(config.id, ids, config.timing, persisted, seed, now)?;
        let effects = node.step(now, quasar::Input::SetFenced(fence_of(annotations)));
        assert!(effects.is_empty(), "a node with no role fences silently");
        let mut inbox = TransferInbox::default();
        let _ = inbox.offer(annotations.transfer.as_deref(), &node);
        let mut agent = Agent {
            node,
            self_url: config.self_url,
            peers: config
                .peers
                .into_iter()
                .map(|(id, url)| (id, (url, None)))
                .collect(),
            shutdown_timeout: config.shutdown_timeout,
            inbox,
            members_from_annotations: config.members_from_annotations,
            members_seen: None,
            pending: Vec::new(),
            seen_writer: false,
            shutdown: None,
            exited: false,
            #[cfg(madsim)]
            granted_term: None,
        };
        // The members at start, before the node may campaign (it waits out its promise).
        let mut out = Vec::new();
        agent.members(now, annotations.members.as_deref(), &mut out);
        agent.pending = out;
        Ok(agent)
    }

    /// The election node (read-only: every input goes through [`Agent::step`]).
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn id(&self) -> &NodeId {
        self.node.id()
    }

    pub fn is_fenced(&self) -> bool {
        self.node.is_fenced()
    }

    /// Shutdown finished ([`Effect::Exit`] was returned): later inputs do nothing.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// The client URL of `id` (this node's own included), empty if unknown.
    pub fn url_of(&self, id: &NodeId) -> String {
        if id == self.node.id() {
            return self.self_url.clone();
        }
        self.peers
            .get(id)
            .map(|(url, _)| url.clone())
            .unwrap_or_default()
    }

    /// Feeds one input at local time `now`; returns the effects to perform, in order.
    pub fn step(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        let mut out = std::mem::take(&mut self.pending);
        if self.exited {
            return out;
        }
        match input {
            Input::Tick => self.step_node(now, quasar::Input::Tick, None, &mut out),
            Input::Message { from, msg } => {
                if let Some((_, seen)) = self.peers.get_mut(&from) {
                    *seen = Some(now);
                }
                if let Some(reply) = self.planted_vote_cache(&from, &msg) {
                    out.push(reply);
                } else {
                    self.step_node(now, quasar::Input::Message { from, msg }, None, &mut out);
                }
            }
            Input::Position { epoch, position } => self.step_node(
                now,
                quasar::Input::Position { epoch, position },
                None,
                &mut out,
            ),
            Input::Annotations(annotations) => self.annotations(now, &annotations, &mut out),
            Input::Shutdown => self.start_shutdown(now, &mut out),
        }
        if self.node.writer_view(now).writer.is_some() {
            self.seen_writer = true;
        }
        self.check_shutdown(now, &mut out);
        out
    }

    /// The desired members of the annotation, once per value (`crate::members::agent_inputs`).
    fn members(&mut self, now: Millis, value: Option<&str>, out: &mut Vec<Effect>) {
        if !self.members_from_annotations
            || value.is_none()
            || self.members_seen.as_deref() == value
        {
            return;
        }
        self.members_seen = value.map(str::to_string);
        let annotation = match value.map(MembersAnnotation::parse) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                out.push(Effect::MembersUnreadable(e.to_string()));
                return;
            }
            None => return,
        };
        let inputs = crate::members::agent_inputs(Some(&annotation), &self.node);
        if inputs.is_empty() {
            return;
        }
        let mut bootstrap = false;
        let mut voters = None;
        for input in inputs {
            match &input {
                quasar::Input::Bootstrap(_) => bootstrap = true,
                quasar::Input::SetMembers(v) => voters = Some(v.clone()),
                _ => {}
            }
            self.step_node(now, input, None, out);
        }
        out.push(Effect::Members { bootstrap, voters });
    }

    /// The fence first, then the transfer request (the order the operator's plan writes them),
    /// then the desired members.
    fn annotations(&mut self, now: Millis, annotations: &Annotations, out: &mut Vec<Effect>) {
        let fenced = fence_of(annotations);
        if fenced != self.node.is_fenced() {
            let role = self.node.role();
            out.push(Effect::FenceChanged { fenced, role });
            let cause = fenced.then_some(HandOverCause::Fenced);
            self.step_node(now, quasar::Input::SetFenced(fenced), cause, out);
        }
        if let Some(considered) = self
            .inbox
            .offer(annotations.transfer.as_deref(), &self.node)
        {
            let start = match &considered.decision {
                TransferDecision::Start(to) => Some(to.clone()),
                TransferDecision::Refused(_) => None,
            };
            out.push(Effect::TransferRequest(considered));
            if let Some(to) = start {
                let input = quasar::Input::TransferWriter { to };
                self.step_node(now, input, Some(HandOverCause::Request), out);
            }
        }
        self.members(now, annotations.members.as_deref(), out);
    }

    fn start_shutdown(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.shutdown.is_some() {
            return;
        }
        let was_writer = self.node.role() == Role::Writer;
        self.shutdown = Some(Shutdown {
            deadline: now.saturating_add(self.shutdown_timeout),
            was_writer,
        });
        if !was_writer {
            return;
        }
        // Under a steady stream of writes no peer is ever exactly up to date: the most advanced
        // one will do, as the transfer stops new writes and waits for it to catch up.
        match self.node.hand_over_target() {
            Some(to) => {
                let input = quasar::Input::TransferWriter { to };
                self.step_node(now, input, Some(HandOverCause::Shutdown), out);
            }
            None => out.push(Effect::NoHandOverTarget),
        }
    }

    /// Shutdown may proceed once this node was not the writer, or another node now is (heard
    /// from it), or at the deadline.
    fn check_shutdown(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let Some(s) = &self.shutdown else {
            return;
        };
        let handed_over = !s.was_writer
            || (self.node.role() != Role::Writer
                && self.node.leader().is_some_and(|l| l != self.node.id()));
        if handed_over || now >= s.deadline {
            self.exited = true;
            out.push(Effect::Exit { handed_over });
        }
    }

    /// Steps the node and passes its effects on; reports a hand-over that this input started.
    fn step_node(
        &mut self,
        now: Millis,
        input: quasar::Input,
        cause: Option<HandOverCause>,
        out: &mut Vec<Effect>,
    ) {
        let was_writer = self.node.role() == Role::Writer;
        let was_transferring = was_writer && self.node.transferring_to().is_some();
        let term = self.node.term();
        let first = out.len();
        for effect in self.node.step(now, input) {
            out.push(match effect {
                // With members from the annotation, the configuration is persisted: after its
                // first start a node never takes its voters from its environment again (`quasar`
                // module doc, "Membership changes"). Without, the address book stays the voters
                // at every start, as before (a restart with another address book follows it).
                quasar::Effect::Persist {
                    term,
                    voted_for,
                    membership,
                } => Effect::Persist(PersistedState {
                    term,
                    voted_for,
                    membership: membership.filter(|_| self.members_from_annotations),
                }),
                quasar::Effect::Send { to, msg } => {
                    self.remember_grant(&msg);
                    Effect::Send { to, msg }
                }
                quasar::Effect::BecomeWriter { term, lease_until } => {
                    Effect::BecomeWriter { term, lease_until }
                }
                quasar::Effect::LeaseRenewed { lease_until } => {
                    Effect::LeaseRenewed { lease_until }
                }
                quasar::Effect::StepDown { term } => Effect::StepDown { term },
            });
        }
        if let Some(cause) = cause
            && was_writer
            && !was_transferring
        {
            // Still waiting for the target to catch up, or already gave it the role (TimeoutNow).
            let to = self.node.transferring_to().cloned().or_else(|| {
                out[first..].iter().find_map(|e| match e {
                    Effect::Send {
                        to,
                        msg: Message::TimeoutNow { .. },
                    } => Some(to.clone()),
                    _ => None,
                })
            });
            let stepped_down = self.node.role() != Role::Writer && self.node.term() == term;
            if to.is_some() || stepped_down {
                out.push(Effect::HandOver { to, cause });
            }
        }
    }

    #[cfg(madsim)]
    fn remember_grant(&mut self, msg: &Message) {
        if crate::buggify!(VoteCache)
            && let Message::VoteResponse {
                term,
                granted: true,
                ..
            } = msg
        {
            self.granted_term = Some(*term);
        }
    }

    #[cfg(not(madsim))]
    fn remember_grant(&mut self, _msg: &Message) {}

    /// The planted `vote-cache`: a vote request of a term a vote was already granted in is
    /// answered from the memo, without asking the election, whoever the candidate.
    #[cfg(madsim)]
    fn planted_vote_cache(&self, from: &NodeId, msg: &Message) -> Option<Effect> {
        let Message::Vote { term, sent_ms, .. } = *msg else {
            return None;
        };
        if !crate::buggify!(VoteCache) || self.granted_term != Some(term) {
            return None;
        }
        Some(Effect::Send {
            to: from.clone(),
            msg: Message::VoteResponse {
                term,
                granted: true,
                sent_ms,
                membership: None,
            },
        })
    }

    #[cfg(not(madsim))]
    fn planted_vote_cache(&self, _from: &NodeId, _msg: &Message) -> Option<Effect> {
        None
    }

    // ----- queries -------------------------------------------------------------------------

    /// Whether this node accepts a write at `now` (the writer, inside its lease, not fenced, not
    /// handing over).
    fn accepts_writes(&self, now: Millis) -> bool {
        #[cfg(madsim)]
        if crate::buggify!(LeaseOverrun) {
            return self.node.role() == Role::Writer
                && self
                    .node
                    .can_accept_writes(now.saturating_sub(Millis(LEASE_OVERRUN_MS)));
        }
        self.node.can_accept_writes(now)
    }

    /// A write (or a read that needs the writer) arrives.
    pub fn admit_write(&self, now: Millis) -> Admission {
        if self.accepts_writes(now) {
            return Admission::Forward {
                term: self.node.term(),
            };
        }
        self.not_here(now)
    }

    /// A read that must see every acknowledged write (`X-Base-Writer: required`, `level=strong`,
    /// and the reads the gateway pins to the writer after a client's write): only the writer
    /// within its lease serves it, once `term_start_committed(term)` says an entry of its term
    /// has committed (the replication coordinator's `strong_reads_ready`, Raft §8).
    pub fn admit_writer_read(
        &self,
        now: Millis,
        term_start_committed: impl FnOnce(Term) -> bool,
    ) -> ReadAdmission {
        match self.admit_write(now) {
            Admission::Forward { term } if term_start_committed(term) => ReadAdmission::Serve,
            Admission::Forward { .. } => ReadAdmission::TermStartNotCommitted,
            other => ReadAdmission::Refuse(other),
        }
    }

    /// The fencing check as late as it can be: right before the write admitted in term
    /// `admitted` leaves for the store. The lease may have passed, or the node been fenced or
    /// deposed, since [`Agent::admit_write`]; the term to forward with is the current one.
    pub fn recheck_write(&self, now: Millis, admitted: Term) -> Admission {
        if crate::buggify!(NoRecheck) {
            return Admission::Forward { term: admitted };
        }
        self.admit_write(now)
    }

    fn not_here(&self, now: Millis) -> Admission {
        match self.node.writer_view(now).writer {
            Some(w) if w != *self.node.id() => match self.url_of(&w) {
                url if url.is_empty() => Admission::NoWriter,
                url => Admission::Redirect { url },
            },
            _ => Admission::NoWriter,
        }
    }

    /// The writer this node believes in (its URL, empty if none) and the term: the
    /// `X-Base-Leader` and `X-Base-Term` headers of every answer.
    pub fn leader_headers(&self, now: Millis) -> (String, Term) {
        let view = self.node.writer_view(now);
        let url = view.writer.map(|w| self.url_of(&w)).unwrap_or_default();
        (url, view.term)
    }

    /// `GET /_ha/leader`.
    pub fn leader_answer(&self, now: Millis) -> LeaderAnswer {
        let view = self.node.writer_view(now);
        // Reported only where the agent carries out the published members: the operator's
        // rollout then waits on it (elsewhere on readiness alone).
        let configuration = self
            .members_from_annotations
            .then(|| self.node.membership())
            .flatten()
            .map(|m| ConfigurationReport::of(m, self.node.membership_done()));
        match view.writer {
            Some(id) => LeaderAnswer {
                leader_url: self.url_of(&id),
                node_id: id.to_string(),
                term: view.term.0,
                lease_expires: view.lease_until.map(format_rfc3339).unwrap_or_default(),
                configuration,
            },
            None => LeaderAnswer {
                leader_url: String::new(),
                node_id: String::new(),
                term: view.term.0,
                lease_expires: String::new(),
                configuration,
            },
        }
    }

    /// `GET /_ha/peers`: every peer, up if heard from within the shortest election timeout,
    /// sorted by ordinal then name.
    pub fn peers_answer(&self, now: Millis) -> Vec<PeerAnswer> {
        let window = self.node.timing().election_timeout_min_ms();
        // With members from the annotation the address book lists every ordinal a Base may
        // have: the members of the configuration are shown.
        let members = self
            .members_from_annotations
            .then(|| self.node.membership().map(|m| m.members()))
            .flatten();
        let mut list: Vec<PeerAnswer> = self
            .peers
            .iter()
            .filter(|(id, _)| members.as_ref().is_none_or(|m| m.contains(*id)))
            .map(|(id, (url, seen))| PeerAnswer {
                node_id: id.to_string(),
                target: url.clone(),
                up: seen.is_some_and(|s| now.saturating_sub(s) <= window),
                ordinal: ordinal_of(id.as_str()),
                last_seen: seen.map(format_rfc3339).unwrap_or_default(),
            })
            .collect();
        list.sort_by(|a, b| (a.ordinal, &a.node_id).cmp(&(b.ordinal, &b.node_id)));
        list
    }

    /// `GET /readyz`: ready once a writer was seen. A fenced replica stays ready: it serves
    /// reads (and redirects writes).
    pub fn readiness(&self) -> Readiness {
        match (self.seen_writer, self.node.is_fenced()) {
            (false, _) => Readiness::NoWriterSeen,
            (true, false) => Readiness::Ready,
            (true, true) => Readiness::ReadyFenced,
        }
    }
}

/// The fence the node applies: the annotation's, unless the planted `ignore-fence` never reads it.
fn fence_of(annotations: &Annotations) -> bool {
    annotations.fenced && !crate::buggify!(IgnoreFence)
}

/// The numeric suffix of a StatefulSet pod name (`foo-3` → 3), or −1.
pub fn ordinal_of(id: &str) -> i64 {
    id.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<i64>().ok())
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests;
