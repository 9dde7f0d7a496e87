#!/usr/bin/env bash
# dbrag.ask() cost (issue 5), against the project's model fixture on 127.0.0.1:
#  1. overhead with a zero-latency model, for a tenant with 100 tables:
#     p50/p99 of ask() against the same statement run directly (baseline);
#  2. throughput of 8 concurrent sessions against a model that takes 200 ms
#     per answer, as a multiple of one session's rate (backends must not
#     serialize on the model);
#  3. the cost of a tenant budget (docs/llm-and-guard.md, Budgets): ask() with
#     a zero-latency model with and without a budget (limits never reached),
#     1 and 4 sessions, short runs alternated, as a ratio within this run.
# Starts and stops its own cluster and model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_ask}
PORT=${DBRAG_BENCH_PORT:-55520}
MODEL_PORT=${DBRAG_BENCH_MODEL_PORT:-18091}
SLOW_PORT=${DBRAG_BENCH_SLOW_PORT:-18092}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
PW=bench-pw
mkdir -p "$WORK"; chmod 755 "$WORK"
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
start_cluster "$WORK/pg" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" "dbrag.jwt_secret = 'bench'" \
    "dbrag.master_key = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'"
ANSWER=$'```sql\nSELECT count(*) FROM t_1\n```'
python3 tests/fixtures/llm_server.py --port "$MODEL_PORT" --default-answer "$ANSWER" >"$WORK/model.log" 2>&1 &
M1=$!
python3 tests/fixtures/llm_server.py --port "$SLOW_PORT" --delay-ms 200 --default-answer "$ANSWER" >"$WORK/slow.log" 2>&1 &
M2=$!
trap 'kill $M1 $M2 2>/dev/null || true; stop_cluster "$WORK/pg"' EXIT
export PGPASSWORD=$PW
PSQL="psql -X -q -h 127.0.0.1 -p $PORT -U postgres -v ON_ERROR_STOP=1"
$PSQL -d postgres -c "CREATE DATABASE bench"
$PSQL -d bench <<SQL
CREATE EXTENSION pg_dbrag CASCADE;
CREATE ROLE bench_tenant LOGIN PASSWORD '$PW';
SELECT dbrag.add_tenant_member(dbrag.create_tenant('bench'), 'bench_tenant');
CREATE SCHEMA wh;
DO \$\$ BEGIN
  FOR i IN 1..100 LOOP
    EXECUTE format('CREATE TABLE wh.t_%s (id int PRIMARY KEY, name text, amount numeric, region text, created_at date)', i);
    EXECUTE format('INSERT INTO wh.t_%s SELECT g, ''n'' || g, g, ''r'' || (g %% 5), current_date FROM generate_series(1, 100) g', i);
  END LOOP;
END \$\$;
-- Data-plane grants go to the tenant's own role (what pg_dbrag acts as).
SELECT format('GRANT USAGE ON SCHEMA wh TO %I', tenant_role) FROM control_plane.tenants WHERE name = 'bench' \gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA wh TO %I', tenant_role) FROM control_plane.tenants WHERE name = 'bench' \gexec
ALTER DATABASE bench SET dbrag.llm_url = 'http://127.0.0.1:$MODEL_PORT/v1';
ALTER DATABASE bench SET dbrag.llm_model = 'fixture';
SQL
PGPASSWORD=$PW psql -X -q -h 127.0.0.1 -p "$PORT" -U bench_tenant -d bench -v ON_ERROR_STOP=1 \
    -c "SELECT dbrag.activate_connection(dbrag.create_connection('wh', 'local', NULL, 'wh'))" \
    -c "SELECT * FROM dbrag.sync_catalog()" >/dev/null

# Each ask() a new question (the cache would otherwise answer without the model).
cat >"$WORK/ask.sql" <<'SQL'
\set n random(1, 1000000000)
SELECT * FROM dbrag.ask('total amount by region in table one, case ' || :n);
SQL
cat >"$WORK/direct.sql" <<'SQL'
SET search_path = wh;
SELECT count(*) FROM t_1;
SQL
pct() {  # pgbench per-transaction log -> p50 p99 in ms
    cat "$1"* | awk '{print $3/1000}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f", a[int(NR*0.5)+1], a[int(NR*0.99)+1]}'
}
run() {  # name, script, clients, extra env
    rm -f "$WORK/log_$1"*
    PGPASSWORD=$PW pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_tenant -f "$2" -c "$3" -j "$3" -T "$SECONDS_PER_RUN" \
        -l --log-prefix="$WORK/log_$1" bench 2>/dev/null | awk '/^tps/ {print $3}'
}
echo "== 1. overhead, zero-latency model, 100-table tenant, 1 session, ${SECONDS_PER_RUN}s each"
base_tps=$(run direct "$WORK/direct.sql" 1); read -r b50 b99 <<<"$(pct "$WORK/log_direct")"
ask_tps=$(run ask "$WORK/ask.sql" 1); read -r a50 a99 <<<"$(pct "$WORK/log_ask")"
printf "baseline (the same statement run directly)  p50 %6s ms  p99 %6s ms  %8.1f tps\n" "$b50" "$b99" "$base_tps"
printf "dbrag.ask()                                  p50 %6s ms  p99 %6s ms  %8.1f tps\n" "$a50" "$a99" "$ask_tps"
PGPASSWORD=$PW psql -X -q -h 127.0.0.1 -p "$PORT" -U bench_tenant -d bench -Atc \
    "SELECT format('history: %s calls, status %s, median llm %s ms, median execution %s ms', count(*), string_agg(DISTINCT status, ','),
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY llm_ms)::numeric, 2),
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY execution_ms)::numeric, 2)) FROM control_plane.query_history"

echo "== 2. throughput against a model that takes 200 ms per answer"
$PSQL -d bench -c "ALTER DATABASE bench SET dbrag.llm_url = 'http://127.0.0.1:$SLOW_PORT/v1'"
one=$(run one "$WORK/ask.sql" 1)
eight=$(run eight "$WORK/ask.sql" 8)
printf "1 session  %6.2f asks/s\n8 sessions %6.2f asks/s  = %.2fx one session (goal >= 6x)\n" "$one" "$eight" \
    "$(echo "$eight / $one" | bc -l)"

echo "== 3. budget check: zero-latency model, with and without a budget (never reached)"
# Short runs, alternated and in flipped order every round, so that drift
# (history growing, other load on the machine) falls on both sides alike.
$PSQL -d bench -c "ALTER DATABASE bench SET dbrag.llm_url = 'http://127.0.0.1:$MODEL_PORT/v1'"
BUDGET_ROUNDS=${BUDGET_ROUNDS:-8}
BUDGET_SECONDS=${BUDGET_SECONDS:-3}
budget_run() {  # name clients calls_per_minute tokens_per_day -> tps
    $PSQL -d bench -c "SELECT dbrag.set_tenant_budget(tenant_id, $3, $4) FROM control_plane.tenants WHERE name = 'bench'" >/dev/null
    PGPASSWORD=$PW pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_tenant -f "$WORK/ask.sql" -c "$2" -j "$2" \
        -T "$BUDGET_SECONDS" bench 2>/dev/null | awk '/^tps/ {print $3}'
}
for clients in 1 4; do
    off=0; on=0
    for round in $(seq "$BUDGET_ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            a=$(budget_run off "$clients" NULL NULL); b=$(budget_run on "$clients" 1000000000 1000000000000000)
        else
            b=$(budget_run on "$clients" 1000000000 1000000000000000); a=$(budget_run off "$clients" NULL NULL)
        fi
        off=$(echo "$off + $a" | bc -l); on=$(echo "$on + $b" | bc -l)
    done
    printf "%s session(s), %s rounds of %ss: no budget %8.1f tps, budget %8.1f tps, ratio budget/none %.3f\n" \
        "$clients" "$BUDGET_ROUNDS" "$BUDGET_SECONDS" "$(echo "$off / $BUDGET_ROUNDS" | bc -l)" \
        "$(echo "$on / $BUDGET_ROUNDS" | bc -l)" "$(echo "$on / $off" | bc -l)"
done
