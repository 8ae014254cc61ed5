//! `agent`: what the Quasar agent (`adapter-k8s/src/agent`) reads from outside.
//!
//! - Peer messages, as its `POST /_quasar/message` handler reads them: at most `MAX_MESSAGE_BYTES`,
//!   JSON `Envelope`, addressed to this node, from a listed peer. What gets through is stepped into
//!   a real `quasar::Node` (member of a 3-node cluster), interleaved with ticks and time passing:
//!   a peer's message, however odd its numbers (terms near `u64::MAX`, echoes from the future),
//!   must never make the node panic. Raw bodies and structured messages (serialised first, so they
//!   take the same path) are both fed.
//! - Peer authentication (`auth`): the three headers and the body of a message, signed with the
//!   current or previous key, or garbled, forged, re-keyed, replayed or stale. `check_mac` accepts
//!   exactly the untouched messages signed with a key it holds, and `check_fresh` admits each
//!   signed (sender, timestamp, nonce) at most once, never one outside the clock-skew window.
//! - `clock::format_rfc3339` (the `lease_expires` the agent serves) and `wire::parse_rfc3339` (what
//!   the gateway reads it with) round-trip every time up to year 9999.
//! - `config::parse_peers` (`--peers` / `BASE_PEERS`): never panics; what it accepts is a list of
//!   unique non-empty ids with http(s) URLs without a trailing slash; `config::with_port` on them
//!   never panics and ends the URL with the port.
//!
//! The agent's modules that need no I/O are compiled in from their source files (`#[path]`), so this
//! target tests the agent's own code without building the whole adapter (kube, TLS, axum).
#![no_main]

#[allow(dead_code)]
#[path = "../../adapter-k8s/src/agent/auth.rs"]
mod auth;
#[allow(dead_code)]
#[path = "../../adapter-k8s/src/agent/clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../../adapter-k8s/src/agent/config.rs"]
mod config;

use arbitrary::Arbitrary;
use base_core::quasar::{
    Envelope, Input, MAX_MESSAGE_BYTES, Message, Node, PersistedState, Timing,
};
use base_core::{Millis, NodeId, Term};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Scenario {
    start: u32,
    persisted_term: u64,
    persisted_vote: Option<u8>,
    steps: Vec<Step>,
    peers_flag: String,
    port: u16,
    times: Vec<u64>,
    key: Vec<u8>,
    previous_key: Option<Vec<u8>>,
    auth: Vec<AuthStep>,
}

#[derive(Arbitrary, Debug)]
enum AuthStep {
    Wait(u16),
    /// A message signed by peer `from` at `now + skew` ms with nonce number `nonce`.
    Signed {
        from: u8,
        skew: i32,
        nonce: u8,
        body: Vec<u8>,
        previous: bool,
        tamper: Tamper,
    },
    /// Any headers at all.
    Raw {
        timestamp: Option<String>,
        nonce: Option<String>,
        mac: Option<String>,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug, PartialEq)]
enum Tamper {
    None,
    FlipMac(u8),
    FlipBody(u16, u8),
    OtherKey,
    UpperNonce,
    /// The timestamp header written differently (`+`, leading zeros, spaces): same number.
    TimestampForm(u8),
    Unsigned,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Wait(u16),
    Tick,
    /// A raw request body.
    Body(Vec<u8>),
    /// A well-formed body with any numbers in it.
    Msg {
        from: u8,
        to: u8,
        msg: FuzzMsg,
    },
    Position(u64),
    Transfer(u8),
    Campaign,
}

#[derive(Arbitrary, Debug)]
enum FuzzMsg {
    PreVote {
        term: u64,
        position: u64,
    },
    PreVoteResponse {
        term: u64,
        granted: bool,
    },
    Vote {
        term: u64,
        position: u64,
        sent_ms: u64,
        transfer_from: Option<u8>,
    },
    VoteResponse {
        term: u64,
        granted: bool,
        sent_ms: u64,
    },
    Heartbeat {
        term: u64,
        sent_ms: u64,
        position: u64,
    },
    HeartbeatAck {
        term: u64,
        ok: bool,
        sent_ms: u64,
        position: u64,
    },
    TimeoutNow {
        term: u64,
    },
}

/// Small numbers near the node's own state are the interesting ones; the top bit picks the far end.
fn num(x: u64, near: u64) -> u64 {
    if x >> 63 == 1 {
        u64::MAX - (x & 0xff)
    } else {
        near.saturating_add(x % 8).saturating_sub(2)
    }
}

impl FuzzMsg {
    fn message(&self, term: Term, now: Millis) -> Message {
        let t = |x: u64| Term(num(x, term.0));
        let ms = |x: u64| Millis(num(x, now.0.saturating_sub(500)).saturating_add(x % 1024));
        match *self {
            FuzzMsg::PreVote { term, position } => Message::PreVote {
                term: t(term),
                position,
                config: Default::default(),
            },
            FuzzMsg::PreVoteResponse { term, granted } => Message::PreVoteResponse {
                term: t(term),
                granted,
                membership: None,
            },
            FuzzMsg::Vote {
                term,
                position,
                sent_ms,
                transfer_from,
            } => Message::Vote {
                term: t(term),
                position,
                sent_ms: ms(sent_ms),
                transfer_from: transfer_from.map(|i| id(i % 4)),
                config: Default::default(),
            },
            FuzzMsg::VoteResponse {
                term,
                granted,
                sent_ms,
            } => Message::VoteResponse {
                term: t(term),
                granted,
                sent_ms: ms(sent_ms),
                membership: None,
            },
            FuzzMsg::Heartbeat {
                term,
                sent_ms,
                position,
            } => Message::Heartbeat {
                term: t(term),
                sent_ms: ms(sent_ms),
                position,
                membership: None,
            },
            FuzzMsg::HeartbeatAck {
                term,
                ok,
                sent_ms,
                position,
            } => Message::HeartbeatAck {
                term: t(term),
                ok,
                sent_ms: ms(sent_ms),
                position,
                config: None,
            },
            FuzzMsg::TimeoutNow { term } => Message::TimeoutNow { term: t(term) },
        }
    }
}

fn id(i: u8) -> NodeId {
    NodeId::new(format!("b-{i}"))
}

/// The handler's checks, in its order: size, JSON, addressee, sender. `Some` is what reaches the node.
fn accept(me: &NodeId, peers: &[NodeId], body: &[u8]) -> Option<(NodeId, Message)> {
    if body.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    let json = serde_json::to_vec(&envelope).expect("an envelope serialises");
    assert_eq!(
        serde_json::from_slice::<Envelope>(&json).ok().as_ref(),
        Some(&envelope)
    );
    if &envelope.to != me || !peers.contains(&envelope.from) {
        return None;
    }
    Some((envelope.from, envelope.msg))
}

fuzz_target!(|s: Scenario| {
    // The timestamps the agent serves.
    for &t in &s.times {
        let t = Millis(t % 253_402_300_800_000);
        let text = clock::format_rfc3339(t);
        assert_eq!(base_core::wire::parse_rfc3339(&text), Ok(t), "{text}");
    }

    // Its peer list.
    if let Ok(peers) = config::parse_peers(&s.peers_flag) {
        assert!(peers.len() <= base_core::quasar::CLUSTER_SIZE_MAX);
        for (i, p) in peers.iter().enumerate() {
            assert!(
                !p.id.as_str().is_empty(),
                "empty id from {:?}",
                s.peers_flag
            );
            assert!(peers[..i].iter().all(|q| q.id != p.id));
            assert!(p.url.starts_with("http://") || p.url.starts_with("https://"));
            assert!(!p.url.ends_with('/'));
        }
    }

    for p in config::parse_peers(&s.peers_flag).unwrap_or_default() {
        if let Ok(url) = config::with_port(&p.url, s.port) {
            assert!(url.ends_with(&format!(":{}", s.port)), "{} → {url}", p.url);
        }
    }
    authentication(&s);

    // Its peer messages, into a node.
    let me = id(0);
    let peers = vec![id(1), id(2)];
    let persisted = PersistedState {
        term: Term(num(s.persisted_term, 0)),
        voted_for: s.persisted_vote.map(|v| id(v % 4)),
        membership: None,
    };
    let mut now = Millis(u64::from(s.start));
    let Ok(mut node) = Node::new(
        me.clone(),
        peers.clone(),
        Timing::default(),
        persisted,
        7,
        now,
    ) else {
        return;
    };
    for step in s.steps.iter().take(256) {
        let input = match step {
            Step::Wait(ms) => {
                now = now.saturating_add(Millis(u64::from(*ms)));
                Input::Tick
            }
            Step::Tick => Input::Tick,
            Step::Body(body) => match accept(&me, &peers, body) {
                Some((from, msg)) => Input::Message { from, msg },
                None => continue,
            },
            Step::Msg { from, to, msg } => {
                let envelope = Envelope {
                    from: id(from % 4),
                    to: id(to % 2),
                    msg: msg.message(node.term(), now),
                };
                let body = serde_json::to_vec(&envelope).expect("an envelope serialises");
                match accept(&me, &peers, &body) {
                    Some((from, msg)) => Input::Message { from, msg },
                    None => continue,
                }
            }
            Step::Position(p) => Input::Position {
                epoch: 0,
                position: *p,
            },
            Step::Transfer(to) => Input::TransferWriter { to: id(to % 4) },
            Step::Campaign => Input::Campaign,
        };
        let _ = node.step(now, input);
        let view = node.writer_view(now);
        assert_eq!(view.term, node.term());
        if node.can_accept_writes(now) {
            assert_eq!(view.writer.as_ref(), Some(&me));
        }
    }
});

fn authentication(s: &Scenario) {
    let key = |k: &[u8]| -> Vec<u8> { k.iter().copied().take(64).collect() };
    let current = key(&s.key);
    if current.is_empty() {
        return;
    }
    let previous = s
        .previous_key
        .as_deref()
        .map(key)
        .filter(|p| !p.is_empty() && *p != current);
    let keys = auth::KeySet {
        current: current.clone(),
        previous: previous.clone(),
    };
    let peer_auth = auth::PeerAuth::new(Some(keys));
    let other_key: Vec<u8> = current.iter().map(|b| b ^ 0x5a).chain([1]).collect();
    let mut now: u64 = 1_700_000_000_000;
    let mut admitted = std::collections::HashSet::new();
    for step in s.auth.iter().take(256) {
        match step {
            AuthStep::Wait(ms) => now += u64::from(*ms) * 16,
            AuthStep::Raw {
                timestamp,
                nonce,
                mac,
                body,
            } => {
                if let Ok(Some(stamp)) = peer_auth.check_mac(
                    timestamp.as_deref(),
                    nonce.as_deref(),
                    mac.as_deref(),
                    body,
                ) {
                    // Only a real MAC gets through: check it independently.
                    let mac = mac.as_deref().unwrap_or_default().trim();
                    let nonce = nonce.as_deref().unwrap_or_default().trim();
                    let signed = |k: &[u8]| {
                        auth::mac_hex(k, stamp.timestamp_ms, nonce, body).eq_ignore_ascii_case(mac)
                    };
                    assert!(
                        signed(&current) || previous.as_deref().is_some_and(signed),
                        "a forged MAC passed"
                    );
                }
            }
            AuthStep::Signed {
                from,
                skew,
                nonce,
                body,
                previous: use_previous,
                tamper,
            } => {
                let from = id(1 + from % 2);
                let ts = now.saturating_add_signed(i64::from(*skew));
                let nonce = format!(
                    "{:032x}",
                    u128::from(*nonce).wrapping_mul(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
                );
                let signing_key = match (tamper, &previous, use_previous) {
                    (Tamper::OtherKey, _, _) => &other_key,
                    (_, Some(p), true) => p,
                    _ => &current,
                };
                let mut mac = auth::mac_hex(signing_key, ts, &nonce, body);
                let mut body = body.clone();
                let mut ts_text = ts.to_string();
                let mut nonce_text = nonce.clone();
                let mut changed = false;
                match tamper {
                    Tamper::None | Tamper::OtherKey => {}
                    Tamper::FlipMac(i) => {
                        let mut bytes = mac.into_bytes();
                        let i = usize::from(*i) % bytes.len();
                        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
                        mac = String::from_utf8(bytes).expect("hex");
                        changed = true;
                    }
                    Tamper::FlipBody(i, x) => {
                        if !body.is_empty() && *x != 0 {
                            let i = usize::from(*i) % body.len();
                            body[i] ^= x;
                            changed = true;
                        }
                    }
                    Tamper::UpperNonce => nonce_text = nonce.to_ascii_uppercase(),
                    Tamper::TimestampForm(f) => {
                        ts_text = match f % 3 {
                            0 => format!("+{ts}"),
                            1 => format!("000{ts}"),
                            _ => format!(" {ts} "),
                        }
                    }
                    Tamper::Unsigned => {}
                }
                let headers = if *tamper == Tamper::Unsigned {
                    (None, None, None)
                } else {
                    (
                        Some(ts_text.as_str()),
                        Some(nonce_text.as_str()),
                        Some(mac.as_str()),
                    )
                };
                let checked = peer_auth.check_mac(headers.0, headers.1, headers.2, &body);
                // Upper-case hex digits in the nonce change the signed bytes: the MAC no longer fits
                // unless the nonce had no letters.
                let nonce_changed = nonce_text != nonce;
                let known_key =
                    *tamper != Tamper::OtherKey || previous.as_ref() == Some(&other_key);
                let genuine =
                    !changed && !nonce_changed && *tamper != Tamper::Unsigned && known_key;
                match &checked {
                    Ok(Some(stamp)) => {
                        assert!(genuine, "{tamper:?} passed check_mac");
                        assert_eq!(stamp.timestamp_ms, ts);
                        assert_eq!(stamp.nonce, nonce);
                        let fresh = peer_auth.check_fresh(&from, stamp, now);
                        if fresh.is_ok() {
                            assert!(
                                ts.abs_diff(now) <= auth::MAX_CLOCK_SKEW_MS,
                                "a stale message passed"
                            );
                            assert!(
                                admitted.insert((from.clone(), ts, nonce.clone())),
                                "a replay passed: {ts} {nonce}"
                            );
                        }
                    }
                    Ok(None) => panic!("keys are set: a message must be checked"),
                    Err(reason) => {
                        assert_eq!(*reason, auth::DropReason::BadMac);
                        assert!(!genuine, "a genuine message was refused: {reason:?}");
                    }
                }
            }
        }
    }
}
