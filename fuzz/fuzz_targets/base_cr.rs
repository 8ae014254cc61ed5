//! `base_cr`: a Base (or BaseApp) manifest from untrusted text, through `manifest::parse` (YAML),
//! `manifest::from_value` (JSON), `validate` and `plan`.
//!
//! Input: the manifest text; if it holds a NUL byte, the bytes after the first NUL describe (through
//! `arbitrary`) what the adapter observed in the cluster, so the rollout, PVC and Gateway code runs
//! on hostile observations too. Seeds are plain manifests (no NUL).
//!
//! Checked: nothing panics; an accepted spec plans objects that serialise to JSON, whose names are
//! valid DNS-1123 subdomains (≤ 253) and, for Services and the StatefulSet, DNS-1123 labels (≤ 63),
//! whose labels are valid label values; re-planning against the objects just planned writes nothing;
//! a spec that round-trips through JSON is read back equal.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base_core::control::TransferRequest;
use base_core::crd::{Base, Kind};
use base_core::manifest;
use base_core::reconcile::{GatewayView, ObjectKey, Observed, PodView, WriterView, plan_for};
use base_core::validate::{check_dns_label, check_dns_subdomain, validate};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let (doc, observed) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    // As JSON first (bytes straight to a Value), then as YAML text.
    if let Ok(v) = serde_json::from_slice::<Value>(doc)
        && let Ok((kind, base)) = manifest::from_value(v)
    {
        check(kind, &base, observed);
    }
    if let Ok(text) = std::str::from_utf8(doc)
        && let Ok((kind, base)) = manifest::parse(text)
    {
        check(kind, &base, observed);
    }
});

fn check(kind: Kind, base: &Base, observed: Option<&[u8]>) {
    let name = base.metadata.name.clone().unwrap_or_default();
    let valid = validate(&name, &base.spec);

    // What was read serialises, and reads back the same.
    let text = serde_json::to_value(base).expect("a parsed Base serialises");
    match manifest::from_value(text) {
        Ok((kind2, base2)) => {
            assert_eq!(kind2, Kind::Base);
            assert_eq!(
                base2.spec, base.spec,
                "spec changed through a JSON round trip"
            );
        }
        Err(e) => panic!("a parsed Base does not read back from its own JSON: {e}"),
    }

    // A fresh world: nothing observed.
    let empty = Observed::default();
    let plan = plan_for(kind, base, &empty);
    let deleting = base.metadata.deletion_timestamp.is_some();
    match (&valid, deleting) {
        (_, true) => assert!(plan.desired.is_empty()),
        (Err(e), false) => {
            assert_eq!(plan.invalid.as_ref(), Some(e));
            assert!(plan.desired.is_empty() && plan.apply_ix.is_empty());
        }
        (Ok(_), false) => {
            assert!(plan.invalid.is_none());
            assert!(!plan.desired.is_empty());
            check_objects(&plan.desired);
            // Everything is new in an empty world...
            assert_eq!(plan.apply().len(), plan.desired.len());
            // ...and once it is all there, nothing is written again.
            let mut world = Observed::default();
            for o in &plan.desired {
                world.insert(o);
            }
            let again = plan_for(kind, base, &world);
            assert!(
                again.apply_ix.is_empty(),
                "re-planning an unchanged world writes {:?}",
                again.apply().map(|o| o.key()).collect::<Vec<_>>()
            );
            assert!(again.delete.is_empty());
            assert_eq!(again.desired, plan.desired);
        }
    }

    // A hostile world.
    if let Some(bytes) = observed {
        let mut u = Unstructured::new(bytes);
        if let Ok(world) = World::arbitrary(&mut u) {
            let obs = world.observed(&name, &plan.desired);
            let p = plan_for(kind, base, &obs);
            if valid.is_ok() && !deleting {
                check_objects(&p.desired);
                // What is written is a subset of `desired`, each object once.
                assert!(p.apply_ix.windows(2).all(|w| w[0] < w[1]));
                assert!(p.apply_ix.iter().all(|&i| i < p.desired.len()));
                // The StatefulSet moves from what is there towards the spec, never past it, and
                // an odd count stays odd.
                let replicas = |body: Option<&Value>| {
                    body.and_then(|b| b.pointer("/spec/replicas"))
                        .and_then(Value::as_i64)
                };
                let spec = i64::from(base.spec.replicas);
                // (Nothing is planned when another controller owns the StatefulSet.)
                let planned = p
                    .desired
                    .iter()
                    .find(|o| o.kind == "StatefulSet")
                    .map(|o| &o.body);
                match (
                    planned,
                    obs.objects.get(&ObjectKey::new("StatefulSet", &name)),
                ) {
                    (None, _) => assert!(p.desired.is_empty()),
                    (Some(planned), None) => assert_eq!(replicas(Some(planned)), Some(spec)),
                    (Some(planned), Some(sts)) => {
                        let planned = replicas(Some(planned)).expect("a StatefulSet with replicas");
                        let seen = replicas(Some(sts)).unwrap_or(1);
                        assert!(
                            seen.min(spec) <= planned && planned <= seen.max(spec),
                            "StatefulSet {seen} replicas, spec {spec}, planned {planned}"
                        );
                        if seen % 2 == 1 {
                            assert!(planned % 2 == 1, "from {seen} to {planned} replicas");
                        }
                    }
                }
            }
            if base.spec.storage.retention() == base_core::crd::RetentionPolicy::Retain {
                assert!(p.delete.iter().all(|k| k.kind != "PersistentVolumeClaim"));
            }
            for l in &p.relabel {
                assert!(obs.pods.iter().any(|pod| pod.name == l.pod));
            }
            let labelled: Vec<_> = p.relabel.iter().filter(|l| l.writer).collect();
            assert!(labelled.len() <= 1, "two pods labelled writer in one plan");
        }
    }
}

fn check_objects(objects: &[base_core::reconcile::Object]) {
    for o in objects {
        serde_json::to_string(o).expect("a planned object serialises");
        let body = serde_json::to_vec(&o.body).expect("a planned body serialises");
        let back: Value = serde_json::from_slice(&body).expect("a planned body reads back");
        assert_eq!(back, o.body);
        assert_eq!(o.body["kind"], o.kind.as_str());
        assert_eq!(o.body["apiVersion"], o.api_version.as_str());
        assert_eq!(
            o.body.pointer("/metadata/name").and_then(Value::as_str),
            Some(o.name.as_str()),
            "{} name in body and key differ",
            o.kind
        );
        // A namespace is an RFC 1123 label (it may start with a digit).
        assert!(
            o.namespace.len() <= 63
                && !o.namespace.contains('.')
                && check_dns_subdomain(&o.namespace).is_ok(),
            "{} {:?} in namespace {:?}",
            o.kind,
            o.name,
            o.namespace
        );
        if let Err(e) = check_dns_subdomain(&o.name) {
            panic!("{} {:?}: {e}", o.kind, o.name);
        }
        if matches!(o.kind.as_str(), "Service" | "StatefulSet")
            && let Err(e) = check_dns_label(&o.name, 63)
        {
            panic!("{} {:?}: {e}", o.kind, o.name);
        }
        for path in ["/metadata/labels", "/spec/template/metadata/labels"] {
            if let Some(labels) = o.body.pointer(path).and_then(Value::as_object) {
                for (k, v) in labels {
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("label {k} not a string"));
                    assert!(
                        is_label_value(v),
                        "{} label {k}={v:?} is not a label value",
                        o.kind
                    );
                }
            }
        }
        if o.kind == "StatefulSet" {
            // Pod names `<name>-<ordinal>` and the revision label `<name>-<hash>` stay labels.
            assert!(o.name.len() + 11 <= 63);
        }
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// What the adapter could have seen, in small numbers so that names line up with the Base's.
#[derive(Arbitrary, Debug)]
struct World {
    sts: Option<Sts>,
    pods: Vec<Pod>,
    pvcs: Vec<(u8, bool)>,
    /// The writer: ordinal, term, and when it confirmed (ms, on the clock of `now`).
    writer: Option<(u8, u64, u32)>,
    gateway: Gw,
    /// Planned objects to pretend are present (by index), possibly tampered with.
    present: Vec<(u8, Tamper)>,
    now: u64,
}

#[derive(Arbitrary, Debug)]
struct Sts {
    /// The API server keeps these in 0..=i32::MAX; small values line up with the pods.
    replicas: Option<u8>,
    ready: Option<u8>,
    update_revision: Option<u8>,
    generation: Option<i64>,
    observed_generation: Option<i64>,
    foreign_owner: bool,
}

#[derive(Arbitrary, Debug)]
struct Pod {
    ordinal: u8,
    /// Not one of ours: a name that only resembles the Base's.
    odd_name: Option<String>,
    ready: bool,
    revision: Option<u8>,
    terminating: bool,
    writer_label: bool,
    fenced: bool,
    /// A pending `hanzo.ai/transfer-to` request: (target ordinal, term, at in seconds).
    transfer: Option<(u8, u8, u16)>,
}

#[derive(Arbitrary, Debug)]
enum Gw {
    NotLooked,
    Missing,
    Found(Vec<(Option<String>, Option<String>)>),
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    AsIs,
    Replicas(u8),
    DropSpec,
    Null,
}

impl World {
    fn observed(&self, name: &str, planned: &[base_core::reconcile::Object]) -> Observed {
        let mut obs = Observed {
            now: base_core::Millis(self.now),
            ..Default::default()
        };
        let ord = |o: u8| i32::from(o % 12);
        for (i, tamper) in &self.present {
            let Some(o) = planned.get(usize::from(*i) % planned.len().max(1)) else {
                continue;
            };
            let mut body = o.body.clone();
            match tamper {
                Tamper::AsIs => {}
                Tamper::Replicas(r) => body["spec"]["replicas"] = json!(r % 16),
                Tamper::DropSpec => {
                    if let Some(m) = body.as_object_mut() {
                        m.remove("spec");
                    }
                }
                Tamper::Null => body = Value::Null,
            }
            obs.objects.insert(o.key(), body);
        }
        if let Some(s) = &self.sts {
            let mut sts = obs
                .objects
                .get(&ObjectKey::new("StatefulSet", name))
                .cloned()
                .unwrap_or_else(|| json!({"metadata": {"name": name}}));
            if !sts.is_object() {
                sts = json!({});
            }
            if let Some(r) = s.replicas {
                sts["spec"]["replicas"] = json!(r % 16);
            }
            if let Some(r) = s.ready {
                sts["status"]["readyReplicas"] = json!(r % 16);
            }
            if let Some(r) = s.update_revision {
                sts["status"]["updateRevision"] = json!(format!("{name}-rev{}", r % 3));
            }
            if let Some(g) = s.generation {
                sts["metadata"]["generation"] = json!(g);
            }
            if let Some(g) = s.observed_generation {
                sts["status"]["observedGeneration"] = json!(g);
            }
            if s.foreign_owner {
                sts["metadata"]["ownerReferences"] =
                    json!([{"kind": "Other", "name": "x", "uid": "not-ours", "controller": true}]);
            }
            obs.objects.insert(ObjectKey::new("StatefulSet", name), sts);
        }
        // Pod names are unique in a namespace: the first of each name is kept.
        let mut names = std::collections::BTreeSet::new();
        obs.pods = self
            .pods
            .iter()
            .map(|p| PodView {
                name: p
                    .odd_name
                    .clone()
                    .unwrap_or_else(|| format!("{name}-{}", ord(p.ordinal))),
                ready: p.ready,
                revision: p.revision.map(|r| format!("{name}-rev{}", r % 3)),
                terminating: p.terminating,
                writer_label: p.writer_label,
                fenced: p.fenced,
                transfer: p.transfer.map(|(to, term, at)| TransferRequest {
                    to: format!("{name}-{}", ord(to)),
                    term: u64::from(term),
                    at: u64::from(at) * 1000,
                    by: "fuzz".into(),
                }),
                // The members annotation as the operator last wrote it: absent, so every plan
                // publishes it (the rollout's membership gate is covered by core's own tests).
                members: None,
            })
            .filter(|p| names.insert(p.name.clone()))
            .collect();
        obs.pvcs = self
            .pvcs
            .iter()
            .map(|&(o, ours)| {
                if ours {
                    format!("data-{name}-{}", ord(o))
                } else {
                    format!("data-{name}x-{}", ord(o))
                }
            })
            .collect();
        obs.writer = self.writer.map(|(o, term, confirmed_at)| WriterView {
            pod: format!("{name}-{}", ord(o)),
            term,
            confirmed_at: base_core::Millis(u64::from(confirmed_at)),
        });
        obs.gateway = match &self.gateway {
            Gw::NotLooked => GatewayView::NotLooked,
            Gw::Missing => GatewayView::Missing,
            Gw::Found(routes) => {
                let routes: Vec<Value> = routes
                    .iter()
                    .map(|(prefix, owner)| json!({"prefix": prefix, "owner": owner}))
                    .collect();
                GatewayView::Found(json!({"spec": {"routes": routes}}))
            }
            Gw::Garbage(s) => GatewayView::Found(json!({"spec": {"routes": s}})),
        };
        obs
    }
}
