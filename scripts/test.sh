#!/usr/bin/env bash
# Every test of pg_dbrag: pure-Rust unit and property tests, then the
# extension built, installed into PostgreSQL 15 and tested over real TCP
# connections as tenants' login roles (tests/), against throwaway clusters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh

WORK=${DBRAG_TEST_WORK:-/tmp/pg_dbrag_test}
mkdir -p "$WORK"
chmod 755 "$WORK"
export DBRAG_TEST_PORT=${DBRAG_TEST_PORT:-55432}
export DBRAG_REMOTE_PORT=${DBRAG_REMOTE_PORT:-55433}
export DBRAG_MYSQL_PORT=${DBRAG_MYSQL_PORT:-55434}
export DBRAG_PGBOUNCER_PORT=${DBRAG_PGBOUNCER_PORT:-$((DBRAG_TEST_PORT + 3))}
export DBRAG_TEST_PASSWORD=${DBRAG_TEST_PASSWORD:-postgres-test-pw}
export DBRAG_TEST_JWT_SECRET=${DBRAG_TEST_JWT_SECRET:-test-jwt-secret-0123456789abcdef}
export DBRAG_TEST_MASTER_KEY=${DBRAG_TEST_MASTER_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
export DBRAG_TEST_WORK=$WORK

cleanup() {
    stop_cluster "$WORK/primary"
    stop_cluster "$WORK/remote"
    stop_mariadb "$WORK/mariadb"
    for node in 0 1 2; do stop_cluster "$WORK/citus$node"; done
    stop_pgbouncer "$WORK/pgbouncer"
}
# DBRAG_KEEP_CLUSTERS=1 leaves them running, to rerun pytest by hand.
[ "${DBRAG_KEEP_CLUSTERS:-0}" = 1 ] || trap cleanup EXIT

echo "== layers: no import cycle between src/ modules"
python3 scripts/check_layers.py

echo "== unit and property tests (dbrag-core)"
cargo test -p dbrag-core --quiet 2>&1 | tail -n 25

fuzz_status=0
# Fuzzing of dbrag-core's parsers, about a minute in all (scripts/fuzz.sh);
# DBRAG_SKIP_FUZZ=1 skips it for quick local runs.
if [ "${DBRAG_SKIP_FUZZ:-0}" = 1 ]; then
    echo "== fuzzing skipped (DBRAG_SKIP_FUZZ=1)"
else
    echo "== fuzzing (dbrag-core)"
    bash scripts/fuzz.sh || fuzz_status=1
fi

echo "== build and install the extension"
install_extension

echo "== start the data-plane servers"
start_cluster_retry "$WORK/remote" "$DBRAG_REMOTE_PORT" "$DBRAG_TEST_PASSWORD"
start_mariadb "$WORK/mariadb" "$DBRAG_MYSQL_PORT"

status=$fuzz_status
# The previous release updated to this build, the schema check, dump and
# restore (scripts/upgrade_test.sh); DBRAG_SKIP_UPGRADE=1 skips them.
if [ "${DBRAG_SKIP_UPGRADE:-0}" = 1 ]; then
    echo "== upgrade test skipped (DBRAG_SKIP_UPGRADE=1)"
else
    bash scripts/upgrade_test.sh || status=1
fi

echo "== start the primary cluster"
start_cluster_retry "$WORK/primary" "$DBRAG_TEST_PORT" "$DBRAG_TEST_PASSWORD" \
    "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.jwt_secret = '$DBRAG_TEST_JWT_SECRET'" \
    "dbrag.master_key = '$DBRAG_TEST_MASTER_KEY'" \
    "log_min_messages = warning"

echo "== Citus cluster (a coordinator and two workers)"
export DBRAG_CITUS_PORT=${DBRAG_CITUS_PORT:-55440}
if [ -n "${DBRAG_CITUS_SKIP:-}" ]; then
    # Set by the caller (a run that does not need Citus): say so and go on.
    echo "SKIPPED: Citus cluster ($DBRAG_CITUS_SKIP)"
    unset DBRAG_CITUS_PORT
elif citus_status=$(PG_CONFIG=$PG_CONFIG bash scripts/citus_build.sh 2>&1); then
    echo "$citus_status"
    for node in 0 1 2; do
        start_cluster "$WORK/citus$node" $((DBRAG_CITUS_PORT + node)) "$DBRAG_TEST_PASSWORD" \
            "shared_preload_libraries = 'citus,pg_dbrag'" \
            "dbrag.jwt_secret = '$DBRAG_TEST_JWT_SECRET'" \
            "dbrag.master_key = '$DBRAG_TEST_MASTER_KEY'" \
            "citus.node_conninfo = 'sslmode=disable'" \
            "log_min_messages = warning"
    done
else
    echo "$citus_status"
    export DBRAG_CITUS_SKIP="${citus_status##*$'\n'}"
    unset DBRAG_CITUS_PORT
fi

# PgBouncer in front of the primary (tests/test_pooling.py): dbrag_test in
# transaction mode over 5 server connections; _tx1 the same over one (so
# which client follows which is known); _session in session mode, where
# server_reset_query = DISCARD ALL runs between clients.
PRIMARY="host=127.0.0.1 port=$DBRAG_TEST_PORT dbname=dbrag_test"
start_pgbouncer "$WORK/pgbouncer" "$DBRAG_PGBOUNCER_PORT" "$DBRAG_TEST_PORT" "$DBRAG_TEST_PASSWORD" \
    "dbrag_test = $PRIMARY pool_size=5" \
    "dbrag_test_tx1 = $PRIMARY pool_size=1" \
    "dbrag_test_session = $PRIMARY pool_size=1 pool_mode=session"

# What a PostgreSQL user reads (messages, SQLSTATEs, hints), pinned by the
# pg_regress suite under test/ (scripts/regress.sh, test/README.md).
echo "== pg_regress suite (test/)"
bash scripts/regress.sh || status=1

echo "== integration tests over real connections"
python3 -m pytest tests -q -p no:cacheprovider "$@" || status=$?

# A crash or a Rust panic that escaped would show in the server log.
logs=("$WORK/primary/server.log")
for node in 0 1 2; do
    [ -f "$WORK/citus$node/server.log" ] && logs+=("$WORK/citus$node/server.log")
done
if grep -nE "terminated by signal|was terminated by signal|memory allocation of|PANIC|panicked at" "${logs[@]}"; then
    echo "server log shows a crash or panic"
    status=1
fi

# The Debian package, installed with apt-get into the system PostgreSQL 15,
# smoke-tested and removed (scripts/package_test.sh); DBRAG_SKIP_PACKAGE=1 skips it.
if [ "${DBRAG_SKIP_PACKAGE:-0}" = 1 ]; then
    echo "== package test skipped (DBRAG_SKIP_PACKAGE=1)"
else
    stop_cluster "$WORK/primary"
    bash scripts/package_test.sh || status=1
fi
exit $status
