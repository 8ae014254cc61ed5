//! The gateway (and the operator's own leader view): the core `tracker`, fed by polls of every
//! replica's `/_ha/leader` over the simulated network, routing the clients' requests. Plus the
//! client tasks that send them.

use crate::poll::{GATEWAY_POLL_TIMEOUT_MS, OPERATOR_POLL_TIMEOUT_MS};
use crate::stats::Failover;
use crate::world::{
    ClientOp, ClientResult, Host, Packet, Shared, World, WriteId, WriteReply, agent_addr,
    gateway_addr, lock, pod_id,
};
use base_core::tracker::{
    AfterOutcome, Attempt, ClientHeaders, ClientId, Delivery, Forward, Held, Outcome, PollEffect,
    PollResult, Request, RequestKind, Route, client_identity, parse_leader_claim,
};
use base_core::{Millis, Term};
use futures::channel::oneshot;
use madsim::net::Endpoint;
use std::time::Duration;

/// How long the gateway waits for a replica's answer to a forwarded request.
pub const FORWARD_TIMEOUT_MS: u64 = 1_500;
/// How long a client waits for the gateway.
pub const CLIENT_TIMEOUT_MS: u64 = 3_000;

/// How often a waiting poll looks whether the process it waits on died (its connection reset).
const RESET_CHECK: Duration = Duration::from_millis(20);

/// Whose tracker a poll feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Gateway,
    Operator,
}

impl World {
    pub fn next_poll_seq(&mut self, who: Who) -> u64 {
        let seq = match who {
            Who::Gateway => &mut self.gateway.seq,
            Who::Operator => &mut self.operator.seq,
        };
        *seq += 1;
        *seq
    }

    /// A poll's answer as the tracker takes it.
    pub(crate) fn poll_outcome(&mut self, ordinal: i32, body: Option<Vec<u8>>) -> PollResult {
        match body.as_deref().map(parse_leader_claim) {
            Some(Ok(claim)) => PollResult::Answered(claim),
            Some(Err(e)) => {
                self.fail(
                    "harness",
                    format!("{} answered /_ha/leader unreadably: {e}", pod_id(ordinal)),
                );
                PollResult::Failed
            }
            None => PollResult::Failed,
        }
    }

    /// A gateway poll of replica `ordinal` ended: its answer's body, or nothing in time. Returns
    /// when it ended, on the gateway's clock.
    pub fn poll_result(&mut self, ordinal: i32, body: Option<Vec<u8>>) -> Millis {
        let now_ns = self.now_ns();
        let result = self.poll_outcome(ordinal, body);
        let p = &mut self.gateway;
        if let PollResult::Answered(claim) = &result {
            p.max_term_seen = p.max_term_seen.max(claim.term);
        }
        let now = p.clock.local_ms(now_ns);
        let effect = p.tracker.on_poll(now, ordinal as usize, result);
        let writer = p.tracker.writer(now);
        if let Some((ix, term, _)) = writer {
            p.named = Some((ix as i32, term));
        }
        if let PollEffect::WriterChanged { writer, term } = effect {
            let w = writer.map_or("none".to_string(), |w| pod_id(w as i32).0);
            self.ev(format!("gateway: writer is {w} at term {term}"));
        }
        // Held requests ask the tracker again after every poll result.
        for waiter in self.gateway.poll_waiters.drain(..) {
            let _ = waiter.send(());
        }
        now
    }

    /// A receiver that fires when the gateway's tracker loses its writer (its pollers wake).
    fn gateway_repoll_waiter(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // Pollers whose sleep ended first dropped their receivers: do not keep their senders.
        self.gateway.repoll_waiters.retain(|w| !w.is_canceled());
        self.gateway.repoll_waiters.push(tx);
        rx
    }

    /// A receiver that fires at the gateway's next poll result (a held request asks again).
    fn gateway_poll_waiter(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.gateway.poll_waiters.retain(|w| !w.is_canceled());
        self.gateway.poll_waiters.push(tx);
        rx
    }

    /// Where a held request goes now (`Tracker::route_held`); checks invariant 3 on a forward.
    fn gateway_route_held(&mut self, client: &ClientId, kind: RequestKind, until: Millis) -> Held {
        let now = self.gateway_now();
        let request = Request {
            kind,
            writer_required: false,
            client: Some(client),
        };
        let held = self.gateway.tracker.route_held(now, request, until);
        if let Held::Forward(f) = held {
            self.check_route(f);
        }
        held
    }

    /// How long the poller of `ordinal`, whose last poll ended at `last_end`, sleeps before it
    /// asks again; `None`: poll now. The production gateway's rule (`Tracker::poll_wait`, which
    /// adapter-k8s `gateway::poll::poll_loop` sleeps too).
    pub fn gateway_poll_wait(&mut self, ordinal: i32, last_end: Millis) -> Option<u64> {
        let now = self.gateway_now();
        let interval = Millis(self.cfg.poll_interval_ms);
        self.gateway
            .tracker
            .poll_wait(now, ordinal as usize, last_end, interval)
            .map(|w| w.0)
    }

    /// The poller (`via`) last named `writer` (same node, same term) as the writer and knows no
    /// writer now, while `writer` still accepts writes and the cluster was whole and undisturbed
    /// for a whole poll (interval and timeout) before: a healthy writer forgotten between polls
    /// (what polling the writer before its lease passes prevents).
    pub fn forgot_live_writer(&self, writer: i32, named: Option<(i32, Term)>, via: Host) -> bool {
        let term = self.replicas[writer as usize]
            .agent
            .as_ref()
            .map(|a| a.node().term());
        let timeout = match via {
            Host::Operator => OPERATOR_POLL_TIMEOUT_MS,
            _ => GATEWAY_POLL_TIMEOUT_MS,
        };
        let quiet_for = (self.cfg.poll_interval_ms + timeout) * 1_000_000;
        let calm = self.now_ns() > self.disturbed_ns + quiet_for;
        // The operator polls only pods with an IP that are not being deleted.
        let polled = via != Host::Operator || self.operator.poller.polls(&writer);
        calm && polled && named.is_some_and(|(o, t)| o == writer && Some(t) == term)
    }

    /// A poll connects to the process of `ordinal`: its incarnation, or `None` when no process
    /// listens (connection refused: the poll fails at once).
    pub fn poll_connect(&self, ordinal: i32) -> Option<u64> {
        self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .map(|a| a.incarnation)
    }

    /// The process a poll is waiting on died (its socket closes: the poll fails at once). A
    /// paused process, or one behind a cut link, keeps the poll waiting until its timeout.
    pub fn poll_reset(&self, ordinal: i32, incarnation: u64) -> bool {
        self.poll_connect(ordinal) != Some(incarnation)
    }

    /// Where the gateway sends a client's request; checks invariant 3 on every write.
    fn gateway_route(&mut self, client: &ClientId, kind: RequestKind) -> Route {
        let now = self.gateway_now();
        let request = Request {
            kind,
            writer_required: false,
            client: Some(client),
        };
        let route = self.gateway.tracker.route(now, request);
        match route {
            Route::Forward(f) => self.check_route(f),
            Route::Reject(_) if kind == RequestKind::Write => {
                self.stats.writes_refused_by_gateway += 1;
                if let Some(w) = self.current_writer() {
                    self.stats.no_writer_while_one_accepts += 1;
                    if self.forgot_live_writer(w, self.gateway.named, Host::Gateway) {
                        self.stats.gateway_forgot_live_writer += 1;
                        self.ev(format!(
                            "gateway refuses a write: it forgot the writer {}, which still accepts writes",
                            pod_id(w)
                        ));
                    }
                }
            }
            Route::Reject(_) => {}
        }
        route
    }

    /// Invariant 3: the gateway never routes a write to a node in a term it knew was superseded.
    fn check_route(&mut self, f: Forward) {
        if f.why == base_core::tracker::Why::Read {
            return; // plain reads may go to any replica that is not stale
        }
        let known = self.gateway.max_term_seen;
        let reported = self.gateway.tracker.reported_term(f.replica);
        if f.term < known || reported.is_some_and(|r| r < known) {
            self.fail(
                "3 no write routed to a superseded term",
                format!(
                    "gateway routes a {:?} to {} at term {} (it last reported {:?}) after a poll showed term {known}",
                    f.why,
                    pod_id(f.replica as i32),
                    f.term,
                    reported.map(|t| t.0)
                ),
            );
        }
    }

    fn gateway_outcome(
        &mut self,
        client: &ClientId,
        kind: RequestKind,
        f: Forward,
        attempt: Attempt,
        delivery: Delivery,
    ) -> AfterOutcome {
        let now = self.gateway_now();
        let outcome = Outcome {
            request: Request {
                kind,
                writer_required: false,
                client: Some(client),
            },
            replica: f.replica,
            attempt,
            delivery,
            replayable: true,
        };
        let after = self.gateway.tracker.on_outcome(now, outcome);
        if let AfterOutcome::Retry(f) = after {
            self.check_route(f);
        }
        if after.repoll() {
            self.ev(format!(
                "gateway: writer {} failed a request ({delivery:?}): re-polling every replica",
                pod_id(f.replica as i32)
            ));
            for waiter in self.gateway.repoll_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        after
    }

    /// The checker's read-your-writes requirement for a read the gateway routes now.
    fn ryw_requirement(&self, client: u32) -> Option<(u64, crate::world::Entry)> {
        let now = self.gateway_now();
        let ttl = base_core::Millis(self.cfg.ryw_ttl_ms);
        self.checks
            .ryw
            .get(&client)
            .filter(|(_, _, acked_at)| now < acked_at.saturating_add(ttl))
            .map(|(i, e, _)| (*i, *e))
    }

    /// The gateway passes a write's acknowledgement on to its client.
    fn write_acked(&mut self, client: u32, write: WriteId, term: Term, index: u64) {
        let now_ns = self.now_ns();
        let entry = crate::world::Entry {
            term,
            write: Some(write),
        };
        let at = self.gateway_now();
        self.checks.acked.insert(index, entry);
        self.checks.ryw.insert(client, (index, entry, at));
        self.stats.acked_writes += 1;
        self.ev(format!("gateway acknowledges {entry} (index {index})"));
        // Invariant 5 for writers of later terms that already exist.
        for ordinal in 0..self.replicas.len() as i32 {
            let newer = self.replicas[ordinal as usize]
                .agent
                .as_ref()
                .and_then(|a| a.writer_term)
                .filter(|t| *t > term);
            if newer.is_some() {
                let held = self.k8s.pvcs[&ordinal].store.entry(index);
                if held != Some(entry) {
                    self.fail(
                        "5 no acknowledged write is lost",
                        format!(
                            "{entry} acknowledged at index {index}, but {} already writes in a later term without it",
                            pod_id(ordinal)
                        ),
                    );
                }
            }
        }
        if self.healed_ns.is_some() && self.live_ns.is_none() {
            self.live_ns = Some(now_ns);
            self.ev("liveness: a write went through the gateway after the heal");
        }
        if let Some(p) = self.stats.failover_pending
            && term > p.term
        {
            let ms = (now_ns - p.since_ns) / 1_000_000;
            self.stats.failovers.push(Failover {
                kind: p.kind,
                ms,
                clean: p.clean,
            });
            self.stats.failover_pending = None;
            self.ev(format!(
                "failover ({}{}) done in {ms} ms (term {} -> {term})",
                if p.clean { "clean " } else { "" },
                p.kind.name(),
                p.term
            ));
        }
    }
}

/// The gateway's poller of replica `ordinal` (adapter-k8s `gateway::poll::poll_loop`): poll,
/// bounded by `--poll-timeout`, then wait `next_poll_in` from the poll's end, forever.
pub async fn poll_loop(world: Shared, ordinal: i32) {
    let Ok(ep) = Endpoint::bind("0.0.0.0:0").await else {
        return;
    };
    loop {
        let body = match LeaderPoll::start(&world, Who::Gateway, ordinal) {
            Some(poll) => poll.answer(&world, &ep).await,
            None => None,
        };
        let last_end = lock(&world).poll_result(ordinal, body);
        // Wakes early when the writer's lease ends (the rule changes then: hunting), or when
        // the tracker lost its writer (every replica is due at once).
        loop {
            let (wait, repoll) = {
                let mut w = lock(&world);
                (
                    w.gateway_poll_wait(ordinal, last_end),
                    w.gateway_repoll_waiter(),
                )
            };
            let Some(wait_ms) = wait else { break };
            let sleep = madsim::time::sleep(Duration::from_millis(wait_ms));
            futures::pin_mut!(sleep);
            let _ = futures::future::select(sleep, repoll).await;
        }
    }
}

/// A `GET /_ha/leader` of one replica, started: its sequence number, the process it went to, and
/// when it started. `None` when no process listens (connection refused: the poll fails at once).
pub(crate) struct LeaderPoll {
    seq: u64,
    incarnation: u64,
    started: madsim::time::Instant,
    who: Who,
    ordinal: i32,
}

impl LeaderPoll {
    pub(crate) fn start(world: &Shared, who: Who, ordinal: i32) -> Option<LeaderPoll> {
        let started = madsim::time::Instant::now();
        let mut w = lock(world);
        let seq = w.next_poll_seq(who);
        let incarnation = w.poll_connect(ordinal)?;
        Some(LeaderPoll {
            seq,
            incarnation,
            started,
            who,
            ordinal,
        })
    }

    /// Sends the query from `ep` and waits for its answer's body: nothing when the process dies
    /// meanwhile or does not answer within the poller's timeout.
    pub(crate) async fn answer(self, world: &Shared, ep: &Endpoint) -> Option<Vec<u8>> {
        let _ = ep
            .send_to_raw(
                agent_addr(self.ordinal),
                0,
                Box::new(Packet::LeaderQuery { seq: self.seq }),
            )
            .await;
        let timeout_ms = match self.who {
            Who::Gateway => GATEWAY_POLL_TIMEOUT_MS,
            Who::Operator => OPERATOR_POLL_TIMEOUT_MS,
        };
        let deadline = self.started + Duration::from_millis(timeout_ms);
        // One receive stays pending across the reset checks: dropping it could lose an answer.
        let mut recv = Box::pin(ep.recv_from_raw(0));
        while let Some(left) = deadline.checked_duration_since(madsim::time::Instant::now()) {
            match madsim::time::timeout(left.min(RESET_CHECK), &mut recv).await {
                Ok(Ok((payload, _))) => {
                    recv = Box::pin(ep.recv_from_raw(0));
                    if let Ok(p) = payload.downcast::<Packet>()
                        && let Packet::LeaderAnswer { seq, body } = *p
                        && seq == self.seq
                    {
                        return Some(body);
                    }
                }
                Ok(Err(_)) => return None,
                Err(_) if lock(world).poll_reset(self.ordinal, self.incarnation) => return None,
                Err(_) => {}
            }
        }
        None
    }
}

fn client_id(client: u32) -> ClientId {
    client_identity(ClientHeaders {
        base_client: Some(&format!("c{client}")),
        org_id: Some("hanzo"),
        ..ClientHeaders::default()
    })
    .expect("a client id")
}

/// The gateway's front door: one task per request.
pub async fn gateway_main(world: Shared) {
    let Ok(ep) = Endpoint::bind(gateway_addr()).await else {
        lock(&world).fail("harness", "the gateway cannot bind");
        return;
    };
    loop {
        let Ok((payload, src)) = ep.recv_from_raw(0).await else {
            return;
        };
        let Ok(packet) = payload.downcast::<Packet>() else {
            continue;
        };
        let Packet::Client { client, req, op } = *packet else {
            continue;
        };
        if Host::from_ip(src.ip()) != Some(Host::Clients) {
            continue;
        }
        let (w, ep) = (world.clone(), ep.clone());
        madsim::task::spawn(async move {
            let result = handle_request(&w, client, op).await;
            let reply = Packet::ClientReply { req, result };
            let _ = ep.send_to_raw(src, 0, Box::new(reply)).await;
        });
    }
}

async fn handle_request(world: &Shared, client: u32, op: ClientOp) -> ClientResult {
    let cid = client_id(client);
    let kind = match op {
        ClientOp::Write(_) => RequestKind::Write,
        ClientOp::Read => RequestKind::Read,
    };
    let mut route = lock(world).gateway_route(&cid, kind);
    let mut attempt = Attempt::First;
    loop {
        let f = match route {
            Route::Forward(f) => f,
            Route::Reject(_) => return ClientResult::Rejected,
        };
        let reachable = lock(world).reachable(Host::Gateway, Host::Replica(f.replica as i32));
        let (delivery, result) = if reachable {
            let reply = forward(world, f, client, op).await;
            let acknowledged = reply.is_some();
            // A refusal says the replica is not the writer and applied nothing.
            let refused = matches!(
                reply,
                Some(Packet::WriteReply {
                    reply: WriteReply::Refused { .. },
                    ..
                }) | Some(Packet::ReadRefused {
                    not_writer: true,
                    ..
                })
            );
            let result = match reply {
                None => ClientResult::Failed,
                Some(Packet::ReadReply { .. }) => ClientResult::ReadOk,
                Some(Packet::WriteReply {
                    reply: WriteReply::Ok { term, index },
                    ..
                }) => {
                    if let ClientOp::Write(w) = op {
                        lock(world).write_acked(client, w, term, index);
                    }
                    ClientResult::WriteOk
                }
                Some(Packet::WriteReply {
                    reply: WriteReply::Refused { .. },
                    ..
                })
                | Some(Packet::ReadRefused { .. }) => ClientResult::Rejected,
                Some(_) => ClientResult::Failed,
            };
            let delivery = if refused {
                Delivery::NotWriter
            } else {
                Delivery::Reached { acknowledged }
            };
            (delivery, result)
        } else {
            (Delivery::NotReached, ClientResult::Failed)
        };
        let after = lock(world).gateway_outcome(&cid, kind, f, attempt, delivery);
        match after {
            AfterOutcome::Retry(next) if attempt == Attempt::First => {
                route = Route::Forward(next);
                attempt = Attempt::Retry;
            }
            AfterOutcome::Hold { until } if attempt == Attempt::First => {
                // Held until a poll finds a writer (adapter-k8s `proxy::hold`).
                let next = loop {
                    let (held, polled) = {
                        let mut w = lock(world);
                        (
                            w.gateway_route_held(&cid, kind, until),
                            w.gateway_poll_waiter(),
                        )
                    };
                    match held {
                        Held::Forward(f) => break Some(f),
                        Held::Reject(_) => break None,
                        Held::Wait { until } => {
                            let left = until.0.saturating_sub(lock(world).gateway_now().0);
                            let sleep = madsim::time::sleep(Duration::from_millis(left.max(1)));
                            futures::pin_mut!(sleep);
                            let _ = futures::future::select(sleep, polled).await;
                        }
                    }
                };
                let Some(next) = next else {
                    return ClientResult::Rejected;
                };
                route = Route::Forward(next);
                attempt = Attempt::Retry;
            }
            AfterOutcome::Reject(_) => return ClientResult::Rejected,
            _ => return result,
        }
    }
}

/// Sends one request to a replica and waits for its answer.
async fn forward(world: &Shared, f: Forward, client: u32, op: ClientOp) -> Option<Packet> {
    let packet = {
        let mut w = lock(world);
        w.next_req += 1;
        let req = w.next_req;
        match op {
            ClientOp::Write(write) => Packet::Write {
                req,
                term: f.term,
                write,
            },
            ClientOp::Read => Packet::Read {
                req,
                writer_required: f.why.needs_the_writer(),
                must_have: w.ryw_requirement(client),
            },
        }
    };
    let want = match &packet {
        Packet::Write { req, .. } | Packet::Read { req, .. } => *req,
        _ => unreachable!(),
    };
    let ep = Endpoint::bind("0.0.0.0:0").await.ok()?;
    let to = agent_addr(f.replica as i32);
    let out = lock(world).out(to, packet);
    crate::world::send_all(&ep, vec![out]).await;
    let deadline = madsim::time::Instant::now() + Duration::from_millis(FORWARD_TIMEOUT_MS);
    // A late answer to an earlier request may reach this port (ports are reused): match on `req`.
    while let Some(left) = deadline.checked_duration_since(madsim::time::Instant::now()) {
        let (payload, _) = madsim::time::timeout(left, ep.recv_from_raw(0))
            .await
            .ok()?
            .ok()?;
        let Ok(p) = payload.downcast::<Packet>() else {
            continue;
        };
        match *p {
            Packet::WriteReply { req, .. }
            | Packet::ReadReply { req, .. }
            | Packet::ReadRefused { req, .. }
                if req == want =>
            {
                return Some(*p);
            }
            _ => {}
        }
    }
    None
}

/// One client: writes and reads through the gateway, one at a time, forever.
pub async fn client_main(world: Shared, client: u32) {
    let Ok(ep) = Endpoint::bind("0.0.0.0:0").await else {
        return;
    };
    let (mut seq, mut requests) = (0, 0u64);
    loop {
        let (think_ms, write) = {
            let mut w = lock(&world);
            (w.rng.range(10, 80), w.rng.percent(60))
        };
        madsim::time::sleep(Duration::from_millis(think_ms)).await;
        let op = if write {
            seq += 1;
            ClientOp::Write(WriteId { client, seq })
        } else {
            ClientOp::Read
        };
        requests += 1;
        let req = requests;
        let out = lock(&world).out(gateway_addr(), Packet::Client { client, req, op });
        crate::world::send_all(&ep, vec![out]).await;
        let deadline = madsim::time::Instant::now() + Duration::from_millis(CLIENT_TIMEOUT_MS);
        let mut result = ClientResult::Failed;
        // Drain late answers to earlier requests until this one's arrives (or time is up).
        while let Some(left) = deadline.checked_duration_since(madsim::time::Instant::now()) {
            match madsim::time::timeout(left, ep.recv_from_raw(0)).await {
                Ok(Ok((payload, _))) => {
                    if let Ok(p) = payload.downcast::<Packet>()
                        && let Packet::ClientReply {
                            req: r_req,
                            result: r,
                        } = *p
                        && r_req == req
                    {
                        result = r;
                        break;
                    }
                }
                _ => break,
            }
        }
        let mut w = lock(&world);
        match result {
            ClientResult::Failed if write => w.stats.failed_writes += 1,
            ClientResult::Rejected => w.stats.rejected += 1,
            _ => {}
        }
    }
}
