//! The gateway (and the operator's own leader view): the core `tracker`, fed by polls of every
//! replica's `/_ha/leader` over the simulated network, routing the clients' requests. Plus the
//! client tasks that send them.

use crate::world::{
    ClientOp, ClientResult, Host, Packet, Poller, Shared, World, WriteId, WriteReply, agent_addr,
    gateway_addr, lock, pod_id,
};
use base_core::Term;
use base_core::tracker::{
    AfterOutcome, Attempt, ClientHeaders, ClientId, Delivery, Forward, Outcome, PollEffect,
    PollResult, Request, RequestKind, Route, client_identity, parse_leader_claim,
};
use madsim::net::Endpoint;
use std::time::Duration;

/// How long the gateway waits for a replica's answer to a forwarded request.
pub const FORWARD_TIMEOUT_MS: u64 = 1_500;
/// How long a client waits for the gateway.
pub const CLIENT_TIMEOUT_MS: u64 = 3_000;

/// Whose tracker a poll feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Gateway,
    Operator,
}

impl World {
    fn poller(&mut self, who: Who) -> &mut Poller {
        match who {
            Who::Gateway => &mut self.gateway,
            Who::Operator => &mut self.operator,
        }
    }

    pub fn next_poll_seq(&mut self, who: Who) -> u64 {
        let p = self.poller(who);
        p.seq += 1;
        p.seq
    }

    /// A poll of replica `ordinal` ended: its answer's body, or nothing in time.
    pub fn poll_result(&mut self, who: Who, ordinal: i32, body: Option<Vec<u8>>) {
        let now_ns = self.now_ns();
        let result = match body.as_deref().map(parse_leader_claim) {
            Some(Ok(claim)) => PollResult::Answered(claim),
            Some(Err(e)) => {
                self.fail(
                    "harness",
                    format!("{} answered /_ha/leader unreadably: {e}", pod_id(ordinal)),
                );
                PollResult::Failed
            }
            None => PollResult::Failed,
        };
        let p = self.poller(who);
        if let PollResult::Answered(claim) = &result {
            p.max_term_seen = p.max_term_seen.max(claim.term);
        }
        let now = p.clock.local_ms(now_ns);
        let effect = p.tracker.on_poll(now, ordinal as usize, result);
        if who == Who::Gateway
            && let PollEffect::WriterChanged { writer, term } = effect
        {
            let w = writer.map_or("none".to_string(), |w| pod_id(w as i32).0);
            self.ev(format!("gateway: writer is {w} at term {term}"));
        }
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
                if self.current_writer().is_some() {
                    self.stats.no_writer_while_one_accepts += 1;
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
                let held = self.k8s.pvcs[&ordinal].log.get(index as usize - 1).copied();
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
        if let Some((since, old_term)) = self.stats.failover_pending
            && term > old_term
        {
            let ms = (now_ns - since) / 1_000_000;
            self.stats.failovers_ms.push(ms);
            self.stats.failover_pending = None;
            self.ev(format!(
                "failover done in {ms} ms (term {old_term} -> {term})"
            ));
        }
    }
}

/// Polls replica `ordinal` every poll interval, forever.
pub async fn poll_loop(world: Shared, who: Who, ordinal: i32) {
    let interval = lock(&world).cfg.poll_interval_ms;
    let Ok(ep) = Endpoint::bind("0.0.0.0:0").await else {
        return;
    };
    // Like the real gateway (adapter-k8s `gateway::poll`), every replica is polled at once, each
    // interval: the pollers start together and keep their phase.
    loop {
        let started = madsim::time::Instant::now();
        let seq = lock(&world).next_poll_seq(who);
        let _ = ep
            .send_to_raw(
                agent_addr(ordinal),
                0,
                Box::new(Packet::LeaderQuery { seq }),
            )
            .await;
        let deadline = started + Duration::from_millis(interval.min(1_000));
        let mut body = None;
        while let Some(left) = deadline.checked_duration_since(madsim::time::Instant::now()) {
            match madsim::time::timeout(left, ep.recv_from_raw(0)).await {
                Ok(Ok((payload, _))) => {
                    if let Ok(p) = payload.downcast::<Packet>()
                        && let Packet::LeaderAnswer { seq: s, body: b } = *p
                        && s == seq
                    {
                        body = Some(b);
                        break;
                    }
                }
                _ => break,
            }
        }
        lock(&world).poll_result(who, ordinal, body);
        madsim::time::sleep_until(started + Duration::from_millis(interval)).await;
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
                }) => ClientResult::Rejected,
                Some(_) => ClientResult::Failed,
            };
            (Delivery::Reached { acknowledged }, result)
        } else {
            (Delivery::NotReached, ClientResult::Failed)
        };
        let after = lock(world).gateway_outcome(&cid, kind, f, attempt, delivery);
        match after {
            AfterOutcome::Retry(next) if attempt == Attempt::First => {
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
            Packet::WriteReply { req, .. } | Packet::ReadReply { req, .. } if req == want => {
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
