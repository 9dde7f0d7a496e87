#!/usr/bin/env bash
# Shared helpers for demo.sh, test.sh and bench/: build, install, clusters.
# PostgreSQL refuses to run as root, so clusters run as the OS user postgres.

PG_BIN=/usr/lib/postgresql/15/bin
# DBRAG_PG_PREFIX=/some/dir: use a private, relocated copy of the system
# PostgreSQL 15 there, so several work trees can install and test their own
# build of the extension side by side.
if [ -n "${DBRAG_PG_PREFIX:-}" ]; then
    if [ ! -x "$DBRAG_PG_PREFIX/lib/postgresql/15/bin/postgres" ]; then
        mkdir -p "$DBRAG_PG_PREFIX/lib/postgresql" "$DBRAG_PG_PREFIX/share/postgresql"
        cp -a /usr/lib/postgresql/15 "$DBRAG_PG_PREFIX/lib/postgresql/"
        cp -a /usr/share/postgresql/15 "$DBRAG_PG_PREFIX/share/postgresql/"
        ln -sfn /usr/include "$DBRAG_PG_PREFIX/include"
    fi
    PG_BIN=$DBRAG_PG_PREFIX/lib/postgresql/15/bin
fi
PG_CONFIG=$PG_BIN/pg_config
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_postgres() { runuser -u postgres -- "$@"; }

# Build the extension in release mode and install it into the system PostgreSQL 15.
install_extension() {
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/tmp/pg_dbrag_install.log 2>&1) || {
        tail -50 /tmp/pg_dbrag_install.log
        return 1
    }
    install_dataplane_helper "$($PG_CONFIG --pkglibdir)" || return 1
    echo "installed pg_dbrag into $($PG_CONFIG --pkglibdir)"
}

# install_dataplane_helper DIR: build pg_dbrag_dataplane (the MySQL/SQLite
# client process, crates/dbrag-dataplane) and install it into DIR, which
# must be the server's pkglibdir: the extension looks for it there.
install_dataplane_helper() {
    local dir=$1
    (cd "$REPO_ROOT" && cargo build --release -p dbrag-dataplane >/tmp/pg_dbrag_dataplane_build.log 2>&1) || {
        tail -50 /tmp/pg_dbrag_dataplane_build.log
        return 1
    }
    install -m 0755 "$REPO_ROOT/target/release/pg_dbrag_dataplane" "$dir/pg_dbrag_dataplane"
}

# start_cluster DIR PORT SUPERUSER_PASSWORD [extra postgresql.conf lines...]
# A throwaway cluster on 127.0.0.1:PORT with password (scram) auth everywhere.
start_cluster() {
    local dir=$1 port=$2 password=$3
    shift 3
    stop_cluster "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    local pwfile="$dir.pw"
    printf '%s\n' "$password" >"$pwfile"
    chown postgres:postgres "$pwfile"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --pwfile="$pwfile" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "max_connections = 100"
        echo "max_worker_processes = 24"
        echo "shared_buffers = 256MB"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "logging_collector = off"
        for line in "$@"; do echo "$line"; done
    } >>"$dir/data/postgresql.conf"
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

stop_cluster() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}

# MariaDB from Debian's packages, for the mysql data-plane tests.
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
MARIADB_INSTALL_DB=$(command -v mariadb-install-db || command -v mysql_install_db || echo /usr/bin/mariadb-install-db)

# start_mariadb DIR PORT
# A throwaway server on 127.0.0.1:PORT, run as the OS user mysql, with its
# own data directory and socket under DIR and the general query log on (the
# tests read it to show refused statements never reach the server). root
# has no password and is reached only over DIR/mysqld.sock, as root.
start_mariadb() {
    local dir=$1 port=$2
    stop_mariadb "$dir"
    rm -rf "$dir"
    mkdir -p "$dir/data"
    chown -R mysql:mysql "$dir"
    "$MARIADB_INSTALL_DB" --no-defaults --user=mysql --datadir="$dir/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 || {
        tail -20 "$dir/install.log"
        return 1
    }
    runuser -u mysql -- "$MARIADBD" --no-defaults --datadir="$dir/data" \
        --port="$port" --bind-address=127.0.0.1 --skip-networking=0 --skip-name-resolve \
        --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/error.log" \
        --general-log=1 --general-log-file="$dir/general.log" \
        --innodb-buffer-pool-size=64M --max-connections=200 >/dev/null 2>&1 &
    local i
    for i in $(seq 1 120); do
        if mariadb --no-defaults --socket="$dir/mysqld.sock" -u root -e "SELECT 1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    echo "mariadb did not start; see $dir/error.log"
    tail -20 "$dir/error.log" 2>/dev/null
    return 1
}

stop_mariadb() {
    local dir=$1 pid
    if [ -f "$dir/mysqld.pid" ]; then
        pid=$(cat "$dir/mysqld.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 80); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.25
            done
        fi
    fi
}
