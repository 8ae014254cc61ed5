//! The messages Quasar nodes exchange. The agent sends them as JSON (an [`Envelope`] per POST).

use crate::{Millis, NodeId, Term};
use serde::{Deserialize, Serialize};

/// Largest encoded envelope a peer accepts; a larger body is refused before it is parsed.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// One election message. Times (`sent_ms`) are on the *sender's* clock and only ever compared by
/// the sender, which gets them echoed back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// "Would you vote for me at `term`?" (`term` is the sender's term + 1; nothing changes).
    PreVote { term: Term, position: u64 },
    /// Granted: `term` echoes the request's. Refused: `term` is the voter's own term.
    PreVoteResponse { term: Term, granted: bool },
    /// A real vote request. `transfer_from` is set only when the sender campaigns because the
    /// writer of `term − 1` told it to (`TimeoutNow`): voters whose promise is to that writer honour it.
    Vote {
        term: Term,
        position: u64,
        sent_ms: Millis,
        #[serde(default)]
        transfer_from: Option<NodeId>,
    },
    /// `sent_ms` echoes the request's so the winner counts its first lease from its campaign.
    VoteResponse {
        term: Term,
        granted: bool,
        sent_ms: Millis,
    },
    /// The writer's lease renewal; `position` is the writer's replication position (informative).
    Heartbeat {
        term: Term,
        sent_ms: Millis,
        position: u64,
    },
    /// `ok: false` with a higher `term` tells a stale writer to step down.
    HeartbeatAck {
        term: Term,
        ok: bool,
        sent_ms: Millis,
        position: u64,
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
            },
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(json.contains(r#""type":"vote""#), "{json}");
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
        assert!(json.len() < MAX_MESSAGE_BYTES);
    }
}
