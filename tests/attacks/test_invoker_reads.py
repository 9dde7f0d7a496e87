"""Acting as the tenant, class 2: a security_invoker view or a row-level
security policy of tenant A reads control_plane (or B's tables) with the
rights of whoever queries it. Queried by the application server, an operator
or a superuser through pg_dbrag, it runs as A's role: RLS on control_plane
shows only A's rows, B's schema is out of reach, and what comes back through
samples, error text kept in A's history, or the ask cache holds nothing of
B's. The cache and history are keyed by the acting role and the model."""

import pytest

from attack_kit import (B_SECRET, CALLERS, assert_nothing_of_b, caller_conn, now,  # noqa: F401
                        plane, llm_server, refused, sql_answer)


@pytest.fixture
def invoker(su, plane):
    t, sa, sb = plane.t, plane.sa, plane.sb
    # The operators and the application server may read B's schema and
    # the control plane directly; A's code must not borrow that.
    su.execute(f"GRANT USAGE ON SCHEMA {sb} TO {t.app_role}, {t.admin_role}")
    su.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {sb} TO {t.app_role}, {t.admin_role}")
    su.execute(f"GRANT CREATE ON SCHEMA {sa} TO {t.a_trole}")
    with t.conn(t.a_role) as a:
        a.execute(f"CREATE VIEW {sa}.all_tenants WITH (security_invoker = true) AS "
                  f"SELECT name FROM control_plane.tenants")
        # A cannot name B's schema in a view it creates; a function can.
        a.execute(f"CREATE FUNCTION {sa}.b_names() RETURNS SETOF text LANGUAGE plpgsql AS $$ BEGIN "
                  f"RETURN QUERY EXECUTE 'SELECT name FROM {sb}.singer'; END $$")
        a.execute(f"CREATE VIEW {sa}.b_singers WITH (security_invoker = true) AS "
                  f"SELECT n AS name FROM {sa}.b_names() n")
        a.execute(f"""CREATE FUNCTION {sa}.shout() RETURNS boolean LANGUAGE plpgsql AS $$
            DECLARE b text;
            BEGIN
                BEGIN b := (SELECT string_agg(name, ',') FROM {sb}.singer);
                EXCEPTION WHEN others THEN b := 'no-b'; END;
                RAISE EXCEPTION 'seen: % / %', (SELECT string_agg(name, ',') FROM control_plane.tenants), b;
            END $$""")
        a.execute(f"CREATE TABLE {sa}.fans (name text)")
        a.execute(f"INSERT INTO {sa}.fans VALUES ('fan')")
        a.execute(f"ALTER TABLE {sa}.fans ENABLE ROW LEVEL SECURITY")
        a.execute(f"CREATE POLICY loud ON {sa}.fans USING ({sa}.shout())")
        a.execute(f"GRANT SELECT ON {sa}.all_tenants, {sa}.b_singers, {sa}.fans TO {t.a_trole}, PUBLIC")
    return plane


@pytest.mark.parametrize("who", CALLERS)
def test_invoker_view_and_policy_read_as_the_tenant(su, invoker, who):
    t, model = invoker.t, invoker.model
    since = now(su)
    answers = []
    with caller_conn(t, who) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        answers.append(notices)
        tables = [r[0] for r in su.execute(
            "SELECT table_name FROM control_plane.table_metadata_catalog WHERE tenant_id = %s", (t.a,))]
        assert "all_tenants" in tables
        names = su.execute("SELECT sample_values->'name' FROM control_plane.table_metadata_catalog "
                           "WHERE tenant_id = %s AND table_name = 'all_tenants'", (t.a,)).fetchone()[0]
        assert names == [t.a_name], names  # RLS as A's role: A's row only
        model.reset()
        model.script(sql_answer("SELECT name FROM all_tenants"))
        rows = c.execute("SELECT * FROM dbrag.ask('which tenants are there')").fetchall()
        assert [r[0]["name"] for r in rows] == [t.a_name]
        answers.append(rows)
        # B's schema through the invoker view: permission denied as A's role.
        model.reset()
        model.script(sql_answer("SELECT name FROM b_singers"), sql_answer("SELECT name FROM b_singers"))
        answers.append(refused(c, "SELECT * FROM dbrag.ask('the other singers')"))
        # The policy's error text goes to A's history: it saw A only.
        model.reset()
        model.script(sql_answer("SELECT name FROM fans"), sql_answer("SELECT name FROM fans"))
        e = refused(c, "SELECT * FROM dbrag.ask('the fans')")
        assert "seen:" in str(e) and t.a_name in str(e), e
        answers.append(e)
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    assert_nothing_of_b(su, t, *answers, since=since)


def test_cache_and_history_are_keyed_by_acting_role_and_model(su, invoker):
    t, model = invoker.t, invoker.model
    question = "how many singers are there, cached"
    with caller_conn(t, "app_role") as c:
        model.reset()
        model.script(sql_answer("SELECT count(*) AS n FROM singer"))
        c.execute("SELECT * FROM dbrag.ask(%s)", (question,)).fetchall()
    with t.conn(t.a_role) as a:
        model.reset()
        model.script(sql_answer("SELECT 1 AS never"))
        rows = a.execute("SELECT * FROM dbrag.ask(%s)", (question,)).fetchall()
        assert rows[0][0] == {"n": 2}  # the same acting role and model: replayed
        assert model.requests() == []
    hist = su.execute("SELECT status, acting_role, model, login_role FROM control_plane.query_history "
                      "WHERE tenant_id = %s AND question = %s ORDER BY created_at", (t.a, question)).fetchall()
    assert [h[0] for h in hist] == ["ok", "cached"]
    assert {h[1] for h in hist} == {t.a_trole} and {h[2] for h in hist} == {"fixture-model"}
    assert [h[3] for h in hist] == [t.app_role, t.a_role]
    # Another model: not replayed.
    su.execute(f"ALTER ROLE {t.a_role} SET dbrag.llm_model = 'other-model'")
    with t.conn(t.a_role) as a:
        model.reset()
        model.script(sql_answer("SELECT count(*) AS m FROM singer"))
        rows = a.execute("SELECT * FROM dbrag.ask(%s)", (question,)).fetchall()
        assert rows[0][0] == {"m": 2} and len(model.requests()) == 1
