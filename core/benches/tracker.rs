//! The cost of one routing decision of the gateway leader tracker, with three replicas and the
//! pin map full (the worst case for memory, the usual case for a busy gateway).

use base_core::tracker::{
    Attempt, ClientId, Delivery, LeaderClaim, MAX_PINS, Outcome, PollResult, Request, RequestKind,
    Tracker, TrackerConfig, WriterClaim,
};
use base_core::{Millis, NodeId, Term};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn tracker_with_full_pins() -> (Tracker, Vec<ClientId>) {
    let ids: Vec<NodeId> = (0..3).map(|i| NodeId::new(format!("b-{i}"))).collect();
    let mut t = Tracker::new(
        ids.clone(),
        TrackerConfig::new(Millis(1_000), Millis(3_600_000)),
    )
    .expect("valid config");
    for r in 0..3 {
        let _ = t.on_poll(
            Millis(0),
            r,
            PollResult::Answered(LeaderClaim {
                term: Term(7),
                writer: Some(WriterClaim {
                    node: ids[1].clone(),
                    lease_expires: Millis(u64::MAX),
                }),
            }),
        );
    }
    let clients: Vec<ClientId> = (0..MAX_PINS)
        .map(|i| ClientId::new(&format!("org=acme;addr=10.0.{}.{}", i / 256, i % 256)).unwrap())
        .collect();
    for c in &clients {
        let _ = t.on_outcome(
            Millis(1),
            Outcome {
                request: Request {
                    kind: RequestKind::Write,
                    writer_required: false,
                    client: Some(c),
                },
                replica: 1,
                attempt: Attempt::First,
                delivery: Delivery::Reached { acknowledged: true },
                replayable: true,
            },
        );
    }
    (t, clients)
}

fn route(c: &mut Criterion) {
    let (mut t, clients) = tracker_with_full_pins();
    let stranger = ClientId::new("org=acme;addr=192.0.2.1").unwrap();
    let mut group = c.benchmark_group("tracker_route");
    group.bench_function("read_unpinned", |b| {
        b.iter(|| {
            t.route(
                black_box(Millis(2)),
                black_box(Request {
                    kind: RequestKind::Read,
                    writer_required: false,
                    client: Some(&stranger),
                }),
            )
        })
    });
    group.bench_function("read_pinned", |b| {
        b.iter(|| {
            t.route(
                black_box(Millis(2)),
                black_box(Request {
                    kind: RequestKind::Read,
                    writer_required: false,
                    client: Some(&clients[12_345]),
                }),
            )
        })
    });
    group.bench_function("write", |b| {
        b.iter(|| {
            t.route(
                black_box(Millis(2)),
                black_box(Request {
                    kind: RequestKind::Write,
                    writer_required: false,
                    client: Some(&stranger),
                }),
            )
        })
    });
    // A write's completion renews a pin: a map update plus the expiry index.
    let mut i = 0;
    group.bench_function("write_completed_repin", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            t.on_outcome(
                black_box(Millis(3)),
                Outcome {
                    request: Request {
                        kind: RequestKind::Write,
                        writer_required: false,
                        client: Some(&clients[i]),
                    },
                    replica: 1,
                    attempt: Attempt::First,
                    delivery: Delivery::Reached { acknowledged: true },
                    replayable: true,
                },
            )
        })
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
