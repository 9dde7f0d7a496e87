"""Hostile data planes are contained: the rogue servers and files of
tests/rogue, each called by a tenant's login role over TCP. For each, the
call ends with an ERROR of the documented SQLSTATE within its deadline, the
postmaster was not restarted (pg_postmaster_start_time), another tenant's
open session (with a temporary table only that backend has) still works,
and the server log shows no crash (conftest's no_backend_crash). Plus the
memory bound (dbrag.query_memory_limit, 53200) and argument limits (54000)."""

import os
import shutil
import time

import psycopg
import pytest

from conftest import connect
from llm_fixture import llm_server  # noqa: F401  (fixture)
from rogue import sqlite_files
from rogue.mysql import MODES as MYSQL_MODES
from rogue.mysql import RogueMysql
from rogue.postgres import MODES as PG_MODES
from rogue.postgres import RoguePostgres
from test_ask import nl  # noqa: F401  (fixture)

# The caller's own statement_timeout bounds the calls that would otherwise
# wait for the connection's full deadline.
TIMEOUT_MS = 3000
SLACK_S = 3.0

# The documented SQLSTATE of each rogue (README.md, "Limits"; docs/engines.md).
MYSQL_EXPECTED = {
    "huge_column_count": {"58000"},
    "huge_packet": {"58000"},
    "truncated_packet": {"58000"},
    "length_past_end": {"58000"},
    "endless_rows": {"57014"},
    "never_handshake": {"57014"},
    "huge_handshake": {"58000"},
    "garbage_after_auth": {"58000"},
    "cleartext_auth": {"58000"},
    "huge_row": {"58000"},
}
PG_EXPECTED = {
    "huge_field": {"53200"},
    "truncated_message": {"58000"},
    "length_past_end": {"58000"},
    "endless_rows": {"54000"},
    "never_handshake": {"57014"},
    # Random bytes may happen to announce a long message: the memory bound.
    "garbage_after_auth": {"58000", "53200"},
    "kerberos_auth": {"58000"},
    # libpq refuses a buffer past 2^31 bytes itself, or the bound stops it.
    "huge_error": {"58000", "53200"},
}


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


@pytest.fixture
def bystander(su, tenants):
    """Tenant A's open session with state only its backend holds; after the
    test it must still be there, and the postmaster must not have restarted."""
    started = su.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    a = tenants.conn(tenants.a_role)
    a.execute("CREATE TEMP TABLE still_here AS SELECT 42 AS x")
    pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
    yield
    assert a.execute("SELECT x, pg_backend_pid() FROM still_here").fetchone() == (42, pid)
    a.close()
    with connect() as c:
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started


def timed_error(conn, sql, args):
    conn.execute(f"SET statement_timeout = {TIMEOUT_MS}")
    t0 = time.monotonic()
    e = err(conn, sql, args)
    elapsed = time.monotonic() - t0
    conn.execute("RESET statement_timeout")
    # The session goes on.
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    return e, elapsed


@pytest.mark.parametrize("mode", MYSQL_MODES)
def test_rogue_mysql_server(tenants, bystander, mode):
    with RogueMysql(mode) as server, tenants.conn(tenants.b_role) as b:
        uri = f"mysql://u:pw@127.0.0.1:{server.port}/db"
        e, elapsed = timed_error(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (uri,))
        assert e.sqlstate in MYSQL_EXPECTED[mode], (mode, e.sqlstate, str(e))
        assert elapsed < TIMEOUT_MS / 1000 + SLACK_S, (mode, elapsed)
        assert "pw" not in str(e).replace("password", "")


@pytest.mark.parametrize("mode", PG_MODES)
def test_rogue_postgres_server(tenants, bystander, mode):
    with RoguePostgres(mode) as server, tenants.conn(tenants.b_role) as b:
        conninfo = f"host=127.0.0.1 port={server.port} dbname=db user=u password=pw connect_timeout=10"
        e, elapsed = timed_error(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (conninfo,))
        assert e.sqlstate in PG_EXPECTED[mode], (mode, e.sqlstate, str(e))
        assert elapsed < TIMEOUT_MS / 1000 + SLACK_S, (mode, elapsed)


def test_rogue_mysql_crash_message_is_clear(tenants, bystander):
    """The helper process ended; the message says so, and quotes nothing of
    what the process or the server wrote."""
    with RogueMysql("huge_column_count") as server, tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)",
                (f"mysql://u:pw@127.0.0.1:{server.port}/db",))
        assert e.sqlstate == "58000"
        text = str(e)
        assert "MySQL" in text and "memory allocation of" not in text and "panicked" not in text


def test_rogue_mysql_repeated_calls_leave_no_processes(tenants, bystander):
    """Ten calls in one session: every helper process is gone afterwards."""
    with RogueMysql("huge_column_count") as server, tenants.conn(tenants.b_role) as b:
        pid = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        for _ in range(10):
            err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)",
                (f"mysql://u:pw@127.0.0.1:{server.port}/db",))
        time.sleep(0.3)
        b.execute("SELECT 1")  # the next call reaps what was left
        children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == pid]
        assert children == []


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# ------------------------------------------------------------------ SQLite files

@pytest.fixture
def sqlite_home(tenants):
    from test_sqlite import set_dir
    root = f"/tmp/dbrag_rogue_sqlite_{tenants.tag}"
    tdir = os.path.join(root, str(tenants.b))
    os.makedirs(tdir)
    shutil.chown(root, "postgres", "postgres")
    shutil.chown(tdir, "postgres", "postgres")
    set_dir(root)
    yield tdir
    set_dir(None)
    shutil.rmtree(root, ignore_errors=True)


SQLITE_EXPECTED = {
    "garbage": {"58000"},
    "bad_header": {"58000"},
    "corrupt_pages": {"58000"},
    "corrupt_schema": {"58000"},
    # Valid files: the call works or fails cleanly; never a crash or a hang.
    "enormous_sparse": {None, "58000"},
    "oversized_values": {None, "58000"},
}


@pytest.mark.parametrize("kind", list(sqlite_files.FILES))
def test_rogue_sqlite_file(tenants, bystander, sqlite_home, kind):
    path = os.path.join(sqlite_home, f"{kind}.db")
    sqlite_files.FILES[kind](path)
    shutil.chown(path, "postgres", "postgres")
    with tenants.conn(tenants.b_role) as b:
        b.execute(f"SET statement_timeout = {TIMEOUT_MS}")
        t0 = time.monotonic()
        state = None
        try:
            b.execute("SELECT * FROM dbrag.test_connection('sqlite', %s)", (f"{kind}.db",)).fetchall()
            cid = b.execute("SELECT dbrag.create_connection(%s, 'sqlite', %s)", (kind, f"{kind}.db")).fetchone()[0]
            b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,)).fetchall()
        except psycopg.Error as e:
            state = e.sqlstate
        assert state in SQLITE_EXPECTED[kind], (kind, state)
        assert time.monotonic() - t0 < TIMEOUT_MS / 1000 + SLACK_S
        b.execute("RESET statement_timeout")
        assert b.execute("SELECT 1").fetchone()[0] == 1


# ------------------------------------------------------------------ memory bound

def test_memory_limit_is_superuser_only(tenants):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SET dbrag.query_memory_limit = '4GB'")
        assert e.sqlstate == "42501"
        assert b.execute("SHOW dbrag.query_memory_limit").fetchone()[0] == "256MB"


def test_memory_limit_stops_catalog_sampling(su, tenants, bystander):
    """Sampling reads 50 rows of each table as JSON: 50 rows of 20 MB each
    would grow the backend by 1 GB. The bound stops it with 53200; the
    session goes on."""
    schema = f"wide_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {tenants.b_role}")
    with tenants.conn(tenants.b_role) as b:
        b.execute(f"CREATE TABLE {schema}.wide AS SELECT g AS id, repeat('x', 20000000) AS v "
                  "FROM generate_series(1, 50) g")
        # pg_dbrag reads the data plane as the tenant's role.
        b.execute(f"GRANT USAGE ON SCHEMA {schema} TO {tenants.b_trole}")
        b.execute(f"GRANT SELECT ON {schema}.wide TO {tenants.b_trole}")
        cid = b.execute("SELECT dbrag.create_connection('wide', 'local', NULL, %s)", (schema,)).fetchone()[0]
        t0 = time.monotonic()
        e = err(b, "SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
        assert e.sqlstate == "53200", str(e)
        assert "dbrag.query_memory_limit" in str(e)
        assert time.monotonic() - t0 < 30
        assert b.execute("SELECT 1").fetchone()[0] == 1
    su.execute(f"DROP SCHEMA {schema} CASCADE")


# ------------------------------------------------------------------ argument limits

@pytest.mark.parametrize("sql", [
    "SELECT dbrag.identifier_words(repeat('a', 100000000))",
    "SELECT dbrag.encrypt(repeat('a', 20000000), 'ctx')",
    "SELECT dbrag.encrypt('a', repeat('c', 100000))",
    "SELECT dbrag.test_connection('mysql', 'mysql://u:p@h/' || repeat('d', 100000))",
    "SELECT dbrag.set_llm_api_key(repeat('k', 100000))",
])
def test_argument_limits(tenants, sql):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, sql)
        assert e.sqlstate == "54000", (sql, e.sqlstate, str(e))
        assert "longer than the limit" in str(e)


def test_question_bounded_before_copy(tenants):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT dbrag.generate_sql(repeat('q', 200000000))")
        assert e.sqlstate == "22023"


def test_memory_limit_stops_generated_sql(nl, bystander):
    """Model SQL that grows without bound: 200 strings of 10 MB in one
    array. The bound ends the statement with 53200 long before the OOM
    killer would; the session and the backend go on."""
    from test_ask import sql_answer
    tenants, _, _, model = nl
    model.script(sql_answer("SELECT array_agg(repeat('x', 10000000)) FROM generate_series(1, 200)"))
    with tenants.conn(tenants.a_role) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        t0 = time.monotonic()
        e = err(a, "SELECT * FROM dbrag.ask('make it big')")
        assert e.sqlstate == "53200", str(e)
        assert "dbrag.query_memory_limit" in str(e)
        assert time.monotonic() - t0 < 10
        assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        model.script(sql_answer("SELECT count(*) FROM singer"))
        assert a.execute("SELECT * FROM dbrag.ask('how many singers')").fetchone()[0] == {"count": 2}


def test_missing_helper_is_a_clear_error(su, tenants):
    """An installation without pg_dbrag_dataplane: 55000 naming the file."""
    libdir = su.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()[0]
    path = os.path.join(libdir, "pg_dbrag_dataplane")
    os.rename(path, path + ".away")
    try:
        with RogueMysql("never_handshake") as server, tenants.conn(tenants.b_role) as b:
            e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)",
                    (f"mysql://u:pw@127.0.0.1:{server.port}/db",))
            assert e.sqlstate == "55000" and "pg_dbrag_dataplane" in str(e)
    finally:
        os.rename(path + ".away", path)


def _children(pid):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == pid]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_helper_ends_with_its_backend(su, tenants):
    """A backend terminated while its helper process waits on a silent
    server: the helper does not outlive it (it watches its stdin and dies
    with its parent)."""
    import threading
    with RogueMysql("never_handshake") as server:
        b = tenants.conn(tenants.b_role)
        pid = b.execute("SELECT pg_backend_pid()").fetchone()[0]

        def call():
            try:
                b.execute("SELECT * FROM dbrag.test_connection('mysql', %s)",
                          (f"mysql://u:pw@127.0.0.1:{server.port}/db",))
            except psycopg.Error:
                pass

        t = threading.Thread(target=call, daemon=True)
        t.start()
        end = time.monotonic() + 10
        helpers = []
        while not helpers and time.monotonic() < end:
            helpers = _children(pid)
            time.sleep(0.05)
        assert helpers, "no helper process was started"
        su.execute("SELECT pg_terminate_backend(%s)", (pid,))
        end = time.monotonic() + 8
        while any(_alive(h) for h in helpers) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(_alive(h) for h in helpers)
        t.join(timeout=5)


def test_oversized_training_rows_are_cut(nl):
    """A tenant writes training_examples directly (it may): a 10 MB
    documentation row reaches the prompt cut to 100,000 characters."""
    from test_ask import sql_answer
    tenants, _, _, model = nl
    model.script(sql_answer("SELECT count(*) FROM singer"))
    with tenants.conn(tenants.a_role) as a:
        a.execute("INSERT INTO control_plane.training_examples (tenant_id, kind, content) "
                  "VALUES (%s, 'documentation', 'singer ' || repeat('singer ', 1500000))", (tenants.a,))
        assert a.execute("SELECT * FROM dbrag.ask('how many singer')").fetchone()[0] == {"count": 2}
    body = model.requests()[-1]["body"]
    assert sum(len(m["content"]) for m in body["messages"]) < 1_000_000
