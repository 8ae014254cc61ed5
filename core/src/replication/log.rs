//! The shape of a replicated log, without its data: where it starts (the snapshot it was compacted
//! to), where it ends, and which term each entry has. A log's terms never decrease along it, so
//! the shape is a short list of *runs* (first index of each term), one per writer term that
//! appended to it: small enough for the pure machines to hold while the store holds the entries.

use crate::Term;
use serde::{Deserialize, Serialize};

/// `(term, index)` of a log entry. `LogPosition::ZERO` is the empty log. Ordered by term, then
/// index: Raft's "at least as up to date" order (§5.4.1), the order the election compares.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub term: Term,
    pub index: u64,
}

/// Largest term and index that fit the election's `u64` position encoding.
pub const POSITION_PART_MAX: u64 = u32::MAX as u64;

/// A log position does not fit the election's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "log position (term {term}, index {index}) does not fit the election's encoding (each at most {POSITION_PART_MAX})"
)]
pub struct PositionTooLarge {
    pub term: Term,
    pub index: u64,
}

impl LogPosition {
    pub const ZERO: LogPosition = LogPosition {
        term: Term(0),
        index: 0,
    };

    pub fn new(term: Term, index: u64) -> LogPosition {
        LogPosition { term, index }
    }

    /// The election's position: `(term << 32) | index`, which orders like `LogPosition` itself
    /// (the encoding the simulation and the replica contract use).
    pub fn encode(self) -> Result<u64, PositionTooLarge> {
        if self.term.0 > POSITION_PART_MAX || self.index > POSITION_PART_MAX {
            return Err(PositionTooLarge {
                term: self.term,
                index: self.index,
            });
        }
        Ok((self.term.0 << 32) | self.index)
    }

    pub fn decode(position: u64) -> LogPosition {
        LogPosition {
            term: Term(position >> 32),
            index: position & POSITION_PART_MAX,
        }
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.term, self.index)
    }
}

/// A change to a log shape that would break what a log is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("append of term {term} after an entry of the later term {last}")]
    TermGoesDown { term: Term, last: Term },
    #[error("index {index} is below the log's snapshot at {snapshot}")]
    BelowSnapshot { index: u64, snapshot: u64 },
    #[error("index {index} is past the log's last entry {last}")]
    PastEnd { index: u64, last: u64 },
}

/// Where a log starts and ends and the term of every entry in between.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogShape {
    /// The last entry the snapshot includes (`ZERO` for a log never compacted); the log holds
    /// the entries after it.
    snapshot: LogPosition,
    /// `(term, first index)` of each run of entries of one term after the snapshot; terms strictly
    /// increase, first indexes strictly increase, all above `snapshot.index`.
    runs: Vec<(Term, u64)>,
    last_index: u64,
}

impl LogShape {
    /// A log holding nothing after `snapshot` (a fresh log is `LogShape::new(LogPosition::ZERO)`).
    pub fn new(snapshot: LogPosition) -> LogShape {
        LogShape {
            snapshot,
            runs: Vec::new(),
            last_index: snapshot.index,
        }
    }

    /// The snapshot the log starts from: entries up to it are no longer held one by one.
    pub fn snapshot(&self) -> LogPosition {
        self.snapshot
    }

    /// The log's last entry (the snapshot's when it holds none after it).
    pub fn last(&self) -> LogPosition {
        match self.runs.last() {
            Some(&(term, _)) => LogPosition::new(term, self.last_index),
            None => self.snapshot,
        }
    }

    /// The term of the entry at `index`: known for the snapshot's own index and every entry after
    /// it; `None` below the snapshot (compacted) and past the end.
    pub fn term_at(&self, index: u64) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last_index {
            return None;
        }
        self.runs
            .iter()
            .rev()
            .find(|(_, first)| *first <= index)
            .map(|(term, _)| *term)
    }

    /// The first index of the run holding `index` (for a conflict hint: skip a whole term).
    fn run_start(&self, index: u64) -> Option<u64> {
        self.runs
            .iter()
            .rev()
            .find(|(_, first)| *first <= index && index <= self.last_index)
            .map(|(_, first)| *first)
    }

    /// The first index of `term`'s entries in this log, if it holds any.
    pub fn first_index_of(&self, term: Term) -> Option<u64> {
        self.runs.iter().find(|(t, _)| *t == term).map(|(_, f)| *f)
    }

    /// The largest index `≤ index` whose term is `≤ term` (etcd-io/raft's `findConflictByTerm`):
    /// where two logs may still agree when they disagree at `index`. At least the snapshot's.
    pub fn last_agreeing_at_most(&self, index: u64, term: Term) -> LogPosition {
        let mut i = index.min(self.last_index);
        while i > self.snapshot.index {
            let Some(t) = self.term_at(i) else { break };
            if t <= term {
                return LogPosition::new(t, i);
            }
            // Skip the whole run of the later term.
            i = self.run_start(i).map_or(self.snapshot.index, |f| f - 1);
        }
        self.snapshot
    }

    /// Where a shipment to a replica whose log ends at `after` (or that a conflict sent back
    /// there) starts: `after` itself if this log holds the same entry there, else the last entry
    /// of this log that could agree with it (skipping the terms it does not share), and this
    /// log's start when `after` is below it (the replica then needs the snapshot). The writer's
    /// machine and the store that serves the entries both ship from here.
    pub fn shipment_prev(&self, after: LogPosition) -> LogPosition {
        if after.index < self.snapshot.index {
            self.snapshot
        } else if self.term_at(after.index) == Some(after.term) {
            after
        } else {
            self.last_agreeing_at_most(after.index, after.term)
        }
    }

    /// `count` entries of `term` appended after the last.
    pub fn append(&mut self, term: Term, count: u64) -> Result<(), ShapeError> {
        let last = self.last().term;
        if term < last {
            return Err(ShapeError::TermGoesDown { term, last });
        }
        if count == 0 {
            return Ok(());
        }
        if self.runs.last().is_none_or(|&(t, _)| t != term) {
            self.runs.push((term, self.last_index + 1));
        }
        self.last_index += count;
        self.check();
        Ok(())
    }

    /// Cut every entry after `index` (which must be held: at least the snapshot's).
    pub fn truncate_after(&mut self, index: u64) -> Result<(), ShapeError> {
        if index < self.snapshot.index {
            return Err(ShapeError::BelowSnapshot {
                index,
                snapshot: self.snapshot.index,
            });
        }
        if index > self.last_index {
            return Err(ShapeError::PastEnd {
                index,
                last: self.last_index,
            });
        }
        self.runs.retain(|(_, first)| *first <= index);
        self.last_index = index;
        self.check();
        Ok(())
    }

    /// Drop the entries up to `index` into the snapshot (the store compacted its log).
    pub fn compact(&mut self, index: u64) -> Result<(), ShapeError> {
        let Some(term) = self.term_at(index) else {
            return Err(if index < self.snapshot.index {
                ShapeError::BelowSnapshot {
                    index,
                    snapshot: self.snapshot.index,
                }
            } else {
                ShapeError::PastEnd {
                    index,
                    last: self.last_index,
                }
            });
        };
        let next = index + 1;
        self.snapshot = LogPosition::new(term, index);
        // The run holding `index + 1` now starts there (if the log continues).
        let mut runs: Vec<(Term, u64)> = Vec::new();
        if next <= self.last_index
            && let Some(t) = self.term_at(next)
        {
            runs.push((t, next));
        }
        runs.extend(self.runs.iter().copied().filter(|(_, f)| *f > next));
        self.runs = runs;
        self.check();
        Ok(())
    }

    fn check(&self) {
        assert!(
            self.last_index >= self.snapshot.index,
            "log shape: end before start"
        );
        assert_eq!(
            self.runs.is_empty(),
            self.last_index == self.snapshot.index,
            "log shape: runs and length disagree"
        );
        let mut prev: Option<(Term, u64)> = None;
        for &(term, first) in &self.runs {
            assert!(first > self.snapshot.index && first <= self.last_index);
            assert!(
                term >= self.snapshot.term,
                "log shape: term below the snapshot's"
            );
            if let Some((pt, pf)) = prev {
                assert!(term > pt && first > pf, "log shape: runs out of order");
            }
            prev = Some((term, first));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(snapshot: (u64, u64), runs: &[(u64, u64)]) -> LogShape {
        let mut s = LogShape::new(LogPosition::new(Term(snapshot.0), snapshot.1));
        for &(term, count) in runs {
            s.append(Term(term), count).unwrap();
        }
        s
    }

    /// The encoding orders exactly like the positions (so the election's `u64` comparison is
    /// Raft's up-to-date check), round-trips, and refuses what does not fit.
    #[test]
    fn encoding_orders_like_positions() {
        let ps = [(0, 0), (1, 0), (1, 5), (2, 1), (2, 4_000_000_000), (3, 0)];
        for a in ps {
            for b in ps {
                let (pa, pb) = (
                    LogPosition::new(Term(a.0), a.1),
                    LogPosition::new(Term(b.0), b.1),
                );
                assert_eq!(pa.cmp(&pb), pa.encode().unwrap().cmp(&pb.encode().unwrap()));
                assert_eq!(LogPosition::decode(pa.encode().unwrap()), pa);
            }
        }
        assert!(LogPosition::new(Term(1 << 32), 0).encode().is_err());
        assert!(LogPosition::new(Term(1), 1 << 32).encode().is_err());
    }

    /// Terms are found per run, below the snapshot nothing is known, and the shape refuses an
    /// append of an older term.
    #[test]
    fn term_at_follows_runs() {
        let mut s = shape((1, 10), &[(1, 2), (3, 3), (4, 1)]);
        assert_eq!(s.last(), LogPosition::new(Term(4), 16));
        assert_eq!(s.term_at(9), None);
        assert_eq!(s.term_at(10), Some(Term(1)));
        assert_eq!(s.term_at(12), Some(Term(1)));
        assert_eq!(s.term_at(13), Some(Term(3)));
        assert_eq!(s.term_at(15), Some(Term(3)));
        assert_eq!(s.term_at(16), Some(Term(4)));
        assert_eq!(s.term_at(17), None);
        assert_eq!(s.first_index_of(Term(3)), Some(13));
        assert!(matches!(
            s.append(Term(2), 1),
            Err(ShapeError::TermGoesDown { .. })
        ));
        assert_eq!(
            s.last_agreeing_at_most(16, Term(2)),
            LogPosition::new(Term(1), 12)
        );
        assert_eq!(
            s.last_agreeing_at_most(20, Term(3)),
            LogPosition::new(Term(3), 15)
        );
        assert_eq!(
            s.last_agreeing_at_most(16, Term(0)),
            LogPosition::new(Term(1), 10)
        );
    }

    /// Truncation cuts runs and compaction moves the start; both refuse indexes out of range.
    #[test]
    fn truncate_and_compact() {
        let mut s = shape((0, 0), &[(1, 3), (2, 3)]);
        s.truncate_after(4).unwrap();
        assert_eq!(s.last(), LogPosition::new(Term(2), 4));
        s.truncate_after(3).unwrap();
        assert_eq!(s.last(), LogPosition::new(Term(1), 3));
        s.append(Term(5), 2).unwrap();
        s.compact(4).unwrap();
        assert_eq!(s.snapshot(), LogPosition::new(Term(5), 4));
        assert_eq!(s.term_at(5), Some(Term(5)));
        assert_eq!(s.term_at(3), None);
        assert!(s.truncate_after(3).is_err());
        assert!(s.compact(9).is_err());
        s.compact(5).unwrap();
        assert_eq!(s.last(), LogPosition::new(Term(5), 5));
        assert_eq!(s.snapshot(), s.last());
    }
}
