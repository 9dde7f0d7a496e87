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

# Build the extension in release mode and install it into the system PostgreSQL 15
# (or DBRAG_PG_PREFIX's copy), with every upgrade script.
install_extension() {
    local log
    log=$(mktemp /tmp/pg_dbrag_install.XXXXXX.log)
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >"$log" 2>&1) || {
        tail -50 "$log"
        return 1
    }
    rm -f "$log"
    # The next release's upgrade script is a template (sql/upgrade/): expand
    # it next to the install script (cargo pgrx copies only sql/pg_dbrag--*--*.sql).
    python3 "$REPO_ROOT/scripts/upgrade_script.py" install "$("$PG_CONFIG" --sharedir)/extension" >/dev/null || return 1
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

# start_cluster_retry: the same, tried up to five times. The port lies in
# Linux's ephemeral range, so it can be taken for a moment as the local end
# of another connection on a busy machine.
start_cluster_retry() {
    local i
    for i in 1 2 3 4 5; do
        if start_cluster "$@"; then
            return 0
        fi
        echo "could not start the cluster on port $2 (attempt $i); trying again"
        sleep 3
    done
    return 1
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

# ---------------------------------------------------------------- releases
# sql/releases names each release's commit. A release is built once from a
# checkout of its commit and its installed files are cached outside the
# repository (DBRAG_RELEASE_CACHE, default /var/cache/pg_dbrag), so CI on a
# clean clone of the same machine skips the build.
RELEASE_CACHE=${DBRAG_RELEASE_CACHE:-/var/cache/pg_dbrag}

current_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/Cargo.toml" | head -1; }
previous_release() { awk '!/^#/ && NF == 2 { v = $1 } END { print v }' "$REPO_ROOT/sql/releases"; }
release_commit() { awk -v v="$1" '!/^#/ && $1 == v { print $2 }' "$REPO_ROOT/sql/releases"; }

# release_build VERSION: prints the cache directory holding lib/pg_dbrag.so
# and extension/{pg_dbrag.control,pg_dbrag--*.sql} of that release.
release_build() {
    local version=$1 commit dir src out
    commit=$(release_commit "$version")
    [ -n "$commit" ] || { echo "release $version is not in sql/releases" >&2; return 1; }
    dir=$RELEASE_CACHE/$version-${commit:0:12}-pg$("$PG_CONFIG" --version | sed 's/[^0-9]*\([0-9]*\).*/\1/')
    if [ -f "$dir/complete" ]; then
        echo "$dir"
        return 0
    fi
    git -C "$REPO_ROOT" cat-file -e "$commit^{commit}" 2>/dev/null || {
        echo "commit $commit of release $version is not in this clone (shallow?); git fetch --unshallow" >&2
        return 1
    }
    # A plain export of the commit's tree (git archive): the same files as a
    # `git worktree`, without registering one in a .git shared by others.
    src=$(mktemp -d "/tmp/pg_dbrag-$version.XXXXXX")
    git -C "$REPO_ROOT" archive "$commit" | tar -x -C "$src"
    echo "building release $version ($commit) in $src, once; cached in $dir" >&2
    # A target directory of its own, seeded with a copy of the repository's
    # so compiled dependencies are reused. Never the repository's own: cargo
    # judges path crates by mtime, and the exported files carry the commit's
    # date, older than the current build's outputs of the same crate version.
    # Touched, the release's own crates are compiled from its sources.
    if [ -d "$REPO_ROOT/target/release" ]; then
        mkdir -p "$src/target"
        cp -a "$REPO_ROOT/target/release" "$src/target/"
    fi
    find "$src" -path "$src/target" -prune -o -type f -exec touch {} +
    (cd "$src" && CARGO_TARGET_DIR="$src/target" cargo pgrx package --pg-config "$PG_CONFIG" \
        --out-dir "$src/pkg" >"$src.log" 2>&1) || {
        tail -40 "$src.log" >&2
        return 1
    }
    out=$src/pkg
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp/lib" "$dir.tmp/extension"
    cp "$out$("$PG_CONFIG" --pkglibdir)"/pg_dbrag*.so "$dir.tmp/lib/"
    cp "$out$("$PG_CONFIG" --sharedir)"/extension/pg_dbrag* "$dir.tmp/extension/"
    echo "$version $commit" >"$dir.tmp/complete"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    rm -rf "$src" "$src.log"
    echo "$dir"
}

# install_release_files DIR: put a cached release in place of the installed
# build (the next install_extension puts the current build back).
install_release_files() {
    local dir=$1 lib ext
    lib=$("$PG_CONFIG" --pkglibdir)
    ext=$("$PG_CONFIG" --sharedir)/extension
    rm -f "$lib"/pg_dbrag*.so "$ext"/pg_dbrag.control
    cp "$dir"/lib/pg_dbrag*.so "$lib/"
    cp "$dir"/extension/pg_dbrag* "$ext/"
}

# PgBouncer from Debian's package, in front of a test cluster.
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

# start_pgbouncer DIR LISTEN_PORT SERVER_PORT SUPERUSER_PASSWORD DB [DB...]
# A pooler on 127.0.0.1:LISTEN_PORT (no Unix socket), run as the OS user
# postgres. Clients authenticate with SCRAM; their secrets come from the
# server's pg_shadow through auth_query (auth_user postgres, whose password
# is the only one in the auth_file), so roles created by tests log in
# without being listed anywhere. Each DB argument is a [databases] line,
# e.g. "app = host=127.0.0.1 port=5432 dbname=app pool_size=5".
start_pgbouncer() {
    local dir=$1 port=$2 server_port=$3 password=$4
    shift 4
    stop_pgbouncer "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '"postgres" "%s"\n' "$password" >"$dir/userlist.txt"
    {
        echo "[databases]"
        for db in "$@"; do echo "$db"; done
        echo
        echo "[pgbouncer]"
        echo "listen_addr = 127.0.0.1"
        echo "listen_port = $port"
        echo "unix_socket_dir ="
        echo "auth_type = scram-sha-256"
        echo "auth_file = $dir/userlist.txt"
        echo "auth_user = postgres"
        echo "auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = \$1"
        echo "pool_mode = transaction"
        echo "default_pool_size = 5"
        echo "max_client_conn = 500"
        echo "server_reset_query = DISCARD ALL"
        echo "ignore_startup_parameters = extra_float_digits"
        echo "admin_users = postgres"
        echo "logfile = $dir/pgbouncer.log"
        echo "pidfile = $dir/pgbouncer.pid"
    } >"$dir/pgbouncer.ini"
    chown -R postgres:postgres "$dir"
    chmod 600 "$dir/userlist.txt"
    as_postgres "$PGBOUNCER" -d -q "$dir/pgbouncer.ini" || {
        tail -20 "$dir/pgbouncer.log" 2>/dev/null
        return 1
    }
    local i
    for i in $(seq 1 80); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.25
    done
    echo "pgbouncer did not start; see $dir/pgbouncer.log"
    tail -20 "$dir/pgbouncer.log" 2>/dev/null
    return 1
}

stop_pgbouncer() {
    local dir=$1 pid
    if [ -f "$dir/pgbouncer.pid" ]; then
        pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 40); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.25
            done
        fi
    fi
}
