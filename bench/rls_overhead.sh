#!/usr/bin/env bash
# What tenant isolation costs (issue 6): pgbench over 1,000,000 rows of
# 1,000 tenants, three ways, as non-superuser roles:
#   hand     no RLS; the query says WHERE tenant_id = '...'
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
# On a shared machine single runs swing by tens of percent, far more than
# the difference looked for. So hand and isolated run in the SAME pgbench
# run (two scripts of weight 1: each transaction picks one at random), and
# are compared by their mean latency per transaction from pgbench's
# transaction log: whatever load comes and goes hits both alike. Throughput
# ratio = latency ratio; "tps-equivalent" = clients / mean latency. The
# naive policy, about 400x slower, gets runs of its own.
# Starts and stops its own cluster; about 4 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
unset RUST_BACKTRACE
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_rls}
PORT=${DBRAG_BENCH_PORT:-55520}
DUR=${DUR:-15}          # seconds per pgbench run
RUNS=${RUNS:-3}         # mixed runs per scenario
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
GRANT SELECT ON bench.hand TO bench_hand, bench_member, bench_switcher;
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

mkdir -p "$WORK/scripts" "$WORK/log"
rm -f "$WORK"/log/*
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

run() {  # label, role, protocol, script...
    local label=$1 role=$2 proto=$3 out tps
    shift 3
    local files=()
    for f in "$@"; do files+=(-f "$S/$f.sql@1"); done
    out=$($PG_BIN/pgbench -n -U "$role" -M "$proto" -c "$CLIENTS" -j "$THREADS" -T "$DUR" \
          -l --log-prefix="$WORK/log/$label" "${files[@]}" bench 2>&1) || { echo "$out"; exit 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
    printf '  %-22s %10.1f tps in all (%s)\n' "$label" "$tps" "$*"
}
echo "== pgbench: $CLIENTS clients, $THREADS threads, ${DUR}s per run; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$RUNS"); do
    run "a_key.mixed.$r" bench_member prepared a_key_hand a_key_isolated
    run "a_all.mixed.$r" bench_member prepared a_all_hand a_all_isolated
    run "b_key.mixed.$r" bench_switcher simple b_key_hand b_key_isolated
done
run a_key.naive.1 bench_member prepared a_key_naive
run a_all.naive.1 bench_member prepared a_all_naive
run b_key.naive.1 bench_switcher simple b_key_naive
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "== summary"
python3 - "$WORK/log" "$CLIENTS" <<'PY'
import glob, os, statistics, sys
logdir, clients = sys.argv[1], int(sys.argv[2])
# pgbench -l: client_id transaction_no time_us script_no epoch epoch_us
lat = {}   # (shape, kind, run) -> {script_no: [us]}
for path in glob.glob(os.path.join(logdir, "*")):
    shape, kind, run = os.path.basename(path).split(".")[:3]
    d = lat.setdefault((shape, kind, run), {})
    for line in open(path):
        f = line.split()
        d.setdefault(int(f[3]), []).append(int(f[2]))
names = {"a_key": "A  one row by key, tenant per session",
         "a_all": "A  tenant's 1,000 rows (count, sum)",
         "b_key": "B  one row by key, set_tenant per txn"}
goal = None
print(f"{'scenario':40} {'hand':>9} {'isolated':>9} {'naive':>8} {'iso/hand':>9} {'iso/naive':>10}")
for shape in ("a_key", "a_all", "b_key"):
    runs = sorted(k for k in lat if k[0] == shape and k[1] == "mixed")
    ratios, h_us, i_us = [], [], []
    for k in runs:
        h, i = statistics.mean(lat[k][0]), statistics.mean(lat[k][1])
        h_us.append(h); i_us.append(i); ratios.append(h / i)
    n_us = statistics.mean(lat[(shape, "naive", "1")][0])
    h, i = statistics.median(h_us), statistics.median(i_us)
    ratio = statistics.median(ratios)
    if shape == "a_key":
        goal = ratio
    print(f"{names[shape]:40} {clients * 1e6 / h:9.0f} {clients * 1e6 / i:9.0f} "
          f"{clients * 1e6 / n_us:8.1f} {ratio:9.3f} {n_us / i:9.0f}x")
    print(f"{'   mean latency, us':40} {h:9.1f} {i:9.1f} {n_us:8.0f}   "
          f"per run iso/hand: {', '.join(f'{r:.3f}' for r in ratios)}")
print("(tps-equivalent = clients / mean latency; hand and isolated from the same mixed runs,\n"
      " their ratio is the median over runs; naive from a run of its own)")
print(f"\ngoal, scenario A by key: isolated >= 0.95 x hand-written: {goal:.3f} -> "
      f"{'met' if goal >= 0.95 else 'NOT met'}")
PY
