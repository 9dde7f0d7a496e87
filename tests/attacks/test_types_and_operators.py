"""Acting as the tenant, class 3: code of tenant A that runs without being
named. A cast to json on a type A owns runs inside the to_jsonb() that turns
rows into JSON; an operator whose function is built-in but whose negator is
A's function runs A's code after the guard; an `=` operator in A's schema
would shadow the built-in one if A's schema came first on the search path.
All of it runs as A's role (or not at all), whoever called."""

import pytest

from attack_kit import (B_SECRET, CALLERS, assert_nothing_of_b, caller_conn, now,  # noqa: F401
                        peek_function, plane, llm_server, refused, sql_answer)


@pytest.fixture
def typed(su, plane):
    t, sa, sb = plane.t, plane.sa, plane.sb
    su.execute(f"GRANT USAGE ON SCHEMA {sb} TO {t.app_role}, {t.admin_role}")
    su.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {sb} TO {t.app_role}, {t.admin_role}")
    su.execute(f"GRANT CREATE ON SCHEMA {sa} TO {t.a_trole}")
    with t.conn(t.a_role) as a:
        a.execute(peek_function(sa, t, sb))
        # A cast to json on A's own type: to_jsonb() calls it for each value.
        a.execute(f"CREATE TYPE {sa}.mood AS ENUM ('happy', 'sad')")
        a.execute(f"CREATE FUNCTION {sa}.mood_json({sa}.mood) RETURNS json LANGUAGE plpgsql AS $$ "
                  f"BEGIN RETURN pg_catalog.to_json({sa}.peek()); END $$")
        a.execute(f"CREATE CAST ({sa}.mood AS json) WITH FUNCTION {sa}.mood_json({sa}.mood)")
        a.execute(f"CREATE TABLE {sa}.moods (id int, m {sa}.mood)")
        a.execute(f"INSERT INTO {sa}.moods VALUES (1, 'happy'), (2, 'sad')")
        # A built-in operator function with A's negator.
        a.execute(f"CREATE FUNCTION {sa}.loud_ne(int, int) RETURNS boolean LANGUAGE plpgsql AS $$ "
                  f"BEGIN RAISE EXCEPTION 'negator saw: %', {sa}.peek(); END $$")
        a.execute(f"CREATE OPERATOR {sa}.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = pg_catalog.int4eq, "
                  f"NEGATOR = OPERATOR({sa}.!==))")
        a.execute(f"CREATE OPERATOR {sa}.!== (LEFTARG = int, RIGHTARG = int, FUNCTION = {sa}.loud_ne, "
                  f"NEGATOR = OPERATOR({sa}.===))")
        # An `=` for text in A's schema.
        a.execute(f"CREATE FUNCTION {sa}.loud_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ "
                  f"BEGIN RAISE EXCEPTION 'shadow saw: %', {sa}.peek(); END $$")
        a.execute(f"CREATE OPERATOR {sa}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {sa}.loud_eq)")
        a.execute(f"GRANT SELECT ON {sa}.moods TO {t.a_trole}")
    return plane


@pytest.mark.parametrize("who", CALLERS)
def test_json_cast_on_a_tenant_type_runs_as_the_tenant(su, typed, who):
    t, model = typed.t, typed.model
    since = now(su)
    with caller_conn(t, who) as c:
        c.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        model.reset()
        model.script(sql_answer("SELECT id, m FROM moods ORDER BY id"))
        rows = c.execute("SELECT * FROM dbrag.ask('how is everyone feeling')").fetchall()
        assert len(rows) == 2
        # The cast ran, as A's role: its switch was refused, B out of reach.
        assert "no-switch" in str(rows) and "no-b" in str(rows) and t.a_name in str(rows), rows
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    samples = su.execute("SELECT sample_values::text FROM control_plane.table_metadata_catalog "
                         "WHERE tenant_id = %s AND table_name = 'moods'", (t.a,)).fetchone()[0]
    assert_nothing_of_b(su, t, rows, samples, since=since)


@pytest.mark.parametrize("who", CALLERS)
def test_negator_of_a_builtin_operator_runs_as_the_tenant(su, typed, who):
    t, model = typed.t, typed.model
    since = now(su)
    sql = f"SELECT name FROM singer WHERE NOT (singer_id OPERATOR({typed.sa}.===) 1)"
    with caller_conn(t, who) as c:
        model.reset()
        model.script(sql_answer(sql), sql_answer(sql))
        # The guard passes it (int4eq is built-in); the planner turns NOT (===)
        # into A's negator, which runs as A's role and reports what it saw.
        e = refused(c, "SELECT * FROM dbrag.ask('singers but the first')")
        text = str(e)
        assert "negator saw" in text and "no-switch" in text and "no-b" in text, text
        rows = [text]
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    assert_nothing_of_b(su, t, rows, since=since)


@pytest.mark.parametrize("who", CALLERS)
def test_tenant_equals_operator_does_not_shadow_the_builtin(su, typed, who):
    t, model = typed.t, typed.model
    with caller_conn(t, who) as c:
        model.reset()
        model.script(sql_answer("SELECT name FROM singer WHERE name = 'Joe Sharp'"))
        rows = c.execute("SELECT * FROM dbrag.ask('is Joe Sharp a singer')").fetchall()
        # pg_catalog comes first on the path: the built-in text = text ran.
        assert [r[0]["name"] for r in rows] == ["Joe Sharp"]
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    with t.conn(t.a_role) as a:
        model.reset()
        model.script(sql_answer("SELECT name FROM singer WHERE name = 'Joe Sharp'"))
        rows = a.execute("SELECT * FROM dbrag.ask('is Joe Sharp a singer, again')").fetchall()
        assert [r[0]["name"] for r in rows] == ["Joe Sharp"]
