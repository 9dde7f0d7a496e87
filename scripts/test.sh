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
export DBRAG_TEST_PASSWORD=${DBRAG_TEST_PASSWORD:-postgres-test-pw}
export DBRAG_TEST_JWT_SECRET=${DBRAG_TEST_JWT_SECRET:-test-jwt-secret-0123456789abcdef}
export DBRAG_TEST_MASTER_KEY=${DBRAG_TEST_MASTER_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
export DBRAG_TEST_WORK=$WORK

cleanup() {
    stop_cluster "$WORK/primary"
    stop_cluster "$WORK/remote"
    stop_mariadb "$WORK/mariadb"
}
# DBRAG_KEEP_CLUSTERS=1 leaves them running, to rerun pytest by hand.
[ "${DBRAG_KEEP_CLUSTERS:-0}" = 1 ] || trap cleanup EXIT

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

echo "== start clusters"
start_cluster "$WORK/primary" "$DBRAG_TEST_PORT" "$DBRAG_TEST_PASSWORD" \
    "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.jwt_secret = '$DBRAG_TEST_JWT_SECRET'" \
    "dbrag.master_key = '$DBRAG_TEST_MASTER_KEY'" \
    "log_min_messages = warning"
start_cluster "$WORK/remote" "$DBRAG_REMOTE_PORT" "$DBRAG_TEST_PASSWORD"
start_mariadb "$WORK/mariadb" "$DBRAG_MYSQL_PORT"

echo "== integration tests over real connections"
status=$fuzz_status
python3 -m pytest tests -q -p no:cacheprovider "$@" || status=$?

# A crash or a Rust panic that escaped would show in the server log.
if grep -nE "terminated by signal|was terminated by signal|memory allocation of|PANIC|panicked at" "$WORK/primary/server.log"; then
    echo "server log shows a crash or panic"
    status=1
fi
exit $status
