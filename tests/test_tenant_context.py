"""Tenant context (docs/isolation.md): how a tenant comes into force, and every way a
client might try to forge it. All as non-superuser login roles over TCP."""

import time
import uuid

import psycopg
import pytest

from conftest import JWT_SECRET, connect, make_token, token_for

CURRENT = "SELECT dbrag.current_tenant_id()"


def current(conn):
    return conn.execute(CURRENT).fetchone()[0]


def audit_events(su, since_id, event):
    return su.execute(
        "SELECT tenant_id, login_role, detail FROM control_plane.audit_log "
        "WHERE audit_id > %s AND event = %s ORDER BY audit_id", (since_id, event)).fetchall()


def last_audit_id(su):
    return su.execute("SELECT coalesce(max(audit_id), 0) FROM control_plane.audit_log").fetchone()[0]


def test_member_role_is_scoped_from_first_statement(tenants):
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        assert current(a) == tenants.a
        assert current(b) == tenants.b


def test_stranger_has_no_tenant(tenants):
    with tenants.conn(tenants.stranger) as c:
        assert current(c) is None
        assert c.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] == 0


def test_token_sets_tenant_and_is_audited(su, tenants):
    before = last_audit_id(su)
    with tenants.conn(tenants.stranger) as c:
        got = c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.b),)).fetchone()[0]
        assert got == tenants.b
        assert current(c) == tenants.b
        c.execute("SELECT dbrag.reset_tenant()")
        assert current(c) is None
    rows = audit_events(su, before, "tenant_switch")
    assert [r[0] for r in rows] == [tenants.b]
    assert rows[0][1] == tenants.stranger


@pytest.mark.parametrize("case", ["other_secret", "expired", "alg_none", "alg_none_signed",
                                  "tampered_payload", "not_yet_valid", "garbage", "empty", "huge",
                                  "hs384_header", "uuid_string"])
def test_bad_tokens_are_refused_with_28000_and_audited(su, tenants, case):
    now = int(time.time())
    good = token_for(tenants.a)
    tokens = {
        "other_secret": make_token({"tenant_id": str(tenants.b), "exp": now + 60}, secret="not-the-secret"),
        "expired": make_token({"tenant_id": str(tenants.b), "exp": now - 5}),
        "alg_none": make_token({"tenant_id": str(tenants.b), "exp": now + 60},
                               header={"alg": "none", "typ": "JWT"}, sign=False),
        "alg_none_signed": make_token({"tenant_id": str(tenants.b), "exp": now + 60},
                                      header={"alg": "none"}),
        "tampered_payload": ".".join([good.split(".")[0],
                                      make_token({"tenant_id": str(tenants.b), "exp": now + 60}).split(".")[1],
                                      good.split(".")[2]]),
        "not_yet_valid": make_token({"tenant_id": str(tenants.b), "exp": now + 600, "nbf": now + 300}),
        "garbage": "not a token at all",
        "empty": "",
        "huge": "a" * 1_000_000,
        "hs384_header": make_token({"tenant_id": str(tenants.b), "exp": now + 60},
                                   header={"alg": "HS384", "typ": "JWT"}),
        "uuid_string": str(tenants.b),
    }
    before = last_audit_id(su)
    with tenants.conn(tenants.a_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.set_tenant(%s::text)", (tokens[case],))
        assert e.value.sqlstate == "28000", e.value
        # The refused call changed nothing: still the membership tenant.
        assert current(c) == tenants.a
    rows = audit_events(su, before, "token_refused")
    assert len(rows) == 1
    assert rows[0][1] == tenants.a_role
    assert "reason" in rows[0][2]


def test_null_token_and_null_uuid_are_argument_errors(tenants):
    with tenants.conn(tenants.app_role) as c:
        for sql in ("SELECT dbrag.set_tenant(NULL::text)", "SELECT dbrag.set_tenant(NULL::uuid)"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql)
            assert e.value.sqlstate == "22004"


def test_set_tenant_by_uuid_needs_dbrag_app(su, tenants):
    before = last_audit_id(su)
    with tenants.conn(tenants.a_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert e.value.sqlstate == "42501"
        assert current(c) == tenants.a
    assert len(audit_events(su, before, "tenant_switch_refused")) == 1
    with tenants.conn(tenants.app_role) as c:
        assert current(c) is None
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        assert current(c) == tenants.b


def test_unknown_tenant_is_refused(tenants):
    with tenants.conn(tenants.app_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.set_tenant(%s::uuid)", (uuid.uuid4(),))
        assert e.value.sqlstate == "42704"
        assert current(c) is None


def test_set_guc_directly_is_refused(tenants):
    with tenants.conn(tenants.a_role) as c:
        for sql in (f"SET dbrag.tenant_id = '{tenants.b}'",
                    f"SET LOCAL dbrag.tenant_id = '{tenants.b}'",
                    f"SELECT set_config('dbrag.tenant_id', '{tenants.b}', false)",
                    f"SELECT set_config('dbrag.tenant_id', '{tenants.b}', true)",
                    "RESET dbrag.tenant_id",
                    f"ALTER ROLE {tenants.a_role} SET dbrag.tenant_id = '{tenants.b}'"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql)
            assert e.value.sqlstate == "42501", sql
        assert current(c) == tenants.a


def test_app_current_tenant_id_is_ignored_by_default(tenants):
    with tenants.conn(tenants.a_role) as c:
        c.execute(f"SET app.current_tenant_id = '{tenants.b}'")
        assert current(c) == tenants.a
        # The documented spoof of the compatibility mode does nothing here.
        n = c.execute(
            "WITH s AS MATERIALIZED (SELECT set_config('app.current_tenant_id', %s, true)) "
            "SELECT count(*) FROM control_plane.tenants, s WHERE tenant_id = %s",
            (str(tenants.b), tenants.b)).fetchone()[0]
        assert n == 0


def test_function_set_clause_cannot_carry_tenant(su, tenants):
    schema = f"scratch_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}")
    su.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {tenants.a_role}")
    with tenants.conn(tenants.a_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute(f"CREATE FUNCTION {schema}.f() RETURNS uuid LANGUAGE sql "
                      f"SET dbrag.tenant_id = '{tenants.b}' AS 'SELECT dbrag.current_tenant_id()'")
        assert e.value.sqlstate == "42501"


def test_pgoptions_cannot_carry_tenant(tenants):
    # With the library preloaded the server refuses the startup option outright.
    for role in (tenants.a_role, tenants.stranger):
        with pytest.raises(psycopg.OperationalError) as e:
            tenants.conn(role, options=f"-c dbrag.tenant_id={tenants.b}")
        assert "permission denied" in str(e.value)


def test_reset_all_and_discard_all_clear_session_tenant(tenants):
    with tenants.conn(tenants.app_role) as c:
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
        c.execute("RESET ALL")
        assert current(c) is None
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
        c.execute("DISCARD ALL")
        assert current(c) is None


def test_local_tenant_ends_at_commit(tenants):
    with tenants.conn(tenants.app_role) as c:
        with c.transaction():
            c.execute("SELECT dbrag.set_tenant(%s::uuid, is_local => true)", (tenants.a,))
            assert current(c) == tenants.a
        assert current(c) is None
        with c.transaction():
            c.execute("SELECT dbrag.set_tenant(%s, is_local => true)", (token_for(tenants.b),))
            assert current(c) == tenants.b
        assert current(c) is None


def test_aborted_transaction_does_not_keep_tenant(tenants):
    with tenants.conn(tenants.app_role) as c:
        with pytest.raises(psycopg.errors.RaiseException):
            with c.transaction():
                c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
                c.execute("DO $$BEGIN RAISE EXCEPTION 'boom'; END$$")
        assert current(c) is None


def test_set_role_does_not_change_membership(su, tenants):
    # alice may SET ROLE bob (say, a shared group), yet stays tenant A.
    su.execute(f"GRANT {tenants.b_role} TO {tenants.a_role}")
    with tenants.conn(tenants.a_role) as c:
        c.execute(f"SET ROLE {tenants.b_role}")
        assert current(c) == tenants.a
        assert c.execute("SELECT count(*) FROM control_plane.tenants WHERE tenant_id = %s",
                         (tenants.b,)).fetchone()[0] == 0


def test_suspended_tenant_context_is_refused(su, tenants):
    with tenants.conn(tenants.a_role) as c:
        assert current(c) == tenants.a
        su.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (tenants.a,))
        # Existing sessions lose the tenant at their next transaction.
        assert current(c) is None
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),))
        assert e.value.sqlstate == "42501"
        su.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (tenants.a,))
        assert current(c) == tenants.a


def test_tenant_admin_requires_dbrag_admin(tenants):
    with tenants.conn(tenants.a_role) as c:
        for sql, args in (("SELECT dbrag.create_tenant('x')", ()),
                          ("SELECT dbrag.set_tenant_status(%s, 'suspended')", (tenants.b,)),
                          ("SELECT dbrag.add_tenant_member(%s, %s)", (tenants.b, tenants.a_role)),
                          ("SELECT dbrag.issue_token(%s)", (tenants.b,))):
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql, args)
            assert e.value.sqlstate == "42501", sql
    with tenants.conn(tenants.admin_role) as c:
        new = c.execute("SELECT dbrag.create_tenant(%s, 'Org', 'x@example.org')",
                        (f"c_{tenants.tag}",)).fetchone()[0]
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.create_tenant(%s)", (f"c_{tenants.tag}",))
        assert e.value.sqlstate == "23505"
        for bad in ("", "   ", None):
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT dbrag.create_tenant(%s)", (bad,))
            assert e.value.sqlstate == "22023"
        token = c.execute("SELECT dbrag.issue_token(%s, 60)", (new,)).fetchone()[0]
    with tenants.conn(tenants.stranger) as c:
        assert c.execute("SELECT dbrag.set_tenant(%s)", (token,)).fetchone()[0] == new


def test_issue_token_for_unknown_tenant_is_42704(su, tenants):
    # It once signed first and then failed the audit row's foreign key (23503).
    unknown = uuid.uuid4()
    since = last_audit_id(su)
    with tenants.conn(tenants.admin_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.issue_token(%s, 60)", (unknown,))
        assert e.value.sqlstate == "42704"
        assert str(unknown) in e.value.diag.message_primary
    assert audit_events(su, since, "token_issued") == []


def test_superuser_members_are_refused(su, tenants):
    su.execute(f"CREATE ROLE bypass_{tenants.tag} LOGIN BYPASSRLS")
    with pytest.raises(psycopg.Error) as e:
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (tenants.a, f"bypass_{tenants.tag}"))
    assert e.value.sqlstate == "22023"


def test_secrets_are_hidden_from_non_superusers(tenants):
    with tenants.conn(tenants.app_role) as c:
        for name in ("dbrag.jwt_secret", "dbrag.master_key"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(f"SELECT current_setting('{name}')")
            assert e.value.sqlstate == "42501"
        shown = c.execute("SELECT string_agg(setting, ',') FROM pg_settings WHERE name LIKE 'dbrag.%'").fetchone()[0] or ""
        assert JWT_SECRET not in shown
        all_rows = c.execute("SHOW ALL").fetchall()
        assert not any(JWT_SECRET in (r[1] or "") for r in all_rows)
