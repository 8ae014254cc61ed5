//! One run of the simulation: build the hosts, start the operator, gateway and clients, strike the
//! seed's faults, heal, and check liveness and convergence; report the first violation.

use crate::agent::replica_main;
use crate::config::{
    CLIENTS, Fault, FaultMix, FenceWhich, MAX_ORDINALS, Operation, Options, SETTLE_MS, SimConfig,
    SpecChange, SwitchoverTo, Target, TimingProfile,
};
use crate::gateway::{client_main, gateway_main, poll_loop};
use crate::k8s::{CONTROLLER_TICK_MS, CONVERGES, PodPhase};
use crate::operator::{OPERATOR_LOOP_MS, operator_poll_loop};
use crate::stats::FailoverKind;
use crate::world::{
    Host, PendingFailover, Shared, Stats, Violation, World, lock, pod_id, pod_name,
};
use base_core::Term;
use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use madsim::time::{Duration, Instant, sleep, sleep_until};
use std::sync::{Arc, Mutex};

/// What one seed did.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub bug: Option<crate::config::Bug>,
    pub membership_faults: bool,
    pub poll_ms: Option<u64>,
    pub timing: TimingProfile,
    pub fault_mix: FaultMix,
    pub replicas: Option<i32>,
    pub violation: Option<Violation>,
    pub sim_ms: u64,
    pub stats: Stats,
    /// Heal → first write acknowledged through the gateway.
    pub live_ms: Option<u64>,
    /// Heal (or the last spec change, if later) → the cluster matches the plan.
    pub converge_ms: Option<u64>,
    pub trace_hash: u64,
    pub trace_events: u64,
    pub trace_all: Vec<String>,
    pub messages: u64,
    pub faults: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        let bug = self
            .bug
            .map(|b| format!(" --bug {}", b.name()))
            .unwrap_or_default();
        let membership = if self.membership_faults {
            ""
        } else {
            " --quiet-scaling"
        };
        let poll = self
            .poll_ms
            .map(|ms| format!(" --poll-ms {ms}"))
            .unwrap_or_default();
        let timing = match self.timing {
            TimingProfile::Quasar => String::new(),
            t => format!(" --timing {}", t.name()),
        };
        let faults = match self.fault_mix {
            FaultMix::Mixed => String::new(),
            f => format!(" --faults {}", f.name()),
        };
        let replicas = self
            .replicas
            .map(|n| format!(" --replicas {n}"))
            .unwrap_or_default();
        format!(
            "cargo sim run --seed {}{bug}{membership}{poll}{timing}{faults}{replicas}",
            self.seed
        )
    }

    /// The failure report: seed, invariant, the trace around it, and how to replay it.
    pub fn failure_text(&self) -> Option<String> {
        let v = self.violation.as_ref()?;
        let mut s = format!(
            "VIOLATION seed={} invariant=\"{}\" at {:.3}s\n  {}\nfault plan:\n",
            self.seed,
            v.invariant,
            v.at_ns as f64 / 1e9,
            v.detail
        );
        for f in &self.faults {
            s.push_str(&format!("  {f}\n"));
        }
        s.push_str(&format!(
            "trace (the last {} events around it):\n",
            v.trace.len()
        ));
        for line in &v.trace {
            s.push_str(&format!("  {line}\n"));
        }
        let bug = self
            .bug
            .map(|b| format!(" SIM_BUG={}", b.name()))
            .unwrap_or_default();
        let membership = if self.membership_faults {
            ""
        } else {
            " SIM_QUIET_SCALING=1"
        };
        let mut membership = match self.poll_ms {
            Some(ms) => format!("{membership} SIM_POLL_MS={ms}"),
            None => membership.to_string(),
        };
        if self.timing != TimingProfile::Quasar {
            membership.push_str(&format!(" SIM_TIMING={}", self.timing.name()));
        }
        if self.fault_mix != FaultMix::Mixed {
            membership.push_str(&format!(" SIM_FAULTS={}", self.fault_mix.name()));
        }
        if let Some(n) = self.replicas {
            membership.push_str(&format!(" SIM_REPLICAS={n}"));
        }
        s.push_str(&format!(
            "replay: {}\n    or: MADSIM_TEST_SEED={}{bug}{membership} cargo sim-test --test sim replay -- --nocapture\n",
            self.replay_command(),
            self.seed
        ));
        Some(s)
    }
}

/// Runs one seed to the end (or to its first violation).
pub fn run_seed(seed: u64, options: &Options) -> Report {
    let cfg = SimConfig::from_seed(seed, options);
    let mut config = madsim::Config::default();
    config.net.send_latency =
        Duration::from_millis(cfg.latency_ms.0)..Duration::from_millis(cfg.latency_ms.1);
    let faults: Vec<String> = cfg
        .faults
        .iter()
        .map(|s| match &s.then {
            None => format!("{:>6} ms {:?}", s.at_ms, s.fault),
            Some((after_ms, then)) => {
                format!(
                    "{:>6} ms {:?}, then {after_ms} ms later {then:?}",
                    s.at_ms, s.fault
                )
            }
        })
        .collect();
    let slot: Arc<Mutex<Option<Shared>>> = Arc::new(Mutex::new(None));
    let rt = Runtime::with_seed_and_config(seed, config);
    let slot2 = slot.clone();
    let bug = cfg.bug;
    let membership_faults = cfg.membership_faults;
    let poll_ms = options.poll_ms;
    let (timing, fault_mix, replicas) = (options.timing, options.faults, options.replicas);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async move {
            // On the thread that runs the simulation: the core's planted bugs for this seed.
            base_core::buggify::plant(cfg.bug.map(crate::config::Bug::in_core));
            let world = build(cfg);
            *slot2.lock().unwrap_or_else(|e| e.into_inner()) = Some(world.clone());
            supervise(&world).await;
        })
    }));
    let world = slot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("the world was built");
    drop(rt);
    // Not `lock`: the runtime (and its clock) is gone.
    let mut w = world.lock().unwrap_or_else(|e| e.into_inner());
    if w.frozen_ns.is_none() {
        w.frozen_ns = Some(w.last_event_ns);
    }
    let messages = w.messages;
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        w.violation = None;
        w.fail("core assertion (panic)", msg);
    }
    let mut violation = w.violation.clone();
    if let Some(v) = violation.as_mut() {
        v.trace = w.trace.ring();
    }
    let healed = w.healed_ns.unwrap_or(u64::MAX);
    Report {
        seed,
        bug,
        membership_faults,
        poll_ms,
        timing,
        fault_mix,
        replicas,
        violation,
        sim_ms: w.now_ns() / 1_000_000,
        stats: w.stats.clone(),
        live_ms: w.live_ns.map(|t| t.saturating_sub(healed) / 1_000_000),
        converge_ms: w
            .converged_ns
            .map(|t| t.saturating_sub(healed.max(w.k8s.last_spec_change_ns)) / 1_000_000),
        trace_hash: w.trace.hash.0 ^ messages.rotate_left(17),
        trace_events: w.trace.count,
        trace_all: w.trace.all.take().unwrap_or_default(),
        messages,
        faults,
    }
}

/// Creates the hosts and starts every process.
fn build(cfg: SimConfig) -> Shared {
    let handle = Handle::current();
    let world: Shared = Arc::new(Mutex::new(World::new(cfg, handle.clone())));
    for ordinal in 0..MAX_ORDINALS {
        let w = world.clone();
        let node = handle
            .create_node()
            .name(pod_id(ordinal).0)
            .ip(Host::Replica(ordinal).ip())
            .init(move || replica_main(w.clone(), ordinal))
            .build();
        // No pod yet: the process starts when the kubelet starts it.
        handle.kill(node.id());
        let mut w = lock(&world);
        w.replicas[ordinal as usize].madsim_id = Some(node.id());
        w.host_ids.insert(Host::Replica(ordinal), node.id());
    }
    let gateway = handle
        .create_node()
        .name("gateway")
        .ip(Host::Gateway.ip())
        .build();
    // The operator is a process of its own: a crash kills its tasks, a restart runs this again.
    let w = world.clone();
    let operator = handle
        .create_node()
        .name("operator")
        .ip(Host::Operator.ip())
        .init(move || operator_process(w.clone()))
        .build();
    // The API server, the StatefulSet controller and the kubelets: they outlive the operator.
    let kubernetes = handle.create_node().name("kubernetes").build();
    kubernetes.spawn(controllers(world.clone()));
    let clients = handle
        .create_node()
        .name("clients")
        .ip(Host::Clients.ip())
        .build();
    {
        let mut w = lock(&world);
        w.host_ids.insert(Host::Gateway, gateway.id());
        w.host_ids.insert(Host::Operator, operator.id());
        w.host_ids.insert(Host::Clients, clients.id());
        let c = &w.cfg;
        let line = format!(
            "seed {}: {} replicas, retention {}, poll {} ms, RYW TTL {} ms, latency {:?} ms, skews {:?} ppm",
            c.seed,
            c.initial_replicas,
            c.retention,
            c.poll_interval_ms,
            c.ryw_ttl_ms,
            c.latency_ms,
            c.replica_clocks
                .iter()
                .map(|k| k.skew_ppm)
                .collect::<Vec<_>>()
        );
        w.ev(line);
    }
    gateway.spawn(gateway_main(world.clone()));
    for ordinal in 0..MAX_ORDINALS {
        gateway.spawn(poll_loop(world.clone(), ordinal));
    }
    for client in 0..CLIENTS {
        clients.spawn(client_main(world.clone(), client));
    }
    world
}

/// The kubelet and the StatefulSet controller.
async fn controllers(world: Shared) {
    loop {
        lock(&world).k8s_tick();
        sleep(Duration::from_millis(CONTROLLER_TICK_MS)).await;
    }
}

/// The operator's process: its poll task and its reconcile loop.
async fn operator_process(world: Shared) {
    madsim::task::spawn(operator_poll_loop(world.clone()));
    operator_main(world).await;
}

/// The operator's reconcile loop (every `OPERATOR_LOOP_MS`, or at once when the poll task saw
/// the writer change); a writer transfer is a pod annotation, written by the reconcile.
async fn operator_main(world: Shared) {
    loop {
        let due = Instant::now() + Duration::from_millis(OPERATOR_LOOP_MS);
        while Instant::now() < due && !lock(&world).operator.wake {
            sleep(Duration::from_millis(OPERATOR_WAKE_CHECK_MS)).await;
        }
        lock(&world).reconcile();
    }
}

/// How often the operator's loop looks whether its poll task woke it.
const OPERATOR_WAKE_CHECK_MS: u64 = 10;

/// What a spec change is rolling out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rollout {
    Update,
    Scale,
}

impl std::fmt::Display for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rollout::Update => "rolling update",
            Rollout::Scale => "scale change",
        })
    }
}

/// An action that ends a fault.
enum Undo {
    Unclog(Vec<(Host, Host)>),
    ChaosEnd,
    /// Takes this entry (a pod name or `*`) out of `hanzo.ai/fenced-instances`.
    Unfence(String),
    /// The operator's process starts again.
    OperatorRestart,
}

impl World {
    fn running(&self) -> Vec<i32> {
        self.k8s
            .pods
            .iter()
            .filter(|(o, p)| {
                matches!(p.phase, PodPhase::Running { .. })
                    && self.replicas[**o as usize].agent.is_some()
            })
            .map(|(o, _)| *o)
            .collect()
    }

    /// No process paused or crashed, no chaos on the network, no fence in force or on its way
    /// out, no switchover pending.
    fn quiet(&self) -> bool {
        let ops = self.fence_list().is_empty()
            && self.checks.switchover.is_none()
            && self.k8s.pods.values().all(|p| !p.fenced && !p.fence_file)
            && !self
                .replicas
                .iter()
                .any(|s| s.agent.as_ref().is_some_and(|a| a.node().is_fenced()));
        ops && self.net.chaos == 0
            && self.net.clogged.is_empty()
            && !self.replicas.iter().any(|s| s.paused)
            && self.armed_pause.is_none()
            && !self
                .k8s
                .pods
                .values()
                .any(|p| matches!(p.phase, PodPhase::Crashed { .. }))
    }

    /// The rollout of the user's last spec change, if it is still under way: a scale change
    /// until every pod of the spec runs with the spec's peer set, a rolling update until the
    /// StatefulSet runs the new image and every pod is on its revision.
    fn rollout_in_progress(&self) -> Option<Rollout> {
        match self.k8s.last_spec_change.as_ref()? {
            SpecChange::Scale(_) => (!self.membership_settled()).then_some(Rollout::Scale),
            SpecChange::Image(_) => {
                let image = self.k8s.base.spec.image.reference();
                let sts = self.k8s.sts();
                let generation = sts
                    .and_then(|o| o.pointer("/metadata/generation"))
                    .and_then(serde_json::Value::as_i64);
                let runs_image = sts
                    .and_then(|o| o.pointer("/spec/template"))
                    .is_some_and(|t| t.to_string().contains(&image));
                let rolled = runs_image
                    && self.k8s.sts_view.as_ref().is_some_and(|v| {
                        Some(v.generation) == generation
                            && self
                                .k8s
                                .pods
                                .values()
                                .all(|p| p.revision == v.update_revision)
                    });
                (!rolled).then_some(Rollout::Update)
            }
        }
    }

    /// Every pod of the spec runs with the spec's peer set (`BASE_REPLICAS`), and the election's
    /// configuration is settled on the spec's members.
    fn membership_settled(&self) -> bool {
        let replicas = self.k8s.base.spec.replicas;
        self.k8s.pods.len() == replicas as usize
            && self.k8s.pods.iter().all(|(o, p)| {
                *o < replicas
                    && p.cluster_size == replicas
                    && matches!(p.phase, PodPhase::Running { .. })
            })
            && self.configuration_settled().is_ok()
    }

    fn resolve(&mut self, target: Target) -> Option<i32> {
        let running = self.running();
        if running.is_empty() {
            return None;
        }
        let writer = self.current_writer().filter(|w| running.contains(w));
        match (target, writer) {
            (Target::Writer, Some(w)) => Some(w),
            (Target::Follower, Some(w)) => {
                let others: Vec<i32> = running.into_iter().filter(|o| *o != w).collect();
                (!others.is_empty()).then(|| *self.rng.pick(&others))
            }
            _ => Some(*self.rng.pick(&running)),
        }
    }

    fn cut(&mut self, a: Host, b: Host, cut: &mut Vec<(Host, Host)>) {
        self.clog(a, b);
        cut.push((a, b));
    }

    /// Notes the start of a failover when a fault takes the writer away for long enough. It is
    /// clean when nothing else disturbs the cluster now (`quiet`, every pod's process running,
    /// the peer set settled); `strike` marks it otherwise when a later fault comes first.
    fn note_failover(&mut self, victim: i32, long_enough: bool, kind: FailoverKind) {
        if !long_enough || self.stats.failover_pending.is_some() {
            return;
        }
        if self.current_writer() == Some(victim)
            && let Some(term) = self.replicas[victim as usize]
                .agent
                .as_ref()
                .map(|a| a.node().term())
        {
            let clean = self.quiet()
                && self.membership_settled()
                && self.running().len() == self.k8s.pods.len();
            self.stats.failover_pending = Some(PendingFailover {
                since_ns: self.now_ns(),
                term,
                kind,
                clean,
            });
        }
    }

    fn strike(&mut self, fault: &Fault) -> Option<(u64, Undo)> {
        // A writer deposed for at least this long must be replaced: its lease and CheckQuorum end
        // within `election_timeout_min`, and the followers' promises with it.
        let deposes_after_ms = self.cfg.bounds.deposes_after_ms;
        let long = |ms: u64| ms >= deposes_after_ms;
        if let Some(p) = &mut self.stats.failover_pending {
            p.clean = false;
        }
        let mut cut = Vec::new();
        match fault {
            Fault::Isolate { target, for_ms } => {
                let o = self.resolve(*target)?;
                self.ev(format!("FAULT isolate {} for {for_ms} ms", pod_id(o)));
                self.note_failover(o, long(*for_ms), FailoverKind::Isolate);
                for h in self.all_hosts() {
                    if h != Host::Replica(o) {
                        self.cut(Host::Replica(o), h, &mut cut);
                        self.cut(h, Host::Replica(o), &mut cut);
                    }
                }
                Some((*for_ms, Undo::Unclog(cut)))
            }
            Fault::Partition {
                writer_in_minority,
                for_ms,
            } => {
                let mut replicas: Vec<i32> = self.k8s.pods.keys().copied().collect();
                let n = replicas.len();
                if n < 2 {
                    return None;
                }
                let size = if *writer_in_minority {
                    (n - 1) / 2
                } else {
                    n / 2 + 1
                }
                .max(1);
                let first = self.resolve(Target::Writer)?;
                replicas.retain(|o| *o != first);
                let mut side = vec![first];
                while side.len() < size {
                    let i = self.rng.below(replicas.len() as u64) as usize;
                    side.push(replicas.remove(i));
                }
                self.ev(format!(
                    "FAULT partition {:?} | {:?} for {for_ms} ms",
                    side.iter().map(|o| pod_id(*o).0).collect::<Vec<_>>(),
                    replicas.iter().map(|o| pod_id(*o).0).collect::<Vec<_>>()
                ));
                if *writer_in_minority {
                    self.note_failover(first, long(*for_ms), FailoverKind::Partition);
                }
                for a in &side {
                    for b in &replicas {
                        self.cut(Host::Replica(*a), Host::Replica(*b), &mut cut);
                        self.cut(Host::Replica(*b), Host::Replica(*a), &mut cut);
                    }
                }
                Some((*for_ms, Undo::Unclog(cut)))
            }
            Fault::OneWay { from, to, for_ms } => {
                let a = self.resolve(*from)?;
                let b = self.resolve(*to)?;
                if a == b {
                    return None;
                }
                self.ev(format!(
                    "FAULT one-way loss {} -> {} for {for_ms} ms",
                    pod_id(a),
                    pod_id(b)
                ));
                self.cut(Host::Replica(a), Host::Replica(b), &mut cut);
                Some((*for_ms, Undo::Unclog(cut)))
            }
            Fault::GatewayCut { target, for_ms } => {
                let o = self.resolve(*target)?;
                self.ev(format!(
                    "FAULT gateway cannot reach {} for {for_ms} ms",
                    pod_id(o)
                ));
                self.cut(Host::Gateway, Host::Replica(o), &mut cut);
                self.cut(Host::Replica(o), Host::Gateway, &mut cut);
                Some((*for_ms, Undo::Unclog(cut)))
            }
            Fault::Crash {
                target,
                restart_after_ms,
            } => {
                let o = self.resolve(*target)?;
                self.note_failover(o, true, FailoverKind::Crash);
                if self.crash_pod(o, *restart_after_ms) {
                    self.ev(format!(
                        "FAULT crash {} (restart in {restart_after_ms} ms)",
                        pod_id(o)
                    ));
                }
                None
            }
            Fault::DeletePod { target } => {
                let o = self.resolve(*target)?;
                self.note_failover(o, true, FailoverKind::Delete);
                self.ev(format!("FAULT kubectl delete pod {}", pod_id(o)));
                self.terminate_pod(o, "deleted by a user");
                None
            }
            Fault::Pause { target, for_ms } => {
                let o = self.resolve(*target)?;
                if self.replicas[o as usize].paused {
                    return None;
                }
                if self.current_writer() == Some(o) {
                    // The writer is paused in the middle of a write (between the agent's lease
                    // check and the store applying it) as soon as one comes; within 300 ms anyway.
                    self.armed_pause = Some((o, *for_ms, self.now_ns() + 300_000_000));
                } else {
                    self.pause_now(o, *for_ms, "");
                }
                None
            }
            Fault::Chaos {
                loss_pct,
                dup_pct,
                latency_max_ms,
                for_ms,
            } => {
                self.ev(format!(
                    "FAULT network: {loss_pct}% loss, {dup_pct}% duplicates, latency up to {latency_max_ms} ms, for {for_ms} ms"
                ));
                self.net.chaos += 1;
                self.net.dup_pct = *dup_pct;
                let (loss, max) = (*loss_pct as f64 / 100.0, *latency_max_ms);
                NetSim::current().update_config(|c| {
                    c.packet_loss_rate = loss;
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(max);
                });
                Some((*for_ms, Undo::ChaosEnd))
            }
            Fault::Spec(change) => {
                self.change_spec(change);
                None
            }
            Fault::Op(op) => self.operate(op),
            Fault::OperatorCrash { restart_after_ms } => {
                if self.operator_down {
                    return None;
                }
                let during = self.rollout_in_progress();
                self.ev(format!(
                    "FAULT operator crashes{} (restart in {restart_after_ms} ms)",
                    during.map_or(String::new(), |r| format!(" in the middle of a {r}"))
                ));
                self.stats.operator_crashes += 1;
                match during {
                    Some(Rollout::Update) => self.stats.operator_crashes_mid_update += 1,
                    Some(Rollout::Scale) => self.stats.operator_crashes_mid_scale += 1,
                    None => {}
                }
                self.handle.kill(self.host_ids[&Host::Operator]);
                self.operator_down = true;
                // Its memory is gone: the poll task's tracker and writer, its last plan.
                self.operator = crate::operator::OperatorPoller::new(
                    self.cfg.operator_clock,
                    self.cfg.poll_interval_ms,
                );
                self.last_plan = None;
                Some((*restart_after_ms, Undo::OperatorRestart))
            }
        }
    }

    /// The operator's process starts again (a fresh process: it knows only the API server).
    fn restart_operator(&mut self) {
        if self.operator_down {
            self.operator_down = false;
            self.handle.restart(self.host_ids[&Host::Operator]);
            self.ev("the operator restarts");
        }
    }

    /// A user's `kubectl base switchover/fence/unfence`: an annotation on the Base.
    fn operate(&mut self, op: &Operation) -> Option<(u64, Undo)> {
        match op {
            Operation::Switchover(to) => {
                let target = match to {
                    SwitchoverTo::Follower => pod_name(self.resolve(Target::Follower)?),
                    SwitchoverTo::Writer => pod_name(self.resolve(Target::Writer)?),
                    SwitchoverTo::Fenced => {
                        let fenced: Vec<i32> = self
                            .running()
                            .into_iter()
                            .filter(|o| self.fence_annotated(&pod_name(*o)))
                            .collect();
                        match fenced.is_empty() {
                            true => pod_name(self.resolve(Target::Follower)?),
                            false => pod_name(*self.rng.pick(&fenced)),
                        }
                    }
                    SwitchoverTo::Ordinal(o) => pod_name(*o),
                };
                self.ev(format!("OPERATION switchover to {target}"));
                self.request_switchover(target);
                None
            }
            Operation::Fence { which, for_ms } => {
                let entry = match which {
                    FenceWhich::One(target) => pod_name(self.resolve(*target)?),
                    FenceWhich::All => "*".to_string(),
                };
                let mut list = self.fence_list();
                if list.contains(&entry) {
                    return None;
                }
                self.ev(format!(
                    "OPERATION fence {entry}{}",
                    for_ms.map_or(String::new(), |ms| format!(" for {ms} ms"))
                ));
                list.push(entry.clone());
                self.set_fence_list(list);
                for_ms.map(|ms| (ms, Undo::Unfence(entry)))
            }
            Operation::Unfence => {
                if self.fence_list().is_empty() {
                    return None;
                }
                self.ev("OPERATION unfence every replica");
                self.set_fence_list(Vec::new());
                None
            }
        }
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Unclog(links) => {
                for (a, b) in links {
                    self.unclog(a, b);
                }
                self.ev("fault ends: links restored");
            }
            Undo::ChaosEnd => {
                self.net.chaos -= 1;
                if self.net.chaos == 0 {
                    self.calm_network();
                    self.ev("fault ends: network calm");
                }
            }
            Undo::OperatorRestart => self.restart_operator(),
            Undo::Unfence(entry) => {
                let mut list = self.fence_list();
                if list.contains(&entry) {
                    list.retain(|e| *e != entry);
                    self.ev(format!("operation ends: unfence {entry}"));
                    self.set_fence_list(list);
                }
            }
        }
    }

    /// SIGSTOP `o` for `for_ms` (the supervisor sends SIGCONT).
    pub fn pause_now(&mut self, o: i32, for_ms: u64, how: &str) {
        let slot = &self.replicas[o as usize];
        if slot.paused || slot.agent.is_none() {
            return;
        }
        let (incarnation, madsim_id) = (slot.incarnation, slot.madsim_id);
        self.note_failover(
            o,
            for_ms >= self.cfg.bounds.deposes_after_ms,
            FailoverKind::Pause,
        );
        self.ev(format!("FAULT pause {} for {for_ms} ms{how}", pod_id(o)));
        if let Some(id) = madsim_id {
            self.handle.pause(id);
        }
        self.replicas[o as usize].paused = true;
        let at = self.now_ns() + for_ms * 1_000_000;
        self.resumes.push((at, o, incarnation));
    }

    fn resume(&mut self, o: i32, incarnation: u64) {
        let now_ns = self.now_ns();
        let slot = &mut self.replicas[o as usize];
        if slot.incarnation == incarnation && slot.paused {
            slot.paused = false;
            slot.resumed_ns = now_ns;
            if let Some(id) = slot.madsim_id {
                self.handle.resume(id);
            }
            self.ev(format!("fault ends: {} resumes", pod_id(o)));
        }
    }

    fn calm_network(&mut self) {
        self.net.dup_pct = 0;
        let (lo, hi) = self.cfg.latency_ms;
        NetSim::current().update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = Duration::from_millis(lo)..Duration::from_millis(hi);
        });
    }

    /// Every fault ends now.
    fn heal(&mut self) {
        let links: Vec<(Host, Host)> = self.net.clogged.keys().copied().collect();
        for (a, b) in links {
            self.net.clogged.remove(&(a, b));
            NetSim::current().unclog_link(self.host_ids[&a], self.host_ids[&b]);
        }
        self.armed_pause = None;
        for (_, o, incarnation) in std::mem::take(&mut self.resumes) {
            self.resume(o, incarnation);
        }
        self.net.chaos = 0;
        self.calm_network();
        self.restart_operator();
        self.healed_ns = Some(self.now_ns());
        self.ev("HEAL: every fault ends");
        // The user unfences every replica (a pending switchover is left to finish).
        if !self.fence_list().is_empty() {
            self.set_fence_list(Vec::new());
        }
    }

    /// The node that is writer of the newest term won, if it still is.
    fn final_writer(&self) -> Option<(Term, i32)> {
        let (term, o) = self.latest_writer()?;
        self.replicas[o as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.writer_term == Some(term))
            .then_some((term, o))
    }

    /// At the end: invariant 5, the writer of the newest term holds every acknowledged write;
    /// invariant 7, the PVCs of scaled-away ordinals are as the retention policy says.
    fn final_checks(&mut self, term: Term, o: i32) {
        match self.scaled_away_pvcs() {
            Ok((removed, kept)) => {
                self.stats.pvcs_removed_on_scale_down = removed;
                self.stats.pvcs_kept_on_scale_down = kept;
            }
            Err(why) => self.fail(CONVERGES, format!("at the end: {why}")),
        }
        self.stats.final_checked = Some((term, o));
        let store = &self.k8s.pvcs[&o].store;
        let missing = self
            .checks
            .acked
            .iter()
            .find(|(i, e)| store.entry(**i) != Some(**e))
            .map(|(i, e)| (*i, *e));
        if let Some((i, e)) = missing {
            self.fail(
                "5 no acknowledged write is lost",
                format!(
                    "at the end, the writer {} (term {term}) lacks the acknowledged {e} at index {i}",
                    pod_id(o)
                ),
            );
        }
    }
}

/// Marks the world disturbed now if anything may cost the writer its majority or the pollers
/// their answers.
fn note_disturbance(w: &mut World) {
    if w.net.chaos > 0
        || !w.net.clogged.is_empty()
        || w.armed_pause.is_some()
        || w.replicas.iter().any(|s| s.paused)
        || !w.membership_settled()
        || w.k8s
            .pods
            .keys()
            .any(|o| w.replicas[*o as usize].agent.is_none())
    {
        w.disturbed_ns = w.now_ns();
    }
}

/// The supervisor: strikes faults on schedule, heals, and watches the checkers.
async fn supervise(world: &Shared) {
    let start = Instant::now();
    let (faults, heal_at, bounds) = {
        let w = lock(world);
        (w.cfg.faults.clone(), w.cfg.heal_at_ms, w.cfg.bounds)
    };
    let (liveness_bound_ms, convergence_bound_ms) = (bounds.liveness_ms, bounds.convergence_ms);
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut next = 0;
    let mut undos: Vec<(Instant, Undo)> = Vec::new();
    let mut followups: Vec<(Instant, Fault)> = Vec::new();
    // When the run could first have ended (it ends once the final check has a writer to check).
    let mut final_wait_since: Option<u64> = None;
    let mut crashed_at_end = false;
    let mut last_convergence_check = start;
    // A scale change is rolling out (faults wait, unless `membership_faults`).
    let mut membership_change = false;
    loop {
        let now = Instant::now();
        {
            let mut w = lock(world);
            if w.violation.is_some() {
                break;
            }
            note_disturbance(&mut w);
            if membership_change && w.membership_settled() {
                membership_change = false;
                w.ev("the new peer set is in place");
            }
            while w.healed_ns.is_none() && next < faults.len() && at(faults[next].at_ms) <= now {
                let fault = &faults[next].fault;
                let scale = matches!(fault, Fault::Spec(SpecChange::Scale(_)));
                // The kills plan kills the writer: a kill due before the first election is over
                // (or between two) waits for one, else it would strike any pod and leave no
                // failover to measure (seed 1162 and 1 in ~350 seeds: a kill at 4 s, the first
                // writer at 4.15 s).
                if w.cfg.fault_mix == FaultMix::Kills
                    && fault.hits_writer()
                    && w.current_writer().is_none_or(|o| !w.running().contains(&o))
                    && now < at(faults[next].at_ms + liveness_bound_ms)
                {
                    break;
                }
                if !w.cfg.membership_faults {
                    if scale && !(undos.is_empty() && w.quiet()) {
                        break; // the scale change waits until no fault is active
                    }
                    // Switchovers and fences wait too: they move the writer, and an election in
                    // that window can split the brain just as a fault's can.
                    if membership_change && !fault.membership_safe() {
                        w.ev(format!(
                            "fault skipped (a scale change is rolling out): {fault:?}"
                        ));
                        next += 1;
                        continue;
                    }
                }
                if membership_change && !fault.membership_safe() {
                    w.stats.faults_mid_scale += 1;
                }
                membership_change |= scale;
                if let Some((for_ms, undo)) = w.strike(fault) {
                    undos.push((now + Duration::from_millis(for_ms), undo));
                }
                if let Some((after_ms, then)) = &faults[next].then {
                    followups.push((now + Duration::from_millis(*after_ms), then.clone()));
                }
                next += 1;
            }
            // Follow-ups (operator crashes mid-rollout) are membership-safe: they never wait.
            let (due, later): (Vec<_>, Vec<_>) =
                followups.into_iter().partition(|(t, _)| *t <= now);
            followups = later;
            for (_, fault) in due {
                assert!(
                    fault.membership_safe(),
                    "a follow-up must be membership-safe"
                );
                if w.healed_ns.is_none()
                    && let Some((for_ms, undo)) = w.strike(&fault)
                {
                    undos.push((now + Duration::from_millis(for_ms), undo));
                }
            }
            let (due, later): (Vec<_>, Vec<_>) = undos.into_iter().partition(|(t, _)| *t <= now);
            undos = later;
            for (_, undo) in due {
                w.undo(undo);
            }
            let now_ns = w.now_ns();
            if let Some((o, for_ms, deadline)) = w.armed_pause
                && now_ns >= deadline
            {
                w.armed_pause = None;
                w.pause_now(o, for_ms, "");
            }
            let resumes = std::mem::take(&mut w.resumes);
            let (due, later): (Vec<_>, Vec<_>) =
                resumes.into_iter().partition(|(at, _, _)| *at <= now_ns);
            w.resumes = later;
            for (_, o, incarnation) in due {
                w.resume(o, incarnation);
            }
            // Again once this round's faults struck: a checker that runs before the next round
            // (the gateway losing a writer it cannot reach within a few ms) must see them.
            note_disturbance(&mut w);
            if w.healed_ns.is_none() && at(heal_at) <= now {
                undos.clear();
                w.heal();
            }
            if let Some(healed) = w.healed_ns {
                let now_ns = w.now_ns();
                if w.live_ns.is_none() && now_ns > healed + liveness_bound_ms * 1_000_000 {
                    w.fail(
                        "6 liveness",
                        format!(
                            "no write went through the gateway within {liveness_bound_ms} ms of the heal"
                        ),
                    );
                    break;
                }
                let since = healed.max(w.k8s.last_spec_change_ns);
                if w.converged_ns.is_none()
                    && now.duration_since(last_convergence_check) >= Duration::from_millis(250)
                {
                    last_convergence_check = now;
                    match w.converged() {
                        Ok(()) => {
                            w.converged_ns = Some(now_ns);
                            w.ev("convergence: the cluster matches the spec");
                        }
                        Err(why) if now_ns > since + convergence_bound_ms * 1_000_000 => {
                            w.fail(
                                CONVERGES,
                                format!(
                                    "not converged {convergence_bound_ms} ms after the heal and the last spec change: {why}"
                                ),
                            );
                            break;
                        }
                        Err(_) => {}
                    }
                }
                if let (Some(live), Some(conv)) = (w.live_ns, w.converged_ns)
                    && now_ns > live.max(conv) + SETTLE_MS * 1_000_000
                {
                    // The newest writer may have just stepped down: wait for the next one.
                    let since = *final_wait_since.get_or_insert(now_ns);
                    match w.final_writer() {
                        Some((_, o)) if w.cfg.crash_writer_at_end && !crashed_at_end => {
                            crashed_at_end = true;
                            w.ev(format!(
                                "the end: {} crashes first (crash_writer_at_end)",
                                pod_id(o)
                            ));
                            w.crash_pod(o, 500);
                        }
                        Some((term, o)) => {
                            w.stats.final_check_wait_ms = (now_ns - since) / 1_000_000;
                            w.final_checks(term, o);
                            break;
                        }
                        None => {}
                    }
                    if now_ns > since + liveness_bound_ms * 1_000_000 {
                        w.fail(
                            "6 liveness",
                            format!(
                                "at the end, no node was writer of the newest term for {liveness_bound_ms} ms: nobody to check for the acknowledged writes"
                            ),
                        );
                        break;
                    }
                }
            }
        }
        let mut wake = now + Duration::from_millis(50);
        if next < faults.len() {
            wake = wake.min(at(faults[next].at_ms));
        }
        for (t, _) in &undos {
            wake = wake.min(*t);
        }
        for (t, _) in &followups {
            wake = wake.min(*t);
        }
        {
            let w = lock(world);
            let now_ns = w.now_ns();
            for (at, _, _) in &w.resumes {
                wake = wake.min(now + Duration::from_nanos(at.saturating_sub(now_ns)));
            }
            if w.armed_pause.is_some() {
                wake = wake.min(now + Duration::from_millis(5));
            }
        }
        sleep_until(wake.max(now + Duration::from_millis(1))).await;
    }
    let mut w = lock(world);
    w.messages = NetSim::current().stat().msg_count;
    w.frozen_ns = Some(w.now_ns());
}
