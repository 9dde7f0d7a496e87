"""Explanations (docs/llm-and-guard.md, "Explanations"): explain_sql checks a
statement with the same guard as ask, as the tenant's role, before any model
call; the model's answer is cleaned and bounded; ask(explain => true) exposes
the explanation of what it ran through last_answer()."""

import psycopg
import pytest

from conftest import token_for
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_ask import nl, sql_answer  # noqa: F401  (fixture)

EXPLANATION = "It lists the names of all singers, in the order of their ids."


def state_of(conn, sql, args=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args).fetchall()
    return e.value.sqlstate


def history(conn):
    return conn.execute("SELECT query_id, status, question, generated_sql, explanation, error "
                        "FROM control_plane.query_history ORDER BY created_at").fetchall()


def test_explain_sql_as_tenant_app_server_and_operator(nl):
    tenants, sa, sb, model = nl
    model.script({"content": EXPLANATION}, {"content": EXPLANATION}, {"content": EXPLANATION})
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT dbrag.explain_sql('SELECT name FROM singer ORDER BY singer_id')").fetchone()[0] \
            == EXPLANATION
        sent = model.requests()[-1]["body"]
        assert "explain" in sent["messages"][0]["content"].lower()
        user = sent["messages"][-1]["content"]
        assert "SELECT name FROM singer ORDER BY singer_id" in user
        # The definition of the table it reads (the tenant's own), no other.
        assert f"CREATE TABLE {sa}.singer" in user and "concert" not in user and sb not in user
        assert "Joe Sharp" not in user.split("Statement:")[1]
        assert sent["max_tokens"] <= 800
        (hid, status, question, sql, explanation, error), = history(a)
        assert (status, question, explanation, error) == ("ok", None, EXPLANATION, None) and "singer" in sql
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert last == {"history_id": str(hid), "status": "ok", "sql": sql, "conversation": None,
                        "explanation": EXPLANATION}
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        assert app.execute("SELECT dbrag.explain_sql('SELECT count(*) FROM singer')").fetchone()[0] == EXPLANATION
    with tenants.conn(tenants.admin_role) as ops:
        ops.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.b),))
        assert ops.execute("SELECT dbrag.explain_sql('SELECT count(*) FROM singer')").fetchone()[0] == EXPLANATION
    with tenants.conn(tenants.stranger) as s:
        assert state_of(s, "SELECT dbrag.explain_sql('SELECT 1')") == "42501"


REFUSED = [
    "DELETE FROM singer",
    "SELECT 1; DROP TABLE singer",
    "SELECT set_config('dbrag.tenant_id', 'x', false)",
    "SELECT pg_read_file('/etc/passwd')",
    "WITH d AS (DELETE FROM singer RETURNING *) SELECT * FROM d",
    "SELECT * FROM control_plane.tenants",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT name FROM singer FOR UPDATE",
    "SELECT query_to_xml('select * from control_plane.tenants', true, true, '')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_like_ask_without_a_model_call(nl, sql):
    tenants, _, sb, model = nl
    with tenants.conn(tenants.a_role) as a:
        calls = len(model.requests())
        got = state_of(a, "SELECT dbrag.explain_sql(%s)", (sql,))
        assert len(model.requests()) == calls  # the guard refused before the model
        model.script(sql_answer(sql))
        assert got == state_of(a, "SELECT * FROM dbrag.ask('do it')")
        rows = history(a)
        assert [r[1] for r in rows] == ["refused", "refused"] and rows[0][2] is None and rows[0][5]
        assert a.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'sql_refused'").fetchone()[0] == 2
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        # The failed call's row, committed by the background writer.
        assert last["status"] == "refused" and last["history_id"] == str(rows[-1][0])


def test_other_tenants_table_is_refused(nl):
    tenants, _, sb, model = nl
    with tenants.conn(tenants.a_role) as a:
        calls = len(model.requests())
        assert state_of(a, f"SELECT dbrag.explain_sql('SELECT name FROM {sb}.singer')") == "42501"
        assert state_of(a, "SELECT dbrag.explain_sql('SELECT nope FROM singer')") == "42601"
        assert len(model.requests()) == calls


def test_bad_input(nl):
    tenants, _, _, model = nl
    with tenants.conn(tenants.a_role) as a:
        calls = len(model.requests())
        assert state_of(a, "SELECT dbrag.explain_sql(NULL)") == state_of(a, "SELECT * FROM dbrag.ask(NULL)")
        assert state_of(a, "SELECT dbrag.explain_sql('')") == "22023"
        assert state_of(a, "SELECT dbrag.explain_sql(E' \\n\\t ')") == "22023"
        assert state_of(a, "SELECT dbrag.explain_sql(repeat('x', 100001))") == "54000"
        assert state_of(a, "SELECT dbrag.explain_sql(repeat('é', 100001))") == "54000"
        assert len(model.requests()) == calls
        assert a.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("entry", [
    {"content": ""},
    {"content": "   \n  "},
    {"content": "```sql\nSELECT name FROM singer\n```"},
    {"content": "\u0000\u0001\u0002"},
    {"status": 500},
    {"raw_body": "not json"},
])
def test_garbage_model_answer_is_a_clean_error(nl, entry):
    tenants, _, _, model = nl
    model.script(entry)
    with tenants.conn(tenants.a_role) as a:
        assert state_of(a, "SELECT dbrag.explain_sql('SELECT name FROM singer')") == "39000"
        (_, status, _, _, explanation, error), = history(a)
        assert status == "model_error" and explanation is None and error
        assert a.execute("SELECT 1").fetchone()[0] == 1


def test_answer_is_cleaned_and_bounded(nl):
    tenants, _, _, model = nl
    model.script({"content": "It counts.\u0000\u0007\n```sql\nSELECT 1\n```\n" + "very " * 5000})
    with tenants.conn(tenants.a_role) as a:
        text = a.execute("SELECT dbrag.explain_sql('SELECT count(*) FROM singer')").fetchone()[0]
        assert text.startswith("It counts.\n") and "SELECT 1" not in text and "\u0007" not in text
        assert len(text) <= 4001 and text.endswith("…")


def test_ask_with_explain_and_last_answer(nl):
    tenants, _, _, model = nl
    sql = "SELECT name FROM singer ORDER BY singer_id"
    model.script(sql_answer(sql), {"content": EXPLANATION})
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT dbrag.last_answer()").fetchone()[0] is None
        rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('list the singers', explain => true)")]
        assert rows == [{"name": "Joe Sharp"}, {"name": "Timbaland"}]
        # The explanation was asked about the statement that ran.
        assert sql in model.requests()[-1]["body"]["messages"][-1]["content"]
        (hid, status, question, got_sql, explanation, _), = history(a)
        assert (status, question, got_sql, explanation) == ("ok", "list the singers", sql, EXPLANATION)
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert last == {"history_id": str(hid), "status": "ok", "sql": sql, "conversation": None,
                        "explanation": EXPLANATION}
        # A cached answer is explained again; without the flag, no explanation.
        model.script({"content": "Same again."})
        a.execute("SELECT * FROM dbrag.ask('list the singers', 10, NULL, true)").fetchall()
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert (last["status"], last["explanation"]) == ("cached", "Same again.")
        calls = len(model.requests())
        assert len(a.execute("SELECT * FROM dbrag.ask('list the singers', 1)").fetchall()) == 1
        assert len(model.requests()) == calls
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert (last["status"], last["explanation"]) == ("cached", None)


def test_failed_explanation_keeps_the_rows(nl):
    tenants, _, _, model = nl
    model.script(sql_answer("SELECT count(*) AS n FROM singer"), {"content": ""})
    with tenants.conn(tenants.a_role) as a:
        warnings = []
        a.add_notice_handler(lambda d: warnings.append(d.message_primary))
        rows = a.execute("SELECT * FROM dbrag.ask('count singers', explain => true)").fetchall()
        assert rows == [({"n": 2},)]
        assert any("no explanation" in w for w in warnings)
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert (last["status"], last["explanation"]) == ("ok", None)


def test_last_answer_stays_with_its_tenant(nl):
    tenants, _, _, model = nl
    model.script(sql_answer("SELECT 'a-secret-77' AS s"), {"content": "It returns a secret."})
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        app.execute("SELECT * FROM dbrag.ask('the secret', explain => true)").fetchall()
        assert "a-secret-77" in app.execute("SELECT dbrag.last_answer() ->> 'sql'").fetchone()[0]
        # The pooled connection handed to tenant B shows nothing of A's answer.
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert app.execute("SELECT dbrag.last_answer()").fetchone()[0] is None
        app.execute("SELECT dbrag.reset_tenant()")
        assert app.execute("SELECT dbrag.last_answer()").fetchone()[0] is None
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert app.execute("SELECT dbrag.last_answer() ->> 'explanation'").fetchone()[0] == "It returns a secret."


def test_explain_on_a_remote_postgres_connection(nl):
    from remote_fixture import remote_conninfo, setup_remote
    tenants, _, _, model = nl
    setup_remote()
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('remote', 'postgres', %s)", (remote_conninfo(),)).fetchone()[0]
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        b.execute("SELECT * FROM dbrag.sync_catalog()")
        calls = len(model.requests())
        assert state_of(b, "SELECT dbrag.explain_sql('SELECT * FROM pg_catalog.pg_shadow')") == "42501"
        model.script(sql_answer("SELECT * FROM pg_catalog.pg_shadow"))
        assert state_of(b, "SELECT * FROM dbrag.ask('passwords')") == "42501"
        assert len(model.requests()) == calls + 1  # ask's call only
        model.script({"content": "The names of the customers."})
        assert b.execute("SELECT dbrag.explain_sql('SELECT name FROM customers')").fetchone()[0] \
            == "The names of the customers."
        assert "CREATE TABLE" in model.requests()[-1]["body"]["messages"][-1]["content"]
