//! The reconciler against the spec's example and against invalid specs.

use base_core::crd::Kind;
use base_core::manifest;
use base_core::reconcile::{
    CONDITION_READY, GatewayView, ObjectKey, Observed, PodView, WriterView, plan, plan_for,
};
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../../deploy/examples/my-app.yaml");

fn example() -> base_core::crd::Base {
    let (_, mut base) = manifest::parse(EXAMPLE).expect("the spec's example parses as written");
    base.metadata.uid = Some("uid-1".into());
    base.metadata.generation = Some(1);
    base
}

fn find<'a>(plan: &'a base_core::reconcile::Plan, kind: &str, name: &str) -> &'a Value {
    &plan
        .desired
        .iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not planned"))
        .body
}

fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn example_yields_every_object_with_owner_references() {
    let p = plan(&example(), &Observed::default());
    assert!(p.invalid.is_none());
    let kinds: Vec<(&str, &str)> = p
        .desired
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Service", "my-app-hs"),
            ("Service", "my-app"),
            ("Service", "my-app-writer"),
            ("StatefulSet", "my-app"),
            ("PodDisruptionBudget", "my-app"),
        ]
    );
    for o in &p.desired {
        let owner = &o.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Base");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(o.body["metadata"]["namespace"], "hanzo");
    }
    // Nothing exists yet: everything is to be applied.
    assert_eq!(p.apply().len(), p.desired.len());
}

#[test]
fn statefulset_carries_what_the_runtime_reads() {
    let p = plan(&example(), &Observed::default());
    let sts = find(&p, "StatefulSet", "my-app");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["serviceName"], "my-app-hs");
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    let pvc = &spec["volumeClaimTemplates"][0]["spec"];
    assert_eq!(pvc["storageClassName"], "do-block-storage");
    assert_eq!(pvc["resources"]["requests"]["storage"], "10Gi");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().unwrap();
    let base = &containers[0];
    assert_eq!(base["image"], "ghcr.io/hanzoai/base:v1.2.3");
    let env = env_of(base);
    let get = |n: &str| {
        env.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(
        get("BASE_NODE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        get("BASE_PEERS")["value"],
        "http://my-app-0.my-app-hs.hanzo.svc.cluster.local:8090,http://my-app-1.my-app-hs.hanzo.svc.cluster.local:8090,http://my-app-2.my-app-hs.hanzo.svc.cluster.local:8090"
    );
    assert_eq!(
        get("BASE_HEADLESS_SERVICE")["value"],
        "my-app-hs.hanzo.svc.cluster.local"
    );
    assert_eq!(get("BASE_CONSENSUS")["value"], "quasar");
    assert_eq!(get("BASE_PORT")["value"], "8091");
    assert_eq!(get("IAM_APP")["value"], "app-my-app");
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    }
    let agent = &containers[1];
    assert_eq!(agent["ports"][0]["containerPort"], 8090);
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        agent["args"]
            .as_array()
            .unwrap()
            .contains(&json!("http://127.0.0.1:8091"))
    );
}

#[test]
fn services_select_the_right_pods() {
    let p = plan(&example(), &Observed::default());
    let hs = find(&p, "Service", "my-app-hs");
    assert_eq!(hs["spec"]["clusterIP"], "None");
    assert_eq!(hs["spec"]["publishNotReadyAddresses"], true);
    let w = find(&p, "Service", "my-app-writer");
    assert_eq!(
        w["spec"]["selector"],
        json!({"hanzo.ai/base": "my-app", "hanzo.ai/role": "writer"})
    );
    assert_eq!(
        find(&p, "PodDisruptionBudget", "my-app")["spec"]["minAvailable"],
        2
    );
}

#[test]
fn optional_objects_and_secrets_by_reference() {
    let mut base = example();
    base.spec.schema = Some("CREATE TABLE t (id INTEGER PRIMARY KEY);".into());
    base.spec.network_policy = Some(base_core::crd::NetworkPolicySpec {
        enabled: Some(true),
        ..Default::default()
    });
    base.spec.service_monitor = Some(base_core::crd::ServiceMonitorSpec {
        enabled: Some(true),
        interval: Some("30s".into()),
        ..Default::default()
    });
    base.spec.kms_secrets = vec![serde_json::from_value(json!({
        "projectSlug": "p", "envSlug": "prod", "secretsPath": "/", "credentialsRef": {"name": "kms-creds"},
        "managedSecretName": "my-app-kms"
    }))
    .unwrap()];
    let p = plan(&base, &Observed::default());
    let cm = find(&p, "ConfigMap", "my-app-schema");
    assert!(
        cm["data"]["schema.sql"]
            .as_str()
            .unwrap()
            .starts_with("CREATE TABLE")
    );
    let np = find(&p, "NetworkPolicy", "my-app");
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["hanzo.ai/base"],
        "my-app"
    );
    let sm = find(&p, "ServiceMonitor", "my-app");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "30s");
    let sts = find(&p, "StatefulSet", "my-app");
    let base_c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(base_c["envFrom"][0]["secretRef"]["name"], "my-app-kms");
    let text = serde_json::to_string(&p.desired).unwrap();
    assert!(
        !text.contains("kms-creds"),
        "credentials must not be copied into objects"
    );
    // Turning them off deletes them.
    let mut observed = Observed::default();
    for o in &p.desired {
        observed.insert(o);
    }
    base.spec.network_policy = None;
    base.spec.schema = Some("https://example.com/schema.sql".into());
    let p2 = plan(&base, &observed);
    assert!(
        p2.delete
            .contains(&ObjectKey::new("NetworkPolicy", "my-app"))
    );
    assert!(
        p2.delete
            .contains(&ObjectKey::new("ConfigMap", "my-app-schema"))
    );
}

#[test]
fn invalid_specs_name_the_field() {
    let cases = [
        ("spec_replicas", "InvalidReplicas", "spec.replicas"),
        ("spec_port", "InvalidPort", "spec.port"),
        (
            "spec_poll",
            "InvalidGatewayLeaderPollInterval",
            "spec.gateway.leaderPollInterval",
        ),
        ("spec_size", "InvalidStorageSize", "spec.storage.size"),
        (
            "spec_ttl",
            "InvalidGatewayReadYourWritesTTL",
            "spec.gateway.readYourWritesTTL",
        ),
        ("spec_route", "InvalidGatewayRoute", "spec.gateway.route"),
        (
            "spec_fastpoll",
            "InvalidGatewayLeaderPollInterval",
            "spec.gateway.leaderPollInterval",
        ),
    ];
    for (case, reason, field) in cases {
        let text = EXAMPLE
            .replace(
                "replicas: 3",
                if case == "spec_replicas" {
                    "replicas: 4"
                } else {
                    "replicas: 3"
                },
            )
            .replace(
                "port: 8090",
                if case == "spec_port" {
                    "port: 0"
                } else {
                    "port: 8090"
                },
            )
            .replace(
                "leaderPollInterval: 2s",
                match case {
                    "spec_poll" => "leaderPollInterval: fast",
                    "spec_fastpoll" => "leaderPollInterval: 50ms",
                    _ => "leaderPollInterval: 2s",
                },
            )
            .replace(
                "size: 10Gi",
                if case == "spec_size" {
                    "size: ten"
                } else {
                    "size: 10Gi"
                },
            )
            .replace(
                "readYourWritesTTL: 5s",
                if case == "spec_ttl" {
                    "readYourWritesTTL: -1s"
                } else {
                    "readYourWritesTTL: 5s"
                },
            )
            .replace(
                "route: /v1/my-app",
                if case == "spec_route" {
                    "route: v1/my-app"
                } else {
                    "route: /v1/my-app"
                },
            );
        let (kind, base) = manifest::parse(&text).unwrap();
        let p = plan_for(kind, &base, &Observed::default());
        assert!(
            p.apply_ix.is_empty() && p.desired.is_empty(),
            "{case}: nothing may be written"
        );
        let ready = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .unwrap();
        assert_eq!(ready.status, "False", "{case}");
        assert_eq!(ready.reason, reason, "{case}");
        assert!(ready.message.contains(field), "{case}: {}", ready.message);
        assert!(
            p.events.iter().any(|e| e.reason == reason),
            "{case}: an Event tells the user"
        );
    }
}

#[test]
fn legacy_baseapp_is_planned_with_its_own_owner_kind() {
    let text = EXAMPLE
        .replace("kind: Base", "kind: BaseApp")
        .replace("hanzo.ai/v1", "hanzo.ai/v1alpha1");
    let (kind, base) = manifest::parse(&text).unwrap();
    assert_eq!(kind, Kind::BaseApp);
    let p = plan_for(kind, &base, &Observed::default());
    assert!(
        p.desired
            .iter()
            .all(|o| o.body["metadata"]["ownerReferences"][0]["kind"] == "BaseApp")
    );
}

/// The world once `base`'s objects exist and its three pods are ready, `my-app-0` labelled
/// writer (the writer itself is the test's to set).
fn running(base: &base_core::crd::Base) -> Observed {
    let mut observed = Observed::default();
    for o in &plan(base, &observed).desired {
        observed.insert(o);
    }
    observed.pods = (0..3)
        .map(|i| PodView {
            name: format!("my-app-{i}"),
            ready: true,
            writer_label: i == 0,
            ..Default::default()
        })
        .collect();
    observed
}

#[test]
fn writer_label_moves_in_one_step_and_status_follows() {
    let base = example();
    let mut observed = running(&base);
    observed.writer = Some(WriterView {
        pod: "my-app-2".into(),
        term: 4,
        confirmed_at: observed.now,
    });
    let p = plan(&base, &observed);
    assert_eq!(p.relabel.len(), 2);
    assert!(p.relabel.iter().any(|l| l.pod == "my-app-0" && !l.writer));
    assert!(p.relabel.iter().any(|l| l.pod == "my-app-2" && l.writer));
    assert_eq!(p.status.current_writer.as_deref(), Some("my-app-2"));
    assert_eq!(p.status.term, 4);
    assert!(p.events.iter().any(|e| e.reason == "WriterChanged"));
}

/// `Plan::writes` is the one order the adapter and the simulation perform: applies first, every
/// writer-label clear before the set (here the new writer's ordinal comes first in the pod list,
/// so the plan's own `relabel` order would set before it clears), the Gateway write carrying
/// the resourceVersion it was planned against, deletes after every other object write, status
/// last. Fails if any write moves, or if the Gateway guard is lost.
#[test]
fn the_plans_writes_come_in_one_order() {
    use base_core::reconcile::Write;
    let base = example();
    let mut observed = Observed::default();
    for o in &plan(&base, &observed).desired {
        observed.insert(o);
    }
    observed
        .objects
        .remove(&ObjectKey::new("Service", "my-app"));
    observed.objects.insert(
        ObjectKey::new("ConfigMap", "my-app-old"),
        json!({"metadata": {"name": "my-app-old"}}),
    );
    observed.gateway =
        GatewayView::Found(json!({"metadata": {"resourceVersion": "7"}, "spec": {"routes": []}}));
    observed.pods = (0..3)
        .map(|i| PodView {
            name: format!("my-app-{i}"),
            ready: true,
            writer_label: i == 2,
            ..Default::default()
        })
        .collect();
    observed.writer = Some(WriterView {
        pod: "my-app-0".into(),
        term: 4,
        confirmed_at: observed.now,
    });
    let p = plan(&base, &observed);
    assert_eq!(
        p.relabel[0].pod, "my-app-0",
        "the plan's own order sets first"
    );
    let order: Vec<String> = p
        .writes()
        .map(|w| match w {
            Write::Create(o) => format!("create {}", o.name),
            Write::Apply(o) => format!("apply {}/{}", o.kind, o.name),
            Write::Label(l) => format!("label {} {}", l.pod, l.writer),
            Write::Fence(f) => format!("fence {} {}", f.pod, f.fenced),
            Write::Members(m) => format!("members {}", m.pod),
            Write::ClearAnnotations(a) => format!("clear {a:?}"),
            Write::Transfer(t) => format!("transfer {}", t.pod),
            Write::Gateway(g) => format!("gateway {:?}", g.resource_version),
            Write::Delete(k) => format!("delete {}/{}", k.kind, k.name),
            Write::Status(_) => "status".to_string(),
        })
        .collect();
    assert_eq!(
        order,
        [
            "apply Service/my-app",
            "label my-app-2 false",
            "label my-app-0 true",
            "members my-app-0",
            "members my-app-1",
            "members my-app-2",
            "gateway Some(\"7\")",
            "delete ConfigMap/my-app-old",
            "status",
        ]
    );
    assert!(!p.is_noop());
}

#[test]
fn gateway_route_conflict_is_a_condition_not_an_overwrite() {
    let base = example();
    let theirs = json!({"prefix": "/v1/my-app", "owner": "Base/other/x"});
    let observed = Observed {
        gateway: GatewayView::Found(json!({"spec": {"routes": [theirs]}})),
        ..Default::default()
    };
    let p = plan(&base, &observed);
    assert!(p.gateway.is_none());
    let ready = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .unwrap();
    assert_eq!(ready.reason, "RouteConflict");
    assert!(p.events.iter().any(|e| e.reason == "RouteConflict"));
}

#[test]
fn deletion_removes_the_route_and_honours_retention() {
    let mut base = example();
    base.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let ours = json!({"prefix": "/v1/my-app", "owner": "Base/hanzo/my-app"});
    let other = json!({"prefix": "/v1/other", "owner": "Base/hanzo/other"});
    let mut observed = Observed {
        gateway: GatewayView::Found(json!({"spec": {"routes": [ours, other.clone()]}})),
        pvcs: vec!["data-my-app-0".into()],
        ..Default::default()
    };
    let p = plan(&base, &observed);
    assert_eq!(p.gateway.as_ref().unwrap().routes, vec![other.clone()]);
    assert!(p.delete.is_empty(), "Retain keeps PVCs");
    assert!(!p.finalized);
    observed.gateway = GatewayView::Found(json!({"spec": {"routes": [other]}}));
    assert!(plan(&base, &observed).finalized);
    base.spec.storage.retention_policy = Some("Delete".into());
    let p = plan(&base, &observed);
    assert_eq!(
        p.delete,
        vec![ObjectKey::new("PersistentVolumeClaim", "data-my-app-0")]
    );
    assert!(!p.finalized);
    // With its StatefulSet still there, that goes too: its pods hold the claims (pvc-protection)
    // and would otherwise go only after the Base, whose finalizer waits for the claims.
    let mut alive = base.clone();
    alive.metadata.deletion_timestamp = None;
    for o in &plan(&alive, &observed).desired {
        observed.insert(o);
    }
    let p = plan(&base, &observed);
    assert_eq!(
        p.delete,
        vec![
            ObjectKey::new("PersistentVolumeClaim", "data-my-app-0"),
            ObjectKey::new("StatefulSet", "my-app")
        ]
    );
    assert!(!p.finalized);
    // Once the claims are gone, the cleanup is done.
    observed.pvcs.clear();
    let p = plan(&base, &observed);
    assert!(p.delete.is_empty() && p.finalized, "{:?}", p.delete);
}

#[test]
fn switchover_and_fencing_through_annotations() {
    use base_core::reconcile::objects::{ANNOTATION_FENCED_INSTANCES, ANNOTATION_SWITCHOVER_TO};
    use base_core::reconcile::{CONDITION_FENCED, CONDITION_SWITCHOVER};
    let mut base = example();
    let mut observed = running(&base);
    observed.writer = Some(WriterView {
        pod: "my-app-0".into(),
        term: 2,
        confirmed_at: observed.now,
    });
    let cond = |p: &base_core::reconcile::Plan, t: &str| {
        p.status.conditions.iter().find(|c| c.type_ == t).cloned()
    };

    base.metadata.annotations =
        Some([(ANNOTATION_SWITCHOVER_TO.to_string(), "my-app-2".to_string())].into());
    let p = plan(&base, &observed);
    let t = p.transfer.clone().expect("asks the writer to transfer");
    assert_eq!(
        (t.pod.as_str(), t.request.to.as_str()),
        ("my-app-0", "my-app-2")
    );
    assert_eq!((t.request.term, t.request.by.as_str()), (2, "switchover"));
    assert_eq!(cond(&p, CONDITION_SWITCHOVER).unwrap().reason, "InProgress");
    assert!(p.clear_annotations.is_empty());
    // The request is on the writer's pod: not written again until it is due for a retry, then
    // asked again as a new request (a new `at`); a request of another term is no request.
    let t0 = observed.now;
    observed.pods[0].transfer = Some(t.request.clone());
    let p2 = plan(&base, &observed);
    assert_eq!(p2.transfer, None, "a pending request is not written again");
    assert!(p2.requeue_after_ms <= base_core::reconcile::TRANSFER_RETRY_MS);
    observed.now = base_core::Millis(t0.0 + base_core::reconcile::TRANSFER_RETRY_MS);
    let retry = plan(&base, &observed).transfer.expect("asked again");
    assert_eq!(retry.request.at, observed.now.0);
    observed.now = t0;
    observed.pods[0].transfer = Some(base_core::control::TransferRequest {
        term: 1,
        ..t.request.clone()
    });
    assert_eq!(plan(&base, &observed).transfer, Some(t.clone()));
    observed.pods[0].transfer = None;

    base.status = Some(p.status);
    // The target is writer, by an answer from before the request was seen: it may predate a
    // hand-over, so not yet done.
    observed.writer = Some(WriterView {
        pod: "my-app-2".into(),
        term: 3,
        confirmed_at: observed.now,
    });
    let p = plan(&base, &observed);
    assert_eq!(cond(&p, CONDITION_SWITCHOVER).unwrap().reason, "InProgress");
    assert!(p.clear_annotations.is_empty() && p.transfer.is_none());
    // Its answer from a second later says so again: done.
    base.status = Some(p.status);
    observed.writer = Some(WriterView {
        pod: "my-app-2".into(),
        term: 3,
        confirmed_at: base_core::Millis(observed.now.0 + 1_000),
    });
    let p = plan(&base, &observed);
    assert_eq!(cond(&p, CONDITION_SWITCHOVER).unwrap().reason, "Done");
    assert_eq!(
        p.clear_annotations,
        vec![ANNOTATION_SWITCHOVER_TO.to_string()]
    );
    assert!(p.events.iter().any(|e| e.reason == "SwitchoverDone"));

    // Fencing: the named pod gets the pod annotation; a bad value is reported, nothing changes.
    base.metadata.annotations = Some(
        [(
            ANNOTATION_FENCED_INSTANCES.to_string(),
            r#"["my-app-1"]"#.to_string(),
        )]
        .into(),
    );
    let p = plan(&base, &observed);
    assert_eq!(p.fence.len(), 1);
    assert_eq!(
        (p.fence[0].pod.as_str(), p.fence[0].fenced),
        ("my-app-1", true)
    );
    assert_eq!(cond(&p, CONDITION_FENCED).unwrap().status, "True");
    observed.pods[1].fenced = true;
    assert!(plan(&base, &observed).fence.is_empty());
    base.metadata.annotations = Some(
        [(
            ANNOTATION_FENCED_INSTANCES.to_string(),
            "my-app-1".to_string(),
        )]
        .into(),
    );
    let p = plan(&base, &observed);
    assert!(p.fence.is_empty(), "an unreadable list changes no fencing");
    assert_eq!(
        cond(&p, CONDITION_FENCED).unwrap().reason,
        "InvalidFencedInstances"
    );
    base.metadata.annotations = None;
    let p = plan(&base, &observed);
    assert_eq!(p.fence.len(), 1);
    assert!(!p.fence[0].fenced, "unfenced when the annotation goes");
}

/// A switchover retargeted while the first is in flight is a new request (sim seed 2651): the
/// new target's poll answer from before the retarget does not finish it, and its timeout
/// counts from the retarget, not from the first request.
#[test]
fn a_retargeted_switchover_is_a_new_request() {
    use base_core::Millis;
    use base_core::reconcile::CONDITION_SWITCHOVER;
    use base_core::reconcile::objects::ANNOTATION_SWITCHOVER_TO;
    let mut base = example();
    let mut observed = running(&base);
    observed.now = Millis(1_000_000);
    observed.writer = Some(WriterView {
        pod: "my-app-0".into(),
        term: 2,
        confirmed_at: observed.now,
    });
    let to = |base: &mut base_core::crd::Base, pod: &str| {
        base.metadata.annotations =
            Some([(ANNOTATION_SWITCHOVER_TO.to_string(), pod.to_string())].into());
    };
    let reason = |p: &base_core::reconcile::Plan| {
        p.status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SWITCHOVER)
            .map(|c| c.reason.clone())
    };
    // The first request, to my-app-1, starts now.
    to(&mut base, "my-app-1");
    let p = plan(&base, &observed);
    assert_eq!(reason(&p).as_deref(), Some("InProgress"));
    let s = p.status.switchover.clone().expect("the request in status");
    assert_eq!(s.target, "my-app-1");
    base.status = Some(p.status);

    // 10 s later the user retargets to my-app-2, which is (by an answer 5 s after the first
    // request but before the retarget) the writer: that answer may predate the hand-over the
    // new request asks for, so the switchover is not done, and it restarts its clock.
    observed.now = Millis(1_010_000);
    observed.writer = Some(WriterView {
        pod: "my-app-2".into(),
        term: 3,
        confirmed_at: Millis(1_005_000),
    });
    to(&mut base, "my-app-2");
    let p = plan(&base, &observed);
    assert_eq!(
        reason(&p).as_deref(),
        Some("InProgress"),
        "not done on an older answer"
    );
    assert!(p.clear_annotations.is_empty());
    let s = p
        .status
        .switchover
        .clone()
        .expect("the new request in status");
    assert_eq!(s.target, "my-app-2");
    assert_eq!(s.started_at.0.as_millisecond(), 1_010_000);
    base.status = Some(p.status);

    // Its timeout counts from the retarget: 55 s after it (65 s after the first request) it is
    // still in progress.
    observed.now = Millis(1_065_000);
    observed.writer = Some(WriterView {
        pod: "my-app-0".into(),
        term: 4,
        confirmed_at: observed.now,
    });
    let p = plan(&base, &observed);
    assert_eq!(
        reason(&p).as_deref(),
        Some("InProgress"),
        "timed out from the first request"
    );
    base.status = Some(p.status);

    // An answer from a second after the retarget finishes it, and the request leaves status.
    observed.writer = Some(WriterView {
        pod: "my-app-2".into(),
        term: 5,
        confirmed_at: Millis(1_066_000),
    });
    let p = plan(&base, &observed);
    assert_eq!(reason(&p).as_deref(), Some("Done"));
    assert_eq!(p.status.switchover, None);
}

#[test]
fn peer_key_secret_is_created_once_and_mounted() {
    let base = example();
    let mut observed = Observed {
        fresh_peer_key: Some("k3y".into()),
        ..Default::default()
    };
    let p = plan(&base, &observed);
    assert_eq!(p.create.len(), 1);
    let secret = &p.create[0];
    assert_eq!(
        (secret.kind.as_str(), secret.name.as_str()),
        ("Secret", "my-app-peer-key")
    );
    assert_eq!(secret.body["stringData"]["current"], "k3y");
    assert_eq!(
        secret.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
    assert!(
        !p.desired.iter().any(|o| o.kind == "Secret"),
        "never re-applied, so never overwritten"
    );
    observed.peer_key_exists = true;
    assert!(plan(&base, &observed).create.is_empty());
    // The agent reads it, its fencing annotation, and serves peers on their own port.
    let sts = find(&p, "StatefulSet", "my-app");
    let pod = &sts["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][1]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in [
        "--peer-key-dir",
        "/etc/base/peer-key",
        "--peer-port",
        "8092",
        "--fence-file",
        "/etc/podinfo/annotations",
    ] {
        assert!(args.contains(&a), "agent args lack {a}: {args:?}");
    }
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "my-app-peer-key")
    );
    assert!(
        volumes.iter().any(
            |v| v["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.annotations"
        )
    );
}

#[test]
fn network_policy_keeps_the_peer_port_to_the_base_pods() {
    let mut base = example();
    base.spec.network_policy = Some(base_core::crd::NetworkPolicySpec {
        enabled: Some(true),
        allow_ingress: Some(true),
        ..Default::default()
    });
    let observed = Observed {
        config: base_core::reconcile::OperatorConfig {
            operator_namespace: Some("base-system".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = plan(&base, &observed);
    let rules = find(&p, "NetworkPolicy", "my-app")["spec"]["ingress"]
        .as_array()
        .unwrap()
        .clone();
    let peer: Vec<&Value> = rules
        .iter()
        .filter(|r| r["ports"][0]["port"] == 8092)
        .collect();
    assert_eq!(peer.len(), 1, "one rule for the peer port");
    assert_eq!(
        peer[0]["from"],
        json!([{"podSelector": {"matchLabels": {"hanzo.ai/base": "my-app"}}}])
    );
    // allowIngress opens the client port only.
    assert!(
        rules
            .iter()
            .filter(|r| r["from"].is_null())
            .all(|r| r["ports"][0]["port"] == 8090)
    );
    assert!(
        rules
            .iter()
            .any(|r| r["from"].as_array().is_some_and(|f| f.iter().any(
                |p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "base-system"
            )))
    );
}

/// A Base whose image does not implement the replica contract is reported, never silently
/// run as if it did: `ReplicationContract=False` naming the pods, with a Warning Event when it
/// turns so; `True` once every pod heard from implements it; no condition before any was heard.
#[test]
fn a_base_without_the_replica_contract_is_reported() {
    use base_core::reconcile::CONDITION_REPLICATION;
    let base = example();
    let condition = |observed: &Observed| {
        plan(&base, observed)
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_REPLICATION)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let mut observed = Observed::default();
    assert_eq!(condition(&observed), None);
    observed.replication_contract = [("my-app-0".to_string(), true), ("my-app-1".into(), false)]
        .into_iter()
        .collect();
    let (status, reason, message) = condition(&observed).expect("a condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ContractAbsent")
    );
    assert!(
        message.contains("my-app-1") && !message.contains("my-app-0"),
        "{message}"
    );
    let p = plan(&base, &observed);
    assert!(
        p.events
            .iter()
            .any(|e| e.reason == "ReplicationContractContractAbsent"
                && e.type_ == base_core::reconcile::EventType::Warning),
        "{:?}",
        p.events
    );
    observed
        .replication_contract
        .insert("my-app-1".into(), true);
    let (status, reason, _) = condition(&observed).expect("a condition");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Implemented"));
}
