"""Model budgets per tenant (docs/llm-and-guard.md, "Budgets"): calls per
minute and tokens per day, counted in shared memory across every session,
enforced before the model is called (53400 with the reset time, audited),
set by operators only, and shown in dbrag.usage."""

import re
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from conftest import connect
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_ask import nl  # noqa: F401  (fixture)

ANSWER = {"contains": "", "content": "```sql\nSELECT count(*) FROM singer\n```"}
RESET = re.compile(r"resets at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\+00")


def away_from_minute_end(margin=20):
    """Start a per-minute count with at least `margin` seconds left in the
    current UTC minute, so the window cannot roll over during the test."""
    if time.time() % 60 > 60 - margin:
        time.sleep(60 - time.time() % 60 + 0.5)


def ask_sql(conn, question):
    return conn.execute("SELECT dbrag.generate_sql(%s)", (question,)).fetchone()[0]


def set_budget(tenants, tenant, calls, tokens):
    with tenants.conn(tenants.admin_role) as ops:
        ops.execute("SELECT dbrag.set_tenant_budget(%s, %s, %s)", (tenant, calls, tokens))


def budget_events(su, tenant):
    return su.execute("SELECT detail FROM control_plane.audit_log WHERE tenant_id = %s "
                      "AND event = 'budget_exceeded' ORDER BY audit_id", (tenant,)).fetchall()


def test_concurrent_sessions_get_exactly_the_budget(nl):
    """20 sessions, each its own TCP connection, race for 7 calls a minute:
    the model sees exactly 7 calls, everyone else gets 53400."""
    tenants, _, _, model = nl
    n, sessions, tries = 7, 20, 2
    set_budget(tenants, tenants.a, n, None)
    model.rules({**ANSWER, "delay_ms": 100})
    away_from_minute_end()
    model.reset()
    model.rules({**ANSWER, "delay_ms": 100})
    conns = [tenants.conn(tenants.a_role) for _ in range(sessions)]
    start = threading.Barrier(sessions)
    ok, refused, other = [], [], []

    def run(i):
        start.wait()
        for k in range(tries):
            try:
                ask_sql(conns[i], f"how many singers, session {i} try {k}")
                ok.append(i)
            except psycopg.Error as e:
                (refused if e.sqlstate == "53400" else other).append((i, e.sqlstate, str(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert other == []
    assert len(model.requests()) == n
    assert len(ok) == n and len(refused) == sessions * tries - n


def test_refusal_says_when_and_makes_no_call(su, nl):
    """Over the limit: 53400 naming the reset time (the next minute), an
    audit row, and no request at the model; the app server's calls for the
    tenant count against the same budget."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, 2, None)
    model.rules(ANSWER)
    away_from_minute_end()
    model.reset()
    model.rules(ANSWER)
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        ask_sql(app, "how many singers, from the app")
    with tenants.conn(tenants.a_role) as a:
        ask_sql(a, "how many singers, from alice")
        before = len(model.requests())
        for q in ("one more", "and another"):
            with pytest.raises(psycopg.Error) as e:
                a.execute("SELECT * FROM dbrag.ask(%s)", (q,))
            assert e.value.sqlstate == "53400"
        assert len(model.requests()) == before == 2
        msg = e.value.diag.message_primary
        assert "2 model calls per minute" in msg
        resets = datetime.strptime(RESET.search(msg).group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        now = datetime.now(timezone.utc)
        assert resets.second == 0 and now < resets <= now + timedelta(seconds=60)
        assert "retry after" in e.value.diag.message_hint
    events = budget_events(su, tenants.a)
    assert len(events) == 2 and events[0][0]["budget"] == "calls_per_minute" and events[0][0]["limit"] == 2


def test_tokens_per_day(su, nl):
    """A day's tokens: the call that crosses the limit is the last one
    admitted (it is settled with the usage the model reported); then 53400
    with the reset at the next UTC midnight."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, None, 50)
    model.reset()
    model.rules(ANSWER)
    with tenants.conn(tenants.a_role) as a:
        ask_sql(a, "how many singers")
        sent = model.requests()
        assert len(sent) == 1
        with pytest.raises(psycopg.Error) as e:
            ask_sql(a, "how many singers again")
        assert e.value.sqlstate == "53400"
        assert len(model.requests()) == 1
        msg = e.value.diag.message_primary
        assert "50 tokens per day" in msg
        midnight = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d 00:00:00+00")
        assert midnight in msg
        used, left, day_resets = a.execute(
            "SELECT tokens_used_today, tokens_left_today, day_resets_at FROM dbrag.usage").fetchone()
        assert used > 50 and left == 0
        assert day_resets.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") == midnight[:19]
    # Raising the budget takes effect at once, without a restart.
    set_budget(tenants, tenants.a, None, 1_000_000)
    with tenants.conn(tenants.a_role) as a:
        ask_sql(a, "how many singers, third time")
    assert len(model.requests()) == 2
    assert budget_events(su, tenants.a)[0][0]["budget"] == "tokens_per_day"


def test_one_tenant_cannot_spend_the_shared_key_for_all(nl):
    """A at its limit; B, on the same global key and model, still works."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, 1, None)
    set_budget(tenants, tenants.b, 5, None)
    model.rules(ANSWER)
    away_from_minute_end()
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        ask_sql(a, "how many singers")
        with pytest.raises(psycopg.Error) as e:
            ask_sql(a, "how many singers now")
        assert e.value.sqlstate == "53400"
        for i in range(3):
            assert ask_sql(b, f"how many singers, b {i}") == "SELECT count(*) FROM singer"
        assert b.execute("SELECT calls_left_this_minute FROM dbrag.usage").fetchone()[0] == 2
        assert a.execute("SELECT calls_left_this_minute FROM dbrag.usage").fetchone()[0] == 0


def test_only_operators_set_budgets(su, tenants):
    for role in (tenants.a_role, tenants.stranger):
        with tenants.conn(role) as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT dbrag.set_tenant_budget(%s, 1000, NULL)", (tenants.a,))
            assert e.value.sqlstate == "42501"
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        with pytest.raises(psycopg.Error) as e:
            app.execute("SELECT dbrag.set_tenant_budget(%s, 1000, NULL)", (tenants.a,))
        assert e.value.sqlstate == "42501"
    set_budget(tenants, tenants.a, 3, 100)
    with tenants.conn(tenants.a_role) as a:
        # The row is readable, not writable, even through the table.
        assert a.execute("SELECT calls_per_minute, tokens_per_day FROM control_plane.tenant_budgets").fetchall() == [(3, 100)]
        for sql in ("UPDATE control_plane.tenant_budgets SET calls_per_minute = NULL",
                    "DELETE FROM control_plane.tenant_budgets",
                    f"INSERT INTO control_plane.tenant_budgets VALUES ('{tenants.a}', NULL, NULL)"):
            with pytest.raises(psycopg.Error) as e:
                a.execute(sql)
            assert e.value.sqlstate == "42501"
    with tenants.conn(tenants.b_role) as b:
        assert b.execute("SELECT count(*) FROM control_plane.tenant_budgets").fetchone()[0] == 0
    assert su.execute("SELECT calls_per_minute FROM control_plane.tenant_budgets WHERE tenant_id = %s",
                      (tenants.a,)).fetchone()[0] == 3
    (detail,), = su.execute("SELECT detail FROM control_plane.audit_log WHERE tenant_id = %s "
                            "AND event = 'budget_set'", (tenants.a,)).fetchall()
    assert detail == {"calls_per_minute": 3, "tokens_per_day": 100}


@pytest.mark.parametrize("args", [
    (None, 1, 1),
    ("A", -1, None),
    ("A", None, -5),
    ("A", -2147483648, -1),
])
def test_bad_budget_arguments(tenants, args):
    tenant, calls, tokens = args
    tenant = tenants.a if tenant == "A" else tenant
    with tenants.conn(tenants.admin_role) as ops:
        with pytest.raises(psycopg.Error) as e:
            ops.execute("SELECT dbrag.set_tenant_budget(%s, %s, %s)", (tenant, calls, tokens))
        assert e.value.sqlstate == "22023"
        with pytest.raises(psycopg.Error) as e:
            ops.execute("SELECT dbrag.set_tenant_budget('00000000-0000-0000-0000-0000000000ff', 1, 1)")
        assert e.value.sqlstate == "42704"


def test_usage_per_caller(nl):
    """dbrag.usage: a tenant (login role, or the app server for it) sees its
    own line with what is left; the operator sees every tenant's."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, 10, 100_000)
    set_budget(tenants, tenants.b, 4, None)
    model.rules(ANSWER)
    away_from_minute_end()
    cols = "tenant_id, calls_per_minute, calls_left_this_minute, minute_resets_at, tokens_per_day, tokens_left_today"
    with tenants.conn(tenants.a_role) as a:
        ask_sql(a, "how many singers")
        (tid, cpm, left, resets, tpd, tokens_left), = a.execute(f"SELECT {cols} FROM dbrag.usage").fetchall()
        assert (tid, cpm, left, tpd) == (tenants.a, 10, 9, 100_000)
        assert 0 < tokens_left < 100_000 and resets > datetime.now(timezone.utc)
        assert a.execute("SELECT count(*) FROM dbrag.budget_status()").fetchone()[0] == 1
    with tenants.conn(tenants.app_role) as app:
        assert app.execute("SELECT count(*) FROM dbrag.usage").fetchone()[0] == 0
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        (tid, cpm, left, _, tpd, tokens_left), = app.execute(f"SELECT {cols} FROM dbrag.usage").fetchall()
        assert (tid, cpm, left, tpd, tokens_left) == (tenants.b, 4, 4, None, None)
    with tenants.conn(tenants.admin_role) as ops:
        rows = {r[0]: r[1:3] for r in ops.execute(f"SELECT {cols} FROM dbrag.usage")}
        assert rows[tenants.a] == (10, 9) and rows[tenants.b] == (4, 4)
    with tenants.conn(tenants.stranger) as eve:
        assert eve.execute("SELECT count(*) FROM dbrag.usage").fetchone()[0] == 0


def test_no_budget_no_limit(nl):
    """A tenant without a budget row, or with both limits NULL, is not
    limited and shows NULLs for what is left."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, None, None)
    model.rules(ANSWER)
    with tenants.conn(tenants.a_role) as a:
        for i in range(3):
            ask_sql(a, f"how many singers {i}")
        assert a.execute("SELECT calls_per_minute, calls_left_this_minute, tokens_left_today "
                         "FROM dbrag.usage").fetchall() in ([], [(None, None, None)])
    with connect() as su:
        assert su.execute("SELECT count(*) FROM dbrag.budget_status() WHERE tenant_id = %s",
                          (tenants.a,)).fetchone()[0] == 0


def test_descriptions_at_sync_are_charged(su, nl):
    """sync_catalog(describe => true) calls the model once per new table:
    those calls count against the same budget and stop at it."""
    tenants, sa, _, model = nl
    for t in ("t_x", "t_y", "t_z"):
        su.execute(f"CREATE TABLE {sa}.{t} (a int, b text)")
        su.execute(f"GRANT SELECT ON {sa}.{t} TO {tenants.a_trole}")
    set_budget(tenants, tenants.a, 2, None)
    model.reset()
    model.rules({"contains": "", "content": '{"table": "a table", "columns": {"a": "a number"}}'})
    away_from_minute_end()
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT * FROM dbrag.sync_catalog(describe => true)")
        assert e.value.sqlstate == "53400"
        assert len(model.requests()) == 2
        assert a.execute("SELECT calls_left_this_minute FROM dbrag.usage").fetchone()[0] == 0


@pytest.mark.parametrize("stop", ["pg_cancel_backend", "pg_terminate_backend"])
def test_call_ended_midway_releases_its_tokens(su, nl, stop):
    """A call in flight holds its token estimate; a cancel (an ERROR) or a
    terminated backend (FATAL, no unwinding) gives it back, charging nothing."""
    from llm_fixture import wait_until
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, None, 1_000_000)
    model.reset()
    model.rules({"contains": "", "hang": True})
    victim = tenants.conn(tenants.a_role)
    pid = victim.info.backend_pid
    errors = []

    def run():
        try:
            ask_sql(victim, "how many singers, slowly")
        except psycopg.Error as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    with tenants.conn(tenants.a_role) as a:
        def left():
            return a.execute("SELECT tokens_left_today FROM dbrag.usage").fetchone()[0]
        assert wait_until(lambda: len(model.requests()) == 1)
        assert left() < 1_000_000
        su.execute(f"SELECT {stop}(%s)", (pid,))
        t.join(timeout=30)
        assert not t.is_alive() and errors
        assert wait_until(lambda: left() == 1_000_000)
    victim.close()


def test_the_stated_reset_time_holds(nl):
    """Refused until the time the error names; from then on, calls again."""
    tenants, _, _, model = nl
    set_budget(tenants, tenants.a, 1, None)
    model.rules(ANSWER)
    away_from_minute_end(margin=5)
    with tenants.conn(tenants.a_role) as a:
        ask_sql(a, "how many singers")
        with pytest.raises(psycopg.Error) as e:
            ask_sql(a, "how many singers, again")
        assert e.value.sqlstate == "53400"
        resets = datetime.strptime(RESET.search(e.value.diag.message_primary).group(1),
                                   "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        assert a.execute("SELECT minute_resets_at FROM dbrag.usage").fetchone()[0] == resets
        time.sleep(max(0.0, (resets - datetime.now(timezone.utc)).total_seconds()) + 0.5)
        assert ask_sql(a, "how many singers, next minute") == "SELECT count(*) FROM singer"
        assert a.execute("SELECT calls_left_this_minute FROM dbrag.usage").fetchone()[0] == 0
