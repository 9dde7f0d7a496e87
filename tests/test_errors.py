"""Errors that say what happened (README.md, "Errors"): each kind of data-plane
failure has its own SQLSTATE on every engine where it applies (connect
failure 08001, authentication failure 28P01, a rejected statement with the
remote's SQLSTATE and the remote's code in DETAIL, timeout 57014, a cancel
57014 with its own message); only a
rejected statement goes back to the model, and what the model is sent is
that statement's error message alone. Callers: tenants' own login roles over
TCP, the app server (dbrag_app with set_tenant), the operator paths
(superuser-only _remote_query/_dataplane_query)."""

import threading

import psycopg
import pytest

from conftest import HOST, REMOTE_PORT
from llm_fixture import llm_server, wait_until  # noqa: F401  (fixture)
from remote_fixture import REMOTE_DB, closed_port, remote_conninfo, remote_su, setup_remote
from test_ask import nl, sql_answer  # noqa: F401  (fixture)
from test_mysql import b_mysql, mysql  # noqa: F401  (fixture)
from mysql_fixture import mysql_uri
from test_sqlite import b_sqlite, sqlite_dir  # noqa: F401  (fixture)


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def prompt_of(request):
    return "\n".join(m["content"] for m in request["body"]["messages"])


@pytest.fixture(scope="module")
def remote(database):
    setup_remote()
    return remote_conninfo()


# ------------------------------------------------------------------ remote PostgreSQL

def test_postgres_wrong_password_is_28P01(tenants, remote):
    secret = "wrong-pw-E7x1"
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (remote_conninfo(password=secret),))
        assert e.sqlstate == "28P01", e
        assert "password authentication failed" in str(e) and secret not in str(e)


def test_postgres_unreachable_port_is_08001(tenants):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)",
                (remote_conninfo(port=closed_port()),))
        assert e.sqlstate == "08001" and "refused" in str(e).lower(), e


def test_postgres_missing_database_is_08001(tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)",
                (remote_conninfo(dbname="no_such_db_e"),))
        assert e.sqlstate == "08001" and "no_such_db_e" in str(e), e


@pytest.mark.parametrize("sql,state", [
    ("SELECT nope FROM customers", "42703"),
    ("SELECT * FROM no_such_table", "42P01"),
    ("SELECT * FROM hidden_payroll", "42501"),
    ("SELECT 1/0", "22012"),
    ("SELEC 1", "42601"),
    ("CREATE TABLE evil (x int)", "25006"),
])
def test_postgres_statement_error_keeps_the_remote_sqlstate(su, tenants, remote, sql, state):
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('err_pg', 'postgres', %s)", (remote,)).fetchone()[0]
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    try:
        e = err(su, "SELECT dbrag._remote_query(%s, %s)", (cid, sql))
        assert e.sqlstate == state, e
        assert e.diag.message_detail == f"remote SQLSTATE {state}"
        assert "password" not in str(e)
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


def test_postgres_statement_timeout_is_57014(su, tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('err_pg', 'postgres', %s)", (remote,)).fetchone()[0]
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    try:
        e = err(su, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT pg_sleep(5)', 1, 300)", (cid,))
        assert e.sqlstate == "57014" and "300" in str(e), e
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


# ------------------------------------------------------------------ MySQL and SQLite

def test_mysql_kinds(tenants, mysql, b_mysql):  # noqa: F811
    with tenants.conn(tenants.b_role) as b:
        secret = "wrong-My-pw-E3"
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql_uri(password=secret),))
        assert e.sqlstate == "28P01" and secret not in str(e), e
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql_uri(port=closed_port()),))
        assert e.sqlstate == "08001", e
    c, cid = b_mysql
    # MySQL's 42S22 is not a PostgreSQL code: its class's, with MySQL's in DETAIL.
    e = err(c, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT no_such_column FROM customers')", (cid,))
    assert e.sqlstate == "42000" and "no_such_column" in str(e), e
    assert e.diag.message_detail == "MySQL error 1054, SQLSTATE 42S22"


def test_sqlite_statement_error_is_hv000(b_sqlite):  # noqa: F811
    c, cid = b_sqlite
    e = err(c, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT nope FROM customers')", (cid,))
    # SQLite has no SQLSTATE: HV000, with its result code in DETAIL.
    assert e.sqlstate == "HV000" and "nope" in str(e), e
    assert e.diag.message_detail.startswith("SQLite result code ")


# ------------------------------------------------------------------ what reaches the model

@pytest.fixture
def remote_ask(su, nl, remote):  # noqa: F811
    """Tenant B asks through an active remote PostgreSQL connection as its own
    remote role (created here, so the tests may break its login)."""
    tenants, _, _, model = nl
    user, pw = f"err_{tenants.tag}", "err-pw-51ac"
    with remote_su() as r:
        r.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{pw}'")
    with remote_su(REMOTE_DB) as r:
        r.execute(f"GRANT SELECT ON customers TO {user}")
    info = remote_conninfo(user=user, password=pw)
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('err_remote', 'postgres', %s)", (info,)).fetchone()[0]
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        b.execute("SELECT * FROM dbrag.sync_catalog()")
    yield tenants, model, user, pw
    with remote_su(REMOTE_DB) as r:
        r.execute(f"REVOKE ALL ON customers FROM {user}")
    with remote_su() as r:
        r.execute(f"GRANT CONNECT ON DATABASE {REMOTE_DB} TO PUBLIC")
        r.execute(f"DROP ROLE {user}")


def no_connection_details(text, user, pw):
    for leak in (user, pw, "password", HOST, str(REMOTE_PORT), "host=", "authentication"):
        assert leak not in text, leak


def ask_fails_after_one_model_call(conn, model, user, pw, state):
    """ask() on a data plane that cannot be used: the model is asked once,
    the call fails with `state`, and nothing of the failure reaches the model."""
    model.script(sql_answer("SELECT name FROM customers"), sql_answer("SELECT name FROM customers"))
    e = err(conn, "SELECT * FROM dbrag.ask('customer names')")
    assert e.sqlstate == state and pw not in str(e), e
    requests = model.requests()
    assert len(requests) == 1
    no_connection_details(prompt_of(requests[0]), user, pw)


@pytest.mark.parametrize("caller", ["tenant", "app"])
@pytest.mark.parametrize("breakage,state", [
    # The remote rejects the password: 28P01.
    ("ALTER ROLE {user} PASSWORD 'changed-E9'", "28P01"),
    # The server refuses the session (no CONNECT on the database): 08001.
    (f"REVOKE CONNECT ON DATABASE {REMOTE_DB} FROM PUBLIC", "08001"),
])
def test_unusable_data_plane_makes_one_model_call(remote_ask, breakage, state, caller):
    tenants, model, user, pw = remote_ask
    with remote_su() as r:
        r.execute(breakage.format(user=user))
    if caller == "tenant":
        with tenants.conn(tenants.b_role) as b:
            ask_fails_after_one_model_call(b, model, user, pw, state)
    else:
        # The app server asks for tenant B.
        with tenants.conn(tenants.app_role) as app:
            app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
            ask_fails_after_one_model_call(app, model, user, pw, state)


def test_retry_prompt_has_the_statement_error_only(remote_ask):
    tenants, model, user, pw = remote_ask
    model.script(sql_answer("SELECT nickname FROM customers"), sql_answer("SELECT name FROM customers ORDER BY id"))
    with tenants.conn(tenants.b_role) as b:
        rows = [r[0]["name"] for r in b.execute("SELECT * FROM dbrag.ask('customer nicknames')")]
        assert rows == ["Ada", "Bo"]
    requests = model.requests()
    assert len(requests) == 2
    retry = prompt_of(requests[1])
    assert "nickname" in retry and "does not exist" in retry
    no_connection_details(retry, user, pw)


def test_failed_retry_keeps_the_remote_sqlstate(remote_ask):
    tenants, model, user, pw = remote_ask
    model.script(sql_answer("SELECT nickname FROM customers"), sql_answer("SELECT name / 0 FROM customers"))
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.ask('customer nicknames')")
        # The second statement's own error, not 42601.
        assert e.sqlstate == "42883", e
        assert e.diag.message_detail == "remote SQLSTATE 42883"
    assert len(model.requests()) == 2


def test_failed_retry_keeps_the_local_sqlstate(nl):  # noqa: F811
    tenants, _, _, model = nl
    model.script(sql_answer("SELECT count(*) / 0 FROM singer"), sql_answer("SELECT 1 / (count(*) - count(*)) FROM singer"))
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT * FROM dbrag.ask('singers per zero')")
        assert e.sqlstate == "22012" and "division by zero" in str(e), e
    assert len(model.requests()) == 2
    assert "division by zero" in prompt_of(model.requests()[1])


def test_postgres_cancel_on_the_remote_is_57014_with_its_own_message(su, tenants, remote):
    # Someone cancels the statement on the remote server (not our deadline):
    # 57014 still, but the message says it was cancelled, not that it took too long.
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('err_pg', 'postgres', %s)", (remote,)).fetchone()[0]
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    out = {}

    def run():
        try:
            su.execute("SELECT dbrag._remote_query(%s, 'SELECT pg_sleep(30) AS e_cancel_me', 60000)", (cid,))
        except psycopg.Error as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        with remote_su() as r:
            probe = ("SELECT pid FROM pg_stat_activity WHERE query LIKE '%e_cancel_me%' AND state = 'active' "
                     "AND pid <> pg_backend_pid()")
            assert wait_until(lambda: r.execute(probe).fetchone() is not None, 10)
            r.execute(f"SELECT pg_cancel_backend(({probe} LIMIT 1))")
        t.join(10)
        assert not t.is_alive()
        e = out["error"]
        assert e.sqlstate == "57014" and "cancelled" in str(e) and "longer than" not in str(e), e
    finally:
        t.join(10)
        su.execute("SELECT dbrag.reset_tenant()")
