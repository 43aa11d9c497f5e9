#!/usr/bin/env bash
# Manage a single-node Garage S3 server for pgvault's tests.
#
#   scripts/garage.sh start DIR   start a server whose config, data, log and pid file
#                                 live in DIR, and write DIR/env (PGVAULT_TEST_S3_* exports)
#   scripts/garage.sh stop DIR    stop the server started in DIR
#
# Every garage command names its config (`garage -c DIR/garage.toml`), so several
# instances can run side by side. The server listens on loopback only, on free ports.
#
# The garage binary is taken from $GARAGE_BIN, else PATH, else ~/.cargo/bin.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}

die() {
    echo "garage.sh: $*" >&2
    exit 1
}

# Settings for a remote node in the caller's environment would redirect our CLI calls
# away from the node we start; this script only ever talks to its own node.
unset GARAGE_RPC_HOST GARAGE_RPC_SECRET GARAGE_RPC_SECRET_FILE \
    GARAGE_ADMIN_TOKEN GARAGE_ADMIN_TOKEN_FILE GARAGE_METRICS_TOKEN GARAGE_METRICS_TOKEN_FILE \
    GARAGE_CONFIG_FILE 2>/dev/null || true

find_garage() {
    if [[ -n "${GARAGE_BIN:-}" ]]; then
        [[ -x "$GARAGE_BIN" ]] || die "GARAGE_BIN=$GARAGE_BIN is not an executable"
        echo "$GARAGE_BIN"
    elif command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [[ -x "$HOME/.cargo/bin/garage" ]]; then
        echo "$HOME/.cargo/bin/garage"
    else
        die "garage not found (install it with: cargo install garage --locked --version 2.5.0)"
    fi
}

# random_hex BYTES: BYTES random bytes as lowercase hex.
random_hex() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex "$1"
    else
        od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
    fi
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port EXCLUDED...: a port that nothing listens on and that is not in EXCLUDED.
# Another process may still take it before garage binds it; start() retries then.
free_port() {
    local port excluded
    while true; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        for excluded in "$@"; do
            [[ "$port" == "$excluded" ]] && continue 2
        done
        port_in_use "$port" || {
            echo "$port"
            return
        }
    done
}

# alive PID: true while PID is a running process (a zombie counts as gone).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ "${stat:0:1}" != Z ]]
}

# our_pid DIR: the pid from DIR/garage.pid when it is a live garage server started with
# DIR's config (so a stale pid file never gets an unrelated process killed).
our_pid() {
    local pid
    [[ -f "$1/garage.pid" ]] || return 1
    pid=$(<"$1/garage.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1/garage.toml" || return 1
    echo "$pid"
}

# server_running DIR: true when DIR's server is alive.
server_running() {
    our_pid "$1" >/dev/null
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds; fail when the
# server dies or the deadline passes.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        server_running "$DIR" || return 1
        if ((SECONDS >= deadline)); then
            echo "garage.sh: timed out after ${seconds}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

write_config() {
    local rpc_port s3_port admin_port
    rpc_port=$(free_port)
    s3_port=$(free_port "$rpc_port")
    admin_port=$(free_port "$rpc_port" "$s3_port")
    S3_PORT=$s3_port
    # Written with owner-only permissions: it holds the RPC secret and admin token.
    (
        umask 077
        cat >"$CONFIG" <<EOF
# Single-node Garage for pgvault tests; written by scripts/garage.sh.
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "lmdb"

replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(random_hex 32)"
EOF
    )
}

# launch: start the server in the background; fails when it does not come up.
launch() {
    rm -f "$DIR/garage.pid"
    # setsid: the server is not in the caller's process group, so a Ctrl-C meant for a
    # test run reaches it only through `stop`.
    setsid "$GARAGE" -c "$CONFIG" server </dev/null >>"$DIR/garage.log" 2>&1 &
    echo $! >"$DIR/garage.pid"
    wait_for "garage status" 60 "$GARAGE" -c "$CONFIG" status
}

start() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    CONFIG="$DIR/garage.toml"
    if server_running "$DIR"; then
        die "a garage server is already running for $DIR (pid $(our_pid "$DIR")); stop it first"
    fi
    GARAGE=$(find_garage)

    # A port can be taken between our check and garage's bind: retry with new ports.
    local attempt
    for attempt in 1 2 3; do
        rm -rf "$DIR/meta" "$DIR/data"
        write_config
        : >"$DIR/garage.log"
        if launch; then
            break
        fi
        stop_server quiet
        if ((attempt == 3)); then
            echo "garage.sh: garage did not start; last lines of $DIR/garage.log:" >&2
            tail -n 30 "$DIR/garage.log" >&2 || true
            exit 1
        fi
    done

    local node_id key_output key_id secret
    node_id=$("$GARAGE" -c "$CONFIG" node id -q)
    node_id=${node_id%%@*}
    [[ "$node_id" =~ ^[0-9a-f]{64}$ ]] || die "unexpected output from 'garage node id': $node_id"
    "$GARAGE" -c "$CONFIG" layout assign -z dc1 -c 1G "$node_id" >/dev/null
    "$GARAGE" -c "$CONFIG" layout apply --version 1 >/dev/null

    key_output=$("$GARAGE" -c "$CONFIG" key create pgvault-test)
    key_id=$(awk -F'\t| +' '/^Key ID:/ {print $NF}' <<<"$key_output")
    secret=$(awk -F'\t| +' '/^Secret key:/ {print $NF}' <<<"$key_output")
    [[ "$key_id" =~ ^GK[0-9a-f]+$ && "$secret" =~ ^[0-9a-f]{64}$ ]] ||
        die "could not read the key from 'garage key create' output:"$'\n'"$key_output"
    "$GARAGE" -c "$CONFIG" key allow --create-bucket "$key_id" >/dev/null

    # The S3 API answers once the layout is live: an unauthenticated request gets an
    # S3 error document (403) instead of a refused connection or a 5xx.
    wait_for "the S3 API" 30 s3_ready

    (
        umask 077
        cat >"$DIR/env" <<EOF
export PGVAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export PGVAULT_TEST_S3_REGION=garage
export PGVAULT_TEST_S3_ACCESS_KEY_ID=$key_id
export PGVAULT_TEST_S3_SECRET_ACCESS_KEY=$secret
EOF
    )
    echo "garage: S3 API at http://127.0.0.1:$S3_PORT (pid $(<"$DIR/garage.pid"), log $DIR/garage.log, env $DIR/env)"
}

s3_ready() {
    local code
    if command -v curl >/dev/null 2>&1; then
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")
        [[ "$code" =~ ^4 ]]
    else
        port_in_use "$S3_PORT"
    fi
}

# stop_server [quiet]: stop the server named by DIR/garage.pid and wait until it is gone.
stop_server() {
    local pid
    if [[ ! -f "$DIR/garage.pid" ]]; then
        [[ "${1:-}" == quiet ]] || echo "garage.sh: no pid file in $DIR; nothing to stop" >&2
        return 0
    fi
    if pid=$(our_pid "$DIR"); then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                echo "garage.sh: pid $pid ignored SIGTERM for 20s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        # Reap it when it is our own child (the retry path of `start`).
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/garage.pid"
}

[[ $# -eq 2 ]] || usage
DIR=$2
case "$1" in
start) start ;;
stop)
    [[ -d "$DIR" ]] || die "no such directory: $DIR"
    stop_server
    ;;
*) usage ;;
esac
