#!/usr/bin/env bash
# Benchmark: pgvault backup against pg_dump alone and against the shell pipeline users
# write today, side by side on the same database and the same S3 server (Garage).
#
#   (a) pg_dump -Fc -Z0 DB > /dev/null                                   the limit
#   (b) pg_dump -Fc -Z0 DB | zstd -3 -T0 | age -r R | aws s3 cp - s3://…  today's pipeline
#   (c) pgvault backup --policy POLICY                                    same zstd level
#
# Each is run BENCH_RUNS times, interleaved (a,b,c,a,b,c,…), after one unmeasured warm-up
# dump; medians are reported. Wall time and peak RSS come from GNU time (`%e %M`).
#
# Usage: scripts/bench-backup.sh [--keep] [--help]
#
#   --keep               keep the PostgreSQL cluster (stopped) in BENCH_DIR for the next run
#                        (same as BENCH_KEEP=1); without it the cluster is deleted at exit.
#
# Environment:
#   BENCH_DIR            work dir (default /var/tmp/pgvault-bench); must be reachable by
#                        the `postgres` OS user
#   BENCH_SIZE_GB        database size target in GiB, as pg_database_size (default 1)
#   BENCH_RUNS           measurements per contender (default 3)
#   BENCH_SKIP_PGVAULT=1 skip building and measuring pgvault (c)
#   BENCH_KEEP=1         same as --keep
#   BENCH_ZSTD_LEVEL     zstd level for (b) and (c) (default 3)
#   BENCH_SAMPLE=0       do not sample per-process peak RSS (VmHWM) while measuring
#   BENCH_VERIFY=0       do not check that the pipeline's object decrypts and restores (-l)
#   PG_BIN               PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_GARAGE_SH      Garage helper (default scripts/garage.sh; if absent, Garage is
#                        started directly from PATH or ~/.cargo/bin/garage)
#
# Needs root (it runs PostgreSQL as the `postgres` OS user through runuser) and installs
# the Debian packages time, age and zstd when they are missing.
set -euo pipefail

# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/pgvault-bench}
SIZE_GB=${BENCH_SIZE_GB:-1}
RUNS=${BENCH_RUNS:-3}
SKIP_PGVAULT=${BENCH_SKIP_PGVAULT:-0}
KEEP=${BENCH_KEEP:-0}
ZSTD_LEVEL=${BENCH_ZSTD_LEVEL:-3}
SAMPLE=${BENCH_SAMPLE:-1}
VERIFY=${BENCH_VERIFY:-1}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DB_NAME=bench
# Bump when the generated data changes, so old clusters are regenerated, not reused.
DATA_FORMAT=4

for arg in "$@"; do
    case "$arg" in
    --keep) KEEP=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-backup.sh: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'bench-backup.sh: error: %s\n' "$*" >&2
    exit 1
}

[[ "$SIZE_GB" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v s="$SIZE_GB" 'BEGIN{exit !(s>0)}' ||
    die "BENCH_SIZE_GB must be a positive number (got '$SIZE_GB')"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$RUNS')"
[[ "$ZSTD_LEVEL" =~ ^[0-9]+$ ]] || die "BENCH_ZSTD_LEVEL must be an integer (got '$ZSTD_LEVEL')"
((EUID == 0)) || die "run as root (PostgreSQL is started as the postgres OS user via runuser)"
id postgres >/dev/null 2>&1 || die "no 'postgres' OS user"
[[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/pg_dump" ]] ||
    die "PostgreSQL binaries not found in $PG_BIN (set PG_BIN)"

PGDATA=$BENCH_DIR/pgdata
STAMP=$BENCH_DIR/.pgvault-bench # marks BENCH_DIR as ours (so we may delete inside it)
MARKER=$BENCH_DIR/db.marker     # written once the database is complete
EXPECTED_MARKER="format=$DATA_FORMAT db=$DB_NAME size_gb=$SIZE_GB"
RUN_ID=$(date +%Y%m%d-%H%M%S)
RUN_DIR=$BENCH_DIR/runs/$RUN_ID
GARAGE_DIR=$BENCH_DIR/garage
GARAGE_SH=${BENCH_GARAGE_SH:-$REPO/scripts/garage.sh}

# State for the exit trap.
PG_STARTED=0
GARAGE_STARTED=0
GARAGE_SELF_PID=
BG_PIDS=()

# ---------------------------------------------------------------------------------------
# Cleanup
# ---------------------------------------------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${BG_PIDS[@]}"; do
        # Whole tree: killing only GNU time would orphan a pipeline's stages.
        # shellcheck disable=SC2046 # one pid per word
        kill $(descendants "$pid") "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if ((GARAGE_STARTED)); then
        log "stopping Garage"
        if [[ -n "$GARAGE_SELF_PID" ]]; then
            kill "$GARAGE_SELF_PID" 2>/dev/null
            wait "$GARAGE_SELF_PID" 2>/dev/null
        else
            "$GARAGE_SH" stop "$GARAGE_DIR" >/dev/null 2>&1
        fi
        # Benchmark objects are disposable; do not let them pile up across runs.
        rm -rf "$GARAGE_DIR/data" "$GARAGE_DIR/meta"
    fi
    if ((PG_STARTED)); then
        log "stopping PostgreSQL"
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    fi
    if [[ "$KEEP" == 1 ]]; then
        [[ -d "$PGDATA" ]] && log "cluster kept in $PGDATA (reused by the next run)"
    elif [[ -f "$STAMP" && -d "$PGDATA" ]]; then
        log "deleting the cluster $PGDATA (use --keep to reuse it)"
        rm -rf "$PGDATA" "$MARKER"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v age >/dev/null && command -v age-keygen >/dev/null || missing+=(age)
    command -v zstd >/dev/null || missing+=(zstd)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } ||
            die "apt-get install ${missing[*]} failed"
    fi
    if ! command -v aws >/dev/null; then
        log "aws CLI not found; installing awscli with pip"
        pip install -q awscli || die "pip install awscli failed"
        command -v pyenv >/dev/null && pyenv rehash || true
    fi
    # Run the real aws script rather than the pyenv shim (the shim adds a few forks).
    AWS_BIN=$(pyenv which aws 2>/dev/null || command -v aws) || die "aws CLI not found"
    command -v curl >/dev/null || true
}

build_pgvault() {
    if [[ "$SKIP_PGVAULT" == 1 ]]; then
        log "BENCH_SKIP_PGVAULT=1: not building or measuring pgvault"
        return
    fi
    log "building pgvault: cargo build --release -p pgvault-cli"
    if ! (cd "$REPO" && cargo build --release -p pgvault-cli); then
        die "'cargo build --release -p pgvault-cli' failed in $REPO; fix the build or run with BENCH_SKIP_PGVAULT=1"
    fi
    PGVAULT=$REPO/target/release/pgvault
    [[ -x "$PGVAULT" ]] || die "the build succeeded but $PGVAULT does not exist"
}

# ---------------------------------------------------------------------------------------
# Work dir and PostgreSQL cluster
# ---------------------------------------------------------------------------------------
prepare_dir() {
    if [[ -d "$BENCH_DIR" && ! -f "$STAMP" && -n "$(ls -A "$BENCH_DIR")" ]]; then
        die "$BENCH_DIR exists, is not empty and was not created by this script; choose another BENCH_DIR"
    fi
    mkdir -p "$BENCH_DIR" "$RUN_DIR"
    touch "$STAMP"
    chmod 755 "$BENCH_DIR"
    runuser -u postgres -- test -x "$BENCH_DIR" ||
        die "the postgres OS user cannot enter $BENCH_DIR; choose a BENCH_DIR outside private directories"
    mkdir -p "$BENCH_DIR/pg"
    chown postgres: "$BENCH_DIR/pg"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for port in $(seq 55432 55532); do
        port_in_use "$port" || {
            echo "$port"
            return
        }
    done
    die "no free port in 55432..55532"
}

psql_() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

start_cluster() {
    if [[ -f "$PGDATA/PG_VERSION" ]]; then
        log "reusing the cluster in $PGDATA"
    else
        rm -rf "$PGDATA" "$MARKER"
        log "creating a cluster in $PGDATA"
        install -d -o postgres -g postgres -m 700 "$PGDATA"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust \
            -E UTF8 --locale=C.UTF-8 >"$BENCH_DIR/pg/initdb.log" 2>&1 ||
            die "initdb failed; see $BENCH_DIR/pg/initdb.log"
        # Throwaway cluster tuned for fast loading; autovacuum off so nothing runs
        # behind the measurements (the loader VACUUMs and ANALYZEs itself).
        cat >>"$PGDATA/postgresql.conf" <<EOF

# --- pgvault bench (scripts/bench-backup.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BENCH_DIR/pg'
shared_buffers = 512MB
maintenance_work_mem = 512MB
work_mem = 64MB
max_parallel_maintenance_workers = 2
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 8GB
checkpoint_timeout = 30min
autovacuum = off
logging_collector = off
jit = off
EOF
    fi
    if runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        PG_PORT=$(sed -n 4p "$PGDATA/postmaster.pid")
        log "PostgreSQL already running on port $PG_PORT"
    else
        PG_PORT=$(free_port)
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$BENCH_DIR/pg/postgres.log" \
            -o "-p $PG_PORT" -w -t 120 start >/dev/null ||
            die "PostgreSQL did not start; see $BENCH_DIR/pg/postgres.log"
    fi
    PG_STARTED=1
}

db_size() { psql_ -d "$DB_NAME" -Atc "select pg_database_size(current_database())"; }

ensure_database() {
    local have=""
    [[ -f "$MARKER" ]] && have=$(<"$MARKER")
    if [[ "$have" == "$EXPECTED_MARKER" ]] &&
        psql_ -d "$DB_NAME" -Atc "select value from bench_meta where key = 'marker'" 2>/dev/null |
        grep -qxF "$EXPECTED_MARKER"; then
        log "reusing database '$DB_NAME' ($have)"
        GEN_DESC="reused from an earlier run ($(psql_ -d "$DB_NAME" -Atc "select value from bench_meta where key = 'generation_seconds'")s when generated)"
        return
    fi
    [[ -n "$have" ]] && log "existing data ($have) does not match ($EXPECTED_MARKER); regenerating"
    rm -f "$MARKER"
    psql_ -d postgres -c "drop database if exists $DB_NAME" -c "create database $DB_NAME"
    local t0=$SECONDS
    generate_data
    GEN_SECONDS=$((SECONDS - t0))
    GEN_DESC="${GEN_SECONDS}s (this run)"
    psql_ -d "$DB_NAME" -c "create table bench_meta (key text primary key, value text)" \
        -c "insert into bench_meta values ('marker', '$EXPECTED_MARKER'), ('generated_at', now()::text), ('generation_seconds', '$GEN_SECONDS')"
    echo "$EXPECTED_MARKER" >"$MARKER"
    log "database generated in ${GEN_SECONDS}s"
}

# ---------------------------------------------------------------------------------------
# Data generation (plain SQL, two sessions in parallel)
# ---------------------------------------------------------------------------------------
# Row counts per GiB of pg_database_size, measured on this generator; a top-up loop
# adds orders until the target is reached.
generate_data() {
    local target_bytes n_cust n_ord n_evt n_att n_para
    target_bytes=$(awk -v s="$SIZE_GB" 'BEGIN{printf "%d", s*1073741824}')
    read -r n_cust n_ord n_evt n_att <<<"$(awk -v s="$SIZE_GB" 'BEGIN{
        s *= 1.04; printf "%d %d %d %d", s*275000, s*1270000, s*210000, s*42000}')"
    n_para=$(awk -v s="$SIZE_GB" 'BEGIN{n=s*50000; if (n<10000) n=10000; printf "%d", n}')
    log "generating ~$(awk -v b="$target_bytes" 'BEGIN{printf "%.0f", b/1048576}') MiB:" \
        "customers=$n_cust orders=$n_ord events=$n_evt documents=$n_att (paragraph pool $n_para)"

    # Shared vocabulary and a pool of paragraphs of varying length (natural-looking,
    # compressible text); rows pick paragraphs through a hash join, which is cheap.
    psql_ -d "$DB_NAME" -v n_para="$n_para" <<'SQL'
create table bench_words as
select row_number() over () as id, w
from unnest(string_to_array(
  'the of and to a in is it you that he was for on are with as his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father head stand own page should country found answer school grow study still learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late run while press close night real life few north open seem together next white children begin got walk example ease paper group always music those both mark often letter until mile river car feet care second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct pose leave song measure door product black short numeral class wind question happen complete ship area half rock order fire south problem piece told knew pass since top whole king space heard best hour better true during hundred five remember step early hold west ground interest reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow center love person money serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object decide surface deep moon island foot system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill east paint language among invoice customer shipment refund account balance payment warehouse delivery', ' ')) as w;
analyze bench_words;

-- Paragraph lengths are skewed: most are short, some run to a few KB.
create table bench_para as
with lens as (
  select p as id, 2 + floor(power(random(), 2.2) * 400)::int as nwords from generate_series(1, :n_para) p
), picks as (
  select l.id, 1 + floor(power(random(), 1.6) * (select count(*) from bench_words))::int as wid
  from lens l, generate_series(1, l.nwords) i
)
select id, upper(left(t, 1)) || substr(t, 2) || '.' as txt
from (select p.id, string_agg(w.w, ' ') as t
      from picks p join bench_words w on w.id = p.wid group by p.id) s;
alter table bench_para add primary key (id);
analyze bench_para;
SQL

    local sql_a sql_b
    sql_a=$(mktemp "$RUN_DIR/gen-a.XXXX.sql")
    sql_b=$(mktemp "$RUN_DIR/gen-b.XXXX.sql")

    # Session A: customers (text, numerics, dates) and documents (bytea).
    cat >"$sql_a" <<'SQL'
\timing on
begin;
create table customers (
  id           bigint generated by default as identity primary key,
  name         text not null,
  email        text not null,
  country      char(2) not null,
  city         text,
  created_at   timestamptz not null,
  birth_date   date,
  balance      numeric(14,2) not null,
  credit_limit numeric,
  loyalty      double precision,
  is_active    boolean not null,
  bio          text
);
insert into customers (name, email, country, city, created_at, birth_date, balance,
                       credit_limit, loyalty, is_active, bio)
select initcap(split_part(p1.txt, ' ', 1)) || ' ' || initcap(split_part(p2.txt, ' ', 2)) || ' ' || substr(md5(g::text), 1, 6),
       lower(split_part(p2.txt, ' ', 1)) || '.' || substr(md5(g::text || 'e'), 1, 10) || '@' ||
         (array['example.com','mail.test','corp.example','shop.example','post.test'])[1 + g % 5],
       (array['US','DE','FR','GB','JP','BR','IN','CA','IT','ES','NL','SE','PL','AU','MX'])[1 + floor(random()*15)::int],
       initcap(split_part(p1.txt, ' ', 3)),
       timestamptz '2015-01-01' + random() * interval '3650 days',
       case when random() < 0.8 then date '1940-01-01' + floor(random() * 25000)::int end,
       round((random() * 20000 - 2000)::numeric, 2),
       case when random() < 0.6 then round((random() * 1e6)::numeric, floor(random()*6)::int) end,
       random() * 100,
       random() < 0.9,
       case when x.bio then p3.txt end
from (select g,
             1 + floor(random() * :np)::int as a, 1 + floor(random() * :np)::int as b,
             1 + floor(random() * :np)::int as c, random() < 0.85 as bio
      from generate_series(1, :n_cust) g) x
join bench_para p1 on p1.id = x.a
join bench_para p2 on p2.id = x.b
join bench_para p3 on p3.id = x.c;
commit;
create index customers_email_idx on customers (email);
create index customers_country_created_idx on customers (country, created_at);
create index customers_name_idx on customers (name);

begin;
create table documents (
  id          bigint generated by default as identity primary key,
  customer_id bigint not null,
  filename    text not null,
  mime_type   text not null,
  uploaded_at timestamptz not null,
  size_bytes  integer not null,
  sha256      bytea not null,
  content     bytea not null
);
-- Two thirds binary (random, incompressible, like images or PDFs), one third text.
insert into documents (customer_id, filename, mime_type, uploaded_at, size_bytes, sha256, content)
select d.customer_id, d.filename, d.mime_type, d.uploaded_at, length(d.content), sha256(d.content), d.content
from (
  select 1 + floor(random() * :n_cust)::bigint as customer_id,
         'doc-' || g || case when x.binary then '.pdf' else '.txt' end as filename,
         case when x.binary then 'application/pdf' else 'text/plain' end as mime_type,
         timestamptz '2018-01-01' + random() * interval '2500 days' as uploaded_at,
         case when x.binary then
           (select string_agg(sha256(int8send(g::bigint * 100000 + i)), ''::bytea) from generate_series(1, x.chunks) i)
         else
           convert_to(p.txt || ' ' || p.txt, 'UTF8')
         end as content
  from (select g, random() < 0.67 as binary, 16 + floor(power(random(), 2) * 500)::int as chunks,
               1 + floor(random() * :np)::int as pid
        from generate_series(1, :n_att) g) x
  join bench_para p on p.id = x.pid
) d;
commit;
create index documents_customer_idx on documents (customer_id);
SQL

    # Session B: orders (numerics, timestamps, short text) and events (jsonb + GIN).
    cat >"$sql_b" <<'SQL'
\timing on
begin;
create table orders (
  id          bigint generated by default as identity primary key,
  customer_id bigint not null,
  ordered_at  timestamptz not null,
  shipped_at  timestamptz,
  status      text not null,
  currency    char(3) not null,
  quantity    integer not null,
  unit_price  numeric(10,2) not null,
  total       numeric(12,2) not null,
  tax_rate    numeric(5,4) not null,
  discount    real,
  reference   uuid not null,
  note        text
);
insert into orders (customer_id, ordered_at, shipped_at, status, currency, quantity,
                    unit_price, total, tax_rate, discount, reference, note)
select x.customer_id, x.ordered_at,
       case when x.status in ('shipped','delivered') then x.ordered_at + random() * interval '10 days' end,
       x.status, x.currency, x.quantity, x.unit_price, x.quantity * x.unit_price,
       x.tax_rate, case when random() < 0.3 then (random() * 0.5)::real end,
       md5(x.g::text || 'ref')::uuid,
       case when x.note then left(p.txt, 20 + floor(random() * 300)::int) end
from (select g,
             1 + floor(random() * :n_cust)::bigint as customer_id,
             timestamptz '2019-01-01' + random() * interval '2200 days' as ordered_at,
             (array['refunded','cancelled','new','paid','shipped','delivered'])[1 + floor(power(random(), 0.6) * 6)::int] as status,
             (array['USD','EUR','GBP','JPY'])[1 + floor(power(random(), 2) * 4)::int] as currency,
             1 + floor(power(random(), 3) * 20)::int as quantity,
             round((1 + random() * 500)::numeric, 2) as unit_price,
             (array[0.0000, 0.0700, 0.1900, 0.2000, 0.0825])[1 + floor(random() * 5)::int] as tax_rate,
             random() < 0.25 as note,
             1 + floor(random() * :np)::int as pid
      from generate_series(1, :n_ord) g) x
join bench_para p on p.id = x.pid;
commit;
create index orders_customer_idx on orders (customer_id);
create index orders_ordered_at_idx on orders (ordered_at);
create index orders_status_ordered_idx on orders (status, ordered_at);

begin;
create table events (
  id          bigint generated by default as identity primary key,
  occurred_at timestamptz not null,
  kind        text not null,
  payload     jsonb not null
);
insert into events (occurred_at, kind, payload)
select x.occurred_at, x.kind,
       jsonb_build_object(
         'user_id', 1 + floor(random() * :n_cust)::int,
         'session', md5(x.g::text || 'session'),
         'ip', format('10.%s.%s.%s', floor(random()*256)::int, floor(random()*256)::int, floor(random()*256)::int),
         'kind', x.kind,
         'ts', x.occurred_at,
         'tags', jsonb_build_array((array['mobile','web','api','beta','eu','us','promo','retry','bulk','vip'])[1 + floor(random()*10)::int],
                                   (array['mobile','web','api','beta','eu','us','promo','retry','bulk','vip'])[1 + floor(random()*10)::int]),
         'attrs', jsonb_build_object('browser', (array['firefox','chrome','safari','edge'])[1 + floor(random()*4)::int],
                                     'version', floor(random()*120)::int,
                                     'latency_ms', round((random()*900)::numeric, 3),
                                     'ok', random() < 0.95),
         'items', coalesce((select jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad(floor(random() * 50000)::int::text, 5, '0'),
                                                                'qty', 1 + (x.g + i) % 5,
                                                                'price', round((1 + random() * 300)::numeric, 2)))
                            from generate_series(1, x.nitems) i), '[]'::jsonb),
         'message', left(p.txt, 10 + floor(random() * 400)::int))
from (select g,
             timestamptz '2023-01-01' + random() * interval '700 days' as occurred_at,
             (array['login','logout','view','search','add_to_cart','checkout','payment','error'])[1 + floor(power(random(), 1.5) * 8)::int] as kind,
             floor(power(random(), 2) * 8)::int as nitems,
             1 + floor(random() * :np)::int as pid
      from generate_series(1, :n_evt) g) x
join bench_para p on p.id = x.pid;
commit;
create index events_occurred_at_idx on events (occurred_at);
create index events_payload_gin on events using gin (payload);
SQL

    local pids=() rc=0 f
    for f in "$sql_a" "$sql_b"; do
        psql_ -d "$DB_NAME" -v n_cust="$n_cust" -v n_ord="$n_ord" -v n_evt="$n_evt" \
            -v n_att="$n_att" -v np="$n_para" -f "$f" >"$f.log" 2>&1 &
        pids+=($!)
        BG_PIDS+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || {
            rc=1
            echo "--- ${i}: $(tail -n 20 "$([[ $i == 0 ]] && echo "$sql_a" || echo "$sql_b").log")" >&2
        }
    done
    BG_PIDS=()
    ((rc == 0)) || die "data generation failed (see $RUN_DIR/gen-*.log)"

    psql_ -d "$DB_NAME" -c "alter table orders add constraint orders_customer_fk foreign key (customer_id) references customers (id)" \
        -c "alter table documents add constraint documents_customer_fk foreign key (customer_id) references customers (id)"

    # Top up with more orders until pg_database_size reaches the target (helper tables
    # dropped first: they do not count).
    psql_ -d "$DB_NAME" -c "drop table bench_words, bench_para"
    local size per_row add round=0
    size=$(db_size)
    while ((size < target_bytes && round < 10)); do
        round=$((round + 1))
        per_row=$(psql_ -d "$DB_NAME" -Atc "select (pg_total_relation_size('orders') / greatest(count(*), 1))::bigint from orders")
        add=$(((target_bytes - size) * 105 / 100 / per_row + 1000))
        log "size $((size / 1048576)) MiB < target; adding $add orders"
        psql_ -d "$DB_NAME" -v n="$add" <<'SQL'
insert into orders (customer_id, ordered_at, status, currency, quantity, unit_price, total, tax_rate, reference, note)
select c, t, s, 'EUR', q, u, q * u, 0.1900, md5(g::text || 'topup' || clock_timestamp())::uuid,
       case when random() < 0.25 then md5(g::text) || ' ' || md5(random()::text) end
from (select g, 1 + floor(random() * (select max(id) from customers))::bigint as c,
             timestamptz '2019-01-01' + random() * interval '2200 days' as t,
             (array['new','paid','shipped','delivered'])[1 + floor(random()*4)::int] as s,
             1 + floor(power(random(), 3) * 20)::int as q, round((1 + random() * 500)::numeric, 2) as u
      from generate_series(1, :n) g) x;
SQL
        size=$(db_size)
    done
    log "vacuum (freeze, analyze)"
    psql_ -d "$DB_NAME" -c "vacuum (freeze, analyze)" -c "checkpoint"
}

# ---------------------------------------------------------------------------------------
# Garage
# ---------------------------------------------------------------------------------------
start_garage() {
    mkdir -p "$GARAGE_DIR"
    if [[ -x "$GARAGE_SH" ]]; then
        log "starting Garage with $GARAGE_SH start $GARAGE_DIR"
        # A server left behind by a killed run would make start refuse: stop it first.
        "$GARAGE_SH" stop "$GARAGE_DIR" >/dev/null 2>&1 || true
        GARAGE_STARTED=1
        "$GARAGE_SH" start "$GARAGE_DIR" >&2 || die "scripts/garage.sh start failed (log: $GARAGE_DIR/garage.log)"
    else
        log "$GARAGE_SH not found; starting Garage directly"
        start_garage_self
    fi
    # shellcheck disable=SC1091
    source "$GARAGE_DIR/env"
    : "${PGVAULT_TEST_S3_ENDPOINT:?missing in $GARAGE_DIR/env}"
    export AWS_ACCESS_KEY_ID=$PGVAULT_TEST_S3_ACCESS_KEY_ID
    export AWS_SECRET_ACCESS_KEY=$PGVAULT_TEST_S3_SECRET_ACCESS_KEY
    export AWS_REGION=$PGVAULT_TEST_S3_REGION
    export AWS_DEFAULT_REGION=$PGVAULT_TEST_S3_REGION
    unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 || true
    # Our own AWS config: path-style addressing for Garage, nothing from ~/.aws.
    cat >"$BENCH_DIR/aws-config" <<'EOF'
[default]
s3 =
    addressing_style = path
EOF
    export AWS_CONFIG_FILE=$BENCH_DIR/aws-config
    export AWS_SHARED_CREDENTIALS_FILE=/dev/null
    S3_ENDPOINT=$PGVAULT_TEST_S3_ENDPOINT
    # Fresh buckets per run: one for the pipeline's object, one for pgvault's repository
    # (so neither sees the other's objects).
    BUCKET=pgvault-bench-$(date +%s)
    REPO_BUCKET=$BUCKET-repo
    local b
    for b in "$BUCKET" "$REPO_BUCKET"; do
        "$AWS_BIN" --endpoint-url "$S3_ENDPOINT" s3api create-bucket --bucket "$b" >/dev/null ||
            die "could not create bucket $b on $S3_ENDPOINT"
    done
    log "Garage at $S3_ENDPOINT, buckets $BUCKET (pipeline) and $REPO_BUCKET (pgvault)"
}

# Fallback when scripts/garage.sh is absent: the same single-node setup, inline.
start_garage_self() {
    local garage rpc s3 admin i node out key secret
    garage=$(command -v garage || echo "$HOME/.cargo/bin/garage")
    [[ -x "$garage" ]] || die "garage binary not found (PATH or ~/.cargo/bin)"
    rpc=$(free_port_random)
    s3=$(free_port_random)
    admin=$(free_port_random)
    rm -rf "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    (
        umask 077
        cat >"$GARAGE_DIR/garage.toml" <<EOF
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
EOF
    )
    local g=("$garage" -c "$GARAGE_DIR/garage.toml")
    setsid "${g[@]}" server </dev/null >"$GARAGE_DIR/garage.log" 2>&1 &
    GARAGE_SELF_PID=$!
    GARAGE_STARTED=1
    for i in $(seq 300); do
        "${g[@]}" status >/dev/null 2>&1 && break
        kill -0 "$GARAGE_SELF_PID" 2>/dev/null || die "garage exited; see $GARAGE_DIR/garage.log"
        ((i < 300)) || die "garage did not answer in 60s; see $GARAGE_DIR/garage.log"
        sleep 0.2
    done
    node=$("${g[@]}" node id -q)
    node=${node%%@*}
    "${g[@]}" layout assign -z dc1 -c 1G "$node" >/dev/null
    "${g[@]}" layout apply --version 1 >/dev/null
    out=$("${g[@]}" key create pgvault-bench)
    key=$(awk '/^Key ID:/ {print $NF}' <<<"$out")
    secret=$(awk '/^Secret key:/ {print $NF}' <<<"$out")
    [[ -n "$key" && -n "$secret" ]] || die "cannot parse 'garage key create' output: $out"
    "${g[@]}" key allow --create-bucket "$key" >/dev/null
    for i in $(seq 150); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3/" 2>/dev/null)" == 4* ]] && break
        sleep 0.2
    done
    cat >"$GARAGE_DIR/env" <<EOF
export PGVAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export PGVAULT_TEST_S3_REGION=garage
export PGVAULT_TEST_S3_ACCESS_KEY_ID=$key
export PGVAULT_TEST_S3_SECRET_ACCESS_KEY=$secret
EOF
}

free_port_random() {
    local p
    while true; do
        p=$((20000 + RANDOM % 30000))
        port_in_use "$p" || {
            echo "$p"
            return
        }
    done
}

# ---------------------------------------------------------------------------------------
# Keys and policy
# ---------------------------------------------------------------------------------------
prepare_keys_and_policy() {
    if [[ ! -s "$BENCH_DIR/age.key" ]]; then
        (umask 077 && age-keygen -o "$BENCH_DIR/age.key" 2>/dev/null)
    fi
    RECIPIENT=$(age-keygen -y "$BENCH_DIR/age.key")
    [[ "$RECIPIENT" == age1* ]] || die "could not derive the age recipient from $BENCH_DIR/age.key"
    POLICY=$BENCH_DIR/policy.toml
    cat >"$POLICY" <<EOF
# Written by scripts/bench-backup.sh; regenerated on every run.
name = "bench"

[source]
url = "postgres://postgres@127.0.0.1:$PG_PORT/$DB_NAME"

[repository]
url = "s3://$REPO_BUCKET/bench"
endpoint = "$S3_ENDPOINT"
region = "$PGVAULT_TEST_S3_REGION"

[encryption]
recipients = ["$RECIPIENT"]

[compression]
level = $ZSTD_LEVEL
EOF
}

# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------
TIME=(/usr/bin/time -f '%e %M %U %S')

# last_line FILE: GNU time writes "Command exited with non-zero status" first on failure.
last_line() { tail -n 1 "$1"; }

# descendants ROOT: pids of all processes below ROOT.
descendants() {
    ps -e -o pid=,ppid= | awk -v r="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END { for (i in pids) { p = pids[i]; q = parent[p]
                while (q != "" && q > 1) { if (q == r) { print p; break }; q = parent[q] } } }'
}

# Sample VmHWM (per-process peak RSS) of every process under ROOT until it exits.
# Writes "pid name kB" lines; summarised by summarize_samples.
sampler() {
    local root=$1 out=$2 p
    while kill -0 "$root" 2>/dev/null; do
        for p in "$root" $(descendants "$root"); do
            awk -v pid="$p" '/^Name:/ {n=$2} /^VmHWM:/ {h=$2} END {if (h != "") print pid, n, h}' \
                "/proc/$p/status" 2>/dev/null || true
        done >>"$out"
        sleep 0.5
    done
}

# Per-process-name max VmHWM in MiB, e.g. "pgvault=45.1 pg_dump=12.0" (time wrappers left out).
summarize_samples() {
    [[ -s "$1" ]] || return 0
    awk '$2 != "time" && $2 != "bash" { if ($3 > m[$1]) { m[$1] = $3; n[$1] = $2 } }
         END { for (p in m) { if (m[p] > byname[n[p]]) byname[n[p]] = m[p] }
               for (k in byname) printf "%s=%.1f ", k, byname[k] / 1024 }' "$1"
}

# measure NAME I COMMAND...: run COMMAND under GNU time, optionally with the sampler.
# Leaves "wall kB" in $RUN_DIR/NAME.I.time.
measure() {
    local name=$1 i=$2
    shift 2
    local out=$RUN_DIR/$name.$i
    "${TIME[@]}" -o "$out.time" "$@" &
    local pid=$! spid=
    BG_PIDS+=("$pid")
    if [[ "$SAMPLE" == 1 ]]; then
        sampler "$pid" "$out.samples" &
        spid=$!
        BG_PIDS+=("$spid")
    fi
    local rc=0
    wait "$pid" || rc=$?
    [[ -n "$spid" ]] && { wait "$spid" 2>/dev/null || true; }
    BG_PIDS=()
    return "$rc"
}

run_a() {
    measure a "$1" "$PG_BIN/pg_dump" -Fc -Z0 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB_NAME" >/dev/null ||
        die "(a) pg_dump failed (run $1)"
}

run_b() {
    local base=$RUN_DIR/b.$1
    # Each stage under its own GNU time; the outer measure() gives the pipeline's wall time.
    measure b "$1" bash -c '
        set -o pipefail
        T=(/usr/bin/time -f "%e %M %U %S")
        "${T[@]}" -o "$1.pg_dump.time" "$2" -Fc -Z0 -h 127.0.0.1 -p "$3" -U postgres "$4" |
        "${T[@]}" -o "$1.zstd.time" zstd -q -"$5" -T0 |
        "${T[@]}" -o "$1.age.time" age -r "$6" |
        "${T[@]}" -o "$1.aws.time" "$7" --endpoint-url "$8" s3 cp --only-show-errors - "$9"
    ' _ "$base" "$PG_BIN/pg_dump" "$PG_PORT" "$DB_NAME" "$ZSTD_LEVEL" "$RECIPIENT" "$AWS_BIN" \
        "$S3_ENDPOINT" "s3://$BUCKET/bench/pipeline.dump.zst.age" ||
        die "(b) pipeline failed (run $1); see $base.*.time"
    local max=0 sum=0 heavy="" st kb
    for st in pg_dump zstd age aws; do
        kb=$(last_line "$base.$st.time" | awk '{print $2}')
        sum=$((sum + kb))
        ((kb > max)) && { max=$kb; heavy=$st; }
    done
    echo "$max $sum $heavy" >"$base.stages"
}

run_c() {
    measure c "$1" "$PGVAULT" backup --policy "$POLICY" >"$RUN_DIR/c.$1.log" 2>&1 || {
        tail -n 30 "$RUN_DIR/c.$1.log" >&2
        die "(c) pgvault backup failed (run $1); log: $RUN_DIR/c.$1.log"
    }
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2] + v[NR/2+1]) / 2}'; }

# col NAME FIELD: FIELD (1 = wall, 2 = kB, cpu = user + sys) of each run's GNU time output.
col() {
    local i
    for ((i = 1; i <= RUNS; i++)); do
        last_line "$RUN_DIR/$1.$i.time" | awk -v f="$2" '{print (f == "cpu") ? $3 + $4 : $f}'
    done
}

mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

verdict() { awk -v v="$1" -v t="$2" 'BEGIN{print (v <= t) ? "met" : "NOT MET"}'; }

# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
ensure_tools
build_pgvault
prepare_dir
start_cluster
ensure_database

DB_BYTES=$(db_size)
DB_PRETTY=$(psql_ -d "$DB_NAME" -Atc "select pg_size_pretty(pg_database_size(current_database()))")
log "database '$DB_NAME': $DB_PRETTY ($DB_BYTES bytes)"
psql_ -d "$DB_NAME" -Atc "select format('  %-12s %10s rows %10s', c.relname, c.reltuples::bigint, pg_size_pretty(pg_total_relation_size(c.oid)))
                          from pg_class c join pg_namespace n on n.oid = c.relnamespace
                          where n.nspname = 'public' and c.relkind = 'r' order by pg_total_relation_size(c.oid) desc" >&2

start_garage
prepare_keys_and_policy

log "warm-up: pg_dump -Fc -Z0 | wc -c (not measured)"
DUMP_BYTES=$("$PG_BIN/pg_dump" -Fc -Z0 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB_NAME" | wc -c)
log "dump size (-Fc -Z0): $(mib $((DUMP_BYTES / 1024))) MiB"

for ((i = 1; i <= RUNS; i++)); do
    log "run $i/$RUNS: (a) pg_dump > /dev/null"
    run_a "$i"
    log "  $(last_line "$RUN_DIR/a.$i.time" | awk '{printf "%ss, %.1f MiB", $1, $2/1024}')"
    log "run $i/$RUNS: (b) pg_dump | zstd | age | aws s3 cp"
    run_b "$i"
    log "  $(last_line "$RUN_DIR/b.$i.time" | awk '{printf "%ss", $1}'), stages max/sum $(read -r m s h <"$RUN_DIR/b.$i.stages"; echo "$(mib "$m") ($h) / $(mib "$s") MiB")"
    if [[ "$SKIP_PGVAULT" != 1 ]]; then
        log "run $i/$RUNS: (c) pgvault backup"
        run_c "$i"
        log "  $(last_line "$RUN_DIR/c.$i.time" | awk '{printf "%ss, %.1f MiB", $1, $2/1024}')"
    fi
done

PIPE_OBJ_BYTES=$("$AWS_BIN" --endpoint-url "$S3_ENDPOINT" s3api head-object --bucket "$BUCKET" \
    --key bench/pipeline.dump.zst.age --query ContentLength --output text)
if [[ "$VERIFY" == 1 ]]; then
    log "verifying the pipeline object: aws s3 cp - | age -d | zstd -d > file; pg_restore -l file"
    "$AWS_BIN" --endpoint-url "$S3_ENDPOINT" s3 cp --only-show-errors \
        "s3://$BUCKET/bench/pipeline.dump.zst.age" - |
        age -d -i "$BENCH_DIR/age.key" | zstd -dq >"$RUN_DIR/verify.dump" ||
        die "the pipeline's object does not download/decrypt/decompress"
    "$PG_BIN/pg_restore" -l "$RUN_DIR/verify.dump" >"$RUN_DIR/verify.toc" ||
        die "pg_restore -l cannot read the pipeline's dump"
    log "  ok: $(grep -c 'TABLE DATA' "$RUN_DIR/verify.toc") tables, $(stat -c %s "$RUN_DIR/verify.dump") bytes (warm-up dump: $DUMP_BYTES)"
    rm -f "$RUN_DIR/verify.dump"
fi
if [[ "$SKIP_PGVAULT" != 1 ]]; then
    PGV_OBJ_BYTES=$("$AWS_BIN" --endpoint-url "$S3_ENDPOINT" s3 ls --recursive --summarize \
        "s3://$REPO_BUCKET/bench/" | awk '/Total Size:/ {print $3}')
fi

# --- Report ---------------------------------------------------------------------------
A_WALL=$(col a 1 | median)
A_RSS=$(col a 2 | median)
B_WALL=$(col b 1 | median)
B_MAX=$(for ((i = 1; i <= RUNS; i++)); do awk '{print $1}' "$RUN_DIR/b.$i.stages"; done | median)
B_SUM=$(for ((i = 1; i <= RUNS; i++)); do awk '{print $2}' "$RUN_DIR/b.$i.stages"; done | median)
B_HEAVY=$(awk '{print $3}' "$RUN_DIR/b.$RUNS.stages")
stage_med() { for ((i = 1; i <= RUNS; i++)); do last_line "$RUN_DIR/b.$i.$1.time" | awk '{print $2}'; done | median; }
throughput() { awk -v b="$DUMP_BYTES" -v s="$1" 'BEGIN{printf "%.0f", (s > 0) ? b/1048576/s : 0}'; }

{
    echo
    echo "pgvault backup benchmark  ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -r))"
    echo "database '$DB_NAME': $DB_PRETTY ($DB_BYTES bytes; generation: $GEN_DESC)"
    echo "dump -Fc -Z0: $(mib $((DUMP_BYTES / 1024))) MiB; pipeline object (zstd -$ZSTD_LEVEL + age): $(mib $((PIPE_OBJ_BYTES / 1024))) MiB"
    echo "runs: $RUNS each, interleaved a,b,c; medians; wall = GNU time %e, RSS = GNU time %M,"
    echo "CPU = client-side user+sys incl. child processes (%U+%S; the PostgreSQL server is not counted)"
    echo
    printf '%-36s %9s %9s %9s  %s\n' "" "wall s" "MiB/s" "CPU s" "peak RSS MiB"
    printf '%-36s %9s %9s %9s  %s\n' "(a) pg_dump -Fc -Z0 > /dev/null" "$A_WALL" "$(throughput "$A_WALL")" "$(col a cpu | median)" "$(mib "$A_RSS")"
    printf '%-36s %9s %9s %9s  %s\n' "(b) pg_dump|zstd|age|aws s3 cp" "$B_WALL" "$(throughput "$B_WALL")" "$(col b cpu | median)" \
        "$(mib "$B_MAX") max stage ($B_HEAVY); $(mib "$B_SUM") sum of stages"
    printf '%-36s %9s %9s %9s  %s\n' "     stages (median RSS MiB)" "" "" "" \
        "pg_dump $(mib "$(stage_med pg_dump)"), zstd $(mib "$(stage_med zstd)"), age $(mib "$(stage_med age)"), aws $(mib "$(stage_med aws)")"
    if [[ "$SKIP_PGVAULT" != 1 ]]; then
        C_WALL=$(col c 1 | median)
        C_RSS=$(col c 2 | median)
        printf '%-36s %9s %9s %9s  %s\n' "(c) pgvault backup" "$C_WALL" "$(throughput "$C_WALL")" "$(col c cpu | median)" "$(mib "$C_RSS")"
        echo "    (GNU time %M of pgvault = the largest single process of its tree, incl. any child pg_dump)"
        echo "    repository s3://$REPO_BUCKET/bench/ after $RUNS backups: $(mib $((PGV_OBJ_BYTES / 1024))) MiB ($(mib $((PGV_OBJ_BYTES / RUNS / 1024))) MiB per backup)"
    else
        printf '%-36s %9s %9s %9s  %s\n' "(c) pgvault backup" "skipped" "" "" "(BENCH_SKIP_PGVAULT=1)"
    fi
    echo
    echo "per-run  wall s / RSS MiB:"
    for ((i = 1; i <= RUNS; i++)); do
        line="  run $i: a $(last_line "$RUN_DIR/a.$i.time" | awk '{printf "%s / %.1f", $1, $2/1024}')"
        line+="   b $(last_line "$RUN_DIR/b.$i.time" | awk '{printf "%s", $1}') / $(read -r m s h <"$RUN_DIR/b.$i.stages"; echo "$(mib "$m") max, $(mib "$s") sum")"
        [[ "$SKIP_PGVAULT" != 1 ]] && line+="   c $(last_line "$RUN_DIR/c.$i.time" | awk '{printf "%s / %.1f", $1, $2/1024}')"
        echo "$line"
    done
    if [[ "$SAMPLE" == 1 ]]; then
        echo "sampled per-process peak RSS (VmHWM every 0.5 s, MiB, last run):"
        echo "  a: $(summarize_samples "$RUN_DIR/a.$RUNS.samples")"
        echo "  b: $(summarize_samples "$RUN_DIR/b.$RUNS.samples")"
        [[ "$SKIP_PGVAULT" != 1 ]] && echo "  c: $(summarize_samples "$RUN_DIR/c.$RUNS.samples")"
    fi
    echo
    echo "targets:"
    if [[ "$SKIP_PGVAULT" != 1 ]]; then
        CB=$(awk -v c="$C_WALL" -v b="$B_WALL" 'BEGIN{printf "%.2f", c/b}')
        CA=$(awk -v c="$C_WALL" -v a="$A_WALL" 'BEGIN{printf "%.2f", c/a}')
        C_MIB=$(mib "$C_RSS")
        printf '  %-28s %8s   target <= 0.8      %s\n' "c/b wall (vs pipeline)" "$CB" "$(verdict "$CB" 0.8)"
        printf '  %-28s %8s   target <= 1.5      %s\n' "c/a wall (vs pg_dump)" "$CA" "$(verdict "$CA" 1.5)"
        printf '  %-28s %8s   target <= 100 MiB  %s\n' "pgvault peak RSS (MiB)" "$C_MIB" "$(verdict "$C_MIB" 100)"
    else
        echo "  c/b, c/a, pgvault RSS: n/a (pgvault skipped)"
        printf '  %-28s %8s\n' "b/a wall (pipeline vs limit)" "$(awk -v b="$B_WALL" -v a="$A_WALL" 'BEGIN{printf "%.2f", b/a}')"
    fi
    echo
    echo "raw measurements: $RUN_DIR"
} | tee "$RUN_DIR/results.txt"
