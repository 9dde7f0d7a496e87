"""Acting as the tenant, class 5: the tenant's own role and the schema
roles. Each tenant gets a NOLOGIN role when it is created, granted to
exactly its active members; the owner of a tenant schema is granted to
nobody (not to members, not to dbrag_admin), so nothing a member did while
it belonged survives its removal. The extension's functions that change the
tenant in force, issue tokens or reveal secrets refuse inside any
security-restricted operation."""

import psycopg
import pytest

from conftest import ROLE_PASSWORD, token_for


def raises(conn, sql, state, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    assert e.value.sqlstate == state, e.value
    return e.value


def members(su, role):
    return {r[0] for r in su.execute(
        "SELECT m.member::regrole::text FROM pg_auth_members m WHERE m.roleid = %s::regrole", (role,))}


def test_every_tenant_gets_a_plain_role_that_follows_its_members(su, tenants):
    t = tenants
    assert t.a_trole == su.execute("SELECT dbrag.tenant_role_name(%s)", (t.a,)).fetchone()[0]
    attrs = su.execute("SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication "
                       "FROM pg_roles WHERE rolname = %s", (t.a_trole,)).fetchone()
    assert attrs == (False,) * 6
    assert members(su, t.a_trole) == {t.a_role}
    assert members(su, t.b_trole) == {t.b_role}
    late = f"dave_{t.tag}"
    su.execute(f"CREATE ROLE {late} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    try:
        with t.conn(t.admin_role) as ops:
            ops.execute("SELECT dbrag.add_tenant_member(%s, %s)", (t.a, late))
            assert members(su, t.a_trole) == {t.a_role, late}
            ops.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (t.a,))
            assert members(su, t.a_trole) == set()
            ops.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (t.a,))
            assert members(su, t.a_trole) == {t.a_role, late}
            ops.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (t.a, late))
            assert members(su, t.a_trole) == {t.a_role}
    finally:
        su.execute(f"DROP ROLE {late}")
    # A tenant that goes takes its role along.
    gone = su.execute("SELECT dbrag.create_tenant(%s)", (f"gone_{t.tag}",)).fetchone()[0]
    role = su.execute("SELECT tenant_role FROM control_plane.tenants WHERE tenant_id = %s", (gone,)).fetchone()[0]
    assert su.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 1
    su.execute("DELETE FROM control_plane.tenants WHERE tenant_id = %s", (gone,))
    assert su.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0


def test_a_role_of_that_name_made_by_someone_else_is_not_taken_over(su, tenants):
    import uuid
    tid = uuid.uuid4()
    name = su.execute("SELECT dbrag.tenant_role_name(%s)", (tid,)).fetchone()[0]
    su.execute(f"CREATE ROLE {name} NOLOGIN")
    try:
        raises(su, "INSERT INTO control_plane.tenants (tenant_id, name) VALUES (%s, %s)", "42710",
               (tid, f"squat_{tenants.tag}"))
    finally:
        su.execute(f"DROP ROLE {name}")


def test_the_tenant_role_is_not_callable_for_anything_by_tenants(tenants):
    with tenants.conn(tenants.a_role) as a:
        raises(a, "SELECT dbrag._sync_tenant_role(%s)", "42501", (tenants.b,))
        raises(a, "SELECT dbrag._drop_tenant_role(%s)", "42501", (tenants.b_trole,))
        # The member may act as its tenant's role, never as B's.
        a.execute(f"SET ROLE {tenants.a_trole}")
        a.execute("RESET ROLE")
        raises(a, f"SET ROLE {tenants.b_trole}", "42501")


@pytest.fixture
def tenant_schema(su, tenants):
    with tenants.conn(tenants.admin_role) as ops:
        s = ops.execute("SELECT dbrag.create_tenant_schema(%s)", (tenants.a,)).fetchone()[0]
    yield s
    with tenants.conn(tenants.admin_role) as ops:
        ops.execute("SELECT dbrag.drop_tenant_schema(%s, cascade => true)", (tenants.a,))


def test_removed_member_keeps_nothing_of_the_tenant_schema(su, tenants, tenant_schema):
    t, s = tenants, tenant_schema
    owner = su.execute("SELECT dbrag._tenant_role_name(%s)", (t.a,)).fetchone()[0]
    # Nobody can become the schema's owner: not members, not operators.
    assert members(su, owner) == set()
    assert not su.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (t.admin_role, owner)).fetchone()[0]
    late = f"mallory_{t.tag}"
    su.execute(f"CREATE ROLE {late} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    try:
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (t.a, late))
        with t.conn(late) as m:
            raises(m, f"SET ROLE {owner}", "42501")
            m.execute(f"CREATE TABLE {s}.stash (x text)")
            m.execute(f"INSERT INTO {s}.stash VALUES ('kept')")
            m.execute(f"GRANT SELECT ON {s}.stash TO PUBLIC")
            # Grants on the schema itself need its owner.
            try:
                m.execute(f"GRANT USAGE ON SCHEMA {s} TO {late}")
            except psycopg.Error:
                pass
        su.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (t.a, late))
        assert not su.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (late, s)).fetchone()[0]
        with t.conn(late) as m:
            raises(m, f"SELECT * FROM {s}.stash", "42501")
            raises(m, f"CREATE TABLE {s}.again (x int)", "42501")
    finally:
        su.execute(f"DROP OWNED BY {late}")
        su.execute(f"DROP ROLE {late}")


def test_functions_that_switch_sign_or_decrypt_refuse_inside_a_restricted_operation(su, tenants):
    # REFRESH MATERIALIZED VIEW runs its query as a security-restricted
    # operation, as pg_dbrag does for a tenant's code.
    t = tenants
    s = f"sro_{t.tag}"
    su.execute(f"CREATE SCHEMA {s}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {s} TO {t.app_role}, {t.admin_role}")
    try:
        calls = {
            "set_tenant_uuid": (t.app_role, f"dbrag.set_tenant('{t.b}'::uuid)::text"),
            "set_tenant_token": (t.app_role, f"dbrag.set_tenant('{token_for(t.b)}')::text"),
            "reset_tenant": (t.app_role, "dbrag.reset_tenant()::text"),
            "issue_token": (t.admin_role, f"dbrag.issue_token('{t.b}'::uuid)"),
            "decrypt": (t.app_role, "dbrag.decrypt(dbrag.encrypt('x', 'c'), 'c')"),
        }
        for name, (role, expr) in calls.items():
            with t.conn(role) as c:
                c.execute(f"CREATE MATERIALIZED VIEW {s}.{name} AS SELECT {expr} AS v WITH NO DATA")
                e = raises(c, f"REFRESH MATERIALIZED VIEW {s}.{name}", "42501")
                assert "security-restricted operation" in str(e), e
                assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] is None
    finally:
        su.execute(f"DROP SCHEMA {s} CASCADE")


def test_superuser_relaxations_never_apply_when_acting_for_a_tenant(su, tenants):
    # A superuser may test a socket connection for itself (the dblink rule);
    # acting for tenant A it gets A's rules.
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
    try:
        e = raises(su, "SELECT * FROM dbrag.test_connection('postgres', 'host=/var/run/postgresql user=postgres dbname=postgres')",
                   "42501")
        assert "connection refused" in str(e)
        raises(su, "SELECT dbrag.create_connection('sock', 'postgres', 'host=/tmp user=postgres dbname=postgres')",
               "42501")
    finally:
        su.execute("SELECT dbrag.reset_tenant()")


def test_a_tenant_role_given_more_rights_is_not_acted_as(su, tenants):
    # Granted dbrag_app (which could pick any tenant) or CREATEROLE, the
    # tenant's role would lend its code more than a tenant's rights:
    # pg_dbrag refuses to act as it (55000) until that is undone.
    t = tenants
    for grant, undo in ((f"GRANT dbrag_app TO {t.a_trole}", f"REVOKE dbrag_app FROM {t.a_trole}"),
                        (f"ALTER ROLE {t.a_trole} CREATEROLE", f"ALTER ROLE {t.a_trole} NOCREATEROLE")):
        su.execute(grant)
        try:
            with t.conn(t.a_role) as a:
                e = raises(a, "SELECT * FROM dbrag.test_connection('local', NULL, 'public')", "55000")
                assert "may not have" in str(e)
        finally:
            su.execute(undo)
    with t.conn(t.a_role) as a:
        a.execute("SELECT * FROM dbrag.test_connection('local', NULL, 'public')").fetchall()
