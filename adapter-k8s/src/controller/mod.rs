//! The operator: a kube-rs `Controller` on `Base` and the legacy `BaseApp`. Thin by design:
//! observe → `base_core::reconcile::plan_for` → perform the plan's writes (none when nothing changed).

mod admission;
pub mod clock;
mod kube_io;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod writers;

pub use kube_io::{ANNOTATION_AGENT_URL, FIELD_MANAGER};

use admission::Admission;
use base_core::crd::{Base, BaseApp, BaseSpec, Kind};
use base_core::reconcile::route;
use base_core::reconcile::{EventType as PlanEventType, OperatorConfig, Plan, plan_for};
use base_core::validate::parse_duration_ms;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use metrics::Metrics;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use writers::{BaseKey, Target, Writers};

/// The finalizer that removes the gateway route and honours the PVC retention policy.
pub const FINALIZER: &str = "hanzo.ai/base-cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("JSON: {0}")]
    Json(serde_json::Error),
}

impl Error {
    /// A short label for the failures metric.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "api_transport".into(),
            Error::Json(_) => "json".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs through tracing-subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    match base_core::validate::parse_std_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be positive")),
        d => Ok(d),
    }
}

fn duration_or_zero_arg(s: &str) -> Result<Duration, String> {
    base_core::validate::parse_std_duration(s)
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "BASE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the coordination.k8s.io Lease that elects the active operator replica.
    #[arg(long, env = "BASE_LEASE_NAME", default_value = "base-operator")]
    pub lease_name: String,
    /// Namespace of that Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: POD_NAME, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, default_value = "15s", value_parser = duration_arg)]
    pub lease_duration: Duration,
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    pub lease_renew: Duration,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "BASE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Image of the Quasar agent container (default: this operator's image).
    #[arg(long, env = "BASE_AGENT_IMAGE")]
    pub agent_image: Option<String>,
    /// Re-plan every Base this often even when nothing happened (drift detection).
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    pub resync: Duration,
    /// Give up on a deletion's cleanup after this long: remove the finalizer, with a Warning Event.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    pub cleanup_timeout: Duration,
    #[arg(long, env = "BASE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Reconciles running at once, per kind. Bounded so a cold start with many Bases does not
    /// flood the API server (429s) and starve the Lease renewal.
    #[arg(long, env = "BASE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Wait this long after the last event of a Base (its own, its objects', its pods', its
    /// writer's) before reconciling it: one reconcile that creates eight objects hears eight
    /// events back, and without this each re-plans the Base again (a cold start of 1000 Bases
    /// spent most of its API calls observing Bases already done). 0 turns it off.
    #[arg(long, env = "BASE_DEBOUNCE", default_value = "500ms", value_parser = duration_or_zero_arg)]
    pub debounce: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub writers: Writers,
    cleanup_timeout: Duration,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Bases whose peer-key Secret exists (we created it, or the API said it already existed),
    /// by namespace, name and UID, with when that was last confirmed.
    peer_keys: Mutex<HashMap<(String, String, String), std::time::Instant>>,
}

/// How long a confirmed peer-key Secret is trusted before the create is sent again (409 = it is
/// still there). Keyed by UID, a Base deleted and re-created under the same name gets a Secret of
/// its own at once; the re-check also heals a Secret deleted by hand, or one the garbage collector
/// removed after answering 409 to the new Base (its owner was the old one).
const PEER_KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

impl Context {
    fn peer_key_known(&self, base: &Base) -> bool {
        self.peer_keys
            .lock()
            .map(|s| {
                s.get(&peer_key_id(base))
                    .is_some_and(|at| at.elapsed() < PEER_KEY_RECHECK)
            })
            .unwrap_or(false)
    }

    fn remember_peer_key(&self, base: &Base) {
        if let Ok(mut s) = self.peer_keys.lock() {
            s.insert(peer_key_id(base), std::time::Instant::now());
        }
    }

    fn forget_peer_key(&self, base: &Base) {
        if let Ok(mut s) = self.peer_keys.lock() {
            s.remove(&peer_key_id(base));
        }
    }
}

fn peer_key_id(base: &Base) -> (String, String, String) {
    (
        base.namespace().unwrap_or_default(),
        base.name_any(),
        base.uid().unwrap_or_default(),
    )
}

/// The agent's URL of a pod: the test/debug annotation, else `http://<podIP>:<port>`.
fn agent_url(pod: &Pod, port: Option<i32>) -> Option<String> {
    if let Some(u) = pod.annotations().get(ANNOTATION_AGENT_URL) {
        return Some(u.trim_end_matches('/').to_string());
    }
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let port = port.or_else(|| {
        pod.spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "quasar")?
            .ports
            .as_ref()?
            .first()
            .map(|p| p.container_port)
    })?;
    Some(format!("http://{ip}:{port}"))
}

/// Backoff of a controller's trigger stream: its own watch and those of owned objects, pods and
/// Gateways, merged. kube-runtime pauses the whole merged stream at every error of any of them,
/// and its default pause grows to 30 s (60 s with jitter): after an apiserver restart, the dozen
/// watches' errors (connection refused, then 410 Gone on resuming) paused every trigger, new
/// Bases included, for over a minute. Each watch retries on its own schedule; this only keeps a
/// failing watch from spinning, so it stays short: 200 ms doubling to 2 s, reset by any event.
struct TriggerBackoff {
    next: Duration,
}

impl TriggerBackoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(2);
}

impl Default for TriggerBackoff {
    fn default() -> Self {
        TriggerBackoff { next: Self::MIN }
    }
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        // ±20% jitter, as in `backoff`.
        Some(now.mul_f64(0.8 + 0.4 * rand::random::<f64>()))
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

fn backoff(failures: u32) -> Duration {
    let base_ms = 500u64.saturating_mul(1u64 << failures.min(10)).min(300_000);
    // ±20% jitter so that many failing objects do not retry in lockstep.
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    Duration::from_millis((base_ms as f64 * jitter) as u64)
}

async fn publish_events(
    ctx: &Context,
    base_ref: &k8s_openapi::api::core::v1::ObjectReference,
    plan: &Plan,
) {
    for ev in &plan.events {
        let event = KubeEvent {
            type_: match ev.type_ {
                PlanEventType::Normal => EventType::Normal,
                PlanEventType::Warning => EventType::Warning,
            },
            reason: ev.reason.clone(),
            note: Some(ev.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.metrics.write("create", "Event");
        if let Err(e) = ctx.recorder.publish(&event, base_ref).await {
            warn!(error = %e, reason = %ev.reason, "could not publish an Event");
        }
    }
}

fn key_of(kind: Kind, base: &Base) -> BaseKey {
    (kind, base.namespace().unwrap_or_default(), base.name_any())
}

/// Adds or removes our finalizer with a JSON patch that first tests the finalizer list itself (as
/// kube-rs's finalizer helper does): a concurrent change to the list fails the test (422/409) and
/// is re-read, while unrelated writes (status, labels) do not conflict with it.
async fn patch_finalizers(ctx: &Context, kind: Kind, base: &Base, add: bool) -> Result<(), Error> {
    let ns = base.namespace().unwrap_or_default();
    let ar = kube_io::resource(
        &format!("{}/{}", base_core::crd::GROUP, base_core::crd::VERSION),
        kind.as_str(),
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let current = base.finalizers();
    let ops = if add {
        if current.is_empty() {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        } else {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ])
        }
    } else {
        let Some(i) = current.iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(Error::Json)?;
    ctx.metrics.write("patch", kind.as_str());
    api.patch(
        &base.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

async fn reconcile(
    kind: Kind,
    base: Base,
    base_ref: k8s_openapi::api::core::v1::ObjectReference,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let key = key_of(kind, &base);
    let deleting = base.metadata.deletion_timestamp.is_some();
    let has_finalizer = base.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        ctx.writers.untrack(&key);
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer {
        // Then go on in this same pass: the cache may not show the finalizer for a moment.
        patch_finalizers(&ctx, kind, &base, true).await?;
    }

    let (mut observed, pods) = kube_io::observe(&ctx, &base).await?;
    if !deleting {
        let interval_ms = base
            .spec
            .gateway
            .as_ref()
            .and_then(|g| g.leader_poll_interval.as_deref())
            .and_then(|s| parse_duration_ms(s).ok())
            .filter(|ms| *ms >= 100)
            .unwrap_or(1000);
        let targets: Vec<Target> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                agent_url(p, Some(base.spec.port)).map(|url| Target {
                    pod: p.name_any(),
                    url,
                })
            })
            .collect();
        observed.writer = ctx.writers.track(
            key.clone(),
            targets,
            Duration::from_millis(interval_ms as u64),
        );
        observed.replication_contract = ctx.writers.replication_contract(&key);
        observed.configurations = ctx.writers.configurations(&key);
        let absent = observed.replication_contract.values().filter(|ok| !**ok);
        ctx.metrics
            .contract_absent(&key.1, &key.2, absent.count() as i64);
    }
    let plan = plan_for(kind, &base, &observed);
    kube_io::perform(&ctx, kind, &base, &plan).await?;
    publish_events(&ctx, &base_ref, &plan).await;

    if deleting {
        let age = base
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| {
                let deleted_ms = u64::try_from(t.0.as_millisecond()).unwrap_or(0);
                Duration::from_millis(ctx.writers.clock().now().0.saturating_sub(deleted_ms))
            })
            .unwrap_or_default();
        let timed_out = age >= ctx.cleanup_timeout;
        if plan.finalized || timed_out {
            if timed_out && !plan.finalized {
                let ev = KubeEvent {
                    type_: EventType::Warning,
                    reason: "CleanupAbandoned".into(),
                    note: Some(format!(
                        "cleanup did not finish within {:?}; removing the finalizer anyway (check the Gateway route and PVCs by hand)",
                        ctx.cleanup_timeout
                    )),
                    action: "Finalize".into(),
                    secondary: None,
                };
                ctx.metrics.write("create", "Event");
                let _ = ctx.recorder.publish(&ev, &base_ref).await;
            }
            patch_finalizers(&ctx, kind, &base, false).await?;
            ctx.writers.untrack(&key);
            ctx.forget_peer_key(&base);
            info!(base = %key.2, namespace = %key.1, "cleanup done; finalizer removed");
            return Ok(Action::await_change());
        }
    }
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&base.uid().unwrap_or_default());
    }
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(Action::requeue(Duration::from_millis(
        plan.requeue_after_ms,
    )))
}

fn error_policy(uid: Option<String>, err: &Error, ctx: &Context) -> Action {
    ctx.metrics.fail(&err.reason());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(uid.unwrap_or_default()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let wait = backoff(n);
    // A 409 means we planned on a stale read: re-read soon rather than back off far.
    // A failed JSON-patch test (422) likewise means our read was stale.
    let wait = if matches!(err, Error::Kube(kube::Error::Api(s)) if s.code == 409 || s.code == 422)
    {
        Duration::from_millis(200)
    } else {
        wait
    };
    warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "reconcile failed");
    Action::requeue(wait)
}

/// `base-operator run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(metrics::serve(args.metrics_addr, metrics.clone()));

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "base-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let mut elector = leader::Elector::new(
        client.clone(),
        leader::LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_every: args.lease_renew,
            retry_every: Duration::from_secs(2),
        },
    );
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    info!(%identity, lease = %args.lease_name, "waiting for the operator lease");
    elector.acquire().await;
    metrics.leader.set(1);
    info!(%identity, "holding the operator lease; starting the controllers");

    let mut config = OperatorConfig {
        resync_ms: args.resync.as_millis() as u64,
        operator_namespace: Some(args.lease_namespace.clone()),
        ..OperatorConfig::default()
    };
    if let Some(img) = &args.agent_image {
        config.agent_image = img.clone();
    }
    // Feature detection, not a version table in the core: the plan is told what the server takes.
    match client.apiserver_version().await {
        Ok(v) => {
            let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
            config.sts_pvc_retention_policy = v.major == "1" && minor >= 27;
            if v.major == "1" && minor < 21 {
                config.pdb_api_version = "policy/v1beta1".into();
            }
            info!(version = %v.git_version, pvc_retention_policy = config.sts_pvc_retention_policy, "API server");
        }
        Err(e) => {
            warn!(error = %e, "cannot read the API server version; assuming a current server")
        }
    }
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<BaseKey>();
    let (base_tx, base_rx) = mpsc::unbounded_channel::<ObjectRef<Base>>();
    let (app_tx, app_rx) = mpsc::unbounded_channel::<ObjectRef<BaseApp>>();
    tokio::spawn(async move {
        while let Some((kind, ns, name)) = wake_rx.recv().await {
            // A closed channel only means the controllers are shutting down.
            match kind {
                Kind::Base => drop(base_tx.send(ObjectRef::new(&name).within(&ns))),
                Kind::BaseApp => drop(app_tx.send(ObjectRef::new(&name).within(&ns))),
            }
        }
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "base-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        writers: Writers::new(wake_tx),
        cleanup_timeout: args.cleanup_timeout,
        failures: Mutex::default(),
        peer_keys: Mutex::default(),
    });

    let ns = args.namespace.clone();
    let bases: Api<Base> = scoped(&client, &ns);
    let apps: Api<BaseApp> = scoped(&client, &ns);
    macro_rules! owned {
        ($c:expr) => {{
            $c.owns(
                scoped::<k8s_openapi::api::apps::v1::StatefulSet>(&client, &ns),
                watcher::Config::default(),
            )
            .owns(
                scoped::<k8s_openapi::api::core::v1::Service>(&client, &ns),
                watcher::Config::default(),
            )
            // Pods are owned by the StatefulSet, not the Base: map them by their Base label, so
            // readiness and writer-label changes re-plan their Base at once.
            .watches(
                scoped::<Pod>(&client, &ns),
                watcher::Config::default().labels(base_core::reconcile::objects::LABEL_BASE),
                |pod: Pod| {
                    let base = pod
                        .labels()
                        .get(base_core::reconcile::objects::LABEL_BASE)
                        .cloned();
                    base.map(|b| ObjectRef::new(&b).within(&pod.namespace().unwrap_or_default()))
                },
            )
        }};
    }
    let wc = watcher::Config::default().any_semantic();
    let gw_ar = kube_io::resource(route::GATEWAY_API_VERSION, route::GATEWAY_KIND);
    // Gateways may live in other namespaces than their Bases: watch them cluster-wide unless scoped.
    let gw_api: Api<DynamicObject> = match &ns {
        Some(n) => Api::namespaced_with(client.clone(), n, &gw_ar),
        None => Api::all_with(client.clone(), &gw_ar),
    };
    // With backoff: where the Gateway CRD is not installed the watch fails, and must not spin.
    // Its errors stop here: the controller backs off its whole trigger stream at each error it sees
    // (up to a minute), so a Gateway watch failing every second (no Gateway CRD: 404) kept the Base
    // watch, and the store the reconciles read, that far behind.
    let gw_events = || {
        watcher::watcher(gw_api.clone(), watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .filter_map(|r| async move {
                r.map_err(|e| tracing::debug!(error = %e, "Gateway watch failed; retrying"))
                    .ok()
                    .map(Ok::<_, watcher::Error>)
            })
    };
    let base_ctl = Controller::new(bases, wc.clone());
    let base_store = base_ctl.store();
    let base_reader = base_ctl.store();
    // Concurrency is bounded by a FIFO admission per kind, not by the runner (see `admission`).
    let ctl_config = admission::runner_config(args.debounce);
    let (base_admission, app_admission) = (
        Admission::new(args.concurrency),
        Admission::new(args.concurrency),
    );
    {
        let (a, b) = (base_admission.clone(), app_admission.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            a.close();
            b.close();
        });
    }
    let base_ctl = base_ctl
        .with_config(ctl_config.clone())
        .trigger_backoff(TriggerBackoff::default());
    let base_ctl = owned!(base_ctl)
        .watches_stream_with(
            gw_events(),
            move |gw| referring(&base_store, &gw, |b: &Base| &b.spec),
            gw_ar.clone(),
        )
        .reconcile_on(tokio_stream_from(base_rx))
        .shutdown_on_signal()
        .run(
            base_admission.clone().wrap(
                base_reader,
                |b: Arc<Base>, ctx: Arc<Context>| async move {
                    let r = b.object_ref(&());
                    reconcile(Kind::Base, (*b).clone(), r, ctx).await
                },
            ),
            |b: Arc<Base>, e: &Error, ctx: Arc<Context>| error_policy(b.uid(), e, &ctx),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let app_ctl = Controller::new(apps, wc);
    let app_store = app_ctl.store();
    let app_reader = app_ctl.store();
    let app_ctl = app_ctl
        .with_config(ctl_config)
        .trigger_backoff(TriggerBackoff::default());
    let app_ctl = owned!(app_ctl)
        .watches_stream_with(
            gw_events(),
            move |gw| referring(&app_store, &gw, |b: &BaseApp| &b.spec.0),
            gw_ar.clone(),
        )
        .reconcile_on(tokio_stream_from(app_rx))
        .shutdown_on_signal()
        .run(
            app_admission.clone().wrap(
                app_reader,
                |b: Arc<BaseApp>, ctx: Arc<Context>| async move {
                    let r = b.object_ref(&());
                    reconcile(Kind::BaseApp, Base::from((*b).clone()), r, ctx).await
                },
            ),
            |b: Arc<BaseApp>, e: &Error, ctx: Arc<Context>| error_policy(b.uid(), e, &ctx),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });

    let controllers = futures::future::join(base_ctl, app_ctl);
    tokio::select! {
        _ = controllers => info!("controllers stopped"),
        _ = elector.keep() => {
            error!("lost the operator lease; exiting so that only the holder reconciles");
            metrics.leader.set(0);
            std::process::exit(1);
        }
        r = server => {
            if let Ok(Err(e)) = r {
                error!(error = %e, "metrics server failed");
            }
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM: the signals on which the controllers (`shutdown_on_signal`) shut down.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        () = int => {}
        () = term => {}
    }
}

/// The Bases (or BaseApps) whose route goes into this Gateway, to re-plan when it changes.
fn referring<K>(
    store: &Store<K>,
    gw: &DynamicObject,
    spec_of: fn(&K) -> &BaseSpec,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (gw_name, gw_ns) = (gw.name_any(), gw.namespace().unwrap_or_default());
    store
        .state()
        .into_iter()
        .filter(|b| {
            let ns = b.meta().namespace.clone().unwrap_or_default();
            spec_of(b)
                .gateway
                .as_ref()
                .filter(|g| g.route.is_some())
                .is_some_and(|g| {
                    g.gateway_name
                        .as_deref()
                        .unwrap_or(base_core::crd::DEFAULT_GATEWAY_NAME)
                        == gw_name
                        && g.gateway_namespace.as_deref().unwrap_or(&ns) == gw_ns
                })
        })
        .map(|b| ObjectRef::from_obj(&*b))
        .collect()
}

/// An API over one namespace, or all of them.
fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

/// An mpsc receiver as a `Stream`.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::TriggerBackoff;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn trigger_backoff_doubles_to_its_cap_and_resets() {
        let mut b = TriggerBackoff::default();
        let within = |d: Duration, of: Duration| d >= of.mul_f64(0.79) && d <= of.mul_f64(1.21);
        for want in [200, 400, 800, 1600, 2000, 2000] {
            let d = b.next().unwrap();
            assert!(within(d, Duration::from_millis(want)), "{d:?} vs {want} ms");
        }
        b.reset();
        assert!(within(b.next().unwrap(), Duration::from_millis(200)));
    }
}
