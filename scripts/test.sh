#!/usr/bin/env bash
# Every test of the project: unit, property and scenario tests, the CLI and multi-process tests.
# The README's test command; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked --no-fail-fast
./scripts/fuzz-smoke.sh
