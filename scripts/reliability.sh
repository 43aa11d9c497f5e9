#!/usr/bin/env bash
# The reliability matrix of docs/RELIABILITY.md: backup, restore, verify and wal-push,
# each run N times through the fault-injection proxy (resets mid-body, 503, 500,
# truncated bodies, stalls, stalled bodies, latency, and all of them mixed) in front of
# a real Garage, every run classified as succeeded, failed cleanly, corrupt, left open or
# hung. Prints the matrix as a Markdown table on stdout; exits non-zero if any run was
# corrupt, left something open or hung.
#
#   scripts/reliability.sh [--runs N] [--rate R] [--seed S] [--operations backup,restore,...]
#
# Needs what scripts/test.sh installs (PostgreSQL, Garage); run that once first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { echo "==> reliability.sh: $*" >&2; }
die() {
    echo "reliability.sh: $*" >&2
    exit 1
}

GARAGE_BIN=${GARAGE_BIN:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}
[[ -x "$GARAGE_BIN" ]] || die "garage not found: run scripts/test.sh once (it installs Garage)"
export GARAGE_BIN
for dir in /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" ]] && export PATH="$dir:$PATH"
done
command -v initdb >/dev/null || die "PostgreSQL server binaries not found: run scripts/test.sh once"

GARAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgvault-reliability-garage.XXXXXX")
cleanup() {
    bash "$ROOT/scripts/garage.sh" stop "$GARAGE_DIR" || true
    rm -rf "$GARAGE_DIR"
}
trap cleanup EXIT
bash "$ROOT/scripts/garage.sh" start "$GARAGE_DIR" >&2
# shellcheck source=/dev/null
source "$GARAGE_DIR/env"

log "cargo build --workspace --bins"
cargo build -q --workspace --bins
"${CARGO_TARGET_DIR:-$ROOT/target}/debug/pgvault-reliability" "$@"
