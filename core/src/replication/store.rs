//! A store's own small decisions (`docs/replica-contract.md`): how a pushed role changes it, how
//! the writer takes the commit its agent tells it, and how far it compacts its log. What to do
//! with shipped entries (append, cut, snapshot, commit) is [`super::Replica`]'s, and where a
//! shipment starts is [`super::LogShape::shipment_prev`]. The reference store (adapter-k8s
//! `store/`) and the simulation's store both perform these, so they are written once, here.

use super::coordinator::StoreRole;
use crate::Term;

impl StoreRole {
    /// The contract's name for the role (`"writer"`, `"replica"`).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreRole::Writer => "writer",
            StoreRole::Replica => "replica",
        }
    }
}

/// What a pushed role means for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// A lower term than the store's: refused, nothing changes.
    Stale,
    /// Becomes writer: apply the held suffix, append a no-op of the term.
    Promote,
    /// Writer already, in this term: take the commit.
    StayWriter,
    /// Was writer: undo the uncommitted suffix.
    Demote,
    /// Replica already (the term may rise).
    StayReplica,
}

/// The store of `role` in `term` is told `new_role` in `new_term`.
pub fn role_change(term: Term, role: StoreRole, new_term: Term, new_role: StoreRole) -> RoleChange {
    if new_term < term {
        return RoleChange::Stale;
    }
    match (role, new_role) {
        (StoreRole::Writer, StoreRole::Writer) if new_term == term => RoleChange::StayWriter,
        (_, StoreRole::Writer) => RoleChange::Promote,
        (StoreRole::Writer, StoreRole::Replica) => RoleChange::Demote,
        (StoreRole::Replica, StoreRole::Replica) => RoleChange::StayReplica,
    }
}

/// The writer's store learns commit from its agent, which counts its followers' positions: it
/// never goes down, and never past the store's own log.
pub fn writer_commit(commit: u64, told: u64, last_index: u64) -> u64 {
    commit.max(told.min(last_index))
}

/// Where a store compacts its log to, if anywhere: `keep` entries below what is both committed
/// and applied (for replicas a little behind), and only once that moved a tenth of `keep` past
/// the current start (so compaction is not one small transaction per write).
pub fn compaction_floor(commit: u64, applied: u64, base_index: u64, keep: u64) -> Option<u64> {
    let floor = commit.min(applied).saturating_sub(keep);
    (floor > base_index + keep / 10).then_some(floor)
}

/// Whether a long-polled pull after `after_index` (from an agent that last saw the writer's
/// commit `known_commit`, if any) is answered now rather than held: the store stopped being the
/// writer, its log grew past `after_index`, or its commit is news.
pub fn pull_ready(
    role: StoreRole,
    last_index: u64,
    commit: u64,
    after_index: u64,
    known_commit: Option<u64>,
) -> bool {
    role != StoreRole::Writer
        || last_index > after_index
        || known_commit.is_none_or(|c| commit != c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_changes_commits_and_compaction() {
        use StoreRole::*;
        let t = Term;
        assert_eq!(role_change(t(3), Writer, t(2), Writer), RoleChange::Stale);
        assert_eq!(
            role_change(t(3), Writer, t(3), Writer),
            RoleChange::StayWriter
        );
        assert_eq!(role_change(t(3), Writer, t(4), Writer), RoleChange::Promote);
        assert_eq!(
            role_change(t(3), Replica, t(3), Writer),
            RoleChange::Promote
        );
        assert_eq!(role_change(t(3), Writer, t(3), Replica), RoleChange::Demote);
        assert_eq!(
            role_change(t(3), Replica, t(5), Replica),
            RoleChange::StayReplica
        );
        assert_eq!(writer_commit(4, 9, 6), 6);
        assert_eq!(writer_commit(4, 2, 6), 4);
        assert_eq!(compaction_floor(100, 90, 0, 50), Some(40));
        assert_eq!(compaction_floor(100, 90, 36, 50), None);
        assert_eq!(compaction_floor(10, 10, 0, 50), None);
        assert!(!pull_ready(Writer, 5, 3, 5, Some(3)));
        assert!(pull_ready(Writer, 6, 3, 5, Some(3)));
        assert!(pull_ready(Writer, 5, 4, 5, Some(3)));
        assert!(pull_ready(Writer, 5, 3, 5, None));
        assert!(pull_ready(Replica, 5, 3, 5, Some(3)));
    }
}
