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


def b_example_id(su, tenants):
    return su.execute("SELECT example_id FROM control_plane.training_examples WHERE tenant_id = %s",
                      (tenants.b,)).fetchone()[0]


def test_error_based_oracle_on_the_other_tenants_rows(planted):
    # An expression that fails only on B's row would prove the row exists;
    # it is evaluated only on rows that passed the policy.
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        rows = a.execute("SELECT question FROM control_plane.training_examples "
                         "WHERE 1 / (CASE WHEN question = %s THEN 0 ELSE 1 END) = 1", (SECRET,)).fetchall()
        assert rows == [("a question",)]
        # An error that quotes a row's value quotes only the caller's own rows.
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT question::int FROM control_plane.training_examples")
        assert e.value.sqlstate == "22P02" and SECRET not in str(e.value) and "a question" in str(e.value)


def test_explain_analyze_counts_only_own_rows(planted):
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        plan = a.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT * FROM control_plane.training_examples "
                         "WHERE question IS NOT NULL").fetchone()[0][0]
        assert plan["Plan"]["Actual Rows"] == 1
        assert SECRET not in str(plan)
        # What the policy removed is not shown as values; see SECURITY.md on counts.


def test_unique_violation_on_a_control_plane_key(su, planted):
    # Inserting B's primary key would say "already exists" if the key were
    # checked before the policy: the policy comes first.
    tenants, _ = planted
    bid = b_example_id(su, tenants)
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(psycopg.Error) as e:
            a.execute("INSERT INTO control_plane.training_examples (tenant_id, example_id, question, sql) "
                      "VALUES (%s, %s, 'probe', 'SELECT 1')", (tenants.b, bid))
        assert e.value.sqlstate == "42501" and "already exists" not in str(e.value)
        # With its own tenant id the key does not collide: keys lead with tenant_id.
        a.execute("INSERT INTO control_plane.training_examples (example_id, question, sql) "
                  "VALUES (%s, 'probe', 'SELECT 1') ON CONFLICT DO NOTHING", (bid,))
        assert a.execute("SELECT count(*) FROM control_plane.training_examples WHERE example_id = %s",
                         (bid,)).fetchone()[0] == 1


def test_writes_aimed_at_the_other_tenants_rows(su, planted):
    tenants, _ = planted
    bid = b_example_id(su, tenants)
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("UPDATE control_plane.training_examples SET question = 'pwned' WHERE example_id = %s",
                         (bid,)).rowcount == 0
        assert a.execute("DELETE FROM control_plane.training_examples WHERE tenant_id = %s",
                         (tenants.b,)).rowcount == 0
        a.execute("WITH d AS (DELETE FROM control_plane.training_examples WHERE question = %s RETURNING 1) "
                  "SELECT count(*) FROM d", (SECRET,))
        # Moving an own row into B (planting data there) fails the policy's check.
        with pytest.raises(psycopg.Error) as e:
            a.execute("UPDATE control_plane.training_examples SET tenant_id = %s", (tenants.b,))
        assert e.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as e:
            a.execute("INSERT INTO control_plane.training_examples (tenant_id, question, sql) "
                      "VALUES (%s, 'planted', 'SELECT 1')", (tenants.b,))
        assert e.value.sqlstate == "42501"
    assert su.execute("SELECT question FROM control_plane.training_examples WHERE tenant_id = %s",
                      (tenants.b,)).fetchall() == [(SECRET,)]


def test_truncate_and_ddl_that_would_bypass_the_policies(planted):
    tenants, schema = planted
    with tenants.conn(tenants.a_role) as a:
        for sql in ("TRUNCATE control_plane.training_examples",
                    "ALTER TABLE control_plane.training_examples DISABLE ROW LEVEL SECURITY",
                    "ALTER TABLE control_plane.training_examples NO FORCE ROW LEVEL SECURITY",
                    "CREATE POLICY open ON control_plane.training_examples USING (true)",
                    "DROP POLICY dbrag_tenant_select ON control_plane.training_examples",
                    f"CREATE TABLE {schema}.child () INHERITS (control_plane.training_examples)",
                    "CREATE RULE r AS ON SELECT TO control_plane.training_examples DO INSTEAD SELECT 1",
                    "ALTER FUNCTION dbrag.current_tenant_id() VOLATILE",
                    "CREATE OR REPLACE FUNCTION dbrag.current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'"):
            with pytest.raises(psycopg.Error) as e:
                a.execute(sql)
            assert e.value.sqlstate == "42501", (sql, e.value)
        with pytest.raises(psycopg.Error) as e:
            a.execute(f"CREATE TRIGGER t BEFORE INSERT ON control_plane.training_examples "
                      f"FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at()")
        assert e.value.sqlstate == "42501"


def test_row_security_off_is_an_error_not_a_bypass(planted):
    tenants, _ = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute("SET row_security = off")
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT question FROM control_plane.training_examples")
        assert e.value.sqlstate == "42501"


def test_planner_statistics_hide_the_other_tenants_values(su, planted):
    # pg_stats would show most common values of every row.
    tenants, _ = planted
    su.execute("ANALYZE control_plane.training_examples")
    with tenants.conn(tenants.a_role) as a:
        rows = a.execute("SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats "
                         "WHERE schemaname = 'control_plane' AND tablename = 'training_examples'").fetchall()
        assert rows == [] and SECRET not in str(rows)
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT stavalues1::text FROM pg_catalog.pg_statistic")
        assert e.value.sqlstate == "42501"


def test_leaky_operator_in_where(planted):
    tenants, schema = planted
    notices = []
    with tenants.conn(tenants.a_role) as a:
        a.add_notice_handler(lambda d: notices.append(d.message_primary))
        a.execute(f"CREATE FUNCTION {schema}.peek(l text, r text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 "
                  "AS $$ BEGIN RAISE NOTICE 'peek: %', l; RETURN true; END $$")
        a.execute(f"CREATE OPERATOR {schema}.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.peek, "
                  "RESTRICT = eqsel)")
        a.execute(f"SELECT * FROM control_plane.training_examples WHERE question OPERATOR({schema}.===) 'x'").fetchall()
        # Through a join too, where the planner may reorder quals.
        a.execute(f"SELECT * FROM control_plane.training_examples e JOIN control_plane.tenants t "
                  f"ON e.tenant_id = t.tenant_id WHERE e.question OPERATOR({schema}.===) t.name").fetchall()
    assert notices and not any(SECRET in n for n in notices)


def test_leaky_function_in_parallel_workers(su, planted):
    tenants, schema = planted
    su.execute("INSERT INTO control_plane.training_examples (tenant_id, question, sql) "
               "SELECT %s, %s || g, 'SELECT 1' FROM generate_series(1, 20000) g", (tenants.b, SECRET))
    su.execute("ANALYZE control_plane.training_examples")
    notices = []
    with tenants.conn(tenants.a_role) as a:
        a.add_notice_handler(lambda d: notices.append(d.message_primary))
        a.execute(f"CREATE FUNCTION {schema}.leak_p(t text) RETURNS boolean LANGUAGE plpgsql PARALLEL SAFE "
                  "COST 0.0000001 AS $$ BEGIN RAISE NOTICE 'leak: %', t; RETURN true; END $$")
        a.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
                  "SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2; "
                  "SET enable_indexscan = off; SET enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in a.execute(
            f"EXPLAIN SELECT * FROM control_plane.training_examples WHERE {schema}.leak_p(question)"))
        rows = a.execute(f"SELECT question FROM control_plane.training_examples WHERE {schema}.leak_p(question)").fetchall()
    assert "Gather" in plan
    assert rows == [("a question",)]
    assert not any(SECRET in n for n in notices)


@pytest.fixture
def app_table(su, tenants):
    """An application table isolated with enable_tenant_isolation, owned by a
    non-superuser owner role, with a row for each tenant."""
    owner, schema = f"owner_{tenants.tag}", f"app_{tenants.tag}"
    su.execute(f"CREATE ROLE {owner} NOLOGIN")
    su.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {owner}")
    su.execute(f"CREATE TABLE {schema}.customers (id int, email text UNIQUE, tenant_id uuid)")
    su.execute(f"ALTER TABLE {schema}.customers OWNER TO {owner}")
    su.execute(f"INSERT INTO {schema}.customers VALUES (1, 'ann@a.example', %s), (2, %s, %s)",
               (tenants.a, SECRET + "@b.example", tenants.b))
    su.execute(f"SELECT dbrag.enable_tenant_isolation('{schema}.customers', rebuild_unique => true)")
    su.execute(f"GRANT USAGE ON SCHEMA {schema} TO {tenants.a_role}")
    su.execute(f"GRANT SELECT, INSERT ON {schema}.customers TO {tenants.a_role}")
    return tenants, owner, schema


def test_views_and_definer_functions_of_the_table_owner_are_still_bound(su, app_table):
    # FORCE ROW LEVEL SECURITY: the owner's own view (not security_invoker)
    # and SECURITY DEFINER function read with the caller's tenant.
    tenants, owner, schema = app_table
    su.execute(f"SET ROLE {owner}")
    su.execute(f"CREATE VIEW {schema}.all_customers AS SELECT * FROM {schema}.customers")
    su.execute(f"CREATE FUNCTION {schema}.all_emails() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER "
               f"SET search_path = pg_catalog AS 'SELECT email FROM {schema}.customers'")
    su.execute("RESET ROLE")
    su.execute(f"GRANT SELECT ON {schema}.all_customers TO {tenants.a_role}")
    with tenants.conn(tenants.a_role) as a:
        assert [r[0] for r in a.execute(f"SELECT email FROM {schema}.all_customers")] == ["ann@a.example"]
        assert [r[0] for r in a.execute(f"SELECT * FROM {schema}.all_emails()")] == ["ann@a.example"]


def test_view_of_a_privileged_owner_is_named_by_the_isolation_report(su, app_table):
    # A superuser's view skips every policy (docs/isolation.md): the report names it,
    # and its security_invoker form is bound again.
    tenants, _, schema = app_table
    su.execute(f"CREATE VIEW {schema}.su_view AS SELECT * FROM {schema}.customers")
    su.execute(f"GRANT SELECT ON {schema}.su_view TO {tenants.a_role}")
    report = su.execute("SELECT * FROM dbrag.isolation_report()").fetchall()
    assert any(f"{schema}.su_view" in " ".join(map(str, r)) for r in report), report
    su.execute(f"ALTER VIEW {schema}.su_view SET (security_invoker = true)")
    with tenants.conn(tenants.a_role) as a:
        assert [r[0] for r in a.execute(f"SELECT email FROM {schema}.su_view")] == ["ann@a.example"]


def test_unique_violation_on_an_application_table_is_no_oracle(app_table):
    # The global UNIQUE (email) was rebuilt tenant-first: A inserting B's
    # e-mail neither fails (which would confirm it exists) nor reveals it.
    tenants, _, schema = app_table
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"INSERT INTO {schema}.customers (id, email) VALUES (3, %s)", (SECRET + "@b.example",))
        assert a.execute(f"SELECT count(*) FROM {schema}.customers").fetchone()[0] == 2
        with pytest.raises(psycopg.Error) as e:
            a.execute(f"INSERT INTO {schema}.customers (id, email) VALUES (4, 'ann@a.example')")
        assert e.value.sqlstate == "23505"  # its own duplicate, reported as usual


def test_look_alike_operator_cannot_hijack_a_policy(planted):
    # Policies are stored as parsed trees: an "=" planted earlier on the
    # search path is never what they call.
    tenants, schema = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"CREATE FUNCTION {schema}.always(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
        a.execute(f"CREATE OPERATOR {schema}.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = {schema}.always)")
        a.execute(f"CREATE FUNCTION {schema}.current_tenant_id() RETURNS uuid LANGUAGE sql AS $$SELECT '{tenants.b}'::uuid$$")
        a.execute(f"SET search_path = {schema}, pg_catalog, dbrag")
        rows = a.execute("SELECT question FROM control_plane.training_examples").fetchall()
        assert SECRET not in [r[0] for r in rows]
        assert a.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.a
