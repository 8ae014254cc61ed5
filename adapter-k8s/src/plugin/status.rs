//! `kubectl base status NAME`: what the operator reports in status, each pod's role and readiness,
//! and each agent's own view of the writer (read through the API server's pod proxy, best effort).

use super::fence::parse_list;
use super::format::{age, one_line, short, table};
use super::target::{BaseRef, pods_of};
use super::{
    AGENT_TIMEOUT, ANNOTATION_FENCED_INSTANCES, ANNOTATION_POD_FENCED, ANNOTATION_SWITCHOVER_TO,
    CONDITION_WRITER, LABEL_ROLE, PluginError, ROLE_WRITER,
};
use base_core::wire::{ConfigurationReport, LeaderAnswer, parse_leader_answer, parse_rfc3339};
use k8s_openapi::api::core::v1::Pod;
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The Base.
    pub name: String,
}

/// One replica as shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replica {
    pub name: String,
    /// `writer`, `follower`, `fenced`, `fencing` (asked, not yet applied), `unfencing`, or
    /// `writer,fenced` and the like when both hold.
    pub role: String,
    /// `true`, `false`, or `terminating`.
    pub ready: String,
    /// The agent's `/_ha/leader` answer, when it could be read.
    pub agent: Option<LeaderAnswer>,
}

/// A status condition, read leniently.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cond {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition: Option<String>,
}

/// Everything `status` prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub phase: Option<String>,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub desired: Option<i64>,
    pub ready_replicas: Option<i64>,
    pub writer: Option<String>,
    pub term: Option<u64>,
    pub switchover_to: Option<String>,
    pub fenced: Option<String>,
    pub replicas: Vec<Replica>,
    pub conditions: Vec<Cond>,
    /// `status.configuration`: the voting configuration the writer last reported.
    pub configuration: Option<ConfigurationReport>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The conditions in a status, skipping entries that are not objects.
pub fn conditions(status: &Value) -> Vec<Cond> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter(|c| c.is_object())
                .map(|c| Cond {
                    type_: text(c, "type").unwrap_or_default(),
                    status: text(c, "status").unwrap_or_default(),
                    reason: text(c, "reason").unwrap_or_default(),
                    message: text(c, "message").unwrap_or_default(),
                    last_transition: text(c, "lastTransitionTime"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pod_ready(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "terminating".into();
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready.to_string()
}

/// A pod's role from the writer in status (else the writer label) and the fencing on both sides.
pub fn role(pod: &Pod, writer: Option<&str>, fenced_list: &[String]) -> String {
    let name = pod.name_any();
    let is_writer = match writer {
        Some(w) => w == name,
        None => pod.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_WRITER),
    };
    let marked = pod
        .annotations()
        .get(ANNOTATION_POD_FENCED)
        .map(String::as_str)
        == Some("true");
    let asked = fenced_list.iter().any(|p| p == "*" || *p == name);
    let fence = match (marked, asked) {
        (true, true) => Some("fenced"),
        (false, true) => Some("fencing"),
        (true, false) => Some("unfencing"),
        (false, false) => None,
    };
    match (is_writer, fence) {
        (true, Some(f)) => format!("writer,{f}"),
        (true, None) => "writer".into(),
        (false, Some(f)) => f.into(),
        (false, None) => "follower".into(),
    }
}

/// The view of a Base and its pods, without the agents' answers.
pub fn view(base: &BaseRef, pods: &[Pod]) -> View {
    let status = base.status();
    let writer = text(status, "currentWriter");
    let fenced = base
        .annotation(ANNOTATION_FENCED_INSTANCES)
        .map(str::to_string);
    let fenced_list = parse_list(fenced.as_deref()).unwrap_or_default();
    View {
        kind: base.kind.to_string(),
        namespace: base.namespace.clone(),
        name: base.name.clone(),
        phase: text(status, "phase"),
        generation: base.obj.metadata.generation,
        observed_generation: status.get("observedGeneration").and_then(Value::as_i64),
        desired: base.spec().get("replicas").and_then(Value::as_i64),
        ready_replicas: status.get("readyReplicas").and_then(Value::as_i64),
        term: status.get("term").and_then(Value::as_u64),
        switchover_to: base
            .annotation(ANNOTATION_SWITCHOVER_TO)
            .map(str::to_string),
        fenced,
        replicas: pods
            .iter()
            .map(|p| Replica {
                name: p.name_any(),
                role: role(p, writer.as_deref(), &fenced_list),
                ready: pod_ready(p),
                agent: None,
            })
            .collect(),
        conditions: conditions(status),
        configuration: status
            .get("configuration")
            .and_then(|c| serde_json::from_value(c.clone()).ok()),
        writer,
    }
}

/// `status.configuration` in one line: the voters (both halves while joint), the learners, the
/// version, and whether a change is in flight (the `MembershipChange` condition).
fn configuration(v: &View) -> String {
    let Some(c) = &v.configuration else {
        return "- (no writer has reported one)".into();
    };
    let list = |l: &[String]| one_line(&l.join(","), 200);
    let mut out = if c.joint {
        format!(
            "joint: voters {} and {}",
            list(&c.outgoing),
            list(&c.voters)
        )
    } else {
        format!("voters {}", list(&c.voters))
    };
    if !c.learners.is_empty() {
        out.push_str(&format!(", learners {}", list(&c.learners)));
    }
    out.push_str(&format!(" (version {})", one_line(&c.version, 40)));
    let moving = v
        .conditions
        .iter()
        .find(|c| c.type_ == base_core::reconcile::CONDITION_MEMBERSHIP);
    match moving {
        Some(m) if m.status == "True" => out.push_str("; changing"),
        Some(_) => out.push_str("; settled"),
        None => {}
    }
    out
}

/// `GET /_ha/leader` of one agent through the API server's pod proxy.
pub async fn agent_answer(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Option<LeaderAnswer> {
    let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/_ha/leader");
    let request = hyper::Request::get(path).body(Vec::new()).ok()?;
    let body = tokio::time::timeout(AGENT_TIMEOUT, client.request_text(request))
        .await
        .ok()?
        .ok()?;
    parse_leader_answer(body.as_bytes()).ok()
}

fn ago(time: &str, now_ms: u64) -> String {
    match parse_rfc3339(time) {
        Ok(t) if t.0 <= now_ms => format!("{} ago", age(now_ms - t.0)),
        Ok(_) => "in the future".into(),
        Err(_) => "unreadable time".into(),
    }
}

/// The writer's lease as the agents report it (the writer's own answer first).
fn lease(v: &View, now_ms: u64) -> String {
    let Some(writer) = &v.writer else {
        return "-".into();
    };
    let best = v
        .replicas
        .iter()
        .filter_map(|r| r.agent.as_ref().map(|a| (r, a)))
        .filter(|(_, a)| a.node_id == *writer)
        .filter_map(|(r, a)| Some((parse_rfc3339(&a.lease_expires).ok()?.0, r.name.clone())))
        // The writer's own report first, else the latest expiry any agent gives.
        .max_by_key(|(t, from)| (from == writer, *t));
    match best {
        Some((t, from)) if t >= now_ms => {
            format!("expires in {} (as {from} reports it)", short(t - now_ms))
        }
        Some((t, from)) => format!("expired {} ago (as {from} reports it)", short(now_ms - t)),
        None if v.replicas.iter().any(|r| r.agent.is_some()) => {
            format!(
                "- (no agent reports {} as the writer)",
                one_line(writer, 80)
            )
        }
        None => "- (no agent answered)".into(),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// The text `status` prints.
pub fn render(v: &View, now_ms: u64) -> String {
    let mut s = format!("{} {}/{}\n", v.kind, v.namespace, v.name);
    let mut field = |k: &str, val: String| s.push_str(&format!("  {k:<15}{val}\n"));
    let generation = match (v.generation, v.observed_generation) {
        (Some(g), Some(o)) if o < g => {
            format!(
                " (generation {g}, observed {o}: the operator has not acted on the latest spec)"
            )
        }
        (Some(g), Some(o)) => format!(" (generation {g}, observed {o})"),
        (Some(g), None) => format!(" (generation {g}, not observed yet)"),
        _ => String::new(),
    };
    field(
        "Phase:",
        format!(
            "{}{generation}",
            opt(&v.phase.as_deref().map(|p| one_line(p, 40)))
        ),
    );
    field(
        "Replicas:",
        format!(
            "{} desired, {} ready, {} pods",
            opt(&v.desired),
            opt(&v.ready_replicas),
            v.replicas.len()
        ),
    );
    field(
        "Writer:",
        match &v.writer {
            Some(w) => format!("{}, term {}", one_line(w, 80), opt(&v.term)),
            None => format!("none (term {})", opt(&v.term)),
        },
    );
    field("Writer lease:", lease(v, now_ms));
    field("Configuration:", configuration(v));
    let failover = v
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_WRITER)
        .and_then(|c| c.last_transition.as_deref())
        .map_or_else(
            || "-".to_string(),
            |t| format!("{} ({})", one_line(t, 40), ago(t, now_ms)),
        );
    field("Last failover:", failover);
    if let Some(to) = &v.switchover_to {
        field("Switchover:", format!("requested to {}", one_line(to, 80)));
    }
    field(
        "Fenced:",
        match v.fenced.as_deref().map(|f| parse_list(Some(f))) {
            None => "none".into(),
            Some(Ok(l)) if l.iter().any(|p| p == "*") => "all instances".into(),
            Some(Ok(l)) if l.is_empty() => "none".into(),
            Some(Ok(l)) => one_line(&l.join(", "), 200),
            Some(Err(_)) => format!(
                "unreadable {ANNOTATION_FENCED_INSTANCES}: {}",
                one_line(v.fenced.as_deref().unwrap_or_default(), 80)
            ),
        },
    );
    s.push('\n');
    let rows: Vec<Vec<String>> = v
        .replicas
        .iter()
        .map(|r| {
            let (sees, term, lease) = match &r.agent {
                Some(a) => (
                    if a.node_id.is_empty() {
                        "none".to_string()
                    } else {
                        one_line(&a.node_id, 63)
                    },
                    a.term.to_string(),
                    match parse_rfc3339(&a.lease_expires) {
                        Ok(t) if t.0 >= now_ms => short(t.0 - now_ms),
                        Ok(_) => "expired".into(),
                        Err(_) => "-".into(),
                    },
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                r.name.clone(),
                r.role.clone(),
                r.ready.clone(),
                sees,
                term,
                lease,
            ]
        })
        .collect();
    if rows.is_empty() {
        s.push_str("No pods.\n");
    } else {
        s.push_str(&table(
            &[
                "POD",
                "ROLE",
                "READY",
                "AGENT SEES WRITER",
                "TERM",
                "LEASE LEFT",
            ],
            &rows,
        ));
    }
    s.push('\n');
    if v.conditions.is_empty() {
        s.push_str("No conditions.\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .conditions
            .iter()
            .map(|c| {
                vec![
                    one_line(&c.type_, 40),
                    one_line(&c.status, 10),
                    one_line(&c.reason, 60),
                    c.last_transition
                        .as_deref()
                        .and_then(|t| parse_rfc3339(t).ok())
                        .map_or_else(|| "-".into(), |t| age(now_ms.saturating_sub(t.0))),
                    one_line(&c.message, 300),
                ]
            })
            .collect();
        s.push_str(&table(
            &["CONDITION", "STATUS", "REASON", "AGE", "MESSAGE"],
            &rows,
        ));
    }
    s
}

pub async fn run(
    client: &Client,
    namespace: &str,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let base = BaseRef::get(client, namespace, &args.name).await?;
    let pods = pods_of(client, &base).await?;
    let mut v = view(&base, &pods);
    let port = base.port();
    let answers = futures::future::join_all(
        v.replicas
            .iter()
            .map(|r| agent_answer(client, namespace, &r.name, port)),
    )
    .await;
    for (r, a) in v.replicas.iter_mut().zip(answers) {
        r.agent = a;
    }
    out.write_all(render(&v, super::now_ms()).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: Value, annotations: Value, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn roles() {
        let p = pod("a-0", json!({}), json!({}), true);
        assert_eq!(role(&p, Some("a-0"), &[]), "writer");
        assert_eq!(role(&p, Some("a-1"), &[]), "follower");
        assert_eq!(role(&p, Some("a-1"), &["*".into()]), "fencing");
        let marked = pod(
            "a-1",
            json!({}),
            json!({ANNOTATION_POD_FENCED: "true"}),
            true,
        );
        assert_eq!(role(&marked, Some("a-0"), &["a-1".into()]), "fenced");
        assert_eq!(role(&marked, Some("a-0"), &[]), "unfencing");
        assert_eq!(role(&marked, Some("a-1"), &["a-1".into()]), "writer,fenced");
        let labelled = pod("a-2", json!({LABEL_ROLE: ROLE_WRITER}), json!({}), true);
        assert_eq!(role(&labelled, None, &[]), "writer");
        assert_eq!(role(&labelled, Some("a-0"), &[]), "follower");
        assert_eq!(pod_ready(&p), "true");
        assert_eq!(pod_ready(&pod("x", json!({}), json!({}), false)), "false");
    }

    #[test]
    fn renders_odd_input_without_panicking() {
        let status = json!({"conditions": [1, "x", {"type": "Ready", "status": "True",
            "lastTransitionTime": "not a time", "message": "a\nb"}], "term": -3});
        let c = conditions(&status);
        assert_eq!(c.len(), 1);
        let v = View {
            kind: "Base".into(),
            name: "a".into(),
            writer: Some("a-0".into()),
            conditions: c,
            fenced: Some("junk".into()),
            replicas: vec![Replica {
                name: "a-0".into(),
                role: "writer".into(),
                ready: "true".into(),
                agent: Some(LeaderAnswer {
                    leader_url: String::new(),
                    node_id: "a-0".into(),
                    term: 4,
                    lease_expires: "2000-01-01T00:00:10Z".into(),
                    configuration: None,
                }),
            }],
            ..View::default()
        };
        let now = parse_rfc3339("2000-01-01T00:00:02Z").unwrap().0;
        let text = render(&v, now);
        assert!(
            text.contains("expires in 8.0s (as a-0 reports it)"),
            "{text}"
        );
        assert!(
            text.contains("unreadable hanzo.ai/fenced-instances"),
            "{text}"
        );
        assert!(text.contains("a b"), "{text}");
        assert!(text.contains("Last failover: -"), "{text}");
    }

    /// `Configuration:` shows the voters, both halves while joint, the learners, the version, and
    /// whether the `MembershipChange` condition says a change is in flight.
    #[test]
    fn renders_the_configuration() {
        let mut v = View::default();
        assert!(render(&v, 0).contains("Configuration: - (no writer has reported one)"));
        let status = json!({
            "configuration": {"version": "4.2", "voters": ["a-0", "a-1", "a-2", "a-3", "a-4"],
                "outgoing": ["a-0", "a-1", "a-2"], "joint": true, "settled": false},
            "conditions": [{"type": "MembershipChange", "status": "True", "reason": "InProgress"}]
        });
        v.configuration = serde_json::from_value(status["configuration"].clone()).ok();
        v.conditions = conditions(&status);
        let text = render(&v, 0);
        assert!(
            text.contains(
                "Configuration: joint: voters a-0,a-1,a-2 and a-0,a-1,a-2,a-3,a-4 (version 4.2); changing"
            ),
            "{text}"
        );
        v.configuration = Some(ConfigurationReport {
            version: "4.1".into(),
            voters: vec!["a-0".into(), "a-1".into(), "a-2".into()],
            learners: vec!["a-3".into()],
            ..Default::default()
        });
        v.conditions[0].status = "False".into();
        let text = render(&v, 0);
        assert!(
            text.contains("Configuration: voters a-0,a-1,a-2, learners a-3 (version 4.1); settled"),
            "{text}"
        );
    }
}
