//! Scripted Quasar scenarios, in the manner of etcd raft's `testdata/*.txt`: every file under
//! `tests/scenarios/` is a script of commands run against the simulated cluster of
//! `tests/cluster`. Safety (one writer per term; never two nodes accepting writes at once) is
//! checked after every simulated millisecond of every script.
//!
//! Commands (nodes are named 1..N; `#` starts a comment):
//! ```text
//! cluster N [seed S] [delay MS]   new cluster of N nodes (default seed 1, one-way delay 2 ms)
//! rate N PPM                      node N's clock runs at PPM parts per million of real time
//! advance MS                      let MS of real time pass (ticks, deliveries)
//! wait writer [MS]                advance until some node accepts writes (fail after MS, default 10000)
//! wait writer-other-than N [MS]   advance until a node other than N accepts writes
//! writes on | off                the writer accepts (simulated) writes, advancing positions
//! hold | release                  stop / resume delivering messages as they arrive
//! deliver                         deliver every message in flight now
//! drop                            lose every message in flight
//! partition 1 2 | 3               messages cross only within a group (unnamed nodes: alone)
//! cut A B                         lose messages between A and B only
//! heal                            reconnect everyone
//! kill N | restart N              crash N / start it again from its persisted term and vote
//! pause N | resume N              freeze N (its clock runs on) / let it run again
//! campaign N                      N's election timeout fires now
//! transfer FROM TO                ask FROM (the writer) to hand over to TO
//! fence N | unfence N             set N's fence (kept across its restarts, like the annotation)
//! timeout-now FROM TO             FROM sends TO a `TimeoutNow` for FROM's term, as a writer would
//! expect writer N term T          exactly N accepts writes, in term T
//! expect writer none              no node accepts writes
//! expect term N T                 node N is in term T
//! expect role N ROLE              follower | pre_candidate | candidate | writer | dead
//! expect view N writer M term T   node N's writer_view names M (or none) in term T
//! expect handover A B             A last accepted writes strictly before B first won a later term
//! print                           the cluster's state, to stderr
//! ```

mod cluster;

use base_core::NodeId;
use base_core::quasar::{Input, Role, Timing};
use cluster::{Cluster, NetFaults};
use std::path::Path;

const WAIT_DEFAULT_MS: u64 = 10_000;

struct Interp {
    c: Option<Cluster>,
    file: String,
}

type Result<T> = std::result::Result<T, String>;

impl Interp {
    fn cluster(&mut self) -> Result<&mut Cluster> {
        self.c
            .as_mut()
            .ok_or_else(|| "no `cluster` command yet".to_string())
    }

    fn node(&mut self, name: &str) -> Result<usize> {
        self.cluster()?
            .index(name)
            .ok_or_else(|| format!("no node {name}"))
    }

    fn num(s: Option<&&str>, what: &str) -> Result<u64> {
        s.ok_or_else(|| format!("missing {what}"))?
            .parse()
            .map_err(|_| format!("{what}: not a number"))
    }

    fn run_line(&mut self, words: &[&str]) -> Result<()> {
        match words {
            ["cluster", n, rest @ ..] => {
                let n: usize = n.parse().map_err(|_| "cluster: size".to_string())?;
                let mut seed = 1;
                let mut delay = 2;
                for pair in rest.chunks(2) {
                    match pair {
                        ["seed", s] => seed = s.parse().map_err(|_| "seed".to_string())?,
                        ["delay", d] => delay = d.parse().map_err(|_| "delay".to_string())?,
                        _ => return Err(format!("cluster: unknown option {pair:?}")),
                    }
                }
                self.c = Some(Cluster::new(
                    n,
                    Timing::default(),
                    seed,
                    NetFaults::clean(delay),
                ));
            }
            ["rate", n, ppm] => {
                let i = self.node(n)?;
                let ppm = Self::num(Some(ppm), "rate")?;
                self.cluster()?.nodes[i].rate_ppm = ppm;
            }
            ["advance", ms] => {
                let ms = Self::num(Some(ms), "advance")?;
                self.cluster()?.advance(ms);
            }
            ["wait", "writer", rest @ ..] => {
                let limit = rest
                    .first()
                    .map_or(Ok(WAIT_DEFAULT_MS), |s| Self::num(Some(s), "ms"))?;
                let c = self.cluster()?;
                if c.advance_until(limit, |c| !c.accepting().is_empty())
                    .is_none()
                {
                    return Err(format!("no writer within {limit} ms"));
                }
            }
            ["wait", "writer-other-than", n, rest @ ..] => {
                let i = self.node(n)?;
                let limit = rest
                    .first()
                    .map_or(Ok(WAIT_DEFAULT_MS), |s| Self::num(Some(s), "ms"))?;
                let c = self.cluster()?;
                let found = c.advance_until(limit, |c| c.accepting().iter().any(|&w| w != i));
                if found.is_none() {
                    return Err(format!("no writer other than {n} within {limit} ms"));
                }
            }
            ["writes", "on"] => self.cluster()?.writes = true,
            ["writes", "off"] => self.cluster()?.writes = false,
            ["hold"] => self.cluster()?.hold = true,
            ["release"] => self.cluster()?.hold = false,
            ["deliver"] => self.cluster()?.deliver_all(),
            ["drop"] => self.cluster()?.drop_all(),
            ["partition", rest @ ..] => {
                let mut groups = vec![Vec::new()];
                for w in rest {
                    if *w == "|" {
                        groups.push(Vec::new());
                    } else {
                        let i = self.node(w)?;
                        groups.last_mut().expect("nonempty").push(i);
                    }
                }
                self.cluster()?.partition(&groups);
            }
            ["cut", a, b] => {
                let (a, b) = (self.node(a)?, self.node(b)?);
                self.cluster()?.cut_link(a, b);
            }
            ["heal"] => self.cluster()?.heal(),
            ["kill", n] => {
                let i = self.node(n)?;
                self.cluster()?.kill(i);
            }
            ["restart", n] => {
                let i = self.node(n)?;
                self.cluster()?.restart(i);
            }
            ["pause", n] => {
                let i = self.node(n)?;
                self.cluster()?.pause(i);
            }
            ["resume", n] => {
                let i = self.node(n)?;
                self.cluster()?.resume(i);
            }
            ["campaign", n] => {
                let i = self.node(n)?;
                self.cluster()?.step_node(i, Input::Campaign);
            }
            ["transfer", from, to] => {
                let i = self.node(from)?;
                let to = NodeId::from(*to);
                self.cluster()?.step_node(i, Input::TransferWriter { to });
            }
            ["fence", n] => {
                let i = self.node(n)?;
                self.cluster()?.set_fenced(i, true);
            }
            ["unfence", n] => {
                let i = self.node(n)?;
                self.cluster()?.set_fenced(i, false);
            }
            ["timeout-now", from, to] => {
                let (f, t) = (self.node(from)?, self.node(to)?);
                let c = self.cluster()?;
                let term = c.term(f);
                let from = c.nodes[f].id.clone();
                c.step_node(
                    t,
                    Input::Message {
                        from,
                        msg: base_core::quasar::Message::TimeoutNow { term },
                    },
                );
            }
            ["expect", "writer", "none"] => {
                let c = self.cluster()?;
                let acc = c.accepting();
                if !acc.is_empty() {
                    return Err(format!(
                        "expected no writer, {} accepts writes",
                        c.nodes[acc[0]].id
                    ));
                }
            }
            ["expect", "writer", n, "term", t] => {
                let i = self.node(n)?;
                let t = Self::num(Some(t), "term")?;
                let c = self.cluster()?;
                let acc = c.accepting();
                let names: Vec<&str> = acc.iter().map(|&k| c.nodes[k].id.as_str()).collect();
                if acc != [i] {
                    return Err(format!("expected writer {n}, accepting writes: {names:?}"));
                }
                if c.term(i).0 != t {
                    return Err(format!(
                        "expected writer {n} in term {t}, it is in {}",
                        c.term(i)
                    ));
                }
            }
            ["expect", "term", n, t] => {
                let i = self.node(n)?;
                let t = Self::num(Some(t), "term")?;
                let got = self.cluster()?.term(i).0;
                if got != t {
                    return Err(format!("expected node {n} in term {t}, it is in {got}"));
                }
            }
            ["expect", "role", n, role] => {
                let i = self.node(n)?;
                let got = match self.cluster()?.role(i) {
                    None => "dead",
                    Some(Role::Follower) => "follower",
                    Some(Role::PreCandidate) => "pre_candidate",
                    Some(Role::Candidate) => "candidate",
                    Some(Role::Writer) => "writer",
                };
                if got != *role {
                    return Err(format!("expected node {n} {role}, it is {got}"));
                }
            }
            ["expect", "view", n, "writer", m, "term", t] => {
                let i = self.node(n)?;
                let t = Self::num(Some(t), "term")?;
                let c = self.cluster()?;
                let now = c.local(i);
                let node = c.nodes[i].node.as_ref().ok_or("node is dead")?;
                let view = node.writer_view(now);
                let got = view.writer.as_ref().map_or("none", NodeId::as_str);
                if got != *m || view.term.0 != t {
                    return Err(format!(
                        "expected node {n} to see writer {m} term {t}, it sees {got} term {}",
                        view.term
                    ));
                }
            }
            ["expect", "handover", a, b] => {
                let (a, b) = (self.node(a)?, self.node(b)?);
                let c = self.cluster()?;
                let last_a =
                    c.last_accepting_real[a].ok_or("the first node never accepted writes")?;
                let a_term = c
                    .writers
                    .iter()
                    .filter(|(_, w)| **w == a)
                    .map(|(t, _)| *t)
                    .max()
                    .ok_or("the first node never became writer")?;
                let first_b = c
                    .writers
                    .iter()
                    .filter(|(t, w)| **w == b && **t > a_term)
                    .filter_map(|(t, _)| c.won_real.get(t).copied())
                    .min()
                    .ok_or("the second node never became writer after the first")?;
                if last_a >= first_b {
                    return Err(format!(
                        "node {} accepted writes until {last_a} ms, node {} won at {first_b} ms",
                        c.nodes[a].id, c.nodes[b].id
                    ));
                }
            }
            ["print"] => {
                let file = self.file.clone();
                let c = self.cluster()?;
                let acc = c.accepting();
                eprintln!(
                    "-- {file}: real {} ms, in flight {}",
                    c.real_ms,
                    c.inflight_len()
                );
                for i in 0..c.nodes.len() {
                    eprintln!(
                        "   {} term {} role {:?} accepting {} paused {}",
                        c.nodes[i].id,
                        c.term(i),
                        c.role(i),
                        acc.contains(&i),
                        c.nodes[i].paused
                    );
                }
            }
            _ => return Err(format!("unknown command {words:?}")),
        }
        Ok(())
    }
}

fn run_script(path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut interp = Interp {
        c: None,
        file: path.display().to_string(),
    };
    let mut commands = 0;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = format!("{}:{}: `{line}`", interp.file, lineno + 1);
        interp.run_line(&words).map_err(|e| format!("{at}: {e}"))?;
        commands += 1;
        if let Some(c) = &interp.c
            && let Some(v) = &c.violation
        {
            return Err(format!("{at}: safety violated {v}"));
        }
    }
    Ok(commands)
}

#[test]
fn quasar_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the scenario scripts in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for f in &files {
        match run_script(f) {
            Ok(n) => eprintln!("ok   {} ({n} commands)", f.display()),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
