//! The store's pure log decisions (docs/replica-contract.md): what the writer serves to a replica
//! asking from `(index, term)`, what a replica does with shipped entries, how commit moves, and
//! what a role change means. No I/O: the SQLite shell (`db`) asks these and performs the answer.
//! Kept small and apart so that the core replication machine (`base_core::replication`) can
//! take their place.

/// The store's log as the decisions see it. Entries `base_index + 1 ..= last_index` are held;
/// `(base_index, base_term)` is what was compacted (or installed by a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogView {
    pub base_index: u64,
    pub base_term: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub commit: u64,
}

/// `(last term << 32) | last index`: compares like Raft's `(last term, last index)`.
pub fn position(last_index: u64, last_term: u64) -> u64 {
    assert!(
        last_term < 1 << 31 && last_index < 1 << 32,
        "position out of range: term {last_term}, index {last_index}"
    );
    (last_term << 32) | last_index
}

/// The writer's answer to "entries after `(index, term)`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Send the entries from this index on (possibly none yet).
    From(u64),
    /// The asker's log differs: it must drop its entries above `truncate_after` (whose term here
    /// is `term`) and ask again from there.
    Conflict { truncate_after: u64, term: u64 },
    /// What the asker needs was compacted: it must install a snapshot.
    Gone { log_start: u64 },
}

/// `term_at(i)` is the term of held entry `i` (`base_index < i <= last_index`).
pub fn serve_after(
    v: &LogView,
    after_index: u64,
    after_term: u64,
    term_at: &mut dyn FnMut(u64) -> u64,
) -> Serve {
    let gone = Serve::Gone {
        log_start: v.base_index + 1,
    };
    if after_index < v.base_index {
        return gone;
    }
    let held_term = if after_index == v.base_index {
        Some(v.base_term)
    } else if after_index <= v.last_index {
        Some(term_at(after_index))
    } else {
        None
    };
    if held_term == Some(after_term) {
        return Serve::From(after_index + 1);
    }
    // Every entry the asker holds up to `after_index` has a term <= `after_term` (terms never
    // decrease along a log), so nothing here with a higher term can match: the match, if any, is
    // at or below the highest index whose term is <= `after_term`. Terms are monotone: bisect.
    let (mut lo, mut hi) = (v.base_index + 1, after_index.min(v.last_index));
    let mut found = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        let t = term_at(mid);
        if t <= after_term {
            found = Some((mid, t));
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    match found {
        Some((truncate_after, term)) => Serve::Conflict {
            truncate_after,
            term,
        },
        None if v.base_term <= after_term => Serve::Conflict {
            truncate_after: v.base_index,
            term: v.base_term,
        },
        None => gone,
    }
}

/// Shipped entries as the replica's decision sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub index: u64,
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest<'a> {
    pub prev_index: u64,
    pub prev_term: u64,
    pub truncate_after: Option<u64>,
    pub entries: &'a [Shipped],
    pub writer_commit: u64,
}

/// What to do with shipped entries: drop the held entries above `truncate_after`, then append
/// `entries[append_from..]`, then commit up to `commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendPlan {
    pub truncate_after: Option<u64>,
    pub append_from: usize,
    pub commit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefusal {
    #[error("the shipped entries do not follow on from X-Base-Prev-Index")]
    NotContiguous,
    #[error("X-Base-Truncate-After must equal X-Base-Prev-Index")]
    TruncateNotAtPrev,
    #[error("this would remove committed entries (commit {commit}, at {at})")]
    WouldTruncateCommitted { commit: u64, at: u64 },
    #[error("the log does not hold the previous entry (last index {last_index}, term {last_term})")]
    PrevMismatch { last_index: u64, last_term: u64 },
}

impl AppendRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            AppendRefusal::NotContiguous => "log_gap",
            AppendRefusal::TruncateNotAtPrev => "bad_truncate",
            AppendRefusal::WouldTruncateCommitted { .. } => "would_truncate_committed",
            AppendRefusal::PrevMismatch { .. } => "prev_mismatch",
        }
    }
}

/// The replica's rules for shipped entries (docs/replica-contract.md, `POST /_replica/append`).
pub fn plan_append(
    v: &LogView,
    req: &AppendRequest<'_>,
    term_at: &mut dyn FnMut(u64) -> u64,
) -> Result<AppendPlan, AppendRefusal> {
    for (k, e) in req.entries.iter().enumerate() {
        if e.index != req.prev_index + 1 + k as u64 {
            return Err(AppendRefusal::NotContiguous);
        }
    }
    let mut truncate_after = None;
    let mut last = v.last_index;
    if let Some(j) = req.truncate_after {
        if j != req.prev_index {
            return Err(AppendRefusal::TruncateNotAtPrev);
        }
        if j < v.commit {
            return Err(AppendRefusal::WouldTruncateCommitted {
                commit: v.commit,
                at: j + 1,
            });
        }
        if last > j {
            truncate_after = Some(j);
            last = j;
        }
    }
    let prev_ok = if req.prev_index <= v.base_index {
        true
    } else if req.prev_index <= last {
        term_at(req.prev_index) == req.prev_term
    } else {
        false
    };
    if !prev_ok {
        let last_term = match truncate_after {
            Some(j) if j > v.base_index => term_at(j),
            Some(_) => v.base_term,
            None => v.last_term,
        };
        return Err(AppendRefusal::PrevMismatch {
            last_index: last,
            last_term,
        });
    }
    let mut append_from = req.entries.len();
    for (k, e) in req.entries.iter().enumerate() {
        if e.index <= v.base_index {
            continue; // compacted here, hence committed: it matches
        }
        if e.index <= last {
            if term_at(e.index) == e.term {
                continue;
            }
            if e.index <= v.commit {
                return Err(AppendRefusal::WouldTruncateCommitted {
                    commit: v.commit,
                    at: e.index,
                });
            }
            truncate_after = Some(e.index - 1);
        }
        append_from = k;
        break;
    }
    // Up to here this log now equals the writer's.
    let matched = req.prev_index + req.entries.len() as u64;
    let commit = v.commit.max(req.writer_commit.min(matched));
    Ok(AppendPlan {
        truncate_after,
        append_from,
        commit,
    })
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

    /// A log as a list of terms, index 1 first, after a base.
    fn view(base: (u64, u64), terms: &[u64], commit: u64) -> LogView {
        LogView {
            base_index: base.0,
            base_term: base.1,
            last_index: base.0 + terms.len() as u64,
            last_term: terms.last().copied().unwrap_or(base.1),
            commit,
        }
    }

    fn lookup(base: u64, terms: &[u64]) -> impl FnMut(u64) -> u64 + '_ {
        move |i| {
            assert!(i > base && i <= base + terms.len() as u64, "looked up {i}");
            terms[(i - base - 1) as usize]
        }
    }

    #[test]
    fn serving_a_matching_replica_sends_what_follows() {
        let terms = [1, 1, 2, 2];
        let v = view((0, 0), &terms, 3);
        assert_eq!(
            serve_after(&v, 0, 0, &mut lookup(0, &terms)),
            Serve::From(1)
        );
        assert_eq!(
            serve_after(&v, 3, 2, &mut lookup(0, &terms)),
            Serve::From(4)
        );
        assert_eq!(
            serve_after(&v, 4, 2, &mut lookup(0, &terms)),
            Serve::From(5)
        );
    }

    /// A replica holding a deposed writer's suffix (term 2 at 3..=5) against a writer whose log
    /// went on in term 3 after index 2: truncate after 2, the last index with a term <= 2.
    #[test]
    fn serving_a_diverged_replica_names_the_truncate_point() {
        let terms = [1, 1, 3, 3];
        let v = view((0, 0), &terms, 4);
        assert_eq!(
            serve_after(&v, 5, 2, &mut lookup(0, &terms)),
            Serve::Conflict {
                truncate_after: 2,
                term: 1
            }
        );
        // Ahead of the writer in the same term as the writer's last: back to the writer's last.
        assert_eq!(
            serve_after(&v, 9, 3, &mut lookup(0, &terms)),
            Serve::Conflict {
                truncate_after: 4,
                term: 3
            }
        );
        // Nothing held matches but the base does.
        let terms = [4, 4];
        let v = view((5, 1), &terms, 6);
        assert_eq!(
            serve_after(&v, 7, 2, &mut lookup(5, &terms)),
            Serve::Conflict {
                truncate_after: 5,
                term: 1
            }
        );
    }

    #[test]
    fn serving_below_the_log_start_is_gone() {
        let terms = [3, 3];
        let v = view((10, 2), &terms, 12);
        assert_eq!(
            serve_after(&v, 4, 1, &mut lookup(10, &terms)),
            Serve::Gone { log_start: 11 }
        );
        assert_eq!(
            serve_after(&v, 10, 2, &mut lookup(10, &terms)),
            Serve::From(11)
        );
        // At the base with another term: the match would be compacted.
        assert_eq!(
            serve_after(&v, 10, 1, &mut lookup(10, &terms)),
            Serve::Gone { log_start: 11 }
        );
    }

    fn shipped(from: u64, terms: &[u64]) -> Vec<Shipped> {
        terms
            .iter()
            .enumerate()
            .map(|(k, &term)| Shipped {
                index: from + k as u64,
                term,
            })
            .collect()
    }

    #[test]
    fn appending_skips_held_entries_truncates_a_conflict_and_commits_what_matches() {
        let terms = [1, 1, 2];
        let v = view((0, 0), &terms, 2);
        let entries = shipped(2, &[1, 3, 3]);
        let plan = plan_append(
            &v,
            &AppendRequest {
                prev_index: 1,
                prev_term: 1,
                truncate_after: None,
                entries: &entries,
                writer_commit: 10,
            },
            &mut lookup(0, &terms),
        )
        .unwrap();
        assert_eq!(
            plan,
            AppendPlan {
                truncate_after: Some(2),
                append_from: 1,
                commit: 4
            }
        );
    }

    #[test]
    fn appending_refuses_what_would_break_the_log() {
        let terms = [1, 1, 2];
        let v = view((0, 0), &terms, 2);
        let mut t = lookup(0, &terms);
        let req = |prev_index, prev_term, truncate_after, entries| AppendRequest {
            prev_index,
            prev_term,
            truncate_after,
            entries,
            writer_commit: 0,
        };
        let e = shipped(5, &[2]);
        assert_eq!(
            plan_append(&v, &req(3, 2, None, &e), &mut t),
            Err(AppendRefusal::NotContiguous)
        );
        assert_eq!(
            plan_append(&v, &req(3, 3, None, &[]), &mut t),
            Err(AppendRefusal::PrevMismatch {
                last_index: 3,
                last_term: 2
            })
        );
        assert_eq!(
            plan_append(&v, &req(1, 1, Some(1), &[]), &mut t),
            Err(AppendRefusal::WouldTruncateCommitted { commit: 2, at: 2 })
        );
        let e = shipped(2, &[3]);
        assert_eq!(
            plan_append(&v, &req(1, 1, None, &e), &mut t),
            Err(AppendRefusal::WouldTruncateCommitted { commit: 2, at: 2 })
        );
        // An explicit truncation at the commit point is allowed.
        assert_eq!(
            plan_append(&v, &req(2, 1, Some(2), &[]), &mut t),
            Ok(AppendPlan {
                truncate_after: Some(2),
                append_from: 0,
                commit: 2
            })
        );
    }

    #[test]
    fn a_replica_never_commits_past_what_it_matched() {
        let terms = [1, 1, 2];
        let v = view((0, 0), &terms, 1);
        // Commit 9 told, but only 1..=2 known to match (prev 2, nothing shipped).
        let plan = plan_append(
            &v,
            &AppendRequest {
                prev_index: 2,
                prev_term: 1,
                truncate_after: None,
                entries: &[],
                writer_commit: 9,
            },
            &mut lookup(0, &terms),
        )
        .unwrap();
        assert_eq!(plan.commit, 2);
        assert_eq!(plan.truncate_after, None);
    }

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
