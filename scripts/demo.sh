#!/usr/bin/env bash
# The main job: build pg_dbrag, install it into the system PostgreSQL 15,
# configure and start the Debian cluster 15/main, and walk two tenants
# through isolation, catalog search and (with a model configured) a question
# answered end to end.
#
#   DBRAG_LLM_URL       model API base, e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1
#   DBRAG_LLM_MODEL     model name
#   DBRAG_LLM_API_KEY   API key (stored encrypted, never in a setting)
#   DBRAG_LLM_PROVIDER  openai (default) or anthropic
#   DBRAG_DEMO_SCRIPTED_MODEL=1  use the project's scripted test model on
#                       127.0.0.1 instead of a real one (answers are canned)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh

echo "== build and install pg_dbrag into PostgreSQL 15"
install_extension

echo "== configure and start the cluster 15/main"
if ! pg_lsclusters -h 2>/dev/null | grep -q "^15 *main"; then
    pg_createcluster 15 main >/dev/null
fi
CONF_DIR=/etc/postgresql/15/main/conf.d
mkdir -p "$CONF_DIR"
if [ ! -f "$CONF_DIR/pg_dbrag.conf" ]; then
    secret=$(python3 -c "import secrets; print(secrets.token_hex(32))")
    key=$(python3 -c "import secrets; print(secrets.token_hex(32))")
    cat >"$CONF_DIR/pg_dbrag.conf" <<CONF
# pg_dbrag (written by scripts/demo.sh). Secrets: readable by postgres only.
shared_preload_libraries = 'pg_dbrag'
dbrag.jwt_secret = '$secret'
dbrag.master_key = '$key'
CONF
    chown postgres:postgres "$CONF_DIR/pg_dbrag.conf"
    chmod 600 "$CONF_DIR/pg_dbrag.conf"
fi
pg_ctlcluster 15 main restart 2>/dev/null || pg_ctlcluster 15 main start
PORT=$(pg_lsclusters -h | awk '$1 == 15 && $2 == "main" {print $3}')

su_psql() { runuser -u postgres -- psql -X -q -p "$PORT" -v ON_ERROR_STOP=1 "$@"; }
as_tenant() {  # role, sql...
    local role=$1; shift
    PGPASSWORD=demo-password psql -X -q -h 127.0.0.1 -p "$PORT" -U "$role" -d dbrag_demo -v ON_ERROR_STOP=1 "$@"
}

echo "== a demo database with two tenants"
su_psql -d postgres -c "DROP DATABASE IF EXISTS dbrag_demo WITH (FORCE)" -c "CREATE DATABASE dbrag_demo"
su_psql -d dbrag_demo <<'SQL'
CREATE EXTENSION pg_dbrag CASCADE;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'acme_analyst') THEN
    CREATE ROLE acme_analyst LOGIN PASSWORD 'demo-password';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'globex_analyst') THEN
    CREATE ROLE globex_analyst LOGIN PASSWORD 'demo-password';
  END IF;
END $$;
SELECT dbrag.add_tenant_member(dbrag.create_tenant('acme', 'Acme Corp'), 'acme_analyst');
SELECT dbrag.add_tenant_member(dbrag.create_tenant('globex', 'Globex Inc'), 'globex_analyst');

-- Each tenant's data: a schema of this database (a "local" connection).
CREATE SCHEMA acme_data;
CREATE TABLE acme_data.singer (singer_id int PRIMARY KEY, name text, country text, age int);
CREATE TABLE acme_data.concert (concert_id int PRIMARY KEY, concert_name text, year int);
CREATE TABLE acme_data.singer_in_concert (concert_id int REFERENCES acme_data.concert,
    singer_id int REFERENCES acme_data.singer, PRIMARY KEY (concert_id, singer_id));
COMMENT ON TABLE acme_data.singer IS 'artists who perform at our concerts';
INSERT INTO acme_data.singer VALUES (1, 'Joe Sharp', 'Netherlands', 52), (2, 'Timbaland', 'United States', 32),
    (3, 'Justin Brown', 'France', 29);
INSERT INTO acme_data.concert VALUES (1, 'Auditions', 2014), (2, 'Super bootcamp', 2015);
INSERT INTO acme_data.singer_in_concert VALUES (1, 1), (1, 2), (2, 3);
-- Data-plane grants go to the tenant's own role, which its members hold and
-- which pg_dbrag acts as (docs/isolation.md).
SELECT format('GRANT USAGE ON SCHEMA acme_data TO %I', dbrag.tenant_role_name(tenant_id)),
       format('GRANT SELECT ON ALL TABLES IN SCHEMA acme_data TO %I', dbrag.tenant_role_name(tenant_id))
FROM control_plane.tenants WHERE name = 'acme' \gexec

CREATE SCHEMA globex_data;
CREATE TABLE globex_data.customers (customer_id int PRIMARY KEY, name text, city text, password_hash text);
CREATE TABLE globex_data.orders (order_id int PRIMARY KEY, customer_id int REFERENCES globex_data.customers,
    total numeric, ordered_at date);
COMMENT ON TABLE globex_data.customers IS 'buyers who place orders';
INSERT INTO globex_data.customers VALUES (1, 'Ann', 'Berlin', 'x1'), (2, 'Bo', 'Paris', 'x2');
INSERT INTO globex_data.orders VALUES (1, 1, 120.5, '2026-01-03'), (2, 2, 80, '2026-02-11'), (3, 1, 42, '2026-03-01');
SELECT format('GRANT USAGE ON SCHEMA globex_data TO %I', dbrag.tenant_role_name(tenant_id)),
       format('GRANT SELECT ON ALL TABLES IN SCHEMA globex_data TO %I', dbrag.tenant_role_name(tenant_id))
FROM control_plane.tenants WHERE name = 'globex' \gexec
SQL

echo "== each tenant connects its data and syncs its catalog (as its own login role)"
as_tenant acme_analyst -c "SELECT dbrag.activate_connection(dbrag.create_connection('acme', 'local', NULL, 'acme_data'))" \
    -c "SELECT * FROM dbrag.sync_catalog()"
as_tenant globex_analyst -c "SELECT dbrag.activate_connection(dbrag.create_connection('globex', 'local', NULL, 'globex_data'))" \
    -c "SELECT * FROM dbrag.sync_catalog()"

echo "== isolation: what each tenant sees of the control plane"
for role in acme_analyst globex_analyst; do
    echo "-- as $role"
    as_tenant "$role" -c "SELECT t.name AS my_tenant, dbrag.current_tenant_id() FROM control_plane.tenants t" \
        -c "SELECT name, kind, schema_name, status FROM dbrag.connections" \
        -c "SELECT schema_name, table_name FROM control_plane.table_metadata_catalog ORDER BY 2"
done
echo "-- acme_analyst tries to take globex's tenant (each attempt must fail):"
GLOBEX=$(su_psql -d dbrag_demo -Atc "SELECT tenant_id FROM control_plane.tenants WHERE name = 'globex'")
as_tenant acme_analyst -c "SET dbrag.tenant_id = '$GLOBEX'" 2>&1 | sed 's/^/   /' || true
as_tenant acme_analyst -c "SELECT dbrag.set_tenant('$GLOBEX'::uuid)" 2>&1 | sed 's/^/   /' || true
as_tenant acme_analyst -c "SET app.current_tenant_id = '$GLOBEX'" \
    -c "SELECT count(*) AS globex_rows_visible FROM control_plane.table_metadata_catalog WHERE tenant_id = '$GLOBEX'"

echo "== catalog search in plain English"
as_tenant acme_analyst -c "SELECT * FROM dbrag.search_catalog('how many singers do we have', 3)"
as_tenant globex_analyst -c "SELECT * FROM dbrag.search_catalog('total spent per buyer', 3)"

echo "== a question answered through the model"
FIXTURE_PID=
cleanup() { [ -n "$FIXTURE_PID" ] && kill "$FIXTURE_PID" 2>/dev/null || true; }
trap cleanup EXIT
if [ "${DBRAG_DEMO_SCRIPTED_MODEL:-0}" = 1 ] && [ -z "${DBRAG_LLM_URL:-}" ]; then
    python3 tests/fixtures/llm_server.py --port 18080 >/tmp/dbrag_demo_model.log 2>&1 &
    FIXTURE_PID=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:18080/_health >/dev/null && break; sleep 0.1; done
    curl -sf -X POST http://127.0.0.1:18080/_rules -H 'content-type: application/json' -d '{"rules": [
      {"contains": "singers", "content": "```sql\nSELECT country, count(*) AS singers FROM singer GROUP BY country ORDER BY 2 DESC\n```"},
      {"contains": "buyer", "content": "```sql\nSELECT c.name, sum(o.total) AS spent FROM customers c JOIN orders o USING (customer_id) GROUP BY c.name ORDER BY spent DESC\n```"}]}' >/dev/null
    DBRAG_LLM_URL=http://127.0.0.1:18080/v1 DBRAG_LLM_MODEL=scripted DBRAG_LLM_API_KEY=demo-key
    echo "(using the scripted test model on 127.0.0.1: its answers are canned, not generated)"
fi
if [ -n "${DBRAG_LLM_URL:-}" ]; then
    su_psql -d dbrag_demo \
        -c "ALTER DATABASE dbrag_demo SET dbrag.llm_url = '${DBRAG_LLM_URL}'" \
        -c "ALTER DATABASE dbrag_demo SET dbrag.llm_model = '${DBRAG_LLM_MODEL:-gpt-4o-mini}'" \
        -c "ALTER DATABASE dbrag_demo SET dbrag.llm_provider = '${DBRAG_LLM_PROVIDER:-openai}'"
    if [ -n "${DBRAG_LLM_API_KEY:-}" ]; then
        # psql interpolates :'key' (quoted safely) only in script input, not -c.
        echo "SELECT dbrag.set_llm_api_key(:'key', global => true);" |
            su_psql -d dbrag_demo -v key="$DBRAG_LLM_API_KEY" >/dev/null
    fi
    as_tenant acme_analyst -c "SELECT dbrag.generate_sql('how many singers do we have per country')" \
        -c "SELECT * FROM dbrag.ask('how many singers do we have per country')"
    as_tenant globex_analyst -c "SELECT * FROM dbrag.ask('how much has each buyer spent')"
    as_tenant globex_analyst -c "SELECT status, generated_sql, row_count, llm_ms, execution_ms FROM control_plane.query_history ORDER BY created_at"
else
    echo "SKIPPED: no model is configured, so dbrag.generate_sql() and dbrag.ask() were not run."
    echo "         Set DBRAG_LLM_URL, DBRAG_LLM_MODEL and DBRAG_LLM_API_KEY to run them against a real model,"
    echo "         or DBRAG_DEMO_SCRIPTED_MODEL=1 to see the flow with the project's scripted test model."
    echo "-- what would be sent to the model for acme's question:"
    as_tenant acme_analyst -Atc "SELECT dbrag.build_prompt('how many singers do we have per country')->'messages'->1->>'content'"
fi
echo "== done: database dbrag_demo on port $PORT (sudo -u postgres psql -p $PORT dbrag_demo)"
