#!/usr/bin/env bash
# set_tenant in every transaction behind a connection pooler (issue 14, §5).
# pgbench through PgBouncer (transaction pooling) in front of a throwaway
# cluster, 100 tenants x 1,000 rows, one row by key per transaction:
#   hand      BEGIN; SELECT ... FROM bench.hand WHERE tenant_id = '<t>' AND id = k; COMMIT
#             (no RLS, no set_tenant: the hand-written filter)
#   isolated  BEGIN; SELECT dbrag.set_tenant('<token>', true);
#             SELECT ... FROM bench.isolated WHERE id = k; COMMIT
#             (enable_tenant_isolation; an HS256 token per tenant)
# Each transaction is one round trip (pgbench's \; compound statement), as
# an application would send it; 20 tenants, a script per tenant and way,
# all in the SAME pgbench run (each transaction picks a script at random),
# compared by mean latency per transaction from pgbench's transaction log,
# so load that comes and goes on a shared machine hits both alike.
# Throughput ratio = latency ratio. Mixed runs:
#   quiet     the role has dbrag.audit_tenant_switches = off   (the goal)
#   audited   the default, a tenant_switch audit row per transaction
#   rs256     quiet, with RS256 tokens checked against a JWKS file
# Starts and stops its own cluster and pooler; about 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
unset RUST_BACKTRACE
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_pooling}
PORT=${DBRAG_BENCH_PORT:-55530}
PGB_PORT=${DBRAG_BENCH_POOLER_PORT:-$((PORT + 1))}
DUR=${DUR:-10}          # seconds per pgbench run
RUNS=${RUNS:-3}         # mixed runs per variant
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
POOL=${POOL:-4}         # server connections behind the pooler
NT=20                   # tenants the scripts use
PW=bench-pw
mkdir -p "$WORK"; chmod 755 "$WORK"
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension

# Keys: the HS256 secret and an RSA key whose public half goes in a JWKS file.
python3 - "$WORK" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
work = sys.argv[1]
k = rsa.generate_private_key(65537, 2048)
n = k.public_key().public_numbers()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
ib = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
json.dump({"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256", "n": b64(ib(n.n)),
                     "e": b64(ib(n.e))}]}, open(f"{work}/jwks.json", "w"))
open(f"{work}/rsa.pem", "wb").write(k.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
PY
chmod 644 "$WORK/jwks.json"

start_cluster "$WORK/pg" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.jwt_secret = 'bench-secret-0123456789abcdef'" \
    "dbrag.jwt_public_keys_file = '$WORK/jwks.json'" \
    "max_parallel_workers_per_gather = 0" "log_min_messages = warning"
trap 'stop_pgbouncer "$WORK/pgbouncer"; stop_cluster "$WORK/pg"' EXIT
export PGPASSWORD=$PW PGHOST=127.0.0.1 PGPORT=$PORT
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"
$PSQL -U postgres -d postgres -c "CREATE DATABASE bench"
PSQL="$PSQL -U postgres -d bench"
$PSQL -c "CREATE EXTENSION pg_dbrag CASCADE"

echo "== loading 100 tenants x 1,000 rows into two tables"
$PSQL <<SQL
INSERT INTO control_plane.tenants (tenant_id, name)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'bench_' || g
FROM generate_series(1, 100) g;
CREATE SCHEMA bench;
CREATE TABLE bench.hand (
    tenant_id uuid NOT NULL, id integer NOT NULL, amount integer NOT NULL, note text NOT NULL,
    PRIMARY KEY (tenant_id, id));
INSERT INTO bench.hand
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, i, (t * 7 + i * 13) % 1000,
       'row ' || i || ' of tenant ' || t
FROM generate_series(1, 100) t, generate_series(1, 1000) i;
CREATE TABLE bench.isolated (LIKE bench.hand INCLUDING ALL);
INSERT INTO bench.isolated SELECT * FROM bench.hand;
SELECT dbrag.enable_tenant_isolation('bench.isolated');
VACUUM ANALYZE bench.hand;
VACUUM ANALYZE bench.isolated;
-- One application role per variant (PgBouncer pools per role).
CREATE ROLE bench_quiet LOGIN PASSWORD '$PW';
CREATE ROLE bench_audited LOGIN PASSWORD '$PW';
ALTER ROLE bench_quiet SET dbrag.audit_tenant_switches = off;
GRANT USAGE ON SCHEMA bench TO PUBLIC;
GRANT SELECT ON bench.hand, bench.isolated TO bench_quiet, bench_audited;
SQL

start_pgbouncer "$WORK/pgbouncer" "$PGB_PORT" "$PORT" "$PW" \
    "bench = host=127.0.0.1 port=$PORT dbname=bench pool_size=$POOL"

mkdir -p "$WORK/scripts" "$WORK/log"
rm -f "$WORK"/log/* "$WORK"/scripts/*
S=$WORK/scripts
# Per tenant: the hand-written script, the HS256 one and the RS256 one.
python3 - "$WORK" "$NT" <<'PY'
import base64, hashlib, hmac, json, sys, time
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
work, nt = sys.argv[1], int(sys.argv[2])
key = serialization.load_pem_private_key(open(f"{work}/rsa.pem", "rb").read(), None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def token(claims, alg):
    header = {"alg": alg, "typ": "JWT"} | ({"kid": "bench-1"} if alg == "RS256" else {})
    si = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    if alg == "HS256":
        sig = hmac.new(b"bench-secret-0123456789abcdef", si, hashlib.sha256).digest()
    else:
        sig = key.sign(si, padding.PKCS1v15(), hashes.SHA256())
    return si.decode() + "." + b64(sig)
exp = int(time.time()) + 86400
for i in range(1, nt + 1):
    t = f"00000000-0000-4000-8000-{i * 5:012x}"
    claims = {"tenant_id": t, "exp": exp}
    with open(f"{work}/scripts/hand_{i:02}.sql", "w") as f:
        f.write("\\set k random(1, 1000)\n"
                f"BEGIN \\; SELECT * FROM bench.hand WHERE tenant_id = '{t}' AND id = :k \\; COMMIT;\n")
    for alg in ("HS256", "RS256"):
        with open(f"{work}/scripts/{alg.lower()}_{i:02}.sql", "w") as f:
            f.write("\\set k random(1, 1000)\n"
                    f"BEGIN \\; SELECT dbrag.set_tenant('{token(claims, alg)}', true) \\; "
                    "SELECT * FROM bench.isolated WHERE id = :k \\; COMMIT;\n")
PY

# Sanity: both ways return the same row, through the pooler.
T5=00000000-0000-4000-8000-000000000005
TOK5=$(sed -n "s/.*set_tenant('\([^']*\)'.*/\1/p" "$S/hs256_01.sql")
via_pooler() { $PG_BIN/psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGB_PORT" -U "$1" -d bench; }
hand_row=$(echo "SELECT * FROM bench.hand WHERE tenant_id = '$T5' AND id = 42;" | via_pooler bench_quiet)
iso_row=$(printf '%s\n' "BEGIN;" "SELECT dbrag.set_tenant('$TOK5', true) \\g /dev/null" \
    "SELECT * FROM bench.isolated WHERE id = 42;" "COMMIT;" | via_pooler bench_quiet)
echo "tenant 5, id 42: hand=[$hand_row] isolated=[$iso_row]"
[ -n "$hand_row" ] && [ "$hand_row" = "$iso_row" ] || { echo "the two ways disagree"; exit 1; }

run() {  # label, role, isolated-script prefix
    local label=$1 role=$2 prefix=$3 out tps files=()
    for i in $(seq -w 1 $NT); do files+=(-f "$S/hand_$i.sql@1"); done
    for i in $(seq -w 1 $NT); do files+=(-f "$S/${prefix}_$i.sql@1"); done
    out=$($PG_BIN/pgbench -n -h 127.0.0.1 -p "$PGB_PORT" -U "$role" -M simple -c "$CLIENTS" \
          -j "$THREADS" -T "$DUR" -l --log-prefix="$WORK/log/$label" "${files[@]}" bench 2>&1) \
        || { echo "$out" | tail -20; exit 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    printf '  %-16s %9.1f tps in all, failed: %s\n' "$label" "$tps" "${failed:-0}"
}
echo "== pgbench via PgBouncer (transaction pooling, $POOL server connections): $CLIENTS clients," \
     "$THREADS threads, ${DUR}s per run; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
audit0=$($PSQL -At -c "SELECT count(*) FROM control_plane.audit_log WHERE event = 'tenant_switch'")
for r in $(seq "$RUNS"); do
    run "quiet.$r" bench_quiet hs256
    run "audited.$r" bench_audited hs256
    run "rs256.$r" bench_quiet rs256
done
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"
audit1=$($PSQL -At -c "SELECT count(*) FROM control_plane.audit_log WHERE event = 'tenant_switch'")
echo "   tenant_switch audit rows written: $((audit1 - audit0)) (only the audited runs write them)"

echo
echo "== summary"
python3 - "$WORK/log" "$CLIENTS" "$NT" <<'PY'
import glob, os, statistics, sys
logdir, clients, nt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# pgbench -l: client_id transaction_no time_us script_no epoch epoch_us
lat = {}
for path in glob.glob(os.path.join(logdir, "*")):
    variant, run = os.path.basename(path).split(".")[:2]
    d = lat.setdefault((variant, run), {"hand": [], "iso": []})
    for line in open(path):
        f = line.split()
        d["hand" if int(f[3]) < nt else "iso"].append(int(f[2]))
names = {"quiet": "set_tenant(HS256 token, true), audit off",
         "audited": "set_tenant(HS256 token, true), audited",
         "rs256": "set_tenant(RS256 token, true), audit off"}
goal = None
print(f"{'variant':44} {'hand tps':>9} {'iso tps':>9} {'iso/hand':>9}   per run")
for v in ("quiet", "audited", "rs256"):
    runs = sorted(k for k in lat if k[0] == v)
    ratios, hs, isos = [], [], []
    for k in runs:
        h, i = statistics.mean(lat[k]["hand"]), statistics.mean(lat[k]["iso"])
        hs.append(h); isos.append(i); ratios.append(h / i)
    ratio = statistics.median(ratios)
    if v == "quiet":
        goal = ratio
    h, i = statistics.median(hs), statistics.median(isos)
    print(f"{names[v]:44} {clients * 1e6 / h:9.0f} {clients * 1e6 / i:9.0f} {ratio:9.3f}   "
          f"{', '.join(f'{r:.3f}' for r in ratios)}  (mean latency {h:.0f} / {i:.0f} us)")
print("(tps-equivalent = clients / mean latency; hand and isolated from the same mixed runs,\n"
      " ratio = median over runs)")
print(f"\ngoal: set_tenant(token, true) + query >= 0.9 x hand-written: {goal:.3f} -> "
      f"{'met' if goal >= 0.9 else 'NOT met'}")
PY
