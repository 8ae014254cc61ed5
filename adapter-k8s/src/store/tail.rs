//! The newest entries of the writer's log, in memory, shared by the writer thread and the pull
//! handlers (`GET /_replica/log`), so that a replica's pull is answered without a job on the
//! writer thread: that thread spends most of its time in the fsync of the next batch, and a
//! pull queued behind it waited for that fsync before it could ship anything.
//!
//! The writer thread pushes a batch's entries as soon as its transaction is committed to the
//! OS and before it is fsynced (`Store::execute`), so the replicas' fsyncs run while the
//! writer's does; why that is safe is in `docs/replica-contract.md` (*Durability*) and the
//! `base_core::replication` module docs. After every job the thread reconciles the tail with
//! the log (`Store::sync_tail`): a role, term or epoch change empties it, compaction trims it.
//! A pull it cannot answer exactly as [`Store::serve_log`](super::db::Store::serve_log) would
//! (an older position, one whose term does not match) goes to the writer thread as before.

use super::db::Served;
use super::entry::{self, Entry, FrameError};
use base_core::Term;
use base_core::replication::LogPosition;
use std::collections::VecDeque;

/// The most entries, and frame bytes, kept (a replica further behind is served from the log).
const KEEP_ENTRIES: usize = 4_096;
const KEEP_BYTES: usize = 8 << 20;

#[derive(Debug)]
struct Frame {
    index: u64,
    term: u64,
    bytes: Vec<u8>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Tail {
    /// The writer term it serves in; `None` while the store is not a writer (nothing is served).
    term: Option<u64>,
    epoch: u64,
    /// The entry just before the first one held (or the log's last, when none is).
    before: LogPosition,
    /// Contiguous entries after `before`, framed as shipped.
    frames: VecDeque<Frame>,
    bytes: usize,
    commit: u64,
    log_start: LogPosition,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            term: None,
            epoch: 0,
            before: LogPosition::ZERO,
            frames: VecDeque::new(),
            bytes: 0,
            commit: 0,
            log_start: LogPosition::ZERO,
        }
    }
}

impl Tail {
    pub fn term(&self) -> Option<u64> {
        self.term
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last entry held (or the one it starts after).
    pub fn last(&self) -> LogPosition {
        self.frames
            .back()
            .map_or(self.before, |f| LogPosition::new(Term(f.term), f.index))
    }

    /// Empties it: the next entries follow `last`, served in `term` (`None`: not at all).
    pub fn reset(
        &mut self,
        term: Option<u64>,
        epoch: u64,
        last: LogPosition,
        log_start: LogPosition,
        commit: u64,
    ) {
        *self = Tail {
            term,
            epoch,
            before: last,
            frames: VecDeque::new(),
            bytes: 0,
            commit,
            log_start,
        };
    }

    /// The entry that follows [`Tail::last`].
    pub fn push(&mut self, e: &Entry) -> Result<(), FrameError> {
        assert_eq!(
            e.index,
            self.last().index + 1,
            "store tail: entries out of order"
        );
        let mut bytes = Vec::with_capacity(entry::frame_len(e));
        entry::encode_frame(&mut bytes, e)?;
        self.bytes += bytes.len();
        self.frames.push_back(Frame {
            index: e.index,
            term: e.term,
            bytes,
        });
        while self.frames.len() > KEEP_ENTRIES || self.bytes > KEEP_BYTES {
            self.drop_first();
        }
        Ok(())
    }

    fn drop_first(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.bytes.len();
            self.before = LogPosition::new(Term(f.term), f.index);
        }
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.commit = commit;
    }

    /// The log was compacted up to `start`: entries at or below it are no longer shipped (a
    /// replica behind the log's start is sent to a snapshot, by the writer thread).
    pub fn set_log_start(&mut self, start: LogPosition) {
        self.log_start = start;
        while self.before.index < start.index && !self.frames.is_empty() {
            self.drop_first();
        }
        if self.before.index < start.index {
            self.before = start;
        }
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.before.index {
            return Some(self.before.term.0);
        }
        let k = index.checked_sub(self.before.index + 1)?;
        self.frames.get(usize::try_from(k).ok()?).map(|f| f.term)
    }

    /// What `GET /_replica/log` ships to a replica whose log ends at `after`, if this tail
    /// holds `after` itself: the entries after it (at least one if any, then up to
    /// `max_bytes`), the term, commit and log start. `None`: ask the writer thread.
    pub fn serve(&self, after: LogPosition, max_bytes: usize) -> Option<Served> {
        let term = self.term?;
        if after.index < self.before.index || self.term_at(after.index) != Some(after.term.0) {
            return None;
        }
        let skip = usize::try_from(after.index - self.before.index).ok()?;
        let mut frames = Vec::new();
        for f in self.frames.iter().skip(skip) {
            if !frames.is_empty() && frames.len() + f.bytes.len() > max_bytes {
                break;
            }
            frames.extend_from_slice(&f.bytes);
        }
        Some(Served {
            term,
            prev: after,
            log_start: self.log_start,
            commit: self.commit,
            frames,
        })
    }
}
