//! The route entry a Base injects into its Gateway (`hanzo.ai/v1` kind `Gateway`, list
//! `spec.routes`). Pure list surgery: only this Base's entry is ever added, changed or removed, and
//! a prefix that another object owns is a conflict, never an overwrite.

use serde_json::{Value, json};

/// The Gateway's kind, for the adapter's dynamic API.
pub const GATEWAY_API_VERSION: &str = "hanzo.ai/v1";
pub const GATEWAY_KIND: &str = "Gateway";

/// Who owns a route entry: `<Kind>/<namespace>/<name>`, stored in the entry's `owner` field.
pub fn owner_tag(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// The entry for one Base: reads go to `<name>`, writes to `<name>-writer`; the gateway's leader
/// tracking uses the poll interval and read-your-writes TTL.
pub struct RouteEntry {
    pub prefix: String,
    pub owner: String,
    pub namespace: String,
    pub service: String,
    pub writer_service: String,
    pub port: i32,
    pub leader_poll_interval: String,
    pub read_your_writes_ttl: String,
}

impl RouteEntry {
    pub fn to_value(&self) -> Value {
        json!({
            "prefix": self.prefix,
            "backend": format!("http://{}.{}.svc.cluster.local:{}", self.service, self.namespace, self.port),
            "writeBackend": format!("http://{}.{}.svc.cluster.local:{}", self.writer_service, self.namespace, self.port),
            "methods": ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"],
            "leaderPoll": {
                "path": "/_ha/leader",
                "interval": self.leader_poll_interval,
            },
            "readYourWritesTTL": self.read_your_writes_ttl,
            "owner": self.owner,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route prefix {prefix:?} on the Gateway is owned by {owner:?}")]
pub struct RouteConflict {
    pub prefix: String,
    pub owner: String,
}

fn entry_owner(e: &Value) -> Option<&str> {
    e.get("owner").and_then(Value::as_str)
}

fn entry_prefix(e: &Value) -> Option<&str> {
    e.get("prefix").and_then(Value::as_str)
}

/// The route list with `entry` in place of this owner's old entries. `Ok(None)` when the list
/// already holds exactly that entry (nothing to write).
pub fn upsert(routes: &[Value], entry: &RouteEntry) -> Result<Option<Vec<Value>>, RouteConflict> {
    if let Some(other) = routes.iter().find(|r| {
        entry_prefix(r) == Some(entry.prefix.as_str())
            && entry_owner(r) != Some(entry.owner.as_str())
    }) {
        return Err(RouteConflict {
            prefix: entry.prefix.clone(),
            owner: entry_owner(other)
                .unwrap_or("an entry without owner")
                .to_string(),
        });
    }
    let want = entry.to_value();
    let ours: Vec<&Value> = routes
        .iter()
        .filter(|r| entry_owner(r) == Some(entry.owner.as_str()))
        .collect();
    if ours.len() == 1 && *ours[0] == want {
        return Ok(None);
    }
    let mut out: Vec<Value> = routes
        .iter()
        .filter(|r| entry_owner(r) != Some(entry.owner.as_str()))
        .cloned()
        .collect();
    out.push(want);
    Ok(Some(out))
}

/// The route list without this owner's entries; `None` when it holds none.
pub fn remove(routes: &[Value], owner: &str) -> Option<Vec<Value>> {
    let kept: Vec<Value> = routes
        .iter()
        .filter(|r| entry_owner(r) != Some(owner))
        .cloned()
        .collect();
    (kept.len() != routes.len()).then_some(kept)
}

/// `spec.routes` of a Gateway object; a missing or malformed list reads as empty.
pub fn routes_of(gateway: &Value) -> Vec<Value> {
    gateway
        .pointer("/spec/routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, owner: &str) -> RouteEntry {
        RouteEntry {
            prefix: prefix.into(),
            owner: owner.into(),
            namespace: "hanzo".into(),
            service: "my-app".into(),
            writer_service: "my-app-writer".into(),
            port: 8090,
            leader_poll_interval: "2s".into(),
            read_your_writes_ttl: "5s".into(),
        }
    }

    #[test]
    fn upsert_is_idempotent_and_keeps_others() {
        let other = json!({"prefix": "/v1/other", "backend": "x"});
        let e = entry("/v1/my-app", "Base/hanzo/my-app");
        let once = upsert(std::slice::from_ref(&other), &e).unwrap().unwrap();
        assert_eq!(once.len(), 2);
        assert_eq!(once[0], other);
        assert_eq!(upsert(&once, &e).unwrap(), None);
        let removed = remove(&once, "Base/hanzo/my-app").unwrap();
        assert_eq!(removed, vec![other]);
        assert_eq!(remove(&removed, "Base/hanzo/my-app"), None);
    }

    #[test]
    fn changed_entry_replaces_ours_only() {
        let e = entry("/v1/my-app", "Base/hanzo/my-app");
        let once = upsert(&[], &e).unwrap().unwrap();
        let moved = entry("/v1/my-app-2", "Base/hanzo/my-app");
        let twice = upsert(&once, &moved).unwrap().unwrap();
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0]["prefix"], "/v1/my-app-2");
    }

    #[test]
    fn foreign_prefix_is_a_conflict() {
        let theirs = json!({"prefix": "/v1/my-app", "owner": "Base/other/x"});
        let err = upsert(
            std::slice::from_ref(&theirs),
            &entry("/v1/my-app", "Base/hanzo/my-app"),
        )
        .unwrap_err();
        assert_eq!(err.owner, "Base/other/x");
        let unowned = json!({"prefix": "/v1/my-app"});
        assert!(upsert(&[unowned], &entry("/v1/my-app", "Base/hanzo/my-app")).is_err());
    }
}
