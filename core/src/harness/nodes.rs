//! The nodes of a simulated cluster and how their effects are performed: each node's clock, what
//! it persisted (its disk, read back on restart), its fence, the operator's desired voters, and
//! the [`Checker`] that sees every step. Delivering the sends is the driver's: [`Nodes::step`]
//! returns the effects, and the driver ([`super::Cluster`], the `election` fuzz target) routes
//! the `Send`s through its own network.

use super::checker::Checker;
use super::clock::Clock;
use crate::quasar::{Effect, Input, Membership, Node, PersistedState, Role, Timing};
use crate::{Millis, NodeId};
use std::collections::BTreeSet;

/// One node's slot: the process (or none, dead) and what outlives it.
#[derive(Clone, Debug)]
pub struct Slot {
    pub id: NodeId,
    pub node: Option<Node>,
    /// What the node made durable (its `Persist` effects), read back on restart.
    pub disk: PersistedState,
    pub clock: Clock,
    pub paused: bool,
    /// The fence as its source of truth (the pod annotation) says: survives restarts.
    pub fenced: bool,
    /// One of the cluster's initial members (else it joined later, with no configuration).
    pub initial: bool,
    /// The other nodes' ids, made once.
    peers: Vec<NodeId>,
}

/// The nodes, their disks and clocks, and the safety checker (see the module doc).
#[derive(Clone, Debug)]
pub struct Nodes {
    pub slots: Vec<Slot>,
    pub timing: Timing,
    /// The desired voters as the operator last published them (re-read by a restarted node).
    pub target: Option<BTreeSet<NodeId>>,
    pub checker: Checker,
    /// Check that every tick before a node's `next_tick_due` changes nothing (slow: it
    /// compares the whole state; for the tests of that promise).
    pub check_idle_ticks: bool,
}

impl Nodes {
    /// `ids.len()` nodes, none started yet: the first `initial` are the cluster's initial
    /// voters (when fewer than all, they persisted the bootstrap configuration before
    /// starting, as a driver does; when all, they bootstrap from their peers), the others join.
    pub fn new(ids: Vec<NodeId>, initial: usize, timing: Timing, offsets_ms: &[u64]) -> Nodes {
        assert!((1..=ids.len()).contains(&initial), "1..=n initial voters");
        assert_eq!(offsets_ms.len(), ids.len(), "one clock per node");
        let n = ids.len();
        let bootstrap = Membership::bootstrap(ids[..initial].iter().cloned());
        let slots = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Slot {
                id: id.clone(),
                node: None,
                disk: PersistedState {
                    membership: (initial < n && i < initial).then(|| bootstrap.clone()),
                    ..PersistedState::default()
                },
                clock: Clock::new(offsets_ms[i]),
                paused: false,
                fenced: false,
                initial: i < initial,
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
            })
            .collect();
        Nodes {
            slots,
            timing,
            target: None,
            checker: Checker::new(ids),
            check_idle_ticks: false,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn id(&self, i: usize) -> &NodeId {
        &self.slots[i].id
    }

    /// The index of the node named `id`.
    pub fn index(&self, id: &NodeId) -> Option<usize> {
        self.slots.iter().position(|s| s.id == *id)
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots[i].node.as_ref()
    }

    pub fn alive(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }

    /// Node `i`'s local time at real time `real`.
    pub fn local(&self, i: usize, real: u64) -> Millis {
        self.slots[i].clock.local(real)
    }

    /// Can node `i` accept writes at real time `real`?
    pub fn accepts(&self, i: usize, real: u64) -> bool {
        self.node(i)
            .is_some_and(|n| n.can_accept_writes(self.local(i, real)))
    }

    /// The real time from which a tick of node `i` can do anything (see
    /// [`Node::next_tick_due`]); `None` when it is dead or paused.
    pub fn tick_due_real(&self, i: usize) -> Option<u64> {
        let s = &self.slots[i];
        let node = s.node.as_ref().filter(|_| !s.paused)?;
        Some(s.clock.real_at(node.next_tick_due()))
    }

    /// Is node `i` a voter of the configuration it persisted (or, before its first persist, of
    /// the one it started with)?
    pub fn persisted_voter(&self, i: usize) -> bool {
        let s = &self.slots[i];
        match (&s.disk.membership, &s.node) {
            (Some(m), _) => m.is_voter(&s.id),
            (None, Some(n)) => n.membership().is_some_and(|m| m.is_voter(&s.id)),
            (None, None) => false,
        }
    }

    /// Start node `i` (dead) at real time `now` from its disk, as an agent does: the
    /// operator's desired voters and its fence read before anything else. Returns the effects
    /// of those first inputs (the driver delivers their sends).
    pub fn start(&mut self, i: usize, now: u64, seed: u64) -> Vec<Effect> {
        assert!(self.slots[i].node.is_none(), "start a dead node");
        let s = &self.slots[i];
        let local = s.clock.local(now);
        let (id, peers, disk) = (s.id.clone(), s.peers.clone(), s.disk.clone());
        let node = if s.initial {
            Node::new(id, peers, self.timing, disk, seed, local)
        } else {
            Node::join(id, peers, self.timing, disk, seed, local)
        }
        .expect("a valid node");
        self.checker.started(i, now, &node, &self.slots[i].clock);
        self.slots[i].node = Some(node);
        self.slots[i].paused = false;
        let mut effects = Vec::new();
        if let Some(target) = self.target.clone() {
            effects.extend(self.step(i, now, Input::SetMembers(target)));
        }
        if self.slots[i].fenced {
            effects.extend(self.step(i, now, Input::SetFenced(true)));
        }
        effects
    }

    /// Kill node `i` at real time `now` (its disk survives).
    pub fn kill(&mut self, i: usize, now: u64) {
        if self.slots[i].node.take().is_some() {
            self.checker.stopped(i, now);
        }
        self.slots[i].paused = false;
    }

    /// Fence or unfence node `i` (kept across its restarts, like the pod annotation).
    pub fn set_fenced(&mut self, i: usize, now: u64, fenced: bool) -> Vec<Effect> {
        self.slots[i].fenced = fenced;
        self.checker.set_fenced(i, fenced);
        self.step(i, now, Input::SetFenced(fenced))
    }

    /// Node `i`'s clock runs at `rate_ppm` from real time `now` on (no jump).
    pub fn set_rate(&mut self, i: usize, now: u64, rate_ppm: u64) {
        self.slots[i].clock.set_rate_at(now, rate_ppm);
        if let Some(node) = &self.slots[i].node {
            self.checker
                .refresh_window(i, now, node, &self.slots[i].clock);
        }
    }

    /// Feed `input` to node `i` (alive, not paused: else nothing happens) at real time `now`,
    /// which never goes back. Every effect is checked, in order, and the `Persist`s performed
    /// (its disk); the effects are returned for the driver to deliver the `Send`s.
    pub fn step(&mut self, i: usize, now: u64, input: Input) -> Vec<Effect> {
        let s = &mut self.slots[i];
        if s.paused {
            return Vec::new();
        }
        let Some(node) = s.node.as_mut() else {
            return Vec::new();
        };
        let local = s.clock.local(now);
        let term_before = node.term();
        let idle_check =
            (self.check_idle_ticks && matches!(input, Input::Tick) && local < node.next_tick_due())
                .then(|| node.clone());
        let effects = node.step(local, input);
        if let Some(before) = idle_check
            && (!effects.is_empty() || !node.same_state_as(&before))
        {
            let what = format!(
                "{} changed on a tick at {local} before its next_tick_due {}",
                s.id,
                before.next_tick_due()
            );
            self.checker.violate(now, what);
        }
        let s = &mut self.slots[i];
        for effect in &effects {
            if let Some(node) = &s.node {
                self.checker.effect(i, now, &s.disk, node, effect);
            }
            if let Effect::Persist {
                term,
                voted_for,
                membership,
            } = effect
            {
                s.disk = PersistedState {
                    term: *term,
                    voted_for: voted_for.clone(),
                    membership: membership.clone(),
                };
            }
        }
        let s = &self.slots[i];
        if let Some(node) = &s.node {
            self.checker.after_step(i, now, node, &s.clock, term_before);
        }
        effects
    }

    /// The node that is writer (by its role, whether or not its lease still holds), if any.
    pub fn writer(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.node(i).is_some_and(|n| n.role() == Role::Writer))
    }
}
