//! End to end on real pods: `scripts/cluster.sh up` (a one-node Kubernetes v1.20 with a real kubelet
//! and Docker, cluster DNS, a StorageClass, the images built from ./Dockerfile, and the operator
//! installed from deploy/ and running in the cluster), then `deploy/examples/local.yaml` (the Base
//! `local`, 3 replicas of the reference store, and the gateway). Nothing here is a stand-in: the
//! pod template, probes, downward-API files, security context, peer DNS names and SIGTERM hand-over
//! are the operator's own, run by the kubelet.
//!
//! The scenarios run in order in one test (one cluster per machine: its bridge and the kubelet's
//! fixed paths), each named for what it proves; a failure names the scenario. Needs root and
//! Debian's docker.io (installed by scripts/cluster.sh when missing); `.ci/run` runs it.
//! The traffic goes only to the cluster's own pods and Services, on its own bridge.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{ROOT, client_for, eventually};

/// Generous bounds: a pod's replacement took up to 22 s on the reference node; a loaded CI
/// machine is slower still. Tests wait on conditions, never on these.
const T: Duration = Duration::from_secs(120);
const NS: &str = "hanzo";
const BASE: &str = "local";

/// The cluster of `scripts/cluster.sh up DIR`; `down DIR` on drop (also when a scenario fails).
struct Node {
    dir: PathBuf,
    kubeconfig: PathBuf,
    client: Client,
}

impl Node {
    async fn up() -> Node {
        let dir = PathBuf::from(format!("/tmp/base-cluster-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = Instant::now();
        let out = Command::new(format!("{ROOT}/scripts/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .env("BASE_OPERATOR_BIN", support::BIN)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/cluster.sh");
        if !out.status.success() {
            let _ = Command::new(format!("{ROOT}/scripts/cluster.sh"))
                .arg("down")
                .arg(&dir)
                .status();
            panic!("scripts/cluster.sh up failed; logs in {}", dir.display());
        }
        eprintln!("cluster up in {:.1} s", t.elapsed().as_secs_f64());
        let kubeconfig = dir.join("kubeconfig");
        let client = client_for(&kubeconfig).await;
        Node {
            dir,
            kubeconfig,
            client,
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .current_dir(ROOT)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    /// The project's kubectl plugin, as `kubectl base ...` runs it.
    fn plugin(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-base"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl-base");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `docker ARGS` against the cluster's own daemon.
    fn docker(&self, args: &[&str]) -> String {
        let cli = if std::path::Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let out = Command::new(cli)
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.join("docker.sock").display()),
            )
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The Docker id of container `container` of pod `pod` (the kubelet labels every container).
    fn container_id(&self, pod: &str, container: &str) -> String {
        let id = self.docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=io.kubernetes.pod.name={pod}"),
            "--filter",
            &format!("label=io.kubernetes.pod.namespace={NS}"),
            "--filter",
            &format!("label=io.kubernetes.container.name={container}"),
        ]);
        assert!(
            !id.is_empty() && !id.contains('\n'),
            "one running container {container} of {pod}, found {id:?}"
        );
        id
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn bases(&self) -> Api<kube::api::DynamicObject> {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("hanzo.ai", "v1", "Base"),
            "bases",
        );
        Api::namespaced_with(self.client.clone(), NS, &ar)
    }

    /// `status` of the Base (empty object when there is none yet).
    async fn status(&self) -> Value {
        match self.bases().get_opt(BASE).await {
            Ok(Some(b)) => b.data.get("status").cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/scripts/cluster.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
        // The logs stay for a failed run; a passed run leaves nothing.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What one agent says about the writer (`GET /_ha/leader` on its client port, by pod IP).
#[derive(Debug, Clone, PartialEq)]
struct View {
    writer: String,
    term: u64,
}

async fn leader_of(http: &reqwest::Client, ip: &str) -> Option<View> {
    let r = http
        .get(format!("http://{ip}:8090/_ha/leader"))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some(View {
        writer: v["node_id"].as_str()?.to_string(),
        term: v["term"].as_u64()?,
    })
}

/// The running pods of the Base, by name, with their IPs.
async fn pod_ips(node: &Node) -> Vec<(String, String)> {
    let lp = ListParams::default().labels(&format!("hanzo.ai/base={BASE}"));
    let mut out = Vec::new();
    for p in node
        .pods()
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            out.push((p.name_any(), ip));
        }
    }
    out.sort();
    out
}

/// Every agent the API lists (not terminating) answers, and all name the same writer of the same
/// term, newer than `after_term`: the cluster agrees on one writer.
async fn agreed_writer(node: &Node, http: &reqwest::Client, after_term: u64) -> Option<View> {
    let pods = pod_ips(node).await;
    if pods.len() != 3 {
        return None;
    }
    let mut seen: Option<View> = None;
    for (_, ip) in &pods {
        let v = leader_of(http, ip).await?;
        if v.writer.is_empty() || v.term <= after_term {
            return None;
        }
        match &seen {
            Some(s) if *s != v => return None,
            _ => seen = Some(v),
        }
    }
    seen
}

/// Waits until the Base's status and the writer label name `writer` (the operator followed the agents).
async fn status_and_label_follow(node: &Node, writer: &str) {
    eventually(
        T,
        &format!("status.currentWriter and the writer label on {writer}"),
        || async {
            let st = node.status().await;
            if st["currentWriter"].as_str() != Some(writer) {
                return None;
            }
            let lp =
                ListParams::default().labels(&format!("hanzo.ai/base={BASE},hanzo.ai/role=writer"));
            let labelled: Vec<String> = node
                .pods()
                .list(&lp)
                .await
                .ok()?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            (labelled == [writer.to_string()]).then_some(())
        },
    )
    .await;
}

/// The example Base becomes Ready on real pods: 3 pods Running with both containers ready (the
/// agent's readiness probe passes only once its peers answer over the cluster DNS names the
/// operator put in BASE_PEERS), volumes bound through the StorageClass, one writer the three agents
/// agree on, and the operator (running in the cluster with its least-privilege ServiceAccount) has
/// put it in status and on the writer label.
async fn example_base_becomes_ready_with_a_writer(node: &Node, http: &reqwest::Client) -> View {
    let t = Instant::now();
    node.kubectl_ok(&["apply", "-f", "deploy/examples/local.yaml"]);
    let view = eventually(
        Duration::from_secs(300),
        "three agents agreeing on a writer",
        || agreed_writer(node, http, 0),
    )
    .await;
    eventually(T, "status.readyReplicas = 3", || async {
        (node.status().await["readyReplicas"].as_u64() == Some(3)).then_some(())
    })
    .await;
    status_and_label_follow(node, &view.writer).await;
    eprintln!(
        "Base created -> Ready with writer {} (term {}) in {:.1} s",
        view.writer,
        view.term,
        t.elapsed().as_secs_f64()
    );
    // Each claim was bound by the cluster's provisioner, and each pod runs as the operator said.
    let pvcs = node.kubectl_ok(&[
        "-n",
        NS,
        "get",
        "pvc",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        pvcs.split_whitespace().collect::<Vec<_>>(),
        ["Bound"; 3],
        "PVCs: {pvcs}"
    );
    let running = node.kubectl_ok(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "hanzo.ai/base=local",
        "-o",
        "jsonpath={range .items[*]}{.status.phase}/{.status.containerStatuses[*].ready} {end}",
    ]);
    assert_eq!(
        running.matches("Running/true true").count(),
        3,
        "3 pods Running with both containers ready: {running}"
    );
    view
}

/// Polls the agents until a writer of a term newer than `before.term` is agreed on, and returns it
/// with the time since `from`.
async fn failover(
    node: &Node,
    http: &reqwest::Client,
    before: &View,
    from: Instant,
    what: &str,
) -> (View, Duration) {
    let view = loop {
        // Survivors first: the replaced pod's agent joins later, so agreement of all three is not awaited here.
        let mut found = None;
        for (name, ip) in pod_ips(node).await {
            if name == before.writer {
                continue;
            }
            if let Some(v) = leader_of(http, &ip).await
                && !v.writer.is_empty()
                && v.term > before.term
            {
                found = Some(v);
                break;
            }
        }
        if let Some(v) = found {
            break v;
        }
        assert!(from.elapsed() < T, "{what}: no new writer after {T:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = from.elapsed();
    eprintln!(
        "{what}: new writer {} (term {}) after {:.2} s",
        view.writer,
        view.term,
        took.as_secs_f64()
    );
    (view, took)
}

/// `kubectl delete pod <writer>`: the kubelet sends SIGTERM, the agent hands the writer role over,
/// a follower wins a newer term, and the operator moves status.currentWriter and the writer label
/// to it; the deleted pod comes back under the same name with the same claim and rejoins as a follower.
async fn writer_pod_deleted_fails_over(node: &Node, http: &reqwest::Client, before: View) -> View {
    let t = Instant::now();
    node.kubectl_ok(&["-n", NS, "delete", "pod", &before.writer, "--wait=false"]);
    let (view, _) = failover(node, http, &before, t, "writer pod deleted").await;
    assert_ne!(view.writer, before.writer);
    status_and_label_follow(node, &view.writer).await;
    let agreed = eventually(T, "the replaced pod rejoins and all three agree", || {
        agreed_writer(node, http, before.term)
    })
    .await;
    assert_eq!(agreed, view, "the writer changed again after the failover");
    view
}

/// `docker kill` of the writer's agent container (SIGKILL, no hand-over): its lease runs out, a
/// follower wins a newer term, status and label follow; the kubelet restarts the container in place.
async fn writer_container_killed_fails_over(
    node: &Node,
    http: &reqwest::Client,
    before: View,
) -> View {
    let id = node.container_id(&before.writer, "quasar");
    let t = Instant::now();
    node.docker(&["kill", &id]);
    let (view, _) = failover(node, http, &before, t, "writer container killed").await;
    assert_ne!(view.writer, before.writer);
    status_and_label_follow(node, &view.writer).await;
    eventually(T, "the killed agent restarted and agreeing", || {
        agreed_writer(node, http, before.term)
    })
    .await;
    view
}

/// `docker pause` of the writer's agent past its lease: the others elect a writer of a newer term
/// while it is frozen; once thawed it does not go on as writer (it learns the newer term) and the
/// cluster agrees on the new writer.
async fn writer_paused_past_its_lease(node: &Node, http: &reqwest::Client, before: View) -> View {
    let id = node.container_id(&before.writer, "quasar");
    let t = Instant::now();
    node.docker(&["pause", &id]);
    let res = tokio::time::timeout(T, failover(node, http, &before, t, "writer paused")).await;
    node.docker(&["unpause", &id]);
    let (view, _) = res.expect("a new writer while the old one is paused");
    assert_ne!(view.writer, before.writer);
    let agreed = eventually(T, "the thawed agent follows the newer term", || {
        agreed_writer(node, http, before.term)
    })
    .await;
    assert!(
        agreed.term >= view.term,
        "all three, the thawed {} too, agree on term {} >= {}",
        before.writer,
        agreed.term,
        view.term
    );
    status_and_label_follow(node, &agreed.writer).await;
    agreed
}

/// `kubectl base status` on real pods names the writer and term the agents agree on, and every
/// replica with its role.
fn plugin_status_names_the_writer(node: &Node, view: &View) {
    let (ok, out, err) = node.plugin(&["status", BASE, "-n", NS]);
    assert!(ok, "kubectl base status failed: {err}");
    assert!(
        out.contains(&view.writer),
        "status names the writer {}: {out}",
        view.writer
    );
    assert!(
        out.contains(&view.term.to_string()),
        "status names term {}: {out}",
        view.term
    );
    for i in 0..3 {
        assert!(
            out.contains(&format!("{BASE}-{i}")),
            "status lists {BASE}-{i}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_pods_end_to_end() {
    let node = Node::up().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let v = example_base_becomes_ready_with_a_writer(&node, &http).await;
    plugin_status_names_the_writer(&node, &v);
    let v = writer_pod_deleted_fails_over(&node, &http, v).await;
    let v = writer_container_killed_fails_over(&node, &http, v).await;
    let v = writer_paused_past_its_lease(&node, &http, v).await;
    plugin_status_names_the_writer(&node, &v);
}
