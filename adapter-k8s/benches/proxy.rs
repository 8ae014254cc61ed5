//! What the gateway adds to a request: the same requests sent straight to an upstream and through
//! the gateway's router in front of it, in one run, so the difference is the proxy's cost.
//! Everything is in-process on loopback; the upstream names itself writer with a far lease.

use axum::Router;
use axum::body::Bytes;
use axum::routing::get;
use base_adapter_k8s::gateway::{DEFAULT_RETRY_BUFFER_BYTES, Gateway, GatewayArgs, ReplicaArg};
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;

const LEADER: &str =
    r#"{"leader_url":"","node_id":"u-0","term":1,"lease_expires":"2999-01-01T00:00:00Z"}"#;

struct Setup {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    direct: String,
    via_gateway: String,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind upstream");
    let upstream_addr = upstream.local_addr().expect("upstream addr");
    let app = Router::new()
        .route("/_ha/leader", get(|| async { LEADER }))
        .route(
            "/api/item",
            get(|| async { "{\"id\":\"abc\",\"title\":\"hello\"}" })
                .post(|body: Bytes| async move { format!("{{\"len\":{}}}", body.len()) }),
        );
    rt.spawn(async move { axum::serve(upstream, app).await });

    let args = GatewayArgs {
        listen: "127.0.0.1:0".into(),
        replicas: vec![ReplicaArg {
            id: "u-0".into(),
            url: format!("http://{upstream_addr}"),
        }],
        poll_interval: Duration::from_secs(1),
        ryw_ttl: Duration::from_secs(5),
        poll_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        upstream_timeout: Duration::from_secs(30),
        body_idle_timeout: Duration::from_secs(60),
        failover_hold: Duration::from_secs(5),
        retry_buffer_bytes: DEFAULT_RETRY_BUFFER_BYTES,
        root_metrics: true,
    };
    let gateway = Gateway::new(&args).expect("gateway");
    rt.block_on(gateway.poll_all_once());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind gateway");
    let gateway_addr = listener.local_addr().expect("gateway addr");
    rt.spawn(gateway.serve(listener, std::future::pending()));

    let setup = Setup {
        rt,
        client: reqwest::Client::new(),
        direct: format!("http://{upstream_addr}"),
        via_gateway: format!("http://{gateway_addr}"),
    };
    // The gateway must route before measuring: a 503 would be measured as fast.
    let status = setup.rt.block_on(async {
        setup
            .client
            .post(format!("{}/api/item", setup.via_gateway))
            .body("{}")
            .send()
            .await
            .map(|r| r.status())
    });
    assert_eq!(status.ok(), Some(reqwest::StatusCode::OK), "gateway routes");
    setup
}

fn proxy(c: &mut Criterion) {
    let s = setup();
    let get_once = |base: &str| {
        let url = format!("{base}/api/item");
        let client = s.client.clone();
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client.get(url).send().await.expect("answer");
                assert!(response.status().is_success());
                response.bytes().await.expect("body")
            }
        }
    };
    let post_once = |base: &str| {
        let url = format!("{base}/api/item");
        let client = s.client.clone();
        let body = Bytes::from(vec![b'x'; 1024]);
        move || {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                let response = client.post(url).body(body).send().await.expect("answer");
                assert!(response.status().is_success());
                response.bytes().await.expect("body")
            }
        }
    };

    let mut group = c.benchmark_group("proxy_read");
    for (name, base) in [("direct", &s.direct), ("via_gateway", &s.via_gateway)] {
        let request = get_once(base);
        group.bench_function(name, |b| b.iter(|| s.rt.block_on(request())));
    }
    group.finish();

    let mut group = c.benchmark_group("proxy_write_1KiB");
    for (name, base) in [("direct", &s.direct), ("via_gateway", &s.via_gateway)] {
        let request = post_once(base);
        group.bench_function(name, |b| b.iter(|| s.rt.block_on(request())));
    }
    group.finish();
}

criterion_group!(benches, proxy);
criterion_main!(benches);
