//! `base-operator store`: the reference Base store. Real SQLite behind rqlite's HTTP data API
//! (`/db/execute`, `/db/query`), implementing the replica contract (`docs/replica-contract.md`):
//! replication state, pushed role and term, term-fenced writes answered with their log entry, log
//! shipping (served to, and applied from, the agent), snapshots.
//!
//! Layers: [`log`] decides (pure), [`db`] performs on the write connection, [`read`] serves
//! queries on connections of its own, [`sql`] is the data API's statements, values and
//! authorizer, [`entry`] the bytes of entries, [`http`] serves. One thread owns the write
//! connection and runs writes in batches: every request queued while the previous batch was
//! being made durable goes into the next transaction (one fsync for all: group commit).
//!
//! The agent is the only caller meant to reach it: everything but `/healthz` (the kubelet's
//! liveness probe, which comes to the pod's address) is answered only to loopback peers.
//! Holding a write's answer until commit, and pushing role and term, are the agent's (issue 15
//! §3): the seam is `PUT /_replica/role` and the `X-Base-Log-Index` of every write's answer.

pub mod db;
pub mod entry;
pub mod http;
pub mod log;
pub mod read;
pub mod sql;
pub mod tail;

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The `base` container's data volume (`base_core::reconcile::objects::DATA_MOUNT`): the store
/// keeps its files in a directory of its own there (the agent keeps `quasar/`).
pub const DEFAULT_DATA_DIR: &str = "/data/store";
/// Base's own default port, when `BASE_PORT` is not set either.
pub const DEFAULT_PORT: u16 = 8090;

#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// HOST:PORT to listen on (default `0.0.0.0:$BASE_PORT`, the port the operator gives the
    /// `base` container; only loopback peers get anything but `/healthz`).
    #[arg(long, env = "BASE_STORE_LISTEN")]
    pub listen: Option<String>,
    /// The directory of the database file (default: on the pod's data volume).
    #[arg(long, env = "BASE_STORE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Entries kept in the log below commit, for replicas a little behind.
    #[arg(long, env = "BASE_STORE_LOG_KEEP", default_value_t = 10_000)]
    pub log_keep: u64,
    /// The largest `/db/execute` or `/db/query` body accepted.
    #[arg(long, env = "BASE_STORE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// The largest snapshot accepted by `PUT /_replica/snapshot`.
    #[arg(long, env = "BASE_STORE_MAX_SNAPSHOT_BYTES", default_value_t = 16 << 30)]
    pub max_snapshot_bytes: u64,
}

pub fn listen_addr(args: &StoreArgs, base_port: Option<&str>) -> Result<SocketAddr> {
    if let Some(l) = &args.listen {
        return l
            .parse()
            .with_context(|| format!("--listen {l:?} is not HOST:PORT"));
    }
    let port = match base_port {
        None => DEFAULT_PORT,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => bail!("BASE_PORT {p:?} is not a port number"),
        },
    };
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

pub async fn run(args: StoreArgs) -> Result<()> {
    crate::controller::init_logging(crate::controller::LogFormat::Text);
    let addr = listen_addr(&args, std::env::var("BASE_PORT").ok().as_deref())?;
    let dir = args.data_dir.clone();
    let keep = args.log_keep;
    let store = tokio::task::spawn_blocking(move || db::Store::open(&dir, keep))
        .await?
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let state = store.state();
    tracing::info!(
        dir = %args.data_dir.display(), position = state.position, term = state.term,
        role = state.role, commit = state.commit, "store open"
    );
    let app = http::App::start(store, &args);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, "serving");
    let router = http::router(Arc::new(app));
    axum::serve(
        crate::net::nodelay(listener),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_base_port_unless_listen_is_given() {
        let mut args = StoreArgs {
            listen: None,
            data_dir: DEFAULT_DATA_DIR.into(),
            log_keep: 1,
            max_body_bytes: 1,
            max_snapshot_bytes: 1,
        };
        assert_eq!(
            listen_addr(&args, Some("8091")).unwrap(),
            "0.0.0.0:8091".parse().unwrap()
        );
        assert_eq!(listen_addr(&args, None).unwrap().port(), DEFAULT_PORT);
        assert!(listen_addr(&args, Some("x")).is_err());
        assert!(listen_addr(&args, Some("0")).is_err());
        args.listen = Some("127.0.0.1:9".into());
        assert_eq!(
            listen_addr(&args, Some("8091")).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
    }
}
