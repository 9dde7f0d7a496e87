"""The contract every remote engine keeps, one suite parametrised over the
engines (MySQL/MariaDB and SQLite; docs/engines.md): a slow statement ends
at its own limit, at the caller's statement_timeout and at
pg_cancel_backend, with 57014, the work stopped on the server too and the
backend usable after; another tenant cannot reach the connection; the
internal entry points are superuser-only. dbrag.ask() end to end on each
engine. Engine-specific behaviour stays in test_mysql.py and test_sqlite.py."""

import threading
import time
import uuid

import psycopg
import pytest

from llm_fixture import llm_server, wait_until  # noqa: F401  (fixture)
from mysql_fixture import general_log, running_like
from test_ask_engines import REVENUE, engines, history, prompt_of, sql_answer  # noqa: F401  (fixture)
from test_mysql import b_mysql, mysql  # noqa: F401  (fixture)
from test_sqlite import b_sqlite, sqlite_dir  # noqa: F401  (fixture)

# A MySQL statement that runs for minutes; {k} tells calls apart in the
# server's process list.
MYSQL_SLOW = "SELECT count(*) AS n FROM nums a, nums b, nums c, nums d WHERE a.n + b.n + c.n + d.n = {k}"
SQLITE_FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c"


class Engine:
    """What differs between engines in the shared contract."""

    def __init__(self, name, slow, running, own_limit_ms, own_limit_s, statement_timeout_ms,
                 catalog_tables, update):
        self.name = name
        self.slow = slow                  # k -> a slow statement
        self.running = running            # k -> how many such statements the server runs (None: no server)
        self.own_limit_ms = own_limit_ms  # the call's own timeout_ms
        self.own_limit_s = own_limit_s    # how soon it must end then
        self.statement_timeout_ms = statement_timeout_ms
        self.catalog_tables = catalog_tables
        self.update = update              # an update_connection argument for this engine


ENGINES = {
    "mysql": Engine("mysql", lambda k: MYSQL_SLOW.format(k=k), lambda k: running_like(str(k)),
                    500, 2.0, 400, 5, "schema_name => 'otherdb'"),
    "sqlite": Engine("sqlite", lambda k: SQLITE_FOREVER, None, 300, 1.5, 300, 4, "conninfo => 'shop.db'"),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """(Engine, superuser session acting for tenant B, B's synced connection)."""
    fixture = {"mysql": "b_mysql", "sqlite": "b_sqlite"}[request.param]
    c, cid = request.getfixturevalue(fixture)
    return ENGINES[request.param], c, cid


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def stopped_on_the_server(eng, k):
    return eng.running is None or wait_until(lambda: eng.running(k) == 0, 5)


# ------------------------------------------------------------------ timeouts and cancellation

def test_slow_query_stopped_by_its_timeout(engine):
    eng, c, cid = engine
    k = 9_000_001
    t0 = time.monotonic()
    e = err(c, "SELECT * FROM dbrag._dataplane_query(%s, %s, 10, %s)", (cid, eng.slow(k), eng.own_limit_ms))
    elapsed = time.monotonic() - t0
    assert e.sqlstate == "57014" and elapsed < eng.own_limit_s, (str(e), elapsed)
    if eng.name == "sqlite":
        assert f"{eng.own_limit_ms} ms" in str(e)
    assert stopped_on_the_server(eng, k)
    assert c.execute("SELECT 1").fetchone()[0] == 1


def test_slow_query_stopped_by_statement_timeout(engine):
    eng, c, cid = engine
    k = 9_000_002
    c.execute(f"SET statement_timeout = {eng.statement_timeout_ms}")
    t0 = time.monotonic()
    e = err(c, "SELECT * FROM dbrag._dataplane_query(%s, %s, 10, 60000)", (cid, eng.slow(k)))
    assert e.sqlstate == "57014" and time.monotonic() - t0 < 1.5
    c.execute("RESET statement_timeout")
    # MySQL: KILL QUERY stopped it on the server too.
    assert stopped_on_the_server(eng, k)
    assert c.execute("SELECT 2").fetchone()[0] == 2


def test_slow_query_cancelled_by_pg_cancel_backend(su, engine):
    eng, c, cid = engine
    k = 9_000_003
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    out = {}

    def run():
        try:
            c.execute("SELECT * FROM dbrag._dataplane_query(%s, %s, 10, 60000)", (cid, eng.slow(k))).fetchall()
        except psycopg.Error as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    if eng.running is None:
        time.sleep(0.5)
    else:
        assert wait_until(lambda: eng.running(k) == 1, 10)
    t_cancel = time.monotonic()
    su.execute("SELECT pg_cancel_backend(%s)", (pid,))
    t.join(10)
    assert not t.is_alive()
    assert out["error"].sqlstate == "57014", out
    assert time.monotonic() - t_cancel < 1.0
    assert stopped_on_the_server(eng, k)
    # The backend is usable, and so is the connection.
    assert c.execute("SELECT 41 + 1").fetchone()[0] == 42
    rows = c.execute("SELECT * FROM dbrag._dataplane_query(%s, 'SELECT count(*) AS n FROM customers')",
                     (cid,)).fetchall()
    assert rows == [({"n": 3},)]


# ------------------------------------------------------------------ isolation and privileges

def test_tenant_a_cannot_reach_b(su, tenants, engine):
    eng, _, bid = engine
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT count(*) FROM dbrag.connections WHERE connection_id = %s", (bid,)).fetchone()[0] == 0
        assert a.execute("SELECT count(*) FROM control_plane.table_metadata_catalog WHERE connection_id = %s",
                         (bid,)).fetchone()[0] == 0
        for sql in ["SELECT dbrag.activate_connection(%s)", "SELECT dbrag.delete_connection(%s)",
                    "SELECT * FROM dbrag.sync_catalog(%s)",
                    f"SELECT dbrag.update_connection(%s, {eng.update})"]:
            assert err(a, sql, (bid,)).sqlstate == "42704", sql
    with tenants.conn(tenants.b_role) as b:
        assert b.execute("SELECT count(*) FROM control_plane.table_metadata_catalog WHERE connection_id = %s",
                         (bid,)).fetchone()[0] == eng.catalog_tables
    # Even a superuser acting for A cannot run against B's connection.
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
    try:
        assert err(su, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT 1')", (bid,)).sqlstate == "42704"
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


def test_internal_functions_are_superuser_only(tenants, engine):
    _, _, cid = engine
    with tenants.conn(tenants.b_role) as b:
        assert err(b, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT 1')", (cid,)).sqlstate == "42501"
        assert err(b, "SELECT dbrag._dataplane_check(%s, 'SELECT 1')", (cid,)).sqlstate == "42501"


# ------------------------------------------------------------------ ask() end to end

@pytest.mark.parametrize("name,role,dialect", [("mysql", "a_role", "MySQL"), ("sqlite", "b_role", "SQLite")])
def test_ask_end_to_end(engines, name, role, dialect):  # noqa: F811
    # engines: tenant A on MariaDB, tenant B on a SQLite file.
    tenants, model = engines
    model.script(sql_answer(REVENUE + " -- by customer"))
    with tenants.conn(getattr(tenants, role)) as conn:
        rows = [r[0] for r in conn.execute("SELECT * FROM dbrag.ask('revenue per customer')")]
        assert rows == [{"name": "Ada Lovelace", "revenue": 270.5}, {"name": "Bo Diddley", "revenue": 99.99}]
        (question, status, sql, error, count), = history(conn)
        assert (question, status, error, count) == ("revenue per customer", "ok", None, 2)
        assert "-- by customer" not in sql  # what ran is the normalized statement
    prompt = prompt_of(model.requests()[-1])
    assert dialect in prompt
    if name == "mysql":
        assert "customers" in prompt


# ------------------------------------------------------------------ the guard, before the server

# Each engine's dangerous constructs; {tag} marks the statement in MySQL's
# general query log, the witness that the server never saw it.
MYSQL_DENIED = [
    ("SELECT load_file('/etc/passwd') AS m{tag}", "42501"),
    ("SELECT LOAD_FILE('/etc/passwd'), '{tag}'", "42501"),
    ("SELECT sleep(5), '{tag}'", "42501"),
    ("SELECT benchmark(1000000000, md5('{tag}'))", "42501"),
    ("SELECT get_lock('{tag}', 10)", "42501"),
    ("SELECT release_lock('{tag}')", "42501"),
    ("SELECT @@version, '{tag}'", "42501"),
    ("SELECT @@global.secure_file_priv, '{tag}'", "42501"),
    ("SELECT @a := 1, '{tag}'", "42501"),
    ("SELECT user(), '{tag}'", "42501"),
    ("SELECT current_user(), '{tag}'", "42501"),
    ("SELECT '{tag}', authentication_string FROM mysql.user", "42501"),
    ("SELECT '{tag}', table_name FROM information_schema.tables", "42501"),
    ("SELECT '{tag}' FROM otherdb.secret_stuff", "42501"),
    ("SELECT name /*!, load_file('/etc/passwd') */ FROM customers WHERE name = '{tag}'", "42501"),
    ("SELECT /*+ SET_VAR(max_statement_time=0) */ '{tag}' FROM customers", "42501"),
    ("SELECT * FROM customers WHERE name = '{tag}' FOR UPDATE", "42601"),
    ("SELECT * FROM customers WHERE name = '{tag}' INTO OUTFILE '/tmp/out'", "42601"),
    ("SELECT * FROM customers WHERE name = '{tag}' INTO DUMPFILE '/tmp/out'", "42601"),
    ("SELECT name FROM customers WHERE name = '{tag}' INTO @v", "42601"),
    ("INSERT INTO customers VALUES (99, '{tag}', 'x', NULL)", "42601"),
    ("UPDATE customers SET name = '{tag}'", "42601"),
    ("DELETE FROM customers WHERE name = '{tag}'", "42601"),
    ("REPLACE INTO customers VALUES (1, '{tag}', 'x', NULL)", "42601"),
    ("LOAD DATA INFILE '/etc/passwd' INTO TABLE customers /* {tag} */", "42601"),
    ("SET @x = '{tag}'", "42601"),
    ("CALL p('{tag}')", "42601"),
    ("SELECT 1; SELECT '{tag}'", "42601"),
    ("SELECT * FROM customers WHERE name = 'a\\\\' OR '{tag}'", "42501"),
]

SQLITE_DENIED = [
    ("SELECT load_extension('/tmp/evil.so')", "42501"),
    ("SELECT readfile('/etc/passwd')", "42501"),
    ("SELECT writefile('/tmp/x', 'y')", "42501"),
    ("SELECT randomblob(2000000000)", "42501"),
    ("SELECT zeroblob(id * 1000000000) FROM customers", "42501"),
    ("SELECT sqlite_version()", "42501"),
    ("SELECT * FROM sqlite_master", "42501"),
    ("SELECT * FROM pragma_table_info('customers')", "42501"),
    ("SELECT * FROM temp.customers", "42501"),
    ("ATTACH DATABASE '/tmp/x.db' AS x", "42601"),
    ("PRAGMA query_only = 0", "42601"),
    ("PRAGMA writable_schema = 1", "42601"),
    ("INSERT INTO customers (name) VALUES ('x')", "42601"),
    ("DELETE FROM customers", "42601"),
    ("VACUUM INTO '/tmp/copy.db'", "42601"),
    ("SELECT 1; SELECT 2", "42601"),
]

FIXTURE = {"mysql": "b_mysql", "sqlite": "b_sqlite"}


@pytest.mark.parametrize("name,template,state", [("mysql", t, s) for t, s in MYSQL_DENIED]
                         + [("sqlite", t, s) for t, s in SQLITE_DENIED])
def test_denied_constructs_never_reach_the_server(request, name, template, state):
    c, cid = request.getfixturevalue(FIXTURE[name])
    tag = "mk" + uuid.uuid4().hex[:10]
    sql = template.format(tag=tag)
    e = err(c, "SELECT * FROM dbrag._dataplane_query(%s, %s)", (cid, sql))
    assert e.sqlstate == state, (sql, str(e))
    if name == "mysql":
        # The refusal came from the guard: the server never saw the statement.
        time.sleep(0.05)
        assert tag not in general_log()


ASK_REFUSED = [("mysql", t, s) for t, s in [
    ("DELETE FROM customers WHERE name = '{tag}'", "42601"),
    ("UPDATE customers SET name = '{tag}'", "42601"),
    ("SELECT load_file('/etc/passwd'), '{tag}'", "42501"),
    ("SELECT sleep(10), '{tag}'", "42501"),
    ("SELECT '{tag}', user FROM mysql.user", "42501"),
    ("SELECT @@datadir, '{tag}'", "42501"),
]] + [("sqlite", t, s) for t, s in [
    ("DELETE FROM customers", "42601"),
    ("ATTACH DATABASE '/tmp/x.db' AS x", "42601"),
    ("SELECT load_extension('/tmp/evil.so')", "42501"),
    ("SELECT * FROM sqlite_master", "42501"),
    ("PRAGMA query_only = 0", "42601"),
]]


@pytest.mark.parametrize("name,answer,state", ASK_REFUSED)
def test_ask_refuses_before_the_server(engines, name, answer, state):  # noqa: F811
    # engines: tenant A on MariaDB, tenant B on a SQLite file.
    tenants, model = engines
    tag = "ak" + uuid.uuid4().hex[:10]
    model.script(sql_answer(answer.format(tag=tag)))
    with tenants.conn(tenants.a_role if name == "mysql" else tenants.b_role) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT * FROM dbrag.ask('do something')")
        assert e.value.sqlstate == state, str(e.value)
        if name == "mysql":
            assert history(conn)[-1][1] in ("refused", "error")
    if name == "mysql":
        assert tag not in general_log()
