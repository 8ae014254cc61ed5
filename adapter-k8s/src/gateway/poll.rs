//! Polls every replica's `GET /_ha/leader` and feeds the answers to the tracker.

use super::Shared;
use super::metrics::PollKind;
use base_core::Millis;
use base_core::tracker::{self, PollEffect, PollResult, ReplicaIx};
use base_core::wire::MAX_LEADER_ANSWER_BYTES;
use std::sync::Arc;
use std::time::Duration;

/// Why a poll failed (logged; the tracker only sees `Failed`).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("answer longer than {MAX_LEADER_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("garbled answer: {0}")]
    Garbled(#[from] base_core::wire::WireError),
}

/// One poll: GET, bounded body, lenient parse. Never panics on what the replica sends.
pub async fn poll_once(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<tracker::LeaderClaim, PollError> {
    let mut response = client.get(url).timeout(timeout).send().await?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(PollError::Status(response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_LEADER_ANSWER_BYTES {
            return Err(PollError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(tracker::parse_leader_claim(&body)?)
}

/// Polls one replica and hands the result to the tracker; logs only when something changes, so a
/// replica that stays down does not flood the log.
pub(super) async fn poll_and_record(shared: &Shared, replica: ReplicaIx, last: &mut PollKind) {
    let target = &shared.replicas[replica];
    let result = poll_once(&shared.poll_client, &target.leader_url, shared.poll_timeout).await;
    target
        .polls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (poll_result, error) = match result {
        Ok(claim) => (PollResult::Answered(claim), None),
        Err(e) => (PollResult::Failed, Some(e)),
    };
    let (effect, writer, term, pins) = {
        let mut t = shared.lock_tracker();
        let now = super::now_ms();
        let effect = t.on_poll(now, replica, poll_result);
        let writer = t
            .writer(now)
            .and_then(|(ix, term, _)| t.replica_id(ix).map(|id| (id.clone(), term)));
        (effect, writer, t.highest_term(), t.pin_count())
    };
    // Requests held for a writer ask again.
    shared.polled.send_modify(|n| *n = n.wrapping_add(1));
    shared.metrics.set_state(term.0, writer.is_some(), pins);
    let kind = match (&effect, &error) {
        (_, Some(_)) | (PollEffect::Failed, _) => PollKind::Failed,
        (PollEffect::Stale { .. }, _) => PollKind::Stale,
        _ => PollKind::Ok,
    };
    shared.metrics.polled(kind);
    match effect {
        PollEffect::WriterChanged { term, .. } => match &writer {
            Some((id, _)) => tracing::info!(%term, writer = %id, "writer changed"),
            None => tracing::warn!(%term, "no writer known"),
        },
        PollEffect::Stale { reported, highest } if *last != PollKind::Stale => {
            tracing::warn!(replica = %target.id, %reported, %highest, "replica is stale");
        }
        _ => {}
    }
    if let Some(e) = error {
        if *last != PollKind::Failed {
            tracing::warn!(replica = %target.id, error = %e, "poll failed");
        } else {
            tracing::debug!(replica = %target.id, error = %e, "poll failed");
        }
    } else if *last == PollKind::Failed {
        tracing::info!(replica = %target.id, "poll succeeded again");
    }
    *last = kind;
}

/// Polls one replica every `poll_interval` until the task is aborted.
pub(super) async fn poll_loop(shared: Arc<Shared>, replica: ReplicaIx) {
    let mut last = PollKind::Ok;
    let mut repoll = shared.repoll.subscribe();
    loop {
        poll_and_record(&shared, replica, &mut last).await;
        // Counted from the poll's end: a slow poll delays the next one rather than bunching them up.
        let last_end = super::now_ms();
        // The core tracker's rule (`Tracker::poll_wait`): the writer is polled again before its
        // lease passes, every replica every 100 ms while no writer is known, at once when the
        // writer was lost after this poll ended, and the sleep ends early when the writer's lease
        // does (the rule changes then) or the writer is lost (`Shared::repoll`).
        loop {
            // Marked seen before asking: a loss after this wakes the sleep below.
            repoll.borrow_and_update();
            let Some(wait) = poll_wait(&shared, super::now_ms(), replica, last_end) else {
                break;
            };
            let sleep = tokio::time::sleep(Duration::from_millis(wait.0));
            tokio::select! {
                () = sleep => {}
                changed = repoll.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as `shared`: not reached, but never spin.
                        tokio::time::sleep(Duration::from_millis(wait.0)).await;
                    }
                }
            }
        }
    }
}

fn poll_wait(shared: &Shared, now: Millis, replica: ReplicaIx, last_end: Millis) -> Option<Millis> {
    let interval = super::duration_ms(shared.poll_interval);
    shared
        .lock_tracker()
        .poll_wait(now, replica, last_end, interval)
}
