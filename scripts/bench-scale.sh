#!/usr/bin/env bash
# Benchmark for large clusters: WAL archiving throughput, incremental against full base
# backups, and what a 5-minute object-store outage does to the primary. One run, side by
# side, against Garage behind the fault proxy adding a fixed latency to every S3 request
# (40 ms by default, standing for a real region).
#
#   wal          a WAL-heavy pgbench (-c 8, each transaction inserts 16 KiB of random
#                text) for BENCH_PGBENCH_SECONDS, archived by
#                  pgvault wal-push (sync) | pgvault wal-push ([archive] mode = "async")
#                  | pgbackrest archive-push --archive-async (process-max = push_parallel,
#                    encrypted with aes-256-cbc as pgvault encrypts with age)
#                segments archived per second, the largest backlog (.ready files), whether
#                it kept up, and how long the backlog took to clear; then each archiver
#                drains a backlog of BENCH_DRAIN_SEGMENTS segments written while archiving
#                was off: its capacity in segments per second, whatever the WAL rate.
#   incremental  a pgbench database of BENCH_SCALE (280: about 4.2 GB) on PostgreSQL 17;
#                a full base backup, then three rounds of "update 2.5% of the accounts"
#                (about 5% of the blocks) + an incremental; then a full. Bytes stored and
#                time of each; restore time (extract, combine, replay, promote) of the
#                chain (full + 3 incrementals) against the full taken at the same point.
#   fillup       the store is unreachable for BENCH_OUTAGE_SECONDS while pgbench writes
#                WAL at a fixed rate, with async archiving and queue_max = BENCH_QUEUE_MAX:
#                queue_full = "keep" (how far pg_wal grows) and "drop" (how far the spool
#                grows, the gap record, and `check` naming it).
#
# Usage: scripts/bench-scale.sh [wal] [incremental] [fillup]     (default: all three)
#
# Environment:
#   BENCH_DIR              work dir (default /var/tmp/pgvault-bench-scale)
#   BENCH_LATENCY_MS       added per S3 request (default 40)
#   BENCH_PGBENCH_SECONDS  length of each WAL throughput run (default 60)
#   BENCH_DRAIN_SEGMENTS   backlog each archiver drains (default 128)
#   BENCH_PUSH_PARALLEL    pgvault push_parallel and pgBackRest process-max (default 8)
#   BENCH_SCALE            pgbench scale of the incremental part (default 280)
#   BENCH_OUTAGE_SECONDS   length of the outage (default 300)
#   BENCH_FILL_RATE        pgbench transactions per second during the outage (default 600,
#                          about 10 MiB/s of WAL)
#   BENCH_QUEUE_MAX        queue_max of the fill-up runs (default 1GiB)
#
# Needs root (PostgreSQL and the archivers run as the `postgres` OS user), python3 with
# pip (PostgreSQL 17 from scripts/pg-majors.sh), Garage (scripts/garage.sh) and, for the
# wal part, pgbackrest (installed with apt-get when missing). Builds pgvault --release.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pgvault-bench-scale}
LATENCY_MS=${BENCH_LATENCY_MS:-40}
PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-60}
DRAIN=${BENCH_DRAIN_SEGMENTS:-128}
PARALLEL=${BENCH_PUSH_PARALLEL:-8}
SCALE=${BENCH_SCALE:-280}
OUTAGE=${BENCH_OUTAGE_SECONDS:-300}
FILL_RATE=${BENCH_FILL_RATE:-600}
QUEUE_MAX=${BENCH_QUEUE_MAX:-1GiB}
PARTS=("$@")
((${#PARTS[@]})) || PARTS=(wal incremental fillup)
CORES=$(nproc)

log() { printf '[bench-scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench-scale.sh: error: %s\n' "$*" >&2; exit 1; }
((EUID == 0)) || die "run as root (PostgreSQL runs as the postgres OS user via runuser)"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == 0) print "-"; else printf "%.2f", a/b}'; }
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wants() { local p; for p in "${PARTS[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

for p in "${PARTS[@]}"; do
    [[ $p =~ ^(wal|incremental|fillup)$ ]] || die "unknown part '$p' (wal, incremental, fillup)"
done
if wants wal && ! command -v pgbackrest >/dev/null; then
    log "installing pgbackrest (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null
fi

log "building pgvault and the fault proxy (release)"
(cd "$REPO" && cargo build --release -q -p pgvault-cli && cargo build --release -q -p pgvault-integration --bin pgvault-fault-proxy)
install -m 0755 "$REPO/target/release/pgvault" /usr/local/bin/pgvault-bench

PIDS=()
cleanup() {
    for d in "$BENCH_DIR"/data* "$BENCH_DIR"/restore-*; do
        [[ -f "$d/postmaster.pid" ]] && as_pg "${PG_BIN:-/nonexistent}/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    done
    pkill -f "pgvault-bench wal-pusher" 2>/dev/null || true
    pkill -f "pgvault-bench wal-prefetcher" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -d "$BENCH_DIR/garage" ]] && "$REPO/scripts/garage.sh" stop "$BENCH_DIR/garage" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
chown postgres: "$BENCH_DIR"
cd "$BENCH_DIR"

# --- S3: Garage behind the latency proxy (HTTP for pgvault, HTTPS for pgBackRest) ---------
log "starting Garage and the fault proxy (+${LATENCY_MS} ms per request)"
"$REPO/scripts/garage.sh" start "$BENCH_DIR/garage" >/dev/null
# shellcheck disable=SC1091
source "$BENCH_DIR/garage/env"
GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
"$GARAGE" -c "$BENCH_DIR/garage/garage.toml" bucket create bench >/dev/null
"$GARAGE" -c "$BENCH_DIR/garage/garage.toml" bucket allow --read --write --owner bench --key pgvault-test >/dev/null
"$REPO/target/release/pgvault-fault-proxy" --upstream "$PGVAULT_TEST_S3_ENDPOINT" --rate 0 \
    --latency-ms "$LATENCY_MS" --tls-listen 127.0.0.1:0 --tls-dir "$BENCH_DIR/tls" \
    >proxy.out 2>proxy.err &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
for _ in $(seq 100); do grep -q '^tls listening' proxy.out 2>/dev/null && break; sleep 0.1; done
PROXY=$(awk '/^listening on/ {print $3}' proxy.out)
TLS_PORT=$(awk '/^tls listening on/ {print $4}' proxy.out | cut -d: -f2)
[[ -n "$PROXY" && -n "$TLS_PORT" ]] || die "the fault proxy did not start: $(cat proxy.err)"
S3_ENV="env AWS_ACCESS_KEY_ID=$PGVAULT_TEST_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$PGVAULT_TEST_S3_SECRET_ACCESS_KEY AWS_REGION=garage AWS_EC2_METADATA_DISABLED=true"
export AWS_ACCESS_KEY_ID=$PGVAULT_TEST_S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$PGVAULT_TEST_S3_SECRET_ACCESS_KEY \
    AWS_REGION=garage AWS_EC2_METADATA_DISABLED=true

# --- PostgreSQL ---------------------------------------------------------------------------
# start_cluster MAJOR: initdb and start a cluster of MAJOR in $BENCH_DIR/dataMAJOR, and make
# it the current one (PG_BIN, PORT, DATA, PSQL, PGBENCH). pgBackRest 2.45 (Debian 12)
# reads clusters up to PostgreSQL 16, so the wal and fillup parts run on 15, and the
# incremental part, which needs 17, on 17.
start_cluster() {
    PG_BIN=$(bash "$REPO/scripts/pg-majors.sh" "$1" | cut -f2)
    [[ -x "$PG_BIN/postgres" ]] || die "no PostgreSQL $1 from scripts/pg-majors.sh"
    PORT=$(free_port)
    DATA=data$1
    log "initdb (PostgreSQL $1) on port $PORT"
    as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust --no-sync >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BENCH_DIR'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 4GB
shared_buffers = 512MB
CONF
    (($1 >= 17)) && echo "summarize_wal = on" >>"$DATA/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "server$1.log" -w start >/dev/null
    PSQL=(psql -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
    PGBENCH=("$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres)
    # A WAL-heavy transaction: 16 KiB of random hex text in one row.
    "${PSQL[@]}" -c "create table walload (id bigserial primary key, payload text)"
}
stop_cluster() { as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; }
set_archive() {
    "${PSQL[@]}" -c "alter system set archive_command = '$1'" -c "select pg_reload_conf()" >/dev/null
}
ready_count() { find "$DATA/pg_wal/archive_status" -name '*.ready' | wc -l; }
wait_archived() { # seconds; until no .ready file is left
    local limit=$1 start=$SECONDS
    while (($(ready_count) > 0)); do
        ((SECONDS - start < limit)) || return 1
        sleep 0.5
    done
}
dir_bytes() { du -sb "$1" 2>/dev/null | cut -f1 || echo 0; }
# spool_waiting DIR: files waiting in a spool (queued, or dropped and not yet recorded).
spool_waiting() { find "$1/queue" "$1/dropped" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l; }

as_pg pgvault-bench keygen --output "$BENCH_DIR/identity.txt" >recipient.txt 2>/dev/null
# policy NAME PREFIX [EXTRA]: a policy on s3://bench/PREFIX through the proxy.
policy() {
    cat >"$1.toml" <<TOML
name = "$1"
[source]
url = "postgres://postgres@127.0.0.1:$PORT/postgres"
bin_dir = "$PG_BIN"
[repository]
url = "s3://bench/$2"
endpoint = "http://$PROXY"
region = "garage"
[encryption]
recipients = ["$(cat recipient.txt)"]
[compression]
level = 3
${3:-}
TOML
    chown postgres: "$1.toml"
}
push_command() { echo "$S3_ENV pgvault-bench wal-push --policy $BENCH_DIR/$1.toml %p"; }
chown postgres: identity.txt recipient.txt

cat >walload.sql <<'SQL'
insert into walload (payload) select string_agg(md5(random()::text), '') from generate_series(1, 512);
SQL
chmod 644 walload.sql

report_wal() {
    PGBR_VERSION=$(pgbackrest version | cut -d' ' -f2)
    cat <<REPORT

WAL archiving under pgbench -c 8 -T $PGBENCH_SECONDS (16 KiB of random text per transaction):

| archiver | segments written | acknowledged to PostgreSQL (seg/s) | stored, start to empty backlog (seg/s) | largest backlog (segments) | kept up | backlog cleared after the run (s) |
|---|---|---|---|---|---|---|
| pgvault wal-push, sync | ${WAL_WRITTEN[sync]} | ${WAL_RATE[sync]} | ${WAL_STORED_RATE[sync]} | ${WAL_BACKLOG[sync]} | ${WAL_KEPT[sync]} | ${WAL_CLEAR[sync]} |
| pgvault wal-push, async (push_parallel $PARALLEL) | ${WAL_WRITTEN[async]} | ${WAL_RATE[async]} | ${WAL_STORED_RATE[async]} | ${WAL_BACKLOG[async]} | ${WAL_KEPT[async]} | ${WAL_CLEAR[async]} |
| pgBackRest $PGBR_VERSION archive-push --archive-async (process-max $PARALLEL) | ${WAL_WRITTEN[pgbackrest]} | ${WAL_RATE[pgbackrest]} | ${WAL_STORED_RATE[pgbackrest]} | ${WAL_BACKLOG[pgbackrest]} | ${WAL_KEPT[pgbackrest]} | ${WAL_CLEAR[pgbackrest]} |

Draining a backlog written while archiving was off (capacity):

| archiver | backlog (segments) | acknowledged (seg/s) | stored (seg/s) |
|---|---|---|---|
| pgvault wal-push, sync | ${DRAIN_N[sync]} | ${DRAIN_ACK[sync]} | ${DRAIN_STORED[sync]} |
| pgvault wal-push, async | ${DRAIN_N[async]} | ${DRAIN_ACK[async]} | ${DRAIN_STORED[async]} |
| pgBackRest archive-push --archive-async | ${DRAIN_N[pgbackrest]} | ${DRAIN_ACK[pgbackrest]} | ${DRAIN_STORED[pgbackrest]} |

pgvault async / pgBackRest async, segments stored per second while draining: $(ratio "${DRAIN_STORED[async]}" "${DRAIN_STORED[pgbackrest]}"); pgvault async / pgvault sync: $(ratio "${DRAIN_STORED[async]}" "${DRAIN_STORED[sync]}")
REPORT
}
report_incremental() {
    cat <<REPORT

Incremental against full (pgbench scale $SCALE, database $(mib "$DB_SIZE") MiB; each round updates 2.5% of the accounts):

| backup | time (s) | stored (MiB) | stored / full |
|---|---|---|---|
| full | ${B_TIME[full0]} | $(mib "${B_BYTES[full0]}") | 1.00 |
| incremental 1 | ${B_TIME[incr1]} | $(mib "${B_BYTES[incr1]}") | $(ratio "${B_BYTES[incr1]}" "${B_BYTES[full0]}") |
| incremental 2 | ${B_TIME[incr2]} | $(mib "${B_BYTES[incr2]}") | $(ratio "${B_BYTES[incr2]}" "${B_BYTES[full0]}") |
| incremental 3 | ${B_TIME[incr3]} | $(mib "${B_BYTES[incr3]}") | $(ratio "${B_BYTES[incr3]}" "${B_BYTES[full0]}") |
| full, after the three rounds | ${B_TIME[full1]} | $(mib "${B_BYTES[full1]}") | $(ratio "${B_BYTES[full1]}" "${B_BYTES[full0]}") |

Restore (extract every member verified, pg_combinebackup, replay, promote): chain of full + 3 incrementals ${R_TIME[chain]} s, the full taken at the same point ${R_TIME[full]} s (chain / full $(ratio "${R_TIME[chain]}" "${R_TIME[full]}")). WAL files served by the prefetcher: ${R_PREFETCHED[chain]:-0} and ${R_PREFETCHED[full]:-0}.
REPORT
}
report_fillup() {
    cat <<REPORT

Object store unreachable for $OUTAGE s while pgbench writes at $FILL_RATE tps (async archiving, queue_max $QUEUE_MAX):

| queue_full | pg_wal during the outage (WAL not yet archived; directory size with recycled segments) | spool at most | backlog cleared after (s) | pgvault check afterwards |
|---|---|---|---|---|
| keep | ${F_PGWAL[keep]} | ${F_SPOOL[keep]} | ${F_CLEAR[keep]} | ${F_CHECK[keep]} |
| drop | ${F_PGWAL[drop]} | ${F_SPOOL[drop]} | ${F_CLEAR[drop]} | ${F_CHECK[drop]} |
REPORT
}
report_header() {
echo
echo "Scale benchmark: $CORES cores, PostgreSQL 15 (wal, fillup: pgBackRest 2.45 reads up to 16) and 17 (incremental), Garage behind a proxy adding ${LATENCY_MS} ms per S3 request, zstd 3, one run ($(date -u +%Y-%m-%d))"
}
report_header
# =========================================================================================
declare -A WAL_RATE WAL_BACKLOG WAL_KEPT WAL_CLEAR WAL_WRITTEN WAL_STORED_RATE DRAIN_ACK DRAIN_STORED DRAIN_N
if wants wal || wants fillup; then
    start_cluster 15
fi
if wants wal; then
    policy walsync walsync
    policy walasync walasync "[archive]
mode = \"async\"
spool_dir = \"$BENCH_DIR/spool-wal\"
queue_max = \"16GiB\"
push_parallel = $PARALLEL"
    mkdir -p spool-wal pgbackrest-spool && chown postgres: spool-wal pgbackrest-spool
    cat >pgbackrest.conf <<CONF
[global]
repo1-type=s3
repo1-s3-bucket=bench
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$TLS_PORT
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-region=garage
repo1-s3-key=$PGVAULT_TEST_S3_ACCESS_KEY_ID
repo1-s3-key-secret=$PGVAULT_TEST_S3_SECRET_ACCESS_KEY
repo1-path=/pgbackrest
compress-type=zst
compress-level=3
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
archive-async=y
spool-path=$BENCH_DIR/pgbackrest-spool
process-max=$PARALLEL
log-level-console=warn
log-level-file=off
lock-path=$BENCH_DIR/pgbackrest-spool
[bench]
pg1-path=$BENCH_DIR/$DATA
pg1-port=$PORT
pg1-socket-path=$BENCH_DIR
CONF
    chown postgres: pgbackrest.conf
    as_pg pgbackrest --config="$BENCH_DIR/pgbackrest.conf" --stanza=bench stanza-create

    for mode in sync async pgbackrest; do
        case $mode in
        sync) set_archive "$(push_command walsync)" ;;
        async) set_archive "$(push_command walasync)" ;;
        pgbackrest) set_archive "pgbackrest --config=$BENCH_DIR/pgbackrest.conf --stanza=bench archive-push %p" ;;
        esac
        "${PSQL[@]}" -c "select pg_switch_wal()" >/dev/null
        wait_archived 300 || die "$mode: the archive did not catch up before the run"
        log "wal: $mode, pgbench -c 8 -T $PGBENCH_SECONDS"
        A0=$("${PSQL[@]}" -c "select archived_count from pg_stat_archiver")
        L0=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
        t0=$(now)
        as_pg "${PGBENCH[@]}" -n -c 8 -j "$CORES" -T "$PGBENCH_SECONDS" -f "$BENCH_DIR/walload.sql" postgres >"pgbench-$mode.out" 2>&1 &
        BENCH_PID=$!
        MAX=0
        while kill -0 "$BENCH_PID" 2>/dev/null; do
            n=$(ready_count)
            ((n > MAX)) && MAX=$n
            sleep 1
        done
        wait "$BENCH_PID" || true
        t1=$(now)
        L1=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
        A1=$("${PSQL[@]}" -c "select archived_count from pg_stat_archiver")
        END_BACKLOG=$(ready_count)
        WRITTEN=$("${PSQL[@]}" -c "select round(pg_wal_lsn_diff('$L1', '$L0') / 16777216)")
        DURATION=$(elapsed "$t0" "$t1")
        wait_archived 1800 || die "$mode: the backlog did not clear in 30 minutes"
        if [[ $mode == async ]]; then
            while (($(spool_waiting spool-wal) > 0)); do sleep 0.5; done
        fi
        t2=$(now)
        WAL_WRITTEN[$mode]=$WRITTEN
        WAL_RATE[$mode]=$(ratio "$((A1 - A0))" "$DURATION")
        WAL_STORED_RATE[$mode]=$(ratio "$WRITTEN" "$(elapsed "$t0" "$t2")")
        WAL_BACKLOG[$mode]=$MAX
        WAL_KEPT[$mode]=$( ((END_BACKLOG <= 2)) && echo yes || echo "no ($END_BACKLOG left)")
        WAL_CLEAR[$mode]=$(elapsed "$t1" "$t2")
        log "wal: $mode: $WRITTEN segments written, ${WAL_RATE[$mode]} seg/s acknowledged, backlog max $MAX"

        # Drain: a backlog of DRAIN segments, written while archiving was off, archived
        # as fast as the archiver can: its capacity, whatever this machine's WAL rate.
        set_archive "/bin/false"
        while (($(ready_count) < DRAIN)); do
            as_pg "${PGBENCH[@]}" -n -c 8 -j "$CORES" -T 3 -f "$BENCH_DIR/walload.sql" postgres >/dev/null 2>&1
            "${PSQL[@]}" -c "select pg_switch_wal()" >/dev/null
        done
        QUEUED=$(ready_count)
        log "wal: $mode: draining a backlog of $QUEUED segments"
        case $mode in
        sync) set_archive "$(push_command walsync)" ;;
        async) set_archive "$(push_command walasync)" ;;
        pgbackrest) set_archive "pgbackrest --config=$BENCH_DIR/pgbackrest.conf --stanza=bench archive-push %p" ;;
        esac
        t0=$(now)
        "${PSQL[@]}" -c "insert into walload (payload) values ('wake')" -c "select pg_switch_wal()" >/dev/null
        wait_archived 3600 || die "$mode: the drain did not finish"
        t1=$(now)
        if [[ $mode == async ]]; then
            while (($(spool_waiting spool-wal) > 0)); do sleep 0.2; done
        fi
        t2=$(now)
        DRAIN_ACK[$mode]=$(ratio "$QUEUED" "$(elapsed "$t0" "$t1")")
        DRAIN_STORED[$mode]=$(ratio "$QUEUED" "$(elapsed "$t0" "$t2")")
        DRAIN_N[$mode]=$QUEUED
        log "wal: $mode: drained at ${DRAIN_STORED[$mode]} seg/s stored (${DRAIN_ACK[$mode]} acknowledged)"
    done
    set_archive "/bin/true"
fi
wants wal && report_wal
# =========================================================================================
declare -A F_PGWAL F_SPOOL F_CLEAR F_CHECK
if wants fillup; then
    for mode in keep drop; do
        policy "fill$mode" "fill$mode" "[archive]
mode = \"async\"
spool_dir = \"$BENCH_DIR/spool-$mode\"
queue_max = \"$QUEUE_MAX\"
queue_full = \"$mode\"
push_parallel = $PARALLEL"
        mkdir -p "spool-$mode" && chown postgres: "spool-$mode"
        set_archive "$(push_command "fill$mode")"
        "${PSQL[@]}" -c "select pg_switch_wal()" >/dev/null
        wait_archived 600 || die "fill-up $mode: archiving did not catch up before the outage"
        while (($(spool_waiting "spool-$mode") > 0)); do sleep 0.5; done
        "${PSQL[@]}" -c "checkpoint" >/dev/null
        PGWAL0=$(dir_bytes "$DATA/pg_wal")
        log "fill-up: $mode, store down for $OUTAGE s while pgbench writes at $FILL_RATE tps"
        kill -USR1 "$PROXY_PID"
        as_pg "${PGBENCH[@]}" -n -c 4 -j "$CORES" -R "$FILL_RATE" -T "$OUTAGE" -f "$BENCH_DIR/walload.sql" postgres >"pgbench-fill-$mode.out" 2>&1 &
        BENCH_PID=$!
        MAXW=0 MAXS=0 MAXR=0
        while kill -0 "$BENCH_PID" 2>/dev/null; do
            w=$(dir_bytes "$DATA/pg_wal")
            s=$(dir_bytes "spool-$mode")
            r=$(ready_count)
            ((w > MAXW)) && MAXW=$w
            ((s > MAXS)) && MAXS=$s
            ((r > MAXR)) && MAXR=$r
            sleep 2
        done
        wait "$BENCH_PID" || true
        kill -USR2 "$PROXY_PID"
        t0=$(now)
        wait_archived 3600 || die "fill-up $mode: the backlog did not clear"
        while (($(spool_waiting "spool-$mode") > 0)); do sleep 0.5; done
        t1=$(now)
        F_PGWAL[$mode]="$((MAXR * 16)) MiB unarchived at most; directory $(mib "$PGWAL0") -> $(mib "$MAXW") MiB"
        F_SPOOL[$mode]="$(mib "$MAXS") MiB"
        F_CLEAR[$mode]=$(elapsed "$t0" "$t1")
        set +e
        CHECK_OUT=$(pgvault-bench check --policy "fill$mode.toml" 2>&1)
        CHECK_CODE=$?
        set -e
        GAP_LINE=$(grep -m1 '^  GAP   WAL' <<<"$CHECK_OUT" || true)
        F_CHECK[$mode]="exit $CHECK_CODE${GAP_LINE:+: ${GAP_LINE#  GAP   }}"
        log "fill-up: $mode: pg_wal ${F_PGWAL[$mode]}, spool max ${F_SPOOL[$mode]}, check ${F_CHECK[$mode]}"
    done
    set_archive "/bin/true"
fi
wants fillup && report_fillup
# =========================================================================================
if wants incremental; then
    if [[ -n "${DATA:-}" ]]; then stop_cluster; fi
    start_cluster 17
    log "incremental: pgbench -i -s $SCALE"
    t0=$(now)
    as_pg "${PGBENCH[@]}" -i -q -s "$SCALE" postgres >pgbench-init.out 2>&1
    log "incremental: loaded in $(elapsed "$t0" "$(now)") s"
    DB_SIZE=$("${PSQL[@]}" -c "select pg_database_size('postgres')")
    policy incr incr "[backup]
archive_wait = \"30m\""
    set_archive "$(push_command incr)"
    "${PSQL[@]}" -c "checkpoint" -c "select pg_switch_wal()" >/dev/null
    # backup NAME ARGS...: time and stored bytes of one base backup, its id last.
    declare -A B_TIME B_BYTES B_ID
    backup() {
        local name=$1 out t0 t1
        shift
        t0=$(now)
        out=$(as_pg env AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
            AWS_REGION=garage AWS_EC2_METADATA_DISABLED=true \
            pgvault-bench backup --policy "$BENCH_DIR/incr.toml" --kind physical --json "$@")
        t1=$(now)
        B_TIME[$name]=$(elapsed "$t0" "$t1")
        B_BYTES[$name]=$(python3 -c 'import json,sys; m=json.load(sys.stdin)["manifest"]; print(sum(o["stored_size"] for o in m["objects"].values()))' <<<"$out")
        B_ID[$name]=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest"]["id"])' <<<"$out")
        log "incremental: $name ${B_ID[$name]}: ${B_TIME[$name]} s, $(mib "${B_BYTES[$name]}") MiB stored"
    }
    ACCOUNTS=$((SCALE * 100000))
    STEP=$((ACCOUNTS / 40)) # 2.5% of the accounts per round
    backup full0
    for round in 1 2 3; do
        from=$(((round - 1) * STEP + 1))
        "${PSQL[@]}" -c "update pgbench_accounts set abalance = abalance + 1 where aid between $from and $((from + STEP - 1))"
        backup "incr$round" --incremental
    done
    "${PSQL[@]}" -c "create table marker (note text)" -c "insert into marker values ('after incr3')"
    "${PSQL[@]}" -c "select pg_switch_wal()" >/dev/null
    wait_archived 600 || die "archiving did not catch up"
    sleep 1
    TARGET=$("${PSQL[@]}" -c "select clock_timestamp()")
    sleep 1
    backup full1
    # A commit after the target, so recovery can tell it has reached it.
    "${PSQL[@]}" -c "insert into marker values ('after the target')" -c "select pg_switch_wal()" >/dev/null
    wait_archived 600 || die "archiving did not catch up"

    # restore NAME ARGS...: extract (and combine), replay and promote; the wall time.
    declare -A R_TIME R_PREFETCHED
    restore() { # NAME EXPECTED-MARKER-ROWS ARGS...
        local name=$1 expected=$2 rport out t0 t1
        shift 2
        rport=$(free_port)
        mkdir -p "restore-$name" && chown postgres: "restore-$name" && chmod 700 "restore-$name"
        t0=$(now)
        out=$(pgvault-bench restore --policy "$BENCH_DIR/incr.toml" --identity "$BENCH_DIR/identity.txt" \
            --pgdata "$BENCH_DIR/restore-$name" --start --port "$rport" --archive-mode off "$@")
        t1=$(now)
        R_TIME[$name]=$(elapsed "$t0" "$t1")
        R_PREFETCHED[$name]=$(grep -o '[0-9]* WAL file(s) from the prefetcher' <<<"$out" | cut -d' ' -f1)
        [[ $(psql -X -At -h 127.0.0.1 -p "$rport" -U postgres -d postgres -c "select string_agg(note, ',') from marker") == "$expected" ]] ||
            die "restore $name has the wrong marker rows"
        as_pg "$PG_BIN/pg_ctl" -D "restore-$name" -m fast -w stop >/dev/null
        rm -rf "restore-$name"
        log "incremental: restore $name: ${R_TIME[$name]} s"
    }
    restore chain "after incr3" --to-time "$TARGET"
    restore full "after incr3,after the target" --to-latest
    set_archive "/bin/true"
fi
wants incremental && report_incremental
# =========================================================================================
log "done"
