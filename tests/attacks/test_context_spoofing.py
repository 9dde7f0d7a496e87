"""Attacks on the tenant context itself (docs/isolation.md, SECURITY.md): every way a client
might put another tenant in force without the right to it. Each must end in
an ERROR with its SQLSTATE, or leave the attacker's own tenant in force."""

import psycopg
import pytest

from attack_kit import B_SECRET, refused
from conftest import ROLE_PASSWORD, connect, token_for

CURRENT = "SELECT dbrag.current_tenant_id()"


def current(conn):
    return conn.execute(CURRENT).fetchone()[0]


def b_rows(conn, tenants):
    return conn.execute("SELECT count(*) FROM control_plane.tenants WHERE tenant_id = %s",
                        (tenants.b,)).fetchone()[0]


@pytest.fixture
def planted(tenants):
    with tenants.conn(tenants.b_role) as b:
        b.execute("INSERT INTO control_plane.training_examples (question, sql) VALUES (%s, 'SELECT 1')",
                  (B_SECRET,))
    return tenants


def b_secret_visible(conn):
    rows = conn.execute("SELECT question FROM control_plane.training_examples").fetchall()
    return any(r[0] == B_SECRET for r in rows)


def test_set_and_set_local_of_the_tenant_setting(planted):
    tenants = planted
    with tenants.conn(tenants.a_role) as a:
        for sql in (f"SET dbrag.tenant_id = '{tenants.b}'", f"SET SESSION dbrag.tenant_id TO '{tenants.b}'"):
            assert refused(a, sql).sqlstate == "42501", sql
        with pytest.raises(psycopg.Error) as e:
            with a.transaction():
                a.execute(f"SET LOCAL dbrag.tenant_id = '{tenants.b}'")
        assert e.value.sqlstate == "42501"
        assert current(a) == tenants.a and not b_secret_visible(a)


def test_set_config_inside_a_materialized_cte(planted):
    # The spoof that works in trust_guc_tenant mode (docs/isolation.md), aimed at the real setting.
    tenants = planted
    with tenants.conn(tenants.a_role) as a:
        e = refused(a, "WITH s AS MATERIALIZED (SELECT set_config('dbrag.tenant_id', %s, true)) "
                       "SELECT question FROM control_plane.training_examples, s", (str(tenants.b),))
        assert e.sqlstate == "42501"
        assert current(a) == tenants.a


def test_app_current_tenant_id_spoof_is_ignored_in_the_default_mode(planted):
    tenants = planted
    with tenants.conn(tenants.a_role) as a:
        a.execute("SELECT set_config('app.current_tenant_id', %s, false)", (str(tenants.b),))
        rows = a.execute("WITH s AS MATERIALIZED (SELECT set_config('app.current_tenant_id', %s, true)) "
                         "SELECT question FROM control_plane.training_examples, s", (str(tenants.b),)).fetchall()
        assert B_SECRET not in [r[0] for r in rows]
        assert current(a) == tenants.a and b_rows(a, tenants) == 0


def test_reset_of_the_tenant_setting_by_a_client(tenants):
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        assert refused(app, "RESET dbrag.tenant_id").sqlstate == "42501"
        assert current(app) == tenants.a


def test_discard_all_between_pooled_clients_leaves_no_tenant(planted):
    # What PgBouncer sends between two clients of one server connection.
    tenants = planted
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert b_secret_visible(app)
        app.execute("DISCARD ALL")
        assert current(app) is None and not b_secret_visible(app)
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        app.execute("RESET ALL")
        assert current(app) is None and not b_secret_visible(app)


def test_function_set_clause_and_alter_role_set(su, planted):
    tenants = planted
    schema = f"spoof_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {tenants.a_role}")
    with tenants.conn(tenants.a_role) as a:
        e = refused(a, f"CREATE FUNCTION {schema}.f() RETURNS uuid LANGUAGE sql "
                       f"SET dbrag.tenant_id = '{tenants.b}' AS 'SELECT dbrag.current_tenant_id()'")
        assert e.sqlstate == "42501"
        e = refused(a, f"ALTER ROLE {tenants.a_role} SET dbrag.tenant_id = '{tenants.b}'")
        assert e.sqlstate == "42501"
        e = refused(a, f"ALTER ROLE {tenants.a_role} IN DATABASE dbrag_test SET dbrag.tenant_id = '{tenants.b}'")
        assert e.sqlstate == "42501"
    with tenants.conn(tenants.a_role) as a:
        assert current(a) == tenants.a and not b_secret_visible(a)


def test_startup_packet_options(planted):
    tenants = planted
    for option in (f"-c dbrag.tenant_id={tenants.b}", f"-c app.current_tenant_id={tenants.b} -c dbrag.trust_guc_tenant=on"):
        with pytest.raises(psycopg.OperationalError) as e:
            tenants.conn(tenants.a_role, options=option)
        assert "permission denied" in str(e.value)
    # The compatibility setting alone is harmless: it is not trusted.
    with tenants.conn(tenants.a_role, options=f"-c app.current_tenant_id={tenants.b}") as a:
        assert current(a) == tenants.a and not b_secret_visible(a)


def test_set_role_to_a_member_of_the_other_tenant(su, planted):
    tenants = planted
    su.execute(f"GRANT {tenants.b_role} TO {tenants.a_role}")
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"SET ROLE {tenants.b_role}")
        # Membership follows the login role (session_user), not SET ROLE.
        assert current(a) == tenants.a and not b_secret_visible(a)
        a.execute("RESET ROLE")
        a.execute(f"SET SESSION AUTHORIZATION DEFAULT")
        assert current(a) == tenants.a


def test_set_session_authorization_by_a_tenant(planted):
    tenants = planted
    with tenants.conn(tenants.a_role) as a:
        e = refused(a, f"SET SESSION AUTHORIZATION {tenants.b_role}")
        assert e.sqlstate == "42501"
        assert current(a) == tenants.a and not b_secret_visible(a)


def test_session_authorization_switch_does_not_keep_a_cached_tenant(su, planted):
    # A pooler connected as a superuser hands its session to alice, then to bob:
    # the cached resolution must follow session_user, never stay with alice's.
    tenants = planted
    with connect() as pool:
        pool.execute(f"SET SESSION AUTHORIZATION {tenants.a_role}")
        assert current(pool) == tenants.a and not b_secret_visible(pool)
        pool.execute(f"SET SESSION AUTHORIZATION {tenants.b_role}")
        assert current(pool) == tenants.b and b_secret_visible(pool)
        pool.execute(f"SET SESSION AUTHORIZATION {tenants.a_role}")
        assert current(pool) == tenants.a and not b_secret_visible(pool)


def test_set_tenant_by_uuid_through_an_app_role_after_set_role(su, planted):
    # The app server drops to a tenant's role: the uuid form needs dbrag_app
    # in the role actually in effect.
    tenants = planted
    su.execute(f"GRANT {tenants.a_role} TO {tenants.app_role}")
    with tenants.conn(tenants.app_role) as app:
        app.execute(f"SET ROLE {tenants.a_role}")
        e = refused(app, "SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert e.sqlstate == "42501"
        assert not b_secret_visible(app)


def test_removed_member_loses_the_tenant_in_an_open_session(su, tenants):
    with tenants.conn(tenants.a_role) as a:
        assert current(a) == tenants.a
        su.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (tenants.a, tenants.a_role))
        # The next statement sees the change: no stale cached membership.
        assert current(a) is None
        assert a.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] == 0


def test_member_of_two_tenants_gets_neither_by_default(su, planted):
    tenants = planted
    su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (tenants.b, tenants.a_role))
    with tenants.conn(tenants.a_role) as a:
        assert current(a) is None and not b_secret_visible(a)
        # A token still chooses one of them explicitly.
        a.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        assert current(a) == tenants.a and not b_secret_visible(a)


def test_suspended_tenant_drops_out_of_open_sessions(su, planted):
    tenants = planted
    with tenants.conn(tenants.app_role) as app, tenants.conn(tenants.b_role) as b:
        app.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.b),))
        assert b_secret_visible(app) and b_secret_visible(b)
        su.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (tenants.b,))
        try:
            assert current(app) is None and not b_secret_visible(app)
            assert current(b) is None and not b_secret_visible(b)
        finally:
            su.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (tenants.b,))


def test_login_with_the_other_tenants_role_needs_its_password(planted):
    tenants = planted
    with pytest.raises(psycopg.OperationalError):
        connect(user=tenants.b_role, password=ROLE_PASSWORD + "x")
