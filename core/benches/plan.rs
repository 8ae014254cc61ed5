//! Cost of one `plan` for the spec's example Base: from nothing (first reconcile) and over a world
//! that already matches (the steady state, which must plan zero writes). Target: ≤ 20 µs.
//! Measured with the allocator the operator binary runs with (mimalloc): a plan is mostly the
//! allocation of its JSON objects.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use base_core::reconcile::{GatewayView, Observed, PodView, WriterView, plan};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;

const EXAMPLE: &str = include_str!("../../deploy/examples/my-app.yaml");

fn bench(c: &mut Criterion) {
    let (_, mut base) = base_core::manifest::parse(EXAMPLE).expect("example parses");
    base.metadata.uid = Some("uid".into());
    let empty = Observed {
        gateway: GatewayView::Found(json!({"spec": {"routes": []}})),
        ..Default::default()
    };
    c.bench_function("plan/cold", |b| {
        b.iter(|| plan(black_box(&base), black_box(&empty)))
    });

    let first = plan(&base, &empty);
    let mut steady = empty.clone();
    for o in &first.desired {
        steady.insert(o);
    }
    if let Some(gw) = &first.gateway {
        steady.gateway = GatewayView::Found(json!({"spec": {"routes": gw.routes}}));
    }
    steady.pods = (0..3)
        .map(|i| PodView {
            name: format!("my-app-{i}"),
            ready: true,
            writer_label: i == 0,
            ..Default::default()
        })
        .collect();
    steady.writer = Some(WriterView {
        pod: "my-app-0".into(),
        term: 1,
        confirmed_at: steady.now,
    });
    base.status = Some(plan(&base, &steady).status);
    assert!(
        plan(&base, &steady).is_noop(),
        "the steady state plans no write"
    );
    c.bench_function("plan/steady", |b| {
        b.iter(|| plan(black_box(&base), black_box(&steady)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
