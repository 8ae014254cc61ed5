//! The offline subcommands as a user runs them: `crd` and `render`.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_base-operator");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run base-operator");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn checked_in_crd_matches_the_types() {
    let (ok, generated, err) = run(&["crd"]);
    assert!(ok, "{err}");
    let checked_in =
        std::fs::read_to_string(format!("{ROOT}/deploy/crd.yaml")).expect("deploy/crd.yaml");
    assert!(
        generated == checked_in,
        "deploy/crd.yaml is out of date: run `cargo run -p base-adapter-k8s --bin base-operator -- crd > deploy/crd.yaml`"
    );
    assert!(
        generated.contains("name: bases.hanzo.ai") && generated.contains("name: baseapps.hanzo.ai")
    );
    assert!(generated.contains("- bapp"));
}

#[test]
fn render_prints_the_example_objects() {
    let (ok, out, err) = run(&["render", "deploy/examples/my-app.yaml"]);
    assert!(ok, "{err}");
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Service/my-app-hs",
            "Service/my-app",
            "Service/my-app-writer",
            "StatefulSet/my-app",
            "PodDisruptionBudget/my-app",
            "Gateway/gateway"
        ]
    );
}

#[test]
fn render_refuses_invalid_specs_naming_the_field() {
    let example = std::fs::read_to_string(format!("{ROOT}/deploy/examples/my-app.yaml")).unwrap();
    let dir = std::env::temp_dir().join(format!("base-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to, field) in [
        ("replicas: 3", "replicas: 4", "spec.replicas"),
        ("port: 8090", "port: 0", "spec.port"),
        (
            "leaderPollInterval: 2s",
            "leaderPollInterval: fast",
            "spec.gateway.leaderPollInterval",
        ),
        ("size: 10Gi", "size: ten", "spec.storage.size"),
        ("replicas: 3", "replicas: three", "spec.replicas"),
    ] {
        let file = dir.join("bad.yaml");
        std::fs::write(&file, example.replace(from, to)).unwrap();
        let (ok, out, err) = run(&["render", file.to_str().unwrap()]);
        assert!(!ok, "{to}: must fail");
        assert!(out.is_empty(), "{to}: nothing printed on stdout");
        assert!(err.contains(field), "{to}: error must name {field}: {err}");
    }
    let (ok, _, err) = run(&["render", "no/such/file.yaml"]);
    assert!(!ok && err.contains("no/such/file.yaml"));
}
