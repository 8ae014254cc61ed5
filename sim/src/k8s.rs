//! A small model of the Kubernetes side, driven by the real `base_core::reconcile::plan`:
//! objects as the API server stores them, a StatefulSet controller (pods per ordinal, `OnDelete`
//! updates, a PVC per ordinal that outlives its pods), a kubelet (starts and restarts processes,
//! readiness), and the API server's storage of the operator's writes (`store_write`; the
//! operator itself is `operator.rs`).
//!
//! Each pod is a madsim node; starting and killing a pod's process is `Handle::restart/kill`. The
//! election state `{term, voted_for}` and the store's log live on the PVC, so they survive restarts;
//! everything else of a process is lost when it dies.

use crate::config::{BASE_NAME, NAMESPACE, SimConfig, SpecChange};
use crate::rng::Fnv;
use crate::world::SwitchoverRequest;
use crate::world::{World, ordinal_of, pod_name};
use base_core::Term;
use base_core::crd::{Base, RetentionPolicy};
use base_core::quasar::PersistedState;
use base_core::reconcile::objects::{ANNOTATION_FENCED_INSTANCES, ANNOTATION_SWITCHOVER_TO};
use base_core::reconcile::{ObjectKey, Write, objects, route};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A pod is ready once its process has run this long (the agent's readiness probe).
pub const READY_AFTER_MS: u64 = 1_000;
/// How often the kubelet and the StatefulSet controller act.
pub const CONTROLLER_TICK_MS: u64 = 100;
/// The kubelet rewrites a pod's downward-API annotations file this long (at most) after the
/// annotation changed (in a real cluster its sync period can make this much longer).
pub const FENCE_SYNC_MAX_MS: u64 = 1_500;

/// Invariant 10's name in reports.
pub const WRITER_SERVICE: &str = "10 the writer Service selects at most one pod";

/// Invariant 7's name in reports.
pub const CONVERGES: &str = "7 reconcile converges, PVCs follow retentionPolicy";

/// A PVC's content: the persisted election state and the Base store.
#[derive(Clone, Debug, Default)]
pub struct Pvc {
    pub persisted: PersistedState,
    pub store: crate::store::Store,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// Scheduled; the process starts at this real time.
    Pending {
        start_at: u64,
    },
    Running {
        since: u64,
    },
    /// The process died; the kubelet restarts it at this real time.
    Crashed {
        restart_at: u64,
    },
    /// Deleted; the process is killed at the end of its grace period.
    Terminating {
        kill_at: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub revision: String,
    /// The number of replicas in the pod's `BASE_REPLICAS` (the `base` container's peer set; the
    /// agent's voters are the election's configuration, from `members`).
    pub cluster_size: i32,
    pub phase: PodPhase,
    pub writer_label: bool,
    /// The annotation `hanzo.ai/fenced: "true"` (set and cleared by the operator's plan).
    pub fenced: bool,
    /// What the pod's downward-API annotations file says (the kubelet catches up with the
    /// annotation after a delay; the agent re-reads the file every `FENCE_POLL_MS`).
    pub fence_file: bool,
    /// When the kubelet next writes the annotations file (real ns), if it is behind.
    pub fence_sync_at: Option<u64>,
    /// Since when (real ns) the annotations file says fenced.
    pub fence_file_since: Option<u64>,
    /// The annotation `hanzo.ai/transfer-to` (set by the operator's plan), and what the
    /// annotations file says of it (caught up by the kubelet with the fence).
    pub transfer: Option<String>,
    pub transfer_file: Option<String>,
    /// The annotation `hanzo.ai/members` (set by the operator's plan), and what the annotations
    /// file says of it (caught up by the kubelet with the fence): the desired members the agent
    /// carries out.
    pub members: Option<String>,
    pub members_file: Option<String>,
}

pub struct K8s {
    pub base: Base,
    pub objects: BTreeMap<ObjectKey, Value>,
    pub pods: BTreeMap<i32, Pod>,
    pub pvcs: BTreeMap<i32, Pvc>,
    pub gateway_cr: Value,
    pub last_spec_change_ns: u64,
    /// The user's last change to the spec.
    pub last_spec_change: Option<SpecChange>,
    /// Every ordinal that ever had a PVC (the checkers' record: scaled-away ones included).
    pub pvcs_created: std::collections::BTreeSet<i32>,
    pub pvcs_deleted: u64,
    /// What the StatefulSet controller read from the StatefulSet's spec, at its generation.
    pub sts_view: Option<StsView>,
}

#[derive(Clone, Debug)]
pub struct StsView {
    pub generation: i64,
    pub replicas: i32,
    pub update_revision: String,
    pub size: i32,
}

impl K8s {
    pub fn new(cfg: &SimConfig) -> K8s {
        let manifest = json!({
            "apiVersion": "hanzo.ai/v1",
            "kind": "Base",
            "metadata": {
                "name": BASE_NAME,
                "namespace": NAMESPACE,
                "uid": "6f1c2a4e-0000-4000-8000-000000000001",
                "generation": 1,
            },
            "spec": {
                "image": { "repository": "ghcr.io/hanzoai/base", "tag": "v1.2.3" },
                "replicas": cfg.initial_replicas,
                "port": 8090,
                "consensus": "quasar",
                "storage": { "size": "1Gi", "retentionPolicy": cfg.retention },
                "gateway": {
                    "route": "/v1/my-app",
                    "gatewayName": "gateway",
                    "gatewayNamespace": NAMESPACE,
                    "leaderPollInterval": format!("{}ms", cfg.poll_interval_ms),
                    "readYourWritesTTL": format!("{}ms", cfg.ryw_ttl_ms),
                },
            },
        });
        let (_, base) =
            base_core::manifest::from_value(manifest).expect("the simulation's Base is valid");
        K8s {
            base,
            objects: BTreeMap::new(),
            pods: BTreeMap::new(),
            pvcs: BTreeMap::new(),
            gateway_cr: json!({
                "apiVersion": "hanzo.ai/v1",
                "kind": "Gateway",
                "metadata": { "name": "gateway", "namespace": NAMESPACE, "resourceVersion": "1" },
                "spec": { "routes": [] },
            }),
            last_spec_change_ns: 0,
            last_spec_change: None,
            pvcs_created: Default::default(),
            pvcs_deleted: 0,
            sts_view: None,
        }
    }

    pub fn sts(&self) -> Option<&Value> {
        self.objects.get(&ObjectKey::new("StatefulSet", BASE_NAME))
    }

    pub fn generation(&self) -> i64 {
        self.base.metadata.generation.unwrap_or(1)
    }
}

/// `controller-revision-hash` of a pod template.
fn revision(template: &Value) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    format!(
        "{BASE_NAME}-{:010x}",
        Fnv::of(text.as_bytes()) & 0xFF_FFFF_FFFF
    )
}

/// `BASE_REPLICAS` of the template's containers: the peer set the pod's agent will use.
fn template_cluster_size(template: &Value) -> Option<i32> {
    template
        .pointer("/spec/containers")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("env")?.as_array())
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("BASE_REPLICAS"))?
        .get("value")?
        .as_str()?
        .parse()
        .ok()
}

impl World {
    pub(crate) fn pod_ready(&self, ordinal: i32, pod: &Pod, now: u64) -> bool {
        matches!(pod.phase, PodPhase::Running { since } if now >= since + READY_AFTER_MS * 1_000_000)
            && !self.replicas[ordinal as usize].paused
            && self.replicas[ordinal as usize].agent.is_some()
    }

    /// Starts the process of `ordinal` (a madsim restart: a fresh process on the node).
    fn start_process(&mut self, ordinal: i32) {
        if let Some(id) = self.replicas[ordinal as usize].madsim_id {
            self.handle.restart(id);
        }
    }

    /// Kills the process of `ordinal`: its memory is gone.
    pub fn kill_process(&mut self, ordinal: i32) {
        if let Some(id) = self.replicas[ordinal as usize].madsim_id {
            self.handle.kill(id);
        }
        self.drop_agent(ordinal);
    }

    /// The kubelet and the StatefulSet controller, every `CONTROLLER_TICK_MS`.
    pub fn k8s_tick(&mut self) {
        let now = self.now_ns();
        // Kubelet: process lifecycles.
        let ordinals: Vec<i32> = self.k8s.pods.keys().copied().collect();
        for ordinal in ordinals {
            let phase = self.k8s.pods[&ordinal].phase;
            match phase {
                PodPhase::Pending { start_at }
                | PodPhase::Crashed {
                    restart_at: start_at,
                } if now >= start_at => {
                    if let Some(p) = self.k8s.pods.get_mut(&ordinal) {
                        p.phase = PodPhase::Running { since: now };
                    }
                    self.start_process(ordinal);
                }
                PodPhase::Terminating { kill_at } if now >= kill_at => {
                    self.kill_process(ordinal);
                    self.k8s.pods.remove(&ordinal);
                    self.ev(format!("pod {} is gone", pod_name(ordinal)));
                }
                _ => {}
            }
            self.sync_fence_file(ordinal, now);
        }
        // StatefulSet controller.
        let Some(sts) = self.k8s.sts() else {
            return;
        };
        let generation = sts
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        // The spec only changes with the generation: hashing the template every tick was a fifth
        // of the simulation's time.
        let view = match &self.k8s.sts_view {
            Some(v) if v.generation == generation => v.clone(),
            _ => {
                let replicas = sts
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1) as i32;
                let template = sts.pointer("/spec/template").unwrap_or(&Value::Null);
                let v = StsView {
                    generation,
                    replicas,
                    update_revision: revision(template),
                    size: template_cluster_size(template).unwrap_or(replicas),
                };
                self.k8s.sts_view = Some(v.clone());
                v
            }
        };
        let StsView {
            replicas,
            update_revision,
            size,
            ..
        } = view;
        for ordinal in 0..replicas.min(crate::config::MAX_ORDINALS) {
            if self.k8s.pods.contains_key(&ordinal) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = self.k8s.pvcs.entry(ordinal) {
                e.insert(Pvc::default());
                self.k8s.pvcs_created.insert(ordinal);
                let name = objects::pvc_name(BASE_NAME, ordinal);
                self.ev(format!("PVC {name} created"));
            }
            let delay_ms = self.rng.range(300, 1_500);
            self.k8s.pods.insert(
                ordinal,
                Pod {
                    revision: update_revision.clone(),
                    cluster_size: size,
                    phase: PodPhase::Pending {
                        start_at: now + delay_ms * 1_000_000,
                    },
                    writer_label: false,
                    // A new pod starts without the fencing annotation: the operator's plan adds
                    // it (the agent reads the file before its node may campaign).
                    fenced: false,
                    fence_file: false,
                    fence_sync_at: None,
                    fence_file_since: None,
                    transfer: None,
                    transfer_file: None,
                    members: None,
                    members_file: None,
                },
            );
            self.ev(format!(
                "pod {} created ({update_revision}, cluster of {size})",
                pod_name(ordinal)
            ));
        }
        let extra: Vec<i32> = self
            .k8s
            .pods
            .iter()
            .filter(|(o, p)| **o >= replicas && !matches!(p.phase, PodPhase::Terminating { .. }))
            .map(|(o, _)| *o)
            .collect();
        for ordinal in extra {
            self.terminate_pod(ordinal, "scaled away");
        }
        let ready = (0..replicas)
            .filter(|o| {
                self.k8s
                    .pods
                    .get(o)
                    .is_some_and(|p| self.pod_ready(*o, p, now))
            })
            .count();
        if let Some(obj) = self
            .k8s
            .objects
            .get_mut(&ObjectKey::new("StatefulSet", BASE_NAME))
        {
            obj["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "readyReplicas": ready,
                "updateRevision": update_revision,
            });
        }
    }

    /// The kubelet brings the pod's annotations file up to date with its annotations, after a delay.
    fn sync_fence_file(&mut self, ordinal: i32, now: u64) {
        let Some(pod) = self.k8s.pods.get(&ordinal) else {
            return;
        };
        let behind = pod.fence_file != pod.fenced
            || pod.transfer_file != pod.transfer
            || pod.members_file != pod.members;
        match pod.fence_sync_at {
            None if behind => {
                let at = now + self.rng.range(100, FENCE_SYNC_MAX_MS) * 1_000_000;
                if let Some(pod) = self.k8s.pods.get_mut(&ordinal) {
                    pod.fence_sync_at = Some(at);
                }
            }
            Some(at) if now >= at => {
                if let Some(pod) = self.k8s.pods.get_mut(&ordinal) {
                    pod.fence_sync_at = None;
                    if pod.fence_file != pod.fenced {
                        pod.fence_file = pod.fenced;
                        pod.fence_file_since = pod.fenced.then_some(now);
                    }
                    pod.transfer_file.clone_from(&pod.transfer);
                    pod.members_file.clone_from(&pod.members);
                }
            }
            _ => {}
        }
    }

    /// The pods in `hanzo.ai/fenced-instances` as the user wrote them (`*` for all).
    /// The pod `hanzo.ai/switchover-to` names, if the Base has the annotation.
    pub fn switchover_target(&self) -> Option<&String> {
        self.k8s
            .base
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SWITCHOVER_TO))
    }

    pub fn fence_list(&self) -> Vec<String> {
        self.k8s
            .base
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_FENCED_INSTANCES))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// Sets `hanzo.ai/fenced-instances` (removes it when `list` is empty), as `kubectl annotate`.
    pub fn set_fence_list(&mut self, list: Vec<String>) {
        let annotations = self
            .k8s
            .base
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if list.is_empty() {
            annotations.remove(ANNOTATION_FENCED_INSTANCES);
        } else {
            let value = serde_json::to_string(&list).expect("a list of names serialises");
            annotations.insert(ANNOTATION_FENCED_INSTANCES.to_string(), value);
        }
        self.ev(format!(
            "annotation {ANNOTATION_FENCED_INSTANCES}: {list:?}"
        ));
    }

    /// Whether the Base's annotation fences `pod` (the checkers' own reading of it).
    pub fn fence_annotated(&self, pod: &str) -> bool {
        self.fence_list().iter().any(|p| p == "*" || p == pod)
    }

    /// Sets `hanzo.ai/switchover-to` and remembers the request for the checkers.
    pub fn request_switchover(&mut self, target: String) {
        let term_at_request = self.latest_writer().map_or(Term(0), |(t, _)| t);
        self.k8s
            .base
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_SWITCHOVER_TO.to_string(), target.clone());
        self.ev(format!(
            "annotation {ANNOTATION_SWITCHOVER_TO}: {target} (newest term {term_at_request})"
        ));
        self.checks.switchover = Some(SwitchoverRequest {
            target,
            term_at_request,
        });
    }

    /// `kubectl delete pod` (or the StatefulSet removing an ordinal): a short grace period, then
    /// the process is killed and the pod is gone.
    pub fn terminate_pod(&mut self, ordinal: i32, why: &str) {
        let now = self.now_ns();
        let grace_ms = self.rng.range(100, 1_000);
        if let Some(pod) = self.k8s.pods.get_mut(&ordinal)
            && !matches!(pod.phase, PodPhase::Terminating { .. })
        {
            pod.phase = PodPhase::Terminating {
                kill_at: now + grace_ms * 1_000_000,
            };
            self.ev(format!("pod {} terminating ({why})", pod_name(ordinal)));
        }
    }

    /// The process of a running pod crashes; the kubelet restarts it later.
    pub fn crash_pod(&mut self, ordinal: i32, restart_after_ms: u64) -> bool {
        let now = self.now_ns();
        let Some(pod) = self.k8s.pods.get_mut(&ordinal) else {
            return false;
        };
        if !matches!(pod.phase, PodPhase::Running { .. }) {
            return false;
        }
        pod.phase = PodPhase::Crashed {
            restart_at: now + restart_after_ms * 1_000_000,
        };
        self.kill_process(ordinal);
        true
    }

    /// A user edits the Base.
    pub fn change_spec(&mut self, change: &SpecChange) {
        match change {
            SpecChange::Image(tag) => self.k8s.base.spec.image.tag = Some(tag.clone()),
            SpecChange::Scale(n) => self.k8s.base.spec.replicas = *n,
        }
        let generation = self.k8s.generation() + 1;
        self.k8s.base.metadata.generation = Some(generation);
        self.k8s.last_spec_change_ns = self.now_ns();
        self.k8s.last_spec_change = Some(change.clone());
        self.ev(format!("spec change: {change:?} (generation {generation})"));
    }

    /// The API server stores one write of a plan (the Kubernetes model's storage); false when it
    /// refuses it (a Gateway changed since it was read: 409), which ends the pass as it does in
    /// the adapter.
    pub(crate) fn store_write(&mut self, write: Write<'_>) -> bool {
        match write {
            Write::Create(obj) => {
                self.k8s
                    .objects
                    .entry(obj.key())
                    .or_insert_with(|| obj.body.clone());
            }
            Write::Apply(obj) => {
                let key = obj.key();
                let mut body = obj.body.clone();
                let old = self.k8s.objects.get(&key);
                let old_generation = old
                    .and_then(|o| o.pointer("/metadata/generation"))
                    .and_then(Value::as_i64);
                let spec_changed = old.is_none_or(|o| o.get("spec") != body.get("spec"));
                let generation = match old_generation {
                    Some(g) if spec_changed => g + 1,
                    Some(g) => g,
                    None => 1,
                };
                if let Some(status) = old.and_then(|o| o.get("status")).cloned() {
                    body["status"] = status;
                }
                body["metadata"]["generation"] = json!(generation);
                if spec_changed {
                    self.ev(format!("operator applies {} {}", key.kind, key.name));
                }
                self.k8s.objects.insert(key, body);
            }
            Write::Label(label) => {
                if let Some(pod) = ordinal_of(&label.pod).and_then(|o| self.k8s.pods.get_mut(&o)) {
                    pod.writer_label = label.writer;
                }
                self.check_writer_service();
            }
            Write::Fence(fence) => {
                if let Some(pod) = ordinal_of(&fence.pod).and_then(|o| self.k8s.pods.get_mut(&o)) {
                    pod.fenced = fence.fenced;
                    let what = if fence.fenced { "fences" } else { "unfences" };
                    self.ev(format!("operator {what} pod {}", fence.pod));
                }
            }
            Write::Members(m) => {
                if let Some(pod) = ordinal_of(&m.pod).and_then(|o| self.k8s.pods.get_mut(&o)) {
                    pod.members = Some(m.value.clone());
                }
            }
            Write::ClearAnnotations(keys) => {
                if let Some(a) = self.k8s.base.metadata.annotations.as_mut() {
                    for key in keys {
                        a.remove(key);
                    }
                }
                if keys.iter().any(|k| k == ANNOTATION_SWITCHOVER_TO) {
                    self.checks.switchover = None;
                }
                self.ev(format!("operator removes annotations {keys:?}"));
            }
            Write::Transfer(t) => {
                if let Some(pod) = ordinal_of(&t.pod).and_then(|o| self.k8s.pods.get_mut(&o)) {
                    pod.transfer = Some(t.request.to_annotation());
                    self.ev(format!(
                        "operator asks {} to hand the writer role to {} (annotation, term {})",
                        t.pod, t.request.to, t.request.term
                    ));
                }
            }
            Write::Gateway(gw) => {
                let rv = self.k8s.gateway_cr["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if gw.resource_version != rv {
                    self.ev(
                        "the API server refuses the Gateway write: it changed since it was read",
                    );
                    return false;
                }
                let next = rv.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                self.k8s.gateway_cr["metadata"]["resourceVersion"] = json!(next.to_string());
                self.k8s.gateway_cr["spec"]["routes"] = Value::Array(gw.routes.clone());
            }
            Write::Delete(key) => match key.kind.as_str() {
                "Pod" => {
                    if let Some(o) = ordinal_of(&key.name) {
                        self.terminate_pod(o, "deleted by the operator");
                    }
                }
                "PersistentVolumeClaim" => self.delete_pvc(&key.name),
                _ => {
                    self.k8s.objects.remove(key);
                }
            },
            Write::Status(status) => self.k8s.base.status = Some(status.clone()),
        }
        true
    }

    /// Invariant 10, after every label write: the writer Service (`hanzo.ai/role=writer`) never
    /// selects two pods that are not terminating, not even between two writes of one plan.
    fn check_writer_service(&mut self) {
        let labelled: Vec<String> = self
            .k8s
            .pods
            .iter()
            .filter(|(_, p)| p.writer_label && !matches!(p.phase, PodPhase::Terminating { .. }))
            .map(|(o, _)| pod_name(*o))
            .collect();
        if labelled.len() > 1 {
            self.fail(
                WRITER_SERVICE,
                format!("the writer Service selects {}", labelled.join(" and ")),
            );
        }
    }

    /// Invariant 7b: a PVC under `retentionPolicy: Retain` is never deleted.
    fn delete_pvc(&mut self, name: &str) {
        let Some(ordinal) = name
            .strip_prefix(&format!("{}-", objects::DATA_VOLUME))
            .and_then(ordinal_of)
        else {
            return;
        };
        if self.k8s.base.spec.storage.retention() == RetentionPolicy::Retain {
            self.fail(
                CONVERGES,
                format!("the operator deletes PVC {name} under retentionPolicy Retain"),
            );
            return;
        }
        if self.k8s.pods.contains_key(&ordinal) {
            self.fail(
                CONVERGES,
                format!("the operator deletes PVC {name} while its pod exists"),
            );
            return;
        }
        if self.k8s.pvcs.remove(&ordinal).is_some() {
            self.k8s.pvcs_deleted += 1;
            self.ev(format!("PVC {name} deleted (retentionPolicy Delete)"));
        }
    }

    /// Invariant 7 after a scale-down: the PVCs of the ordinals scaled away are removed under
    /// `retentionPolicy: Delete` and kept under `Retain`. Returns how many were (removed, kept).
    pub fn scaled_away_pvcs(&self) -> Result<(u64, u64), String> {
        let replicas = self.k8s.base.spec.replicas;
        let retain = self.k8s.base.spec.storage.retention() == RetentionPolicy::Retain;
        let (mut removed, mut kept) = (0, 0);
        for &o in self.k8s.pvcs_created.range(replicas..) {
            let name = objects::pvc_name(BASE_NAME, o);
            match (retain, self.k8s.pvcs.contains_key(&o)) {
                (true, true) => kept += 1,
                (false, false) => removed += 1,
                (true, false) => return Err(format!("PVC {name} is gone under Retain")),
                (false, true) => {
                    return Err(format!(
                        "PVC {name} of a scaled-away ordinal is still there under Delete"
                    ));
                }
            }
        }
        Ok((removed, kept))
    }

    /// Invariant 7: the cluster matches the spec and the operator has nothing left to do.
    pub fn converged(&self) -> Result<(), String> {
        let now = self.now_ns();
        let spec = &self.k8s.base.spec;
        let replicas = spec.replicas;
        let sts = self.k8s.sts().ok_or("no StatefulSet")?;
        let sts_replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64);
        if sts_replicas != Some(i64::from(replicas)) {
            return Err(format!(
                "StatefulSet replicas {sts_replicas:?} ≠ spec {replicas}"
            ));
        }
        let image = spec.image.reference();
        let template = sts
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        if !serde_json::to_string(&template)
            .unwrap_or_default()
            .contains(&image)
        {
            return Err(format!("the pod template does not run {image}"));
        }
        let update_revision = revision(&template);
        for ordinal in 0..replicas {
            let Some(pod) = self.k8s.pods.get(&ordinal) else {
                return Err(format!("pod {} missing", pod_name(ordinal)));
            };
            if pod.revision != update_revision {
                return Err(format!("pod {} on an old revision", pod_name(ordinal)));
            }
            if !self.pod_ready(ordinal, pod, now) {
                return Err(format!("pod {} not ready", pod_name(ordinal)));
            }
            if !self.k8s.pvcs.contains_key(&ordinal) {
                return Err(format!("PVC of {} missing", pod_name(ordinal)));
            }
        }
        if let Some(o) = self.k8s.pods.keys().find(|o| **o >= replicas) {
            return Err(format!("pod {} should be gone", pod_name(*o)));
        }
        self.scaled_away_pvcs()?;
        let Some(writer) = self.operator_writer().and_then(|w| ordinal_of(&w.pod)) else {
            return Err("the operator knows no writer".into());
        };
        self.configuration_settled()?;
        for (o, pod) in &self.k8s.pods {
            if pod.writer_label != (*o == writer) {
                return Err(format!("writer label of {} is wrong", pod_name(*o)));
            }
            let want = self.fence_annotated(&pod_name(*o));
            if pod.fenced != want {
                return Err(format!("fencing annotation of {} is wrong", pod_name(*o)));
            }
            let agent_fenced = self.replicas[*o as usize]
                .agent
                .as_ref()
                .map(|a| a.node().is_fenced());
            if agent_fenced != Some(want) {
                return Err(format!(
                    "{} is fenced {agent_fenced:?}, its pod says {want}",
                    pod_name(*o)
                ));
            }
        }
        let owner = route::owner_tag("Base", NAMESPACE, BASE_NAME);
        let routed = route::routes_of(&self.k8s.gateway_cr)
            .iter()
            .any(|r| r.to_string().contains(&owner));
        if !routed {
            return Err("the Gateway has no route for the Base".into());
        }
        if let Some(target) = self.switchover_target() {
            return Err(format!("the switchover to {target} is not over"));
        }
        match &self.last_plan {
            Some(Ok(())) => {}
            Some(Err(still)) => return Err(format!("the last plan still writes: {still}")),
            None => return Err("no plan yet".into()),
        }
        let observed = self
            .k8s
            .base
            .status
            .as_ref()
            .and_then(|s| s.observed_generation);
        if observed != Some(self.k8s.generation()) {
            return Err(format!(
                "status.observedGeneration {observed:?} ≠ generation {}",
                self.k8s.generation()
            ));
        }
        Ok(())
    }

    /// The election's configuration is the spec's members, settled: the writer's is simple,
    /// with no learner, its voters the ordinals below `spec.replicas`, committed, and every
    /// member a change removed has acked it (`Node::membership_done`, which the operator's
    /// rollout waits on).
    pub fn configuration_settled(&self) -> Result<(), String> {
        let Some(writer) = self.current_writer() else {
            return Err("no node accepts writes".into());
        };
        let Some(node) = self.replicas[writer as usize]
            .agent
            .as_ref()
            .map(|a| a.node())
        else {
            return Err("the writer's process is gone".into());
        };
        let want: std::collections::BTreeSet<_> = (0..self.k8s.base.spec.replicas)
            .map(crate::world::pod_id)
            .collect();
        let held = node.membership();
        if node.membership_done() && held.is_some_and(|m| m.voters == want) {
            return Ok(());
        }
        Err(format!(
            "the writer {} holds configuration {}, not settled on {} members",
            pod_name(writer),
            held.map_or("none".to_string(), |m| m.describe()),
            want.len()
        ))
    }
}
