//! Operator HA: a `coordination.k8s.io/v1` Lease; only the holder reconciles.
//!
//! Expiry is judged the way client-go does it: by how long *we* have seen the Lease record unchanged
//! on our own clock, never by comparing another process's `renewTime` with our clock (skew).
//! A holder that fails to renew within the lease duration exits, so two operators never reconcile
//! at once for longer than one lease duration, even across a partition.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record we saw (holder, renewTime) and when we first saw it, on our clock.
    seen: Option<(String, Instant)>,
}

fn record_key(l: &Lease) -> String {
    let s = l.spec.as_ref();
    format!(
        "{}|{:?}|{}",
        s.and_then(|s| s.holder_identity.clone())
            .unwrap_or_default(),
        s.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        l.metadata.resource_version.clone().unwrap_or_default()
    )
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            seen: None,
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt to take or keep the Lease. `Ok(true)` while we hold it.
    pub async fn try_hold(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get_opt(&self.cfg.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let key = record_key(&current);
        let now = Instant::now();
        let first_seen = match &self.seen {
            Some((k, at)) if *k == key => *at,
            _ => {
                self.seen = Some((key, now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(self.cfg.lease_duration, |s| {
                Duration::from_secs(s.max(1) as u64)
            });
        let ours = holder == self.cfg.identity;
        let expired = holder.is_empty() || now.duration_since(first_seen) > duration;
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = current.clone();
        next.spec = Some(self.spec(transitions, acquired));
        // replace() carries resourceVersion: a racing writer gets 409 and we simply try again later.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {
                if !ours {
                    info!(lease = %self.cfg.name, previous = %holder, "took over the operator lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "lease: cannot read or write the Lease; retrying"),
            }
            tokio::time::sleep(self.cfg.retry_every).await;
        }
    }

    /// Keeps renewing; returns when the Lease is lost (or could not be renewed within its duration).
    pub async fn keep(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_hold().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => return,
                Err(e) => warn!(error = %e, "lease: renewal failed"),
            }
            // Stop before anyone else may take over: they wait a full duration after our last renewal.
            if last_ok.elapsed() + self.cfg.renew_every >= self.cfg.lease_duration {
                return;
            }
        }
    }
}
