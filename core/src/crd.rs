//! The `Base` custom resource (`hanzo.ai/v1`, plural `bases`, short name `bapp`) and its legacy twin
//! `BaseApp`. Field names and shapes follow what Base objects in the field already use (FIELDS.md):
//! every one of them must parse as written, so additions are fine and renames are not.
//!
//! Admission-time validation lives in the schema (`pattern`, `minimum`, ...) and in CEL rules
//! (`x-kubernetes-validations`) where the schema can't say it. `validate` re-checks the same rules,
//! because an object may have been admitted by an older CRD.

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "hanzo.ai";
pub const VERSION: &str = "v1";
/// The version the legacy `BaseApp` objects were written in before they moved to `v1`.
pub const LEGACY_VERSION: &str = "v1alpha1";

pub const DEFAULT_REPLICAS: i32 = 3;
pub const DEFAULT_PORT: i32 = 8090;
pub const DEFAULT_CONSENSUS: &str = "quasar";
pub const DEFAULT_LEADER_POLL_INTERVAL: &str = "1s";
pub const DEFAULT_READ_YOUR_WRITES_TTL: &str = "5s";
pub const DEFAULT_GATEWAY_NAME: &str = "gateway";

/// Go/Kubernetes duration (`500ms`, `2s`, `1m30s`, `0`), optionally signed so that a negative TTL
/// reaches the CEL rule that names it instead of failing a pattern with a vaguer message.
pub const DURATION_PATTERN: &str =
    r"^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";
/// RFC 1123 subdomain as `validate::check_dns_subdomain` takes it (with `maxLength: 253`): labels of
/// 1-63 lowercase letters, digits and '-', not beginning or ending with '-', joined by single dots;
/// no leading, trailing or doubled dot (`foo.` is refused).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// RFC 1123 label as `validate::check_dns_label(_, 63)` takes it: 1-63 lowercase letters, digits
/// and '-', beginning with a letter and ending with a letter or digit.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A label value as `validate` takes `spec.partOf`: 1-63 letters, digits, '-', '_' and '.',
/// beginning and ending with a letter or digit (`foo.` is refused).
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// Kubernetes resource quantity (`10Gi`, `500M`, `1.5`, `1e3`).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Spec of a Hanzo Base app: a replicated, single-writer SQLite service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hanzo.ai",
    version = "v1",
    kind = "Base",
    plural = "bases",
    singular = "base",
    shortname = "bapp",
    category = "hanzo",
    namespaced,
    status = "BaseStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Writer","type":"string","jsonPath":".status.currentWriter"}"#,
    printcolumn = r#"{"name":"Term","type":"integer","jsonPath":".status.term"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("self.metadata.name.size() <= 52").message("metadata.name: at most 52 characters (the StatefulSet's pods and revisions append suffixes)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: lowercase letters, digits and '-', beginning with a letter and ending with a letter or digit (it names the Service, an RFC 1035 label)"),
)]
#[serde(rename_all = "camelCase")]
pub struct BaseSpec {
    /// Base distribution image.
    pub image: ImageSpec,
    /// StatefulSet replicas: odd, 1 to 9 (a majority must agree on the writer).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9), extend("x-kubernetes-validations" = [{"rule": "self % 2 == 1", "message": "spec.replicas must be odd (a majority must agree on the writer)"}]))]
    pub replicas: i32,
    /// HTTP port clients and peers use (the Quasar agent listens here).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Writer election protocol: `quasar`.
    #[serde(default = "default_consensus")]
    #[schemars(extend("enum" = ["quasar"]))]
    pub consensus: String,
    /// Initial schema: an http(s) URL, or inline DDL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Per-replica persistent volume.
    pub storage: StorageSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub service_account_name: Option<String>,
    /// Gateway route, leader poll interval and read-your-writes TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<BaseGatewaySpec>,
    /// IAM application client_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_app: Option<String>,
    /// KMS-sourced secrets: synced by the KMS into `managedSecretName`, read by the pod through envFrom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kms_secrets: Vec<KmsSecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
    /// Value of the `app.kubernetes.io/part-of` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LABEL_VALUE_PATTERN))]
    pub part_of: Option<String>,
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}
fn default_port() -> i32 {
    DEFAULT_PORT
}
fn default_consensus() -> String {
    DEFAULT_CONSENSUS.to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    #[schemars(length(min = 1))]
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub pull_policy: Option<String>,
}

impl ImageSpec {
    /// `repository:tag`, or the bare repository when no tag is given (a digest may be in it).
    pub fn reference(&self) -> String {
        match self.tag.as_deref() {
            Some(tag) if !tag.is_empty() => format!("{}:{}", self.repository, tag),
            _ => self.repository.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Volume size as a quantity, e.g. `10Gi`.
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub size: String,
    /// What happens to the PVCs when the Base is deleted or scaled down: `Retain` (default) or `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Retain", "Delete"]))]
    pub retention_policy: Option<String>,
}

/// Retention of the per-replica PVCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionPolicy {
    Retain,
    Delete,
}

impl StorageSpec {
    /// The policy in force; an unknown value is a validation error, reported before this is used.
    pub fn retention(&self) -> RetentionPolicy {
        match self.retention_policy.as_deref() {
            Some("Delete") => RetentionPolicy::Delete,
            _ => RetentionPolicy::Retain,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseGatewaySpec {
    /// Path prefix routed to this Base, e.g. `/v1/my-app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub route: Option<String>,
    /// The `hanzo.ai/v1` Gateway the route is injected into (default `gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub gateway_name: Option<String>,
    /// Namespace of that Gateway (default: the Base's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN))]
    pub gateway_namespace: Option<String>,
    /// How often the gateway polls each replica's `/_ha/leader` (default `1s`, at least `100ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('100ms')", "message": "spec.gateway.leaderPollInterval must be at least 100ms"}]))]
    pub leader_poll_interval: Option<String>,
    /// How long a client's reads stay on the writer after its write (default `5s`, at least `0s`).
    #[serde(
        default,
        rename = "readYourWritesTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('0s')", "message": "spec.gateway.readYourWritesTTL must not be negative"}]))]
    pub read_your_writes_ttl: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsSecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_api: Option<String>,
    pub project_slug: String,
    pub env_slug: String,
    pub secrets_path: String,
    pub credentials_ref: SecretRef,
    /// Seconds between KMS syncs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub resync_interval: Option<i64>,
    /// The Secret the KMS keeps in sync; the pod reads it through `envFrom`.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub managed_secret_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<NetworkPolicyPeerSpec>,
    /// Admit client traffic from anywhere to the HTTP port (peers are always restricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ingress: Option<bool>,
    /// Admit client traffic from every pod of the Base's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_intra_namespace: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelectorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelectorSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Port name (or number, as a string) Prometheus scrapes; default the HTTP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub metrics_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// Lifecycle phase, as tools of the earlier operator read it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Creating,
    Running,
    Degraded,
    Deleting,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The writer pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_writer: Option<String>,
    #[serde(default)]
    pub term: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The voting configuration the writer last reported (voters, learners, joint or not).
    /// Kept while no writer is known; once set, new pods join rather than bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<crate::wire::ConfigurationReport>,
    /// The switchover in flight (`hanzo.ai/switchover-to`): its target and when the request for
    /// that target was first seen. A new target is a new request: its timeout and the poll
    /// answers that may confirm it count from its own start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverStatus>,
}

/// See [`BaseStatus::switchover`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverStatus {
    /// The pod the writer role is to move to.
    pub target: String,
    pub started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The legacy kind, `BaseApp` (renamed to `Base` in v0.3.0). Its objects carry the same spec; the
/// controller adopts them as they are (a second served kind), so nothing in a cluster must move.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hanzo.ai",
    version = "v1",
    kind = "BaseApp",
    plural = "baseapps",
    singular = "baseapp",
    category = "hanzo",
    namespaced,
    status = "BaseStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Writer","type":"string","jsonPath":".status.currentWriter"}"#,
    printcolumn = r#"{"name":"Term","type":"integer","jsonPath":".status.term"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("self.metadata.name.size() <= 52").message("metadata.name: at most 52 characters (the StatefulSet's pods and revisions append suffixes)"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: lowercase letters, digits and '-', beginning with a letter and ending with a letter or digit (it names the Service, an RFC 1035 label)"),
)]
#[serde(transparent)]
pub struct BaseAppSpec(pub BaseSpec);

impl From<BaseApp> for Base {
    /// The view the reconciler works on; owner references still name the `BaseApp` (see `Kind`).
    fn from(app: BaseApp) -> Base {
        Base {
            metadata: app.metadata,
            spec: app.spec.0,
            status: app.status,
        }
    }
}

/// Which kind an object came from, so owner references and events name the right one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    #[default]
    Base,
    BaseApp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Base => "Base",
            Kind::BaseApp => "BaseApp",
        }
    }
}
