//! Observing a Base's world and performing a plan: the only code that talks to the API server for
//! the controller. No decisions here — they are all in `base_core::reconcile`.

use super::{Context, Error};
use base_core::control::{ANNOTATION_TRANSFER, TransferRequest};
use base_core::crd::{Base, Kind};
use base_core::members::ANNOTATION_MEMBERS;
use base_core::reconcile::objects::{ANNOTATION_POD_FENCED, LABEL_BASE, LABEL_ROLE, ROLE_WRITER};
use base_core::reconcile::route::{GATEWAY_API_VERSION, GATEWAY_KIND};
use base_core::reconcile::{GatewayView, ObjectKey, Observed, Plan, PodView, Write};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

pub const FIELD_MANAGER: &str = "base-operator";
/// Tests and debugging: a pod annotation that overrides the agent URL the poller uses.
pub const ANNOTATION_AGENT_URL: &str = "hanzo.ai/agent-url";

/// The API resource for a kind the operator manages.
pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Service" => "services",
        "StatefulSet" => "statefulsets",
        "ConfigMap" => "configmaps",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "NetworkPolicy" => "networkpolicies",
        "ServiceMonitor" => "servicemonitors",
        "Pod" => "pods",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        "Gateway" => "gateways",
        "Secret" => "secrets",
        "Base" => "bases",
        "BaseApp" => "baseapps",
        other => return ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, other)),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The owned kinds, in the order they are listed.
fn owned_kinds(pdb_api_version: &str) -> [(&str, &'static str); 6] {
    [
        ("apps/v1", "StatefulSet"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        (pdb_api_version, "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ]
}

/// How to LIST one owned kind. Objects the plan only compares and applies are read from the API
/// server's watch cache (`resourceVersion=0`): a LIST from etcd scans every object of the kind in
/// the namespace, and at 1000 Bases those reads were most of the API server's load. A stale read
/// costs at most an idempotent re-apply or a delete answered 404. The StatefulSet is read
/// consistently: its `updateRevision` decides which pods are outdated and get deleted, and a stale
/// one would single out pods already updated. (Pods and PVCs are listed consistently too.)
fn list_params_for(kind: &str, consistent: &ListParams) -> ListParams {
    match kind {
        "StatefulSet" => consistent.clone(),
        _ => consistent.clone().match_any(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn dynamic(ctx: &Context, ns: &str, api_version: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &resource(api_version, kind))
}

fn pod_view(p: &Pod) -> PodView {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let labels = p.labels();
    PodView {
        name: p.name_any(),
        ready,
        revision: labels.get("controller-revision-hash").cloned(),
        terminating: p.metadata.deletion_timestamp.is_some(),
        writer_label: labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_WRITER),
        fenced: p
            .annotations()
            .get(ANNOTATION_POD_FENCED)
            .map(String::as_str)
            == Some("true"),
        transfer: p
            .annotations()
            .get(ANNOTATION_TRANSFER)
            .and_then(|v| TransferRequest::parse(v)),
        members: p.annotations().get(ANNOTATION_MEMBERS).cloned(),
    }
}

/// Everything `plan` needs, read from the API (reads only).
pub async fn observe(ctx: &Context, base: &Base) -> Result<(Observed, Vec<Pod>), Error> {
    let ns = base.namespace().unwrap_or_else(|| "default".into());
    let name = base.name_any();
    let lp = ListParams::default().labels(&format!("{LABEL_BASE}={name}"));
    let mut observed = Observed {
        // On the clock the writer's `confirmed_at` is on (`controller::clock`).
        now: ctx.writers.plan_now(),
        config: ctx.config.clone(),
        peer_key_exists: ctx.peer_key_known(base),
        ..Default::default()
    };
    if !observed.peer_key_exists {
        observed.fresh_peer_key = Some(fresh_key());
    }
    for (api_version, k) in owned_kinds(&ctx.config.pdb_api_version) {
        let list = match dynamic(ctx, &ns, api_version, k)
            .list(&list_params_for(k, &lp))
            .await
        {
            Ok(l) => l,
            // An optional CRD (ServiceMonitor) that is not installed holds nothing of ours.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(Error::Kube(e)),
        };
        for obj in list.items {
            let mut v = serde_json::to_value(&obj).map_err(Error::Json)?;
            v["apiVersion"] = json!(api_version);
            v["kind"] = json!(k);
            observed
                .objects
                .insert(ObjectKey::new(k, &obj.name_any()), v);
        }
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&lp)
        .await?
        .items;
    observed.pods = pods.iter().map(pod_view).collect();
    observed.pvcs = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .list(&lp)
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    if let Some(g) = base.spec.gateway.as_ref().filter(|g| g.route.is_some()) {
        let gw_ns = g.gateway_namespace.clone().unwrap_or_else(|| ns.clone());
        let gw_name = g
            .gateway_name
            .clone()
            .unwrap_or_else(|| base_core::crd::DEFAULT_GATEWAY_NAME.into());
        observed.gateway = match dynamic(ctx, &gw_ns, GATEWAY_API_VERSION, GATEWAY_KIND)
            .get_opt(&gw_name)
            .await
        {
            Ok(Some(gw)) => GatewayView::Found(serde_json::to_value(&gw).map_err(Error::Json)?),
            Ok(None) => GatewayView::Missing,
            Err(e) if is_not_found(&e) => GatewayView::Missing,
            Err(e) => return Err(Error::Kube(e)),
        };
    }
    Ok((observed, pods))
}

/// 32 random bytes, hex: the HMAC key of a new peer-key Secret.
fn fresh_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Performs a plan's writes, in the one order `Plan::writes` gives (the simulation performs the
/// same list): each one counted, none issued when the plan is a no-op, the first that fails ends
/// the pass (the next reconcile plans again from what was written).
pub async fn perform(ctx: &Context, kind: Kind, base: &Base, plan: &Plan) -> Result<(), Error> {
    for write in plan.writes() {
        perform_one(ctx, kind, base, write).await?;
    }
    Ok(())
}

/// A merge patch of one pod; false when the pod is gone (it needs nothing more then).
async fn patch_pod(ctx: &Context, pods: &Api<Pod>, pod: &str, patch: Value) -> Result<bool, Error> {
    ctx.metrics.write("patch", "Pod");
    match pods
        .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::Kube(e)),
    }
}

async fn perform_one(
    ctx: &Context,
    kind: Kind,
    base: &Base,
    write: Write<'_>,
) -> Result<(), Error> {
    let ns = base.namespace().unwrap_or_else(|| "default".into());
    let name = base.name_any();
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let base_api = || {
        let ar = resource(
            &format!("{}/{}", base_core::crd::GROUP, base_core::crd::VERSION),
            kind.as_str(),
        );
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &ar)
    };
    match write {
        Write::Create(obj) => {
            let api = dynamic(ctx, &ns, &obj.api_version, &obj.kind);
            let new: DynamicObject =
                serde_json::from_value(obj.body.clone()).map_err(Error::Json)?;
            ctx.metrics.write("create", &obj.kind);
            match api.create(&kube::api::PostParams::default(), &new).await {
                Ok(_) => info!(base = %name, kind = %obj.kind, object = %obj.name, "created"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
            ctx.remember_peer_key(base);
        }
        Write::Apply(obj) => {
            let api = dynamic(ctx, &ns, &obj.api_version, &obj.kind);
            ctx.metrics.write("apply", &obj.kind);
            match api.patch(&obj.name, &ssa, &Patch::Apply(&obj.body)).await {
                Ok(_) => info!(base = %name, kind = %obj.kind, object = %obj.name, "applied"),
                Err(e) if obj.kind == "ServiceMonitor" && is_not_found(&e) => {
                    warn!(base = %name, "ServiceMonitor CRD is not installed; skipping the ServiceMonitor")
                }
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        Write::Label(l) => {
            let value = if l.writer {
                json!(ROLE_WRITER)
            } else {
                Value::Null
            };
            let patch = json!({"metadata": {"labels": {LABEL_ROLE: value}}});
            patch_pod(ctx, &pods, &l.pod, patch).await?;
        }
        Write::Fence(f) => {
            let value = if f.fenced { json!("true") } else { Value::Null };
            let patch = json!({"metadata": {"annotations": {ANNOTATION_POD_FENCED: value}}});
            if patch_pod(ctx, &pods, &f.pod, patch).await? {
                info!(base = %name, pod = %f.pod, fenced = f.fenced, "fencing changed");
            }
        }
        // The desired members reach the agents through their downward-API file, as the fence
        // does: no pod restarts for a membership change.
        Write::Members(m) => {
            let patch = json!({"metadata": {"annotations": {ANNOTATION_MEMBERS: m.value}}});
            if patch_pod(ctx, &pods, &m.pod, patch).await? {
                info!(base = %name, pod = %m.pod, members = %m.value, "desired members published");
            }
        }
        Write::ClearAnnotations(keys) => {
            let cleared: serde_json::Map<String, Value> =
                keys.iter().map(|a| (a.clone(), Value::Null)).collect();
            ctx.metrics.write("patch", kind.as_str());
            base_api()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": cleared, "resourceVersion": base.resource_version()}})),
                )
                .await?;
        }
        // A transfer is asked by annotating the writer's pod, as fencing is: the agent reads it
        // from its downward-API file. No port of the agent moves the writer (base_core::control).
        Write::Transfer(t) => {
            let value = t.request.to_annotation();
            let patch = json!({"metadata": {"annotations": {ANNOTATION_TRANSFER: value}}});
            if patch_pod(ctx, &pods, &t.pod, patch).await? {
                info!(base = %name, from = %t.pod, to = %t.request.to, term = t.request.term,
                    at = t.request.at, by = %t.request.by, "asked the writer to transfer (pod annotation)");
            }
        }
        Write::Gateway(gw) => {
            let api = dynamic(ctx, &gw.namespace, GATEWAY_API_VERSION, GATEWAY_KIND);
            ctx.metrics.write("patch", "Gateway");
            api.patch(
                &gw.name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"resourceVersion": gw.resource_version},
                    "spec": {"routes": gw.routes},
                })),
            )
            .await?;
        }
        Write::Delete(key) => {
            let api_version = match key.kind.as_str() {
                "PodDisruptionBudget" => ctx.config.pdb_api_version.as_str(),
                "NetworkPolicy" => "networking.k8s.io/v1",
                "ServiceMonitor" => "monitoring.coreos.com/v1",
                "StatefulSet" => "apps/v1",
                _ => "v1",
            };
            ctx.metrics.write("delete", &key.kind);
            match dynamic(ctx, &ns, api_version, &key.kind)
                .delete(&key.name, &DeleteParams::default())
                .await
            {
                Ok(_) => info!(base = %name, kind = %key.kind, object = %key.name, "deleted"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        Write::Status(status) => {
            let body = json!({
                "apiVersion": format!("{}/{}", base_core::crd::GROUP, base_core::crd::VERSION),
                "kind": kind.as_str(),
                "status": status,
            });
            ctx.metrics.write("apply-status", kind.as_str());
            base_api()
                .patch_status(&name, &ssa, &Patch::Apply(&body))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_statefulset_among_owned_kinds_is_listed_consistently() {
        let lp = ListParams::default().labels("hanzo.ai/base=b");
        for (_, kind) in owned_kinds("policy/v1") {
            let p = list_params_for(kind, &lp);
            assert_eq!(p.label_selector, lp.label_selector, "{kind}");
            if kind == "StatefulSet" {
                assert_eq!(p, lp, "{kind} must be read from etcd");
            } else {
                assert_eq!(p.resource_version.as_deref(), Some("0"), "{kind}");
            }
        }
    }
}
