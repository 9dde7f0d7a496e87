"""Checks of a database that tests/upgrade/seed.py filled under the previous
release, after ALTER EXTENSION pg_dbrag UPDATE or after pg_dump/pg_restore
(run by scripts/upgrade_test.sh, never by the main suite):

    DBRAG_UPGRADE_DB=<db> DBRAG_UPGRADE_SNAPSHOT=<before.json> \
        [DBRAG_UPGRADE_EXACT=1] DBRAG_EXPECT_VERSION=<x.y.z> \
        python3 -m pytest tests/upgrade/check_upgraded.py

Every row is still there, ciphertexts decrypt, isolation holds for both
tenants as their login roles over TCP, and the key paths (ask with the model
fixture, search_catalog, sync_catalog of every kind) work."""

import os

import psycopg
import pytest

from common import (ALICE, APP, APP_TABLE, B_KEY, BOB, DB, GLOBAL_KEY, SCHEMA_A, SCHEMA_B, STATE, login, read_json,
                    snapshot, su)
from conftest import token_for
from llm_fixture import LlmServer

STATE_DATA = read_json(STATE)
A, B = STATE_DATA["a"], STATE_DATA["b"]
CONNS = STATE_DATA["connections"]


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def test_extension_version():
    want = os.environ.get("DBRAG_EXPECT_VERSION")
    with su() as s:
        got = s.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_dbrag'").fetchone()[0]
    assert want is None or got == want


def test_every_row_is_still_there():
    """Column for column, as the previous release wrote them (this test runs
    first: the later ones add history and audit rows)."""
    before = read_json(os.environ["DBRAG_UPGRADE_SNAPSHOT"])
    exact = os.environ.get("DBRAG_UPGRADE_EXACT") == "1"
    with su() as s:
        after = snapshot(s, {t: v["columns"] for t, v in before.items()})
    problems = []
    for table, was in before.items():
        now = after[table]
        missing = sorted(set(was["rows"]) - set(now["rows"]))
        added = sorted(set(now["rows"]) - set(was["rows"]))
        if missing or (exact and added):
            problems.append(f"{table}: {was['count']} rows before, {now['count']} after; "
                            f"missing {missing[:3]} added {added[:3]}")
    assert not problems, "\n".join(problems)
    assert before["control_plane.tenant_databases"]["count"] == len(CONNS)


def test_operator_moves_data_plane_grants_to_tenant_roles():
    """The documented step after updating from 0.1.0 (README, "Upgrading"):
    0.2.0 acts as the tenant's role, so the grants 0.1.0 asked for on the
    members' login roles are given to the tenants' roles."""
    with su() as s:
        for tenant, schema in ((A, SCHEMA_A), (B, SCHEMA_B)):
            role = s.execute("SELECT tenant_role FROM control_plane.tenants WHERE tenant_id = %s",
                             (tenant,)).fetchone()[0]
            assert role == s.execute("SELECT dbrag.tenant_role_name(%s)", (tenant,)).fetchone()[0]
            s.execute(f'GRANT USAGE ON SCHEMA {schema} TO "{role}"')
            s.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO "{role}"')


def test_ciphertexts_decrypt():
    for role, plain in ((ALICE, "a-secret"), (BOB, "b-secret")):
        with login(role) as c:
            got = [r[0] for r in c.execute(f"SELECT dbrag.decrypt(secret, 'note') FROM {APP_TABLE}")]
            assert got == [plain]
            assert c.execute("SELECT dbrag.llm_api_key_status()").fetchone()[0] == (
                "global" if role == ALICE else "tenant")


@pytest.mark.parametrize("name", sorted(CONNS))
def test_every_connection_still_works(name):
    """The stored conninfo (ciphertext bound to tenant and connection) opens
    and the catalog is unchanged: sync finds nothing new."""
    role = ALICE if name.startswith("a_") else BOB
    with login(role) as c:
        added, changed, removed, unchanged = c.execute(
            "SELECT added, changed, removed, unchanged FROM dbrag.sync_catalog(%s)", (CONNS[name],)).fetchone()
        assert (added, removed) == (0, 0) and unchanged + changed >= 1


def test_isolation_holds_for_both_tenants():
    own = {ALICE: A, BOB: B}
    for role, tenant in own.items():
        other = B if tenant == A else A
        with login(role) as c:
            assert c.execute("SELECT dbrag.current_tenant_id()::text").fetchone()[0] == tenant
            for table in ("control_plane.tenants", "control_plane.tenant_members",
                          "control_plane.table_metadata_catalog", "control_plane.training_examples",
                          "control_plane.query_history", "control_plane.audit_log", APP_TABLE):
                ids = {r[0] for r in c.execute(f"SELECT DISTINCT tenant_id::text FROM {table}")}
                assert ids == {tenant} if table != "control_plane.audit_log" else ids <= {tenant}, (role, table, ids)
            conns = {r[0] for r in c.execute("SELECT connection_id::text FROM dbrag.connections")}
            assert conns == {v for k, v in CONNS.items() if k.startswith("a_" if tenant == A else "b_")}
            assert err(c, "SELECT credentials FROM control_plane.tenant_databases").sqlstate == "42501"
            assert err(c, f"INSERT INTO {APP_TABLE} (tenant_id, body) VALUES (%s, 'x')", (other,)).sqlstate == "42501"
            assert c.execute(f"UPDATE {APP_TABLE} SET body = 'x' WHERE tenant_id = %s", (other,)).rowcount == 0
            assert err(c, "SELECT dbrag.set_tenant(%s::uuid)", (other,)).sqlstate == "42501"
    # The tenant schema: its member reads it, the other tenant does not.
    schema_a = STATE_DATA["schema_a"]
    with login(ALICE) as c:
        assert c.execute(f"SELECT plan FROM {schema_a}.private_plans").fetchall() == [("a plan",)]
    with login(BOB) as c:
        assert err(c, f"SELECT plan FROM {schema_a}.private_plans").sqlstate == "42501"
    # The application server with a token sees exactly the token's tenant.
    with login(APP) as c:
        for tenant in (A, B):
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenant),))
            assert {r[0] for r in c.execute(f"SELECT tenant_id::text FROM {APP_TABLE}")} == {tenant}
        c.execute("SELECT dbrag.reset_tenant()")
        assert c.execute(f"SELECT count(*) FROM {APP_TABLE}").fetchone()[0] == 0


@pytest.fixture(scope="module")
def model():
    server = LlmServer()
    with su() as s:
        s.execute(f"ALTER DATABASE {DB} SET dbrag.llm_url = '{server.url}'")
        s.execute(f"ALTER DATABASE {DB} SET dbrag.llm_model = 'fixture-model'")
    yield server
    server.stop()


def test_key_paths(model):
    """ask() through the model fixture with each tenant's stored API key,
    generate_sql, search_catalog over the synced catalog, a full sync."""
    keys = STATE_DATA["ask_keys"]
    assert keys == {"a": f"Bearer {GLOBAL_KEY}", "b": f"Bearer {B_KEY}"}
    for role, tenant, schema in ((ALICE, "a", "shop_a"), (BOB, "b", "shop_b")):
        with login(role) as c:
            model.script({"content": "```sql\nSELECT name FROM customers ORDER BY id\n```"})
            rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask('names of customers after the update')")]
            assert rows == [{"name": f"{tenant} one"}, {"name": f"{tenant} two"}]
            assert model.requests()[-1]["headers"]["authorization"] == keys[tenant]
            model.script({"content": "```sql\nSELECT count(*) FROM orders\n```"})
            assert c.execute("SELECT dbrag.generate_sql('how many orders')").fetchone()[0] == \
                "SELECT count(*) FROM orders"
            found = c.execute("SELECT schema_name, table_name FROM dbrag.search_catalog('customers who buy')").fetchall()
            assert (schema, "customers") in found and all(s == schema for s, _ in found)
            prompt = "\n".join(m["content"] for m in model.requests()[-1]["body"]["messages"])
            assert ("shop_b" if tenant == "a" else "shop_a") not in prompt
            for added, changed, removed, unchanged in c.execute("SELECT * FROM dbrag.sync_catalog()"):
                assert removed == 0
            statuses = {r[0] for r in c.execute("SELECT status FROM control_plane.query_history")}
            assert "ok" in statuses


@pytest.mark.skipif(os.environ.get("DBRAG_EXPECT_NO_KEY") != "1", reason="only on a restore without the key")
def test_credentials_refuse_without_the_master_key():
    """Restored into a cluster where dbrag.master_key is not configured: the
    rows are there but no secret opens (55000, docs/connections-and-keys.md);
    the check module then runs again once the key is configured."""
    with login(ALICE) as c:
        assert c.execute(f"SELECT count(*) FROM {APP_TABLE}").fetchone()[0] == 1
        e = err(c, f"SELECT dbrag.decrypt(secret, 'note') FROM {APP_TABLE}")
        assert e.sqlstate == "55000" and "master" in str(e).lower(), e
        for name in ("a_postgres", "a_mysql"):
            assert err(c, "SELECT * FROM dbrag.sync_catalog(%s)", (CONNS[name],)).sqlstate == "55000"


def test_tenant_schema_role_is_named_for_this_database():
    """0.1.0's dbrag_t_<hex> was renamed by the update (and kept by a restore
    under the same database name); nobody holds it, and the tenant's members
    reach the schema through the tenant's role."""
    with su() as s:
        recorded, want = s.execute(
            "SELECT settings->>'tenant_schema_role', dbrag._tenant_role_name(tenant_id)::text "
            "FROM control_plane.tenants WHERE tenant_id = %s", (A,)).fetchone()
        assert recorded == want and want.startswith("dbrag_t_") and len(want) == 49
        assert not s.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (ALICE, want)).fetchone()[0]
        assert not s.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (BOB, want)).fetchone()[0]
        assert s.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')",
                         (ALICE, STATE_DATA["schema_a"])).fetchone()[0]
        assert not s.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')",
                             (BOB, STATE_DATA["schema_a"])).fetchone()[0]
        assert s.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
                         (STATE_DATA["schema_a"],)).fetchone()[0] == want
