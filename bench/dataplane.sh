#!/usr/bin/env bash
# Cost of running the MySQL and SQLite clients in the helper process
# (docs/engines.md, "Containment"), per call, in one run:
#  - through the backend: dbrag._dataplane_query on a one-row statement
#    (guard + helper process start + request + client work + reply), p50/p99
#    from pgbench with one session;
#  - the same request served N times inside one helper process
#    (pg_dbrag_dataplane --bench N): the client libraries' own cost, what an
#    in-process client would pay;
#  - a bare SELECT 1 through pgbench: the round trip both include.
# The containment's cost per call is the difference; the ratio is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_dataplane}
PORT=${DBRAG_BENCH_PORT:-55530}
MY_PORT=${DBRAG_BENCH_MYSQL_PORT:-55531}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
N=${BENCH_CALLS:-500}
PW=bench-pw
mkdir -p "$WORK"; chmod 755 "$WORK"
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
start_cluster "$WORK/pg" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" "dbrag.jwt_secret = 'bench'" \
    "dbrag.master_key = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'" \
    "dbrag.sqlite_dir = '$WORK/sqlite'"
start_mariadb "$WORK/mariadb" "$MY_PORT"
trap 'stop_cluster "$WORK/pg"; stop_mariadb "$WORK/mariadb"' EXIT
mariadb --no-defaults --socket="$WORK/mariadb/mysqld.sock" -u root <<SQL
CREATE DATABASE shop;
CREATE USER 'bench'@'%' IDENTIFIED BY '$PW';
GRANT SELECT ON shop.* TO 'bench'@'%';
CREATE TABLE shop.t (id int PRIMARY KEY, name varchar(50));
INSERT INTO shop.t VALUES (1, 'one'), (2, 'two'), (3, 'three');
SQL
export PGPASSWORD=$PW
PSQL="psql -X -q -A -t -h 127.0.0.1 -p $PORT -U postgres -v ON_ERROR_STOP=1"
$PSQL -d postgres -c "CREATE DATABASE bench"
$PSQL -d bench -c "CREATE EXTENSION pg_dbrag CASCADE"
TENANT=$($PSQL -d bench -c "SELECT dbrag.create_tenant('bench')")
mkdir -p "$WORK/sqlite/$TENANT"
python3 - "$WORK/sqlite/$TENANT/shop.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);"
                 "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');")
db.commit()
PY
chown -R postgres:postgres "$WORK/sqlite"
MY_URI="mysql://bench:$PW@127.0.0.1:$MY_PORT/shop"
read -r MY_CID SQ_CID < <($PSQL -d bench -F ' ' <<SQL | tail -1
SELECT dbrag.set_tenant('$TENANT'::uuid);
SELECT dbrag.create_connection('my', 'mysql', '$MY_URI'), dbrag.create_connection('sq', 'sqlite', 'shop.db');
SQL
)
$PSQL -d bench -c "SELECT dbrag.set_tenant('$TENANT'::uuid)" \
    -c "SELECT * FROM dbrag.sync_catalog('$MY_CID')" -c "SELECT * FROM dbrag.sync_catalog('$SQ_CID')" >/dev/null

STMT="SELECT id, name FROM t WHERE id = 1"
pct() {  # pgbench per-transaction log -> p50 p99 in ms
    cat "$1"* | awk '{print $3/1000}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f\n", a[int(NR*0.5)+1], a[int(NR*0.99)+1]}'
}
through_backend() {  # name sql -> "p50 p99"
    echo "$2" >"$WORK/$1.sql"
    rm -f "$WORK/log_$1"*
    # The tenant in force for the superuser's session (superuser-only setting).
    (cd "$WORK" && PGOPTIONS="-c dbrag.tenant_id=$TENANT" pgbench -n -h 127.0.0.1 -p "$PORT" -U postgres -c 1 -T "$SECONDS_PER_RUN" \
        -f "$1.sql" -l --log-prefix="log_$1" bench >/dev/null)
    pct "$WORK/log_$1"
}
in_process() {  # request-json -> "p50 p99" in ms
    python3 -c 'import sys, struct; b = sys.argv[1].encode(); sys.stdout.buffer.write(struct.pack(">I", len(b)) + b)' "$1" \
        | "$($PG_CONFIG --pkglibdir)/pg_dbrag_dataplane" --bench "$N" \
        | awk '{printf "%.3f %.3f\n", $1/1000, $2/1000}'
}
read -r base50 base99 < <(through_backend base "SELECT 1")
read -r sq50 sq99 < <(through_backend sqlite "SELECT * FROM dbrag._dataplane_query('$SQ_CID', '$STMT')")
read -r my50 my99 < <(through_backend mysql "SELECT * FROM dbrag._dataplane_query('$MY_CID', '$STMT')")
SQ_REQ="{\"op\":\"sqlite_query\",\"path\":\"$WORK/sqlite/$TENANT/shop.db\",\"sql\":\"$STMT LIMIT 101\",\"max_rows\":100,\"max_bytes\":67108864,\"timeout_ms\":10000}"
MY_REQ="{\"op\":\"mysql_query\",\"target\":{\"host\":\"127.0.0.1\",\"port\":$MY_PORT,\"user\":\"bench\",\"password\":\"$PW\",\"database\":\"shop\"},\"database\":\"shop\",\"sql\":\"$STMT LIMIT 101\",\"max_rows\":100,\"max_bytes\":67108864,\"connect_ms\":5000,\"timeout_ms\":10000}"
read -r sqi50 sqi99 < <(in_process "$SQ_REQ")
read -r myi50 myi99 < <(in_process "$MY_REQ")

echo
echo "| per call (ms) | p50 | p99 |"
echo "|---|---|---|"
echo "| SELECT 1 through pgbench (round trip) | $base50 | $base99 |"
echo "| SQLite: client work in one process (in-process cost) | $sqi50 | $sqi99 |"
echo "| SQLite: _dataplane_query through the helper process | $sq50 | $sq99 |"
echo "| MySQL: client work in one process (in-process cost) | $myi50 | $myi99 |"
echo "| MySQL: _dataplane_query through the helper process | $my50 | $my99 |"
awk -v b="$base50" -v s="$sq50" -v si="$sqi50" -v m="$my50" -v mi="$myi50" 'BEGIN {
    printf "\ncontainment cost per call (p50, less round trip and client work): SQLite %.2f ms, MySQL %.2f ms\n", s-b-si, m-b-mi;
    printf "ratio through the helper / (round trip + client work): SQLite %.2fx, MySQL %.2fx\n", s/(b+si), m/(b+mi) }'
