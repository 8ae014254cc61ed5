//! The store's decisions are the core's (`base_core::replication`): how a pushed role changes
//! it, how the writer takes the commit its agent tells it, and how far it compacts
//! (`replication::store`); what to do with shipped entries (append, cut, snapshot, commit) is the
//! core replica machine's, and where a shipment starts is the core log shape's rule. `db`
//! performs them. Only the position's encoding for the contract's answers stays here.

pub use base_core::replication::StoreRole as Role;
pub use base_core::replication::{RoleChange, compaction_floor, role_change, writer_commit};

/// `(last term << 32) | last index`: compares like Raft's `(last term, last index)`.
pub fn position(last_index: u64, last_term: u64) -> u64 {
    assert!(
        last_term < 1 << 31 && last_index < 1 << 32,
        "position out of range: term {last_term}, index {last_index}"
    );
    (last_term << 32) | last_index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(position(3, 2), (2 << 32) | 3);
    }
}
