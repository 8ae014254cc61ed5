//! Builders of the objects a Base owns. Each returns the full desired object; nothing here looks at
//! the cluster. Names: StatefulSet and ClusterIP Service `<name>`, headless `<name>-hs`, writer
//! `<name>-writer`, ConfigMap `<name>-schema`, and `<name>` for the PDB, NetworkPolicy, ServiceMonitor.

//!
//! The objects are built as JSON directly, not as k8s-openapi structs serialised afterwards: `plan`
//! runs on every reconcile and that detour was most of its cost. Field names and shapes are those
//! the typed structs serialise to; `typed_objects` (tests) keeps the typed builders as the oracle.

use super::{Object, OperatorConfig};
use crate::crd::{Base, Kind, RetentionPolicy};
use crate::validate::is_url;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The selector label: which Base a pod or object belongs to.
pub const LABEL_BASE: &str = "hanzo.ai/base";
/// Set to `writer` on the writer pod only; the `<name>-writer` Service selects it.
pub const LABEL_ROLE: &str = "hanzo.ai/role";
pub const ROLE_WRITER: &str = "writer";
/// On the Base: hand the writer role to this pod (see `operations`).
pub const ANNOTATION_SWITCHOVER_TO: &str = "hanzo.ai/switchover-to";
/// On the Base: a JSON list of pod names to fence, or `["*"]`.
pub const ANNOTATION_FENCED_INSTANCES: &str = "hanzo.ai/fenced-instances";
/// On a pod: `"true"` while it is fenced; its agent reads it through the downward API.
pub const ANNOTATION_POD_FENCED: &str = "hanzo.ai/fenced";
/// Tells the three Services apart: `headless`, `client`, `writer`.
pub const LABEL_SERVICE: &str = "hanzo.ai/service";
pub const MANAGED_BY: &str = "base-operator";

pub const DATA_VOLUME: &str = "data";
pub const DATA_MOUNT: &str = "/data";
pub const SCHEMA_MOUNT: &str = "/etc/base/schema";
pub const SCHEMA_KEY: &str = "schema.sql";
pub const AGENT_STATE_DIR: &str = "/data/quasar";
/// Non-root user both containers run as.
pub const RUN_AS_USER: i64 = 65532;

pub fn headless_name(base: &str) -> String {
    [base, "-hs"].concat()
}
pub fn writer_service_name(base: &str) -> String {
    [base, "-writer"].concat()
}
pub fn schema_configmap_name(base: &str) -> String {
    [base, "-schema"].concat()
}
/// PVC name the StatefulSet controller gives ordinal `i`'s data volume.
pub fn pvc_name(base: &str, ordinal: i32) -> String {
    format!("{DATA_VOLUME}-{base}-{ordinal}")
}
pub fn pod_name(base: &str, ordinal: i32) -> String {
    format!("{base}-{ordinal}")
}

/// The Secret holding the per-Base key that authenticates election messages (`current`, and
/// `previous` during a rotation). Created once by the operator, never updated by it.
pub fn peer_key_secret_name(base: &str) -> String {
    [base, "-peer-key"].concat()
}
/// `n` in decimal, as `n.to_string()` writes it, without the formatting machinery.
pub(super) fn decimal(n: i64) -> String {
    digits(n < 0, n.unsigned_abs())
}

/// `n` in decimal, as `n.to_string()` writes it.
pub(super) fn unsigned(n: u64) -> String {
    digits(false, n)
}

fn digits(negative: bool, mut n: u64) -> String {
    let mut buf = [b'-'; 21];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        at -= 1; // already '-'
    }
    // ASCII digits (and a sign) are UTF-8.
    std::str::from_utf8(&buf[at..])
        .unwrap_or_default()
        .to_owned()
}

pub const PEER_KEY_MOUNT: &str = "/etc/base/peer-key";
pub const PODINFO_MOUNT: &str = "/etc/podinfo";

/// The agents' peer port: election traffic only, admitted from the Base's own pods.
pub fn peer_port(port: i32) -> i32 {
    if port <= 65533 { port + 2 } else { port - 2 }
}

/// The port Base itself listens on inside the pod; the Quasar agent owns `spec.port`.
pub fn internal_port(port: i32) -> i32 {
    if port < 65535 { port + 1 } else { port - 1 }
}

// Building a JSON object key by key costs a B-tree search and a shift per insert; cloning a map
// copies its node in one pass. So each call site of `obj!` / `obj_opt!` keeps a template of its
// keys (values null), built once, and fills a clone of it. The keys are listed in key order (checked
// when the template is built), so the values land in the slots `values_mut` visits in that order.

/// A map of these keys, all null: the template a call site fills.
pub(super) fn template<'k>(keys: impl IntoIterator<Item = &'k str>) -> Map<String, Value> {
    let keys: Vec<&str> = keys.into_iter().collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "object keys not in order: {keys:?}"
    );
    keys.into_iter()
        .map(|k| (k.to_owned(), Value::Null))
        .collect()
}

/// A clone of `template` with its values, in key order.
pub(super) fn fill<I: IntoIterator<Item = Value>>(
    template: &Map<String, Value>,
    values: I,
) -> Value {
    let mut m = template.clone();
    for (slot, v) in m.values_mut().zip(values) {
        *slot = v;
    }
    Value::Object(m)
}

/// A JSON object of these fields, listed in key order: `obj!([("a", x), ("b", y)])`. The keys must
/// be constants (the template is a `static` of the call site).
macro_rules! obj {
    ([$(($k:expr, $v:expr $(,)?)),* $(,)?]) => {{
        use $crate::reconcile::objects::{fill, template};
        static TEMPLATE: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
            std::sync::LazyLock::new(|| template([$($k),*]));
        let values: [serde_json::Value; [$($k),*].len()] = [$($v),*];
        fill(&TEMPLATE, values)
    }};
}
pub(super) use obj;

/// A value the same for every Base: built once, and cloned (one pass, no per-field fill).
macro_rules! constant {
    ($v:expr) => {{
        static VALUE: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| $v);
        VALUE.clone()
    }};
}

/// A JSON object of the fields present, as k8s-openapi leaves out a `None`. In key order too; one
/// template per set of present fields.
macro_rules! obj_opt {
    ([$(($k:expr, $v:expr $(,)?)),* $(,)?]) => {{
        const KEYS: &[&str] = &[$($k),*];
        static TEMPLATES: [std::sync::OnceLock<Map<String, Value>>; 1 << KEYS.len()] =
            [const { std::sync::OnceLock::new() }; 1 << KEYS.len()];
        let values: [Option<Value>; KEYS.len()] = [$($v),*];
        fill_opt(KEYS, &TEMPLATES, values)
    }};
}

fn fill_opt<const N: usize>(
    keys: &[&str],
    templates: &[std::sync::OnceLock<Map<String, Value>>],
    values: [Option<Value>; N],
) -> Value {
    let present = values
        .iter()
        .enumerate()
        .fold(0, |m, (i, v)| m | (usize::from(v.is_some()) << i));
    let template = templates[present].get_or_init(|| {
        template(
            keys.iter()
                .enumerate()
                .filter(|(i, _)| present >> i & 1 == 1)
                .map(|(_, k)| *k),
        )
    });
    fill(template, values.into_iter().flatten())
}

/// A JSON object of string values, from pairs in key order (inserted last to first, like `obj`;
/// collecting would also allocate a vector to sort).
fn str_map<'a, I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut m = Map::new();
    for (k, v) in pairs.into_iter().rev() {
        m.insert(k.to_owned(), v.into());
    }
    Value::Object(m)
}

/// `apiVersion` of the owner references: `crd::GROUP/crd::VERSION` (checked by a test).
const OWNER_API_VERSION: &str = "hanzo.ai/v1";

/// Everything the builders need, computed once per plan.
pub(super) struct Ctx<'a> {
    pub base: &'a Base,
    pub kind: Kind,
    pub name: &'a str,
    pub namespace: &'a str,
    pub replicas: i32,
    pub config: &'a OperatorConfig,
}

impl Ctx<'_> {
    /// `{"hanzo.ai/base": <name>}`: which Base a pod or object belongs to.
    pub fn selector(&self) -> Value {
        obj!([(LABEL_BASE, Value::from(self.name))])
    }

    /// `{"matchLabels": <selector>}`.
    fn match_selector(&self) -> Value {
        obj!([("matchLabels", self.selector())])
    }

    /// The labels of every object, and of a Service its role.
    fn labels_with(&self, service: Option<&str>) -> Value {
        obj_opt!([
            (LABEL_INSTANCE, Some(self.name.into())),
            (LABEL_MANAGED_BY, Some(MANAGED_BY.into())),
            (LABEL_NAME, Some("base".into())),
            (
                LABEL_PART_OF,
                self.base.spec.part_of.as_deref().map(Value::from)
            ),
            (LABEL_BASE, Some(self.name.into())),
            (LABEL_SERVICE, service.map(Value::from)),
        ])
    }

    pub fn labels(&self) -> Value {
        self.labels_with(None)
    }

    pub fn owner(&self) -> Value {
        obj!([
            ("apiVersion", OWNER_API_VERSION.into()),
            ("blockOwnerDeletion", true.into()),
            ("controller", true.into()),
            ("kind", self.kind.as_str().into()),
            ("name", self.name.into()),
            (
                "uid",
                self.base.metadata.uid.as_deref().unwrap_or_default().into(),
            ),
        ])
    }

    fn meta_with(&self, name: String, labels: Value) -> Value {
        obj!([
            ("labels", labels),
            ("name", name.into()),
            ("namespace", self.namespace.into()),
            ("ownerReferences", Value::Array(vec![self.owner()])),
        ])
    }

    pub fn meta(&self, name: String) -> Value {
        self.meta_with(name, self.labels())
    }

    fn fqdn(&self, host: &str) -> String {
        [host, ".", self.namespace, ".svc.cluster.local"].concat()
    }

    /// `BASE_PEERS` in the form the Base runtime reads: one URL per ordinal, each
    /// `http://<pod_name>.<fqdn of headless_name>:<port>`, written into one string.
    pub fn peers(&self) -> String {
        self.peers_of(self.replicas)
    }

    /// As [`Ctx::peers`], for the ordinals below `n`. The agent's is every ordinal a Base may
    /// have ([`crate::validate::MAX_REPLICAS`]): whom it may talk to, fixed, so that a scale
    /// change does not change it; its voters are the election's configuration.
    pub fn peers_of(&self, n: i32) -> String {
        let (name, namespace) = (self.name, self.namespace);
        let port = decimal(self.base.spec.port.into());
        let one = "http://".len() + 2 * name.len() + namespace.len() + port.len() + 40;
        let mut out = String::with_capacity(one * n.max(0) as usize);
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            for part in ["http://", name, "-", &decimal(i.into()), "."] {
                out.push_str(part);
            }
            for part in [name, "-hs.", namespace, ".svc.cluster.local:", &port] {
                out.push_str(part);
            }
        }
        out
    }

    /// `body` carries `apiVersion` and `kind` already (see `head`).
    fn object(&self, api_version: &str, kind: &str, name: &str, body: Value) -> Object {
        Object::new(api_version, kind, self.namespace, name, body)
    }
}

fn env(name: &str, value: impl Into<String>) -> Value {
    obj!([
        ("name", name.into()),
        ("value", Value::String(value.into())),
    ])
}

fn pod_name_env() -> Value {
    constant!(obj!([
        ("name", "BASE_NODE_ID".into()),
        (
            "valueFrom",
            obj!([("fieldRef", obj!([("fieldPath", "metadata.name".into())]))]),
        ),
    ]))
}

fn runtime_default_seccomp() -> Value {
    obj!([("type", "RuntimeDefault".into())])
}

fn restricted_security_context() -> Value {
    constant!(obj!([
        ("allowPrivilegeEscalation", false.into()),
        ("capabilities", obj!([("drop", vec!["ALL"].into())])),
        ("readOnlyRootFilesystem", true.into()),
        ("runAsNonRoot", true.into()),
        ("seccompProfile", runtime_default_seccomp()),
    ]))
}

fn http_probe(path: &str, port: i32, period_s: i32, failure_threshold: i32) -> Value {
    obj!([
        ("failureThreshold", failure_threshold.into()),
        (
            "httpGet",
            obj!([("path", path.into()), ("port", port.into())]),
        ),
        ("periodSeconds", period_s.into()),
        ("timeoutSeconds", 2.into()),
    ])
}

fn container_port(name: &str, port: i32) -> Value {
    obj!([
        ("containerPort", port.into()),
        ("name", name.into()),
        ("protocol", "TCP".into()),
    ])
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> Value {
    obj_opt!([
        ("mountPath", Some(path.into())),
        ("name", Some(name.into())),
        ("readOnly", read_only.then_some(true.into())),
    ])
}

fn quantities(m: &BTreeMap<String, String>) -> Option<Value> {
    (!m.is_empty()).then(|| str_map(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

pub(super) fn statefulset(c: &Ctx) -> Object {
    let spec = &c.base.spec;
    let port = spec.port;
    let internal = internal_port(port);
    let hs = headless_name(c.name);
    let peers = c.peers();

    // Sized for everything pushed below, so the vectors never grow.
    let mut base_env = Vec::with_capacity(8 + spec.env.len());
    base_env.extend([
        pod_name_env(),
        env("BASE_PEERS", peers.as_str()),
        env("BASE_HEADLESS_SERVICE", c.fqdn(&hs)),
        env("BASE_CONSENSUS", spec.consensus.as_str()),
        env("BASE_PORT", decimal(internal.into())),
        env("BASE_REPLICAS", decimal(c.replicas.into())),
    ]);
    if let Some(app) = &spec.iam_app {
        base_env.push(env("IAM_APP", app.as_str()));
    }
    let mut volumes = Vec::with_capacity(4);
    volumes.push(constant!(obj!([
        ("emptyDir", Value::Object(Map::new())),
        ("name", "tmp".into()),
    ])));
    let mut mounts = Vec::with_capacity(3);
    mounts.extend([
        constant!(volume_mount(DATA_VOLUME, DATA_MOUNT, false)),
        constant!(volume_mount("tmp", "/tmp", false)),
    ]);
    match spec.schema.as_deref() {
        Some(url) if is_url(url) => base_env.push(env("BASE_SCHEMA_URL", url)),
        Some(_) => {
            base_env.push(env(
                "BASE_SCHEMA_FILE",
                [SCHEMA_MOUNT, "/", SCHEMA_KEY].concat(),
            ));
            volumes.push(obj!([
                (
                    "configMap",
                    obj!([("name", schema_configmap_name(c.name).into())]),
                ),
                ("name", "schema".into()),
            ]));
            mounts.push(constant!(volume_mount("schema", SCHEMA_MOUNT, true)));
        }
        None => {}
    }
    // User env last, so it can override ours deliberately (the Base runtime reads the last value).
    // Serialising k8s-openapi types to JSON cannot fail (no maps with non-string keys).
    base_env.extend(
        spec.env
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
    );
    let mut env_from: Vec<Value> = spec
        .env_from
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    // KMS-synced Secrets reach the pod by reference only: no secret value is ever in this object.
    env_from.extend(spec.kms_secrets.iter().map(|k| {
        obj!([(
            "secretRef",
            obj!([
                ("name", k.managed_secret_name.as_str().into()),
                ("optional", false.into()),
            ]),
        )])
    }));

    let resources = spec.resources.as_ref().map(|r| {
        obj_opt!([
            ("limits", quantities(&r.limits)),
            ("requests", quantities(&r.requests)),
        ])
    });

    let base_container = obj_opt!([
        ("env", Some(Value::Array(base_env))),
        (
            "envFrom",
            (!env_from.is_empty()).then_some(Value::Array(env_from)),
        ),
        ("image", Some(spec.image.reference().into())),
        (
            "imagePullPolicy",
            spec.image.pull_policy.as_deref().map(Value::from),
        ),
        (
            "livenessProbe",
            Some(http_probe("/healthz", internal, 10, 6)),
        ),
        ("name", Some("base".into())),
        (
            "ports",
            Some(Value::Array(vec![container_port("base", internal)])),
        ),
        ("resources", resources),
        ("securityContext", Some(restricted_security_context())),
        ("volumeMounts", Some(Value::Array(mounts))),
    ]);

    let agent_container = obj!([
        (
            "args",
            Value::Array(vec![
                "agent".into(),
                "--listen".into(),
                ["0.0.0.0:", &decimal(port.into())].concat().into(),
                "--upstream".into(),
                ["http://127.0.0.1:", &decimal(internal.into())]
                    .concat()
                    .into(),
                "--state-dir".into(),
                AGENT_STATE_DIR.into(),
                "--peer-port".into(),
                decimal(peer_port(port).into()).into(),
                "--peer-key-dir".into(),
                PEER_KEY_MOUNT.into(),
                "--fence-file".into(),
                [PODINFO_MOUNT, "/annotations"].concat().into(),
                // The desired members come from the pod annotation (`crate::members`).
                "--members-from-annotations".into(),
            ]),
        ),
        (
            "env",
            Value::Array(vec![
                pod_name_env(),
                env("BASE_PEERS", c.peers_of(crate::validate::MAX_REPLICAS),),
                constant!(env("RUST_LOG", "info")),
            ]),
        ),
        ("image", c.config.agent_image.as_str().into()),
        ("livenessProbe", http_probe("/healthz", port, 10, 6)),
        ("name", "quasar".into()),
        (
            "ports",
            Value::Array(vec![
                container_port("http", port),
                container_port("peer", peer_port(port)),
            ]),
        ),
        ("readinessProbe", http_probe("/readyz", port, 2, 2)),
        (
            "resources",
            constant!(obj!([
                ("limits", obj!([("memory", Value::from("128Mi"))])),
                (
                    "requests",
                    obj!([("cpu", Value::from("50m")), ("memory", Value::from("32Mi"))])
                ),
            ])),
        ),
        ("securityContext", restricted_security_context()),
        (
            "volumeMounts",
            constant!(Value::Array(vec![
                volume_mount(DATA_VOLUME, DATA_MOUNT, false),
                volume_mount("peer-key", PEER_KEY_MOUNT, true),
                volume_mount("podinfo", PODINFO_MOUNT, true),
            ])),
        ),
    ]);
    // The peer key as files, so a rotation reaches running agents without a restart; the pod's
    // annotations through the downward API, so fencing reaches the agent without API access.
    volumes.push(obj!([
        ("name", "peer-key".into()),
        (
            "secret",
            obj!([
                ("defaultMode", 0o440.into()),
                ("secretName", peer_key_secret_name(c.name).into()),
            ]),
        ),
    ]));
    volumes.push(constant!(obj!([
        (
            "downwardAPI",
            obj!([(
                "items",
                Value::Array(vec![obj!([
                    (
                        "fieldRef",
                        obj!([("fieldPath", "metadata.annotations".into())]),
                    ),
                    ("path", "annotations".into()),
                ])]),
            )]),
        ),
        ("name", "podinfo".into()),
    ])));

    let retention = match spec.storage.retention() {
        RetentionPolicy::Retain => "Retain",
        RetentionPolicy::Delete => "Delete",
    };
    let pvc = obj!([
        ("apiVersion", "v1".into()),
        ("kind", "PersistentVolumeClaim".into()),
        (
            "metadata",
            obj!([("labels", c.selector()), ("name", DATA_VOLUME.into())]),
        ),
        (
            "spec",
            obj_opt!([
                ("accessModes", Some(vec!["ReadWriteOnce"].into())),
                (
                    "resources",
                    Some(obj!([(
                        "requests",
                        obj!([("storage", spec.storage.size.as_str().into())]),
                    )])),
                ),
                (
                    "storageClassName",
                    spec.storage.storage_class_name.as_deref().map(Value::from),
                ),
            ]),
        ),
    ]);

    let pod_spec = obj_opt!([
        ("automountServiceAccountToken", Some(false.into())),
        (
            "containers",
            Some(Value::Array(vec![base_container, agent_container])),
        ),
        (
            "imagePullSecrets",
            (!spec.image_pull_secrets.is_empty()).then(|| {
                spec.image_pull_secrets
                    .iter()
                    .map(|s| obj!([("name", s.name.as_str().into())]))
                    .collect()
            }),
        ),
        (
            "securityContext",
            Some(constant!(obj!([
                ("fsGroup", RUN_AS_USER.into()),
                ("runAsGroup", RUN_AS_USER.into()),
                ("runAsNonRoot", true.into()),
                ("runAsUser", RUN_AS_USER.into()),
                ("seccompProfile", runtime_default_seccomp()),
            ]))),
        ),
        (
            "serviceAccountName",
            spec.service_account_name.as_deref().map(Value::from),
        ),
        ("terminationGracePeriodSeconds", Some(30.into())),
        ("volumes", Some(Value::Array(volumes))),
    ]);

    let body = obj!([
        ("apiVersion", "apps/v1".into()),
        ("kind", "StatefulSet".into()),
        ("metadata", c.meta(c.name.to_string())),
        (
            "spec",
            obj_opt!([
                (
                    "persistentVolumeClaimRetentionPolicy",
                    c.config.sts_pvc_retention_policy.then(|| {
                        obj!([
                            ("whenDeleted", retention.into()),
                            ("whenScaled", retention.into()),
                        ])
                    }),
                ),
                // All pods start together: a lone pod can never win an election, so OrderedReady would wait forever.
                ("podManagementPolicy", Some("Parallel".into())),
                ("replicas", Some(c.replicas.into())),
                ("selector", Some(c.match_selector())),
                ("serviceName", Some(hs.into())),
                (
                    "template",
                    Some(obj!([
                        ("metadata", obj!([("labels", c.labels())])),
                        ("spec", pod_spec),
                    ])),
                ),
                // The operator rolls pods itself, writer last (see rollout.rs).
                (
                    "updateStrategy",
                    Some(constant!(obj!([("type", "OnDelete".into())])))
                ),
                ("volumeClaimTemplates", Some(Value::Array(vec![pvc]))),
            ]),
        ),
    ]);
    c.object("apps/v1", "StatefulSet", c.name, body)
}

fn service(c: &Ctx, name: String, role: &str, selector: Value) -> Object {
    let headless = role == "headless";
    let labels = c.labels_with(Some(role));
    let body = obj!([
        ("apiVersion", "v1".into()),
        ("kind", "Service".into()),
        ("metadata", c.meta_with(name.clone(), labels)),
        (
            "spec",
            obj_opt!([
                ("clusterIP", headless.then(|| "None".into())),
                (
                    "ports",
                    Some(Value::Array(vec![obj!([
                        ("name", "http".into()),
                        ("port", c.base.spec.port.into()),
                        ("protocol", "TCP".into()),
                        ("targetPort", "http".into()),
                    ])])),
                ),
                ("publishNotReadyAddresses", headless.then_some(true.into())),
                ("selector", Some(selector)),
                ("type", Some("ClusterIP".into())),
            ]),
        ),
    ]);
    c.object("v1", "Service", &name, body)
}

pub(super) fn services(c: &Ctx) -> [Object; 3] {
    let writer_selector = obj!([
        (LABEL_BASE, Value::from(c.name)),
        (LABEL_ROLE, Value::from(ROLE_WRITER))
    ]);
    [
        service(c, headless_name(c.name), "headless", c.selector()),
        service(c, c.name.to_string(), "client", c.selector()),
        service(c, writer_service_name(c.name), "writer", writer_selector),
    ]
}

pub(super) fn schema_configmap(c: &Ctx) -> Option<Object> {
    let ddl = c.base.spec.schema.as_deref().filter(|s| !is_url(s))?;
    let name = schema_configmap_name(c.name);
    let body = obj!([
        ("apiVersion", "v1".into()),
        ("data", obj!([(SCHEMA_KEY, Value::from(ddl))])),
        ("kind", "ConfigMap".into()),
        ("metadata", c.meta(name.clone())),
    ]);
    Some(c.object("v1", "ConfigMap", &name, body))
}

/// Keeps a quorum up through voluntary disruptions (drains). Not made for one replica, where it
/// would block every drain forever.
pub(super) fn pdb(c: &Ctx) -> Option<Object> {
    (c.replicas > 1).then(|| {
        let body = obj!([
            ("apiVersion", c.config.pdb_api_version.as_str().into()),
            ("kind", "PodDisruptionBudget".into()),
            ("metadata", c.meta(c.name.to_string())),
            (
                "spec",
                obj!([
                    ("minAvailable", (c.replicas / 2 + 1).into()),
                    ("selector", c.match_selector()),
                ]),
            ),
        ]);
        c.object(
            &c.config.pdb_api_version,
            "PodDisruptionBudget",
            c.name,
            body,
        )
    })
}

fn selector_of(s: &Option<crate::crd::LabelSelectorSpec>) -> Option<Value> {
    s.as_ref().map(|s| {
        obj!([(
            "matchLabels",
            str_map(s.match_labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        )])
    })
}

fn policy_port(port: i32) -> Value {
    Value::Array(vec![obj!([
        ("port", port.into()),
        ("protocol", "TCP".into()),
    ])])
}

pub(super) fn network_policy(c: &Ctx) -> Option<Object> {
    let np = c.base.spec.network_policy.as_ref()?;
    if np.enabled == Some(false) {
        return None;
    }
    let port = policy_port(c.base.spec.port);
    // Peers (the election) always; then the client sources the spec admits.
    let mut from = vec![obj!([("podSelector", c.match_selector())])];
    from.extend(np.allow_from.iter().map(|p| {
        obj_opt!([
            ("namespaceSelector", selector_of(&p.namespace_selector)),
            ("podSelector", selector_of(&p.pod_selector)),
        ])
    }));
    if np.allow_intra_namespace == Some(true) {
        from.push(obj!([("podSelector", Value::Object(Map::new()))]));
    }
    if let Some(ns) = &c.config.operator_namespace {
        // The operator polls /_ha/leader on the client port (it asks for transfers through the
        // API server, by a pod annotation: never on a port).
        from.push(obj!([(
            "namespaceSelector",
            obj!([(
                "matchLabels",
                obj!([("kubernetes.io/metadata.name", ns.as_str().into())]),
            )]),
        )]));
    }
    let mut rules = vec![
        // Election traffic: only this Base's own pods reach the peer port.
        obj!([
            (
                "from",
                Value::Array(vec![obj!([("podSelector", c.match_selector())])]),
            ),
            ("ports", policy_port(peer_port(c.base.spec.port))),
        ]),
        obj!([("from", Value::Array(from)), ("ports", port.clone())]),
    ];
    if np.allow_ingress == Some(true) {
        rules.push(obj!([("ports", port)]));
    }
    let body = obj!([
        ("apiVersion", "networking.k8s.io/v1".into()),
        ("kind", "NetworkPolicy".into()),
        ("metadata", c.meta(c.name.to_string())),
        (
            "spec",
            obj!([
                ("ingress", Value::Array(rules)),
                ("podSelector", c.match_selector()),
                ("policyTypes", vec!["Ingress"].into()),
            ]),
        ),
    ]);
    Some(c.object("networking.k8s.io/v1", "NetworkPolicy", c.name, body))
}

/// A Prometheus Operator ServiceMonitor (`monitoring.coreos.com/v1`), untyped: its CRD may not be
/// installed, and we only need its shape.
pub(super) fn service_monitor(c: &Ctx) -> Option<Object> {
    let sm = c.base.spec.service_monitor.as_ref()?;
    if sm.enabled != Some(true) {
        return None;
    }
    let endpoint = obj_opt!([
        ("interval", sm.interval.as_deref().map(Value::from)),
        (
            "path",
            Some(sm.metrics_path.as_deref().unwrap_or("/metrics").into()),
        ),
        (
            "port",
            Some(sm.metrics_port.as_deref().unwrap_or("http").into()),
        ),
    ]);
    let body = obj!([
        ("apiVersion", "monitoring.coreos.com/v1".into()),
        ("kind", "ServiceMonitor".into()),
        ("metadata", c.meta(c.name.to_string())),
        (
            "spec",
            obj!([
                ("endpoints", Value::Array(vec![endpoint])),
                (
                    "namespaceSelector",
                    obj!([("matchNames", vec![c.namespace].into())]),
                ),
                (
                    "selector",
                    obj!([(
                        "matchLabels",
                        obj!([
                            (LABEL_BASE, Value::from(c.name)),
                            (LABEL_SERVICE, Value::from("client"))
                        ]),
                    )]),
                ),
            ]),
        ),
    ]);
    Some(c.object("monitoring.coreos.com/v1", "ServiceMonitor", c.name, body))
}

/// The peer-key Secret with a fresh key: created once, never updated (see `Plan::create`).
pub(super) fn peer_key_secret(c: &Ctx, key: &str) -> Object {
    let name = peer_key_secret_name(c.name);
    let body = obj!([
        ("apiVersion", "v1".into()),
        ("kind", "Secret".into()),
        ("metadata", c.meta(name.clone())),
        ("stringData", obj!([("current", Value::from(key))])),
        ("type", "Opaque".into()),
    ]);
    c.object("v1", "Secret", &name, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_as_to_string() {
        for n in [0, 7, -7, 10, 8090, 65535, -65536, i64::MAX, i64::MIN] {
            assert_eq!(decimal(n), n.to_string());
        }
        for n in [0, 9, 10, 1 << 40, u64::MAX] {
            assert_eq!(unsigned(n), n.to_string());
        }
    }
}
