#!/usr/bin/env bash
# Upgrade test, schema check, dump and restore (run by scripts/test.sh, with
# the remote PostgreSQL and MariaDB of the suite already running and the
# current build installed; its own clusters use DBRAG_TEST_PORT before the
# suite's primary cluster starts).
#
# 1. The previous release (sql/releases) is built once from its commit and
#    cached (scripts/lib.sh release_build), installed, and a cluster filled
#    with real data by tests/upgrade/seed.py.
# 2. The current build is installed, the cluster restarted, and
#    ALTER EXTENSION pg_dbrag UPDATE run; tests/upgrade/check_upgraded.py
#    checks rows, ciphertexts, isolation and the key paths.
# 3. Schema check: the updated extension equals a fresh CREATE EXTENSION
#    (tests/upgrade/schema_check.py); a tampered database shows it can fail.
# 4. pg_dumpall --roles-only + pg_dump -Fc, restored into a fresh cluster
#    first without the master key (credentials refuse with 55000), then with
#    it; the same checks run on the restored database.
# 5. The same dump restored into a second database of that cluster: neither
#    database acts on the other's tenant roles (tests/upgrade/check_second_copy.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

WORK=${DBRAG_TEST_WORK:-/tmp/pg_dbrag_test}
export DBRAG_TEST_WORK=$WORK
export DBRAG_TEST_PORT=${DBRAG_TEST_PORT:-55432}
export DBRAG_REMOTE_PORT=${DBRAG_REMOTE_PORT:-55433}
export DBRAG_MYSQL_PORT=${DBRAG_MYSQL_PORT:-55434}
export DBRAG_TEST_PASSWORD=${DBRAG_TEST_PASSWORD:-postgres-test-pw}
export DBRAG_TEST_JWT_SECRET=${DBRAG_TEST_JWT_SECRET:-test-jwt-secret-0123456789abcdef}
export DBRAG_TEST_MASTER_KEY=${DBRAG_TEST_MASTER_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
PORT=$DBRAG_TEST_PORT
UP=$WORK/upgrade
RESTORE=$WORK/restore
PREVIOUS=$(previous_release)
CURRENT=$(current_version)
PYTEST=(python3 -m pytest -q -p no:cacheprovider)

if [ "$PREVIOUS" = "$CURRENT" ]; then
    echo "upgrade test: $CURRENT is the last release itself; nothing to update from"
    exit 0
fi

psql_su() {
    PGPASSWORD=$DBRAG_TEST_PASSWORD "$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"
}
restart() { as_postgres "$PG_BIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 restart -m fast >/dev/null; }
no_crash() {
    if grep -nE "terminated by signal|PANIC|panicked at" "$1/server.log"; then
        echo "server log of $1 shows a crash or panic"
        return 1
    fi
}
EXTDIR=$("$PG_CONFIG" --sharedir)/extension
old_script_was_there=0
[ -e "$EXTDIR/pg_dbrag--$PREVIOUS.sql" ] && old_script_was_there=1
finish() {
    stop_cluster "$UP"
    stop_cluster "$RESTORE"
    # Whatever happened, leave the current build installed for the suite,
    # without the previous release's install script if it was not there.
    install_extension >/dev/null || true
    [ "$old_script_was_there" = 1 ] || rm -f "$EXTDIR/pg_dbrag--$PREVIOUS.sql"
}
trap finish EXIT

settings=("shared_preload_libraries = 'pg_dbrag'" "dbrag.jwt_secret = '$DBRAG_TEST_JWT_SECRET'"
          "dbrag.sqlite_dir = '$WORK/upgrade-sqlite'" "log_min_messages = warning")

t0=$(date +%s)
echo "== upgrade test: release $PREVIOUS -> $CURRENT"
# Upgrade scripts never drop data (comments and the bodies of functions they
# define aside: a function that maintains a table may delete from it).
top_level_sql() {
    python3 -c 'import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"\$([A-Za-z_]*)\$.*?\$\1\$", "$$", text, flags=re.S)
print(re.sub(r"--[^\n]*", "", text))' "$1"
}
# The released scripts and the next one expanded from its template.
rm -rf "$WORK/upgrade-scripts"
mkdir -p "$WORK/upgrade-scripts"
python3 scripts/upgrade_script.py install "$WORK/upgrade-scripts" >/dev/null
for f in sql/pg_dbrag--*--*.sql "$WORK"/upgrade-scripts/*.sql; do
    [ -e "$f" ] || continue
    if top_level_sql "$f" | grep -nEi '\b(DROP[[:space:]]+(TABLE|COLUMN|SCHEMA|OWNED)|^[[:space:]]*TRUNCATE|DELETE[[:space:]]+FROM)\b'; then
        echo "$f drops data (line above); migrate it instead"
        exit 1
    fi
done
old=$(release_build "$PREVIOUS")
install_release_files "$old"
rm -rf "$WORK/upgrade-sqlite"
mkdir -p "$WORK/upgrade-sqlite"
start_cluster_retry "$UP" "$PORT" "$DBRAG_TEST_PASSWORD" "${settings[@]}" "dbrag.master_key = '$DBRAG_TEST_MASTER_KEY'"
python3 tests/upgrade/seed.py
psql_su -d postgres -c "CREATE DATABASE dbrag_upgrade_bare"
psql_su -d dbrag_upgrade_bare -c "CREATE EXTENSION pg_dbrag VERSION '$PREVIOUS' CASCADE"
python3 tests/upgrade/snapshot.py dbrag_upgrade "$WORK/upgrade-before.json"

echo "== install $CURRENT, restart, ALTER EXTENSION pg_dbrag UPDATE"
install_extension
restart "$UP"
for db in dbrag_upgrade dbrag_upgrade_bare; do
    psql_su -d "$db" -c "ALTER EXTENSION pg_dbrag UPDATE"
    got=$(psql_su -d "$db" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_dbrag'")
    [ "$got" = "$CURRENT" ] || { echo "$db is at $got after the update, not $CURRENT"; exit 1; }
done
t_update=$(date +%s)

echo "== schema check: updated = fresh CREATE EXTENSION"
psql_su -d postgres -c "CREATE DATABASE dbrag_fresh" -c "CREATE DATABASE dbrag_tampered"
psql_su -d dbrag_fresh -c "CREATE EXTENSION pg_dbrag CASCADE"
python3 tests/upgrade/schema_check.py dbrag_fresh dbrag_upgrade_bare --rows
python3 tests/upgrade/schema_check.py dbrag_fresh dbrag_upgrade
# The check must be able to fail: a changed comment, column and grant.
psql_su -d dbrag_tampered -c "CREATE EXTENSION pg_dbrag CASCADE" \
    -c "COMMENT ON FUNCTION dbrag.current_tenant_id() IS 'changed'" \
    -c "ALTER TABLE control_plane.system_config ADD COLUMN note text" \
    -c "GRANT SELECT ON control_plane.system_config TO dbrag_app"
if python3 tests/upgrade/schema_check.py dbrag_fresh dbrag_tampered >"$WORK/tampered.diff"; then
    echo "schema check did not notice a tampered extension"
    exit 1
fi
for want in "comment: changed" "column note: text" "dbrag_app=r/postgres"; do
    grep -q "^+.*$want" "$WORK/tampered.diff" || { cat "$WORK/tampered.diff"; echo "missing: $want"; exit 1; }
done
echo "schema check: the tampered database differs as it should ($(grep -c '^[+-][^+-]' "$WORK/tampered.diff") lines)"

echo "== the updated database: rows, ciphertexts, isolation, key paths"
DBRAG_UPGRADE_DB=dbrag_upgrade DBRAG_UPGRADE_SNAPSHOT="$WORK/upgrade-before.json" DBRAG_EXPECT_VERSION=$CURRENT \
    "${PYTEST[@]}" tests/upgrade/check_upgraded.py
no_crash "$UP"
t1=$(date +%s)
echo "upgrade test: $((t1 - t0)) s in all (update and restart $((t_update - t0)) s incl. the seed and any build)"

echo "== dump (pg_dumpall --roles-only, pg_dump -Fc) and restore into a fresh cluster"
python3 tests/upgrade/snapshot.py dbrag_upgrade "$WORK/restore-before.json"
PGPASSWORD=$DBRAG_TEST_PASSWORD "$PG_BIN/pg_dumpall" -h 127.0.0.1 -p "$PORT" -U postgres --roles-only \
    -f "$WORK/roles.sql"
PGPASSWORD=$DBRAG_TEST_PASSWORD "$PG_BIN/pg_dump" -h 127.0.0.1 -p "$PORT" -U postgres -Fc \
    -f "$WORK/dbrag_upgrade.dump" dbrag_upgrade
if grep -aq "$DBRAG_TEST_MASTER_KEY" "$WORK/dbrag_upgrade.dump"; then
    echo "the dump holds the master key"
    exit 1
fi
stop_cluster "$UP"
# The fresh cluster starts WITHOUT the master key.
start_cluster_retry "$RESTORE" "$PORT" "$DBRAG_TEST_PASSWORD" "${settings[@]}"
# The bootstrap superuser exists already; every other line must apply.
psql_su -d postgres -v ON_ERROR_STOP=0 -f "$WORK/roles.sql" 2>&1 | grep -v 'role "postgres" already exists' || true
# Under the dumped database's own name: tenant schema roles are named per
# database name (docs/operations.md).
psql_su -d postgres -c "CREATE DATABASE dbrag_upgrade"
PGPASSWORD=$DBRAG_TEST_PASSWORD "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$PORT" -U postgres --exit-on-error \
    -d dbrag_upgrade "$WORK/dbrag_upgrade.dump"
export DBRAG_UPGRADE_DB=dbrag_upgrade
DBRAG_EXPECT_NO_KEY=1 "${PYTEST[@]}" tests/upgrade/check_upgraded.py -k without_the_master_key
echo "dbrag.master_key = '$DBRAG_TEST_MASTER_KEY'" >>"$RESTORE/data/postgresql.conf"
as_postgres "$PG_BIN/pg_ctl" -D "$RESTORE/data" reload >/dev/null
DBRAG_UPGRADE_SNAPSHOT="$WORK/restore-before.json" DBRAG_UPGRADE_EXACT=1 DBRAG_EXPECT_VERSION=$CURRENT \
    "${PYTEST[@]}" tests/upgrade/check_upgraded.py

echo "== the same dump restored into a second database of the same cluster"
psql_su -d postgres -c "CREATE DATABASE dbrag_copy"
PGPASSWORD=$DBRAG_TEST_PASSWORD "$PG_BIN/pg_restore" -h 127.0.0.1 -p "$PORT" -U postgres --exit-on-error \
    -d dbrag_copy "$WORK/dbrag_upgrade.dump"
DBRAG_COPY_DB=dbrag_copy "${PYTEST[@]}" tests/upgrade/check_second_copy.py
no_crash "$RESTORE"
t2=$(date +%s)
echo "dump and restore: $((t2 - t1)) s"
