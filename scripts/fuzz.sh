#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 600), one
# after the other, with one job (the machine is shared), keeping each
# target's corpus in fuzz/corpus/<target>/ between runs (seeded from
# fuzz/regressions/<target>/). Prints executions and crashes per target;
# exits non-zero if any target crashed (the input is in
# fuzz/artifacts/<target>/: fix the bug, then copy the input to
# fuzz/regressions/<target>/ so that the crate's tests/fuzz_regressions.rs
# replays it in CI).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-600}"
shift || true
FUZZ="$REPO/fuzz"
LOG_DIR="$FUZZ/logs"
export CARGO_INCREMENTAL=0

log() { printf 'fuzz: %s\n' "$*" >&2; }

command -v cargo-fuzz >/dev/null || { log "cargo-fuzz not found: cargo install cargo-fuzz --locked"; exit 1; }
cd "$FUZZ"
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

log "building ${#targets[@]} targets (nightly; no sanitizer: safe Rust; debug assertions and overflow checks on, the default)"
cargo +nightly fuzz build -s none >&2

mkdir -p "$LOG_DIR"
failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="$FUZZ/corpus/$t"
    mkdir -p "$corpus" "$FUZZ/artifacts/$t"
    log "$t: ${SECONDS_PER_TARGET}s"
    rc=0
    cargo +nightly fuzz run -s none "$t" "$corpus" "$FUZZ/regressions/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$LOG_DIR/$t.log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOG_DIR/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(find "$FUZZ/artifacts/$t" -type f | wc -l)
    summary+=("$t: ${execs:-?} executions, corpus $(find "$corpus" -type f | wc -l) inputs, $crashes crash artifacts, exit $rc")
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then failed=1; fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
