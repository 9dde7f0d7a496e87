"""Follow-up questions (docs/llm-and-guard.md, "Conversations"): with a
conversation id, the prompt carries the earlier turns' questions and SQL,
never their rows, newest first inside a bounded share of the budget. A
conversation belongs to one tenant: another tenant's id reads nothing of
its turns, whoever the caller is."""

import uuid

import psycopg
import pytest

from conftest import token_for
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_ask import nl, sql_answer  # noqa: F401  (fixture)


def prompt_of(request):
    return "\n".join(m["content"] for m in request["body"]["messages"])


def earlier_part(prompt):
    """The conversation section of a prompt ('' when there is none)."""
    marker = "Earlier in this conversation"
    if marker not in prompt:
        return ""
    return prompt.split(marker, 1)[1].split("\nQuestion:", 1)[0]


# Turn 1's rows hold 'zqxv' || count: the SQL spells the pieces apart, so
# the marker reaches a prompt only if rows do.
TURN1_SQL = "SELECT country, 'zq' || 'xv' || count(*) AS tag FROM singer GROUP BY country ORDER BY 1"
TURN2_SQL = "SELECT country, count(*) AS n FROM singer WHERE age > 40 GROUP BY country ORDER BY 1"


def test_follow_up_carries_questions_and_sql_never_rows(nl):
    tenants, sa, _, model = nl
    conv = uuid.uuid4()
    model.script(sql_answer(TURN1_SQL), sql_answer(TURN2_SQL))
    with tenants.conn(tenants.a_role) as a:
        rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('singers per country', conversation => %s)",
                                        (conv,))]
        assert {"country": "Netherlands", "tag": "zqxv1"} in rows
        first = prompt_of(model.requests()[-1])
        assert "Earlier in this conversation" not in first
        rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('and only those older than 40?', 100, %s)",
                                        (conv,))]
        assert rows == [{"country": "Netherlands", "n": 1}]
        second = prompt_of(model.requests()[-1])
        earlier = earlier_part(second)
        assert "singers per country" in earlier and TURN1_SQL in earlier
        assert "zqxv" not in second and "Joe Sharp" not in earlier
        # The follow-up names no table; the earlier question found it.
        assert f"{sa}.singer" in second
        assert second.index("singers per country") < second.index("Question: and only those older than 40?")
        got = a.execute("SELECT conversation_id, question FROM control_plane.query_history "
                        "ORDER BY created_at").fetchall()
        assert got == [(conv, "singers per country"), (conv, "and only those older than 40?")]
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert last["conversation"] == str(conv) and last["sql"] == TURN2_SQL and last["status"] == "ok"
        (cid, first_q, turns), = a.execute(
            "SELECT conversation_id, first_question, turns FROM dbrag.conversations").fetchall()
        assert (cid, first_q, turns) == (conv, "singers per country", 2)


def test_generate_sql_follows_up_and_skips_the_cache(nl):
    tenants, _, _, model = nl
    conv = uuid.uuid4()
    model.script(sql_answer("SELECT count(*) FROM singer"), sql_answer(TURN1_SQL),
                 sql_answer("SELECT count(*) FROM singer WHERE age > 40"))
    with tenants.conn(tenants.a_role) as a:
        # Cached alone, but in a conversation the same words mean more.
        assert a.execute("SELECT dbrag.generate_sql('how many')").fetchone()[0] == "SELECT count(*) FROM singer"
        a.execute("SELECT dbrag.generate_sql('singers per country', %s)", (conv,))
        calls = len(model.requests())
        sql = a.execute("SELECT dbrag.generate_sql('how many', conversation => %s)", (conv,)).fetchone()[0]
        assert sql == "SELECT count(*) FROM singer WHERE age > 40"
        assert len(model.requests()) == calls + 1
        assert TURN1_SQL in earlier_part(prompt_of(model.requests()[-1]))
        # Without a conversation the cache still answers.
        assert a.execute("SELECT dbrag.generate_sql('how many')").fetchone()[0] == "SELECT count(*) FROM singer"
        assert len(model.requests()) == calls + 1


def test_failed_turns_are_not_carried(nl):
    tenants, _, _, model = nl
    conv = uuid.uuid4()
    model.script(sql_answer("DELETE FROM singer"), sql_answer("SELECT 1 AS one"))
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT * FROM dbrag.ask('wipe the singers', conversation => %s)", (conv,))
        assert e.value.sqlstate == "42601"
        last = a.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert last["status"] == "refused" and last["conversation"] == str(conv)
        a.execute("SELECT * FROM dbrag.ask('one', conversation => %s)", (conv,)).fetchall()
        assert "DELETE" not in prompt_of(model.requests()[-1])
        assert a.execute("SELECT turns FROM dbrag.conversations").fetchone()[0] == 2


def test_many_turns_keep_the_newest_inside_the_budget(su, nl):
    tenants, _, _, model = nl
    su.execute(f"ALTER ROLE {tenants.a_role} SET dbrag.prompt_token_budget = 3000")
    conv = uuid.uuid4()
    pad = " and also the singers' countries" * 12
    n = 30
    model.script(*[sql_answer(f"SELECT singer_id, name, country, {i} AS turn_{i:02d} FROM singer")
                   for i in range(n + 1)])
    with tenants.conn(tenants.a_role) as a:
        for i in range(n):
            a.execute("SELECT dbrag.generate_sql(%s, %s)", (f"turn {i:02d} singers{pad}", conv))
        a.execute("SELECT dbrag.generate_sql('and the last one?', %s)", (conv,))
    last = model.requests()[-1]
    prompt = prompt_of(last)
    earlier = earlier_part(prompt)
    shown = [i for i in range(n) if f"turn {i:02d} singers" in earlier]
    # The newest turns, contiguous, oldest dropped; bounded in count and size.
    assert shown and shown == list(range(shown[0], n)) and shown[0] > 0
    assert len(shown) <= 20
    assert len(prompt) <= 3000 * 4 + 400
    for i in shown:
        assert f"{i} AS turn_{i:02d}" in earlier
    su.execute(f"ALTER ROLE {tenants.a_role} RESET dbrag.prompt_token_budget")


B_QUESTION = "b-only question about quokka-7781"
B_SQL = "SELECT name AS quokka7781 FROM singer"


@pytest.fixture
def b_conversation(nl):
    tenants, _, _, model = nl
    conv = uuid.uuid4()
    model.script(sql_answer(B_SQL))
    with tenants.conn(tenants.b_role) as b:
        b.execute("SELECT * FROM dbrag.ask(%s, conversation => %s)", (B_QUESTION, conv)).fetchall()
    return conv


def ask_in(conn, conv, model):
    model.script(sql_answer("SELECT 1 AS one"))
    rows = conn.execute("SELECT * FROM dbrag.ask('and the rest?', conversation => %s)", (conv,)).fetchall()
    assert rows == [({"one": 1},)]
    return prompt_of(model.requests()[-1])


@pytest.mark.parametrize("caller", ["login", "app_token", "app_uuid", "operator"])
def test_other_tenants_conversation_leaks_nothing(nl, b_conversation, caller):
    tenants, _, _, model = nl
    conv = b_conversation
    if caller == "login":
        c = tenants.conn(tenants.a_role)
    elif caller == "operator":
        c = tenants.conn(tenants.admin_role)
        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
    else:
        c = tenants.conn(tenants.app_role)
        if caller == "app_token":
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        else:
            c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
    with c:
        prompt = ask_in(c, conv, model)
        assert "quokka" not in prompt and "Earlier in this conversation" not in prompt
        # It became tenant A's own conversation of one turn.
        last = c.execute("SELECT dbrag.last_answer()").fetchone()[0]
        assert last["conversation"] == str(conv)
        rows = c.execute("SELECT tenant_id, turns, first_question FROM dbrag.conversations "
                         "WHERE conversation_id = %s ORDER BY tenant_id = %s", (conv, tenants.b)).fetchall()
        if caller == "operator":  # operators read every tenant's history
            assert rows == [(tenants.a, 1, "and the rest?"), (tenants.b, 1, B_QUESTION)]
        else:
            assert rows == [(tenants.a, 1, "and the rest?")]
        # A second turn in A carries A's turn only.
        prompt = ask_in(c, conv, model)
        assert "and the rest?" in earlier_part(prompt) and "quokka" not in prompt
    with tenants.conn(tenants.b_role) as b:
        assert b.execute("SELECT tenant_id, turns, first_question FROM dbrag.conversations").fetchall() == [
            (tenants.b, 1, B_QUESTION)]


def test_unknown_conversation_starts_a_new_one(nl, b_conversation):
    tenants, _, _, model = nl
    with tenants.conn(tenants.b_role) as b:
        prompt = ask_in(b, uuid.uuid4(), model)
        assert "quokka" not in prompt and "Earlier in this conversation" not in prompt
        # The same tenant's conversation is carried.
        prompt = ask_in(b, b_conversation, model)
        assert B_QUESTION in earlier_part(prompt) and B_SQL in earlier_part(prompt)


def test_view_lists_only_own_conversations(nl, b_conversation):
    tenants, _, _, model = nl
    conv_a = uuid.uuid4()
    with tenants.conn(tenants.a_role) as a:
        ask_in(a, conv_a, model)
        model.script(sql_answer("SELECT 2 AS two"))
        a.execute("SELECT * FROM dbrag.ask('no conversation here')").fetchall()
        assert a.execute("SELECT tenant_id, conversation_id, turns FROM dbrag.conversations").fetchall() == [
            (tenants.a, conv_a, 1)]
        # Nor through the table it reads.
        assert a.execute("SELECT count(*) FROM control_plane.query_history WHERE conversation_id = %s",
                         (b_conversation,)).fetchone()[0] == 0
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert app.execute("SELECT conversation_id FROM dbrag.conversations").fetchall() == [(b_conversation,)]
    with tenants.conn(tenants.stranger) as s:
        assert s.execute("SELECT count(*) FROM dbrag.conversations").fetchone()[0] == 0
    with tenants.conn(tenants.admin_role) as ops:
        got = ops.execute("SELECT tenant_id FROM dbrag.conversations WHERE conversation_id IN (%s, %s) "
                          "ORDER BY 1", (conv_a, b_conversation)).fetchall()
        assert sorted(got) == sorted([(tenants.a,), (tenants.b,)])


def test_at_most_twenty_earlier_turns(nl):
    tenants, _, _, model = nl
    conv = uuid.uuid4()
    n = 26
    model.script(*[sql_answer(f"SELECT {i} AS t{i}") for i in range(n + 1)])
    with tenants.conn(tenants.a_role) as a:
        for i in range(n):
            a.execute("SELECT dbrag.generate_sql(%s, %s)", (f"short turn {i:02d}", conv))
        a.execute("SELECT dbrag.generate_sql('and now?', %s)", (conv,))
        assert a.execute("SELECT turns FROM dbrag.conversations").fetchone()[0] == n + 1
    earlier = earlier_part(prompt_of(model.requests()[-1]))
    shown = [i for i in range(n) if f"short turn {i:02d}" in earlier]
    # Small turns all fit the budget: the count bound keeps the newest 20.
    assert shown == list(range(n - 20, n))


def test_a_follow_up_of_a_follow_up_still_finds_the_table(nl):
    tenants, sa, _, model = nl
    conv = uuid.uuid4()
    model.script(sql_answer("SELECT capacity FROM stadium"), sql_answer("SELECT max(capacity) FROM stadium"),
                 sql_answer("SELECT min(capacity) FROM stadium"))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.generate_sql('stadium capacity', %s)", (conv,))
        a.execute("SELECT dbrag.generate_sql('and the largest?', %s)", (conv,))
        assert f"{sa}.stadium" in prompt_of(model.requests()[-1])
        a.execute("SELECT dbrag.generate_sql('and the smallest?', %s)", (conv,))
        assert f"{sa}.stadium" in prompt_of(model.requests()[-1])
        # Without the conversation the same words find nothing to go on.
        model.script(sql_answer("SELECT 1"))
        a.execute("SELECT dbrag.generate_sql('and the smallest?')")
        assert f"{sa}.stadium" not in prompt_of(model.requests()[-1])
