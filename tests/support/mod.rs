//! Harness for tests against a real kube-apiserver: starts etcd + kube-apiserver +
//! kube-controller-manager with `scripts/k8s-envtest.sh`, runs `base-operator` processes against it,
//! and stops everything on drop.

#![allow(dead_code)]

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
pub const BIN: &str = env!("CARGO_BIN_EXE_base-operator");

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub operator_kubeconfig: PathBuf,
    pub client: Client,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("base-envtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = Command::new(format!("{ROOT}/scripts/k8s-envtest.sh"))
            .arg("start")
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/k8s-envtest.sh");
        assert!(
            out.status.success(),
            "the local apiserver did not start; see {}",
            dir.display()
        );
        let kubeconfig = dir.join("kubeconfig");
        let client = client_for(&kubeconfig).await;
        Cluster {
            operator_kubeconfig: dir.join("kubeconfig-operator"),
            dir,
            kubeconfig,
            client,
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(ROOT)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The (verb, group, resource) of every request the user `base-operator` made, from the audit log.
    pub fn operator_calls(&self) -> Vec<(String, String, String, u16)> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["user"]["username"] == "base-operator" && e["stage"] == "ResponseComplete"
            })
            .filter_map(|e| {
                let r = &e["objectRef"];
                let resource = r["resource"].as_str()?;
                let resource = match r["subresource"].as_str() {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.to_string(),
                };
                Some((
                    e["verb"].as_str()?.to_string(),
                    r["apiGroup"].as_str().unwrap_or("").to_string(),
                    resource,
                    e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                ))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/scripts/k8s-envtest.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `base-operator run` process; killed on drop.
pub struct Operator {
    pub child: Child,
    pub metrics_port: u16,
}

impl Operator {
    pub fn spawn(cluster: &Cluster, identity: &str, extra: &[&str]) -> Operator {
        let metrics_port = free_port();
        let log = std::fs::File::create(cluster.dir.join(format!("operator-{identity}.log")))
            .expect("log file");
        let child = Command::new(BIN)
            .arg("run")
            .args(["--identity", identity, "--lease-namespace", "base-system"])
            .args([
                "--lease-duration",
                "3s",
                "--lease-renew",
                "1s",
                "--resync",
                "2s",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--agent-image", "base-operator:test"])
            .args(extra)
            .env("KUBECONFIG", &cluster.operator_kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn base-operator run");
        Operator {
            child,
            metrics_port,
        }
    }

    pub async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Sum of a counter family (all label sets), `None` while the endpoint is not up.
    pub async fn counter(&self, family: &str) -> Option<f64> {
        let text = self.metrics().await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(family) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, or fails the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
