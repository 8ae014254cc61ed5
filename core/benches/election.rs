//! Cost of one election `step`: a follower handling a heartbeat (the hot path) and a writer's tick.
//! Target: ≤ 1 µs.

use base_core::quasar::{Effect, Input, Message, Node, PersistedState, Timing};
use base_core::{Millis, NodeId, Term};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn ids() -> Vec<NodeId> {
    (0..3).map(|i| NodeId::new(format!("my-app-{i}"))).collect()
}

fn node(i: usize, now: Millis) -> Node {
    let ids = ids();
    let peers = ids.iter().filter(|p| **p != ids[i]).cloned().collect();
    Node::new(
        ids[i].clone(),
        peers,
        Timing::default(),
        PersistedState::default(),
        7,
        now,
    )
    .expect("node")
}

/// Runs three nodes with instant delivery until one is writer; returns them and the time.
fn elected() -> (Vec<Node>, Millis) {
    let ids = ids();
    let mut nodes: Vec<Node> = (0..3).map(|i| node(i, Millis(0))).collect();
    let mut now = Millis(0);
    let mut queue: Vec<(NodeId, NodeId, Message)> = Vec::new();
    for _ in 0..10_000 {
        now = now.saturating_add(Millis(10));
        for (i, n) in nodes.iter_mut().enumerate() {
            for e in n.step(now, Input::Tick) {
                if let Effect::Send { to, msg } = e {
                    queue.push((ids[i].clone(), to, msg));
                }
            }
        }
        while let Some((from, to, msg)) = queue.pop() {
            let j = ids.iter().position(|x| *x == to).expect("known");
            for e in nodes[j].step(
                now,
                Input::Message {
                    from: from.clone(),
                    msg,
                },
            ) {
                if let Effect::Send { to, msg } = e {
                    queue.push((ids[j].clone(), to, msg));
                }
            }
        }
        if nodes.iter().any(|n| n.can_accept_writes(now)) {
            return (nodes, now);
        }
    }
    panic!("no writer elected");
}

fn bench(c: &mut Criterion) {
    let (nodes, now) = elected();
    let writer = nodes
        .iter()
        .position(|n| n.can_accept_writes(now))
        .expect("writer");
    let follower = (writer + 1) % 3;
    let term: Term = nodes[writer].term();
    let from = nodes[writer].id().clone();
    c.bench_function("election/follower_heartbeat", |b| {
        b.iter_batched(
            || nodes[follower].clone(),
            |mut n| {
                n.step(
                    black_box(now.saturating_add(Millis(5))),
                    Input::Message {
                        from: from.clone(),
                        msg: Message::Heartbeat {
                            term,
                            sent_ms: now,
                            position: 0,
                            membership: None,
                        },
                    },
                )
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("election/writer_tick", |b| {
        b.iter_batched(
            || nodes[writer].clone(),
            |mut n| n.step(black_box(now.saturating_add(Millis(100))), Input::Tick),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
