#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), builds everything, and runs the
# whole test suite: unit tests, integration tests against real PostgreSQL 15
# processes, and a compile check of the benchmarks.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -p utils   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build-walredo.sh >/dev/null
started=$(date +%s)
echo "test: building" >&2
cargo build --workspace --all-targets
echo "test: running tests" >&2
cargo test --workspace "$@"
echo "test: all green in $(( $(date +%s) - started )) s" >&2
