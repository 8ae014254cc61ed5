//! The CustomResourceDefinitions, generated from the Rust types. `deploy/crd.yaml` is this output,
//! checked in; a test fails when the two drift apart.

use crate::crd::{Base, BaseApp, LEGACY_VERSION};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// `bases.hanzo.ai`, then `baseapps.hanzo.ai`, whose legacy objects are also served at `v1alpha1`
/// (same schema, so no conversion webhook is needed: the API server only relabels the version).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut legacy = BaseApp::crd();
    if let Some(v1) = legacy.spec.versions.first().cloned() {
        let mut alpha = v1;
        alpha.name = LEGACY_VERSION.to_string();
        alpha.storage = false;
        alpha.deprecated = Some(true);
        alpha.deprecation_warning =
            Some("hanzo.ai/v1alpha1 BaseApp is deprecated; use hanzo.ai/v1 Base".to_string());
        legacy.spec.versions.push(alpha);
    }
    vec![Base::crd(), legacy]
}

/// The CRDs as multi-document YAML, exactly as `base-operator crd` prints them.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BaseSpec;
    use crate::validate::validate;
    use serde_json::{Value, json};

    /// Names, in and out of every shape the name-like fields take: trailing, leading and doubled
    /// dots, edge characters, case, and the length limits (63 per label, 253 in all).
    fn samples() -> Vec<String> {
        let mut v: Vec<String> = [
            "foo",
            "foo.",
            ".foo",
            ".",
            "",
            "foo.bar",
            "foo..bar",
            "foo.bar.",
            "my-app",
            "my-app.",
            "do-block-storage",
            "app-my-app",
            "gateway",
            "hanzo",
            "a",
            "1",
            "1app",
            "-foo",
            "foo-",
            "foo.-bar",
            "foo-.bar",
            "Foo",
            "FOO",
            "foo_bar",
            "foo_",
            "_foo",
            "Foo.Bar_baz-1",
            "foo bar",
            "foo\n",
            "foo/bar",
            "héllo",
            "a.b.c.d",
            "0.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [52, 53, 62, 63, 64] {
            v.push("a".repeat(n));
            v.push(format!("{}.b", "a".repeat(n)));
            v.push(format!("{}.", "a".repeat(n)));
        }
        let label = "a".repeat(63);
        let joined = |k: usize| vec![label.as_str(); k].join(".");
        v.push(format!("{}.{}", joined(3), "a".repeat(61))); // 253
        v.push(format!("{}.{}", joined(3), "a".repeat(62))); // 254
        v.push(format!("{}.", joined(3)));
        v
    }

    /// The schema of `spec.<path>` (`[]` steps into list items), for every served version.
    fn schemas(path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for crd in crds() {
            for version in &crd.spec.versions {
                let root = serde_json::to_value(&version.schema).unwrap();
                let mut s = &root["openAPIV3Schema"]["properties"]["spec"];
                for step in path.split('.') {
                    let (name, items) = match step.strip_suffix("[]") {
                        Some(n) => (n, true),
                        None => (step, false),
                    };
                    s = &s["properties"][name];
                    if items {
                        s = &s["items"];
                    }
                }
                assert!(
                    s.is_object(),
                    "{} {}: no schema for spec.{path}",
                    crd.spec.names.kind,
                    version.name
                );
                out.push(s.clone());
            }
        }
        assert_eq!(out.len(), 3, "Base v1, BaseApp v1 and v1alpha1");
        out
    }

    /// What the API server does with a string and the schema of its field: `pattern` (Go regexp,
    /// unanchored, as the Rust crate also matches) and `maxLength` (in characters).
    fn admission(schema: &Value) -> impl Fn(&str) -> bool + use<> {
        let pattern = schema["pattern"].as_str().expect("a pattern");
        let re = regex::Regex::new(pattern).unwrap();
        let max = schema["maxLength"].as_u64();
        move |s| re.is_match(s) && max.is_none_or(|max| s.chars().count() as u64 <= max)
    }

    /// Sets `spec.<path>` to `value` in an otherwise valid spec; for a path through a list, the
    /// list holds one element with the other required fields.
    fn spec_with(path: &str, value: &str) -> BaseSpec {
        let mut spec = json!({
            "image": {"repository": "ghcr.io/hanzoai/base"},
            "storage": {"size": "1Gi"},
            "kmsSecrets": [{
                "projectSlug": "p", "envSlug": "e", "secretsPath": "/",
                "credentialsRef": {"name": "creds"}, "managedSecretName": "managed"
            }],
            "imagePullSecrets": [{"name": "pull"}],
            "gateway": {},
        });
        let mut at = &mut spec;
        let steps: Vec<&str> = path.split('.').collect();
        for (i, step) in steps.iter().enumerate() {
            let (name, items) = match step.strip_suffix("[]") {
                Some(n) => (n, true),
                None => (*step, false),
            };
            if i + 1 == steps.len() {
                at[name] = json!(value);
                break;
            }
            at = &mut at[name];
            if items {
                at = &mut at[0];
            } else if at.is_null() {
                *at = json!({});
            }
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn name_fields_are_admitted_exactly_when_the_reconciler_accepts_them() {
        let fields = [
            ("partOf", "spec.partOf"),
            ("serviceAccountName", "spec.serviceAccountName"),
            ("storage.storageClassName", "spec.storage.storageClassName"),
            ("imagePullSecrets[].name", "spec.imagePullSecrets[0].name"),
            ("gateway.gatewayName", "spec.gateway.gatewayName"),
            ("gateway.gatewayNamespace", "spec.gateway.gatewayNamespace"),
            (
                "kmsSecrets[].managedSecretName",
                "spec.kmsSecrets[0].managedSecretName",
            ),
            (
                "kmsSecrets[].credentialsRef.name",
                "spec.kmsSecrets[0].credentialsRef.name",
            ),
        ];
        for (path, field) in fields {
            let admitted: Vec<_> = schemas(path).iter().map(admission).collect();
            for s in samples() {
                let errors = match validate("my-app", &spec_with(path, &s)) {
                    Ok(_) => Vec::new(),
                    Err(e) => e.0,
                };
                assert!(
                    errors.iter().all(|e| e.field == field),
                    "{path} = {s:?} broke another rule: {errors:?}"
                );
                let accepted = errors.is_empty();
                for admits in &admitted {
                    assert_eq!(
                        admits(&s),
                        accepted,
                        "spec.{path} = {s:?}: admission and the reconciler disagree"
                    );
                }
            }
        }
        let part_of = admission(&schemas("partOf")[0]);
        assert!(!part_of("foo.") && part_of("foo.bar") && part_of("Foo_1"));
    }
}
