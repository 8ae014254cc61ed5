//! "Does the cluster already hold what we want?" A desired object matches an observed one when every
//! field we set has the same value there. Fields the API server adds (defaults, status, metadata it
//! owns) are ignored, so an unchanged world compares equal and costs zero API writes.

use serde_json::Value;

/// True when `desired` is contained in `observed`: objects field by field (recursively), arrays
/// element by element with equal lengths, scalars by value. Null in `desired` means "absent".
pub fn is_subset(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => {
            // Both maps iterate in key order, so a merge walk finds each key with one or two
            // comparisons instead of a tree search; a miss is confirmed with `get`, which keeps
            // this right in any map order.
            let mut walk = o.iter();
            let mut next = walk.next();
            d.iter().all(|(k, dv)| {
                let found = loop {
                    match next {
                        Some((ok, ov)) if ok == k => {
                            next = walk.next();
                            break Some(ov);
                        }
                        Some((ok, _)) if ok < k => next = walk.next(),
                        _ => break o.get(k),
                    }
                };
                match (dv, found) {
                    // Most fields are strings: compared here, without a call per leaf.
                    (Value::String(d), Some(Value::String(o))) => d == o,
                    (_, Some(ov)) => is_subset(dv, ov),
                    (_, None) => dv.is_null() || is_empty_collection(dv),
                }
            })
        }
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| is_subset(dv, ov))
        }
        (Value::Null, Value::Null) => true,
        (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
        (d, o) => d == o,
    }
}

/// The API server drops empty maps and lists, so wanting one is satisfied by its absence.
fn is_empty_collection(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen};
    use serde_json::json;

    #[test]
    fn server_defaults_are_ignored() {
        let d = json!({"spec": {"ports": [{"port": 80}]}, "metadata": {"labels": {"a": "b"}}});
        let o = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
                       "metadata": {"labels": {"a": "b"}, "resourceVersion": "7"}, "status": {}});
        assert!(is_subset(&d, &o));
    }

    #[test]
    fn changes_are_seen() {
        let o = json!({"spec": {"ports": [{"port": 80}], "replicas": 3}});
        assert!(!is_subset(&json!({"spec": {"replicas": 5}}), &o));
        assert!(!is_subset(
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
            &o
        ));
        assert!(!is_subset(&json!({"spec": {"selector": {"x": "y"}}}), &o));
        assert!(is_subset(&json!({"spec": {"selector": {}}}), &o));
    }

    /// The definition, with a tree search per key: the merge walk must agree with it.
    fn reference(desired: &Value, observed: &Value) -> bool {
        match (desired, observed) {
            (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| match o.get(k) {
                Some(ov) => reference(dv, ov),
                None => dv.is_null() || is_empty_collection(dv),
            }),
            (Value::Array(d), Value::Array(o)) => {
                d.len() == o.len() && d.iter().zip(o).all(|(dv, ov)| reference(dv, ov))
            }
            (Value::Null, Value::Null) => true,
            (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
            (d, o) => d == o,
        }
    }

    /// A desired value and an observed one, often the desired one with fields added or changed.
    #[derive(Clone, Debug)]
    struct Pair(Value, Value);

    const KEYS: [&str; 6] = ["", "a", "ab", "b", "ba", "c"];

    fn value(g: &mut Gen, depth: u32) -> Value {
        match u8::arbitrary(g) % if depth == 0 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(bool::arbitrary(g)),
            2 => json!(u8::arbitrary(g) % 3),
            3 => json!(f64::from(u8::arbitrary(g) % 3)),
            4 => json!(g.choose(&["", "x", "y"]).copied()),
            5 => Value::Array(
                (0..u8::arbitrary(g) % 3)
                    .map(|_| value(g, depth - 1))
                    .collect(),
            ),
            _ => {
                let mut m = serde_json::Map::new();
                for k in KEYS {
                    if bool::arbitrary(g) {
                        m.insert(k.to_string(), value(g, depth - 1));
                    }
                }
                Value::Object(m)
            }
        }
    }

    fn mutate(g: &mut Gen, v: &Value, depth: u32) -> Value {
        match (v, u8::arbitrary(g) % 8) {
            (_, 0) => value(g, depth),
            (Value::Object(m), _) => {
                let mut m: serde_json::Map<String, Value> = m
                    .iter()
                    .map(|(k, v)| (k.clone(), mutate(g, v, depth.saturating_sub(1))))
                    .collect();
                for k in KEYS {
                    if u8::arbitrary(g) % 4 == 0 {
                        m.insert(k.to_string(), value(g, depth.saturating_sub(1)));
                    }
                }
                Value::Object(m)
            }
            (Value::Array(a), _) => a
                .iter()
                .map(|v| mutate(g, v, depth.saturating_sub(1)))
                .collect(),
            (v, _) => v.clone(),
        }
    }

    impl Arbitrary for Pair {
        fn arbitrary(g: &mut Gen) -> Self {
            let d = value(g, 3);
            let o = if bool::arbitrary(g) {
                mutate(g, &d, 3)
            } else {
                value(g, 3)
            };
            Pair(d, o)
        }
    }

    #[test]
    fn agrees_with_the_definition() {
        fn prop(Pair(d, o): Pair) -> bool {
            is_subset(&d, &o) == reference(&d, &o) && is_subset(&d, &d)
        }
        quickcheck::QuickCheck::new()
            .tests(5000)
            .quickcheck(prop as fn(Pair) -> bool);
    }
}
