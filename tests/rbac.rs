//! deploy/rbac.yaml grants exactly the API calls the operator's code makes (controller::rbac).

use base_adapter_k8s::controller::rbac::{CLUSTER_CALLS, NAMESPACE_CALLS};
use serde_json::Value;
use std::collections::BTreeSet;

type Grants = BTreeSet<(String, String, String)>;

fn table(calls: &[(&str, &str, &[&str])]) -> Grants {
    calls
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

fn grants(doc: &Value) -> Grants {
    let mut out = Grants::new();
    for rule in doc["rules"].as_array().into_iter().flatten() {
        let strs = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        };
        for g in strs("apiGroups") {
            for r in strs("resources") {
                for v in strs("verbs") {
                    assert!(
                        g != "*" && r != "*" && v != "*",
                        "wildcards are not least privilege"
                    );
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_yaml_grants_exactly_what_the_code_calls() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml"))
        .unwrap();
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let role = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} missing"))
    };
    assert_eq!(
        grants(role("ClusterRole")),
        table(CLUSTER_CALLS),
        "ClusterRole differs from controller::rbac"
    );
    assert_eq!(
        grants(role("Role")),
        table(NAMESPACE_CALLS),
        "Role differs from controller::rbac"
    );
}
