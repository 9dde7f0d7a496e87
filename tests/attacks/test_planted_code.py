"""Acting as the tenant, class 1: a view of tenant A calls functions a
superuser owns (dbrag.set_tenant, dbrag.issue_token, current_setting of the
server's secrets) while the application server, an operator or a superuser
syncs A's catalog or asks for A. The work runs as A's own role in a
security-restricted operation: the switch and the token are refused, the
secrets stay unreadable, and the caller is still acting for A afterwards."""

import pytest

from attack_kit import (B_SECRET, CALLERS, assert_nothing_of_b, caller_conn, history, now,  # noqa: F401
                        peek_function, plane, llm_server, refused, sql_answer, still_works)


@pytest.fixture
def planted(su, plane):
    t, sa = plane.t, plane.sa
    su.execute(f"GRANT CREATE ON SCHEMA {sa} TO {t.a_trole}")
    with t.conn(t.a_role) as a:
        a.execute(peek_function(sa, t, plane.sb))
        # Calling the superuser-owned functions straight from the view, too.
        a.execute(f"CREATE VIEW {sa}.singer_switch AS SELECT name, "
                  f"dbrag.set_tenant('{t.b}'::uuid)::text AS moved FROM {sa}.singer")
        a.execute(f"CREATE VIEW {sa}.singer_token AS SELECT name, "
                  f"dbrag.issue_token('{t.b}'::uuid) AS token FROM {sa}.singer")
        a.execute(f"CREATE VIEW {sa}.singer_secret AS SELECT name, "
                  f"pg_catalog.current_setting('dbrag.jwt_secret') AS s FROM {sa}.singer")
        a.execute(f"CREATE VIEW {sa}.singer_peek AS SELECT name, {sa}.peek() AS note FROM {sa}.singer")
        a.execute(f"GRANT SELECT ON {sa}.singer_switch, {sa}.singer_token, {sa}.singer_secret, "
                  f"{sa}.singer_peek TO {t.a_trole}, PUBLIC")
        a.execute("SELECT * FROM dbrag.sync_catalog()")
    return plane


@pytest.mark.parametrize("who", CALLERS)
def test_sync_by_a_privileged_caller_runs_none_of_it_as_the_caller(su, planted, who):
    t = planted.t
    since = now(su)
    with caller_conn(t, who) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
        still_works(c)
    # The views that call set_tenant / issue_token / a secret fail as A's
    # role, so they give no samples; the peek view's samples show A's view.
    assert any("singer_switch" in n and "security-restricted" in n for n in notices), notices
    peek = su.execute("SELECT sample_values->>'note' FROM control_plane.table_metadata_catalog "
                      "WHERE tenant_id = %s AND table_name = 'singer_peek'", (t.a,)).fetchone()[0]
    assert peek and "no-switch" in peek and "no-token" in peek and "no-jwt" in peek and "no-b" in peek, peek
    assert t.a_name in peek  # A's own tenant row, through RLS
    assert_nothing_of_b(su, t, notices, since=since)


@pytest.mark.parametrize("who", CALLERS)
def test_ask_by_a_privileged_caller_runs_the_view_as_the_tenant(su, planted, who):
    t, model = planted.t, planted.model
    since = now(su)
    answers = []
    with caller_conn(t, who) as c:
        for view, state in (("singer_switch", "42501"), ("singer_token", "42501"), ("singer_secret", "42501")):
            model.reset()
            model.script(sql_answer(f"SELECT * FROM {view}"), sql_answer(f"SELECT * FROM {view}"))
            e = refused(c, "SELECT * FROM dbrag.ask(%s)", (f"everything from {view}",))
            assert e.sqlstate == state, e
            answers.append(str(e))
            assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
        model.reset()
        model.script(sql_answer("SELECT name, note FROM singer_peek ORDER BY 1"))
        rows = c.execute("SELECT * FROM dbrag.ask('singers with a peek')").fetchall()
        answers.append(rows)
        assert len(rows) == 2 and all("no-switch" in str(r) for r in rows), rows
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    assert_nothing_of_b(su, t, *answers, since=since)


def test_the_member_itself_gets_the_same_and_no_more(su, planted):
    t, model = planted.t, planted.model
    with t.conn(t.a_role) as a:
        model.reset()
        model.script(sql_answer("SELECT name, note FROM singer_peek ORDER BY 1"))
        rows = a.execute("SELECT * FROM dbrag.ask('singers with a peek')").fetchall()
        assert len(rows) == 2 and "no-b" in str(rows)
    assert_nothing_of_b(su, t, rows)


@pytest.mark.parametrize("who", CALLERS)
def test_the_callers_session_is_restored_on_every_path(su, planted, who):
    # The tenant's code changes settings for the session; pg_dbrag rolls
    # them back and restores the caller's role and search_path, after a
    # success and after an error alike (as REFRESH MATERIALIZED VIEW does).
    t, model, sa = planted.t, planted.model, planted.sa
    with t.conn(t.a_role) as a:
        a.execute(f"""CREATE FUNCTION {sa}.setter() RETURNS text LANGUAGE plpgsql AS $$ BEGIN
            PERFORM pg_catalog.set_config('work_mem', '1234kB', false);
            PERFORM pg_catalog.set_config('search_path', '{sa}', false);
            RETURN 'set'; END $$""")
        a.execute(f"CREATE VIEW {sa}.singer_setter AS SELECT name, {sa}.setter() AS s FROM {sa}.singer")
        a.execute(f"GRANT SELECT ON {sa}.singer_setter TO PUBLIC")
        a.execute("SELECT * FROM dbrag.sync_catalog()")
    probe = "SELECT current_user, session_user, current_setting('search_path'), current_setting('work_mem')"
    with caller_conn(t, who) as c:
        before = c.execute(probe).fetchone()
        model.reset()
        model.script(sql_answer("SELECT name, s FROM singer_setter"))
        rows = c.execute("SELECT * FROM dbrag.ask('singers, with settings')").fetchall()
        assert len(rows) == 2 and "set" in str(rows)
        assert c.execute(probe).fetchone() == before
        model.reset()
        model.script(sql_answer("SELECT * FROM singer_switch"), sql_answer("SELECT * FROM singer_switch"))
        refused(c, "SELECT * FROM dbrag.ask('switch me')")
        assert c.execute(probe).fetchone() == before
        c.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        assert c.execute(probe).fetchone() == before
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
