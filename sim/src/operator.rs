//! The operator host: its writer poller (the core `writer_poll::WriterPoller`, driven by the
//! madsim loop here as adapter-k8s `controller::writers` drives it with tokio) and its reconcile
//! (observe → the real `reconcile::plan` → `Plan::writes()`, each stored by the Kubernetes model,
//! `k8s.rs`), with the checkers of what the plan decides (invariant 9).

use crate::clock::Clock;
use crate::config::BASE_NAME;
use crate::gateway::{LeaderPoll, Who};
use crate::k8s::PodPhase;
use crate::world::{Shared, World, lock, ordinal_of, pod_id, pod_name};
use base_core::control::TransferRequest;
use base_core::reconcile::objects::ANNOTATION_SWITCHOVER_TO;
use base_core::reconcile::{
    CONDITION_SWITCHOVER, GatewayView, Observed, OperatorConfig, Plan, PodView, objects, plan,
};
use base_core::wire::{ConfigurationReport, parse_leader_answer};
use base_core::writer_poll::WriterPoller;
use base_core::{Millis, Term};
use futures::StreamExt;
use futures::channel::mpsc;
use madsim::net::Endpoint;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the operator reconciles (as if watch events arrived this often); a writer change
/// seen by its poll task wakes it at once.
pub const OPERATOR_LOOP_MS: u64 = 500;

/// The operator's writer tracking: the core `writer_poll::WriterPoller` (the production operator's
/// own machine, adapter-k8s `controller::writers`), driven by the madsim loop
/// `gateway::operator_poll_loop`; targets are ordinals.
pub struct OperatorPoller {
    pub clock: Clock,
    pub poller: WriterPoller<i32>,
    /// The writer changed: reconcile now.
    pub wake: bool,
    pub seq: u64,
    /// The writer a round last named (the checkers' record).
    pub named: Option<(i32, Term)>,
    /// Per pod: the voting configuration its agent last reported (`/_ha/leader`, adapter-k8s
    /// `Writers::configurations`): the rollout waits on the writer's.
    pub configurations: BTreeMap<String, ConfigurationReport>,
}

impl OperatorPoller {
    pub fn new(clock: Clock, poll_interval_ms: u64) -> OperatorPoller {
        OperatorPoller {
            clock,
            poller: WriterPoller::new(Millis(poll_interval_ms)),
            wake: false,
            seq: 0,
            named: None,
            configurations: BTreeMap::new(),
        }
    }
}

impl World {
    /// The operator's poll task starts a round (`WriterPoller::start_round`): the polls to start
    /// now, each (tracker generation, replica index, ordinal).
    pub fn operator_round_start(&mut self) -> Vec<(u64, usize, i32)> {
        self.operator
            .poller
            .start_round()
            .into_iter()
            .map(|p| (p.generation, p.replica, p.target))
            .collect()
    }

    /// One operator poll ended: its answer goes to the poller now (`WriterPoller::on_answer`); a
    /// change of the writer the reconcile may have seen wakes it. Returns how soon the next round
    /// should start when that writer's lease needs renewing.
    pub fn operator_poll_answer(
        &mut self,
        generation: u64,
        replica: usize,
        ordinal: i32,
        body: Option<Vec<u8>>,
    ) -> Option<u64> {
        // What the agent reported of its configuration (adapter-k8s `poll_loop`: an answered
        // poll says it, a failed one says nothing); a change wakes the reconcile.
        if let Some(said) = body
            .as_deref()
            .and_then(|b| parse_leader_answer(b).ok())
            .map(|a| a.configuration)
        {
            let pod = pod_name(ordinal);
            let changed = match said {
                Some(c) => self.operator.configurations.insert(pod, c.clone()) != Some(c),
                None => self.operator.configurations.remove(&pod).is_some(),
            };
            self.operator.wake |= changed;
        }
        let result = self.poll_outcome(ordinal, body);
        let now = self.operator_now();
        let answered = self
            .operator
            .poller
            .on_answer(now, generation, replica, result);
        let writer = self
            .operator
            .poller
            .writer(now)
            .and_then(|w| Some((crate::world::ordinal_of(&w.pod)?, Term(w.term))));
        if writer.is_some() {
            self.operator.named = writer;
        }
        if answered.wake {
            self.operator.wake = true;
            let w = writer.map_or("none".to_string(), |(o, t)| {
                format!("{} at term {t}", pod_id(o))
            });
            self.ev(format!("operator: writer is {w}"));
        }
        answered.renew_within.map(|d| d.0)
    }

    /// The pods the operator's poll task polls (`controller::mod` `targets`): those with an IP
    /// (their sandbox started) that are not being deleted.
    fn poll_targets(&self) -> Vec<i32> {
        self.k8s
            .pods
            .iter()
            .filter(|(_, p)| matches!(p.phase, PodPhase::Running { .. } | PodPhase::Crashed { .. }))
            .map(|(o, _)| *o)
            .collect()
    }

    /// What the operator observes, as the adapter would assemble it, but for the objects, which
    /// `reconcile` lends it. Fields the core adds later keep their defaults (hence
    /// `..Default::default()`, needless or not).
    #[allow(clippy::needless_update)]
    fn observe(&self) -> Observed {
        let now = self.now_ns();
        let pods = self
            .k8s
            .pods
            .iter()
            .map(|(o, p)| PodView {
                name: pod_name(*o),
                ready: self.pod_ready(*o, p, now),
                revision: Some(p.revision.clone()),
                terminating: matches!(p.phase, PodPhase::Terminating { .. }),
                writer_label: p.writer_label,
                fenced: p.fenced,
                transfer: p.transfer.as_deref().and_then(TransferRequest::parse),
                members: p.members.clone(),
                ..PodView::default()
            })
            .collect();
        let op_now = self.operator_now();
        // The writer as the poll task's last answer left it (`Writers::track`).
        let writer = self.operator_writer();
        Observed {
            now: op_now,
            pods,
            pvcs: self
                .k8s
                .pvcs
                .keys()
                .map(|o| objects::pvc_name(BASE_NAME, *o))
                .collect(),
            writer,
            configurations: self.operator.configurations.clone(),
            gateway: GatewayView::Found(self.k8s.gateway_cr.clone()),
            config: OperatorConfig {
                agent_image: "ghcr.io/hanzoai/base-operator:sim".into(),
                resync_ms: 300_000,
                ..OperatorConfig::default()
            },
            // Not modelled: the peer-key Secret (the sim's peer messages are not authenticated).
            ..Observed::default()
        }
    }

    /// One pass of the operator: hand the poll task its targets, observe, plan with the real
    /// reconciler, apply the plan's writes (a writer transfer is the writer pod's annotation
    /// `hanzo.ai/transfer-to`, which its agent reads from the annotations file).
    pub fn reconcile(&mut self) {
        self.operator.wake = false;
        let targets: Vec<_> = self
            .poll_targets()
            .into_iter()
            .map(|o| (pod_id(o), o))
            .collect();
        // A pod no longer polled says nothing any more (`Writers::track`).
        self.operator
            .configurations
            .retain(|pod, _| targets.iter().any(|(id, _)| id.as_str() == pod));
        self.operator.poller.set_targets(targets);
        let mut observed = self.observe();
        // Lent to the plan rather than copied (a copy per pass was a tenth of a run); back below.
        observed.objects = std::mem::take(&mut self.k8s.objects);
        // The planted bugs of the reconciler are core's (`base_core::buggify`).
        let plan = plan(&self.k8s.base, &observed);
        self.k8s.objects = std::mem::take(&mut observed.objects);
        self.stats.plans += 1;
        if observed.writer.is_none()
            && let Some(w) = self.current_writer()
        {
            self.stats.operator_no_writer_while_one_accepts += 1;
            if self.forgot_live_writer(w, self.operator.named, crate::world::Host::Operator) {
                self.stats.operator_forgot_live_writer += 1;
                self.ev(format!(
                    "operator observes no writer: it forgot {}, which still accepts writes",
                    pod_id(w)
                ));
            }
        }
        if let Some(invalid) = &plan.invalid {
            self.fail(
                "harness",
                format!("the simulation's Base is invalid: {invalid:?}"),
            );
            return;
        }
        self.check_switchover(&observed, &plan);
        // The plan's writes in its one order (`Plan::writes`), as adapter-k8s `kube_io::perform`
        // makes them; the model stores each, and the checkers look after every one.
        let mut writes = 0;
        for write in plan.writes() {
            writes += 1;
            if !self.store_write(write) {
                break;
            }
        }
        self.stats.api_writes += writes;
        let pending = [
            ("applies", plan.apply().len()),
            ("creates", plan.create.len()),
            ("deletes", plan.delete.len()),
            ("relabels", plan.relabel.len()),
            ("fences", plan.fence.len()),
            ("annotation removals", plan.clear_annotations.len()),
            ("transfers", usize::from(plan.transfer.is_some())),
        ];
        let still: Vec<String> = pending
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        self.last_plan = Some(if still.is_empty() {
            Ok(())
        } else {
            Err(still.join(", "))
        });
    }

    /// Invariant 9, on every plan that decides a switchover: a target the Base fences is refused
    /// (and never asked for), and `Done` means the target really won the writer's seat: the
    /// observation the plan judged by names a term the target won, no older than the request.
    fn check_switchover(&mut self, observed: &Observed, plan: &Plan) {
        let Some(target) = self.switchover_target().cloned() else {
            return;
        };
        let cond = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SWITCHOVER);
        let reason = cond.map_or("none", |c| c.reason.as_str()).to_string();
        let message = cond.map(|c| c.message.clone()).unwrap_or_default();
        let cleared = plan
            .clear_annotations
            .iter()
            .any(|k| k == ANNOTATION_SWITCHOVER_TO);
        const INV: &str = "9 switchover and fencing";
        if self.fence_annotated(&target) {
            let asked = plan
                .transfer
                .as_ref()
                .is_some_and(|t| t.request.to == target);
            if !(cleared && reason == "Refused") || asked {
                self.fail(
                    INV,
                    format!(
                        "a switchover to the fenced {target} is not refused: {reason} ({message}), transfer {:?}",
                        plan.transfer
                    ),
                );
            }
        }
        if !cleared {
            return;
        }
        match reason.as_str() {
            "Done" => {
                self.stats.switchovers_done += 1;
                let won = observed.writer.as_ref().and_then(|w| {
                    let o = ordinal_of(&w.pod)?;
                    Some((
                        w.pod.clone(),
                        Term(w.term),
                        self.checks.writer_of_term.get(&Term(w.term)) == Some(&o),
                    ))
                });
                let since = self
                    .checks
                    .switchover
                    .as_ref()
                    .filter(|r| r.target == target)
                    .map_or(Term(0), |r| r.term_at_request);
                match won {
                    Some((pod, term, true)) if pod == target && term >= since => {
                        self.ev(format!("switchover to {target} done (term {term})"));
                    }
                    _ => self.fail(
                        INV,
                        format!(
                            "the plan reports the switchover to {target} done, but it observed the writer {:?} (won by {:?}; request made at term {since})",
                            observed.writer,
                            observed
                                .writer
                                .as_ref()
                                .and_then(|w| self.checks.writer_of_term.get(&Term(w.term)))
                                .map(|o| pod_name(*o))
                        ),
                    ),
                }
            }
            "Refused" => {
                self.stats.switchovers_refused += 1;
                if self.fence_annotated(&target) {
                    self.stats.switchovers_refused_fenced += 1;
                }
                self.ev(format!("switchover to {target} refused: {message}"));
            }
            other => self.fail(
                INV,
                format!("the plan clears the switchover to {target} with reason {other:?}"),
            ),
        }
    }
}

/// The operator's poll task (adapter-k8s `controller::writers::poll_loop`): a round every
/// interval polls each target whose last poll has ended, each poll bounded by the client's
/// timeout; every answer is fed as it arrives, and one naming a writer brings the next round
/// forward so that the writer is polled again before its lease passes.
pub async fn operator_poll_loop(world: Shared) {
    let interval = Duration::from_millis(lock(&world).cfg.poll_interval_ms);
    let (tx, mut answers) = mpsc::unbounded::<(u64, usize, i32, Option<Vec<u8>>)>();
    let mut next_round = madsim::time::Instant::now();
    loop {
        let now = madsim::time::Instant::now();
        if now >= next_round {
            next_round = now + interval;
            let polls = lock(&world).operator_round_start();
            for &(generation, replica, o) in &polls {
                madsim::task::spawn(operator_poll(
                    world.clone(),
                    (generation, replica),
                    o,
                    tx.clone(),
                ));
            }
            continue;
        }
        match madsim::time::timeout(next_round - now, answers.next()).await {
            Ok(Some((generation, ix, o, body))) => {
                let soon = lock(&world).operator_poll_answer(generation, ix, o, body);
                if let Some(ms) = soon {
                    let at = madsim::time::Instant::now() + Duration::from_millis(ms);
                    next_round = next_round.min(at);
                }
            }
            Ok(None) => return,
            Err(_) => {} // the round is due
        }
    }
}
/// One operator poll of `ordinal` (adapter-k8s `controller::writers::poll_one`): its answer, or
/// nothing when the process is gone, dies meanwhile, or does not answer within the timeout.
async fn operator_poll(
    world: Shared,
    (generation, replica): (u64, usize),
    ordinal: i32,
    tx: mpsc::UnboundedSender<(u64, usize, i32, Option<Vec<u8>>)>,
) {
    let poll = LeaderPoll::start(&world, Who::Operator, ordinal);
    let body = match (poll, Endpoint::bind("0.0.0.0:0").await) {
        (Some(poll), Ok(ep)) => poll.answer(&world, &ep).await,
        _ => None,
    };
    let _ = tx.unbounded_send((generation, replica, ordinal, body));
}
