#!/usr/bin/env bash
# The main job: installs what is missing (scripts/setup.sh), builds Strata in
# release mode, and runs it.
#
# Strata is being built bottom-up. Until the `strata` command can start a
# local cluster with an endpoint (pageserver, safekeepers, compute), this runs
# what exists today: it generates real PostgreSQL 15 WAL and decodes it with
# Strata's WAL decoder, printing throughput beside pg_waldump's.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build-walredo.sh >/dev/null
cargo build --release --workspace
echo "run: the local cluster (strata init/start/endpoint) is not built yet; running the WAL decoder on real WAL" >&2
cargo bench -p postgres_ffi --bench decode
