//! Scripted Quasar scenarios, in the manner of etcd raft's `testdata/*.txt` (datadriven): every
//! file under `tests/scenarios/` is a script of commands run against the simulated cluster of
//! the core's harness (`base_core::harness::Cluster`). Its checker judges every step of every
//! script (one writer per term; never two nodes accepting writes at once, in real time; votes,
//! terms and configurations), and every `expect` must hold.
//!
//! Each command is followed by the effects it produced, as `Cluster::record` writes them
//! (`[real ms] node ...`: vote and pre-vote traffic, refused heartbeat acks, persisted terms and
//! votes, winning and stepping down; heartbeats and lease renewals are left out):
//! ```text
//! kill 1
//! advance 2000
//! ----
//! [  3021] 2 -> 1 PreVote term 2 position 57
//! ...
//!
//! ```
//! A command without a block produced nothing; a block runs to the next blank line. The test fails
//! on any difference and prints it as a diff. `REWRITE=1 cargo test -p base-core --test scenarios`
//! re-records the blocks from what the commands now produce (comments and commands stay as
//! written); review the diff before committing it. A failed `expect` or wait, or a safety
//! violation, still fails the run: those are never rewritten.
//!
//! Commands (nodes are named 1..N; `#` starts a comment):
//! ```text
//! cluster N [seed S] [delay MS]   new cluster of N nodes (default seed 1, one-way delay 2 ms)
//! cluster N of M [seed S] [delay MS]  M nodes, the first N the initial voters, the rest joiners
//! members 1 2 3 ...               the operator's desired voters, published to every node
//! wait settled 1 2 3 ... [in MS]  advance until the writer holds exactly these voters, committed
//! expect config N DESCRIPTION     node N's configuration reads so (`voters 1,2 | 2,3 learners 4`)
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
//! print                           the cluster's state, into the command's output
//! ```

use base_core::NodeId;
use base_core::harness::{Cluster, NetFaults};
use base_core::quasar::{Input, Role, Timing};
use std::path::Path;

const WAIT_DEFAULT_MS: u64 = 10_000;

struct Interp {
    c: Option<Cluster>,
    /// What `print` wrote during the current command.
    printed: Vec<String>,
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
            ["cluster", n, "of", m, rest @ ..] => {
                let n: usize = n.parse().map_err(|_| "cluster: size".to_string())?;
                let m: usize = m.parse().map_err(|_| "cluster: universe".to_string())?;
                let mut seed = 1;
                let mut delay = 2;
                for pair in rest.chunks(2) {
                    match pair {
                        ["seed", s] => seed = s.parse().map_err(|_| "seed".to_string())?,
                        ["delay", d] => delay = d.parse().map_err(|_| "delay".to_string())?,
                        _ => return Err(format!("cluster: unknown option {pair:?}")),
                    }
                }
                let mut c =
                    Cluster::with_members(m, n, Timing::default(), seed, NetFaults::clean(delay));
                c.log = Some(Vec::new());
                self.c = Some(c);
            }
            ["members", rest @ ..] => {
                let mut voters = Vec::new();
                for w in rest {
                    voters.push(self.node(w)?);
                }
                self.cluster()?.set_members(&voters);
            }
            ["wait", "settled", rest @ ..] => {
                let (names, limit) = match rest {
                    [names @ .., "in", ms] => (names, Self::num(Some(ms), "ms")?),
                    names => (names, WAIT_DEFAULT_MS),
                };
                let mut voters = Vec::new();
                for w in names {
                    voters.push(self.node(w)?);
                }
                let c = self.cluster()?;
                if c.advance_until(limit, |c| c.settled_on(&voters)).is_none() {
                    return Err(format!("not settled on {names:?} within {limit} ms"));
                }
            }
            ["expect", "config", n, rest @ ..] => {
                let i = self.node(n)?;
                let want = rest.join(" ");
                let got = self
                    .cluster()?
                    .membership(i)
                    .map_or("none".to_string(), |m| {
                        let d = m.describe();
                        d.split_once(' ').map_or(d.clone(), |(_, r)| r.to_string())
                    });
                if got != want {
                    return Err(format!(
                        "expected node {n} to hold `{want}`, it holds `{got}`"
                    ));
                }
            }
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
                let mut c = Cluster::new(n, Timing::default(), seed, NetFaults::clean(delay));
                c.log = Some(Vec::new());
                self.c = Some(c);
            }
            ["rate", n, ppm] => {
                let i = self.node(n)?;
                let ppm = Self::num(Some(ppm), "rate")?;
                self.cluster()?.set_rate(i, ppm);
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
                let from = c.id(f).clone();
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
                        c.id(acc[0])
                    ));
                }
            }
            ["expect", "writer", n, "term", t] => {
                let i = self.node(n)?;
                let t = Self::num(Some(t), "term")?;
                let c = self.cluster()?;
                let acc = c.accepting();
                let names: Vec<&str> = acc.iter().map(|&k| c.id(k).as_str()).collect();
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
                let node = c.node(i).ok_or("node is dead")?;
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
                    .writers()
                    .iter()
                    .filter(|(_, w)| **w == a)
                    .map(|(t, _)| *t)
                    .max()
                    .ok_or("the first node never became writer")?;
                let first_b = c
                    .writers()
                    .iter()
                    .filter(|(t, w)| **w == b && **t > a_term)
                    .filter_map(|(t, _)| c.won_real.get(t).copied())
                    .min()
                    .ok_or("the second node never became writer after the first")?;
                if last_a >= first_b {
                    return Err(format!(
                        "node {} accepted writes until {last_a} ms, node {} won at {first_b} ms",
                        c.id(a),
                        c.id(b)
                    ));
                }
            }
            ["print"] => {
                let c = self.cluster()?;
                let acc = c.accepting();
                let mut lines = vec![format!(
                    "real {} ms, in flight {}",
                    c.real_ms,
                    c.inflight_len()
                )];
                for i in 0..c.len() {
                    lines.push(format!(
                        "{} term {} role {:?} accepting {} paused {}",
                        c.id(i),
                        c.term(i),
                        c.role(i),
                        acc.contains(&i),
                        c.paused(i)
                    ));
                }
                self.printed.extend(lines);
            }
            _ => return Err(format!("unknown command {words:?}")),
        }
        Ok(())
    }
}

/// A script line: a command with the output recorded under it, or text kept as written
/// (comments, blank lines).
enum Line {
    Text(String),
    Command {
        lineno: usize,
        text: String,
        output: Vec<String>,
    },
}

/// Splits a script into commands and their `----` blocks (each ends at a blank line or the end).
fn parse(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if line.split('#').next().unwrap_or("").trim().is_empty() {
            out.push(Line::Text(line.to_string()));
            continue;
        }
        let mut output = Vec::new();
        if lines.peek().is_some_and(|(_, l)| *l == "----") {
            lines.next();
            for (_, l) in lines.by_ref() {
                if l.is_empty() {
                    break;
                }
                output.push(l.to_string());
            }
        }
        out.push(Line::Command {
            lineno: i + 1,
            text: line.to_string(),
            output,
        });
    }
    out
}

/// The script again, each command followed by its output block (if it has output).
fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    let mut after_block = false;
    for l in lines {
        match l {
            // The blank line that ends a block is the block's own.
            Line::Text(t) if after_block && t.is_empty() => {}
            Line::Text(t) => {
                out.push_str(t);
                out.push('\n');
            }
            Line::Command { text, output, .. } => {
                out.push_str(text);
                out.push('\n');
                if !output.is_empty() {
                    out.push_str("----\n");
                    for o in output {
                        out.push_str(o);
                        out.push('\n');
                    }
                    out.push('\n');
                }
            }
        }
        after_block = matches!(l, Line::Command { output, .. } if !output.is_empty());
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// A line diff of `expected` against `got` (longest common subsequence): `-` expected only,
/// `+` produced only.
fn diff(expected: &[String], got: &[String]) -> String {
    let (n, m) = (expected.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && expected[i] == got[j] {
            out.push_str(&format!("    {}\n", expected[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("  - {}\n", expected[i]));
            i += 1;
        } else {
            out.push_str(&format!("  + {}\n", got[j]));
            j += 1;
        }
    }
    out
}

struct Outcome {
    commands: usize,
    /// One entry per command whose output differs from its block.
    diffs: Vec<String>,
    /// The script with every block as the commands now produce it.
    rewritten: String,
    original: String,
}

/// Runs a script. `Err` for a failed command (an `expect`, a wait) or a safety violation.
fn run_script(path: &Path) -> Result<Outcome> {
    let file = path.display().to_string();
    let original = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let mut interp = Interp {
        c: None,
        printed: Vec::new(),
    };
    let mut commands = 0;
    let mut diffs = Vec::new();
    let mut rendered = Vec::new();
    for line in parse(&original) {
        let Line::Command {
            lineno,
            text,
            output: expected,
        } = line
        else {
            rendered.push(line);
            continue;
        };
        let command = text.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = command.split_whitespace().collect();
        let at = format!("{file}:{lineno}: `{command}`");
        interp.run_line(&words).map_err(|e| format!("{at}: {e}"))?;
        commands += 1;
        if let Some(v) = interp.c.as_ref().and_then(|c| c.violation()) {
            return Err(format!("{at}: safety violated {v}"));
        }
        let mut got: Vec<String> = interp
            .c
            .as_mut()
            .and_then(|c| c.log.as_mut())
            .map(std::mem::take)
            .unwrap_or_default();
        got.append(&mut interp.printed);
        if got != expected {
            diffs.push(format!("{at}:\n{}", diff(&expected, &got)));
        }
        rendered.push(Line::Command {
            lineno,
            text,
            output: got,
        });
    }
    Ok(Outcome {
        commands,
        diffs,
        rewritten: render(&rendered),
        original,
    })
}

/// Every script runs to its end with every `expect` holding and no safety violation, and every
/// command produces exactly the effects recorded under it. `REWRITE=1` records them anew.
#[test]
fn quasar_scenarios() {
    let rewrite = std::env::var("REWRITE").is_ok_and(|v| v == "1");
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
            Ok(o) if rewrite => {
                if o.rewritten != o.original {
                    std::fs::write(f, &o.rewritten).expect("rewrite the script");
                    eprintln!("rewrote {} ({} commands)", f.display(), o.commands);
                }
            }
            Ok(o) if o.diffs.is_empty() => {
                eprintln!("ok   {} ({} commands)", f.display(), o.commands);
            }
            Ok(o) => failures.push(format!(
                "{}: effects differ from the recording (- recorded, + now; REWRITE=1 re-records):\n{}",
                f.display(),
                o.diffs.join("")
            )),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
