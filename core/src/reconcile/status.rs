//! Status from what was observed: phase, ready replicas, writer and term, conditions, and the Events
//! a user should see when any of those change. Transition times are carried over from the previous
//! status unless a condition really changed, so an unchanged world yields an identical status.

use super::Observed;
use super::objects::{decimal, unsigned};
use super::{EventType, Plan, PlanEvent, StsView};
use crate::crd::{Base, BaseStatus, Phase, SwitchoverStatus};
use crate::validate::InvalidSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_WRITER: &str = "WriterElected";
pub const CONDITION_GATEWAY: &str = "GatewayRouted";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_SWITCHOVER: &str = "Switchover";
pub const CONDITION_FENCED: &str = "Fenced";
pub const CONDITION_REPLICATION: &str = "ReplicationContract";
/// True while the writer's configuration is not yet settled on the desired members (a
/// membership change in flight: learners catching up, joint, removed members not yet told).
pub const CONDITION_MEMBERSHIP: &str = "MembershipChange";

pub(super) enum RouteOutcome {
    NotConfigured,
    Injected(String),
    GatewayMissing(String),
    Conflict(String),
}

pub(super) enum Outcome {
    Deleting,
    Invalid(InvalidSpec),
    OwnedByAnother(String),
    Planned {
        sts: Option<StsView>,
        route: RouteOutcome,
        progressing: bool,
        /// The desired members (`RolloutStep::members`).
        members: Vec<String>,
        /// Switchover and fencing conditions (see `operations`).
        extra: Vec<Cond>,
        /// The switchover in flight, if any (`BaseStatus::switchover`).
        switchover: Option<SwitchoverStatus>,
    },
}

/// `MembershipChange` from the writer's report: `None` while no writer reports one.
fn membership_condition(observed: &Observed, members: &[String]) -> Option<Cond> {
    let c = super::writer_configuration(observed)?;
    let list = |v: &[String]| v.join(",");
    let mut shown = if c.joint {
        format!(
            "joint: voters {} and {}",
            list(&c.outgoing),
            list(&c.voters)
        )
    } else {
        format!("voters {}", list(&c.voters))
    };
    if !c.learners.is_empty() {
        shown.push_str(&format!(", learners {}", list(&c.learners)));
    }
    shown.push_str(&format!(" (version {})", c.version));
    Some(if c.is_settled_on(members) {
        cond(CONDITION_MEMBERSHIP, false, "Settled", shown)
    } else {
        cond(
            CONDITION_MEMBERSHIP,
            true,
            "InProgress",
            format!("{shown}; moving to {}", list(members)),
        )
    })
}

/// When the condition `type_` entered `InProgress`, from the Base's current status.
/// When the switchover to `target` began: `status.switchover` when it names that target (a
/// different target is a new request: `None`). A status written before that field existed
/// falls back to the `Switchover` condition's transition time.
pub(super) fn switchover_started(base: &Base, target: &str) -> Option<crate::ids::Millis> {
    match base.status.as_ref().and_then(|s| s.switchover.as_ref()) {
        Some(s) => (s.target == target).then(|| millis_of(&s.started_at)),
        None => in_progress_since(base, CONDITION_SWITCHOVER),
    }
}

/// `now` as a status timestamp.
pub(super) fn time_at(now: crate::ids::Millis) -> Time {
    Time(Timestamp::from_millisecond(now.0 as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn millis_of(t: &Time) -> crate::ids::Millis {
    crate::ids::Millis(t.0.as_millisecond().max(0) as u64)
}

fn in_progress_since(base: &Base, type_: &str) -> Option<crate::ids::Millis> {
    let c = base
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    (c.reason == "InProgress").then(|| millis_of(&c.last_transition_time))
}

/// `spec.gateway.leaderPollInterval` → `InvalidGatewayLeaderPollInterval`: a condition reason
/// (CamelCase, no dots) that names the field.
pub fn invalid_reason(field: &str) -> String {
    let mut out = String::from("Invalid");
    let path = field.strip_prefix("spec.").unwrap_or(field);
    for part in path
        .split(['.', '[', ']'])
        .filter(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
    {
        let mut chars = part.chars().filter(char::is_ascii_alphanumeric);
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out
}

pub(super) struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

impl Cond {
    pub(super) fn new(
        type_: &'static str,
        ok: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Cond {
        cond(type_, ok, reason, message)
    }
}

/// `"<ready>/<wanted> replicas ready"`.
fn replicas_ready(ready: i32, wanted: i32) -> String {
    [
        &decimal(ready.into()),
        "/",
        &decimal(wanted.into()),
        " replicas ready",
    ]
    .concat()
}

fn cond(
    type_: &'static str,
    ok: bool,
    reason: impl Into<String>,
    message: impl Into<String>,
) -> Cond {
    Cond {
        type_,
        ok,
        reason: reason.into(),
        message: message.into(),
    }
}

pub(super) fn finish(base: &Base, observed: &Observed, plan: &mut Plan, outcome: Outcome) {
    let no_status;
    let old = match &base.status {
        Some(old) => old,
        None => {
            no_status = BaseStatus::default();
            &no_status
        }
    };
    let spec_replicas = base.spec.replicas;
    let mut st = BaseStatus {
        observed_generation: base.metadata.generation,
        ready_replicas: old.ready_replicas,
        current_writer: observed.writer.as_ref().map(|w| w.pod.clone()),
        // Terms only grow: a stale poll must not make status go back.
        term: observed
            .writer
            .as_ref()
            .map_or(old.term, |w| w.term.max(old.term)),
        // The last report is kept while no writer is known: once a configuration exists, new
        // pods must join rather than bootstrap (`crate::members`).
        configuration: super::writer_configuration(observed)
            .cloned()
            .or_else(|| old.configuration.clone()),
        // Kept unless a plan decided the switchover (`Outcome::Planned`).
        switchover: old.switchover.clone(),
        ..Default::default()
    };
    let writer_cond = match &observed.writer {
        Some(w) => cond(
            CONDITION_WRITER,
            true,
            "Elected",
            [w.pod.as_str(), " is the writer in term ", &unsigned(w.term)].concat(),
        ),
        None => cond(
            CONDITION_WRITER,
            false,
            "NoWriter",
            "no replica holds a writer lease",
        ),
    };
    let mut conds = Vec::new();
    match outcome {
        Outcome::Deleting => {
            st.phase = Phase::Deleting;
            conds.push(cond(
                CONDITION_READY,
                false,
                "Deleting",
                "the Base is being deleted",
            ));
        }
        Outcome::Invalid(invalid) => {
            st.phase = if old.phase == Phase::Pending {
                Phase::Pending
            } else {
                Phase::Degraded
            };
            let reason = invalid
                .0
                .first()
                .map_or_else(|| "InvalidSpec".to_string(), |e| invalid_reason(&e.field));
            conds.push(cond(CONDITION_READY, false, reason, invalid.to_string()));
            conds.push(writer_cond);
        }
        Outcome::OwnedByAnother(other) => {
            st.phase = Phase::Degraded;
            conds.push(cond(
                CONDITION_READY,
                false,
                "OwnedByAnother",
                format!("the StatefulSet of this name is controlled by {other}; not touching it"),
            ));
            conds.push(writer_cond);
        }
        Outcome::Planned {
            sts,
            route,
            progressing,
            members,
            extra,
            switchover,
        } => {
            st.switchover = switchover;
            st.ready_replicas = sts.as_ref().map_or(0, |s| s.ready_replicas);
            let quorum = spec_replicas / 2 + 1;
            let has_writer = observed.writer.is_some();
            st.phase = match &sts {
                None => Phase::Creating,
                Some(_) if st.ready_replicas >= spec_replicas && has_writer => Phase::Running,
                Some(_) if matches!(old.phase, Phase::Pending | Phase::Creating) => Phase::Creating,
                Some(_) => Phase::Degraded,
            };
            let mut ready = if st.phase == Phase::Running {
                cond(
                    CONDITION_READY,
                    true,
                    "Running",
                    [
                        &replicas_ready(st.ready_replicas, spec_replicas),
                        ", writer elected",
                    ]
                    .concat(),
                )
            } else if st.ready_replicas >= quorum && has_writer {
                cond(
                    CONDITION_READY,
                    false,
                    "Degraded",
                    [
                        &replicas_ready(st.ready_replicas, spec_replicas),
                        "; quorum holds",
                    ]
                    .concat(),
                )
            } else {
                cond(
                    CONDITION_READY,
                    false,
                    "WaitingForReplicas",
                    replicas_ready(st.ready_replicas, spec_replicas),
                )
            };
            match route {
                RouteOutcome::NotConfigured => {}
                RouteOutcome::Injected(gw) => conds.push(cond(
                    CONDITION_GATEWAY,
                    true,
                    "Injected",
                    ["route injected into Gateway ", gw.as_str()].concat(),
                )),
                RouteOutcome::GatewayMissing(gw) => conds.push(cond(
                    CONDITION_GATEWAY,
                    false,
                    "GatewayNotFound",
                    format!("Gateway {gw} not found"),
                )),
                RouteOutcome::Conflict(msg) => {
                    conds.push(cond(CONDITION_GATEWAY, false, "RouteConflict", msg.clone()));
                    ready = cond(CONDITION_READY, false, "RouteConflict", msg);
                }
            }
            conds.insert(0, ready);
            conds.insert(1, writer_cond);
            conds.push(if progressing {
                cond(
                    CONDITION_PROGRESSING,
                    true,
                    "Rolling",
                    "replicas are being created, updated or scaled",
                )
            } else {
                cond(
                    CONDITION_PROGRESSING,
                    false,
                    "Stable",
                    "all replicas run the current spec",
                )
            });
            if let Some(c) = replication_condition(observed) {
                conds.push(c);
            }
            if let Some(c) = membership_condition(observed, &members) {
                conds.push(c);
            }
            // A finished switchover stays in status as history until the next request.
            let has_switchover = extra.iter().any(|c| c.type_ == CONDITION_SWITCHOVER);
            conds.extend(extra);
            if !has_switchover
                && let Some(prev) = old
                    .conditions
                    .iter()
                    .find(|c| c.type_ == CONDITION_SWITCHOVER && c.reason != "InProgress")
            {
                conds.push(cond(
                    CONDITION_SWITCHOVER,
                    prev.status == "True",
                    prev.reason.clone(),
                    prev.message.clone(),
                ));
            }
        }
    }
    let now = time_at(observed.now);
    st.conditions = conds
        .into_iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let prev = old.conditions.iter().find(|o| o.type_ == c.type_);
            let unchanged = prev.is_some_and(|p| p.status == status && p.reason == c.reason);
            Condition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: c.reason,
                message: c.message,
                last_transition_time: match prev {
                    Some(p) if unchanged => p.last_transition_time.clone(),
                    _ => now.clone(),
                },
                observed_generation: base.metadata.generation,
            }
        })
        .collect();
    plan.events = events(old, &st);
    plan.status_changed = st != *old;
    plan.status = st;
}

/// `ReplicationContract`: `False` while any pod's Base does not implement the replica contract
/// (the agent then acknowledges writes as soon as that Base answers, so a failover can lose
/// them), `True` once the pods heard from all do; not set before any pod was heard from.
fn replication_condition(observed: &Observed) -> Option<Cond> {
    let absent: Vec<&str> = observed
        .replication_contract
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(pod, _)| pod.as_str())
        .collect();
    if !absent.is_empty() {
        return Some(cond(
            CONDITION_REPLICATION,
            false,
            "ContractAbsent",
            format!(
                "the Base image does not implement the replica contract in {} (GET /_replica/state answered 404): writes are acknowledged without a quorum and a failover can lose them",
                absent.join(", ")
            ),
        ));
    }
    (!observed.replication_contract.is_empty()).then(|| {
        cond(
            CONDITION_REPLICATION,
            true,
            "Implemented",
            "every Base implements the replica contract: writes are acknowledged once a majority holds them",
        )
    })
}

fn reason_of<'a>(s: &'a BaseStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

fn events(old: &BaseStatus, new: &BaseStatus) -> Vec<PlanEvent> {
    let mut out = Vec::new();
    if new.current_writer != old.current_writer
        && let Some(w) = &new.current_writer
    {
        out.push(PlanEvent {
            type_: EventType::Normal,
            reason: "WriterChanged".into(),
            message: format!("{w} is the writer in term {}", new.term),
        });
    }
    let (old_ready, new_ready) = (
        reason_of(old, CONDITION_READY),
        reason_of(new, CONDITION_READY),
    );
    if let Some((reason, message)) = new_ready
        && old_ready.map(|r| r.0) != Some(reason)
        && (reason.starts_with("Invalid")
            || reason == "RouteConflict"
            || reason == "OwnedByAnother")
    {
        out.push(PlanEvent {
            type_: EventType::Warning,
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }
    for type_ in [
        CONDITION_SWITCHOVER,
        CONDITION_FENCED,
        CONDITION_REPLICATION,
    ] {
        if let Some((reason, message)) = reason_of(new, type_)
            && reason_of(old, type_).map(|r| r.0) != Some(reason)
        {
            let warning =
                reason == "Refused" || reason.starts_with("Invalid") || reason == "ContractAbsent";
            out.push(PlanEvent {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: format!("{type_}{reason}"),
                message: message.to_string(),
            });
        }
    }
    if new.phase != old.phase {
        let p = new.phase;
        out.push(PlanEvent {
            type_: if p == Phase::Degraded {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: format!("{p:?}"),
            message: format!("phase is now {p:?}"),
        });
    }
    out
}
