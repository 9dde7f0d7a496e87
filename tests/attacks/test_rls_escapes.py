"""Attacks on row-level security itself, as a tenant's login role: each must
end in an error or in the attacker's own rows only."""

import psycopg
import pytest

from conftest import token_for

SECRET = "b-private-question-7f3a"


@pytest.fixture
def planted(su, tenants):
    with tenants.conn(tenants.b_role) as b:
        b.execute("INSERT INTO control_plane.training_examples (question, sql) VALUES (%s, 'SELECT 1')", (SECRET,))
    with tenants.conn(tenants.a_role) as a:
        a.execute("INSERT INTO control_plane.training_examples (question, sql) VALUES ('a question', 'SELECT 1')")
    schema = f"atk_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {tenants.a_role}, {tenants.app_role}")
    return tenants, schema


def test_leaky_function_in_where_sees_only_own_rows(planted):
    tenants, schema = planted
    notices = []
    with tenants.conn(tenants.a_role) as a:
        a.add_notice_handler(lambda d: notices.append(d.message_primary))
        a.execute(f"CREATE FUNCTION {schema}.leak(t text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 "
                  "AS $$ BEGIN RAISE NOTICE 'leak: %', t; RETURN true; END $$")
        a.execute(f"SELECT * FROM control_plane.training_examples WHERE {schema}.leak(question)").fetchall()
    assert notices and not any(SECRET in n for n in notices)


def test_view_owned_by_attacker_is_still_bound(planted):
    tenants, schema = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"CREATE VIEW {schema}.all_examples AS SELECT * FROM control_plane.training_examples")
        rows = a.execute(f"SELECT question FROM {schema}.all_examples").fetchall()
    assert rows and all(r[0] != SECRET for r in rows)


def test_security_definer_helper_of_attacker_is_still_bound(planted):
    tenants, schema = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"CREATE FUNCTION {schema}.grab() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
                  "AS 'SELECT question FROM control_plane.training_examples'")
        assert SECRET not in [r[0] for r in a.execute(f"SELECT * FROM {schema}.grab()")]


def test_copy_to_is_filtered_and_copy_from_is_refused(planted):
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        with a.cursor().copy("COPY control_plane.training_examples (question) TO STDOUT") as cp:
            data = b"".join(bytes(chunk) for chunk in cp).decode()
        assert "a question" in data and SECRET not in data
        with pytest.raises(psycopg.Error) as e:
            with a.cursor().copy("COPY control_plane.training_examples (tenant_id, question, sql) FROM STDIN") as cp:
                cp.write_row((str(tenants.b), "forged", "SELECT 1"))
        assert e.value.sqlstate in ("0A000", "42501")


def test_prepared_statement_follows_the_tenant_switch(planted):
    tenants, _ = planted
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        app.execute("PREPARE q AS SELECT question FROM control_plane.training_examples")
        for _ in range(7):  # past the point where a generic plan is cached
            assert SECRET not in [r[0] for r in app.execute("EXECUTE q")]
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        rows = [r[0] for r in app.execute("EXECUTE q")]
        assert SECRET in rows and "a question" not in rows


def test_cursor_cannot_carry_rows_across_a_tenant_switch(planted):
    tenants, _ = planted
    with tenants.conn(tenants.app_role) as app:
        with pytest.raises(psycopg.Error) as e:
            with app.transaction():
                app.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (tenants.b,))
                app.execute("DECLARE c CURSOR FOR SELECT question FROM control_plane.training_examples")
                app.execute("FETCH 0 FROM c")  # the scan has started under B
                app.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (tenants.a,))
        assert e.value.sqlstate == "55000"
        # A holdable cursor outlives its transaction: still no switch while it is open.
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        app.execute("DECLARE h CURSOR WITH HOLD FOR SELECT question FROM control_plane.training_examples")
        with pytest.raises(psycopg.Error) as e:
            app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert e.value.sqlstate == "55000"
        app.execute("CLOSE ALL")
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert SECRET not in [r[0] for r in app.execute("SELECT question FROM control_plane.training_examples")]


def test_replayed_token_for_other_tenant_gives_only_that_tenant(planted):
    # A token is a bearer credential for its own tenant, nothing more.
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        assert SECRET not in [r[0] for r in a.execute("SELECT question FROM control_plane.training_examples")]


def test_direct_catalog_and_history_reads_across_tenants(su, planted):
    tenants, _ = planted
    su.execute("INSERT INTO control_plane.query_history (tenant_id, question, status) VALUES (%s, %s, 'ok')",
               (tenants.b, SECRET))
    with tenants.conn(tenants.a_role) as a:
        for table in ("query_history", "table_metadata_catalog", "audit_log", "tenant_members", "tenants"):
            rows = a.execute(f"SELECT * FROM control_plane.{table} WHERE tenant_id = %s", (tenants.b,)).fetchall()
            assert rows == [], table


def test_search_path_trojan_in_pg_temp(planted):
    # pg_temp is searched first for relations unless pinned; the API pins it last.
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute("CREATE TEMP TABLE tenants (tenant_id uuid, status text)")
        a.execute("INSERT INTO pg_temp.tenants VALUES (%s, 'active')", (tenants.b,))
        a.execute("SET search_path = pg_temp, control_plane, pg_catalog")
        assert a.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.a
        with pytest.raises(psycopg.Error):
            a.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
