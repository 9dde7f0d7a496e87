"""SQLite connections (issue 9): files the tests create under a directory
set as dbrag.sqlite_dir (superuser-only), the same workflow as postgres,
path escapes refused with 42501, the guard refusing SQLite's dangerous
constructs, timeouts and cancellation on the backend's own thread, and
isolation between tenants."""

import hashlib
import json
import os
import sqlite3
import time

import psycopg
import psycopg.sql
import pytest

from conftest import connect

WORK = os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test")
SQLITE_DIR = os.path.join(WORK, "sqlite")
OUTSIDE = os.path.join(WORK, "outside.db")


def make_db(path):
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE customers ( -- people who buy from the shop
            id INTEGER PRIMARY KEY, -- customer number
            name TEXT NOT NULL,     -- full name of the customer
            region TEXT,
            password_hash TEXT
        );
        CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            customer_id INTEGER NOT NULL REFERENCES customers (id),
            total REAL,
            ordered_at TEXT,
            receipt BLOB
        );
        CREATE TABLE order_items (order_id INTEGER REFERENCES orders, line INTEGER, sku TEXT, qty INTEGER,
                                  PRIMARY KEY (order_id, line));
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
        INSERT INTO customers VALUES (1, 'Ada Lovelace', 'north', 'x9f8e7'), (2, 'Bo Diddley', 'south', 'aa11'),
                                     (3, 'Cy Twombly', 'north', NULL);
        INSERT INTO orders VALUES (10, 1, 250.5, '2024-01-05', x'00ff'), (11, 1, 20.0, '2024-02-01', NULL),
                                  (12, 2, 99.99, '2024-03-09', NULL);
        INSERT INTO order_items VALUES (10, 1, 'SKU-1', 2), (10, 2, 'SKU-2', 1);
    """)
    db.commit()
    db.close()
    os.chmod(path, 0o644)


def set_dir(value):
    with connect() as su:
        if value is None:
            su.execute("ALTER SYSTEM RESET dbrag.sqlite_dir")
        else:
            su.execute(psycopg.sql.SQL("ALTER SYSTEM SET dbrag.sqlite_dir = {}").format(psycopg.sql.Literal(value)))
        su.execute("SELECT pg_reload_conf()")
    want = value or ""
    for _ in range(100):
        with connect() as c:
            if (c.execute("SELECT current_setting('dbrag.sqlite_dir', true)").fetchone()[0] or "") == want:
                return
        time.sleep(0.05)
    raise AssertionError("dbrag.sqlite_dir did not take effect")


@pytest.fixture(scope="module")
def sqlite_dir(database):
    os.makedirs(SQLITE_DIR, exist_ok=True)
    os.chmod(SQLITE_DIR, 0o755)
    make_db(OUTSIDE)
    set_dir(SQLITE_DIR)
    yield SQLITE_DIR
    set_dir(None)


def tenant_files(tenant):
    """The tenant's own directory, dbrag.sqlite_dir/<tenant_id>/, with a
    database, one in a subdirectory, and symlinks out of and inside it."""
    home = os.path.join(SQLITE_DIR, str(tenant))
    os.makedirs(os.path.join(home, "sub"), exist_ok=True)
    for d in (home, os.path.join(home, "sub")):
        os.chmod(d, 0o755)
    make_db(os.path.join(home, "shop.db"))
    make_db(os.path.join(home, "sub", "other.db"))
    for name, target in [("link_out.db", OUTSIDE), ("up", WORK), ("link_in.db", os.path.join(home, "shop.db"))]:
        p = os.path.join(home, name)
        if os.path.lexists(p):
            os.remove(p)
        os.symlink(target, p)
    return home


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def b_sqlite(su, tenants, sqlite_dir):
    tenant_files(tenants.b)
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('shop_lite', 'sqlite', 'shop.db')").fetchone()[0]
        b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
    c = connect()
    c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    yield c, cid
    c.close()


# ------------------------------------------------------------------ workflow

def test_sqlite_test_create_sync_activate_search(su, tenants, sqlite_dir):
    home = tenant_files(tenants.b)
    before = digest(os.path.join(home, "shop.db"))
    with tenants.conn(tenants.b_role) as b:
        listed = b.execute("SELECT * FROM dbrag.test_connection('sqlite', 'shop.db')").fetchall()
        assert listed == [("main", t) for t in ["big_orders", "customers", "order_items", "orders"]]
        assert b.execute("SELECT * FROM dbrag.test_connection('sqlite', 'sub/other.db', 'main')").fetchall() == listed
        cid = b.execute("SELECT dbrag.create_connection('lite', 'sqlite', 'shop.db')").fetchone()[0]
        row = b.execute("SELECT kind, host, port, database_name, username, schema_name, status::text "
                        "FROM dbrag.connections WHERE connection_id = %s", (cid,)).fetchone()
        assert row == ("sqlite", None, None, "shop.db", None, "main", "disconnected")
        assert b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,)).fetchone() == (4, 0, 0, 0)
        cat = {r[0]: r[1:] for r in b.execute(
            "SELECT table_name, table_description, column_descriptions, data_types, sample_values, relationships, "
            "row_estimate, primary_key FROM control_plane.table_metadata_catalog WHERE connection_id = %s",
            (cid,)).fetchall()}
        desc, col_desc, types, samples, rels, estimate, pk = cat["customers"]
        assert desc == "people who buy from the shop"
        assert col_desc == {"id": "customer number", "name": "full name of the customer"}
        assert types == {"id": "integer", "name": "text", "region": "text", "password_hash": "text"}
        assert pk == ["id"] and estimate == 3
        assert samples["name"] == ["Ada Lovelace", "Bo Diddley", "Cy Twombly"]
        assert "password_hash" not in samples
        assert {"dir": "in", "schema": "main", "table": "orders", "columns": ["id"],
                "other_columns": ["customer_id"]} in rels
        assert {"dir": "out", "schema": "main", "table": "customers", "columns": ["customer_id"],
                "other_columns": ["id"]} in cat["orders"][4]
        assert "receipt" not in cat["orders"][3]
        assert cat["order_items"][6] == ["order_id", "line"]
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        hits = b.execute("SELECT table_name FROM dbrag.search_catalog('customer names by region')").fetchall()
        assert hits[0] == ("customers",)
        prompt = json.dumps(b.execute("SELECT dbrag.build_prompt('total of orders per customer')").fetchone()[0])
        assert "SQLite" in prompt
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    try:
        rows = [r[0] for r in su.execute(
            "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT c.name, o.total, o.receipt FROM Customers c "
            "JOIN orders o ON o.customer_id = c.id ORDER BY o.id')", (cid,)).fetchall()]
        assert rows[0] == {"name": "Ada Lovelace", "total": 250.5, "receipt": "\\x00ff"}
        assert len(rows) == 3
        assert su.execute("SELECT count(*) FROM dbrag._dataplane_query(%s, "
                          "'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) "
                          "SELECT x FROM c', 5)", (cid,)).fetchone()[0] == 5
        e = err(su, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT nope FROM customers')", (cid,))
        # SQLite has no SQLSTATE: a rejected statement is HV000.
        assert e.sqlstate == "HV000" and "nope" in str(e)
    finally:
        su.execute("SELECT dbrag.reset_tenant()")
    assert digest(os.path.join(home, "shop.db")) == before  # opened read-only


# ------------------------------------------------------------------ paths

ESCAPES = [
    "../outside.db",
    "sub/../../outside.db",
    OUTSIDE,
    "/etc/passwd",
    "/etc/no-such-file.db",
    "link_out.db",
    "up/outside.db",
    "/var/lib/postgresql/15/main/global/pg_control",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_sqlite_path_escapes_are_refused(su, tenants, sqlite_dir, path):
    tenant_files(tenants.b)
    with tenants.conn(tenants.b_role) as b:
        for sql in ["SELECT * FROM dbrag.test_connection('sqlite', %s)",
                    "SELECT dbrag.create_connection('esc', 'sqlite', %s)"]:
            e = err(b, sql, (path,))
            assert e.sqlstate == "42501", (path, str(e))
        assert b.execute("SELECT count(*) FROM dbrag.connections").fetchone()[0] == 0
    assert su.execute("SELECT count(*) FROM control_plane.audit_log WHERE tenant_id = %s "
                      "AND event = 'connection_refused'", (tenants.b,)).fetchone()[0] >= 1


def test_sqlite_paths_inside(tenants, sqlite_dir):
    home = tenant_files(tenants.b)
    with tenants.conn(tenants.b_role) as b:
        # A symlink that stays inside, and the absolute form of an inside path.
        assert len(b.execute("SELECT * FROM dbrag.test_connection('sqlite', 'link_in.db')").fetchall()) == 4
        assert len(b.execute("SELECT * FROM dbrag.test_connection('sqlite', %s)",
                             (os.path.join(home, "shop.db"),)).fetchall()) == 4
        assert err(b, "SELECT * FROM dbrag.test_connection('sqlite', 'nope.db')").sqlstate == "42704"
        assert err(b, "SELECT * FROM dbrag.test_connection('sqlite', 'sub')").sqlstate == "42704"
        assert err(b, "SELECT * FROM dbrag.test_connection('sqlite', 'file:shop.db?mode=rw')").sqlstate == "22023"
        assert err(b, "SELECT * FROM dbrag.test_connection('sqlite', 'shop.db', 'temp')").sqlstate == "22023"


def test_sqlite_dir_is_superuser_only_and_required(su, tenants, sqlite_dir):
    with tenants.conn(tenants.b_role) as b:
        for sql in ["SET dbrag.sqlite_dir = '/'", "SELECT set_config('dbrag.sqlite_dir', '/', false)"]:
            assert err(b, sql).sqlstate == "42501", sql
    tenant_files(tenants.b)
    set_dir(None)
    try:
        with tenants.conn(tenants.b_role) as b:
            e = err(b, "SELECT * FROM dbrag.test_connection('sqlite', 'shop.db')")
            assert e.sqlstate == "55000" and "dbrag.sqlite_dir" in str(e)
    finally:
        set_dir(sqlite_dir)


# The constructs the guard refuses, timeouts, cancellation and isolation
# between tenants: the engines' shared suite, tests/test_engine_contract.py.


def test_sqlite_files_are_per_tenant(su, tenants, sqlite_dir):
    # B's file, by relative escape or absolute path, is not A's to open; a
    # tenant without a directory of its own reaches no file at all.
    b_home = tenant_files(tenants.b)
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT * FROM dbrag.test_connection('sqlite', 'shop.db')")
        assert e.sqlstate == "55000" and str(tenants.a) in str(e)
        tenant_files(tenants.a)
        for path in (f"../{tenants.b}/shop.db", os.path.join(b_home, "shop.db")):
            assert err(a, "SELECT * FROM dbrag.test_connection('sqlite', %s)", (path,)).sqlstate == "42501", path
            assert err(a, "SELECT dbrag.create_connection('steal', 'sqlite', %s)", (path,)).sqlstate == "42501", path
        assert len(a.execute("SELECT * FROM dbrag.test_connection('sqlite', 'shop.db')").fetchall()) == 4
    with tenants.conn(tenants.stranger) as s:
        assert err(s, "SELECT * FROM dbrag.test_connection('sqlite', 'shop.db')").sqlstate == "42501"
