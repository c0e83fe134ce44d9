#!/usr/bin/env bash
# Installs what Strata needs on Debian 12, idempotently: PostgreSQL 15 (server,
# client, server headers and libseccomp for the redo extension), build tools,
# curl and iproute2 for the tests, an
# unprivileged user to run Postgres processes as (Postgres refuses root), and
# moto (PyPI), the S3-compatible server the remote_storage tests run against
# as `python3 -m moto.server`.
# Safe to run again: it only installs what is missing and prints what it did.
set -euo pipefail

PG_USER="${STRATA_PG_USER:-postgres}"
# The interpreter the remote_storage tests run moto with (same variable).
PYTHON="${STRATA_MOTO_PYTHON:-python3}"
MOTO_VERSION=5.2.5
PACKAGES=(
    postgresql-15 postgresql-client-15 postgresql-contrib postgresql-server-dev-15 libseccomp-dev
    build-essential pkg-config ca-certificates
    # tests: HTTP probes, and components in network namespaces (ip netns)
    curl iproute2
    # lazy computes: the fusermount3 helper that mounts lazyfs (even as root)
    fuse3
)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else log "need root (or sudo) to run: $*"; exit 1
    fi
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then log "Debian packages: all present"; return; fi
    log "installing: $(echo $missing)"
    # Do not let the package create and start a 'main' cluster: Strata runs
    # its own Postgres processes.
    as_root mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
        echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing </dev/null
}

ensure_pg_user() {
    if id "$PG_USER" >/dev/null 2>&1; then log "unprivileged user: $PG_USER"; return; fi
    log "creating unprivileged user $PG_USER"
    as_root useradd --system --create-home --shell /usr/sbin/nologin "$PG_USER"
}

# The installed moto version, if moto and its server dependencies import.
moto_version() {
    "$PYTHON" -c 'import importlib.metadata as m, moto.server; print(m.version("moto"))' 2>/dev/null
}

install_moto() {
    local have
    have=$(moto_version || true)
    if [ "$have" = "$MOTO_VERSION" ]; then log "moto: $have present ($PYTHON -m moto.server)"; return; fi
    if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        log "installing python3 and python3-pip (for moto)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-pip </dev/null
    fi
    log "installing moto[server]==$MOTO_VERSION with $PYTHON -m pip (found: ${have:-none})"
    # Debian's Python is "externally managed" (PEP 668): allow pip anyway; a
    # pip that predates the flag ignores the variable.
    as_root env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$PYTHON" -m pip install --quiet "moto[server]==$MOTO_VERSION" </dev/null
    have=$(moto_version) || { log "moto still does not import with $PYTHON after installing it"; exit 1; }
    log "moto: $have ($PYTHON -m moto.server)"
}

check_rust() {
    if ! command -v cargo >/dev/null; then
        log "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again"
        exit 1
    fi
    log "rust: $(cargo --version)"
}

install_packages
ensure_pg_user
install_moto
check_rust
log "postgres: $(/usr/lib/postgresql/15/bin/postgres --version)"
