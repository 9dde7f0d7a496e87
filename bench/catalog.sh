#!/usr/bin/env bash
# Catalog at scale (issue 4): 2,000 tenants x 100 tables (200k catalog rows),
# search_catalog latency p50/p99 per call against the bare explicit-filter
# GIN query in the same run; one tenant's 100k-table warehouse (the term
# statistics that rank it are kept by the catalog's triggers during the
# load); and
# sync_catalog of a 1,000-table local schema. Starts and stops its own cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
WORK=${DBRAG_BENCH_WORK:-/tmp/pg_dbrag_bench_catalog}
PORT=${DBRAG_BENCH_PORT:-55510}
PW=bench-pw
SAMPLES=${SAMPLES:-2000}
mkdir -p "$WORK"; chmod 755 "$WORK"
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
start_cluster "$WORK/pg" "$PORT" "$PW" "shared_preload_libraries = 'pg_dbrag'" \
    "dbrag.jwt_secret = 'bench'" "max_parallel_workers_per_gather = 0"
trap 'stop_cluster "$WORK/pg"' EXIT
export PGPASSWORD=$PW
PSQL="psql -X -q -h 127.0.0.1 -p $PORT -U postgres -v ON_ERROR_STOP=1"
$PSQL -d postgres -c "CREATE DATABASE bench"
PSQL="$PSQL -d bench"
$PSQL -c "CREATE EXTENSION pg_dbrag CASCADE"

echo "== loading 2,000 tenants x 100 tables"
t0=$(date +%s.%N)
$PSQL <<'SQL'
CREATE TEMP TABLE vocab AS
SELECT w, row_number() OVER () AS i FROM unnest(string_to_array(
 'customer order item product invoice payment shipment supplier category employee department salary '
 'ticket agent campaign click session page view event user account address region country city store '
 'warehouse inventory stock price discount coupon refund return review rating subscription plan usage '
 'metric log audit device sensor reading alert incident project task milestone budget expense vendor '
 'contract lead opportunity deal pipeline quote forecast target channel partner license asset', ' ')) w;
INSERT INTO control_plane.tenants (tenant_id, name)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'bench_' || g
FROM generate_series(1, 2000) g;
INSERT INTO control_plane.tenant_databases (tenant_id, connection_id, name, kind, schema_name, is_active, status)
SELECT tenant_id, tenant_id, 'warehouse', 'local', 'public', true, 'connected' FROM control_plane.tenants
WHERE name LIKE 'bench_%';
-- 100 tables per tenant: two vocabulary words, columns from the vocabulary.
INSERT INTO control_plane.table_metadata_catalog
    (tenant_id, connection_id, schema_name, table_name, data_types, column_descriptions, sample_values)
SELECT d.tenant_id, d.connection_id, 'public',
       v1.w || '_' || v2.w || '_' || t,
       jsonb_build_object(v1.w || '_id', 'integer', v2.w || '_name', 'text', 'created_at', 'timestamptz',
                          v3.w || '_amount', 'numeric'),
       jsonb_build_object(v2.w || '_name', 'the ' || v2.w || ' of the ' || v1.w),
       jsonb_build_object(v2.w || '_name', jsonb_build_array('alpha', 'beta'))
FROM control_plane.tenant_databases d
CROSS JOIN generate_series(1, 100) t
JOIN vocab v1 ON v1.i = 1 + (hashint4(t * 7 + hashtext(d.tenant_id::text)) & 2147483647) % 66
JOIN vocab v2 ON v2.i = 1 + (hashint4(t * 13 + 1) & 2147483647) % 66
JOIN vocab v3 ON v3.i = 1 + (t * 5) % 66
WHERE d.name = 'warehouse';
ANALYZE control_plane.table_metadata_catalog;
SQL
t1=$(date +%s.%N)
rows=$($PSQL -At -c "SELECT count(*) FROM control_plane.table_metadata_catalog")
echo "loaded $rows catalog rows in $(echo "$t1 - $t0" | bc) s (trigger-built search vectors)"

# Latency of n calls, each for a random tenant, measured inside the server
# so the figures are the function's own cost, not the network's.
measure() {  # label, expression using tid (uuid) and q (text)
$PSQL -At <<SQL
DO \$\$
DECLARE
    d double precision[] := '{}';
    tid uuid; q text; t0 timestamptz; n int;
    questions text[] := ARRAY['total salary by department', 'how many customers per country',
        'top products by price', 'open tickets per agent', 'monthly revenue from invoices',
        'inventory stock in each warehouse', 'campaign clicks last week', 'average rating of reviews'];
BEGIN
    FOR i IN 1..$SAMPLES LOOP
        tid := ('00000000-0000-4000-8000-' || lpad(to_hex(1 + (i * 7919) % 2000), 12, '0'))::uuid;
        q := questions[1 + i % 8];
        PERFORM dbrag.set_tenant(tid, true);
        t0 := clock_timestamp();
        $2;
        d := d || (extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    RAISE NOTICE '%', (SELECT format('%s p50=%s ms p99=%s ms', '$1',
        round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 3),
        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x)::numeric, 3)) FROM unnest(d) x);
END
\$\$;
SQL
}
echo "== search, 2,000 tenants x 100 tables, $SAMPLES calls each"
measure "baseline explicit-filter GIN query" \
  "PERFORM count(*) FROM control_plane.table_metadata_catalog c, dbrag._question_query(q) qq WHERE c.tenant_id = tid AND c.search_vector @@ qq.query" 2>&1
measure "dbrag.search_catalog(q, 10)" "PERFORM count(*) FROM dbrag.search_catalog(q, 10)" 2>&1

echo "== one tenant with a 100,000-table warehouse"
$PSQL <<'SQL'
INSERT INTO control_plane.table_metadata_catalog
    (tenant_id, connection_id, schema_name, table_name, data_types)
SELECT '00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000001', 'big',
       'fact_' || g || '_' || (ARRAY['sales','orders','customers','events','payments','stock'])[1 + g % 6],
       jsonb_build_object('amount_' || (g % 50), 'numeric', 'region_' || (g % 30), 'text')
FROM generate_series(1, 100000) g;
ANALYZE control_plane.table_metadata_catalog;
SQL
SAMPLES_BIG=$((SAMPLES / 4))
# Three figures per question, interleaved so load on the machine hits them
# alike: the explicit-filter GIN query over every matching row (the rows a
# ranking that never cuts the best table has to consider), the same query
# cut at its first 2,000 rows (the old candidate set), and search_catalog,
# which takes terms rarest first and stops when no unread table can enter
# the top k.
$PSQL -At <<SQL 2>&1
DO \$\$
DECLARE
    d1 double precision[] := '{}'; d2 double precision[] := '{}'; d3 double precision[] := '{}';
    q text; t0 timestamptz;
    questions text[] := ARRAY['customers by region', 'total sales amount', 'payments per month', 'stock events'];
BEGIN
    PERFORM dbrag.set_tenant('00000000-0000-4000-8000-000000000001'::uuid, true);
    FOR i IN 1..$SAMPLES_BIG LOOP
        q := questions[1 + i % 4];
        t0 := clock_timestamp();
        PERFORM count(*) FROM control_plane.table_metadata_catalog c, dbrag._question_query(q) qq
            WHERE c.tenant_id = '00000000-0000-4000-8000-000000000001' AND c.search_vector @@ qq.query;
        d1 := d1 || (extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        PERFORM count(*) FROM (SELECT 1 FROM control_plane.table_metadata_catalog c, dbrag._question_query(q) qq
            WHERE c.tenant_id = '00000000-0000-4000-8000-000000000001' AND c.search_vector @@ qq.query LIMIT 2000) s;
        d2 := d2 || (extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        PERFORM count(*) FROM dbrag.search_catalog(q, 10);
        d3 := d3 || (extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
    RAISE NOTICE 'baseline explicit-filter GIN query (all matches) p50=% ms p99=% ms',
        (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d1) x),
        (SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d1) x);
    RAISE NOTICE 'explicit-filter GIN query (LIMIT 2000) p50=% ms p99=% ms',
        (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d2) x),
        (SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d2) x);
    RAISE NOTICE 'dbrag.search_catalog(q, 10) p50=% ms p99=% ms (p50 = %x the baseline)',
        (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d3) x),
        (SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x)::numeric, 3) FROM unnest(d3) x),
        (SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY x) /
                      (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY y) FROM unnest(d1) y))::numeric, 2)
         FROM unnest(d3) x);
END
\$\$;
SQL

echo "== sync_catalog of a 1,000-table local schema"
$PSQL <<'SQL'
CREATE SCHEMA wide;
DO $$
BEGIN
    FOR i IN 1..1000 LOOP
        EXECUTE format('CREATE TABLE wide.t%s (id int PRIMARY KEY, name text, amount numeric, created_at timestamptz, ref_id int %s)',
                       i, CASE WHEN i > 1 THEN format('REFERENCES wide.t%s', i - 1) ELSE '' END);
        EXECUTE format('INSERT INTO wide.t%s SELECT g, ''name '' || g, g * 1.5, now(), NULL FROM generate_series(1, 20) g', i);
        EXECUTE format('COMMENT ON TABLE wide.t%s IS ''table number %s of the wide schema''', i, i);
    END LOOP;
END $$;
UPDATE control_plane.tenant_databases SET schema_name = 'wide'
WHERE tenant_id = '00000000-0000-4000-8000-000000000002';
-- sync_catalog reads the schema as the tenant's own role.
SELECT format('GRANT USAGE ON SCHEMA wide TO %I', dbrag.tenant_role_name('00000000-0000-4000-8000-000000000002')) \gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA wide TO %I', dbrag.tenant_role_name('00000000-0000-4000-8000-000000000002')) \gexec
SQL
$PSQL -At <<'SQL' 2>&1
SELECT dbrag.set_tenant('00000000-0000-4000-8000-000000000002'::uuid);
\timing on
SELECT 'introspection query only (baseline)', count(*) FROM (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'wide') s;
SELECT 'first sync', * FROM dbrag.sync_catalog();
SELECT 'second sync (nothing changed)', * FROM dbrag.sync_catalog();
SQL
