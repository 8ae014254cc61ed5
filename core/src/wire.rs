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
    /// The answering node's voting configuration (issue 18); the operator's rollout waits on
    /// the writer's. Absent from agents that do not report one (older agents, the gateway's
    /// readers ignore it), and then `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<ConfigurationReport>,
}

/// A node's voting configuration as `/_ha/leader` reports it and `status.configuration` shows
/// it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationReport {
    /// `term.index` of the writer that proposed it (`0.0`: the initial members').
    pub version: String,
    /// The (incoming) voters.
    pub voters: Vec<String>,
    /// While joint C(old, new): the outgoing voters; every election, lease and commit needs a
    /// majority of both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing: Vec<String>,
    /// Members that receive the log but do not vote (yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<String>,
    #[serde(default)]
    pub joint: bool,
    /// Said by the writer: the configuration is committed in its term, simple, without learners,
    /// equal to the operator's desired members, and every member it removed knows it is out.
    #[serde(default)]
    pub settled: bool,
}

impl ConfigurationReport {
    /// The report of `m`, `settled` as the writer judges it (`Node::membership_done`).
    pub fn of(m: &crate::quasar::Membership, settled: bool) -> ConfigurationReport {
        let names = |s: &std::collections::BTreeSet<crate::NodeId>| {
            s.iter().map(|n| n.as_str().to_string()).collect()
        };
        ConfigurationReport {
            version: m.version.to_string(),
            voters: names(&m.voters),
            outgoing: names(&m.outgoing),
            learners: names(&m.learners),
            joint: m.is_joint(),
            settled,
        }
    }

    /// Simple, no learners, settled, and its voters exactly `members`.
    pub fn is_settled_on(&self, members: &[String]) -> bool {
        let mut want: Vec<&str> = members.iter().map(String::as_str).collect();
        want.sort_unstable();
        want.dedup();
        let mut have: Vec<&str> = self.voters.iter().map(String::as_str).collect();
        have.sort_unstable();
        self.settled && !self.joint && self.learners.is_empty() && have == want
    }
}

/// One entry of `GET /_ha/peers`, in the shape hanzoai/base-ha serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    pub node_id: String,
    pub target: String,
    /// Heard from within the shortest election timeout.
    pub up: bool,
    /// The StatefulSet ordinal of `node_id`, or −1.
    pub ordinal: i64,
    /// RFC 3339, empty if never heard from.
    pub last_seen: String,
}

/// The body of every `503` a replica or the gateway gives when no writer is known.
pub const NO_WRITER_BODY: &str = r#"{"error":"no_writer"}"#;

/// Response headers every agent sets, so clients and the gateway see who the writer is.
pub const HEADER_LEADER: &str = "X-Base-Leader";
pub const HEADER_TERM: &str = "X-Base-Term";
/// On an agent's `/_ha/leader` answer: `1` when its Base implements the replica contract, `0`
/// when it does not (writes are not held for a quorum); absent while not known yet.
pub const HEADER_REPLICA_CONTRACT: &str = "X-Base-Replica-Contract";
/// A client sets this to force a request (even a read) to the writer.
pub const HEADER_WRITER_REQUIRED: &str = "X-Base-Writer";

/// The largest `/_ha/leader` body a poller reads; a real answer is a few hundred bytes.
pub const MAX_LEADER_ANSWER_BYTES: usize = 16 * 1024;

/// A `/_ha/leader` answer or a time in it that cannot be read. The poll that got it failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("answer is {0} bytes, more than {max}", max = MAX_LEADER_ANSWER_BYTES)]
    TooLarge(usize),
    #[error("answer is not JSON: {0}")]
    Json(String),
    #[error("answer is not a JSON object")]
    NotAnObject,
    #[error("field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
    #[error("`{value}` is not an RFC 3339 time: {problem}")]
    Time {
        value: String,
        problem: &'static str,
    },
}

/// Reads a `/_ha/leader` body leniently: unknown fields are ignored, a missing or `null` string
/// field is empty, a missing `term` is 0 and a term written as a string of digits is accepted.
/// Anything else that does not fit is an error, never a panic (this is a fuzz target).
pub fn parse_leader_answer(bytes: &[u8]) -> Result<LeaderAnswer, WireError> {
    if bytes.len() > MAX_LEADER_ANSWER_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    let object = value.as_object().ok_or(WireError::NotAnObject)?;
    let text = |field: &'static str| -> Result<String, WireError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(WireError::Field {
                field,
                problem: "not a string",
            }),
        }
    };
    let bad_term = |problem| WireError::Field {
        field: "term",
        problem,
    };
    let term = match object.get("term") {
        None | Some(serde_json::Value::Null) => 0,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad_term("not a non-negative integer"))?,
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| bad_term("not a non-negative integer"))?,
        Some(_) => return Err(bad_term("not a number")),
    };
    // Read leniently as well: a configuration that does not fit is none (the answer still
    // names the writer; the rollout then waits as for an agent that reports none).
    let configuration = object
        .get("configuration")
        .filter(|v| !v.is_null())
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    Ok(LeaderAnswer {
        leader_url: text("leader_url")?,
        node_id: text("node_id")?,
        term,
        lease_expires: text("lease_expires")?,
        configuration,
    })
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`), the form
/// `/_ha/leader` carries: what [`parse_rfc3339`] reads back exactly. The agent, the operator's
/// tests and the simulation all format with this one.
#[must_use]
pub fn format_rfc3339(t: crate::Millis) -> String {
    let ms = t.0 % 1000;
    let secs = t.0 / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z")
}

/// An RFC 3339 time (`2024-05-01T12:00:00.123456789Z`, `…+02:00`) as Unix milliseconds, without
/// reading a clock. Fractions below a millisecond are cut (a lease then ends a little early, never
/// late). Times before 1970 are refused.
pub fn parse_rfc3339(value: &str) -> Result<crate::Millis, WireError> {
    let fail = |problem| WireError::Time {
        value: value.chars().take(64).collect(),
        problem,
    };
    let b = value.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<i64, WireError> {
        let part = b.get(range).ok_or_else(|| fail("too short"))?;
        part.iter().try_fold(0i64, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + i64::from(c - b'0'))
            } else {
                Err(fail("a digit was expected"))
            }
        })
    };
    let expect = |at: usize, allowed: &[u8], problem| -> Result<(), WireError> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(fail(problem)),
        }
    };
    let year = digits(0..4)?;
    expect(4, b"-", "`-` after the year")?;
    let month = digits(5..7)?;
    expect(7, b"-", "`-` after the month")?;
    let day = digits(8..10)?;
    expect(10, b"Tt ", "`T` between date and time")?;
    let hour = digits(11..13)?;
    expect(13, b":", "`:` after the hour")?;
    let minute = digits(14..16)?;
    expect(16, b":", "`:` after the minutes")?;
    let second = digits(17..19)?;
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(fail("a fraction needs digits"));
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_seconds = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let hours = digits(at + 1..at + 3)?;
            expect(at + 3, b":", "`:` in the offset")?;
            let minutes = digits(at + 4..at + 6)?;
            if hours > 23 || minutes > 59 {
                return Err(fail("offset out of range"));
            }
            at += 6;
            let seconds = hours * 3600 + minutes * 60;
            if sign == b'+' { seconds } else { -seconds }
        }
        _ => return Err(fail("`Z` or an offset was expected")),
    };
    if at != b.len() {
        return Err(fail("trailing characters"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) {
        return Err(fail("month out of range"));
    }
    let month_len = month_days[(month - 1) as usize];
    if !(1..=month_len).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(fail("date or time out of range"));
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_seconds;
    if seconds < 0 {
        return Err(fail("before 1970"));
    }
    // At most ~3e14 ms for year 9999: no overflow.
    Ok(crate::Millis((seconds * 1_000 + millis) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_and_round_trips() {
        assert_eq!(format_rfc3339(crate::Millis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(crate::Millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        for t in [
            1,
            86_399_999,
            1_700_000_000_000,
            1_767_225_600_000,
            4_102_444_800_000,
            4_102_444_800_999,
            1_709_251_199_999,
        ] {
            let text = format_rfc3339(crate::Millis(t));
            assert_eq!(parse_rfc3339(&text), Ok(crate::Millis(t)), "{text}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let ms = |s| parse_rfc3339(s).map(|m| m.0);
        assert_eq!(ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(ms("1970-01-01T00:00:01.5Z"), Ok(1_500));
        assert_eq!(ms("1970-01-01T00:00:01.123999999Z"), Ok(1_123));
        assert_eq!(ms("2024-02-29T12:00:00Z"), Ok(1_709_208_000_000));
        assert_eq!(ms("2024-02-29T14:00:00+02:00"), Ok(1_709_208_000_000));
        assert_eq!(ms("2024-02-29t11:30:00-00:30"), Ok(1_709_208_000_000));
        assert_eq!(ms("2000-01-01 00:00:00z"), Ok(946_684_800_000));
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00+2:00",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn leader_answers_parse_leniently() {
        let a = parse_leader_answer(
            br#"{"leader_url":"http://b-0:8090","node_id":"b-0","term":"12","lease_expires":"1970-01-01T00:00:01Z","extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(a.term, 12);
        assert_eq!(a.node_id, "b-0");
        let empty = parse_leader_answer(br#"{"node_id":null}"#).unwrap();
        assert_eq!(empty.term, 0);
        assert_eq!(empty.node_id, "");
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"term":-1}"#,
            br#"{"term":1.5}"#,
            br#"{"term":true}"#,
            br#"{"node_id":3}"#,
        ] {
            assert!(parse_leader_answer(bad).is_err());
        }
        let huge = vec![b' '; MAX_LEADER_ANSWER_BYTES + 1];
        assert_eq!(
            parse_leader_answer(&huge),
            Err(WireError::TooLarge(MAX_LEADER_ANSWER_BYTES + 1))
        );
    }
}
