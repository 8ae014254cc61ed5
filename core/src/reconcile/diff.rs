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
}
