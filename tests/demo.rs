//! The main job where containers cannot run (issue 17): `scripts/demo.sh` runs
//! `scripts/cluster.sh up`, and on its exit 3 ("this host cannot run containers", with the reason)
//! runs the apiserver-only demo, `scripts/demo-apiserver.sh`, instead. Both halves, for real:
//! `cluster.sh up` as a user who is not root exits 3 naming why, before it starts or changes
//! anything; and `demo-apiserver.sh` goes through to the objects the operator made for the
//! example Base against a real kube-apiserver.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::{ROOT, run};

/// As `nobody`, `cluster.sh up` exits 3 (the code demo.sh falls back on), says it needs root, and
/// leaves its directory empty: no daemon, bridge or mount was started for a cluster it cannot run.
/// The script is copied where `nobody` may read it (the checkout may sit under a private home).
#[test]
fn cluster_up_without_root_exits_3_and_says_why() {
    let tmp = std::env::temp_dir().join(format!("base-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("scripts")).expect("temp dir");
    let script = tmp.join("scripts/cluster.sh");
    std::fs::copy(format!("{ROOT}/scripts/cluster.sh"), &script).expect("copy cluster.sh");
    let state = tmp.join("state");
    for p in [&tmp, &tmp.join("scripts"), &script] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--reset-env",
        ])
        .arg(&script)
        .arg("up")
        .arg(&state)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit 3 (cannot run containers here); stderr: {stderr}"
    );
    assert!(
        stderr.contains("cannot run containers here: needs root"),
        "the reason is given: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "nothing started or written: {left:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The fallback itself: `demo-apiserver.sh` starts a kube-apiserver, runs the operator against it
/// as the least-privilege user, applies the example Base and shows what the operator made (the
/// StatefulSet, the three Services, the PDB, the Gateway route), then stops everything it started.
#[test]
fn the_apiserver_only_demo_shows_the_operators_objects() {
    let (ok, out, err) = run(Command::new(format!("{ROOT}/scripts/demo-apiserver.sh"))
        .env("BASE_OPERATOR_BIN", support::BIN)
        .current_dir(ROOT));
    assert!(ok, "demo-apiserver.sh failed:\n{out}\n{err}");
    for want in [
        "statefulset.apps/my-app",
        "service/my-app-hs",
        "service/my-app-writer",
        "poddisruptionbudget.policy/my-app",
        "/v1/my-app",
    ] {
        assert!(out.contains(want), "the demo shows {want}:\n{out}");
    }
}
