#!/usr/bin/env bash
# What tenant isolation costs (issue 6): pgbench over 1,000,000 rows of
# 1,000 tenants, three ways in one run, interleaved so that drift on a busy
# machine hits them alike:
#   hand     no RLS; the query says WHERE tenant_id = '...' (a non-superuser)
#   isolated dbrag.enable_tenant_isolation; the query has no tenant filter
#   naive    a copy of the table under the per-row plpgsql
#            check_tenant_access(tenant_id) policy of
#            shared/design-notes/rls-tenant-isolation.md
# Scenarios:
#   A  one tenant per session (a member login role: no call at all), random
#      keys: the policy's own cost. Shapes: one row by key; the tenant's
#      1,000 rows aggregated.
#   B  a different random tenant every transaction, by key: the application
#      server (dbrag_app) sends dbrag.set_tenant(uuid, true) and the query in
#      one round trip (pgbench's \; compound statement); the hand-written
#      script sends the uuid and the query the same way.
# A shared or busy machine makes single runs swing by tens of percent, so
# hand and isolated alternate in short runs, round after round (the order
# flips each round), and the summary gives the median tps and the median of
# the per-round ratios (each taken between two runs seconds apart).
# Starts and stops its own cluster; about 6 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
unset RUST_BACKTRACE
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_rls}
PORT=${DBRAG_BENCH_PORT:-55520}
DUR=${DUR:-5}           # seconds per pgbench run
RUNS=${RUNS:-8}         # rounds of hand and isolated, interleaved
NAIVE_RUNS=${NAIVE_RUNS:-2}  # rounds that also run the (slow) naive policy
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
PW=bench-pw
mkdir -p "$WORK"; chmod 755 "$WORK"
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
start_cluster "$WORK/pg" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.jwt_secret = 'bench'" "max_parallel_workers_per_gather = 0" "log_min_messages = warning"
trap 'stop_cluster "$WORK/pg"' EXIT
export PGPASSWORD=$PW PGHOST=127.0.0.1 PGPORT=$PORT
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"
$PSQL -U postgres -d postgres -c "CREATE DATABASE bench"
PSQL="$PSQL -U postgres -d bench"
$PSQL -c "CREATE EXTENSION pg_dbrag CASCADE"

T_FIXED=00000000-0000-4000-8000-0000000001f4   # tenant 500, scenario A
echo "== loading 1,000 tenants x 1,000 rows into three tables"
t0=$(date +%s)
$PSQL <<SQL
INSERT INTO control_plane.tenants (tenant_id, name)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'bench_' || g
FROM generate_series(1, 1000) g;
CREATE SCHEMA bench;
CREATE TABLE bench.hand (
    tenant_id uuid NOT NULL, id integer NOT NULL, amount integer NOT NULL, note text NOT NULL,
    PRIMARY KEY (tenant_id, id));
INSERT INTO bench.hand
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, i, (t * 7 + i * 13) % 1000,
       'row ' || i || ' of tenant ' || t
FROM generate_series(1, 1000) t, generate_series(1, 1000) i;
CREATE TABLE bench.isolated (LIKE bench.hand INCLUDING ALL);
INSERT INTO bench.isolated SELECT * FROM bench.hand;
CREATE TABLE bench.naive (LIKE bench.hand INCLUDING ALL);
INSERT INTO bench.naive SELECT * FROM bench.hand;

SELECT dbrag.enable_tenant_isolation('bench.isolated');

-- The design note's policy, reading the tenant pg_dbrag has in force.
CREATE FUNCTION bench.check_tenant_access(row_tenant uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS \$\$
BEGIN
    IF current_setting('is_superuser', true)::boolean THEN
        RETURN TRUE;
    END IF;
    RETURN dbrag.current_tenant_id() IS NOT NULL AND dbrag.current_tenant_id() = row_tenant;
END
\$\$;
ALTER TABLE bench.naive ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation_select ON bench.naive FOR SELECT USING (bench.check_tenant_access(tenant_id));
CREATE POLICY tenant_isolation_insert ON bench.naive FOR INSERT WITH CHECK (bench.check_tenant_access(tenant_id));
CREATE POLICY tenant_isolation_update ON bench.naive FOR UPDATE USING (bench.check_tenant_access(tenant_id))
    WITH CHECK (bench.check_tenant_access(tenant_id));
CREATE POLICY tenant_isolation_delete ON bench.naive FOR DELETE USING (bench.check_tenant_access(tenant_id));
VACUUM ANALYZE bench.hand;
VACUUM ANALYZE bench.isolated;
VACUUM ANALYZE bench.naive;

-- hand: a plain role; member: a login role of tenant 500; switcher: the application server.
CREATE ROLE bench_hand LOGIN PASSWORD '$PW';
CREATE ROLE bench_member LOGIN PASSWORD '$PW';
CREATE ROLE bench_switcher LOGIN PASSWORD '$PW' IN ROLE dbrag_app;
GRANT USAGE ON SCHEMA bench TO PUBLIC;
GRANT SELECT ON bench.hand TO bench_hand;
GRANT SELECT ON bench.isolated, bench.naive TO bench_member, bench_switcher;
SELECT dbrag.add_tenant_member('$T_FIXED', 'bench_member');
SQL
echo "loaded in $(( $(date +%s) - t0 )) s: $($PSQL -At -c "SELECT count(*) FROM bench.hand") rows per table"

# Sanity: each way returns the same rows, and plans as expected.
check() {  # role, query
    $PG_BIN/psql -X -At -U "$1" -d bench -c "$2"
}
hand_n=$(check bench_hand "SELECT count(*), sum(amount) FROM bench.hand WHERE tenant_id = '$T_FIXED'")
iso_n=$(check bench_member "SELECT count(*), sum(amount) FROM bench.isolated")
naive_n=$(check bench_member "SELECT count(*), sum(amount) FROM bench.naive")
echo "tenant 500 as seen by each way: hand=$hand_n isolated=$iso_n naive=$naive_n"
[ "$hand_n" = "$iso_n" ] && [ "$iso_n" = "$naive_n" ] || { echo "the three ways disagree"; exit 1; }
echo "plans (one row by key):"
for q in "bench_hand|SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = 42" \
         "bench_member|SELECT * FROM bench.isolated WHERE id = 42" \
         "bench_member|SELECT * FROM bench.naive WHERE id = 42"; do
    echo "  ${q#*|}"
    check "${q%%|*}" "EXPLAIN (COSTS OFF) ${q#*|}" | sed 's/^/      /'
done

mkdir -p "$WORK/scripts"
S=$WORK/scripts
printf '%s\n' '\set k random(1, 1000)' "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" >"$S/a_key_hand.sql"
printf '%s\n' '\set k random(1, 1000)' 'SELECT * FROM bench.isolated WHERE id = :k;' >"$S/a_key_isolated.sql"
printf '%s\n' '\set k random(1, 1000)' 'SELECT * FROM bench.naive WHERE id = :k;' >"$S/a_key_naive.sql"
printf '%s\n' "SELECT count(*), sum(amount) FROM bench.hand WHERE tenant_id = '$T_FIXED';" >"$S/a_all_hand.sql"
printf '%s\n' 'SELECT count(*), sum(amount) FROM bench.isolated;' >"$S/a_all_isolated.sql"
printf '%s\n' 'SELECT count(*), sum(amount) FROM bench.naive;' >"$S/a_all_naive.sql"
TENANT_EXPR="('00000000-0000-4000-8000-' || lpad(to_hex(:t), 12, '0'))::uuid"
printf '%s\n' '\set t random(1, 1000)' '\set k random(1, 1000)' \
    "SELECT $TENANT_EXPR AS tenant \\;" \
    "SELECT * FROM bench.hand WHERE tenant_id = $TENANT_EXPR AND id = :k;" >"$S/b_key_hand.sql"
printf '%s\n' '\set t random(1, 1000)' '\set k random(1, 1000)' \
    "SELECT dbrag.set_tenant($TENANT_EXPR, true) \\;" \
    'SELECT * FROM bench.isolated WHERE id = :k;' >"$S/b_key_isolated.sql"
printf '%s\n' '\set t random(1, 1000)' '\set k random(1, 1000)' \
    "SELECT dbrag.set_tenant($TENANT_EXPR, true) \\;" \
    'SELECT * FROM bench.naive WHERE id = :k;' >"$S/b_key_naive.sql"

RESULTS=$WORK/results.txt
: >"$RESULTS"
bench() {  # scenario-shape, way, role, protocol
    local out tps n
    out=$($PG_BIN/pgbench -n -U "$3" -M "$4" -c "$CLIENTS" -j "$THREADS" -T "$DUR" \
          -f "$S/$1_$2.sql" bench 2>&1) || { echo "$out"; exit 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
    n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    echo "$ROUND $1 $2 $tps $n" >>"$RESULTS"
    printf '  %-8s %-9s run: %12s tps  (%s transactions)\n' "$1" "$2" "$tps" "$n"
}
echo "== pgbench: $CLIENTS clients, $THREADS threads, ${DUR}s per run, $RUNS rounds, hand and isolated"
echo "   alternating (their order flips every round), naive in the first $NAIVE_RUNS rounds"
echo "   load before: $(cut -d' ' -f1-3 /proc/loadavg)"
pair() {  # shape, hand role, isolated role, protocol
    if [ $((ROUND % 2)) = 1 ]; then
        bench "$1" hand "$2" "$4"; bench "$1" isolated "$3" "$4"
    else
        bench "$1" isolated "$3" "$4"; bench "$1" hand "$2" "$4"
    fi
    [ "$ROUND" -gt "$NAIVE_RUNS" ] || bench "$1" naive "$3" "$4"
}
for ROUND in $(seq "$RUNS"); do
    pair a_key bench_hand bench_member prepared
    pair a_all bench_hand bench_member prepared
    pair b_key bench_hand bench_switcher simple
done
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== summary (median tps of the runs)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
runs, by_round = {}, {}
for line in open(sys.argv[1]):
    rnd, shape, way, tps, n = line.split()
    runs.setdefault((shape, way), []).append(float(tps))
    by_round[(rnd, shape, way)] = float(tps)
med = {k: statistics.median(v) for k, v in runs.items()}

def round_ratio(shape, a, b):
    r = [by_round[(rnd, s, w)] / by_round[(rnd, s, b)]
         for (rnd, s, w) in by_round if s == shape and w == a and (rnd, s, b) in by_round]
    return statistics.median(r) if r else None

names = {"a_key": "A  one row by key, tenant per session",
         "a_all": "A  tenant's 1,000 rows (count, sum)",
         "b_key": "B  one row by key, set_tenant per txn"}
print(f"{'scenario':40} {'hand':>9} {'isolated':>9} {'naive':>8} {'iso/hand':>9} {'iso/naive':>10}")
for shape in ("a_key", "a_all", "b_key"):
    h, i, n = (med.get((shape, w)) for w in ("hand", "isolated", "naive"))
    ih = round_ratio(shape, "isolated", "hand")
    ino = round_ratio(shape, "isolated", "naive") or (i / n if i and n else None)
    print(f"{names[shape]:40} {h:9.0f} {i:9.0f} {n:8.1f} {ih:9.3f} {ino:9.0f}x")
print("(tps: median of the runs; ratios: median of the per-round ratios)")
goal = round_ratio("a_key", "isolated", "hand")
print(f"\ngoal, scenario A by key: isolated >= 0.95 x hand-written: {goal:.3f} -> "
      f"{'met' if goal >= 0.95 else 'NOT met'}")
PY
