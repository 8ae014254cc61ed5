//! The replica's side: given what the writer ships, append, cut a conflicting suffix, or fetch a
//! snapshot when the writer no longer holds what comes next; apply only up to commit; report the
//! durable position (with its epoch) to the election.

use super::Shipment;
use super::log::{LogPosition, LogShape, ShapeError};
use crate::Term;

/// What a replica's store must find again after a restart (the machine is rebuilt from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    /// The highest writer term the store has accepted (shipments of lower terms are refused).
    pub term: Term,
    pub log: LogShape,
    /// The highest index the store knows committed (at least the snapshot's).
    pub commit: u64,
    /// The last entry applied to the database. Above `commit` only on a demoted writer, which
    /// applied its own writes at once.
    pub applied: u64,
    /// Grows whenever the log may lose a suffix (truncation, snapshot); persisted with that change.
    pub epoch: u64,
}

/// One input to [`Replica::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaInput {
    /// Entries from a writer (an answer to a pull).
    Shipment(Shipment),
    /// The snapshot asked for by `FetchSnapshot` is installed: the database is the state after
    /// `at`, and the log holds nothing after it.
    SnapshotInstalled { at: LogPosition },
    /// The snapshot could not be fetched or installed; the log is as it was.
    SnapshotFailed,
}

/// What the caller must do, in order. Each effect that changes the log must be durable before
/// the next effect is performed (a `Position` reports the durable log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEffect {
    /// Cut every entry after `index` and persist `epoch` in the same transaction. Entries above
    /// `index` that were applied (a demoted writer's own uncommitted writes) are undone.
    TruncateAfter { index: u64, epoch: u64 },
    /// Append the shipment's entries `from..=to` (their indexes).
    Append { from: u64, to: u64 },
    /// Apply the entries up to `up_to` to the database (all committed).
    Apply { up_to: u64 },
    /// The writer no longer holds the entries this replica needs: fetch its snapshot (at
    /// `at_least` or later) and install it atomically with `epoch`, then report
    /// `SnapshotInstalled` (or `SnapshotFailed`).
    FetchSnapshot { at_least: LogPosition, epoch: u64 },
    /// The durable log now ends at `position`: feed the election (`quasar::Input::Position`).
    Position { epoch: u64, position: LogPosition },
    /// Ask the writer for the entries after `after`.
    Pull { after: LogPosition },
}

/// A shipment or report that cannot be accepted (the state is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("shipment from the writer of term {got}, but this replica follows term {term}")]
    StaleWriter { term: Term, got: Term },
    #[error(
        "shipment from the writer of term {term} disagrees at index {index}, which this replica knows committed (commit {commit}): refused, never truncated"
    )]
    CommittedConflict { term: Term, index: u64, commit: u64 },
    #[error("snapshot installed at {at}, below the commit index {commit}")]
    SnapshotBehindCommit { at: LogPosition, commit: u64 },
    #[error("snapshot reported installed but none was asked for")]
    UnexpectedSnapshot,
    #[error("replica: {0}")]
    Shape(#[from] ShapeError),
}

/// A replica's replication bookkeeping.
#[derive(Clone, Debug)]
pub struct Replica {
    state: ReplicaState,
    /// A snapshot fetch in flight (shipments wait until it ends).
    fetching: Option<LogPosition>,
    /// The last `(epoch, position)` reported (or restored).
    reported: (u64, LogPosition),
}

impl Replica {
    pub fn new(state: ReplicaState) -> Replica {
        let snapshot = state.log.snapshot().index;
        let last = state.log.last().index;
        let mut state = state;
        state.commit = state.commit.clamp(snapshot, last);
        state.applied = state.applied.clamp(snapshot, last);
        Replica {
            reported: (state.epoch, state.log.last()),
            state,
            fetching: None,
        }
    }

    pub fn state(&self) -> &ReplicaState {
        &self.state
    }
    pub fn last(&self) -> LogPosition {
        self.state.log.last()
    }
    pub fn commit(&self) -> u64 {
        self.state.commit
    }
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }
    pub fn is_fetching_snapshot(&self) -> bool {
        self.fetching.is_some()
    }

    /// Feed one input. Refused input changes nothing.
    #[must_use = "the effects must be performed"]
    pub fn step(&mut self, input: ReplicaInput) -> Result<Vec<ReplicaEffect>, ReplicaError> {
        let before = self.state.clone();
        let mut out = Vec::new();
        let result = match input {
            ReplicaInput::Shipment(s) => self.receive(s, &mut out),
            ReplicaInput::SnapshotInstalled { at } => self.installed(at, &mut out),
            ReplicaInput::SnapshotFailed => {
                self.fetching = None;
                out.push(ReplicaEffect::Pull {
                    after: self.state.log.last(),
                });
                Ok(())
            }
        };
        if let Err(e) = result {
            self.state = before;
            return Err(e);
        }
        let after = &self.state;
        assert!(
            after.commit >= before.commit,
            "replication: replica commit went down"
        );
        assert!(
            after.term >= before.term,
            "replication: replica term went down"
        );
        assert!(after.epoch >= before.epoch, "replication: epoch went down");
        assert!(
            after.commit <= after.log.last().index && after.commit >= after.log.snapshot().index,
            "replication: commit outside the log"
        );
        if after.log.last() != before.log.last() {
            // The election keeps the newest report by (epoch, position): each must be newer.
            // (The planted `no-epoch` silences this too: the simulation's checker must see it.)
            let report = (after.epoch, after.log.last());
            assert!(
                report > self.reported || crate::buggify!(NoEpoch),
                "replication: position went down in one epoch"
            );
            self.reported = report;
            out.push(ReplicaEffect::Position {
                epoch: report.0,
                position: report.1,
            });
        }
        Ok(out)
    }

    fn receive(&mut self, s: Shipment, out: &mut Vec<ReplicaEffect>) -> Result<(), ReplicaError> {
        if s.term < self.state.term {
            return Err(ReplicaError::StaleWriter {
                term: self.state.term,
                got: s.term,
            });
        }
        self.state.term = s.term;
        if self.fetching.is_some() {
            return Ok(()); // the snapshot decides what comes next
        }
        let snap = self.state.log.snapshot();
        // Entries at or below our snapshot are committed and held already: skip them (checking
        // the one at the snapshot's index, which we know).
        let (prev, entries) = if s.prev.index < snap.index {
            let skip = (snap.index - s.prev.index) as usize;
            match s.entries.get(skip - 1) {
                None => return Ok(()),
                Some(&t) if t != snap.term => {
                    return Err(ReplicaError::CommittedConflict {
                        term: s.term,
                        index: snap.index,
                        commit: self.state.commit,
                    });
                }
                Some(_) => (snap, &s.entries[skip..]),
            }
        } else {
            (s.prev, &s.entries[..])
        };
        let last = self.state.log.last();
        if prev.index > last.index {
            self.resume_from(last, s.log_start, out);
            return Ok(());
        }
        if self.state.log.term_at(prev.index) != Some(prev.term) {
            if prev.index <= self.state.commit {
                return Err(ReplicaError::CommittedConflict {
                    term: s.term,
                    index: prev.index,
                    commit: self.state.commit,
                });
            }
            // Not the writer's entry: back off past every entry of a term the writer's cannot be.
            let hint = self
                .state
                .log
                .last_agreeing_at_most(prev.index - 1, prev.term);
            self.resume_from(hint, s.log_start, out);
            return Ok(());
        }
        // `prev` matches, so everything up to it does (Log Matching). Find the first new entry.
        let mut new_from = entries.len();
        for (k, &term) in entries.iter().enumerate() {
            let index = prev.index + 1 + k as u64;
            match self.state.log.term_at(index) {
                Some(ours) if ours == term => continue,
                // Planted `no-truncate`: a conflicting entry of ours is kept as if it matched.
                Some(_) if crate::buggify!(NoTruncate) => continue,
                Some(_) => {
                    // A conflict: ours is not the writer's entry, so it was never committed (a
                    // committed entry is in every later writer's log, Raft §5.4).
                    let cut = index - 1;
                    if cut < self.state.commit {
                        return Err(ReplicaError::CommittedConflict {
                            term: s.term,
                            index,
                            commit: self.state.commit,
                        });
                    }
                    self.state.epoch = next_epoch(self.state.epoch);
                    self.state.log.truncate_after(cut)?;
                    self.state.applied = self.state.applied.min(cut);
                    out.push(ReplicaEffect::TruncateAfter {
                        index: cut,
                        epoch: self.state.epoch,
                    });
                    new_from = k;
                    break;
                }
                None => {
                    new_from = k;
                    break;
                }
            }
        }
        if new_from < entries.len() {
            for &term in &entries[new_from..] {
                self.state.log.append(term, 1)?;
            }
            out.push(ReplicaEffect::Append {
                from: prev.index + 1 + new_from as u64,
                to: prev.index + entries.len() as u64,
            });
        }
        // Only what this shipment proved to match the writer's log may be taken as committed.
        let matched_end = prev.index + entries.len() as u64;
        let commit = s.commit.min(matched_end);
        if commit > self.state.commit {
            self.state.commit = commit;
        }
        if self.state.commit > self.state.applied {
            self.state.applied = self.state.commit;
            out.push(ReplicaEffect::Apply {
                up_to: self.state.commit,
            });
        }
        out.push(ReplicaEffect::Pull {
            after: self.state.log.last(),
        });
        Ok(())
    }

    /// Ask for what follows `from`, where our log may still agree with the writer's. If the
    /// writer no longer holds the entries after it (they are in its snapshot at `log_start`),
    /// continue from that snapshot if we hold its entry, else fetch the snapshot: every entry of
    /// ours from the first disagreement on differs from the writer's (Log Matching), so none of
    /// them is committed and the snapshot loses nothing committed that we held.
    fn resume_from(
        &mut self,
        from: LogPosition,
        log_start: LogPosition,
        out: &mut Vec<ReplicaEffect>,
    ) {
        if from.index >= log_start.index {
            out.push(ReplicaEffect::Pull { after: from });
        } else if self.state.log.term_at(log_start.index) == Some(log_start.term) {
            out.push(ReplicaEffect::Pull { after: log_start });
        } else {
            self.state.epoch = next_epoch(self.state.epoch);
            self.fetching = Some(log_start);
            out.push(ReplicaEffect::FetchSnapshot {
                at_least: log_start,
                epoch: self.state.epoch,
            });
        }
    }

    fn installed(
        &mut self,
        at: LogPosition,
        out: &mut Vec<ReplicaEffect>,
    ) -> Result<(), ReplicaError> {
        let Some(asked) = self.fetching else {
            return Err(ReplicaError::UnexpectedSnapshot);
        };
        if at.index < self.state.commit || at.index < asked.index {
            return Err(ReplicaError::SnapshotBehindCommit {
                at,
                commit: self.state.commit.max(asked.index),
            });
        }
        self.fetching = None;
        // The epoch grew when the fetch was decided (`resume_from`).
        self.state.log = LogShape::new(at);
        self.state.commit = at.index;
        self.state.applied = at.index;
        out.push(ReplicaEffect::Pull { after: at });
        Ok(())
    }
}

/// The epoch after a change that may lower the position (a cut, a snapshot). The planted
/// `no-epoch` keeps it: the lower position then looks like a stale report to the election.
fn next_epoch(epoch: u64) -> u64 {
    if crate::buggify!(NoEpoch) {
        epoch
    } else {
        epoch + 1
    }
}

/// A store that rebuilds its machine for every request (the reference store, the simulation's)
/// installed the writer of `writer_term`'s snapshot at `at`: the state it then holds. The log
/// holds nothing after `at`, everything up to it is committed and applied, and the epoch grows
/// (the position may go down). Refused, changing nothing, for a stale writer or a snapshot
/// that is not past what the store knows committed: a fetch is decided only when the store's
/// agreement with the writer ends below the writer's log start, so a snapshot it asked for is
/// always past its commit, and one that is not (a late copy of an answer already installed)
/// would cut entries the store appended since, which may be committed.
pub fn snapshot_installed(
    state: &ReplicaState,
    writer_term: Term,
    at: LogPosition,
) -> Result<ReplicaState, ReplicaError> {
    if writer_term < state.term {
        return Err(ReplicaError::StaleWriter {
            term: state.term,
            got: writer_term,
        });
    }
    if at.index <= state.commit {
        return Err(ReplicaError::SnapshotBehindCommit {
            at,
            commit: state.commit,
        });
    }
    Ok(ReplicaState {
        term: writer_term,
        log: LogShape::new(at),
        commit: at.index,
        applied: at.index,
        epoch: next_epoch(state.epoch),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(term: u64, index: u64) -> LogPosition {
        LogPosition::new(Term(term), index)
    }

    fn replica(runs: &[(u64, u64)], commit: u64) -> Replica {
        let mut log = LogShape::new(LogPosition::ZERO);
        let mut term = 0;
        for &(t, count) in runs {
            log.append(Term(t), count).unwrap();
            term = t;
        }
        Replica::new(ReplicaState {
            term: Term(term),
            log,
            commit,
            applied: commit,
            epoch: 0,
        })
    }

    fn shipment(term: u64, prev: LogPosition, entries: &[u64], commit: u64) -> ReplicaInput {
        ReplicaInput::Shipment(Shipment {
            term: Term(term),
            prev,
            entries: entries.iter().map(|t| Term(*t)).collect(),
            commit,
            log_start: LogPosition::ZERO,
        })
    }

    /// Entries after a matching `prev` are appended; the replica applies up to the writer's
    /// commit but never past what the shipment proved to match.
    #[test]
    fn appends_and_applies_only_what_is_proven_committed() {
        let mut r = replica(&[(1, 2)], 0);
        let out = r.step(shipment(1, pos(1, 2), &[1, 1], 9)).unwrap();
        assert_eq!(
            out,
            vec![
                ReplicaEffect::Append { from: 3, to: 4 },
                ReplicaEffect::Apply { up_to: 4 },
                ReplicaEffect::Pull { after: pos(1, 4) },
                ReplicaEffect::Position {
                    epoch: 0,
                    position: pos(1, 4)
                },
            ]
        );
        // A duplicate changes nothing but asks for more.
        let out = r.step(shipment(1, pos(1, 2), &[1, 1], 9)).unwrap();
        assert_eq!(out, vec![ReplicaEffect::Pull { after: pos(1, 4) }]);
    }

    /// A shipment that stops short of the replica's own (possibly divergent) suffix proves only
    /// its own range: the writer's commit beyond it is not applied to entries it did not check.
    #[test]
    fn commit_beyond_the_shipment_is_not_applied() {
        let mut r = replica(&[(1, 3)], 0);
        let out = r.step(shipment(2, pos(1, 1), &[1], 3)).unwrap();
        assert_eq!(
            out,
            vec![
                ReplicaEffect::Apply { up_to: 2 },
                ReplicaEffect::Pull { after: pos(1, 3) },
            ]
        );
        assert_eq!(r.commit(), 2);
    }

    /// A conflicting uncommitted suffix of a later term is cut (with a new epoch) and replaced,
    /// and the position, lower now, is reported with that epoch.
    #[test]
    fn a_conflict_cuts_the_suffix_and_the_position_goes_down_with_a_new_epoch() {
        // Ours: (1, 1..=2), (5, 3..=5); the writer of term 6 has (1, 1..=2), (4, 3..=4).
        let mut r = replica(&[(1, 2), (5, 3)], 2);
        let out = r.step(shipment(6, pos(1, 2), &[4, 4], 2)).unwrap();
        assert_eq!(
            out,
            vec![
                ReplicaEffect::TruncateAfter { index: 2, epoch: 1 },
                ReplicaEffect::Append { from: 3, to: 4 },
                ReplicaEffect::Pull { after: pos(4, 4) },
                ReplicaEffect::Position {
                    epoch: 1,
                    position: pos(4, 4)
                },
            ]
        );
        assert_eq!(r.state().term, Term(6));
    }

    /// A `prev` the replica does not hold sends the writer back: to the replica's end if it is
    /// short, or past the replica's entries of terms the writer's entry cannot share.
    #[test]
    fn a_mismatched_prev_pulls_from_where_the_logs_may_agree() {
        let mut r = replica(&[(1, 2), (3, 3)], 0);
        let out = r.step(shipment(4, pos(4, 9), &[4], 0)).unwrap();
        assert_eq!(out, vec![ReplicaEffect::Pull { after: pos(3, 5) }]);
        let out = r.step(shipment(4, pos(2, 4), &[4], 0)).unwrap();
        assert_eq!(out, vec![ReplicaEffect::Pull { after: pos(1, 2) }]);
    }

    /// A replica whose end is below the writer's log start fetches a snapshot (new epoch), waits
    /// for it, and starts from it.
    #[test]
    fn lagging_past_the_log_start_fetches_a_snapshot() {
        let mut r = replica(&[(1, 2), (2, 1)], 1);
        let ship = ReplicaInput::Shipment(Shipment {
            term: Term(3),
            prev: pos(3, 10),
            entries: vec![Term(3)],
            commit: 11,
            log_start: pos(3, 10),
        });
        let out = r.step(ship.clone()).unwrap();
        assert_eq!(
            out,
            vec![ReplicaEffect::FetchSnapshot {
                at_least: pos(3, 10),
                epoch: 1
            }]
        );
        assert!(r.step(ship).unwrap().is_empty(), "waits for the snapshot");
        assert!(matches!(
            r.step(ReplicaInput::SnapshotInstalled { at: pos(3, 9) }),
            Err(ReplicaError::SnapshotBehindCommit { .. })
        ));
        let out = r
            .step(ReplicaInput::SnapshotInstalled { at: pos(3, 12) })
            .unwrap();
        assert_eq!(
            out,
            vec![
                ReplicaEffect::Pull { after: pos(3, 12) },
                ReplicaEffect::Position {
                    epoch: 1,
                    position: pos(3, 12)
                },
            ]
        );
        assert_eq!(r.commit(), 12);
        assert!(matches!(
            r.step(ReplicaInput::SnapshotInstalled { at: pos(3, 12) }),
            Err(ReplicaError::UnexpectedSnapshot)
        ));
    }

    /// A store that rebuilds its machine per request installs a snapshot only past its commit
    /// (a late copy of one already installed would cut what it appended since), with a new epoch.
    #[test]
    fn a_snapshot_installs_only_past_the_commit() {
        let r = replica(&[(1, 2), (2, 3)], 4);
        let mut state = r.state().clone();
        state.term = Term(2);
        assert!(matches!(
            snapshot_installed(&state, Term(3), pos(2, 4)),
            Err(ReplicaError::SnapshotBehindCommit { .. })
        ));
        assert!(matches!(
            snapshot_installed(&state, Term(1), pos(2, 9)),
            Err(ReplicaError::StaleWriter { .. })
        ));
        let after = snapshot_installed(&state, Term(3), pos(3, 9)).unwrap();
        assert_eq!((after.commit, after.applied, after.epoch), (9, 9, 1));
        assert_eq!(after.log.last(), pos(3, 9));
    }

    /// A stale writer's shipment and one that contradicts a known-committed entry are refused
    /// and change nothing (no truncation of a committed entry, ever).
    #[test]
    fn stale_and_contradicting_shipments_are_refused() {
        let mut r = replica(&[(1, 2), (2, 2)], 3);
        let before = r.state().clone();
        assert!(matches!(
            r.step(shipment(1, pos(1, 2), &[1], 4)),
            Err(ReplicaError::StaleWriter { .. })
        ));
        assert!(matches!(
            r.step(shipment(3, pos(1, 2), &[3], 4)),
            Err(ReplicaError::CommittedConflict { index: 3, .. })
        ));
        assert!(matches!(
            r.step(shipment(3, pos(3, 3), &[3], 4)),
            Err(ReplicaError::CommittedConflict { index: 3, .. })
        ));
        assert_eq!(r.state(), &before);
    }
}
