//! How the desired members reach the pods without restarting them (issue 18): the operator
//! writes the pod annotation `hanzo.ai/members` on every pod; each agent reads it from the
//! downward-API annotations file it already reads for the fence, and feeds the election
//! ([`agent_inputs`]): `Input::SetMembers` (every node keeps it; the writer carries it out by joint
//! consensus), and, while the cluster is new, `Input::Bootstrap`.
//!
//! # Bootstrap or join, decided without a race
//! A pod cannot tell from its environment whether it is one of the cluster's initial members or
//! was added later: its ordinal says nothing once the cluster shrank below it and grew again (its
//! PVC deleted under `retentionPolicy: Delete`), and the annotation may reach the file after the
//! process started. So a node with no persisted configuration always starts with `Node::join`:
//! it holds none, never campaigns, and its vote counts nowhere. Then:
//! - while no writer has ever reported a configuration to the operator (`status.configuration`
//!   unset), the annotation carries `bootstrap`: the initial members, fixed as the ordinals below
//!   the StatefulSet's replicas (the rollout takes no scale step before a configuration is
//!   reported, so that set cannot change meanwhile). A joined node that finds itself in it takes
//!   the bootstrap configuration (version `0.0`, the same at every initial member) and persists
//!   it; from then on it never looks at its environment again;
//! - once a writer reported a configuration, `bootstrap` is gone for good (the operator keeps the
//!   last report in status), and a new or emptied pod stays joined until the writer, told the new
//!   members, sends it the configuration that makes it a learner.
//!
//! A late annotation only delays: a joined node does nothing until it has one. A pod that
//! persisted a configuration ignores `bootstrap`.

use crate::NodeId;
use crate::quasar::{CLUSTER_SIZE_MAX, Input, Node};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The pod annotation the operator writes and the agent reads.
pub const ANNOTATION_MEMBERS: &str = "hanzo.ai/members";

/// A larger annotation value is not read (fifteen pod names fit well within it).
pub const MAX_ANNOTATION_BYTES: usize = 4 * 1024;

/// The value of `hanzo.ai/members`, JSON: `{"voters":[…],"bootstrap":[…]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersAnnotation {
    /// The voters the operator wants.
    pub voters: BTreeSet<String>,
    /// The cluster's initial members, only while it has never reported a configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BTreeSet<String>>,
}

/// An annotation value that cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("hanzo.ai/members: {0} bytes, more than {MAX_ANNOTATION_BYTES}")]
    TooLarge(usize),
    #[error("hanzo.ai/members: not the JSON {{\"voters\":[…]}}: {0}")]
    Json(String),
    #[error("hanzo.ai/members: {field} is empty")]
    Empty { field: &'static str },
    #[error("hanzo.ai/members: {field} names an empty member")]
    EmptyId { field: &'static str },
    #[error("hanzo.ai/members: {field} has {count} members, more than {CLUSTER_SIZE_MAX}")]
    TooMany { field: &'static str, count: usize },
}

impl MembersAnnotation {
    /// The operator's value for a Base named `base` wanting the ordinals below `members`, and,
    /// while bootstrapping, the initial members: the ordinals below `bootstrap`.
    pub fn for_ordinals(base: &str, members: i32, bootstrap: Option<i32>) -> MembersAnnotation {
        let names = |n: i32| (0..n.max(0)).map(|i| format!("{base}-{i}")).collect();
        MembersAnnotation {
            voters: names(members),
            bootstrap: bootstrap.map(names),
        }
    }

    /// The annotation's text (canonical: the same set gives the same text, so an unchanged
    /// world writes nothing).
    pub fn to_annotation(&self) -> String {
        // Sets of strings always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads and checks an annotation value; bad input is an error, never a panic.
    pub fn parse(text: &str) -> Result<MembersAnnotation, MembersError> {
        if text.len() > MAX_ANNOTATION_BYTES {
            return Err(MembersError::TooLarge(text.len()));
        }
        let a: MembersAnnotation =
            serde_json::from_str(text).map_err(|e| MembersError::Json(e.to_string()))?;
        check("voters", &a.voters)?;
        if let Some(b) = &a.bootstrap {
            check("bootstrap", b)?;
        }
        Ok(a)
    }
}

fn check(field: &'static str, set: &BTreeSet<String>) -> Result<(), MembersError> {
    if set.is_empty() {
        return Err(MembersError::Empty { field });
    }
    if set.iter().any(|m| m.trim().is_empty()) {
        return Err(MembersError::EmptyId { field });
    }
    if set.len() > CLUSTER_SIZE_MAX {
        return Err(MembersError::TooMany {
            field,
            count: set.len(),
        });
    }
    Ok(())
}

fn ids(set: &BTreeSet<String>) -> BTreeSet<NodeId> {
    set.iter().map(|m| NodeId::new(m.as_str())).collect()
}

/// What the agent feeds its node for the annotation it read: `Bootstrap` for a node without a
/// configuration that is one of the initial members; `SetMembers` when the desired voters differ
/// from what the node was last told. Nothing when the annotation is absent or already applied,
/// so the agent can call this on every read of the file.
pub fn agent_inputs(annotation: Option<&MembersAnnotation>, node: &Node) -> Vec<Input> {
    let Some(a) = annotation else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if node.membership().is_none()
        && let Some(b) = &a.bootstrap
        && b.contains(node.id().as_str())
    {
        out.push(Input::Bootstrap(ids(b)));
    }
    let voters = ids(&a.voters);
    if node.target_members() != Some(&voters) {
        out.push(Input::SetMembers(voters));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Millis;
    use crate::quasar::{PersistedState, Timing};

    fn node(id: &str, join: bool) -> Node {
        let peers = ["b-0", "b-1", "b-2"]
            .into_iter()
            .filter(|p| *p != id)
            .map(NodeId::from)
            .collect();
        let start = if join { Node::join } else { Node::new };
        start(
            NodeId::from(id),
            peers,
            Timing::default(),
            PersistedState::default(),
            1,
            Millis(0),
        )
        .unwrap()
    }

    fn step_all(n: &mut Node, inputs: Vec<Input>) {
        for i in inputs {
            let _ = n.step(Millis(1), i);
        }
    }

    /// The text round-trips, is canonical, and leaves `bootstrap` out once the cluster is going.
    #[test]
    fn annotation_text() {
        let a = MembersAnnotation::for_ordinals("b", 3, Some(3));
        let text = a.to_annotation();
        assert_eq!(
            text,
            r#"{"voters":["b-0","b-1","b-2"],"bootstrap":["b-0","b-1","b-2"]}"#
        );
        assert_eq!(MembersAnnotation::parse(&text), Ok(a));
        let later = MembersAnnotation::for_ordinals("b", 5, None).to_annotation();
        assert!(!later.contains("bootstrap"), "{later}");
        for bad in [
            "",
            "{}",
            r#"{"voters":[]}"#,
            r#"{"voters":[""]}"#,
            r#"{"voters":["a"],"bootstrap":[]}"#,
            "not json",
        ] {
            assert!(MembersAnnotation::parse(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..16).map(|i| format!("\"n{i}\"")).collect();
        let many = format!(r#"{{"voters":[{}]}}"#, many.join(","));
        assert!(matches!(
            MembersAnnotation::parse(&many),
            Err(MembersError::TooMany { count: 16, .. })
        ));
        assert!(matches!(
            MembersAnnotation::parse(&"x".repeat(MAX_ANNOTATION_BYTES + 1)),
            Err(MembersError::TooLarge(_))
        ));
    }

    /// A joined node bootstraps only from `bootstrap`, only if it is in it, and only once; a
    /// node with a configuration never does; the desired voters are set once, then again only
    /// when they change.
    #[test]
    fn agent_inputs_bootstrap_or_join() {
        let first = MembersAnnotation::for_ordinals("b", 3, Some(3));
        let mut n = node("b-1", true);
        assert!(agent_inputs(None, &n).is_empty());
        let inputs = agent_inputs(Some(&first), &n);
        assert!(matches!(inputs[0], Input::Bootstrap(_)), "{inputs:?}");
        step_all(&mut n, inputs);
        let m = n.membership().expect("bootstrapped");
        assert_eq!(m.version.to_string(), "0.0");
        assert_eq!(m.voters.len(), 3);
        assert!(agent_inputs(Some(&first), &n).is_empty(), "applied once");

        // Added later: not in `bootstrap` (or no `bootstrap` at all): it stays joined.
        let mut late = node("b-3", true);
        let inputs = agent_inputs(Some(&first), &late);
        step_all(&mut late, inputs);
        assert!(late.membership().is_none());
        let grown = MembersAnnotation::for_ordinals("b", 5, None);
        let inputs = agent_inputs(Some(&grown), &late);
        assert!(matches!(&inputs[..], [Input::SetMembers(v)] if v.len() == 5));
        step_all(&mut late, inputs);
        assert!(late.membership().is_none());
        assert!(agent_inputs(Some(&grown), &late).is_empty());

        // A node that holds a configuration ignores `bootstrap`, whatever it says.
        let mut old = node("b-0", false);
        let before = old.membership().cloned();
        let other = MembersAnnotation::for_ordinals("b", 5, Some(5));
        let inputs = agent_inputs(Some(&other), &old);
        step_all(&mut old, inputs);
        assert_eq!(old.membership().cloned(), before);
        assert_eq!(old.target_members().map(BTreeSet::len), Some(5));
    }
}
