//! The operator against a real kube-apiserver (v1.20, built by scripts/k8s-envtest.sh) with
//! kube-controller-manager but no kubelet: a stand-in kubelet in this test marks pods Ready (and
//! records every pod's re-creation), and stand-in Quasar agents answer `/_ha/leader` per Base
//! and act on the writer pod's transfer annotation (`hanzo.ai/transfer-to`, which a real agent
//! reads from its downward-API file). The operator runs as a user bound only to deploy/rbac.yaml, and its
//! audit log is compared with that RBAC at the end.
//!
//! What it proves, in order: every object with its owner; the route next to another owner's; the
//! writer label and status following the agents; a peer key rotated by hand is never overwritten
//! (also by a restarted operator, whose create meets 409); resyncs that write nothing; a write of
//! the Gateway that meets a concurrent writer (409, forced by holding the operator's patch at an
//! API proxy while another owner writes) re-planned without losing the other entry; a
//! rolling update ordered followers first, one hand-over, writer last, with the operator killed in
//! the middle of it; a create race on the peer-key Secret; a kill mid-creation and one between two
//! scale steps; PVCs of removed ordinals deleted under `Delete` and kept under `Retain`; one active
//! operator of two and the takeover; a `BaseApp` reconciled and migrated to `Base` (orphan, adopt,
//! no pod restarted); an apiserver restart (watches resumed with 410 Gone) the same operator
//! process lives through; deletion by retention policy; no pod ever restarted while writer.

mod support;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use base_adapter_k8s::controller::rbac::{CLUSTER_CALLS, NAMESPACE_CALLS};
use base_adapter_k8s::controller::{ANNOTATION_AGENT_URL, FINALIZER};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cluster, Operator, eventually};

const T: Duration = Duration::from_secs(60);

/// One thing the stand-ins saw, in the order they saw it.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// The operator asked `base`'s writer `from` to hand its role to `to`.
    Transfer {
        base: String,
        from: String,
        to: String,
    },
    /// The kubelet saw a new incarnation (uid) of `pod`, whose Base's writer was then `writer`.
    /// Recorded before the new pod is marked Ready, so it precedes every step that waits for it.
    Replaced { pod: String, writer: String },
}

/// Which pods the stand-in kubelet leaves unready for now (to hold a rollout or a scale step
/// where it is, demonstrably in progress).
#[derive(Clone, Debug)]
enum Hold {
    /// Pods of this Base recreated after a deletion.
    Replaced(String),
    /// Pods of this Base seen for the first time.
    New(String),
}

/// Stand-in agents, one view of the writer per Base (a healthy cluster's agents all agree), each
/// pod's served under `/b/<base>/p/<pod>/`. A Base not set explicitly has `<base>-0` as writer in term 1.
#[derive(Clone, Default)]
struct Agents {
    state: Arc<Mutex<HashMap<String, (String, u64)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    hold: Arc<Mutex<Option<Hold>>>,
}

impl Agents {
    fn set(&self, base: &str, writer: &str, term: u64) {
        self.state
            .lock()
            .unwrap()
            .insert(base.to_string(), (writer.to_string(), term));
    }
    fn get(&self, base: &str) -> (String, u64) {
        self.state
            .lock()
            .unwrap()
            .get(base)
            .cloned()
            .unwrap_or_else(|| (format!("{base}-0"), 1))
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn hold(&self, h: Option<Hold>) {
        *self.hold.lock().unwrap() = h;
    }
}

async fn leader(
    State(a): State<Agents>,
    Path((base, _pod)): Path<(String, String)>,
) -> Json<Value> {
    let (writer, term) = a.get(&base);
    let lease =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(10);
    Json(
        json!({"leader_url": format!("http://{writer}"), "node_id": writer, "term": term, "lease_expires": lease.to_string()}),
    )
}

/// Like a real agent reading its pod's annotation: only the writer of the request's term hands
/// over; any other request (stale, on a follower, not a request) is inert.
async fn on_transfer_annotation(a: &Agents, base: &str, pod: &str, value: &str) {
    let Some(request) = base_core::control::TransferRequest::parse(value) else {
        return;
    };
    let (from, term) = a.get(base);
    if from != pod || request.term != term || request.to.is_empty() {
        return;
    }
    let to = request.to;
    a.seen.lock().unwrap().push(Seen::Transfer {
        base: base.to_string(),
        from,
        to: to.clone(),
    });
    a.set(base, &to, term + 1);
}

async fn start_agents(agents: Agents) -> String {
    let app = Router::new()
        .route("/b/{base}/p/{pod}/_ha/leader", get(leader))
        .with_state(agents);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A stand-in kubelet: marks every pod of the namespace Ready (unless held) and points the poller
/// at its Base's stand-in agents; records each pod's re-creation.
fn start_kubelet(pods: Api<Pod>, agent_url: String, agents: Agents) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Per pod name: the uid last seen, and whether that incarnation replaced an earlier one.
        let mut incarnations: HashMap<String, (String, bool)> = HashMap::new();
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    if p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let name = p.name_any();
                    let base = p.labels().get("hanzo.ai/base").cloned().unwrap_or_default();
                    let uid = p.uid().unwrap_or_default();
                    let replaced = match incarnations.get(&name) {
                        None => false,
                        Some((old, replaced)) if *old == uid => *replaced,
                        Some(_) => {
                            agents.seen.lock().unwrap().push(Seen::Replaced {
                                pod: name.clone(),
                                writer: agents.get(&base).0,
                            });
                            true
                        }
                    };
                    incarnations.insert(name.clone(), (uid, replaced));
                    if let Some(v) = p.annotations().get(base_core::control::ANNOTATION_TRANSFER) {
                        on_transfer_annotation(&agents, &base, &name, v).await;
                    }
                    let ready = is_ready(&p);
                    if !p.annotations().contains_key(ANNOTATION_AGENT_URL) {
                        let url = format!("{agent_url}/b/{base}/p/{name}");
                        let _ = pods
                            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_AGENT_URL: url}}})))
                            .await;
                    }
                    let held = match &*agents.hold.lock().unwrap() {
                        Some(Hold::Replaced(b)) => *b == base && replaced,
                        Some(Hold::New(b)) => *b == base && !replaced,
                        None => false,
                    };
                    if !ready && !held {
                        let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
                            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}
fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn bases(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("hanzo.ai", "v1", "Base"),
        "bases",
    );
    Api::namespaced_with(c.client.clone(), ns, &ar)
}

fn baseapps(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("hanzo.ai", "v1", "BaseApp"),
        "baseapps",
    );
    Api::namespaced_with(c.client.clone(), ns, &ar)
}

fn gateways(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("hanzo.ai", "v1", "Gateway"),
        "gateways",
    );
    Api::namespaced_with(c.client.clone(), ns, &ar)
}

async fn status_of(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    let b = bases(c, ns).get_opt(name).await.ok()??;
    b.data.get("status").cloned()
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn writes(op: &Operator) -> f64 {
    op.counter_now("base_operator_api_writes").await
}

async fn reconciles(op: &Operator) -> f64 {
    op.counter_now("base_operator_reconciles").await
}

async fn failures(op: &Operator) -> f64 {
    op.counter_now("base_operator_reconcile_failures").await
}

/// Waits until the operator has issued no write for `quiet`, then returns its write count.
async fn settled_writes(op: &Operator, quiet: Duration) -> f64 {
    let mut last = writes(op).await;
    let mut since = std::time::Instant::now();
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = writes(op).await;
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            start.elapsed() < T,
            "the operator never stopped writing (last count {now})"
        );
    }
}

/// Waits until the operator has run `n` more reconciles than now (of any Base; resyncs every 2 s).
async fn more_reconciles(op: &Operator, n: f64) {
    let r0 = reconciles(op).await;
    eventually(T, &format!("{n} more reconciles"), || async {
        (reconciles(op).await >= r0 + n).then_some(())
    })
    .await;
}

fn apply_yaml(c: &Cluster, yaml: &str) {
    let (ok, _, err) = c.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(ok, "kubectl apply failed: {err}");
}

fn patch_base(c: &Cluster, name: &str, patch: &str) {
    c.kubectl_ok(&[
        "patch",
        "bapp",
        name,
        "-n",
        "hanzo",
        "--type=merge",
        "-p",
        patch,
    ]);
}

fn of_base(name: &str) -> ListParams {
    ListParams::default().labels(&format!("hanzo.ai/base={name}"))
}

/// The PVCs of a Base; a failed list fails the test (it must never read as "none").
async fn pvcs_of(api: &Api<PersistentVolumeClaim>, name: &str) -> Vec<String> {
    let mut names: Vec<String> = match api.list(&of_base(name)).await {
        Ok(l) => l.items.iter().map(ResourceExt::name_any).collect(),
        Err(e) => panic!("listing the PVCs of {name} failed: {e}"),
    };
    names.sort();
    names
}

fn gateway_routes(gw: &DynamicObject) -> Vec<Value> {
    gw.data["spec"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The names of a Base's pods with their uids (a changed uid is a restarted pod).
async fn pod_uids(pods: &Api<Pod>, name: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pods
        .list(&of_base(name))
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    v.sort();
    v
}

fn secret_data(s: &Secret) -> std::collections::BTreeMap<String, k8s_openapi::ByteString> {
    s.data.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_apiserver() {
    let c = Cluster::start().await;
    // kubectl validates client-side against v1.20's OpenAPI, which predates x-kubernetes-validations;
    // the server itself drops the CEL rules (see scripts/k8s-envtest.sh) and keeps the rest.
    c.kubectl_ok(&["apply", "--validate=false", "-f", "deploy/crd.yaml"]);
    for f in ["deploy/rbac.yaml", "tests/fixtures/gateway-crd.yaml"] {
        c.kubectl_ok(&["apply", "-f", f]);
    }
    c.kubectl_ok(&["apply", "-f", "tests/fixtures/operator-binding.yaml"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bases.hanzo.ai",
        "crd/baseapps.hanzo.ai",
        "crd/gateways.hanzo.ai",
    ]);
    c.kubectl_ok(&["create", "namespace", "hanzo"]);
    let other_route =
        json!({"prefix": "/v1/other", "backend": "http://other", "owner": "Base/hanzo/other"});
    apply_yaml(
        &c,
        &format!(
            "apiVersion: hanzo.ai/v1\nkind: Gateway\nmetadata: {{name: gateway, namespace: hanzo}}\nspec: {{routes: [{other_route}]}}\n"
        ),
    );

    let agents = Agents::default();
    let agent_url = start_agents(agents.clone()).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "hanzo");
    let _kubelet = start_kubelet(pods.clone(), agent_url, agents.clone());

    let mut op = Operator::spawn(&c, "op-a", &[]);
    c.kubectl_ok(&["apply", "-f", "deploy/examples/my-app.yaml"]);
    let base_uid = eventually(T, "the Base exists", || async {
        bases(&c, "hanzo")
            .get_opt("my-app")
            .await
            .ok()?
            .and_then(|b| b.uid())
    })
    .await;

    // -- every object, with its owner reference
    let sts_api: Api<StatefulSet> = Api::namespaced(c.client.clone(), "hanzo");
    let svc_api: Api<Service> = Api::namespaced(c.client.clone(), "hanzo");
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "hanzo");
    // v1.20 serves PodDisruptionBudget at policy/v1beta1 only; the operator detects that.
    let pdb_api: Api<DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        "hanzo",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
            "poddisruptionbudgets",
        ),
    );
    let sts = eventually(T, "the StatefulSet", || async {
        sts_api.get_opt("my-app").await.ok()?
    })
    .await;
    for name in ["my-app-hs", "my-app", "my-app-writer"] {
        let svc = eventually(T, name, || async { svc_api.get_opt(name).await.ok()? }).await;
        assert_eq!(
            svc.owner_references()[0].uid,
            base_uid,
            "{name} is owned by the Base"
        );
    }
    let pdb = eventually(T, "the PDB", || async {
        pdb_api.get_opt("my-app").await.ok()?
    })
    .await;
    assert_eq!(pdb.owner_references()[0].uid, base_uid);
    assert_eq!(pdb.data["spec"]["minAvailable"], 2);
    assert_eq!(sts.owner_references()[0].kind, "Base");
    let spec = sts.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("my-app-hs"));
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "hanzo");
    let key = eventually(T, "the peer-key Secret", || async {
        secrets.get_opt("my-app-peer-key").await.ok()?
    })
    .await;
    assert_eq!(key.owner_references()[0].uid, base_uid);
    let first_key = secret_data(&key)
        .get("current")
        .map(|v| v.0.clone())
        .unwrap_or_default();
    assert_eq!(first_key.len(), 64, "a 32-byte hex key");
    let base_fin = bases(&c, "hanzo").get("my-app").await.unwrap();
    assert!(base_fin.finalizers().iter().any(|f| f == FINALIZER));

    // -- the Gateway route, the other owner's entry kept
    eventually(T, "the route in the Gateway", || async {
        let routes = gateway_routes(&gateways(&c, "hanzo").get("gateway").await.ok()?);
        (routes.len() == 2
            && routes.contains(&other_route)
            && routes.iter().any(|r| r["prefix"] == "/v1/my-app"))
        .then_some(())
    })
    .await;

    // -- a writer: label and status follow the agents' answer
    agents.set("my-app", "my-app-1", 3);
    eventually(
        T,
        "status.currentWriter = my-app-1, term 3, Running",
        || async {
            let s = status_of(&c, "hanzo", "my-app").await?;
            let ok = s["currentWriter"] == "my-app-1"
                && s["term"] == 3
                && s["phase"] == "Running"
                && s["readyReplicas"] == 3;
            if !ok {
                eprintln!("status: {s}");
            }
            ok.then_some(())
        },
    )
    .await;
    let labelled = |pods: Vec<Pod>| -> Vec<String> {
        pods.into_iter()
            .filter(|p| p.labels().get("hanzo.ai/role").map(String::as_str) == Some("writer"))
            .map(|p| p.name_any())
            .collect()
    };
    eventually(T, "only my-app-1 labelled writer", || async {
        (labelled(pods.list(&of_base("my-app")).await.ok()?.items) == ["my-app-1"]).then_some(())
    })
    .await;
    agents.set("my-app", "my-app-2", 4);
    let start = std::time::Instant::now();
    loop {
        let now = labelled(pods.list(&of_base("my-app")).await.unwrap().items);
        assert!(now.len() <= 1, "two pods labelled writer at once: {now:?}");
        if now == ["my-app-2"] {
            break;
        }
        assert!(
            start.elapsed() < T,
            "the writer label did not move to my-app-2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(T, "status follows the new writer", || async {
        let s = status_of(&c, "hanzo", "my-app").await?;
        (s["currentWriter"] == "my-app-2" && s["term"] == 4).then_some(())
    })
    .await;
    let table = c.kubectl_ok(&["get", "bapp", "-n", "hanzo"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "REPLICAS", "READY", "WRITER", "TERM", "PHASE", "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("my-app-2") && table.contains("Running"),
        "{table}"
    );

    // -- peer-key rotation by hand (`current` → `previous`, a new `current`): the operator
    // creates the Secret once and never writes it again, so the rotation stays.
    let rotated_key = "5e".repeat(32);
    secrets
        .patch(
            "my-app-peer-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {
                "current": rotated_key,
                "previous": String::from_utf8(first_key).unwrap(),
            }})),
        )
        .await
        .unwrap();
    let rotated = secret_data(&secrets.get("my-app-peer-key").await.unwrap());
    assert_eq!(
        rotated.get("current").map(|v| v.0.as_slice()),
        Some(rotated_key.as_bytes())
    );

    // -- an unchanged world: reconciles (resyncs every 2 s) run, none fails, and none writes
    let before = settled_writes(&op, Duration::from_secs(3)).await;
    let failed_before = failures(&op).await;
    more_reconciles(&op, 4.0).await;
    assert_eq!(
        writes(&op).await,
        before,
        "the operator wrote while nothing changed"
    );
    assert_eq!(failures(&op).await, failed_before, "a resync failed");
    assert_eq!(
        secret_data(&secrets.get("my-app-peer-key").await.unwrap()),
        rotated,
        "the operator left the rotated peer key as it is"
    );

    // -- a concurrent writer of the Gateway, placed exactly between the operator's read of the
    // Gateway and its write: the operator runs behind a proxy that holds its next Gateway PATCH
    // while another owner's route entry is added. Its patch, guarded by the resourceVersion it
    // planned against, must meet 409 and be re-planned from a fresh read; nothing may be lost:
    // the concurrent entry stays, each entry once. The same plan also carries a switchover.
    let proxy = support::api_proxy::ApiProxy::start(&c.operator_kubeconfig, &c.dir).await;
    op.kill();
    op = Operator::spawn_via(&c, &proxy.kubeconfig, "op-a", &[]);
    let held = proxy.hold_next(
        axum::http::Method::PATCH,
        "/apis/hanzo.ai/v1/namespaces/hanzo/gateways/gateway",
    );
    let concurrent = json!({"prefix": "/v1/concurrent", "backend": "http://concurrent", "owner": "Base/hanzo/concurrent"});
    patch_base(
        &c,
        "my-app",
        r#"{"metadata": {"annotations": {"hanzo.ai/switchover-to": "my-app-0"}}, "spec": {"gateway": {"readYourWritesTTL": "7s"}}}"#,
    );
    tokio::time::timeout(T, held.reached)
        .await
        .expect("the operator patched the Gateway for the new TTL")
        .expect("the proxy held the patch");
    let add: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/spec/routes/-", "value": concurrent}]),
    )
    .unwrap();
    gateways(&c, "hanzo")
        .patch("gateway", &PatchParams::default(), &Patch::Json::<()>(add))
        .await
        .expect("the concurrent write to the Gateway");
    let concurrent_at = k8s_openapi::jiff::Timestamp::now();
    held.go.send(()).expect("the held patch still waits");
    eventually(
        T,
        "the switchover done and the new route entry written",
        || async {
            let routes = gateway_routes(&gateways(&c, "hanzo").get("gateway").await.ok()?);
            let mine: Vec<&Value> = routes
                .iter()
                .filter(|r| r["prefix"] == "/v1/my-app")
                .collect();
            let s = status_of(&c, "hanzo", "my-app").await?;
            (mine.len() == 1
                && mine[0]["readYourWritesTTL"] == "7s"
                && s["currentWriter"] == "my-app-0"
                && condition(&s, "Switchover")?["reason"] == "Done")
                .then_some(())
        },
    )
    .await;
    let gateway_patches: Vec<u16> = c
        .operator_requests()
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "gateways" && r.at > concurrent_at)
        .map(|r| r.code)
        .collect();
    assert!(
        gateway_patches.first() == Some(&409) && gateway_patches[1..].contains(&200),
        "the held patch met 409, and a re-planned one then succeeded: {gateway_patches:?}"
    );
    let routes = gateway_routes(&gateways(&c, "hanzo").get("gateway").await.unwrap());
    let mut prefixes: Vec<&str> = routes.iter().filter_map(|r| r["prefix"].as_str()).collect();
    prefixes.sort();
    assert_eq!(
        prefixes,
        ["/v1/concurrent", "/v1/my-app", "/v1/other"],
        "every entry kept, none twice: {routes:?}"
    );
    assert!(routes.contains(&concurrent) && routes.contains(&other_route));

    // -- spec changes: image tag, env, replicas 3 → 5, rolled writer-last; the operator is killed
    // in the middle of the rolling update (the first replaced pod held unready by the kubelet)
    let writer_before = agents.get("my-app").0;
    let seen_from = agents.seen().len();
    agents.hold(Some(Hold::Replaced("my-app".into())));
    patch_base(
        &c,
        "my-app",
        r#"{"spec": {"image": {"tag": "v1.2.4"}, "replicas": 5, "env": [{"name": "LOG_LEVEL", "value": "debug"}]}}"#,
    );
    eventually(
        Duration::from_secs(180),
        "the rolling update replaced its first pod",
        || async {
            agents.seen()[seen_from..]
                .iter()
                .any(|s| matches!(s, Seen::Replaced { pod, .. } if pod.starts_with("my-app-")))
                .then_some(())
        },
    )
    .await;
    op.kill();
    let rev = sts_api
        .get("my-app")
        .await
        .unwrap()
        .status
        .and_then(|s| s.update_revision)
        .expect("an update revision");
    let outdated: Vec<String> = pods
        .list(&of_base("my-app"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.labels().get("controller-revision-hash") != Some(&rev))
        .map(|p| p.name_any())
        .collect();
    assert!(
        outdated.contains(&writer_before) && outdated.len() >= 2,
        "killed mid-rollout: the writer and a follower still outdated ({outdated:?})"
    );
    agents.hold(None);
    op = Operator::spawn(&c, "op-a", &[]);
    eventually(
        Duration::from_secs(180),
        "5 replicas, all on the new revision",
        || async {
            let sts = sts_api.get("my-app").await.ok()?;
            let spec = sts.spec.as_ref()?;
            let st = sts.status.as_ref()?;
            let containers = &spec.template.spec.as_ref()?.containers;
            let image_ok = containers[0].image.as_deref() == Some("ghcr.io/hanzoai/base:v1.2.4");
            let env_ok = containers[0]
                .env
                .as_ref()?
                .iter()
                .any(|e| e.name == "LOG_LEVEL");
            let rev = st.update_revision.clone()?;
            let list = pods.list(&of_base("my-app")).await.ok()?.items;
            // Ready: the kubelet has seen (and recorded) each new pod.
            let all_new = list.len() == 5
                && list.iter().all(|p| {
                    p.labels().get("controller-revision-hash") == Some(&rev)
                        && p.metadata.deletion_timestamp.is_none()
                        && is_ready(p)
                });
            (image_ok && env_ok && spec.replicas == Some(5) && all_new).then_some(())
        },
    )
    .await;
    // Writer-last: each old pod replaced once, none while it was the writer, the followers
    // first, then one hand-over to an updated pod, then the old writer.
    let steps: Vec<Seen> = agents.seen()[seen_from..]
        .iter()
        .filter(|s| match s {
            Seen::Transfer { base, .. } => base == "my-app",
            Seen::Replaced { pod, .. } => pod.starts_with("my-app-"),
        })
        .cloned()
        .collect();
    let replaced: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Seen::Replaced { pod, .. } => Some(pod.as_str()),
            Seen::Transfer { .. } => None,
        })
        .collect();
    let mut once = replaced.clone();
    once.sort();
    assert_eq!(
        once,
        ["my-app-0", "my-app-1", "my-app-2"],
        "each old pod replaced exactly once: {steps:?}"
    );
    for s in &steps {
        if let Seen::Replaced { pod, writer } = s {
            assert_ne!(pod, writer, "a pod was restarted while writer: {steps:?}");
        }
    }
    let transfers: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Seen::Transfer { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(transfers.len(), 1, "one hand-over: {steps:?}");
    let Seen::Transfer { from, to, .. } = &steps[transfers[0]] else {
        unreachable!()
    };
    assert_eq!(from, &writer_before, "{steps:?}");
    assert!(
        replaced[..2].contains(&to.as_str()) || to == "my-app-3" || to == "my-app-4",
        "the role went to an updated pod: {steps:?}"
    );
    assert_eq!(
        steps.last(),
        Some(&Seen::Replaced {
            pod: writer_before.clone(),
            writer: to.clone()
        }),
        "the writer last, after the hand-over: {steps:?}"
    );
    assert_eq!(transfers[0], steps.len() - 2, "followers first: {steps:?}");
    // The restarted operator tried to create the peer key again (it remembers nothing) and got 409.
    assert_eq!(
        secret_data(&secrets.get("my-app-peer-key").await.unwrap()),
        rotated,
        "the operator left the rotated peer key as it is"
    );

    // -- invalid objects: refused by the schema, or reported in status
    let example =
        std::fs::read_to_string(format!("{}/deploy/examples/my-app.yaml", support::ROOT)).unwrap();
    for (from, to, field) in [
        ("port: 8090", "port: 0", "spec.port"),
        (
            "leaderPollInterval: 2s",
            "leaderPollInterval: fast",
            "spec.gateway.leaderPollInterval",
        ),
    ] {
        let bad = example
            .replace("name: my-app", "name: bad-app")
            .replace(from, to);
        let (ok, _, err) = c.kubectl_stdin(&["apply", "-f", "-"], &bad);
        assert!(
            !ok && err.contains(field),
            "{to} must be refused naming {field}: {err}"
        );
    }
    // CEL (replicas odd) is dropped by a v1.20 apiserver, so the operator reports it.
    let even = example
        .replace("name: my-app", "name: even-app")
        .replace("replicas: 3", "replicas: 4")
        .replace("route: /v1/my-app", "route: /v1/even-app");
    apply_yaml(&c, &even);
    eventually(T, "Ready=False InvalidReplicas on even-app", || async {
        let s = status_of(&c, "hanzo", "even-app").await?;
        let ready = condition(&s, "Ready")?;
        (ready["status"] == "False"
            && ready["reason"] == "InvalidReplicas"
            && ready["message"].as_str()?.contains("spec.replicas"))
        .then_some(())
    })
    .await;
    assert!(
        sts_api.get_opt("even-app").await.unwrap().is_none(),
        "nothing is created for an invalid spec"
    );

    // -- a create race: crash-app's peer-key Secret appears before the operator creates it (as
    // when another writer won the race); the operator's create gets 409 and keeps that Secret.
    // Then the operator is killed mid-creation (pods created, held unready) and restarted: it
    // converges, nothing duplicated.
    let raced_key = "c0".repeat(32);
    let raced: Secret = serde_json::from_value(json!({
        "metadata": {"name": "crash-app-peer-key", "namespace": "hanzo"},
        "stringData": {"current": raced_key},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &raced)
        .await
        .unwrap();
    let raced = secret_data(&secrets.get("crash-app-peer-key").await.unwrap());
    let crash = example
        .replace("name: my-app", "name: crash-app")
        .replace("route: /v1/my-app", "route: /v1/crash-app");
    agents.hold(Some(Hold::New("crash-app".into())));
    apply_yaml(&c, &crash);
    eventually(
        T,
        "crash-app mid-creation: its StatefulSet and 3 unready pods",
        || async {
            let n = pods.list(&of_base("crash-app")).await.ok()?.items.len();
            (sts_api.get_opt("crash-app").await.ok()?.is_some() && n == 3).then_some(())
        },
    )
    .await;
    op.kill();
    assert_ne!(
        status_of(&c, "hanzo", "crash-app")
            .await
            .map(|s| s["phase"].clone()),
        Some(json!("Running")),
        "killed before crash-app was up"
    );
    agents.hold(None);
    let op = Operator::spawn(&c, "op-a", &[]);
    eventually(T, "crash-app converges after the restart", || async {
        let svcs = svc_api.list(&of_base("crash-app")).await.ok()?.items;
        let stss = sts_api.list(&of_base("crash-app")).await.ok()?.items;
        let s = status_of(&c, "hanzo", "crash-app").await?;
        (svcs.len() == 3
            && stss.len() == 1
            && s["observedGeneration"] == 1
            && s["phase"] == "Running"
            && s["readyReplicas"] == 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        secret_data(&secrets.get("crash-app-peer-key").await.unwrap()),
        raced,
        "the Secret that won the race is kept"
    );
    let creates: Vec<u16> = c
        .operator_requests()
        .iter()
        .filter(|r| r.verb == "create" && r.resource == "secrets" && r.name == "crash-app-peer-key")
        .map(|r| r.code)
        .collect();
    assert!(
        !creates.is_empty() && creates.iter().all(|c| *c == 409),
        "the operator's creates of the raced Secret all met it (409): {creates:?}"
    );

    // -- a scale change, with the operator killed between two steps (3 → 5 → 7; the new pods
    // held unready, so the StatefulSet stays at 5 of 7), under retentionPolicy Delete
    let delete_app = example
        .replace("name: my-app", "name: del-app")
        .replace("route: /v1/my-app", "route: /v1/del-app")
        .replace("retentionPolicy: Retain", "retentionPolicy: Delete");
    apply_yaml(&c, &delete_app);
    eventually(T, "del-app is up, with 3 PVCs", || async {
        let s = status_of(&c, "hanzo", "del-app").await?;
        (s["readyReplicas"] == 3 && pvcs_of(&pvc_api, "del-app").await.len() == 3).then_some(())
    })
    .await;
    let mut op = op;
    agents.hold(Some(Hold::New("del-app".into())));
    patch_base(&c, "del-app", r#"{"spec": {"replicas": 7}}"#);
    eventually(
        T,
        "del-app mid-scale: the StatefulSet at 5, its new pods unready",
        || async {
            let sts = sts_api.get("del-app").await.ok()?;
            let n = pods.list(&of_base("del-app")).await.ok()?.items.len();
            (sts.spec?.replicas == Some(5) && n == 5).then_some(())
        },
    )
    .await;
    op.kill();
    assert_eq!(
        sts_api.get("del-app").await.unwrap().spec.unwrap().replicas,
        Some(5),
        "killed between the two scale steps"
    );
    agents.hold(None);
    op = Operator::spawn(&c, "op-a", &[]);
    // Each step changes the peer set in the pod template: the pods are then rolled writer-last.
    eventually(
        Duration::from_secs(180),
        "del-app at 7 replicas, all ready on the current revision",
        || async {
            let sts = sts_api.get("del-app").await.ok()?;
            let rev = sts.status.as_ref()?.update_revision.clone()?;
            let s = status_of(&c, "hanzo", "del-app").await?;
            let list = pods.list(&of_base("del-app")).await.ok()?.items;
            let all_new = list.len() == 7
                && list.iter().all(|p| {
                    p.labels().get("controller-revision-hash") == Some(&rev) && is_ready(p)
                });
            (sts.spec?.replicas == Some(7)
                && all_new
                && s["readyReplicas"] == 7
                && s["observedGeneration"] == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(pvcs_of(&pvc_api, "del-app").await.len(), 7);
    assert_eq!(
        sts_api.list(&of_base("del-app")).await.unwrap().items.len(),
        1
    );

    // -- scale-down: PVCs of removed ordinals go under Delete, stay under Retain
    patch_base(&c, "del-app", r#"{"spec": {"replicas": 3}}"#);
    patch_base(&c, "my-app", r#"{"spec": {"replicas": 3}}"#);
    eventually(
        Duration::from_secs(180),
        "del-app at 3, the PVCs of ordinals 3-6 deleted",
        || async {
            let sts = sts_api.get("del-app").await.ok()?;
            (sts.spec?.replicas == Some(3)
                && pvcs_of(&pvc_api, "del-app").await
                    == ["data-del-app-0", "data-del-app-1", "data-del-app-2"])
            .then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(180), "my-app at 3 replicas", || async {
        let s = status_of(&c, "hanzo", "my-app").await?;
        let n = pods.list(&of_base("my-app")).await.ok()?.items.len();
        (s["readyReplicas"] == 3 && s["phase"] == "Running" && n == 3).then_some(())
    })
    .await;
    more_reconciles(&op, 8.0).await;
    assert_eq!(
        pvcs_of(&pvc_api, "my-app").await.len(),
        5,
        "Retain keeps the PVCs of removed ordinals"
    );
    // -- two operators: only the Lease holder writes; the other takes over when it goes
    let op_b = Operator::spawn(&c, "op-b", &[]);
    eventually(T, "op-b contends for the lease", || async {
        (op_b.metrics().await.is_some()
            && op_b.log_text().contains("waiting for the operator lease"))
        .then_some(())
    })
    .await;
    // op-b tries at once and then every 2 s: it has tried at least once while the holder renewed
    // the Lease twice (every second) after op-b started waiting.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "base-system");
    let lease_now = || async {
        let spec = leases.get("base-operator").await.ok()?.spec?;
        Some((spec.holder_identity?, spec.renew_time?.0))
    };
    let (_, renewed_at) = lease_now().await.expect("the Lease");
    eventually(
        T,
        "op-a renews the Lease twice while op-b waits",
        || async {
            let (holder, t) = lease_now().await?;
            assert_eq!(holder, "op-a", "the Lease moved while op-a held it");
            (t.duration_since(renewed_at).as_secs_f64() >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(op_b.counter("base_operator_leader").await, Some(0.0));
    assert_eq!(op.counter("base_operator_leader").await, Some(1.0));
    patch_base(&c, "crash-app", r#"{"spec": {"iamApp": "app-crash-2"}}"#);
    let iam_app_is = |want: &'static str| {
        let sts_api = sts_api.clone();
        async move {
            let sts = sts_api.get("crash-app").await.ok()?;
            let env = sts.spec?.template.spec?.containers[0].env.clone()?;
            env.iter()
                .any(|e| e.name == "IAM_APP" && e.value.as_deref() == Some(want))
                .then_some(())
        }
    };
    eventually(T, "the holder applies the change", || {
        iam_app_is("app-crash-2")
    })
    .await;
    assert_eq!(writes(&op_b).await, 0.0, "the standby operator wrote");
    drop(op);
    eventually(T, "op-b takes over the lease", || async {
        (op_b.counter("base_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    patch_base(&c, "crash-app", r#"{"spec": {"iamApp": "app-crash-3"}}"#);
    eventually(T, "the new holder applies the change", || {
        iam_app_is("app-crash-3")
    })
    .await;

    // -- the legacy kind BaseApp, end to end: its objects are owned by it, status and route
    // written; then the documented migration to Base (README "The legacy kind BaseApp")
    let legacy = example
        .replace("kind: Base\n", "kind: BaseApp\n")
        .replace("name: my-app", "name: legacy-app")
        .replace("route: /v1/my-app", "route: /v1/legacy-app");
    assert!(legacy.contains("kind: BaseApp\n"));
    apply_yaml(&c, &legacy);
    let app_uid = eventually(T, "the BaseApp exists", || async {
        baseapps(&c, "hanzo")
            .get_opt("legacy-app")
            .await
            .ok()?
            .and_then(|b| b.uid())
    })
    .await;
    let route_owner = |owner: &'static str| {
        let gw_api = gateways(&c, "hanzo");
        async move {
            let routes = gateway_routes(&gw_api.get("gateway").await.ok()?);
            let mine: Vec<&Value> = routes
                .iter()
                .filter(|r| r["prefix"] == "/v1/legacy-app")
                .collect();
            (mine.len() == 1 && mine[0]["owner"] == owner).then_some(())
        }
    };
    eventually(T, "the BaseApp reconciled like a Base", || async {
        let sts = sts_api.get_opt("legacy-app").await.ok()??;
        let owner = sts.owner_references().first()?.clone();
        let s = baseapps(&c, "hanzo")
            .get("legacy-app")
            .await
            .ok()?
            .data
            .get("status")?
            .clone();
        route_owner("BaseApp/hanzo/legacy-app").await?;
        (owner.kind == "BaseApp"
            && owner.uid == app_uid
            && s["phase"] == "Running"
            && s["readyReplicas"] == 3
            && s["currentWriter"] == "legacy-app-0")
            .then_some(())
    })
    .await;
    for name in ["legacy-app-hs", "legacy-app", "legacy-app-writer"] {
        let svc = svc_api.get(name).await.unwrap();
        assert_eq!(svc.owner_references()[0].uid, app_uid, "{name}");
    }
    eventually(T, "the BaseApp's pods labelled by its writer", || async {
        (labelled(pods.list(&of_base("legacy-app")).await.ok()?.items) == ["legacy-app-0"])
            .then_some(())
    })
    .await;
    let sts_uid = sts_api.get("legacy-app").await.unwrap().uid();
    let pods_before = pod_uids(&pods, "legacy-app").await;
    let pvcs_before = pvcs_of(&pvc_api, "legacy-app").await;
    let key_before = secret_data(&secrets.get("legacy-app-peer-key").await.unwrap());
    let legacy_seen_from = agents.seen().len();
    c.kubectl_ok(&[
        "delete",
        "baseapps.hanzo.ai",
        "legacy-app",
        "-n",
        "hanzo",
        "--cascade=orphan",
        "--wait=true",
        "--timeout=120s",
    ]);
    let orphan = sts_api.get("legacy-app").await.unwrap();
    assert_eq!(orphan.uid(), sts_uid, "the StatefulSet stays");
    assert!(
        orphan.owner_references().is_empty(),
        "orphaned: {:?}",
        orphan.owner_references()
    );
    let routes = gateway_routes(&gateways(&c, "hanzo").get("gateway").await.unwrap());
    assert!(
        !routes.iter().any(|r| r["prefix"] == "/v1/legacy-app"),
        "the BaseApp's finalizer removed its route"
    );
    apply_yaml(&c, &legacy.replace("kind: BaseApp\n", "kind: Base\n"));
    let new_uid = eventually(T, "the Base exists", || async {
        bases(&c, "hanzo")
            .get_opt("legacy-app")
            .await
            .ok()?
            .and_then(|b| b.uid())
    })
    .await;
    eventually(T, "the Base adopted the BaseApp's objects", || async {
        let sts = sts_api.get("legacy-app").await.ok()?;
        let refs = sts.owner_references();
        let s = status_of(&c, "hanzo", "legacy-app").await?;
        route_owner("Base/hanzo/legacy-app").await?;
        let svcs_ok = svc_api
            .list(&of_base("legacy-app"))
            .await
            .ok()?
            .items
            .iter()
            .all(|svc| svc.owner_references().first().map(|r| &r.uid) == Some(&new_uid));
        let pdb = pdb_api.get("legacy-app").await.ok()?;
        (refs.len() == 1
            && refs[0].kind == "Base"
            && refs[0].uid == new_uid
            && refs[0].controller == Some(true)
            && svcs_ok
            && pdb.owner_references().first().map(|r| &r.uid) == Some(&new_uid)
            && s["phase"] == "Running"
            && s["readyReplicas"] == 3
            && s["currentWriter"] == "legacy-app-0")
            .then_some(())
    })
    .await;
    assert_eq!(
        sts_api.get("legacy-app").await.unwrap().uid(),
        sts_uid,
        "adopted, not re-created"
    );
    assert_eq!(
        svc_api
            .list(&of_base("legacy-app"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(
        pod_uids(&pods, "legacy-app").await,
        pods_before,
        "no pod restarted"
    );
    assert!(
        !agents.seen()[legacy_seen_from..]
            .iter()
            .any(|s| matches!(s, Seen::Replaced { pod, .. } if pod.starts_with("legacy-app-"))),
        "no pod restarted"
    );
    assert_eq!(
        pvcs_of(&pvc_api, "legacy-app").await,
        pvcs_before,
        "the data stays"
    );
    assert_eq!(
        secret_data(&secrets.get("legacy-app-peer-key").await.unwrap()),
        key_before,
        "the peer key stays"
    );

    // -- the apiserver restarts: every watch is cut and resumes from a resourceVersion the new
    // watch cache no longer serves (410 Gone); the operator re-lists and converges. An operator
    // whose Lease outlives the restart, so that the same process lives through it.
    drop(op_b);
    let op = Operator::spawn_with_lease(&c, "op-c", "60s", "2s", &[]);
    eventually(T, "op-c holds the lease", || async {
        (op.counter("base_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    // Its watches established and its first reconciles done, so that they resume (not start).
    settled_writes(&op, Duration::from_secs(3)).await;
    let failed_before = failures(&op).await;
    more_reconciles(&op, 4.0).await;
    assert_eq!(failures(&op).await, failed_before, "op-c is settled");
    let restart = c.restart_apiserver();
    patch_base(&c, "crash-app", r#"{"spec": {"iamApp": "app-crash-4"}}"#);
    svc_api
        .delete("crash-app", &Default::default())
        .await
        .expect("delete a Service");
    eventually(
        T,
        "after the restart: the change applied, the Service re-created",
        || async {
            iam_app_is("app-crash-4").await?;
            svc_api.get_opt("crash-app").await.ok()??;
            Some(())
        },
    )
    .await;
    eventually(T, "op-c's watches met 410 Gone", || async {
        op.log_text()
            .contains("too old resource version")
            .then_some(())
    })
    .await;
    assert_eq!(
        svc_api
            .list(&of_base("crash-app"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(
        sts_api
            .list(&of_base("crash-app"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        op.counter("base_operator_leader").await,
        Some(1.0),
        "the same operator process lived through the restart"
    );

    // -- deletion: the route goes, PVCs follow retentionPolicy
    c.kubectl_ok(&[
        "delete",
        "bapp",
        "my-app",
        "del-app",
        "-n",
        "hanzo",
        "--wait=true",
        "--timeout=120s",
    ]);
    for name in ["my-app", "del-app"] {
        assert!(
            bases(&c, "hanzo").get_opt(name).await.unwrap().is_none(),
            "{name} is gone: its finalizer has finished"
        );
    }
    let routes = gateway_routes(&gateways(&c, "hanzo").get("gateway").await.unwrap());
    let prefixes: Vec<&str> = routes.iter().filter_map(|r| r["prefix"].as_str()).collect();
    assert!(
        !prefixes.contains(&"/v1/my-app") && !prefixes.contains(&"/v1/del-app"),
        "routes removed: {prefixes:?}"
    );
    assert!(
        prefixes.contains(&"/v1/other") && prefixes.contains(&"/v1/concurrent"),
        "the other owners' routes are kept: {prefixes:?}"
    );
    assert!(
        pvcs_of(&pvc_api, "del-app").await.is_empty(),
        "Delete removed the PVCs before the finalizer went"
    );
    // -- a Base deleted and created again under the same name gets a peer-key Secret of its own:
    // the garbage collector removes the old one with its owner, and the operator must not take the
    // new Base for the old (found on real pods: the pods waited for ever to mount the Secret).
    eventually(T, "del-app's old peer-key Secret collected", || async {
        secrets
            .get_opt("del-app-peer-key")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // Its pods are new incarnations of the old Base's pod names, not restarts of a writer.
    let recreated_from = agents.seen().len();
    apply_yaml(&c, &delete_app);
    let uid = eventually(T, "del-app created again", || async {
        bases(&c, "hanzo").get_opt("del-app").await.ok()??.uid()
    })
    .await;
    eventually(T, "a peer-key Secret owned by the new del-app", || async {
        let s = secrets.get_opt("del-app-peer-key").await.ok()??;
        s.owner_references()
            .iter()
            .any(|o| o.uid == uid)
            .then_some(())
    })
    .await;
    // Nothing acts on my-app any more; check again after the operator went on for a while.
    more_reconciles(&op, 4.0).await;
    assert_eq!(
        pvcs_of(&pvc_api, "my-app").await.len(),
        5,
        "Retain keeps PVCs"
    );

    // -- over the whole run, no pod was restarted while it was its Base's writer
    for (i, s) in agents.seen().iter().enumerate() {
        if let Seen::Replaced { pod, writer } = s {
            if i >= recreated_from && pod.starts_with("del-app-") {
                continue;
            }
            assert_ne!(pod, writer, "{pod} was restarted while writer");
        }
    }

    // -- the operator's API calls, from the audit log, are exactly within its RBAC table
    drop(op);
    let allowed = |verb: &str, group: &str, resource: &str| {
        CLUSTER_CALLS
            .iter()
            .chain(NAMESPACE_CALLS)
            .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
    };
    let calls = c.operator_requests();
    assert!(
        !calls.is_empty(),
        "the audit log shows the operator's calls"
    );
    for r in &calls {
        let (verb, group, resource) = (&r.verb, &r.group, &r.resource);
        // Denials by the restarted apiserver before its RBAC cache synced are not the operator's.
        let restarting = restart.0 <= r.at && r.at <= restart.1;
        assert!(
            r.code != 403 || restarting,
            "forbidden: {verb} {group}/{resource} at {}",
            r.at
        );
        assert!(
            allowed(verb, group, resource),
            "call outside the RBAC table: {verb} {group}/{resource}"
        );
    }
    // The peer-key Secrets were written by `create` only (never update or patch).
    assert!(
        c.operator_requests()
            .iter()
            .filter(|r| r.resource == "secrets")
            .all(|r| r.verb == "create"),
        "the operator only ever creates Secrets"
    );
}
