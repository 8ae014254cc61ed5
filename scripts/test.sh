#!/usr/bin/env bash
# Every test of the project: unit, property and scenario tests, the CLI and multi-process tests, the
# operator against a real kube-apiserver, and end to end on real pods (tests/cluster.rs: a one-node
# cluster with a kubelet and Docker, scripts/cluster.sh; the Kubernetes binaries are built once from
# Debian sources, then cached; Debian's docker.io is installed when missing).
# The README's test command; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/host-deps.sh
./scripts/cluster.sh build
cargo test --workspace --locked --no-fail-fast
# The deterministic simulation (madsim build, in its own target dir; README "Simulation").
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}-sim" cargo sim-test --locked
./scripts/fuzz-smoke.sh
