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


# ------------------------------------------------------------------ acting as the tenant
# The callers pg_dbrag works for a tenant on behalf of: the application
# server (dbrag_app), an operator (dbrag_admin) and a superuser. Whoever
# calls, the work runs as the tenant's own role in a security-restricted
# operation, so code the tenant planted can do nothing A could not do itself.
CALLERS = ("app_role", "admin_role", "superuser")


def caller_conn(t, who):
    """A connection of `who` with tenant A in force."""
    from conftest import connect
    c = connect() if who == "superuser" else t.conn(getattr(t, who))
    c.execute("SELECT dbrag.set_tenant(%s::uuid)", (t.a,))
    return c


def peek_function(schema, t, sb):
    """A function of tenant A that tries everything a privileged caller could
    do for it: switch to B, issue a token for B, read the server's secrets,
    read every tenant's name and B's rows. Returns what it got."""
    return f"""CREATE FUNCTION {schema}.peek() RETURNS text LANGUAGE plpgsql AS $$
        DECLARE out text := '';
        BEGIN
            BEGIN PERFORM dbrag.set_tenant('{t.b}'::uuid); out := out || 'SWITCHED;';
            EXCEPTION WHEN others THEN out := out || 'no-switch;'; END;
            BEGIN out := out || 'token=' || dbrag.issue_token('{t.b}'::uuid) || ';';
            EXCEPTION WHEN others THEN out := out || 'no-token;'; END;
            BEGIN out := out || 'jwt=' || pg_catalog.current_setting('dbrag.jwt_secret') || ';';
            EXCEPTION WHEN others THEN out := out || 'no-jwt;'; END;
            BEGIN out := out || 'key=' || pg_catalog.current_setting('dbrag.master_key') || ';';
            EXCEPTION WHEN others THEN out := out || 'no-key;'; END;
            BEGIN out := out || 'tenants=' || coalesce((SELECT string_agg(name, ',') FROM control_plane.tenants), '') || ';';
            EXCEPTION WHEN others THEN out := out || 'no-tenants;'; END;
            BEGIN out := out || 'b=' || coalesce((SELECT string_agg(name, ',') FROM {sb}.singer), '') || ';';
            EXCEPTION WHEN others THEN out := out || 'no-b;'; END;
            RETURN out;
        END $$"""


def forbidden_strings(t):
    """What must never reach tenant A: B's rows and name, a token, the
    server's secrets, proof of a switch."""
    import os
    from conftest import JWT_SECRET
    out = [B_SECRET, t.b_name, "eyJ", JWT_SECRET, "SWITCHED"]
    key = os.environ.get("DBRAG_TEST_MASTER_KEY")
    if key:
        out.append(key)
    return out


def assert_nothing_of_b(su, t, *texts, since=None):
    """B's rows and secrets appear nowhere: not in `texts` (answers, errors),
    A's catalog, A's history, or the audit trail written since `since`."""
    bad = forbidden_strings(t)
    found = [str(x) for x in texts]
    found += [str(r) for r in su.execute(
        "SELECT sample_values::text, column_descriptions::text, table_description "
        "FROM control_plane.table_metadata_catalog WHERE tenant_id = %s", (t.a,))]
    found += [str(r) for r in su.execute(
        "SELECT question, generated_sql, error FROM control_plane.query_history WHERE tenant_id = %s", (t.a,))]
    if since is not None:
        found += [str(r) for r in su.execute(
            "SELECT event, detail::text FROM control_plane.audit_log WHERE created_at >= %s", (since,))]
    import re
    # Whole words: B's name "b_<tag>" is also the tail of the schema "xb_<tag>".
    patterns = [re.compile(r"(?<![A-Za-z0-9_])" + re.escape(b) + r"(?![A-Za-z0-9_])") if b == t.b_name
                else re.compile(re.escape(b)) for b in bad]
    for text in found:
        for b, p in zip(bad, patterns):
            assert not p.search(text), f"{b!r} leaked into {text[:300]!r}"


def now(su):
    return su.execute("SELECT clock_timestamp()").fetchone()[0]
