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
#  4. the value index's cost (docs/catalog-search.md, "Values"): ask() and
#     build_prompt() for a question naming a value and a typo, with the
#     tenant's index at its bound of 20,000 values against the same index
#     emptied, in the same run. Starts and stops its own cluster and model.
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

echo "== 4. the value index: 20,000 values (the per-tenant bound) against none, 1 session, ${SECONDS_PER_RUN}s each"
$PSQL -d bench -c "ALTER DATABASE bench SET dbrag.llm_url = 'http://127.0.0.1:$MODEL_PORT/v1'"
$PSQL -d bench <<'SQL'
-- The sync indexed wh.t_*.region (r0..r4, 500 values); fill the rest of the
-- bound with values of made-up tables, written the way a sync writes them.
INSERT INTO control_plane.value_index (tenant_id, connection_id, schema_name, table_name, column_name, value, value_norm)
SELECT d.tenant_id, d.connection_id, 'wh', 'syn_' || (g / 50), 'c', v, v
FROM control_plane.tenant_databases d,
     LATERAL (SELECT g, 'v' || substr(md5(g::text), 1, 7) AS v FROM generate_series(1, 20000 - 500) g) x;
ANALYZE control_plane.value_index;
SQL
cat >"$WORK/ask_value.sql" <<'SQL'
\set n random(1, 1000000000)
SELECT * FROM dbrag.ask('total amount for region r3 shipped to Lyin, case ' || :n);
SQL
cat >"$WORK/prompt_value.sql" <<'SQL'
\set n random(1, 1000000000)
SELECT dbrag.build_prompt('total amount for region r3 shipped to Lyin, case ' || :n);
SQL
cat >"$WORK/values_only.sql" <<'SQL'
\set n random(1, 1000000000)
SELECT count(*) FROM dbrag.search_values('total amount for region r3 shipped to Lyin, case ' || :n, 8);
SQL
$PSQL -d bench -c "CREATE TABLE bench_values AS SELECT tenant_id, connection_id, schema_name, table_name, column_name, value, value_norm FROM control_plane.value_index"
values_n=$(PGPASSWORD=$PW psql -X -q -h 127.0.0.1 -p "$PORT" -U bench_tenant -d bench -Atc "SELECT count(*) FROM control_plane.value_index")
# Rounds alternate between the full index and an empty one, so that the
# machine's load drifts over both alike.
round_s=$(( (SECONDS_PER_RUN + 3) / 4 ))
short() {  # name-prefix, script, round
    PGPASSWORD=$PW pgbench -n -h 127.0.0.1 -p "$PORT" -U bench_tenant -f "$2" -c 1 -j 1 -T "$round_s" \
        -l --log-prefix="$WORK/log_$1$3" bench >/dev/null 2>&1
}
rm -f "$WORK"/log_lookup* "$WORK"/log_promptv* "$WORK"/log_askv* "$WORK"/log_prompt0* "$WORK"/log_ask0*
for round in 1 2 3 4; do
    short lookup "$WORK/values_only.sql" $round
    short promptv "$WORK/prompt_value.sql" $round
    short askv "$WORK/ask_value.sql" $round
    $PSQL -d bench -c "DELETE FROM control_plane.value_index"
    short prompt0 "$WORK/prompt_value.sql" $round
    short ask0 "$WORK/ask_value.sql" $round
    $PSQL -d bench -c "INSERT INTO control_plane.value_index (tenant_id, connection_id, schema_name, table_name, column_name, value, value_norm) SELECT * FROM bench_values"
done
read -r l50 l99 <<<"$(pct "$WORK/log_lookup")"
read -r pv50 pv99 <<<"$(pct "$WORK/log_promptv")"; read -r p050 p099 <<<"$(pct "$WORK/log_prompt0")"
read -r av50 av99 <<<"$(pct "$WORK/log_askv")"; read -r a050 a099 <<<"$(pct "$WORK/log_ask0")"
printf "search_values(q, 8), %s values  p50 %6s ms  p99 %6s ms\n" "$values_n" "$l50" "$l99"
printf "build_prompt, %s values         p50 %6s ms  p99 %6s ms\n" "$values_n" "$pv50" "$pv99"
printf "build_prompt, no values             p50 %6s ms  p99 %6s ms  ratio p50 %.2f\n" "$p050" "$p099" "$(echo "$pv50 / $p050" | bc -l)"
printf "ask(),        %s values         p50 %6s ms  p99 %6s ms\n" "$values_n" "$av50" "$av99"
printf "ask(),        no values             p50 %6s ms  p99 %6s ms  ratio p50 %.2f\n" "$a050" "$a099" "$(echo "$av50 / $a050" | bc -l)"
# Inside one backend (no client round trip): 500 calls each, alternated
# three times, with the index full.
inside() {  # an expression of g (a number, so it is evaluated) -> ms per call
    PGPASSWORD=$PW psql -X -q -h 127.0.0.1 -p "$PORT" -U bench_tenant -d bench -At <<SQL | awk '/^Time:/ {print $2/500}'
\timing on
SELECT sum(x.v) FROM generate_series(1, 500) g, LATERAL (SELECT $1 AS v) x;
SQL
}
lv=0; lp=0
for round in 1 2 3; do
    lv=$(echo "$lv + $(inside "(SELECT count(*) FROM dbrag.search_values('total amount for region r3 shipped to Lyin, case ' || g, 8))")" | bc -l)
    lp=$(echo "$lp + $(inside "length(dbrag.build_prompt('total amount for region r3 shipped to Lyin, case ' || g)::text)")" | bc -l)
done
printf "in one backend: the value lookup %.3f ms a call, build_prompt %.3f ms a call (%.0f%% of it), %s values\n" \
    "$(echo "$lv / 3" | bc -l)" "$(echo "$lp / 3" | bc -l)" "$(echo "100 * $lv / $lp" | bc -l)" "$values_n"
