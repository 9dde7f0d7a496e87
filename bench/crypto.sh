#!/usr/bin/env bash
# Encrypt/decrypt calls per second: dbrag.encrypt/decrypt (AES-256-GCM, key
# parsed once per backend) against pgcrypto's pgp_sym_encrypt/decrypt (S2K
# key derivation on every call) and plain encrypt/decrypt(..., 'aes') (AES-256-CBC,
# no authentication, no nonce), in one run on a throwaway cluster that this
# script starts and stops.
#
#   bash bench/crypto.sh            # N=100000 calls (pgp_sym_*: N/50)
#   N=20000 bash bench/crypto.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

N=${N:-100000}
PGP_N=$(( N / 50 ))
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench}
PORT=${DBRAG_BENCH_PORT:-55499}
PW=bench-pw
KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f

mkdir -p "$WORK"
chmod 755 "$WORK"
trap 'stop_cluster "$WORK/cluster"' EXIT

bash scripts/setup.sh >/dev/null
install_extension >/dev/null
start_cluster "$WORK/cluster" "$PORT" "$PW" \
    "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.master_key = '$KEY'" \
    "log_min_messages = warning"

psql_() { PGPASSWORD=$PW "$PG_BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_ -d postgres -c "CREATE DATABASE bench"
psql_ -d bench <<SQL
CREATE EXTENSION pg_dbrag CASCADE;
CREATE EXTENSION pgcrypto;
-- Best of three runs of one statement, in calls per second.
CREATE FUNCTION pg_temp.rate(q text, n int) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; best float8 := 0; secs float8;
BEGIN
    FOR r IN 1..3 LOOP
        t0 := clock_timestamp();
        EXECUTE q USING n;
        secs := extract(epoch FROM clock_timestamp() - t0);
        best := greatest(best, n / secs);
    END LOOP;
    RETURN best;
END \$\$;
CREATE TEMP TABLE input AS SELECT i, 'postgresql://app:s3cret-' || i || '@db.example:5432/sales' AS plain
    FROM generate_series(1, $N) i;
CREATE TEMP TABLE sealed AS SELECT i, dbrag.encrypt(plain, 'tenant-ctx') AS c FROM input;
CREATE TEMP TABLE pgp AS SELECT i, pgp_sym_encrypt(plain, 'passphrase') AS c FROM input WHERE i <= $PGP_N;
CREATE TEMP TABLE aes AS SELECT i, encrypt(convert_to(plain, 'UTF8'), decode('$KEY', 'hex'), 'aes') AS c FROM input;
ANALYZE input, sealed, pgp, aes;
CREATE TEMP TABLE results AS
SELECT 'dbrag.encrypt' AS fn, pg_temp.rate('SELECT count(dbrag.encrypt(plain, ''tenant-ctx'')) FROM input WHERE i <= \$1', $N) AS per_sec
UNION ALL SELECT 'dbrag.decrypt', pg_temp.rate('SELECT count(dbrag.decrypt(c, ''tenant-ctx'')) FROM sealed WHERE i <= \$1', $N)
UNION ALL SELECT 'pgp_sym_encrypt', pg_temp.rate('SELECT count(pgp_sym_encrypt(plain, ''passphrase'')) FROM input WHERE i <= \$1', $PGP_N)
UNION ALL SELECT 'pgp_sym_decrypt', pg_temp.rate('SELECT count(pgp_sym_decrypt(c, ''passphrase'')) FROM pgp WHERE i <= \$1', $PGP_N)
UNION ALL SELECT 'encrypt(aes)', pg_temp.rate('SELECT count(encrypt(convert_to(plain, ''UTF8''), decode(''$KEY'', ''hex''), ''aes'')) FROM input WHERE i <= \$1', $N)
UNION ALL SELECT 'decrypt(aes)', pg_temp.rate('SELECT count(convert_from(decrypt(c, decode(''$KEY'', ''hex''), ''aes''), ''UTF8'')) FROM aes WHERE i <= \$1', $N);
\echo
\echo calls per second (best of 3; N=$N, pgp_sym_* N=$PGP_N)
SELECT fn, round(per_sec::numeric) AS calls_per_sec FROM results;
\echo ratios (goal: >= 30x pgp_sym_*, within 2x of plain encrypt(aes), i.e. ratio to aes >= 0.5)
SELECT
  round(((SELECT per_sec FROM results WHERE fn = 'dbrag.encrypt') / (SELECT per_sec FROM results WHERE fn = 'pgp_sym_encrypt'))::numeric, 1) AS encrypt_vs_pgp,
  round(((SELECT per_sec FROM results WHERE fn = 'dbrag.decrypt') / (SELECT per_sec FROM results WHERE fn = 'pgp_sym_decrypt'))::numeric, 1) AS decrypt_vs_pgp,
  round(((SELECT per_sec FROM results WHERE fn = 'dbrag.encrypt') / (SELECT per_sec FROM results WHERE fn = 'encrypt(aes)'))::numeric, 2) AS encrypt_vs_aes,
  round(((SELECT per_sec FROM results WHERE fn = 'dbrag.decrypt') / (SELECT per_sec FROM results WHERE fn = 'decrypt(aes)'))::numeric, 2) AS decrypt_vs_aes;
SQL
