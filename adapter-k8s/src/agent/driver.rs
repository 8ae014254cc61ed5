//! The driver: one task owns the order of inputs to the core `Node` (ticks, peer messages,
//! position updates, transfer requests from the pod annotation, the fence) and performs the effects in the order given: a
//! `Persist` is on disk before any later `Send` is queued.

use super::Shared;
use super::metrics::TRANSFER_STARTED;
use super::state::{StateError, StateStore};
use super::transport::Transport;
use base_core::control::{TransferDecision, TransferInbox};
use base_core::quasar::{Effect, Envelope, Input, Message, PersistedState, Role};
use base_core::replication::CoordinatorInput;
use base_core::{Millis, NodeId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

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
    /// The pod annotation `hanzo.ai/transfer-to` changed (`--fence-file`): a transfer request
    /// (`base_core::control`), considered once.
    TransferAnnotation(Option<String>),
    /// The fence changed (`--fence-file`).
    Fence(bool),
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
    pub shutdown_timeout: Duration,
    /// The transfer requests already considered.
    pub inbox: TransferInbox,
}

struct ShuttingDown {
    deadline: Instant,
    done: oneshot::Sender<()>,
    was_writer: bool,
}

impl Driver {
    pub async fn run(mut self) -> Result<(), DriverError> {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutting: Option<ShuttingDown> = None;
        loop {
            let input = tokio::select! {
                _ = interval.tick() => Some(Input::Tick),
                control = self.rx.recv() => match control {
                    None => return Ok(()),
                    Some(Control::Peer { from, msg }) => Some(Input::Message { from, msg }),
                    Some(Control::Position { epoch, position }) => {
                        Some(Input::Position { epoch, position })
                    }
                    Some(Control::TransferAnnotation(value)) => self.transfer_request(value.as_deref()),
                    Some(Control::Fence(fenced)) => {
                        self.shared.fenced.store(fenced, Ordering::Relaxed);
                        Some(Input::SetFenced(fenced))
                    }
                    Some(Control::Shutdown { done }) => {
                        let was_writer = self.shared.lock_node().role() == Role::Writer;
                        tracing::info!(was_writer, "shutting down");
                        shutting = Some(ShuttingDown {
                            deadline: Instant::now() + self.shutdown_timeout,
                            done,
                            was_writer,
                        });
                        self.transfer_target(None).map(|to| Input::TransferWriter { to })
                    }
                },
            };
            if let Some(input) = input {
                if let Input::TransferWriter { to } = &input {
                    tracing::info!(%to, "handing the writer role over");
                }
                self.step_counting_transfers(input).await?;
            }
            if let Some(s) = shutting.take() {
                if self.handed_over(&s) || Instant::now() >= s.deadline {
                    let _ = s.done.send(());
                    return Ok(());
                }
                shutting = Some(s);
            }
        }
    }

    /// Shutdown may proceed: we were not the writer, or another node now is (we heard it).
    fn handed_over(&self, s: &ShuttingDown) -> bool {
        if !s.was_writer {
            return true;
        }
        let node = self.shared.lock_node();
        node.role() != Role::Writer && node.leader().is_some_and(|l| l != node.id())
    }

    /// A transfer request from the pod annotation: decided by the core (`control::decide`), acted
    /// on at most once, logged with who asked.
    fn transfer_request(&mut self, value: Option<&str>) -> Option<Input> {
        let considered = {
            let node = self.shared.lock_node();
            self.inbox.offer(value, &node)
        }?;
        let (to, term, at, by) = match &considered.request {
            Some(r) => (r.to.as_str(), r.term, r.at, r.by.as_str()),
            None => ("", 0, 0, ""),
        };
        match considered.decision {
            TransferDecision::Start(target) => {
                self.shared.metrics.transfer_request(TRANSFER_STARTED);
                tracing::info!(to = %target, requested_term = term, requested_at = at, by,
                    "handing the writer role over, as the pod annotation hanzo.ai/transfer-to asks");
                Some(Input::TransferWriter { to: target })
            }
            TransferDecision::Refused(why) => {
                self.shared.metrics.transfer_request(why.as_str());
                tracing::info!(
                    reason = why.as_str(),
                    to,
                    requested_term = term,
                    requested_at = at,
                    by,
                    "transfer request not acted on"
                );
                None
            }
        }
    }

    /// Steps, and counts a hand-over this input started (a transfer, or a fence on a writer).
    async fn step_counting_transfers(&mut self, input: Input) -> Result<(), DriverError> {
        let was_transferring = {
            let node = self.shared.lock_node();
            node.role() == Role::Writer && node.transferring_to().is_some()
        };
        let could_hand_over =
            matches!(input, Input::TransferWriter { .. } | Input::SetFenced(true))
                && self.shared.lock_node().role() == Role::Writer;
        let term = self.shared.lock_node().term();
        self.step(input).await?;
        if could_hand_over && !was_transferring {
            let node = self.shared.lock_node();
            let started = node.transferring_to().is_some()
                || (node.role() != Role::Writer && node.term() == term);
            if started {
                self.shared.metrics.transfers.inc();
            }
        }
        Ok(())
    }

    fn transfer_target(&self, to: Option<NodeId>) -> Option<NodeId> {
        let node = self.shared.lock_node();
        if node.role() != Role::Writer {
            return None;
        }
        // Under a steady stream of writes no peer is ever exactly up to date: the most advanced
        // one will do, as the transfer stops new writes and waits for it to catch up.
        let target = to.or_else(|| node.hand_over_target());
        if target.is_none() {
            tracing::warn!("no peer to hand the writer role to");
        }
        target
    }

    async fn step(&mut self, input: Input) -> Result<(), DriverError> {
        let now = self.shared.clock.now();
        let effects = {
            let mut node = self.shared.lock_node();
            let effects = node.step(now, input);
            if node.writer_view(now).writer.is_some() {
                self.shared.seen_writer.store(true, Ordering::Relaxed);
            }
            effects
        };
        for effect in effects {
            self.perform(now, effect).await?;
        }
        // The coordinator follows the election: the role the store should hold, the peers'
        // positions from the acks, held writes past their deadline.
        let view = {
            let node = self.shared.lock_node();
            super::replication::election_view(&self.shared, &node, now)
        };
        let shared = &self.shared;
        super::replication::step(shared, now, CoordinatorInput::Election(view));
        super::replication::step(shared, now, CoordinatorInput::Tick);
        Ok(())
    }

    async fn perform(&mut self, now: Millis, effect: Effect) -> Result<(), DriverError> {
        match effect {
            Effect::Persist {
                term, voted_for, ..
            } => {
                let store = self.store.clone();
                // The configuration is not persisted yet: until the operator publishes the
                // desired members to the pods (issue 18), the election's voters follow
                // BASE_PEERS at every start, as before, and a scale change still restarts pods.
                let state = PersistedState {
                    term,
                    voted_for,
                    membership: None,
                };
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
        }
        Ok(())
    }
}
