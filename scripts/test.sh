#!/usr/bin/env bash
# Run pgvault's whole test suite against real servers.
#
#   scripts/test.sh [ARGS...]
#
# Installs what is missing (PostgreSQL server binaries from apt, Garage from crates.io,
# moto from PyPI), starts a single-node Garage on loopback unless PGVAULT_TEST_S3_ENDPOINT
# names an external S3 server, and moto (the S3 server with Object Lock that the lock
# tests need) unless PGVAULT_TEST_LOCK_S3_ENDPOINT names one, builds the binaries, and
# runs every test with
# PGVAULT_TEST_REQUIRE_SERVERS=1 so that no test can pass by skipping.
# ARGS go to the test runner: `cargo nextest run` when cargo-nextest is installed, else
# `cargo test` (force one with PGVAULT_TEST_RUNNER=nextest or PGVAULT_TEST_RUNNER=cargo).
#
# Needs no input and can be run again at any time.
set -euo pipefail

GARAGE_VERSION=2.5.0
# moto before 5.2.5 answers CompleteMultipartUpload with an XML root the AWS SDK rejects.
MOTO_REQUIREMENT='moto[server]>=5.2.5'
MOTO_MIN_VERSION=5.2.5
PG_TOOLS=(initdb pg_ctl postgres pg_dump pg_restore pg_dumpall psql)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { echo "==> test.sh: $*" >&2; }
die() {
    echo "test.sh: $*" >&2
    exit 1
}

# as_root CMD...: run CMD as root, through sudo when we are not root.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "'sudo $*' failed (this script reads no input: set up passwordless sudo, or install it yourself)"
    else
        die "need root to run: $* (no sudo here)"
    fi
}

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"

# --- PostgreSQL -------------------------------------------------------------------------

# has_pg_tools DIR: DIR holds every PostgreSQL program the tests run.
has_pg_tools() {
    local tool
    for tool in "${PG_TOOLS[@]}"; do
        [[ -x "$1/$tool" ]] || return 1
    done
}

# pg_bindir: the directory to put first on PATH, or nothing when PATH already has them
# all. Debian's versioned directories come first (the newest complete one), so that
# every tool is from one release rather than through Debian's version-picking wrappers.
pg_bindir() {
    local dir tool
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if has_pg_tools "$dir"; then
            echo "$dir"
            return 0
        fi
    done
    for tool in "${PG_TOOLS[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || return 1
    done
}

if ! PG_BINDIR=$(pg_bindir); then
    log "installing PostgreSQL (apt-get install postgresql postgresql-contrib)"
    command -v apt-get >/dev/null 2>&1 ||
        die "PostgreSQL programs (${PG_TOOLS[*]}) not found and no apt-get here: install PostgreSQL and put its bin directory on PATH"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
    PG_BINDIR=$(pg_bindir) || die "PostgreSQL was installed but its programs (${PG_TOOLS[*]}) were not found"
fi
if [[ -n "$PG_BINDIR" ]]; then
    export PATH="$PG_BINDIR:$PATH"
fi
log "PostgreSQL: $(command -v postgres) ($(postgres --version))"

# PostgreSQL refuses to run as root; as root, the harness runs it as the postgres user.
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres system user"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --- PostgreSQL 14-18 (integration/tests/majors.rs) -------------------------------------

# One installation per major: 15 is the one found above (Debian's); 14, 16, 17 and 18
# come from PyPI through scripts/pg-majors.sh, which downloads only what its cache lacks.
if ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip for scripts/pg-majors.sh (apt-get install python3-pip)"
    command -v apt-get >/dev/null 2>&1 ||
        die "'python3 -m pip' does not work and no apt-get here: install pip for python3 (scripts/pg-majors.sh needs it)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
    python3 -m pip --version >/dev/null 2>&1 || die "python3-pip was installed but 'python3 -m pip' does not work"
fi
PG_MAJORS=(14 16 17 18)
PG15_BINDIR=
if [[ -n "$PG_BINDIR" ]] && "$PG_BINDIR/postgres" --version 2>/dev/null | grep -q '(PostgreSQL) 15\.'; then
    PG15_BINDIR=$PG_BINDIR
else
    PG_MAJORS+=(15) # not Debian's 15 above: pg-majors.sh finds or installs one
fi
log "PostgreSQL majors: scripts/pg-majors.sh ${PG_MAJORS[*]}"
PG_MAJOR_LINES=$(bash "$ROOT/scripts/pg-majors.sh" "${PG_MAJORS[@]}") ||
    die "scripts/pg-majors.sh ${PG_MAJORS[*]} failed"
if [[ -n "$PG15_BINDIR" ]]; then
    PG_MAJOR_LINES+=$'\n'"15"$'\t'"$PG15_BINDIR"
fi
PGVAULT_TEST_PG_BIN_DIRS=
while IFS=$'\t' read -r major dir; do
    [[ "$dir" != *:* ]] || die "PostgreSQL $major is in $dir, whose ':' PGVAULT_TEST_PG_BIN_DIRS cannot hold (set PGVAULT_PG_CACHE elsewhere)"
    PGVAULT_TEST_PG_BIN_DIRS+=${PGVAULT_TEST_PG_BIN_DIRS:+:}$major=$dir
done < <(sort -n <<<"$PG_MAJOR_LINES")
export PGVAULT_TEST_PG_BIN_DIRS
log "PostgreSQL majors: $PGVAULT_TEST_PG_BIN_DIRS"

# --- promtool (integration/tests/monitoring.rs) ------------------------------------------

# The alert rules in docker/monitoring are checked and unit-tested with promtool, which
# Debian ships in its prometheus package. Only the promtool binary is taken from the
# package (into a cache), so no Prometheus service is installed or started.
PROMTOOL_CACHE=/var/cache/pgvault-test/promtool
if command -v promtool >/dev/null 2>&1; then
    PGVAULT_TEST_PROMTOOL=$(command -v promtool)
elif [[ -x "$PROMTOOL_CACHE/usr/bin/promtool" ]]; then
    PGVAULT_TEST_PROMTOOL=$PROMTOOL_CACHE/usr/bin/promtool
else
    log "fetching promtool (apt-get download prometheus, unpacked into $PROMTOOL_CACHE)"
    command -v apt-get >/dev/null 2>&1 ||
        die "promtool not found and no apt-get here: install Prometheus's promtool and put it on PATH"
    as_root mkdir -p "$PROMTOOL_CACHE"
    as_root chown "$(id -u):$(id -g)" "$PROMTOOL_CACHE"
    if ! (cd "$PROMTOOL_CACHE" && apt-get download -q prometheus >/dev/null 2>&1); then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        (cd "$PROMTOOL_CACHE" && apt-get download -q prometheus) || die "apt-get download prometheus failed"
    fi
    dpkg-deb -x "$PROMTOOL_CACHE"/prometheus_*.deb "$PROMTOOL_CACHE" || die "cannot unpack the prometheus package"
    rm -f "$PROMTOOL_CACHE"/prometheus_*.deb
    PGVAULT_TEST_PROMTOOL=$PROMTOOL_CACHE/usr/bin/promtool
fi
"$PGVAULT_TEST_PROMTOOL" --version >/dev/null 2>&1 || die "$PGVAULT_TEST_PROMTOOL does not run"
export PGVAULT_TEST_PROMTOOL
log "promtool: $PGVAULT_TEST_PROMTOOL"

# --- Chromium (integration/tests/status_page.rs) ----------------------------------------

# The agent's status page is checked in a real browser: headless Chromium.
if ! PGVAULT_TEST_CHROMIUM=$(command -v chromium || command -v chromium-browser || command -v google-chrome); then
    log "installing Chromium for the status-page test (apt-get install chromium)"
    command -v apt-get >/dev/null 2>&1 ||
        die "Chromium not found and no apt-get here: install chromium and put it on PATH"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
    PGVAULT_TEST_CHROMIUM=$(command -v chromium) || die "chromium was installed but is not on PATH"
fi
export PGVAULT_TEST_CHROMIUM
log "Chromium: $PGVAULT_TEST_CHROMIUM"

# --- S3 (Garage) ------------------------------------------------------------------------

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

# garage_bin: a Garage 2.x binary on PATH or in cargo's bin directory.
garage_bin() {
    local candidate
    for candidate in "$(command -v garage 2>/dev/null || true)" "$CARGO_BIN/garage"; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        if "$candidate" --version 2>/dev/null | grep -Eq '^garage [^0-9 ]*2\.'; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GARAGE_DIR=
MOTO_DIR=
cleanup() {
    local status=$?
    if [[ -n "$MOTO_DIR" ]]; then
        bash "$ROOT/scripts/moto.sh" stop "$MOTO_DIR" || true
        { mkdir -p "$TARGET_DIR" && cp -f "$MOTO_DIR/moto.log" "$TARGET_DIR/test-moto.log"; } 2>/dev/null || true
        rm -rf "$MOTO_DIR"
    fi
    if [[ -n "$GARAGE_DIR" ]]; then
        bash "$ROOT/scripts/garage.sh" stop "$GARAGE_DIR" || true
        # Keep the server's log for a look after a failed run.
        { mkdir -p "$TARGET_DIR" && cp -f "$GARAGE_DIR/garage.log" "$TARGET_DIR/test-garage.log"; } 2>/dev/null || true
        rm -rf "$GARAGE_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "${PGVAULT_TEST_S3_ENDPOINT:-}" ]]; then
    log "S3: external server $PGVAULT_TEST_S3_ENDPOINT"
else
    if ! GARAGE_BIN=$(garage_bin); then
        log "installing Garage $GARAGE_VERSION (cargo install; this takes about 20 minutes)"
        cargo install garage --locked --version "$GARAGE_VERSION" --root "${CARGO_HOME:-$HOME/.cargo}"
        GARAGE_BIN=$(garage_bin) || die "garage $GARAGE_VERSION was installed but $CARGO_BIN/garage does not run"
    fi
    export GARAGE_BIN
    GARAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgvault-garage.XXXXXX")
    bash "$ROOT/scripts/garage.sh" start "$GARAGE_DIR"
    # shellcheck source=/dev/null
    source "$GARAGE_DIR/env"
fi

# --- S3 with Object Lock (moto; integration/tests/object_lock.rs) -----------------------

# moto_ok VENV: VENV holds a moto_server of at least MOTO_MIN_VERSION.
moto_ok() {
    [[ -x "$1/bin/moto_server" && -x "$1/bin/python" ]] || return 1
    "$1/bin/python" - "$MOTO_MIN_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
def parts(v):
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in v.split(".")[:3])
sys.exit(0 if parts(version("moto")) >= parts(sys.argv[1]) else 1)
PY
}

# moto_cache: the directory for moto's virtualenv: the shared cache beside PostgreSQL's
# and promtool's when it can be written (as root, it is made), else the user's cache.
moto_cache() {
    local shared=/var/cache/pgvault-test
    if [[ -n "${PGVAULT_MOTO_CACHE:-}" ]]; then
        echo "$PGVAULT_MOTO_CACHE"
    elif [[ $(id -u) -eq 0 ]] || { mkdir -p "$shared/moto" 2>/dev/null && [[ -w "$shared/moto" ]]; }; then
        echo "$shared/moto"
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/pgvault-test/moto"
    fi
}

# install_moto VENV: create VENV (python3 -m venv, installing python3-venv with apt when
# the interpreter lacks it) and install moto into it from PyPI.
install_moto() {
    local venv=$1
    command -v python3 >/dev/null 2>&1 || die "python3 not found: it is needed for moto (the S3 server of the Object Lock tests)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        command -v apt-get >/dev/null 2>&1 ||
            die "'python3 -m venv' does not work and no apt-get here: install the venv module for python3"
        log "installing python3-venv (apt-get install python3-venv)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        python3 -m venv "$venv" || die "python3-venv was installed but 'python3 -m venv $venv' fails"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$MOTO_REQUIREMENT" ||
        die "pip install '$MOTO_REQUIREMENT' into $venv failed"
    moto_ok "$venv" || die "moto was installed into $venv but its moto_server is missing or older than $MOTO_MIN_VERSION"
}

if [[ -n "${PGVAULT_TEST_LOCK_S3_ENDPOINT:-}" ]]; then
    log "S3 with Object Lock: external server $PGVAULT_TEST_LOCK_S3_ENDPOINT"
else
    MOTO_VENV=$(moto_cache)/venv
    if ! moto_ok "$MOTO_VENV"; then
        log "installing $MOTO_REQUIREMENT into $MOTO_VENV (pip)"
        install_moto "$MOTO_VENV"
    fi
    export MOTO_SERVER=$MOTO_VENV/bin/moto_server
    MOTO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgvault-moto.XXXXXX")
    bash "$ROOT/scripts/moto.sh" start "$MOTO_DIR"
    # shellcheck source=/dev/null
    source "$MOTO_DIR/env"
fi

export PGVAULT_TEST_REQUIRE_SERVERS=1

# --- Build and test ---------------------------------------------------------------------

# The end-to-end tests run the built binaries (target/debug/pgvault).
log "cargo build --workspace --bins"
cargo build --workspace --bins

runner=${PGVAULT_TEST_RUNNER:-}
if [[ -z "$runner" ]]; then
    if cargo nextest --version >/dev/null 2>&1; then runner=nextest; else runner=cargo; fi
fi
case "$runner" in
nextest)
    log "cargo nextest run --workspace $*"
    cargo nextest run --workspace --no-fail-fast "$@"
    # nextest does not run doctests.
    if [[ $# -eq 0 ]]; then
        log "cargo test --workspace --doc"
        cargo test --workspace --doc
    fi
    ;;
cargo)
    log "cargo test --workspace $*"
    cargo test --workspace --no-fail-fast "$@"
    ;;
*) die "PGVAULT_TEST_RUNNER must be 'nextest' or 'cargo', not '$runner'" ;;
esac
