#!/usr/bin/env bash
# Builds Strata's WAL redo extension (pgxn/walredo) with PGXS, out of tree,
# and installs walredo.so into a directory that the unprivileged Postgres user
# can reach (every directory on the path traversable by it). Idempotent and
# safe to run concurrently (serialised with flock). Prints the full path of
# the installed walredo.so as the last line on stdout.
#
#   build-walredo.sh [--test]
#
# --test builds the test variant (compiled with WALREDO_TEST_COMMANDS: it
# accepts requests that make it break its sandbox) into separate build and
# install directories (target/walredo-test, $STRATA_STATE_DIR/walredo-test);
# only the test suite uses it. The production build has no such code.
#
#   PG_CONFIG           pg_config to build against (default: Debian's PG 15)
#   STRATA_PG_USER      user the redo process runs as when we are root (postgres)
#   STRATA_WALREDO_DIR  install directory (default: <repo>/target/walredo if
#                       reachable by that user, else $STRATA_STATE_DIR/walredo)
#   STRATA_STATE_DIR    state the Postgres user must reach (/var/lib/strata)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PG_USER="${STRATA_PG_USER:-postgres}"
STATE_DIR="${STRATA_STATE_DIR:-/var/lib/strata}"
SRC="$REPO/pgxn/walredo"
VARIANT=walredo
MAKE_FLAGS=()
case "${1:-}" in
    "") ;;
    --test) VARIANT=walredo-test; MAKE_FLAGS=(WALREDO_TEST_COMMANDS=1) ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
BUILD="$REPO/target/$VARIANT-build"
# An explicit install directory is for the production build only.
OVERRIDE_DIR="${STRATA_WALREDO_DIR:-}"
[ "$VARIANT" = walredo ] || OVERRIDE_DIR=""

log() { printf 'build-walredo: %s\n' "$*" >&2; }

# Can the Postgres user read $1 (and traverse every directory above it)?
reachable_by_pg_user() {
    if [ "$(id -u)" -ne 0 ]; then test -r "$1"; return; fi
    runuser -u "$PG_USER" -- test -r "$1" 2>/dev/null
}

ensure_headers() {
    local inc
    inc="$("$PG_CONFIG" --includedir-server)"
    [ -f "$inc/postgres.h" ] && [ -f /usr/include/seccomp.h ] && return
    local pkgs=(postgresql-server-dev-15 libseccomp-dev build-essential)
    if [ "$(id -u)" -eq 0 ]; then
        log "installing ${pkgs[*]} (PGXS headers, libseccomp)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${pkgs[@]}" </dev/null >&2 \
        || { apt-get update -q </dev/null >&2 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null >&2; }
    else
        log "missing $inc/postgres.h or /usr/include/seccomp.h: install ${pkgs[*]} (scripts/setup.sh)"
        exit 1
    fi
}

build() {
    mkdir -p "$BUILD"
    # Copy only changed sources so that make's timestamps stay meaningful.
    local f
    for f in Makefile walredo.c walredo.control walredo--1.0.sql; do
        cmp -s "$SRC/$f" "$BUILD/$f" || cp "$SRC/$f" "$BUILD/$f"
    done
    # A build made with other flags (by hand, e.g. WALREDO_SECCOMP_DEBUG=1)
    # is rebuilt from scratch: make's timestamps do not see flags.
    local flags="PG_CONFIG=$PG_CONFIG ${MAKE_FLAGS[*]}"
    if [ "$(cat "$BUILD/.make-flags" 2>/dev/null)" != "$flags" ]; then
        rm -f "$BUILD"/*.o "$BUILD"/*.so "$BUILD"/*.bc
    fi
    make -s -C "$BUILD" PG_CONFIG="$PG_CONFIG" "${MAKE_FLAGS[@]}" >&2
    echo "$flags" >"$BUILD/.make-flags"
}

install_to() {
    local dir="$1"
    mkdir -p "$dir"
    if ! cmp -s "$BUILD/walredo.so" "$dir/walredo.so"; then
        cp "$BUILD/walredo.so" "$dir/walredo.so.tmp.$$"
        chmod 0755 "$dir/walredo.so.tmp.$$"
        mv -f "$dir/walredo.so.tmp.$$" "$dir/walredo.so"
    fi
    chmod 0755 "$dir"
}

main() {
    mkdir -p "$REPO/target"
    exec 9>"$REPO/target/.build-$VARIANT.lock"
    flock 9
    ensure_headers
    build
    local dir="${OVERRIDE_DIR:-$REPO/target/$VARIANT}"
    install_to "$dir"
    if ! reachable_by_pg_user "$dir/walredo.so"; then
        if [ -n "$OVERRIDE_DIR" ]; then
            log "$dir/walredo.so is not readable by $PG_USER"; exit 1
        fi
        log "$dir is not reachable by $PG_USER; installing to $STATE_DIR/walredo"
        dir="$STATE_DIR/$VARIANT"
        install_to "$dir"
        chmod 0755 "$STATE_DIR"
        reachable_by_pg_user "$dir/walredo.so" || { log "$dir/walredo.so is not readable by $PG_USER"; exit 1; }
    fi
    echo "$dir/walredo.so"
}

main "$@"
