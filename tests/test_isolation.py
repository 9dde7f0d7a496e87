"""Row-level security on the control plane (docs/isolation.md), tested as tenants'
login roles over TCP, never as a superuser (who bypasses every policy)."""

import json

import psycopg
import pytest

from conftest import token_for

PARALLEL = ("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
            "SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2")


def add_example(conn, q, sql="SELECT 1"):
    return conn.execute("INSERT INTO control_plane.training_examples (question, sql) VALUES (%s, %s) "
                        "RETURNING example_id", (q, sql)).fetchone()[0]


def test_each_tenant_sees_and_changes_only_its_rows(tenants):
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        ea = add_example(a, "a question")
        eb = add_example(b, "b question")
        assert [r[0] for r in a.execute("SELECT example_id FROM control_plane.training_examples")] == [ea]
        assert [r[0] for r in b.execute("SELECT example_id FROM control_plane.training_examples")] == [eb]
        # B's row cannot be seen, updated or deleted by A, even by its key.
        assert a.execute("UPDATE control_plane.training_examples SET question = 'x' WHERE example_id = %s",
                         (eb,)).rowcount == 0
        assert a.execute("DELETE FROM control_plane.training_examples WHERE example_id = %s", (eb,)).rowcount == 0
        assert b.execute("SELECT question FROM control_plane.training_examples").fetchone()[0] == "b question"
        # Writing a row for the other tenant fails with 42501.
        with pytest.raises(psycopg.Error) as e:
            a.execute("INSERT INTO control_plane.training_examples (tenant_id, question, sql) "
                      "VALUES (%s, 'q', 'SELECT 1')", (tenants.b,))
        assert e.value.sqlstate == "42501"
        # Moving one's own row to the other tenant fails with 42501.
        with pytest.raises(psycopg.Error) as e:
            a.execute("UPDATE control_plane.training_examples SET tenant_id = %s WHERE example_id = %s",
                      (tenants.b, ea))
        assert e.value.sqlstate == "42501"
        # A's own changes work.
        assert a.execute("UPDATE control_plane.training_examples SET question = 'edited' WHERE example_id = %s",
                         (ea,)).rowcount == 1


def test_no_tenant_no_rows_and_writes_fail(tenants):
    with tenants.conn(tenants.a_role) as a:
        add_example(a, "visible only to a")
    with tenants.conn(tenants.stranger) as c:
        for table in ("tenants", "tenant_members", "training_examples", "query_history",
                      "audit_log", "table_metadata_catalog"):
            assert c.execute(f"SELECT count(*) FROM control_plane.{table}").fetchone()[0] == 0, table
        with pytest.raises(psycopg.Error) as e:
            add_example(c, "orphan")
        assert e.value.sqlstate in ("42501", "23502")


def test_secrets_table_is_not_granted_to_tenants(tenants):
    with tenants.conn(tenants.a_role) as a:
        for sql in ("SELECT * FROM control_plane.tenant_databases",
                    "SELECT * FROM control_plane.system_config",
                    "INSERT INTO control_plane.audit_log (event) VALUES ('forged')",
                    "UPDATE control_plane.tenants SET status = 'active'",
                    "DELETE FROM control_plane.audit_log"):
            with pytest.raises(psycopg.Error) as e:
                a.execute(sql)
            assert e.value.sqlstate == "42501", sql


def test_only_dbrag_admin_sees_across_tenants(tenants):
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        add_example(a, "qa")
        add_example(b, "qb")
    with tenants.conn(tenants.admin_role) as ops:
        seen = {r[0] for r in ops.execute("SELECT tenant_id FROM control_plane.training_examples "
                                          "WHERE tenant_id IN (%s, %s)", (tenants.a, tenants.b))}
        assert seen == {tenants.a, tenants.b}
    with tenants.conn(tenants.app_role) as app:
        assert app.execute("SELECT count(*) FROM control_plane.training_examples").fetchone()[0] == 0


def test_table_owner_is_bound_by_policies(su, tenants):
    owner = f"owner_{tenants.tag}"
    su.execute(f"CREATE ROLE {owner} LOGIN PASSWORD 'tenant-pw-1'")
    with tenants.conn(tenants.a_role) as a:
        add_example(a, "owned by a")
    su.execute(f"ALTER TABLE control_plane.training_examples OWNER TO {owner}")
    try:
        with tenants.conn(owner) as o:
            assert o.execute("SELECT count(*) FROM control_plane.training_examples").fetchone()[0] == 0
            o.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
            rows = o.execute("SELECT DISTINCT tenant_id FROM control_plane.training_examples").fetchall()
            assert rows == [(tenants.a,)]
    finally:
        su.execute("ALTER TABLE control_plane.training_examples OWNER TO postgres")


@pytest.mark.parametrize("how", ["membership", "token"])
def test_parallel_workers_see_the_tenant(su, tenants, how):
    su.execute("INSERT INTO control_plane.training_examples (tenant_id, question, sql) "
               "SELECT CASE WHEN g %% 3 = 0 THEN %s::uuid ELSE %s::uuid END, 'q' || g, 'SELECT 1' "
               "FROM generate_series(1, 30000) g", (tenants.a, tenants.b))
    su.execute("ANALYZE control_plane.training_examples")
    role = tenants.a_role if how == "membership" else tenants.stranger
    with tenants.conn(role) as c:
        if how == "token":
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        c.execute(PARALLEL)
        c.execute("SET enable_indexscan = off; SET enable_bitmapscan = off")
        plan = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM control_plane.training_examples "
                         "WHERE question LIKE 'q%%'").fetchone()[0]
        text = json.dumps(plan)
        assert '"Workers Launched": 2' in text or '"Workers Launched": 1' in text, text[:500]
        n = c.execute("SELECT count(*) FROM control_plane.training_examples WHERE question LIKE 'q%%'").fetchone()[0]
        assert n == 10000


def test_tenant_scan_uses_tenant_first_index_at_100k_rows(su, tenants):
    # 100 tenants x 1000 rows: a tenant's rows are 1% of the table.
    ids = [tenants.a, tenants.b] + [
        su.execute("SELECT dbrag.create_tenant(%s)", (f"bulk_{tenants.tag}_{i}",)).fetchone()[0]
        for i in range(98)]
    su.execute("INSERT INTO control_plane.query_history (tenant_id, question, status) "
               "SELECT (%s::uuid[])[1 + g %% 100], 'q' || g, 'ok' FROM generate_series(1, 100000) g",
               ([str(i) for i in ids],))
    su.execute("ANALYZE control_plane.query_history")
    with tenants.conn(tenants.a_role) as a:
        plan = json.dumps(a.execute("EXPLAIN (FORMAT JSON) SELECT * FROM control_plane.query_history").fetchone()[0])
        assert "Index" in plan and "Seq Scan" not in plan, plan
        assert a.execute("SELECT count(*) FROM control_plane.query_history").fetchone()[0] == 1000


def test_hostile_search_path_cannot_widen_rows(su, tenants):
    schema = f"evil_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {tenants.a_role}")
    with tenants.conn(tenants.b_role) as b:
        add_example(b, "b secret")
    with tenants.conn(tenants.a_role) as a:
        # Look-alikes of what policies and the API call, planted first in the path.
        a.execute(f"CREATE FUNCTION {schema}.current_tenant_id() RETURNS uuid LANGUAGE sql "
                  f"AS $$ SELECT '{tenants.b}'::uuid $$")
        a.execute(f"CREATE FUNCTION {schema}.uuid_eq_evil(uuid, uuid) RETURNS boolean LANGUAGE sql "
                  "AS 'SELECT true'")
        a.execute(f"CREATE OPERATOR {schema}.= (LEFTARG = uuid, RIGHTARG = uuid, "
                  f"FUNCTION = {schema}.uuid_eq_evil)")
        a.execute(f"SET search_path = {schema}, pg_catalog, dbrag, public")
        assert a.execute("SELECT count(*) FROM control_plane.training_examples "
                         "WHERE question = 'b secret'").fetchone()[0] == 0
        assert a.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.a
        a.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        assert a.execute("SELECT dbrag.check_tenant_access(%s)", (tenants.b,)).fetchone()[0] is False
