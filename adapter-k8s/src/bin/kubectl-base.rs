//! `kubectl-base`: the kubectl plugin of the Hanzo Base operator (`kubectl base …` once it is on
//! the PATH). See `base_adapter_k8s::plugin`.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = base_adapter_k8s::plugin::Cli::parse();
    let result: anyhow::Result<()> = base_adapter_k8s::plugin::run(cli, &mut std::io::stdout())
        .await
        .map_err(anyhow::Error::from);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
