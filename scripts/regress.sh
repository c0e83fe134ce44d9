#!/usr/bin/env bash
# Runs PostgreSQL's whole regression suite (src/test/regress/parallel_schedule
# of the installed PostgreSQL 15) against a RUNNING server: a stock cluster
# today, a Strata compute endpoint later. Fails if any test fails.
#
#   scripts/regress.sh --host 127.0.0.1 --port 5432 [--user postgres]
#                      [--outputdir DIR] [--schedule FILE] [--use-existing]
#                      [-- extra pg_regress arguments, e.g. test names]
#
# It first runs scripts/setup-regress.sh (idempotent; seconds once cached)
# for the suite's source, regress.so and pg_regress, then runs pg_regress in
# "installcheck" mode: pg_regress drops and creates the database
# `regression` (TEMPLATE template0, with the lc_* / bytea_output /
# timezone_abbreviations settings the expected outputs assume), so the run
# can be repeated. --use-existing skips that (the database must exist, set up
# as pg_regress would).
#
# What the suite needs from its surroundings, and how it is provided here:
#   * --dlpath: a directory holding regress.so (built from regress.c),
#     autoinc.so and refint.so; the tests load them by :libdir (PG_LIBDIR).
#     regress.so must be built against the headers of the server's own minor
#     version (15.18's does not load into 15.20 and vice versa), so the
#     directory is picked by the server's `SHOW server_version`.
#   * --bindir: psql of the suite's version. Expected outputs record psql's
#     behaviour too (15.20's psql skips the data lines of a failed COPY FROM
#     STDIN, 15.18's reads them as SQL).
#   * --inputdir: src/test/regress, readable by the SERVER's user: tests COPY
#     data/*.data server-side (PG_ABS_SRCDIR).
#   * --outputdir: writable by both the server's user and pg_regress: tests
#     write results/*.csv and lo_export files server-side (PG_ABS_BUILDDIR).
#     As root, pg_regress runs as the Postgres user (STRATA_PG_USER) in a
#     directory that user owns. A `testtablespace` directory is created
#     there for PG15 minors whose tablespace test still uses it (newer ones
#     use in-place tablespaces: allow_in_place_tablespaces).
#   * the server: a superuser connection; nothing is required of its
#     configuration (prepared_xacts has expected output for
#     max_prepared_transactions = 0 and > 0). The database is created with
#     --no-locale --encoding=UTF8 (LC_COLLATE/LC_CTYPE C, UTF8), which the
#     expected outputs assume, whatever the cluster's initdb defaults.
#
# Version skew: when the mirror does not serve the source of the installed
# minor version, the suite is an older one (setup-regress.sh warns). Against
# a server of another version than the suite, tests whose behaviour changed
# between the two fail (suite 15.18 against server 15.20: triggers, rules,
# alter_table); setup-regress.sh unpacks a stock server of the suite's
# version (MATCHED_PG_BINDIR) to run instead.
#
# Prints a summary and the runtime as its last lines. Exit status: 0 when
# every test passed; 1 when some failed (regression.diffs is printed, head
# only, and the output directory is kept); 2 on setup errors.
#
#   STRATA_REGRESS_DIR        cache of setup-regress.sh
#   STRATA_REGRESS_KEEP=1     keep the output directory after a passing run
#   STRATA_REGRESS_MAX_CONNECTIONS / STRATA_REGRESS_MAX_CONCURRENT_TESTS
#                             passed to pg_regress when set
set -euo pipefail
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_USER="${STRATA_PG_USER:-postgres}"

log() { printf 'regress: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

host="" port="" user="${PGUSER:-postgres}" outputdir="" schedule="" use_existing=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --host) host="$2"; shift 2 ;;
        --host=*) host="${1#*=}"; shift ;;
        --port) port="$2"; shift 2 ;;
        --port=*) port="${1#*=}"; shift ;;
        --user) user="$2"; shift 2 ;;
        --user=*) user="${1#*=}"; shift ;;
        --outputdir) outputdir="$2"; shift 2 ;;
        --outputdir=*) outputdir="${1#*=}"; shift ;;
        --schedule) schedule="$2"; shift 2 ;;
        --schedule=*) schedule="${1#*=}"; shift ;;
        --use-existing) use_existing=1; shift ;;
        -h|--help) usage ;;
        --) shift; extra=("$@"); break ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[ -n "$host" ] && [ -n "$port" ] || { log "--host and --port are required"; usage; }

env_file=$("$REPO/scripts/setup-regress.sh") || die "setup-regress.sh failed"
# shellcheck disable=SC1090
. "$env_file"
schedule="${schedule:-$REGRESS_SRCDIR/parallel_schedule}"
[ -f "$schedule" ] || die "schedule $schedule not found"

# The server's minor version picks --dlpath: regress.so must be built against
# that server's headers, and autoinc.so / refint.so come from its package.
server_version=$(env -u PGDATABASE -u PGSERVICE "$PG_BINDIR/psql" -X -At -h "$host" -p "$port" -U "$user" \
    -d postgres -c 'SHOW server_version' 2>&1) || die "cannot query server $host:$port: $server_version"
server_minor="${server_version%% *}"
dlpath="${REGRESS_LIBS}${server_minor}"
if [ ! -f "$dlpath/regress.so" ]; then
    log "WARNING: no regress.so built for server $server_minor; using the installed server's ($PG_SERVER_VERSION)"
    dlpath="${REGRESS_LIBS}${PG_SERVER_VERSION}"
fi
# psql and pg_regress of the suite's version when available: expected outputs
# also record psql's behaviour (15.20's psql skips the data of a failed
# COPY FROM STDIN up to "\.", 15.18's reads it as SQL).
client_bindir="${MATCHED_PG_BINDIR:-$PG_BINDIR}"
pg_regress="${MATCHED_PG_REGRESS:-$PG_REGRESS}"
if [ "$server_minor" != "$REGRESS_SUITE_VERSION" ]; then
    log "WARNING: version skew: server $server_minor, suite $REGRESS_SUITE_VERSION (the mirror did not serve"
    log "WARNING: the source of the server's version); tests whose behaviour changed between them fail."
    [ -n "$MATCHED_PG_BINDIR" ] && log "WARNING: a stock server of the suite's version is in $MATCHED_PG_BINDIR"
fi

# Who runs pg_regress: as root, the Postgres user (so that the output
# directory is the server's to write into); otherwise ourselves.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
    id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (run scripts/setup.sh)"
    run_as=(runuser -u "$PG_USER" --)
fi

created_outputdir=0
if [ -z "$outputdir" ]; then
    outputdir=$(mktemp -d "${TMPDIR:-/tmp}/strata-regress.XXXXXX")
    created_outputdir=1
fi
mkdir -p "$outputdir"
outputdir="$(cd "$outputdir" && pwd)"
# Fresh results: pg_regress appends to nothing, but stale files confuse readers.
rm -rf "$outputdir/results" "$outputdir/regression.diffs" "$outputdir/regression.out" "$outputdir/testtablespace"
mkdir -p "$outputdir/results" "$outputdir/testtablespace"
chmod 0755 "$outputdir"
if [ ${#run_as[@]} -gt 0 ]; then
    chown -R "$PG_USER:" "$outputdir"
    # pg_regress and the server must reach it: every parent traversable.
    "${run_as[@]}" test -w "$outputdir/results" || die "$outputdir is not writable by $PG_USER (choose --outputdir elsewhere)"
fi

args=(
    --bindir="$client_bindir"
    --inputdir="$REGRESS_SRCDIR"
    --outputdir="$outputdir"
    --dlpath="$dlpath"
    --schedule="$schedule"
    --host="$host" --port="$port" --user="$user"
    # The database `regression` in C locale and UTF8 whatever the cluster's
    # defaults (initdb options of a Strata tenant may differ): the expected
    # outputs assume them.
    --no-locale --encoding=UTF8
)
[ "$use_existing" = 1 ] && args+=(--use-existing)
[ -n "${STRATA_REGRESS_MAX_CONNECTIONS:-}" ] && args+=(--max-connections="$STRATA_REGRESS_MAX_CONNECTIONS")
[ -n "${STRATA_REGRESS_MAX_CONCURRENT_TESTS:-}" ] && args+=(--max-concurrent-tests="$STRATA_REGRESS_MAX_CONCURRENT_TESTS")

log "server $host:$port ($server_version, user $user); suite $REGRESS_SOURCE_VERSION; dlpath $dlpath; output $outputdir"
started=$(date +%s.%N)
set +e
# pg_regress resolves relative paths against its cwd: run it in the outputdir.
(cd "$outputdir" && "${run_as[@]}" env -u PGDATABASE -u PGSERVICE "$pg_regress" "${args[@]}" "${extra[@]}") 2>&1 \
    | tee "$outputdir/pg_regress.stdout"
status=${PIPESTATUS[0]}
set -e
elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

out="$outputdir/pg_regress.stdout"
n_ok=$(grep -cE '\.\.\. ok( |$)' "$out" || true)
n_failed=$(grep -cE '\.\.\. FAILED' "$out" || true)
n_ignored=$(grep -cE '\.\.\. failed \(ignored\)' "$out" || true)
if [ "$status" -ne 0 ] && [ -s "$outputdir/regression.diffs" ]; then
    log "regression.diffs (first 200 lines; whole file: $outputdir/regression.diffs):"
    head -n 200 "$outputdir/regression.diffs" >&2
fi
if [ "$status" -ne 0 ]; then
    grep -E '\.\.\. FAILED' "$out" | sed 's/^/regress: FAILED: /' >&2 || true
fi
summary="regress: $((n_ok + n_failed + n_ignored)) tests: $n_ok ok, $n_failed failed, $n_ignored failed-but-ignored; ${elapsed} s (pg_regress exit $status)"
echo "$summary"
if [ "$status" -eq 0 ]; then
    if [ "$created_outputdir" = 1 ] && [ "${STRATA_REGRESS_KEEP:-}" != 1 ]; then
        rm -rf "$outputdir"
    else
        log "output kept in $outputdir"
    fi
    exit 0
fi
log "output kept in $outputdir"
[ "$status" -eq 1 ] && exit 1
exit 2
