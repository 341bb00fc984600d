#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1 in a temporary directory, for tests/test_postgres.py.
#
#   eval "$(bash .ci/postgres.sh start)"   # prints the exports the tests read (CSRAE_TEST_PG_URL, PGPASSFILE)
#   bash .ci/postgres.sh stop
#
# The same setup a user copies (docs/SWEEPS.md, "Scaling out"): password authentication on TCP, the
# password in a pgpass file (mode 600), and a URL without it. Installs Debian's `postgresql` if no
# server is found (needs root; CI runs as root). The server runs as the `postgres` user and listens on
# 127.0.0.1 only (its unix socket stays in the temporary directory).
set -euo pipefail

DIR=${CSRAE_PG_DIR:-/tmp/csrae-pg}
PORT=${CSRAE_PG_PORT:-55432}
DB=optuna

log() { echo "postgres.sh: $*" >&2; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_postgres() {  # from /: the caller's directory may be one that postgres cannot enter (a 700 temp dir)
    if [ "$(id -un)" = postgres ]; then "$@"; else (cd / && runuser -u postgres -- "$@"); fi
}

start() {
    local bin
    bin=$(bindir)
    if [ -z "$bin" ]; then
        log "installing postgresql"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        bin=$(bindir)
    fi
    stop 2>/dev/null || true
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    chown postgres:postgres "$DIR"

    # A random password that only the pgpass file holds (the URL never does).
    local password
    password=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    printf '%s\n' "$password" >"$DIR/password"
    chown postgres:postgres "$DIR/password"
    chmod 600 "$DIR/password"
    as_postgres "$bin/initdb" -D "$DIR/data" -U postgres --pwfile="$DIR/password" --auth-host=scram-sha-256 \
        --auth-local=peer --no-sync >"$DIR/initdb.log"
    rm -f "$DIR/password"
    as_postgres "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null

    # libpq reads the password from PGPASSFILE (default ~/.pgpass): host:port:database:user:password
    printf '127.0.0.1:%s:*:postgres:%s\n' "$PORT" "$password" >"$DIR/pgpass"
    chmod 600 "$DIR/pgpass"
    PGPASSFILE="$DIR/pgpass" "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
    log "up: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, database $DB"
    echo "export PGPASSFILE=$DIR/pgpass"
    echo "export CSRAE_TEST_PG_URL=postgresql://postgres@127.0.0.1:$PORT/$DB"
}

stop() {
    local bin
    bin=$(bindir)
    if [ -n "$bin" ] && [ -f "$DIR/data/postmaster.pid" ]; then
        as_postgres "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null && log "stopped"
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
