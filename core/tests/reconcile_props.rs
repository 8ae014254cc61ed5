//! Properties of `plan` over generated Base specs: determinism, and that a world which already
//! matches the plan (as the API server returns it, with its own fields added) needs no write.

use base_core::crd::{
    Base, BaseGatewaySpec, BaseSpec, ImageSpec, NetworkPolicySpec, ServiceMonitorSpec, StorageSpec,
};
use base_core::reconcile::{GatewayView, Observed, PodView, StsView, WriterView, plan};
use base_core::validate::check_dns_subdomain;
use quickcheck::{Arbitrary, Gen, QuickCheck};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct ArbBase(Base);

fn pick<T: Clone>(g: &mut Gen, xs: &[T]) -> T {
    g.choose(xs).cloned().expect("non-empty")
}

fn maybe<T>(v: T, g: &mut Gen) -> Option<T> {
    bool::arbitrary(g).then_some(v)
}

impl Arbitrary for ArbBase {
    fn arbitrary(g: &mut Gen) -> Self {
        let long = "n".repeat(52);
        let name = pick(g, &["a", "my-app", "x1", "orders-db", long.as_str()]);
        let spec = BaseSpec {
            image: ImageSpec {
                repository: pick(g, &["ghcr.io/hanzoai/base".to_string(), "base".to_string()]),
                tag: maybe(pick(g, &["v1.2.3".to_string(), "latest".to_string()]), g),
                pull_policy: maybe(
                    pick(g, &["Always".to_string(), "IfNotPresent".to_string()]),
                    g,
                ),
            },
            replicas: pick(g, &[1, 3, 5, 7, 9]),
            port: 1 + (u16::arbitrary(g) % 65535) as i32,
            consensus: "quasar".into(),
            schema: maybe(
                pick(
                    g,
                    &[
                        "https://e.com/s.sql".to_string(),
                        "CREATE TABLE t(x);".to_string(),
                    ],
                ),
                g,
            ),
            storage: StorageSpec {
                storage_class_name: maybe("fast".into(), g),
                size: pick(
                    g,
                    &["10Gi".to_string(), "1".to_string(), "500M".to_string()],
                ),
                retention_policy: maybe(pick(g, &["Retain".to_string(), "Delete".to_string()]), g),
            },
            resources: None,
            env: (0..u8::arbitrary(g) % 3)
                .map(|i| {
                    serde_json::from_value(json!({"name": format!("V{i}"), "value": "x"}))
                        .expect("env")
                })
                .collect(),
            env_from: Vec::new(),
            image_pull_secrets: Vec::new(),
            service_account_name: None,
            gateway: maybe(
                BaseGatewaySpec {
                    route: Some(pick(g, &["/v1/a".to_string(), "/".to_string()])),
                    gateway_name: None,
                    gateway_namespace: None,
                    leader_poll_interval: maybe(
                        pick(g, &["100ms".to_string(), "2s".to_string()]),
                        g,
                    ),
                    read_your_writes_ttl: maybe(pick(g, &["0s".to_string(), "5s".to_string()]), g),
                },
                g,
            ),
            iam_app: maybe("app".into(), g),
            kms_secrets: Vec::new(),
            network_policy: maybe(
                NetworkPolicySpec {
                    enabled: Some(bool::arbitrary(g)),
                    allow_ingress: Some(bool::arbitrary(g)),
                    ..Default::default()
                },
                g,
            ),
            service_monitor: maybe(
                ServiceMonitorSpec {
                    enabled: Some(bool::arbitrary(g)),
                    ..Default::default()
                },
                g,
            ),
            part_of: maybe("shop".into(), g),
        };
        let mut base = Base::new(name, spec);
        base.metadata.namespace = Some("ns".into());
        base.metadata.uid = Some("uid".into());
        base.metadata.generation = Some(1 + (u8::arbitrary(g) % 5) as i64);
        ArbBase(base)
    }
}

/// What the API server adds to what we applied: metadata it owns, defaults, a status.
fn as_server_returns(mut body: Value, g: &mut Gen) -> Value {
    body["metadata"]["resourceVersion"] = json!(u32::arbitrary(g).to_string());
    body["metadata"]["uid"] = json!("server-uid");
    body["metadata"]["managedFields"] = json!([{"manager": "base-operator"}]);
    if body["kind"] == "Service" {
        body["spec"]["sessionAffinity"] = json!("None");
        if body["spec"]["clusterIP"].is_null() {
            body["spec"]["clusterIP"] = json!("10.0.0.7");
        }
    }
    body["status"] = json!({});
    body
}

fn with_world(base: &Base, g: &mut Gen) -> Observed {
    let mut observed = Observed {
        now: base_core::Millis(1_700_000_000_000),
        gateway: GatewayView::Found(json!({"spec": {"routes": []}})),
        ..Default::default()
    };
    for o in &plan(base, &observed).desired {
        observed
            .objects
            .insert(o.key(), as_server_returns(o.body.clone(), g));
    }
    let name = base.metadata.name.clone().unwrap_or_default();
    let n = base.spec.replicas;
    let writer = u8::arbitrary(g) as i32 % n;
    observed.pods = (0..n)
        .map(|i| PodView {
            name: format!("{name}-{i}"),
            ready: true,
            revision: Some("rev".into()),
            terminating: false,
            writer_label: i == writer,
            fenced: false,
            transfer: None,
            members: None,
        })
        .collect();
    observed.writer = Some(WriterView {
        pod: format!("{name}-{writer}"),
        term: u64::arbitrary(g) % 100,
        confirmed_at: base_core::Millis(u64::arbitrary(g) % 100_000),
    });
    if let Some(sts) = observed
        .objects
        .values_mut()
        .find(|o| o["kind"] == "StatefulSet")
    {
        sts["metadata"]["generation"] = json!(1);
        sts["status"] = json!({"observedGeneration": 1, "readyReplicas": n, "updateRevision": "rev", "currentRevision": "rev"});
        assert_eq!(StsView::from_json(sts).ready_replicas, n);
    }
    // The pods carry the desired members as the previous plan annotated them.
    for m in plan(base, &observed).members {
        if let Some(p) = observed.pods.iter_mut().find(|p| p.name == m.pod) {
            p.members = Some(m.value);
        }
    }
    observed
}

#[test]
fn planning_twice_gives_the_same_plan() {
    fn prop(b: ArbBase) -> bool {
        let mut g = Gen::new(10);
        let observed = with_world(&b.0, &mut g);
        plan(&b.0, &observed) == plan(&b.0, &observed)
            && plan(&b.0, &Observed::default()) == plan(&b.0, &Observed::default())
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(ArbBase) -> bool);
}

#[test]
fn a_matching_world_needs_no_write() {
    fn prop(b: ArbBase) -> bool {
        let mut g = Gen::new(10);
        let mut base = b.0;
        let mut observed = with_world(&base, &mut g);
        // The route as the previous plan injected it.
        if let Some(gw) = plan(&base, &observed).gateway {
            observed.gateway = GatewayView::Found(json!({"spec": {"routes": gw.routes}}));
        }
        // The status as the previous plan wrote it.
        base.status = Some(plan(&base, &observed).status);
        let p = plan(&base, &observed);
        if !p.is_noop() {
            eprintln!(
                "not a no-op: apply={:?} delete={:?} relabel={:?} gateway={:?} status_changed={}",
                p.apply().map(|o| &o.name).collect::<Vec<_>>(),
                p.delete,
                p.relabel,
                p.gateway,
                p.status_changed
            );
        }
        p.is_noop()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(ArbBase) -> bool);
}

#[test]
fn accepted_specs_give_valid_serialisable_objects() {
    fn prop(b: ArbBase) -> bool {
        let p = plan(&b.0, &Observed::default());
        p.invalid.is_none()
            && !p.desired.is_empty()
            && p.desired.iter().all(|o| {
                check_dns_subdomain(&o.name).is_ok()
                    && o.name.len() <= 63
                    && serde_json::to_string(&o.body).is_ok()
                    && o.body["metadata"]["name"] == json!(o.name)
            })
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(ArbBase) -> bool);
}
