"""Verified queries and feedback (docs/llm-and-guard.md, "Verified queries and
feedback"), over TCP with the model fixture: a question that matches a
verified one is answered with its SQL and no model call; otherwise the
verified queries lead the prompt's examples. Tenants' login roles, the
application server (token and set_tenant(uuid)) and the operator as callers."""

import re
import uuid

import psycopg
import pytest

from conftest import DBNAME, token_for
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_catalog import make_local_connection

KEY = "sk-test-global-7c2e"


def sql_answer(sql):
    return {"content": f"```sql\n{sql}\n```"}


@pytest.fixture
def vq(su, tenants, llm_server):
    llm_server.reset()
    sa, sb = f"va_{tenants.tag}", f"vb_{tenants.tag}"
    make_local_connection(su, tenants.a, tenants.a_role, sa)
    make_local_connection(su, tenants.b, tenants.b_role, sb)
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_model = 'fixture-model'")
    su.execute("SELECT dbrag.set_llm_api_key(%s, global => true)", (KEY,))
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        b.execute("SELECT * FROM dbrag.sync_catalog()")
    yield tenants, sa, sb, llm_server
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_url")
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_model")
    su.execute("SELECT dbrag.set_llm_api_key(NULL, global => true)")


def last_history(conn):
    return conn.execute("SELECT query_id, status, generated_sql, model FROM control_plane.query_history "
                        "ORDER BY created_at DESC LIMIT 1").fetchone()


def prompt_of(request):
    return "\n".join(m["content"] for m in request["body"]["messages"])


def sqlstate(conn, sql, args=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value.sqlstate


def test_verified_answer_makes_no_model_call(vq):
    tenants, sa, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        vid = a.execute("SELECT dbrag.add_verified_query('How many singers are there?', "
                        "'SELECT count(*) AS n FROM singer')").fetchone()[0]
        assert a.execute("SELECT question, sql, tenant_id FROM dbrag.verified_queries").fetchall() == [
            ("How many singers are there?", "SELECT count(*) AS n FROM singer", tenants.a)]
        calls = len(model.requests())
        # Case, spacing and the question mark do not matter.
        rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('  how MANY singers   are there ')")]
        assert rows == [{"n": 2}]
        assert len(model.requests()) == calls
        _, status, sql, used_model = last_history(a)
        assert (status, sql, used_model) == ("verified", "SELECT count(*) AS n FROM singer", None)
        assert a.execute("SELECT dbrag.generate_sql('how many singers are there.')").fetchone()[0] == \
            "SELECT count(*) AS n FROM singer"
        assert last_history(a)[1] == "verified" and len(model.requests()) == calls
        # A question that says more is not the verified one: the model answers.
        model.script(sql_answer("SELECT count(*) AS n FROM singer WHERE age > 40"))
        assert a.execute("SELECT * FROM dbrag.ask('how many singers are there over 40?')").fetchone()[0] == {"n": 1}
        assert len(model.requests()) == calls + 1 and last_history(a)[1] == "ok"
        assert a.execute("SELECT answered FROM dbrag.usage").fetchone()[0] == 3
        # Removed, the question goes to the model again.
        a.execute("SELECT dbrag.remove_verified_query(%s)", (vid,))
        model.script(sql_answer("SELECT count(*) AS n FROM singer"))
        a.execute("SELECT * FROM dbrag.ask('how many singers are there')").fetchall()
        assert len(model.requests()) == calls + 2 and last_history(a)[1] == "ok"


def test_verified_sql_runs_as_the_tenant_role(vq):
    tenants, _, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.add_verified_query('who runs this', 'SELECT current_user AS u')")
        calls = len(model.requests())
        assert a.execute("SELECT * FROM dbrag.ask('who runs this')").fetchone()[0] == {"u": tenants.a_trole}
        assert len(model.requests()) == calls


def test_prompt_lists_verified_queries_first(vq):
    tenants, _, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.add_example('singers per country', "
                  "'SELECT country, count(*) FROM singer GROUP BY 1 /* example */')")
        a.execute("SELECT dbrag.add_verified_query('how many singers come from each country', "
                  "'SELECT country, count(*) AS n FROM singer GROUP BY country /* verified */')")
        model.script(sql_answer("SELECT country FROM singer"))
        a.execute("SELECT * FROM dbrag.ask('list the countries of singers')").fetchall()
        assert last_history(a)[1] == "ok"
    prompt = prompt_of(model.requests()[-1])
    assert "/* verified */" in prompt and "/* example */" in prompt
    assert prompt.index("/* verified */") < prompt.index("/* example */")
    assert prompt.index("how many singers come from each country") < prompt.index("singers per country")


@pytest.mark.parametrize("sql,state", [
    ("DELETE FROM singer", "42601"),
    ("SELECT 1; DROP TABLE singer", "42601"),
    ("WITH d AS (DELETE FROM singer RETURNING *) SELECT * FROM d", "42601"),
    ("SELECT no_such_column FROM singer", "42601"),
    ("SELECT * FROM control_plane.tenants", "42501"),
    ("SELECT pg_read_file('/etc/passwd')", "42501"),
    ("SELECT set_config('dbrag.tenant_id', 'x', false)", "42501"),
])
def test_guard_refuses_bad_verified_sql(vq, sql, state):
    tenants, _, _, _ = vq
    with tenants.conn(tenants.a_role) as a:
        assert sqlstate(a, "SELECT dbrag.add_verified_query('count them', %s)", (sql,)) == state
        assert a.execute("SELECT count(*) FROM dbrag.verified_queries").fetchone()[0] == 0


def test_other_tenants_tables_are_refused(vq):
    tenants, _, sb, _ = vq
    with tenants.conn(tenants.a_role) as a:
        assert sqlstate(a, f"SELECT dbrag.add_verified_query('their singers', 'SELECT * FROM {sb}.singer')") == "42501"
        # Tenants write verified queries only through the guard.
        assert sqlstate(a, "INSERT INTO control_plane.verified_queries (connection_id, question, normalized_question, sql) "
                           "SELECT connection_id, 'x', 'x', 'DELETE FROM singer' FROM control_plane.tenant_databases") \
            == "42501"
        assert sqlstate(a, "UPDATE control_plane.verified_queries SET sql = 'DELETE FROM singer'") == "42501"


def test_bad_inputs(vq):
    tenants, _, _, _ = vq
    huge_sql = "SELECT 1 AS n" + " " * 100_000
    with tenants.conn(tenants.a_role) as a:
        add = "SELECT dbrag.add_verified_query(%s, %s)"
        assert sqlstate(a, add, (None, "SELECT 1")) == "22004"
        assert sqlstate(a, add, ("q", None)) == "22004"
        assert sqlstate(a, add, ("  ", "SELECT 1")) == "22023"
        assert sqlstate(a, add, ("q", " \n ")) == "22023"
        assert sqlstate(a, add, ("q" * 8001, "SELECT 1")) == "22023"
        assert sqlstate(a, add, ("q", "SELECT 1 AS n -- " + "x" * 100_000)) == "54000"
        assert sqlstate(a, add, ("q", "x" * (8 << 20))) == "54000"
        # Trailing blanks are trimmed, so a long tail of spaces is fine.
        a.execute(add, ("padded", huge_sql))
        hid = None
        assert sqlstate(a, "SELECT dbrag.feedback(%s, true)", (hid,)) == "22004"
        assert sqlstate(a, "SELECT dbrag.feedback(%s, NULL)", (uuid.uuid4(),)) == "22004"
        assert sqlstate(a, "SELECT dbrag.feedback(%s, true, '')", (uuid.uuid4(),)) == "22023"
        assert sqlstate(a, "SELECT dbrag.feedback(%s, true, %s)", (uuid.uuid4(), "x" * 100_001)) == "54000"
        assert sqlstate(a, "SELECT dbrag.remove_verified_query(NULL)") == "22004"
        assert sqlstate(a, "SELECT dbrag.remove_verified_query(%s)", (uuid.uuid4(),)) == "42704"
    # No tenant in force: refused, nothing written.
    with tenants.conn(tenants.stranger) as e:
        assert sqlstate(e, "SELECT dbrag.add_verified_query('q', 'SELECT 1')") == "42501"
        assert sqlstate(e, "SELECT dbrag.feedback(%s, true)", (uuid.uuid4(),)) == "42501"


def without_ids(message):
    return re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", message)


def test_feedback_on_own_rows_only(vq):
    tenants, _, _, model = vq
    model.script(sql_answer("SELECT name FROM singer ORDER BY 1"))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.ask('singer names')").fetchall()
        hid = last_history(a)[0]
        a.execute("SELECT dbrag.feedback(%s, false)", (hid,))
        a.execute("SELECT dbrag.feedback(%s, true)", (hid,))  # the latest judgement wins
        assert a.execute("SELECT query_id, helpful, corrected_sql FROM control_plane.query_feedback").fetchall() == [
            (hid, True, None)]
        # A corrected statement goes through the guard too.
        assert sqlstate(a, "SELECT dbrag.feedback(%s, false, 'DELETE FROM singer')", (hid,)) == "42601"
        assert a.execute("SELECT helpful FROM control_plane.query_feedback").fetchone()[0] is True
    with tenants.conn(tenants.b_role) as b:
        with pytest.raises(psycopg.Error) as theirs:
            b.execute("SELECT dbrag.feedback(%s, false)", (hid,))
        with pytest.raises(psycopg.Error) as unknown:
            b.execute("SELECT dbrag.feedback(%s, false)", (uuid.uuid4(),))
        assert theirs.value.sqlstate == unknown.value.sqlstate == "42704"
        assert without_ids(str(theirs.value)) == without_ids(str(unknown.value))
        assert b.execute("SELECT count(*) FROM control_plane.query_feedback").fetchone()[0] == 0
    # The app server acting for B: the same.
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert sqlstate(app, "SELECT dbrag.feedback(%s, false)", (hid,)) == "42704"
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        app.execute("SELECT dbrag.feedback(%s, false)", (hid,))
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT helpful FROM control_plane.query_feedback").fetchone()[0] is False
    with tenants.conn(tenants.admin_role) as ops:
        assert ops.execute("SELECT tenant_id FROM control_plane.query_feedback WHERE query_id = %s",
                           (hid,)).fetchone()[0] == tenants.a


def examples_of(conn):
    return conn.execute("SELECT question, sql FROM control_plane.training_examples "
                        "WHERE kind = 'example' ORDER BY created_at").fetchall()


def test_helpful_answers_become_examples_only_when_the_tenant_says_so(su, vq):
    tenants, _, _, model = vq
    model.script(sql_answer("SELECT name FROM singer ORDER BY 1"),
                 sql_answer("SELECT name FROM stadium"))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.ask('singer names')").fetchall()
        first = last_history(a)[0]
        a.execute("SELECT dbrag.feedback(%s, true)", (first,))
        assert examples_of(a) == []
        # Only an operator sets it (tenants cannot write their settings row).
        assert sqlstate(a, "UPDATE control_plane.tenants SET settings = '{\"feedback_examples\": true}'") == "42501"
    with tenants.conn(tenants.admin_role) as ops:
        ops.execute("UPDATE control_plane.tenants SET settings = settings || '{\"feedback_examples\": true}' "
                    "WHERE tenant_id = %s", (tenants.a,))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.feedback(%s, true)", (first,))
        assert examples_of(a) == [("singer names", "SELECT name FROM singer ORDER BY 1")]
        # Judged again with a correction: the correction replaces the example.
        a.execute("SELECT dbrag.feedback(%s, false, 'SELECT name FROM singer ORDER BY name DESC')", (first,))
        assert examples_of(a) == [("singer names", "SELECT name FROM singer ORDER BY name DESC")]
        a.execute("SELECT * FROM dbrag.ask('stadium names')").fetchall()
        second = last_history(a)[0]
        # Not helpful and no correction: no example.
        a.execute("SELECT dbrag.feedback(%s, false)", (second,))
        assert len(examples_of(a)) == 1
        # The example reaches the next prompt that shares its words.
        model.script(sql_answer("SELECT name FROM singer"))
        a.execute("SELECT * FROM dbrag.ask('names of the singers')").fetchall()
        assert "ORDER BY name DESC" in prompt_of(model.requests()[-1])
    with tenants.conn(tenants.b_role) as b:
        assert examples_of(b) == []
    with tenants.conn(tenants.admin_role) as ops:
        ops.execute("UPDATE control_plane.tenants SET settings = settings || '{\"feedback_examples\": \"yes\"}' "
                    "WHERE tenant_id = %s", (tenants.a,))
    with tenants.conn(tenants.a_role) as a:
        assert sqlstate(a, "SELECT dbrag.feedback(%s, true)", (second,)) == "22023"


def test_tenant_b_never_matches_tenant_a(vq):
    tenants, _, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        vid = a.execute("SELECT dbrag.add_verified_query('how many singers', "
                        "'SELECT count(*) AS a_only_verified FROM singer')").fetchone()[0]

    # Spellings of A's verified question, one per caller (an exact repeat
    # would be answered from B's own cache).
    def asks_model(conn, question):
        model.script(sql_answer("SELECT count(*) AS n FROM singer"))
        calls = len(model.requests())
        assert conn.execute("SELECT * FROM dbrag.ask(%s)", (question,)).fetchone()[0] == {"n": 2}
        assert len(model.requests()) == calls + 1 and last_history(conn)[1] == "ok"
        assert "a_only_verified" not in prompt_of(model.requests()[-1])

    with tenants.conn(tenants.b_role) as b:
        asks_model(b, "how many singers")
        assert b.execute("SELECT count(*) FROM dbrag.verified_queries").fetchone()[0] == 0
        assert sqlstate(b, "SELECT dbrag.remove_verified_query(%s)", (vid,)) == "42704"
        assert b.execute("DELETE FROM control_plane.verified_queries").rowcount == 0
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.b),))
        asks_model(app, "How many singers?")
        app.execute("SELECT dbrag.reset_tenant()")
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        asks_model(app, "HOW MANY SINGERS")
        # Acting for A, the app server gets A's verified answer.
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        calls = len(model.requests())
        assert app.execute("SELECT * FROM dbrag.ask('how many singers')").fetchone()[0] == {"a_only_verified": 2}
        assert len(model.requests()) == calls
    with tenants.conn(tenants.admin_role) as ops:
        # The operator has no tenant in force: no answers, but sees every
        # tenant's verified queries and may remove them.
        assert sqlstate(ops, "SELECT * FROM dbrag.ask('how many singers')") == "42501"
        assert sqlstate(ops, "SELECT dbrag.add_verified_query('q', 'SELECT 1')") == "42501"
        assert ops.execute("SELECT tenant_id FROM dbrag.verified_queries WHERE verified_id = %s",
                           (vid,)).fetchone()[0] == tenants.a
        ops.execute("SELECT dbrag.remove_verified_query(%s)", (vid,))
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT count(*) FROM dbrag.verified_queries").fetchone()[0] == 0


def test_verified_query_that_no_longer_passes_goes_to_the_model(su, vq):
    tenants, sa, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.add_verified_query('singer ages', 'SELECT name, age FROM singer ORDER BY 1')")
        su.execute(f"ALTER TABLE {sa}.singer DROP COLUMN age")
        model.script(sql_answer("SELECT name FROM singer ORDER BY 1"))
        calls = len(model.requests())
        assert a.execute("SELECT * FROM dbrag.ask('singer ages')").fetchone()[0] == {"name": "Joe Sharp"}
        assert len(model.requests()) == calls + 1
        _, status, sql, used_model = last_history(a)
        assert (status, sql, used_model) == ("ok", "SELECT name FROM singer ORDER BY 1", "fixture-model")
        # The model was told what failed.
        assert 'column "age" does not exist' in prompt_of(model.requests()[-1])
        # A verified statement the tenant's role may no longer read is refused.
        a.execute("SELECT dbrag.add_verified_query('stadium names', 'SELECT name FROM stadium')")
        su.execute(f"REVOKE SELECT ON {sa}.stadium FROM {tenants.a_trole}")
        calls = len(model.requests())
        assert sqlstate(a, "SELECT * FROM dbrag.ask('stadium names')") == "42501"
        assert len(model.requests()) == calls


def test_verified_queries_belong_to_their_connection(su, vq):
    tenants, sa, _, model = vq
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.add_verified_query('how many singers', 'SELECT count(*) AS n FROM singer')")
    su.execute("UPDATE control_plane.tenant_databases SET is_active = false WHERE tenant_id = %s", (tenants.a,))
    make_local_connection(su, tenants.a, tenants.a_role, f"va2_{tenants.tag}")
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        model.script(sql_answer("SELECT count(*) AS n FROM singer"))
        calls = len(model.requests())
        a.execute("SELECT * FROM dbrag.ask('how many singers')").fetchall()
        assert len(model.requests()) == calls + 1 and last_history(a)[1] == "ok"
        # Nor is it an example for the other connection's prompt.
        assert "Examples of questions" not in prompt_of(model.requests()[-1])
