//! The reconciler: `plan(base, observed) -> Plan`. Pure and idempotent: the same observation gives
//! the same plan, and a world that already matches gives a plan with nothing to write. The adapter
//! (or the simulation) performs the plan; nothing here decides how.

mod diff;
pub mod objects;
pub mod operations;
pub mod rollout;
pub mod route;
mod status;
#[cfg(test)]
mod typed_objects;

pub use diff::is_subset;
pub use status::{
    CONDITION_FENCED, CONDITION_GATEWAY, CONDITION_MEMBERSHIP, CONDITION_PROGRESSING,
    CONDITION_READY, CONDITION_REPLICATION, CONDITION_SWITCHOVER, CONDITION_WRITER,
};

use crate::crd::{Base, BaseStatus, DEFAULT_GATEWAY_NAME, Kind, RetentionPolicy};
use crate::ids::Millis;
use crate::validate::{InvalidSpec, validate};
use objects::Ctx;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Settings of the operator itself, not of any one Base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Image of the Quasar agent container (the operator's own image).
    pub agent_image: String,
    /// How often to re-plan when nothing happens (drift detection).
    pub resync_ms: u64,
    /// The API server knows StatefulSet `persistentVolumeClaimRetentionPolicy` (Kubernetes ≥ 1.27).
    /// Older servers refuse it under server-side apply, so it is left out there; the operator
    /// deletes PVCs itself under `Delete` either way.
    pub sts_pvc_retention_policy: bool,
    /// `policy/v1` (Kubernetes ≥ 1.21) or `policy/v1beta1` for older servers; same fields.
    pub pdb_api_version: String,
    /// The operator's own namespace, admitted to the agents' client port by the NetworkPolicy.
    pub operator_namespace: Option<String>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            agent_image: format!(
                "ghcr.io/hanzoai/base-operator:{}",
                env!("CARGO_PKG_VERSION")
            ),
            resync_ms: 300_000,
            sts_pvc_retention_policy: true,
            pdb_api_version: "policy/v1".to_string(),
            operator_namespace: None,
        }
    }
}

/// One object to create or update, with its identity pulled out for logs and the API call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The full object as JSON, ready for server-side apply.
    pub body: Value,
}

impl Object {
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str, body: Value) -> Object {
        Object {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            body,
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind.clone(),
            name: self.name.clone(),
        }
    }
}

/// Identifies an object within the Base's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, name: &str) -> Self {
        ObjectKey {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

/// What the adapter saw of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    /// `controller-revision-hash` label.
    pub revision: Option<String>,
    pub terminating: bool,
    /// Carries `hanzo.ai/role=writer`.
    pub writer_label: bool,
    /// Carries the annotation `hanzo.ai/fenced: "true"`.
    pub fenced: bool,
    /// The transfer request its annotation `hanzo.ai/transfer-to` holds, if it parses.
    pub transfer: Option<crate::control::TransferRequest>,
    /// Its annotation `hanzo.ai/members` as written (see [`crate::members`]).
    pub members: Option<String>,
}

/// The StatefulSet's state, read from its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsView {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub update_revision: Option<String>,
    /// `status.observedGeneration == metadata.generation`: its status describes its current spec.
    pub generation_observed: bool,
}

/// `value.pointer("/a/b")` as `at(value, ["a", "b"])`: the same lookup for plain field names,
/// without the two strings `pointer` allocates per token to unescape it.
fn at<'a, const N: usize>(value: &'a Value, path: [&str; N]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(k))
}

impl StsView {
    pub fn from_json(sts: &Value) -> StsView {
        let int = |p| at(sts, p).and_then(Value::as_i64);
        let observed_generation = int(["status", "observedGeneration"]);
        StsView {
            replicas: int(["spec", "replicas"]).unwrap_or(1) as i32,
            ready_replicas: int(["status", "readyReplicas"]).unwrap_or(0) as i32,
            update_revision: at(sts, ["status", "updateRevision"])
                .and_then(Value::as_str)
                .map(str::to_string),
            generation_observed: observed_generation.is_some()
                && observed_generation >= int(["metadata", "generation"]),
        }
    }
}

/// The writer as the leader tracker last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterView {
    pub pod: String,
    pub term: u64,
    /// When the writer itself last affirmed it (its own `/_ha/leader` answer), on the clock of
    /// `Observed::now`. A lease a writer gave up by handing over still looks live in older
    /// answers: a switchover is `Done` only on an answer that came after the request.
    pub confirmed_at: Millis,
}

/// The Gateway the route goes into.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum GatewayView {
    /// The adapter did not look (no route configured).
    #[default]
    NotLooked,
    Missing,
    Found(Value),
}

/// Everything the adapter observed that the plan depends on.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Wall time of the observation; only used to stamp condition transitions.
    pub now: Millis,
    /// Objects labelled with this Base (StatefulSet, Services, ConfigMap, PDB, NetworkPolicy,
    /// ServiceMonitor), as the API returned them.
    pub objects: BTreeMap<ObjectKey, Value>,
    pub pods: Vec<PodView>,
    /// Names of the PVCs labelled with this Base.
    pub pvcs: Vec<String>,
    pub writer: Option<WriterView>,
    pub gateway: GatewayView,
    pub config: OperatorConfig,
    /// The peer-key Secret is known to exist (the operator never reads Secrets: it creates this one
    /// once and remembers that it did, or that the API said it already existed).
    pub peer_key_exists: bool,
    /// Random key material for a new peer-key Secret (the core has no randomness of its own).
    pub fresh_peer_key: Option<String>,
    /// What each polled pod's agent said of its Base and the replica contract
    /// (`docs/replica-contract.md`): `true` implemented, `false` not (its writes are not held
    /// for a quorum). Pods not heard from yet are absent.
    pub replication_contract: BTreeMap<String, bool>,
    /// What each polled pod's agent reported of its voting configuration (`/_ha/leader`); the
    /// plan reads the writer's. Pods not heard from, or whose agent reports none, are absent.
    pub configurations: BTreeMap<String, crate::wire::ConfigurationReport>,
}

impl Observed {
    pub fn insert(&mut self, obj: &Object) {
        self.objects.insert(obj.key(), obj.body.clone());
    }
}

/// Set or clear the writer label on one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLabel {
    pub pod: String,
    pub writer: bool,
}

/// A new `spec.routes` for the Gateway `namespace/name`.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayWrite {
    pub namespace: String,
    pub name: String,
    pub routes: Vec<Value>,
    /// The Gateway's `metadata.resourceVersion` the routes were planned against: the write must
    /// carry it, so that if the Gateway changed since, the API refuses it (409) and the next
    /// reconcile re-reads it: another owner's entry is never lost.
    pub resource_version: Option<String>,
}

impl GatewayWrite {
    fn new(namespace: &str, name: &str, routes: Vec<Value>, observed: &GatewayView) -> Self {
        let resource_version = match observed {
            GatewayView::Found(g) => at(g, ["metadata", "resourceVersion"])
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        GatewayWrite {
            namespace: namespace.to_string(),
            name: name.to_string(),
            routes,
            resource_version,
        }
    }
}

/// Set or clear the fencing annotation on one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFence {
    pub pod: String,
    pub fenced: bool,
}

/// Set the annotation `hanzo.ai/members` of one pod to `value` (the desired members, see
/// [`crate::members`]): the agents read it from their downward-API file, so the members change
/// without restarting any pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMembers {
    pub pod: String,
    pub value: String,
}

/// Ask writer `from` to hand its role to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub to: String,
}

/// The write that asks for a transfer: set the annotation `hanzo.ai/transfer-to` of pod `pod`
/// (the writer) to `request.to_annotation()`. The agent reads it from its downward-API
/// annotations file (see [`crate::control`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTransfer {
    pub pod: String,
    pub request: crate::control::TransferRequest,
}

/// A transfer request still pending after this long (the writer unchanged) is asked again with
/// a new `at`: the target may not have caught up in time, or `TimeoutNow` was lost. Longer than
/// the kubelet's rewrite of the annotations file plus the agent's re-read of it.
pub const TRANSFER_RETRY_MS: u64 = 5_000;

/// The write a transfer intent needs now, and when to look again. `None` when the writer's pod
/// already holds a request for this target in the writer's term that is younger than
/// [`TRANSFER_RETRY_MS`] (so an unchanged world writes nothing), or when the writer is not `from`.
fn transfer_write(intent: &Transfer, by: &str, observed: &Observed) -> (Option<PodTransfer>, u64) {
    let Some(writer) = observed.writer.as_ref().filter(|w| w.pod == intent.from) else {
        return (None, TRANSFER_RETRY_MS);
    };
    let now = observed.now.0;
    let pending = observed
        .pods
        .iter()
        .find(|p| p.name == intent.from)
        .and_then(|p| p.transfer.as_ref())
        .filter(|r| r.to == intent.to && r.term == writer.term);
    if let Some(r) = pending {
        let due = r.at.saturating_add(TRANSFER_RETRY_MS);
        if now < due {
            return (None, due - now);
        }
    }
    let request = crate::control::TransferRequest {
        to: intent.to.clone(),
        term: writer.term,
        at: now,
        by: by.to_string(),
    };
    (
        Some(PodTransfer {
            pod: intent.from.clone(),
            request,
        }),
        TRANSFER_RETRY_MS,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event worth showing a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEvent {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// One API write of a plan. [`Plan::writes`] lists them in the order they must be made; the
/// adapter and the simulation both perform exactly that list, in that order, stopping at the
/// first that fails (the next reconcile plans again from what was written).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Write<'a> {
    /// Create if absent, never update (an existing one is kept: "already exists" is success).
    Create(&'a Object),
    /// Server-side apply of a desired object that differs from what was observed.
    Apply(&'a Object),
    /// Set or clear the writer label of one pod (every clear comes before the set).
    Label(&'a PodLabel),
    /// Set or clear the fencing annotation of one pod.
    Fence(&'a PodFence),
    /// Set the desired-members annotation of one pod.
    Members(&'a PodMembers),
    /// Remove these annotations from the Base (a finished or refused switchover request),
    /// guarded by the Base's resourceVersion.
    ClearAnnotations(&'a [String]),
    /// Annotate the writer's pod with a transfer request.
    Transfer(&'a PodTransfer),
    /// A new route list for the Gateway, guarded by [`GatewayWrite::resource_version`].
    Gateway(&'a GatewayWrite),
    /// Delete an object (an optional object no longer wanted, a pod to roll, a PVC).
    Delete(&'a ObjectKey),
    /// The Base's status.
    Status(&'a BaseStatus),
}

/// What should happen now. Empty write lists and an unchanged status mean "nothing to write".
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    /// Every object this Base should have, in creation order (what `render` prints).
    pub desired: Vec<Object>,
    /// Which of `desired` differ from what was observed (indices, ascending): those are written.
    /// Indices rather than copies: on a first reconcile every object differs, and a second copy
    /// of them all was a quarter of the plan's cost. Read them with [`Plan::apply`].
    pub apply_ix: Vec<usize>,
    /// Objects to create if absent and never update (the peer-key Secret): an existing one is kept.
    pub create: Vec<Object>,
    /// Objects to delete: optional objects no longer wanted, pods to roll, PVCs under `Delete`.
    pub delete: Vec<ObjectKey>,
    pub relabel: Vec<PodLabel>,
    pub fence: Vec<PodFence>,
    /// Pods whose `hanzo.ai/members` annotation must change.
    pub members: Vec<PodMembers>,
    /// Annotations to remove from the Base (a finished or refused switchover request).
    pub clear_annotations: Vec<String>,
    pub gateway: Option<GatewayWrite>,
    /// A transfer request to write (see [`PodTransfer`]).
    pub transfer: Option<PodTransfer>,
    pub status: BaseStatus,
    pub status_changed: bool,
    pub events: Vec<PlanEvent>,
    pub requeue_after_ms: u64,
    /// The spec broke these rules; nothing was planned for it.
    pub invalid: Option<InvalidSpec>,
    /// Deletion: cleanup is complete and the finalizer may be removed.
    pub finalized: bool,
}

impl Plan {
    /// The desired objects that differ from what was observed: the ones to write.
    pub fn apply(&self) -> impl ExactSizeIterator<Item = &Object> + '_ {
        self.apply_ix.iter().map(|&i| &self.desired[i])
    }

    /// The plan's writes in the order they must be made:
    /// 1. creates (the StatefulSet's pods mount the peer-key Secret), then applies;
    /// 2. writer labels, every clear before the set, so the writer Service never selects two
    ///    pods (not even between two writes);
    /// 3. fences, the desired members, the Base's annotation removals, the transfer request;
    /// 4. the Gateway's routes (guarded by the resourceVersion planned against);
    /// 5. deletes, last of the object writes: a write that fails before them leaves everything
    ///    in place;
    /// 6. the status, which reports what was written.
    pub fn writes(&self) -> impl Iterator<Item = Write<'_>> + '_ {
        let clears = self.relabel.iter().filter(|l| !l.writer);
        let sets = self.relabel.iter().filter(|l| l.writer);
        let annotations = (!self.clear_annotations.is_empty())
            .then_some(Write::ClearAnnotations(&self.clear_annotations));
        self.create
            .iter()
            .map(Write::Create)
            .chain(self.apply().map(Write::Apply))
            .chain(clears.chain(sets).map(Write::Label))
            .chain(self.fence.iter().map(Write::Fence))
            .chain(self.members.iter().map(Write::Members))
            .chain(annotations)
            .chain(self.transfer.iter().map(Write::Transfer))
            .chain(self.gateway.iter().map(Write::Gateway))
            .chain(self.delete.iter().map(Write::Delete))
            .chain(self.status_changed.then_some(Write::Status(&self.status)))
    }

    /// True when performing this plan would issue no API write at all.
    pub fn is_noop(&self) -> bool {
        self.writes().next().is_none()
    }
}

/// Requeue soon while something is moving, so progress doesn't wait for the resync.
/// Owned objects and pods are watched, so this is only a safety net for what no watch reports.
const PROGRESS_REQUEUE_MS: u64 = 30_000;
/// Deletion waits on PVCs, which are not watched: look again soon.
const CLEANUP_REQUEUE_MS: u64 = 2_000;
/// A switchover whose target was writer by an answer older than the request waits for a newer
/// one; the poll task wakes the reconcile only when the writer changes, so look again soon.
const CONFIRM_REQUEUE_MS: u64 = 2_000;

/// Plans a `Base`.
#[must_use]
pub fn plan(base: &Base, observed: &Observed) -> Plan {
    plan_for(Kind::Base, base, observed)
}

/// Plans a `Base` or a legacy `BaseApp` (converted with `Base::from`); `kind` names the owner.
#[must_use]
pub fn plan_for(kind: Kind, base: &Base, observed: &Observed) -> Plan {
    #[cfg(madsim)]
    if let Some(planted) = planted::base(base) {
        return plan_parts(kind, &planted, observed);
    }
    let plan = plan_parts(kind, base, observed);
    #[cfg(madsim)]
    let plan = planted::early_done(plan);
    plan
}

/// The reconciler's planted bugs (`crate::buggify`), in the simulation's build only.
#[cfg(madsim)]
mod planted {
    use super::{CONDITION_SWITCHOVER, Plan, objects};
    use crate::buggify::{Bug, planted};
    use crate::crd::{Base, RetentionPolicy};

    /// `unfenced-plan` (the plan ignores `hanzo.ai/fenced-instances`) and `wrong-retention` (the
    /// plan uses the other `retentionPolicy`): the Base as those plan it.
    pub(super) fn base(base: &Base) -> Option<Base> {
        let mut base = base.clone();
        if planted(Bug::UnfencedPlan) {
            if let Some(a) = base.metadata.annotations.as_mut() {
                a.remove(objects::ANNOTATION_FENCED_INSTANCES);
            }
        } else if planted(Bug::WrongRetention) {
            let other = match base.spec.storage.retention() {
                RetentionPolicy::Retain => "Delete",
                RetentionPolicy::Delete => "Retain",
            };
            base.spec.storage.retention_policy = Some(other.into());
        } else {
            return None;
        }
        Some(base)
    }

    /// `early-done`: a switchover the plan is still performing (it asks the writer to hand
    /// over) is reported `Done`.
    pub(super) fn early_done(mut plan: Plan) -> Plan {
        let asked = plan.transfer.is_some();
        if planted(Bug::EarlyDone)
            && asked
            && let Some(c) = plan
                .status
                .conditions
                .iter_mut()
                .find(|c| c.type_ == CONDITION_SWITCHOVER && c.reason == "InProgress")
        {
            c.reason = "Done".into();
            plan.clear_annotations
                .push(objects::ANNOTATION_SWITCHOVER_TO.to_string());
            plan.transfer = None;
        }
        plan
    }
}

fn plan_parts(kind: Kind, base: &Base, observed: &Observed) -> Plan {
    let name = base.metadata.name.as_deref().unwrap_or_default();
    let namespace = base.metadata.namespace.as_deref().unwrap_or("default");
    let mut plan = Plan {
        requeue_after_ms: observed.config.resync_ms,
        ..Default::default()
    };
    let deleting = base.metadata.deletion_timestamp.is_some();
    let owner = route::owner_tag(kind.as_str(), namespace, name);
    let gateway_ref = base
        .spec
        .gateway
        .as_ref()
        .filter(|g| g.route.is_some())
        .map(|g| {
            (
                g.gateway_namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string()),
                g.gateway_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_GATEWAY_NAME.to_string()),
            )
        });

    if deleting {
        plan_cleanup(base, observed, &owner, gateway_ref, &mut plan);
        status::finish(base, observed, &mut plan, status::Outcome::Deleting);
        return plan;
    }

    if let Err(invalid) = validate(name, &base.spec) {
        plan.invalid = Some(invalid.clone());
        status::finish(base, observed, &mut plan, status::Outcome::Invalid(invalid));
        return plan;
    }

    let sts_json = observed.objects.get(&ObjectKey::new("StatefulSet", name));
    if let (Some(sts), Some(uid)) = (sts_json, base.metadata.uid.as_deref())
        && let Some(other) = foreign_controller(sts, uid)
    {
        status::finish(
            base,
            observed,
            &mut plan,
            status::Outcome::OwnedByAnother(other),
        );
        return plan;
    }
    let sts_view = sts_json.map(StsView::from_json);
    let writer = observed.writer.as_ref().map(|w| w.pod.as_str());
    let configuration = match writer_configuration(observed) {
        Some(c) => rollout::Configuration::Reported(c),
        None if base
            .status
            .as_ref()
            .is_some_and(|s| s.configuration.is_some()) =>
        {
            rollout::Configuration::Unknown
        }
        None => rollout::Configuration::Legacy,
    };
    let step = rollout::decide(
        name,
        base.spec.replicas,
        sts_view.as_ref(),
        &observed.pods,
        writer,
        // Unparsable: fence nothing new; the pods' own `fenced` annotations still count.
        &operations::fenced(base).unwrap_or(operations::Fenced::None),
        configuration,
    );

    let ctx = Ctx {
        base,
        kind,
        name,
        namespace,
        replicas: step.replicas,
        config: &observed.config,
    };
    let objects = plan_objects(&ctx, observed, &step);
    plan.desired = objects.desired;
    plan.apply_ix = objects.apply_ix;
    plan.create = objects.create;
    plan.delete = objects.delete;
    plan.relabel = objects.relabel;

    plan.members = plan_members(base, name, observed, &step, sts_view.as_ref());

    let ops = plan_operations(base, observed, &step);
    plan.fence = ops.fence;
    plan.clear_annotations = ops.clear_annotations;
    plan.transfer = ops.transfer;
    if let Some(ms) = ops.requeue_after_ms {
        plan.requeue_after_ms = plan.requeue_after_ms.min(ms);
    }

    let (gateway, route) = plan_route(base, observed, &owner, gateway_ref.as_ref());
    plan.gateway = gateway;

    plan_status(
        base,
        observed,
        &mut plan,
        &step,
        sts_view,
        route,
        (ops.conditions, ops.switchover),
    );
    // Safety: a PVC under Retain is never deleted, whatever the observation said.
    if base.spec.storage.retention() == RetentionPolicy::Retain {
        assert!(
            plan.delete
                .iter()
                .all(|k| k.kind != "PersistentVolumeClaim"),
            "plan deletes a PVC of {name} under retentionPolicy Retain"
        );
    }
    plan
}

/// The configuration the writer last reported (`/_ha/leader`), if it reports one.
fn writer_configuration(observed: &Observed) -> Option<&crate::wire::ConfigurationReport> {
    let w = observed.writer.as_ref()?;
    observed.configurations.get(&w.pod)
}

/// The desired-members annotation for every pod whose annotation differs (see
/// [`crate::members`] for why `bootstrap` is there only while no configuration was ever
/// reported: the initial members are then the ordinals below the StatefulSet's replicas, which
/// the rollout does not change before a configuration is reported).
fn plan_members(
    base: &Base,
    name: &str,
    observed: &Observed,
    step: &rollout::RolloutStep,
    sts: Option<&StsView>,
) -> Vec<PodMembers> {
    let reported = base
        .status
        .as_ref()
        .is_some_and(|s| s.configuration.is_some())
        || writer_configuration(observed).is_some();
    let bootstrap = (!reported).then(|| sts.map_or(step.replicas, |s| s.replicas));
    let value = crate::members::MembersAnnotation::for_ordinals(name, step.members, bootstrap)
        .to_annotation();
    observed
        .pods
        .iter()
        .filter(|p| !p.terminating && p.members.as_deref() != Some(value.as_str()))
        .map(|p| PodMembers {
            pod: p.name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The objects part of a plan. It raises no condition.
struct ObjectsPart {
    /// Every object this Base should have, and which of them differ from what was observed.
    desired: Vec<Object>,
    apply_ix: Vec<usize>,
    /// The peer-key Secret, once.
    create: Vec<Object>,
    /// Optional objects no longer wanted, the pod the rollout restarts, PVCs of removed ordinals
    /// under `Delete`.
    delete: Vec<ObjectKey>,
    /// The writer label onto exactly the writer's pod.
    relabel: Vec<PodLabel>,
}

fn plan_objects(ctx: &Ctx, observed: &Observed, step: &rollout::RolloutStep) -> ObjectsPart {
    let (base, name) = (ctx.base, ctx.name);
    let desired = desired_objects(ctx);
    let mut create = Vec::new();
    if !observed.peer_key_exists
        && let Some(key) = &observed.fresh_peer_key
    {
        create.push(objects::peer_key_secret(ctx, key));
    }
    // Keep the operator's view and the cluster's aligned: an object is written only when it differs.
    let apply_ix = desired
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            !observed
                .objects
                .get(&d.key())
                .is_some_and(|o| is_subset(&d.body, o))
        })
        .map(|(i, _)| i)
        .collect();
    let mut delete = Vec::new();
    for optional in [
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ] {
        for key in observed.objects.keys().filter(|k| k.kind == optional) {
            if !desired
                .iter()
                .any(|d| d.kind == key.kind && d.name == key.name)
            {
                delete.push(key.clone());
            }
        }
    }
    if let Some(pod) = &step.delete_pod {
        delete.push(ObjectKey::new("Pod", pod));
    }
    // PVCs of removed ordinals, once their pods are gone, when the spec says Delete.
    if base.spec.storage.retention() == RetentionPolicy::Delete {
        for pvc in &observed.pvcs {
            let ord = pvc
                .strip_prefix(&format!("{}-", objects::DATA_VOLUME))
                .and_then(|p| rollout::ordinal(name, p));
            if let Some(ord) = ord
                && ord >= step.replicas
                && !observed
                    .pods
                    .iter()
                    .any(|p| p.name == objects::pod_name(name, ord))
            {
                delete.push(ObjectKey::new("PersistentVolumeClaim", pvc));
            }
        }
    }
    let writer = observed.writer.as_ref().map(|w| w.pod.as_str());
    ObjectsPart {
        desired,
        apply_ix,
        create,
        delete,
        relabel: relabel(&observed.pods, writer),
    }
}

/// The operations part (`operations`): fences to set or clear, the switchover's progress and
/// the transfer request it (or the rollout) needs. Raises `Fenced` and `Switchover`.
struct OperationsPart {
    fence: Vec<PodFence>,
    clear_annotations: Vec<String>,
    transfer: Option<PodTransfer>,
    conditions: Vec<status::Cond>,
    /// Look again this soon (a switchover waiting for a confirmation, a transfer to retry).
    requeue_after_ms: Option<u64>,
    /// The switchover in flight, for `status.switchover`.
    switchover: Option<crate::crd::SwitchoverStatus>,
}

impl OperationsPart {
    /// The switchover is over: its annotation goes, its condition says how it ended.
    fn end_switchover(&mut self, reason: &'static str, message: String) {
        self.clear_annotations
            .push(objects::ANNOTATION_SWITCHOVER_TO.to_string());
        self.conditions.push(status::Cond::new(
            CONDITION_SWITCHOVER,
            false,
            reason,
            message,
        ));
    }
}

fn plan_operations(
    base: &Base,
    observed: &Observed,
    step: &rollout::RolloutStep,
) -> OperationsPart {
    let mut part = OperationsPart {
        fence: Vec::new(),
        clear_annotations: Vec::new(),
        transfer: None,
        conditions: Vec::new(),
        requeue_after_ms: None,
        switchover: None,
    };
    let soon = |part: &mut OperationsPart, ms: u64| {
        part.requeue_after_ms = Some(part.requeue_after_ms.map_or(ms, |r| r.min(ms)));
    };
    let mut transfer_intent = step
        .transfer
        .clone()
        .map(|(from, to)| (Transfer { from, to }, "rollout"));
    match operations::fenced(base) {
        Ok(fenced) => {
            part.fence = observed
                .pods
                .iter()
                .filter(|p| !p.terminating && p.fenced != fenced.contains(&p.name))
                .map(|p| PodFence {
                    pod: p.name.clone(),
                    fenced: !p.fenced,
                })
                .collect();
            let names: Vec<&str> = observed
                .pods
                .iter()
                .filter(|p| fenced.contains(&p.name))
                .map(|p| p.name.as_str())
                .collect();
            if fenced != operations::Fenced::None {
                part.conditions.push(status::Cond::new(
                    CONDITION_FENCED,
                    true,
                    "Fenced",
                    format!("fenced: {}", names.join(", ")),
                ));
            }
            let target = operations::switchover_target(base);
            let started = target
                .as_deref()
                .and_then(|t| status::switchover_started(base, t));
            match operations::switchover(
                base,
                step.replicas,
                &observed.pods,
                observed.writer.as_ref(),
                &fenced,
                started,
                observed.now,
            ) {
                Some(operations::Switchover::InProgress { transfer, message }) => {
                    part.switchover = target.map(|target| crate::crd::SwitchoverStatus {
                        target,
                        started_at: status::time_at(started.unwrap_or(observed.now)),
                    });
                    if let Some(t) = transfer {
                        transfer_intent = Some((t, "switchover"));
                    } else {
                        soon(&mut part, CONFIRM_REQUEUE_MS);
                    }
                    part.conditions.push(status::Cond::new(
                        CONDITION_SWITCHOVER,
                        true,
                        "InProgress",
                        message,
                    ));
                }
                Some(operations::Switchover::Done(message)) => {
                    part.end_switchover("Done", message);
                }
                Some(operations::Switchover::Refused(message)) => {
                    part.end_switchover("Refused", message);
                }
                None => {}
            }
        }
        Err(message) => part.conditions.push(status::Cond::new(
            CONDITION_FENCED,
            false,
            "InvalidFencedInstances",
            message,
        )),
    }
    if let Some((intent, by)) = &transfer_intent {
        let (write, look_again_ms) = transfer_write(intent, by, observed);
        part.transfer = write;
        soon(&mut part, look_again_ms);
    }
    part
}

/// The route part: the Gateway's new `spec.routes` when this Base's entry must change, and the
/// outcome the `GatewayRouted` condition (and `Ready`, on a conflict) reports.
fn plan_route(
    base: &Base,
    observed: &Observed,
    owner: &str,
    gateway_ref: Option<&(String, String)>,
) -> (Option<GatewayWrite>, status::RouteOutcome) {
    let (Some((gw_ns, gw_name)), Some(g)) = (gateway_ref, base.spec.gateway.as_ref()) else {
        return (None, status::RouteOutcome::NotConfigured);
    };
    let name = base.metadata.name.as_deref().unwrap_or_default();
    let namespace = base.metadata.namespace.as_deref().unwrap_or("default");
    let entry = route::RouteEntry {
        prefix: g.route.clone().unwrap_or_default(),
        owner: owner.to_string(),
        namespace: namespace.to_string(),
        service: name.to_string(),
        writer_service: objects::writer_service_name(name),
        port: base.spec.port,
        leader_poll_interval: g
            .leader_poll_interval
            .clone()
            .unwrap_or_else(|| crate::crd::DEFAULT_LEADER_POLL_INTERVAL.to_string()),
        read_your_writes_ttl: g
            .read_your_writes_ttl
            .clone()
            .unwrap_or_else(|| crate::crd::DEFAULT_READ_YOUR_WRITES_TTL.to_string()),
    };
    let injected = || status::RouteOutcome::Injected([gw_ns.as_str(), "/", gw_name].concat());
    match &observed.gateway {
        GatewayView::Found(gw) => match route::upsert(route::routes_in(gw), &entry) {
            Ok(Some(routes)) => (
                Some(GatewayWrite::new(gw_ns, gw_name, routes, &observed.gateway)),
                injected(),
            ),
            Ok(None) => (None, injected()),
            Err(conflict) => (None, status::RouteOutcome::Conflict(conflict.to_string())),
        },
        GatewayView::Missing | GatewayView::NotLooked => (
            None,
            status::RouteOutcome::GatewayMissing(format!("{gw_ns}/{gw_name}")),
        ),
    }
}

/// The status part: whether the Base is still progressing (then look again soon), and the
/// status with every condition the other parts raised.
fn plan_status(
    base: &Base,
    observed: &Observed,
    plan: &mut Plan,
    step: &rollout::RolloutStep,
    sts: Option<StsView>,
    route: status::RouteOutcome,
    (conditions, switchover): (Vec<status::Cond>, Option<crate::crd::SwitchoverStatus>),
) {
    let name = base.metadata.name.as_deref().unwrap_or_default();
    let members: Vec<String> = (0..step.members.max(0))
        .map(|i| objects::pod_name(name, i))
        .collect();
    let membership_moving =
        writer_configuration(observed).is_some_and(|c| !c.is_settled_on(&members));
    let progressing = step.replicas != base.spec.replicas
        || step.members != base.spec.replicas
        || membership_moving
        || step.outdated > 0
        || step.transfer.is_some()
        || sts
            .as_ref()
            .is_none_or(|s| s.ready_replicas < base.spec.replicas);
    if progressing || !plan.apply_ix.is_empty() || !plan.delete.is_empty() {
        plan.requeue_after_ms = plan.requeue_after_ms.min(PROGRESS_REQUEUE_MS);
    }
    status::finish(
        base,
        observed,
        plan,
        status::Outcome::Planned {
            sts,
            route,
            progressing,
            members,
            extra: conditions,
            switchover,
        },
    );
}

fn desired_objects(c: &Ctx) -> Vec<Object> {
    let configmap = objects::schema_configmap(c);
    let services = objects::services(c);
    let statefulset = objects::statefulset(c);
    let optional = [
        objects::pdb(c),
        objects::network_policy(c),
        objects::service_monitor(c),
    ];
    // Exactly sized, as `apply` is (see there).
    let n = services.len() + 1 + configmap.iter().count() + optional.iter().flatten().count();
    let mut out = Vec::with_capacity(n);
    out.extend(configmap);
    out.extend(services);
    out.push(statefulset);
    out.extend(optional.into_iter().flatten());
    out
}

/// The controller owner of an object when it is not us.
fn foreign_controller(obj: &Value, our_uid: &str) -> Option<String> {
    let refs = at(obj, ["metadata", "ownerReferences"])?.as_array()?;
    refs.iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(our_uid))
        .map(|r| {
            format!(
                "{}/{}",
                r.get("kind").and_then(Value::as_str).unwrap_or("?"),
                r.get("name").and_then(Value::as_str).unwrap_or("?")
            )
        })
}

/// Label exactly the writer pod; clear the label from every other pod in the same step.
fn relabel(pods: &[PodView], writer: Option<&str>) -> Vec<PodLabel> {
    pods.iter()
        .filter(|p| !p.terminating)
        .filter_map(|p| {
            let want = Some(p.name.as_str()) == writer;
            (p.writer_label != want).then(|| PodLabel {
                pod: p.name.clone(),
                writer: want,
            })
        })
        .collect()
}

fn plan_cleanup(
    base: &Base,
    observed: &Observed,
    owner: &str,
    gateway_ref: Option<(String, String)>,
    plan: &mut Plan,
) {
    let mut done = true;
    if let (Some((ns, gw)), GatewayView::Found(g)) = (gateway_ref.as_ref(), &observed.gateway) {
        if let Some(routes) = route::remove(route::routes_in(g), owner) {
            plan.gateway = Some(GatewayWrite::new(ns, gw, routes, &observed.gateway));
            done = false;
        }
    } else if gateway_ref.is_some() && observed.gateway == GatewayView::NotLooked {
        done = false; // we cannot know the route is gone until we looked
    }
    if base.spec.storage.retention() == RetentionPolicy::Delete {
        for pvc in &observed.pvcs {
            plan.delete
                .push(ObjectKey::new("PersistentVolumeClaim", pvc));
            done = false;
        }
        // A claim a pod still mounts is held by `kubernetes.io/pvc-protection` until the pod is
        // gone, and the pods go with the StatefulSet, which the garbage collector removes only
        // after the Base, whose finalizer waits for the claims: delete the StatefulSet now (seen
        // on a real kubelet: the deletion waited for the cleanup timeout).
        let sts = ObjectKey::new(
            "StatefulSet",
            base.metadata.name.as_deref().unwrap_or_default(),
        );
        if !observed.pvcs.is_empty() && observed.objects.contains_key(&sts) {
            plan.delete.push(sts);
        }
    }
    plan.finalized = done;
    if !done {
        plan.requeue_after_ms = CLEANUP_REQUEUE_MS;
    }
}
