//! Operations a user asks for through annotations on the Base: switchover (hand the writer role to
//! a named replica) and fencing (a replica accepts no writes and does not stand for election).
//!
//! - `hanzo.ai/switchover-to: <pod>`: the operator asks the writer to transfer to `<pod>`, reports
//!   progress in the `Switchover` condition, and removes the annotation once the pod is writer
//!   (`Done`) or when it refuses (`Refused`: not a pod of this Base, not ready, fenced, or the writer
//!   did not hand over within `SWITCHOVER_TIMEOUT_MS`, e.g. because the target is not up to date).
//! - `hanzo.ai/fenced-instances: ["<pod>", ...]` (or `["*"]`): those pods get the annotation
//!   `hanzo.ai/fenced: "true"`, which their agent reads; reads continue, writes and candidacy stop.

use super::objects::{ANNOTATION_FENCED_INSTANCES, ANNOTATION_SWITCHOVER_TO, pod_name};
use super::{PodView, Transfer, WriterView};
use crate::crd::Base;
use crate::ids::Millis;
use std::collections::BTreeSet;

/// How long a switchover may wait for the writer to hand over before it is refused.
pub const SWITCHOVER_TIMEOUT_MS: u64 = 60_000;

/// Which replicas are fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    None,
    All,
    Some(BTreeSet<String>),
}

impl Fenced {
    pub fn contains(&self, pod: &str) -> bool {
        match self {
            Fenced::None => false,
            Fenced::All => true,
            Fenced::Some(set) => set.contains(pod),
        }
    }
}

/// Reads `hanzo.ai/fenced-instances`. A value that is not a JSON list of strings is an error
/// (reported to the user) and fences nothing new: the pods keep the fencing they have.
pub fn fenced(base: &Base) -> Result<Fenced, String> {
    let Some(raw) = base
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_FENCED_INSTANCES))
    else {
        return Ok(Fenced::None);
    };
    let list: Vec<String> = serde_json::from_str(raw).map_err(|e| {
        format!("annotation {ANNOTATION_FENCED_INSTANCES}: {raw:?} is not a JSON list of pod names ({e})")
    })?;
    if list.iter().any(|p| p == "*") {
        return Ok(Fenced::All);
    }
    Ok(if list.is_empty() {
        Fenced::None
    } else {
        Fenced::Some(list.into_iter().collect())
    })
}

/// The state of a requested switchover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switchover {
    /// Ask the writer to transfer (again: the request is idempotent).
    InProgress {
        transfer: Option<Transfer>,
        message: String,
    },
    Done(String),
    Refused(String),
}

/// The pod `hanzo.ai/switchover-to` names, if any.
pub fn switchover_target(base: &Base) -> Option<String> {
    let target = base
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_SWITCHOVER_TO)?;
    Some(target.trim().to_string())
}

/// Decides a switchover requested by `hanzo.ai/switchover-to`. `started` is when the request
/// for this same target began (`status.switchover`), `None` for a new request: a retarget is
/// a new request.
pub fn switchover(
    base: &Base,
    replicas: i32,
    pods: &[PodView],
    writer: Option<&WriterView>,
    fenced: &Fenced,
    started: Option<Millis>,
    now: Millis,
) -> Option<Switchover> {
    let target = switchover_target(base)?;
    let name = base.metadata.name.as_deref().unwrap_or_default();
    if !(0..replicas).any(|i| pod_name(name, i) == target) {
        return Some(Switchover::Refused(format!(
            "{target:?} is not a replica of {name}"
        )));
    }
    if fenced.contains(&target) {
        return Some(Switchover::Refused(format!("{target} is fenced")));
    }
    match pods.iter().find(|p| p.name == target) {
        Some(p) if p.ready && !p.terminating => {}
        _ => return Some(Switchover::Refused(format!("{target} is not ready"))),
    }
    if let Some(w) = writer.filter(|w| w.pod == target) {
        // `started` is stored with second precision: an answer from the second after it is
        // certainly later than the request. An older one may predate a hand-over.
        return Some(match started {
            Some(t0) if w.confirmed_at >= t0.saturating_add(Millis(1_000)) => {
                Switchover::Done(format!("{target} is the writer"))
            }
            _ => Switchover::InProgress {
                transfer: None,
                message: format!(
                    "{target} was the writer when last polled; waiting for it to confirm"
                ),
            },
        });
    }
    if let Some(t0) = started
        && now.saturating_sub(t0).0 > SWITCHOVER_TIMEOUT_MS
    {
        return Some(Switchover::Refused(format!(
            "the writer did not hand over to {target} within {}s (is {target} up to date?)",
            SWITCHOVER_TIMEOUT_MS / 1000
        )));
    }
    Some(match writer {
        Some(w) => Switchover::InProgress {
            transfer: Some(Transfer {
                from: w.pod.clone(),
                to: target.clone(),
            }),
            message: format!("asked {} to hand the writer role to {target}", w.pod),
        },
        None => Switchover::InProgress {
            transfer: None,
            message: format!("waiting for a writer to hand over to {target}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BaseSpec;
    use std::collections::BTreeMap;

    fn base(annotations: &[(&str, &str)]) -> Base {
        let spec: BaseSpec = serde_json::from_value(
            serde_json::json!({"image": {"repository": "x"}, "storage": {"size": "1Gi"}}),
        )
        .unwrap();
        let mut b = Base::new("a", spec);
        b.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        b
    }

    fn pods() -> Vec<PodView> {
        (0..3)
            .map(|i| PodView {
                name: format!("a-{i}"),
                ready: true,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn fencing_annotation() {
        assert_eq!(fenced(&base(&[])), Ok(Fenced::None));
        assert_eq!(
            fenced(&base(&[(ANNOTATION_FENCED_INSTANCES, r#"["*"]"#)])),
            Ok(Fenced::All)
        );
        let f = fenced(&base(&[(ANNOTATION_FENCED_INSTANCES, r#"["a-1"]"#)])).unwrap();
        assert!(f.contains("a-1") && !f.contains("a-0"));
        assert!(fenced(&base(&[(ANNOTATION_FENCED_INSTANCES, "a-1")])).is_err());
    }

    #[test]
    fn switchover_states() {
        let w = WriterView {
            pod: "a-0".into(),
            term: 2,
            confirmed_at: Millis(0),
        };
        let b = base(&[(ANNOTATION_SWITCHOVER_TO, "a-2")]);
        let s = switchover(&b, 3, &pods(), Some(&w), &Fenced::None, None, Millis(0)).unwrap();
        assert!(
            matches!(s, Switchover::InProgress { transfer: Some(ref t), .. } if t.from == "a-0" && t.to == "a-2")
        );
        // The target is the writer: done only on its own answer from after the request (the
        // second after the one the request was first seen in); an older answer may predate a
        // hand-over it made since.
        let w2 = WriterView {
            pod: "a-2".into(),
            term: 3,
            confirmed_at: Millis(10_500),
        };
        let first_seen = switchover(
            &b,
            3,
            &pods(),
            Some(&w2),
            &Fenced::None,
            None,
            Millis(10_000),
        );
        assert!(matches!(
            first_seen,
            Some(Switchover::InProgress { transfer: None, .. })
        ));
        let started = Some(Millis(10_000));
        assert!(matches!(
            switchover(
                &b,
                3,
                &pods(),
                Some(&w2),
                &Fenced::None,
                started,
                Millis(10_600)
            ),
            Some(Switchover::InProgress { transfer: None, .. })
        ));
        let fresh = WriterView {
            confirmed_at: Millis(11_000),
            ..w2.clone()
        };
        assert!(matches!(
            switchover(
                &b,
                3,
                &pods(),
                Some(&fresh),
                &Fenced::None,
                started,
                Millis(11_000)
            ),
            Some(Switchover::Done(_))
        ));
        let late = switchover(
            &b,
            3,
            &pods(),
            Some(&w),
            &Fenced::None,
            Some(Millis(0)),
            Millis(SWITCHOVER_TIMEOUT_MS + 1),
        );
        assert!(matches!(late, Some(Switchover::Refused(_))));
        let bad = base(&[(ANNOTATION_SWITCHOVER_TO, "b-1")]);
        assert!(matches!(
            switchover(&bad, 3, &pods(), Some(&w), &Fenced::None, None, Millis(0)),
            Some(Switchover::Refused(_))
        ));
        let fenced_target = Fenced::Some(["a-2".to_string()].into());
        assert!(matches!(
            switchover(&b, 3, &pods(), Some(&w), &fenced_target, None, Millis(0)),
            Some(Switchover::Refused(_))
        ));
        let mut not_ready = pods();
        not_ready[2].ready = false;
        assert!(matches!(
            switchover(&b, 3, &not_ready, Some(&w), &Fenced::None, None, Millis(0)),
            Some(Switchover::Refused(_))
        ));
        assert_eq!(
            switchover(
                &base(&[]),
                3,
                &pods(),
                Some(&w),
                &Fenced::None,
                None,
                Millis(0)
            ),
            None
        );
    }
}
