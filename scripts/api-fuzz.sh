#!/usr/bin/env bash
# Fuzzes the pageserver's and the safekeeper's HTTP APIs with schemathesis,
# from the OpenAPI documents they serve at /v1/openapi.json, and fails on any
# 5xx answer or dropped connection (check `not_a_server_error`).
#
#   scripts/api-fuzz.sh [MAX_EXAMPLES [MAX_TIME_SECONDS]]
#
# * installs schemathesis from PyPI into target/api-fuzz/venv if missing
#   (python3-venv from apt-get if `python3 -m venv` is unavailable);
# * builds walredo.so (scripts/build-walredo.sh) and, if missing, the two
#   binaries (STRATA_BIN_DIR, else target/release if both are there, else
#   target/debug);
# * starts a real pageserver and safekeeper on free loopback ports with
#   scratch directories, and stops them (SIGTERM) and removes the
#   directories at the end, whatever happens;
# * per server, two runs: one with generated path ids (mostly unknown ones),
#   and one with the ids pinned to a tenant/timeline that exists (seeded here:
#   an initdb timeline on the pageserver, a timeline on the safekeeper), so
#   the handlers behind the lookups are exercised too; DELETE is excluded
#   from the pinned runs so the seed survives them;
# * bounded: MAX_EXAMPLES (default 30) cases per operation and phase, and
#   MAX_TIME_SECONDS (default 120) per run;
# * then sends hand-written edge cases (extreme LSNs, sizes, timestamps, odd
#   paths); API_FUZZ_PROBES_ONLY=1 runs only these;
# * prints a summary: requests sent and failures per run (from the HAR
#   report in target/api-fuzz/report/), exit status 1 if any run failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAX_EXAMPLES="${1:-30}"
MAX_TIME="${2:-120}"
OUT="$REPO/target/api-fuzz"
VENV="$OUT/venv"
REPORT="$OUT/report"
PG_USER="${STRATA_PG_USER:-postgres}"

log() { printf 'api-fuzz: %s\n' "$*" >&2; }

ensure_schemathesis() {
    if [ -x "$VENV/bin/schemathesis" ]; then return; fi
    mkdir -p "$OUT"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        log "python3 -m venv failed: installing python3-venv"
        rm -rf "$VENV"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    log "installing schemathesis into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check schemathesis
}

bin_dir() {
    if [ -n "${STRATA_BIN_DIR:-}" ]; then echo "$STRATA_BIN_DIR"; return; fi
    if [ -x "$REPO/target/release/pageserver" ] && [ -x "$REPO/target/release/safekeeper" ]; then
        echo "$REPO/target/release"
    else
        echo "$REPO/target/debug"
    fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {
    for _ in $(seq 1 200); do
        if curl -fsS "$1/v1/status" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

PIDS=()
DIRS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for d in "${DIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

ensure_schemathesis
WALREDO_LIB="$("$REPO/scripts/build-walredo.sh" | tail -n 1)"
BIN="$(bin_dir)"
if [ ! -x "$BIN/pageserver" ] || [ ! -x "$BIN/safekeeper" ]; then
    log "building the binaries"
    (cd "$REPO" && cargo build -q -p pageserver -p safekeeper --bins)
    BIN="$REPO/target/debug"
fi
log "binaries from $BIN"

PS_DIR="$(mktemp -d /tmp/strata-fuzz-ps.XXXXXX)"
SK_DIR="$(mktemp -d /tmp/strata-fuzz-sk.XXXXXX)"
DIRS+=("$PS_DIR" "$SK_DIR")
if [ "$(id -u)" -eq 0 ]; then chown "$PG_USER" "$PS_DIR"; fi
PS_HTTP="$(free_port)"; PS_PG="$(free_port)"; SK_HTTP="$(free_port)"; SK_PG="$(free_port)"
PS="http://127.0.0.1:$PS_HTTP"
SK="http://127.0.0.1:$SK_HTTP"

"$BIN/pageserver" --workdir "$PS_DIR" --listen-http "127.0.0.1:$PS_HTTP" --listen-pg "127.0.0.1:$PS_PG" \
    --walredo-lib "$WALREDO_LIB" >"$OUT/pageserver.log" 2>&1 &
PIDS+=($!)
"$BIN/safekeeper" --id 1 -D "$SK_DIR" --listen-http "127.0.0.1:$SK_HTTP" --listen-pg "127.0.0.1:$SK_PG" \
    >"$OUT/safekeeper.log" 2>&1 &
PIDS+=($!)
wait_http "$PS" || { log "pageserver did not start: see $OUT/pageserver.log"; exit 1; }
wait_http "$SK" || { log "safekeeper did not start: see $OUT/safekeeper.log"; exit 1; }

# Seeds for the pinned runs.
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
TENANT="$(curl -fsS -X POST -H 'content-type: application/json' -d '{}' "$PS/v1/tenant" | json_field tenant_id)"
TIMELINE="$(curl -fsS -X POST -H 'content-type: application/json' -d '{"initdb": true}' \
    "$PS/v1/tenant/$TENANT/timeline" | json_field timeline_id)"
curl -fsS -X POST -H 'content-type: application/json' -d "{\"timeline_id\": \"$TIMELINE\", \"start_lsn\": \"0/1000000\"}" \
    "$SK/v1/tenant/$TENANT/timeline" >/dev/null
log "seeded tenant $TENANT timeline $TIMELINE"

rm -rf "$REPORT"; mkdir -p "$REPORT"
SUMMARY=()
STATUS=0
run() { # name url [pinned]
    local name="$1" url="$2" pinned="${3:-}" config="$REPORT/$1.toml" rc=0
    if [ -n "$pinned" ]; then
        printf '[parameters]\ntenant_id = "%s"\ntimeline_id = "%s"\n' "$TENANT" "$TIMELINE" >"$config"
    else
        : >"$config"
    fi
    local extra=()
    if [ -n "$pinned" ]; then extra+=(--exclude-method DELETE); fi
    log "schemathesis: $name"
    # From $REPORT, so that schemathesis' working files stay out of the repository.
    (cd "$REPORT" && "$VENV/bin/schemathesis" --config-file "$config" run "$url/v1/openapi.json" \
        --checks not_a_server_error --phases examples,coverage,fuzzing \
        --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --request-timeout 90 -w 2 \
        --generation-database none --no-color \
        --report har --report-har-path "$REPORT/$name.har" "${extra[@]}" >"$REPORT/$name.txt" 2>&1) || rc=$?
    local counts
    counts="$(python3 - "$REPORT/$name.har" <<'EOF'
import json, sys, collections
try:
    entries = json.load(open(sys.argv[1]))["log"]["entries"]
except Exception:
    entries = []
codes = collections.Counter(e["response"]["status"] for e in entries)
bad = sum(v for k, v in codes.items() if k >= 500 or k == 0)
print(f"{len(entries)} requests, {bad} 5xx/no answer; "
      + "status " + " ".join(f"{k}:{v}" for k, v in sorted(codes.items())))
EOF
)"
    # A failure is a server error or a broken connection; schemathesis' own
    # runtime errors (its exit status alone) are reported but do not fail us.
    local failed=""
    if grep -qE "Server error|Network Error|Connection (aborted|refused|reset)" "$REPORT/$name.txt" \
        || ! grep -q " 0 5xx/no answer" <<<"$counts"; then
        failed=" FAILED"; STATUS=1
    fi
    SUMMARY+=("$name:$failed $counts; schemathesis exit $rc ($REPORT/$name.txt)")
}
if [ -z "${API_FUZZ_PROBES_ONLY:-}" ]; then
    run pageserver "$PS"
    run pageserver-pinned "$PS" pinned
    run safekeeper "$SK"
    run safekeeper-pinned "$SK" pinned
fi

# Hand-written edge cases schemathesis is unlikely to hit: extreme LSNs,
# sizes and timestamps, odd import paths. Each must be answered below 500.
PROBES=0
PROBE_FAILS=()
probe() { # method url [json body]
    local code
    if [ $# -ge 3 ]; then
        code="$(curl -sS -o "$REPORT/probe.out" -w '%{http_code}' -m 90 -X "$1" -H 'content-type: application/json' -d "$3" "$2" || true)"
    else
        code="$(curl -sS -o "$REPORT/probe.out" -w '%{http_code}' -m 90 -X "$1" "$2" || true)"
    fi
    PROBES=$((PROBES + 1))
    printf '%s %s %s -> %s %s\n' "$1" "$2" "${3:-}" "$code" "$(head -c 300 "$REPORT/probe.out" | tr -d '\0')" >>"$REPORT/probes.txt"
    if [ -z "$code" ] || [ "$code" = 000 ] || [ "$code" -ge 500 ]; then PROBE_FAILS+=("$1 $2 ${3:-} -> ${code:-none}"); fi
}
: >"$REPORT/probes.txt"
T="$PS/v1/tenant/$TENANT/timeline/$TIMELINE"
MAXLSN="FFFFFFFF/FFFFFFFF"
for lsn in 0/0 0/1 0/8 0/1000000 "$MAXLSN" FFFFFFFF/FFFFFFF8; do
    probe GET "$T/page?spc=1663&db=1&rel=1259&fork=0&blk=4294967295&lsn=$lsn"
    probe GET "$T/page?spc=1663&db=1&rel=1259&fork=255&blk=0&lsn=$lsn"
    probe GET "$T/rel_size?spc=1663&db=1&rel=1259&fork=0&lsn=$lsn"
    probe GET "$T/basebackup?lsn=$lsn"
    probe GET "$T/basebackup?prev_lsn=$lsn"
    probe POST "$PS/v1/tenant/$TENANT/timeline" "{\"ancestor_timeline_id\": \"$TIMELINE\", \"ancestor_start_lsn\": \"$lsn\"}"
done
for ts in 0001-01-01T00:00:00Z 1970-01-01T00:00:00Z 9999-12-31T23:59:59Z 2026-01-01T00:00:00%2B14:00 \
    -000001-01-01T00:00:00Z 275760-09-13T00:00:00Z 2026-02-30T00:00:00Z 2026-01-01T00:00:60Z; do
    probe GET "$T/lsn_by_timestamp?timestamp=$ts"
done
for path in / /proc /dev/null "" relative/dir "$PS_DIR" "$PS_DIR/tenants/$TENANT/timelines/$TIMELINE"; do
    probe POST "$PS/v1/tenant/$TENANT/timeline" "{\"import_pgdata\": \"$path\"}"
done
probe GET "$T?include_size=true"
probe POST "$T/checkpoint?image_layers=true"
probe PUT "$T/wal_source" '{"kind": "safekeeper", "conninfo": "host=127.0.0.1 port=1"}'
probe GET "$T/page?spc=1663&db=1&rel=1259&blk=0&lsn=$MAXLSN"
probe DELETE "$T/wal_source"
probe POST "$PS/v1/tenant" '{"tenant_id": "'"$TENANT"'"}'
SKT="$SK/v1/tenant/$TENANT/timeline"
new_id() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
for body in '"start_lsn": "FFFFFFFF/FFFFFFF8"' '"start_lsn": "FFFFFFFF/FFFFFFF8", "wal_seg_size_bytes": 9223372036854775808' \
    '"start_lsn": "0/0"' '"start_lsn": "0/0", "quorum": 0' '"start_lsn": "0/0", "peers": [0, 18446744073709551615], "quorum": 18446744073709551615' \
    '"start_lsn": "FFFFFFFF/FF000000", "wal_seg_size_bytes": 16777216'; do
    id="$(new_id)"
    probe POST "$SKT" "{\"timeline_id\": \"$id\", $body}"
    term=0
    for start in 0/0 0/1000001 FFFFFFFF/FFFFFFFF FFFFFFFF/FFFFFFF8 0/0 FFFFFFFF/FFFFFFF8; do
        term=$((term + 1))
        probe PUT "$SKT/$id/compute" "{\"conninfo\": \"host=127.0.0.1 port=1\", \"term\": $term, \"start_lsn\": \"$start\"}"
    done
    probe PUT "$SKT/$id/compute" '{"conninfo": "", "term": 18446744073709551615, "start_lsn": "0/0"}'
    probe GET "$SKT/$id"
    probe DELETE "$SKT/$id"
done
probe GET "$SK/v1/status"
SUMMARY+=("edge-case probes: $PROBES requests, ${#PROBE_FAILS[@]} 5xx/no answer ($REPORT/probes.txt)")
for f in "${PROBE_FAILS[@]}"; do SUMMARY+=("  FAILED: $f"); STATUS=1; done

# Both servers must still be alive (no crash).
for url in "$PS" "$SK"; do
    if ! curl -fsS "$url/v1/status" >/dev/null; then SUMMARY+=("$url no longer answers: crashed"); STATUS=1; fi
done
echo "== api-fuzz summary (max-examples $MAX_EXAMPLES, max-time ${MAX_TIME}s per run) =="
printf '%s\n' "${SUMMARY[@]}"
exit "$STATUS"
