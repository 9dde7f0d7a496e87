"""Attacks through the other data-plane engines (SQLite files, MySQL): a
tenant reaching for another tenant's file or server through a connection
or through what the model writes. Refused with 42501 (or 42601 for a
statement that is not one read-only SELECT); nothing of B's comes back."""

import os

import pytest

from attack_kit import refused, sql_answer
from llm_fixture import llm_server  # noqa: F401  (fixture)
from test_ask_engines import engines  # noqa: F401  (fixture)
from test_sqlite import sqlite_dir, tenant_files  # noqa: F401  (fixture)


def test_sqlite_file_of_the_other_tenant(tenants, sqlite_dir):
    b_home = tenant_files(tenants.b)
    tenant_files(tenants.a)
    b_file = os.path.join(b_home, "shop.db")
    with tenants.conn(tenants.a_role) as a:
        for path in (f"../{tenants.b}/shop.db", b_file, f"sub/../../{tenants.b}/shop.db",
                     f"./../{tenants.b}/./shop.db", b_file.replace("/", "//")):
            for sql in ("SELECT * FROM dbrag.test_connection('sqlite', %s)",
                        "SELECT dbrag.create_connection('steal', 'sqlite', %s)"):
                assert refused(a, sql, (path,)).sqlstate == "42501", path
        for path in (f"file:../{tenants.b}/shop.db", f"file:{b_file}?mode=ro"):
            assert refused(a, "SELECT * FROM dbrag.test_connection('sqlite', %s)", (path,)).sqlstate in ("22023", "42501")
        assert a.execute("SELECT count(*) FROM dbrag.connections").fetchone()[0] == 0


@pytest.mark.parametrize("answer,state", [
    ("ATTACH DATABASE '{a_file}' AS a", "42601"),
    ("SELECT * FROM customers; ATTACH DATABASE '{a_file}' AS a", "42601"),
    ("SELECT * FROM pragma_database_list", "42501"),
    ("SELECT readfile('{a_file}')", "42501"),
    ("SELECT * FROM sqlite_master", "42501"),
])
def test_model_reaches_for_the_other_tenants_sqlite_file(engines, answer, state):
    # B's data plane is a SQLite file; its compromised model reaches for A's.
    tenants, model = engines
    a_file = os.path.join(tenant_files(tenants.a), "shop.db")
    model.script(sql_answer(answer.format(a_file=a_file)), sql_answer(answer.format(a_file=a_file)))
    with tenants.conn(tenants.b_role) as b:
        e = refused(b, "SELECT * FROM dbrag.ask('show the other shop')")
        assert e.sqlstate == state, e
        assert b.execute("SELECT 1").fetchone()[0] == 1
