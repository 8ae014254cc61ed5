//! The gateway's leader tracker: which replica gets a request.
//!
//! A pure state machine, driven by three kinds of input, each with `now` passed in:
//! - a **poll result** from a replica (its `GET /_ha/leader` answer as a [`LeaderClaim`], or a failure);
//! - a **request arrival** ([`Request`]) → a [`Route`]: forward to a replica, or reject (`503`);
//! - a **request outcome** ([`Outcome`]) → an [`AfterOutcome`]: done, retry once, or give up.
//!
//! The rules (ARCHITECTURE.md §1, FIELDS.md "What the Hanzo gateway polls"):
//! - Follow the highest term ever seen; never go back to a lower one. A replica that reports a lower
//!   term than that is stale: its claims are ignored, and it gets neither reads nor writes.
//! - The writer is the one node that replicas at the highest term name, with an unexpired lease. When
//!   its lease passes without a fresh poll renewing it, the tracker forgets it: `503 no_writer` rather
//!   than a guess. Two different writers named for one term (which a correct election never does)
//!   also give no writer.
//! - Writes (and requests marked `X-Base-Writer: required`) go to the writer. Reads go round robin to
//!   the ready replicas (polled OK recently, not stale, not found unreachable since).
//! - After a client's write reached the writer, that client's reads go to the writer for the
//!   read-your-writes TTL (a pin), or are rejected when no writer is known, never sent to a follower.
//! - A request is retried once, and only when it never reached a replica or the replica refused it
//!   saying it is not the writer (the agent's `307` / `503 no_writer`: nothing was applied). One
//!   that may have been applied (a timeout after sending, `504 commit_unknown`) is never sent again.
//! - When a request that went to the writer fails (it refuses, saying it is not the writer, or
//!   cannot be reached, or the connection breaks or times out), the writer is **lost**: it is not
//!   trusted again until its own answer to a later poll names it, and every replica is due for a
//!   poll at once ([`AfterOutcome::repoll`]), then every [`HUNT_POLL`] while no writer is known. A
//!   request that is safe to send again is held until a poll finds a writer (at most
//!   [`TrackerConfig::hold`]; [`Tracker::route_held`]) and then sent there: after `kubectl delete
//!   pod <writer>` the first write lands on the new writer as soon as a poll finds it, not when the
//!   old writer's lease passes or a poll interval later.
//! - Memory is bounded: at most [`MAX_PINS`] pins (the oldest evicted first), expired pins are
//!   dropped as time passes, client ids are cut to [`MAX_CLIENT_ID_BYTES`].

use crate::ids::{Millis, NodeId, Term};
use crate::wire::{self, LeaderAnswer, WireError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The most read-your-writes pins the tracker keeps; at the cap the pin that expires first goes.
pub const MAX_PINS: usize = 100_000;
/// Client ids longer than this are cut, so that a pin costs a bounded amount of memory.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
/// The most replicas one tracker routes to (a Base is a small odd number of replicas).
pub const MAX_REPLICAS: usize = 64;
/// Never poll the writer more often than this, however short its lease looks.
pub const MIN_WRITER_POLL: Millis = Millis(50);
/// While no writer is known, every replica is polled at least this often: a new writer is found
/// within this of its election, not within a poll interval (up to seconds) — most of a failover
/// otherwise. Ten tiny GETs a second per replica, and only while there is no writer.
pub const HUNT_POLL: Millis = Millis(100);

/// How long a request that the writer could not take (and that is safe to send again) is held by
/// default while the polls look for the new writer: a crashed writer costs its lease and an
/// election timeout (1–2 s with the default timings, ~3 s at worst), a hand-over much less.
pub const DEFAULT_HOLD: Millis = Millis(5_000);

/// Index of a replica in the list the tracker was built with (the order of `--replicas`).
pub type ReplicaIx = usize;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Timing and limits of one tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// How long a client's reads stay pinned to the writer after its write (`readYourWritesTTL`).
    pub ryw_ttl: Millis,
    /// How long after its last successful poll a replica still counts as ready for reads.
    pub ready_for: Millis,
    /// Cap on pins; at most [`MAX_PINS`].
    pub max_pins: usize,
    /// How long a request the lost writer could not take is held for a new one
    /// ([`AfterOutcome::Hold`]); zero answers `503 no_writer` at once (still re-polling).
    pub hold: Millis,
}

impl TrackerConfig {
    /// A replica stays ready for three poll intervals, so one slow or lost poll does not take it
    /// out of the read rotation.
    #[must_use]
    pub fn new(poll_interval: Millis, ryw_ttl: Millis) -> Self {
        TrackerConfig {
            ryw_ttl,
            ready_for: Millis(poll_interval.0.saturating_mul(3)),
            max_pins: MAX_PINS,
            hold: DEFAULT_HOLD,
        }
    }
}

/// A tracker that cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("the gateway needs at least one replica")]
    NoReplicas,
    #[error("too many replicas: {count} (at most {max})", max = MAX_REPLICAS)]
    TooManyReplicas { count: usize },
    #[error("replica {0} is listed twice")]
    DuplicateReplica(NodeId),
    #[error("replica id must not be empty")]
    EmptyReplicaId,
    #[error("max_pins {0} is outside 1..={max}", max = MAX_PINS)]
    PinCap(usize),
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// What one replica's `/_ha/leader` answer says, with its lease as a point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderClaim {
    /// The replica's current term.
    pub term: Term,
    /// The writer it names for that term, if any.
    pub writer: Option<WriterClaim>,
}

/// A named writer and the time its lease ends, as the answering replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterClaim {
    pub node: NodeId,
    pub lease_expires: Millis,
}

impl LeaderClaim {
    /// Reads a parsed answer. An empty `node_id` names no writer; so does a writer without a lease
    /// (there is no lease to trust). A lease that is present but not RFC 3339 is an error: the
    /// answer is garbled and counts as a failed poll.
    pub fn from_answer(answer: &LeaderAnswer) -> Result<LeaderClaim, WireError> {
        let node = answer.node_id.trim();
        let lease = answer.lease_expires.trim();
        let lease_expires = if lease.is_empty() {
            None
        } else {
            Some(wire::parse_rfc3339(lease)?)
        };
        let writer = match (node.is_empty(), lease_expires) {
            (false, Some(lease_expires)) => Some(WriterClaim {
                node: NodeId::new(node),
                lease_expires,
            }),
            _ => None,
        };
        Ok(LeaderClaim {
            term: Term(answer.term),
            writer,
        })
    }
}

/// The body of a `/_ha/leader` answer → a claim, in one pure step (a fuzz target).
pub fn parse_leader_claim(bytes: &[u8]) -> Result<LeaderClaim, WireError> {
    LeaderClaim::from_answer(&wire::parse_leader_answer(bytes)?)
}

/// When a poller polls one replica next ([`Tracker::next_poll`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextPoll {
    /// Poll at this time (at once if it has passed).
    pub at: Millis,
    /// Ask again at this time if it comes before `at`: the writer's lease ends then, and with it
    /// the rule that gave `at`.
    pub valid_until: Option<Millis>,
}

impl NextPoll {
    /// When the poller should wake: `at`, or `valid_until` if sooner.
    #[must_use]
    pub fn wake_at(&self) -> Millis {
        self.valid_until.map_or(self.at, |v| v.min(self.at))
    }
}

/// The result of polling one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollResult {
    Answered(LeaderClaim),
    /// No answer in time, a non-200 status, or a garbled body.
    Failed,
}

/// Whether a request changes data. Reads may go to any ready replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
}

impl RequestKind {
    /// `GET`, `HEAD` and `OPTIONS` read; every other method (and any unknown one) writes.
    #[must_use]
    pub fn from_method(method: &str) -> RequestKind {
        if ["GET", "HEAD", "OPTIONS"]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            RequestKind::Read
        } else {
            RequestKind::Write
        }
    }
}

/// Who sent a request, for read-your-writes pins. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// `None` for an empty id; a long id is cut to [`MAX_CLIENT_ID_BYTES`] (on a char boundary).
    #[must_use]
    pub fn new(id: &str) -> Option<ClientId> {
        let id = id.trim();
        if id.is_empty() {
            return None;
        }
        let mut end = id.len().min(MAX_CLIENT_ID_BYTES);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        Some(ClientId(Arc::from(&id[..end])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The header values that identify a client, as the proxy read them from a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientHeaders<'a> {
    /// `X-Base-Client`: an id the client chooses, e.g. per browser session.
    pub base_client: Option<&'a str>,
    /// `X-Forwarded-For`: the first hop is the original client.
    pub forwarded_for: Option<&'a str>,
    /// `X-Org-Id`: the tenant, set by the Hanzo gateway in front.
    pub org_id: Option<&'a str>,
    /// The address of the TCP peer, used when there is no `X-Forwarded-For`.
    pub peer: Option<&'a str>,
}

/// A client's identity as the Hanzo gateway derives it: the org (`X-Org-Id`) plus the first
/// `X-Forwarded-For` hop (or the TCP peer). A client that sets `X-Base-Client` is known by that
/// instead of its address, so clients behind one NAT do not share a pin and a client whose address
/// changes keeps its own. `None` when nothing identifies the client (it gets no pins).
#[must_use]
pub fn client_identity(headers: ClientHeaders<'_>) -> Option<ClientId> {
    fn clean(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let org = clean(headers.org_id).unwrap_or("");
    if let Some(client) = clean(headers.base_client) {
        return ClientId::new(&format!("org={org};client={client}"));
    }
    let first_hop = clean(headers.forwarded_for)
        .and_then(|xff| xff.split(',').next())
        .map(str::trim)
        .filter(|hop| !hop.is_empty());
    let addr = first_hop.or_else(|| clean(headers.peer))?;
    ClientId::new(&format!("org={org};addr={addr}"))
}

/// A request arriving at the gateway.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub kind: RequestKind,
    /// `X-Base-Writer: required`: send even a read to the writer.
    pub writer_required: bool,
    pub client: Option<&'a ClientId>,
}

/// Which try of a request an outcome is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    First,
    Retry,
}

/// How far a forwarded request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// It never reached the replica (no connection): safe to send again.
    NotReached,
    /// The replica answered that it is not the writer and did nothing with the request
    /// ([`refusal_says_not_writer`]: the agent's `307` or `503 no_writer`, the store's `409
    /// not_writer`/`stale_term`): safe to send again, elsewhere.
    NotWriter,
    /// It reached the replica. `acknowledged`: a response came back.
    Reached { acknowledged: bool },
}

/// What happened to a forwarded request.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    pub request: Request<'a>,
    pub replica: ReplicaIx,
    pub attempt: Attempt,
    pub delivery: Delivery,
    /// The proxy still holds the whole body (bounded) and can send it again.
    pub replayable: bool,
}

/// Every input, for callers that drive the tracker as one `step` function.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    Poll {
        replica: ReplicaIx,
        result: PollResult,
    },
    Arrival(Request<'a>),
    Outcome(Outcome<'a>),
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// Why a request goes where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    Write,
    /// A read marked `X-Base-Writer: required`.
    WriterRequired,
    /// A read within the client's read-your-writes TTL.
    PinnedRead,
    Read,
}

impl Why {
    #[must_use]
    pub fn kind(self) -> RequestKind {
        match self {
            Why::Write => RequestKind::Write,
            Why::WriterRequired | Why::PinnedRead | Why::Read => RequestKind::Read,
        }
    }

    /// A read that must see every acknowledged write: forwarded with `X-Base-Writer: required`,
    /// so that the agent serves it only as the writer (`agent::Agent::admit_writer_read`). The
    /// gateway's idea of the writer can be a poll old; a deposed writer's store has undone its
    /// uncommitted suffix and may lack the client's write (the simulation's seed 715).
    #[must_use]
    pub fn needs_the_writer(self) -> bool {
        matches!(self, Why::WriterRequired | Why::PinnedRead)
    }
}

/// Send the request to this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub replica: ReplicaIx,
    pub why: Why,
    /// The highest term the tracker knows (the writer's term when `why` is not `Read`).
    pub term: Term,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No writer with a live lease is known: `503 {"error":"no_writer"}`.
    NoWriter,
    /// A plain read, and no replica is ready and no writer known: `503 {"error":"no_replica"}`.
    NoReplica,
}

impl Reject {
    /// The JSON body of the `503`.
    #[must_use]
    pub fn body(self) -> &'static str {
        match self {
            Reject::NoWriter => wire::NO_WRITER_BODY,
            Reject::NoReplica => r#"{"error":"no_replica"}"#,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Forward(Forward),
    Reject(Reject),
}

/// What to do after a forwarded request finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterOutcome {
    /// Nothing more: pass the response (or the error) on.
    Done,
    /// It never reached a replica, or was refused by one that is not the writer, and may be sent
    /// once more: here.
    Retry(Forward),
    /// The writer could not take it (refused it, or could not be reached): the writer is lost and
    /// every replica is due for a poll now (wake the pollers: [`AfterOutcome::repoll`]). The
    /// request is safe to send once more, but no writer is known: hold it, asking
    /// [`Tracker::route_held`] after each poll result, until `until` at the latest.
    Hold { until: Millis },
    /// The writer failed it: the writer is lost and every replica is due for a poll now (wake the
    /// pollers). The request may have been applied (it reached the writer), cannot be sent again
    /// (not replayable), or already was a retry: pass the failure on.
    WriterLost,
    /// It never reached a replica; a retry was allowed, but there is nowhere to send it.
    Reject(Reject),
    /// It never reached a replica (or was refused) and may not be retried (already a retry, or not
    /// replayable).
    GiveUp,
}

impl AfterOutcome {
    /// The pollers must be woken: every replica is due for a poll now ([`Tracker::next_poll`]).
    #[must_use]
    pub fn repoll(self) -> bool {
        matches!(self, AfterOutcome::Hold { .. } | AfterOutcome::WriterLost)
    }
}

/// Where a held request goes now ([`Tracker::route_held`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A writer is known: send it there (as [`Attempt::Retry`]).
    Forward(Forward),
    /// Still no writer: wait for the next poll result, or until the hold ends.
    Wait { until: Millis },
    /// The hold ended with no writer found: `503 no_writer`.
    Reject(Reject),
}

/// Whether a replica's answer to a forwarded request says it is not the writer and did nothing
/// with it, so that the request is safe to send to the writer: the agent's `307` (another node is
/// the writer) and `503 {"error":"no_writer"}`, the store's `409 {"error":"not_writer"}` or
/// `{"error":"stale_term"}` (fenced by a newer term) and `503 {"error":"not_writer"}`. Any other
/// answer (`503 overloaded`, `504 commit_unknown`, ...) is passed on as it is. `body` is the
/// answer's body, or its first bytes (only `503` and `409` look at it).
#[must_use]
pub fn refusal_says_not_writer(status: u16, body: &[u8]) -> bool {
    let error = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
    };
    match status {
        307 => true,
        503 => error().is_some_and(|e| e == "no_writer" || e == "not_writer"),
        409 => error().is_some_and(|e| e == "not_writer" || e == "stale_term"),
        _ => false,
    }
}

/// What a poll changed, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollEffect {
    /// Nothing routing depends on changed (a renewed lease counts as nothing).
    Unchanged,
    /// A different writer, or none, or a higher term.
    WriterChanged {
        writer: Option<ReplicaIx>,
        term: Term,
    },
    /// The replica reports a term below the highest seen: it is stale and gets no requests.
    Stale { reported: Term, highest: Term },
    /// The poll failed: the replica gets no reads until one succeeds.
    Failed,
}

/// The result of one [`Tracker::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Polled(PollEffect),
    Route(Route),
    AfterOutcome(AfterOutcome),
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Replica {
    id: NodeId,
    /// Time of the last successful poll since the replica last failed (poll or request).
    ready_since_poll: Option<Millis>,
    /// The last answer it gave (kept across failed polls: its lease still bounds it).
    claim: Option<LeaderClaim>,
    /// When that answer came.
    answered_at: Option<Millis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Writer {
    replica: ReplicaIx,
    term: Term,
    lease_expires: Millis,
}

/// A writer that failed a request at `at`: not trusted again in `term` until its own answer to a
/// poll that ended after `at` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lost {
    replica: ReplicaIx,
    term: Term,
    at: Millis,
}

/// Read-your-writes pins: client → expiry, plus an index by expiry for sweeping and eviction.
#[derive(Clone, Debug, Default)]
struct Pins {
    by_client: HashMap<ClientId, (Millis, u64)>,
    by_expiry: BTreeMap<(Millis, u64), ClientId>,
    next_seq: u64,
}

impl Pins {
    fn len(&self) -> usize {
        self.by_client.len()
    }

    fn until(&self, client: &ClientId) -> Option<Millis> {
        self.by_client.get(client).map(|&(until, _)| until)
    }

    fn pin(&mut self, client: &ClientId, until: Millis, cap: usize) {
        if let Some(old) = self.by_client.remove(client) {
            self.by_expiry.remove(&old);
        } else if self.by_client.len() >= cap
            && let Some((_, evicted)) = self.by_expiry.pop_first()
        {
            self.by_client.remove(&evicted);
        }
        let key = (until, self.next_seq);
        self.next_seq += 1;
        self.by_client.insert(client.clone(), key);
        self.by_expiry.insert(key, client.clone());
        assert!(self.by_client.len() <= cap, "pins over their cap");
    }

    /// Drops every pin that has expired by `now`. Each pin is dropped once, so the cost is
    /// amortised over the pins made.
    fn sweep(&mut self, now: Millis) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let client = entry.remove();
            self.by_client.remove(&client);
        }
        debug_assert_eq!(self.by_client.len(), self.by_expiry.len());
    }
}

/// The gateway's view of the replicas. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Tracker {
    config: TrackerConfig,
    replicas: Vec<Replica>,
    /// The highest term any replica ever reported. Never decreases.
    highest_term: Term,
    /// Derived from the replicas' claims after each poll; its lease is checked on every use.
    writer: Option<Writer>,
    pins: Pins,
    /// Round-robin cursor for reads.
    next_read: ReplicaIx,
    /// The latest `now` seen: time given out of order is taken as this, so nothing goes backwards.
    now: Millis,
    /// The writer that last failed a request, until a newer term or its own word replaces it.
    lost: Option<Lost>,
    /// When the last writer was lost: every replica whose last poll ended before this is due.
    repoll_at: Option<Millis>,
    /// The planted `route-cache` (`crate::buggify`): the last write's route, reused until then.
    #[cfg(madsim)]
    route_cache: Option<(Forward, Millis)>,
}

impl Tracker {
    /// A tracker for these replicas (ids as the replicas name themselves in `/_ha/leader`).
    pub fn new(replicas: Vec<NodeId>, config: TrackerConfig) -> Result<Tracker, TrackerError> {
        if replicas.is_empty() {
            return Err(TrackerError::NoReplicas);
        }
        if replicas.len() > MAX_REPLICAS {
            return Err(TrackerError::TooManyReplicas {
                count: replicas.len(),
            });
        }
        if config.max_pins == 0 || config.max_pins > MAX_PINS {
            return Err(TrackerError::PinCap(config.max_pins));
        }
        for (i, id) in replicas.iter().enumerate() {
            if id.as_str().is_empty() {
                return Err(TrackerError::EmptyReplicaId);
            }
            if replicas[..i].contains(id) {
                return Err(TrackerError::DuplicateReplica(id.clone()));
            }
        }
        Ok(Tracker {
            config,
            replicas: replicas
                .into_iter()
                .map(|id| Replica {
                    id,
                    ready_since_poll: None,
                    claim: None,
                    answered_at: None,
                })
                .collect(),
            highest_term: Term(0),
            writer: None,
            pins: Pins::default(),
            next_read: 0,
            now: Millis::ZERO,
            lost: None,
            repoll_at: None,
            #[cfg(madsim)]
            route_cache: None,
        })
    }

    /// One entry point for every input, for drivers that prefer it (the simulation).
    #[must_use]
    pub fn step(&mut self, now: Millis, input: Input<'_>) -> Decision {
        match input {
            Input::Poll { replica, result } => Decision::Polled(self.on_poll(now, replica, result)),
            Input::Arrival(request) => Decision::Route(self.route(now, request)),
            Input::Outcome(outcome) => Decision::AfterOutcome(self.on_outcome(now, outcome)),
        }
    }

    // -- inputs -----------------------------------------------------------------------------

    /// Takes a replica's poll result in.
    ///
    /// # Panics
    /// If `replica` is not an index of the replica list.
    #[must_use]
    pub fn on_poll(&mut self, now: Millis, replica: ReplicaIx, result: PollResult) -> PollEffect {
        let now = self.advance(now);
        assert!(replica < self.replicas.len(), "poll from unknown replica");
        let before = self.writer_now(now).map(|w| (w.replica, w.term));
        let term_before = self.highest_term;
        let effect = match result {
            PollResult::Failed => {
                self.replicas[replica].ready_since_poll = None;
                PollEffect::Failed
            }
            PollResult::Answered(claim) => {
                let reported = claim.term;
                self.highest_term = self.highest_term.max(reported);
                let r = &mut self.replicas[replica];
                r.ready_since_poll = Some(now);
                r.claim = Some(claim);
                r.answered_at = Some(now);
                if reported < self.highest_term {
                    PollEffect::Stale {
                        reported,
                        highest: self.highest_term,
                    }
                } else {
                    PollEffect::Unchanged
                }
            }
        };
        self.writer = self.derive_writer(now);
        let after = self.writer_now(now).map(|w| (w.replica, w.term));
        if before != after || term_before != self.highest_term {
            // A stale or failed poll that also deposed the writer reports the change: it matters more.
            return PollEffect::WriterChanged {
                writer: after.map(|(r, _)| r),
                term: self.highest_term,
            };
        }
        effect
    }

    /// Decides where a request goes.
    #[must_use]
    pub fn route(&mut self, now: Millis, request: Request<'_>) -> Route {
        let now = self.advance(now);
        let to_writer = self.to_writer(now, request);
        #[cfg(madsim)]
        if let Some(route) = self.planted_route_cache(now, request.kind) {
            return route;
        }
        if let Some(why) = to_writer {
            let route = match self.writer_now(now) {
                Some(w) => Route::Forward(Forward {
                    replica: w.replica,
                    why,
                    term: w.term,
                }),
                None => Route::Reject(Reject::NoWriter),
            };
            #[cfg(madsim)]
            if let (Route::Forward(f), RequestKind::Write) = (route, request.kind)
                && crate::buggify!(RouteCache)
            {
                // For a poll interval (`ready_for` is three of them).
                let until = now.saturating_add(Millis(self.config.ready_for.0 / 3));
                self.route_cache = Some((f, until));
            }
            return route;
        }
        self.route_read(now)
    }

    /// Planted `route-cache` (`crate::buggify`): a write reuses the last write's route until the
    /// cache's end, whatever the polls said since.
    #[cfg(madsim)]
    fn planted_route_cache(&self, now: Millis, kind: RequestKind) -> Option<Route> {
        self.route_cache
            .filter(|(_, until)| now < *until)
            .filter(|_| kind == RequestKind::Write && crate::buggify!(RouteCache))
            .map(|(f, _)| Route::Forward(f))
    }

    /// Takes in how a forwarded request ended; says whether to send it again.
    ///
    /// A request that went to the writer (a write, a writer-required or pinned read) and failed
    /// there in any way but an answer loses the writer (module docs): [`AfterOutcome::Hold`] when
    /// it is safe to send again (it never reached the writer, or the writer refused it saying it
    /// is not the writer; first try; replayable), else [`AfterOutcome::WriterLost`].
    ///
    /// # Panics
    /// If `outcome.replica` is not an index of the replica list.
    #[must_use]
    pub fn on_outcome(&mut self, now: Millis, outcome: Outcome<'_>) -> AfterOutcome {
        let now = self.advance(now);
        assert!(
            outcome.replica < self.replicas.len(),
            "outcome from unknown replica"
        );
        let request = outcome.request;
        // Writer-bound requests only: a plain read that happened to go to the writer's replica
        // says nothing about its role, and is retried on another replica below.
        let lost = self
            .writer_now(now)
            .filter(|w| w.replica == outcome.replica && self.to_writer(now, request).is_some())
            .filter(|_| outcome.delivery != Delivery::Reached { acknowledged: true });
        if let Some(w) = lost {
            self.lose_writer(now, w);
        }
        let retry_allowed = outcome.attempt == Attempt::First && outcome.replayable;
        match outcome.delivery {
            Delivery::Reached { .. } => {
                // Pinned even without an acknowledgement: a write that reached the writer may have
                // been applied, and the client's next read must not miss it.
                if request.kind == RequestKind::Write
                    && let Some(client) = request.client
                {
                    let until = now.saturating_add(self.config.ryw_ttl);
                    self.pins.pin(client, until, self.config.max_pins);
                }
                // A response, whatever it says, is passed on; a broken or timed-out one may
                // have been applied: never sent again.
                if lost.is_some() {
                    AfterOutcome::WriterLost
                } else {
                    AfterOutcome::Done
                }
            }
            Delivery::NotReached | Delivery::NotWriter => {
                if outcome.delivery == Delivery::NotReached {
                    // Unreachable: no more reads until a poll succeeds. (A replica that refused
                    // a write did answer: it still serves reads.)
                    self.replicas[outcome.replica].ready_since_poll = None;
                }
                match (lost.is_some(), retry_allowed) {
                    (true, true) => AfterOutcome::Hold {
                        until: now.saturating_add(self.config.hold),
                    },
                    (true, false) => AfterOutcome::WriterLost,
                    (false, false) => AfterOutcome::GiveUp,
                    (false, true) => match self.route(now, request) {
                        Route::Forward(forward) => AfterOutcome::Retry(forward),
                        Route::Reject(reject) => AfterOutcome::Reject(reject),
                    },
                }
            }
        }
    }

    /// Where a request held after [`AfterOutcome::Hold`] goes now: to the writer once a poll
    /// found one, else it waits until `until`, then `503 no_writer`. Ask again after every poll
    /// result (and at `until`).
    #[must_use]
    pub fn route_held(&mut self, now: Millis, request: Request<'_>, until: Millis) -> Held {
        let now = self.advance(now);
        match self.route(now, request) {
            Route::Forward(forward) => Held::Forward(forward),
            Route::Reject(_) if now < until => Held::Wait { until },
            Route::Reject(reject) => Held::Reject(reject),
        }
    }

    // -- queries ----------------------------------------------------------------------------

    /// The highest term ever reported by any replica.
    #[must_use]
    pub fn highest_term(&self) -> Term {
        self.highest_term
    }

    /// The writer with a live lease at `now`: its index, term and lease end.
    #[must_use]
    pub fn writer(&self, now: Millis) -> Option<(ReplicaIx, Term, Millis)> {
        self.writer_now(now.max(self.now))
            .map(|w| (w.replica, w.term, w.lease_expires))
    }

    /// When to poll `replica` again, its last poll having ended at `last_end`, as the tracker
    /// sees things at `now`:
    /// - the writer: `last_end + min(interval, max(MIN_WRITER_POLL, (lease_expires − last_end) / 2))`,
    ///   so the poll after next still lands inside its lease: a healthy writer is never forgotten
    ///   between polls;
    /// - any other replica while a writer is known: `last_end + interval`, but only until that
    ///   writer's lease ends (`valid_until`): then it is forgotten, and the poller must ask again;
    /// - any replica while no writer is known: `last_end + min(interval, HUNT_POLL)`;
    /// - before all of these: a replica whose last poll ended before the writer was lost (a
    ///   request to it failed, [`AfterOutcome::repoll`]) is due at that moment, i.e. now.
    ///
    /// The poller sleeps until `at` or `valid_until`, whichever comes first, and asks again; it
    /// polls once `at <= now`.
    #[must_use]
    pub fn next_poll(
        &self,
        now: Millis,
        replica: ReplicaIx,
        last_end: Millis,
        interval: Millis,
    ) -> NextPoll {
        let after = |wait: Millis| Millis(last_end.0.saturating_add(wait.0));
        // The writer was lost after this replica's last poll ended: poll it now, whatever the rule.
        if let Some(at) = self.repoll_at.filter(|&at| last_end < at) {
            return NextPoll {
                at,
                valid_until: None,
            };
        }
        match self.writer(now) {
            Some((writer, _, lease_expires)) if writer == replica => {
                let left = lease_expires.0.saturating_sub(last_end.0);
                NextPoll {
                    at: after(interval.min(Millis(left / 2).max(MIN_WRITER_POLL))),
                    valid_until: None,
                }
            }
            Some((_, _, lease_expires)) => {
                let at = after(interval);
                NextPoll {
                    at,
                    valid_until: (lease_expires < at).then_some(lease_expires),
                }
            }
            None => NextPoll {
                at: after(interval.min(HUNT_POLL)),
                valid_until: None,
            },
        }
    }

    /// How long the poller of `replica`, whose last poll ended at `last_end`, sleeps at `now`
    /// before it asks again (`Some`), or `None`: poll now. [`Tracker::next_poll`] as a sleep: until
    /// `at`, or until `valid_until` if sooner (the rule may change then), at least 1 ms. The
    /// gateway's tokio loop and the simulation's both sleep exactly this.
    #[must_use]
    pub fn poll_wait(
        &self,
        now: Millis,
        replica: ReplicaIx,
        last_end: Millis,
        interval: Millis,
    ) -> Option<Millis> {
        let next = if crate::buggify!(FixedPoll) {
            // Planted `fixed-poll`: every interval, whatever the writer's lease.
            NextPoll {
                at: Millis(last_end.0.saturating_add(interval.0)),
                valid_until: None,
            }
        } else {
            self.next_poll(now, replica, last_end, interval)
        };
        (next.at > now).then(|| Millis(next.wake_at().0.saturating_sub(now.0).max(1)))
    }

    /// When `replica` last answered a poll (its claim, whatever it said, dates from then).
    #[must_use]
    pub fn answered_at(&self, replica: ReplicaIx) -> Option<Millis> {
        self.replicas.get(replica).and_then(|r| r.answered_at)
    }

    /// Whether a replica gets plain reads at `now`.
    #[must_use]
    pub fn is_ready(&self, now: Millis, replica: ReplicaIx) -> bool {
        self.ready(now.max(self.now), replica)
    }

    /// The replicas, in the order given to [`Tracker::new`].
    #[must_use]
    pub fn replica_ids(&self) -> Vec<&NodeId> {
        self.replicas.iter().map(|r| &r.id).collect()
    }

    /// The id of one replica.
    #[must_use]
    pub fn replica_id(&self, replica: ReplicaIx) -> Option<&NodeId> {
        self.replicas.get(replica).map(|r| &r.id)
    }

    /// The index of a replica by id.
    #[must_use]
    pub fn replica_ix(&self, id: &str) -> Option<ReplicaIx> {
        self.replicas.iter().position(|r| r.id.as_str() == id)
    }

    /// The last term a replica reported, if it ever answered.
    #[must_use]
    pub fn reported_term(&self, replica: ReplicaIx) -> Option<Term> {
        self.replicas
            .get(replica)
            .and_then(|r| r.claim.as_ref())
            .map(|c| c.term)
    }

    /// Pins held now (expired ones are dropped on every input).
    #[must_use]
    pub fn pin_count(&self) -> usize {
        self.pins.len()
    }

    /// When a client's pin ends, if it has one that has not expired at `now`.
    #[must_use]
    pub fn pinned_until(&self, now: Millis, client: &ClientId) -> Option<Millis> {
        let now = now.max(self.now);
        self.pins.until(client).filter(|&until| until > now)
    }

    #[must_use]
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    // -- internals --------------------------------------------------------------------------

    /// Moves the tracker's clock (never backwards) and drops what expired.
    fn advance(&mut self, now: Millis) -> Millis {
        self.now = self.now.max(now);
        self.pins.sweep(self.now);
        if self.writer.is_some_and(|w| w.lease_expires <= self.now) {
            self.writer = None;
        }
        self.now
    }

    fn writer_now(&self, now: Millis) -> Option<Writer> {
        self.writer.filter(|w| w.lease_expires > now)
    }

    /// Why a request goes to the writer, if it does: a write, a writer-required read, a read
    /// within the client's read-your-writes pin.
    fn to_writer(&self, now: Millis, request: Request<'_>) -> Option<Why> {
        // Planted `no-read-pin`: reads routed without the client's identity.
        let client = request.client.filter(|_| !crate::buggify!(NoReadPin));
        match (request.kind, request.writer_required) {
            (RequestKind::Write, _) => Some(Why::Write),
            (RequestKind::Read, true) => Some(Why::WriterRequired),
            (RequestKind::Read, false) => client
                .and_then(|c| self.pins.until(c))
                .filter(|&until| until > now)
                .map(|_| Why::PinnedRead),
        }
    }

    /// The writer failed a request at `now`: forget it until its own word renews it (at a poll
    /// that ends after now) or a newer term names another, and have every replica polled now.
    fn lose_writer(&mut self, now: Millis, w: Writer) {
        self.lost = Some(Lost {
            replica: w.replica,
            term: w.term,
            at: now,
        });
        self.repoll_at = Some(now);
        self.writer = self.derive_writer(now);
        assert!(
            self.writer.is_none(),
            "a lost writer is still derived: {:?}",
            self.writer
        );
    }

    fn ready(&self, now: Millis, replica: ReplicaIx) -> bool {
        let Some(r) = self.replicas.get(replica) else {
            return false;
        };
        let fresh = r
            .ready_since_poll
            .is_some_and(|at| now.saturating_sub(at) <= self.config.ready_for);
        let current = r
            .claim
            .as_ref()
            .is_some_and(|c| c.term >= self.highest_term);
        fresh && current
    }

    fn route_read(&mut self, now: Millis) -> Route {
        let n = self.replicas.len();
        for offset in 0..n {
            let candidate = (self.next_read + offset) % n;
            if self.ready(now, candidate) {
                self.next_read = (candidate + 1) % n;
                return Route::Forward(Forward {
                    replica: candidate,
                    why: Why::Read,
                    term: self.highest_term,
                });
            }
        }
        // No replica answered polls lately, but a writer's lease is live: it can serve the read.
        match self.writer_now(now) {
            Some(w) => Route::Forward(Forward {
                replica: w.replica,
                why: Why::Read,
                term: w.term,
            }),
            None => Route::Reject(Reject::NoReplica),
        }
    }

    /// The writer the claims at the highest term agree on, if exactly one node is named with a live
    /// lease and that node does not itself deny it.
    fn derive_writer(&self, now: Millis) -> Option<Writer> {
        let term = self.highest_term;
        let mut named: Option<(Option<ReplicaIx>, Millis)> = None;
        for claim in self.replicas.iter().filter_map(|r| r.claim.as_ref()) {
            if claim.term != term {
                continue; // lower terms are stale; nothing is above the highest
            }
            let Some(w) = &claim.writer else { continue };
            if w.lease_expires <= now {
                continue;
            }
            // An id outside the replica list is still a claim: it conflicts with any other name.
            let ix = self.replica_ix(w.node.as_str());
            named = match named {
                None => Some((ix, w.lease_expires)),
                Some((prev, lease)) if prev == ix => Some((ix, lease.max(w.lease_expires))),
                Some(_) => return None, // two writers named in one term: trust neither
            };
        }
        let (Some(replica), lease_expires) = named? else {
            return None; // a writer we have no address for
        };
        // The named node's own latest answer has the last word: if it reports a lower term, or
        // names another writer (or none) at this term, it is not the writer.
        if let Some(own) = &self.replicas[replica].claim {
            let affirms = own.term == term
                && own
                    .writer
                    .as_ref()
                    .is_some_and(|w| w.node == self.replicas[replica].id);
            if !affirms {
                return None;
            }
        }
        // A writer that failed a request is trusted again only on its own word, given after.
        if let Some(lost) = self.lost
            && lost.replica == replica
            && lost.term == term
            && self.replicas[replica]
                .answered_at
                .is_none_or(|answered| answered <= lost.at)
        {
            return None;
        }
        Some(Writer {
            replica,
            term,
            lease_expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Millis = Millis(5_000);

    fn tracker() -> Tracker {
        Tracker::new(
            vec!["b-0".into(), "b-1".into(), "b-2".into()],
            TrackerConfig::new(Millis(1_000), TTL),
        )
        .unwrap()
    }

    fn claim(term: u64, writer: Option<&str>, lease_expires: u64) -> PollResult {
        PollResult::Answered(LeaderClaim {
            term: Term(term),
            writer: writer.map(|w| WriterClaim {
                node: w.into(),
                lease_expires: Millis(lease_expires),
            }),
        })
    }

    /// Every replica answers that `writer` leads `term` until `lease`.
    fn all_say(t: &mut Tracker, now: u64, term: u64, writer: &str, lease: u64) {
        for r in 0..3 {
            let _ = t.on_poll(Millis(now), r, claim(term, Some(writer), lease));
        }
    }

    fn read<'a>(client: Option<&'a ClientId>) -> Request<'a> {
        Request {
            kind: RequestKind::Read,
            writer_required: false,
            client,
        }
    }

    fn write<'a>(client: Option<&'a ClientId>) -> Request<'a> {
        Request {
            kind: RequestKind::Write,
            writer_required: false,
            client,
        }
    }

    /// The first try of `request` at `replica`, replayable.
    fn first_try(request: Request<'_>, replica: ReplicaIx, delivery: Delivery) -> Outcome<'_> {
        Outcome {
            request,
            replica,
            attempt: Attempt::First,
            delivery,
            replayable: true,
        }
    }

    fn target(route: Route) -> Option<ReplicaIx> {
        match route {
            Route::Forward(f) => Some(f.replica),
            Route::Reject(_) => None,
        }
    }

    #[test]
    fn polls_the_writer_before_its_lease_passes_and_hunts_when_there_is_none() {
        let mut t = tracker();
        let second = Millis(1_000);
        let next = |t: &Tracker, now: u64, r: ReplicaIx, end: u64, interval: Millis| {
            let n = t.next_poll(Millis(now), r, Millis(end), interval);
            (n.at.0, n.valid_until.map(|v| v.0))
        };
        // Nothing known yet: hunt, unless the interval is shorter still.
        assert_eq!(next(&t, 0, 0, 0, second), (HUNT_POLL.0, None));
        assert_eq!(next(&t, 0, 0, 0, Millis(60)), (60, None));
        all_say(&mut t, 10_000, 3, "b-1", 10_900);
        // The writer: half of what is left of its lease, or the interval if shorter.
        assert_eq!(next(&t, 10_000, 1, 10_000, second), (10_450, None));
        assert_eq!(next(&t, 10_000, 1, 10_000, Millis(200)), (10_200, None));
        // Never sooner than MIN_WRITER_POLL, even for a lease about to end.
        assert_eq!(next(&t, 10_860, 1, 10_860, second), (10_910, None));
        // The others: the interval, but ask again when the writer's lease ends before that.
        assert_eq!(next(&t, 10_000, 0, 10_000, second), (11_000, Some(10_900)));
        assert_eq!(next(&t, 10_000, 0, 10_000, Millis(500)), (10_500, None));
        let n = t.next_poll(Millis(10_000), 0, Millis(10_000), second);
        assert_eq!(n.wake_at(), Millis(10_900));
        // Asked again once the lease passed with no fresh poll: no writer, so the replica is
        // due at once (hunting, counted from its last poll) — and so is the old writer.
        assert_eq!(next(&t, 10_900, 0, 10_000, second), (10_100, None));
        assert_eq!(next(&t, 10_900, 1, 10_800, second), (10_900, None));
        // A healthy writer that renews is never forgotten: the next poll lands inside the lease.
        let mut t = tracker();
        all_say(&mut t, 10_000, 3, "b-1", 10_900);
        let mut now = 10_000;
        while now < 10_900 {
            let at = next(&t, now, 1, now, Millis(2_000)).0;
            assert!(
                at < 10_900 || at - now == MIN_WRITER_POLL.0,
                "{now} -> {at}"
            );
            now = at;
        }
    }

    #[test]
    fn nothing_known_rejects_everything() {
        let mut t = tracker();
        assert_eq!(
            t.route(Millis(0), write(None)),
            Route::Reject(Reject::NoWriter)
        );
        assert_eq!(
            t.route(Millis(0), read(None)),
            Route::Reject(Reject::NoReplica)
        );
    }

    #[test]
    fn writes_go_to_the_writer_and_reads_spread_round_robin() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-1", 10_000);
        for _ in 0..5 {
            assert_eq!(target(t.route(Millis(10), write(None))), Some(1));
        }
        let reads: Vec<_> = (0..6)
            .map(|_| target(t.route(Millis(10), read(None))).unwrap())
            .collect();
        assert_eq!(reads, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn writer_required_reads_go_to_the_writer() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-2", 10_000);
        let req = Request {
            writer_required: true,
            ..read(None)
        };
        for _ in 0..3 {
            assert_eq!(
                t.route(Millis(1), req),
                Route::Forward(Forward {
                    replica: 2,
                    why: Why::WriterRequired,
                    term: Term(3)
                })
            );
        }
    }

    #[test]
    fn a_higher_term_wins_and_a_lower_one_never_comes_back() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 10_000);
        // b-2 has heard of term 4 but not yet of its writer: b-0 (term 3) is deposed all the same.
        let effect = t.on_poll(Millis(50), 2, claim(4, None, 0));
        assert_eq!(
            effect,
            PollEffect::WriterChanged {
                writer: None,
                term: Term(4)
            }
        );
        assert_eq!(
            t.route(Millis(50), write(None)),
            Route::Reject(Reject::NoWriter)
        );
        let effect = t.on_poll(Millis(100), 1, claim(4, Some("b-1"), 10_000));
        assert_eq!(
            effect,
            PollEffect::WriterChanged {
                writer: Some(1),
                term: Term(4)
            }
        );
        assert_eq!(t.writer(Millis(100)), Some((1, Term(4), Millis(10_000))));
        // The old writer still believes in term 3: it is stale, gets no reads, and no writes.
        let effect = t.on_poll(Millis(200), 0, claim(3, Some("b-0"), 20_000));
        assert_eq!(
            effect,
            PollEffect::Stale {
                reported: Term(3),
                highest: Term(4)
            }
        );
        assert_eq!(t.highest_term(), Term(4));
        assert_eq!(target(t.route(Millis(200), write(None))), Some(1));
        for _ in 0..4 {
            assert_ne!(target(t.route(Millis(200), read(None))), Some(0));
        }
    }

    #[test]
    fn the_writer_is_forgotten_when_its_lease_passes() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 2_000);
        assert_eq!(target(t.route(Millis(1_999), write(None))), Some(0));
        assert_eq!(
            t.route(Millis(2_000), write(None)),
            Route::Reject(Reject::NoWriter)
        );
        // A fresh poll renews it.
        all_say(&mut t, 2_100, 3, "b-0", 4_000);
        assert_eq!(target(t.route(Millis(2_100), write(None))), Some(0));
    }

    #[test]
    fn a_writer_that_denies_being_writer_is_not_used() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 10_000);
        // b-0 lost its lease and says so; the followers still name it.
        let _ = t.on_poll(Millis(100), 0, claim(3, None, 0));
        assert_eq!(
            t.route(Millis(100), write(None)),
            Route::Reject(Reject::NoWriter)
        );
    }

    #[test]
    fn two_writers_named_for_one_term_give_no_writer() {
        let mut t = tracker();
        let _ = t.on_poll(Millis(0), 0, claim(3, Some("b-0"), 10_000));
        let _ = t.on_poll(Millis(0), 1, claim(3, Some("b-1"), 10_000));
        assert_eq!(
            t.route(Millis(1), write(None)),
            Route::Reject(Reject::NoWriter)
        );
    }

    #[test]
    fn a_writer_outside_the_replica_list_cannot_be_routed_to() {
        let mut t = tracker();
        let _ = t.on_poll(Millis(0), 0, claim(3, Some("elsewhere"), 10_000));
        assert_eq!(
            t.route(Millis(1), write(None)),
            Route::Reject(Reject::NoWriter)
        );
    }

    #[test]
    fn a_clients_reads_follow_its_write_for_the_ttl() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-2", 60_000);
        let me = ClientId::new("me").unwrap();
        let w = write(Some(&me));
        assert_eq!(target(t.route(Millis(10), w)), Some(2));
        let after = t.on_outcome(
            Millis(20),
            Outcome {
                request: w,
                replica: 2,
                attempt: Attempt::First,
                delivery: Delivery::Reached { acknowledged: true },
                replayable: true,
            },
        );
        assert_eq!(after, AfterOutcome::Done);
        for now in [21, 1_000, 5_019] {
            assert_eq!(
                t.route(Millis(now), read(Some(&me))),
                Route::Forward(Forward {
                    replica: 2,
                    why: Why::PinnedRead,
                    term: Term(3)
                })
            );
        }
        // Polls keep replicas ready; after the TTL the client's reads spread again.
        all_say(&mut t, 5_019, 3, "b-2", 60_000);
        let spread: Vec<_> = (0..3)
            .map(|_| target(t.route(Millis(5_020), read(Some(&me)))).unwrap())
            .collect();
        assert_eq!(spread.len(), 3);
        assert!(spread.contains(&0) && spread.contains(&1));
        assert_eq!(t.pin_count(), 0, "the expired pin was dropped");
    }

    #[test]
    fn a_pinned_read_without_a_writer_is_rejected_not_sent_to_a_follower() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 1_000);
        let me = ClientId::new("me").unwrap();
        let w = write(Some(&me));
        let _ = t.on_outcome(
            Millis(10),
            Outcome {
                request: w,
                replica: 0,
                attempt: Attempt::First,
                delivery: Delivery::Reached { acknowledged: true },
                replayable: true,
            },
        );
        // Followers are polled and ready, but the writer's lease has passed.
        for r in 1..3 {
            let _ = t.on_poll(Millis(1_500), r, claim(3, None, 0));
        }
        assert_eq!(
            t.route(Millis(1_500), read(Some(&me))),
            Route::Reject(Reject::NoWriter)
        );
        assert!(matches!(
            t.route(Millis(1_500), read(None)),
            Route::Forward(_)
        ));
    }

    #[test]
    fn a_request_is_retried_once_and_only_when_it_never_reached_a_replica() {
        let outcome = |attempt, delivery, replayable| Outcome {
            request: write(None),
            replica: 1,
            attempt,
            delivery,
            replayable,
        };
        let fresh = || {
            let mut t = tracker();
            all_say(&mut t, 0, 3, "b-1", 10_000);
            t
        };
        // Not reached or refused by the writer, first try: held for the writer the re-poll finds.
        for delivery in [Delivery::NotReached, Delivery::NotWriter] {
            let after = fresh().on_outcome(Millis(1), outcome(Attempt::First, delivery, true));
            assert_eq!(
                after,
                AfterOutcome::Hold {
                    until: Millis(1 + DEFAULT_HOLD.0)
                }
            );
            assert!(after.repoll());
        }
        // Already a retry, or a body too big to keep: the writer is lost all the same, but the
        // request is not sent again.
        for (attempt, replayable) in [(Attempt::Retry, true), (Attempt::First, false)] {
            let after = fresh().on_outcome(
                Millis(2),
                outcome(attempt, Delivery::NotReached, replayable),
            );
            assert_eq!(after, AfterOutcome::WriterLost);
        }
        // Reached the writer without an answer (timeout, reset): may have been applied, never
        // sent again; the writer is lost.
        let mut t = fresh();
        let after = t.on_outcome(
            Millis(4),
            outcome(
                Attempt::First,
                Delivery::Reached {
                    acknowledged: false,
                },
                true,
            ),
        );
        assert_eq!(
            after,
            AfterOutcome::WriterLost,
            "a write that may have been applied: never again"
        );
        assert_eq!(t.writer(Millis(4)), None);
        // An answer, whatever its status, is passed on and the writer kept.
        let mut t = fresh();
        let after = t.on_outcome(
            Millis(4),
            outcome(
                Attempt::First,
                Delivery::Reached { acknowledged: true },
                true,
            ),
        );
        assert_eq!(after, AfterOutcome::Done);
        assert_eq!(t.writer(Millis(4)).map(|w| w.0), Some(1));
        // A replica that is not (or no longer) the writer refusing: retried on the writer at once.
        let mut t = fresh();
        let after = t.on_outcome(
            Millis(5),
            Outcome {
                replica: 0,
                ..outcome(Attempt::First, Delivery::NotWriter, true)
            },
        );
        assert_eq!(
            after,
            AfterOutcome::Retry(Forward {
                replica: 1,
                why: Why::Write,
                term: Term(3)
            })
        );
        assert_eq!(
            t.on_outcome(
                Millis(6),
                Outcome {
                    replica: 0,
                    ..outcome(Attempt::Retry, Delivery::NotWriter, true)
                }
            ),
            AfterOutcome::GiveUp
        );
    }

    #[test]
    fn a_lost_writer_is_re_polled_at_once_and_trusted_again_only_on_its_own_later_word() {
        let mut t = tracker();
        let second = Millis(1_000);
        all_say(&mut t, 1_000, 3, "b-1", 10_000);
        // The followers were just polled: due a whole interval later while the writer is known.
        assert_eq!(
            t.next_poll(Millis(1_100), 0, Millis(1_000), second).at,
            Millis(2_000)
        );
        let w = write(None);
        let after = t.on_outcome(Millis(1_100), first_try(w, 1, Delivery::NotReached));
        let Some(until) = (match after {
            AfterOutcome::Hold { until } => Some(until),
            _ => None,
        }) else {
            panic!("{after:?}")
        };
        // Every replica is due now, the writer too; once polled after that, they hunt.
        for r in 0..3 {
            assert_eq!(t.poll_wait(Millis(1_100), r, Millis(1_000), second), None);
        }
        assert_eq!(
            t.next_poll(Millis(1_150), 0, Millis(1_150), second).at,
            Millis(1_250)
        );
        assert_eq!(t.route(Millis(1_100), w), Route::Reject(Reject::NoWriter));
        assert_eq!(t.route_held(Millis(1_100), w, until), Held::Wait { until });
        // The followers still name b-1 (its lease is live in their view): not enough.
        let _ = t.on_poll(Millis(1_120), 0, claim(3, Some("b-1"), 10_000));
        assert_eq!(t.route_held(Millis(1_120), w, until), Held::Wait { until });
        // A newer term's writer found by the re-poll: the held write goes there.
        let effect = t.on_poll(Millis(1_130), 2, claim(4, Some("b-2"), 11_000));
        assert_eq!(
            effect,
            PollEffect::WriterChanged {
                writer: Some(2),
                term: Term(4)
            }
        );
        assert_eq!(
            t.route_held(Millis(1_130), w, until),
            Held::Forward(Forward {
                replica: 2,
                why: Why::Write,
                term: Term(4)
            })
        );

        // A writer that refused once but is still the writer (a blip) comes back on its own word.
        let mut t = tracker();
        all_say(&mut t, 1_000, 3, "b-1", 10_000);
        let after = t.on_outcome(Millis(1_100), first_try(w, 1, Delivery::NotWriter));
        assert!(matches!(after, AfterOutcome::Hold { .. }));
        // Answers from before (or at) the loss do not count; a follower's word does not either.
        let _ = t.on_poll(Millis(1_100), 1, claim(3, Some("b-1"), 10_000));
        let _ = t.on_poll(Millis(1_150), 0, claim(3, Some("b-1"), 10_000));
        assert_eq!(t.writer(Millis(1_150)), None);
        let _ = t.on_poll(Millis(1_160), 1, claim(3, Some("b-1"), 10_000));
        assert_eq!(t.writer(Millis(1_160)).map(|w| w.0), Some(1));
        // The hold ends with no writer: 503.
        let mut t = tracker();
        all_say(&mut t, 1_000, 3, "b-1", 10_000);
        let _ = t.on_outcome(Millis(1_100), first_try(w, 1, Delivery::NotReached));
        assert_eq!(
            t.route_held(
                Millis(1_100 + DEFAULT_HOLD.0),
                w,
                Millis(1_100 + DEFAULT_HOLD.0)
            ),
            Held::Reject(Reject::NoWriter)
        );
    }

    #[test]
    fn a_plain_read_that_fails_on_the_writers_replica_does_not_lose_the_writer() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-1", 10_000);
        let after = t.on_outcome(Millis(1), first_try(read(None), 1, Delivery::NotReached));
        assert!(
            matches!(after, AfterOutcome::Retry(f) if f.replica != 1),
            "{after:?}"
        );
        assert!(!after.repoll());
        assert_eq!(t.writer(Millis(1)).map(|w| w.0), Some(1));
    }

    #[test]
    fn refusals_that_say_not_writer() {
        assert!(refusal_says_not_writer(307, b""));
        assert!(refusal_says_not_writer(503, br#"{"error":"no_writer"}"#));
        assert!(refusal_says_not_writer(
            503,
            br#"{"error":"not_writer","message":"x"}"#
        ));
        assert!(refusal_says_not_writer(
            409,
            br#"{"error":"stale_term","term":4}"#
        ));
        assert!(refusal_says_not_writer(
            409,
            br#"{"error":"not_writer","term":4}"#
        ));
        for (status, body) in [
            (503, &br#"{"error":"overloaded"}"#[..]),
            (503, br#"{"error":"term_start_not_committed"}"#),
            (503, b"no_writer"),
            (504, br#"{"error":"commit_unknown"}"#),
            (409, br#"{"error":"conflict"}"#),
            (200, br#"{"error":"no_writer"}"#),
            (500, b""),
        ] {
            assert!(!refusal_says_not_writer(status, body), "{status} {body:?}");
        }
    }

    #[test]
    fn an_unreachable_replica_gets_no_reads_until_a_poll_succeeds() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 10_000);
        let r = read(None);
        let after = t.on_outcome(
            Millis(1),
            Outcome {
                request: r,
                replica: 2,
                attempt: Attempt::First,
                delivery: Delivery::NotReached,
                replayable: true,
            },
        );
        assert!(matches!(after, AfterOutcome::Retry(f) if f.replica != 2));
        for _ in 0..4 {
            assert_ne!(target(t.route(Millis(2), r)), Some(2));
        }
        let _ = t.on_poll(Millis(3), 2, claim(3, Some("b-0"), 10_000));
        assert!((0..3).any(|_| target(t.route(Millis(4), r)) == Some(2)));
    }

    #[test]
    fn replicas_not_polled_lately_are_not_ready() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 100_000);
        assert!(t.is_ready(Millis(3_000), 1));
        assert!(!t.is_ready(Millis(3_001), 1));
        // With nobody ready, the writer (lease still live) serves reads.
        assert_eq!(target(t.route(Millis(3_001), read(None))), Some(0));
    }

    #[test]
    fn pins_are_capped_and_the_oldest_goes_first() {
        let mut t = Tracker::new(
            vec!["b-0".into()],
            TrackerConfig {
                max_pins: 3,
                ..TrackerConfig::new(Millis(1_000), TTL)
            },
        )
        .unwrap();
        let _ = t.on_poll(Millis(0), 0, claim(1, Some("b-0"), 100_000));
        let clients: Vec<_> = (0..5)
            .map(|i| ClientId::new(&format!("c{i}")).unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            let _ = t.on_outcome(
                Millis(i as u64),
                Outcome {
                    request: write(Some(c)),
                    replica: 0,
                    attempt: Attempt::First,
                    delivery: Delivery::Reached { acknowledged: true },
                    replayable: true,
                },
            );
            assert!(t.pin_count() <= 3);
        }
        assert_eq!(t.pinned_until(Millis(5), &clients[0]), None);
        assert_eq!(t.pinned_until(Millis(5), &clients[1]), None);
        assert_eq!(
            t.pinned_until(Millis(5), &clients[4]),
            Some(Millis(4 + TTL.0))
        );
    }

    #[test]
    fn time_going_backwards_is_taken_as_standing_still() {
        let mut t = tracker();
        all_say(&mut t, 0, 3, "b-0", 2_000);
        assert_eq!(
            t.route(Millis(2_000), write(None)),
            Route::Reject(Reject::NoWriter)
        );
        assert_eq!(
            t.route(Millis(1_000), write(None)),
            Route::Reject(Reject::NoWriter)
        );
    }

    #[test]
    fn client_identity_follows_the_hanzo_gateway() {
        let id = |h: ClientHeaders<'_>| client_identity(h).map(|c| c.as_str().to_string());
        assert_eq!(
            id(ClientHeaders {
                forwarded_for: Some(" 203.0.113.7 , 10.0.0.1"),
                org_id: Some("acme"),
                peer: Some("10.0.0.2"),
                ..Default::default()
            }),
            Some("org=acme;addr=203.0.113.7".into())
        );
        assert_eq!(
            id(ClientHeaders {
                base_client: Some("tab-42"),
                forwarded_for: Some("203.0.113.7"),
                org_id: Some("acme"),
                ..Default::default()
            }),
            Some("org=acme;client=tab-42".into())
        );
        assert_eq!(
            id(ClientHeaders {
                forwarded_for: Some(""),
                peer: Some("10.0.0.2"),
                ..Default::default()
            }),
            Some("org=;addr=10.0.0.2".into())
        );
        assert_eq!(id(ClientHeaders::default()), None);
        let long = "x".repeat(1_000);
        let cut = client_identity(ClientHeaders {
            base_client: Some(&long),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cut.as_str().len(), MAX_CLIENT_ID_BYTES);
    }

    #[test]
    fn methods_map_to_kinds() {
        assert_eq!(RequestKind::from_method("GET"), RequestKind::Read);
        assert_eq!(RequestKind::from_method("head"), RequestKind::Read);
        assert_eq!(RequestKind::from_method("OPTIONS"), RequestKind::Read);
        for m in ["POST", "PUT", "PATCH", "DELETE", "PURGE"] {
            assert_eq!(RequestKind::from_method(m), RequestKind::Write);
        }
    }

    #[test]
    fn claims_read_from_answers() {
        let c = parse_leader_claim(
            br#"{"leader_url":"http://b-1:8090","node_id":"b-1","term":7,"lease_expires":"1970-01-01T00:00:02.5Z"}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            LeaderClaim {
                term: Term(7),
                writer: Some(WriterClaim {
                    node: "b-1".into(),
                    lease_expires: Millis(2_500)
                })
            }
        );
        let none =
            parse_leader_claim(br#"{"leader_url":"","node_id":"","term":7,"lease_expires":""}"#)
                .unwrap();
        assert_eq!(none.writer, None);
        assert!(
            parse_leader_claim(br#"{"node_id":"b-1","term":7,"lease_expires":"soon"}"#).is_err()
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let cfg = TrackerConfig::new(Millis(1_000), TTL);
        assert_eq!(
            Tracker::new(vec![], cfg).unwrap_err(),
            TrackerError::NoReplicas
        );
        assert_eq!(
            Tracker::new(vec!["a".into(), "a".into()], cfg).unwrap_err(),
            TrackerError::DuplicateReplica("a".into())
        );
        assert!(
            Tracker::new(
                vec!["a".into()],
                TrackerConfig {
                    max_pins: MAX_PINS + 1,
                    ..cfg
                }
            )
            .is_err()
        );
    }
}
