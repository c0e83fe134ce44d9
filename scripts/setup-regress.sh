#!/usr/bin/env bash
# Obtains PostgreSQL's own regression suite for the installed PostgreSQL 15
# server (Debian's postgresql-15), so that scripts/regress.sh can run the
# whole parallel_schedule against any running server (a stock cluster today,
# a Strata compute endpoint later).
#
# Idempotent, non-interactive, meant to run as root on a fresh Debian 12
# machine (CI). What it does, each step only when needed:
#   1. adds `deb-src` entries for the configured Debian (or PGDG) mirrors, in
#      /etc/apt/sources.list.d/strata-deb-src.{sources,list}, derived from the
#      enabled `deb` entries (one-line and deb822 formats), and refreshes only
#      those source indexes;
#   2. `apt-get source postgresql-15=<installed version>` into the cache
#      (installing dpkg-dev if needed), falling back, with a warning, to the
#      closest available version when the installed one is gone from the
#      mirror;
#   3. builds regress.so from src/test/regress/regress.c with PGXS against the
#      installed server headers, and puts it beside autoinc.so and refint.so
#      from the server package (the suite loads all three from --dlpath);
#   4. writes <cache>/regress.env (shell variables) and prints where
#      everything is.
#
# The cache lives where the unprivileged Postgres user can read it: the
# server itself COPYs the suite's data files (src/test/regress/data).
#
#   STRATA_REGRESS_DIR  cache directory (default /var/cache/strata/regress as
#                       root, ~/.cache/strata/regress otherwise)
#   PG_CONFIG           pg_config of the server (default Debian's PG 15)
#   STRATA_PG_USER      user Postgres runs as (default postgres)
set -euo pipefail
umask 022

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
if [ "$(id -u)" -eq 0 ]; then
    CACHE="${STRATA_REGRESS_DIR:-/var/cache/strata/regress}"
else
    CACHE="${STRATA_REGRESS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/strata/regress}"
fi
PG_USER="${STRATA_PG_USER:-postgres}"
SRC_PKG=postgresql-15
SRC_LIST_BASE=/etc/apt/sources.list.d/strata-deb-src

log() { printf 'setup-regress: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 \
    || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; }
}

installed_version() {
    dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true
}

# Versions of the source package that apt knows about, one a line.
source_versions() {
    apt-cache showsrc "$SRC_PKG" 2>/dev/null | awk '/^Package: /{p=$2} /^Version: /{ if (p=="'"$SRC_PKG"'") print $2 }' | sort -u
}

# Archives that carry postgresql-15's source: Debian's (any mirror) and PGDG.
WANTED_URI_RE='debian\.org|/debian/?$|/debian-security/?$|apt\.postgresql\.org'

# Enabled deb822 stanzas with `Types: deb` and a wanted URI, rewritten as
# `Types: deb-src`.
deb822_src_stanzas() {
    awk -v re="$WANTED_URI_RE" '
        function flush(   i, u, k, keep) {
            keep = 0
            k = split(uris, u, /[ \t]+/)
            for (i = 1; i <= k; i++) if (u[i] != "" && u[i] ~ re) keep = 1
            if (n > 0 && keep && types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                for (i = 1; i <= n; i++) {
                    if (lines[i] ~ /^Types:/) print "Types: deb-src"
                    else print lines[i]
                }
                print ""
            }
            n = 0; types = ""; enabled = ""; uris = ""
        }
        /^[ \t]*$/ { flush(); next }
        /^#/ { next }
        {
            lines[++n] = $0
            if ($0 ~ /^Types:/)   { types = $0; sub(/^Types:[ \t]*/, "", types) }
            if ($0 ~ /^Enabled:/) { enabled = tolower($2) }
            if ($0 ~ /^URIs:/)    { uris = $0; sub(/^URIs:[ \t]*/, "", uris) }
        }
        END { flush() }
    ' "$@"
}

# Enabled one-line `deb` entries with a wanted URI, as `deb-src`.
list_src_lines() {
    awk -v re="$WANTED_URI_RE" '
        $1 == "deb" {
            rest = $0; sub(/^[ \t]*deb[ \t]+/, "", rest)
            uri = rest; sub(/^\[[^]]*\][ \t]*/, "", uri); split(uri, w, /[ \t]+/)
            if (w[1] ~ re) print "deb-src " rest
        }
    ' "$@"
}

ensure_deb_src() {
    local want="$1"
    if source_versions | grep -qxF "$want"; then
        log "deb-src: $SRC_PKG $want is known to apt"
        return
    fi
    if grep -hsqE '^[[:space:]]*deb-src[[:space:]]|^Types:.*deb-src' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
        # deb-src entries exist already (ours or the machine's): refresh them.
        log "deb-src entries present; apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
        return
    fi
    local out822 outlist f822=() flist=() f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && [ "$f" != "$SRC_LIST_BASE.sources" ] && f822+=("$f")
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && [ "$f" != "$SRC_LIST_BASE.list" ] && flist+=("$f")
    done
    out822=$([ ${#f822[@]} -eq 0 ] || deb822_src_stanzas "${f822[@]}")
    outlist=$([ ${#flist[@]} -eq 0 ] || list_src_lines "${flist[@]}")
    if [ -z "$out822" ] && [ -z "$outlist" ]; then
        die "no enabled Debian 'deb' entry found in /etc/apt/sources.list{,.d/*} to derive a deb-src entry from"
    fi
    if [ -n "$out822" ]; then
        printf '# Written by Strata scripts/setup-regress.sh: source packages for the regression suite.\n%s\n' "$out822" \
            | as_root tee "$SRC_LIST_BASE.sources" >/dev/null
        log "wrote $SRC_LIST_BASE.sources"
    fi
    if [ -n "$outlist" ]; then
        printf '# Written by Strata scripts/setup-regress.sh: source packages for the regression suite.\n%s\n' "$outlist" \
            | as_root tee "$SRC_LIST_BASE.list" >/dev/null
        log "wrote $SRC_LIST_BASE.list"
    fi
    # Refresh only the source indexes we added (leaves the binary lists alone).
    local l
    for l in "$SRC_LIST_BASE.sources" "$SRC_LIST_BASE.list"; do
        [ -f "$l" ] || continue
        log "apt-get update (sources of $l)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            -o Dir::Etc::sourcelist="$l" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 </dev/null >&2
    done
}

# Versions to try, best first: the installed one, then others of the same
# upstream version, then the remaining 15.x, newest first. (A mirror may list
# a source it does not serve: the security archive's sources are missing on
# some mirrors and caches while its binaries are there.)
candidate_versions() {
    local want="$1" upstream="$2" have
    have=$(source_versions)
    [ -n "$have" ] || die "apt knows no source package $SRC_PKG (deb-src entries missing or not refreshed?)"
    {
        printf '%s\n' "$have" | grep -xF "$want" || true
        printf '%s\n' "$have" | grep -E "^${upstream//./\\.}-" | grep -vxF "$want" | sort -Vr || true
        printf '%s\n' "$have" | grep -vE "^${upstream//./\\.}-" | sort -Vr || true
    } | awk 'NF && !seen[$0]++'
}

# Download and unpack the first candidate that the mirror serves; keep only
# src/test/regress (the whole tree is ~150 MB, the suite ~15 MB).
fetch_source() {
    local want="$1" upstream="$2" vdir="$3"
    command -v dpkg-source >/dev/null || apt_install dpkg-dev
    local version tmp tree got=""
    for version in $(candidate_versions "$want" "$upstream"); do
        tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
        log "apt-get source $SRC_PKG=$version"
        # As root apt warns that the download is unsandboxed; harmless.
        if (cd "$tmp" && apt-get source -q "$SRC_PKG=$version" </dev/null >"$tmp.log" 2>&1); then
            got="$version"
            break
        fi
        log "  not available: $(grep -m1 -E '^(E|Err):' "$tmp.log" || tail -n1 "$tmp.log")"
        rm -rf "$tmp" "$tmp.log"
    done
    [ -n "$got" ] || die "no version of source package $SRC_PKG could be downloaded"
    rm -f "$tmp.log"
    if [ "$got" != "$want" ]; then
        log "WARNING: the source of the installed $SRC_PKG $want could not be downloaded; using $got."
        log "WARNING: a few expected outputs may differ from what server $upstream prints"
    fi
    tree=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name "postgresql-15*" | head -n1)
    [ -n "$tree" ] && [ -f "$tree/src/test/regress/parallel_schedule" ] \
        || { rm -rf "$tmp"; die "unpacked source has no src/test/regress/parallel_schedule"; }
    local keep="$tmp/keep"
    mkdir -p "$keep/src/test"
    mv "$tree/src/test/regress" "$keep/src/test/regress"
    cp "$tree/COPYRIGHT" "$keep/" 2>/dev/null || true
    echo "$got" > "$keep/.complete"
    rm -rf "$vdir"
    mv "$keep" "$vdir"
    rm -rf "$tmp"
    chmod -R a+rX "$vdir"
    log "source: $vdir"
}

# Build regress.so against the headers of the server described by pg_config
# $1 and put it into $2 beside that server's autoinc.so and refint.so. The
# module must match the server it is loaded into, to the minor version:
# minor releases change headers (15.20's DatumGetHeapTupleHeader is a
# function, 15.18's a macro), so a regress.so built for one does not load
# into the other.
build_lib() {
    local pg_config="$1" lib="$2" srcdir="$3"
    local build="$lib.build"
    mkdir -p "$build" "$lib"
    cmp -s "$srcdir/regress.c" "$build/regress.c" || cp "$srcdir/regress.c" "$build/regress.c"
    printf '%s\n' \
        '# PGXS build of the regression suite'"'"'s C functions (src/test/regress/regress.c).' \
        'MODULES = regress' \
        'PG_CONFIG ?= pg_config' \
        'PGXS := $(shell $(PG_CONFIG) --pgxs)' \
        'include $(PGXS)' > "$build/Makefile.new"
    cmp -s "$build/Makefile.new" "$build/Makefile" || mv -f "$build/Makefile.new" "$build/Makefile"
    rm -f "$build/Makefile.new"
    local inc
    inc="$("$pg_config" --includedir-server)"
    if [ ! -f "$inc/postgres.h" ] || ! command -v gcc >/dev/null || ! command -v make >/dev/null; then
        apt_install postgresql-server-dev-15 build-essential
    fi
    if [ ! -f "$build/regress.so" ] || [ "$build/regress.c" -nt "$build/regress.so" ]; then
        log "building regress.so against $inc"
        make -s -C "$build" PG_CONFIG="$pg_config" >&2
    fi
    install -m 0755 "$build/regress.so" "$lib/regress.so"
    local pkglib m
    pkglib="$("$pg_config" --pkglibdir)"
    for m in autoinc refint; do
        [ -f "$pkglib/$m.so" ] || die "$pkglib/$m.so missing (it ships in package postgresql-15)"
        install -m 0755 "$pkglib/$m.so" "$lib/$m.so"
    done
}

# When the suite is not the installed server's version: the stock Debian
# server, client and headers OF THE SUITE'S VERSION, unpacked (not installed)
# into $2, so that the suite can be run against a server it was written for
# (PgCluster with STRATA_PG_BIN=<that>/usr/lib/postgresql/15/bin). Debian's
# PostgreSQL binaries are relocatable: they find share/ and lib/ relative to
# themselves.
fetch_matched_server() {
    local version="$1" root="$2"
    if [ -x "$root/usr/lib/postgresql/15/bin/postgres" ] && [ -f "$root/.complete" ]; then
        return
    fi
    local tmp p
    tmp=$(mktemp -d "$CACHE/.debs.XXXXXX")
    log "apt-get download postgresql-15, postgresql-client-15, postgresql-server-dev-15 = $version"
    if ! (cd "$tmp" && apt-get download -q "postgresql-15=$version" "postgresql-client-15=$version" \
            "postgresql-server-dev-15=$version" </dev/null >"$tmp/log" 2>&1); then
        log "WARNING: could not download the $version binaries: $(grep -m1 -E '^(E|Err):' "$tmp/log" || true)"
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$tmp/root"
    for p in "$tmp"/*.deb; do
        dpkg-deb -x "$p" "$tmp/root"
    done
    rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man" "$tmp/root/usr/share/locale"
    echo "$version" > "$tmp/root/.complete"
    rm -rf "$root"
    mv "$tmp/root" "$root"
    rm -rf "$tmp"
    chmod -R a+rX "$root"
}

reachable_by_pg_user() {
    if [ "$(id -u)" -ne 0 ]; then test -r "$1"; return; fi
    id "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (run scripts/setup.sh)"
    runuser -u "$PG_USER" -- test -r "$1" 2>/dev/null
}

main() {
    [ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found (run scripts/setup.sh)"
    local pg_version upstream installed
    pg_version=$("$PG_CONFIG" --version)              # "PostgreSQL 15.20 (Debian 15.20-0+deb12u1)"
    upstream=$(printf '%s\n' "$pg_version" | awk '{print $2}')
    installed=$(installed_version)
    [ -n "$installed" ] || die "package $SRC_PKG is not installed (run scripts/setup.sh)"
    case "$upstream" in 15.*) ;; *) die "expected PostgreSQL 15, pg_config says: $pg_version" ;; esac

    mkdir -p "$CACHE"
    if [ "$(id -u)" -eq 0 ]; then
        # Readable for the server's user: it COPYs the suite's data files.
        chmod 0755 "$CACHE" "$(dirname "$CACHE")"
    fi
    exec 9>"$CACHE/.lock"
    flock 9

    local vdir="$CACHE/$installed" version
    if [ -f "$vdir/.complete" ]; then
        version=$(cat "$vdir/.complete")
        log "source: cached $SRC_PKG $version"
    else
        ensure_deb_src "$installed"
        fetch_source "$installed" "$upstream" "$vdir"
        version=$(cat "$vdir/.complete")
    fi
    local srcdir="$vdir/src/test/regress"
    local suite_upstream="${version%%-*}"

    # The installed server: its regress.so / autoinc.so / refint.so.
    build_lib "$PG_CONFIG" "$vdir/lib-$upstream" "$srcdir"
    local pg_regress
    pg_regress="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
    [ -x "$pg_regress" ] || apt_install postgresql-client-15
    [ -x "$pg_regress" ] || die "$pg_regress missing (package postgresql-client-15)"

    # The stock server of the suite's own version (the installed one when
    # the versions match).
    local matched_bindir="" matched_pg_regress="" matched_lib=""
    if [ "$version" = "$installed" ]; then
        matched_bindir="$("$PG_CONFIG" --bindir)"
        matched_pg_regress="$pg_regress"
        matched_lib="$vdir/lib-$upstream"
    elif fetch_matched_server "$version" "$vdir/pg-$version"; then
        local root="$vdir/pg-$version"
        matched_bindir="$root/usr/lib/postgresql/15/bin"
        matched_pg_regress="$root/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress"
        matched_lib="$vdir/lib-$suite_upstream"
        build_lib "$matched_bindir/pg_config" "$matched_lib" "$srcdir"
        "$matched_bindir/postgres" --version >/dev/null || die "unpacked $matched_bindir/postgres does not run"
    fi

    reachable_by_pg_user "$srcdir/data/onek.data" \
        || die "$srcdir is not readable by $PG_USER (the server COPYs the suite's data files from there)"
    reachable_by_pg_user "$vdir/lib-$upstream/regress.so" || die "$vdir/lib-$upstream/regress.so is not readable by $PG_USER"

    local env_file="$CACHE/regress.env"
    cat > "$env_file.tmp" <<ENVEOF
# Written by scripts/setup-regress.sh; sourced by scripts/regress.sh.
# The installed server (Debian package $SRC_PKG):
PG_SERVER_VERSION='$upstream'
PG_PACKAGE_VERSION='$installed'
PG_BINDIR='$("$PG_CONFIG" --bindir)'
PG_REGRESS='$pg_regress'
# The suite (src/test/regress of source package $SRC_PKG $version):
REGRESS_SOURCE_VERSION='$version'
REGRESS_SUITE_VERSION='$suite_upstream'
REGRESS_SRCDIR='$srcdir'
# --dlpath for a server of minor version V is \${REGRESS_LIBS}V (regress.so
# must be built against that server's headers).
REGRESS_LIBS='$vdir/lib-'
# Stock PostgreSQL of the suite's own version ('' if unavailable): the server
# to run the suite against for a clean pass, and the psql the expected
# outputs were written for.
MATCHED_PG_BINDIR='$matched_bindir'
MATCHED_PG_REGRESS='$matched_pg_regress'
MATCHED_DLPATH='$matched_lib'
ENVEOF
    mv -f "$env_file.tmp" "$env_file"

    log "ready:"
    cat >&2 <<INFOEOF
  installed server  $pg_version (package $installed)
  suite source      $SRC_PKG $version
  inputdir          $srcdir  (parallel_schedule, sql/, expected/, data/)
  pg_regress        $pg_regress
  dlpath            $vdir/lib-$upstream  (regress.so built here; autoinc.so, refint.so from $("$PG_CONFIG" --pkglibdir))
INFOEOF
    if [ "$version" != "$installed" ]; then
        if [ -n "$matched_bindir" ]; then
            cat >&2 <<INFOEOF
  matched server    $matched_bindir  (stock $SRC_PKG $version, unpacked, not installed)
  matched dlpath    $matched_lib
INFOEOF
        fi
        log "WARNING: the suite is $version, the installed server $installed: against the installed"
        log "WARNING: server a few tests fail on behaviour changed between the two minor releases"
    fi
    log "settings: $env_file"
    echo "$env_file"
}

main "$@"
