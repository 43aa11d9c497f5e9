#!/usr/bin/env bash
# Manage a moto S3 server (server mode) for pgvault's Object Lock tests.
#
#   scripts/moto.sh start DIR   start a server whose log and pid file live in DIR, and
#                               write DIR/env (PGVAULT_TEST_LOCK_S3_* exports)
#   scripts/moto.sh stop DIR    stop the server started in DIR
#
# Garage, which runs the rest of the suite, has no Object Lock; moto implements it
# (retention headers, PutObjectRetention, versions, delete markers). The server listens
# on loopback only, on a free port, so several instances can run side by side.
#
# The moto_server program is taken from $MOTO_SERVER, else PATH. scripts/test.sh
# installs one (moto[server] >= 5.2.5) into a virtualenv in its cache.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}

die() {
    echo "moto.sh: $*" >&2
    exit 1
}

find_moto() {
    if [[ -n "${MOTO_SERVER:-}" ]]; then
        [[ -x "$MOTO_SERVER" ]] || die "MOTO_SERVER=$MOTO_SERVER is not an executable"
        echo "$MOTO_SERVER"
    elif command -v moto_server >/dev/null 2>&1; then
        command -v moto_server
    else
        die "moto_server not found (scripts/test.sh installs it; or: python3 -m pip install 'moto[server]>=5.2.5')"
    fi
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port: a port that nothing listens on. Another process may still take it before
# moto binds it; start() retries then.
free_port() {
    local port
    while true; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
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

# our_pid: the pid from DIR/moto.pid when it is a live moto server on DIR's port (so a
# stale pid file never gets an unrelated process killed).
our_pid() {
    local pid port
    [[ -f "$DIR/moto.pid" && -f "$DIR/moto.port" ]] || return 1
    pid=$(<"$DIR/moto.pid")
    port=$(<"$DIR/moto.port")
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "moto_server.* -p $port" || return 1
    echo "$pid"
}

# answers PORT: true when the S3 API on PORT answers HTTP.
answers() {
    if command -v curl >/dev/null 2>&1; then
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/") =~ ^[2-4] ]]
    else
        port_in_use "$1"
    fi
}

# launch PORT: start the server in the background; fails when it does not come up.
launch() {
    local port=$1 deadline
    rm -f "$DIR/moto.pid"
    echo "$port" >"$DIR/moto.port"
    # setsid: the server is not in the caller's process group, so a Ctrl-C meant for a
    # test run reaches it only through `stop`.
    setsid "$MOTO" -H 127.0.0.1 -p "$port" </dev/null >>"$DIR/moto.log" 2>&1 &
    echo $! >"$DIR/moto.pid"
    deadline=$((SECONDS + 60))
    until answers "$port"; do
        our_pid >/dev/null || return 1
        if ((SECONDS >= deadline)); then
            echo "moto.sh: timed out after 60s waiting for moto on port $port" >&2
            return 1
        fi
        sleep 0.2
    done
}

start() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if our_pid >/dev/null; then
        die "a moto server is already running for $DIR (pid $(our_pid)); stop it first"
    fi
    MOTO=$(find_moto)
    local attempt port
    for attempt in 1 2 3; do
        port=$(free_port)
        : >"$DIR/moto.log"
        if launch "$port"; then
            break
        fi
        stop_server quiet
        if ((attempt == 3)); then
            echo "moto.sh: moto did not start; last lines of $DIR/moto.log:" >&2
            tail -n 30 "$DIR/moto.log" >&2 || true
            exit 1
        fi
    done
    # moto accepts any credentials; these only have to be well-formed.
    (
        umask 077
        cat >"$DIR/env" <<EOF
export PGVAULT_TEST_LOCK_S3_ENDPOINT=http://127.0.0.1:$port
export PGVAULT_TEST_LOCK_S3_REGION=us-east-1
export PGVAULT_TEST_LOCK_S3_ACCESS_KEY_ID=pgvault-lock-test
export PGVAULT_TEST_LOCK_S3_SECRET_ACCESS_KEY=pgvault-lock-test-secret
EOF
    )
    echo "moto: S3 API with Object Lock at http://127.0.0.1:$port (pid $(<"$DIR/moto.pid"), log $DIR/moto.log, env $DIR/env)"
}

# stop_server [quiet]: stop the server named by DIR/moto.pid and wait until it is gone.
stop_server() {
    local pid
    if [[ ! -f "$DIR/moto.pid" ]]; then
        [[ "${1:-}" == quiet ]] || echo "moto.sh: no pid file in $DIR; nothing to stop" >&2
        return 0
    fi
    if pid=$(our_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                echo "moto.sh: pid $pid ignored SIGTERM for 20s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/moto.pid"
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
