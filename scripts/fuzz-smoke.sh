#!/usr/bin/env bash
# Fuzz smoke test (CI): builds every cargo-fuzz target in fuzz/ and runs each for a short, bounded
# time from its seed corpus. Any crash, panic, timeout or out-of-memory fails the run. Then the
# election target's checker self-test (ELECTION_SELFTEST=1) must catch its planted bug on every seed.
#
# Stable Rust only: `-s none` (no sanitizer) needs no nightly toolchain.
# FUZZ_SECONDS sets the time per target (default 20). New corpus entries go to fuzz/target/corpus
# (ignored by git), so the seeds in fuzz/corpus/<target>/ stay as committed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (into ~/.cargo/bin)"
    cargo install cargo-fuzz --locked
fi

# fuzz/Cargo.lock is committed: refuse to build if it would have to change.
cargo metadata --locked --format-version 1 >/dev/null

targets=$(cargo fuzz list)
echo "== cargo fuzz build -s none (targets: $(echo $targets))"
cargo fuzz build -s none

failed=()
for t in $targets; do
    work="target/corpus/$t"
    mkdir -p "$work" "corpus/$t"
    echo "== fuzz $t for ${seconds}s"
    if ! cargo fuzz run -s none "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"target/fuzz-smoke-$t.log" 2>&1; then
        failed+=("$t")
        tail -n 60 "target/fuzz-smoke-$t.log"
        echo "== fuzz $t: FAILED (log: fuzz/target/fuzz-smoke-$t.log, input in fuzz/artifacts/$t/)"
    else
        grep -E '^(Done|stat::number_of_executed_units)' "target/fuzz-smoke-$t.log" || true
        echo "== fuzz $t: ok"
    fi
done

# Self-test of the election checker (fuzz/README.md): with ELECTION_SELFTEST=1 an elected writer's
# clock is slowed far past the drift bound and cut off, so every committed seed must end in the
# checker's "both accept writes" panic. A seed that runs clean, or fails another way, means the
# checker no longer sees the bug it exists for (a missing `election` binary fails here too).
# cargo fuzz builds where cargo would (CARGO_TARGET_DIR, which .ci/run sets, or fuzz/target).
target_dir=$(cargo metadata --locked --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release/election"
seeds=(corpus/election/*)
[ -e "${seeds[0]}" ] || { echo "== election self-test: no seeds in fuzz/corpus/election"; exit 1; }
caught=0
for seed in "${seeds[@]}"; do
    log="target/fuzz-selftest-$(basename "$seed").log"
    if ELECTION_SELFTEST=1 "$bin" "$seed" >"$log" 2>&1; then
        echo "== election self-test: $seed ran clean (log: fuzz/$log)"
    elif ! grep -q "both accept writes" "$log"; then
        tail -n 30 "$log"
        echo "== election self-test: $seed failed, but not with \"both accept writes\" (log: fuzz/$log)"
    else
        caught=$((caught + 1))
    fi
done
if [ "$caught" -ne "${#seeds[@]}" ]; then
    failed+=("election-selftest")
else
    echo "== election self-test: ok (the checker caught the planted overlap on all $caught seeds)"
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz smoke: ${#failed[@]} of $(echo $targets | wc -w) targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz smoke: all $(echo $targets | wc -w) targets ran ${seconds}s without a crash"
