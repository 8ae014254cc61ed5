//! `wire`: the parsers of what comes over the network, bytes in → an error or a value, never a
//! panic. The first byte picks the parser; the rest is its input.
//! - `/_ha/leader` answers (`wire::parse_leader_answer`, `tracker::parse_leader_claim`): a parsed
//!   answer serialises and reads back equal; the claim agrees with the answer.
//! - RFC 3339 times (`wire::parse_rfc3339`): agree with `jiff` wherever both accept a time.
//! - Go durations and quantities (`validate::parse_duration_ns`, `parse_quantity`): accepted exactly
//!   when the CRD's admission pattern admits them.
//! - Quasar peer messages (`quasar::Envelope`, the body the agents POST to each other): a parsed
//!   envelope serialises and reads back equal, and one with pod-name-sized ids fits the size limit.
#![no_main]

use base_core::tracker::{LeaderClaim, parse_leader_claim};
use base_core::wire::{LeaderAnswer, MAX_LEADER_ANSWER_BYTES, parse_leader_answer, parse_rfc3339};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => leader_answer(rest),
        1 => rfc3339(rest),
        2 => peer_message(rest),
        4 => duration_and_quantity(rest),
        _ => {
            // Everything at once, for inputs the other arms found.
            leader_answer(rest);
            rfc3339(rest);
            peer_message(rest);
            duration_and_quantity(rest);
        }
    }
});

/// Go durations (spec fields, gateway and agent flags) and quantities (spec fields): the parsers
/// accept exactly what the CRD's admission patterns admit (bar values too large to hold), and
/// agree with one another.
fn duration_and_quantity(bytes: &[u8]) {
    use base_core::crd::{DURATION_PATTERN, QUANTITY_PATTERN};
    use base_core::validate::{
        parse_duration_ms, parse_duration_ns, parse_quantity, parse_std_duration,
    };
    use std::sync::OnceLock;
    static PATTERNS: OnceLock<(regex::Regex, regex::Regex)> = OnceLock::new();
    let (duration_re, quantity_re) = PATTERNS.get_or_init(|| {
        (
            regex::Regex::new(DURATION_PATTERN).expect("pattern"),
            regex::Regex::new(QUANTITY_PATTERN).expect("pattern"),
        )
    });
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };

    let ns = parse_duration_ns(text);
    match &ns {
        Ok(ns) => {
            assert!(
                duration_re.is_match(text),
                "{text:?} parsed as {ns} ns but admission refuses it"
            );
            assert_eq!(parse_duration_ms(text), Ok(ns / 1_000_000));
            assert_eq!(
                parse_duration_ns(&format!("{}ns", ns.unsigned_abs())),
                Ok(ns.abs())
            );
            if !text.starts_with(['-', '+']) {
                assert_eq!(parse_duration_ns(&format!("-{text}")), Ok(-ns));
            }
            if let Ok(d) = parse_std_duration(text) {
                assert_eq!(i128::try_from(d.as_nanos()).ok(), Some(i128::from(*ns)));
            }
        }
        Err(e) => {
            assert!(parse_duration_ms(text).is_err());
            if duration_re.is_match(text) {
                assert!(
                    e.contains("too long"),
                    "{text:?} is admitted but refused: {e}"
                );
            }
        }
    }

    match parse_quantity(text) {
        Ok(v) => {
            assert!(
                quantity_re.is_match(text),
                "{text:?} parsed as {v} but admission refuses it"
            );
            assert!(v.is_finite(), "{text:?} is {v}");
        }
        // Admission also admits decimal exponents (`1e2.5`), which Kubernetes itself refuses.
        Err(e) => assert!(
            !quantity_re.is_match(text) || text.contains(['e', 'E']) || e.contains("too large"),
            "{text:?} is admitted but refused: {e}"
        ),
    }
}

fn leader_answer(bytes: &[u8]) {
    let parsed = parse_leader_answer(bytes);
    let claim = parse_leader_claim(bytes);
    match &parsed {
        Err(e) => {
            assert!(claim.is_err(), "claim parsed from a refused answer");
            let _ = e.to_string();
        }
        Ok(a) => {
            assert!(bytes.len() <= MAX_LEADER_ANSWER_BYTES);
            let json = serde_json::to_vec(a).expect("an answer serialises");
            let back = parse_leader_answer(&json).expect("a serialised answer parses");
            assert_eq!(&back, a, "answer changed through a round trip");
            let strict: LeaderAnswer = serde_json::from_slice(&json).expect("strict shape");
            assert_eq!(&strict, a);
            assert_eq!(claim, LeaderClaim::from_answer(a));
            if let Ok(c) = &claim {
                assert_eq!(c.term.0, a.term);
                if let Some(w) = &c.writer {
                    assert_eq!(w.node.as_str(), a.node_id.trim());
                    assert!(!w.node.as_str().is_empty());
                }
            }
        }
    }
}

fn rfc3339(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let ours = parse_rfc3339(text);
    if let Ok(ms) = ours {
        // At most year 9999.
        assert!(ms.0 < 253_402_300_800_000 + 86_400_000, "{text:?} → {ms}");
        // A leap second (`:60`) is read as the next second; jiff clamps it to `:59`.
        let trimmed = text.trim();
        let leap = trimmed.get(17..19) == Some("60");
        if !leap && let Ok(ts) = trimmed.parse::<jiff::Timestamp>() {
            let theirs = ts.as_millisecond();
            assert_eq!(
                ms.0 as i64, theirs,
                "{text:?}: ours {} ms, jiff {theirs} ms",
                ms.0
            );
        }
    }
}

fn peer_message(bytes: &[u8]) {
    use base_core::quasar::{Envelope, MAX_MESSAGE_BYTES};
    let Ok(env) = serde_json::from_slice::<Envelope>(bytes) else {
        return;
    };
    let json = serde_json::to_vec(&env).expect("an envelope serialises");
    let back: Envelope = serde_json::from_slice(&json).expect("a serialised envelope parses");
    assert_eq!(back, env, "envelope changed through a round trip");
    let _ = (env.msg.term(), env.msg.kind());
    // What a node sends (ids of at most a pod name, numbers) always fits the limit.
    if env.from.as_str().len() <= 253 && env.to.as_str().len() <= 253 {
        use base_core::quasar::Message;
        let transfer = match &env.msg {
            Message::Vote {
                transfer_from: Some(t),
                ..
            } => t.as_str().len(),
            _ => 0,
        };
        // A configuration a node sends is a valid one of pod names (at most 63 characters).
        let membership = match &env.msg {
            Message::Heartbeat { membership, .. }
            | Message::PreVoteResponse { membership, .. }
            | Message::VoteResponse { membership, .. } => membership.as_deref(),
            _ => None,
        };
        let sendable = membership.is_none_or(|m| {
            m.quorum().is_ok()
                && m.members().len() <= base_core::quasar::CLUSTER_SIZE_MAX
                && m.members().iter().all(|id| id.as_str().len() <= 63)
                && env.from.as_str().len() <= 63
                && env.to.as_str().len() <= 63
        });
        if transfer <= 253 && sendable {
            assert!(
                json.len() <= MAX_MESSAGE_BYTES,
                "a well-formed envelope of {} bytes",
                json.len()
            );
        }
    }
}
