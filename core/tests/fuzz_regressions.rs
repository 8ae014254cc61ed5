//! Inputs the fuzz targets in `fuzz/` found (see fuzz/README.md), kept as ordinary tests so that
//! `cargo test` guards the fixes without a fuzzer.

use base_core::manifest::{self, ManifestError};
use base_core::reconcile::{Observed, plan_for};

/// `base_cr`: a manifest's `metadata.namespace` went unchecked into every planned object (and
/// into the peers' DNS names), so `render` printed objects no API server accepts.
#[test]
fn base_cr_invalid_namespace_is_refused() {
    let doc = |ns: &str| {
        format!(
            "apiVersion: hanzo.ai/v1\nkind: Base\nmetadata: {{name: a, namespace: {ns:?}}}\nspec:\n  image: {{repository: x}}\n  storage: {{size: 1Gi}}\n"
        )
    };
    for bad in ["Bad Namespace", "a.b", "-a", "a-", "", &"a".repeat(64)] {
        match manifest::parse(&doc(bad)) {
            Err(ManifestError::Field(m)) => assert!(m.contains("metadata.namespace"), "{m}"),
            other => panic!("namespace {bad:?}: {other:?}"),
        }
    }
    for good in ["hanzo", "1team", "a-b-0", &"a".repeat(63)] {
        let (kind, base) = manifest::parse(&doc(good)).expect(good);
        let plan = plan_for(kind, &base, &Observed::default());
        assert!(!plan.desired.is_empty());
        assert!(plan.desired.iter().all(|o| o.namespace == good));
    }
}

/// `agent`: one peer message with a term near `u64::MAX` made the node adopt it; its next
/// election timeout then overflowed `term + 1` (a panic, or a term going back to 0 in release).
/// Such terms are now dropped, and a node whose persisted term has no room left stays a follower.
#[test]
fn agent_huge_term_from_a_peer_is_dropped() {
    use base_core::quasar::node::TERM_MAX;
    use base_core::quasar::{Effect, Input, Message, Node, PersistedState, Role, Timing};
    use base_core::{Millis, NodeId, Term};

    let peers = || vec![NodeId::from("b-1"), NodeId::from("b-2")];
    let mut node = Node::new(
        NodeId::from("b-0"),
        peers(),
        Timing::default(),
        PersistedState::default(),
        1,
        Millis(0),
    )
    .expect("a node");
    for term in [u64::MAX, TERM_MAX.0 + 1] {
        let heartbeat = Message::Heartbeat {
            term: Term(term),
            sent_ms: Millis(0),
            position: 0,
            membership: None,
        };
        let _ = node.step(
            Millis(10),
            Input::Message {
                from: NodeId::from("b-1"),
                msg: heartbeat,
            },
        );
        assert_eq!(node.term(), Term(0));
    }
    assert_eq!(node.drops().bad_term, 2);
    let mut pre_votes = 0;
    for t in (100..10_000).step_by(100) {
        for e in node.step(Millis(t), Input::Tick) {
            if let Effect::Send {
                msg: Message::PreVote { term, .. },
                ..
            } = e
            {
                assert_eq!(term, Term(1));
                pre_votes += 1;
            }
        }
    }
    assert!(pre_votes > 0, "the node still campaigns");

    // A corrupt state file with no term left: no panic, no campaign, no writer.
    let persisted = PersistedState {
        term: Term(u64::MAX),
        voted_for: None,
        membership: None,
    };
    let mut node = Node::new(
        NodeId::from("b-0"),
        peers(),
        Timing::default(),
        persisted,
        1,
        Millis(0),
    )
    .expect("a node");
    for t in (0..10_000).step_by(100) {
        let _ = node.step(Millis(t), Input::Tick);
        let _ = node.step(Millis(t), Input::Campaign);
    }
    assert_eq!(node.term(), Term(u64::MAX));
    assert_eq!(node.role(), Role::Follower);
    let single = PersistedState {
        term: Term(u64::MAX),
        voted_for: None,
        membership: None,
    };
    let mut alone = Node::new(
        NodeId::from("b-0"),
        vec![],
        Timing::default(),
        single,
        1,
        Millis(0),
    )
    .expect("a node");
    for t in (0..10_000).step_by(100) {
        let _ = alone.step(Millis(t), Input::Tick);
    }
    assert_eq!(alone.role(), Role::Follower);
}

/// `wire`: `parse_quantity("0e233333")` was NaN and `1e400` infinite, both accepted (an infinite
/// storage size passed validation as "greater than zero").
#[test]
fn wire_quantities_are_finite() {
    use base_core::validate::parse_quantity;
    for huge in [
        "0e233333",
        "1e400",
        "1E309",
        &"9".repeat(400),
        &format!("{}Ei", "9".repeat(300)),
    ] {
        let r = parse_quantity(huge);
        assert!(
            r.as_ref().is_err_and(|e| e.contains("too large")),
            "{huge}: {r:?}"
        );
    }
    assert!(parse_quantity("1e308").is_ok_and(f64::is_finite));
    assert_eq!(parse_quantity("0e10"), Ok(0.0));
}

/// `base_cr`: `spec.partOf: "hanz."` passed validation, and every object got the label
/// `app.kubernetes.io/part-of=hanz.`, which the API server refuses (a label value must begin and
/// end with a letter or digit).
#[test]
fn base_cr_part_of_must_be_a_label_value() {
    use base_core::validate::validate;
    let doc = |p: &str| {
        format!(
            "apiVersion: hanzo.ai/v1\nkind: Base\nmetadata: {{name: a}}\nspec:\n  image: {{repository: x}}\n  storage: {{size: 1Gi}}\n  partOf: {p:?}\n"
        )
    };
    for bad in ["hanz.", ".hanzo", "-a", "a_", "a b"] {
        let (_, base) = manifest::parse(&doc(bad)).expect(bad);
        let err = validate("a", &base.spec).expect_err(bad);
        assert!(
            err.0.iter().any(|e| e.field == "spec.partOf"),
            "{bad}: {err}"
        );
    }
    for good in ["hanzo", "a.b_c-d", "A1", "x"] {
        let (_, base) = manifest::parse(&doc(good)).expect(good);
        assert!(validate("a", &base.spec).is_ok(), "{good}");
    }
}
