#!/usr/bin/env bash
# Benchmark: `pgvault keys rotate` on a repository of BENCH_BACKUPS logical backups on S3.
#
# A database of BENCH_DB_MIB MiB of incompressible rows is backed up BENCH_BACKUPS times
# to Garage (key A). Then `pgvault keys rotate --add B --remove A` runs through the fault
# proxy (no faults; BENCH_LATENCY_MS added per request, standing for a real region),
# which counts every byte that crosses it in each direction. Reported: bytes stored, bytes
# moved by the rotation (up + down, as the proxy counted them) and their ratio, against
# the 2x of re-encrypting (download and upload everything), and the rotation's time.
# Afterwards the oldest and the newest backup are verified deeply with key B, and key A
# must no longer open them.
#
# Usage: scripts/bench-rotate.sh
#
# Environment:
#   BENCH_DIR          work dir (default /var/tmp/pgvault-bench-rotate)
#   BENCH_BACKUPS      backups in the repository (default 20)
#   BENCH_DB_MIB       database size in MiB of random bytes (default 256)
#   BENCH_LATENCY_MS   added per S3 request during the rotation (default 40)
#   PG_BIN             PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# Needs root (PostgreSQL runs as the `postgres` OS user), Garage (scripts/garage.sh) and
# PostgreSQL 15 with contrib (pgcrypto). Builds pgvault --release.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pgvault-bench-rotate}
BACKUPS=${BENCH_BACKUPS:-20}
DB_MIB=${BENCH_DB_MIB:-256}
LATENCY_MS=${BENCH_LATENCY_MS:-40}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

log() { printf '[bench-rotate %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench-rotate.sh: error: %s\n' "$*" >&2; exit 1; }
((EUID == 0)) || die "run as root (PostgreSQL runs as the postgres OS user via runuser)"
[[ -x "$PG_BIN/pg_dump" ]] || die "no PostgreSQL in $PG_BIN (set PG_BIN)"
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "-"; else printf "%.2f", 100*a/b}'; }

log "building pgvault and the fault proxy (release)"
(cd "$REPO" && cargo build --release -q -p pgvault-cli && cargo build --release -q -p pgvault-integration --bin pgvault-fault-proxy)
PGVAULT=$REPO/target/release/pgvault

PROXY_PID=
cleanup() {
    [[ -n "$PROXY_PID" ]] && kill "$PROXY_PID" 2>/dev/null || true
    PATH="$PG_BIN:$PATH" "$REPO/scripts/pg-cluster.sh" stop "$BENCH_DIR/pg" >/dev/null 2>&1 || true
    [[ -d "$BENCH_DIR/garage" ]] && "$REPO/scripts/garage.sh" stop "$BENCH_DIR/garage" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
cd "$BENCH_DIR"

log "starting Garage"
"$REPO/scripts/garage.sh" start "$BENCH_DIR/garage" >/dev/null
# shellcheck disable=SC1091
source "$BENCH_DIR/garage/env"
GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
"$GARAGE" -c "$BENCH_DIR/garage/garage.toml" bucket create bench >/dev/null
"$GARAGE" -c "$BENCH_DIR/garage/garage.toml" bucket allow --read --write --owner bench --key pgvault-test >/dev/null
export AWS_ACCESS_KEY_ID=$PGVAULT_TEST_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$PGVAULT_TEST_S3_SECRET_ACCESS_KEY \
    AWS_REGION=garage AWS_EC2_METADATA_DISABLED=true

log "starting PostgreSQL and writing $DB_MIB MiB of random rows"
PORT=$(PATH="$PG_BIN:$PATH" "$REPO/scripts/pg-cluster.sh" start "$BENCH_DIR/pg")
PSQL=("$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "create database app"
"${PSQL[@]}" -d app -c "create extension pgcrypto" \
    -c "create table blob (id int primary key, b bytea)" \
    -c "insert into blob select g, gen_random_bytes(1024) from generate_series(1, $((DB_MIB * 1024))) g"

"$PGVAULT" keygen --output a.txt >a.recipient 2>/dev/null
"$PGVAULT" keygen --output b.txt >b.recipient 2>/dev/null
# policy FILE ENDPOINT: the same repository, reached directly or through the proxy.
policy() {
    cat >"$1" <<TOML
name = "app"
[source]
url = "postgres://postgres@127.0.0.1:$PORT/app"
bin_dir = "$PG_BIN"
[repository]
url = "s3://bench/rotate"
endpoint = "$2"
region = "garage"
[encryption]
recipients = ["$(cat a.recipient)"]
TOML
}
policy direct.toml "$PGVAULT_TEST_S3_ENDPOINT"

log "taking $BACKUPS backups"
for n in $(seq "$BACKUPS"); do
    "$PGVAULT" backup --policy direct.toml >/dev/null
    log "  backup $n of $BACKUPS"
done
STORED=$("$PGVAULT" list --policy direct.toml --json | python3 -c '
import json, sys
print(sum(o["stored_size"] for b in json.load(sys.stdin) for o in b["objects"].values()))')
OBJECTS=$("$PGVAULT" list --policy direct.toml --json | python3 -c '
import json, sys
print(sum(len(b["objects"]) for b in json.load(sys.stdin)))')

log "rotating A -> B through the proxy (+$LATENCY_MS ms per request)"
"$REPO/target/release/pgvault-fault-proxy" --upstream "$PGVAULT_TEST_S3_ENDPOINT" --rate 0 \
    --latency-ms "$LATENCY_MS" >proxy.out 2>proxy.err &
PROXY_PID=$!
for _ in $(seq 100); do grep -q '^listening on' proxy.out 2>/dev/null && break; sleep 0.1; done
PROXY=$(awk '/^listening on/ {print $3}' proxy.out)
[[ -n "$PROXY" ]] || die "the fault proxy did not start: $(cat proxy.err)"
policy proxy.toml "http://$PROXY"
START=$(date +%s.%N)
"$PGVAULT" keys rotate --policy proxy.toml --identity a.txt \
    --add "$(cat b.recipient)" --remove "$(cat a.recipient)" >rotate.out
END=$(date +%s.%N)
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" || true
PROXY_PID=
STATS=$(tail -n 1 proxy.err)
UP=$(sed -n 's/.*bytes_to_server=\([0-9]*\).*/\1/p' <<<"$STATS")
DOWN=$(sed -n 's/.*bytes_to_clients=\([0-9]*\).*/\1/p' <<<"$STATS")
REQUESTS=$(sed -n 's/^requests=\([0-9]*\).*/\1/p' <<<"$STATS")
[[ -n "$UP" && -n "$DOWN" ]] || die "no byte counts from the proxy: $STATS"
MOVED=$((UP + DOWN))
SECONDS_TAKEN=$(awk -v a="$START" -v b="$END" 'BEGIN{printf "%.1f", b-a}')

log "verifying the oldest and the newest backup with key B, and that key A no longer opens them"
policy_b() { sed "s|recipients = .*|recipients = [\"$(cat b.recipient)\"]|" direct.toml >b.toml; }
policy_b
IDS=$("$PGVAULT" list --policy b.toml --json | python3 -c '
import json, sys
ids = [b["id"] for b in json.load(sys.stdin)]
print(ids[0], ids[-1])')
for id in $IDS; do
    "$PGVAULT" verify --policy b.toml --identity b.txt "$id" | grep -q "verification PASSED" ||
        die "backup $id does not verify with key B"
    if "$PGVAULT" verify --policy b.toml --identity a.txt "$id" >/dev/null 2>&1; then
        die "key A still opens backup $id"
    fi
done

cat <<REPORT

Key rotation benchmark: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), Garage, +$LATENCY_MS ms per S3 request, one run ($(date -u +%Y-%m-%d))

| repository | stored | moved by the rotation (up + down, counted by the proxy) | moved / stored | re-encrypting instead (download + upload) | requests | time |
|---|---|---|---|---|---|---|
| $BACKUPS logical backups of $DB_MIB MiB random rows ($OBJECTS objects) | $(mib "$STORED") MiB | $(mib "$MOVED") MiB ($(mib "$UP") up, $(mib "$DOWN") down) | $(pct "$MOVED" "$STORED")% | $(mib $((2 * STORED))) MiB (200%) | $REQUESTS | ${SECONDS_TAKEN} s |

pgvault's own count: $(grep '^moved' rotate.out)
After the rotation the oldest and the newest backup verify deeply with key B; key A opens neither.
REPORT
