//! Fair admission of reconciles: at most `limit` run at once, admitted in the order they fell due.
//!
//! kube-runtime's runner can bound concurrency itself (`controller::Config::concurrency`), but it
//! is not fair: while every slot is busy it moves the requests that fall due into a hash set, and
//! when a slot frees it takes the *first one in hash order*. Once more requests fall due than the
//! slots can run — a cold start of 1000 Bases with a 30 s resync on a small API server — the
//! resyncs of Bases already done keep landing in that set and are taken, while the Bases whose keys
//! sit late in the hash order are never taken at all: they were never reconciled, and the
//! operator never converged (`scripts/scale.sh 1000` stalled at ~600 of 1000).
//!
//! So the runner is left unbounded (it still runs at most one reconcile per object, and holds a
//! newer request for an object until its running one ends, so it holds at most two per object),
//! and the bound is this FIFO semaphore: every due reconcile waits for a permit in the order it
//! fell due. A reconcile that waited re-reads its object from the controller's store before it
//! runs, so it acts on the latest version, not the one it was queued with.

use futures::future::BoxFuture;
use kube::Resource;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::{ObjectRef, Store};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The kube-runtime controller config to pair with [`Admission`]: the runner's own limit off, since
/// the admission bounds the reconciles that run.
pub fn runner_config(debounce: Duration) -> Config {
    Config::default().concurrency(0).debounce(debounce)
}

/// A FIFO bound on the reconciles of one controller.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
}

impl Admission {
    pub fn new(limit: u16) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(usize::from(limit.max(1)))),
        }
    }

    /// On shutdown: the reconciles still waiting for a permit give up (they would otherwise all run
    /// before the controller stops, the whole backlog against an API server that may be going away).
    pub fn close(&self) {
        self.permits.close();
    }

    /// Wraps a reconciler: each call waits its turn (tokio's semaphore serves waiters in order),
    /// then runs on the store's current version of the object; an object deleted while it waited
    /// is not reconciled (a later event, if any, brings it back).
    pub fn wrap<K, Ctx, E, F, Fut>(
        &self,
        store: Store<K>,
        reconciler: F,
    ) -> impl FnMut(Arc<K>, Arc<Ctx>) -> BoxFuture<'static, Result<Action, E>> + use<K, Ctx, E, F, Fut>
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Clone + Debug + Eq + Hash + Default + Send + Sync,
        Ctx: Send + Sync + 'static,
        E: Send + 'static,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let permits = self.permits.clone();
        move |obj: Arc<K>, ctx: Arc<Ctx>| {
            let (permits, store, reconciler) = (permits.clone(), store.clone(), reconciler.clone());
            Box::pin(async move {
                // Closed: shutting down; only the reconciles already admitted finish.
                let Ok(_permit) = permits.acquire_owned().await else {
                    return Ok(Action::await_change());
                };
                let Some(latest) = store.get(&ObjectRef::from_obj(&*obj)) else {
                    return Ok(Action::await_change());
                };
                reconciler(latest, ctx).await
            })
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tests run on paused time: sleeps and deadlines are virtual, so the load of the
    //! machine cannot change what they see.
    use super::*;
    use futures::{FutureExt, StreamExt};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::applier;
    use kube::runtime::controller::ReconcileRequest;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::Mutex;

    fn cm(i: usize) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("app-{i}")),
                namespace: Some("scale".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// The cold start of `scripts/scale.sh` in small: `n` objects all due at once, each reconcile
    /// takes a while and asks to be resynced sooner than the slots can get through all of them.
    /// Returns how many distinct objects were reconciled by `deadline`.
    async fn reconciled_under_saturation(
        n: usize,
        limit: u16,
        deadline: Duration,
        fair: bool,
    ) -> usize {
        let mut writer = Writer::<ConfigMap>::default();
        writer.apply_watcher_event(&watcher::Event::Init);
        for i in 0..n {
            writer.apply_watcher_event(&watcher::Event::InitApply(cm(i)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let store = writer.as_reader();
        let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
        let reconcile = {
            let seen = seen.clone();
            move |obj: Arc<ConfigMap>, _ctx: Arc<()>| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    seen.lock()
                        .unwrap()
                        .insert(obj.metadata.name.clone().unwrap());
                    // The resync: all `n` are due again long before `limit` slots can run `n`.
                    Ok::<_, Infallible>(Action::requeue(Duration::from_millis(20)))
                }
            }
        };
        let queue = futures::stream::iter(
            (0..n)
                .map(|i| Ok::<_, Infallible>(ReconcileRequest::from(ObjectRef::from_obj(&cm(i))))),
        )
        .chain(futures::stream::pending());
        let error_policy = |_: Arc<ConfigMap>, _: &Infallible, _: Arc<()>| Action::await_change();
        let run = if fair {
            applier(
                Admission::new(limit).wrap(store.clone(), reconcile),
                error_policy,
                Arc::new(()),
                store,
                queue,
                runner_config(Duration::ZERO),
            )
            .for_each(|_| async {})
            .boxed()
        } else {
            // What the operator did before: the runner's own limit.
            applier(
                move |obj, ctx| reconcile(obj, ctx).boxed(),
                error_policy,
                Arc::new(()),
                store,
                queue,
                Config::default().concurrency(limit),
            )
            .for_each(|_| async {})
            .boxed()
        };
        let all_seen = async {
            while seen.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = run => {}
            _ = all_seen => {}
            _ = tokio::time::sleep(deadline) => {}
        }
        seen.lock().unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn every_object_is_reconciled_while_resyncs_saturate_the_slots() {
        // FIFO: the 200 first reconciles take 200 × 3 ms / 4 ≈ 150 ms, however often resyncs fall due.
        let n = reconciled_under_saturation(200, 4, Duration::from_secs(5), true).await;
        assert_eq!(n, 200, "objects never reconciled: {}", 200 - n);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_reconciles_give_up_once_closed() {
        let mut writer = Writer::<ConfigMap>::default();
        writer.apply_watcher_event(&watcher::Event::Apply(cm(0)));
        let adm = Admission::new(1);
        let ran = Arc::new(Mutex::new(0));
        let mut wrapped = adm.wrap(writer.as_reader(), {
            let ran = ran.clone();
            move |_: Arc<ConfigMap>, _: Arc<()>| {
                *ran.lock().unwrap() += 1;
                async { Ok::<_, Infallible>(Action::requeue(Duration::from_secs(1))) }
            }
        });
        let held = adm.permits.clone().acquire_owned().await.unwrap();
        let waiting = tokio::spawn(wrapped(Arc::new(cm(0)), Arc::new(())));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits for the permit");
        adm.close();
        assert_eq!(waiting.await.unwrap(), Ok(Action::await_change()));
        assert_eq!(*ran.lock().unwrap(), 0);
        drop(held);
    }

    /// Why [`Admission`] exists: kube-runtime's runner with its own limit starves objects under the
    /// same load (36 of 200 reconciled in 5 s when this was written). If this starts failing, the
    /// runner has become fair and the admission could go.
    #[tokio::test(start_paused = true)]
    async fn the_runners_own_limit_starves_objects() {
        let n = reconciled_under_saturation(200, 4, Duration::from_secs(1), false).await;
        assert!(n < 200, "kube-runtime's runner reconciled all {n}");
    }
}
