//! The simulated Base store, on a replica's PVC: an in-memory log performing the core
//! replication decisions the way the reference store (adapter-k8s `store/db.rs`) performs them
//! on SQLite. Every decision is the core's: a pushed role (`replication::role_change`,
//! `writer_commit`), what a shipment does (`Replica::step`: append, cut, apply, fetch a
//! snapshot), where a shipment starts (`LogShape::shipment_prev`), a snapshot's install
//! (`replication::snapshot_installed`), compaction (`compaction_floor`). What stays here is the
//! storage: a `Vec` of entries (the database is the applied prefix of it: a client write's row
//! is its entry) and the log's shape beside it.

use crate::world::{Entry, WriteId};
use base_core::replication::{
    LogPosition, LogShape, Replica, ReplicaEffect, ReplicaError, ReplicaInput, ReplicaState,
    RoleAnswer, RoleChange, RoleOrder, Shipment, StoreRole, StoreView, compaction_floor,
    role_change, snapshot_installed, writer_commit,
};
use base_core::{NodeId, Term};

/// Entries kept in the log below commit (the reference store's `--log-keep`, 10,000 by
/// default): small here, so that a replica that was away for a while needs a snapshot.
pub const LOG_KEEP: u64 = 40;
/// Most entries per shipment (the reference store caps a shipment's bytes): small here, so that
/// a replica catches up in several shipments and a cut can lower its position.
pub const SHIP_ENTRIES: u64 = 8;

/// One store (it survives restarts of the pod's processes: it lives on the PVC).
#[derive(Clone, Debug)]
pub struct Store {
    pub term: Term,
    pub role: StoreRole,
    pub writer_id: Option<NodeId>,
    pub commit: u64,
    /// The last entry applied to the database (above `commit` only on a writer).
    pub applied: u64,
    pub epoch: u64,
    /// The index of the writer's no-op of its term.
    pub term_start: u64,
    /// Entry `i` at `entries[i - 1]`, from the first on. Those up to the log's start (its
    /// snapshot) are the database's content only: they are no longer shipped one by one.
    entries: Vec<Entry>,
    shape: LogShape,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            term: Term(0),
            role: StoreRole::Replica,
            writer_id: None,
            commit: 0,
            applied: 0,
            epoch: 0,
            term_start: 0,
            entries: Vec::new(),
            shape: LogShape::new(LogPosition::ZERO),
        }
    }
}

/// What the replica's agent does after a shipment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Pull { after: LogPosition },
    FetchSnapshot,
}

/// Why the store refused something (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    StaleTerm { term: Term },
    Shipment(ReplicaError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::StaleTerm { term } => write!(f, "stale term (the store follows {term})"),
            Refusal::Shipment(e) => write!(f, "{e}"),
        }
    }
}

impl Store {
    pub fn last(&self) -> LogPosition {
        self.shape.last()
    }

    /// The entry at `index`, whether in the log or in the snapshot the log starts from.
    pub fn entry(&self, index: u64) -> Option<Entry> {
        let i = usize::try_from(index).ok()?.checked_sub(1)?;
        self.entries.get(i).copied()
    }

    /// The entry at `index` if the database shows it (applied).
    pub fn applied_entry(&self, index: u64) -> Option<Entry> {
        self.entry(index).filter(|_| index <= self.applied)
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The position the election is given: `(last term << 32) | last index`.
    pub fn position(&self) -> u64 {
        self.last()
            .encode()
            .expect("the simulation's logs fit the encoding")
    }

    /// `GET /_replica/state`.
    pub fn view(&self) -> StoreView {
        StoreView {
            role: self.role,
            term: self.term,
            epoch: self.epoch,
            last: self.last(),
            commit: self.commit,
            term_start: self.term_start,
        }
    }

    fn replica_state(&self) -> ReplicaState {
        ReplicaState {
            term: self.term,
            log: self.shape.clone(),
            commit: self.commit,
            applied: self.applied,
            epoch: self.epoch,
        }
    }

    fn push(&mut self, entry: Entry) {
        self.shape
            .append(entry.term, 1)
            .expect("the store appends in term order");
        self.entries.push(entry);
        self.check();
    }

    fn compact(&mut self) {
        let base = self.shape.snapshot().index;
        if let Some(floor) = compaction_floor(self.commit, self.applied, base, LOG_KEEP) {
            self.shape.compact(floor).expect("compaction below commit");
        }
    }

    /// `PUT /_replica/role` (adapter-k8s `Store::set_role`).
    pub fn set_role(&mut self, order: &RoleOrder) -> RoleAnswer {
        let last = self.last().index;
        match role_change(self.term, self.role, order.term, order.role) {
            RoleChange::Stale => {
                return RoleAnswer::StaleTerm {
                    store_term: self.term,
                };
            }
            RoleChange::StayWriter => {
                self.commit = writer_commit(self.commit, order.commit, last);
                self.writer_id = order.writer_id.clone();
                self.compact();
            }
            RoleChange::StayReplica => {
                self.term = order.term;
                self.writer_id = order.writer_id.clone();
            }
            RoleChange::Demote => {
                self.role = StoreRole::Replica;
                self.term = order.term;
                self.writer_id = order.writer_id.clone();
                // The uncommitted suffix is undone (its entries stay in the log until cut).
                self.applied = self.applied.min(self.commit);
            }
            RoleChange::Promote => {
                self.applied = last;
                self.term = order.term;
                self.role = StoreRole::Writer;
                self.writer_id = order.writer_id.clone();
                // The no-op of the new term: once it commits, so has everything before it.
                self.push(Entry {
                    term: order.term,
                    write: None,
                });
                self.applied = last + 1;
                self.term_start = last + 1;
                self.commit = writer_commit(self.commit, order.commit, last);
            }
        }
        self.check();
        RoleAnswer::Done {
            state: self.view(),
            shape: order.want_shape.then(|| self.shape.clone()),
        }
    }

    /// A client write in `term` (`X-Base-Term`): refused unless this store is the writer of
    /// exactly that term; else its entry, applied at once.
    pub fn execute(&mut self, term: Term, write: WriteId) -> Result<LogPosition, Term> {
        if self.role != StoreRole::Writer || self.term != term {
            return Err(self.term);
        }
        self.push(Entry {
            term,
            write: Some(write),
        });
        self.applied = self.last().index;
        Ok(self.last())
    }

    /// `GET /_replica/log` (adapter-k8s `Store::serve_log`): the shipment for a replica whose
    /// log ends at `after`, with the entries' data. Only a writer serves.
    pub fn serve(&self, after: LogPosition) -> Option<(Shipment, Vec<Entry>)> {
        if self.role != StoreRole::Writer {
            return None;
        }
        let prev = self.shape.shipment_prev(after);
        let end = self.last().index.min(prev.index + SHIP_ENTRIES);
        let data: Vec<Entry> = (prev.index + 1..=end)
            .map(|i| self.entry(i).expect("the log holds its entries"))
            .collect();
        let shipment = Shipment {
            term: self.term,
            prev,
            entries: data.iter().map(|e| e.term).collect(),
            commit: self.commit,
            log_start: self.shape.snapshot(),
        };
        Some((shipment, data))
    }

    /// `POST /_replica/append` (adapter-k8s `Store::append`): the core replica machine decides,
    /// the store performs. Returns what to do next and the entries it cut.
    pub fn append(
        &mut self,
        s: &Shipment,
        data: &[Entry],
    ) -> Result<(Next, Vec<(u64, Entry)>), Refusal> {
        if s.term < self.term {
            return Err(Refusal::StaleTerm { term: self.term });
        }
        assert_eq!(
            s.entries,
            data.iter().map(|e| e.term).collect::<Vec<_>>(),
            "a shipment's data are its entries"
        );
        if s.term > self.term || self.role == StoreRole::Writer {
            // Another writer's log: this store is a replica of it (a writer is demoted).
            let order = RoleOrder {
                role: StoreRole::Replica,
                term: s.term,
                writer_id: self.writer_id.clone(),
                writer_url: String::new(),
                commit: 0,
                want_shape: false,
            };
            let _ = self.set_role(&order);
        }
        let mut machine = Replica::new(self.replica_state());
        let effects = machine
            .step(ReplicaInput::Shipment(s.clone()))
            .map_err(Refusal::Shipment)?;
        let decided = machine.state().clone();
        let mut next = Next::Pull {
            after: machine.last(),
        };
        let mut cut = Vec::new();
        for effect in effects {
            match effect {
                ReplicaEffect::TruncateAfter { index, epoch } => {
                    assert!(index >= self.commit, "truncating committed entries");
                    assert!(
                        self.applied <= index,
                        "a demoted writer undid its suffix before a cut"
                    );
                    let from = usize::try_from(index).expect("an index fits");
                    cut = self
                        .entries
                        .split_off(from)
                        .into_iter()
                        .enumerate()
                        .map(|(k, e)| (index + 1 + k as u64, e))
                        .collect();
                    self.shape
                        .truncate_after(index)
                        .expect("a cut inside the log");
                    self.epoch = epoch;
                }
                ReplicaEffect::Append { from, to } => {
                    assert_eq!(from, self.len() + 1, "appends follow the log");
                    for i in from..=to {
                        let k = usize::try_from(i - s.prev.index - 1).expect("an index fits");
                        self.push(data[k]);
                    }
                }
                ReplicaEffect::Apply { up_to } => {
                    self.commit = self.commit.max(up_to);
                    self.applied = self.applied.max(up_to);
                }
                ReplicaEffect::FetchSnapshot { epoch, .. } => {
                    self.epoch = epoch;
                    next = Next::FetchSnapshot;
                }
                ReplicaEffect::Position { .. } | ReplicaEffect::Pull { .. } => {}
            }
        }
        self.term = self.term.max(decided.term);
        self.commit = self.commit.max(decided.commit);
        self.compact();
        assert_eq!(
            self.last(),
            machine.last(),
            "the store's log is the machine's"
        );
        self.check();
        Ok((next, cut))
    }

    /// `GET /_replica/snapshot`: exactly the committed state (the entries up to commit). Only a
    /// writer serves.
    pub fn snapshot(&self) -> Option<(LogPosition, Vec<Entry>)> {
        if self.role != StoreRole::Writer {
            return None;
        }
        let term = self.shape.term_at(self.commit)?;
        let upto = usize::try_from(self.commit).ok()?;
        Some((
            LogPosition::new(term, self.commit),
            self.entries[..upto].to_vec(),
        ))
    }

    /// `PUT /_replica/snapshot`: the writer of `writer_term`'s snapshot at `at` replaces the
    /// database and the log. Returns the entries it replaced that differ (or are gone).
    pub fn install_snapshot(
        &mut self,
        writer_term: Term,
        at: LogPosition,
        data: Vec<Entry>,
    ) -> Result<Vec<(u64, Entry)>, Refusal> {
        assert_eq!(data.len() as u64, at.index, "a snapshot holds its entries");
        let decided = snapshot_installed(&self.replica_state(), writer_term, at)
            .map_err(Refusal::Shipment)?;
        let replaced = self
            .entries
            .iter()
            .enumerate()
            .filter(|(k, e)| data.get(*k) != Some(*e))
            .map(|(k, e)| (k as u64 + 1, *e))
            .collect();
        self.entries = data;
        self.shape = decided.log;
        self.term = decided.term;
        self.role = StoreRole::Replica;
        self.commit = decided.commit;
        self.applied = decided.applied;
        self.epoch = decided.epoch;
        self.check();
        Ok(replaced)
    }

    fn check(&self) {
        assert_eq!(
            self.shape.last().index,
            self.len(),
            "the store's shape and entries agree"
        );
        if let Some(e) = self.entries.last() {
            assert_eq!(
                self.shape.last().term,
                e.term,
                "the shape's last term is the log's"
            );
        }
        assert!(self.commit <= self.len() && self.applied <= self.len());
        assert!(self.shape.snapshot().index <= self.commit.min(self.applied));
    }
}
