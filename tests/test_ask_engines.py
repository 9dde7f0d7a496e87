"""dbrag.ask() on MySQL/MariaDB and SQLite connections (issue 9): the
`engines` fixture (also used by tests/test_engine_contract.py, which holds
the end-to-end runs and the refusals before the server), one retry with the
engine's error, tenants never see each other's history."""

import psycopg
import pytest

from conftest import DBNAME
from llm_fixture import llm_server  # noqa: F401  (fixture)
from mysql_fixture import mysql_uri, setup_mysql
from test_sqlite import sqlite_dir, tenant_files  # noqa: F401  (fixture)

KEY = "sk-test-engines-77aa"


def sql_answer(sql):
    return {"content": f"```sql\n{sql}\n```"}


@pytest.fixture
def engines(su, tenants, llm_server, sqlite_dir):  # noqa: F811
    """Tenant A on MariaDB, tenant B on a SQLite file, both synced and active."""
    setup_mysql()
    llm_server.reset()
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_model = 'fixture-model'")
    su.execute("SELECT dbrag.set_llm_api_key(%s, global => true)", (KEY,))
    with tenants.conn(tenants.a_role) as a:
        aid = a.execute("SELECT dbrag.create_connection('my', 'mysql', %s)", (mysql_uri(),)).fetchone()[0]
        a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (aid,))
        a.execute("SELECT dbrag.activate_connection(%s)", (aid,))
    tenant_files(tenants.b)
    with tenants.conn(tenants.b_role) as b:
        bid = b.execute("SELECT dbrag.create_connection('lite', 'sqlite', 'shop.db')").fetchone()[0]
        b.execute("SELECT * FROM dbrag.sync_catalog(%s)", (bid,))
        b.execute("SELECT dbrag.activate_connection(%s)", (bid,))
    yield tenants, llm_server
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_url")
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_model")
    su.execute("SELECT dbrag.set_llm_api_key(NULL, global => true)")


def history(conn):
    return conn.execute("SELECT question, status, generated_sql, error, row_count "
                        "FROM control_plane.query_history ORDER BY created_at").fetchall()


def prompt_of(request):
    return "\n".join(m["content"] for m in request["body"]["messages"])


REVENUE = ("SELECT c.name, SUM(o.total) AS revenue FROM customers c JOIN orders o ON o.customer_id = c.id "
           "GROUP BY c.name ORDER BY revenue DESC")


# ask() end to end on each engine: tests/test_engine_contract.py.


# ask() refusing each engine's constructs: tests/test_engine_contract.py.


def test_ask_retries_with_the_engines_error(engines):
    tenants, model = engines
    model.script(sql_answer("SELECT nickname FROM customers"), sql_answer("SELECT name FROM customers ORDER BY id"),
                 sql_answer("SELEC name FROM customers"), sql_answer("SELECT name FROM customers ORDER BY id"))
    with tenants.conn(tenants.a_role) as a:
        rows = [r[0]["name"] for r in a.execute("SELECT * FROM dbrag.ask('customer nicknames')")]
        assert rows == ["Ada Lovelace", "Bo Diddley", "Cy Twombly"]
    retry = prompt_of(model.requests()[-1])
    assert "nickname" in retry and "Unknown column" in retry
    with tenants.conn(tenants.b_role) as b:
        rows = [r[0]["name"] for r in b.execute("SELECT * FROM dbrag.ask('customer names please')")]
        assert rows == ["Ada Lovelace", "Bo Diddley", "Cy Twombly"]
    assert "SQLite syntax error" in prompt_of(model.requests()[-1])


def test_ask_history_stays_with_its_tenant(engines):
    tenants, model = engines
    model.script(sql_answer("SELECT count(*) AS n FROM customers"), sql_answer("SELECT count(*) AS n FROM orders"))
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        assert a.execute("SELECT * FROM dbrag.ask('how many customers, secretly A')").fetchone()[0] == {"n": 3}
        assert b.execute("SELECT * FROM dbrag.ask('how many orders, secretly B')").fetchone()[0] == {"n": 3}
        assert [h[0] for h in history(a)] == ["how many customers, secretly A"]
        assert [h[0] for h in history(b)] == ["how many orders, secretly B"]


@pytest.mark.parametrize("who", ["a", "b"])
def test_verified_queries_on_mysql_and_sqlite(engines, who):
    # docs/llm-and-guard.md, "Verified queries and feedback": the engine's
    # dialect guard checks the statement when saved; the same question is
    # then answered on the engine without a model call.
    tenants, model = engines
    role = tenants.a_role if who == "a" else tenants.b_role
    with tenants.conn(role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.add_verified_query('wipe', 'DELETE FROM customers')")
        assert e.value.sqlstate == "42601"
        c.execute("SELECT dbrag.add_verified_query('Revenue per customer?', %s)", (REVENUE,))
        calls = len(model.requests())
        rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask('revenue per customer')")]
        assert rows == [{"name": "Ada Lovelace", "revenue": 270.5}, {"name": "Bo Diddley", "revenue": 99.99}]
        assert len(model.requests()) == calls
        assert [h[1] for h in history(c)] == ["verified"]
