//! The voting configuration the election agrees on (Raft §6, etcd-io/raft's `ConfChangeV2` with
//! joint consensus, learners and auto-leave). The argument for why changing it is safe is in the
//! [module doc of `quasar`](super#membership-changes-joint-consensus).

use crate::replication::{QuorumConfig, QuorumError};
use crate::{NodeId, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Orders configurations like Raft orders logs by their last entry: first the term of the writer
/// that proposed it, then its index. `(0, 0)` is the bootstrap configuration of the cluster's
/// initial members.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ConfigVersion {
    pub term: Term,
    pub index: u64,
}

impl std::fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.term, self.index)
    }
}

/// A voting configuration: simple (`outgoing` empty) or joint C(`outgoing`, `voters`), where
/// every election, lease and commit needs a majority of both halves. Learners receive the log and
/// heartbeats but are never counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub version: ConfigVersion,
    /// The incoming (in a simple configuration: the only) voters.
    pub voters: BTreeSet<NodeId>,
    /// The outgoing voters of a joint configuration; empty when simple.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outgoing: BTreeSet<NodeId>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// The bootstrap configuration: these voters, version `(0, 0)`.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            version: ConfigVersion::default(),
            voters: voters.into_iter().collect(),
            outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
        }
    }

    /// Checks the configuration (voters, no learner that votes, the size limit) and gives the
    /// quorum rule it decides by. A configuration from a peer goes through here before it is used.
    pub fn quorum(&self) -> Result<QuorumConfig, QuorumError> {
        QuorumConfig::joint(
            self.outgoing.iter().cloned(),
            self.voters.iter().cloned(),
            self.learners.iter().cloned(),
        )
    }

    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// A voter of either half.
    pub fn is_voter(&self, id: &NodeId) -> bool {
        self.voters.contains(id) || self.outgoing.contains(id)
    }

    /// Voters of either half, and learners.
    pub fn is_member(&self, id: &NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(id)
    }

    /// Everyone who receives heartbeats: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.voters.union(&self.outgoing).cloned().collect();
        all.extend(self.learners.iter().cloned());
        all
    }

    /// Voters of either half.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.outgoing).cloned().collect()
    }

    /// The same voters and learners at a new version (a writer stamping an inherited
    /// configuration with its own term before it changes it, as Raft's leader commits an entry
    /// of its own term first).
    pub fn restamped(&self, version: ConfigVersion) -> Membership {
        Membership {
            version,
            ..self.clone()
        }
    }

    /// A short form for logs and status: `v3.2 voters a,b,c | d,e learners f`.
    pub fn describe(&self) -> String {
        let list =
            |s: &BTreeSet<NodeId>| s.iter().map(NodeId::as_str).collect::<Vec<_>>().join(",");
        let mut out = format!("v{}", self.version);
        if self.is_joint() {
            out.push_str(&format!(
                " voters {} | {}",
                list(&self.outgoing),
                list(&self.voters)
            ));
        } else {
            out.push_str(&format!(" voters {}", list(&self.voters)));
        }
        if !self.learners.is_empty() {
            out.push_str(&format!(" learners {}", list(&self.learners)));
        }
        out
    }
}

/// A desired voter set that cannot be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("members: the desired voter set is empty")]
    Empty,
    #[error("members: {count} members exceed the cluster size limit {limit}")]
    TooMany { count: usize, limit: usize },
    #[error("members: a member id is empty")]
    EmptyId,
}

/// Checks a desired voter set (as the driver reads it from the operator) before it is handed to
/// the node with `Input::SetMembers`.
pub fn validate_target(voters: &BTreeSet<NodeId>) -> Result<(), MembershipError> {
    if voters.is_empty() {
        return Err(MembershipError::Empty);
    }
    if voters.iter().any(|v| v.as_str().is_empty()) {
        return Err(MembershipError::EmptyId);
    }
    if voters.len() > super::CLUSTER_SIZE_MAX {
        return Err(MembershipError::TooMany {
            count: voters.len(),
            limit: super::CLUSTER_SIZE_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    /// Versions order by term first, then index, like Raft's (last term, last index).
    #[test]
    fn versions_order_term_first() {
        let v = |t, i| ConfigVersion {
            term: Term(t),
            index: i,
        };
        assert!(v(2, 1) > v(1, 9));
        assert!(v(2, 3) > v(2, 2));
        assert_eq!(ConfigVersion::default(), v(0, 0));
    }

    /// A learner that also votes, or no voters, is refused; the JSON form round-trips and leaves
    /// empty halves out.
    #[test]
    fn validation_and_json() {
        let mut m = Membership::bootstrap(ids(&["a", "b", "c"]));
        assert!(m.quorum().is_ok());
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            !json.contains("outgoing") && !json.contains("learners"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Membership>(&json).unwrap(), m);
        m.learners = ids(&["a"]);
        assert!(m.quorum().is_err());
        assert!(Membership::bootstrap(ids(&[])).quorum().is_err());
        assert_eq!(validate_target(&ids(&[])), Err(MembershipError::Empty));
        assert!(validate_target(&ids(&["a"])).is_ok());
    }
}
