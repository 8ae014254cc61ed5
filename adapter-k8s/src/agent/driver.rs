//! The driver: one task owns the order of inputs to the core agent machine
//! (`base_core::agent::Agent`: ticks, peer messages, position updates, the pod's annotations,
//! SIGTERM) and performs its effects in the order given: a `Persist` is on disk before any later
//! `Send` is queued. Every decision is the machine's; this loop only feeds it, performs, logs and
//! counts.

use super::Shared;
use super::metrics::TRANSFER_STARTED;
use super::state::{StateError, StateStore};
use super::transport::Transport;
use base_core::Millis;
use base_core::NodeId;
use base_core::agent::{Annotations, Effect, HandOverCause, Input};
use base_core::control::TransferDecision;
use base_core::quasar::{Envelope, Message};
use base_core::replication::CoordinatorInput;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

/// Inputs queued for the driver; bounded by `CONTROL_QUEUE_MAX`.
pub enum Control {
    Peer {
        from: NodeId,
        msg: Message,
    },
    /// The store's replication position and its epoch (`quasar::Input::Position`).
    Position {
        epoch: u64,
        position: u64,
    },
    /// The pod's annotations file changed (`--fence-file`): its whole content.
    Annotations(Annotations),
    /// Transfer the writer role if we hold it, wait (bounded) for a successor, then stop.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

pub const CONTROL_QUEUE_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("persisting the election state: {0}")]
    Persist(#[from] StateError),
    #[error("the persisting task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub struct Driver {
    pub shared: Arc<Shared>,
    pub store: StateStore,
    pub transport: Transport,
    pub rx: mpsc::Receiver<Control>,
    pub tick: Duration,
}

impl Driver {
    pub async fn run(mut self) -> Result<(), DriverError> {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown_done: Option<oneshot::Sender<()>> = None;
        loop {
            let input = tokio::select! {
                _ = interval.tick() => Input::Tick,
                control = self.rx.recv() => match control {
                    None => return Ok(()),
                    Some(Control::Peer { from, msg }) => Input::Message { from, msg },
                    Some(Control::Position { epoch, position }) => {
                        Input::Position { epoch, position }
                    }
                    Some(Control::Annotations(annotations)) => Input::Annotations(annotations),
                    Some(Control::Shutdown { done }) => {
                        shutdown_done = Some(done);
                        Input::Shutdown
                    }
                },
            };
            if self.step(input).await? {
                if let Some(done) = shutdown_done.take() {
                    let _ = done.send(());
                }
                return Ok(());
            }
        }
    }

    /// Steps the machine and performs its effects; `true` once it says the process may exit.
    async fn step(&mut self, input: Input) -> Result<bool, DriverError> {
        let now = self.shared.clock.now();
        let effects = self.shared.lock_agent().step(now, input);
        let mut exit = false;
        for effect in effects {
            exit |= self.perform(now, effect).await?;
        }
        // The coordinator follows the election: the role the store should hold, the peers'
        // positions from the acks, held writes past their deadline.
        let view = {
            let agent = self.shared.lock_agent();
            super::replication::election_view(&self.shared, agent.node(), now)
        };
        let shared = &self.shared;
        super::replication::step(shared, now, CoordinatorInput::Election(view));
        super::replication::step(shared, now, CoordinatorInput::Tick);
        Ok(exit)
    }

    /// Performs one effect; `true` for `Exit`.
    async fn perform(&mut self, now: Millis, effect: Effect) -> Result<bool, DriverError> {
        let metrics = &self.shared.metrics;
        match effect {
            Effect::Persist(state) => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.save(&state)).await??;
            }
            Effect::Send { to, msg } => self.transport.send(Envelope {
                from: self.shared.id.clone(),
                to,
                msg,
            }),
            Effect::BecomeWriter { term, lease_until } => {
                tracing::info!(%term, lease_ms = lease_until.0.saturating_sub(now.0), "became the writer");
            }
            Effect::LeaseRenewed { lease_until } => {
                tracing::trace!(
                    lease_ms = lease_until.0.saturating_sub(now.0),
                    "lease renewed"
                );
            }
            Effect::StepDown { term } => {
                tracing::info!(%term, "no longer the writer");
            }
            Effect::FenceChanged { fenced, role } => {
                tracing::info!(fenced, ?role, "fence applied to the election");
            }
            Effect::TransferRequest(considered) => {
                let (to, term, at, by) = match &considered.request {
                    Some(r) => (r.to.as_str(), r.term, r.at, r.by.as_str()),
                    None => ("", 0, 0, ""),
                };
                match considered.decision {
                    TransferDecision::Start(target) => {
                        metrics.transfer_request(TRANSFER_STARTED);
                        tracing::info!(to = %target, requested_term = term, requested_at = at, by,
                            "handing the writer role over, as the pod annotation hanzo.ai/transfer-to asks");
                    }
                    TransferDecision::Refused(why) => {
                        metrics.transfer_request(why.as_str());
                        tracing::info!(
                            reason = why.as_str(),
                            to,
                            requested_term = term,
                            requested_at = at,
                            by,
                            "transfer request not acted on"
                        );
                    }
                }
            }
            Effect::HandOver { to, cause } => {
                metrics.transfers.inc();
                let cause = match cause {
                    HandOverCause::Request => "transfer request",
                    HandOverCause::Fenced => "fenced",
                    HandOverCause::Shutdown => "shutdown",
                };
                tracing::info!(to = ?to.map(|t| t.to_string()), cause, "handing the writer role over");
            }
            Effect::NoHandOverTarget => tracing::warn!("no peer to hand the writer role to"),
            Effect::Members { bootstrap, voters } => {
                let voters: Option<Vec<&str>> = voters
                    .as_ref()
                    .map(|v| v.iter().map(|n| n.as_str()).collect());
                tracing::info!(
                    bootstrap,
                    ?voters,
                    "desired members from the pod annotation hanzo.ai/members"
                );
            }
            Effect::MembersUnreadable(why) => {
                tracing::warn!(error = %why, "desired members not acted on");
            }
            Effect::Exit { handed_over } => {
                tracing::info!(handed_over, "shutting down");
                return Ok(true);
            }
        }
        Ok(false)
    }
}
