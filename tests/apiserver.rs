//! The operator against a real kube-apiserver (v1.20, built by scripts/k8s-envtest.sh) with
//! kube-controller-manager but no kubelet: a stand-in kubelet in this test marks pods Ready, and
//! stand-in Quasar agents answer `/_ha/leader`. The operator runs as a user bound only to
//! deploy/rbac.yaml, and its audit log is compared with that RBAC at the end.

mod support;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base_adapter_k8s::controller::rbac::{CLUSTER_CALLS, NAMESPACE_CALLS};
use base_adapter_k8s::controller::{ANNOTATION_AGENT_URL, FINALIZER};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cluster, Operator, eventually};

const T: Duration = Duration::from_secs(60);

/// Stand-in agents: all answer with the same view of the writer, like a healthy cluster would.
#[derive(Clone, Default)]
struct Agents {
    state: Arc<Mutex<(String, u64)>>,
    transfers: Arc<Mutex<Vec<String>>>,
}

impl Agents {
    fn set(&self, writer: &str, term: u64) {
        *self.state.lock().unwrap() = (writer.to_string(), term);
    }
    fn get(&self) -> (String, u64) {
        self.state.lock().unwrap().clone()
    }
}

async fn leader(State(a): State<Agents>) -> Json<Value> {
    let (writer, term) = a.get();
    let lease =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(10);
    Json(
        json!({"leader_url": format!("http://{writer}"), "node_id": writer, "term": term, "lease_expires": lease.to_string()}),
    )
}

async fn transfer(State(a): State<Agents>, Json(body): Json<Value>) -> &'static str {
    let to = body["to"].as_str().unwrap_or_default().to_string();
    let (_, term) = a.get();
    a.transfers.lock().unwrap().push(to.clone());
    a.set(&to, term + 1);
    "ok"
}

async fn start_agents(agents: Agents) -> String {
    let app = Router::new()
        .route("/_ha/leader", get(leader))
        .route("/_ha/transfer", post(transfer))
        .with_state(agents);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A stand-in kubelet: marks every pod of the namespace Ready and points the poller at the agents.
fn start_kubelet(pods: Api<Pod>, agent_url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    if p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    if !p.annotations().contains_key(ANNOTATION_AGENT_URL) {
                        let _ = pods
                            .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_AGENT_URL: agent_url}}})))
                            .await;
                    }
                    if !ready {
                        let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
                            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
                        let _ = pods
                            .patch_status(
                                &p.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(status),
                            )
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

fn bases(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("hanzo.ai", "v1", "Base"),
        "bases",
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
    op.counter("base_operator_api_writes_total")
        .await
        .unwrap_or(-1.0)
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

fn apply_yaml(c: &Cluster, yaml: &str) {
    let (ok, _, err) = c.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(ok, "kubectl apply failed: {err}");
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
    let _kubelet = start_kubelet(pods.clone(), agent_url);

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
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(c.client.clone(), "hanzo");
    let key = eventually(T, "the peer-key Secret", || async {
        secrets.get_opt("my-app-peer-key").await.ok()?
    })
    .await;
    assert_eq!(key.owner_references()[0].uid, base_uid);
    assert_eq!(
        key.data
            .as_ref()
            .and_then(|d| d.get("current"))
            .map(|v| v.0.len()),
        Some(64)
    );
    let base_fin = bases(&c, "hanzo").get("my-app").await.unwrap();
    assert!(base_fin.finalizers().iter().any(|f| f == FINALIZER));

    // -- the Gateway route, the other owner's entry kept
    eventually(T, "the route in the Gateway", || async {
        let gw = gateways(&c, "hanzo").get("gateway").await.ok()?;
        let routes = gw.data["spec"]["routes"].as_array()?.clone();
        (routes.len() == 2
            && routes.contains(&other_route)
            && routes.iter().any(|r| r["prefix"] == "/v1/my-app"))
        .then_some(())
    })
    .await;

    // -- a writer: label and status follow the agents' answer
    agents.set("my-app-1", 3);
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
        (labelled(pods.list(&ListParams::default()).await.ok()?.items) == ["my-app-1"])
            .then_some(())
    })
    .await;
    agents.set("my-app-2", 4);
    let start = std::time::Instant::now();
    loop {
        let now = labelled(pods.list(&ListParams::default()).await.unwrap().items);
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

    // -- an unchanged world: zero writes over several resyncs (2 s each)
    let before = settled_writes(&op, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        writes(&op).await,
        before,
        "the operator wrote while nothing changed"
    );

    // -- spec changes: image tag, env, replicas 3 → 5, rolled writer-last
    c.kubectl_ok(&["patch", "bapp", "my-app", "-n", "hanzo", "--type=merge", "-p",
        r#"{"spec": {"image": {"tag": "v1.2.4"}, "replicas": 5, "env": [{"name": "LOG_LEVEL", "value": "debug"}]}}"#]);
    eventually(
        Duration::from_secs(180),
        "5 replicas, all on the new revision, rolled writer-last",
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
            let list = pods.list(&ListParams::default()).await.ok()?.items;
            let all_new = list.len() == 5
                && list.iter().all(|p| {
                    p.labels().get("controller-revision-hash") == Some(&rev)
                        && p.metadata.deletion_timestamp.is_none()
                });
            (image_ok && env_ok && spec.replicas == Some(5) && all_new).then_some(())
        },
    )
    .await;
    let transfers = agents.transfers.lock().unwrap().clone();
    assert!(
        !transfers.is_empty(),
        "the writer handed over before it was restarted"
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

    // -- kill the operator mid-reconcile, restart: it converges, no duplicates
    let crash = example
        .replace("name: my-app", "name: crash-app")
        .replace("route: /v1/my-app", "route: /v1/crash-app");
    apply_yaml(&c, &crash);
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.kill();
    let op = Operator::spawn(&c, "op-a", &[]);
    eventually(T, "crash-app converges after the restart", || async {
        let svcs = svc_api
            .list(&ListParams::default().labels("hanzo.ai/base=crash-app"))
            .await
            .ok()?
            .items;
        let stss = sts_api
            .list(&ListParams::default().labels("hanzo.ai/base=crash-app"))
            .await
            .ok()?
            .items;
        let s = status_of(&c, "hanzo", "crash-app").await?;
        (svcs.len() == 3 && stss.len() == 1 && s["observedGeneration"] == 1).then_some(())
    })
    .await;

    // -- two operators: only the Lease holder writes; the other takes over when it goes
    let op_b = Operator::spawn(&c, "op-b", &[]);
    eventually(T, "op-b serves metrics", || async { op_b.metrics().await }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(op_b.counter("base_operator_leader").await, Some(0.0));
    assert_eq!(op.counter("base_operator_leader").await, Some(1.0));
    c.kubectl_ok(&[
        "patch",
        "bapp",
        "crash-app",
        "-n",
        "hanzo",
        "--type=merge",
        "-p",
        r#"{"spec": {"iamApp": "app-crash-2"}}"#,
    ]);
    eventually(T, "the holder applies the change", || async {
        let sts = sts_api.get("crash-app").await.ok()?;
        let env = sts.spec?.template.spec?.containers[0].env.clone()?;
        env.iter()
            .any(|e| e.name == "IAM_APP" && e.value.as_deref() == Some("app-crash-2"))
            .then_some(())
    })
    .await;
    assert_eq!(writes(&op_b).await, 0.0, "the standby operator wrote");
    drop(op);
    eventually(T, "op-b takes over the lease", || async {
        (op_b.counter("base_operator_leader").await? == 1.0).then_some(())
    })
    .await;
    c.kubectl_ok(&[
        "patch",
        "bapp",
        "crash-app",
        "-n",
        "hanzo",
        "--type=merge",
        "-p",
        r#"{"spec": {"iamApp": "app-crash-3"}}"#,
    ]);
    eventually(T, "the new holder applies the change", || async {
        let sts = sts_api.get("crash-app").await.ok()?;
        let env = sts.spec?.template.spec?.containers[0].env.clone()?;
        env.iter()
            .any(|e| e.name == "IAM_APP" && e.value.as_deref() == Some("app-crash-3"))
            .then_some(())
    })
    .await;

    // -- deletion: the route goes, PVCs follow retentionPolicy
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "hanzo");
    let pvcs_of = |name: &'static str| {
        let pvc_api = pvc_api.clone();
        async move {
            pvc_api
                .list(&ListParams::default().labels(&format!("hanzo.ai/base={name}")))
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
        }
    };
    eventually(T, "my-app's PVCs exist", || async {
        (pvcs_of("my-app").await == 5).then_some(())
    })
    .await;
    let delete_app = example
        .replace("name: my-app", "name: del-app")
        .replace("route: /v1/my-app", "route: /v1/del-app")
        .replace("retentionPolicy: Retain", "retentionPolicy: Delete");
    apply_yaml(&c, &delete_app);
    eventually(T, "del-app's PVCs exist", || async {
        (pvcs_of("del-app").await == 3).then_some(())
    })
    .await;
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
    let gw = gateways(&c, "hanzo").get("gateway").await.unwrap();
    let prefixes: Vec<&str> = gw.data["spec"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["prefix"].as_str())
        .collect();
    assert!(
        !prefixes.contains(&"/v1/my-app") && !prefixes.contains(&"/v1/del-app"),
        "routes removed: {prefixes:?}"
    );
    assert!(
        prefixes.contains(&"/v1/other"),
        "the other owner's route is kept: {prefixes:?}"
    );
    assert_eq!(pvcs_of("my-app").await, 5, "Retain keeps PVCs");
    eventually(T, "Delete removes PVCs", || async {
        (pvcs_of("del-app").await == 0).then_some(())
    })
    .await;

    // -- the operator's API calls, from the audit log, are exactly within its RBAC table
    drop(op_b);
    let allowed = |verb: &str, group: &str, resource: &str| {
        CLUSTER_CALLS
            .iter()
            .chain(NAMESPACE_CALLS)
            .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
    };
    let calls = c.operator_calls();
    assert!(
        !calls.is_empty(),
        "the audit log shows the operator's calls"
    );
    for (verb, group, resource, code) in &calls {
        assert_ne!(*code, 403, "forbidden: {verb} {group}/{resource}");
        assert!(
            allowed(verb, group, resource),
            "call outside the RBAC table: {verb} {group}/{resource}"
        );
    }
}
