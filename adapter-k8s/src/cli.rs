//! The offline subcommands: `crd` and `render`. They need no cluster.

use anyhow::{Context, Result, bail};
use base_core::reconcile::{GatewayView, Observed, OperatorConfig, plan_for};
use base_core::validate::validate;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// A Base (or legacy BaseApp) manifest, YAML or JSON; `-` reads standard input.
    pub file: PathBuf,
    /// Image of the Quasar agent container (default: this operator's own image).
    #[arg(long, env = "BASE_AGENT_IMAGE")]
    pub agent_image: Option<String>,
}

pub fn crd(out: &mut impl Write) -> Result<()> {
    out.write_all(base_core::crdgen::crds_yaml()?.as_bytes())?;
    Ok(())
}

/// Prints every object the reconciler would create for the manifest, or fails naming the field.
pub fn render(args: &RenderArgs, out: &mut impl Write) -> Result<()> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let (kind, base) =
        base_core::manifest::parse(&text).with_context(|| format!("{}", args.file.display()))?;
    let name = base.metadata.name.clone().unwrap_or_default();
    if let Err(invalid) = validate(&name, &base.spec) {
        bail!("{}: {invalid}", args.file.display());
    }
    // Render as if the Gateway existed with no routes, to show the entry that would be injected.
    let mut observed = Observed {
        gateway: GatewayView::Found(serde_json::json!({"spec": {"routes": []}})),
        ..Observed::default()
    };
    if let Some(img) = &args.agent_image {
        observed.config = OperatorConfig {
            agent_image: img.clone(),
            ..OperatorConfig::default()
        };
    }
    let plan = plan_for(kind, &base, &observed);
    for obj in &plan.desired {
        out.write_all(b"---\n")?;
        out.write_all(serde_norway::to_string(&obj.body)?.as_bytes())?;
    }
    writeln!(
        out,
        "# Secret {} (key `current`) is created once by the operator with a random key; never printed.",
        base_core::reconcile::objects::peer_key_secret_name(&name)
    )?;
    if let Some(gw) = &plan.gateway {
        let patch = serde_json::json!({
            "apiVersion": base_core::reconcile::route::GATEWAY_API_VERSION,
            "kind": base_core::reconcile::route::GATEWAY_KIND,
            "metadata": {"name": gw.name, "namespace": gw.namespace},
            "spec": {"routes": gw.routes},
        });
        writeln!(
            out,
            "---\n# The route entry injected into Gateway {}/{} (its other routes are kept).",
            gw.namespace, gw.name
        )?;
        out.write_all(serde_norway::to_string(&patch)?.as_bytes())?;
    }
    Ok(())
}
