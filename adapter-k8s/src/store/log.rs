//! The store's own small decisions: how a pushed role changes it, how the writer takes the
//! commit its agent tells it, and the position it reports. What to do with shipped entries
//! (append, cut, snapshot, commit) is the core replica machine's (`base_core::replication`), and
//! what to ship uses the core log shape's rule; `db` performs both.

/// `(last term << 32) | last index`: compares like Raft's `(last term, last index)`.
pub fn position(last_index: u64, last_term: u64) -> u64 {
    assert!(
        last_term < 1 << 31 && last_index < 1 << 32,
        "position out of range: term {last_term}, index {last_index}"
    );
    (last_term << 32) | last_index
}

/// The writer learns commit from its agent, which counts its followers' positions.
pub fn writer_commit(commit: u64, told: u64, last_index: u64) -> u64 {
    commit.max(told.min(last_index))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Writer,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Replica => "replica",
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

pub fn role_change(term: u64, role: Role, new_term: u64, new_role: Role) -> RoleChange {
    if new_term < term {
        return RoleChange::Stale;
    }
    match (role, new_role) {
        (Role::Writer, Role::Writer) if new_term == term => RoleChange::StayWriter,
        (_, Role::Writer) => RoleChange::Promote,
        (Role::Writer, Role::Replica) => RoleChange::Demote,
        (Role::Replica, Role::Replica) => RoleChange::StayReplica,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_changes() {
        use Role::*;
        assert_eq!(role_change(3, Writer, 2, Writer), RoleChange::Stale);
        assert_eq!(role_change(3, Writer, 3, Writer), RoleChange::StayWriter);
        assert_eq!(role_change(3, Writer, 4, Writer), RoleChange::Promote);
        assert_eq!(role_change(3, Replica, 3, Writer), RoleChange::Promote);
        assert_eq!(role_change(3, Writer, 3, Replica), RoleChange::Demote);
        assert_eq!(role_change(3, Replica, 5, Replica), RoleChange::StayReplica);
        assert_eq!(writer_commit(4, 9, 6), 6);
        assert_eq!(writer_commit(4, 2, 6), 4);
        assert_eq!(position(3, 2), (2 << 32) | 3);
    }
}
