//! `kubectl base switchover NAME --to POD`: sets `hanzo.ai/switchover-to: POD` on the Base, then
//! follows the operator's `Switchover` condition (and the writer in status) until `Done` or
//! `Refused`, for at most `--wait`.

use super::format::{one_line, short};
use super::status::{Cond, conditions};
use super::target::{BaseRef, pods_of};
use super::{
    ANNOTATION_FENCED_INSTANCES, ANNOTATION_SWITCHOVER_TO, CONDITION_SWITCHOVER, PluginError,
};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often status is read while waiting.
pub const POLL: Duration = Duration::from_millis(500);

fn wait_arg(s: &str) -> Result<Duration, String> {
    match base_core::validate::parse_duration_ms(s)? {
        ms if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("{s:?} must not be negative")),
    }
}

#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    /// The Base.
    pub name: String,
    /// The pod that should become the writer, e.g. my-app-1.
    #[arg(long)]
    pub to: String,
    /// How long to follow the switchover (Go duration: 30s, 2m); 0 only sets the request.
    #[arg(long, default_value = "60s", value_parser = wait_arg)]
    pub wait: Duration,
}

/// How the wait ends, judged from one read of the Base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still going; the text is worth printing when it changes.
    Waiting(String),
    Done(String),
    Refused(String),
}

fn switchover_cond(status: &Value) -> Option<Cond> {
    conditions(status)
        .into_iter()
        .find(|c| c.type_ == CONDITION_SWITCHOVER)
}

/// Polls the request must have been gone for before an unchanged `Switchover` condition is taken
/// as its outcome (the operator removes the annotation just before it writes status).
pub const GONE_POLLS: u32 = 3;

/// Judges progress. `before` is the `Switchover` condition as it was before this request, so an
/// outcome left over from an earlier switchover is not taken for this one's, unless the request
/// has been gone for `GONE_POLLS` reads (`gone` counts them): an outcome equal to the previous
/// one (refused again for the same reason) keeps its transition time and looks unchanged.
pub fn judge(
    to: &str,
    before: Option<&Cond>,
    status: &Value,
    annotation: Option<&str>,
    gone: u32,
) -> Progress {
    let writer = status.get("currentWriter").and_then(Value::as_str);
    let term = status
        .get("term")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), |t| t.to_string());
    let cond = switchover_cond(status);
    if let Some(c) = cond.as_ref().filter(|c| Some(*c) != before) {
        let message = one_line(&c.message, 300);
        match c.reason.as_str() {
            "Done" => return Progress::Done(message),
            "Refused" => return Progress::Refused(message),
            _ => {}
        }
    }
    if writer == Some(to) && annotation.is_none() {
        return Progress::Done(format!("{to} is the writer in term {term}"));
    }
    if annotation.is_none() && gone >= GONE_POLLS {
        return Progress::Refused(match cond.as_ref() {
            Some(c) if c.reason == "Refused" => one_line(&c.message, 300),
            _ => format!(
                "the request was removed before {to} became the writer (writer {})",
                writer.map_or_else(|| "none".to_string(), |w| one_line(w, 80))
            ),
        });
    }
    let seen = match &cond {
        Some(c) if Some(c) != before => format!(
            "{} {}: {}",
            CONDITION_SWITCHOVER,
            one_line(&c.reason, 60),
            one_line(&c.message, 300)
        ),
        _ if annotation.is_some() => "requested; waiting for the operator".to_string(),
        _ => "request removed; waiting for the operator's status".to_string(),
    };
    Progress::Waiting(format!(
        "{seen} (writer {}, term {term})",
        writer.map_or_else(|| "none".to_string(), |w| one_line(w, 80))
    ))
}

pub async fn run(
    client: &Client,
    namespace: &str,
    args: &SwitchoverArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let to = args.to.trim().to_string();
    let mut base = BaseRef::get(client, namespace, &args.name).await?;
    let pods = pods_of(client, &base).await?;
    if !pods.iter().any(|p| p.name_any() == to) {
        return Err(base.not_a_pod(&to, &pods));
    }
    let writer = base
        .status()
        .get("currentWriter")
        .and_then(Value::as_str)
        .map(str::to_string);
    if writer.as_deref() == Some(to.as_str()) && base.annotation(ANNOTATION_SWITCHOVER_TO).is_none()
    {
        writeln!(
            out,
            "{to} is already the writer of {} {}/{}; nothing to do",
            base.kind, base.namespace, base.name
        )?;
        return Ok(());
    }
    let fenced = super::fence::parse_list(base.annotation(ANNOTATION_FENCED_INSTANCES))
        .is_ok_and(|l| l.iter().any(|p| *p == to || p == "*"));
    if fenced {
        return Err(PluginError::TargetFenced {
            pod: to,
            base: base.name.clone(),
            namespace: base.namespace.clone(),
        });
    }
    let before = switchover_cond(base.status());
    base.edit_annotation(ANNOTATION_SWITCHOVER_TO, |b| {
        match b.annotation(ANNOTATION_SWITCHOVER_TO).map(str::trim) {
            Some(pending) if pending == to => Ok(None),
            Some(pending) => Err(PluginError::SwitchoverPending {
                base: b.name.clone(),
                namespace: b.namespace.clone(),
                pending: one_line(pending, 80),
            }),
            None => Ok(Some(Some(to.clone()))),
        }
    })
    .await?;
    writeln!(
        out,
        "{} {}/{}: switchover to {to} requested ({ANNOTATION_SWITCHOVER_TO}={to}); writer was {}",
        base.kind,
        base.namespace,
        base.name,
        writer.as_deref().unwrap_or("none")
    )?;
    out.flush()?;
    if args.wait.is_zero() {
        writeln!(
            out,
            "not waiting; follow it with: kubectl base status {} -n {}",
            base.name, base.namespace
        )?;
        return Ok(());
    }
    let start = Instant::now();
    let mut last = String::new();
    let mut gone = 0;
    loop {
        let annotation = base.annotation(ANNOTATION_SWITCHOVER_TO);
        gone = if annotation.is_some() { 0 } else { gone + 1 };
        let progress = judge(&to, before.as_ref(), base.status(), annotation, gone);
        let elapsed = short(start.elapsed().as_millis() as u64);
        match progress {
            Progress::Done(message) => {
                writeln!(out, "[{elapsed}] done: {message}")?;
                return Ok(());
            }
            Progress::Refused(message) => {
                writeln!(out, "[{elapsed}] refused: {message}")?;
                return Err(PluginError::SwitchoverRefused { to, message });
            }
            Progress::Waiting(text) => {
                if text != last {
                    writeln!(out, "[{elapsed}] {text}")?;
                    out.flush()?;
                    last = text;
                }
            }
        }
        if start.elapsed() >= args.wait {
            return Err(PluginError::SwitchoverTimeout {
                to,
                base: base.name.clone(),
                namespace: base.namespace.clone(),
                waited: short(args.wait.as_millis() as u64),
                last,
            });
        }
        tokio::time::sleep(POLL.min(args.wait.saturating_sub(start.elapsed()))).await;
        base.refresh().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(reason: &str, message: &str, t: &str) -> Value {
        json!({"type": "Switchover", "status": "False", "reason": reason, "message": message,
               "lastTransitionTime": t})
    }

    #[test]
    fn judging() {
        let old = json!({"currentWriter": "a-0", "term": 3,
            "conditions": [cond("Done", "a-0 is the writer", "2024-01-01T00:00:00Z")]});
        let before = switchover_cond(&old);
        // The old outcome is not this request's.
        assert!(matches!(
            judge("a-1", before.as_ref(), &old, Some("a-1"), 0),
            Progress::Waiting(_)
        ));
        let going = json!({"currentWriter": "a-0", "term": 3,
            "conditions": [cond("InProgress", "asked a-0", "2024-01-01T00:01:00Z")]});
        match judge("a-1", before.as_ref(), &going, Some("a-1"), 0) {
            Progress::Waiting(t) => assert!(t.contains("InProgress: asked a-0"), "{t}"),
            p => panic!("{p:?}"),
        }
        let done = json!({"currentWriter": "a-1", "term": 4,
            "conditions": [cond("Done", "a-1 is the writer", "2024-01-01T00:01:05Z")]});
        assert_eq!(
            judge("a-1", before.as_ref(), &done, None, 1),
            Progress::Done("a-1 is the writer".into())
        );
        let refused =
            json!({"conditions": [cond("Refused", "a-1 is not ready", "2024-01-01T00:01:05Z")]});
        assert_eq!(
            judge("a-1", before.as_ref(), &refused, None, 1),
            Progress::Refused("a-1 is not ready".into())
        );
        // No condition at all (an operator that does not report it): the writer decides.
        let plain = json!({"currentWriter": "a-1", "term": 4});
        assert!(matches!(
            judge("a-1", None, &plain, None, 1),
            Progress::Done(_)
        ));
        assert!(matches!(
            judge("a-1", None, &plain, Some("a-1"), 0),
            Progress::Waiting(_)
        ));
        assert!(matches!(
            judge("a-1", None, &json!("junk"), None, 1),
            Progress::Waiting(_)
        ));
    }

    #[test]
    fn an_outcome_like_the_previous_one() {
        let refused = json!({"currentWriter": "a-0",
            "conditions": [cond("Refused", "a-2 is not ready", "2024-01-01T00:00:00Z")]});
        let before = switchover_cond(&refused);
        // Refused again for the same reason: the condition does not change at all.
        for gone in 0..GONE_POLLS {
            assert!(matches!(
                judge("a-2", before.as_ref(), &refused, None, gone),
                Progress::Waiting(_)
            ));
        }
        assert_eq!(
            judge("a-2", before.as_ref(), &refused, None, GONE_POLLS),
            Progress::Refused("a-2 is not ready".into())
        );
        // Removed by someone else, with an old Done in status.
        let done = json!({"currentWriter": "a-0",
            "conditions": [cond("Done", "a-0 is the writer", "2024-01-01T00:00:00Z")]});
        let before = switchover_cond(&done);
        match judge("a-1", before.as_ref(), &done, None, GONE_POLLS) {
            Progress::Refused(m) => assert!(m.contains("removed before a-1"), "{m}"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn wait_durations() {
        assert_eq!(wait_arg("0"), Ok(Duration::ZERO));
        assert_eq!(wait_arg("1m30s"), Ok(Duration::from_secs(90)));
        assert!(wait_arg("-1s").is_err());
        assert!(wait_arg("soon").is_err());
    }
}
