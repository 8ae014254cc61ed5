//! Properties of the gateway leader tracker, checked against a small independent model over random
//! histories of polls, reads, writes and the passing of time:
//! - no write is routed to a replica the tracker knows is stale (not named writer at the highest term
//!   seen, with a live lease, by itself and the others);
//! - read-your-writes: within the TTL after its write, a client's read goes to the writer, or is
//!   rejected, never to a follower; and while the writer of that write is still the writer, to it;
//! - memory is bounded: expired pins are dropped, the cap holds, the oldest pin goes first;
//! - a writer that fails a write in any way but an answer is lost: every replica is due for a poll
//!   at once, no write goes to it again in its term until its own answer to a later poll names it,
//!   and the write is held for the next writer only when it cannot have been applied (never
//!   reached it, or refused as not the writer); a held write goes only to a writer the model
//!   allows, and is refused once its hold ends.

use base_core::tracker::{
    AfterOutcome, Attempt, ClientId, Delivery, Held, LeaderClaim, Outcome, PollResult, Reject,
    ReplicaIx, Request, RequestKind, Route, Tracker, TrackerConfig, Why, WriterClaim,
};
use base_core::{Millis, NodeId, Term};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::collections::{HashMap, VecDeque};

const REPLICAS: usize = 3;
const POLL_INTERVAL: Millis = Millis(500);
const RYW_TTL: Millis = Millis(2_000);
const HOLD: Millis = Millis(1_200);

fn node(i: u8) -> NodeId {
    // Index REPLICAS names a node the gateway has no address for.
    if (i as usize) < REPLICAS {
        NodeId::new(format!("b-{i}"))
    } else {
        NodeId::new("elsewhere")
    }
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u16),
    /// `answer: None` is a failed poll; else (term, named writer, lease from now in ms).
    Poll {
        replica: u8,
        answer: Option<(u8, Option<u8>, u16)>,
    },
    Read {
        client: u8,
        writer_required: bool,
    },
    /// `delivery`: 0 never reached, 1 reached and answered, 2 reached without an answer, 3
    /// refused as not the writer.
    Write {
        client: u8,
        delivery: u8,
        retry: bool,
    },
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        let pick = |g: &mut Gen, n: u8| u8::arbitrary(g) % n;
        match pick(g, 10) {
            0 | 1 => Op::Advance(u16::arbitrary(g) % 1_500),
            2..=4 => Op::Poll {
                replica: pick(g, REPLICAS as u8),
                answer: if pick(g, 6) == 0 {
                    None
                } else {
                    let writer = match pick(g, 8) {
                        0 | 1 => None,
                        // Mostly one writer per term, as a correct election gives, sometimes another.
                        2..=6 => Some(u8::arbitrary(g) % 2),
                        _ => Some(pick(g, REPLICAS as u8 + 1)),
                    };
                    Some((pick(g, 6), writer, u16::arbitrary(g) % 3_000))
                },
            },
            5..=7 => Op::Read {
                client: pick(g, 10),
                writer_required: pick(g, 5) == 0,
            },
            _ => Op::Write {
                client: pick(g, 10),
                delivery: pick(g, 4),
                retry: pick(g, 4) == 0,
            },
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Op>> {
        Box::new(std::iter::empty())
    }
}

/// The model: what every replica last answered, and the pins as a queue in pin order.
struct Model {
    now: Millis,
    max_term: Term,
    claims: Vec<Option<LeaderClaim>>,
    pins: VecDeque<(u8, Millis)>,
    cap: usize,
    /// When each replica last answered a poll.
    answered_at: Vec<Option<Millis>>,
    /// The writer that last failed a write: (replica, term, when).
    lost: Option<(ReplicaIx, Term, Millis)>,
}

impl Model {
    fn new(cap: usize) -> Model {
        Model {
            now: Millis(1_000),
            max_term: Term(0),
            claims: vec![None; REPLICAS],
            pins: VecDeque::new(),
            cap,
            answered_at: vec![None; REPLICAS],
            lost: None,
        }
    }

    /// Replicas a write may go to: named writer at the highest term with a live lease, and not
    /// denied by its own latest answer.
    fn may_write(&self, r: ReplicaIx) -> bool {
        let id = node(r as u8);
        let named = self.claims.iter().flatten().any(|c| {
            c.term == self.max_term
                && c.writer
                    .as_ref()
                    .is_some_and(|w| w.node == id && w.lease_expires > self.now)
        });
        let own_ok = self.claims[r].as_ref().is_none_or(|c| {
            c.term == self.max_term && c.writer.as_ref().is_some_and(|w| w.node == id)
        });
        let lost = self.lost.is_some_and(|(l, term, at)| {
            l == r && term == self.max_term && self.answered_at[r].is_none_or(|a| a <= at)
        });
        named && own_ok && !lost
    }

    /// The writer the tracker must find: when every claim at the highest term names the same node,
    /// which affirms itself, with a live lease. `None` when that is not clear-cut.
    fn clear_writer(&self) -> Option<ReplicaIx> {
        let mut names = self
            .claims
            .iter()
            .flatten()
            .filter(|c| c.term == self.max_term)
            .filter_map(|c| c.writer.as_ref().map(|w| w.node.clone()));
        let first = names.next()?;
        if names.any(|n| n != first) {
            return None;
        }
        let r = (0..REPLICAS).find(|&r| node(r as u8) == first)?;
        self.may_write(r).then_some(r)
    }

    fn pinned_until(&self, client: u8) -> Option<Millis> {
        self.pins
            .iter()
            .find(|(c, _)| *c == client)
            .map(|&(_, until)| until)
            .filter(|&until| until > self.now)
    }

    fn pin(&mut self, client: u8) {
        self.pins.retain(|&(_, until)| until > self.now);
        if let Some(i) = self.pins.iter().position(|(c, _)| *c == client) {
            self.pins.remove(i);
        } else if self.pins.len() >= self.cap {
            self.pins.pop_front();
        }
        self.pins
            .push_back((client, self.now.saturating_add(RYW_TTL)));
    }
}

fn client_id(c: u8) -> ClientId {
    ClientId::new(&format!("client-{c}")).expect("non-empty")
}

/// Runs a history; `Err` describes the first property broken.
fn run(ops: &[Op], cap: usize) -> Result<(), String> {
    let config = TrackerConfig {
        max_pins: cap,
        ..TrackerConfig::new(POLL_INTERVAL, RYW_TTL)
    };
    let ids = (0..REPLICAS as u8).map(node).collect();
    let config = TrackerConfig {
        hold: HOLD,
        ..config
    };
    let mut t = Tracker::new(ids, config).map_err(|e| e.to_string())?;
    let mut m = Model::new(cap);
    // Writes held for a writer: (client, until).
    let mut held: Vec<(u8, Millis)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let now = m.now;
        let fail = |what: String| Err(format!("step {step} {op:?} at {now}: {what}"));
        match *op {
            Op::Advance(ms) => m.now = m.now.saturating_add(Millis(u64::from(ms))),
            Op::Poll { replica, answer } => {
                let result = match answer {
                    None => PollResult::Failed,
                    Some((term, writer, lease_ms)) => {
                        let claim = LeaderClaim {
                            term: Term(u64::from(term)),
                            writer: writer.map(|w| WriterClaim {
                                node: node(w),
                                lease_expires: now.saturating_add(Millis(u64::from(lease_ms))),
                            }),
                        };
                        m.max_term = m.max_term.max(claim.term);
                        m.claims[replica as usize] = Some(claim.clone());
                        m.answered_at[replica as usize] = Some(now);
                        PollResult::Answered(claim)
                    }
                };
                let _ = t.on_poll(now, replica as usize, result);
                if t.highest_term() != m.max_term {
                    return fail(format!(
                        "highest term {} but {} was seen",
                        t.highest_term(),
                        m.max_term
                    ));
                }
            }
            Op::Read {
                client,
                writer_required,
            } => {
                let id = client_id(client);
                let request = Request {
                    kind: RequestKind::Read,
                    writer_required,
                    client: Some(&id),
                };
                let route = t.route(now, request);
                if writer_required || m.pinned_until(client).is_some() {
                    // Read-your-writes: to the writer or rejected, never a follower.
                    match route {
                        Route::Forward(f) if !m.may_write(f.replica) => {
                            return fail(format!("writer-bound read sent to {}", f.replica));
                        }
                        Route::Forward(f) if f.why == Why::Read => {
                            return fail("pinned read routed as a plain read".into());
                        }
                        Route::Reject(Reject::NoReplica) => {
                            return fail("writer-bound read rejected as no_replica".into());
                        }
                        _ => {}
                    }
                    if let Some(w) = m.clear_writer()
                        && route
                            != Route::Forward(base_core::tracker::Forward {
                                replica: w,
                                why: if writer_required {
                                    Why::WriterRequired
                                } else {
                                    Why::PinnedRead
                                },
                                term: m.max_term,
                            })
                    {
                        return fail(format!("the writer is {w}, the read went {route:?}"));
                    }
                } else if let Route::Forward(f) = route
                    && f.why != Why::Read
                {
                    return fail(format!("unpinned read routed as {:?}", f.why));
                }
            }
            Op::Write {
                client,
                delivery,
                retry,
            } => {
                let id = client_id(client);
                let request = Request {
                    kind: RequestKind::Write,
                    writer_required: false,
                    client: Some(&id),
                };
                let route = t.route(now, request);
                // A driver's second try routed afresh (as after a hold) is a retry too.
                let attempt = if retry {
                    Attempt::Retry
                } else {
                    Attempt::First
                };
                'write: {
                    let Route::Forward(f) = route else {
                        if m.clear_writer().is_some() {
                            return fail("write rejected with a clear writer".into());
                        }
                        break 'write;
                    };
                    if !m.may_write(f.replica) {
                        return fail(format!("write routed to stale replica {}", f.replica));
                    }
                    if f.term != m.max_term {
                        return fail(format!("write routed at term {} < {}", f.term, m.max_term));
                    }
                    if let Some(w) = m.clear_writer()
                        && w != f.replica
                    {
                        return fail(format!("write sent to {} but the writer is {w}", f.replica));
                    }
                    let delivery = match delivery {
                        0 => Delivery::NotReached,
                        1 => Delivery::Reached { acknowledged: true },
                        2 => Delivery::Reached {
                            acknowledged: false,
                        },
                        _ => Delivery::NotWriter,
                    };
                    let reached = matches!(delivery, Delivery::Reached { .. });
                    let outcome = Outcome {
                        request,
                        replica: f.replica,
                        attempt,
                        delivery,
                        replayable: true,
                    };
                    let after = t.on_outcome(now, outcome);
                    if reached {
                        m.pin(client);
                    }
                    if delivery != (Delivery::Reached { acknowledged: true }) {
                        // Writes go only to the writer: it failed this one, so it is lost.
                        m.lost = Some((f.replica, m.max_term, now));
                        for r in 0..REPLICAS {
                            let due =
                                t.next_poll(now, r, Millis(now.0.saturating_sub(1)), POLL_INTERVAL);
                            if now.0 > 0 && due.at > now {
                                return fail(format!(
                                    "replica {r} not re-polled after the loss: {due:?}"
                                ));
                            }
                        }
                    }
                    match after {
                        AfterOutcome::Done
                            if delivery == (Delivery::Reached { acknowledged: true }) =>
                        {
                            break 'write;
                        }
                        AfterOutcome::WriterLost if reached || attempt == Attempt::Retry => {
                            break 'write;
                        }
                        AfterOutcome::Hold { until } if !reached && attempt == Attempt::First => {
                            if until != now.saturating_add(HOLD) {
                                return fail(format!("held until {until}"));
                            }
                            held.push((client, until));
                            break 'write;
                        }
                        other => return fail(format!("after {outcome:?}: {other:?}")),
                    }
                }
            }
        }
        // Held writes go only where the model allows, once a writer is known; refused at the end
        // of their hold.
        let mut still = Vec::new();
        for (client, until) in held.drain(..) {
            let id = client_id(client);
            let request = Request {
                kind: RequestKind::Write,
                writer_required: false,
                client: Some(&id),
            };
            match t.route_held(m.now, request, until) {
                Held::Forward(f) => {
                    if !m.may_write(f.replica) || f.term != m.max_term {
                        return Err(format!(
                            "step {step}: held write sent to {} at term {}",
                            f.replica, f.term
                        ));
                    }
                    let after = t.on_outcome(
                        m.now,
                        Outcome {
                            request,
                            replica: f.replica,
                            attempt: Attempt::Retry,
                            delivery: Delivery::Reached { acknowledged: true },
                            replayable: true,
                        },
                    );
                    if after != AfterOutcome::Done {
                        return Err(format!("step {step}: held write's retry: {after:?}"));
                    }
                    m.pin(client);
                }
                Held::Wait { until: u } if u == until && m.now < until => {
                    if m.clear_writer().is_some() {
                        return Err(format!(
                            "step {step}: a held write waits with a clear writer"
                        ));
                    }
                    still.push((client, until));
                }
                Held::Reject(Reject::NoWriter) if m.now >= until => {}
                other => return Err(format!("step {step}: held until {until}: {other:?}")),
            }
        }
        held = still;
        // Memory: the tracker holds exactly the model's live pins, never more than the cap.
        let live = m.pins.iter().filter(|(_, until)| *until > m.now).count();
        let _ = t.route(
            m.now,
            Request {
                kind: RequestKind::Write,
                writer_required: false,
                client: None,
            },
        ); // any input sweeps
        if t.pin_count() != live || t.pin_count() > cap {
            return Err(format!(
                "step {step}: {} pins held, {live} live, cap {cap}",
                t.pin_count()
            ));
        }
        for c in 0..10 {
            if t.pinned_until(m.now, &client_id(c)) != m.pinned_until(c) {
                return Err(format!("step {step}: pin of client {c} differs"));
            }
        }
    }
    Ok(())
}

fn check(ops: Vec<Op>, cap: usize) -> TestResult {
    match run(&ops, cap) {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

fn quickcheck() -> QuickCheck {
    QuickCheck::new().tests(2_000).max_tests(4_000)
}

#[test]
fn writes_only_reach_the_writer_and_pinned_reads_never_reach_a_follower() {
    fn prop(ops: Vec<Op>) -> TestResult {
        check(ops, 1_000)
    }
    quickcheck().quickcheck(prop as fn(Vec<Op>) -> TestResult);
}

#[test]
fn pins_stay_under_a_small_cap_and_the_oldest_goes_first() {
    fn prop(ops: Vec<Op>) -> TestResult {
        check(ops, 3)
    }
    quickcheck().quickcheck(prop as fn(Vec<Op>) -> TestResult);
}

#[test]
fn long_histories_hold_too() {
    fn prop(seed_ops: Vec<Vec<Op>>) -> TestResult {
        let ops: Vec<Op> = seed_ops.into_iter().flatten().collect();
        check(ops, 4)
    }
    QuickCheck::new()
        .tests(200)
        .quickcheck(prop as fn(Vec<Vec<Op>>) -> TestResult);
}

/// At the cap, a full tracker stays at the cap and keeps answering in bounded memory.
#[test]
fn pins_never_exceed_the_default_cap() {
    let mut t = Tracker::new(
        vec![node(0)],
        TrackerConfig::new(POLL_INTERVAL, Millis(3_600_000)),
    )
    .expect("valid");
    let cap = base_core::tracker::MAX_PINS;
    let _ = t.on_poll(
        Millis(0),
        0,
        PollResult::Answered(LeaderClaim {
            term: Term(1),
            writer: Some(WriterClaim {
                node: node(0),
                lease_expires: Millis(u64::MAX),
            }),
        }),
    );
    let mut first = HashMap::new();
    for i in 0..(cap + 1_000) {
        let id = client_id_n(i);
        if i < 10 {
            first.insert(i, id.clone());
        }
        let request = Request {
            kind: RequestKind::Write,
            writer_required: false,
            client: Some(&id),
        };
        let _ = t.on_outcome(
            Millis(i as u64),
            Outcome {
                request,
                replica: 0,
                attempt: Attempt::First,
                delivery: Delivery::Reached { acknowledged: true },
                replayable: false,
            },
        );
    }
    assert_eq!(t.pin_count(), cap);
    let now = Millis((cap + 1_000) as u64);
    assert!(first.values().all(|id| t.pinned_until(now, id).is_none()));
    // Past every TTL, one input drops them all.
    let later = now.saturating_add(Millis(3_600_001));
    let _ = t.route(
        later,
        Request {
            kind: RequestKind::Read,
            writer_required: false,
            client: None,
        },
    );
    assert_eq!(t.pin_count(), 0);
}

fn client_id_n(i: usize) -> ClientId {
    ClientId::new(&format!("c{i}")).expect("non-empty")
}
