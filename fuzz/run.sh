#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (seconds, default 60 each) from the committed inputs
# (fuzz/seeds/<target>: curated seeds and past failures; fuzz/corpus/<target>: what earlier runs
# kept, minimised with `cargo fuzz cmin`), and fails on the first crash, panic, 5xx answer or
# timeout. Installs cargo-fuzz when missing. New inputs go to a scratch folder; a failing input
# is left in fuzz/artifacts/<target>/ (add it to fuzz/seeds/<target>/ once fixed: `cargo test`
# replays it).
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(resource search patch bundle)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz --version 0.13.2
fi
# The fuzz servers' databases in memory when /dev/shm has 1 GB free, else in the temp folder.
if [ -z "${LIAISON_FUZZ_DB_DIR:-}" ] && [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -n 1)" -gt 1048576 ] 2>/dev/null; then
    export LIAISON_FUZZ_DB_DIR=/dev/shm
fi
# Stable compiler, no sanitizer (the code is safe Rust), debug assertions and overflow checks on.
flags=(--release --debug-assertions --sanitizer none)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    corpus=$(find "$scratch/$target" "corpus/$target" "seeds/$target" -type f | wc -l)
    echo "fuzz: $target: $runs executions in ${seconds} s, no failure (corpus: $corpus inputs)"
done
