//! Properties of the replication machines (`core::replication`) against a model cluster of 3 or 5
//! stores whose logs hold real entries, driven by random client writes, pulls, shipments and
//! heartbeat reports that are delivered late, out of order or never, compactions, and writer
//! changes with term bumps, where a candidate wins only with the votes of a majority whose
//! election positions (kept as the election keeps them: newest by epoch, then position) are at
//! most its own. Checked after every step:
//!
//! - an entry once reported committed is on a majority of the stores, is never truncated, and
//!   is in every later writer's log (Leader Completeness through the positions);
//! - two commits never name different entries for one index; a write is released as committed
//!   only if its entry is committed; a replica applies only committed entries;
//! - each machine's log shape matches the entries its store holds, and a store's reported
//!   position is its log's end;
//! - (inside the machines, by `assert!`) commit never decreases and only counts the writer's own
//!   term; a replica's position goes down only with a new epoch.
//!
//! And after the faults: a writer elected by everyone brings every store to its log and commits a
//! new write (so the properties are not met by never committing anything).

use base_core::replication::{
    LogPosition, LogShape, Outcome, QuorumConfig, Replica, ReplicaEffect, ReplicaInput,
    ReplicaState, Shipment, WriteId, Writer, WriterEffect, WriterInput,
};
use base_core::{Millis, NodeId, Term};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::collections::BTreeMap;

/// An entry as a store holds it: its term and a unique id standing for its data.
type Entry = (Term, u64);

const COMMIT_TIMEOUT_MS: u64 = 50;

#[derive(Clone, Debug)]
enum Action {
    Write,
    Pull(u8),
    Report(u8),
    Deliver(u8),
    Drop(u8),
    Elect(u8, u8),
    Compact,
    Tick(u8),
}

impl Arbitrary for Action {
    fn arbitrary(g: &mut Gen) -> Action {
        match u8::arbitrary(g) % 16 {
            0..=2 => Action::Write,
            3..=4 => Action::Pull(u8::arbitrary(g)),
            5..=6 => Action::Report(u8::arbitrary(g)),
            7..=10 => Action::Deliver(u8::arbitrary(g)),
            11 => Action::Drop(u8::arbitrary(g)),
            12 => Action::Elect(u8::arbitrary(g), u8::arbitrary(g)),
            13 => Action::Compact,
            _ => Action::Tick(u8::arbitrary(g)),
        }
    }
}

#[derive(Clone, Debug)]
struct Plan {
    size: usize,
    actions: Vec<Action>,
}

impl Arbitrary for Plan {
    fn arbitrary(g: &mut Gen) -> Plan {
        let len = usize::arbitrary(g) % 300 + 20;
        Plan {
            size: if bool::arbitrary(g) { 3 } else { 5 },
            actions: (0..len).map(|_| Action::arbitrary(g)).collect(),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Plan>> {
        let size = self.size;
        Box::new(
            self.actions
                .shrink()
                .map(move |actions| Plan { size, actions }),
        )
    }
}

#[derive(Clone, Debug)]
enum Msg {
    Pull {
        from: usize,
        to: usize,
        term: Term,
        after: LogPosition,
        max_entries: u64,
    },
    Ship {
        to: usize,
        shipment: Shipment,
        data: Vec<Entry>,
    },
    Report {
        from: usize,
        to: usize,
        term: Term,
        position: LogPosition,
    },
}

struct Store {
    id: NodeId,
    /// Entry `i` at `entries[i - 1]`, the snapshot's prefix included (a snapshot holds the same
    /// data, so the model keeps it entry by entry).
    entries: Vec<Entry>,
    writer: Option<Writer>,
    replica: Replica,
    /// The election's view of this node: newest by epoch, then position (`quasar::Node`).
    claim: (u64, LogPosition),
    /// The node's election term.
    term: Term,
}

impl Store {
    fn last(&self) -> LogPosition {
        self.entries.last().map_or(LogPosition::ZERO, |e| {
            LogPosition::new(e.0, self.entries.len() as u64)
        })
    }

    fn shape(&self) -> &LogShape {
        match &self.writer {
            Some(w) => w.log(),
            None => &self.replica.state().log,
        }
    }
}

struct World {
    stores: Vec<Store>,
    config: QuorumConfig,
    writer: Option<usize>,
    term: Term,
    now: u64,
    inflight: Vec<Msg>,
    committed: BTreeMap<u64, Entry>,
    /// Held writes: id → the entry's index.
    held: BTreeMap<u64, u64>,
    acked: u64,
    next_id: u64,
    violation: Option<String>,
}

impl World {
    fn new(size: usize) -> World {
        let ids: Vec<NodeId> = (0..size).map(|i| NodeId::new(format!("n{i}"))).collect();
        World {
            stores: ids
                .iter()
                .map(|id| Store {
                    id: id.clone(),
                    entries: Vec::new(),
                    writer: None,
                    replica: Replica::new(ReplicaState::default()),
                    claim: (0, LogPosition::ZERO),
                    term: Term(0),
                })
                .collect(),
            config: QuorumConfig::simple(ids).expect("a valid config"),
            writer: None,
            term: Term(0),
            now: 0,
            inflight: Vec::new(),
            committed: BTreeMap::new(),
            held: BTreeMap::new(),
            acked: 0,
            next_id: 1,
            violation: None,
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn act(&mut self, action: &Action) {
        let n = self.stores.len();
        match *action {
            Action::Write => self.write(),
            Action::Pull(r) => self.pull(
                r as usize % n,
                if r < 128 { u64::from(r % 3) + 1 } else { 1_000 },
            ),
            Action::Report(r) => self.report(r as usize % n),
            Action::Deliver(k) => {
                if !self.inflight.is_empty() {
                    let m = self.inflight.remove(k as usize % self.inflight.len());
                    self.deliver(m);
                }
            }
            Action::Drop(k) => {
                if !self.inflight.is_empty() {
                    let k = k as usize % self.inflight.len();
                    self.inflight.remove(k);
                }
            }
            Action::Elect(c, mask) => {
                let c = c as usize % n;
                let voters: Vec<usize> =
                    (0..n).filter(|&v| v == c || mask & (1 << v) != 0).collect();
                self.elect(c, &voters);
            }
            Action::Compact => {
                if let Some(w) = self.writer {
                    let writer = self.stores[w].writer.as_mut().expect("writer machine");
                    let index = writer.commit();
                    let out = writer
                        .step(Millis(self.now), WriterInput::Compacted { index })
                        .expect("compaction to commit");
                    assert!(out.is_empty());
                }
            }
            Action::Tick(ms) => {
                self.now += u64::from(ms);
                if let Some(w) = self.writer {
                    self.writer_step(w, WriterInput::Tick);
                }
            }
        }
        self.check();
    }

    fn write(&mut self) {
        let Some(w) = self.writer else { return };
        let id = self.id();
        let term = self.term;
        self.stores[w].entries.push((term, id));
        let at = self.stores[w].last();
        let claim = &mut self.stores[w].claim;
        *claim = (*claim).max((claim.0, at));
        self.writer_step(w, WriterInput::Appended { last: at });
        self.held.insert(id, at.index);
        let deadline = Millis(self.now + COMMIT_TIMEOUT_MS);
        self.writer_step(
            w,
            WriterInput::Hold {
                write: WriteId(id),
                at,
                deadline,
            },
        );
    }

    fn pull(&mut self, r: usize, max_entries: u64) {
        let Some(w) = self.writer else { return };
        if r == w {
            return;
        }
        let after = self.stores[r].replica.last();
        self.inflight.push(Msg::Pull {
            from: r,
            to: w,
            term: self.term,
            after,
            max_entries,
        });
    }

    /// A heartbeat ack: the writer's heartbeat brings the node to its term, the ack carries the
    /// election's position.
    fn report(&mut self, r: usize) {
        let Some(w) = self.writer else { return };
        if r == w || self.stores[r].term > self.term {
            return;
        }
        self.stores[r].term = self.term;
        self.inflight.push(Msg::Report {
            from: r,
            to: w,
            term: self.term,
            position: self.stores[r].claim.1,
        });
    }

    fn deliver(&mut self, m: Msg) {
        match m {
            Msg::Pull {
                from,
                to,
                term,
                after,
                max_entries,
            } => {
                if self.writer == Some(to) && self.term == term {
                    let peer = self.stores[from].id.clone();
                    let pull = WriterInput::Pull {
                        peer,
                        after,
                        max_entries,
                    };
                    self.writer_step(to, pull);
                }
            }
            Msg::Report {
                from,
                to,
                term,
                position,
            } => {
                if self.writer == Some(to) && self.term == term {
                    let peer = self.stores[from].id.clone();
                    self.writer_step(to, WriterInput::PeerPosition { peer, position });
                }
            }
            Msg::Ship { to, shipment, data } => {
                if self.stores[to].writer.is_some() {
                    return; // a writer takes no shipments
                }
                let first = shipment.prev.index + 1;
                match self.stores[to]
                    .replica
                    .step(ReplicaInput::Shipment(shipment))
                {
                    Ok(effects) => self.perform_replica(to, effects, first, &data),
                    Err(e) => {
                        if matches!(
                            e,
                            base_core::replication::ReplicaError::CommittedConflict { .. }
                        ) {
                            self.violate(format!("n{to}: {e}"));
                        }
                    }
                }
            }
        }
    }

    fn writer_step(&mut self, w: usize, input: WriterInput) {
        let now = Millis(self.now);
        let writer = self.stores[w].writer.as_mut().expect("writer machine");
        let effects = match writer.step(now, input) {
            Ok(effects) => effects,
            Err(e) => return self.violate(format!("writer n{w}: {e}")),
        };
        for effect in effects {
            match effect {
                WriterEffect::AppendNoop { .. } => unreachable!("only at creation"),
                WriterEffect::Committed { index } => {
                    for i in 1..=index {
                        let e = self.stores[w].entries[i as usize - 1];
                        match self.committed.insert(i, e) {
                            Some(old) if old != e => self.violate(format!(
                                "index {i} committed as {old:?} and then as {e:?}"
                            )),
                            _ => {}
                        }
                    }
                }
                WriterEffect::Release { write, outcome } => {
                    let index = self.held.remove(&write.0).expect("a held write");
                    if outcome == Outcome::Committed {
                        self.acked += 1;
                        let entry = self.committed.get(&index).copied();
                        if entry.map(|e| e.1) != Some(write.0) {
                            self.violate(format!(
                                "write {} released as committed, but index {index} is {entry:?}",
                                write.0
                            ));
                        }
                    }
                }
                WriterEffect::Ship { peer, shipment } => {
                    let to = self
                        .stores
                        .iter()
                        .position(|s| s.id == peer)
                        .expect("a peer");
                    let from = shipment.prev.index as usize;
                    let data = self.stores[w].entries[from..from + shipment.entries.len()].to_vec();
                    self.inflight.push(Msg::Ship { to, shipment, data });
                }
            }
        }
    }

    /// Performs a replica's effects; `data` holds the shipment's entries from index `first`.
    fn perform_replica(
        &mut self,
        r: usize,
        effects: Vec<ReplicaEffect>,
        first: u64,
        data: &[Entry],
    ) {
        for effect in effects {
            match effect {
                ReplicaEffect::TruncateAfter { index, .. } => {
                    let cut = self.stores[r]
                        .entries
                        .iter()
                        .enumerate()
                        .skip(index as usize);
                    let lost = cut
                        .map(|(k, e)| (k as u64 + 1, *e))
                        .find(|(i, e)| self.committed.get(i) == Some(e));
                    if let Some((i, e)) = lost {
                        self.violate(format!("n{r} truncates the committed {e:?} at {i}"));
                    }
                    self.stores[r].entries.truncate(index as usize);
                }
                ReplicaEffect::Append { from, to } => {
                    assert_eq!(from as usize, self.stores[r].entries.len() + 1);
                    let range = (from - first) as usize..=(to - first) as usize;
                    self.stores[r].entries.extend_from_slice(&data[range]);
                }
                ReplicaEffect::Apply { up_to } => {
                    for i in 1..=up_to {
                        let held = self.stores[r].entries[i as usize - 1];
                        if self.committed.get(&i) != Some(&held) {
                            self.violate(format!("n{r} applies {held:?} at {i}, not committed"));
                        }
                    }
                }
                ReplicaEffect::FetchSnapshot { at_least, .. } => {
                    let input = match self.writer {
                        Some(w) if self.stores[w].shape().snapshot() >= at_least => {
                            let at = self.stores[w].shape().snapshot();
                            let prefix = self.stores[w].entries[..at.index as usize].to_vec();
                            let own = &self.stores[r].entries;
                            let lost = own.iter().enumerate().any(|(k, e)| {
                                self.committed.get(&(k as u64 + 1)) == Some(e)
                                    && prefix.get(k) != Some(e)
                            });
                            if lost {
                                let what = format!("n{r} loses entries to the snapshot at {at}");
                                self.violate(what);
                            }
                            self.stores[r].entries = prefix;
                            ReplicaInput::SnapshotInstalled { at }
                        }
                        _ => ReplicaInput::SnapshotFailed,
                    };
                    let effects = self.stores[r]
                        .replica
                        .step(input)
                        .expect("a snapshot installs");
                    self.perform_replica(r, effects, 0, &[]);
                }
                ReplicaEffect::Position { epoch, position } => {
                    if position != self.stores[r].last() {
                        self.violate(format!(
                            "n{r} reports {position}, its log ends at {}",
                            self.stores[r].last()
                        ));
                    }
                    let claim = &mut self.stores[r].claim;
                    *claim = (*claim).max((epoch, position));
                }
                ReplicaEffect::Pull { after } => {
                    if let Some(w) = self.writer {
                        self.inflight.push(Msg::Pull {
                            from: r,
                            to: w,
                            term: self.term,
                            after,
                            max_entries: if after.index % 2 == 0 { 2 } else { 1_000 },
                        });
                    }
                }
            }
        }
    }

    /// `c` campaigns; each of `voters` grants if `c`'s election position is at least its own.
    fn elect(&mut self, c: usize, voters: &[usize]) -> bool {
        let term = Term(
            self.stores
                .iter()
                .map(|s| s.term)
                .max()
                .unwrap_or_default()
                .0
                + 1,
        );
        let claim = self.stores[c].claim.1;
        let granted = voters
            .iter()
            .filter(|&&v| self.stores[v].claim.1 <= claim)
            .count();
        for &v in voters {
            self.stores[v].term = term;
        }
        if 2 * granted <= self.stores.len() {
            return false;
        }
        if let Some(old) = self.writer.take() {
            self.step_down(old);
        }
        let store = &mut self.stores[c];
        let state = store.replica.state().clone();
        let (mut writer, effects) = Writer::new(
            store.id.clone(),
            term,
            self.config.clone(),
            state.log.clone(),
            state.commit,
        );
        assert_eq!(effects, vec![WriterEffect::AppendNoop { term }]);
        self.next_id += 1;
        store.entries.push((term, self.next_id));
        let last = store.last();
        let out = writer
            .step(Millis(self.now), WriterInput::Appended { last })
            .expect("the no-op appends");
        store.writer = Some(writer);
        store.claim = store.claim.max((store.claim.0, last));
        self.term = term;
        self.writer = Some(c);
        assert!(
            out.iter()
                .all(|e| matches!(e, WriterEffect::Committed { .. }))
        );
        if !out.is_empty() {
            // A single-node majority cannot happen here (3 or 5 nodes), but stay honest.
            self.violate("a no-op committed alone".into());
        }
        // Leader Completeness: the new writer holds every committed entry.
        for (&i, e) in &self.committed {
            if self.stores[c].entries.get(i as usize - 1) != Some(e) {
                let what = format!("n{c} wins term {term} without the committed {e:?} at {i}");
                self.violate(what);
                break;
            }
        }
        true
    }

    fn step_down(&mut self, w: usize) {
        self.writer_step(w, WriterInput::StepDown);
        let store = &mut self.stores[w];
        let writer = store.writer.take().expect("writer machine");
        store.replica = Replica::new(ReplicaState {
            term: writer.term(),
            log: writer.log().clone(),
            commit: writer.commit(),
            applied: writer.log().last().index,
            epoch: store.replica.epoch(),
        });
    }

    fn check(&mut self) {
        let n = self.stores.len();
        for (&i, e) in &self.committed {
            let holders = self
                .stores
                .iter()
                .filter(|s| s.entries.get(i as usize - 1) == Some(e))
                .count();
            if 2 * holders <= n {
                let what = format!("committed {e:?} at {i} is on {holders} of {n} stores");
                self.violate(what);
                return;
            }
        }
        for (r, s) in self.stores.iter().enumerate() {
            let shape = s.shape();
            let problem = if shape.last() != s.last() {
                Some(format!(
                    "shape ends at {}, log at {}",
                    shape.last(),
                    s.last()
                ))
            } else {
                (shape.snapshot().index + 1..=shape.last().index)
                    .find(|&i| shape.term_at(i) != Some(s.entries[i as usize - 1].0))
                    .map(|i| format!("shape and log disagree at {i}"))
            };
            if let Some(p) = problem {
                let what = format!("n{r}: {p}");
                self.violate(what);
                return;
            }
        }
    }

    /// Faults over: everyone votes for the most up-to-date node, messages flow without loss.
    fn heal_and_write(&mut self) -> Result<(), String> {
        self.inflight.clear();
        let n = self.stores.len();
        let best = (0..n)
            .max_by_key(|&i| self.stores[i].claim.1)
            .expect("nodes");
        let all: Vec<usize> = (0..n).collect();
        if !self.elect(best, &all) {
            return Err("the most up-to-date node lost a full vote".into());
        }
        let w = self.writer.expect("a writer");
        self.write();
        let id = self.next_id;
        for _ in 0..200 {
            for r in 0..n {
                self.pull(r, 2);
                self.report(r);
            }
            // What is in flight now; the answers it causes go in the next round.
            for m in std::mem::take(&mut self.inflight) {
                self.deliver(m);
            }
            self.check();
            if let Some(v) = &self.violation {
                return Err(v.clone());
            }
            let caught_up = self
                .stores
                .iter()
                .all(|s| s.entries == self.stores[w].entries);
            if caught_up && !self.held.contains_key(&id) {
                break;
            }
        }
        let last = self.stores[w].last().index;
        if self.committed.get(&last).map(|e| e.1) != Some(id) {
            return Err(format!(
                "the healed cluster did not commit its write at {last}"
            ));
        }
        if let Some(r) = (0..n).find(|&r| self.stores[r].entries != self.stores[w].entries) {
            return Err(format!("n{r} never caught up with the writer"));
        }
        Ok(())
    }
}

fn run(plan: Plan) -> TestResult {
    let mut world = World::new(plan.size);
    for action in &plan.actions {
        world.act(action);
        if let Some(v) = &world.violation {
            return TestResult::error(v.clone());
        }
    }
    match world.heal_and_write() {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

/// The safety properties of the module doc hold for every random schedule, and a healed cluster
/// commits again.
#[test]
fn acknowledged_entries_survive_every_schedule() {
    QuickCheck::new()
        .tests(400)
        .quickcheck(run as fn(Plan) -> TestResult);
}

/// The model is not vacuous: over many schedules, writes are acknowledged during the faults,
/// replicas truncate conflicting suffixes and fetch snapshots.
#[test]
fn schedules_exercise_commits_truncations_and_snapshots() {
    let mut g = Gen::new(100);
    let (mut acked, mut truncations, mut snapshots) = (0, 0, 0);
    for _ in 0..300 {
        let plan = Plan::arbitrary(&mut g);
        let mut world = World::new(plan.size);
        for action in &plan.actions {
            world.act(action);
        }
        assert!(world.violation.is_none(), "{:?}", world.violation);
        acked += world.acked;
        truncations += world
            .stores
            .iter()
            .filter(|s| s.replica.epoch() > 0)
            .count();
        snapshots += world
            .stores
            .iter()
            .filter(|s| s.writer.is_none() && s.replica.state().log.snapshot().index > 0)
            .count();
    }
    // Typical counts over 300 schedules: 100–220 acked, ~250 cut, ~160 snapshots; the bounds
    // are far below, as the schedules are random.
    assert!(acked > 30, "only {acked} writes acknowledged");
    assert!(
        truncations > 80,
        "only {truncations} stores ever cut or re-snapshotted"
    );
    assert!(
        snapshots > 40,
        "only {snapshots} replicas started from a snapshot"
    );
}
