//! Wire shapes shared by the agent, the gateway and the operator's poller. These are the exact JSON
//! shapes the existing Hanzo gateway (`base_ha_backend`) reads, so their field names must not change.

use serde::{Deserialize, Serialize};

/// `GET /_ha/leader` on any replica. `lease_expires` is an RFC 3339 UTC time.
/// A replica that knows no writer answers with an empty `leader_url` and `node_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderAnswer {
    pub leader_url: String,
    pub node_id: String,
    pub term: u64,
    pub lease_expires: String,
}

/// The body of every `503` a replica or the gateway gives when no writer is known.
pub const NO_WRITER_BODY: &str = r#"{"error":"no_writer"}"#;

/// Response headers every agent sets, so clients and the gateway see who the writer is.
pub const HEADER_LEADER: &str = "X-Base-Leader";
pub const HEADER_TERM: &str = "X-Base-Term";
/// A client sets this to force a request (even a read) to the writer.
pub const HEADER_WRITER_REQUIRED: &str = "X-Base-Writer";
