//! The writer's commit counts the election's configuration (issue 18, item 2): the
//! replication `Coordinator` of a writer is driven by random store appends, peer reports (heartbeat
//! acks and pulls) and configuration changes as the election makes them — learners added,
//! C(old, new), C(new), simple configurations of other voters — and after every step, whenever its
//! commit index grew, the nodes known to hold that index must form a quorum of the configuration
//! the election gave last: a majority of it, or of both halves while it is joint; learners never
//! count. A coordinator that counted a fixed peer list (the one it was built with), or only one
//! half of a joint configuration, fails: `a_fixed_peer_list_would_commit_what_the_new_voters_lack`
//! shows the case, and the property finds it within its runs.

use base_core::replication::{
    Coordinator, CoordinatorEffect, CoordinatorInput, ElectionView, LogPosition, QuorumConfig,
    RoleAnswer, StoreRole, StoreView, shape_from_runs,
};
use base_core::{Millis, NodeId, Term};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::collections::{BTreeMap, BTreeSet};

const TERM: u64 = 2;
const NAMES: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];

fn id(n: &str) -> NodeId {
    NodeId::from(n)
}

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| id(n)).collect()
}

/// The configurations a writer `a` can find itself in: simple ones, ones with learners, joint
/// ones (with `a` in either half).
fn configs() -> Vec<QuorumConfig> {
    let j = |o: &[&str], i: &[&str], l: &[&str]| QuorumConfig::joint(ids(o), ids(i), ids(l));
    [
        j(&[], &["a", "b", "c"], &[]),
        j(&[], &["a", "b", "c"], &["d", "e"]),
        j(&["a", "b", "c"], &["a", "b", "c", "d", "e"], &[]),
        j(&[], &["a", "b", "c", "d", "e"], &[]),
        j(&["a", "b", "c", "d", "e"], &["a", "b", "c"], &[]),
        j(&["a", "b", "c"], &["a", "d", "e"], &[]),
        j(&[], &["a", "d", "e"], &["f"]),
        j(&["a", "d", "e"], &["a", "f", "g"], &[]),
        j(&["b", "c", "a"], &["d", "e", "f"], &[]),
        j(&[], &["a"], &["b"]),
        j(&["a"], &["a", "b", "c"], &[]),
    ]
    .into_iter()
    .map(|c| c.expect("a valid configuration"))
    .collect()
}

#[derive(Clone, Debug)]
enum Action {
    /// The writer's store appended this many entries.
    Append(u8),
    /// The election reports peer `NAMES[p]` at an index of this term.
    Ack(u8, u8),
    /// A peer's agent pulled the log after an index.
    Pull(u8, u8),
    /// The election's configuration changed.
    Config(u8),
}

impl Arbitrary for Action {
    fn arbitrary(g: &mut Gen) -> Action {
        match u8::arbitrary(g) % 8 {
            0..=1 => Action::Append(u8::arbitrary(g) % 4 + 1),
            2..=4 => Action::Ack(u8::arbitrary(g), u8::arbitrary(g)),
            5 => Action::Pull(u8::arbitrary(g), u8::arbitrary(g)),
            _ => Action::Config(u8::arbitrary(g)),
        }
    }
}

fn pos(term: u64, index: u64) -> LogPosition {
    LogPosition::new(Term(term), index)
}

fn store(role: StoreRole, term: u64, last: LogPosition, commit: u64, start: u64) -> StoreView {
    StoreView {
        role,
        term: Term(term),
        epoch: 0,
        last,
        commit,
        term_start: start,
    }
}

/// The model: what the election and the store told the coordinator.
struct Model {
    c: Coordinator,
    config: QuorumConfig,
    /// The highest index of this term each peer was reported at.
    held: BTreeMap<NodeId, u64>,
    positions: BTreeMap<NodeId, u64>,
    last: u64,
    now: u64,
}

impl Model {
    /// Writer `a` of term 2, built with the peer list {a, b, c}; its store holds `(1, 1..=3)`
    /// and the no-op `(2, 4)`, commit 3.
    fn new(config: QuorumConfig) -> Model {
        let first = QuorumConfig::simple(ids(&["a", "b", "c"])).unwrap();
        let mut c = Coordinator::new(id("a"), "http://a".into(), first, 1000);
        let _ = c.step(
            Millis(0),
            CoordinatorInput::Store(store(StoreRole::Replica, 1, pos(1, 3), 3, 0)),
        );
        let mut m = Model {
            c,
            config,
            held: BTreeMap::new(),
            positions: BTreeMap::new(),
            last: 4,
            now: 1,
        };
        let out = m.c.step(Millis(1), CoordinatorInput::Election(m.view()));
        let order = out
            .into_iter()
            .find_map(|e| match e {
                CoordinatorEffect::PushRole(o) => Some(o),
                _ => None,
            })
            .expect("the writer role is pushed");
        let shape = shape_from_runs(pos(0, 0), &[(Term(1), 1), (Term(TERM), 4)], 4).unwrap();
        let answer = RoleAnswer::Done {
            state: store(StoreRole::Writer, TERM, pos(TERM, 4), 3, 4),
            shape: Some(shape),
        };
        let _ =
            m.c.step(Millis(2), CoordinatorInput::RoleAnswered { order, answer });
        assert!(m.c.writer_ready(Term(TERM)));
        m
    }

    fn view(&self) -> ElectionView {
        ElectionView {
            term: Term(TERM),
            is_writer: true,
            leader: Some(id("a")),
            leader_url: "http://a".into(),
            peer_positions: self.positions.clone(),
            config: Some(self.config.clone()),
        }
    }

    fn report(&mut self, peer: NodeId, index: u64) {
        let e = self.held.entry(peer).or_insert(0);
        *e = (*e).max(index);
    }

    fn step(&mut self, action: &Action) {
        self.now += 1;
        let now = Millis(self.now);
        let peer = |p: u8| id(NAMES[1 + usize::from(p) % (NAMES.len() - 1)]);
        let index = |i: u8, last: u64| 4 + u64::from(i) % (last - 3);
        let input = match action {
            Action::Append(k) => {
                self.last += u64::from(*k);
                CoordinatorInput::Store(store(StoreRole::Writer, TERM, pos(TERM, self.last), 3, 4))
            }
            Action::Ack(p, i) => {
                let (p, i) = (peer(*p), index(*i, self.last));
                self.report(p.clone(), i);
                self.positions.insert(p, pos(TERM, i).encode().unwrap());
                CoordinatorInput::Election(self.view())
            }
            Action::Pull(p, i) => {
                let (p, i) = (peer(*p), index(*i, self.last));
                self.report(p.clone(), i);
                CoordinatorInput::Pull {
                    peer: p,
                    after: pos(TERM, i),
                }
            }
            Action::Config(k) => {
                let all = configs();
                self.config = all[usize::from(*k) % all.len()].clone();
                CoordinatorInput::Election(self.view())
            }
        };
        let _ = self.c.step(now, input);
    }

    /// The nodes known to hold `index` (the writer holds its whole log).
    fn holders(&self, index: u64) -> BTreeSet<NodeId> {
        let mut yes: BTreeSet<NodeId> = self
            .held
            .iter()
            .filter(|(_, i)| **i >= index)
            .map(|(p, _)| p.clone())
            .collect();
        yes.insert(id("a"));
        yes
    }
}

/// Runs `actions`; `Err` names the first commit that the configuration's quorum did not hold.
/// Returns how many commits grew while the configuration was joint.
fn run(actions: &[Action]) -> Result<usize, String> {
    let mut m = Model::new(configs()[0].clone());
    let mut commit = m.c.commit().unwrap_or(0);
    let mut joint_commits = 0;
    for (k, a) in actions.iter().enumerate() {
        m.step(a);
        let now = m.c.commit().unwrap_or(0);
        if now > commit {
            if !m.config.is_quorum(&m.holders(now)) {
                return Err(format!(
                    "step {k} ({a:?}): commit {now} held only by {:?}, not a quorum of {:?}",
                    m.holders(now),
                    m.config
                ));
            }
            if m.config.is_joint() {
                joint_commits += 1;
            }
        }
        assert_eq!(
            m.c.config(),
            &m.config,
            "the coordinator follows the election"
        );
        commit = now;
    }
    Ok(joint_commits)
}

/// Every commit the writer makes is held by a quorum of the election's current configuration.
#[test]
fn commits_count_the_elections_configuration() {
    fn prop(actions: Vec<Action>) -> TestResult {
        match run(&actions) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    QuickCheck::new()
        .tests(2_000)
        .quickcheck(prop as fn(Vec<Action>) -> TestResult);
}

/// The runs do commit under joint configurations (so the property is not met by never
/// committing), over a fixed set of seeds' worth of generated schedules.
#[test]
fn schedules_commit_under_joint_configurations() {
    let mut g = Gen::new(200);
    let mut joint = 0;
    for _ in 0..300 {
        let actions: Vec<Action> = (0..150).map(|_| Action::arbitrary(&mut g)).collect();
        joint += run(&actions).expect("the property holds");
    }
    assert!(
        joint > 50,
        "only {joint} commits under joint configurations"
    );
}

/// The case a fixed peer list gets wrong: the coordinator was built with {a, b, c}; the election
/// moved to C({a, b, c}, {a, d, e}). `b` and `c` holding an entry is a majority of the old
/// voters but not of the new: no commit until `d` (or `e`) holds it too. And once in C({a, d, e})
/// the old voters count for nothing.
#[test]
fn a_fixed_peer_list_would_commit_what_the_new_voters_lack() {
    let mut m = Model::new(configs()[0].clone());
    m.config = configs()[5].clone();
    assert!(m.config.is_joint());
    let _ = m.c.step(Millis(10), CoordinatorInput::Election(m.view()));
    m.step(&Action::Append(2)); // entries 5, 6
    assert_eq!(m.c.commit(), Some(3));
    for p in ["b", "c"] {
        let _ = m.c.step(
            Millis(11),
            CoordinatorInput::Pull {
                peer: id(p),
                after: pos(TERM, 6),
            },
        );
    }
    assert_eq!(m.c.commit(), Some(3), "the new half has no majority yet");
    let _ = m.c.step(
        Millis(12),
        CoordinatorInput::Pull {
            peer: id("d"),
            after: pos(TERM, 5),
        },
    );
    assert_eq!(m.c.commit(), Some(5), "both halves hold 5");
    m.config = QuorumConfig::simple(ids(&["a", "d", "e"])).unwrap();
    let _ = m.c.step(Millis(13), CoordinatorInput::Election(m.view()));
    m.step(&Action::Append(1)); // entry 7
    for p in ["b", "c"] {
        let _ = m.c.step(
            Millis(14),
            CoordinatorInput::Pull {
                peer: id(p),
                after: pos(TERM, 7),
            },
        );
    }
    assert_eq!(m.c.commit(), Some(5), "removed voters count for nothing");
    let _ = m.c.step(
        Millis(15),
        CoordinatorInput::Pull {
            peer: id("e"),
            after: pos(TERM, 7),
        },
    );
    assert_eq!(m.c.commit(), Some(7));
}
