//! `kubectl base …`: the kubectl plugin (binary `kubectl-base`). It talks only to the Kubernetes
//! API with the caller's own credentials (kubeconfig, `--context`, `-n` like kubectl):
//!
//! - `status NAME`: replicas, writer, term, the writer's lease, each replica's role and readiness,
//!   the last failover and the conditions; each agent's own `/_ha/leader` answer is read through
//!   the API server's pod proxy, best effort (`-` when it cannot be read);
//! - `switchover NAME --to POD`: sets `hanzo.ai/switchover-to` and follows the `Switchover`
//!   condition until `Done` or `Refused` (bounded by `--wait`);
//! - `fence NAME [POD|--all]` / `unfence NAME [POD|--all]`: edit the JSON list in
//!   `hanzo.ai/fenced-instances` with a merge patch guarded by resourceVersion (retried on 409).
//!
//! Every decision about the cluster is the operator's: the plugin only writes the annotations of
//! the contract and reads what the operator reports.

pub mod fence;
pub mod format;
pub mod status;
pub mod switchover;
mod target;

pub use target::{BaseRef, pods_of};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The annotations of the contract: `switchover-to` and `fenced-instances` on the Base (set by
/// the user), `fenced` on a pod (set by the operator).
pub use base_core::reconcile::objects::{
    ANNOTATION_FENCED_INSTANCES, ANNOTATION_POD_FENCED, ANNOTATION_SWITCHOVER_TO,
};
/// The status condition the operator reports switchovers in.
pub const CONDITION_SWITCHOVER: &str = base_core::reconcile::CONDITION_SWITCHOVER;
/// The condition whose last transition is the last change of writer.
pub const CONDITION_WRITER: &str = base_core::reconcile::CONDITION_WRITER;
/// Pods carry their Base's name in this label.
pub const LABEL_BASE: &str = base_core::reconcile::objects::LABEL_BASE;
/// The label the operator puts on the writer pod, and its value.
pub const LABEL_ROLE: &str = base_core::reconcile::objects::LABEL_ROLE;
pub const ROLE_WRITER: &str = base_core::reconcile::objects::ROLE_WRITER;

/// How many times an annotation edit is retried after a 409 Conflict.
pub const MAX_CONFLICT_RETRIES: u32 = 10;
/// Time limit of one agent's `/_ha/leader` read through the pod proxy.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),
    #[error("Base {name} not found in namespace {namespace}")]
    BaseNotFound { name: String, namespace: String },
    #[error("pod {pod} is not a pod of Base {base} in namespace {namespace} (its pods: {pods})")]
    NotAPod {
        pod: String,
        base: String,
        namespace: String,
        pods: String,
    },
    #[error(
        "annotation {key} on Base {base} is not a JSON list of pod names ({problem}); fix it, or remove it with: kubectl annotate base {base} -n {namespace} {key}-"
    )]
    BadAnnotation {
        key: &'static str,
        base: String,
        namespace: String,
        problem: String,
    },
    #[error(
        "every instance of Base {base} is fenced (\"*\"); unfence them all with `kubectl base unfence {base} --all -n {namespace}`, then fence the others by name"
    )]
    UnfenceOneOfAll { base: String, namespace: String },
    #[error(
        "a switchover of Base {base} to {pending} is already requested; wait for it, or cancel it with: kubectl annotate base {base} -n {namespace} {key}-",
        key = ANNOTATION_SWITCHOVER_TO
    )]
    SwitchoverPending {
        base: String,
        namespace: String,
        pending: String,
    },
    #[error(
        "pod {pod} is fenced, so it cannot become the writer; unfence it first: kubectl base unfence {base} {pod} -n {namespace}"
    )]
    TargetFenced {
        pod: String,
        base: String,
        namespace: String,
    },
    #[error("switchover to {to} refused: {message}")]
    SwitchoverRefused { to: String, message: String },
    #[error(
        "switchover to {to} not finished after {waited} (last seen: {last}); the request stays in place and the operator goes on with it: follow it with `kubectl base status {base} -n {namespace}`"
    )]
    SwitchoverTimeout {
        to: String,
        base: String,
        namespace: String,
        waited: String,
        last: String,
    },
    #[error("Base {base} changed {tries} times while it was being edited; try again")]
    Conflicts { base: String, tries: u32 },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The flags kubectl users expect; accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// The namespace of the Base (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-base",
    bin_name = "kubectl base",
    version,
    about = "Operate Hanzo Base apps: status, switchover, fencing"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Replicas, writer, term, lease, each replica's role and readiness, last failover, conditions.
    Status(status::StatusArgs),
    /// Ask the operator to move the writer role to POD, and follow it until done or refused.
    Switchover(switchover::SwitchoverArgs),
    /// Fence POD (or --all): it accepts no writes and stands for no election; reads continue.
    Fence(fence::FenceArgs),
    /// Lift the fence from POD (or --all).
    Unfence(fence::FenceArgs),
}

/// A client for the chosen kubeconfig and context, and the namespace to work in.
pub async fn connect(g: &GlobalArgs) -> Result<(Client, String), PluginError> {
    let cfg_err = |e: &dyn std::fmt::Display| PluginError::Config(e.to_string());
    let options = KubeConfigOptions {
        context: g.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&g.kubeconfig, &g.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| PluginError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| cfg_err(&e))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| cfg_err(&e))?,
        (None, None) => Config::infer().await.map_err(|e| cfg_err(&e))?,
    };
    let namespace = g
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok((client, namespace))
}

/// Runs one command; its output goes to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), PluginError> {
    let (client, namespace) = connect(&cli.global).await?;
    match cli.command {
        Command::Status(args) => status::run(&client, &namespace, &args, out).await,
        Command::Switchover(args) => switchover::run(&client, &namespace, &args, out).await,
        Command::Fence(args) => fence::run(&client, &namespace, &args, fence::Op::Fence, out).await,
        Command::Unfence(args) => {
            fence::run(&client, &namespace, &args, fence::Op::Unfence, out).await
        }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
