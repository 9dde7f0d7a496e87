"""Ciphertext swaps (docs/connections-and-keys.md): secrets are bound to their row (tenant and
connection) and to their purpose. Someone who can write the tables (a
superuser here, standing in for a stolen backup restored by an attacker, or
a bug elsewhere) moves B's ciphertext into A's row: it must not open there,
and A's activate, sync and ask fail clearly without ever using B's secret."""

import pytest

from attack_kit import llm_server, plane, refused, sql_answer  # noqa: F401  (fixtures)
from remote_fixture import remote_conninfo, setup_remote

B_KEY = "sk-b-private-key-91d0"


@pytest.fixture
def remote_pair(su, tenants):
    """A and B each with a postgres connection to the remote cluster; B's
    password is the real one, A's a wrong one (A does not know it)."""
    setup_remote()
    with tenants.conn(tenants.b_role) as b:
        bid = b.execute("SELECT dbrag.create_connection('b_remote', 'postgres', %s)",
                        (remote_conninfo(),)).fetchone()[0]
    with tenants.conn(tenants.a_role) as a:
        aid = a.execute("SELECT dbrag.create_connection('a_remote', 'postgres', %s)",
                        (remote_conninfo(password="a-does-not-know-it"),)).fetchone()[0]
        aid2 = a.execute("SELECT dbrag.create_connection('a_remote2', 'postgres', %s)",
                         (remote_conninfo(password="another-wrong-one"),)).fetchone()[0]
    blob = lambda cid: su.execute("SELECT credentials FROM control_plane.tenant_databases WHERE connection_id = %s",
                                  (cid,)).fetchone()[0]
    return tenants, (aid, aid2, bid), blob


def put(su, cid, blob):
    su.execute("UPDATE control_plane.tenant_databases SET credentials = %s WHERE connection_id = %s", (blob, cid))


def test_other_tenants_credentials_in_own_row(su, remote_pair):
    tenants, (aid, _, bid), blob = remote_pair
    put(su, aid, blob(bid))
    with tenants.conn(tenants.a_role) as a:
        for sql in ("SELECT dbrag.activate_connection(%s)", "SELECT * FROM dbrag.sync_catalog(%s)"):
            e = refused(a, sql, (aid,))
            assert e.sqlstate == "22023" and "do not decrypt" in str(e), e
        assert a.execute("SELECT status::text, is_active FROM dbrag.connections WHERE connection_id = %s",
                         (aid,)).fetchone() == ("disconnected", False)
        assert a.execute("SELECT count(*) FROM control_plane.table_metadata_catalog").fetchone()[0] == 0


def test_own_credentials_moved_between_own_connections(su, remote_pair):
    # Bound to the connection id too: one's ciphertext does not open as another's.
    tenants, (aid, aid2, _), blob = remote_pair
    put(su, aid2, blob(aid))
    with tenants.conn(tenants.a_role) as a:
        e = refused(a, "SELECT dbrag.activate_connection(%s)", (aid2,))
        assert e.sqlstate == "22023" and "do not decrypt" in str(e)


def test_tampered_and_relabelled_ciphertext(su, remote_pair):
    tenants, (aid, _, bid), blob = remote_pair
    original = bytes(blob(aid))
    flipped = bytearray(original)
    flipped[-1] ^= 1
    # The key id is authenticated with the rest: renaming it does not help.
    id_len = original[1]
    relabelled = original[:1] + bytes([id_len]) + b"x" * id_len + original[2 + id_len:]
    for bad, state in ((bytes(flipped), "22023"), (original[:20], "22023"), (relabelled, "22023"), (b"", "22023")):
        put(su, aid, bad)
        with tenants.conn(tenants.a_role) as a:
            e = refused(a, "SELECT dbrag.activate_connection(%s)", (aid,))
            assert e.sqlstate == state, e


def test_no_sql_context_opens_a_connection_secret(remote_pair):
    tenants, (_, _, bid), blob = remote_pair
    b_blob = blob(bid)
    with tenants.conn(tenants.a_role) as a:
        for ctx in ("", f"{tenants.b}{bid}", f"connection:{tenants.b}:{bid}",
                    f"dbrag:internal:connection:{tenants.b}:{bid}", f"internal:connection:{tenants.b}:{bid}"):
            assert refused(a, "SELECT dbrag.decrypt(%s, %s)", (b_blob, ctx)).sqlstate == "22023"


def test_other_tenants_model_key_in_own_row(su, plane):
    t, model = plane.t, plane.model
    with t.conn(t.b_role) as b:
        b.execute("SELECT dbrag.set_llm_api_key(%s)", (B_KEY,))
    with t.conn(t.a_role) as a:
        a.execute("SELECT dbrag.set_llm_api_key('sk-a-own')")
    su.execute("UPDATE control_plane.llm_credentials SET api_key = "
               "(SELECT api_key FROM control_plane.llm_credentials WHERE tenant_id = %s) WHERE tenant_id = %s",
               (t.b, t.a))
    model.script(sql_answer("SELECT 1"))
    with t.conn(t.a_role) as a:
        e = refused(a, "SELECT * FROM dbrag.ask('count the singers')")
        assert e.sqlstate == "22023" and B_KEY not in str(e)
    assert not any(B_KEY in str(r.get("headers")) for r in model.requests())


def test_global_model_key_copied_into_a_tenant_row(su, plane):
    # The global key is sealed for the platform, not for a tenant.
    t, model = plane.t, plane.model
    su.execute("SELECT dbrag.set_llm_api_key('sk-global-operator', global => true)")
    try:
        with t.conn(t.a_role) as a:
            a.execute("SELECT dbrag.set_llm_api_key('sk-a-own')")
        su.execute("UPDATE control_plane.llm_credentials SET api_key = "
                   "(SELECT decode(value ->> 'ciphertext', 'base64') FROM control_plane.system_config "
                   " WHERE key = 'llm_api_key') WHERE tenant_id = %s", (t.a,))
        model.script(sql_answer("SELECT 1"))
        with t.conn(t.a_role) as a:
            assert refused(a, "SELECT * FROM dbrag.ask('count the singers')").sqlstate == "22023"
        assert not any("sk-global-operator" in str(r.get("headers")) for r in model.requests())
    finally:
        su.execute("SELECT dbrag.set_llm_api_key(NULL, global => true)")
