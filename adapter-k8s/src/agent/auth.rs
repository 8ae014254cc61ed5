//! Peer authentication: every peer message is signed with the Base's shared key (HMAC-SHA256).
//!
//! Why an HMAC and not mTLS: the key is one random string per Base that the operator keeps in a
//! Secret; rotating it is writing two files (`current`, `previous`) that every agent re-reads, with
//! no CA to run, no certificates to issue or expire per pod, and no TLS stack in the agent. The
//! messages are small and not secret (terms, votes, positions): they need integrity and origin,
//! not confidentiality.
//!
//! # Wire
//! The body is the JSON [`Envelope`](base_core::quasar::Envelope) (which names the sender and the
//! receiver); three headers carry the rest:
//! `X-Quasar-Timestamp` (the sender's Unix ms), `X-Quasar-Nonce` (32 hex digits, random) and
//! `X-Quasar-Mac`, the hex HMAC-SHA256 under the key of
//! `DOMAIN ‖ len(ts) ‖ ts ‖ len(nonce) ‖ nonce ‖ body` (lengths as 8-byte big-endian), so the sender id,
//! the receiver id, the timestamp, the nonce and the message are all covered.
//!
//! # Checks, in order (each failure is dropped and counted under its reason)
//! 1. the MAC verifies (constant-time) under `current` or `previous` — else `bad_mac` (a forged
//!    message, or one from another Base, whose key differs, or an unsigned one);
//! 2. the envelope parses — else `malformed`; its receiver is this node — else `wrong_receiver`; its
//!    sender is a peer — else `unknown_peer`;
//! 3. the timestamp is within ±[`MAX_CLOCK_SKEW_MS`] of local time — else `stale_timestamp`;
//! 4. the nonce was not seen from that sender — else `replay`. The cache is bounded
//!    ([`NONCE_CACHE_PER_PEER`] per peer); a nonce evicted to make room raises a per-sender
//!    watermark, and any message stamped at or before the watermark is refused as a replay, so
//!    eviction never reopens a replay window (a late but genuine message is lost, which the election
//!    tolerates).
//!
//! # Rotation without an outage
//! Sign with `current`, accept `current` or `previous`. The key files are re-read every
//! `--peer-key-reload-ms` (10 s), and pods see a Secret update at different times; so a sender
//! whose message is refused with `401` (the receiver does not know our `current` yet) re-sends it
//! at once signed with `previous`, and keeps using `previous` for that peer for
//! [`KEY_FALLBACK`] before trying `current` again. Rotation: write the new key to `current` and
//! the old one to `previous`; drop `previous` once every pod has the new `current`.

use base_core::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

pub const HEADER_TIMESTAMP: &str = "x-quasar-timestamp";
pub const HEADER_NONCE: &str = "x-quasar-nonce";
pub const HEADER_MAC: &str = "x-quasar-mac";
/// The key file signed with (required when `--peer-key-dir` is set).
pub const CURRENT_FILE: &str = "current";
/// The previous key, still accepted during a rotation (optional).
pub const PREVIOUS_FILE: &str = "previous";
/// A message stamped further than this from local time is refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Nonces remembered per peer (at the default heartbeat of 100 ms a writer sends ~600 a minute).
pub const NONCE_CACHE_PER_PEER: usize = 4096;
/// How long a sender keeps signing with `previous` for a peer that refused `current`.
pub const KEY_FALLBACK: Duration = Duration::from_secs(30);
/// Default interval between re-reads of the key files.
pub const KEY_RELOAD_DEFAULT_MS: u64 = 10_000;
/// A key file larger than this is not a key.
pub const KEY_BYTES_MAX: u64 = 4096;
/// Shorter keys are accepted with a warning.
pub const KEY_BYTES_RECOMMENDED: usize = 32;
/// Separates this MAC from any other use of the same key.
const DOMAIN: &[u8] = b"hanzo-base/quasar-peer/v1";
const NONCE_HEX: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The key files of `--peer-key-dir`. `Debug` never prints the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySet {
    pub current: Vec<u8>,
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("current", &format_args!("<{} bytes>", self.current.len()))
            .field("previous", &self.previous.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--peer-key-dir: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--peer-key-dir: {path}: the key is empty")]
    Empty { path: PathBuf },
    #[error("--peer-key-dir: {path}: {len} bytes is too large for a key (max {KEY_BYTES_MAX})")]
    TooLarge { path: PathBuf, len: u64 },
}

/// Reads one key file: its bytes without trailing ASCII whitespace (a key written with `echo`
/// works too). `Ok(None)` when the file does not exist.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(io)?,
    };
    if meta.len() > KEY_BYTES_MAX {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut bytes = std::fs::read(path).map_err(io)?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(KeyError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(bytes))
}

/// Reads `current` (required) and `previous` (optional) from the key directory.
pub fn load_keys(dir: &Path) -> Result<KeySet, KeyError> {
    let current_path = dir.join(CURRENT_FILE);
    let current = read_key(&current_path)?.ok_or_else(|| KeyError::Io {
        path: current_path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "required key file missing"),
    })?;
    let previous = read_key(&dir.join(PREVIOUS_FILE))?.filter(|p| *p != current);
    Ok(KeySet { current, previous })
}

/// The three authentication headers of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub timestamp_ms: u64,
    pub nonce: String,
    pub mac: String,
}

/// Why a peer message was dropped (the `reason` label of the drop counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Missing or wrong MAC: forged, unsigned, or signed with another Base's key.
    BadMac,
    /// Timestamp outside ±`MAX_CLOCK_SKEW_MS` of local time.
    StaleTimestamp,
    /// A nonce already seen from that sender (or older than what the cache still covers).
    Replay,
    /// Addressed to another node.
    WrongReceiver,
    /// Signed correctly but from a node that is not a peer.
    UnknownPeer,
    /// Not an envelope.
    Malformed,
    /// Larger than `MAX_MESSAGE_BYTES`.
    TooLarge,
    /// The driver's queue is full.
    Busy,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::BadMac,
        DropReason::StaleTimestamp,
        DropReason::Replay,
        DropReason::WrongReceiver,
        DropReason::UnknownPeer,
        DropReason::Malformed,
        DropReason::TooLarge,
        DropReason::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadMac => "bad_mac",
            DropReason::StaleTimestamp => "stale_timestamp",
            DropReason::Replay => "replay",
            DropReason::WrongReceiver => "wrong_receiver",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Malformed => "malformed",
            DropReason::TooLarge => "too_large",
            DropReason::Busy => "busy",
        }
    }
}

fn mac_for(key: &[u8], timestamp_ms: u64, nonce: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    let ts = timestamp_ms.to_string();
    for field in [ts.as_bytes(), nonce.as_bytes()] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.update(body);
    mac
}

/// The hex MAC of a message (for tests and tools; senders use [`sign`]).
pub fn mac_hex(key: &[u8], timestamp_ms: u64, nonce: &str, body: &[u8]) -> String {
    hex(&mac_for(key, timestamp_ms, nonce, body)
        .finalize()
        .into_bytes())
}

/// Signs `body` with `key` at `timestamp_ms` with a fresh random nonce.
pub fn sign(key: &[u8], timestamp_ms: u64, body: &[u8]) -> Signature {
    let nonce = hex(&rand::random::<[u8; NONCE_HEX / 2]>());
    let mac = mac_hex(key, timestamp_ms, &nonce, body);
    Signature {
        timestamp_ms,
        nonce,
        mac,
    }
}

/// Does `mac_hex` authenticate the message under `key`? Constant-time in the MAC.
pub fn verify(key: &[u8], timestamp_ms: u64, nonce: &str, body: &[u8], mac_hex: &str) -> bool {
    let Some(tag) = unhex(mac_hex) else {
        return false;
    };
    mac_for(key, timestamp_ms, nonce, body)
        .verify_slice(&tag)
        .is_ok()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The nonces seen from one sender (see the module doc for the watermark).
#[derive(Debug, Default)]
struct NonceCache {
    seen: HashSet<String>,
    order: VecDeque<(u64, String)>,
    watermark_ms: Option<u64>,
}

impl NonceCache {
    /// `true` if new (and now remembered), `false` if a replay.
    fn admit(&mut self, timestamp_ms: u64, nonce: &str, now_ms: u64) -> bool {
        if self.watermark_ms.is_some_and(|w| timestamp_ms <= w) || self.seen.contains(nonce) {
            return false;
        }
        // Entries that fell out of the time window can go: a replay of them is stale anyway.
        while self
            .order
            .front()
            .is_some_and(|(ts, _)| ts.saturating_add(MAX_CLOCK_SKEW_MS) < now_ms)
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.order.len() >= NONCE_CACHE_PER_PEER
            && let Some((ts, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
            self.watermark_ms = Some(self.watermark_ms.map_or(ts, |w| w.max(ts)));
        }
        self.seen.insert(nonce.to_string());
        self.order.push_back((timestamp_ms, nonce.to_string()));
        true
    }
}

/// The agent's peer authentication: the keys (none = unauthenticated) and the nonce caches.
#[derive(Debug, Default)]
pub struct PeerAuth {
    keys: RwLock<Option<KeySet>>,
    nonces: Mutex<BTreeMap<NodeId, NonceCache>>,
}

/// An authenticated message's stamp, to check for freshness once the sender is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub timestamp_ms: u64,
    pub nonce: String,
}

impl PeerAuth {
    /// `None`: peer messages are neither signed nor checked.
    pub fn new(keys: Option<KeySet>) -> PeerAuth {
        PeerAuth {
            keys: RwLock::new(keys),
            nonces: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.keys().is_some()
    }

    fn keys(&self) -> Option<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn has_previous(&self) -> bool {
        self.keys().is_some_and(|k| k.previous.is_some())
    }

    /// Replaces the keys (a rotation). Returns whether they changed.
    pub fn set_keys(&self, keys: KeySet) -> bool {
        let mut guard = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let changed = guard.as_ref() != Some(&keys);
        *guard = Some(keys);
        changed
    }

    /// Signs with `current`, or with `previous` when asked and there is one. `None` when
    /// unauthenticated.
    pub fn sign(&self, body: &[u8], now_ms: u64, use_previous: bool) -> Option<Signature> {
        let keys = self.keys()?;
        let key = match (&keys.previous, use_previous) {
            (Some(previous), true) => previous,
            _ => &keys.current,
        };
        Some(sign(key, now_ms, body))
    }

    /// Step 1: the MAC, under `current` or `previous`. `Ok(None)` when unauthenticated.
    pub fn check_mac(
        &self,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        mac: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Stamp>, DropReason> {
        let Some(keys) = self.keys() else {
            return Ok(None);
        };
        let (Some(timestamp), Some(nonce), Some(mac)) = (timestamp, nonce, mac) else {
            return Err(DropReason::BadMac);
        };
        let timestamp_ms: u64 = timestamp.trim().parse().map_err(|_| DropReason::BadMac)?;
        let nonce = nonce.trim();
        if nonce.len() != NONCE_HEX || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DropReason::BadMac);
        }
        let ok = verify(&keys.current, timestamp_ms, nonce, body, mac.trim())
            || keys
                .previous
                .as_ref()
                .is_some_and(|p| verify(p, timestamp_ms, nonce, body, mac.trim()));
        if !ok {
            return Err(DropReason::BadMac);
        }
        Ok(Some(Stamp {
            timestamp_ms,
            nonce: nonce.to_ascii_lowercase(),
        }))
    }

    /// Steps 3 and 4 for an authenticated message from the peer `from`.
    pub fn check_fresh(&self, from: &NodeId, stamp: &Stamp, now_ms: u64) -> Result<(), DropReason> {
        if stamp.timestamp_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
            return Err(DropReason::StaleTimestamp);
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        let cache = nonces.entry(from.clone()).or_default();
        if cache.admit(stamp.timestamp_ms, &stamp.nonce, now_ms) {
            Ok(())
        } else {
            Err(DropReason::Replay)
        }
    }
}

/// Re-reads the key files every `every`; a rotation takes effect without a restart. A failed
/// read keeps the keys in use (and says so).
pub async fn reload_keys(auth: std::sync::Arc<PeerAuth>, dir: PathBuf, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut failing = false;
    loop {
        interval.tick().await;
        let loaded = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || load_keys(&dir)).await
        };
        match loaded {
            Ok(Ok(keys)) => {
                failing = false;
                let previous = keys.previous.is_some();
                if auth.set_keys(keys) {
                    tracing::info!(previous, "peer keys reloaded (rotation)");
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot re-read the peer keys; keeping the ones in use");
                    failing = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "peer key reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: Option<&str>) -> KeySet {
        KeySet {
            current: current.as_bytes().to_vec(),
            previous: previous.map(|p| p.as_bytes().to_vec()),
        }
    }

    fn check(auth: &PeerAuth, s: &Signature, body: &[u8]) -> Result<Option<Stamp>, DropReason> {
        auth.check_mac(
            Some(&s.timestamp_ms.to_string()),
            Some(&s.nonce),
            Some(&s.mac),
            body,
        )
    }

    #[test]
    fn sign_verify_and_tamper() {
        let auth = PeerAuth::new(Some(keys("k1", None)));
        let body = br#"{"from":"a","to":"b","msg":{"type":"time_out_now","term":1}}"#;
        let s = auth.sign(body, 1000, false).unwrap();
        assert_eq!(s.nonce.len(), NONCE_HEX);
        assert!(check(&auth, &s, body).unwrap().is_some());
        // Another body, another time, another nonce, another key: refused.
        assert_eq!(check(&auth, &s, b"{}"), Err(DropReason::BadMac));
        let mut t = s.clone();
        t.timestamp_ms += 1;
        assert_eq!(check(&auth, &t, body), Err(DropReason::BadMac));
        let mut t = s.clone();
        t.nonce = "0".repeat(NONCE_HEX);
        assert_eq!(check(&auth, &t, body), Err(DropReason::BadMac));
        let other = PeerAuth::new(Some(keys("another base", None)));
        assert_eq!(check(&other, &s, body), Err(DropReason::BadMac));
        assert_eq!(
            auth.check_mac(None, None, None, body),
            Err(DropReason::BadMac)
        );
        let mut t = s.clone();
        t.mac = "zz".into();
        assert_eq!(check(&auth, &t, body), Err(DropReason::BadMac));
    }

    #[test]
    fn rotation_accepts_current_and_previous() {
        let old = PeerAuth::new(Some(keys("k1", None)));
        let new = PeerAuth::new(Some(keys("k2", Some("k1"))));
        let body = b"x";
        assert!(check(&new, &old.sign(body, 5, false).unwrap(), body).is_ok());
        assert!(check(&old, &new.sign(body, 5, true).unwrap(), body).is_ok());
        assert_eq!(
            check(&old, &new.sign(body, 5, false).unwrap(), body),
            Err(DropReason::BadMac)
        );
        let unauth = PeerAuth::new(None);
        assert!(unauth.sign(body, 5, false).is_none());
        assert!(check(&unauth, &old.sign(body, 5, false).unwrap(), body).is_ok());
    }

    #[test]
    fn freshness_and_replay() {
        let auth = PeerAuth::new(Some(keys("k", None)));
        let a = NodeId::from("a");
        let now = 1_000_000;
        let stamp = |ts, n: &str| Stamp {
            timestamp_ms: ts,
            nonce: n.to_string(),
        };
        assert!(auth.check_fresh(&a, &stamp(now, "n1"), now).is_ok());
        assert_eq!(
            auth.check_fresh(&a, &stamp(now, "n1"), now),
            Err(DropReason::Replay)
        );
        // The same nonce from another sender is its own.
        assert!(
            auth.check_fresh(&NodeId::from("b"), &stamp(now, "n1"), now)
                .is_ok()
        );
        assert_eq!(
            auth.check_fresh(&a, &stamp(now - MAX_CLOCK_SKEW_MS - 1, "n2"), now),
            Err(DropReason::StaleTimestamp)
        );
        assert_eq!(
            auth.check_fresh(&a, &stamp(now + MAX_CLOCK_SKEW_MS + 1, "n3"), now),
            Err(DropReason::StaleTimestamp)
        );
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_eviction_keeps_replays_out() {
        let mut cache = NonceCache::default();
        let now = 10_000_000;
        for k in 0..(NONCE_CACHE_PER_PEER as u64 + 10) {
            assert!(cache.admit(now + k, &format!("n{k}"), now));
        }
        assert!(cache.order.len() <= NONCE_CACHE_PER_PEER);
        assert_eq!(cache.seen.len(), cache.order.len());
        // n0 was evicted; its replay is still refused (by the watermark).
        assert!(!cache.admit(now, "n0", now));
        assert!(cache.admit(now + 1_000_000, "fresh", now + 1_000_000));
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("quasar-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_keys(&dir).is_err(), "current is required");
        std::fs::write(dir.join(CURRENT_FILE), "secret-one\n").unwrap();
        assert_eq!(load_keys(&dir).unwrap(), keys("secret-one", None));
        std::fs::write(dir.join(PREVIOUS_FILE), "secret-zero").unwrap();
        assert_eq!(
            load_keys(&dir).unwrap(),
            keys("secret-one", Some("secret-zero"))
        );
        std::fs::write(dir.join(CURRENT_FILE), "\n").unwrap();
        assert!(matches!(load_keys(&dir), Err(KeyError::Empty { .. })));
        assert!(!format!("{:?}", keys("secret-one", None)).contains("secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
