//! The route entry a Base injects into its Gateway (`hanzo.ai/v1` kind `Gateway`, list
//! `spec.routes`). Pure list surgery: only this Base's entry is ever added, changed or removed, and
//! a prefix that another object owns is a conflict, never an overwrite.

use super::objects::obj;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

/// The Gateway's kind, for the adapter's dynamic API.
pub const GATEWAY_API_VERSION: &str = "hanzo.ai/v1";
pub const GATEWAY_KIND: &str = "Gateway";

/// Who owns a route entry: `<Kind>/<namespace>/<name>`, stored in the entry's `owner` field.
pub fn owner_tag(kind: &str, namespace: &str, name: &str) -> String {
    [kind, "/", namespace, "/", name].concat()
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

const METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];
const LEADER_POLL_PATH: &str = "/_ha/leader";

impl RouteEntry {
    fn backend(&self, service: &str) -> String {
        let port = super::objects::decimal(self.port.into());
        let parts = ["http://", service, ".", &self.namespace];
        [&parts[..], &[".svc.cluster.local:", &port]]
            .concat()
            .concat()
    }

    pub fn to_value(&self) -> Value {
        obj!([
            ("backend", self.backend(&self.service).into()),
            (
                "leaderPoll",
                obj!([
                    ("interval", self.leader_poll_interval.as_str().into()),
                    ("path", LEADER_POLL_PATH.into()),
                ]),
            ),
            ("methods", METHODS.as_slice().into()),
            ("owner", self.owner.as_str().into()),
            ("prefix", self.prefix.as_str().into()),
            (
                "readYourWritesTTL",
                self.read_your_writes_ttl.as_str().into()
            ),
            ("writeBackend", self.backend(&self.writer_service).into()),
        ])
    }

    /// `*v == self.to_value()`, without building the entry: the Gateway usually already holds it.
    pub fn matches(&self, v: &Value) -> bool {
        let Some(m) = v.as_object() else {
            return false;
        };
        if m.len() != 7 {
            return false;
        }
        // Exactly the seven fields of `to_value`, which the map lists in key order.
        let mut fields = m.iter();
        let mut next = |name: &str| {
            fields
                .next()
                .filter(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v)
        };
        next("backend")
            .and_then(Value::as_str)
            .is_some_and(|b| self.is_backend(b, &self.service))
            && next("leaderPoll")
                .and_then(Value::as_object)
                .is_some_and(|p| {
                    p.len() == 2
                        && p.get("interval").and_then(Value::as_str)
                            == Some(self.leader_poll_interval.as_str())
                        && p.get("path").and_then(Value::as_str) == Some(LEADER_POLL_PATH)
                })
            && next("methods")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().map(Value::as_str).eq(METHODS.map(Some)))
            && next("owner").and_then(Value::as_str) == Some(self.owner.as_str())
            && next("prefix").and_then(Value::as_str) == Some(self.prefix.as_str())
            && next("readYourWritesTTL").and_then(Value::as_str)
                == Some(self.read_your_writes_ttl.as_str())
            && next("writeBackend")
                .and_then(Value::as_str)
                .is_some_and(|b| self.is_backend(b, &self.writer_service))
    }

    /// `url == self.backend(service)`, without building it.
    fn is_backend(&self, url: &str, service: &str) -> bool {
        url.strip_prefix("http://")
            .and_then(|u| u.strip_prefix(service))
            .and_then(|u| u.strip_prefix('.'))
            .and_then(|u| u.strip_prefix(self.namespace.as_str()))
            .and_then(|u| u.strip_prefix(".svc.cluster.local:"))
            .is_some_and(|port| port == super::objects::decimal(self.port.into()))
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
    let mut ours = routes
        .iter()
        .filter(|r| entry_owner(r) == Some(entry.owner.as_str()));
    if let (Some(only), None) = (ours.next(), ours.next())
        && entry.matches(only)
    {
        return Ok(None);
    }
    let want = entry.to_value();
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
    routes_in(gateway).to_vec()
}

/// `spec.routes` of a Gateway object, borrowed.
pub fn routes_in(gateway: &Value) -> &[Value] {
    // Not `pointer`, which allocates to unescape each token.
    gateway
        .get("spec")
        .and_then(|s| s.get("routes"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
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
    fn matches_is_equality_with_the_built_entry() {
        let e = entry("/v1/my-app", "Base/hanzo/my-app");
        let want = e.to_value();
        assert!(e.matches(&want));
        let mut changes: Vec<Value> = vec![json!(null), json!([]), json!({})];
        for (k, v) in want.as_object().unwrap() {
            let mut dropped = want.clone();
            dropped.as_object_mut().unwrap().remove(k);
            changes.push(dropped);
            let mut changed = want.clone();
            changed[k] = match v {
                Value::String(s) => json!(format!("{s}0")),
                Value::Array(a) => json!(a[..a.len() - 1]),
                _ => json!({"path": "/_ha/leader", "interval": "3s"}),
            };
            changes.push(changed);
        }
        let mut extra = want.clone();
        extra["x"] = json!(1);
        changes.push(extra);
        let mut extra_poll = want.clone();
        extra_poll["leaderPoll"]["x"] = json!(1);
        changes.push(extra_poll);
        let mut port = entry("/v1/my-app", "Base/hanzo/my-app");
        port.port = 80;
        changes.push(port.to_value());
        for v in &changes {
            assert_eq!(e.matches(v), *v == want, "{v}");
            assert!(!e.matches(v), "{v}");
        }
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
