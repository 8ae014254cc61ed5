//! Scale steps and writer-last rolling updates, decided from what was observed.
//!
//! Members (issue 18): the voters are the election's own configuration, and the operator only
//! publishes the desired members (`hanzo.ai/members`, [`RolloutStep::members`]); the writer
//! carries them out by joint consensus and reports its configuration. Once a writer has ever
//! reported one, every disruptive step waits for it to be settled on the current members (simple,
//! committed, no learner, every removed member told): a scale-up publishes the new members with
//! the new replicas; a scale-down publishes the smaller set first and lowers the StatefulSet's
//! replicas (deleting the pods) only once the writer reports the departing members out. Before
//! any configuration was reported (agents that report none), members follow the StatefulSet as
//! they did before, and the steps wait on readiness alone.
//!
//! The StatefulSet uses `OnDelete`, so pods change only when the operator deletes them:
//! broken (not ready) outdated pods first, since they hold no quorum; then ready followers, one at a
//! time and only while every pod is ready; then the writer, after handing its role to an updated
//! follower. Scale changes move two replicas at a time (counts stay odd), wait for readiness between
//! steps, and hand the writer role away before its ordinal is removed. The role never goes to a
//! fenced pod: with only fenced candidates, the rollout waits.

use super::operations::Fenced;
use super::{PodView, StsView};
use crate::wire::ConfigurationReport;

/// What the plan knows of the writer's voting configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Configuration<'a> {
    /// No writer ever reported one (agents that do not): steps wait on readiness alone.
    Legacy,
    /// One was reported before, but the writer (or its report) is not known now: wait.
    Unknown,
    /// The live writer's report.
    Reported(&'a ConfigurationReport),
}

/// What the rollout wants done now. At most one disruptive step per plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutStep {
    /// `spec.replicas` of the StatefulSet to apply now.
    pub replicas: i32,
    /// A pod to delete so the StatefulSet recreates it from the new template.
    pub delete_pod: Option<String>,
    /// Ask the writer `from` to hand its role to `to` before it is restarted or removed.
    pub transfer: Option<(String, String)>,
    /// Pods still on an old revision (for status).
    pub outdated: usize,
    /// The desired members to publish: the ordinals below this.
    pub members: i32,
}

fn names(base: &str, n: i32) -> Vec<String> {
    (0..n.max(0)).map(|i| format!("{base}-{i}")).collect()
}

/// Do the pods' annotations already publish exactly the ordinals below `n`?
fn published(base: &str, pods: &[PodView], n: i32) -> bool {
    let want: std::collections::BTreeSet<String> = names(base, n).into_iter().collect();
    pods.iter().any(|p| {
        p.members
            .as_deref()
            .and_then(|v| crate::members::MembersAnnotation::parse(v).ok())
            .is_some_and(|a| a.voters == want)
    })
}

pub(super) fn ordinal(base: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(base)?.strip_prefix('-')?.parse().ok()
}

pub(super) fn decide(
    base: &str,
    spec_replicas: i32,
    sts: Option<&StsView>,
    pods: &[PodView],
    writer: Option<&str>,
    fenced: &Fenced,
    configuration: Configuration<'_>,
) -> RolloutStep {
    let mut step = decide_replicas(
        base,
        spec_replicas,
        sts,
        pods,
        writer,
        fenced,
        configuration,
    );
    if configuration == Configuration::Legacy {
        step.members = step.replicas;
    }
    step
}

fn decide_replicas(
    base: &str,
    spec_replicas: i32,
    sts: Option<&StsView>,
    pods: &[PodView],
    writer: Option<&str>,
    fenced: &Fenced,
    configuration: Configuration<'_>,
) -> RolloutStep {
    let Some(sts) = sts else {
        return RolloutStep {
            replicas: spec_replicas,
            members: spec_replicas,
            ..Default::default()
        };
    };
    let current = sts.replicas;
    let ours: Vec<&PodView> = pods
        .iter()
        .filter(|p| ordinal(base, &p.name).is_some_and(|o| o < current))
        .collect();
    let settled = sts.generation_observed
        && ours.len() == current as usize
        && ours.iter().all(|p| p.ready && !p.terminating);
    // A fenced pod refuses the writer role (`TimeoutNow`): never the target of a transfer. Fenced
    // by the Base's list or still by its own annotation (the list may be unparsable, or lag).
    let may_lead = |p: &PodView| !p.fenced && !fenced.contains(&p.name);
    // The writer's configuration is settled on the ordinals below `n`.
    let config_on = |n: i32| match configuration {
        Configuration::Legacy => true,
        Configuration::Unknown => false,
        Configuration::Reported(c) => c.is_settled_on(&names(base, n)),
    };
    let members_mode = configuration != Configuration::Legacy;
    let shrink_to = (current - 2).max(spec_replicas);
    // A scale-down whose smaller member set is published already goes on whatever else holds:
    // taking it back mid-change would only make the writer change again.
    let shrinking = members_mode
        && spec_replicas < current
        && (published(base, pods, shrink_to)
            || (settled && config_on(current) && writer.is_some()));
    let mut step = RolloutStep {
        replicas: current,
        members: if shrinking { shrink_to } else { current },
        ..Default::default()
    };
    if shrinking {
        // The writer removes the departing members through C(old, new) (handing over first if
        // it is one of them); their pods go only once it reports them out.
        if config_on(shrink_to) {
            step.replicas = shrink_to;
        }
        return step;
    }
    let outdated: Vec<&PodView> = match &sts.update_revision {
        Some(rev) if sts.generation_observed => ours
            .iter()
            .copied()
            .filter(|p| p.revision.as_deref() != Some(rev.as_str()))
            .collect(),
        _ => Vec::new(),
    };
    step.outdated = outdated.len();

    // A broken outdated pod holds no quorum: replacing it can only help, even mid-disruption.
    if let Some(p) = outdated
        .iter()
        .filter(|p| !p.ready && !p.terminating)
        .max_by_key(|p| ordinal(base, &p.name))
    {
        step.delete_pod = Some(p.name.clone());
        return step;
    }
    if !settled || !config_on(current) {
        return step;
    }

    if current != spec_replicas {
        let next = if spec_replicas > current {
            (current + 2).min(spec_replicas)
        } else {
            (current - 2).max(spec_replicas)
        };
        // The StatefulSet removes the highest ordinals: move the writer off them first.
        if let Some(w) = writer
            && ordinal(base, w).is_some_and(|o| o >= next)
        {
            if let Some(to) = ours
                .iter()
                .filter(|p| ordinal(base, &p.name).is_some_and(|o| o < next) && may_lead(p))
                .min_by_key(|p| ordinal(base, &p.name))
            {
                step.transfer = Some((w.to_string(), to.name.clone()));
            }
            return step;
        }
        if next < current && writer.is_none() && current > 1 {
            return step; // never shrink while the writer is unknown: it may be on a removed ordinal
        }
        step.replicas = next;
        step.members = next;
        return step;
    }

    if outdated.is_empty() {
        return step;
    }
    if let Some(p) = outdated
        .iter()
        .filter(|p| Some(p.name.as_str()) != writer)
        .max_by_key(|p| ordinal(base, &p.name))
    {
        step.delete_pod = Some(p.name.clone());
        return step;
    }
    // Only the writer is left on the old revision.
    match writer {
        Some(w) if current > 1 => {
            let updated = ours
                .iter()
                .filter(|p| p.name != w && !outdated.iter().any(|o| o.name == p.name))
                .filter(|p| may_lead(p))
                .min_by_key(|p| ordinal(base, &p.name));
            if let Some(to) = updated {
                step.transfer = Some((w.to_string(), to.name.clone()));
            }
        }
        _ if current == 1 => step.delete_pod = outdated.first().map(|p| p.name.clone()),
        _ => {} // writer unknown: wait for the election rather than guess
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: i32, rev: &str, ready: bool) -> PodView {
        PodView {
            name: format!("a-{i}"),
            ready,
            revision: Some(rev.into()),
            terminating: false,
            writer_label: false,
            fenced: false,
            transfer: None,
            members: None,
        }
    }

    fn sts(replicas: i32) -> StsView {
        StsView {
            replicas,
            ready_replicas: replicas,
            update_revision: Some("new".into()),
            generation_observed: true,
        }
    }

    #[test]
    fn followers_first_then_transfer_then_writer() {
        let pods = vec![
            pod(0, "old", true),
            pod(1, "old", true),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod.as_deref(), Some("a-1"));
        let pods = vec![
            pod(0, "old", true),
            pod(1, "new", true),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod.as_deref(), Some("a-0"));
        let pods = vec![
            pod(0, "new", true),
            pod(1, "new", true),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod, None);
        assert_eq!(s.transfer, Some(("a-2".into(), "a-0".into())));
        // After the transfer the old writer is a follower and is rolled like one.
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod.as_deref(), Some("a-2"));
    }

    #[test]
    fn waits_while_a_pod_is_not_ready() {
        let pods = vec![
            pod(0, "old", true),
            pod(1, "new", false),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod, None);
        // ...but a broken outdated pod is replaced at once.
        let pods = vec![
            pod(0, "old", true),
            pod(1, "old", false),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.delete_pod.as_deref(), Some("a-1"));
    }

    #[test]
    fn scales_two_at_a_time_and_moves_the_writer_off_removed_ordinals() {
        let pods: Vec<_> = (0..3).map(|i| pod(i, "new", true)).collect();
        assert_eq!(
            decide(
                "a",
                9,
                Some(&sts(3)),
                &pods,
                Some("a-0"),
                &Fenced::None,
                Configuration::Legacy
            )
            .replicas,
            5
        );
        let pods: Vec<_> = (0..7).map(|i| pod(i, "new", true)).collect();
        let s = decide(
            "a",
            3,
            Some(&sts(7)),
            &pods,
            Some("a-6"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.replicas, 7);
        assert_eq!(s.transfer, Some(("a-6".into(), "a-0".into())));
        let s = decide(
            "a",
            3,
            Some(&sts(7)),
            &pods,
            Some("a-1"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.replicas, 5);
    }

    #[test]
    fn never_hands_the_writer_role_to_a_fenced_pod() {
        let set = |names: &[&str]| Fenced::Some(names.iter().map(|n| n.to_string()).collect());
        let fence = |mut p: PodView| {
            p.fenced = true;
            p
        };
        // Rolling update, only the writer left on the old revision.
        let pods = vec![
            pod(0, "new", true),
            pod(1, "new", true),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &set(&["a-0"]),
            Configuration::Legacy,
        );
        assert_eq!(s.transfer, Some(("a-2".into(), "a-1".into())));
        // Fenced by the pod's own annotation (the Base's list may not parse, or lag behind).
        let fenced_pods = vec![
            fence(pod(0, "new", true)),
            pod(1, "new", true),
            pod(2, "old", true),
        ];
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &fenced_pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Legacy,
        );
        assert_eq!(s.transfer, Some(("a-2".into(), "a-1".into())));
        // Only fenced candidates: wait, and do not restart the writer either.
        for fenced in [set(&["a-0", "a-1"]), Fenced::All] {
            let s = decide(
                "a",
                3,
                Some(&sts(3)),
                &pods,
                Some("a-2"),
                &fenced,
                Configuration::Legacy,
            );
            assert_eq!((s.transfer, s.delete_pod), (None, None), "{fenced:?}");
        }
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &fenced_pods,
            Some("a-2"),
            &set(&["a-1"]),
            Configuration::Legacy,
        );
        assert_eq!((s.transfer, s.delete_pod), (None, None));

        // Scale down 7 -> 5: the writer on a removed ordinal moves to the lowest unfenced survivor.
        let pods: Vec<_> = (0..7).map(|i| pod(i, "new", true)).collect();
        let s = decide(
            "a",
            3,
            Some(&sts(7)),
            &pods,
            Some("a-6"),
            &set(&["a-0"]),
            Configuration::Legacy,
        );
        assert_eq!(s.transfer, Some(("a-6".into(), "a-1".into())));
        assert_eq!(s.replicas, 7);
        let s = decide(
            "a",
            3,
            Some(&sts(7)),
            &pods,
            Some("a-6"),
            &set(&["a-0", "a-1", "a-2", "a-3", "a-4"]),
            Configuration::Legacy,
        );
        assert_eq!((s.transfer, s.replicas), (None, 7));
        let s = decide(
            "a",
            3,
            Some(&sts(7)),
            &pods,
            Some("a-6"),
            &Fenced::All,
            Configuration::Legacy,
        );
        assert_eq!((s.transfer, s.replicas), (None, 7));
    }

    fn report(voters: &[i32], learners: &[i32], joint: bool, settled: bool) -> ConfigurationReport {
        ConfigurationReport {
            version: "2.1".into(),
            voters: voters.iter().map(|i| format!("a-{i}")).collect(),
            outgoing: if joint {
                vec!["a-0".into()]
            } else {
                Vec::new()
            },
            learners: learners.iter().map(|i| format!("a-{i}")).collect(),
            joint,
            settled,
        }
    }

    fn publishing(mut p: PodView, n: i32) -> PodView {
        p.members =
            Some(crate::members::MembersAnnotation::for_ordinals("a", n, None).to_annotation());
        p
    }

    /// With a writer that reports its configuration, a scale-up publishes the new members with
    /// the new replicas and takes the next step only once the writer is settled on them; no pod
    /// is restarted for it.
    #[test]
    fn scale_up_publishes_members_and_waits_for_the_configuration() {
        let pods: Vec<_> = (0..3).map(|i| pod(i, "new", true)).collect();
        let on3 = report(&[0, 1, 2], &[], false, true);
        let s = decide(
            "a",
            7,
            Some(&sts(3)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Reported(&on3),
        );
        assert_eq!((s.replicas, s.members, s.delete_pod), (5, 5, None));
        // Five pods ready, but the writer still has learners: no next step yet.
        let pods: Vec<_> = (0..5).map(|i| pod(i, "new", true)).collect();
        let learning = report(&[0, 1, 2], &[3, 4], false, false);
        let s = decide(
            "a",
            7,
            Some(&sts(5)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Reported(&learning),
        );
        assert_eq!((s.replicas, s.members), (5, 5));
        let on5 = report(&[0, 1, 2, 3, 4], &[], false, true);
        let s = decide(
            "a",
            7,
            Some(&sts(5)),
            &pods,
            Some("a-0"),
            &Fenced::None,
            Configuration::Reported(&on5),
        );
        assert_eq!((s.replicas, s.members), (7, 7));
        // A writer that is not known now, after one reported: wait.
        let s = decide(
            "a",
            7,
            Some(&sts(5)),
            &pods,
            None,
            &Fenced::None,
            Configuration::Unknown,
        );
        assert_eq!((s.replicas, s.members), (5, 5));
    }

    /// A scale-down publishes the smaller member set first and removes pods (lowers the
    /// StatefulSet's replicas) only once the writer reports the departing members out; once
    /// published it is not taken back, even while the change makes pods unready.
    #[test]
    fn scale_down_removes_pods_only_after_the_members_left() {
        let pods: Vec<_> = (0..5).map(|i| pod(i, "new", true)).collect();
        let on5 = report(&[0, 1, 2, 3, 4], &[], false, true);
        let s = decide(
            "a",
            3,
            Some(&sts(5)),
            &pods,
            Some("a-4"),
            &Fenced::None,
            Configuration::Reported(&on5),
        );
        assert_eq!((s.replicas, s.members, s.transfer), (5, 3, None));
        let mut pods: Vec<_> = pods.into_iter().map(|p| publishing(p, 3)).collect();
        pods[4].ready = false;
        let joint = report(&[0, 1, 2], &[], true, false);
        let s = decide(
            "a",
            3,
            Some(&sts(5)),
            &pods,
            Some("a-1"),
            &Fenced::None,
            Configuration::Reported(&joint),
        );
        assert_eq!((s.replicas, s.members), (5, 3));
        let s = decide(
            "a",
            3,
            Some(&sts(5)),
            &pods,
            None,
            &Fenced::None,
            Configuration::Unknown,
        );
        assert_eq!(
            (s.replicas, s.members),
            (5, 3),
            "not taken back while no writer is known"
        );
        let on3_not_told = report(&[0, 1, 2], &[], false, false);
        let s = decide(
            "a",
            3,
            Some(&sts(5)),
            &pods,
            Some("a-1"),
            &Fenced::None,
            Configuration::Reported(&on3_not_told),
        );
        assert_eq!(s.replicas, 5);
        let on3 = report(&[0, 1, 2], &[], false, true);
        let s = decide(
            "a",
            3,
            Some(&sts(5)),
            &pods,
            Some("a-1"),
            &Fenced::None,
            Configuration::Reported(&on3),
        );
        assert_eq!((s.replicas, s.members), (3, 3));
    }

    /// A rolling update deletes a pod only while the writer's configuration is settled on the
    /// members, not on readiness alone.
    #[test]
    fn rolling_waits_for_the_configuration() {
        let pods = vec![
            pod(0, "old", true),
            pod(1, "old", true),
            pod(2, "old", true),
        ];
        let moving = report(&[0, 1, 2], &[3], false, false);
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Reported(&moving),
        );
        assert_eq!(s.delete_pod, None);
        let on3 = report(&[0, 1, 2], &[], false, true);
        let s = decide(
            "a",
            3,
            Some(&sts(3)),
            &pods,
            Some("a-2"),
            &Fenced::None,
            Configuration::Reported(&on3),
        );
        assert_eq!((s.delete_pod.as_deref(), s.members), (Some("a-1"), 3));
    }
}
