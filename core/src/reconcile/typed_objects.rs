//! The typed builders `objects` had before it built JSON directly, kept for tests as the oracle:
//! k8s-openapi's structs check every field name and shape, and each JSON builder must produce
//! exactly what its typed twin serialises to.

use super::objects::*;
use super::{Object, OperatorConfig};
use crate::crd::{Base, Kind, RetentionPolicy};
use crate::validate::is_url;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use std::collections::BTreeMap;

fn selector(c: &Ctx) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_BASE.to_string(), c.name.to_string())])
}

fn labels(c: &Ctx) -> BTreeMap<String, String> {
    let mut l = selector(c);
    l.insert(LABEL_NAME.into(), "base".into());
    l.insert(LABEL_INSTANCE.into(), c.name.into());
    l.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    if let Some(p) = &c.base.spec.part_of {
        l.insert(LABEL_PART_OF.into(), p.clone());
    }
    l
}

fn owner(c: &Ctx) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        kind: c.kind.as_str().to_string(),
        name: c.name.to_string(),
        uid: c.base.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(c: &Ctx, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(c.namespace.to_string()),
        labels: Some(labels(c)),
        owner_references: Some(vec![owner(c)]),
        ..Default::default()
    }
}

fn fqdn(c: &Ctx, host: &str) -> String {
    format!("{host}.{}.svc.cluster.local", c.namespace)
}

/// `BASE_PEERS` as it was built before `Ctx::peers` wrote it into one string.
fn peers(c: &Ctx) -> String {
    peers_of(c, c.replicas)
}

fn peers_of(c: &Ctx, n: i32) -> String {
    let hs = headless_name(c.name);
    (0..n)
        .map(|i| {
            format!(
                "http://{}.{}:{}",
                pod_name(c.name, i),
                fqdn(c, &hs),
                c.base.spec.port
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "BASE_NODE_ID".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: "metadata.name".into(),
            }),
            ..Default::default()
        }),
    }
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: i32, period_s: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period_s),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

pub fn statefulset(c: &Ctx) -> StatefulSet {
    let spec = &c.base.spec;
    let port = spec.port;
    let internal = internal_port(port);
    let hs = headless_name(c.name);

    let mut base_env = vec![
        pod_name_env(),
        env("BASE_PEERS", peers(c)),
        env("BASE_HEADLESS_SERVICE", fqdn(c, &hs)),
        env("BASE_CONSENSUS", spec.consensus.clone()),
        env("BASE_PORT", internal.to_string()),
        env("BASE_REPLICAS", c.replicas.to_string()),
    ];
    if let Some(app) = &spec.iam_app {
        base_env.push(env("IAM_APP", app.clone()));
    }
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_MOUNT.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    match spec.schema.as_deref() {
        Some(url) if is_url(url) => base_env.push(env("BASE_SCHEMA_URL", url)),
        Some(_) => {
            base_env.push(env(
                "BASE_SCHEMA_FILE",
                format!("{SCHEMA_MOUNT}/{SCHEMA_KEY}"),
            ));
            volumes.push(Volume {
                name: "schema".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: schema_configmap_name(c.name),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "schema".into(),
                mount_path: SCHEMA_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        None => {}
    }
    // User env last, so it can override ours deliberately (the Base runtime reads the last value).
    base_env.extend(spec.env.iter().cloned());
    let mut env_from: Vec<EnvFromSource> = spec.env_from.clone();
    // KMS-synced Secrets reach the pod by reference only: no secret value is ever in this object.
    env_from.extend(spec.kms_secrets.iter().map(|k| EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: k.managed_secret_name.clone(),
            optional: Some(false),
        }),
        ..Default::default()
    }));

    let resources = spec.resources.as_ref().map(|r| ResourceRequirements {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
        ..Default::default()
    });

    let base_container = Container {
        name: "base".into(),
        image: Some(spec.image.reference()),
        image_pull_policy: spec.image.pull_policy.clone(),
        env: Some(base_env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: Some(vec![ContainerPort {
            name: Some("base".into()),
            container_port: internal,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", internal, 10, 6)),
        resources,
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let agent_container = Container {
        name: "quasar".into(),
        image: Some(c.config.agent_image.clone()),
        args: Some(vec![
            "agent".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--upstream".into(),
            format!("http://127.0.0.1:{internal}"),
            "--state-dir".into(),
            AGENT_STATE_DIR.into(),
            "--peer-port".into(),
            peer_port(port).to_string(),
            "--peer-key-dir".into(),
            PEER_KEY_MOUNT.into(),
            "--fence-file".into(),
            format!("{PODINFO_MOUNT}/annotations"),
            "--members-from-annotations".into(),
        ]),
        env: Some(vec![
            pod_name_env(),
            env("BASE_PEERS", peers_of(c, crate::validate::MAX_REPLICAS)),
            env("RUST_LOG", "info"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: peer_port(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", port, 2, 2)),
        liveness_probe: Some(http_probe("/healthz", port, 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("128Mi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: DATA_MOUNT.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "peer-key".into(),
                mount_path: PEER_KEY_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "podinfo".into(),
                mount_path: PODINFO_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    // The peer key as files, so a rotation reaches running agents without a restart; the pod's
    // annotations through the downward API, so fencing reaches the agent without API access.
    volumes.push(Volume {
        name: "peer-key".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(peer_key_secret_name(c.name)),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "podinfo".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "annotations".into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: "metadata.annotations".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });

    let retention = match spec.storage.retention() {
        RetentionPolicy::Retain => "Retain",
        RetentionPolicy::Delete => "Delete",
    };
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector(c)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    StatefulSet {
        metadata: meta(c, c.name.to_string()),
        spec: Some(StatefulSetSpec {
            replicas: Some(c.replicas),
            service_name: Some(hs),
            selector: LabelSelector {
                match_labels: Some(selector(c)),
                match_expressions: None,
            },
            // All pods start together: a lone pod can never win an election, so OrderedReady would wait forever.
            pod_management_policy: Some("Parallel".into()),
            // The operator rolls pods itself, writer last (see rollout.rs).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: c.config.sts_pvc_retention_policy.then_some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.into()),
                    when_scaled: Some(retention.into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(c)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![base_container, agent_container],
                    volumes: Some(volumes),
                    service_account_name: spec.service_account_name.clone(),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| {
                        spec.image_pull_secrets
                            .iter()
                            .map(|s| LocalObjectReference {
                                name: s.name.clone(),
                            })
                            .collect()
                    }),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![pvc]),
            ..Default::default()
        }),
        status: None,
    }
}

fn service(c: &Ctx, name: String, role: &str, selector: BTreeMap<String, String>) -> Service {
    let headless = role == "headless";
    let mut metadata = meta(c, name);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(LABEL_SERVICE.into(), role.into());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: c.base.spec.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn services(c: &Ctx) -> [Service; 3] {
    let mut writer_selector = selector(c);
    writer_selector.insert(LABEL_ROLE.into(), ROLE_WRITER.into());
    [
        service(c, headless_name(c.name), "headless", selector(c)),
        service(c, c.name.to_string(), "client", selector(c)),
        service(c, writer_service_name(c.name), "writer", writer_selector),
    ]
}

pub fn schema_configmap(c: &Ctx) -> Option<ConfigMap> {
    let ddl = c.base.spec.schema.as_deref().filter(|s| !is_url(s))?;
    Some(ConfigMap {
        metadata: meta(c, schema_configmap_name(c.name)),
        data: Some(BTreeMap::from([(SCHEMA_KEY.into(), ddl.to_string())])),
        ..Default::default()
    })
}

/// Keeps a quorum up through voluntary disruptions (drains). Not made for one replica, where it
/// would block every drain forever.
pub fn pdb(c: &Ctx) -> Option<PodDisruptionBudget> {
    (c.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(c, c.name.to_string()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(c.replicas / 2 + 1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(c)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

fn selector_of(s: &Option<crate::crd::LabelSelectorSpec>) -> Option<LabelSelector> {
    s.as_ref().map(|s| LabelSelector {
        match_labels: Some(s.match_labels.clone()),
        match_expressions: None,
    })
}

pub fn network_policy(c: &Ctx) -> Option<NetworkPolicy> {
    let np = c.base.spec.network_policy.as_ref()?;
    if np.enabled == Some(false) {
        return None;
    }
    let port = vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(c.base.spec.port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    // Peers (the election) always; then the client sources the spec admits.
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(selector(c)),
            match_expressions: None,
        }),
        ..Default::default()
    }];
    from.extend(np.allow_from.iter().map(|p| NetworkPolicyPeer {
        pod_selector: selector_of(&p.pod_selector),
        namespace_selector: selector_of(&p.namespace_selector),
        ..Default::default()
    }));
    if np.allow_intra_namespace == Some(true) {
        from.push(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        });
    }
    if let Some(ns) = &c.config.operator_namespace {
        // The operator polls /_ha/leader on the client port (it asks for transfers through the
        // API server, by a pod annotation: never on a port).
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ns.clone(),
                )])),
                match_expressions: None,
            }),
            ..Default::default()
        });
    }
    let mut rules = vec![
        // Election traffic: only this Base's own pods reach the peer port.
        NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector(c)),
                    match_expressions: None,
                }),
                ..Default::default()
            }]),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(peer_port(c.base.spec.port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        },
        NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(port.clone()),
        },
    ];
    if np.allow_ingress == Some(true) {
        rules.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(port),
        });
    }
    Some(NetworkPolicy {
        metadata: meta(c, c.name.to_string()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(c)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    })
}

/// The peer-key Secret with a fresh key: created once, never updated (see `Plan::create`).
pub fn peer_key_secret(c: &Ctx, key: &str) -> Secret {
    Secret {
        metadata: meta(c, peer_key_secret_name(c.name)),
        string_data: Some(BTreeMap::from([("current".to_string(), key.to_string())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// What `plan` built from a typed object before: serialise it, then stamp its identity.
fn typed<T: Serialize>(
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    obj: &T,
) -> Object {
    let mut body = serde_json::to_value(obj).unwrap();
    body["apiVersion"] = api_version.into();
    body["kind"] = kind.into();
    Object::new(api_version, kind, namespace, name, body)
}

/// Specs that reach every branch of the builders.
fn variants() -> Vec<Base> {
    use serde_json::json;
    let (_, mut a) =
        crate::manifest::parse(include_str!("../../../deploy/examples/my-app.yaml")).unwrap();
    a.metadata.uid = Some("uid-1".into());
    let mut rich = a.clone();
    rich.spec.schema = Some("CREATE TABLE t (id INTEGER PRIMARY KEY);".into());
    rich.spec.network_policy = Some(
        serde_json::from_value(json!({
            "enabled": true, "allowIngress": true, "allowIntraNamespace": true,
            "allowFrom": [{"podSelector": {"matchLabels": {"a": "b"}}},
                          {"namespaceSelector": {"matchLabels": {"c": "d", "e": "f"}}},
                          {"podSelector": {}, "namespaceSelector": {"matchLabels": {"g": "h"}}},
                          {}]
        }))
        .unwrap(),
    );
    rich.spec.kms_secrets = vec![
        serde_json::from_value(json!({
            "projectSlug": "p", "envSlug": "prod", "secretsPath": "/",
            "credentialsRef": {"name": "kms-creds"}, "managedSecretName": "my-app-kms"
        }))
        .unwrap(),
    ];
    rich.spec.env = serde_json::from_value(json!([
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]))
    .unwrap();
    rich.spec.env_from =
        serde_json::from_value(json!([{"configMapRef": {"name": "cm"}, "prefix": "P_"}])).unwrap();
    rich.spec.resources = Some(
        serde_json::from_value(
            json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}),
        )
        .unwrap(),
    );
    rich.spec.image_pull_secrets =
        serde_json::from_value(json!([{"name": "r1"}, {"name": "r2"}])).unwrap();
    rich.spec.service_account_name = Some("sa".into());
    rich.spec.part_of = Some("suite".into());
    rich.spec.image.pull_policy = Some("Always".into());
    rich.spec.iam_app = None;
    rich.spec.storage.retention_policy = Some("Delete".into());
    let mut lean = a.clone();
    lean.metadata.uid = None;
    lean.spec.schema = Some("https://example.com/s.sql".into());
    lean.spec.resources = Some(serde_json::from_value(json!({"limits": {"cpu": "2"}})).unwrap());
    lean.spec.network_policy = Some(serde_json::from_value(json!({"enabled": false})).unwrap());
    lean.spec.image.tag = None;
    lean.spec.storage.storage_class_name = None;
    lean.spec.port = 65535;
    let mut empty_resources = a.clone();
    empty_resources.spec.resources = Some(serde_json::from_value(json!({})).unwrap());
    empty_resources.spec.network_policy = Some(serde_json::from_value(json!({})).unwrap());
    vec![a, rich, lean, empty_resources]
}

#[test]
fn json_builders_match_the_typed_objects() {
    let configs = [
        OperatorConfig::default(),
        OperatorConfig {
            agent_image: "agent:x".into(),
            sts_pvc_retention_policy: false,
            pdb_api_version: "policy/v1beta1".into(),
            operator_namespace: Some("base-system".into()),
            ..OperatorConfig::default()
        },
    ];
    for base in variants() {
        for config in &configs {
            for (kind, replicas) in [(Kind::Base, 3), (Kind::BaseApp, 1), (Kind::Base, 5)] {
                let c = Ctx {
                    base: &base,
                    kind,
                    name: "my-app",
                    namespace: "hanzo",
                    replicas,
                    config,
                };
                let ns = c.namespace;
                let mut want = Vec::new();
                if let Some(cm) = schema_configmap(&c) {
                    want.push(typed("v1", "ConfigMap", ns, "my-app-schema", &cm));
                }
                for svc in services(&c) {
                    let name = svc.metadata.name.clone().unwrap();
                    want.push(typed("v1", "Service", ns, &name, &svc));
                }
                want.push(typed(
                    "apps/v1",
                    "StatefulSet",
                    ns,
                    "my-app",
                    &statefulset(&c),
                ));
                if let Some(pdb) = pdb(&c) {
                    let v = &config.pdb_api_version;
                    want.push(typed(v, "PodDisruptionBudget", ns, "my-app", &pdb));
                }
                if let Some(np) = network_policy(&c) {
                    let v = "networking.k8s.io/v1";
                    want.push(typed(v, "NetworkPolicy", ns, "my-app", &np));
                }
                want.push(typed(
                    "v1",
                    "Secret",
                    ns,
                    "my-app-peer-key",
                    &peer_key_secret(&c, "k"),
                ));

                let mut got = super::desired_objects(&c);
                got.retain(|o| o.kind != "ServiceMonitor");
                got.push(super::objects::peer_key_secret(&c, "k"));
                assert_eq!(got, want, "{:?} {config:?} {kind:?} {replicas}", base.spec);
            }
        }
    }
}
