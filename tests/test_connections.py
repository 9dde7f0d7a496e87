"""Data-plane connections (docs/connections-and-keys.md): the workflow for local schemas and a
remote PostgreSQL server (the second test cluster, password auth), the
password rule that keeps tenants from borrowing the server's identity,
timeouts and cancellation, and isolation between tenants. All as
non-superuser tenant login roles over TCP unless a test says otherwise."""

import os
import threading
import time

import psycopg
import pytest

from conftest import DBNAME, PORT, REMOTE_PORT, connect
from remote_fixture import (REMOTE_DB, REMOTE_PASSWORD, REMOTE_USER, WORK, SilentServer, closed_port,
                            remote_conninfo, remote_su, setup_remote)


@pytest.fixture(scope="module")
def remote(database):
    setup_remote()
    return remote_conninfo()


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def view_rows(conn):
    return conn.execute("SELECT connection_id, name, kind, host, port, database_name, username, "
                        "schema_name, status::text, is_active FROM dbrag.connections ORDER BY name").fetchall()


def audit(su, tenant, event):
    return su.execute("SELECT detail FROM control_plane.audit_log WHERE tenant_id = %s AND event = %s "
                      "ORDER BY audit_id", (tenant, event)).fetchall()


# ------------------------------------------------------------------ remote workflow

def test_remote_test_create_activate(su, tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        listed = b.execute("SELECT * FROM dbrag.test_connection('postgres', %s)", (remote,)).fetchall()
        # The reader sees the tables it was granted, not hidden_payroll.
        assert listed == [("public", "customers"), ("public", "order_items"), ("public", "orders")]
        assert view_rows(b) == []  # test_connection saved nothing

        cid = b.execute("SELECT dbrag.create_connection('shop', 'postgres', %s)", (remote,)).fetchone()[0]
        rows = view_rows(b)
        assert rows == [(cid, "shop", "postgres", "127.0.0.1", REMOTE_PORT, REMOTE_DB, REMOTE_USER,
                         "public", "disconnected", False)]
        cols = [d.name for d in b.execute("SELECT * FROM dbrag.connections").description]
        assert "credentials" not in cols
        # The secret column is out of the tenant's reach.
        e = err(b, "SELECT credentials FROM control_plane.tenant_databases")
        assert e.sqlstate == "42501"

        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        assert view_rows(b)[0][-1] is True

    blob = su.execute("SELECT credentials FROM control_plane.tenant_databases WHERE connection_id = %s",
                      (cid,)).fetchone()[0]
    assert REMOTE_PASSWORD.encode() not in bytes(blob) and b"password" not in bytes(blob)
    assert su.execute("SELECT dbrag.encryption_key_id(%s)", (blob,)).fetchone()[0].startswith("m")
    created = audit(su, tenants.b, "connection_created")
    assert created and created[0][0]["connection_id"] == str(cid) and REMOTE_PASSWORD not in str(created)
    assert audit(su, tenants.b, "connection_activated")[0][0]["connection_id"] == str(cid)

    # The Rust API (through the superuser-only test entry point) reads rows
    # with the decrypted credentials, in a read-only remote transaction.
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    try:
        res = su.execute("SELECT dbrag._remote_query(%s, 'SELECT id, name FROM customers ORDER BY id')",
                         (cid,)).fetchone()[0]
        assert res["columns"] == ["id", "name"] and res["types"] == [23, 25]
        assert res["rows"] == [["1", "Ada"], ["2", "Bo"]]
        e = err(su, "SELECT dbrag._remote_query(%s, 'CREATE TABLE evil (x int)')", (cid,))
        # A statement the remote rejects keeps the remote's SQLSTATE (README.md, "Errors").
        assert e.sqlstate == "25006" and "read-only" in str(e)
        e = err(su, "SELECT dbrag._remote_query(%s, 'SELECT 1; SELECT 2')", (cid,))
        assert e.sqlstate == "42601"
        # A statement larger than the socket buffers goes out in non-blocking pieces.
        big = su.execute("SELECT dbrag._remote_query(%s, 'SELECT 1 AS one /* ' || repeat('x', 4000000) || ' */')",
                         (cid,)).fetchone()[0]
        assert big["rows"] == [["1"]]
        # A remote permission error is the remote's 42501 (the reader may not see hidden_payroll).
        e = err(su, "SELECT dbrag._remote_query(%s, 'SELECT * FROM hidden_payroll')", (cid,))
        assert e.sqlstate == "42501" and "permission denied" in str(e)
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


def test_remote_query_is_superuser_only(tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('q', 'postgres', %s)", (remote,)).fetchone()[0]
        e = err(b, "SELECT dbrag._remote_query(%s, 'SELECT 1')", (cid,))
        assert e.sqlstate == "42501"


def test_one_active_connection_per_tenant(tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        c1 = b.execute("SELECT dbrag.create_connection('one', 'postgres', %s)", (remote,)).fetchone()[0]
        c2 = b.execute("SELECT dbrag.create_connection('two', 'local')").fetchone()[0]
        b.execute("SELECT dbrag.activate_connection(%s)", (c1,))
        b.execute("SELECT dbrag.activate_connection(%s)", (c2,))
        active = b.execute("SELECT connection_id FROM dbrag.connections WHERE is_active").fetchall()
        assert active == [(c2,)]
        b.execute("SELECT dbrag.activate_connection(%s)", (c1,))
        assert b.execute("SELECT connection_id FROM dbrag.connections WHERE is_active").fetchall() == [(c1,)]


def test_update_and_delete(su, tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('upd', 'postgres', %s)", (remote,)).fetchone()[0]
        su.execute("UPDATE control_plane.tenant_databases SET status = 'connected' WHERE connection_id = %s",
                   (cid,))
        b.execute("SELECT dbrag.update_connection(%s, name => 'renamed')", (cid,))
        row = b.execute("SELECT name, status::text FROM dbrag.connections WHERE connection_id = %s",
                        (cid,)).fetchone()
        assert row == ("renamed", "connected")  # a rename keeps the catalog
        other = remote_conninfo() + " application_name=x"
        b.execute("SELECT dbrag.update_connection(%s, conninfo => %s, schema_name => 'sales')", (cid, other))
        row = b.execute("SELECT schema_name, status::text, host FROM dbrag.connections "
                        "WHERE connection_id = %s", (cid,)).fetchone()
        assert row == ("sales", "disconnected", "127.0.0.1")
        # The new schema does not exist remotely: activation says so.
        e = err(b, "SELECT dbrag.activate_connection(%s)", (cid,))
        assert e.sqlstate == "42704" and "sales" in str(e)
        b.execute("SELECT dbrag.update_connection(%s, schema_name => 'public')", (cid,))
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        # Refused updates.
        assert err(b, "SELECT dbrag.update_connection(%s, conninfo => 'host=/tmp password=x')",
                   (cid,)).sqlstate == "42501"
        b.execute("SELECT dbrag.create_connection('taken', 'local')")
        assert err(b, "SELECT dbrag.update_connection(%s, name => 'taken')", (cid,)).sqlstate == "22023"
        b.execute("SELECT dbrag.delete_connection(%s)", (cid,))
        assert b.execute("SELECT count(*) FROM dbrag.connections WHERE connection_id = %s",
                         (cid,)).fetchone()[0] == 0
        assert err(b, "SELECT dbrag.delete_connection(%s)", (cid,)).sqlstate == "42704"
    assert [d[0]["changed"] for d in audit(su, tenants.b, "connection_updated")] == [
        ["name"], ["schema_name", "conninfo"], ["schema_name"]]
    assert audit(su, tenants.b, "connection_deleted")[0][0]["connection_id"] == str(cid)


def test_bad_arguments(tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        assert err(b, "SELECT dbrag.create_connection('x', 'oracle')").sqlstate == "22023"
        assert err(b, "SELECT dbrag.create_connection('x', 'mysql', 'host=h password=p')").sqlstate == "22023"
        assert err(b, "SELECT dbrag.create_connection('x', 'postgres')").sqlstate == "22004"
        assert err(b, "SELECT dbrag.create_connection('', 'local')").sqlstate == "22023"
        assert err(b, "SELECT dbrag.create_connection(NULL, 'local')").sqlstate == "22004"
        e = err(b, "SELECT dbrag.create_connection('x', 'postgres', 'host=h password=pw-in-garbage junk')")
        assert e.sqlstate == "22023" and "pw-in-garbage" not in str(e)
        e = err(b, "SELECT dbrag.create_connection('x', 'postgres', 'host=h passwrd=p')")
        assert e.sqlstate == "22023" and "passwrd" in str(e)
        b.execute("SELECT dbrag.create_connection('dup', 'local')")
        assert err(b, "SELECT dbrag.create_connection('dup', 'local')").sqlstate == "22023"
    with tenants.conn(tenants.stranger) as s:
        e = err(s, "SELECT dbrag.create_connection('x', 'local')")
        assert e.sqlstate == "42501"
        # No tenant, no probing the network from the server either.
        e = err(s, "SELECT * FROM dbrag.test_connection('postgres', %s)", (remote,))
        assert e.sqlstate == "42501"
    with tenants.conn(tenants.admin_role) as ops:
        assert len(ops.execute("SELECT * FROM dbrag.test_connection('postgres', %s)", (remote,)).fetchall()) == 3


# ------------------------------------------------------------------ the password rule

SOCKET_CONNINFOS = [
    "host=/var/run/postgresql user=postgres",
    "host=/var/run/postgresql user=postgres password=anything",
    f"host={WORK}/primary port={PORT} user=postgres dbname={DBNAME}",
    f"host={WORK}/primary port={PORT} user=postgres dbname={DBNAME} password=x",
    f"postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/{DBNAME}",
    f"postgresql:///{DBNAME}?host={WORK}/primary&port={PORT}&password=x",
    "host=@abstract user=postgres password=x",
    "user=postgres password=x",
    f"host=127.0.0.1,{WORK}/primary port={REMOTE_PORT},{PORT} user=postgres password=x",
    f"host=127.0.0.1 port={PORT} user=postgres dbname={DBNAME}",  # TCP, but no password
    f"host=127.0.0.1 port={REMOTE_PORT} user=x password=y passfile=/etc/passwd",
    f"host=127.0.0.1 port={REMOTE_PORT} user=x password=y sslkey=/etc/ssl/private/ssl-cert-snakeoil.key",
    f"host=127.0.0.1 port={REMOTE_PORT} service=x password=y",
]


@pytest.mark.parametrize("conninfo", SOCKET_CONNINFOS)
def test_server_identity_cannot_be_borrowed(su, tenants, conninfo):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (conninfo,))
        assert e.sqlstate == "42501", str(e)
        e = err(b, "SELECT dbrag.create_connection('sock', 'postgres', %s)", (conninfo,))
        assert e.sqlstate == "42501", str(e)
        assert view_rows(b) == []
    assert audit(su, tenants.b, "connection_refused")


def test_server_must_use_the_password(su, tenants, remote):
    """A server that lets the role in without asking for its password (trust)
    is refused for non-superusers, after connecting."""
    hba = os.path.join(WORK, "remote", "data", "pg_hba.conf")
    original = open(hba).read()
    with remote_su() as r:
        r.execute("DROP ROLE IF EXISTS trusted_guest")
        r.execute("CREATE ROLE trusted_guest LOGIN")
        with open(hba, "w") as f:
            f.write(f"host all trusted_guest 127.0.0.1/32 trust\n{original}")
        r.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        info = remote_conninfo(user="trusted_guest", password="not-asked-for", dbname="postgres")
        with tenants.conn(tenants.b_role) as b:
            e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (info,))
            assert e.sqlstate == "42501" and "password" in str(e)
        # A superuser may (the dblink rule).
        su.execute("SELECT * FROM dbrag.test_connection('postgres', %s)", (info,)).fetchall()
    finally:
        with open(hba, "w") as f:
            f.write(original)
        with remote_su() as r:
            r.execute("SELECT pg_reload_conf()")


# ------------------------------------------------------------------ failures and timeouts

def test_wrong_password_is_a_clear_error_without_the_password(tenants, remote):
    secret = "wrong-pw-Zq81x"
    with tenants.conn(tenants.b_role) as b:
        t0 = time.monotonic()
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (remote_conninfo(password=secret),))
        assert time.monotonic() - t0 < 5
        assert e.sqlstate == "28P01"
        assert "password authentication failed" in str(e) and secret not in str(e)
        assert b.execute("SELECT 1").fetchone()[0] == 1


def test_unreachable_port(tenants):
    with tenants.conn(tenants.b_role) as b:
        t0 = time.monotonic()
        e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)",
                (remote_conninfo(port=closed_port()),))
        assert time.monotonic() - t0 < 5
        assert e.sqlstate == "08001" and "refused" in str(e).lower()


def test_silent_server_times_out(tenants):
    server = SilentServer()
    try:
        info = remote_conninfo(port=server.port)
        with tenants.conn(tenants.b_role) as b:
            # dbrag.remote_connect_timeout_ms, default 5000 ms.
            t0 = time.monotonic()
            e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (info,))
            elapsed = time.monotonic() - t0
            assert e.sqlstate == "57014" and "5000 ms" in str(e), str(e)
            assert 4.5 < elapsed < 7.0, elapsed
            # statement_timeout stops the wait sooner.
            b.execute("SET statement_timeout = 300")
            t0 = time.monotonic()
            e = err(b, "SELECT * FROM dbrag.test_connection('postgres', %s)", (info,))
            assert e.sqlstate == "57014" and time.monotonic() - t0 < 1.0
            b.execute("RESET statement_timeout")
            assert b.execute("SELECT 1").fetchone()[0] == 1
    finally:
        server.close()


def run_in_thread(fn):
    out = {}

    def target():
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except psycopg.Error as e:
            out["error"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=target)
    t.start()
    return t, out


def remote_sleepers():
    with remote_su() as r:
        return r.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' "
                         "AND state = 'active'").fetchone()[0]


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def b_remote(su, tenants, remote):
    """A superuser session acting for tenant B with B's remote connection."""
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('slow', 'postgres', %s)", (remote,)).fetchone()[0]
    c = connect()
    c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    yield c, cid
    c.close()


def test_remote_query_cancelled_by_pg_cancel_backend(su, b_remote):
    c, cid = b_remote
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    t, out = run_in_thread(lambda: c.execute(
        "SELECT dbrag._remote_query(%s, 'SELECT pg_sleep(30)', 60000)", (cid,)).fetchone())
    assert wait_until(lambda: remote_sleepers() == 1)
    t_cancel = time.monotonic()
    su.execute("SELECT pg_cancel_backend(%s)", (pid,))
    t.join(10)
    assert not t.is_alive()
    assert out["error"].sqlstate == "57014"
    assert time.monotonic() - t_cancel < 1.0
    # The remote query was cancelled too, and the backend is usable.
    assert wait_until(lambda: remote_sleepers() == 0, 3)
    assert c.execute("SELECT 41 + 1").fetchone()[0] == 42
    res = c.execute("SELECT dbrag._remote_query(%s, 'SELECT 7 AS n')", (cid,)).fetchone()[0]
    assert res["rows"] == [["7"]]


def test_remote_query_stopped_by_statement_timeout(b_remote):
    c, cid = b_remote
    c.execute("SET statement_timeout = 400")
    t0 = time.monotonic()
    e = err(c, "SELECT dbrag._remote_query(%s, 'SELECT pg_sleep(30)', 60000)", (cid,))
    assert e.sqlstate == "57014" and time.monotonic() - t0 < 1.5
    c.execute("RESET statement_timeout")
    assert wait_until(lambda: remote_sleepers() == 0, 3)
    # The call's own limit: a clear "took longer" error.
    t0 = time.monotonic()
    e = err(c, "SELECT dbrag._remote_query(%s, 'SELECT pg_sleep(30)', 300)", (cid,))
    assert e.sqlstate == "57014" and time.monotonic() - t0 < 1.5
    assert wait_until(lambda: remote_sleepers() == 0, 3)
    assert c.execute("SELECT 1").fetchone()[0] == 1


# ------------------------------------------------------------------ local schemas

@pytest.fixture
def local_schema(su, tenants):
    s = f"app_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {s}")
    su.execute(f"CREATE TABLE {s}.invoices (id int, amount numeric)")
    su.execute(f"CREATE TABLE {s}.secrets (id int)")
    su.execute(f"GRANT USAGE ON SCHEMA {s} TO {tenants.a_trole}")
    su.execute(f"GRANT SELECT ON {s}.invoices TO {tenants.a_trole}")
    return s


def test_local_schema_workflow(su, tenants, local_schema):
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT * FROM dbrag.test_connection('local', NULL, %s)",
                         (local_schema,)).fetchall() == [(local_schema, "invoices")]
        e = err(a, "SELECT * FROM dbrag.test_connection('local', 'host=x password=y', %s)", (local_schema,))
        assert e.sqlstate == "22023"
        cid = a.execute("SELECT dbrag.create_connection('app', 'local', schema_name => %s)",
                        (local_schema,)).fetchone()[0]
        row = view_rows(a)[0]
        assert row[:4] == (cid, "app", "local", None) and row[5] == DBNAME and row[7] == local_schema
        a.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        # Lose the grant: activation checks it again, as the tenant's role.
        su.execute(f"REVOKE USAGE ON SCHEMA {local_schema} FROM {tenants.a_trole}")
        assert err(a, "SELECT dbrag.activate_connection(%s)", (cid,)).sqlstate == "42501"
    with tenants.conn(tenants.b_role) as b:
        for sql in ["SELECT * FROM dbrag.test_connection('local', NULL, %s)",
                    "SELECT dbrag.create_connection('x', 'local', NULL, %s)"]:
            assert err(b, sql, (local_schema,)).sqlstate == "42501"
        for schema in ["pg_catalog", "control_plane", "information_schema", "dbrag"]:
            assert err(b, "SELECT * FROM dbrag.test_connection('local', NULL, %s)", (schema,)).sqlstate == "42501"
        assert err(b, "SELECT * FROM dbrag.test_connection('local', NULL, 'no_such_schema')").sqlstate == "42704"


# ------------------------------------------------------------------ isolation between tenants

def test_tenant_a_cannot_reach_b_connection(su, tenants, remote):
    with tenants.conn(tenants.b_role) as b:
        bid = b.execute("SELECT dbrag.create_connection('b_shop', 'postgres', %s)", (remote,)).fetchone()[0]
    b_blob = su.execute("SELECT credentials FROM control_plane.tenant_databases WHERE connection_id = %s",
                        (bid,)).fetchone()[0]
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT count(*) FROM dbrag.connections WHERE connection_id = %s",
                         (bid,)).fetchone()[0] == 0
        assert a.execute("SELECT count(*) FROM control_plane.tenant_databases WHERE connection_id = %s",
                         (bid,)).fetchone()[0] == 0
        for sql in ["SELECT dbrag.activate_connection(%s)", "SELECT dbrag.delete_connection(%s)",
                    "SELECT dbrag.update_connection(%s, name => 'mine')",
                    "SELECT dbrag.update_connection(%s, conninfo => 'host=127.0.0.1 password=x')"]:
            assert err(a, sql, (bid,)).sqlstate == "42704", sql
        assert err(a, "SELECT dbrag._remote_query(%s, 'SELECT 1')", (bid,)).sqlstate == "42501"
        # Even holding the bytes, no SQL-level context opens them.
        for ctx in ["", f"{tenants.b}{bid}", f"{tenants.b}:{bid}", f"connection:{tenants.b}:{bid}",
                    f"dbrag:internal:connection:{tenants.b}:{bid}"]:
            e = err(a, "SELECT dbrag.decrypt(%s, %s)", (b_blob, ctx))
            assert e.sqlstate == "22023"
        # B's ciphertext copied into A's own row does not decrypt there.
        aid = a.execute("SELECT dbrag.create_connection('a_shop', 'postgres', %s)",
                        (remote_conninfo(password="a-has-another"),)).fetchone()[0]
    su.execute("UPDATE control_plane.tenant_databases SET credentials = %s WHERE connection_id = %s",
               (b_blob, aid))
    try:
        with tenants.conn(tenants.a_role) as a:
            e = err(a, "SELECT dbrag.activate_connection(%s)", (aid,))
            assert e.sqlstate == "22023" and "decrypt" in str(e), str(e)
    finally:
        su.execute("DELETE FROM control_plane.tenant_databases WHERE connection_id = %s", (aid,))
    # B's connection is untouched and still works for B.
    with tenants.conn(tenants.b_role) as b:
        b.execute("SELECT dbrag.activate_connection(%s)", (bid,))


def test_hostile_search_path_does_not_change_the_checks(su, tenants, local_schema):
    evil = f"evil_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {evil}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {evil} TO {tenants.b_role}")
    with tenants.conn(tenants.b_role) as b:
        for fn, args in [("has_schema_privilege", "oid, text"), ("has_any_column_privilege", "oid, text"),
                         ("current_database", "")]:
            ret = "name" if fn == "current_database" else "boolean"
            body = "'evil'::name" if fn == "current_database" else "true"
            b.execute(f"CREATE FUNCTION {evil}.{fn}({args}) RETURNS {ret} LANGUAGE sql AS $$ SELECT {body} $$")
        b.execute(f"SET search_path = {evil}, pg_catalog, public")
        # B has no USAGE on A's schema: still refused.
        e = err(b, "SELECT * FROM dbrag.test_connection('local', NULL, %s)", (local_schema,))
        assert e.sqlstate == "42501"
        cid = b.execute("SELECT dbrag.create_connection('here', 'local')").fetchone()[0]
        assert b.execute("SELECT database_name FROM dbrag.connections WHERE connection_id = %s",
                         (cid,)).fetchone()[0] == DBNAME
