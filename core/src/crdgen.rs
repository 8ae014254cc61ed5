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
