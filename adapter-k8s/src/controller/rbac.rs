//! Every API call the operator makes, as (API group, resource, verbs). `deploy/rbac.yaml` must grant
//! exactly this (a test compares them), and the apiserver tests run the operator with that role only
//! and check its audit log against this table, so the table can't drift from the code either way.

/// Cluster-wide calls (the ClusterRole).
pub const CLUSTER_CALLS: &[(&str, &str, &[&str])] = &[
    ("hanzo.ai", "bases", &["get", "list", "watch", "patch"]),
    ("hanzo.ai", "baseapps", &["get", "list", "watch", "patch"]),
    ("hanzo.ai", "bases/status", &["patch"]),
    ("hanzo.ai", "baseapps/status", &["patch"]),
    ("hanzo.ai", "gateways", &["get", "list", "watch", "patch"]),
    (
        "apps",
        "statefulsets",
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "services",
        &["list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "configmaps",
        &["list", "watch", "create", "patch", "delete"],
    ),
    ("", "pods", &["get", "list", "watch", "patch", "delete"]),
    ("", "persistentvolumeclaims", &["list", "delete"]),
    // Create only: the peer-key Secret is never read or updated by the operator.
    ("", "secrets", &["create"]),
    (
        "policy",
        "poddisruptionbudgets",
        &["list", "create", "patch", "delete"],
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["list", "create", "patch", "delete"],
    ),
    (
        "monitoring.coreos.com",
        "servicemonitors",
        &["list", "create", "patch", "delete"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// Calls in the operator's own namespace (the Role): its HA Lease.
pub const NAMESPACE_CALLS: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];
