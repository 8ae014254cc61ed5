//! `base-operator`: the one binary of the Hanzo Base operator. Each subcommand is a thin entry point
//! into the library; see ARCHITECTURE.md for the command-line contracts.

use anyhow::Result;
use clap::{Parser, Subcommand};

// Every reconcile builds and compares a few hundred small JSON values; mimalloc makes that about
// 1.5–1.7x cheaper than glibc's malloc (BENCHMARKS.md, `plan`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "base-operator",
    version,
    about = "Runs Hanzo Base apps on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CRDs (Base and the legacy BaseApp) as multi-document YAML.
    Crd,
    /// Print every object the reconciler would create for the Base in FILE, as multi-document YAML.
    Render(base_adapter_k8s::cli::RenderArgs),
    /// Run the tracking reverse proxy: writes to the writer, reads spread, 503 when no writer.
    Gateway(base_adapter_k8s::gateway::GatewayArgs),
    /// Run the controller (kubeconfig or in-cluster config).
    Run(base_adapter_k8s::controller::RunArgs),
    /// Run the Quasar agent beside Base: writer election with its peers, and the pod's front door.
    Agent(base_adapter_k8s::agent::AgentArgs),
    /// Run the reference Base store: SQLite with rqlite's data API and the replica contract.
    Store(base_adapter_k8s::store::StoreArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => base_adapter_k8s::cli::crd(&mut std::io::stdout().lock()),
        Command::Render(args) => {
            base_adapter_k8s::cli::render(&args, &mut std::io::stdout().lock())
        }
        Command::Gateway(args) => base_adapter_k8s::gateway::run(args).await,
        Command::Run(args) => base_adapter_k8s::controller::run(args).await,
        Command::Agent(args) => base_adapter_k8s::agent::run(args).await,
        Command::Store(args) => base_adapter_k8s::store::run(args).await,
    }
}
