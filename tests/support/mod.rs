//! Harness for tests against a real kube-apiserver: starts etcd + kube-apiserver +
//! kube-controller-manager with `scripts/k8s-envtest.sh`, runs `base-operator` processes against it,
//! and stops everything on drop.

#![allow(dead_code)]

pub mod api_proxy;

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
        run(Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(ROOT))
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
        outcome(child.wait_with_output().expect("kubectl output"))
    }

    /// Every request the user `base-operator` made, in the audit log's order.
    pub fn operator_requests(&self) -> Vec<AuditedCall> {
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
                Some(AuditedCall {
                    verb: e["verb"].as_str()?.to_string(),
                    group: r["apiGroup"].as_str().unwrap_or("").to_string(),
                    resource,
                    name: r["name"].as_str().unwrap_or("").to_string(),
                    code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                    at: e["stageTimestamp"].as_str()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Kills the kube-apiserver and starts it again (same port, certificates and etcd): every
    /// client's watch is cut and resumes against a new watch cache. Returns when the operator's
    /// user is authorized again, with the window in which it was down or not yet authorizing
    /// (a restarted apiserver denies everyone until its RBAC cache has synced).
    pub fn restart_apiserver(
        &self,
    ) -> (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) {
        let from = k8s_openapi::jiff::Timestamp::now();
        let status = Command::new(format!("{ROOT}/scripts/k8s-envtest.sh"))
            .arg("restart-apiserver")
            .arg(&self.dir)
            .status()
            .expect("run scripts/k8s-envtest.sh restart-apiserver");
        assert!(
            status.success(),
            "the apiserver did not come back; see {}",
            self.dir.display()
        );
        (from, k8s_openapi::jiff::Timestamp::now())
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

/// One request of the audit log.
#[derive(Clone, Debug)]
pub struct AuditedCall {
    pub verb: String,
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub name: String,
    pub code: u16,
    /// When the response completed (`stageTimestamp`).
    pub at: k8s_openapi::jiff::Timestamp,
}

/// Runs `cmd` to its end: (exited 0, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let program = cmd.get_program().to_string_lossy().into_owned();
    outcome(
        cmd.output()
            .unwrap_or_else(|e| panic!("run {program}: {e}")),
    )
}

fn outcome(out: std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    /// Its stderr (the log; every spawn of an identity appends to the same file).
    pub log: PathBuf,
}

impl Operator {
    /// With a 3 s Lease renewed every second, and a 2 s resync.
    pub fn spawn(cluster: &Cluster, identity: &str, extra: &[&str]) -> Operator {
        Operator::spawn_with_lease(cluster, identity, "3s", "1s", extra)
    }

    /// With its own Lease timing (e.g. a Lease that outlives an apiserver restart).
    pub fn spawn_with_lease(
        cluster: &Cluster,
        identity: &str,
        lease_duration: &str,
        lease_renew: &str,
        extra: &[&str],
    ) -> Operator {
        Operator::spawn_inner(
            cluster,
            &cluster.operator_kubeconfig,
            identity,
            (lease_duration, lease_renew),
            extra,
        )
    }

    /// Through another kubeconfig of the operator's user (e.g. an [`api_proxy::ApiProxy`]).
    pub fn spawn_via(
        cluster: &Cluster,
        kubeconfig: &Path,
        identity: &str,
        extra: &[&str],
    ) -> Operator {
        Operator::spawn_inner(cluster, kubeconfig, identity, ("3s", "1s"), extra)
    }

    fn spawn_inner(
        cluster: &Cluster,
        kubeconfig: &Path,
        identity: &str,
        (lease_duration, lease_renew): (&str, &str),
        extra: &[&str],
    ) -> Operator {
        let metrics_port = free_port();
        let log_path = cluster.dir.join(format!("operator-{identity}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = Command::new(BIN)
            .arg("run")
            .args(["--identity", identity, "--lease-namespace", "base-system"])
            .args([
                "--lease-duration",
                lease_duration,
                "--lease-renew",
                lease_renew,
                "--resync",
                "2s",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--agent-image", "base-operator:test"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // The watcher's debug lines name the watch errors (a 410 Gone among them).
            .env("RUST_LOG", "info,kube=warn,kube_runtime::watcher=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn base-operator run");
        Operator {
            child,
            metrics_port,
            log: log_path,
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
    /// A sample counts when its name is `family` or `family_total`.
    pub async fn counter(&self, family: &str) -> Option<f64> {
        let text = self.metrics().await?;
        let total = format!("{family}_total");
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| {
                    let name = l.split(['{', ' ']).next().unwrap_or_default();
                    name == family || name == total
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// A counter that must be readable: fails the test when the metrics endpoint does not answer.
    pub async fn counter_now(&self, family: &str) -> f64 {
        match self.counter(family).await {
            Some(v) => v,
            None => panic!(
                "the operator's metrics endpoint (port {}) did not answer for {family}",
                self.metrics_port
            ),
        }
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
