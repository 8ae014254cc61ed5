//! Reading a Base (or legacy BaseApp) manifest from YAML or JSON text, as `render` and the fuzzers
//! do. Errors say which field is wrong; nothing here panics on any input.

use crate::crd::{Base, BaseApp, GROUP, Kind, LEGACY_VERSION, VERSION};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML/JSON: {0}")]
    Syntax(String),
    #[error("expected one object, found {0} documents")]
    DocumentCount(usize),
    #[error("apiVersion {0:?}: expected hanzo.ai/v1 (or hanzo.ai/v1alpha1 for BaseApp)")]
    ApiVersion(String),
    #[error("kind {0:?}: expected Base or BaseApp")]
    Kind(String),
    #[error("{0}")]
    Field(String),
}

/// Parses exactly one Base or BaseApp from YAML (JSON is YAML too).
pub fn parse(text: &str) -> Result<(Kind, Base), ManifestError> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| ManifestError::Syntax(e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.len() != 1 {
        return Err(ManifestError::DocumentCount(docs.len()));
    }
    from_value(docs.remove(0))
}

/// Interprets one parsed object.
pub fn from_value(v: Value) -> Result<(Kind, Base), ManifestError> {
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = match kind.as_str() {
        "Base" => Kind::Base,
        "BaseApp" => Kind::BaseApp,
        _ => return Err(ManifestError::Kind(kind)),
    };
    let ok_version = api_version == format!("{GROUP}/{VERSION}")
        || (kind == Kind::BaseApp && api_version == format!("{GROUP}/{LEGACY_VERSION}"));
    if !ok_version {
        return Err(ManifestError::ApiVersion(api_version));
    }
    let field_err = |e: serde_path_to_error::Error<serde_json::Error>| {
        ManifestError::Field(format!("{}: {}", e.path(), e.inner()))
    };
    let base = match kind {
        Kind::Base => serde_path_to_error::deserialize::<_, Base>(v).map_err(field_err)?,
        Kind::BaseApp => {
            Base::from(serde_path_to_error::deserialize::<_, BaseApp>(v).map_err(field_err)?)
        }
    };
    // The API server guarantees a valid namespace (an RFC 1123 label); a file does not.
    if let Some(ns) = base.metadata.namespace.as_deref()
        && (ns.len() > 63 || ns.contains('.') || crate::validate::check_dns_subdomain(ns).is_err())
    {
        return Err(ManifestError::Field(format!(
            "metadata.namespace: {ns:?} must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        )));
    }
    Ok((kind, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_field() {
        let text = "apiVersion: hanzo.ai/v1\nkind: Base\nmetadata: {name: a}\nspec:\n  image: {repository: x}\n  storage: {size: 1Gi}\n  replicas: three\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("spec.replicas"), "{err}");
    }

    #[test]
    fn legacy_kind_and_version() {
        let text = "apiVersion: hanzo.ai/v1alpha1\nkind: BaseApp\nmetadata: {name: a}\nspec:\n  image: {repository: x}\n  storage: {size: 1Gi}\n";
        let (kind, base) = parse(text).unwrap();
        assert_eq!(kind, Kind::BaseApp);
        assert_eq!(base.spec.replicas, 3);
        assert!(matches!(
            parse("apiVersion: hanzo.ai/v1alpha1\nkind: Base\n"),
            Err(ManifestError::ApiVersion(_))
        ));
        assert!(matches!(parse("a: [1, 2"), Err(ManifestError::Syntax(_))));
        assert!(matches!(
            parse("--- {kind: Base}\n--- {kind: Base}\n"),
            Err(ManifestError::DocumentCount(2))
        ));
    }
}
