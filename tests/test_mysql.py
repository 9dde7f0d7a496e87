"""MySQL/MariaDB connections (issue 9): a real MariaDB server from Debian's
packages (started by scripts/test.sh), the same workflow as postgres (test,
create, sync, activate, search), the password rule, the guard on the
sqlparser tree refusing each deny-listed construct before it reaches the
server (shown with the server's general log), timeouts and cancellation,
and isolation between tenants."""

import json
import time
import uuid

import psycopg
import pytest

from conftest import connect
from mysql_fixture import (MY_DB, MY_PASSWORD, MY_USER, MYSQL_PORT, general_log, mysql_uri, root,
                           setup_mysql)


@pytest.fixture(scope="module")
def mysql(database):
    setup_mysql()
    return mysql_uri()


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


@pytest.fixture
def b_mysql(su, tenants, mysql):
    """Tenant B's synced mysql connection, and a superuser session acting for B."""
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('shop_my', 'mysql', %s)", (mysql,)).fetchone()[0]
        b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
    c = connect()
    c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    yield c, cid
    c.close()


def catalog(conn, cid):
    rows = conn.execute("SELECT table_name, schema_name, table_description, column_descriptions, data_types, "
                        "sample_values, relationships, row_estimate, primary_key "
                        "FROM control_plane.table_metadata_catalog WHERE connection_id = %s ORDER BY table_name",
                        (cid,)).fetchall()
    return {r[0]: r[1:] for r in rows}


# ------------------------------------------------------------------ workflow

def test_mysql_test_create_sync_activate_search(su, tenants, mysql):
    with tenants.conn(tenants.b_role) as b:
        listed = b.execute("SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql,)).fetchall()
        assert listed == [(MY_DB, t) for t in ["big_orders", "customers", "nums", "order_items", "orders"]]
        assert b.execute("SELECT count(*) FROM dbrag.connections").fetchone()[0] == 0

        cid = b.execute("SELECT dbrag.create_connection('shop_my', 'mysql', %s)", (mysql,)).fetchone()[0]
        row = b.execute("SELECT kind, host, port, database_name, username, schema_name, status::text "
                        "FROM dbrag.connections WHERE connection_id = %s", (cid,)).fetchone()
        assert row == ("mysql", "127.0.0.1", MYSQL_PORT, MY_DB, MY_USER, MY_DB, "disconnected")

        summary = b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,)).fetchone()
        assert summary == (5, 0, 0, 0)
        cat = catalog(b, cid)
        assert set(cat) == {"big_orders", "customers", "nums", "order_items", "orders"}
        schema, desc, col_desc, types, samples, rels, estimate, pk = cat["customers"]
        assert schema == MY_DB and desc == "people who buy from the shop"
        assert col_desc == {"id": "customer number", "name": "full name of the customer"}
        assert types == {"id": "int(11)", "name": "varchar(100)", "region": "varchar(20)", "api_key": "varchar(64)"}
        assert pk == ["id"] and estimate == 3
        assert samples["name"] == ["Ada Lovelace", "Bo Diddley", "Cy Twombly"]
        assert "api_key" not in samples  # looks secret: never sampled
        assert {"dir": "in", "table": "orders", "schema": MY_DB, "columns": ["id"],
                "other_columns": ["customer_id"]} in rels
        _, _, _, otypes, osamples, orels, _, opk = cat["orders"]
        assert otypes["total"] == "decimal(10,2)" and opk == ["id"]
        assert {"dir": "out", "table": "customers", "schema": MY_DB, "columns": ["customer_id"],
                "other_columns": ["id"]} in orels
        assert "photo" not in cat["order_items"][4]  # blobs are not sampled
        assert cat["order_items"][7] == ["order_id", "line"]
        assert cat["big_orders"][6] is None  # a view has no estimate

        status = b.execute("SELECT status::text FROM dbrag.connections WHERE connection_id = %s", (cid,)).fetchone()
        assert status == ("connected",)
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        hits = b.execute("SELECT table_name, via_join FROM dbrag.search_catalog('customer names by region')").fetchall()
        assert hits[0] == ("customers", False)
        prompt = json.dumps(b.execute("SELECT dbrag.build_prompt('total of orders per customer')").fetchone()[0])
        assert "MySQL" in prompt and "orders" in prompt

    blob = su.execute("SELECT credentials FROM control_plane.tenant_databases WHERE connection_id = %s",
                      (cid,)).fetchone()[0]
    assert MY_PASSWORD.encode() not in bytes(blob)
    created = su.execute("SELECT detail FROM control_plane.audit_log WHERE tenant_id = %s AND event = "
                         "'connection_created'", (tenants.b,)).fetchall()
    assert created and MY_PASSWORD not in str(created)

    # Rows through the guard and the read-only runner, as jsonb.
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
    try:
        rows = [r[0] for r in su.execute(
            "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT c.name, o.total, o.ordered_at, o.placed_at, o.notes "
            "FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id')", (cid,)).fetchall()]
        assert rows[0] == {"name": "Ada Lovelace", "total": 250.5, "ordered_at": "2024-01-05",
                           "placed_at": "2024-01-05T10:11:12.345000", "notes": '{"gift": true}'}
        # MariaDB's JSON is LONGTEXT with a check: it arrives as text (MySQL 8's as JSON).
        assert rows[2]["notes"] == "[1, 2]" and len(rows) == 3
        # The row cap.
        capped = su.execute("SELECT count(*) FROM dbrag._dataplane_query(%s, 'SELECT n FROM nums', 7)",
                            (cid,)).fetchone()[0]
        assert capped == 7
        binary = su.execute("SELECT * FROM dbrag._dataplane_query(%s, "
                            "'SELECT photo, qty FROM order_items ORDER BY line')", (cid,)).fetchall()
        assert binary[0][0] == {"photo": "\\x00ff", "qty": 2}
        # An execution error on the server keeps its SQLSTATE's class (42S22 → 42000).
        e = err(su, "SELECT * FROM dbrag._dataplane_query(%s, 'SELECT no_such_column FROM customers')", (cid,))
        assert e.sqlstate == "42000" and "no_such_column" in str(e)
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


def test_mysql_schema_and_update(tenants, mysql):
    with tenants.conn(tenants.b_role) as b:
        # No database in the URI: schema_name names it; neither: an error.
        e = err(b, "SELECT dbrag.create_connection('x', 'mysql', %s)", (mysql_uri(db=None),))
        assert e.sqlstate == "22023"
        cid = b.execute("SELECT dbrag.create_connection('x', 'mysql', %s, %s)",
                        (mysql_uri(db=None), MY_DB)).fetchone()[0]
        assert b.execute("SELECT schema_name, database_name FROM dbrag.connections WHERE connection_id = %s",
                         (cid,)).fetchone() == (MY_DB, MY_DB)
        b.execute("SELECT dbrag.update_connection(%s, schema_name => 'otherdb')", (cid,))
        assert b.execute("SELECT schema_name, database_name FROM dbrag.connections WHERE connection_id = %s",
                         (cid,)).fetchone() == ("otherdb", "otherdb")
        # The reader may not see otherdb.
        e = err(b, "SELECT dbrag.activate_connection(%s)", (cid,))
        assert e.sqlstate == "42704" and "otherdb" in str(e)
        b.execute("SELECT dbrag.update_connection(%s, conninfo => %s, schema_name => %s)", (cid, mysql, MY_DB))
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        e = err(b, "SELECT dbrag.update_connection(%s, conninfo => 'mysql://root@127.0.0.1/x')", (cid,))
        assert e.sqlstate == "42501"
        b.execute("SELECT dbrag.delete_connection(%s)", (cid,))


# ------------------------------------------------------------------ the password rule

REFUSED_URIS = [
    f"mysql://root@127.0.0.1:{MYSQL_PORT}/{MY_DB}",          # no password: the server's own root
    f"mysql://root:@127.0.0.1:{MYSQL_PORT}/{MY_DB}",         # empty password
    f"mysql://nopw@127.0.0.1:{MYSQL_PORT}/otherdb",
    "mysql://root:x@/var/run/mysqld/mysqld.sock",
    "mysql://root:x@%2Frun%2Fmysqld%2Fmysqld.sock/db",
    f"mysql://root:x@127.0.0.1:{MYSQL_PORT}/db?socket=/run/mysqld/mysqld.sock",
    f"mysql://root:x@localhost/db?prefer_socket=true",
]


@pytest.mark.parametrize("uri", REFUSED_URIS)
def test_mysql_server_identity_cannot_be_borrowed(su, tenants, mysql, uri):
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (uri,))
        assert e.sqlstate == "42501", str(e)
        e = err(b, "SELECT dbrag.create_connection('sock', 'mysql', %s)", (uri,))
        assert e.sqlstate == "42501", str(e)
        assert b.execute("SELECT count(*) FROM dbrag.connections").fetchone()[0] == 0
    assert su.execute("SELECT count(*) FROM control_plane.audit_log WHERE tenant_id = %s "
                      "AND event = 'connection_refused'", (tenants.b,)).fetchone()[0] >= 1


def test_mysql_password_must_be_the_accounts(su, tenants, mysql):
    # A password-less account does not let in a client that sends a password.
    with tenants.conn(tenants.b_role) as b:
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)",
                (mysql_uri(user="nopw", password="made-up-pw", db="otherdb"),))
        assert e.sqlstate == "28P01" and "denied" in str(e).lower() and "made-up-pw" not in str(e)
        secret = "wrong-Pw-9911"
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql_uri(password=secret),))
        assert e.sqlstate == "28P01" and secret not in str(e)
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", ("host=127.0.0.1 user=x password=y",))
        assert e.sqlstate == "22023"
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql + "?ssl-key=/etc/x",))
        assert e.sqlstate == "22023"
    # A superuser may use a password-less account (the dblink rule).
    assert su.execute("SELECT * FROM dbrag.test_connection('mysql', %s)",
                      (mysql_uri(user="nopw", password=None, db="otherdb"),)).fetchall() == [("otherdb", "secret_stuff")]


def test_mysql_unreachable_and_silent(tenants):
    from remote_fixture import SilentServer, closed_port
    with tenants.conn(tenants.b_role) as b:
        t0 = time.monotonic()
        e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql_uri(port=closed_port()),))
        assert e.sqlstate == "08001" and time.monotonic() - t0 < 5
        server = SilentServer()
        try:
            b.execute("SET statement_timeout = 400")
            t0 = time.monotonic()
            e = err(b, "SELECT * FROM dbrag.test_connection('mysql', %s)", (mysql_uri(port=server.port),))
            assert e.sqlstate == "57014" and time.monotonic() - t0 < 1.0
            b.execute("RESET statement_timeout")
            assert b.execute("SELECT 1").fetchone()[0] == 1
        finally:
            server.close()


# ------------------------------------------------------------------ the guard

# The constructs the guard refuses: tests/test_engine_contract.py (MYSQL_DENIED).


def test_mysql_guard_normalizes(b_mysql):
    c, cid = b_mysql
    tag = "mk" + uuid.uuid4().hex[:10]
    out = c.execute("SELECT dbrag._dataplane_check(%s, %s)",
                    (cid, f"select name /* {tag} */ from customers -- trailing\n where id = 1")).fetchone()[0]
    assert out == "SELECT name FROM customers WHERE id = 1"
    rows = c.execute("SELECT * FROM dbrag._dataplane_query(%s, %s)",
                     (cid, f"SELECT name /* {tag} */ FROM customers WHERE id = 1")).fetchall()
    assert rows == [({"name": "Ada Lovelace"},)]
    # What ran is the printed statement: the comment never reached the server.
    assert tag not in general_log()
    # A syntax error carries the parser's message.
    e = err(c, "SELECT dbrag._dataplane_check(%s, 'SELEC name FROM customers')", (cid,))
    assert e.sqlstate == "42601" and "MySQL syntax error" in str(e)


# Timeouts, cancellation, isolation between tenants and the superuser-only
# entry points: the engines' shared suite, tests/test_engine_contract.py.
