#!/usr/bin/env bash
# pg_dbrag on Citus (issue 16): a coordinator and two workers against one
# plain node, all on this machine, in one run. 200 tenants x 1,000 rows in
# an isolated table (dbrag.enable_tenant_isolation) and in the same table
# without row security (the hand-written filter), distributed by tenant_id.
# pgbench as a tenant's member login role (the tenant reaches the workers
# from the login role itself):
#   key     one row by the tenant's key (a router query on Citus)
#   insert  one row into the tenant's table
#   app     one row by key as the application server (dbrag_app): the tenant
#           put in force once per session with set_tenant(uuid), then
#           autocommit queries (on Citus each opens a remote transaction
#           that carries the signed tenant to the worker)
#   key1    the key shape with ONE client: latency of an unsaturated server
#           (with CLIENTS clients on this 2-core machine the figure is
#           throughput under saturation, not latency)
#   report1 ONE client, member login: the tenant's count and sum over its
#           1,000 rows, the shape of a question's answer (a router query
#           that does some work on the worker, where key1 does almost none),
#           and the same without the tenant filter (row security alone)
#   hook    Citus only, one client, member login, the isolated key query with
#           pg_dbrag's executor hook on, and off (dbrag.citus_tenant_forwarding
#           = off for a second member role), in adjacent runs
#   ask1    ONE client, member login: dbrag.ask() of a new question each
#           time, the model fixture answering the report shape without a
#           tenant filter (as a model writes it); on Citus pg_dbrag plans it
#           for the tenant's shard; compared with a second member role that
#           has dbrag.citus_shard_pruning = off (every shard), adjacent runs
#   tx      the application server inside a transaction block, the pattern a
#           transaction-pooling PgBouncer imposes: BEGIN; set_tenant(uuid,
#           true) or set_tenant(token, true); the key query; COMMIT, against
#           the hand-written BEGIN; the key query; COMMIT; and, to split the
#           gap, the hand-written transaction with a set_config statement
#           and set_tenant(uuid) before the hand-written table (five scripts
#           in one run); dbrag.audit_tenant_switches = off for bench_app
# Per cluster, hand-written and isolated run in the SAME pgbench run (two
# scripts of weight 1; for app and hook, in adjacent runs), compared by mean
# latency from pgbench's transaction log, as bench/rls_overhead.sh does;
# single node and Citus alternate, RUNS times each (median, and min-max of
# the ratios). Needs Citus installed (scripts/citus_build.sh). About 11
# minutes for RUNS=3.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
unset RUST_BACKTRACE
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_citus}
PORT=${DBRAG_BENCH_PORT:-55560}     # single node; Citus on PORT+1..PORT+3
DUR=${DUR:-10}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
PW=bench-pw
SECRET=bench-secret-0123456789abcdef
mkdir -p "$WORK"; chmod 755 "$WORK"
PG_CONFIG=$PG_CONFIG bash scripts/citus_build.sh
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
COMMON=("dbrag.jwt_secret = '$SECRET'" "max_parallel_workers_per_gather = 0" "log_min_messages = warning")
start_cluster "$WORK/single" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" "${COMMON[@]}"
for n in 0 1 2; do
    start_cluster "$WORK/citus$n" $((PORT + 1 + n)) "$PW" "shared_preload_libraries = 'citus,pg_dbrag'" \
        "citus.node_conninfo = 'sslmode=disable'" "${COMMON[@]}"
done
MODEL_PORT=${DBRAG_BENCH_MODEL_PORT:-18093}
python3 tests/fixtures/llm_server.py --port "$MODEL_PORT" \
    --default-answer $'```sql\nSELECT count(*) AS n, sum(amount) AS total FROM isolated WHERE id <= 1000\n```' \
    >"$WORK/model.log" 2>&1 &
MODEL_PID=$!
trap 'kill $MODEL_PID 2>/dev/null || true; stop_cluster "$WORK/single"; for n in 0 1 2; do stop_cluster "$WORK/citus$n"; done' EXIT
export PGPASSWORD=$PW PGHOST=127.0.0.1
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -U postgres"
T_FIXED=00000000-0000-4000-8000-000000000064   # tenant 100

for n in 0 1 2; do
    $PSQL -p $((PORT + 1 + n)) -d postgres -c "CREATE DATABASE bench"
    $PSQL -p $((PORT + 1 + n)) -d bench -c "CREATE EXTENSION citus" \
        -c "INSERT INTO pg_dist_authinfo VALUES (0, 'postgres', 'password=$PW'), (-1, 'postgres', 'password=$PW')"
done
$PSQL -p $((PORT + 1)) -d bench -c "SELECT citus_set_coordinator_host('127.0.0.1', $((PORT + 1)))" \
    -c "SELECT citus_add_node('127.0.0.1', $((PORT + 2)))" -c "SELECT citus_add_node('127.0.0.1', $((PORT + 3)))"
$PSQL -p "$PORT" -d postgres -c "CREATE DATABASE bench"

load() {  # port, distribute (0/1)
    local port=$1 dist=$2
    $PSQL -p "$port" -d bench <<SQL
CREATE EXTENSION IF NOT EXISTS pg_dbrag CASCADE;
-- Tenants first, then the distribution: the populated-install path.
INSERT INTO control_plane.tenants (tenant_id, name)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'bench_' || g
FROM generate_series(1, 200) g;
$( [ "$dist" = 1 ] && echo "SELECT count(*) FROM dbrag.distribute_control_plane();" )
CREATE SCHEMA bench;
CREATE TABLE bench.hand (tenant_id uuid NOT NULL, id bigint NOT NULL, amount int NOT NULL, note text NOT NULL,
                         PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.isolated (LIKE bench.hand INCLUDING ALL);
SELECT dbrag.enable_tenant_isolation('bench.isolated');
$( [ "$dist" = 1 ] && echo "SELECT create_distributed_table('bench.hand', 'tenant_id', colocate_with => 'control_plane.tenant_databases');
SELECT create_distributed_table('bench.isolated', 'tenant_id', colocate_with => 'control_plane.tenant_databases');" )
INSERT INTO bench.hand
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, i, (t * 7 + i * 13) % 1000, 'row ' || i
FROM generate_series(1, 200) t, generate_series(1, 1000) i;
INSERT INTO bench.isolated SELECT * FROM bench.hand;
VACUUM ANALYZE bench.hand;
VACUUM ANALYZE bench.isolated;
CREATE ROLE bench_member LOGIN PASSWORD '$PW';
GRANT USAGE ON SCHEMA bench TO bench_member;
GRANT SELECT, INSERT ON bench.hand, bench.isolated TO bench_member;
SELECT dbrag.add_tenant_member('$T_FIXED', 'bench_member');
CREATE ROLE bench_member_nohook LOGIN PASSWORD '$PW';
GRANT USAGE ON SCHEMA bench TO bench_member_nohook;
GRANT SELECT ON bench.isolated TO bench_member_nohook;
SELECT dbrag.add_tenant_member('$T_FIXED', 'bench_member_nohook');
-- pg_dbrag's executor hook off for this role's sessions (hook on/off runs).
ALTER ROLE bench_member_nohook SET dbrag.citus_tenant_forwarding = off;
-- ask(): the tenant's role reads the isolated table; a second member role
-- with shard pruning off (ask runs, pruned and not, in adjacent runs).
SELECT format('GRANT USAGE ON SCHEMA bench TO %I', tenant_role) FROM control_plane.tenants WHERE tenant_id = '$T_FIXED' \gexec
SELECT format('GRANT SELECT ON bench.isolated TO %I', tenant_role) FROM control_plane.tenants WHERE tenant_id = '$T_FIXED' \gexec
CREATE ROLE bench_member_noprune LOGIN PASSWORD '$PW';
SELECT dbrag.add_tenant_member('$T_FIXED', 'bench_member_noprune');
ALTER ROLE bench_member_noprune SET dbrag.citus_shard_pruning = off;
ALTER DATABASE bench SET dbrag.llm_url = 'http://127.0.0.1:$MODEL_PORT/v1';
ALTER DATABASE bench SET dbrag.llm_model = 'fixture';
CREATE ROLE bench_app LOGIN PASSWORD '$PW';
GRANT dbrag_app TO bench_app;
-- Per-transaction set_tenant without an audit row per switch, as the
-- application server behind a transaction pooler runs it (README, "set_tenant
-- per transaction behind PgBouncer").
ALTER ROLE bench_app SET dbrag.audit_tenant_switches = off;
GRANT USAGE ON SCHEMA bench TO bench_app;
GRANT SELECT, INSERT ON bench.hand, bench.isolated TO bench_app;
SQL
}
echo "== loading 200 tenants x 1,000 rows (single node, then Citus)"
load "$PORT" 0
load $((PORT + 1)) 1
# Citus reaches the workers as the client's role: its password for that.
for n in 0 1 2; do
    $PSQL -p $((PORT + 1 + n)) -d bench \
        -c "INSERT INTO pg_dist_authinfo VALUES (0, 'bench_member', 'password=$PW'), (-1, 'bench_member', 'password=$PW')" \
        -c "INSERT INTO pg_dist_authinfo VALUES (0, 'bench_app', 'password=$PW'), (-1, 'bench_app', 'password=$PW')" \
        -c "INSERT INTO pg_dist_authinfo VALUES (0, 'bench_member_nohook', 'password=$PW'), (-1, 'bench_member_nohook', 'password=$PW')" \
        -c "INSERT INTO pg_dist_authinfo VALUES (0, 'bench_member_noprune', 'password=$PW'), (-1, 'bench_member_noprune', 'password=$PW')"
done
# The tenant's catalog (a local connection to schema bench), for ask().
for p in "$PORT" $((PORT + 1)); do
    $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -U bench_member -p "$p" -d bench \
        -c "SELECT dbrag.activate_connection(dbrag.create_connection('bench', 'local', NULL, 'bench'))" \
        -c "SELECT count(*) FROM dbrag.sync_catalog()" >/dev/null
done

check() { $PG_BIN/psql -X -At -U bench_member -p "$1" -d bench -c "$2"; }
for p in "$PORT" $((PORT + 1)); do
    h=$(check "$p" "SELECT count(*), sum(amount) FROM bench.hand WHERE tenant_id = '$T_FIXED'")
    i=$(check "$p" "SELECT count(*), sum(amount) FROM bench.isolated")
    echo "port $p: tenant 100 hand=$h isolated=$i"
    [ "$h" = "$i" ] || { echo "hand-written and isolated disagree"; exit 1; }
done

mkdir -p "$WORK/scripts" "$WORK/log"; rm -f "$WORK"/log/*
S=$WORK/scripts
printf '%s\n' '\set n random(1, 1000000000)' "SELECT * FROM dbrag.ask('the tenant report, case ' || :n);" >"$S/ask.sql"
printf '%s\n' '\set k random(1, 1000)' "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" >"$S/key_hand.sql"
printf '%s\n' '\set k random(1, 1000)' "SELECT * FROM bench.isolated WHERE tenant_id = '$T_FIXED' AND id = :k;" >"$S/key_isolated.sql"
# (ids up to 1,000: the loaded rows, not those the insert runs add.)
printf '%s\n' "SELECT count(*), sum(amount) FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id <= 1000;" >"$S/report_hand.sql"
printf '%s\n' "SELECT count(*), sum(amount) FROM bench.isolated WHERE tenant_id = '$T_FIXED' AND id <= 1000;" >"$S/report_isolated.sql"
# The same without the tenant filter, as a model's SQL may come: row security
# alone keeps the other tenants' rows out, but Citus plans by the query's own
# filters, so on Citus this one runs on every shard.
printf '%s\n' "SELECT count(*), sum(amount) FROM bench.isolated WHERE id <= 1000;" >"$S/report_unfiltered.sql"
printf '%s\n' '\set k random(1000000, 1000000000)' \
    "INSERT INTO bench.hand VALUES ('$T_FIXED', :k, 1, 'new') ON CONFLICT DO NOTHING;" >"$S/insert_hand.sql"
printf '%s\n' '\set k random(1000000, 1000000000)' \
    "INSERT INTO bench.isolated VALUES ('$T_FIXED', :k, 1, 'new') ON CONFLICT DO NOTHING;" >"$S/insert_isolated.sql"

# The application server's way: dbrag_app puts the tenant in force once per
# session (set_tenant outside a transaction block), then autocommit queries.
# Its hand-written baseline runs as the same role without a tenant, in the
# pgbench run just before (a client holds one session-level tenant, so the
# two cannot share a run).
printf '%s\n' '\set k random(1, 1000)' "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" >"$S/app_hand.sql"
printf '%s\n' '\if :tenant_set = 0' "SELECT dbrag.set_tenant('$T_FIXED'::uuid);" '\set tenant_set 1' '\endif' \
    '\set k random(1, 1000)' "SELECT * FROM bench.isolated WHERE tenant_id = '$T_FIXED' AND id = :k;" >"$S/app_isolated.sql"

# The application server inside a transaction block (transaction pooling):
# the tenant for the transaction only, by uuid or by a signed token.
TOKEN=$(python3 - "$SECRET" "$T_FIXED" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda r: base64.urlsafe_b64encode(r).rstrip(b"=").decode()
now = int(time.time())
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b(json.dumps({"tenant_id": sys.argv[2], "iat": now, "exp": now + 7200}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b(sig)}")
PY
)
printf '%s\n' '\set k random(1, 1000)' 'BEGIN;' "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" \
    'COMMIT;' >"$S/tx_hand.sql"
printf '%s\n' '\set k random(1, 1000)' 'BEGIN;' "SELECT dbrag.set_tenant('$T_FIXED'::uuid, true);" \
    "SELECT * FROM bench.isolated WHERE tenant_id = '$T_FIXED' AND id = :k;" 'COMMIT;' >"$S/tx_uuid.sql"
printf '%s\n' '\set k random(1, 1000)' 'BEGIN;' "SELECT dbrag.set_tenant('$TOKEN', true);" \
    "SELECT * FROM bench.isolated WHERE tenant_id = '$T_FIXED' AND id = :k;" 'COMMIT;' >"$S/tx_token.sql"
# Where the transaction's gap comes from: the hand-written transaction with
# one more statement (set_config, no pg_dbrag), and set_tenant before the
# hand-written table (the tenant forwarded, no row security).
printf '%s\n' '\set k random(1, 1000)' 'BEGIN;' "SELECT pg_catalog.set_config('app.tenant', '$T_FIXED', true);" \
    "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" 'COMMIT;' >"$S/tx_hand_set.sql"
printf '%s\n' '\set k random(1, 1000)' 'BEGIN;' "SELECT dbrag.set_tenant('$T_FIXED'::uuid, true);" \
    "SELECT * FROM bench.hand WHERE tenant_id = '$T_FIXED' AND id = :k;" 'COMMIT;' >"$S/tx_uuid_hand.sql"

run() {  # label, port, scripts...  (C: clients, default CLIENTS)
    local label=$1 port=$2 user=bench_member clients=${C:-$CLIENTS} threads=$THREADS
    shift 2
    case $label in app*|tx*) user=bench_app ;; hookoff*) user=bench_member_nohook ;; asknoprune*) user=bench_member_noprune ;; esac
    [ "$clients" -lt "$threads" ] && threads=$clients
    local files=()
    for f in "$@"; do files+=(-f "$S/$f.sql@1"); done
    $PG_BIN/pgbench -n -U "$user" -D tenant_set=0 -p "$port" -M prepared -c "$clients" -j "$threads" -T "$DUR" \
        -l --log-prefix="$WORK/log/$label" "${files[@]}" bench >/dev/null 2>"$WORK/pgbench.err" \
        || { cat "$WORK/pgbench.err"; exit 1; }
}
echo "== pgbench: $CLIENTS clients (key1, hook: 1), ${DUR}s per run, $RUNS runs; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$RUNS"); do
    for shape in key insert; do
        run "$shape.single.$r" "$PORT" "${shape}_hand" "${shape}_isolated"
        run "$shape.citus.$r" $((PORT + 1)) "${shape}_hand" "${shape}_isolated"
    done
    for where in single citus; do
        p=$PORT; [ $where = citus ] && p=$((PORT + 1))
        run "apphand.$where.$r" "$p" app_hand
        run "appiso.$where.$r" "$p" app_isolated
        run "tx.$where.$r" "$p" tx_hand tx_uuid tx_token tx_hand_set tx_uuid_hand
        C=1 run "key1.$where.$r" "$p" key_hand key_isolated
        C=1 run "report1.$where.$r" "$p" report_hand report_isolated report_unfiltered
        C=1 run "asknoprune.$where.$r" "$p" ask
        C=1 run "askprune.$where.$r" "$p" ask
    done
    # Hook on and off, one client, alternating which goes first.
    if [ $((r % 2)) = 1 ]; then order="hookon hookoff"; else order="hookoff hookon"; fi
    for h in $order; do C=1 run "$h.citus.$r" $((PORT + 1)) key_isolated; done
done
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/log" "$CLIENTS" <<'PY'
import glob, os, statistics, sys
logdir, clients = sys.argv[1], int(sys.argv[2])
lat = {}
for path in glob.glob(os.path.join(logdir, "*")):
    shape, where, run = os.path.basename(path).split(".")[:3]
    d = lat.setdefault((shape, where, run), {})
    for line in open(path):
        f = line.split()
        d.setdefault(int(f[3]), []).append(int(f[2]))
# app: the hand-written baseline and the isolated script ran in adjacent runs;
# hook: on (as the baseline) and off in adjacent runs; tx: three scripts,
# split into a uuid and a token comparison against the same hand-written one.
for (shape, where, run) in list(lat):
    if shape == "appiso":
        lat[("app", where, run)] = {0: lat[("apphand", where, run)][0], 1: lat[(shape, where, run)][0]}
    if shape == "hookon":
        lat[("hook", where, run)] = {0: lat[("hookoff", where, run)][0], 1: lat[(shape, where, run)][0]}
    if shape == "askprune":
        lat[("ask", where, run)] = {0: lat[("asknoprune", where, run)][0], 1: lat[(shape, where, run)][0]}
    if shape == "report1":
        lat[("reportall", where, run)] = {0: lat[(shape, where, run)][0], 1: lat[(shape, where, run)][2]}
    if shape == "tx":
        t = lat[(shape, where, run)]
        lat[("txuuid", where, run)] = {0: t[0], 1: t[1]}
        lat[("txtoken", where, run)] = {0: t[0], 1: t[2]}
        lat[("txstmt", where, run)] = {0: t[0], 1: t[3]}
        lat[("txset", where, run)] = {0: t[3], 1: t[4]}
        lat[("txrls", where, run)] = {0: t[4], 1: t[1]}
print(f"\n{'':42} {'hand us':>9} {'isolated us':>12} {'iso/hand tps':>13} {'(min-max)':>13}")
med = {}
names = {"key": "key, member", "insert": "insert, member", "app": "key, app set_tenant",
         "key1": "key, member, 1 client", "report1": "report, member, 1 client",
         "reportall": "report, no tenant filter, 1 client",
         "ask": "ask(), member, 1 client, pruning off->on", "txuuid": "key, app, tx + set_tenant(uuid)",
         "txtoken": "key, app, tx + set_tenant(token)", "hook": "key, member, 1 client, hook off->on",
         "txstmt": "tx: + set_config stmt (no dbrag)", "txset": "tx: set_config -> set_tenant(uuid)",
         "txrls": "tx: hand table -> isolated table"}
for shape in ("key", "insert", "app", "key1", "report1", "reportall", "ask", "txuuid", "txtoken", "txstmt", "txset", "txrls", "hook"):
    for where in ("single", "citus"):
        runs = sorted(k for k in lat if k[0] == shape and k[1] == where)
        if not runs:
            continue
        h = [statistics.mean(lat[k][0]) for k in runs]
        i = [statistics.mean(lat[k][1]) for k in runs]
        ratios = [a / b for a, b in zip(h, i)]
        med[(shape, where)] = (statistics.median(h), statistics.median(i))
        print(f"{names[shape] + ' on ' + where:42} {statistics.median(h):9.0f} {statistics.median(i):12.0f} "
              f"{statistics.median(ratios):13.3f} {min(ratios):6.3f}-{max(ratios):.3f}")
for shape in ("key", "insert", "app", "key1", "report1", "reportall", "ask", "txuuid", "txtoken"):
    hs, is_ = med[(shape, "single")]
    hc, ic = med[(shape, "citus")]
    first, second = ("pruned", "every shard") if shape == "ask" else ("isolated", "hand-written")
    print(f"{names[shape]}: latency on Citus / single node = {ic / is_:.2f}x {first}, {hc / hs:.2f}x {second}")
PY
