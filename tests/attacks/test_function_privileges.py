"""Function privileges and role attributes (docs/function-privileges.md):
every function of the extension has the EXECUTE grantees its table says,
internal functions refuse tenants, the application server and strangers
with 42501 and bogus arguments with a clean error, and a tenant member can
never make itself the application server or an operator (CREATEROLE)."""

import os
import re
import uuid

import psycopg
import pytest

from attack_kit import refused

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "function-privileges.md")

# Every function of the extension, as PostgreSQL spells its signature with
# search_path = pg_catalog, with its EXECUTE grantees besides the owner.
CATALOG = """
SELECT p.oid::regprocedure::text AS signature, p.provolatile::text, p.prorettype::regtype::text,
       COALESCE((SELECT array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                                  ORDER BY 1)
                 FROM aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) a
                 WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner), '{}') AS grantees
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_dbrag'
ORDER BY 1
"""


def norm(signature):
    return re.sub(r"\s*,\s*", ",", signature.strip())


def documented():
    """{signature: set of grantees} from the doc's table ('owner' = none)."""
    table = {}
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|", line)
            if not m:
                continue
            grantees = {g.strip() for g in m.group(2).split(",")} - {"owner"}
            assert norm(m.group(1)) not in table, f"listed twice: {m.group(1)}"
            table[norm(m.group(1))] = grantees
    return table


def installed(conn):
    conn.execute("SET search_path = pg_catalog")
    try:
        return {norm(sig): (vol, ret, set(grantees)) for sig, vol, ret, grantees in conn.execute(CATALOG)}
    finally:
        conn.execute("RESET search_path")


def call_sql(signature, value=lambda t: f"NULL::{t}"):
    """SELECT name(arg, ...) for a signature, each argument from `value`."""
    name, args = re.match(r"^([^(]+)\((.*)\)$", signature).groups()
    types = [t for t in args.split(",") if t]
    return f"SELECT {name}({', '.join(value(t) for t in types)})"


def test_every_function_has_the_documented_grantees(su):
    doc = documented()
    cat = installed(su)
    assert len(doc) > 50, "the doc's table did not parse"
    missing = sorted(set(cat) - set(doc))
    assert not missing, f"functions without a row in docs/function-privileges.md: {missing}"
    stale = sorted(set(doc) - set(cat))
    assert not stale, f"rows for functions that do not exist: {stale}"
    wrong = {sig: (sorted(cat[sig][2]), sorted(doc[sig])) for sig in cat if cat[sig][2] != doc[sig]}
    assert not wrong, f"EXECUTE grantees (installed, documented) differ: {wrong}"


def test_internal_functions_are_not_executable_by_public(su):
    """Independently of the doc: no trigger function and no volatile
    `_`-function is executable by PUBLIC, save the audited entry point."""
    allowed = {"dbrag._isolation_guarded(text,oid,text,boolean)"}
    offenders = []
    for sig, (vol, ret, grantees) in installed(su).items():
        name = sig.split("(")[0].split(".")[1]
        internal = name.startswith("_") or ret in ("trigger", "event_trigger")
        if internal and "PUBLIC" in grantees and (vol == "v" or ret in ("trigger", "event_trigger")):
            offenders.append(sig)
    assert sorted(offenders) == sorted(allowed)
    # The three the issue named, in particular.
    cat = installed(su)
    for sig in ("dbrag._invalidate_tenant_cache(oid)", "dbrag._enable_tenant_isolation(regclass,name,boolean)",
                "dbrag._disable_tenant_isolation(regclass)"):
        assert "PUBLIC" not in cat[sig][2], sig


def test_non_public_functions_refuse_other_roles(su, tenants):
    """Every function the doc does not grant to PUBLIC refuses a tenant, a
    stranger, the application server (unless granted) and the operator
    (unless granted) with 42501, whatever the arguments."""
    doc = documented()
    checked = 0
    callers = [(tenants.a_role, set()), (tenants.stranger, set()),
               (tenants.app_role, {"dbrag_app"}), (tenants.admin_role, {"dbrag_admin"})]
    trigger_fns = {sig for sig, (_, ret, _) in installed(su).items() if ret in ("trigger", "event_trigger")}
    for role, has in callers:
        with tenants.conn(role) as c:
            for sig, grantees in sorted(doc.items()):
                if "PUBLIC" in grantees or grantees & has or sig in trigger_fns:
                    continue
                # Values, not NULLs: the planner folds a STRICT call on a NULL
                # constant away without running (or checking) it.
                e = refused(c, call_sql(sig, lambda t: f"{BOGUS.get(t, 'NULL')}::{t}"))
                assert e.sqlstate == "42501", (role, sig, e)
                checked += 1
    assert checked > 40


def test_trigger_functions_cannot_be_called(tenants):
    with tenants.conn(tenants.a_role) as a:
        for fn in ("control_plane.invalidate_tenant_cache()", "control_plane.touch_updated_at()",
                   "dbrag._auto_isolate()"):
            refused(a, f"SELECT {fn}")


def test_the_functions_the_issue_named_refuse_direct_calls(su, tenants):
    """A tenant that owns a table cannot skip enable_tenant_isolation's checks
    and audit row by calling its body, and cannot flood invalidations."""
    schema = f"own_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {tenants.a_role}")
    with tenants.conn(tenants.a_role) as a:
        a.execute(f"CREATE TABLE {schema}.t (tenant_id uuid NOT NULL, x int) PARTITION BY LIST (x)")
        a.execute(f"CREATE TABLE {schema}.t1 PARTITION OF {schema}.t FOR VALUES IN (1)")
        for sql in (f"SELECT dbrag._enable_tenant_isolation('{schema}.t', 'tenant_id', false)",
                    f"SELECT dbrag._disable_tenant_isolation('{schema}.t')",
                    "SELECT dbrag._invalidate_tenant_cache(0)",
                    "SELECT dbrag._invalidate_tenant_cache('control_plane.tenants'::regclass)"):
            assert refused(a, sql).sqlstate == "42501", sql
        # The public way still works for the table's owner, partitions included, and is audited.
        before = su.execute("SELECT count(*) FROM control_plane.audit_log "
                            "WHERE event = 'isolation_enabled' AND login_role = %s", (tenants.a_role,)).fetchone()[0]
        a.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.t",))
        a.execute("SELECT dbrag.disable_tenant_isolation(%s)", (f"{schema}.t",))
        a.execute("SELECT dbrag.enable_tenant_isolation(%s)", (f"{schema}.t",))
    for rel in ("t", "t1"):
        assert su.execute("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
                          (f"{schema}.{rel}",)).fetchone()[0], rel
        assert su.execute("SELECT count(*) FROM pg_policy WHERE polrelid = %s::regclass",
                          (f"{schema}.{rel}",)).fetchone()[0] == 4, rel
    after = su.execute("SELECT count(*) FROM control_plane.audit_log "
                       "WHERE event = 'isolation_enabled' AND login_role = %s", (tenants.a_role,)).fetchone()[0]
    assert after == before + 2
    # B cannot isolate (or un-isolate) A's table through the public path either.
    with tenants.conn(tenants.b_role) as b:
        assert refused(b, "SELECT dbrag.disable_tenant_isolation(%s)", (f"{schema}.t",)).sqlstate == "42501"


BOGUS = {
    "oid": "0", "regclass": "0", "regrole": "0", "uuid": f"'{uuid.UUID(int=0)}'", "text": "'x'",
    "name": "'x'", "boolean": "false", "integer": "0", "bigint": "0", "jsonb": "'{}'",
    "oid[]": "'{0}'", "text[]": "'{x}'", "bytea": "'\\x00'",
}


def test_bogus_arguments_give_clean_errors(su):
    """Called by a superuser (no privilege check) with oid 0, zero uuids,
    NULLs: an error with a fitting SQLSTATE or a result, never XX000."""
    named = {
        "SELECT dbrag._invalidate_tenant_cache(0)": "22023",
        "SELECT dbrag._invalidate_tenant_cache('pg_catalog.pg_class'::regclass)": "22023",
        "SELECT dbrag._enable_tenant_isolation(0, 'tenant_id', false)": "42809",
        "SELECT dbrag._disable_tenant_isolation(0)": "42809",
        "SELECT dbrag._tenant_policies(0, 'tenant_id', false)": "42809",
        "SELECT dbrag._isolation_guarded('enable', 0, 'tenant_id', false)": "42809",
        "SELECT dbrag._isolation_guarded('disable', 0, NULL, NULL)": "42809",
        "SELECT dbrag._isolation_guarded('enable', NULL, 'tenant_id', false)": "22004",
        "SELECT dbrag._isolation_guarded('enable', 'pg_catalog.pg_class'::regclass, '', false)": "22004",
        "SELECT dbrag._isolation_guarded('drop', 0, NULL, NULL)": "22023",
    }
    for sql, state in named.items():
        su.execute("BEGIN")
        try:
            assert refused(su, sql).sqlstate == state, sql
        finally:
            su.execute("ROLLBACK")
    trigger_fns = {sig for sig, (_, ret, _) in installed(su).items() if ret in ("trigger", "event_trigger")}
    for sig in sorted(installed(su)):
        if sig in trigger_fns or not sig.split("(")[0].split(".")[1].startswith("_") or "_llm_complete" in sig:
            continue
        for value in (lambda t: f"NULL::{t}", lambda t: f"{BOGUS.get(t, 'NULL')}::{t}"):
            sql = call_sql(sig, value)
            su.execute("BEGIN")
            try:
                su.execute(sql)
            except psycopg.Error as e:
                assert e.sqlstate != "XX000", f"{sql}: {e}"
            finally:
                su.execute("ROLLBACK")
    assert su.execute("SELECT 1").fetchone()[0] == 1


# ---------------------------------------------------------------- CREATEROLE


def make_login(su, name, attrs=""):
    su.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'tenant-pw-1' NOSUPERUSER NOBYPASSRLS {attrs}")


def test_add_tenant_member_refuses_roles_that_can_pick_any_tenant(su, tenants):
    t = tenants.tag
    make_login(su, f"cr_{t}", "CREATEROLE")
    make_login(su, f"appish_{t}")
    make_login(su, f"opsish_{t}")
    su.execute(f"CREATE ROLE chain_{t} NOLOGIN")
    su.execute(f"GRANT dbrag_app TO chain_{t}")
    su.execute(f"GRANT chain_{t} TO appish_{t}")
    su.execute(f"GRANT dbrag_admin TO opsish_{t}")
    with tenants.conn(tenants.admin_role) as ops:
        for role in (f"cr_{t}", f"appish_{t}", f"opsish_{t}"):
            e = refused(ops, "SELECT dbrag.add_tenant_member(%s, %s)", (tenants.a, role))
            assert e.sqlstate == "22023", (role, e)
        e = refused(ops, "SELECT dbrag.add_tenant_member(%s, 0::oid::regrole)", (tenants.a,))
        assert e.sqlstate == "42704"
        assert "CREATEROLE" in str(refused(ops, "SELECT dbrag.add_tenant_member(%s, %s)", (tenants.a, f"cr_{t}")))
    assert su.execute("SELECT count(*) FROM control_plane.tenant_members WHERE member::text LIKE %s",
                      (f"%_{t}",)).fetchone()[0] == 2  # A's and B's own roles only


@pytest.mark.parametrize("grab", ["dbrag_app", "dbrag_admin"])
def test_member_given_createrole_later_cannot_pick_a_tenant_and_is_reported(su, tenants, grab):
    t = tenants.tag
    mallory = f"mallory_{t}"
    make_login(su, mallory)
    su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (tenants.a, mallory))
    # Someone grants the attribute afterwards; the member grants itself the key.
    su.execute(f"ALTER ROLE {mallory} CREATEROLE")
    try:
        with tenants.conn(mallory) as m:
            assert m.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.a
            m.execute(f"GRANT {grab} TO {mallory}")
        before = su.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'tenant_switch_refused' "
                            "AND login_role = %s", (mallory,)).fetchone()[0]
        with tenants.conn(mallory) as m:
            e = refused(m, "SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,))
            assert e.sqlstate == "42501" and "CREATEROLE" in str(e)
            assert m.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.a
            if grab == "dbrag_admin":
                # Nor through a token it signs for itself.
                e = refused(m, "SELECT dbrag.issue_token(%s::uuid)", (tenants.b,))
                assert e.sqlstate == "42501" and "CREATEROLE" in str(e)
            if grab == "dbrag_app":
                # Nothing of B's reachable: B's rows stay invisible.
                assert m.execute("SELECT count(*) FROM control_plane.tenants WHERE tenant_id = %s",
                                 (tenants.b,)).fetchone()[0] == 0
        after = su.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'tenant_switch_refused' "
                           "AND login_role = %s", (mallory,)).fetchone()[0]
        assert after == before + 1

        # The operator's report names both problems, with fixes that run as they stand.
        with tenants.conn(tenants.admin_role) as ops:
            rows = [r for r in ops.execute("SELECT severity, object, finding, fix FROM dbrag.isolation_report()")
                    if r[1] == f"role {mallory}"]
        findings = {r[3]: r for r in rows}
        assert f"ALTER ROLE {mallory} NOCREATEROLE;" in findings, rows
        assert f"REVOKE {grab} FROM {mallory};" in findings, rows
        assert all(r[0] == "critical" for r in rows)
        assert any("CREATEROLE" in r[2] for r in rows) and any(grab in r[2] for r in rows)
        for fix in findings:
            su.execute(fix)
        with tenants.conn(tenants.admin_role) as ops:
            assert [r for r in ops.execute("SELECT object FROM dbrag.isolation_report()")
                    if r[0] == f"role {mallory}"] == []
    finally:
        su.execute(f"ALTER ROLE {mallory} NOCREATEROLE")
        su.execute(f"REVOKE {grab} FROM {mallory}")
        su.execute("SELECT dbrag.remove_tenant_member(%s, %s)", (tenants.a, mallory))


def test_application_server_still_picks_tenants(tenants):
    """The check costs the application server nothing it needs."""
    with tenants.conn(tenants.app_role) as app:
        assert app.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.b,)).fetchone()[0] == tenants.b
        assert app.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.b
