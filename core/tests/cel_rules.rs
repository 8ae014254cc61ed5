//! Every CEL rule (`x-kubernetes-validations`) of the generated CRDs, evaluated with the `cel`
//! crate against valid and invalid samples, and each sample cross-checked against
//! `validate::validate` (the reconciler's own checks).
//!
//! The v1.20 API server the integration tests run drops CEL rules, so without this test nothing
//! would show that README's "refused at admission" holds. What it proves:
//! - every rule in `crdgen::crds()` (all served versions; the same text is `deploy/crd.yaml`, see
//!   the drift test in tests/cli.rs) compiles and uses only functions this test knows to behave as
//!   in Kubernetes: a rule calling anything else fails here until its function is vetted below;
//! - every rule evaluates to `true` on some sample and to `false` on another, so a new rule
//!   without samples fails here;
//! - for each sample, admission as modelled here (the field's schema keywords, the API server's
//!   check of `metadata.name`, and every CEL rule on the way) admits exactly what the sample says,
//!   and `validate` accepts exactly the same samples: the reconciler and admission agree.

use base_core::crd::BaseSpec;
use base_core::crdgen::crds;
use base_core::validate::validate;
use cel::{Context, ExecutionError, Program, ResolveResult, Value};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Functions and operators of the Rust crate whose meaning, for the types the rules apply them
/// to, is that of Kubernetes's CEL (cel-go and its Kubernetes libraries). Anything else a rule
/// calls fails the test: check its semantics, then list it here or register it in `context`.
const VETTED: &[&str] = &[
    "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "_&&_", "_||_", "!_", "_%_", "_+_", "_-_",
    "size",    // characters of a string (as Go's, not bytes), elements of a list
    "matches", // RE2 in Go, the `regex` crate here: the same for the classes and anchors used
];
/// Registered by `context`: Kubernetes has them, the Rust crate (built without `chrono`) does not.
const REGISTERED: &[&str] = &["duration"];

/// Go's `time.ParseDuration`, which cel-go's `duration(string)` is. The `cel` crate's own
/// `duration()` (its `chrono` feature, left off) refuses `+5s` and `µs`, which Kubernetes
/// accepts. A duration is an int of nanoseconds here: the rules only compare durations.
fn go_duration(s: Arc<String>) -> ResolveResult {
    parse_go_duration(&s).map(Value::Int).ok_or_else(|| {
        ExecutionError::function_error("duration", format!("invalid duration {s:?}"))
    })
}

/// A port of Go's `time.ParseDuration` (go/src/time/format.go), independent of
/// `validate::parse_duration_ns` so that the two are checked against each other.
fn parse_go_duration(orig: &str) -> Option<i64> {
    const LIMIT: u64 = 1 << 63;
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut d: u64 = 0;
    while !s.is_empty() {
        let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return None;
        }
        let n = digits(s);
        let mut v: u64 = 0;
        for b in s[..n].bytes() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            if v > LIMIT {
                return None;
            }
        }
        let pre = n > 0;
        s = &s[n..];
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let n = digits(rest);
            // Go stops accumulating digits once they would overflow, and keeps consuming.
            let mut overflow = false;
            for b in rest[..n].bytes() {
                if overflow {
                    continue;
                }
                match f
                    .checked_mul(10)
                    .and_then(|x| x.checked_add(u64::from(b - b'0')))
                {
                    Some(x) if x <= LIMIT => {
                        f = x;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            post = n > 0;
            s = &rest[n..];
        }
        if !pre && !post {
            return None;
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit: u64 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        s = &s[unit_len..];
        if v > LIMIT / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return None;
            }
        }
        d += v;
        if d > LIMIT {
            return None;
        }
    }
    if neg {
        return Some((d as i64).wrapping_neg()); // d ≤ 2^63: -(2^63) is i64::MIN
    }
    i64::try_from(d).ok()
}

/// The context a rule is evaluated in: the standard library, the registered functions, `self`.
fn context(this: Value) -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_function("duration", go_duration)
        .expect("duration() is not in the crate's standard library without chrono");
    ctx.add_variable_from_value("self", this);
    ctx
}

/// JSON as the API server hands it to CEL: integers are `int`, other numbers `double`.
fn to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Json::Object(o) => {
            let m: HashMap<String, Value> = o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Value::from(m)
        }
    }
}

/// One rule where it sits: `served` names the CRD and version, `at` the schema node (`spec.replicas`,
/// `` for the object itself; `[]` steps into items, `{}` into additionalProperties).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RuleAt {
    served: String,
    at: String,
    rule: String,
}

/// Each served version's `openAPIV3Schema`, named `Kind/version`.
fn served_schemas() -> Vec<(String, String, Json)> {
    let mut out = Vec::new();
    for crd in crds() {
        for version in &crd.spec.versions {
            let schema = serde_json::to_value(&version.schema).expect("schema serialises");
            let root = schema["openAPIV3Schema"].clone();
            assert!(
                root.is_object(),
                "{} {}: no schema",
                crd.spec.names.kind,
                version.name
            );
            let api_version = format!("{}/{}", crd.spec.group, version.name);
            out.push((crd.spec.names.kind.clone(), api_version, root));
        }
    }
    assert_eq!(out.len(), 3, "Base v1, BaseApp v1 and v1alpha1");
    out
}

/// Every rule anywhere in `schema`, found by walking all of it (not only where samples go).
fn all_rules(served: &str, at: &str, schema: &Json, out: &mut Vec<(RuleAt, String)>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    for (key, sub) in obj {
        match key.as_str() {
            "x-kubernetes-validations" => {
                for r in sub.as_array().expect("x-kubernetes-validations is a list") {
                    let rule = r["rule"].as_str().expect("a rule has a `rule`").to_string();
                    let message = r["message"].as_str().unwrap_or_default().to_string();
                    assert!(
                        !message.is_empty(),
                        "{served} {at}: rule {rule:?} has no message"
                    );
                    let at = at.to_string();
                    let served = served.to_string();
                    out.push((RuleAt { served, at, rule }, message));
                }
            }
            "properties" => {
                for (name, s) in sub.as_object().expect("properties is a map") {
                    let at = if at.is_empty() {
                        name.clone()
                    } else {
                        format!("{at}.{name}")
                    };
                    all_rules(served, &at, s, out);
                }
            }
            "items" => all_rules(served, &format!("{at}[]"), sub, out),
            "additionalProperties" => all_rules(served, &format!("{at}{{}}"), sub, out),
            other => match sub {
                Json::Array(list) => {
                    for s in list {
                        all_rules(served, &format!("{at}<{other}>"), s, out);
                    }
                }
                Json::Object(_) => all_rules(served, &format!("{at}<{other}>"), sub, out),
                _ => {}
            },
        }
    }
}

/// What each rule evaluated to over the samples: (seen `true`, seen `false`).
type Outcomes = BTreeMap<RuleAt, (bool, bool)>;

/// Admission of `value` by `schema` as the API server does it for the keywords this CRD uses on
/// the nodes the samples reach; every CEL rule on the way is evaluated (an evaluation error
/// refuses, as in Kubernetes). Returns the reasons for refusal.
fn admit(
    served: &str,
    at: &str,
    schema: &Json,
    value: &Json,
    outcomes: &mut Outcomes,
) -> Vec<String> {
    let mut errs = Vec::new();
    let obj = schema.as_object().expect("a schema is an object");
    if value.is_null() && obj.get("nullable") == Some(&Json::Bool(true)) {
        return errs;
    }
    for (key, k) in obj {
        match key.as_str() {
            // Documentation, defaults (applied before the samples: every sample sets its field)
            // and int32/int64 formats (not enforced on integers by the API server).
            "description" | "title" | "default" | "format" | "nullable" => {}
            "type" => {
                let ok = match k.as_str() {
                    Some("object") => value.is_object(),
                    Some("array") => value.is_array(),
                    Some("string") => value.is_string(),
                    Some("integer") => value.is_i64() || value.is_u64(),
                    Some("number") => value.is_number(),
                    Some("boolean") => value.is_boolean(),
                    t => panic!("{served} {at}: type {t:?} not modelled"),
                };
                if !ok {
                    errs.push(format!("{at}: not of type {k}"));
                }
            }
            "pattern" => {
                let re =
                    regex::Regex::new(k.as_str().expect("a pattern")).expect("pattern compiles");
                if let Some(s) = value.as_str()
                    && !re.is_match(s)
                {
                    errs.push(format!("{at}: {s:?} does not match {re}"));
                }
            }
            "maxLength" | "minLength" => {
                let bound = k.as_u64().expect("a length");
                if let Some(s) = value.as_str() {
                    let n = s.chars().count() as u64;
                    if (key == "maxLength" && n > bound) || (key == "minLength" && n < bound) {
                        errs.push(format!("{at}: length {n} breaks {key} {bound}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                let bound = k.as_f64().expect("a number");
                if let Some(n) = value.as_f64()
                    && ((key == "minimum" && n < bound) || (key == "maximum" && n > bound))
                {
                    errs.push(format!("{at}: {n} breaks {key} {bound}"));
                }
            }
            "enum" => {
                if !k.as_array().expect("enum is a list").contains(value) {
                    errs.push(format!("{at}: {value} not in {k}"));
                }
            }
            "required" => {
                for name in k.as_array().expect("required is a list") {
                    let name = name.as_str().expect("a field name");
                    if value.get(name).is_none() {
                        errs.push(format!("{at}: {name} is required"));
                    }
                }
            }
            "properties" => {
                let props = k.as_object().expect("properties is a map");
                if let Some(fields) = value.as_object() {
                    // Unknown fields are pruned, not refused.
                    for (name, v) in fields {
                        if let Some(s) = props.get(name) {
                            let at = if at.is_empty() {
                                name.clone()
                            } else {
                                format!("{at}.{name}")
                            };
                            errs.extend(admit(served, &at, s, v, outcomes));
                        }
                    }
                }
            }
            "items" => {
                for v in value.as_array().into_iter().flatten() {
                    errs.extend(admit(served, &format!("{at}[]"), k, v, outcomes));
                }
            }
            "x-kubernetes-validations" => {
                for r in k.as_array().expect("a list of rules") {
                    let rule = r["rule"].as_str().expect("a rule").to_string();
                    let program = Program::compile(&rule).expect("checked by the test");
                    let result = program.execute(&context(to_cel(value)));
                    let key = RuleAt {
                        served: served.into(),
                        at: at.into(),
                        rule: rule.clone(),
                    };
                    let seen = outcomes.entry(key).or_default();
                    match result {
                        Ok(Value::Bool(true)) => seen.0 = true,
                        Ok(Value::Bool(false)) => {
                            seen.1 = true;
                            errs.push(format!("{at}: {} ({rule})", r["message"]));
                        }
                        other => errs.push(format!("{at}: rule {rule:?} on {value}: {other:?}")),
                    }
                }
            }
            other => panic!(
                "{served} {at}: schema keyword {other:?} not modelled here: model it before a sample reaches it"
            ),
        }
    }
    errs
}

/// The API server's own check of a custom object's name (apimachinery `IsDNS1123Subdomain`),
/// which the schema does not carry.
fn name_admitted(name: &str) -> bool {
    let re =
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("regex compiles");
    name.len() <= 253 && re.is_match(name)
}

/// A field, a value for it, and whether Kubernetes admits the object (written by hand from the
/// README and the field's documentation, not from either implementation).
struct Sample {
    field: &'static str,
    value: Json,
    admitted: bool,
}

fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    let mut add = |field, values: &[(Json, bool)]| {
        for (value, admitted) in values {
            out.push(Sample {
                field,
                value: value.clone(),
                admitted: *admitted,
            });
        }
    };
    add(
        "spec.replicas",
        &[
            (json!(1), true),
            (json!(3), true),
            (json!(5), true),
            (json!(9), true),
            (json!(2), false),
            (json!(4), false),
            (json!(8), false),
            (json!(0), false),
            (json!(-1), false),
            (json!(10), false),
            (json!(11), false),
        ],
    );
    let durations = |floor_ok: bool| {
        vec![
            (json!("1s"), true),
            (json!("100ms"), true),
            (json!("0.1s"), true),
            (json!(".5s"), true),
            (json!("1.s"), true),
            (json!("+100ms"), true),
            (json!("1m30s"), true),
            (json!("1h"), true),
            (json!("100000us"), true),
            (json!("100000\u{b5}s"), true),
            (json!("100000\u{3bc}s"), true),
            (json!("99ms"), floor_ok),
            (json!("99.999999ms"), floor_ok),
            (json!("1ns"), floor_ok),
            (json!("0"), floor_ok),
            (json!("0s"), floor_ok),
            (json!("-0"), floor_ok),
            (json!("-1ns"), false),
            (json!("-1s"), false),
            (json!("100"), false),
            (json!("fast"), false),
            (json!("1e3ms"), false),
            (json!("1d"), false),
            (json!("1 s"), false),
            (json!(""), false),
            (json!("99999999999999999h"), false),
        ]
    };
    add("spec.gateway.leaderPollInterval", &durations(false));
    add("spec.gateway.readYourWritesTTL", &durations(true));
    add(
        "metadata.name",
        &[
            (json!("my-app"), true),
            (json!("a"), true),
            (json!("a1"), true),
            (json!("a".repeat(52)), true),
            (json!("a".repeat(53)), false),
            (json!("1app"), false),
            (json!("a.b"), false),
            (json!("my-app."), false),
            (json!("My-app"), false),
            (json!("app-"), false),
            (json!("-app"), false),
            (json!("a_b"), false),
            (json!(""), false),
        ],
    );
    out
}

/// A valid object of `kind` with `field` set to `value`.
fn object(kind: &str, api_version: &str, field: &str, value: &Json) -> Json {
    let mut obj = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "my-app"},
        "spec": {
            "image": {"repository": "ghcr.io/hanzoai/base"},
            "storage": {"size": "1Gi"},
        },
    });
    let mut at = &mut obj;
    let steps: Vec<&str> = field.split('.').collect();
    for step in &steps[..steps.len() - 1] {
        if at[*step].is_null() {
            at[*step] = json!({});
        }
        at = &mut at[*step];
    }
    at[steps[steps.len() - 1]] = value.clone();
    obj
}

#[test]
fn go_durations_parse_as_go_does() {
    // Go's own examples and edge cases (time/time_test.go parseDurationTests).
    for (s, ns) in [
        ("0", 0),
        ("5s", 5_000_000_000),
        ("30s", 30_000_000_000),
        ("1478s", 1_478_000_000_000),
        ("-5s", -5_000_000_000),
        ("+5s", 5_000_000_000),
        ("-0", 0),
        ("+0", 0),
        ("5.0s", 5_000_000_000),
        ("5.6s", 5_600_000_000),
        ("5.s", 5_000_000_000),
        (".5s", 500_000_000),
        ("1.004s", 1_004_000_000),
        ("100.00100s", 100_001_000_000),
        ("10ns", 10),
        ("11us", 11_000),
        ("12\u{b5}s", 12_000),
        ("12\u{3bc}s", 12_000),
        ("13ms", 13_000_000),
        ("14s", 14_000_000_000),
        ("15m", 900_000_000_000),
        ("16h", 57_600_000_000_000),
        ("3h30m", 12_600_000_000_000),
        ("10.5s4m", 250_500_000_000),
        ("-2m3.4s", -123_400_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("39h9m14.425s", 140_954_425_000_000),
        ("52763797000ns", 52_763_797_000),
        ("0.3333333333333333333h", 1_200_000_000_000),
        ("9007199254740993ns", 9_007_199_254_740_993),
        ("9223372036854775807ns", i64::MAX),
        ("9223372036854775.807us", i64::MAX),
        ("-9223372036854775808ns", i64::MIN),
        ("0.100000000000000000000h", 360_000_000_000),
    ] {
        assert_eq!(parse_go_duration(s), Some(ns), "{s}");
    }
    for s in [
        "",
        "3",
        "-",
        "s",
        ".",
        "-.",
        ".s",
        "+.s",
        "1d",
        "\u{85}\u{85}",
        "9223372036854775810ns",
        "9223372036854775808ns",
        "-9223372036854775809ns",
        "3000000h",
    ] {
        assert_eq!(parse_go_duration(s), None, "{s:?}");
    }
}

/// The test's proof of power: rules and samples found and run, both outcomes of every rule seen,
/// and admission, the hand-written verdict and `validate` in agreement on every sample.
#[test]
fn every_cel_rule_is_evaluated_and_agrees_with_the_reconciler() {
    let served = served_schemas();
    let mut rules = Vec::new();
    for (kind, api_version, schema) in &served {
        all_rules(&format!("{kind} {api_version}"), "", schema, &mut rules);
    }
    assert!(rules.len() >= 3 * 4, "found only {rules:?}");
    for (r, _) in &rules {
        let program = Program::compile(&r.rule).unwrap_or_else(|e| {
            panic!("{} {}: {:?} does not compile: {e}", r.served, r.at, r.rule)
        });
        let refs = program.references();
        for f in refs.functions() {
            assert!(
                VETTED.contains(&f) || REGISTERED.contains(&f),
                "{} {}: rule {:?} calls {f}, which this test does not know to behave as in \
                 Kubernetes: vet it (VETTED) or register an equivalent (`context`)",
                r.served,
                r.at,
                r.rule
            );
        }
        for v in refs.variables() {
            assert_eq!(
                v, "self",
                "{} {}: rule {:?} reads {v} (oldSelf: transition rules are not modelled)",
                r.served, r.at, r.rule
            );
        }
    }

    let mut outcomes = Outcomes::new();
    let mut failures = Vec::new();
    for sample in samples() {
        for (kind, api_version, schema) in &served {
            let obj = object(kind, api_version, sample.field, &sample.value);
            let mut why = admit(
                &format!("{kind} {api_version}"),
                "",
                schema,
                &obj,
                &mut outcomes,
            );
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if !name_admitted(name) {
                why.push(format!("metadata.name: {name:?} is not a DNS subdomain"));
            }
            let admitted = why.is_empty();
            let spec: BaseSpec = serde_json::from_value(obj["spec"].clone()).unwrap_or_else(|e| {
                panic!("{} = {}: not a BaseSpec: {e}", sample.field, sample.value)
            });
            let reconciler = match validate(name, &spec) {
                Ok(_) => Vec::new(),
                Err(e) => e.0,
            };
            assert!(
                reconciler.iter().all(|e| e.field == sample.field),
                "{} = {}: validate names another field: {reconciler:?}",
                sample.field,
                sample.value
            );
            let accepted = reconciler.is_empty();
            if admitted != sample.admitted || accepted != sample.admitted {
                failures.push(format!(
                    "{kind} {api_version} {} = {}: expected {}, admission {} {why:?}, validate {} {reconciler:?}",
                    sample.field,
                    sample.value,
                    verdict(sample.admitted),
                    verdict(admitted),
                    verdict(accepted),
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "admission and the reconciler disagree:\n{}",
        failures.join("\n")
    );

    for (r, message) in &rules {
        let (t, f) = outcomes.get(r).copied().unwrap_or_default();
        assert!(
            t && f,
            "{} {}: rule {:?} ({message}) was {} on the samples: add samples it admits and refuses",
            r.served,
            r.at,
            r.rule,
            match (t, f) {
                (false, false) => "never evaluated",
                (true, false) => "never false",
                _ => "never true",
            }
        );
    }
    assert_eq!(
        outcomes.len(),
        rules.len(),
        "a rule was evaluated that the walk did not find"
    );
}

fn verdict(admitted: bool) -> &'static str {
    if admitted { "admitted" } else { "refused" }
}
