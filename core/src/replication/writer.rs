//! The writer's side: what each peer holds, the commit index, the client writes held until
//! commit, and what to ship to a replica that asks. One machine per writer term: the driver
//! creates it when its node wins a term and feeds it `StepDown` when the node loses it.

use super::Shipment;
use super::log::{LogPosition, LogShape, ShapeError};
use super::quorum::QuorumConfig;
use crate::{Millis, NodeId, Term};
use std::collections::BTreeMap;

/// Most client writes held at once; beyond it a write is answered "commit unknown" at once
/// (never success), so a stalled quorum cannot grow the writer's memory without bound.
pub const HELD_WRITES_MAX: usize = 65_536;
/// Most entries in one shipment.
pub const SHIP_ENTRIES_MAX: u64 = 4_096;

/// The caller's name for a held client write (opaque to the machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// One input to [`Writer::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterInput {
    /// The writer's own store made entries up to `last` durable (the no-op, client writes).
    Appended { last: LogPosition },
    /// A peer's durable position, from an ok heartbeat ack of this term (or any other report).
    PeerPosition { peer: NodeId, position: LogPosition },
    /// A replica asks for at most `max_entries` entries after `after` (its last entry, or where
    /// a conflict sent it); at most [`SHIP_ENTRIES_MAX`] are shipped.
    Pull {
        peer: NodeId,
        after: LogPosition,
        max_entries: u64,
    },
    /// Hold the answer to the client write that the store logged at `at` until it commits, or
    /// answer "commit unknown" once `now ≥ deadline`.
    Hold {
        write: WriteId,
        at: LogPosition,
        deadline: Millis,
    },
    /// The writer's store compacted its log up to `index` (which must be committed).
    Compacted { index: u64 },
    /// Time passed: held writes past their deadline are answered "commit unknown".
    Tick,
    /// This node is no longer the writer of the term: every held write is answered "commit
    /// unknown" (it may still commit under the next writer, or not: nobody can say yet).
    StepDown,
}

/// How a held write ends. There is no third way: a write is never reported as a success unless
/// a quorum holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A quorum holds the entry: answer the client with success.
    Committed,
    /// The deadline passed, the writer stepped down, or too many writes were held: the entry
    /// may or may not survive (answer 504 `commit_unknown`).
    CommitUnknown,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterEffect {
    /// Append the no-op entry of `term` (Raft §8): until it commits, the writer does not know
    /// the commit index and must not serve strong reads.
    AppendNoop { term: Term },
    /// The commit index advanced to `index` (tell the replicas in the next shipment).
    Committed { index: u64 },
    /// Answer a held client write.
    Release { write: WriteId, outcome: Outcome },
    /// Send this to the peer that pulled (the shell attaches the entries' data).
    Ship { peer: NodeId, shipment: Shipment },
}

/// Why the writer refused an input (outside input that does not fit; the state is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriterError {
    #[error("writer of term {term}: the store reported an entry of term {got}")]
    WrongTerm { term: Term, got: Term },
    #[error("writer: the store's log went backwards from {was} to {now}")]
    LogWentBack { was: LogPosition, now: LogPosition },
    #[error("writer: compaction to {index} passes the commit index {commit}")]
    CompactUncommitted { index: u64, commit: u64 },
    #[error("writer: {0}")]
    Shape(#[from] ShapeError),
}

#[derive(Clone, Debug)]
struct Held {
    index: u64,
    deadline: Millis,
}

/// The writer's replication bookkeeping for one term.
#[derive(Clone, Debug)]
pub struct Writer {
    me: NodeId,
    term: Term,
    config: QuorumConfig,
    log: LogShape,
    commit: u64,
    /// Per member (not us): the highest index known to match our log.
    matched: BTreeMap<NodeId, u64>,
    held: BTreeMap<WriteId, Held>,
    stepped_down: bool,
    /// Peer reports of an entry of our term past the end of our log: early (our store appended
    /// it, and its report to us is on its way: the peer got the entry from our store) or untrue.
    bogus_reports: u64,
    /// Per peer, the highest such early report: believed once our own log reaches it, so the
    /// peer's next report (a heartbeat later, or its next pull, which waits for new entries)
    /// is not what commits it.
    early: BTreeMap<NodeId, u64>,
}

impl Writer {
    /// The machine of `me`, writer of `term`, over its store's `log` with the commit index it
    /// knows (`commit` ≤ its last entry). Returns the no-op to append first.
    pub fn new(
        me: NodeId,
        term: Term,
        config: QuorumConfig,
        log: LogShape,
        commit: u64,
    ) -> (Writer, Vec<WriterEffect>) {
        assert!(
            log.last().term <= term,
            "replication: a writer of term {term} whose log has a later term"
        );
        let commit = commit.min(log.last().index).max(log.snapshot().index);
        let writer = Writer {
            matched: config
                .members()
                .into_iter()
                .filter(|m| *m != me)
                .map(|m| (m, 0))
                .collect(),
            me,
            term,
            config,
            log,
            commit,
            held: BTreeMap::new(),
            stepped_down: false,
            bogus_reports: 0,
            early: BTreeMap::new(),
        };
        (writer, vec![WriterEffect::AppendNoop { term }])
    }

    pub fn term(&self) -> Term {
        self.term
    }
    pub fn commit(&self) -> u64 {
        self.commit
    }
    pub fn log(&self) -> &LogShape {
        &self.log
    }
    pub fn matched(&self) -> &BTreeMap<NodeId, u64> {
        &self.matched
    }
    pub fn held_count(&self) -> usize {
        self.held.len()
    }
    pub fn bogus_reports(&self) -> u64 {
        self.bogus_reports
    }

    /// The quorum rule commits are counted by: the election's configuration, which changes
    /// during the term as the writer proposes learners, C(old, new) and C(new) (issue 18). The
    /// writer counts by its newest configuration from the moment it proposes it (as Raft's
    /// leader does), so a joint configuration needs a majority of both halves at once. Members
    /// keep the position they matched; new ones start at nothing; members that left are
    /// forgotten. Commit never goes down: a configuration whose quorum holds less than the
    /// commit only delays the next one.
    pub fn set_config(&mut self, config: QuorumConfig) -> Vec<WriterEffect> {
        let mut out = Vec::new();
        if config == self.config {
            return out;
        }
        let members = config.members();
        self.matched.retain(|m, _| members.contains(m));
        self.early.retain(|m, _| members.contains(m));
        for m in members {
            if m != self.me {
                self.matched.entry(m).or_insert(0);
            }
        }
        self.config = config;
        self.advance_commit(&mut out);
        self.check_commit();
        out
    }

    pub fn config(&self) -> &QuorumConfig {
        &self.config
    }

    /// Strong reads need an entry of this term committed (Raft §8: only then is the commit index
    /// known to include every write acknowledged by earlier writers). The lease is the election's
    /// business (`quasar::Node::can_accept_writes`); the caller checks both.
    pub fn strong_reads_ready(&self) -> bool {
        !self.stepped_down
            && self
                .log
                .first_index_of(self.term)
                .is_some_and(|first| self.commit >= first)
    }

    /// Feed one input at `now`. Outside input that cannot be true is refused with the reason and
    /// changes nothing.
    #[must_use = "the effects must be performed"]
    pub fn step(
        &mut self,
        now: Millis,
        input: WriterInput,
    ) -> Result<Vec<WriterEffect>, WriterError> {
        let commit_before = self.commit;
        let mut out = Vec::new();
        match input {
            WriterInput::Appended { last } => self.on_appended(last, &mut out)?,
            WriterInput::PeerPosition { peer, position } => {
                self.on_peer_position(&peer, position, &mut out)
            }
            WriterInput::Pull {
                peer,
                after,
                max_entries,
            } => {
                self.on_peer_position(&peer, after, &mut out);
                let shipment = self.shipment(after, max_entries);
                out.push(WriterEffect::Ship { peer, shipment });
            }
            WriterInput::Hold {
                write,
                at,
                deadline,
            } => self.hold(now, write, at, deadline, &mut out),
            WriterInput::Compacted { index } => {
                if index > self.commit {
                    return Err(WriterError::CompactUncommitted {
                        index,
                        commit: self.commit,
                    });
                }
                if index > self.log.snapshot().index {
                    self.log.compact(index)?;
                }
            }
            WriterInput::Tick => self.expire(now, &mut out),
            WriterInput::StepDown => {
                self.stepped_down = true;
                for (write, _) in std::mem::take(&mut self.held) {
                    out.push(WriterEffect::Release {
                        write,
                        outcome: Outcome::CommitUnknown,
                    });
                }
            }
        }
        assert!(
            self.commit >= commit_before,
            "replication: commit went down"
        );
        self.check_commit();
        Ok(out)
    }

    fn on_appended(
        &mut self,
        last: LogPosition,
        out: &mut Vec<WriterEffect>,
    ) -> Result<(), WriterError> {
        if last.term != self.term {
            return Err(WriterError::WrongTerm {
                term: self.term,
                got: last.term,
            });
        }
        let was = self.log.last();
        if last.index < was.index {
            return Err(WriterError::LogWentBack { was, now: last });
        }
        self.log.append(self.term, last.index - was.index)?;
        let reached: Vec<(NodeId, u64)> = self
            .early
            .iter()
            .filter(|(_, index)| **index <= last.index)
            .map(|(peer, index)| (peer.clone(), *index))
            .collect();
        for (peer, index) in reached {
            self.early.remove(&peer);
            if self.log.term_at(index) == Some(self.term)
                && let Some(matched) = self.matched.get_mut(&peer)
            {
                *matched = (*matched).max(index);
            }
        }
        self.advance_commit(out);
        Ok(())
    }

    /// A peer at `position` matches our log up to it if we hold the same entry there (Log
    /// Matching: same index and term, same log up to it). Anything else teaches nothing.
    fn on_peer_position(
        &mut self,
        peer: &NodeId,
        position: LogPosition,
        out: &mut Vec<WriterEffect>,
    ) {
        let Some(matched) = self.matched.get_mut(peer) else {
            return; // not a member: learners are members, strangers are not
        };
        if position.term == self.term && position.index > self.log.last().index {
            // Entries of our term come only from our store: a peer cannot hold more than it
            // appended, so this is believed only once our store says it holds that much too.
            self.bogus_reports += 1;
            let early = self.early.entry(peer.clone()).or_insert(0);
            *early = (*early).max(position.index);
            return;
        }
        if self.log.term_at(position.index) != Some(position.term) {
            return;
        }
        *matched = (*matched).max(position.index);
        self.advance_commit(out);
    }

    /// Commit is the highest index a quorum holds, but only if that entry is of our term: an
    /// older term's entry is committed only indirectly, by a later entry of ours (Raft §5.4.2).
    fn advance_commit(&mut self, out: &mut Vec<WriterEffect>) {
        if self.stepped_down {
            return;
        }
        let mut acked = self.matched.clone();
        acked.insert(self.me.clone(), self.log.last().index);
        let candidate = self.config.committed_index(&acked);
        // Planted `older-term-commit`: the §5.4.2 rule left out.
        let ours =
            self.log.term_at(candidate) == Some(self.term) || crate::buggify!(OlderTermCommit);
        if candidate <= self.commit || !ours {
            return;
        }
        self.commit = candidate;
        out.push(WriterEffect::Committed { index: candidate });
        let ready: Vec<WriteId> = self
            .held
            .iter()
            .filter(|(_, h)| h.index <= candidate)
            .map(|(w, _)| *w)
            .collect();
        for write in ready {
            self.held.remove(&write);
            out.push(WriterEffect::Release {
                write,
                outcome: Outcome::Committed,
            });
        }
    }

    fn hold(
        &mut self,
        now: Millis,
        write: WriteId,
        at: LogPosition,
        deadline: Millis,
        out: &mut Vec<WriterEffect>,
    ) {
        let unknown = WriterEffect::Release {
            write,
            outcome: Outcome::CommitUnknown,
        };
        // Only an entry of our term that our log holds can be vouched for.
        let ours = at.term == self.term && self.log.term_at(at.index) == Some(self.term);
        if !ours || self.stepped_down || now >= deadline {
            out.push(unknown);
            return;
        }
        // Planted `ack-before-commit`: the answer goes out as soon as the writer's store holds it.
        if at.index <= self.commit || crate::buggify!(AckBeforeCommit) {
            out.push(WriterEffect::Release {
                write,
                outcome: Outcome::Committed,
            });
            return;
        }
        if self.held.len() >= HELD_WRITES_MAX && !self.held.contains_key(&write) {
            out.push(unknown);
            return;
        }
        self.held.insert(
            write,
            Held {
                index: at.index,
                deadline,
            },
        );
    }

    fn expire(&mut self, now: Millis, out: &mut Vec<WriterEffect>) {
        let late: Vec<WriteId> = self
            .held
            .iter()
            .filter(|(_, h)| now >= h.deadline)
            .map(|(w, _)| *w)
            .collect();
        for write in late {
            self.held.remove(&write);
            out.push(WriterEffect::Release {
                write,
                outcome: Outcome::CommitUnknown,
            });
        }
    }

    /// What to send a replica whose log ends at `after` (or that a conflict sent back there).
    fn shipment(&self, after: LogPosition, max_entries: u64) -> Shipment {
        let snapshot = self.log.snapshot();
        let last = self.log.last().index;
        let prev = self.log.shipment_prev(after);
        let end = last.min(prev.index.saturating_add(max_entries.min(SHIP_ENTRIES_MAX)));
        let entries = (prev.index + 1..=end)
            .map(|i| self.log.term_at(i).expect("held entries have terms"))
            .collect();
        Shipment {
            term: self.term,
            prev,
            entries,
            commit: self.commit,
            log_start: snapshot,
        }
    }

    fn check_commit(&self) {
        assert!(
            self.commit <= self.log.last().index,
            "replication: commit past the writer's log"
        );
        assert!(
            self.held.values().all(|h| h.index > self.commit),
            "replication: a write held past its commit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    fn pos(term: u64, index: u64) -> LogPosition {
        LogPosition::new(Term(term), index)
    }

    /// A writer of term 2 over a log of three term-1 entries, in a cluster of a, b, c.
    fn writer() -> Writer {
        let mut log = LogShape::new(LogPosition::ZERO);
        log.append(Term(1), 3).unwrap();
        let config = QuorumConfig::simple(ids(&["a", "b", "c"])).unwrap();
        let (w, out) = Writer::new(NodeId::from("a"), Term(2), config, log, 0);
        assert_eq!(out, vec![WriterEffect::AppendNoop { term: Term(2) }]);
        w
    }

    fn step(w: &mut Writer, now: u64, input: WriterInput) -> Vec<WriterEffect> {
        w.step(Millis(now), input).unwrap()
    }

    fn peer(w: &mut Writer, name: &str, p: LogPosition) -> Vec<WriterEffect> {
        step(
            w,
            0,
            WriterInput::PeerPosition {
                peer: NodeId::from(name),
                position: p,
            },
        )
    }

    /// Raft §5.4.2 (the paper's figure 8): a majority holding an older term's entries does not
    /// commit them; the first entry of the writer's own term on a majority commits it and
    /// everything before it. Strong reads wait for that.
    #[test]
    fn commit_counts_only_entries_of_the_current_term() {
        let mut w = writer();
        assert!(peer(&mut w, "b", pos(1, 3)).is_empty());
        assert_eq!(
            w.commit(),
            0,
            "a majority of term-1 entries is not a commit"
        );
        assert!(step(&mut w, 0, WriterInput::Appended { last: pos(2, 4) }).is_empty());
        assert!(!w.strong_reads_ready());
        assert_eq!(
            peer(&mut w, "b", pos(2, 4)),
            vec![WriterEffect::Committed { index: 4 }]
        );
        assert!(w.strong_reads_ready());
        // A stale, lower report changes nothing.
        assert!(peer(&mut w, "b", pos(1, 2)).is_empty());
        assert_eq!(w.commit(), 4);
    }

    /// A held write is answered Committed once a majority holds it, "commit unknown" at its
    /// deadline or when the writer steps down, and never Committed otherwise.
    #[test]
    fn held_writes_end_committed_or_unknown() {
        let mut w = writer();
        let _ = step(&mut w, 0, WriterInput::Appended { last: pos(2, 6) });
        let hold = |write, index, deadline| WriterInput::Hold {
            write: WriteId(write),
            at: pos(2, index),
            deadline: Millis(deadline),
        };
        assert!(step(&mut w, 10, hold(1, 5, 100)).is_empty());
        assert!(step(&mut w, 10, hold(2, 6, 50)).is_empty());
        assert!(step(&mut w, 49, WriterInput::Tick).is_empty());
        let out = peer(&mut w, "c", pos(2, 5));
        assert_eq!(
            out,
            vec![
                WriterEffect::Committed { index: 5 },
                WriterEffect::Release {
                    write: WriteId(1),
                    outcome: Outcome::Committed
                }
            ]
        );
        assert_eq!(
            step(&mut w, 50, WriterInput::Tick),
            vec![WriterEffect::Release {
                write: WriteId(2),
                outcome: Outcome::CommitUnknown
            }]
        );
        // An entry the writer does not hold, or of another term, cannot be vouched for.
        let unknown = |write| {
            vec![WriterEffect::Release {
                write: WriteId(write),
                outcome: Outcome::CommitUnknown,
            }]
        };
        assert_eq!(step(&mut w, 60, hold(3, 9, 100)), unknown(3));
        let old = WriterInput::Hold {
            write: WriteId(4),
            at: pos(1, 2),
            deadline: Millis(100),
        };
        assert_eq!(step(&mut w, 60, old), unknown(4));
        assert!(step(&mut w, 60, hold(5, 6, 100)).is_empty());
        assert_eq!(step(&mut w, 61, WriterInput::StepDown), unknown(5));
        assert!(
            peer(&mut w, "b", pos(2, 6)).is_empty(),
            "no commit after step-down"
        );
    }

    /// Reports that cannot be true (yet) and inputs out of order are refused, not believed; a
    /// peer's report of our term past our log is believed once our log reaches it.
    #[test]
    fn bogus_input_is_refused() {
        let mut w = writer();
        let _ = step(&mut w, 0, WriterInput::Appended { last: pos(2, 4) });
        assert!(peer(&mut w, "b", pos(2, 9)).is_empty());
        assert_eq!(w.bogus_reports(), 1);
        assert!(peer(&mut w, "stranger", pos(2, 4)).is_empty());
        assert_eq!(w.commit(), 0);
        assert!(matches!(
            w.step(Millis(0), WriterInput::Appended { last: pos(3, 5) }),
            Err(WriterError::WrongTerm { .. })
        ));
        assert!(matches!(
            w.step(Millis(0), WriterInput::Appended { last: pos(2, 3) }),
            Err(WriterError::LogWentBack { .. })
        ));
        assert!(matches!(
            w.step(Millis(0), WriterInput::Compacted { index: 2 }),
            Err(WriterError::CompactUncommitted { .. })
        ));
        // b's early report of (2, 9) counts once our own log holds (2, 9), not before: without
        // this, commit waited for b's next report (its next pull, or a heartbeat ack).
        let out = step(&mut w, 0, WriterInput::Appended { last: pos(2, 8) });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(w.commit(), 0);
        let out = step(&mut w, 0, WriterInput::Appended { last: pos(2, 9) });
        assert_eq!(out, vec![WriterEffect::Committed { index: 9 }]);
        assert_eq!(w.matched().get(&NodeId::from("b")), Some(&9));
    }

    /// The rule that lets a store ship entries before its own fsync (module docs, 7.): peers
    /// holding an entry of the writer's term that the writer has not reported durable do not
    /// commit it, however many they are; it commits once the writer's own log holds it. Fails
    /// if commit counts an entry the writer's store has not made durable.
    #[test]
    fn the_writer_counts_itself_only_once_durable() {
        let config = QuorumConfig::simple(ids(&["a", "b", "c", "d", "e"])).unwrap();
        let (mut w, _) = Writer::new(
            NodeId::from("a"),
            Term(1),
            config,
            LogShape::new(LogPosition::ZERO),
            0,
        );
        let _ = step(&mut w, 0, WriterInput::Appended { last: pos(1, 2) });
        for p in ["b", "c", "d", "e"] {
            let _ = peer(&mut w, p, pos(1, 3));
        }
        assert_eq!(
            w.commit(),
            0,
            "four of five hold 3, but the writer's durable log ends at 2"
        );
        let out = step(&mut w, 0, WriterInput::Appended { last: pos(1, 3) });
        assert_eq!(out, vec![WriterEffect::Committed { index: 3 }]);
    }

    fn ship(w: &mut Writer, after: LogPosition) -> Shipment {
        let out = step(
            w,
            0,
            WriterInput::Pull {
                peer: NodeId::from("b"),
                after,
                max_entries: SHIP_ENTRIES_MAX,
            },
        );
        match out.last() {
            Some(WriterEffect::Ship { shipment, .. }) => shipment.clone(),
            other => panic!("no shipment: {other:?}"),
        }
    }

    /// A pull after a matching entry gets what follows; after an entry of a term the writer does
    /// not share, it is sent back to where the logs may agree; below the log start, the shipment
    /// starts at the snapshot (so the replica asks for it).
    #[test]
    fn shipments_start_where_the_logs_agree() {
        let mut w = writer();
        let _ = step(&mut w, 0, WriterInput::Appended { last: pos(2, 5) });
        let s = ship(&mut w, pos(1, 3));
        assert_eq!(
            (s.prev, s.entries.clone()),
            (pos(1, 3), vec![Term(2), Term(2)])
        );
        // The pull proved b matches up to 3 only: no entry of term 2 is on a majority yet.
        assert_eq!(w.commit(), 0);
        let s = ship(&mut w, pos(1, 9));
        assert_eq!(s.prev, pos(1, 3));
        let s = ship(&mut w, pos(2, 5));
        assert!(s.entries.is_empty());
        assert_eq!(w.commit(), 5, "the pull after (2, 5) proves b holds 5");
        let _ = step(&mut w, 0, WriterInput::Compacted { index: 4 });
        let s = ship(&mut w, pos(1, 1));
        assert_eq!((s.prev, s.log_start), (pos(2, 4), pos(2, 4)));
        assert_eq!(s.entries, vec![Term(2)]);
    }

    /// In a joint configuration the writer needs a majority of both halves; a learner's ack
    /// does not count.
    #[test]
    fn joint_commit_needs_both_halves() {
        let config =
            QuorumConfig::joint(ids(&["a", "b", "c"]), ids(&["a", "d", "e"]), ids(&["l"])).unwrap();
        let (mut w, _) = Writer::new(
            NodeId::from("a"),
            Term(1),
            config,
            LogShape::new(LogPosition::ZERO),
            0,
        );
        let _ = step(&mut w, 0, WriterInput::Appended { last: pos(1, 1) });
        assert!(peer(&mut w, "b", pos(1, 1)).is_empty());
        assert!(peer(&mut w, "l", pos(1, 1)).is_empty());
        assert_eq!(w.commit(), 0);
        assert_eq!(
            peer(&mut w, "e", pos(1, 1)),
            vec![WriterEffect::Committed { index: 1 }]
        );
    }
}
