//! `wire`: the parsers of what comes over the network, bytes in → an error or a value, never a
//! panic. The first byte picks the parser; the rest is its input.
//! - `/_ha/leader` answers (`wire::parse_leader_answer`, `tracker::parse_leader_claim`): a parsed
//!   answer serialises and reads back equal; the claim agrees with the answer.
//! - RFC 3339 times (`wire::parse_rfc3339`): agree with `jiff` wherever both accept a time.
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
    match which % 4 {
        0 => leader_answer(rest),
        1 => rfc3339(rest),
        2 => peer_message(rest),
        _ => {
            // Everything at once, for inputs the other arms found.
            leader_answer(rest);
            rfc3339(rest);
            peer_message(rest);
        }
    }
});

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
        let transfer = match &env.msg {
            base_core::quasar::Message::Vote {
                transfer_from: Some(t),
                ..
            } => t.as_str().len(),
            _ => 0,
        };
        if transfer <= 253 {
            assert!(
                json.len() <= MAX_MESSAGE_BYTES,
                "a well-formed envelope of {} bytes",
                json.len()
            );
        }
    }
}
