"""Tenant isolation of application tables (docs/isolation.md, issue 6):
enable_tenant_isolation, isolation_report, the auto_isolate guard and
schema-per-tenant — over real TCP connections as the tenants' own
non-superuser login roles, so every policy is in force.

Roles and event triggers are cluster- or database-wide and the test
database is shared by the whole session: every test works in a schema of
its own, and drops the roles it plants."""

import json
import uuid

import psycopg
import pytest

from conftest import ROLE_PASSWORD, connect

PARALLEL = ("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
            "SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2")


def notices(conn):
    """Collect (severity, message, hint) of every notice the server sends."""
    seen = []
    conn.add_notice_handler(lambda d: seen.append((d.severity, d.message_primary, d.message_hint or "")))
    return seen


def raises(conn, sql, sqlstate, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    assert e.value.sqlstate == sqlstate, (sql, e.value.sqlstate, str(e.value))
    return e.value


def policies(su, table):
    return sorted(r[0] for r in su.execute(
        "SELECT polname FROM pg_policy WHERE polrelid = %s::regclass", (table,)))


def forced(su, table):
    return su.execute("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
                      (table,)).fetchone()[0]


def leading_column(su, index):
    return su.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                      "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                      "WHERE i.indexrelid = %s::regclass", (index,)).fetchone()[0]


def report(conn):
    return conn.execute("SELECT severity, object, finding, fix FROM dbrag.isolation_report()").fetchall()


@pytest.fixture
def owner(su, tenants):
    """A non-superuser login role that owns the application's tables (the
    role migrations run as), in a schema of its own."""
    role = f"owner_{tenants.tag}"
    schema = f"app_{tenants.tag}"
    su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
    su.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    su.execute(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    yield role, schema
    su.execute(f"DROP SCHEMA {schema} CASCADE")
    su.execute(f"DROP OWNED BY {role}")
    su.execute(f"DROP ROLE {role}")


def test_app_table_isolation_at_100k_rows(su, tenants, owner):
    role, schema = owner
    t = f"{schema}.orders"
    with tenants.conn(role) as o:
        o.execute(f"CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY, tenant_id uuid, "
                  "sku text, amount integer)")
        # 100,000 rows: 1,000 of A, 1,000 of B, the rest spread over 98 other tenants.
        others = [str(uuid.uuid4()) for _ in range(98)]
        o.execute(f"INSERT INTO {t} (tenant_id, sku, amount) "
                  "SELECT CASE WHEN g %% 100 = 0 THEN %s::uuid WHEN g %% 100 = 1 THEN %s::uuid "
                  "ELSE (%s::uuid[])[1 + g %% 98] END, 'sku' || g, g FROM generate_series(1, 100000) g",
                  (tenants.a, tenants.b, others))
        o.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO PUBLIC")
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (t,))
        o.execute(f"ANALYZE {t}")
        assert forced(su, t)
        assert policies(su, t) == ["dbrag_tenant_delete", "dbrag_tenant_insert",
                                   "dbrag_tenant_select", "dbrag_tenant_update"]
        # The owner is bound too (FORCE): no tenant in force, no rows.
        assert o.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0
        b_id = su.execute(f"SELECT id FROM {t} WHERE tenant_id = %s LIMIT 1", (tenants.b,)).fetchone()[0]
        # Changing a table's isolation leaves an audit row.
        assert su.execute("SELECT login_role, detail->>'tenant_column' FROM control_plane.audit_log "
                          "WHERE event = 'isolation_enabled' AND detail->>'table' = %s", (t,)).fetchall() \
            == [(role, "tenant_id")]

    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        assert a.execute(f"SELECT count(*), count(DISTINCT tenant_id), min(tenant_id::text) FROM {t}").fetchone() \
            == (1000, 1, str(tenants.a))
        assert b.execute(f"SELECT count(*), min(tenant_id::text) FROM {t}").fetchone() == (1000, str(tenants.b))
        # The planner turns the policy into a scan of the tenant-first index.
        plan = json.dumps(a.execute(f"EXPLAIN (FORMAT JSON) SELECT * FROM {t}").fetchone()[0])
        assert "Index" in plan and "Seq Scan" not in plan, plan
        # Parallel workers see the tenant too.
        a.execute(PARALLEL)
        a.execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
        plan = json.dumps(a.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {t}").fetchone()[0])
        assert '"Workers Launched": 2' in plan or '"Workers Launched": 1' in plan, plan[:400]
        assert a.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 1000
        a.execute("RESET ALL")
        # B's row cannot be read, changed or deleted by A, even by its key.
        assert a.execute(f"SELECT count(*) FROM {t} WHERE id = %s", (b_id,)).fetchone()[0] == 0
        assert a.execute(f"UPDATE {t} SET amount = 0 WHERE id = %s", (b_id,)).rowcount == 0
        assert a.execute(f"DELETE FROM {t} WHERE id = %s", (b_id,)).rowcount == 0
        # Inserting without a tenant uses the one in force.
        new_id, new_tenant = a.execute(f"INSERT INTO {t} (sku, amount) VALUES ('new', 1) "
                                       "RETURNING id, tenant_id").fetchone()
        assert new_tenant == tenants.a
        # Writing a row for the other tenant, or moving one there, fails with 42501.
        raises(a, f"INSERT INTO {t} (tenant_id, sku) VALUES (%s, 'x')", "42501", (tenants.b,))
        raises(a, f"UPDATE {t} SET tenant_id = %s WHERE id = %s", "42501", (tenants.b, new_id))
        assert b.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 1000

    with tenants.conn(tenants.stranger) as s:
        assert s.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0
        with pytest.raises(psycopg.Error) as e:
            s.execute(f"INSERT INTO {t} (sku) VALUES ('orphan')")
        assert e.value.sqlstate in ("42501", "23502")
    assert su.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 100001


def test_enable_refuses_clearly_and_is_idempotent(su, tenants, owner):
    role, schema = owner
    with tenants.conn(role) as o:
        # Rows without a tenant: refused, nothing changed.
        o.execute(f"CREATE TABLE {schema}.half (id int, tenant_id uuid)")
        o.execute(f"INSERT INTO {schema}.half VALUES (1, %s), (2, NULL), (3, NULL)", (tenants.a,))
        e = raises(o, "SELECT dbrag.enable_tenant_isolation(%s)", "23502", (f"{schema}.half",))
        assert "2 row(s) without a tenant" in str(e) and "UPDATE" in e.diag.message_hint
        assert not forced(su, f"{schema}.half") and policies(su, f"{schema}.half") == []
        o.execute(f"UPDATE {schema}.half SET tenant_id = %s WHERE tenant_id IS NULL", (tenants.b,))
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.half",))
        assert forced(su, f"{schema}.half")

        # No tenant column and rows: the column is not added behind the caller's back.
        o.execute(f"CREATE TABLE {schema}.legacy (id int)")
        o.execute(f"INSERT INTO {schema}.legacy VALUES (1)")
        e = raises(o, "SELECT dbrag.enable_tenant_isolation(%s)", "23502", (f"{schema}.legacy",))
        assert "ADD COLUMN" in e.diag.message_hint
        assert su.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'tenant_id'",
                          (f"{schema}.legacy",)).fetchone()[0] == 0

        # An empty table gets the column, its default and NOT NULL; twice is the same as once.
        o.execute(f"CREATE TABLE {schema}.fresh (id int)")
        for _ in range(2):
            o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.fresh",))
        col = su.execute("SELECT format_type(atttypid, atttypmod), attnotnull, "
                         "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
                         "JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                         "WHERE a.attrelid = %s::regclass AND a.attname = 'tenant_id'",
                         (f"{schema}.fresh",)).fetchone()
        assert col == ("uuid", True, "dbrag.current_tenant_id()")
        assert len(policies(su, f"{schema}.fresh")) == 4
        assert su.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass",
                          (f"{schema}.fresh",)).fetchone()[0] == 1

        # A custom tenant column name.
        o.execute(f"CREATE TABLE {schema}.custom (id int, org uuid NOT NULL)")
        o.execute("SELECT dbrag.enable_tenant_isolation(%s, 'org')", (f"{schema}.custom",))
        q = su.execute("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = %s::regclass "
                       "AND polname = 'dbrag_tenant_select'", (f"{schema}.custom",)).fetchone()[0]
        assert q == "(org = dbrag.current_tenant_id())"

        # Bad arguments.
        o.execute(f"CREATE TABLE {schema}.texty (tenant_id text)")
        raises(o, "SELECT dbrag.enable_tenant_isolation(%s)", "22023", (f"{schema}.texty",))
        o.execute(f"CREATE VIEW {schema}.v AS SELECT 1 AS x")
        raises(o, "SELECT dbrag.enable_tenant_isolation(%s)", "42809", (f"{schema}.v",))
        raises(o, "SELECT dbrag.enable_tenant_isolation(NULL)", "22004")
        raises(o, "SELECT dbrag.enable_tenant_isolation(%s, '')", "22004", (f"{schema}.fresh",))
    # Only the owner may; pg_dbrag's own tables are managed by the extension.
    with tenants.conn(tenants.a_role) as a:
        raises(a, "SELECT dbrag.enable_tenant_isolation(%s)", "42501", (f"{schema}.fresh",))
        raises(a, "SELECT dbrag.disable_tenant_isolation(%s)", "42501", (f"{schema}.fresh",))
    raises(su, "SELECT dbrag.enable_tenant_isolation('control_plane.query_history')", "22023")
    raises(su, "SELECT dbrag.disable_tenant_isolation('control_plane.query_history')", "22023")

    # disable: policies and RLS go; column and data stay.
    with tenants.conn(role) as o:
        o.execute("SELECT dbrag.disable_tenant_isolation(%s)", (f"{schema}.half",))
    assert policies(su, f"{schema}.half") == [] and not forced(su, f"{schema}.half")
    assert su.execute(f"SELECT count(*) FROM {schema}.half").fetchone()[0] == 3


def test_unique_keys_reported_then_rebuilt_tenant_first(su, tenants, owner):
    role, schema = owner
    t = f"{schema}.customers"
    with tenants.conn(role) as o:
        o.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, tenant_id uuid NOT NULL, "
                  "email text, code text UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        o.execute(f"CREATE UNIQUE INDEX customers_email_lower ON {t} (lower(email)) WHERE email IS NOT NULL")
        o.execute(f"GRANT SELECT, INSERT ON {t} TO PUBLIC")
        seen = notices(o)
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (t,))
        warned = [m for sev, m, _ in seen if sev == "WARNING"]
        for name in ("customers_pkey", "customers_code_key", "customers_email_lower"):
            assert any(name in m and "does not lead with tenant_id" in m for m in warned), (name, warned)
        assert all("rebuild_unique => true" in h for sev, m, h in seen if "does not lead" in m)

    # The leak the warning is about: B learns that A holds an e-mail address.
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute(f"INSERT INTO {t} (id, email, code) VALUES (1, 'ceo@a.example', 'A1')")
        raises(b, f"INSERT INTO {t} (id, email, code) VALUES (2, 'CEO@a.example', 'B1')", "23505")

    with tenants.conn(role) as o:
        seen = notices(o)
        o.execute("SELECT dbrag.enable_tenant_isolation(%s, rebuild_unique => true)", (t,))
        assert sum("rebuilt" in m for _, m, _ in seen) == 3, seen
    for index in ("customers_pkey", "customers_code_key", "customers_email_lower"):
        assert leading_column(su, f"{schema}.{index}") == "tenant_id", index
    # Same kinds, same options: primary key, deferrable unique constraint, partial expression index.
    kinds = dict(su.execute("SELECT conname, contype::text || condeferrable::text FROM pg_constraint "
                            "WHERE conrelid = %s::regclass AND contype IN ('p', 'u')", (t,)).fetchall())
    assert kinds == {"customers_pkey": "pfalse", "customers_code_key": "utrue"}
    assert su.execute("SELECT pg_get_indexdef(%s::regclass)", (f"{schema}.customers_email_lower",)).fetchone()[0] \
        .endswith("(tenant_id, lower(email)) WHERE (email IS NOT NULL)")

    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        # Now each tenant has its own key space; a duplicate within one tenant still fails.
        b.execute(f"INSERT INTO {t} (id, email, code) VALUES (1, 'CEO@a.example', 'A1')")
        raises(a, f"INSERT INTO {t} (id, email, code) VALUES (1, 'x@a.example', 'A9')", "23505")
    assert not [r for r in report(su) if r[1].endswith(f"on {t}")]

    # A key that a foreign key depends on is not rebuilt behind its back.
    with tenants.conn(role) as o:
        o.execute(f"CREATE TABLE {schema}.plans (id int PRIMARY KEY, tenant_id uuid NOT NULL)")
        o.execute(f"CREATE TABLE {schema}.subs (plan_id int REFERENCES {schema}.plans)")
        e = raises(o, "SELECT dbrag.enable_tenant_isolation(%s, rebuild_unique => true)", "2BP01",
                   (f"{schema}.plans",))
        assert "subs_plan_id_fkey" in str(e)
    assert leading_column(su, f"{schema}.plans_pkey") == "id" and not forced(su, f"{schema}.plans")


def test_partitioned_table_and_its_partitions(su, tenants, owner):
    role, schema = owner
    t = f"{schema}.events"
    with tenants.conn(role) as o:
        o.execute(f"CREATE TABLE {t} (tenant_id uuid, region text, n int) PARTITION BY LIST (region)")
        o.execute(f"CREATE TABLE {schema}.events_eu PARTITION OF {t} FOR VALUES IN ('eu')")
        o.execute(f"CREATE TABLE {schema}.events_us PARTITION OF {t} FOR VALUES IN ('us') PARTITION BY RANGE (n)")
        o.execute(f"CREATE TABLE {schema}.events_us_low PARTITION OF {schema}.events_us FOR VALUES FROM (0) TO (100)")
        o.execute(f"INSERT INTO {t} VALUES (%s, 'eu', 1), (%s, 'eu', 2), (%s, 'us', 3)",
                  (tenants.a, tenants.b, tenants.a))
        o.execute(f"GRANT SELECT ON {t}, {schema}.events_eu, {schema}.events_us, {schema}.events_us_low TO PUBLIC")
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (t,))
    for part in ("events", "events_eu", "events_us", "events_us_low"):
        assert forced(su, f"{schema}.{part}") and len(policies(su, f"{schema}.{part}")) == 4, part
    with tenants.conn(tenants.a_role) as a:
        assert a.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 2
        # Queried directly, a partition applies its own (identical) policies.
        assert a.execute(f"SELECT count(*) FROM {schema}.events_eu").fetchone()[0] == 1
        assert a.execute(f"SELECT count(*) FROM {schema}.events_us_low").fetchone()[0] == 1
    assert not [r for r in report(su) if schema in r[1]]


@pytest.fixture
def planted(su, tenants, owner):
    """One of each mistake the report must find, in the owner's schema, plus
    a BYPASSRLS login role (cluster-wide: dropped afterwards)."""
    role, schema = owner
    bypasser = f"bypass_{tenants.tag}"
    su.execute(f"CREATE ROLE {bypasser} LOGIN BYPASSRLS")
    with tenants.conn(role) as o:
        # Row-level security enabled, with the right policy, but not forced.
        o.execute(f"CREATE TABLE {schema}.unforced (id int, tenant_id uuid NOT NULL)")
        o.execute(f"CREATE INDEX ON {schema}.unforced (tenant_id)")
        o.execute(f"ALTER TABLE {schema}.unforced ENABLE ROW LEVEL SECURITY")
        o.execute(f"CREATE POLICY p ON {schema}.unforced USING (tenant_id = dbrag.current_tenant_id())")
        # The naive per-row plpgsql policy of the design note.
        o.execute(f"CREATE FUNCTION {schema}.check_tenant_access(t uuid) RETURNS boolean LANGUAGE plpgsql "
                  "AS $$ BEGIN RETURN t = dbrag.current_tenant_id(); END $$")
        o.execute(f"CREATE TABLE {schema}.naive (id int, tenant_id uuid NOT NULL)")
        o.execute(f"CREATE INDEX ON {schema}.naive (tenant_id)")
        o.execute(f"ALTER TABLE {schema}.naive ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        o.execute(f"CREATE POLICY naive_access ON {schema}.naive USING ({schema}.check_tenant_access(tenant_id))")
        # A unique constraint that spans tenants, on an otherwise isolated table.
        o.execute(f"CREATE TABLE {schema}.accounts (id int, tenant_id uuid NOT NULL, login text UNIQUE)")
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.accounts",))
        o.execute(f"GRANT SELECT, INSERT ON {schema}.accounts TO PUBLIC")
    # A view over the isolated table, owned by a superuser, without security_invoker,
    # and a SECURITY DEFINER function without a pinned search_path.
    su.execute(f"CREATE VIEW {schema}.all_accounts AS SELECT * FROM {schema}.accounts")
    su.execute(f"GRANT SELECT ON {schema}.all_accounts TO PUBLIC")
    su.execute(f"CREATE FUNCTION {schema}.count_accounts() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
               f"AS $$ SELECT count(*) FROM {schema}.accounts $$")
    yield schema, bypasser
    su.execute(f"DROP ROLE IF EXISTS {bypasser}")


def test_report_finds_each_planted_mistake_and_is_clean_after_the_fixes(su, tenants, planted):
    schema, bypasser = planted
    # The view is a real leak: through it, A reads B's rows.
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute(f"INSERT INTO {schema}.accounts (id, login) VALUES (1, 'a-admin')")
        b.execute(f"INSERT INTO {schema}.accounts (id, login) VALUES (2, 'b-admin')")
        assert a.execute(f"SELECT count(*) FROM {schema}.all_accounts").fetchone()[0] == 2

    rows = [r for r in report(su) if schema in r[1] or bypasser in r[1]]
    by_object = {}
    for sev, obj, finding, fix in rows:
        by_object.setdefault(obj, []).append((sev, finding, fix))

    def find(obj, word):
        hits = [f for f in by_object.get(obj, []) if word in f[1]]
        assert hits, (obj, word, rows)
        return hits[0]

    assert find(f"table {schema}.unforced", "not forced")[0] == "warning"
    sev, finding, fix = find(f"policy naive_access on {schema}.naive", "not index-friendly")
    assert sev == "warning" and "plpgsql" in finding and "DROP POLICY naive_access" in fix
    assert find(f"unique constraint accounts_login_key (login) on {schema}.accounts",
                "does not include tenant_id")[0] == "warning"
    sev, finding, fix = find(f"view {schema}.all_accounts", "security_invoker")
    assert sev == "critical" and "bypasses row-level security" in finding
    assert fix == f"ALTER VIEW {schema}.all_accounts SET (security_invoker = true);"
    sev, finding, fix = find(f"function {schema}.count_accounts()", "search_path")
    assert sev == "critical" and "SET search_path = pg_catalog, pg_temp" in fix
    assert find(f"role {bypasser}", "BYPASSRLS")[0] == "warning"
    assert {r[0] for r in rows} <= {"critical", "warning"}

    # Every fix is a statement that runs as it stands.
    for _, _, _, fix in rows:
        su.execute(fix)
    assert [r for r in report(su) if schema in r[1] or bypasser in r[1]] == []

    # ... and the view leak is closed.
    with tenants.conn(tenants.a_role) as a:
        assert a.execute(f"SELECT login FROM {schema}.all_accounts").fetchall() == [("a-admin",)]


def test_report_flags_more_ways_to_leak(su, tenants, owner):
    role, schema = owner
    with tenants.conn(role) as o:
        o.execute(f"CREATE TABLE {schema}.open (tenant_id uuid)")
        o.execute(f"CREATE TABLE {schema}.wide (tenant_id uuid NOT NULL)")
        o.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.wide",))
        o.execute(f"CREATE POLICY everyone ON {schema}.wide USING (true)")
        o.execute(f"CREATE TABLE {schema}.spoof (tenant_id uuid NOT NULL)")
        o.execute(f"ALTER TABLE {schema}.spoof ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        o.execute(f"CREATE POLICY guc ON {schema}.spoof "
                  "USING (tenant_id = current_setting('app.current_tenant_id')::uuid)")
        o.execute(f"CREATE MATERIALIZED VIEW {schema}.snapshot AS SELECT * FROM {schema}.wide")
        o.execute(f"CREATE TABLE {schema}.parts (tenant_id uuid, k int) PARTITION BY LIST (k)")
        o.execute(f"CREATE TABLE {schema}.parts_1 PARTITION OF {schema}.parts FOR VALUES IN (1)")
    setter = f"setter_{tenants.tag}"
    su.execute(f"CREATE ROLE {setter} LOGIN")
    su.execute(f"GRANT pg_read_all_data TO {setter}")  # not a bypass: must not be reported
    su.execute(f"CREATE ROLE super_{tenants.tag} NOLOGIN SUPERUSER")
    su.execute(f"GRANT super_{tenants.tag} TO {setter}")
    try:
        rows = {(r[1], r[0]): r for r in report(su) if schema in r[1] or tenants.tag in r[1]}
        assert (f"table {schema}.open", "critical") in rows
        assert "not enabled" in rows[(f"table {schema}.open", "critical")][2]
        assert "lets every row through" in rows[(f"policy everyone on {schema}.wide", "critical")][2]
        assert "any client can change" in rows[(f"policy guc on {schema}.spoof", "critical")][2]
        assert (f"materialized view {schema}.snapshot", "critical") in rows
        assert "partition" in rows[(f"table {schema}.parts_1", "critical")][2]
        assert (f"table {schema}.open", "warning") in rows  # no tenant-first index either
        r = rows[(f"role {setter}", "warning")]
        assert f"SET ROLE super_{tenants.tag}" in r[2] and r[3] == f"REVOKE super_{tenants.tag} FROM {setter};"
        # Any role can run the report: the catalogs it reads are public.
        with tenants.conn(tenants.a_role) as a:
            assert {(r[1], r[0]) for r in report(a) if schema in r[1]} == \
                {k for k in rows if schema in k[0]}
    finally:
        su.execute(f"DROP ROLE {setter}")
        su.execute(f"DROP ROLE super_{tenants.tag}")


def test_report_on_a_clean_database(su, tenants):
    """A fresh database with pg_dbrag: its control plane comes out clean; what
    remains are cluster-wide roles — the bootstrap superuser as 'info'."""
    db = f"clean_{tenants.tag}"
    su.execute(f"CREATE DATABASE {db}")
    try:
        with connect(dbname=db) as c:
            c.execute("CREATE EXTENSION pg_dbrag CASCADE")
            rows = report(c)
            bypass_logins = {f"role {r[0]}" for r in c.execute(
                "SELECT quote_ident(rolname) FROM pg_roles WHERE rolcanlogin AND (rolsuper OR rolbypassrls)")}
        assert ("info", "role postgres") in {(r[0], r[1]) for r in rows}
        assert [r for r in rows if not r[1].startswith("role ")] == []
        assert {r[1] for r in rows if r[1].startswith("role ") and "SET ROLE" not in r[2]} == bypass_logins
    finally:
        su.execute(f"DROP DATABASE {db} WITH (FORCE)")
    # In the shared test database, nothing of pg_dbrag's own is reported either.
    assert [r for r in report(su) if "control_plane." in r[1] or "dbrag." in r[1]] == []


def test_auto_isolate_setting_is_superuser_only_and_validated(su, tenants):
    assert su.execute("SHOW dbrag.auto_isolate").fetchone()[0] == "off"
    raises(su, "SET dbrag.auto_isolate = 'sometimes'", "22023")
    with tenants.conn(tenants.a_role) as a:
        raises(a, "SET dbrag.auto_isolate = 'off'", "42501")


def test_auto_isolate_warn(su, tenants):
    schema = f"warn_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}")
    seen = notices(su)
    su.execute("SET dbrag.auto_isolate = 'warn'")
    try:
        su.execute(f"CREATE TABLE {schema}.t1 (id int, tenant_id uuid)")
        su.execute(f"CREATE TABLE {schema}.plain (id int)")
        su.execute(f"CREATE TEMP TABLE scratch_{tenants.tag} (tenant_id uuid)")
        warned = [(m, h) for sev, m, h in seen if sev == "WARNING"]
        assert len(warned) == 1 and f"{schema}.t1" in warned[0][0]
        assert f"dbrag.enable_tenant_isolation('{schema}.t1', 'tenant_id')" in warned[0][1]
        assert not forced(su, f"{schema}.t1")
        # Adding a tenant column later warns too.
        su.execute(f"ALTER TABLE {schema}.plain ADD COLUMN tenant_id uuid")
        assert sum(f"{schema}.plain" in m for sev, m, _ in seen if sev == "WARNING") == 1
        # pg_dbrag's own DDL raises no warning while it isolates, even when it fails half-way...
        del seen[:]
        su.execute(f"INSERT INTO {schema}.t1 VALUES (1, NULL)")
        raises(su, "SELECT dbrag.enable_tenant_isolation(%s)", "23502", (f"{schema}.t1",))
        su.execute(f"DELETE FROM {schema}.t1")
        su.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.t1",))
        assert [m for sev, m, _ in seen if sev == "WARNING"] == []
        # ... and a failure does not leave the guard switched off.
        su.execute(f"CREATE TABLE {schema}.t2 (tenant_id uuid)")
        assert any(f"{schema}.t2" in m for sev, m, _ in seen if sev == "WARNING")
    finally:
        su.execute("RESET dbrag.auto_isolate")
        su.execute(f"DROP SCHEMA {schema} CASCADE")


def test_auto_isolate_enforce(su, tenants, owner):
    role, schema = owner
    # An operator turns it on for the migration role; that role cannot turn it off.
    su.execute(f"ALTER ROLE {role} SET dbrag.auto_isolate = 'enforce'")
    with tenants.conn(role) as o:
        seen = notices(o)
        assert o.execute("SHOW dbrag.auto_isolate").fetchone()[0] == "enforce"
        raises(o, "SET dbrag.auto_isolate = 'off'", "42501")
        # A new table with a tenant column is isolated on the spot.
        o.execute(f"CREATE TABLE {schema}.orders (id int, tenant_id uuid)")
        assert forced(su, f"{schema}.orders") and len(policies(su, f"{schema}.orders")) == 4
        assert any("isolated" in m for _, m, _ in seen)
        o.execute(f"GRANT SELECT, INSERT ON {schema}.orders TO PUBLIC")
        # So are its partitions, tables made by CREATE TABLE AS, and a column added later.
        o.execute(f"CREATE TABLE {schema}.p (tenant_id uuid, k int) PARTITION BY LIST (k)")
        o.execute(f"CREATE TABLE {schema}.p1 PARTITION OF {schema}.p FOR VALUES IN (1)")
        assert forced(su, f"{schema}.p") and forced(su, f"{schema}.p1")
        # A table made elsewhere, without isolation, and then attached.
        su.execute(f"CREATE TABLE {schema}.p2 (tenant_id uuid NOT NULL, k int)")
        su.execute(f"ALTER TABLE {schema}.p2 OWNER TO {role}")
        assert not forced(su, f"{schema}.p2")
        o.execute(f"ALTER TABLE {schema}.p ATTACH PARTITION {schema}.p2 FOR VALUES IN (2)")
        assert forced(su, f"{schema}.p2")
        o.execute(f"CREATE TABLE {schema}.copy AS SELECT '{tenants.a}'::uuid AS tenant_id, 1 AS n")
        assert forced(su, f"{schema}.copy")
        o.execute(f"CREATE TABLE {schema}.late (id int)")
        o.execute(f"INSERT INTO {schema}.late VALUES (1)")
        # Rows that would have no tenant: the DDL is refused and nothing is left behind.
        e = raises(o, f"ALTER TABLE {schema}.late ADD COLUMN tenant_id uuid", "23502")
        assert "auto_isolate is enforce" in str(e)
        raises(o, f"CREATE TABLE {schema}.nulls AS SELECT NULL::uuid AS tenant_id", "23502")
        assert su.execute("SELECT to_regclass(%s)", (f"{schema}.nulls",)).fetchone()[0] is None
        o.execute(f"ALTER TABLE {schema}.late ADD COLUMN tenant_id uuid NOT NULL DEFAULT '{tenants.a}'")
        assert forced(su, f"{schema}.late")
        # Taking isolation away is undone, or refused.
        o.execute(f"ALTER TABLE {schema}.orders DISABLE ROW LEVEL SECURITY")
        assert forced(su, f"{schema}.orders")
        raises(o, "SELECT dbrag.disable_tenant_isolation(%s)", "55000", (f"{schema}.orders",))
        # A table without a tenant column is none of its business.
        o.execute(f"CREATE TABLE {schema}.lookup (code text PRIMARY KEY)")
        assert not forced(su, f"{schema}.lookup")
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"INSERT INTO {schema}.orders (id) VALUES (1)")
        assert a.execute(f"SELECT tenant_id FROM {schema}.orders").fetchall() == [(tenants.a,)]
    with tenants.conn(tenants.b_role) as b:
        assert b.execute(f"SELECT count(*) FROM {schema}.orders").fetchone()[0] == 0
    # A superuser may switch it off for one transaction, e.g. to undo isolation.
    with connect() as c:
        with c.transaction():
            c.execute("SET LOCAL dbrag.auto_isolate = 'off'")
            c.execute("SELECT dbrag.disable_tenant_isolation(%s)", (f"{schema}.orders",))
    assert not forced(su, f"{schema}.orders")
    su.execute(f"ALTER ROLE {role} RESET dbrag.auto_isolate")


@pytest.fixture
def schemas(su, tenants):
    with tenants.conn(tenants.admin_role) as ops:
        sa = ops.execute("SELECT dbrag.create_tenant_schema(%s)", (tenants.a,)).fetchone()[0]
        sb = ops.execute("SELECT dbrag.create_tenant_schema(%s)", (tenants.b,)).fetchone()[0]
    yield sa, sb
    with tenants.conn(tenants.admin_role) as ops:
        for t in (tenants.a, tenants.b):
            if su.execute("SELECT settings ? 'tenant_schema' FROM control_plane.tenants WHERE tenant_id = %s",
                          (t,)).fetchone()[0]:
                ops.execute("SELECT dbrag.drop_tenant_schema(%s, cascade => true)", (t,))


def schema_role(su, tenant):
    """The tenant's schema role in this database (named per database)."""
    return su.execute("SELECT dbrag._tenant_role_name(%s)::text", (tenant,)).fetchone()[0]


def test_schema_per_tenant_access(su, tenants, schemas):
    sa, sb = schemas
    assert sa == f"tenant_{tenants.a.hex}"
    settings = su.execute("SELECT settings FROM control_plane.tenants WHERE tenant_id = %s",
                          (tenants.a,)).fetchone()[0]
    assert settings == {"tenant_schema": sa, "tenant_schema_role": schema_role(su, tenants.a)}
    assert su.execute("SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s",
                      (schema_role(su, tenants.a),)).fetchone() == (False, False, False)
    with tenants.conn(tenants.admin_role) as ops:
        # Idempotent.
        assert ops.execute("SELECT dbrag.create_tenant_schema(%s)", (tenants.a,)).fetchone()[0] == sa
    # The schema's owner is granted to nobody; the tenant's role may use and
    # create in it.
    assert su.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                      "WHERE r.rolname = %s", (schema_role(su, tenants.a),)).fetchone()[0] == 0
    with tenants.conn(tenants.a_role) as a:
        raises(a, f"SET ROLE {schema_role(su, tenants.a)}", "42501")
        a.execute(f"SET ROLE {tenants.a_trole}")  # objects owned by the tenant's role
        a.execute(f"CREATE TABLE {sa}.sales (region text, amount int)")
        a.execute(f"INSERT INTO {sa}.sales VALUES ('north', 10)")
        a.execute("RESET ROLE")
        assert a.execute(f"SELECT sum(amount) FROM {sa}.sales").fetchone()[0] == 10
        raises(a, f"CREATE TABLE {sb}.intruder (x int)", "42501")
        raises(a, f"SET ROLE {schema_role(su, tenants.b)}", "42501")
    for role in (tenants.b_role, tenants.stranger, tenants.app_role):
        with tenants.conn(role) as c:
            raises(c, f"SELECT * FROM {sa}.sales", "42501")
    # Operators are not members of the schema's owner either.
    with tenants.conn(tenants.admin_role) as ops:
        raises(ops, f"SELECT * FROM {sa}.sales", "42501")
    # Operators only.
    with tenants.conn(tenants.a_role) as a:
        raises(a, "SELECT dbrag.create_tenant_schema(%s)", "42501", (tenants.a,))
        raises(a, "SELECT dbrag.drop_tenant_schema(%s)", "42501", (tenants.a,))
    with tenants.conn(tenants.app_role) as app:
        raises(app, "SELECT dbrag.create_tenant_schema(%s)", "42501", (tenants.b,))


def test_schema_role_follows_membership_and_status(su, tenants, schemas):
    sa, _ = schemas
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"CREATE TABLE {sa}.notes (t text)")
        a.execute(f"GRANT SELECT ON {sa}.notes TO {tenants.a_trole}")
    late = f"carol_{tenants.tag}"
    su.execute(f"CREATE ROLE {late} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    try:
        with tenants.conn(tenants.admin_role) as ops:
            ops.execute("SELECT dbrag.add_tenant_member(%s, %s)", (tenants.a, late))
        with tenants.conn(late) as c:
            assert c.execute(f"SELECT count(*) FROM {sa}.notes").fetchone()[0] == 0
        with tenants.conn(tenants.admin_role) as ops:
            ops.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (tenants.a,))
        with tenants.conn(late) as c:
            raises(c, f"SELECT count(*) FROM {sa}.notes", "42501")
        with tenants.conn(tenants.admin_role) as ops:
            ops.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (tenants.a,))
            ops.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (tenants.a, late))
        with tenants.conn(late) as c:
            raises(c, f"SELECT count(*) FROM {sa}.notes", "42501")
        with tenants.conn(tenants.a_role) as a:
            assert a.execute(f"SELECT count(*) FROM {sa}.notes").fetchone()[0] == 0
    finally:
        su.execute(f"DROP ROLE {late}")


def test_drop_tenant_schema(su, tenants, schemas):
    sa, _ = schemas
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"SET ROLE {tenants.a_trole}")
        a.execute(f"CREATE TABLE {sa}.kept (x int)")
    with tenants.conn(tenants.admin_role) as ops:
        raises(ops, "SELECT dbrag.drop_tenant_schema(%s)", "2BP01", (tenants.a,))
        ops.execute("SELECT dbrag.drop_tenant_schema(%s, cascade => true)", (tenants.a,))
        raises(ops, "SELECT dbrag.drop_tenant_schema(%s)", "42704", (tenants.a,))
        raises(ops, "SELECT dbrag.create_tenant_schema(%s)", "42704", (uuid.uuid4(),))
    assert su.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (sa,)).fetchone()[0] == 0
    assert su.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                      (schema_role(su, tenants.a),)).fetchone()[0] == 0
    assert su.execute("SELECT settings FROM control_plane.tenants WHERE tenant_id = %s",
                      (tenants.a,)).fetchone()[0] == {}
    # A role of that name made by someone else is not taken over.
    su.execute(f"CREATE ROLE {schema_role(su, tenants.a)} NOLOGIN")
    try:
        with tenants.conn(tenants.admin_role) as ops:
            raises(ops, "SELECT dbrag.create_tenant_schema(%s)", "42710", (tenants.a,))
    finally:
        su.execute(f"DROP ROLE {schema_role(su, tenants.a)}")
