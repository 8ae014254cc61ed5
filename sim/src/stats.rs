//! Figures over many seeds: percentiles and the campaign's one-line summary. Plain Rust, so that
//! it is unit-tested in the ordinary build too.

/// The `p`-th percentile (0–100) of `sorted` by the nearest-rank method; 0 for no samples.
#[must_use]
pub fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    debug_assert!(
        sorted.windows(2).all(|w| w[0] <= w[1]),
        "samples not sorted"
    );
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// What took the writer away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailoverKind {
    /// The writer's process died and restarts in place (no SIGTERM: no hand-over).
    Crash,
    /// `kubectl delete pod` of the writer: SIGTERM (its agent hands the role over), then the kill
    /// at the end of the grace period. With `Crash`, a "writer pod killed".
    Delete,
    /// The writer cut off from every other host.
    Isolate,
    /// The writer on the minority side of a partition.
    Partition,
    /// The writer paused (SIGSTOP) for longer than its lease.
    Pause,
}

impl FailoverKind {
    pub const ALL: [FailoverKind; 5] = [
        FailoverKind::Crash,
        FailoverKind::Delete,
        FailoverKind::Isolate,
        FailoverKind::Partition,
        FailoverKind::Pause,
    ];

    fn letter(self) -> char {
        match self {
            FailoverKind::Crash => 'C',
            FailoverKind::Delete => 'D',
            FailoverKind::Isolate => 'I',
            FailoverKind::Partition => 'P',
            FailoverKind::Pause => 'S',
        }
    }

    /// A writer pod killed: crashed or deleted.
    #[must_use]
    pub fn is_kill(self) -> bool {
        matches!(self, FailoverKind::Crash | FailoverKind::Delete)
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FailoverKind::Crash => "crash",
            FailoverKind::Delete => "delete",
            FailoverKind::Isolate => "isolate",
            FailoverKind::Partition => "partition",
            FailoverKind::Pause => "pause",
        }
    }
}

/// One failover: from the fault that took the writer away to the first write a new writer
/// acknowledged through the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    pub kind: FailoverKind,
    pub ms: u64,
    /// No other fault was in force when it began, and none struck before it ended.
    pub clean: bool,
}

impl Failover {
    /// `C1200` (a clean crash, 1200 ms), `p3400` (a partition with other faults about).
    fn encode(self) -> String {
        let l = self.kind.letter();
        let l = if self.clean {
            l
        } else {
            l.to_ascii_lowercase()
        };
        format!("{l}{}", self.ms)
    }

    fn decode(s: &str) -> Option<Failover> {
        let mut chars = s.chars();
        let l = chars.next()?;
        let kind = FailoverKind::ALL
            .into_iter()
            .find(|k| k.letter() == l.to_ascii_uppercase())?;
        Some(Failover {
            kind,
            ms: chars.as_str().parse().ok()?,
            clean: l.is_ascii_uppercase(),
        })
    }
}

/// p50/p99/max of the failovers `keep` selects, and how many there were.
#[must_use]
pub fn failover_figures(
    all: &[Failover],
    keep: impl Fn(&Failover) -> bool,
) -> (usize, u64, u64, u64) {
    let mut f: Vec<u64> = all.iter().filter(|f| keep(f)).map(|f| f.ms).collect();
    f.sort_unstable();
    (
        f.len(),
        percentile(&f, 50),
        percentile(&f, 99),
        f.last().copied().unwrap_or(0),
    )
}

/// What one seed reported, as a worker prints it on one line and the campaign reads it back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedLine {
    pub seed: u64,
    pub ok: bool,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub failovers: Vec<Failover>,
    pub acked_writes: u64,
    pub converge_ms: u64,
    pub live_ms: u64,
    pub refused: u64,
    pub refused_with_writer: u64,
    /// Reconcile passes that observed no writer while a node could accept writes.
    pub op_no_writer: u64,
    /// Gateway refusals and reconcile passes that forgot a healthy writer between polls.
    pub forgot_writer: u64,
    pub switchovers_done: u64,
    pub switchovers_refused: u64,
    /// Fences an agent applied (`SetFenced(true)`).
    pub fences: u64,
    pub violation: String,
}

impl SeedLine {
    /// `seed=7 ok=1 sim_ms=… wall_ms=… acked=… live_ms=… converge_ms=… failovers=C1200,p3400 violation=…`
    /// (the violation text last: it may contain spaces).
    #[must_use]
    pub fn to_line(&self) -> String {
        let failovers: Vec<String> = self.failovers.iter().map(|f| f.encode()).collect();
        format!(
            "seed={} ok={} sim_ms={} wall_ms={} acked={} live_ms={} converge_ms={} refused={} refused_with_writer={} op_no_writer={} forgot_writer={} switchovers_done={} switchovers_refused={} fences={} failovers={} violation={}",
            self.seed,
            u8::from(self.ok),
            self.sim_ms,
            self.wall_ms,
            self.acked_writes,
            self.live_ms,
            self.converge_ms,
            self.refused,
            self.refused_with_writer,
            self.op_no_writer,
            self.forgot_writer,
            self.switchovers_done,
            self.switchovers_refused,
            self.fences,
            if failovers.is_empty() {
                "-".to_string()
            } else {
                failovers.join(",")
            },
            if self.violation.is_empty() {
                "-"
            } else {
                &self.violation
            },
        )
    }

    /// The inverse of [`SeedLine::to_line`]; `None` for any other line.
    #[must_use]
    pub fn parse(line: &str) -> Option<SeedLine> {
        let (head, violation) = line.split_once(" violation=")?;
        let mut out = SeedLine {
            violation: if violation == "-" {
                String::new()
            } else {
                violation.to_string()
            },
            ..SeedLine::default()
        };
        let mut seen = 0;
        for field in head.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            seen += 1;
            match k {
                "seed" => out.seed = v.parse().ok()?,
                "ok" => out.ok = v == "1",
                "sim_ms" => out.sim_ms = v.parse().ok()?,
                "wall_ms" => out.wall_ms = v.parse().ok()?,
                "acked" => out.acked_writes = v.parse().ok()?,
                "live_ms" => out.live_ms = v.parse().ok()?,
                "converge_ms" => out.converge_ms = v.parse().ok()?,
                "refused" => out.refused = v.parse().ok()?,
                "refused_with_writer" => out.refused_with_writer = v.parse().ok()?,
                "op_no_writer" => out.op_no_writer = v.parse().ok()?,
                "forgot_writer" => out.forgot_writer = v.parse().ok()?,
                "switchovers_done" => out.switchovers_done = v.parse().ok()?,
                "switchovers_refused" => out.switchovers_refused = v.parse().ok()?,
                "fences" => out.fences = v.parse().ok()?,
                "failovers" if v == "-" => {}
                "failovers" => {
                    out.failovers = v.split(',').map(Failover::decode).collect::<Option<_>>()?;
                }
                _ => return None,
            }
        }
        (seen == 15).then_some(out)
    }
}

/// The campaign's totals.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub violations: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub failovers: Vec<Failover>,
    pub failed_seeds: Vec<(u64, String)>,
    pub max_live_ms: u64,
    pub max_converge_ms: u64,
    pub acked_writes: u64,
    pub refused: u64,
    pub refused_with_writer: u64,
    pub op_no_writer: u64,
    pub forgot_writer: u64,
    pub switchovers_done: u64,
    pub switchovers_refused: u64,
    pub fences: u64,
}

impl Summary {
    pub fn add(&mut self, line: &SeedLine) {
        self.seeds += 1;
        if !line.ok {
            self.violations += 1;
            self.failed_seeds.push((line.seed, line.violation.clone()));
        }
        self.sim_ms += line.sim_ms;
        self.wall_ms += line.wall_ms;
        self.failovers.extend(&line.failovers);
        self.max_live_ms = self.max_live_ms.max(line.live_ms);
        self.max_converge_ms = self.max_converge_ms.max(line.converge_ms);
        self.acked_writes += line.acked_writes;
        self.refused += line.refused;
        self.refused_with_writer += line.refused_with_writer;
        self.op_no_writer += line.op_no_writer;
        self.forgot_writer += line.forgot_writer;
        self.switchovers_done += line.switchovers_done;
        self.switchovers_refused += line.switchovers_refused;
        self.fences += line.fences;
    }

    /// `seeds=… violations=… sim_speed=…x sim_speed_per_core=…x` then, for writer kills
    /// (`kill_`), clean writer kills (`clean_kill_`) and every failover (`all_`):
    /// `…failovers=N …failover_p50_ms=… …failover_p99_ms=… …failover_max_ms=…`.
    /// `sim_speed` is simulated time over the campaign's wall time (the whole machine);
    /// `sim_speed_per_core` divides by the wall time the seeds took, summed over the workers.
    #[must_use]
    pub fn key_values(&self, elapsed_wall_ms: u64) -> String {
        let mut out = format!(
            "seeds={} violations={} sim_speed={}x sim_speed_per_core={}x",
            self.seeds,
            self.violations,
            self.sim_ms / elapsed_wall_ms.max(1),
            self.sim_ms / self.wall_ms.max(1),
        );
        // (prefix, kills only, clean only)
        for (prefix, kills, clean) in [
            ("kill_", true, false),
            ("clean_kill_", true, true),
            ("all_", false, false),
        ] {
            let (n, p50, p99, max) = failover_figures(&self.failovers, |f| {
                (!kills || f.kind.is_kill()) && (!clean || f.clean)
            });
            out.push_str(&format!(
                " {prefix}failovers={n} {prefix}failover_p50_ms={p50} {prefix}failover_p99_ms={p99} {prefix}failover_max_ms={max}"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        assert_eq!(percentile(&[5], 99), 5);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn seed_lines_round_trip() {
        let line = SeedLine {
            seed: 42,
            ok: false,
            sim_ms: 30_000,
            wall_ms: 400,
            failovers: vec![
                Failover {
                    kind: FailoverKind::Crash,
                    ms: 1200,
                    clean: true,
                },
                Failover {
                    kind: FailoverKind::Partition,
                    ms: 2300,
                    clean: false,
                },
            ],
            acked_writes: 77,
            converge_ms: 5000,
            live_ms: 3000,
            refused: 12,
            refused_with_writer: 3,
            op_no_writer: 4,
            forgot_writer: 6,
            switchovers_done: 2,
            switchovers_refused: 1,
            fences: 5,
            violation: "two writers in term 3: my-app-0 and my-app-1".into(),
        };
        assert_eq!(SeedLine::parse(&line.to_line()), Some(line));
        let ok = SeedLine {
            seed: 1,
            ok: true,
            ..SeedLine::default()
        };
        assert_eq!(SeedLine::parse(&ok.to_line()), Some(ok));
        assert_eq!(SeedLine::parse("hello"), None);
    }

    #[test]
    fn summary_line_has_every_key() {
        let mut s = Summary::default();
        s.add(&SeedLine {
            seed: 1,
            ok: true,
            sim_ms: 10_000,
            wall_ms: 10,
            failovers: vec![
                Failover {
                    kind: FailoverKind::Crash,
                    ms: 900,
                    clean: true,
                },
                Failover {
                    kind: FailoverKind::Delete,
                    ms: 3000,
                    clean: false,
                },
                Failover {
                    kind: FailoverKind::Pause,
                    ms: 5000,
                    clean: true,
                },
            ],
            ..SeedLine::default()
        });
        let kv = s.key_values(5);
        assert_eq!(
            kv,
            "seeds=1 violations=0 sim_speed=2000x sim_speed_per_core=1000x \
             kill_failovers=2 kill_failover_p50_ms=900 kill_failover_p99_ms=3000 kill_failover_max_ms=3000 \
             clean_kill_failovers=1 clean_kill_failover_p50_ms=900 clean_kill_failover_p99_ms=900 clean_kill_failover_max_ms=900 \
             all_failovers=3 all_failover_p50_ms=3000 all_failover_p99_ms=5000 all_failover_max_ms=5000"
        );
    }
}
