//! The control plane, kept off the data path.
//!
//! - [`is_control_path`]: which request paths belong to the agents' control plane. The gateway never
//!   forwards them and an agent's client port answers them `404` (both count them); only the
//!   read-only wire the Hanzo gateway needs (`GET /_ha/leader`, `GET /_ha/peers`) is served there.
//! - Writer transfers travel by the Kubernetes API, as fencing does: the operator's plan sets the
//!   annotation [`ANNOTATION_TRANSFER`] on the writer's pod (a [`TransferRequest`] as JSON), the
//!   kubelet writes it into the pod's downward-API annotations file, and the agent reads it from
//!   there. Who may move the writer is then who may patch the pod (the API server's RBAC), with
//!   no port, key or token of the operator's own. [`TransferInbox`] is the agent's side: each
//!   request acts at most once, and only on the writer of the term the operator saw.

use crate::quasar::{Node, Role};
use crate::{NodeId, Term};
use serde::{Deserialize, Serialize};

/// The pod annotation that asks the pod's agent to hand the writer role over.
pub const ANNOTATION_TRANSFER: &str = "hanzo.ai/transfer-to";
/// The longest annotation value read as a request (a real one is under 200 bytes).
pub const TRANSFER_REQUEST_BYTES_MAX: usize = 1024;

/// Path prefixes of the control plane (compared after [`normalize`]).
const CONTROL_PREFIXES: [&str; 3] = ["/_ha", "/_quasar", "/_replica"];
/// The read-only paths a client port serves and a gateway may forward.
const READ_ONLY: [&str; 2] = ["/_ha/leader", "/_ha/peers"];

/// Lower case, `%5f` as `_`, runs of `/` as one: so `//_HA/%5Fquasar` cannot slip past a prefix
/// check that the server behind would not make (axum and Base may treat those paths alike).
fn normalize(path: &str) -> String {
    let lower = path.to_ascii_lowercase().replace("%5f", "_");
    let mut out = String::with_capacity(lower.len());
    for c in lower.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Is this request for the control plane (so never proxied, and `404` on a client port)?
/// Everything under `/_ha`, `/_quasar` and `/_replica` is, except `GET`/`HEAD` of
/// `/_ha/leader` and `/_ha/peers`.
pub fn is_control_path(method: &str, path: &str) -> bool {
    let path = normalize(path);
    let path = path.trim_end_matches('/');
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if !CONTROL_PREFIXES.iter().any(|p| under(p)) {
        return false;
    }
    let read = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    !(read && READ_ONLY.contains(&path))
}

/// A writer transfer, as the value of [`ANNOTATION_TRANSFER`] on the writer's pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The target node (pod name); empty: the best up-to-date peer.
    #[serde(default)]
    pub to: String,
    /// The term in which the operator saw this pod as writer. A request for another term is
    /// inert: the pod lost or regained the role since, and a restarted agent never holds the role
    /// in the term it had before, so an old annotation can never act again.
    pub term: u64,
    /// When the operator asked (its clock, Unix ms): with `term`, what makes a retry a new
    /// request.
    pub at: u64,
    /// Why (`switchover`, `rollout`): logged by the agent with the request.
    #[serde(default)]
    pub by: String,
}

impl TransferRequest {
    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::json!({"to": self.to, "term": self.term, "at": self.at, "by": self.by})
            .to_string()
    }

    /// Reads an annotation value; anything else is `None`, never a panic.
    pub fn parse(value: &str) -> Option<TransferRequest> {
        if value.len() > TRANSFER_REQUEST_BYTES_MAX {
            return None;
        }
        serde_json::from_str(value).ok()
    }
}

/// What the agent did with a request it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferDecision {
    /// Hand over to this peer (`Input::TransferWriter`).
    Start(NodeId),
    Refused(TransferRefusal),
}

/// Why a transfer request did not act (the `outcome` label of the agent's counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransferRefusal {
    /// Not a [`TransferRequest`].
    Malformed,
    /// For another term than this node's: stale (see [`TransferRequest::term`]).
    StaleTerm,
    /// This node is not the writer.
    NotWriter,
    /// A hand-over is already under way (or the node is fenced, which hands over by itself).
    InProgress,
    /// `to` is not a peer of this node.
    UnknownTarget,
    /// `to` is a member but not a voter of the current configuration (a learner still catching
    /// up, or a member being removed while this writer stays): it could not win.
    NotAVoter,
    /// No target named and no peer is known to be up to date.
    NoTarget,
}

impl TransferRefusal {
    pub const ALL: [TransferRefusal; 7] = [
        TransferRefusal::Malformed,
        TransferRefusal::StaleTerm,
        TransferRefusal::NotWriter,
        TransferRefusal::InProgress,
        TransferRefusal::UnknownTarget,
        TransferRefusal::NotAVoter,
        TransferRefusal::NoTarget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferRefusal::Malformed => "malformed",
            TransferRefusal::StaleTerm => "stale_term",
            TransferRefusal::NotWriter => "not_writer",
            TransferRefusal::InProgress => "in_progress",
            TransferRefusal::UnknownTarget => "unknown_target",
            TransferRefusal::NotAVoter => "not_a_voter",
            TransferRefusal::NoTarget => "no_target",
        }
    }
}

/// Decides a request against the node as it is now.
pub fn decide(node: &Node, request: &TransferRequest) -> TransferDecision {
    use TransferDecision::Refused;
    if node.role() != Role::Writer {
        return Refused(TransferRefusal::NotWriter);
    }
    if node.term() != Term(request.term) {
        return Refused(TransferRefusal::StaleTerm);
    }
    if node.transferring_to().is_some() || node.is_fenced() {
        return Refused(TransferRefusal::InProgress);
    }
    let to = request.to.trim();
    if to.is_empty() {
        return match node.best_transfer_target() {
            Some(to) => TransferDecision::Start(to),
            None => Refused(TransferRefusal::NoTarget),
        };
    }
    let to = NodeId::new(to);
    if !node.peers().contains(&to) && !node.contacts().contains(&to) {
        return Refused(TransferRefusal::UnknownTarget);
    }
    // Refused at once: a transfer to a node that cannot win would only stop writes for a while.
    if node.transfer_refusal(&to).is_some() {
        return Refused(TransferRefusal::NotAVoter);
    }
    TransferDecision::Start(to)
}

/// The agent's memory of the transfer annotation: each value is considered once, when it first
/// appears in the annotations file (re-reading the same file does nothing).
#[derive(Clone, Debug, Default)]
pub struct TransferInbox {
    last: Option<String>,
}

/// A request the inbox took in, with what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Considered {
    /// `None` when the value did not parse.
    pub request: Option<TransferRequest>,
    pub decision: TransferDecision,
}

impl TransferInbox {
    /// The annotation's current value (`None`: absent). Returns a decision only for a value not
    /// seen before.
    pub fn offer(&mut self, value: Option<&str>, node: &Node) -> Option<Considered> {
        let value = value?;
        if self.last.as_deref() == Some(value) {
            return None;
        }
        self.last = Some(value.to_string());
        Some(match TransferRequest::parse(value) {
            None => Considered {
                request: None,
                decision: TransferDecision::Refused(TransferRefusal::Malformed),
            },
            Some(request) => Considered {
                decision: decide(node, &request),
                request: Some(request),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Millis;
    use crate::quasar::{Input, Message, PersistedState, Timing};

    #[test]
    fn control_paths() {
        for (method, path) in [
            ("POST", "/_ha/transfer"),
            ("GET", "/_ha/transfer"),
            ("POST", "/_ha/leader"),
            ("POST", "/_quasar/msg"),
            ("GET", "/_quasar/metrics"),
            ("GET", "/_replica/log"),
            ("PUT", "/_replica"),
            ("POST", "//_ha//transfer"),
            ("POST", "/_HA/Transfer"),
            ("POST", "/%5Fha/transfer"),
            ("GET", "/_ha"),
            ("GET", "/_ha/leader/x"),
        ] {
            assert!(is_control_path(method, path), "{method} {path}");
        }
        for (method, path) in [
            ("GET", "/_ha/leader"),
            ("HEAD", "/_ha/leader"),
            ("GET", "/_ha/peers/"),
            ("GET", "/api/items"),
            ("POST", "/_hax/transfer"),
            ("GET", "/x/_ha/transfer"),
            ("GET", "/"),
        ] {
            assert!(!is_control_path(method, path), "{method} {path}");
        }
    }

    #[test]
    fn requests_round_trip_and_bad_ones_do_not_parse() {
        let r = TransferRequest {
            to: "a-2".into(),
            term: 7,
            at: 1_700_000_000_000,
            by: "switchover".into(),
        };
        assert_eq!(TransferRequest::parse(&r.to_annotation()), Some(r));
        for bad in ["", "a-2", "{}", r#"{"to":"a-2"}"#, r#"{"term":-1,"at":0}"#] {
            assert_eq!(TransferRequest::parse(bad), None, "{bad:?}");
        }
        let huge = format!(
            r#"{{"to":"{}","term":1,"at":1}}"#,
            "x".repeat(TRANSFER_REQUEST_BYTES_MAX)
        );
        assert_eq!(TransferRequest::parse(&huge), None);
    }

    /// A writer of term 1 among `a`, `b`, `c`, every peer acknowledged at its position.
    fn writer() -> Node {
        let id = |s: &str| NodeId::new(s);
        writer_with(vec![id("b"), id("c")], PersistedState::default())
    }

    fn writer_with(peers: Vec<NodeId>, persisted: PersistedState) -> Node {
        let timing = Timing::default();
        let id = |s: &str| NodeId::new(s);
        let mut n = Node::new(id("a"), peers, timing, persisted, 1, Millis(0)).unwrap();
        let mut now = Millis(0);
        for _ in 0..1000 {
            now = now.saturating_add(Millis(10));
            // The peers grant and acknowledge everything, at once.
            let mut queue = n.step(now, Input::Tick);
            while let Some(e) = queue.pop() {
                let crate::quasar::Effect::Send { to, msg } = e else {
                    continue;
                };
                let reply = match msg {
                    Message::PreVote { term, .. } => Message::PreVoteResponse {
                        term,
                        granted: true,
                        membership: None,
                    },
                    Message::Vote { term, sent_ms, .. } => Message::VoteResponse {
                        term,
                        granted: true,
                        sent_ms,
                        membership: None,
                    },
                    Message::Heartbeat { term, sent_ms, .. } => Message::HeartbeatAck {
                        term,
                        ok: true,
                        sent_ms,
                        position: 0,
                        config: None,
                    },
                    _ => continue,
                };
                queue.extend(n.step(
                    now,
                    Input::Message {
                        from: to,
                        msg: reply,
                    },
                ));
            }
            if n.role() == Role::Writer && n.best_transfer_target().is_some() {
                return n;
            }
        }
        panic!("no writer: {:?}", n.role());
    }

    /// A transfer to a learner is refused at once with its reason (it could not win); to a
    /// node that is no member at all, as unknown.
    #[test]
    fn a_transfer_to_a_learner_is_refused_as_not_a_voter() {
        let id = |s: &str| NodeId::new(s);
        let membership = crate::quasar::Membership {
            learners: [id("d")].into_iter().collect(),
            ..crate::quasar::Membership::bootstrap([id("a"), id("b"), id("c")])
        };
        let n = writer_with(
            vec![id("b"), id("c"), id("d")],
            PersistedState {
                membership: Some(membership),
                ..PersistedState::default()
            },
        );
        let term = n.term().0;
        let req = |to: &str| TransferRequest {
            to: to.into(),
            term,
            at: 1,
            by: "test".into(),
        };
        assert_eq!(
            decide(&n, &req("d")),
            TransferDecision::Refused(TransferRefusal::NotAVoter)
        );
        assert_eq!(
            decide(&n, &req("e")),
            TransferDecision::Refused(TransferRefusal::UnknownTarget)
        );
        assert_eq!(decide(&n, &req("b")), TransferDecision::Start(id("b")));
    }

    #[test]
    fn a_request_acts_once_and_only_on_the_writer_of_its_term() {
        let n = writer();
        let term = n.term().0;
        let req = |to: &str, term: u64, at: u64| {
            TransferRequest {
                to: to.into(),
                term,
                at,
                by: "test".into(),
            }
            .to_annotation()
        };
        let mut inbox = TransferInbox::default();
        assert_eq!(inbox.offer(None, &n), None);
        let first = req("b", term, 1);
        let c = inbox.offer(Some(&first), &n).unwrap();
        assert_eq!(c.decision, TransferDecision::Start(NodeId::new("b")));
        // The same value again (the file re-read): nothing.
        assert_eq!(inbox.offer(Some(&first), &n), None);
        let refused =
            |inbox: &mut TransferInbox, v: &str| match inbox.offer(Some(v), &n).map(|c| c.decision)
            {
                Some(TransferDecision::Refused(r)) => r,
                other => panic!("{v}: {other:?}"),
            };
        assert_eq!(
            refused(&mut inbox, &req("b", term + 1, 2)),
            TransferRefusal::StaleTerm
        );
        assert_eq!(
            refused(&mut inbox, &req("b", term - 1, 3)),
            TransferRefusal::StaleTerm
        );
        assert_eq!(
            refused(&mut inbox, &req("z", term, 4)),
            TransferRefusal::UnknownTarget
        );
        assert_eq!(refused(&mut inbox, "junk"), TransferRefusal::Malformed);
        // A retry (new `at`) is a new request.
        let again = inbox.offer(Some(&req("", term, 5)), &n).unwrap();
        assert!(matches!(again.decision, TransferDecision::Start(_)));
        // A follower refuses every request.
        let follower = Node::new(
            NodeId::new("b"),
            vec![NodeId::new("a"), NodeId::new("c")],
            Timing::default(),
            PersistedState::default(),
            1,
            Millis(0),
        )
        .unwrap();
        assert_eq!(
            decide(&follower, &TransferRequest::parse(&req("a", 0, 6)).unwrap()),
            TransferDecision::Refused(TransferRefusal::NotWriter)
        );
    }
}
