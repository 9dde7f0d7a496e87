"""Fill a database running the PREVIOUS release of pg_dbrag with real data,
the way a production control plane looks (run by scripts/upgrade_test.sh
before the update): two tenants with member login roles, an application
server and an operator; connections of every kind (local, postgres, mysql,
sqlite) with encrypted credentials, each synced; examples and documentation;
history from ask() against the model fixture; audit rows; LLM API keys
(global and per tenant); a tenant schema; an isolated application table with
rows of both tenants and a dbrag.encrypt() ciphertext in each row.

Writes what the checks need (ids, which key each tenant's ask sent) to
upgrade-state.json in the work directory. Uses only the SQL API that the
previous release has."""

import os
import sqlite3
import sys

import psycopg

from common import (ALICE, APP, APP_TABLE, B_KEY, BOB, DB, GLOBAL_KEY, OPS, ROLE_PASSWORD, SCHEMA_A,
                    SCHEMA_B, SQLITE_DIR, STATE, TENANT_A, TENANT_B, connect, login, su, write_json)
from conftest import make_token, token_for
from llm_fixture import LlmServer
from mysql_fixture import mysql_uri, setup_mysql
from remote_fixture import remote_conninfo, setup_remote

SHOP = """
CREATE SCHEMA {s};
CREATE TABLE {s}.customers (id int PRIMARY KEY, name text NOT NULL, region text);
COMMENT ON TABLE {s}.customers IS 'people who buy from the shop';
CREATE TABLE {s}.orders (id int PRIMARY KEY, customer_id int REFERENCES {s}.customers, total numeric);
INSERT INTO {s}.customers VALUES (1, '{who} one', 'north'), (2, '{who} two', 'south');
INSERT INTO {s}.orders VALUES (10, 1, 12.5), (11, 2, 99);
"""


def sqlite_file(tenant):
    home = os.path.join(SQLITE_DIR, str(tenant))
    os.makedirs(home, exist_ok=True)
    for d in (SQLITE_DIR, home):
        os.chmod(d, 0o755)
    path = os.path.join(home, "shop.db")
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE parts (id INTEGER PRIMARY KEY, label TEXT);"
                     "INSERT INTO parts VALUES (1, 'bolt'), (2, 'nut');")
    db.commit()
    db.close()
    os.chmod(path, 0o644)


def sql_answer(sql):
    return {"content": f"```sql\n{sql}\n```"}


def main():
    setup_remote()
    setup_mysql()
    with connect(dbname="postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
        for role in (ALICE, BOB, APP, OPS):
            c.execute(f"DROP ROLE IF EXISTS {role}")
            c.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
    model = LlmServer()
    try:
        with su() as s:
            s.execute("CREATE EXTENSION pg_dbrag CASCADE")
            s.execute(f"GRANT dbrag_app TO {APP}")
            s.execute(f"GRANT dbrag_admin TO {OPS}")
            s.execute(f"ALTER DATABASE {DB} SET dbrag.llm_url = '{model.url}'")
            s.execute(f"ALTER DATABASE {DB} SET dbrag.llm_model = 'fixture-model'")
            s.execute("SELECT dbrag.set_llm_api_key(%s, global => true)", (GLOBAL_KEY,))
            for schema, role, who in ((SCHEMA_A, ALICE, "a"), (SCHEMA_B, BOB, "b")):
                s.execute(SHOP.format(s=schema, who=who))
                s.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
                s.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
            # An application table of the platform, isolated by tenant.
            s.execute(f"CREATE TABLE {APP_TABLE} (id serial PRIMARY KEY, body text NOT NULL, secret bytea)")
            s.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {APP_TABLE} TO PUBLIC")
            s.execute("GRANT USAGE ON SEQUENCE public.app_notes_id_seq TO PUBLIC")
            s.execute(f"SELECT dbrag.enable_tenant_isolation('{APP_TABLE}')")

        with login(OPS) as ops:
            a = ops.execute("SELECT dbrag.create_tenant(%s, 'org a', 'a@example.com')", (TENANT_A,)).fetchone()[0]
            b = ops.execute("SELECT dbrag.create_tenant(%s, 'org b', 'b@example.com')", (TENANT_B,)).fetchone()[0]
            ops.execute("SELECT dbrag.add_tenant_member(%s, %s, 'admin')", (a, ALICE))
            ops.execute("SELECT dbrag.add_tenant_member(%s, %s, 'developer')", (b, BOB))
            schema_a = ops.execute("SELECT dbrag.create_tenant_schema(%s)", (a,)).fetchone()[0]
        for tenant in (a, b):
            sqlite_file(tenant)

        conns = {}
        with login(ALICE) as al:
            conns["a_local"] = al.execute(
                "SELECT dbrag.create_connection('a_local', 'local', NULL, %s)", (SCHEMA_A,)).fetchone()[0]
            conns["a_postgres"] = al.execute(
                "SELECT dbrag.create_connection('a_remote', 'postgres', %s)", (remote_conninfo(),)).fetchone()[0]
            conns["a_mysql"] = al.execute(
                "SELECT dbrag.create_connection('a_mysql', 'mysql', %s)", (mysql_uri(),)).fetchone()[0]
            conns["a_sqlite"] = al.execute(
                "SELECT dbrag.create_connection('a_sqlite', 'sqlite', 'shop.db')").fetchone()[0]
            for cid in (conns["a_local"], conns["a_postgres"], conns["a_mysql"], conns["a_sqlite"]):
                al.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
            al.execute("SELECT dbrag.activate_connection(%s)", (conns["a_local"],))
            al.execute("SELECT dbrag.add_example('how many customers', 'SELECT count(*) FROM customers')")
            al.execute("SELECT dbrag.add_documentation('a region is north or south')")
            al.execute(f"INSERT INTO {APP_TABLE} (body, secret) VALUES "
                       "('note of a', dbrag.encrypt('a-secret', 'note'))")
            # A schema of the tenant's own, reached through the schema role.
            al.execute(f"CREATE TABLE {schema_a}.private_plans (plan text)")
            al.execute(f"INSERT INTO {schema_a}.private_plans VALUES ('a plan')")
        with login(BOB) as bo:
            conns["b_local"] = bo.execute(
                "SELECT dbrag.create_connection('b_local', 'local', NULL, %s)", (SCHEMA_B,)).fetchone()[0]
            conns["b_postgres"] = bo.execute(
                "SELECT dbrag.create_connection('b_remote', 'postgres', %s)", (remote_conninfo(),)).fetchone()[0]
            conns["b_sqlite"] = bo.execute(
                "SELECT dbrag.create_connection('b_sqlite', 'sqlite', 'shop.db')").fetchone()[0]
            for cid in (conns["b_local"], conns["b_postgres"], conns["b_sqlite"]):
                bo.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cid,))
            bo.execute("SELECT dbrag.activate_connection(%s)", (conns["b_local"],))
            bo.execute("SELECT dbrag.set_llm_api_key(%s)", (B_KEY,))
            bo.execute("SELECT dbrag.add_example('orders over 50', 'SELECT * FROM orders WHERE total > 50')")
            bo.execute(f"INSERT INTO {APP_TABLE} (body, secret) VALUES "
                       "('note of b', dbrag.encrypt('b-secret', 'note'))")

        # History: one answered question per tenant, through the model fixture.
        keys = {}
        for role, tenant, question in ((ALICE, "a", "how many customers are there"),
                                       (BOB, "b", "list the customers")):
            model.script(sql_answer("SELECT count(*) AS n FROM customers"))
            with login(role) as c:
                rows = c.execute("SELECT * FROM dbrag.ask(%s)", (question,)).fetchall()
                assert rows == [({"n": 2},)], rows
            keys[tenant] = model.requests()[-1]["headers"]["authorization"]
        # The application server acting for a tenant with a token, and refusals
        # that leave audit rows.
        with login(APP) as app:
            app.execute("SELECT dbrag.set_tenant(%s)", (token_for(b),))
            assert app.execute(f"SELECT count(*) FROM {APP_TABLE}").fetchone()[0] == 1
            for bad in (make_token({"tenant_id": str(a)}, secret="wrong-secret"), "not-a-token"):
                try:
                    app.execute("SELECT dbrag.set_tenant(%s)", (bad,))
                except psycopg.Error as e:
                    assert e.sqlstate == "28000", e
                else:
                    raise AssertionError("a bad token was accepted")
        with su() as s:
            counts = dict(s.execute(
                "SELECT 'audit', count(*) FROM control_plane.audit_log UNION ALL "
                "SELECT 'history', count(*) FROM control_plane.query_history UNION ALL "
                "SELECT 'catalog', count(*) FROM control_plane.table_metadata_catalog").fetchall())
        assert counts["audit"] >= 3 and counts["history"] == 2 and counts["catalog"] >= 10, counts
        write_json(STATE, {"a": str(a), "b": str(b), "connections": {k: str(v) for k, v in conns.items()},
                           "ask_keys": keys, "schema_a": schema_a})
        print(f"seeded {DB}: tenants {a} {b}, {len(conns)} connections, {counts}")
    finally:
        model.stop()


if __name__ == "__main__":
    sys.exit(main())
