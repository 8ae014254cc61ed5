#!/usr/bin/env bash
# Host packages the build needs beyond a Rust toolchain, installed from Debian when missing.
# rusqlite's `session` feature (the reference store) generates its SQLite bindings with bindgen,
# which needs libclang.
set -euo pipefail
if ! ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then
  echo "== installing libclang-dev (bindgen, for rusqlite's session feature)"
  apt-get update -qq && apt-get install -y -qq libclang-dev >/dev/null
fi
