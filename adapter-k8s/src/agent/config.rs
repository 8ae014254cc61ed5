//! The agent's configuration: peers from `--peers` / `BASE_PEERS`, and the timing flags.

use base_core::NodeId;
use base_core::quasar::{CLUSTER_SIZE_MAX, Timing, TimingError};

/// One member of the cluster: its id (pod name) and the URL its agent listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: NodeId,
    /// `http://host:port`, without a trailing slash.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--peers: entry {entry:?}: {problem}")]
    Peer {
        entry: String,
        problem: &'static str,
    },
    #[error("--peers: node id {id} is listed twice")]
    DuplicatePeer { id: String },
    #[error("--peers: {count} members exceed the cluster size limit {CLUSTER_SIZE_MAX}")]
    TooManyPeers { count: usize },
    #[error("--node-id: must not be empty")]
    EmptyNodeId,
    #[error("--listen: {value:?} is not HOST:PORT")]
    Listen { value: String },
    #[error("--upstream: {value:?} is not an http:// URL")]
    Upstream { value: String },
    #[error("timing: {0}")]
    Timing(#[from] TimingError),
    #[error("--peer-port: {port} must be nonzero and differ from the --listen port")]
    PeerPort { port: u16 },
    #[error("--peer-port: cannot put a port on the peer URL {url:?}")]
    PeerUrl { url: String },
}

/// The peer URL `http://host[:port]` with its port replaced by `port` (`--peer-port`: peers
/// listen for messages on that port of the same host). IPv6 literals (`[::1]:80`) are handled.
pub fn with_port(url: &str, port: u16) -> Result<String, ConfigError> {
    let fail = || ConfigError::PeerUrl {
        url: url.chars().take(200).collect(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(fail)?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(fail());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(fail)?;
        &authority[..end + 2]
    } else {
        match authority.rsplit_once(':') {
            Some((host, p)) if p.chars().all(|c| c.is_ascii_digit()) => host,
            Some(_) => return Err(fail()),
            None => authority,
        }
    };
    if host.is_empty() {
        return Err(fail());
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Parses a comma list of `id=http://host:port` entries. The Base runtime's form, plain URLs
/// `http://<name>-<i>.<name>-hs.<ns>.svc.cluster.local:<port>`, is accepted too: the id is the
/// host's first DNS label (the pod name). Empty entries are skipped.
pub fn parse_peers(list: &str) -> Result<Vec<PeerSpec>, ConfigError> {
    let mut peers: Vec<PeerSpec> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |problem| ConfigError::Peer {
            entry: entry.chars().take(200).collect(),
            problem,
        };
        let (id, url) = match entry.split_once('=') {
            Some((id, url)) if !id.contains("://") => (id.trim().to_string(), url.trim()),
            _ => (String::new(), entry),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| fail("the URL must start with http:// or https://"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(fail("the URL has no host"));
        }
        if rest.trim_end_matches('/').contains('/') {
            return Err(fail("the URL must not have a path"));
        }
        let id = if id.is_empty() {
            let host = authority.split(':').next().unwrap_or("");
            let label = host.split('.').next().unwrap_or("");
            if label.is_empty() || label.chars().all(|c| c.is_ascii_digit()) {
                return Err(fail("cannot derive a node id from this host; write id=URL"));
            }
            label.to_string()
        } else {
            id
        };
        if peers.iter().any(|p| p.id.as_str() == id) {
            return Err(ConfigError::DuplicatePeer { id });
        }
        peers.push(PeerSpec {
            id: NodeId::new(id),
            url: url.trim_end_matches('/').to_string(),
        });
    }
    if peers.len() > CLUSTER_SIZE_MAX {
        return Err(ConfigError::TooManyPeers { count: peers.len() });
    }
    Ok(peers)
}

/// The timing flags, checked against the lease argument.
pub fn timing(
    heartbeat_interval_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
    drift_bound_ppm: u64,
    lease_margin_ms: u64,
) -> Result<Timing, ConfigError> {
    use base_core::Millis;
    Ok(Timing::new(
        Millis(heartbeat_interval_ms),
        Millis(election_timeout_min_ms),
        Millis(election_timeout_max_ms),
        drift_bound_ppm,
        Millis(lease_margin_ms),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_ids() {
        let p = parse_peers(" a=http://127.0.0.1:1/, b=http://127.0.0.1:2 ,").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].id.as_str(), "a");
        assert_eq!(p[0].url, "http://127.0.0.1:1");
        assert_eq!(p[1].url, "http://127.0.0.1:2");
    }

    #[test]
    fn base_runtime_form() {
        let p = parse_peers(
            "http://app-0.app-hs.ns.svc.cluster.local:8090,http://app-1.app-hs.ns.svc.cluster.local:8090",
        )
        .unwrap();
        assert_eq!(p[0].id.as_str(), "app-0");
        assert_eq!(p[1].id.as_str(), "app-1");
        assert_eq!(p[1].url, "http://app-1.app-hs.ns.svc.cluster.local:8090");
    }

    #[test]
    fn peer_port_rewrite() {
        assert_eq!(
            with_port("http://app-0.app-hs.ns.svc.cluster.local:8090", 8092).unwrap(),
            "http://app-0.app-hs.ns.svc.cluster.local:8092"
        );
        assert_eq!(
            with_port("http://127.0.0.1:1/", 2).unwrap(),
            "http://127.0.0.1:2"
        );
        assert_eq!(with_port("http://host", 2).unwrap(), "http://host:2");
        assert_eq!(with_port("http://[::1]:80", 81).unwrap(), "http://[::1]:81");
        assert_eq!(with_port("http://[::1]", 81).unwrap(), "http://[::1]:81");
        assert!(with_port("http://:80", 81).is_err());
        assert!(with_port("http://h:x", 81).is_err());
        assert!(with_port("nourl", 81).is_err());
    }

    #[test]
    fn refuses_bad_entries() {
        assert!(parse_peers("a=ftp://x").is_err());
        assert!(parse_peers("http://127.0.0.1:80").is_err());
        assert!(parse_peers("a=http://x:1,a=http://y:1").is_err());
        assert!(parse_peers("a=http://x:1/path").is_err());
        assert!(parse_peers("a=http://").is_err());
        assert!(parse_peers("").unwrap().is_empty());
    }
}
