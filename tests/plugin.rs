//! The kubectl plugin (`kubectl-base`) against a real kube-apiserver (v1.20, scripts/k8s-envtest.sh),
//! with no operator: the test creates the CRD, a Base, its pods, and writes the Base's status through
//! the status subresource itself; where a command waits for the operator (switchover), the test
//! plays the operator's part of the annotation contract.
//!
//! A stand-in agent answers `/_ha/leader` on loopback, and two pods carry [`POD_IP`] as their podIP,
//! so `status` reads real answers through the apiserver's pod proxy on any machine (no network
//! needed); a pod without an IP shows `-`.

mod support;

use axum::Json;
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Cluster, eventually};
use tokio::io::AsyncBufReadExt;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-base");
const NS: &str = "plug";
const FENCED: &str = "hanzo.ai/fenced-instances";
const SWITCHOVER: &str = "hanzo.ai/switchover-to";
const T: Duration = Duration::from_secs(30);

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn plugin(c: &Cluster, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(PLUGIN)
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run kubectl-base");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn plugin_ok(c: &Cluster, args: &[&str]) -> String {
    let o = plugin(c, args).await;
    assert!(
        o.ok,
        "kubectl-base {args:?} failed: {}\n{}",
        o.stderr, o.stdout
    );
    o.stdout
}

async fn plugin_err(c: &Cluster, args: &[&str], expect: &str) -> Out {
    let o = plugin(c, args).await;
    assert!(!o.ok, "kubectl-base {args:?} should fail:\n{}", o.stdout);
    assert!(
        o.stderr.contains(expect),
        "kubectl-base {args:?}: stderr should contain {expect:?}: {}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "kubectl-base {args:?} panicked: {}",
        o.stderr
    );
    o
}

fn api(c: &Cluster, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("hanzo.ai", "v1", kind), plural);
    Api::namespaced_with(c.client.clone(), NS, &ar)
}

async fn annotation(bases: &Api<DynamicObject>, key: &str) -> Option<String> {
    bases
        .get("app")
        .await
        .unwrap()
        .annotations()
        .get(key)
        .cloned()
}

async fn set_annotation(bases: &Api<DynamicObject>, key: &str, value: Value) {
    bases
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

async fn set_status(bases: &Api<DynamicObject>, status: Value) {
    bases
        .patch_status(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, time: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": time})
}

/// The words of the table row of `pod` in `status` output.
fn row<'a>(text: &'a str, pod: &str) -> Vec<&'a str> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(pod))
        .unwrap_or_else(|| panic!("no row for {pod} in:\n{text}"))
        .split_whitespace()
        .collect()
}

/// The podIP of the pods whose agent answers. The apiserver refuses to proxy to loopback and
/// link-local addresses (`IsProxyableIP`), so 127.0.0.x cannot stand in for a pod; it does not
/// refuse the unspecified address, and Go's dialer (as Linux) sends a connection to 0.0.0.0 to
/// the loopback address. So the stand-in agent, listening on 127.0.0.1, is reached through the
/// real pod-proxy path on every machine, with or without an outward address.
const POD_IP: &str = "0.0.0.0";

/// A stand-in agent: every replica sees app-0 as the writer in term 7, lease 10 s from now.
async fn start_agent() -> u16 {
    let app = axum::Router::new().route(
        "/_ha/leader",
        get(|| async {
            let lease = k8s_openapi::jiff::Timestamp::now()
                + k8s_openapi::jiff::SignedDuration::from_secs(10);
            Json(
                json!({"leader_url": "http://app-0.app-hs:8090", "node_id": "app-0",
                        "term": 7, "lease_expires": lease.to_string()}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn create_pod(pods: &Api<Pod>, name: &str, base: &str, ip: Option<String>, ready: bool) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"hanzo.ai/base": base}},
        "spec": {"containers": [{"name": "quasar", "image": "base-operator:test"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let mut status = json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_base_against_a_real_apiserver() {
    let c = Cluster::start().await;
    c.kubectl_ok(&["apply", "--validate=false", "-f", "deploy/crd.yaml"]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bases.hanzo.ai",
        "crd/baseapps.hanzo.ai",
    ]);
    c.kubectl_ok(&["create", "namespace", NS]);

    let port = start_agent().await;
    let bases = api(&c, "Base", "bases");
    let base: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hanzo.ai/v1", "kind": "Base",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"image": {"repository": "ghcr.io/hanzoai/base", "tag": "v1"}, "replicas": 3,
                 "port": port, "storage": {"size": "1Gi"}}
    }))
    .unwrap();
    bases.create(&PostParams::default(), &base).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    create_pod(&pods, "app-0", "app", Some(POD_IP.into()), true).await;
    create_pod(&pods, "app-1", "app", Some(POD_IP.into()), true).await;
    create_pod(&pods, "app-2", "app", None, false).await;
    create_pod(&pods, "other-0", "other", None, true).await;
    let elected = "2024-05-01T12:00:00Z";
    set_status(
        &bases,
        json!({"phase": "Degraded", "readyReplicas": 2, "currentWriter": "app-0", "term": 7,
               "observedGeneration": 1, "conditions": [
            cond("Ready", "False", "Degraded", "2/3 replicas ready; quorum holds", elected),
            cond("WriterElected", "True", "Elected", "app-0 is the writer in term 7", elected),
        ]}),
    )
    .await;

    // status: writer, term, roles, readiness, the agents' answers through the pod proxy.
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(text.starts_with("Base plug/app\n"), "{text}");
    assert!(text.contains("Writer:        app-0, term 7"), "{text}");
    assert!(text.contains("3 desired, 2 ready, 3 pods"), "{text}");
    assert!(
        text.contains(&format!("Last failover: {elected} (")),
        "{text}"
    );
    assert!(text.contains("Degraded") && text.contains("2/3 replicas ready; quorum holds"));
    assert!(
        !text.contains("other-0"),
        "a pod of another Base is listed:\n{text}"
    );
    let (r0, r1, r2) = (
        row(&text, "app-0"),
        row(&text, "app-1"),
        row(&text, "app-2"),
    );
    assert_eq!(r0[..3], ["app-0", "writer", "true"], "{text}");
    assert_eq!(r1[..3], ["app-1", "follower", "true"], "{text}");
    assert_eq!(r2, ["app-2", "follower", "false", "-", "-", "-"], "{text}");
    // The agents' answers, through the pod proxy.
    assert_eq!(r0[3..5], ["app-0", "7"], "{text}");
    assert_eq!(r1[3..5], ["app-0", "7"], "{text}");
    assert!(text.contains("Writer lease:  expires in "), "{text}");
    assert!(text.contains("(as app-0 reports it)"), "{text}");
    // The same through kubectl's plugin mechanism, with the namespace after the name.
    let dir = std::path::Path::new(PLUGIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("kubectl")
        .args(["base", "status", "app", "--namespace", NS])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let via_kubectl = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && via_kubectl.contains("Writer:        app-0, term 7"),
        "kubectl base status: {via_kubectl}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Clear errors: no such Base; the namespace comes from -n, else the context's (`default`).
    plugin_err(
        &c,
        &["status", "nope", "-n", NS],
        "Base nope not found in namespace plug",
    )
    .await;
    plugin_err(
        &c,
        &["status", "app"],
        "Base app not found in namespace default",
    )
    .await;
    plugin_err(&c, &["status", "app", "--context", "nope"], "nope").await;
    let o = plugin(&c, &["status", "app", "-n", NS, "--context", "envtest"]).await;
    assert!(o.ok, "{}", o.stderr);
    // A legacy BaseApp is found by the same commands.
    let apps = api(&c, "BaseApp", "baseapps");
    let mut legacy = base.clone();
    legacy.types = Some(kube::api::TypeMeta {
        api_version: "hanzo.ai/v1".into(),
        kind: "BaseApp".into(),
    });
    legacy.metadata.name = Some("legacy".into());
    apps.create(&PostParams::default(), &legacy).await.unwrap();
    let text = plugin_ok(&c, &["status", "legacy", "-n", NS]).await;
    assert!(text.starts_with("BaseApp plug/legacy\n"), "{text}");
    assert!(
        text.contains("No pods.") && text.contains("No conditions."),
        "{text}"
    );

    // fence / unfence: one pod, idempotent, --all, and the clear refusals.
    let fence = |args: &'static [&'static str]| {
        let mut v = args.to_vec();
        v.extend(["-n", NS]);
        v
    };
    let out = plugin_ok(&c, &fence(&["fence", "app", "app-1"])).await;
    assert!(out.contains("app-1 fenced"), "{out}");
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["app-1"]"#)
    );
    let out = plugin_ok(&c, &fence(&["fence", "app", "app-1"])).await;
    assert!(
        out.contains("app-1 is already fenced; nothing changed"),
        "{out}"
    );
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["app-1"]"#)
    );
    plugin_ok(&c, &fence(&["fence", "app", "app-2"])).await;
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["app-1","app-2"]"#)
    );
    plugin_err(
        &c,
        &fence(&["fence", "app", "other-0"]),
        "pod other-0 is not a pod of Base app in namespace plug (its pods: app-0, app-1, app-2)",
    )
    .await;
    plugin_err(
        &c,
        &fence(&["unfence", "app", "app-9"]),
        "pod app-9 is not a pod of Base app",
    )
    .await;
    let usage = plugin(&c, &fence(&["fence", "app"])).await;
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);
    // The roles: asked for (fencing) until the operator marks the pod, then fenced.
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert_eq!(row(&text, "app-1")[1], "fencing", "{text}");
    assert!(text.contains("Fenced:        app-1, app-2"), "{text}");
    pods.patch(
        "app-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"hanzo.ai/fenced": "true"}}})),
    )
    .await
    .unwrap();
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert_eq!(row(&text, "app-1")[1], "fenced", "{text}");
    plugin_ok(&c, &fence(&["unfence", "app", "app-1"])).await;
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["app-2"]"#)
    );
    let out = plugin_ok(&c, &fence(&["unfence", "app", "app-1"])).await;
    assert!(
        out.contains("app-1 is not fenced; nothing changed"),
        "{out}"
    );
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert_eq!(row(&text, "app-1")[1], "unfencing", "{text}");
    pods.patch(
        "app-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"hanzo.ai/fenced": null}}})),
    )
    .await
    .unwrap();
    plugin_ok(&c, &fence(&["fence", "app", "--all"])).await;
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["*"]"#)
    );
    let out = plugin_ok(&c, &fence(&["fence", "app", "--all"])).await;
    assert!(out.contains("nothing changed"), "{out}");
    let out = plugin_ok(&c, &fence(&["fence", "app", "app-0"])).await;
    assert!(out.contains("already fenced (every instance is)"), "{out}");
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(text.contains("Fenced:        all instances"), "{text}");
    assert_eq!(row(&text, "app-0")[1], "writer,fencing", "{text}");
    plugin_err(
        &c,
        &fence(&["unfence", "app", "app-2"]),
        "unfence them all with `kubectl base unfence app --all -n plug`",
    )
    .await;
    plugin_ok(&c, &fence(&["unfence", "app", "--all"])).await;
    assert_eq!(annotation(&bases, FENCED).await, None);
    let out = plugin_ok(&c, &fence(&["unfence", "app", "--all"])).await;
    assert!(
        out.contains("no instance is fenced; nothing changed"),
        "{out}"
    );
    // An unreadable list is reported, not overwritten, by a one-pod edit; --all replaces it.
    set_annotation(&bases, FENCED, json!("app-1")).await;
    plugin_err(
        &c,
        &fence(&["fence", "app", "app-1"]),
        "is not a JSON list of pod names",
    )
    .await;
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(
        text.contains("unreadable hanzo.ai/fenced-instances: app-1"),
        "{text}"
    );
    plugin_ok(&c, &fence(&["fence", "app", "--all"])).await;
    assert_eq!(
        annotation(&bases, FENCED).await.as_deref(),
        Some(r#"["*"]"#)
    );
    plugin_ok(&c, &fence(&["unfence", "app", "--all"])).await;
    // Concurrent edits: each is a compare-and-swap on resourceVersion, retried on 409; none is lost.
    for _ in 0..3 {
        let runs = ["app-0", "app-1", "app-2"].map(|p| {
            let kubeconfig = c.kubeconfig.clone();
            tokio::process::Command::new(PLUGIN)
                .args(["fence", "app", p, "-n", NS, "--kubeconfig"])
                .arg(kubeconfig)
                .output()
        });
        for out in futures::future::join_all(runs).await {
            let out = out.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            annotation(&bases, FENCED).await.as_deref(),
            Some(r#"["app-0","app-1","app-2"]"#)
        );
        plugin_ok(&c, &fence(&["unfence", "app", "--all"])).await;
    }

    // switchover: refused up front for a pod that is not in this Base.
    plugin_err(
        &c,
        &["switchover", "app", "--to", "other-0", "-n", NS],
        "pod other-0 is not a pod of Base app",
    )
    .await;
    plugin_err(
        &c,
        &["switchover", "app", "--to", "app-7", "-n", NS],
        "pod app-7 is not a pod of Base app",
    )
    .await;
    plugin_err(
        &c,
        &["switchover", "nope", "--to", "app-1", "-n", NS],
        "Base nope not found",
    )
    .await;
    assert_eq!(annotation(&bases, SWITCHOVER).await, None);
    let o = plugin(
        &c,
        &[
            "switchover",
            "app",
            "--to",
            "app-1",
            "-n",
            NS,
            "--wait",
            "soon",
        ],
    )
    .await;
    assert_eq!(o.code, Some(2), "{}", o.stderr);

    // A switchover the test (as the operator) carries out: the plugin follows it to Done.
    let mut child = tokio::process::Command::new(PLUGIN)
        .args([
            "switchover",
            "app",
            "--to",
            "app-1",
            "-n",
            NS,
            "--wait",
            "30s",
            "--kubeconfig",
        ])
        .arg(&c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(T, "the switchover annotation", || async {
        (annotation(&bases, SWITCHOVER).await.as_deref() == Some("app-1")).then_some(())
    })
    .await;
    let writer_cond = cond(
        "WriterElected",
        "True",
        "Elected",
        "app-0 is the writer in term 7",
        elected,
    );
    set_status(
        &bases,
        json!({"conditions": [writer_cond.clone(),
            cond("Switchover", "True", "InProgress", "asked app-0 to hand the writer role to app-1", "2024-05-01T12:10:00Z")]}),
    )
    .await;
    // The operator finishes only once the plugin has reported the step in progress.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdout = String::new();
    let in_progress = "Switchover InProgress: asked app-0 to hand the writer role to app-1";
    tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.expect("plugin stdout") {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.contains(in_progress) {
                return;
            }
        }
        panic!("the plugin ended before it reported the switchover in progress:\n{stdout}");
    })
    .await
    .expect("the plugin never reported the switchover in progress");
    set_status(
        &bases,
        json!({"currentWriter": "app-1", "term": 8, "conditions": [
            cond("WriterElected", "True", "Elected", "app-1 is the writer in term 8", "2024-05-01T12:10:02Z"),
            cond("Switchover", "False", "Done", "app-1 is the writer", "2024-05-01T12:10:02Z")]}),
    )
    .await;
    set_annotation(&bases, SWITCHOVER, Value::Null).await;
    tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.expect("plugin stdout") {
            stdout.push_str(&line);
            stdout.push('\n');
        }
    })
    .await
    .expect("the plugin never finished the switchover");
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("switchover to app-1 requested"), "{stdout}");
    assert!(stdout.contains("writer was app-0"), "{stdout}");
    assert!(
        stdout.contains("Switchover InProgress: asked app-0 to hand the writer role to app-1"),
        "{stdout}"
    );
    assert!(stdout.contains("done: app-1 is the writer"), "{stdout}");
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(
        text.contains("Last failover: 2024-05-01T12:10:02Z"),
        "{text}"
    );
    assert_eq!(row(&text, "app-1")[..2], ["app-1", "writer"], "{text}");
    // The stand-in agents still name app-0: status says so rather than inventing a lease.
    assert!(
        text.contains("Writer lease:  - (no agent reports app-1 as the writer)"),
        "{text}"
    );
    // Already the writer: nothing is asked.
    let out = plugin_ok(&c, &["switchover", "app", "--to", "app-1", "-n", NS]).await;
    assert!(out.contains("app-1 is already the writer"), "{out}");
    assert_eq!(annotation(&bases, SWITCHOVER).await, None);

    // A switchover the operator refuses: the plugin exits non-zero with the operator's reason.
    let child = tokio::process::Command::new(PLUGIN)
        .args([
            "switchover",
            "app",
            "--to",
            "app-2",
            "-n",
            NS,
            "--kubeconfig",
        ])
        .arg(&c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(T, "the switchover annotation", || async {
        (annotation(&bases, SWITCHOVER).await.as_deref() == Some("app-2")).then_some(())
    })
    .await;
    set_status(
        &bases,
        json!({"conditions": [
            cond("WriterElected", "True", "Elected", "app-1 is the writer in term 8", "2024-05-01T12:10:02Z"),
            cond("Switchover", "False", "Refused", "app-2 is not ready", "2024-05-01T12:20:00Z")]}),
    )
    .await;
    set_annotation(&bases, SWITCHOVER, Value::Null).await;
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("switchover to app-2 refused: app-2 is not ready"),
        "{stderr}"
    );

    // Refused again for the same reason: status does not change at all, only the request goes.
    let child = tokio::process::Command::new(PLUGIN)
        .args([
            "switchover",
            "app",
            "--to",
            "app-2",
            "-n",
            NS,
            "--kubeconfig",
        ])
        .arg(&c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(T, "the switchover annotation", || async {
        (annotation(&bases, SWITCHOVER).await.as_deref() == Some("app-2")).then_some(())
    })
    .await;
    set_annotation(&bases, SWITCHOVER, Value::Null).await;
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("switchover to app-2 refused: app-2 is not ready"),
        "{stderr}"
    );
    // A fenced target is refused up front.
    plugin_ok(&c, &fence(&["fence", "app", "app-2"])).await;
    plugin_err(
        &c,
        &["switchover", "app", "--to", "app-2", "-n", NS],
        "pod app-2 is fenced, so it cannot become the writer",
    )
    .await;
    plugin_ok(&c, &fence(&["unfence", "app", "app-2"])).await;
    assert_eq!(annotation(&bases, SWITCHOVER).await, None);

    // Nobody acts: the wait is bounded, the request stays, and a second target is refused.
    let o = plugin_err(
        &c,
        &[
            "switchover",
            "app",
            "--to",
            "app-0",
            "-n",
            NS,
            "--wait",
            "1s",
        ],
        "not finished after 1.0s",
    )
    .await;
    assert!(
        o.stdout.contains("requested; waiting for the operator"),
        "{}",
        o.stdout
    );
    assert_eq!(
        annotation(&bases, SWITCHOVER).await.as_deref(),
        Some("app-0")
    );
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(text.contains("Switchover:    requested to app-0"), "{text}");
    plugin_err(
        &c,
        &["switchover", "app", "--to", "app-2", "-n", NS],
        "a switchover of Base app to app-0 is already requested",
    )
    .await;
    // Asking again for the same target just follows it; --wait 0 only sets the request.
    let out = plugin_ok(
        &c,
        &[
            "switchover",
            "app",
            "--to",
            "app-0",
            "-n",
            NS,
            "--wait",
            "0",
        ],
    )
    .await;
    assert!(out.contains("not waiting"), "{out}");
    assert_eq!(
        annotation(&bases, SWITCHOVER).await.as_deref(),
        Some("app-0")
    );

    // Text from status is kept on one line.
    set_status(
        &bases,
        json!({"conditions": [cond("Ready", "True", "Running", "line one\nline two", elected)]}),
    )
    .await;
    let text = plugin_ok(&c, &["status", "app", "-n", NS]).await;
    assert!(text.contains("line one line two"), "{text}");
}
