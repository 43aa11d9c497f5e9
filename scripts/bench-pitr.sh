#!/usr/bin/env bash
# Benchmark: pgvault's physical backup, point-in-time restore and WAL archiving against
# pgBackRest, side by side on the same cluster, in one run.
#
#   base backup   pgvault backup --kind physical      vs  pgbackrest backup --type=full
#   PITR restore  pgvault restore --pgdata --to-time --start (extract + replay to target)
#                                                     vs  pgbackrest restore --type=time + start
#   wal-push      pgvault wal-push, one process per segment (as archive_command runs it)
#                                                     vs  pgbackrest archive-push, same segments
#   keep-up       pgbench -T BENCH_PGBENCH_SECONDS with archive_command = pgvault wal-push:
#                 WAL written, archived, and the largest archive backlog seen (.ready files)
#
# Both tools use zstd level 3 and a local repository on the same disk; pgBackRest runs with
# process-max = the number of cores. Wall times come from `date +%s.%N` around each command.
#
# Usage: scripts/bench-pitr.sh
#
# Environment:
#   BENCH_DIR              work dir (default /var/tmp/pgvault-bench-pitr), reachable by `postgres`
#   BENCH_SCALE            pgbench scale of the database (default 70, about 1.05 GB)
#   BENCH_SEGMENTS         segments for the wal-push comparison (default 32)
#   BENCH_PGBENCH_SECONDS  length of the keep-up run (default 60)
#   PG_BIN                 server binaries (default /usr/lib/postgresql/15/bin)
#
# Needs root (PostgreSQL and both tools run as the `postgres` OS user) and pgbackrest
# (apt-get install pgbackrest); builds pgvault --release.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pgvault-bench-pitr}
SCALE=${BENCH_SCALE:-70}
SEGMENTS=${BENCH_SEGMENTS:-32}
PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-60}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
CORES=$(nproc)

log() { printf '[bench-pitr %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench-pitr.sh: error: %s\n' "$*" >&2; exit 1; }
((EUID == 0)) || die "run as root (PostgreSQL runs as the postgres OS user via runuser)"
command -v pgbackrest >/dev/null || die "pgbackrest is not installed (apt-get install pgbackrest)"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building pgvault (release)"
(cd "$REPO" && cargo build --release -q -p pgvault-cli)
install -m 0755 "$REPO/target/release/pgvault" /usr/local/bin/pgvault-bench

cleanup() {
    for d in "$BENCH_DIR/data" "$BENCH_DIR/restore-pgvault" "$BENCH_DIR/restore-pgbackrest"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
cleanup
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chown postgres: "$BENCH_DIR"
cd "$BENCH_DIR"

PORT=$(free_port)
log "initdb and pgbench -i -s $SCALE on port $PORT"
as_pg "$PG_BIN/initdb" -D data -U postgres --auth=trust --no-sync >/dev/null
cat >>data/postgresql.conf <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BENCH_DIR'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 4GB
CONF
as_pg "$PG_BIN/pg_ctl" -D data -l server.log -w start >/dev/null
PSQL=(psql -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
SIZE=$("${PSQL[@]}" -c "select pg_size_pretty(pg_database_size('postgres'))")
log "database size: $SIZE"

# Keys, policy and pgBackRest configuration, readable by postgres.
as_pg pgvault-bench keygen --output "$BENCH_DIR/identity.txt" >recipient.txt 2>/dev/null
cat >policy.toml <<TOML
name = "bench"
[source]
url = "postgres://postgres@127.0.0.1:$PORT/postgres"
[repository]
url = "file://$BENCH_DIR/pgvault-repo"
[encryption]
recipients = ["$(cat recipient.txt)"]
[compression]
level = 3
TOML
cat >pgbackrest.conf <<CONF
[global]
repo1-path=$BENCH_DIR/pgbackrest-repo
compress-type=zst
compress-level=3
process-max=$CORES
start-fast=y
log-level-console=warn
log-path=$BENCH_DIR
lock-path=$BENCH_DIR
[bench]
pg1-path=$BENCH_DIR/data
pg1-port=$PORT
pg1-socket-path=$BENCH_DIR
CONF
chown postgres: policy.toml pgbackrest.conf recipient.txt
PGBR=(pgbackrest --config="$BENCH_DIR/pgbackrest.conf" --stanza=bench)

set_archive() {
    "${PSQL[@]}" -c "alter system set archive_command = '$1'" -c "select pg_reload_conf()" >/dev/null
}

# --- base backups ------------------------------------------------------------------------
# While both base backups are taken and restored, every segment goes to both archives, so
# each tool restores from its own complete archive.
log "pgBackRest: stanza-create and full backup"
as_pg "${PGBR[@]}" stanza-create
set_archive "pgbackrest --config=$BENCH_DIR/pgbackrest.conf --stanza=bench archive-push %p && pgvault-bench wal-push --policy $BENCH_DIR/policy.toml %p"
t0=$(now); as_pg "${PGBR[@]}" backup --type=full; t1=$(now)
PGBR_BACKUP=$(elapsed "$t0" "$t1")
PGBR_SIZE=$(du -sb pgbackrest-repo/backup | cut -f1)

log "pgvault: physical backup"
t0=$(now); as_pg pgvault-bench backup --kind physical --policy policy.toml >/dev/null; t1=$(now)
PV_BACKUP=$(elapsed "$t0" "$t1")
PV_SIZE=$(du -sb pgvault-repo/bench/backups | cut -f1)

# Changes after both backups, a target between them, and more changes after it.
"${PSQL[@]}" -c "create table marker (at timestamptz default clock_timestamp(), note text)"
"${PSQL[@]}" -c "insert into marker (note) values ('before target')"
as_pg "$PG_BIN/pgbench" -n -T 10 -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
TARGET=$("${PSQL[@]}" -c "select clock_timestamp()")
"${PSQL[@]}" -c "insert into marker (note) values ('after target')"
"${PSQL[@]}" -c "select pg_switch_wal()" >/dev/null
sleep 2
while [ "$(ls data/pg_wal/archive_status/ | grep -c '\.ready$' || true)" != 0 ]; do sleep 1; done

# --- PITR restores -----------------------------------------------------------------------
wait_ready() { # data dir, log file
    until grep -q "database system is ready to accept connections" "$2" 2>/dev/null; do
        grep -q "FATAL" "$2" 2>/dev/null && { cat "$2" >&2; die "recovery failed in $1"; }
        sleep 0.2
    done
}
log "pgBackRest: restore --type=time and replay"
mkdir -p restore-pgbackrest && chown postgres: restore-pgbackrest && chmod 700 restore-pgbackrest
RPORT=$(free_port)
t0=$(now)
as_pg "${PGBR[@]}" restore --pg1-path="$BENCH_DIR/restore-pgbackrest" --type=time --target="$TARGET" \
    --target-action=promote --archive-mode=off
as_pg "$PG_BIN/pg_ctl" -D restore-pgbackrest -l restore-pgbackrest.log -o "-p $RPORT -c unix_socket_directories=$BENCH_DIR" start >/dev/null
wait_ready restore-pgbackrest restore-pgbackrest.log
t1=$(now)
PGBR_RESTORE=$(elapsed "$t0" "$t1")
PGBR_ROWS=$(psql -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres -c "select string_agg(note, ',') from marker")
as_pg "$PG_BIN/pg_ctl" -D restore-pgbackrest -m fast -w stop >/dev/null

log "pgvault: restore --pgdata --to-time --start"
RPORT=$(free_port)
t0=$(now)
pgvault-bench restore --policy policy.toml --identity identity.txt --pgdata "$BENCH_DIR/restore-pgvault" \
    --to-time "$TARGET" --start --port "$RPORT" --archive-mode off >restore-pgvault.out
t1=$(now)
PV_RESTORE=$(elapsed "$t0" "$t1")
PV_ROWS=$(psql -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres -c "select string_agg(note, ',') from marker")
as_pg "$PG_BIN/pg_ctl" -D restore-pgvault -m fast -w stop >/dev/null
[ "$PV_ROWS" = "before target" ] || die "pgvault restored marker rows '$PV_ROWS'"
[ "$PGBR_ROWS" = "before target" ] || die "pgBackRest restored marker rows '$PGBR_ROWS'"

# --- wal-push throughput -----------------------------------------------------------------
log "capturing $SEGMENTS real WAL segments from a pgbench run"
mkdir -p walcopy && chown postgres: walcopy
set_archive "cp %p $BENCH_DIR/walcopy/%f"
while [ "$(ls walcopy | wc -l)" -lt "$SEGMENTS" ]; do
    as_pg "$PG_BIN/pgbench" -n -T 5 -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >/dev/null 2>&1
done
set_archive "/bin/true"
mapfile -t SEGS < <(ls walcopy | grep -E '^[0-9A-F]{24}$' | sort | head -n "$SEGMENTS")
sed -i "s#pgvault-repo#pgvault-walrepo#" policy.toml
sed -i "s#repo1-path=.*#repo1-path=$BENCH_DIR/pgbackrest-walrepo#; s#^\[bench\]#[walbench]#" pgbackrest.conf
PGBR_W=(pgbackrest --config="$BENCH_DIR/pgbackrest.conf" --stanza=walbench)
as_pg "${PGBR_W[@]}" stanza-create >/dev/null
t0=$(now)
for s in "${SEGS[@]}"; do as_pg "${PGBR_W[@]}" archive-push "$BENCH_DIR/walcopy/$s" >/dev/null; done
t1=$(now)
PGBR_PUSH=$(elapsed "$t0" "$t1")
t0=$(now)
for s in "${SEGS[@]}"; do as_pg pgvault-bench wal-push --policy policy.toml "$BENCH_DIR/walcopy/$s"; done
t1=$(now)
PV_PUSH=$(elapsed "$t0" "$t1")

# --- keep-up under pgbench ---------------------------------------------------------------
log "keep-up: pgbench -T $PGBENCH_SECONDS with archive_command = pgvault wal-push"
set_archive "pgvault-bench wal-push --policy $BENCH_DIR/policy.toml %p"
START_LSN=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
as_pg "$PG_BIN/pgbench" -n -T "$PGBENCH_SECONDS" -c 4 -h 127.0.0.1 -p "$PORT" -U postgres postgres >pgbench.out 2>&1 &
PGBENCH_PID=$!
MAX_BACKLOG=0
while kill -0 "$PGBENCH_PID" 2>/dev/null; do
    n=$(ls data/pg_wal/archive_status/ | grep -c '\.ready$' || true)
    ((n > MAX_BACKLOG)) && MAX_BACKLOG=$n
    sleep 1
done
END_LSN=$("${PSQL[@]}" -c "select pg_current_wal_lsn()")
WAL_MB=$("${PSQL[@]}" -c "select round(pg_wal_lsn_diff('$END_LSN', '$START_LSN') / 1048576)")
END_BACKLOG=$(ls data/pg_wal/archive_status/ | grep -c '\.ready$' || true)
TPS=$(grep -o 'tps = [0-9.]*' pgbench.out | head -1 | cut -d' ' -f3)
FAILED=$("${PSQL[@]}" -c "select failed_count from pg_stat_archiver")

cat <<REPORT

PITR benchmark ($CORES cores, database $SIZE, zstd 3, local repositories, one run)

| | pgBackRest $(pgbackrest version | cut -d' ' -f2) | pgvault | pgvault / pgBackRest |
|---|---|---|---|
| physical base backup | ${PGBR_BACKUP} s ($(numfmt --to=iec "$PGBR_SIZE") stored) | ${PV_BACKUP} s ($(numfmt --to=iec "$PV_SIZE") stored) | $(ratio "$PV_BACKUP" "$PGBR_BACKUP") |
| PITR restore to a time (extract + replay + promote) | ${PGBR_RESTORE} s | ${PV_RESTORE} s | $(ratio "$PV_RESTORE" "$PGBR_RESTORE") |
| push $SEGMENTS segments, one process each | ${PGBR_PUSH} s = $(ratio "$SEGMENTS" "$PGBR_PUSH") seg/s | ${PV_PUSH} s = $(ratio "$SEGMENTS" "$PV_PUSH") seg/s | $(ratio "$PV_PUSH" "$PGBR_PUSH") (time) |

keep-up: pgbench -c 4 -T $PGBENCH_SECONDS at $TPS tps wrote ${WAL_MB} MiB of WAL
($(ratio "$WAL_MB" 16) segments); archive backlog at most $MAX_BACKLOG segment(s), $END_BACKLOG at the end; $FAILED archive failures.
REPORT
