"""Shared pieces of the attack suite (tests/attacks/): a tenant pair with
local data planes and the fake model, and small assertion helpers. Import
the fixtures into a test module by name, as with llm_fixture."""

import psycopg
import pytest

from conftest import DBNAME
from llm_fixture import llm_server  # noqa: F401  (fixture, re-exported)
from test_catalog import make_local_connection

# A value only tenant B holds; no attack may ever show it to A.
B_SECRET = "b-private-7f3a-ruby-falcon"


def refused(conn, sql, args=None):
    """Run `sql`, expect an ERROR, return it. A Rust panic (XX000) is never
    a refusal: it fails the attack."""
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    assert e.value.sqlstate != "XX000", f"internal error, not a refusal: {e.value}"
    return e.value


def sql_answer(sql):
    """What a model answers: prose around a fenced statement."""
    return {"content": f"Sure.\n```sql\n{sql}\n```\n"}


def still_works(conn):
    assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42


class Plane:
    def __init__(self, tenants, sa, sb, model):
        self.t, self.sa, self.sb, self.model = tenants, sa, sb, model


@pytest.fixture
def plane(su, tenants, llm_server):
    """Tenants A and B, each with an active local connection (schemas sa, sb
    with singer tables; B's singers include B_SECRET), synced catalogs and
    the fake model configured for the database."""
    llm_server.reset()
    sa, sb = f"xa_{tenants.tag}", f"xb_{tenants.tag}"
    make_local_connection(su, tenants.a, tenants.a_role, sa)
    make_local_connection(su, tenants.b, tenants.b_role, sb)
    su.execute(f"INSERT INTO {sb}.singer VALUES (3, %s, 'Atlantis', 40)", (B_SECRET,))
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_model = 'fixture-model'")
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        b.execute("SELECT * FROM dbrag.sync_catalog()")
        b.execute("SELECT dbrag.add_example(%s, 'SELECT name FROM singer')", (f"which singer is {B_SECRET}",))
    yield Plane(tenants, sa, sb, llm_server)
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_url")
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_model")
    for role in (tenants.a_role, tenants.b_role, tenants.app_role, tenants.admin_role):
        su.execute(f"ALTER ROLE {role} RESET ALL")


def history(conn):
    return conn.execute("SELECT status, generated_sql, error FROM control_plane.query_history "
                        "ORDER BY created_at").fetchall()
