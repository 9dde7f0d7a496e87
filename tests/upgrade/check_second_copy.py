"""One dump restored twice into the same cluster (scripts/upgrade_test.sh):
DBRAG_UPGRADE_DB under the dumped database's own name, DBRAG_COPY_DB as a
second copy. Roles are shared by the whole cluster and tenant ids repeat in
the copy, so tenant schema roles are named per database
(dbrag._tenant_role_name): whatever an operator does to a tenant in one
database never grants, revokes or drops a role the other uses, and
dbrag.adopt_tenant_schema gives the copy roles of its own. Tenants' login
roles over TCP, as in the rest of the suite."""

import os
import uuid

import psycopg
import pytest

from common import ALICE, BOB, OPS, ROLE_PASSWORD, STATE, connect, login, read_json, su

ORIGINAL = os.environ.get("DBRAG_UPGRADE_DB", "dbrag_upgrade")
COPY = os.environ["DBRAG_COPY_DB"]
STATE_DATA = read_json(STATE)
A, SCHEMA_A = STATE_DATA["a"], STATE_DATA["schema_a"]


def err(conn, sql, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


def recorded_role(db):
    with su(db) as s:
        return s.execute("SELECT settings->>'tenant_schema_role' FROM control_plane.tenants WHERE tenant_id = %s",
                         (A,)).fetchone()[0]


def reads_plans(role, db):
    with login(role, db) as c:
        try:
            return c.execute(f"SELECT plan FROM {SCHEMA_A}.private_plans").fetchall() == [("a plan",)]
        except psycopg.Error as e:
            assert e.sqlstate == "42501", e
            return False


@pytest.fixture(scope="module")
def newcomer():
    """A login role that only the COPY's operator makes a member of A."""
    name = f"up_mallory_{uuid.uuid4().hex[:6]}"
    with connect(dbname="postgres") as c:
        c.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
    return name


def test_the_restored_original_names_its_own_roles():
    """Restored under its own name, the database's recorded roles are the
    ones pg_dumpall recreated: its members keep their schema."""
    with su(ORIGINAL) as s:
        assert recorded_role(ORIGINAL) == s.execute("SELECT dbrag._tenant_role_name(%s)::text", (A,)).fetchone()[0]
    assert reads_plans(ALICE, ORIGINAL) and not reads_plans(BOB, ORIGINAL)


def test_the_copy_does_not_act_on_the_originals_roles(newcomer):
    with su(COPY) as s:
        own = s.execute("SELECT dbrag._tenant_role_name(%s)::text", (A,)).fetchone()[0]
    assert recorded_role(COPY) != own  # recorded under the original's name
    with login(OPS, COPY) as ops:
        ops.execute("SELECT dbrag.add_tenant_member(%s, %s)", (A, newcomer))
        ops.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (A, ALICE))
        ops.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (A,))
        ops.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (A,))
        # Neither dropping nor re-creating the schema touches the original's role.
        assert err(ops, "SELECT dbrag.drop_tenant_schema(%s, true)", (A,)).sqlstate == "22023"
        e = err(ops, "SELECT dbrag.create_tenant_schema(%s)", (A,))
        assert e.sqlstate == "42710" and "adopt_tenant_schema" in (e.diag.message_hint or "")
    # The newcomer reaches nothing of the original; alice keeps her schema there.
    assert not reads_plans(newcomer, ORIGINAL)
    with login(newcomer, ORIGINAL) as c:
        assert c.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] == 0
    assert reads_plans(ALICE, ORIGINAL)


def members_of(conn, role):
    return {r[0] for r in conn.execute(
        "SELECT pg_get_userbyid(member) FROM pg_auth_members WHERE roleid = %s::regrole", (role,))}


def test_adopt_gives_the_copy_roles_of_its_own(newcomer):
    original_role = recorded_role(ORIGINAL)
    for role in (ALICE, BOB):  # operators only
        with login(role, COPY) as c:
            assert err(c, "SELECT dbrag.adopt_tenant_schema(%s)", (A,)).sqlstate == "42501"
    # Grants to the recorded role, in both databases: the copy's move to its
    # own role, the original's stay.
    for db in (ORIGINAL, COPY):
        with su(db) as s:
            s.execute(f"GRANT SELECT ON shop_a.customers TO {original_role}")
            s.execute(f"GRANT SELECT (total) ON shop_a.orders TO {original_role}")
            s.execute(f"GRANT USAGE ON SCHEMA shop_a TO {original_role}")
    with login(OPS, COPY) as ops:
        role = ops.execute("SELECT dbrag.adopt_tenant_schema(%s)", (A,)).fetchone()[0]
        assert ops.execute("SELECT dbrag._tenant_role_name(%s)::text", (A,)).fetchone()[0] == role
        # Idempotent.
        assert ops.execute("SELECT dbrag.adopt_tenant_schema(%s)", (A,)).fetchone()[0] == role
    assert role != original_role and recorded_role(COPY) == role
    with su(COPY) as s:
        assert s.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'tenant_schema_adopted' "
                         "AND tenant_id = %s", (A,)).fetchone()[0] == 2
        owner = s.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
                          (SCHEMA_A,)).fetchone()[0]
        assert owner == role
        # The original's role keeps no privilege in the copy; the new one has them.
        assert not s.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (original_role, SCHEMA_A)).fetchone()[0]
        checks = ("SELECT has_table_privilege(%(r)s, 'shop_a.customers', 'SELECT'), "
                  "has_column_privilege(%(r)s, 'shop_a.orders', 'total', 'SELECT'), "
                  "has_column_privilege(%(r)s, 'shop_a.orders', 'customer_id', 'SELECT'), "
                  "has_schema_privilege(%(r)s, 'shop_a', 'USAGE')")
        assert s.execute(checks, {"r": role}).fetchone() == (True, True, False, True)
        assert s.execute(checks, {"r": original_role}).fetchone() == (False, False, False, False)
        # The schema's owner is granted to nobody; members come through the
        # tenant's role, this database's own.
        assert not members_of(s, role)
        trole = s.execute("SELECT dbrag.tenant_role_name(%s)::text", (A,)).fetchone()[0]
        members = members_of(s, trole)
        assert newcomer in members and ALICE not in members  # alice was removed in the copy
    with su(ORIGINAL) as s:
        assert s.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
                         (SCHEMA_A,)).fetchone()[0] == original_role
        assert not members_of(s, original_role)
        trole = s.execute("SELECT dbrag.tenant_role_name(%s)::text", (A,)).fetchone()[0]
        members = members_of(s, trole)
        assert ALICE in members and newcomer not in members
        assert s.execute(checks, {"r": original_role}).fetchone() == (True, True, False, True)
    assert reads_plans(ALICE, ORIGINAL) and not reads_plans(newcomer, ORIGINAL)
    # Now the copy can drop its tenant schema without touching the original.
    with login(OPS, COPY) as ops:
        ops.execute("SELECT dbrag.drop_tenant_schema(%s, true)", (A,))
    assert reads_plans(ALICE, ORIGINAL)


def test_a_copy_with_its_own_jwt_secret_refuses_the_originals_tokens():
    """Tenant ids repeat in a copy: a token signed for the original is good in
    the copy too unless the copy has its own secret (docs/operations.md)."""
    import time

    from conftest import make_token, token_for
    with connect(dbname="postgres") as c:
        c.execute(f"ALTER DATABASE {COPY} SET dbrag.jwt_secret = 'copy-secret-0123456789abcdef0123'")
    try:
        with login(OPS, COPY) as c:
            c.execute("SELECT dbrag.set_tenant(%s)", (make_token({"tenant_id": A, "iat": int(time.time()), "exp": int(time.time()) + 600},
                                                                   secret="copy-secret-0123456789abcdef0123"),))
            assert err(c, "SELECT dbrag.set_tenant(%s)", (token_for(A),)).sqlstate == "28000"
        with login(OPS, ORIGINAL) as c:
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(A),))
    finally:
        with connect(dbname="postgres") as c:
            c.execute(f"ALTER DATABASE {COPY} RESET dbrag.jwt_secret")
