//! `tracker`: the gateway leader tracker under an arbitrary history of poll results (structured
//! claims and raw `/_ha/leader` bodies, garbled ones included), requests, outcomes and time that
//! jumps forward, stands still or goes backwards.
//!
//! Checked after every input, against a small model of what the tracker was told:
//! - no write (or writer-required / pinned read) goes to a replica that is known stale: it must be
//!   named writer at the highest term seen with a live lease, by no other name at that term, and its
//!   own latest answer must affirm it;
//! - a plain read goes to a replica whose latest answer is at the highest term, or to the writer;
//! - within the read-your-writes TTL after a client's write reached a replica, its reads never go
//!   to a follower (`Why::Read`);
//! - the next poll of a replica comes within the interval, hunts (≤ 100 ms) while no writer is
//!   known, and is never sooner than its floor;
//! - the highest term never goes down; memory stays bounded (pins ≤ cap, ≤ the live pins made,
//!   client ids ≤ `MAX_CLIENT_ID_BYTES`).
#![no_main]

use arbitrary::Arbitrary;
use base_core::tracker::{
    AfterOutcome, Attempt, ClientHeaders, ClientId, Delivery, HUNT_POLL, Held, Input, LeaderClaim,
    MAX_CLIENT_ID_BYTES, MIN_WRITER_POLL, Outcome, PollResult, Request, RequestKind, Route,
    Tracker, TrackerConfig, Why, WriterClaim, client_identity, parse_leader_claim,
};
use base_core::{Millis, NodeId, Term};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
struct Scenario {
    /// 1 to 5 replicas.
    replicas: u8,
    poll_interval: u16,
    ryw_ttl: u16,
    /// Pin cap 1..=8, so eviction happens.
    max_pins: u8,
    start: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Advance(u16),
    /// Time going backwards (the tracker must treat it as standing still).
    Rewind(u16),
    /// A jump to a far time (overflow hunting).
    Jump(u64),
    Poll {
        replica: u8,
        answer: Answer,
    },
    /// When does the poller poll `replica` again, its last poll having ended `ago` ms before now?
    NextPoll {
        replica: u8,
        ago: u16,
    },
    Request(Req),
    Outcome {
        req: Req,
        replica: u8,
        retry: bool,
        delivery: u8,
        replayable: bool,
    },
    Identity {
        base_client: Option<String>,
        xff: Option<String>,
        org: Option<String>,
        peer: Option<String>,
    },
}

#[derive(Arbitrary, Debug)]
enum Answer {
    Failed,
    /// term, named writer (index; past the list names an unknown node), lease from now (ms).
    Claim {
        term: u8,
        writer: Option<u8>,
        lease: u16,
    },
    /// A claim with any numbers at all.
    Wild {
        term: u64,
        writer: Option<u8>,
        lease_expires: u64,
    },
    /// A raw `/_ha/leader` body, as the gateway's poller reads it.
    Body(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Req {
    write: bool,
    writer_required: bool,
    client: Option<u8>,
}

fn node(i: u8, n: usize) -> NodeId {
    if usize::from(i) < n {
        NodeId::new(format!("b-{i}"))
    } else {
        NodeId::new(format!("elsewhere-{i}"))
    }
}

struct Model {
    n: usize,
    ids: Vec<NodeId>,
    now: Millis,
    max_term: Term,
    claims: Vec<Option<LeaderClaim>>,
    /// client → (pin end, order made): the pins the tracker must hold, evicted as it evicts.
    pins: HashMap<u8, (Millis, u64)>,
    seq: u64,
    cap: usize,
    /// When the tracker last lost its writer (an outcome asked for a re-poll).
    repoll_at: Option<Millis>,
}

impl Model {
    /// May a write go to replica `r` now?
    fn may_write(&self, r: usize) -> bool {
        let id = &self.ids[r];
        let live_names: Vec<&NodeId> = self
            .claims
            .iter()
            .flatten()
            .filter(|c| c.term == self.max_term)
            .filter_map(|c| c.writer.as_ref())
            .filter(|w| w.lease_expires > self.now)
            .map(|w| &w.node)
            .collect();
        let named = !live_names.is_empty() && live_names.iter().all(|n| *n == id);
        let own_ok = self.claims[r].as_ref().is_none_or(|c| {
            c.term == self.max_term && c.writer.as_ref().is_some_and(|w| &w.node == id)
        });
        named && own_ok
    }

    fn current(&self, r: usize) -> bool {
        self.claims[r]
            .as_ref()
            .is_some_and(|c| c.term == self.max_term)
    }

    fn pinned(&self, client: u8) -> bool {
        self.pins
            .get(&client)
            .is_some_and(|&(until, _)| until > self.now)
    }

    /// Every input moves time (never back) and drops the pins that ended.
    fn advance(&mut self, clock: Millis) {
        self.now = self.now.max(clock);
        let now = self.now;
        self.pins.retain(|_, &mut (until, _)| until > now);
    }

    /// A write reached a replica: pin its client; at the cap the pin that ends first goes.
    fn pin(&mut self, client: u8, ttl: Millis) {
        if self.pins.remove(&client).is_none() && self.pins.len() >= self.cap {
            let first = self.pins.iter().min_by_key(|(_, k)| **k).map(|(c, _)| *c);
            if let Some(c) = first {
                self.pins.remove(&c);
            }
        }
        self.pins
            .insert(client, (self.now.saturating_add(ttl), self.seq));
        self.seq += 1;
    }
}

fn client(c: u8) -> ClientId {
    ClientId::new(&format!("client-{}", c % 16)).expect("non-empty id")
}

fn check_route(m: &Model, req: Req, route: Route) {
    let Route::Forward(f) = route else { return };
    assert!(
        f.replica < m.n,
        "forward to replica {} of {}",
        f.replica,
        m.n
    );
    match f.why {
        Why::Write | Why::WriterRequired | Why::PinnedRead => {
            assert!(
                m.may_write(f.replica),
                "{:?} sent to replica {} which is not the writer: {:?}",
                f.why,
                f.replica,
                m.claims
            );
            assert_eq!(f.term, m.max_term, "writer term below the highest seen");
        }
        Why::Read => {
            assert!(!req.write, "a write routed as a read");
            assert!(
                !req.writer_required,
                "a writer-required read routed to any replica"
            );
            if let Some(c) = req.client {
                assert!(
                    !m.pinned(c % 16),
                    "a pinned client's read went to a follower"
                );
            }
            assert!(
                m.current(f.replica) || m.may_write(f.replica),
                "read sent to stale replica {}",
                f.replica
            );
        }
    }
    match (req.write, f.why) {
        (true, Why::Write) | (false, Why::WriterRequired | Why::PinnedRead | Why::Read) => {}
        (w, why) => panic!("write={w} routed as {why:?}"),
    }
}

fuzz_target!(|s: Scenario| {
    let n = usize::from(s.replicas % 5) + 1;
    let ids: Vec<NodeId> = (0..n as u8).map(|i| node(i, n)).collect();
    let config = TrackerConfig {
        max_pins: usize::from(s.max_pins % 8) + 1,
        ..TrackerConfig::new(
            Millis(u64::from(s.poll_interval)),
            Millis(u64::from(s.ryw_ttl)),
        )
    };
    let mut t = Tracker::new(ids.clone(), config).expect("a valid tracker");
    let mut m = Model {
        n,
        ids,
        now: Millis::ZERO,
        max_term: Term(0),
        claims: vec![None; n],
        pins: HashMap::new(),
        seq: 0,
        cap: config.max_pins,
        repoll_at: None,
    };
    let mut clock = Millis(s.start); // the time handed to the tracker (may go backwards)
    for op in s.ops.iter().take(512) {
        match op {
            Op::Advance(ms) => clock = clock.saturating_add(Millis(u64::from(*ms))),
            Op::Rewind(ms) => clock = clock.saturating_sub(Millis(u64::from(*ms))),
            Op::Jump(t) => clock = Millis(*t),
            Op::Poll { replica, answer } => {
                let r = usize::from(*replica) % n;
                let result = match answer {
                    Answer::Failed => PollResult::Failed,
                    Answer::Claim {
                        term,
                        writer,
                        lease,
                    } => PollResult::Answered(LeaderClaim {
                        term: Term(u64::from(*term % 8)),
                        writer: writer.map(|w| WriterClaim {
                            node: node(w % 7, n),
                            lease_expires: clock
                                .max(m.now)
                                .saturating_add(Millis(u64::from(*lease))),
                        }),
                    }),
                    Answer::Wild {
                        term,
                        writer,
                        lease_expires,
                    } => PollResult::Answered(LeaderClaim {
                        term: Term(*term),
                        writer: writer.map(|w| WriterClaim {
                            node: node(w % 7, n),
                            lease_expires: Millis(*lease_expires),
                        }),
                    }),
                    Answer::Body(b) => match parse_leader_claim(b) {
                        Ok(c) => PollResult::Answered(c),
                        Err(_) => PollResult::Failed,
                    },
                };
                m.advance(clock);
                if let PollResult::Answered(c) = &result {
                    m.max_term = m.max_term.max(c.term);
                    m.claims[r] = Some(c.clone());
                }
                let _ = t.step(clock, Input::Poll { replica: r, result });
            }
            Op::NextPoll { replica, ago } => {
                let r = usize::from(*replica) % n;
                let last_end = clock.saturating_sub(Millis(u64::from(*ago)));
                let interval = Millis(u64::from(s.poll_interval));
                let next = t.next_poll(clock, r, last_end, interval);
                let waited = Millis(next.at.0.saturating_sub(last_end.0));
                'checks: {
                    // A writer lost after this replica's last poll: it is due at that moment.
                    if let Some(at) = m.repoll_at.filter(|&at| last_end < at) {
                        assert_eq!(next.at, at, "not re-polled after the writer was lost");
                        assert!(next.at <= m.now);
                        break 'checks;
                    }
                    // Never later than the interval, never busier than the floors allow.
                    assert!(
                        waited <= interval,
                        "{next:?} after {last_end:?}, interval {interval:?}"
                    );
                    let floor = if t.writer(clock).is_some() {
                        MIN_WRITER_POLL
                    } else {
                        HUNT_POLL
                    };
                    assert!(
                        waited >= floor.min(interval) || next.at.0 == u64::MAX,
                        "{next:?}: polled sooner than {floor:?}"
                    );
                    // With no writer known, every replica is hunted.
                    if t.writer(clock).is_none() {
                        assert!(waited <= HUNT_POLL, "{next:?}: no writer, yet no hunt");
                    }
                    // Asked to come back only while the writer's lease still runs, before `at`.
                    if let Some(v) = next.valid_until {
                        assert!(v < next.at, "{next:?}");
                        assert!(
                            t.writer(clock).is_some_and(|(_, _, lease)| lease == v),
                            "{next:?}"
                        );
                    }
                }
            }
            Op::Request(req) => {
                m.advance(clock);
                let c = req.client.map(client);
                let request = Request {
                    kind: if req.write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    },
                    writer_required: req.writer_required,
                    client: c.as_ref(),
                };
                let route = t.route(clock, request);
                check_route(&m, *req, route);
            }
            Op::Outcome {
                req,
                replica,
                retry,
                delivery,
                replayable,
            } => {
                m.advance(clock);
                let c = req.client.map(client);
                let request = Request {
                    kind: if req.write {
                        RequestKind::Write
                    } else {
                        RequestKind::Read
                    },
                    writer_required: req.writer_required,
                    client: c.as_ref(),
                };
                let delivery = match delivery % 4 {
                    0 => Delivery::NotReached,
                    1 => Delivery::Reached { acknowledged: true },
                    2 => Delivery::NotWriter,
                    _ => Delivery::Reached {
                        acknowledged: false,
                    },
                };
                let unsent = matches!(delivery, Delivery::NotReached | Delivery::NotWriter);
                let attempt = if *retry {
                    Attempt::Retry
                } else {
                    Attempt::First
                };
                let after = t.on_outcome(
                    clock,
                    Outcome {
                        request,
                        replica: usize::from(*replica) % n,
                        attempt,
                        delivery,
                        replayable: *replayable,
                    },
                );
                if let (Delivery::Reached { .. }, true, Some(cl)) =
                    (delivery, req.write, req.client)
                {
                    m.pin(cl % 16, config.ryw_ttl);
                }
                if after.repoll() {
                    m.repoll_at = Some(m.now);
                }
                match after {
                    AfterOutcome::Retry(f) => {
                        assert!(unsent && !*retry && *replayable, "retry not allowed here");
                        check_route(&m, *req, Route::Forward(f));
                    }
                    AfterOutcome::Reject(_) => assert!(unsent && !*retry && *replayable),
                    AfterOutcome::GiveUp => assert!(unsent),
                    AfterOutcome::Done => assert!(!unsent),
                    AfterOutcome::Hold { until } => {
                        // Only what cannot have been applied is held for the next writer.
                        assert!(unsent && !*retry && *replayable, "hold not allowed here");
                        assert!(until >= m.now);
                        assert!(t.writer(clock).is_none(), "held while a writer is known");
                        if let Held::Forward(f) = t.route_held(clock, request, until) {
                            check_route(&m, *req, Route::Forward(f));
                        }
                    }
                    AfterOutcome::WriterLost => {
                        assert!(delivery != Delivery::Reached { acknowledged: true });
                        assert!(t.writer(clock).is_none(), "a lost writer is still known");
                    }
                }
            }
            Op::Identity {
                base_client,
                xff,
                org,
                peer,
            } => {
                let id = client_identity(ClientHeaders {
                    base_client: base_client.as_deref(),
                    forwarded_for: xff.as_deref(),
                    org_id: org.as_deref(),
                    peer: peer.as_deref(),
                });
                if let Some(id) = id {
                    assert!(!id.as_str().is_empty() && id.as_str().len() <= MAX_CLIENT_ID_BYTES);
                }
                for h in [base_client, xff, org, peer].into_iter().flatten() {
                    if let Some(id) = ClientId::new(h) {
                        assert!(id.as_str().len() <= MAX_CLIENT_ID_BYTES);
                        assert!(h.trim().starts_with(id.as_str()));
                    }
                }
            }
        }
        // Invariants after every input.
        assert_eq!(
            t.highest_term(),
            m.max_term,
            "highest term differs from the highest reported"
        );
        assert!(t.pin_count() <= config.max_pins, "pins over the cap");
        assert_eq!(
            t.pin_count(),
            m.pins.len(),
            "pins held differ from the pins made and not yet ended"
        );
        if let Some((w, term, lease)) = t.writer(m.now) {
            assert!(m.may_write(w), "writer {w} is known stale");
            assert_eq!(term, m.max_term);
            assert!(lease > m.now);
        }
        for r in 0..n {
            if t.is_ready(m.now, r) {
                assert!(m.current(r), "stale replica {r} counted ready");
            }
        }
    }
});
