//! Validation of a Base spec, the same rules the CRD enforces at admission (schema + CEL), checked
//! again because an object may have been admitted by an older CRD. Every error names its field.

use crate::crd::{BaseSpec, DEFAULT_LEADER_POLL_INTERVAL, DEFAULT_READ_YOUR_WRITES_TTL};
use std::fmt;

/// Longest Base name: the StatefulSet's controller-revision-hash label (`<name>-<10 chars>`) must
/// stay a valid 63-character label value.
pub const MAX_NAME_LEN: usize = 52;
pub const MIN_LEADER_POLL_INTERVAL_MS: i64 = 100;
pub const MAX_REPLICAS: i32 = 9;
/// Inline DDL goes into a ConfigMap, which the API server caps at 1 MiB; keep room for metadata.
pub const MAX_INLINE_SCHEMA_BYTES: usize = 900 * 1024;

/// One rule a spec breaks, with the field that breaks it (`spec.replicas`, `spec.gateway.route`, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every rule a spec breaks, in field order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec(pub Vec<FieldError>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid Base: {}", parts.join("; "))
    }
}

/// Durations the reconciler uses, parsed once validation passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayTimings {
    pub leader_poll_interval_ms: u64,
    pub read_your_writes_ttl_ms: u64,
}

/// Checks the object's name and spec. `Ok` means every later step may rely on the rules below.
pub fn validate(name: &str, spec: &BaseSpec) -> Result<GatewayTimings, InvalidSpec> {
    let mut errs = Vec::new();
    if let Err(m) = check_dns_label(name, MAX_NAME_LEN) {
        errs.push(FieldError::new("metadata.name", m));
    }
    if spec.image.repository.trim().is_empty() {
        errs.push(FieldError::new(
            "spec.image.repository",
            "must not be empty",
        ));
    } else if spec.image.repository.chars().any(char::is_whitespace) {
        errs.push(FieldError::new(
            "spec.image.repository",
            "must not contain whitespace",
        ));
    }
    if let Some(tag) = &spec.image.tag
        && (tag.is_empty()
            || tag.len() > 128
            || tag
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))))
    {
        errs.push(FieldError::new(
            "spec.image.tag",
            format!("{tag:?} is not a valid image tag (1-128 of [A-Za-z0-9._-])"),
        ));
    }
    if let Some(p) = &spec.image.pull_policy
        && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
    {
        errs.push(FieldError::new(
            "spec.image.pullPolicy",
            format!("{p:?} must be Always, IfNotPresent or Never"),
        ));
    }
    if !(1..=MAX_REPLICAS).contains(&spec.replicas) || spec.replicas % 2 == 0 {
        errs.push(FieldError::new(
            "spec.replicas",
            format!(
                "{} must be odd and between 1 and {MAX_REPLICAS} (a majority must agree on the writer)",
                spec.replicas
            ),
        ));
    }
    if !(1..=65535).contains(&spec.port) {
        errs.push(FieldError::new(
            "spec.port",
            format!("{} must be between 1 and 65535", spec.port),
        ));
    }
    if spec.consensus != "quasar" {
        errs.push(FieldError::new(
            "spec.consensus",
            format!("{:?} is not supported (only \"quasar\")", spec.consensus),
        ));
    }
    if let Some(schema) = &spec.schema
        && !is_url(schema)
        && schema.len() > MAX_INLINE_SCHEMA_BYTES
    {
        errs.push(FieldError::new(
            "spec.schema",
            format!(
                "inline DDL is {} bytes, more than {MAX_INLINE_SCHEMA_BYTES}; serve it from a URL",
                schema.len()
            ),
        ));
    }
    match parse_quantity(&spec.storage.size) {
        Ok(v) if v > 0.0 => {}
        Ok(_) => errs.push(FieldError::new(
            "spec.storage.size",
            "must be greater than zero",
        )),
        Err(m) => errs.push(FieldError::new("spec.storage.size", m)),
    }
    if let Some(sc) = &spec.storage.storage_class_name
        && let Err(m) = check_dns_subdomain(sc)
    {
        errs.push(FieldError::new("spec.storage.storageClassName", m));
    }
    if let Some(r) = &spec.storage.retention_policy
        && !matches!(r.as_str(), "Retain" | "Delete")
    {
        errs.push(FieldError::new(
            "spec.storage.retentionPolicy",
            format!("{r:?} must be Retain or Delete"),
        ));
    }
    if let Some(res) = &spec.resources {
        for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
            for (k, v) in map {
                if let Err(m) = parse_quantity(v) {
                    errs.push(FieldError::new(format!("spec.resources.{kind}.{k}"), m));
                }
            }
        }
    }
    for (i, e) in spec.env.iter().enumerate() {
        if e.name.is_empty() {
            errs.push(FieldError::new(
                format!("spec.env[{i}].name"),
                "must not be empty",
            ));
        }
    }
    for (i, s) in spec.image_pull_secrets.iter().enumerate() {
        if let Err(m) = check_dns_subdomain(&s.name) {
            errs.push(FieldError::new(
                format!("spec.imagePullSecrets[{i}].name"),
                m,
            ));
        }
    }
    if let Some(sa) = &spec.service_account_name
        && let Err(m) = check_dns_subdomain(sa)
    {
        errs.push(FieldError::new("spec.serviceAccountName", m));
    }
    let mut timings = GatewayTimings {
        leader_poll_interval_ms: 1000,
        read_your_writes_ttl_ms: 5000,
    };
    let gw = spec.gateway.clone().unwrap_or_default();
    if let Some(route) = &gw.route
        && (!route.starts_with('/') || route.chars().any(char::is_whitespace))
    {
        errs.push(FieldError::new(
            "spec.gateway.route",
            format!("{route:?} must start with '/' and contain no whitespace"),
        ));
    }
    if let Some(n) = &gw.gateway_name
        && let Err(m) = check_dns_subdomain(n)
    {
        errs.push(FieldError::new("spec.gateway.gatewayName", m));
    }
    if let Some(n) = &gw.gateway_namespace
        && let Err(m) = check_dns_label(n, 63)
    {
        errs.push(FieldError::new("spec.gateway.gatewayNamespace", m));
    }
    let poll = gw
        .leader_poll_interval
        .as_deref()
        .unwrap_or(DEFAULT_LEADER_POLL_INTERVAL);
    match parse_duration_ms(poll) {
        Ok(ms) if ms >= MIN_LEADER_POLL_INTERVAL_MS => timings.leader_poll_interval_ms = ms as u64,
        Ok(_) => errs.push(FieldError::new(
            "spec.gateway.leaderPollInterval",
            format!("{poll:?} must be at least {MIN_LEADER_POLL_INTERVAL_MS}ms"),
        )),
        Err(m) => errs.push(FieldError::new("spec.gateway.leaderPollInterval", m)),
    }
    let ttl = gw
        .read_your_writes_ttl
        .as_deref()
        .unwrap_or(DEFAULT_READ_YOUR_WRITES_TTL);
    // In nanoseconds: `-1ns` truncates to 0 ms, but is negative (and refused at admission).
    match parse_duration_ns(ttl) {
        Ok(ns) if ns >= 0 => timings.read_your_writes_ttl_ms = (ns / 1_000_000) as u64,
        Ok(_) => errs.push(FieldError::new(
            "spec.gateway.readYourWritesTTL",
            format!("{ttl:?} must not be negative"),
        )),
        Err(m) => errs.push(FieldError::new("spec.gateway.readYourWritesTTL", m)),
    }
    for (i, k) in spec.kms_secrets.iter().enumerate() {
        let f = |s: &str| format!("spec.kmsSecrets[{i}].{s}");
        for (name, v) in [
            ("projectSlug", &k.project_slug),
            ("envSlug", &k.env_slug),
            ("secretsPath", &k.secrets_path),
        ] {
            if v.trim().is_empty() {
                errs.push(FieldError::new(f(name), "must not be empty"));
            }
        }
        if let Err(m) = check_dns_subdomain(&k.managed_secret_name) {
            errs.push(FieldError::new(f("managedSecretName"), m));
        }
        if let Err(m) = check_dns_subdomain(&k.credentials_ref.name) {
            errs.push(FieldError::new(f("credentialsRef.name"), m));
        }
        if k.resync_interval.is_some_and(|s| s < 0) {
            errs.push(FieldError::new(f("resyncInterval"), "must not be negative"));
        }
    }
    if let Some(sm) = &spec.service_monitor {
        if let Some(p) = &sm.metrics_path
            && !p.starts_with('/')
        {
            errs.push(FieldError::new(
                "spec.serviceMonitor.metricsPath",
                format!("{p:?} must start with '/'"),
            ));
        }
        if let Some(iv) = &sm.interval {
            match parse_duration_ms(iv) {
                Ok(ms) if ms > 0 => {}
                Ok(_) => errs.push(FieldError::new(
                    "spec.serviceMonitor.interval",
                    "must be positive",
                )),
                Err(m) => errs.push(FieldError::new("spec.serviceMonitor.interval", m)),
            }
        }
    }
    if let Some(p) = &spec.part_of
        && (p.is_empty()
            || p.len() > 63
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || !p.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !p.ends_with(|c: char| c.is_ascii_alphanumeric()))
    {
        errs.push(FieldError::new(
            "spec.partOf",
            format!("{p:?} is not a valid label value"),
        ));
    }
    if errs.is_empty() {
        Ok(timings)
    } else {
        Err(InvalidSpec(errs))
    }
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// RFC 1123 label (as Services and namespaces need), at most `max` characters.
pub fn check_dns_label(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be 1-{max} lowercase letters, digits or '-', start with a letter and end with a letter or digit"
        ))
    }
}

/// RFC 1123 subdomain, at most 253 characters.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS subdomain (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// Go's limit: durations are an `i64` of nanoseconds (~292 years).
const MAX_DURATION_NS: u128 = i64::MAX as u128;

/// Parses a Go/Kubernetes duration (`500ms`, `2s`, `1m30s`, `1.5h`, `0`, `-1s`) into nanoseconds,
/// exactly (integer arithmetic; fractions below a nanosecond are dropped, as Go does).
/// Errors say what was expected, for a status condition or a command-line flag.
pub fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration (expected e.g. 500ms, 2s, 1m30s)");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("{s:?} is too long a duration"))?
        };
        let mut part = whole
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
        let mut scale = unit_ns;
        for digit in fraction.bytes().take(18) {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        total_ns = total_ns
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION_NS)
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
        rest = after;
    }
    let ns = total_ns as i64; // ≤ i64::MAX, checked above
    Ok(if neg { -ns } else { ns })
}

/// [`parse_duration_ns`] in milliseconds, truncated toward zero.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    parse_duration_ns(s).map(|ns| ns / 1_000_000)
}

/// A non-negative duration, for timeouts and intervals given on a command line.
pub fn parse_std_duration(s: &str) -> Result<std::time::Duration, String> {
    let ns = parse_duration_ns(s.trim())?;
    u64::try_from(ns)
        .map(std::time::Duration::from_nanos)
        .map_err(|_| format!("{s:?} must not be negative"))
}

/// Parses a Kubernetes quantity (`10Gi`, `500M`, `1.5`, `100m`, `1e3`) into its value.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a quantity (expected e.g. 10Gi, 500Mi, 1)");
    let (sign, body) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let num_len = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let num = &body[..num_len];
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let suffix = &body[num_len..];
    let mult = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let e: i32 = e.parse().map_err(|_| bad())?;
            10f64.powi(e)
        }
        _ => return Err(bad()),
    };
    // `1e400` is infinite and `0e400` not a number: neither is a size or a limit.
    let v = sign * value * mult;
    if !v.is_finite() {
        return Err(format!("{s:?} is too large a quantity"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_form() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("-1s"), Ok(-1000));
        assert_eq!(parse_duration_ms("1500us"), Ok(1));
        for bad in [
            "fast",
            "",
            "2",
            "s",
            "1.2.3s",
            "2 s",
            "1d",
            "-",
            "1e3s",
            "99999999999999999h",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10Gi"), Ok(10.0 * 1024f64.powi(3)));
        assert_eq!(parse_quantity("500M"), Ok(5e8));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert_eq!(parse_quantity("100m"), Ok(0.1));
        for bad in ["ten", "", "10GB", "Gi", "1e", "1.2.3", "10 Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn names() {
        assert!(check_dns_label("my-app", 52).is_ok());
        assert!(check_dns_label("1app", 52).is_err());
        assert!(check_dns_label("My-app", 52).is_err());
        assert!(check_dns_label("app-", 52).is_err());
        assert!(check_dns_label(&"a".repeat(53), 52).is_err());
        assert!(check_dns_subdomain("do-block-storage").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
    }
}
