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
