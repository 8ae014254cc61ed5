use super::*;
use crate::control::{TransferRefusal, TransferRequest};
use crate::wire::parse_rfc3339;

fn id(i: usize) -> NodeId {
    NodeId::new(format!("a-{i}"))
}

fn url(i: usize) -> String {
    format!("http://a-{i}.a-hs:8090")
}

fn config(i: usize, n: usize) -> Config {
    Config {
        id: id(i),
        self_url: url(i),
        peers: (0..n)
            .filter(|&j| j != i)
            .map(|j| (id(j), url(j)))
            .collect(),
        timing: Timing::default(),
        shutdown_timeout: Millis(3_000),
        members_from_annotations: false,
    }
}

/// Agents that reach each other at once (unless cut off), each performing its effects in order:
/// what a `Persist` made durable is what the sends after it may rely on.
struct Cluster {
    agents: Vec<Agent>,
    now: Millis,
    /// Cut off: receives nothing, its sends are lost.
    cut: Vec<bool>,
    /// Per node: the term durable so far (by its `Persist` effects, in order).
    durable: Vec<Term>,
    /// Every effect performed, with its node.
    performed: Vec<(usize, Effect)>,
}

impl Cluster {
    fn new(n: usize, annotations: &Annotations) -> Cluster {
        let agents = (0..n)
            .map(|i| {
                Agent::new(
                    config(i, n),
                    PersistedState::default(),
                    i as u64 + 1,
                    Millis(0),
                    annotations,
                )
                .unwrap()
            })
            .collect();
        Cluster {
            agents,
            now: Millis(0),
            cut: vec![false; n],
            durable: vec![Term(0); n],
            performed: Vec::new(),
        }
    }

    fn index(&self, node: &NodeId) -> usize {
        self.agents.iter().position(|a| a.id() == node).unwrap()
    }

    /// Steps agent `i` and everything its messages cause; returns `i`'s own effects.
    fn step(&mut self, i: usize, input: Input) -> Vec<Effect> {
        let first = self.agents[i].step(self.now, input);
        let mut queue: Vec<(usize, Effect)> = first.iter().cloned().map(|e| (i, e)).collect();
        let mut k = 0;
        while k < queue.len() {
            let (from, effect) = queue[k].clone();
            k += 1;
            self.performed.push((from, effect.clone()));
            match effect {
                Effect::Persist(state) => {
                    assert!(
                        state.membership.is_none() || self.agents[from].members_from_annotations,
                        "a configuration persisted without members from the annotation"
                    );
                    self.durable[from] = state.term;
                }
                Effect::Send { to, msg } => {
                    // Ordering: a vote request or a grant goes out only once its term is durable.
                    let votes = matches!(
                        msg,
                        Message::Vote { .. } | Message::VoteResponse { granted: true, .. }
                    );
                    if votes {
                        assert!(
                            self.durable[from] >= msg.term(),
                            "{} sends {msg:?} before persisting its term",
                            id(from)
                        );
                    }
                    let to = self.index(&to);
                    if self.cut[from] || self.cut[to] {
                        continue;
                    }
                    let from_id = id(from);
                    let now = self.now;
                    let more = self.agents[to].step(now, Input::Message { from: from_id, msg });
                    queue.extend(more.into_iter().map(|e| (to, e)));
                }
                _ => {}
            }
        }
        first
    }

    /// Ticks every node every 10 ms until `done` holds (at most `ms`).
    fn run_until(&mut self, ms: u64, done: impl Fn(&Cluster) -> bool) -> bool {
        let end = self.now.saturating_add(Millis(ms));
        while self.now < end {
            if done(self) {
                return true;
            }
            self.now = self.now.saturating_add(Millis(10));
            for i in 0..self.agents.len() {
                self.step(i, Input::Tick);
            }
        }
        done(self)
    }

    fn writer(&self) -> Option<usize> {
        (0..self.agents.len())
            .find(|&i| !self.cut[i] && self.agents[i].node().can_accept_writes(self.now))
    }

    /// Runs until a writer whose peers all acknowledged it (so it knows whom to hand over to).
    fn elect(&mut self) -> usize {
        assert!(
            self.run_until(10_000, |c| c
                .writer()
                .is_some_and(|w| c.agents[w].node().best_transfer_target().is_some())),
            "no writer elected"
        );
        self.writer().unwrap()
    }
}

fn request(to: &NodeId, term: Term, at: u64) -> Annotations {
    Annotations {
        fenced: false,
        members: None,
        transfer: Some(
            TransferRequest {
                to: to.to_string(),
                term: term.0,
                at,
                by: "test".into(),
            }
            .to_annotation(),
        ),
    }
}

/// The node's `Persist` comes before the sends that rely on it, through this machine (asserted on
/// every effect performed in `Cluster::step`), and without members from the annotation carries
/// no configuration (with them, `members_come_from_the_annotation` shows it does);
/// the election does happen, so the checks saw real votes.
#[test]
fn persist_comes_before_the_sends_that_rely_on_it() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let votes = c
        .performed
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Effect::Send {
                    msg: Message::Vote { .. },
                    ..
                }
            )
        })
        .count();
    assert!(votes >= 2, "{votes} vote requests");
    let wins = c
        .performed
        .iter()
        .filter(|(i, e)| *i == w && matches!(e, Effect::BecomeWriter { .. }))
        .count();
    assert_eq!(wins, 1);
}

/// Writes: forwarded only by the writer inside its lease, with its term; a follower redirects
/// to the writer's URL; a writer cut off stops forwarding when its lease passes, and the
/// check right before forwarding refuses a write admitted just before a fence.
#[test]
fn writes_are_forwarded_only_by_the_writer_inside_its_lease() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let term = c.agents[w].node().term();
    let now = c.now;
    assert_eq!(c.agents[w].admit_write(now), Admission::Forward { term });
    let f = (w + 1) % 3;
    assert_eq!(
        c.agents[f].admit_write(now),
        Admission::Redirect { url: url(w) }
    );
    // Admitted, then fenced before forwarding: the re-check refuses it.
    let admitted = c.agents[w].admit_write(now);
    assert_eq!(admitted, Admission::Forward { term });
    c.step(
        w,
        Input::Annotations(Annotations {
            fenced: true,
            transfer: None,
            members: None,
        }),
    );
    assert!(!matches!(
        c.agents[w].recheck_write(c.now, term),
        Admission::Forward { .. }
    ));
    c.step(w, Input::Annotations(Annotations::default()));
    // A writer cut off: no forward once its lease has passed.
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    c.cut[w] = true;
    let lease = c.agents[w].node().timing().lease_ms();
    c.run_until(lease.0 + 20, |_| false);
    assert!(!matches!(
        c.agents[w].admit_write(c.now),
        Admission::Forward { .. }
    ));
    assert!(!matches!(
        c.agents[w].recheck_write(c.now, Term(1)),
        Admission::Forward { .. }
    ));
}

/// Reads that must see every acknowledged write (pinned, `X-Base-Writer: required`, strong):
/// served only by the writer in its lease once its term start committed; a follower refuses
/// as it refuses a write (the gateway then looks for the writer), and so does a writer whose
/// lease passed.
#[test]
fn reads_that_need_the_writer_are_served_only_by_it() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let term = c.agents[w].node().term();
    let now = c.now;
    let committed = |t: Term| t == term;
    assert_eq!(
        c.agents[w].admit_writer_read(now, committed),
        ReadAdmission::Serve
    );
    assert_eq!(
        c.agents[w].admit_writer_read(now, |_| false),
        ReadAdmission::TermStartNotCommitted
    );
    let f = (w + 1) % 3;
    assert_eq!(
        c.agents[f].admit_writer_read(now, |_| true),
        ReadAdmission::Refuse(Admission::Redirect { url: url(w) })
    );
    c.cut[w] = true;
    let lease = c.agents[w].node().timing().lease_ms();
    c.run_until(lease.0 + 20, |_| false);
    assert!(matches!(
        c.agents[w].admit_writer_read(c.now, |_| true),
        ReadAdmission::Refuse(_)
    ));
}

/// The fence from the annotations: a fenced writer reports the change and a hand-over, forwards
/// nothing, stays ready (reads only), and another node takes over; unfencing reports it too.
#[test]
fn a_fence_makes_the_writer_hand_over() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let fenced = Annotations {
        fenced: true,
        transfer: None,
        members: None,
    };
    let effects = c.step(w, Input::Annotations(fenced.clone()));
    assert_eq!(
        effects[0],
        Effect::FenceChanged {
            fenced: true,
            role: Role::Writer
        }
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::HandOver {
                cause: HandOverCause::Fenced,
                ..
            }
        )),
        "{effects:?}"
    );
    assert!(!matches!(
        c.agents[w].admit_write(c.now),
        Admission::Forward { .. }
    ));
    assert_eq!(c.agents[w].readiness(), Readiness::ReadyFenced);
    // The same content again: nothing.
    assert!(c.step(w, Input::Annotations(fenced)).is_empty());
    assert!(c.run_until(5_000, |c| c.writer().is_some_and(|n| n != w)));
    let effects = c.step(w, Input::Annotations(Annotations::default()));
    assert_eq!(
        effects,
        vec![Effect::FenceChanged {
            fenced: false,
            role: Role::Follower
        }]
    );
    assert_eq!(c.agents[w].readiness(), Readiness::Ready);
}

/// Transfer requests are an input with a result: started (and the hand-over reported), the
/// same value again nothing, another one while the target catches up `in_progress`, one on a follower
/// `not_writer`, one for another term `stale_term`; the named target wins.
#[test]
fn transfer_requests_act_once_with_their_result() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let term = c.agents[w].node().term();
    let to = (w + 1) % 3;
    let result = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::TransferRequest(considered) => Some(considered.decision.clone()),
            _ => None,
        })
    };
    // The writer is ahead of its peers: the hand-over waits for the target to catch up.
    let ahead = Input::Position {
        epoch: 0,
        position: 5,
    };
    c.step(w, ahead.clone());
    let ask = request(&id(to), term, 1);
    let effects = c.step(w, Input::Annotations(ask.clone()));
    assert_eq!(result(&effects), Some(TransferDecision::Start(id(to))));
    assert!(effects.contains(&Effect::HandOver {
        to: Some(id(to)),
        cause: HandOverCause::Request
    }));
    assert!(c.step(w, Input::Annotations(ask)).is_empty());
    let effects = c.step(w, Input::Annotations(request(&id(to), term, 2)));
    assert_eq!(
        result(&effects),
        Some(TransferDecision::Refused(TransferRefusal::InProgress))
    );
    c.step(to, ahead);
    assert!(c.run_until(5_000, |c| c.writer() == Some(to)));
    let new_term = c.agents[to].node().term();
    let effects = c.step(w, Input::Annotations(request(&id(w), new_term, 3)));
    assert_eq!(
        result(&effects),
        Some(TransferDecision::Refused(TransferRefusal::NotWriter))
    );
    let effects = c.step(to, Input::Annotations(request(&id(w), term, 4)));
    assert_eq!(
        result(&effects),
        Some(TransferDecision::Refused(TransferRefusal::StaleTerm))
    );
    assert!(c.agents[to].node().can_accept_writes(c.now));
}

/// A request already in the annotations file at start is old: it never acts, even on the node
/// that then wins the term it names.
#[test]
fn a_request_present_at_start_never_acts() {
    let stale = request(&id(0), Term(1), 1);
    let mut c = Cluster::new(3, &stale);
    let w = c.elect();
    assert_eq!(
        c.agents[w].node().term(),
        Term(1),
        "the first election won term 1"
    );
    let effects = c.step(w, Input::Annotations(stale));
    assert!(effects.is_empty(), "{effects:?}");
    assert!(c.agents[w].node().can_accept_writes(c.now));
}

/// SIGTERM: a follower exits at once; a writer hands over to a peer and exits once another
/// node leads, and does nothing after that.
#[test]
fn shutdown_hands_over_then_exits() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    let f = (w + 1) % 3;
    assert_eq!(
        c.step(f, Input::Shutdown),
        vec![Effect::Exit { handed_over: true }]
    );
    assert!(c.agents[f].exited());
    assert!(c.agents[f].step(c.now, Input::Tick).is_empty());
    c.cut[f] = true;
    let effects = c.step(w, Input::Shutdown);
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::HandOver {
                to: Some(_),
                cause: HandOverCause::Shutdown
            }
        )),
        "{effects:?}"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Exit { .. })));
    let start = c.now;
    assert!(c.run_until(3_000, |c| c.agents[w].exited()));
    let exit: Vec<_> = c
        .performed
        .iter()
        .filter(|(i, e)| *i == w && matches!(e, Effect::Exit { .. }))
        .collect();
    assert_eq!(exit, vec![&(w, Effect::Exit { handed_over: true })]);
    assert!(c.now.0 - start.0 < 3_000, "exited before the deadline");
    let successor = 3 - w - f;
    assert!(c.agents[successor].node().can_accept_writes(c.now));
}

/// A writer that cannot reach a successor exits at the deadline, not before, saying so.
#[test]
fn shutdown_without_a_successor_exits_at_the_deadline() {
    let mut c = Cluster::new(3, &Annotations::default());
    let w = c.elect();
    c.cut[w] = true;
    let start = c.now;
    c.step(w, Input::Shutdown);
    assert!(!c.run_until(2_990, |c| c.agents[w].exited()));
    assert!(c.run_until(20, |c| c.agents[w].exited()));
    assert!(c.now.0 - start.0 >= 3_000);
    assert!(
        c.performed
            .contains(&(w, Effect::Exit { handed_over: false }))
    );
}

/// `/_ha/leader`, `/readyz` and the headers: nothing before a writer is seen; then every node
/// names the writer, its URL, term and a lease end that reads back; `/_ha/peers` lists the
/// peers by ordinal, up when heard from lately.
#[test]
fn answers_leader_peers_and_readiness() {
    let mut c = Cluster::new(3, &Annotations::default());
    let a = &c.agents[0];
    assert_eq!(a.readiness(), Readiness::NoWriterSeen);
    let answer = a.leader_answer(c.now);
    assert_eq!(
        (
            answer.leader_url.as_str(),
            answer.node_id.as_str(),
            answer.term
        ),
        ("", "", 0)
    );
    assert_eq!(a.leader_headers(c.now), (String::new(), Term(0)));
    assert_eq!(a.admit_write(c.now), Admission::NoWriter);
    let w = c.elect();
    let term = c.agents[w].node().term();
    for agent in &c.agents {
        let answer = agent.leader_answer(c.now);
        assert_eq!(answer.node_id, id(w).to_string());
        assert_eq!(answer.leader_url, url(w));
        assert_eq!(answer.term, term.0);
        let lease = parse_rfc3339(&answer.lease_expires).unwrap();
        assert!(lease > c.now, "{lease:?}");
        assert_eq!(agent.leader_headers(c.now), (url(w), term));
        assert_eq!(agent.readiness(), Readiness::Ready);
    }
    let peers = c.agents[w].peers_answer(c.now);
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.up && !p.last_seen.is_empty()));
    assert!(peers.windows(2).all(|p| p[0].ordinal < p[1].ordinal));
    // Peers unheard of: down, never seen, still sorted by ordinal (2 before 10).
    let lone = Agent::new(
        Config {
            id: NodeId::new("b-0"),
            self_url: "http://b-0".into(),
            peers: vec![
                (NodeId::new("b-10"), "http://b-10".into()),
                (NodeId::new("b-2"), "http://b-2".into()),
            ],
            timing: Timing::default(),
            shutdown_timeout: Millis(1),
            members_from_annotations: false,
        },
        PersistedState::default(),
        1,
        Millis(0),
        &Annotations::default(),
    )
    .unwrap();
    let peers = lone.peers_answer(Millis(0));
    let names: Vec<_> = peers.iter().map(|p| (p.node_id.as_str(), p.up)).collect();
    assert_eq!(names, vec![("b-2", false), ("b-10", false)]);
    assert!(peers.iter().all(|p| p.last_seen.is_empty()));
    assert_eq!(lone.url_of(&NodeId::new("zz")), "");
}

#[test]
fn annotations_from_the_file() {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        Annotations::from_map(&map(&[("hanzo.ai/fenced", " TRUE "), ("x", "y")])),
        Annotations {
            fenced: true,
            transfer: None,
            members: None,
        }
    );
    let a = Annotations::from_map(&map(&[
        ("hanzo.ai/fenced", "false"),
        ("hanzo.ai/transfer-to", "{}"),
    ]));
    assert!(!a.fenced);
    assert_eq!(a.transfer.as_deref(), Some("{}"));
    assert_eq!(Annotations::from_map(&map(&[])), Annotations::default());
}

fn members(voters: &[usize], bootstrap: Option<&[usize]>) -> Annotations {
    let names = |l: &[usize]| l.iter().map(|i| id(*i).to_string()).collect();
    let value = crate::members::MembersAnnotation {
        voters: names(voters),
        bootstrap: bootstrap.map(names),
    };
    Annotations {
        members: Some(value.to_annotation()),
        ..Annotations::default()
    }
}

/// Members from the annotation (issue 18): of five agents whose address book lists all five,
/// the three the annotation names initial members bootstrap, the other two start joined (no
/// configuration, never a candidate or the writer); the writer reports its configuration, and
/// when the annotation wants all five, it adds them (learners, joint, simple) until it reports
/// itself settled on them; when it wants three again, the two removed learn it and never stand.
/// Each configuration is persisted, and an agent restarted from what it persisted keeps it.
#[test]
fn members_come_from_the_annotation() {
    let first = members(&[0, 1, 2], Some(&[0, 1, 2]));
    let agents = (0..5)
        .map(|i| {
            let mut cfg = config(i, 5);
            cfg.members_from_annotations = true;
            Agent::new(
                cfg,
                PersistedState::default(),
                i as u64 + 1,
                Millis(0),
                &first,
            )
            .unwrap()
        })
        .collect();
    let mut c = Cluster {
        agents,
        now: Millis(0),
        cut: vec![false; 5],
        durable: vec![Term(0); 5],
        performed: Vec::new(),
    };
    for i in 0..5 {
        let effects = c.step(i, Input::Tick);
        let bootstrapped = effects.iter().any(|e| {
            matches!(
                e,
                Effect::Members {
                    bootstrap: true,
                    ..
                }
            )
        });
        assert_eq!(bootstrapped, i < 3, "agent {i}: {effects:?}");
    }
    assert!(c.agents[3].node().membership().is_none());
    let w = c.elect();
    assert!(w < 3);
    let settled_on = |c: &Cluster, n: usize| {
        let names: Vec<String> = (0..n).map(|i| id(i).to_string()).collect();
        c.writer().is_some_and(|w| {
            c.agents[w]
                .leader_answer(c.now)
                .configuration
                .is_some_and(|r| r.is_settled_on(&names))
        })
    };
    assert!(
        c.run_until(5_000, |c| settled_on(c, 3)),
        "settled on the initial three"
    );
    assert!(
        c.agents[3].node().membership().is_none(),
        "a joiner waits for the writer"
    );

    let five = members(&[0, 1, 2, 3, 4], None);
    for i in 0..5 {
        c.step(i, Input::Annotations(five.clone()));
    }
    assert!(c.run_until(10_000, |c| settled_on(c, 5)), "grew to five");
    assert!(c.agents[4].node().is_voter());
    assert_eq!(
        c.agents[w].peers_answer(c.now).len(),
        4,
        "the configuration's members"
    );

    let three = members(&[0, 1, 2], None);
    for i in 0..5 {
        c.step(i, Input::Annotations(three.clone()));
    }
    assert!(c.run_until(10_000, |c| settled_on(c, 3)), "shrank to three");
    for i in [3, 4] {
        assert!(!c.agents[i].node().is_voter(), "agent {i} knows it is out");
        assert_ne!(c.agents[i].node().role(), Role::Writer);
    }
    // The configuration each persisted last is the one it holds; a restart keeps it.
    let last = c
        .performed
        .iter()
        .rev()
        .find_map(|(i, e)| match e {
            Effect::Persist(s) if *i == 4 => Some(s.clone()),
            _ => None,
        })
        .expect("agent 4 persisted");
    assert_eq!(last.membership.as_ref(), c.agents[4].node().membership());
    let mut cfg = config(4, 5);
    cfg.members_from_annotations = true;
    let again = Agent::new(cfg, last, 9, c.now, &three).unwrap();
    assert_eq!(again.node().membership(), c.agents[4].node().membership());
    assert!(!again.node().is_voter());
}
