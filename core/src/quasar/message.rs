//! The messages Quasar nodes exchange. The agent sends them as JSON (an [`Envelope`] per POST).

use super::membership::{ConfigVersion, Membership};
use crate::{Millis, NodeId, Term};
use serde::{Deserialize, Serialize};

/// Largest encoded envelope a peer accepts; a larger body is refused before it is parsed. A
/// heartbeat carrying a joint configuration of 15 members with pod-sized ids fits.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// One election message. Times (`sent_ms`) are on the *sender's* clock and only ever compared by
/// the sender, which gets them echoed back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// "Would you vote for me at `term`?" (`term` is the sender's term + 1; nothing changes).
    /// `config`: the version of the candidate's configuration (absent from agents that predate
    /// membership changes: the bootstrap one).
    PreVote {
        term: Term,
        position: u64,
        #[serde(default)]
        config: ConfigVersion,
    },
    /// Granted: `term` echoes the request's. Refused: `term` is the voter's own term. A voter
    /// that refuses because its configuration is newer sends it along, so that the candidate
    /// learns it (without it, a candidate with the newest log and one with the newest
    /// configuration could refuse each other forever).
    PreVoteResponse {
        term: Term,
        granted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        membership: Option<Box<Membership>>,
    },
    /// A real vote request. `transfer_from` is set only when the sender campaigns because the
    /// writer of `term − 1` told it to (`TimeoutNow`): voters whose promise is to that writer honour it.
    Vote {
        term: Term,
        position: u64,
        sent_ms: Millis,
        #[serde(default)]
        transfer_from: Option<NodeId>,
        #[serde(default)]
        config: ConfigVersion,
    },
    /// `sent_ms` echoes the request's so the winner counts its first lease from its campaign.
    /// `membership` as in `PreVoteResponse`.
    VoteResponse {
        term: Term,
        granted: bool,
        sent_ms: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        membership: Option<Box<Membership>>,
    },
    /// The writer's lease renewal; `position` is the writer's replication position (informative).
    /// `membership`: the writer's configuration, sent to a peer that has not acked holding it.
    Heartbeat {
        term: Term,
        sent_ms: Millis,
        position: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        membership: Option<Box<Membership>>,
    },
    /// `ok: false` with a higher `term` tells a stale writer to step down. `config`: the version
    /// of the configuration the sender holds (persisted), if any.
    HeartbeatAck {
        term: Term,
        ok: bool,
        sent_ms: Millis,
        position: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<ConfigVersion>,
    },
    /// The writer of `term` has stopped accepting writes and asks the receiver to campaign now.
    TimeoutNow { term: Term },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatAck { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "pre_vote",
            Message::PreVoteResponse { .. } => "pre_vote_response",
            Message::Vote { .. } => "vote",
            Message::VoteResponse { .. } => "vote_response",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::TimeoutNow { .. } => "timeout_now",
        }
    }
}

/// A message on the wire between two agents. Unknown fields are ignored, so agents of adjacent
/// versions keep electing during a rolling update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Message,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let env = Envelope {
            from: NodeId::from("base-0"),
            to: NodeId::from("base-1"),
            msg: Message::Vote {
                term: Term(3),
                position: 7,
                sent_ms: Millis(1234),
                transfer_from: Some(NodeId::from("base-2")),
                config: ConfigVersion::default(),
            },
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(json.contains(r#""type":"vote""#), "{json}");
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
        assert!(json.len() < MAX_MESSAGE_BYTES);
    }

    /// The largest heartbeat: a joint configuration over the 15-member limit with 63-character
    /// ids (every member in one half, the rest learners), between two such ids, fits the cap.
    #[test]
    fn largest_heartbeat_fits() {
        let id = |i: usize| NodeId::new(format!("{:0>63}", i));
        let members: Vec<NodeId> = (0..crate::quasar::CLUSTER_SIZE_MAX).map(id).collect();
        let m = Membership {
            version: ConfigVersion {
                term: Term(u64::MAX >> 1),
                index: u64::MAX,
            },
            outgoing: members[..8].iter().cloned().collect(),
            voters: members[..15].iter().cloned().collect(),
            learners: Default::default(),
        };
        let env = Envelope {
            from: id(0),
            to: id(1),
            msg: Message::Heartbeat {
                term: Term(u64::MAX >> 1),
                sent_ms: Millis(u64::MAX),
                position: u64::MAX,
                membership: Some(Box::new(m)),
            },
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(json.len() < MAX_MESSAGE_BYTES, "{} bytes", json.len());
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
    }

    /// A message from an agent that predates membership changes still parses: the bootstrap
    /// version, no configuration.
    #[test]
    fn old_messages_parse() {
        let old = r#"{"type":"pre_vote","term":3,"position":9}"#;
        assert_eq!(
            serde_json::from_str::<Message>(old).unwrap(),
            Message::PreVote {
                term: Term(3),
                position: 9,
                config: ConfigVersion::default()
            }
        );
        let old = r#"{"type":"heartbeat_ack","term":3,"ok":true,"sent_ms":5,"position":9}"#;
        assert!(matches!(
            serde_json::from_str::<Message>(old).unwrap(),
            Message::HeartbeatAck { config: None, .. }
        ));
    }
}
