//! `cargo sim …`: run one seed with its timeline, or a campaign over many seeds in parallel
//! worker processes.

use crate::config::{Bounds, Bug, FaultMix, Options, TimingProfile};
use crate::run::{Report, run_seed};
use crate::stats::{FailoverKind, SeedLine, Summary, failover_figures};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const USAGE: &str = "\
usage:
  cargo sim run --seed N [--bug BUG] [--quiet-scaling] [--poll-ms N] [--quiet]
      one seed: its timeline (every event), the figures, and any violation with its trace
  cargo sim campaign [--seeds 1000] [--start 0] [--jobs 2] [--bug …] [--quiet-scaling]
                     [--timing quasar,k8s-lease] [--faults mixed|kills]
      many seeds in parallel processes; ends with one line of key=value figures per timing
  --timing T[,T…]: the election timings: quasar (the defaults: heartbeat 100 ms, election
      timeout 1–2 s, lease 900 ms) or k8s-lease (Kubernetes-Lease leader election's 15 s lease,
      10 s renew deadline, 2 s retry, as Quasar timings); a campaign runs each in turn, same seeds
  --faults: mixed (every kind of fault, overlapping; the default) or kills (only writer kills,
      one at a time: the failover of a clean kill)
  --replicas 3|5: the Base's initial replicas (default: 5 in a quarter of the seeds, else 3)
  --bug: plant a bug the checkers must catch: no-recheck, lease-overrun, ignore-fence,
      early-done, unfenced-plan, vote-cache, route-cache, no-read-pin, wrong-retention,
      leave-joint-early, count-learner-votes, removed-campaigns, ack-before-commit,
      older-term-commit, no-truncate, no-epoch, stale-operator-writer, or fixed-poll (no early
      writer poll: counted, not a violation)
  --poll-ms N: force leaderPollInterval (default: drawn from 200, 500, 1000, 2000 ms per seed)
  --quiet-scaling: the plan before joint consensus (issue 18): a scale change waits until no
      fault is active, and faults, switchovers and fences wait until the new configuration is
      in place (by default they strike while a scale change rolls out; --membership-faults,
      the old name of that default, is still accepted)
  cargo sim worker --start S --step K --count N [--bug …]
      (internal) the seeds S, S+K, … one result line each";

struct Args {
    cmd: String,
    seed: u64,
    seeds: u64,
    start: u64,
    step: u64,
    count: u64,
    jobs: u64,
    bug: Option<Bug>,
    quiet: bool,
    membership_faults: bool,
    poll_ms: Option<u64>,
    timings: Vec<TimingProfile>,
    faults: FaultMix,
    replicas: Option<i32>,
}

impl Args {
    fn options(&self, timing: TimingProfile, keep_trace: bool) -> Options {
        Options {
            bug: self.bug,
            keep_trace,
            membership_faults: self.membership_faults,
            poll_ms: self.poll_ms,
            timing,
            faults: self.faults,
            replicas: self.replicas,
            crash_writer_at_end: false,
        }
    }
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        cmd: args.first().cloned().ok_or("no command")?,
        seed: 0,
        seeds: 1000,
        start: 0,
        step: 1,
        count: 1,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
        bug: None,
        quiet: false,
        membership_faults: true,
        poll_ms: None,
        timings: vec![TimingProfile::Quasar],
        faults: FaultMix::Mixed,
        replicas: None,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            a.quiet = true;
            continue;
        }
        // The default since issue 18 (still accepted: older replay commands name it).
        if flag == "--membership-faults" {
            a.membership_faults = true;
            continue;
        }
        if flag == "--quiet-scaling" {
            a.membership_faults = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--seed" => a.seed = num()?,
            "--seeds" => a.seeds = num()?,
            "--start" => a.start = num()?,
            "--step" => a.step = num()?.max(1),
            "--count" => a.count = num()?,
            "--jobs" => a.jobs = num()?.max(1),
            "--bug" => a.bug = Some(Bug::parse(value)?),
            "--poll-ms" => a.poll_ms = Some(num()?.max(100)),
            "--timing" => {
                a.timings = value
                    .split(',')
                    .map(TimingProfile::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--faults" => a.faults = FaultMix::parse(value)?,
            "--replicas" => match num()? {
                n @ (3 | 5) => a.replicas = Some(n as i32),
                n => return Err(format!("--replicas {n}: 3 or 5")),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match a.cmd.as_str() {
        "run" => run_one(&a),
        "campaign" => campaign(&a),
        "worker" => worker(&a),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Keeps panics of the simulated core quiet: they are reported as violations.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

fn line_of(report: &Report, wall_ms: u64) -> SeedLine {
    SeedLine {
        seed: report.seed,
        ok: report.ok(),
        sim_ms: report.sim_ms,
        wall_ms,
        failovers: report.stats.failovers.clone(),
        acked_writes: report.stats.acked_writes,
        converge_ms: report.converge_ms.unwrap_or(0),
        live_ms: report.live_ms.unwrap_or(0),
        refused: report.stats.writes_refused_by_gateway,
        refused_with_writer: report.stats.no_writer_while_one_accepts,
        op_no_writer: report.stats.operator_no_writer_while_one_accepts,
        forgot_writer: report.stats.gateway_forgot_live_writer
            + report.stats.operator_forgot_live_writer,
        switchovers_done: report.stats.switchovers_done,
        switchovers_refused: report.stats.switchovers_refused,
        fences: report.stats.fences_applied,
        violation: report
            .violation
            .as_ref()
            .map(|v| format!("{}: {}", v.invariant, v.detail))
            .unwrap_or_default(),
    }
}

fn run_one(a: &Args) -> ExitCode {
    quiet_panics();
    let options = a.options(a.timings[0], !a.quiet);
    let t = Instant::now();
    let report = run_seed(a.seed, &options);
    let wall_ms = t.elapsed().as_millis() as u64;
    if !a.quiet {
        println!("timeline of seed {}:", a.seed);
        for line in &report.trace_all {
            println!("  {line}");
        }
    }
    let s = &report.stats;
    println!(
        "seed {}: {} simulated ms in {wall_ms} wall ms; {} writes acknowledged, {} failed, {} rejected ({} no_writer at the gateway, {} of them while a node accepted writes), {} reads ({} refused for want of the writer); {} terms; failovers {}; heal→live {:?} ms, →converged {:?} ms; {} plans ({} saw no writer while a node accepted writes); a healthy writer forgotten between polls {} times by the gateway, {} by the operator; {} API writes, {} transfers, {} process starts; switchovers {} done, {} refused ({} fenced targets); {} fences applied ({} of a writer), {} writes refused by a fenced node; {} operator crashes ({} mid rolling update, {} mid scale change); scaled-away PVCs {} removed, {} kept; final check waited {} ms for a writer; replicas' logs: {} cuts, {} snapshots installed, {} positions lowered; {} messages; trace hash {:016x}",
        report.seed,
        report.sim_ms,
        s.acked_writes,
        s.failed_writes,
        s.rejected,
        s.writes_refused_by_gateway,
        s.no_writer_while_one_accepts,
        s.reads,
        s.reads_refused,
        s.terms,
        s.failovers
            .iter()
            .map(|f| format!(
                "{} {} ms{}",
                f.kind.name(),
                f.ms,
                if f.clean { " (clean)" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        report.live_ms,
        report.converge_ms,
        s.plans,
        s.operator_no_writer_while_one_accepts,
        s.gateway_forgot_live_writer,
        s.operator_forgot_live_writer,
        s.api_writes,
        s.transfers,
        s.pod_starts,
        s.switchovers_done,
        s.switchovers_refused,
        s.switchovers_refused_fenced,
        s.fences_applied,
        s.fenced_writers,
        s.writes_refused_fenced,
        s.operator_crashes,
        s.operator_crashes_mid_update,
        s.operator_crashes_mid_scale,
        s.pvcs_removed_on_scale_down,
        s.pvcs_kept_on_scale_down,
        s.final_check_wait_ms,
        s.log_cuts,
        s.snapshots_installed,
        s.positions_lowered,
        report.messages,
        report.trace_hash
    );
    match report.failure_text() {
        Some(text) => {
            println!("{text}");
            ExitCode::FAILURE
        }
        None => {
            println!("no violation");
            ExitCode::SUCCESS
        }
    }
}

fn worker(a: &Args) -> ExitCode {
    quiet_panics();
    let options = a.options(a.timings[0], false);
    let stdout = std::io::stdout();
    for i in 0..a.count {
        let seed = a.start + i * a.step;
        let t = Instant::now();
        let report = run_seed(seed, &options);
        let line = line_of(&report, t.elapsed().as_millis() as u64);
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", line.to_line());
        if let Some(text) = report.failure_text() {
            for l in text.lines() {
                let _ = writeln!(out, "# {l}");
            }
        }
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}

fn campaign(a: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut figures = Vec::new();
    let mut violations = 0;
    for &timing in &a.timings {
        let Some((summary, wall_ms)) = campaign_of(a, &exe, timing) else {
            return ExitCode::FAILURE;
        };
        violations += summary.violations;
        figures.push(format!(
            "timing={} faults={} {}",
            timing.name(),
            a.faults.name(),
            summary.key_values(wall_ms)
        ));
    }
    for line in figures {
        println!("{line}");
    }
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The seeds under one timing, in `a.jobs` worker processes; prints the details, returns the
/// totals and the wall time (`None`: a worker could not start).
fn campaign_of(a: &Args, exe: &std::path::Path, timing: TimingProfile) -> Option<(Summary, u64)> {
    let jobs = a.jobs.min(a.seeds.max(1));
    println!(
        "campaign: seeds {}..{} on {jobs} worker processes, timing {}, faults {}{}",
        a.start,
        a.start + a.seeds,
        timing.name(),
        a.faults.name(),
        a.bug
            .map(|b| format!(", planted bug {}", b.name()))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let mut children = Vec::new();
    for j in 0..jobs {
        let count = a.seeds / jobs + u64::from(j < a.seeds % jobs);
        let mut cmd = Command::new(exe);
        cmd.args(["worker", "--start", &(a.start + j).to_string()])
            .args(["--step", &jobs.to_string(), "--count", &count.to_string()])
            .args(["--timing", timing.name(), "--faults", a.faults.name()])
            .stdout(Stdio::piped());
        if let Some(b) = a.bug {
            cmd.args(["--bug", b.name()]);
        }
        if !a.membership_faults {
            cmd.arg("--quiet-scaling");
        }
        if let Some(ms) = a.poll_ms {
            cmd.args(["--poll-ms", &ms.to_string()]);
        }
        if let Some(n) = a.replicas {
            cmd.args(["--replicas", &n.to_string()]);
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("cannot start a worker: {e}");
                return None;
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = children
        .iter_mut()
        .filter_map(|c| c.stdout.take())
        .map(|out| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            })
        })
        .collect();
    drop(tx);
    let mut summary = Summary::default();
    let mut reports: Vec<String> = Vec::new();
    for line in rx {
        if let Some(l) = line.strip_prefix("# ") {
            reports.push(l.to_string());
            continue;
        }
        let Some(seed_line) = SeedLine::parse(&line) else {
            continue;
        };
        summary.add(&seed_line);
        if summary.seeds.is_multiple_of(100) {
            eprintln!(
                "  … {} seeds, {} violations, {:.0} s",
                summary.seeds,
                summary.violations,
                started.elapsed().as_secs_f64()
            );
        }
    }
    for r in readers {
        let _ = r.join();
    }
    for mut c in children {
        let _ = c.wait();
    }
    let wall_ms = started.elapsed().as_millis() as u64;
    for line in reports.iter().take(200) {
        println!("{line}");
    }
    if !summary.failed_seeds.is_empty() {
        let flags = format!(
            "{}{}",
            if timing == TimingProfile::Quasar {
                String::new()
            } else {
                format!(" --timing {}", timing.name())
            },
            if a.faults == FaultMix::Mixed {
                String::new()
            } else {
                format!(" --faults {}", a.faults.name())
            }
        );
        println!("failed seeds (replay each with `cargo sim run --seed N{flags}`):");
        for (seed, why) in summary.failed_seeds.iter().take(50) {
            println!("  {seed}: {why}");
        }
    }
    println!(
        "seeds run: {}; violations: {}; simulated {:.0} s in {:.1} s wall ({}x, {}x per worker); {} writes acknowledged",
        summary.seeds,
        summary.violations,
        summary.sim_ms as f64 / 1e3,
        wall_ms as f64 / 1e3,
        summary.sim_ms / wall_ms.max(1),
        summary.sim_ms / summary.wall_ms.max(1),
        summary.acked_writes
    );
    println!(
        "failover (writer taken away → a new writer acknowledges a write through the gateway):"
    );
    for kind in FailoverKind::ALL {
        for clean in [true, false] {
            let (n, p50, p99, max) =
                failover_figures(&summary.failovers, |f| f.kind == kind && f.clean == clean);
            if n > 0 {
                println!(
                    "  {:<9} {:<25} n={n:<5} p50 {p50} ms, p99 {p99} ms, max {max} ms",
                    kind.name(),
                    if clean {
                        "clean (no other fault)"
                    } else {
                        "with other faults about"
                    }
                );
            }
        }
    }
    println!(
        "writes refused by the gateway (503 no_writer): {}; of them while a node could accept writes: {}",
        summary.refused, summary.refused_with_writer
    );
    println!(
        "operator passes that saw no writer while a node could accept writes: {}; a healthy writer forgotten between polls, with no fault in the way: {} times; switchovers: {} done, {} refused; fences applied by agents: {}",
        summary.op_no_writer,
        summary.forgot_writer,
        summary.switchovers_done,
        summary.switchovers_refused,
        summary.fences
    );
    let bounds = Bounds::of(&timing.timing());
    println!(
        "worst heal→first write: {} ms (bound {}); worst heal→converged: {} ms (bound {})",
        summary.max_live_ms, bounds.liveness_ms, summary.max_converge_ms, bounds.convergence_ms
    );
    println!();
    Some((summary, wall_ms))
}
