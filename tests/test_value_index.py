"""The value index (docs/catalog-search.md, "Values"): sync_catalog keeps the
distinct values of low-cardinality text columns the tenant's role may read;
a question that names one (a city, a person, a status code, in any case,
with a one-letter typo) finds the table and column, and the prompt says so.
Over TCP as the tenants' login roles, the app server and the operator."""

import psycopg
import pytest

from conftest import DBNAME, tenant_role, token_for
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_sqlite import sqlite_dir, tenant_files  # noqa: F401  (fixture)

SHOP_SQL = """
CREATE SCHEMA {s};
CREATE TYPE {s}.order_state AS ENUM ('SHIPPED', 'PENDING', 'CANCELLED');
CREATE TABLE {s}.customers (id int PRIMARY KEY, name text, city text, api_token text, password_hint text);
CREATE TABLE {s}.orders (id int PRIMARY KEY, customer_id int REFERENCES {s}.customers, state {s}.order_state,
                         total numeric);
CREATE TABLE {s}.staff (id int PRIMARY KEY, nickname text, salary_band text);
CREATE TABLE {s}.hidden_plans (id int, plan text);
CREATE TABLE {s}.events (id int, code text, kind text, blurb text);
CREATE TABLE {s}.caps (id int, fifty text, fiftyone text);
CREATE TABLE {s}.zz_geo (id int, place text);
INSERT INTO {s}.customers VALUES
  (1, 'Ann', 'Lyon', 'alphatokenvalue', 'mothersmaiden'),
  (2, 'Bob Stone', 'Paris', 'betatokenvalue', 'favouritepet'),
  (3, 'Chloe Martin', 'New York', 'gammatokenvalue', 'firstschool');
INSERT INTO {s}.orders VALUES (1, 1, 'SHIPPED', 10), (2, 2, 'PENDING', 20), (3, 3, 'SHIPPED', 5);
INSERT INTO {s}.staff VALUES (1, 'Dexter', 'Platinumband'), (2, 'Morgan', 'Goldband');
INSERT INTO {s}.hidden_plans VALUES (1, 'Zeppelin');
INSERT INTO {s}.events SELECT g, 'evt' || g, (ARRAY['click', 'view', 'purchase'])[1 + g % 3],
                              CASE WHEN g = 1 THEN repeat('longword', 20) END
                       FROM generate_series(1, 200) g;
INSERT INTO {s}.caps SELECT g, 'fifty' || chr(97 + g % 26) || chr(97 + g / 26), 'wide' || chr(97 + g % 26) || chr(97 + g / 26)
                     FROM generate_series(0, 50) g;
UPDATE {s}.caps SET fifty = 'fiftyaa' WHERE id = 50;
INSERT INTO {s}.zz_geo SELECT g, (ARRAY['Annecy', 'Brest', 'Caen', 'Dijon', 'Evian', 'Foix', 'Gap', 'Grenoble'])[g]
                       FROM generate_series(1, 8) g;
"""


def make_shop(su, tenants, tenant, schema):
    role = tenant_role(su, tenant)
    su.execute(SHOP_SQL.format(s=schema))
    su.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    for t in ("customers", "orders", "events", "caps", "zz_geo"):
        su.execute(f"GRANT SELECT ON {schema}.{t} TO {role}")
    # Only some columns of staff; nothing of hidden_plans.
    su.execute(f"GRANT SELECT (id, nickname) ON {schema}.staff TO {role}")
    return su.execute(
        "INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
        "VALUES (%s, %s, 'local', %s, true) RETURNING connection_id", (tenant, schema, schema)).fetchone()[0]


@pytest.fixture
def shops(su, tenants):
    sa, sb = f"va_{tenants.tag}", f"vb_{tenants.tag}"
    ca = make_shop(su, tenants, tenants.a, sa)
    cb = make_shop(su, tenants, tenants.b, sb)
    # B's Lyon is in another table, so a leak would show.
    su.execute(f"CREATE TABLE {sb}.depots (id int, town text)")
    su.execute(f"INSERT INTO {sb}.depots VALUES (1, 'Lyon'), (2, 'Bordeaux')")
    su.execute(f"GRANT SELECT ON {sb}.depots TO {tenants.b_trole}")
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        b.execute("SELECT * FROM dbrag.sync_catalog()")
    return tenants, (sa, ca), (sb, cb)


def search(conn, question, k=10):
    return conn.execute("SELECT table_name, column_name, value, score FROM dbrag.search_values(%s, %s)",
                        (question, k)).fetchall()


def indexed(su, conn_id):
    return {(t, c, v) for t, c, v in su.execute(
        "SELECT table_name, column_name, value FROM control_plane.value_index WHERE connection_id = %s",
        (conn_id,))}


def test_city(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        hits = search(a, "orders shipped to Lyon")
        assert set(hits) == {("customers", "city", "Lyon", 1.0), ("orders", "state", "SHIPPED", 1.0)}
        assert search(a, "customers who live in Lyon") == [("customers", "city", "Lyon", 1.0)]


def test_person_name(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "Ann's invoices")[0] == ("customers", "name", "Ann", 1.0)
        assert search(a, "total spent by bob stone")[0] == ("customers", "name", "Bob Stone", 1.0)


def test_status_code(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        # An enum column: its labels are values too.
        assert search(a, "orders with status SHIPPED")[0] == ("orders", "state", "SHIPPED", 1.0)


def test_mixed_case(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "customers in lYON")[0] == ("customers", "city", "Lyon", 1.0)
        assert search(a, "customers from NEW YORK")[0] == ("customers", "city", "New York", 1.0)
        assert search(a, "pending orders")[0] == ("orders", "state", "PENDING", 1.0)


def test_one_letter_typo(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "customers living in Lyin") == [("customers", "city", "Lyon", 0.5)]
        assert search(a, "orders shipped to Lyon")[0][3] == 1.0  # exact beats typo
        assert search(a, "customers in Pairs")[0] == ("customers", "city", "Paris", 0.5)  # swapped letters
        assert search(a, "customers in Lxxn") == []  # two letters off


def test_secret_looking_columns_never_indexed(su, shops):
    _, (_, ca), _ = shops
    got = indexed(su, ca)
    assert not any(c in ("api_token", "password_hint") for _, c, _ in got)
    assert not any("token" in v or v in ("mothersmaiden", "favouritepet") for _, _, v in got)


def test_unreadable_never_indexed(su, shops):
    tenants, (_, ca), _ = shops
    got = indexed(su, ca)
    assert not any(t == "hidden_plans" for t, _, _ in got)
    assert not any(c == "salary_band" for _, c, _ in got)
    assert ("staff", "nickname", "Dexter") in got
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "plans for zeppelin") == []
        assert search(a, "staff in Platinumband") == []


def test_bounds(su, shops):
    _, (_, ca), _ = shops
    got = indexed(su, ca)
    cols = {(t, c) for t, c, _ in got}
    assert ("events", "code") not in cols  # 200 distinct values
    assert ("events", "kind") in cols  # 3 distinct values in the same table
    assert ("events", "blurb") not in cols  # its one value is 160 characters
    assert len([v for t, c, v in got if (t, c) == ("caps", "fifty")]) == 50  # at the bound
    assert ("caps", "fiftyone") not in cols  # one past it
    assert all(len(v) <= 100 for _, _, v in got)


def test_tenants_never_see_each_others_values(su, shops):
    tenants, (_, ca), (_, cb) = shops
    with tenants.conn(tenants.b_role) as b:
        assert ("depots", "town", "Lyon", 1.0) in search(b, "orders shipped to Lyon")
        assert {r[0] for r in b.execute("SELECT DISTINCT connection_id FROM control_plane.value_index")} == {cb}
        assert b.execute("SELECT count(*) FROM control_plane.value_index WHERE connection_id = %s",
                         (ca,)).fetchone()[0] == 0
        with pytest.raises(psycopg.Error) as e:
            b.execute("DELETE FROM control_plane.value_index")
        assert e.value.sqlstate == "42501"
    with tenants.conn(tenants.a_role) as a:
        assert not any(t == "depots" for t, _, _, _ in search(a, "Lyon Bordeaux"))
        assert search(a, "Bordeaux") == []
    # The application server, with a token for B.
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.b),))
        assert search(app, "Bordeaux") == [("depots", "town", "Bordeaux", 1.0)]
        assert {r[0] for r in app.execute("SELECT connection_id FROM dbrag.search_values('Lyon')")} == {cb}
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert search(app, "Bordeaux") == []
    # The operator: nothing without a tenant in force, then that tenant's only.
    with tenants.conn(tenants.admin_role) as op:
        with pytest.raises(psycopg.Error) as e:
            search(op, "Lyon")
        assert e.value.sqlstate == "42501"
        op.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert {r[0] for r in op.execute("SELECT connection_id FROM dbrag.search_values('Lyon Bordeaux')")} == {ca}
    with tenants.conn(tenants.stranger) as c:
        with pytest.raises(psycopg.Error) as e:
            search(c, "Lyon")
        assert e.value.sqlstate == "42501"
        assert c.execute("SELECT count(*) FROM control_plane.value_index").fetchone()[0] == 0


def test_argument_errors(shops):
    tenants, _, _ = shops
    with tenants.conn(tenants.a_role) as a:
        for q, k, state in ((None, 10, "22004"), ("", 10, "22023"), ("x" * 9000, 10, "22023"),
                            ("Lyon", 0, "22023"), ("Lyon", 1001, "22023")):
            with pytest.raises(psycopg.Error) as e:
                search(a, q, k)
            assert e.value.sqlstate == state
        assert search(a, "Lyon", 1) == [("customers", "city", "Lyon", 1.0)]
        assert search(a, "?!  ...") == []


def test_prompt_names_the_value_and_adds_its_table(shops):
    tenants, (sa, _), _ = shops
    with tenants.conn(tenants.a_role) as a:
        p = a.execute("SELECT dbrag.build_prompt('how many orders were shipped to Lyin')").fetchone()[0]
        text = "\n".join(m["content"] for m in p["messages"])
        assert "'Lyon' is a value of customers.city" in text
        # Grenoble is not among zz_geo's samples, so only the value index
        # can bring that table in.
        assert "Grenoble" not in a.execute(
            "SELECT sample_values::text FROM control_plane.table_metadata_catalog WHERE table_name = 'zz_geo'"
        ).fetchone()[0]
        assert not any(r[0] == "zz_geo" for r in a.execute("SELECT table_name FROM dbrag.search_catalog('Grenoble')"))
        p = a.execute("SELECT dbrag.build_prompt('Grenoble')").fetchone()[0]
        text = "\n".join(m["content"] for m in p["messages"])
        assert "'Grenoble' is a value of zz_geo.place" in text
        assert f"CREATE TABLE {sa}.zz_geo" in text


def test_model_prompt_has_the_value_line(su, shops, llm_server):  # noqa: F811
    tenants, _, _ = shops
    llm_server.reset()
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_model = 'fixture-model'")
    su.execute("SELECT dbrag.set_llm_api_key('sk-test-values-1', global => true)")
    try:
        llm_server.script({"content": "```sql\nSELECT count(*) AS n FROM customers WHERE city = 'Lyon'\n```"})
        with tenants.conn(tenants.a_role) as a:
            rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('how many customers live in lyon')")]
        assert rows == [{"n": 1}]
        prompt = "\n".join(m["content"] for m in llm_server.requests()[-1]["body"]["messages"])
        assert "'Lyon' is a value of customers.city" in prompt
    finally:
        su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_url")
        su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_model")
        su.execute("SELECT dbrag.set_llm_api_key(NULL, global => true)")


def test_refreshed_by_each_sync(su, shops):
    tenants, (sa, ca), _ = shops
    su.execute(f"UPDATE {sa}.customers SET city = 'Marseille' WHERE city = 'Paris'")
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        assert search(a, "Paris") == []
        assert search(a, "Marseille") == [("customers", "city", "Marseille", 1.0)]
    got = indexed(su, ca)
    assert ("customers", "city", "Paris") not in got and ("customers", "city", "Lyon") in got
    # Revoking the tenant role's read takes the values out at the next sync.
    su.execute(f"REVOKE SELECT ON {sa}.customers FROM {tenants.a_trole}")
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        assert search(a, "Lyon") == []


def test_dropped_with_the_connection(su, shops):
    tenants, (_, ca), (_, cb) = shops
    assert indexed(su, ca)
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT dbrag.delete_connection(%s)", (ca,))
        assert search(a, "Lyon") == []
    assert indexed(su, ca) == set()
    assert indexed(su, cb)


def test_sqlite_connection(su, tenants, sqlite_dir):  # noqa: F811
    import os
    import sqlite3
    home = tenant_files(tenants.b)
    db = sqlite3.connect(os.path.join(home, "shop.db"))
    # A NUL (which PostgreSQL text cannot hold; it failed the sync in the
    # samples) and a line break: the sync goes on, neither is stored.
    db.execute("CREATE TABLE tags (tag TEXT)")
    db.executemany("INSERT INTO tags VALUES (?)", [("gift wrap",), ("bad\x00tag",), ("line\nbreak",)])
    db.commit()
    db.close()
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('lite', 'sqlite', 'shop.db')").fetchone()[0]
        b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
        got = indexed(su, cid)
        assert ("customers", "region", "north") in got and ("customers", "name", "Ada Lovelace") in got
        assert not any(c == "password_hash" for _, c, _ in got)
        assert ("order_items", "sku", "SKU-1") in got
        tags = {v for t, _, v in got if t == "tags"}
        assert "gift wrap" in tags and "line\nbreak" not in tags and not any("\x00" in v for v in tags)
        assert search(b, "customers from the nort")[0] == ("customers", "region", "north", 0.5)
        assert search(b, "what did ada lovelace buy")[0] == ("customers", "name", "Ada Lovelace", 1.0)
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "ada lovelace") == []


def test_remote_postgres_connection(su, tenants):
    from remote_fixture import remote_conninfo, setup_remote
    setup_remote()
    with tenants.conn(tenants.b_role) as b:
        cid = b.execute("SELECT dbrag.create_connection('remote shop', 'postgres', %s)",
                        (remote_conninfo(),)).fetchone()[0]
        b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
        got = indexed(su, cid)
        assert ("customers", "region", "south") in got and ("customers", "name", "Ada") in got
        assert not any(t == "hidden_payroll" for t, _, _ in got)
        assert search(b, "customers in the south")[0] == ("customers", "region", "south", 1.0)
    with tenants.conn(tenants.a_role) as a:
        assert search(a, "customers in the south") == []


def test_mysql_connection(su, tenants):
    from mysql_fixture import mysql_uri, setup_mysql
    setup_mysql()
    with tenants.conn(tenants.a_role) as a:
        cid = a.execute("SELECT dbrag.create_connection('my', 'mysql', %s)", (mysql_uri(),)).fetchone()[0]
        a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
        got = indexed(su, cid)
        assert ("customers", "region", "north") in got and ("customers", "name", "Bo Diddley") in got
        assert not any(c == "api_key" or v.startswith("sk-live") for _, c, v in got)
        assert search(a, "orders of bo diddley")[0] == ("customers", "name", "Bo Diddley", 1.0)
        assert search(a, "customers in the soth")[0] == ("customers", "region", "south", 0.5)
    with tenants.conn(tenants.b_role) as b:
        assert search(b, "bo diddley") == []


def test_per_tenant_bound(su, tenants):
    """20,000 values a tenant over all its connections: a sync gets what the
    tenant's other connections leave."""
    sa = f"vc_{tenants.tag}"
    ca = make_shop(su, tenants, tenants.a, sa)
    other = su.execute(
        "INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name) "
        "VALUES (%s, 'other', 'local', %s) RETURNING connection_id", (tenants.a, sa)).fetchone()[0]
    su.execute("INSERT INTO control_plane.value_index (tenant_id, connection_id, schema_name, table_name, "
               "column_name, value, value_norm) SELECT %s, %s, 'x', 't', 'c', 'w' || g, 'w' || g "
               "FROM generate_series(1, 19990) g", (tenants.a, other))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (ca,))
    assert len(indexed(su, ca)) == 10
    su.execute("DELETE FROM control_plane.value_index WHERE connection_id = %s", (other,))
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (ca,))
    assert len(indexed(su, ca)) > 60


def test_remote_table_the_account_cannot_read(su, tenants):
    """A remote table listed but not readable by the connection's account:
    its statement is rejected, the others' values are still read."""
    from remote_fixture import REMOTE_DB, REMOTE_USER, remote_conninfo, remote_su, setup_remote
    setup_remote()
    with remote_su(REMOTE_DB) as r:
        r.execute("DROP SCHEMA IF EXISTS vi_hidden CASCADE")
        r.execute("CREATE SCHEMA vi_hidden")
        r.execute("CREATE TABLE vi_hidden.places (id int, city text)")
        r.execute("CREATE TABLE vi_hidden.hidden_notes (id int, note text)")
        r.execute("INSERT INTO vi_hidden.places VALUES (1, 'Toulouse'), (2, 'Nantes')")
        r.execute("INSERT INTO vi_hidden.hidden_notes VALUES (1, 'Topsecretnote')")
        r.execute(f"GRANT USAGE ON SCHEMA vi_hidden TO {REMOTE_USER}")
        r.execute(f"GRANT SELECT ON vi_hidden.places TO {REMOTE_USER}")
    with tenants.conn(tenants.a_role) as a:
        cid = a.execute("SELECT dbrag.create_connection('remote hidden', 'postgres', %s, 'vi_hidden')",
                        (remote_conninfo(),)).fetchone()[0]
        a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
        got = indexed(su, cid)
        assert got == {("places", "city", "Toulouse"), ("places", "city", "Nantes")}
        assert search(a, "notes about Topsecretnote") == []
