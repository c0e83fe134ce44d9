#!/usr/bin/env bash
# The main job: installs what is missing (scripts/setup.sh), builds Strata in
# release mode, and runs a local cluster — broker, safekeeper, pageserver — with
# a tenant and a compute on its `main` branch that you can psql into.
#
# Safe to run again: it reuses the cluster in $STRATA_REPO_DIR (default
# ./.strata) and only starts what is not running. Stop it with
#   target/release/strata stop
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build-walredo.sh >/dev/null
cargo build --release --workspace --bins
strata=target/release/strata
export STRATA_REPO_DIR="${STRATA_REPO_DIR:-$PWD/.strata}"

[ -f "$STRATA_REPO_DIR/config.toml" ] || "$strata" init
"$strata" start
grep -q '^default_tenant' "$STRATA_REPO_DIR/branches.toml" 2>/dev/null || "$strata" tenant create --set-default
if "$strata" endpoint list | grep -q '^main .* running$'; then
    echo "endpoint main is already running"
else
    "$strata" endpoint start main
fi
"$strata" endpoint list
echo
port=$("$strata" endpoint list | awk '$1 == "main" {split($2, a, ":"); print a[2]}')
echo "Connect:   psql \"postgresql://postgres:$("$strata" endpoint show-password main)@127.0.0.1:$port/postgres\""
echo "Branch:    $strata timeline branch --branch-name dev && $strata endpoint start dev --branch-name dev"
echo "Stop all:  $strata stop"
