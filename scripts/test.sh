#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), builds everything, and runs the
# whole test suite: unit tests, integration tests against real PostgreSQL 15
# processes, and a compile check of the benchmarks; then (without arguments)
# the cluster tests again from a copy of the checkout under a 0700 directory.
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

# Users clone anywhere, /root included (mode 0700): the same code from a copy
# of this checkout under a directory only root can enter, with its own build
# (so walredo.so and every path baked into the binaries are unreachable by the
# Postgres user), runs the tests that start clusters and need WAL redo.
private_checkout_tests() {
    local root
    root="$(mktemp -d)" # mode 0700
    trap 'rm -rf "$root"' RETURN
    chmod 0700 "$root"
    mkdir "$root/strata"
    git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$root/strata"
    echo "test: from a private checkout in $root/strata" >&2
    (cd "$root/strata" && env -u STRATA_WALREDO_LIB CARGO_TARGET_DIR="$root/strata/target" \
        sh -c 'cargo build --workspace --bins && cargo test -p control_plane --test private_paths --test durability')
}
if [ $# -eq 0 ]; then private_checkout_tests; fi
echo "test: all green in $(( $(date +%s) - started )) s" >&2
