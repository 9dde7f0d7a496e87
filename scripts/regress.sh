#!/usr/bin/env bash
# The pg_regress suite (test/README.md): test/sql/*.sql run by psql, in the
# order of test/schedule, in a database of their own (dbrag_regression) on a
# running server with pg_dbrag preloaded and dbrag.master_key and
# dbrag.jwt_secret set, as scripts/test.sh starts its primary cluster; the
# output is compared with test/expected/*.out. On a difference it prints
# regression.diffs, keeps the database and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PORT=${DBRAG_TEST_PORT:-55432}
export PGPASSWORD=${DBRAG_TEST_PASSWORD:-postgres-test-pw}
DB=dbrag_regression
OUT=${DBRAG_TEST_WORK:-/tmp/pg_dbrag_test}/regress
# Debian ships it in postgresql-client-15, under PGXS.
PG_REGRESS=$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress
if [ ! -x "$PG_REGRESS" ]; then
    echo "pg_regress not found at $PG_REGRESS"
    exit 1
fi

psql_su() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres \
        -c "SET client_min_messages = warning" "$@"
}

# A fresh database with the settings pg_regress gives the ones it creates.
psql_su -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB TEMPLATE template0" \
    -c "ALTER DATABASE $DB SET lc_messages TO 'C'" \
    -c "ALTER DATABASE $DB SET lc_monetary TO 'C'" \
    -c "ALTER DATABASE $DB SET lc_numeric TO 'C'" \
    -c "ALTER DATABASE $DB SET lc_time TO 'C'" \
    -c "ALTER DATABASE $DB SET bytea_output TO 'hex'" \
    -c "ALTER DATABASE $DB SET timezone_abbreviations TO 'Default'"

rm -rf "$OUT"
mkdir -p "$OUT"
if "$PG_REGRESS" --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres \
    --dbname="$DB" --bindir="$PG_BIN" --inputdir=test --outputdir="$OUT" \
    --schedule=test/schedule; then
    psql_su -c "DROP DATABASE $DB"
else
    echo "pg_regress: differences from test/expected ($OUT/regression.diffs):"
    cat "$OUT/regression.diffs" 2>/dev/null || true
    exit 1
fi
