//! Who must hold an entry for it to be committed (etcd-io/raft's `quorum/`): a majority of the
//! voters, or during a membership change (Raft §6, issue 18) a majority of *both* the outgoing and
//! the incoming voters. Learners receive the log but are never counted.

use crate::NodeId;
use crate::quasar::CLUSTER_SIZE_MAX;
use std::collections::{BTreeMap, BTreeSet};

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Majority(BTreeSet<NodeId>);

impl Majority {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Majority {
        Majority(voters.into_iter().collect())
    }

    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.0
    }

    /// The highest index that a majority of the voters has acked (`acked` has no entry for a
    /// voter that acked nothing). An empty set constrains nothing: `u64::MAX`, so that a joint
    /// configuration with no outgoing half is its incoming half (as in etcd).
    pub fn committed_index(&self, acked: &BTreeMap<NodeId, u64>) -> u64 {
        if self.0.is_empty() {
            return u64::MAX;
        }
        let mut indexes: Vec<u64> = self
            .0
            .iter()
            .map(|v| acked.get(v).copied().unwrap_or(0))
            .collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        // The quorum-th largest: that many voters hold at least it.
        indexes[self.0.len() / 2]
    }

    /// Do the `yes` voters form a majority? (An empty set: trivially yes, as above.)
    pub fn is_quorum(&self, yes: &BTreeSet<NodeId>) -> bool {
        self.0.intersection(yes).count() > self.0.len() / 2 || self.0.is_empty()
    }
}

/// A configuration that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("quorum: no voters")]
    NoVoters,
    #[error("quorum: {count} members exceed the cluster size limit {CLUSTER_SIZE_MAX}")]
    TooMany { count: usize },
    #[error("quorum: {id} is both a voter and a learner")]
    LearnerVotes { id: NodeId },
}

/// The replication configuration: the voters that decide (one majority, or two during a joint
/// change) and the learners that only follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    incoming: Majority,
    /// Empty unless in a joint configuration C(old, new).
    outgoing: Majority,
    learners: BTreeSet<NodeId>,
}

impl QuorumConfig {
    /// One majority of `voters`.
    pub fn simple(voters: impl IntoIterator<Item = NodeId>) -> Result<QuorumConfig, QuorumError> {
        QuorumConfig::joint(Vec::new(), voters, Vec::new())
    }

    /// The joint configuration C(`outgoing`, `incoming`) with `learners` (an empty `outgoing`
    /// makes it simple).
    pub fn joint(
        outgoing: impl IntoIterator<Item = NodeId>,
        incoming: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Result<QuorumConfig, QuorumError> {
        let config = QuorumConfig {
            incoming: Majority::new(incoming),
            outgoing: Majority::new(outgoing),
            learners: learners.into_iter().collect(),
        };
        if config.incoming.0.is_empty() {
            return Err(QuorumError::NoVoters);
        }
        if let Some(id) = config.learners.iter().find(|l| config.is_voter(l)) {
            return Err(QuorumError::LearnerVotes { id: id.clone() });
        }
        let count = config.members().len();
        if count > CLUSTER_SIZE_MAX {
            return Err(QuorumError::TooMany { count });
        }
        Ok(config)
    }

    pub fn is_joint(&self) -> bool {
        !self.outgoing.0.is_empty()
    }

    pub fn is_voter(&self, id: &NodeId) -> bool {
        self.incoming.0.contains(id) || self.outgoing.0.contains(id)
    }

    pub fn learners(&self) -> &BTreeSet<NodeId> {
        &self.learners
    }

    /// Everyone who receives the log: voters of either half and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.incoming.0.union(&self.outgoing.0).cloned().collect();
        all.extend(self.learners.iter().cloned());
        all
    }

    /// The highest index held by a majority of each half (learners' acks are ignored).
    pub fn committed_index(&self, acked: &BTreeMap<NodeId, u64>) -> u64 {
        let index = self
            .incoming
            .committed_index(acked)
            .min(self.outgoing.committed_index(acked));
        assert!(index != u64::MAX, "quorum: a configuration without voters");
        index
    }

    /// Do the `yes` voters form a quorum (a majority of each half)? For elections and leases.
    pub fn is_quorum(&self, yes: &BTreeSet<NodeId>) -> bool {
        self.incoming.is_quorum(yes) && self.outgoing.is_quorum(yes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    fn acked(pairs: &[(&str, u64)]) -> BTreeMap<NodeId, u64> {
        pairs.iter().map(|(n, i)| (NodeId::from(*n), *i)).collect()
    }

    /// The committed index is the one a majority holds: the median of three, the third of five;
    /// missing acks count as 0 and learners are not counted.
    #[test]
    fn majority_committed_index() {
        let c = QuorumConfig::joint(Vec::new(), ids(&["a", "b", "c"]), ids(&["l"])).unwrap();
        assert_eq!(
            c.committed_index(&acked(&[("a", 9), ("b", 4), ("c", 7)])),
            7
        );
        assert_eq!(c.committed_index(&acked(&[("a", 9)])), 0);
        assert_eq!(c.committed_index(&acked(&[("a", 9), ("l", 9)])), 0);
        assert_eq!(
            c.committed_index(&acked(&[("a", 9), ("l", 9), ("c", 3)])),
            3
        );
        let five = QuorumConfig::simple(ids(&["a", "b", "c", "d", "e"])).unwrap();
        let a = acked(&[("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 1)]);
        assert_eq!(five.committed_index(&a), 3);
        let one = QuorumConfig::simple(ids(&["a"])).unwrap();
        assert_eq!(one.committed_index(&acked(&[("a", 4)])), 4);
        let two = QuorumConfig::simple(ids(&["a", "b"])).unwrap();
        assert_eq!(two.committed_index(&acked(&[("a", 4), ("b", 2)])), 2);
    }

    /// In C(old, new) an index commits only when a majority of both holds it.
    #[test]
    fn joint_needs_both_majorities() {
        let c =
            QuorumConfig::joint(ids(&["a", "b", "c"]), ids(&["c", "d", "e"]), Vec::new()).unwrap();
        assert!(c.is_joint());
        // Old majority {a, b} at 9, new majority {d, e} only at 2.
        let a = acked(&[("a", 9), ("b", 9), ("c", 1), ("d", 2), ("e", 2)]);
        assert_eq!(c.committed_index(&a), 2);
        let a = acked(&[("a", 9), ("b", 9), ("c", 1), ("d", 8), ("e", 7)]);
        assert_eq!(c.committed_index(&a), 7);
        let yes: BTreeSet<NodeId> = ids(&["a", "b", "d"]).into_iter().collect();
        assert!(!c.is_quorum(&yes));
        let yes: BTreeSet<NodeId> = ids(&["a", "c", "d"]).into_iter().collect();
        assert!(c.is_quorum(&yes));
    }

    /// Configurations that cannot decide, or count a learner's vote, are refused.
    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(QuorumConfig::simple(Vec::new()), Err(QuorumError::NoVoters));
        assert!(matches!(
            QuorumConfig::joint(Vec::new(), ids(&["a", "b"]), ids(&["b"])),
            Err(QuorumError::LearnerVotes { .. })
        ));
        let many: Vec<NodeId> = (0..16).map(|i| NodeId::new(format!("n{i}"))).collect();
        assert!(matches!(
            QuorumConfig::simple(many),
            Err(QuorumError::TooMany { count: 16 })
        ));
    }
}
