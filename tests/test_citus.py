"""pg_dbrag on a live Citus cluster: a coordinator and two workers on
127.0.0.1 that scripts/test.sh started (shared_preload_libraries =
'citus,pg_dbrag', password auth everywhere). The control plane is
distributed with dbrag.distribute_control_plane(), application tables are
isolated and distributed by tenant_id, and every way of putting a tenant in
force is checked on the workers, where row-level security is evaluated:
router queries, multi-shard queries, INSERT ... SELECT and UPDATE across
shards, and clients that connect straight to a worker."""

import os
import re
import threading
import time
import uuid

import psycopg
import pytest

from conftest import HOST, JWT_SECRET, SUPERUSER_PASSWORD, b64url, make_token, token_for

COORD_PORT = os.environ.get("DBRAG_CITUS_PORT")
SKIP_REASON = os.environ.get("DBRAG_CITUS_SKIP", "Citus cluster not started (scripts/test.sh starts it)")
pytestmark = pytest.mark.skipif(not COORD_PORT, reason=SKIP_REASON)

DB = "dbrag_citus"
PW = "citus-role-pw"
ROWS_PER_TENANT = {"a": 300, "b": 500}


def ports():
    base = int(COORD_PORT)
    return base, base + 1, base + 2


def conn(port, user="postgres", password=SUPERUSER_PASSWORD, dbname=DB, **kw):
    return psycopg.connect(host=HOST, port=port, user=user, password=password, dbname=dbname,
                           autocommit=True, **kw)


class Cluster:
    def __init__(self):
        self.coord, self.w1, self.w2 = ports()
        for port in (self.coord, self.w1, self.w2):
            with conn(port, dbname="postgres") as c:
                c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
                c.execute(f"CREATE DATABASE {DB}")
            with conn(port) as c:
                c.execute("CREATE EXTENSION citus")
        su = self.su = conn(self.coord)
        # Citus connects to the nodes as the client's role: each role's
        # password for those connections is kept in pg_dist_authinfo.
        self.authinfo("postgres", SUPERUSER_PASSWORD)
        su.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coord,))
        su.execute("SELECT citus_add_node('127.0.0.1', %s)", (self.w1,))
        su.execute("SELECT citus_add_node('127.0.0.1', %s)", (self.w2,))
        su.execute("CREATE EXTENSION pg_dbrag CASCADE")
        tag = uuid.uuid4().hex[:6]
        self.app, self.alice, self.bob = f"capp_{tag}", f"calice_{tag}", f"cbob_{tag}"
        self.admin = f"cadmin_{tag}"
        for role in (self.app, self.alice, self.bob, self.admin):
            su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PW}' NOSUPERUSER NOBYPASSRLS")
            self.authinfo(role, PW)
        su.execute(f"GRANT dbrag_app TO {self.app}")
        su.execute(f"GRANT dbrag_admin TO {self.admin}")
        # A populated install first: tenants exist before the distribution.
        self.a = su.execute("SELECT dbrag.create_tenant('citus_a')").fetchone()[0]
        self.placements = su.execute("SELECT table_name::text, placement FROM dbrag.distribute_control_plane()").fetchall()
        self.b = su.execute("SELECT dbrag.create_tenant('citus_b')").fetchone()[0]
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (self.a, self.alice))
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (self.b, self.bob))
        su.execute("CREATE SCHEMA app")
        su.execute(f"GRANT USAGE ON SCHEMA app TO {self.app}, {self.alice}, {self.bob}, {self.admin}")
        # Isolate, then distribute ...
        su.execute("CREATE TABLE app.orders (tenant_id uuid NOT NULL, id bigint NOT NULL, amount int NOT NULL, "
                   "PRIMARY KEY (tenant_id, id))")
        su.execute("SELECT dbrag.enable_tenant_isolation('app.orders')")
        su.execute("SELECT create_distributed_table('app.orders', 'tenant_id', "
                   "colocate_with => 'control_plane.tenant_databases')")
        # ... and distribute, then isolate.
        su.execute("CREATE TABLE app.events (tenant_id uuid NOT NULL, id bigint NOT NULL, kind text, "
                   "PRIMARY KEY (tenant_id, id))")
        su.execute("SELECT create_distributed_table('app.events', 'tenant_id', "
                   "colocate_with => 'control_plane.tenant_databases')")
        su.execute("SELECT dbrag.enable_tenant_isolation('app.events')")
        for t in ("app.orders", "app.events"):
            su.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {self.app}, {self.alice}, {self.bob}, "
                       f"{self.admin}")
        for key, tenant in (("a", self.a), ("b", self.b)):
            n = ROWS_PER_TENANT[key]
            su.execute("INSERT INTO app.orders SELECT %s, g, g FROM generate_series(1, %s) g", (tenant, n))
            su.execute("INSERT INTO app.events SELECT %s, g, 'seen' FROM generate_series(1, %s) g", (tenant, n))

    def authinfo(self, role, password):
        # Every node opens connections to the others (a worker runs queries
        # on distributed tables for clients connected to it).
        for port in (self.coord, self.w1, self.w2):
            with conn(port) as c:
                for node in (0, -1):
                    c.execute("INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (%s, %s, %s) "
                              "ON CONFLICT DO NOTHING", (node, role, f"password={password}"))

    def login(self, role, port=None, **kw):
        return conn(port or self.coord, user=role, password=PW, **kw)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.su.close()


def counts(c, table="app.orders"):
    return c.execute(f"SELECT tenant_id, count(*) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()


# ---- the control plane and application tables on the cluster

def test_control_plane_placement(cluster):
    placed = dict(cluster.placements)
    assert placed["control_plane.tenants"] == "reference"
    assert placed["control_plane.tenant_members"] == "reference"
    assert placed["control_plane.tenant_databases"].startswith("distributed")
    for t in ("audit_log", "table_metadata_catalog", "catalog_term_stats", "catalog_doc_stats"):
        assert placed[f"control_plane.{t}"] == "local to the coordinator", t
    for t in ("training_examples", "query_history"):
        assert "co-located" in placed[f"control_plane.{t}"], t
    rows = cluster.su.execute(
        "SELECT logicalrelid::text, colocationid FROM pg_dist_partition "
        "WHERE logicalrelid::text LIKE 'control_plane.%' AND partmethod = 'h'").fetchall()
    assert len({c for _, c in rows}) == 1, rows
    # Running it again changes nothing.
    assert cluster.su.execute("SELECT count(*) FROM dbrag.distribute_control_plane()").fetchone()[0] == 0
    # The tenant created before the distribution is on every node.
    for port in (cluster.w1, cluster.w2):
        with conn(port) as w:
            assert w.execute("SELECT count(*) FROM control_plane.tenants WHERE tenant_id = %s",
                             (cluster.a,)).fetchone()[0] == 1


def test_deleted_tenant_leaves_no_role(cluster):
    # A tenant's role (a LOGIN role on a cluster, with its password in
    # pg_dist_authinfo) goes with the tenant, on every node.
    su = cluster.su
    t = su.execute("SELECT dbrag.create_tenant('citus_gone')").fetchone()[0]
    role = su.execute("SELECT tenant_role FROM control_plane.tenants WHERE tenant_id = %s", (t,)).fetchone()[0]
    su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (t, cluster.alice))
    for port in (cluster.coord, cluster.w1, cluster.w2):
        with conn(port) as c:
            assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 1
    su.execute("DELETE FROM control_plane.tenants WHERE tenant_id = %s", (t,))
    for port in (cluster.coord, cluster.w1, cluster.w2):
        with conn(port) as c:
            assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0, port
            assert c.execute("SELECT count(*) FROM pg_dist_authinfo WHERE rolename = %s",
                             (role,)).fetchone()[0] == 0, port


def authinfo_rows(port, role):
    with conn(port) as c:
        return c.execute("SELECT nodeid, authinfo FROM pg_dist_authinfo WHERE rolename = %s ORDER BY nodeid",
                         (role,)).fetchall()


def test_new_tenants_logins_reach_the_workers(cluster):
    """A tenant's role logs in to the nodes with a password only
    pg_dist_authinfo holds. A worker needs the rows too when it opens
    connections as that role itself. Tenant B was made after the
    distribution: adding its member copied its rows to the workers. A
    tenant made in one transaction with its member has its role on the
    workers only from COMMIT on, so its rows wait for citus_sync_logins()."""
    su = cluster.su
    role_b = su.execute("SELECT dbrag.tenant_role_name(%s)", (cluster.b,)).fetchone()[0]
    want = authinfo_rows(cluster.coord, role_b)
    assert [n for n, _ in want] == [-1, 0] and want[0][1].startswith("password=")
    for port in (cluster.w1, cluster.w2):
        assert authinfo_rows(port, role_b) == want, port
    tag = uuid.uuid4().hex[:6]
    with su.transaction():
        t = su.execute("SELECT dbrag.create_tenant(%s)", (f"citus_tx_{tag}",)).fetchone()[0]
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (t, cluster.bob))
    role = su.execute("SELECT dbrag.tenant_role_name(%s)", (t,)).fetchone()[0]
    try:
        want = authinfo_rows(cluster.coord, role)
        assert len(want) == 2
        for port in (cluster.w1, cluster.w2):
            assert authinfo_rows(port, role) == [], port
        # Only a superuser writes pg_dist_authinfo.
        for login in (cluster.admin, cluster.app, cluster.alice):
            with cluster.login(login) as c:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute("SELECT * FROM dbrag.citus_sync_logins()")
        report = su.execute("SELECT nodeport, success FROM dbrag.citus_sync_logins() ORDER BY 1").fetchall()
        assert report == [(cluster.w1, True), (cluster.w2, True)]
        for port in (cluster.w1, cluster.w2):
            assert authinfo_rows(port, role) == want, port
        # Again: nothing changes.
        su.execute("SELECT * FROM dbrag.citus_sync_logins()")
        for port in (cluster.w1, cluster.w2):
            assert authinfo_rows(port, role) == want, port
        # The commands that carry the passwords are not shown to the client.
        notices = []
        with conn(cluster.coord) as c:
            c.add_notice_handler(lambda d: notices.append(d.message_primary))
            c.execute("SET citus.log_remote_commands = on")
            c.execute("SELECT * FROM dbrag.citus_sync_logins()")
            c.execute("SELECT dbrag.add_tenant_member(%s, %s)", (t, cluster.alice))
        # (Citus did show the other commands it sent: the member's GRANT.)
        assert any(m.startswith("issuing") for m in notices), notices
        secret = want[0][1].removeprefix("password=")
        assert len(secret) >= 32 and not [m for m in notices if secret in m], notices
    finally:
        su.execute("DELETE FROM control_plane.tenants WHERE tenant_id = %s", (t,))
    for port in (cluster.coord, cluster.w1, cluster.w2):
        assert authinfo_rows(port, role) == [], port


def test_distribute_refused_for_non_superusers(cluster):
    with cluster.login(cluster.app) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM dbrag.distribute_control_plane()")


def test_policies_on_every_shard(cluster):
    for table in ("app.orders", "app.events"):
        rows = cluster.su.execute(
            "SELECT result FROM run_command_on_shards(%s, "
            "$$SELECT count(*) FROM pg_policy WHERE polrelid = '%%s'::regclass$$)", (table,)).fetchall()
        assert rows and all(int(r[0]) >= 4 for r in rows), (table, rows)
        forced = cluster.su.execute(
            "SELECT result FROM run_command_on_shards(%s, "
            "$$SELECT relforcerowsecurity FROM pg_class WHERE oid = '%%s'::regclass$$)", (table,)).fetchall()
        assert all(r[0] == "t" for r in forced), (table, forced)


# ---- the tenant in force reaches the workers

def check_only(c, tenant, cluster):
    """Every read path returns only `tenant`'s rows."""
    want = ROWS_PER_TENANT["a" if tenant == cluster.a else "b"]
    other = cluster.b if tenant == cluster.a else cluster.a
    # multi-shard, computed on the workers
    assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == want
    assert c.execute("SELECT count(DISTINCT tenant_id) FROM app.events").fetchone()[0] == 1
    # router query on the tenant's own key, and on the other tenant's key
    assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s AND id <= 10", (tenant,)).fetchone()[0] == 10
    assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s", (other,)).fetchone()[0] == 0
    # a co-located join
    assert c.execute("SELECT count(*) FROM app.orders o JOIN app.events e USING (tenant_id, id)").fetchone()[0] == want


def writes_stay_in_tenant(c, tenant, cluster):
    """INSERT ... SELECT and UPDATE across shards touch only the tenant's rows."""
    other = cluster.b if tenant == cluster.a else cluster.a
    c.execute("INSERT INTO app.events (tenant_id, id, kind) SELECT tenant_id, id + 100000, 'copied' FROM app.orders")
    n = c.execute("UPDATE app.orders SET amount = amount + 1 RETURNING tenant_id").fetchall()
    assert n and {r[0] for r in n} == {tenant}
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("INSERT INTO app.orders VALUES (%s, 999999, 1)", (other,))


def test_membership_reaches_workers(cluster):
    with cluster.login(cluster.alice) as c:
        check_only(c, cluster.a, cluster)
        with c.transaction():
            writes_stay_in_tenant(c, cluster.a, cluster)
            raise psycopg.Rollback()
    with cluster.login(cluster.bob) as c:
        check_only(c, cluster.b, cluster)


@pytest.mark.parametrize("how", ["token", "uuid"])
def test_set_tenant_reaches_workers(cluster, how):
    with cluster.login(cluster.app) as c:
        for tenant in (cluster.a, cluster.b):
            with c.transaction():
                arg = token_for(tenant) if how == "token" else tenant
                cast = "" if how == "token" else "::uuid"
                c.execute(f"SELECT dbrag.set_tenant(%s{cast}, true)", (arg,))
                check_only(c, tenant, cluster)
                writes_stay_in_tenant(c, tenant, cluster)
                raise psycopg.Rollback()
        # After the transaction the tenant is gone, on the workers too.
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0


def test_no_tenant_sees_nothing(cluster):
    with cluster.login(cluster.app) as c:
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO app.orders VALUES (%s, 424242, 1)", (cluster.a,))


def autocommit_statements(c, tenant, cluster):
    """Each statement its own transaction (no BEGIN): multi-shard count(*),
    router queries, INSERT ... SELECT and UPDATE across shards see and touch
    only `tenant`'s rows, on the workers. The writes are undone."""
    assert c.autocommit
    want = ROWS_PER_TENANT["a" if tenant == cluster.a else "b"]
    other = cluster.b if tenant == cluster.a else cluster.a
    su = cluster.su
    assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == want
    assert c.execute("SELECT count(DISTINCT tenant_id) FROM app.events").fetchone()[0] == 1
    assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s AND id <= 10", (tenant,)).fetchone()[0] == 10
    assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s", (other,)).fetchone()[0] == 0
    c.execute("INSERT INTO app.events (tenant_id, id, kind) SELECT tenant_id, id + 200000, 'autocommit' FROM app.orders")
    copied = su.execute("SELECT tenant_id, count(*) FROM app.events WHERE kind = 'autocommit' GROUP BY 1").fetchall()
    assert copied == [(tenant, want)], copied
    changed = c.execute("UPDATE app.orders SET amount = amount + 1 RETURNING tenant_id").fetchall()
    assert len(changed) == want and {r[0] for r in changed} == {tenant}
    c.execute("UPDATE app.orders SET amount = amount - 1")
    assert c.execute("DELETE FROM app.events WHERE kind = 'autocommit'").rowcount == want
    assert su.execute("SELECT count(*) FROM app.events WHERE kind = 'autocommit'").fetchone()[0] == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("INSERT INTO app.orders VALUES (%s, 999999, 1)", (other,))


@pytest.mark.parametrize("how", ["member", "token", "uuid", "operator"])
def test_session_level_tenant_reaches_workers_in_autocommit(cluster, how):
    """The tenant set for the session (set_tenant outside a transaction block,
    or a member's login) reaches the workers for every later autocommit
    statement: the coordinator's executor hook opens Citus's remote
    transaction with the signed assertion (docs/scale-out.md §4)."""
    if how == "member":
        for login, tenant in ((cluster.alice, cluster.a), (cluster.bob, cluster.b)):
            with cluster.login(login) as c:
                autocommit_statements(c, tenant, cluster)
        return
    login = cluster.admin if how == "operator" else cluster.app
    with cluster.login(login) as c:
        for tenant in (cluster.a, cluster.b, cluster.a):
            if how == "token":
                c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenant),))
            else:
                c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenant,))
            autocommit_statements(c, tenant, cluster)
            # A transaction block opened after a session-level set_tenant.
            with c.transaction():
                assert {r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM app.orders")} == {tenant}
        # Prepared (extended protocol, generic plans after five runs).
        for _ in range(7):
            assert c.execute("SELECT count(*) FROM app.orders WHERE id > %s", (0,), prepare=True
                             ).fetchone()[0] == ROWS_PER_TENANT["a"]
        c.execute("SELECT dbrag.reset_tenant()")
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("INSERT INTO app.orders VALUES (%s, 424243, 1)", (cluster.a,))


def test_reset_inside_a_transaction_reaches_workers(cluster):
    """reset_tenant (or a switch) in the middle of a transaction is carried to
    the worker connections that transaction already holds."""
    with cluster.login(cluster.app) as c:
        with c.transaction():
            c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (cluster.a,))
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]
            c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (cluster.b,))
            assert {r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM app.orders")} == {cluster.b}
            c.execute("SELECT dbrag.reset_tenant()")
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0


def test_expired_token_stops_reaching_workers(cluster):
    """A session-level tenant from a token reaches the workers until the
    token's exp, then the coordinator refuses with 28000 (a worker would)."""
    with cluster.login(cluster.app) as c:
        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.a, ttl=2),))
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]
        time.sleep(3)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("SELECT count(*) FROM app.orders")
        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.a),))
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]


def test_session_tenants_switching_over_shared_worker_connections(cluster):
    """Six app sessions switch their session-level tenant between autocommit
    statements; Citus keeps its worker connections from one statement to the
    next (as the same role for every session): no statement sees another
    tenant's rows, and none sees its previous tenant's."""
    errors = []

    def run(i):
        try:
            with cluster.login(cluster.app) as c:
                for j in range(30):
                    tenant = cluster.a if (i + j) % 2 else cluster.b
                    if j % 3 == 0:
                        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenant),))
                    else:
                        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenant,))
                    seen = {r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM app.orders")}
                    n = c.execute("SELECT count(*) FROM app.events").fetchone()[0]
                    want = ROWS_PER_TENANT["a" if tenant == cluster.a else "b"]
                    if seen != {tenant} or n != want:
                        errors.append((tenant, seen, n))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_concurrent_tenants_do_not_mix(cluster):
    """Several app sessions switching tenants per transaction over shared
    worker connections: every transaction sees only its tenant."""
    errors = []

    def run(i):
        try:
            with cluster.login(cluster.app) as c:
                for j in range(30):
                    tenant = cluster.a if (i + j) % 2 else cluster.b
                    with c.transaction():
                        c.execute("SELECT dbrag.set_tenant(%s, true)", (token_for(tenant),))
                        seen = {r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM app.orders")}
                        if seen != {tenant}:
                            errors.append((tenant, seen))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


# ---- straight to a worker

def test_login_role_on_a_worker_sees_its_tenant_only(cluster):
    for port in (cluster.w1, cluster.w2):
        with cluster.login(cluster.alice, port=port) as c:
            check_only(c, cluster.a, cluster)


def current_assertion(cluster, role, tenant):
    with cluster.login(role) as c:
        with c.transaction():
            c.execute("SELECT dbrag.set_tenant(%s::uuid, true)" if role == cluster.app
                      else "SELECT dbrag.set_tenant(%s, true)",
                      (tenant if role == cluster.app else token_for(tenant),))
            return c.execute("SELECT current_setting('dbrag.tenant_assertion')").fetchone()[0]


def test_forged_assertion_refused_on_worker(cluster):
    real = current_assertion(cluster, cluster.app, cluster.a)
    assert real.startswith("v1.")
    parts = real.split(".")
    forged = [
        ".".join([parts[0], str(cluster.b)] + parts[2:]),           # another tenant
        ".".join(parts[:2] + ["9999999999"] + parts[3:]),            # a later expiry
        ".".join(parts[:4] + [b64url(b"\0" * 32)]),                  # a made-up signature
        "v1." + str(cluster.b),                                      # junk
    ]
    for value in forged:
        with cluster.login(cluster.app, port=cluster.w1) as c:
            c.execute("SELECT set_config('dbrag.tenant_assertion', %s, false)", (value,))
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                c.execute("SELECT count(*) FROM app.orders")
    # The refusals were audited on the worker that saw them.
    with conn(cluster.w1) as w:
        assert w.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'node_assertion_refused'"
                         ).fetchone()[0] >= len(forged)


def test_assertion_replayed_by_another_role_refused(cluster):
    """The app server's assertion for tenant B, copied by alice (a member of
    A) into her own session on a worker, is refused: it names its role."""
    real = current_assertion(cluster, cluster.app, cluster.b)
    for port in (cluster.coord, cluster.w1):
        with cluster.login(cluster.alice, port=port) as c:
            c.execute("SELECT set_config('dbrag.tenant_assertion', %s, false)", (real,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM app.orders")


def test_assertion_signed_with_another_secret_refused(cluster):
    from dbrag_assertion import sign
    value = sign(b"not-the-cluster-secret", cluster.b, cluster.app)
    with cluster.login(cluster.app, port=cluster.w2) as c:
        c.execute("SELECT set_config('dbrag.tenant_assertion', %s, false)", (value,))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("SELECT count(*) FROM app.orders")


def test_assertion_independently_signed_is_accepted(cluster):
    """The format is what docs/scale-out.md says: a value signed by this test
    with the cluster's secret is honoured for its role and tenant only."""
    from dbrag_assertion import sign
    value = sign(JWT_SECRET.encode(), cluster.b, cluster.app)
    with cluster.login(cluster.app, port=cluster.w2) as c:
        # As the coordinator does it: SET LOCAL, forwarded by Citus to the
        # connections this node opens to the others.
        with c.transaction():
            c.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            c.execute(f"SET LOCAL dbrag.tenant_assertion = '{value}'")
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["b"]
            assert {r[0] for r in c.execute("SELECT DISTINCT tenant_id FROM app.events")} == {cluster.b}
        # The same value for another role is refused.
    with cluster.login(cluster.alice, port=cluster.w2) as c:
        with c.transaction():
            c.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            c.execute(f"SET LOCAL dbrag.tenant_assertion = '{value}'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM app.orders")


@pytest.mark.parametrize("attempt", [
    "SET dbrag.tenant_id = '{b}'",
    "SELECT set_config('dbrag.tenant_id', '{b}', false)",
    "SET app.current_tenant_id = '{b}'",
    "SELECT dbrag.set_tenant('{b}'::uuid)",
])
def test_context_spoofing_on_a_worker(cluster, attempt):
    """The spoofing attacks of tests/attacks/test_context_spoofing.py, against
    a worker: alice (tenant A) never reaches B's rows there."""
    with cluster.login(cluster.alice, port=cluster.w1) as c:
        try:
            c.execute(attempt.format(b=cluster.b))
        except psycopg.Error:
            pass
        assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s", (cluster.b,)).fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] in (0, ROWS_PER_TENANT["a"])


def test_pgoptions_on_a_worker(cluster):
    """A tenant set in the startup packet is refused outright on a worker."""
    with pytest.raises(psycopg.OperationalError, match="permission denied to set parameter"):
        cluster.login(cluster.alice, port=cluster.w1, options=f"-c dbrag.tenant_id={cluster.b}")


# ---- sync_catalog and ask() on the coordinator over distributed tables

from llm_fixture import llm_server  # noqa: E402,F401  (fixture)


def sql_answer(sql):
    return {"content": f"```sql\n{sql}\n```"}


def prepare_nl(cluster, llm_server):
    su = cluster.su
    llm_server.reset()
    su.execute(f"ALTER DATABASE {DB} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DB} SET dbrag.llm_model = 'fixture-model'")
    su.execute("SELECT dbrag.set_llm_api_key('sk-citus-test', global => true)")
    for tenant in (cluster.a, cluster.b):
        # pg_dbrag reads the data plane as the tenant's role.
        role = su.execute("SELECT dbrag.tenant_role_name(%s)", (tenant,)).fetchone()[0]
        su.execute(f'GRANT USAGE ON SCHEMA app TO "{role}"')
        su.execute(f'GRANT SELECT ON app.orders, app.events TO "{role}"')
        su.execute("INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
                   "VALUES (%s, 'app', 'local', 'app', true) ON CONFLICT DO NOTHING", (tenant,))


def check_catalog(cluster, tenant):
    other = cluster.b if tenant == cluster.a else cluster.a
    login = cluster.alice if tenant == cluster.a else cluster.bob
    with cluster.login(login) as c:
        tables = {r[0] for r in c.execute("SELECT table_name FROM control_plane.table_metadata_catalog")}
        assert {"orders", "events"} <= tables
        samples = " ".join(r[0] or "" for r in c.execute(
            "SELECT sample_values::text FROM control_plane.table_metadata_catalog"))
        assert str(other) not in samples


def test_sync_catalog_over_distributed_tables(cluster, llm_server):
    """A tenant's login role, and the application server acting for each
    tenant (set_tenant in the transaction that calls sync_catalog), catalog
    the distributed tables as the tenant's role. Citus refuses to mix roles on
    one shard placement inside a transaction, so the application server calls
    sync_catalog in a transaction of its own (docs/scale-out.md)."""
    prepare_nl(cluster, llm_server)
    with cluster.login(cluster.alice) as c:
        assert c.execute("SELECT added + changed + unchanged FROM dbrag.sync_catalog()").fetchone()[0] >= 2
    check_catalog(cluster, cluster.a)
    with cluster.login(cluster.app) as c:
        with c.transaction():
            c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (cluster.b,))
            assert c.execute("SELECT added + changed + unchanged FROM dbrag.sync_catalog()").fetchone()[0] >= 2
    check_catalog(cluster, cluster.b)


@pytest.mark.parametrize("caller", ["member", "app"])
def test_ask_over_distributed_tables(cluster, llm_server, caller):
    prepare_nl(cluster, llm_server)
    count_sql = "SELECT count(*) AS n, count(DISTINCT tenant_id) AS t FROM orders"
    login = cluster.alice if caller == "member" else cluster.app
    with cluster.login(login) as c:
        with c.transaction():
            if caller == "app":
                c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (cluster.a,))
            llm_server.script(sql_answer(count_sql), sql_answer(count_sql))
            rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask('how many orders?')")]
    assert rows == [{"n": ROWS_PER_TENANT["a"], "t": 1}]


def caller_login(cluster, caller):
    return {"member": cluster.alice, "app": cluster.app, "operator": cluster.admin}[caller]


def tenant_a_for_this_transaction(c, cluster, caller):
    """Tenant A in force for the transaction: the member's login has it
    already; the application server sets it with a token, the operator by
    uuid."""
    if caller == "app":
        c.execute("SELECT dbrag.set_tenant(%s, true)", (token_for(cluster.a),))
    elif caller == "operator":
        c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (cluster.a,))


def shards_named(notices, table):
    """The shards of `table` (e.g. "orders") in Citus's "issuing" notices."""
    return {m for n in notices if n.startswith("issuing")
            for m in re.findall(rf"\b{table}_\d+\b", n)}


@pytest.mark.parametrize("caller", ["member", "app", "operator"])
def test_ask_reads_the_tenants_shard_only(cluster, llm_server, caller):
    """A model's statement has no tenant filter: row security alone keeps
    the rows the tenant's, and Citus cannot prune shards by the policy's
    call, so the statement ran on every shard. While pg_dbrag plans it, the
    call in the row-security quals is the tenant's uuid: one shard, the
    tenant's, the same answer. A plain query of the same login still goes
    to every shard (only ask's own statement is changed)."""
    prepare_trust(cluster, llm_server)
    su = cluster.su
    login = caller_login(cluster, caller)

    def shard_of(table, tenant):
        name = su.execute("SELECT shard_name(%s::regclass, get_shard_id_for_distribution_column(%s, %s))",
                          (table, table, tenant)).fetchone()[0]
        return name.split(".")[-1]

    questions = [
        ("SELECT count(*) AS n, count(DISTINCT tenant_id) AS t FROM orders",
         {"n": ROWS_PER_TENANT["a"], "t": 1}, {"orders"}),
        # A join of two co-located tables and a sublink.
        ("SELECT count(*) AS n FROM orders o JOIN events e ON e.tenant_id = o.tenant_id AND e.id = o.id "
         "WHERE o.id IN (SELECT id FROM orders WHERE amount > 10)",
         {"n": ROWS_PER_TENANT["a"] - 10}, {"orders", "events"}),
    ]
    with cluster.login(login) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SET citus.log_remote_commands = on")
        for i, (sql, want, tables) in enumerate(questions):
            notices.clear()
            with c.transaction():
                tenant_a_for_this_transaction(c, cluster, caller)
                llm_server.script(sql_answer(sql))
                rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask(%s)", (f"{caller}'s question {i}",))]
            assert rows == [want], sql
            for table in tables:
                assert shards_named(notices, table) == {shard_of(f"app.{table}", cluster.a)}, (table, notices)
        if caller == "member":
            # dbrag.citus_shard_pruning (superuser only) off: every shard, the same answer.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SET dbrag.citus_shard_pruning = off")
            su.execute(f"ALTER ROLE {login} SET dbrag.citus_shard_pruning = off")
            try:
                with cluster.login(login) as off:
                    off.add_notice_handler(lambda d: notices.append(d.message_primary))
                    off.execute("SET citus.log_remote_commands = on")
                    notices.clear()
                    llm_server.script(sql_answer(questions[0][0]))
                    assert [r[0] for r in off.execute("SELECT * FROM dbrag.ask('pruning off')")] == [questions[0][1]]
                    assert len(shards_named(notices, "orders")) > 2, notices
            finally:
                su.execute(f"ALTER ROLE {login} RESET dbrag.citus_shard_pruning")
        # The login's own query, not ask's: every shard, as Citus plans it.
        notices.clear()
        with c.transaction():
            tenant_a_for_this_transaction(c, cluster, caller)
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]
        assert len(shards_named(notices, "orders")) > 2, notices


# ---- answers users trust, on the cluster: the value index, verified
# queries, feedback and budgets (control_plane tables distributed by tenant_id)

SHOP_CITIES = {"a": ("Lyon", "Paris"), "b": ("Bordeaux", "Nantes")}


def prepare_trust(cluster, llm_server):
    """Both tenants' connections synced (as their roles, through the
    coordinator) over a distributed table whose text column holds different
    cities per tenant: each tenant's value index may only hold its own."""
    prepare_nl(cluster, llm_server)
    su = cluster.su
    if su.execute("SELECT to_regclass('app.shops')").fetchone()[0] is None:
        su.execute("CREATE TABLE app.shops (tenant_id uuid NOT NULL, id bigint NOT NULL, city text NOT NULL, "
                   "PRIMARY KEY (tenant_id, id))")
        su.execute("SELECT dbrag.enable_tenant_isolation('app.shops')")
        su.execute("SELECT create_distributed_table('app.shops', 'tenant_id', "
                   "colocate_with => 'control_plane.tenant_databases')")
        for key, tenant in (("a", cluster.a), ("b", cluster.b)):
            for i, city in enumerate(SHOP_CITIES[key]):
                su.execute("INSERT INTO app.shops VALUES (%s, %s, %s)", (tenant, i + 1, city))
            role = su.execute("SELECT dbrag.tenant_role_name(%s)", (tenant,)).fetchone()[0]
            su.execute(f'GRANT SELECT ON app.shops TO "{role}"')
    with cluster.login(cluster.alice) as c:
        c.execute("SELECT * FROM dbrag.sync_catalog()")
    with cluster.login(cluster.bob) as c:
        c.execute("SELECT * FROM dbrag.sync_catalog()")


def values_seen(c, question="shops in Lyon Paris Bordeaux Nantes"):
    return {r[0] for r in c.execute("SELECT value FROM dbrag.search_values(%s)", (question,))}


def on_workers(cluster, login, sql):
    """What `login` sees, connected straight to each worker."""
    out = []
    for port in (cluster.w1, cluster.w2):
        with cluster.login(login, port=port) as w:
            out.append(w.execute(sql).fetchall())
    return out


def test_value_index_on_the_cluster(cluster, llm_server):
    prepare_trust(cluster, llm_server)
    su = cluster.su
    # The rows sit in the shards, each tenant's values only from its rows.
    held = {(t, v) for t, v in su.execute(
        "SELECT tenant_id, value FROM control_plane.value_index WHERE table_name = 'shops'")}
    assert held == {(cluster.a, v) for v in SHOP_CITIES["a"]} | {(cluster.b, v) for v in SHOP_CITIES["b"]}
    assert su.execute("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = "
                      "'control_plane.value_index'::regclass AND partmethod = 'h'").fetchone()[0] == 1
    # Member login roles.
    with cluster.login(cluster.alice) as c:
        assert values_seen(c) == set(SHOP_CITIES["a"])
        assert c.execute("SELECT count(*) FROM control_plane.value_index WHERE tenant_id = %s",
                         (cluster.b,)).fetchone()[0] == 0
    with cluster.login(cluster.bob) as c:
        assert values_seen(c) == set(SHOP_CITIES["b"])
    # The app server: a session-level token, then set_tenant(uuid); autocommit.
    with cluster.login(cluster.app) as c:
        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.b),))
        assert values_seen(c) == set(SHOP_CITIES["b"])
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.a,))
        assert values_seen(c) == set(SHOP_CITIES["a"])
        c.execute("SELECT dbrag.reset_tenant()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            values_seen(c)
        assert c.execute("SELECT count(*) FROM control_plane.value_index").fetchone()[0] == 0
    # The operator: refused without a tenant, that tenant's values with one.
    with cluster.login(cluster.admin) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            values_seen(c)
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.b,))
        assert values_seen(c) == set(SHOP_CITIES["b"])
    # Straight to the workers: row security on every shard.
    for login, key, other in ((cluster.alice, "a", cluster.b), (cluster.bob, "b", cluster.a)):
        seen = on_workers(cluster, login, "SELECT DISTINCT value FROM control_plane.value_index "
                                          "WHERE table_name = 'shops'")
        assert all({r[0] for r in rows} == set(SHOP_CITIES[key]) for rows in seen), seen
        assert on_workers(cluster, login, f"SELECT count(*) FROM control_plane.value_index "
                                          f"WHERE tenant_id = '{other}'") == [[(0,)], [(0,)]]


def history_of(c):
    return c.execute("SELECT query_id, status, generated_sql FROM control_plane.query_history "
                     "ORDER BY created_at DESC LIMIT 1").fetchone()


def test_verified_queries_and_feedback_on_the_cluster(cluster, llm_server):
    prepare_trust(cluster, llm_server)
    su = cluster.su
    count_sql = "SELECT count(*) AS n FROM orders"
    question = "How many orders do we have?"
    with cluster.login(cluster.alice) as c:
        vid = c.execute("SELECT dbrag.add_verified_query(%s, %s)", (question, count_sql)).fetchone()[0]
        calls = len(llm_server.requests())
        rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask('how many orders do we have')")]
        assert rows == [{"n": ROWS_PER_TENANT["a"]}]
        assert len(llm_server.requests()) == calls
        hid_a, status, sql = history_of(c)
        assert (status, sql) == ("verified", count_sql)
        c.execute("SELECT dbrag.feedback(%s, false)", (hid_a,))
        c.execute("SELECT dbrag.feedback(%s, true)", (hid_a,))  # the latest judgement wins
    # B asks the same question: A's verified query is not B's; the model answers.
    with cluster.login(cluster.bob) as c:
        assert c.execute("SELECT count(*) FROM dbrag.verified_queries").fetchone()[0] == 0
        llm_server.script(sql_answer(count_sql))
        rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask('how many orders do we have')")]
        assert rows == [{"n": ROWS_PER_TENANT["b"]}]
        hid_b, status, _ = history_of(c)
        assert status == "ok"
        # A's history id is unknown to B, exactly as a made-up one.
        for hid in (hid_a, uuid.uuid4()):
            with pytest.raises(psycopg.errors.UndefinedObject):
                c.execute("SELECT dbrag.feedback(%s, false)", (hid,))
        assert c.execute("SELECT count(*) FROM control_plane.query_feedback").fetchone()[0] == 0
        assert c.execute("DELETE FROM control_plane.verified_queries WHERE verified_id = %s",
                         (vid,)).rowcount == 0
    # The app server (session-level set_tenant, autocommit) for each tenant.
    with cluster.login(cluster.app) as c:
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.b,))
        assert c.execute("SELECT count(*) FROM dbrag.verified_queries").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.UndefinedObject):
            c.execute("SELECT dbrag.feedback(%s, false)", (hid_a,))
        c.execute("SELECT dbrag.feedback(%s, false, %s)", (hid_b, count_sql))
        vid_b = c.execute("SELECT dbrag.add_verified_query('orders in total', %s)", (count_sql,)).fetchone()[0]
        c.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.a),))
        assert [r[0] for r in c.execute("SELECT verified_id FROM dbrag.verified_queries")] == [vid]
        assert c.execute("SELECT query_id, helpful FROM control_plane.query_feedback").fetchall() == [(hid_a, True)]
        calls = len(llm_server.requests())
        assert [r[0] for r in c.execute("SELECT * FROM dbrag.ask(%s)", (question,))] == [{"n": ROWS_PER_TENANT["a"]}]
        assert len(llm_server.requests()) == calls
    # The operator with a tenant in force gets that tenant's verified answer.
    with cluster.login(cluster.admin) as c:
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.b,))
        calls = len(llm_server.requests())
        assert [r[0] for r in c.execute("SELECT * FROM dbrag.ask('Orders in total')")] == [{"n": ROWS_PER_TENANT["b"]}]
        assert len(llm_server.requests()) == calls
    # Placement and every shard's rows, as a superuser.
    assert {r[0] for r in su.execute(
        "SELECT logicalrelid::text FROM pg_dist_partition WHERE partmethod = 'h' AND logicalrelid IN "
        "('control_plane.verified_queries'::regclass, 'control_plane.query_feedback'::regclass)")} == {
        "control_plane.verified_queries", "control_plane.query_feedback"}
    assert set(su.execute("SELECT tenant_id, helpful FROM control_plane.query_feedback").fetchall()) == {
        (cluster.a, True), (cluster.b, False)}
    # Straight to the workers: each member sees its own rows only.
    for login, tenant, want in ((cluster.alice, cluster.a, {vid}), (cluster.bob, cluster.b, {vid_b})):
        seen = on_workers(cluster, login, "SELECT tenant_id, verified_id FROM control_plane.verified_queries")
        assert {r for rows in seen for r in rows} == {(tenant, v) for v in want}, seen
        seen = on_workers(cluster, login, "SELECT tenant_id FROM control_plane.query_feedback")
        assert {r[0] for rows in seen for r in rows} == {tenant}, seen
    with cluster.login(cluster.alice) as c:
        c.execute("SELECT dbrag.remove_verified_query(%s)", (vid,))
    with cluster.login(cluster.bob) as c:
        c.execute("SELECT dbrag.remove_verified_query(%s)", (vid_b,))


def test_budgets_on_the_cluster(cluster, llm_server):
    """Budgets set by the operator are rows distributed by tenant_id; each
    tenant reads its own, on the workers too; the counters are in the shared
    memory of the node that calls the model (the coordinator)."""
    prepare_trust(cluster, llm_server)
    su = cluster.su
    with cluster.login(cluster.app) as c:
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.a,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT dbrag.set_tenant_budget(%s, 1, NULL)", (cluster.a,))
    with cluster.login(cluster.alice) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT dbrag.set_tenant_budget(%s, 1, NULL)", (cluster.a,))
    while time.time() % 60 > 45:  # the per-minute count must not roll over mid-test
        time.sleep(1)
    with cluster.login(cluster.admin) as c:
        c.execute("SELECT dbrag.set_tenant_budget(%s, 1, NULL)", (cluster.a,))
        c.execute("SELECT dbrag.set_tenant_budget(%s, 5, 100000)", (cluster.b,))
        assert {r[0] for r in c.execute("SELECT tenant_id FROM dbrag.budget_status()")} >= {cluster.a, cluster.b}
    try:
        assert su.execute("SELECT partmethod FROM pg_dist_partition WHERE logicalrelid = "
                          "'control_plane.tenant_budgets'::regclass").fetchone()[0] == "h"
        with cluster.login(cluster.alice) as c:
            assert c.execute("SELECT tenant_id, calls_per_minute FROM dbrag.budget_status()").fetchall() == [
                (cluster.a, 1)]
            llm_server.script(sql_answer("SELECT count(*) AS n FROM events"))
            c.execute("SELECT dbrag.generate_sql('how many events, first')")
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT dbrag.generate_sql('how many events, second')")
            assert e.value.sqlstate == "53400"
            assert c.execute("SELECT calls_left_this_minute FROM dbrag.budget_status()").fetchone()[0] == 0
        # B's budget is untouched by A's calls, and B never sees A's row.
        with cluster.login(cluster.app) as c:
            c.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.b),))
            assert c.execute("SELECT tenant_id, calls_per_minute, calls_left_this_minute "
                             "FROM dbrag.budget_status()").fetchall() == [(cluster.b, 5, 5)]
            assert c.execute("SELECT tenant_id FROM control_plane.tenant_budgets").fetchall() == [(cluster.b,)]
        for login, tenant in ((cluster.alice, cluster.a), (cluster.bob, cluster.b)):
            # A worker queries the whole distributed table (it holds the metadata).
            seen = on_workers(cluster, login, "SELECT tenant_id FROM control_plane.tenant_budgets")
            assert seen == [[(tenant,)], [(tenant,)]], seen
    finally:
        with cluster.login(cluster.admin) as c:
            c.execute("SELECT dbrag.set_tenant_budget(%s, NULL, NULL)", (cluster.a,))
            c.execute("SELECT dbrag.set_tenant_budget(%s, NULL, NULL)", (cluster.b,))


def test_budgeted_model_calls_stay_on_the_coordinator(cluster, llm_server):
    """Each node counts budgets in its own shared memory, so on a worker a
    budgeted tenant's model call is refused with 55000 before any request
    (connecting to the workers must not multiply the budget). A tenant with
    no budget is not limited there: its call reaches the model from the
    worker, which shows the worker is configured to make it."""
    prepare_trust(cluster, llm_server)
    with cluster.login(cluster.admin) as c:
        c.execute("SELECT dbrag.set_tenant_budget(%s, 100, NULL)", (cluster.a,))
    try:
        for port in (cluster.w1, cluster.w2):
            before = len(llm_server.requests())
            with cluster.login(cluster.alice, port=port) as w:
                with pytest.raises(psycopg.Error) as e:
                    w.execute("SELECT dbrag.generate_sql('how many events on the worker')")
                assert e.value.sqlstate == "55000"
                assert "coordinator" in e.value.diag.message_primary
            with cluster.login(cluster.app, port=port) as w:
                w.execute("SELECT dbrag.set_tenant(%s)", (token_for(cluster.a),))
                with pytest.raises(psycopg.Error) as e:
                    w.execute("SELECT dbrag.generate_sql('how many events, asked for A on the worker')")
                assert e.value.sqlstate == "55000"
            assert len(llm_server.requests()) == before, port
            # B has no budget: its call is made, from the worker. (The guard
            # then refuses the answer: the catalog is the coordinator's, and
            # the worker's own lists no table.)
            llm_server.script(sql_answer("SELECT count(*) AS n FROM events"))
            with cluster.login(cluster.bob, port=port) as w:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not one of the tables"):
                    w.execute("SELECT dbrag.generate_sql('how many events on the worker')")
            assert len(llm_server.requests()) == before + 1, port
        # On the coordinator A's calls go through and are counted.
        llm_server.script(sql_answer("SELECT count(*) AS n FROM events"))
        with cluster.login(cluster.alice) as c:
            c.execute("SELECT dbrag.generate_sql('how many events on the coordinator')")
            assert c.execute("SELECT calls_left_this_minute FROM dbrag.budget_status()").fetchone()[0] < 100
    finally:
        with cluster.login(cluster.admin) as c:
            c.execute("SELECT dbrag.set_tenant_budget(%s, NULL, NULL)", (cluster.a,))


@pytest.mark.parametrize("caller", ["member", "app", "operator"])
def test_verified_queries_inside_a_transaction_block(cluster, llm_server, caller):
    """A verified query used inside a transaction block, the way an
    application server behind a transaction pooler works: the answer is the
    verified SQL, run on the workers as the tenant, with no model call, also
    after another statement that followed set_tenant. A member's block that
    read a reference table before ask() ran that read on the coordinator's
    own copy (Citus's local execution), which the statement's cursor cannot
    follow: 55000 up front, rather than Citus's XX000 halfway. Saving a verified
    query and asking it in the same block is refused by Citus (one role per
    placement per transaction, docs/scale-out.md): a clean 25001, and the
    rollback leaves nothing behind."""
    prepare_trust(cluster, llm_server)
    login = caller_login(cluster, caller)
    count_sql = "SELECT count(*) AS n FROM orders"
    question = f"How many orders, asked by the {caller}?"

    def for_tenant_a(c):
        tenant_a_for_this_transaction(c, cluster, caller)

    with cluster.login(login) as c:
        with c.transaction():
            for_tenant_a(c)
            vid = c.execute("SELECT dbrag.add_verified_query(%s, %s)", (question, count_sql)).fetchone()[0]
        calls = len(llm_server.requests())
        try:
            for read_first in (False, True):
                if read_first and caller == "member":
                    # Nothing kept execution remote before the read, which ran
                    # on the coordinator's own copy: ask() says so up front.
                    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="ask"):
                        with c.transaction():
                            c.execute("SELECT count(*) FROM control_plane.tenants")
                            c.execute("SELECT * FROM dbrag.ask(%s)", (question.lower(),))
                    continue
                with c.transaction():
                    for_tenant_a(c)
                    if read_first:  # set_tenant kept execution remote: this read too
                        assert c.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] >= 1
                    rows = [r[0] for r in c.execute("SELECT * FROM dbrag.ask(%s)", (question.lower(),))]
                    assert rows == [{"n": ROWS_PER_TENANT["a"]}]
                    assert c.execute("SELECT dbrag.last_answer() ->> 'status'").fetchone()[0] == "verified"
                    assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]
            assert len(llm_server.requests()) == calls
            # Saved and asked in one block: refused, and nothing is kept.
            other = f"Orders counted twice, by the {caller}?"
            with pytest.raises(psycopg.Error) as e:
                with c.transaction():
                    for_tenant_a(c)
                    c.execute("SELECT dbrag.add_verified_query(%s, %s)", (other, count_sql))
                    c.execute("SELECT * FROM dbrag.ask(%s)", (other,))
            if caller == "member":  # add_verified_query's lookups ran locally, as above
                assert e.value.sqlstate == "55000", e.value
            else:
                assert e.value.sqlstate == "25001", e.value
                assert "different user" in e.value.diag.message_primary
            with c.transaction():
                for_tenant_a(c)
                assert [r[0] for r in c.execute("SELECT question FROM dbrag.verified_queries")] == [question]
            assert len(llm_server.requests()) == calls
        finally:
            with c.transaction():
                for_tenant_a(c)
                c.execute("SELECT dbrag.remove_verified_query(%s)", (vid,))
    # B never saw it, on the coordinator or on a worker.
    assert on_workers(cluster, cluster.bob, "SELECT count(*) FROM control_plane.verified_queries") == [[(0,)], [(0,)]]


# ---- INSERT ... SELECT into the tenants reference table

def test_insert_select_into_tenants(cluster):
    """Tenants added by INSERT ... SELECT after the distribution:
    the roles are made at commit, once Citus has streamed the rows to the
    workers, and exist on every node with LOGIN and the coordinator's
    password row; in a transaction block, at COMMIT."""
    su = cluster.su
    tag = uuid.uuid4().hex[:6]
    su.execute("INSERT INTO control_plane.tenants (tenant_id, name) "
               "SELECT gen_random_uuid(), %s || g FROM generate_series(1, 3) g", (f"isel_{tag}_",))
    with su.transaction():
        su.execute("INSERT INTO control_plane.tenants (tenant_id, name) "
                   "SELECT gen_random_uuid(), %s || g FROM generate_series(4, 5) g", (f"isel_{tag}_",))
    su.execute("INSERT INTO control_plane.tenants (tenant_id, name) VALUES (gen_random_uuid(), %s)",
               (f"isel_{tag}_6",))
    # COPY reaches the coordinator's placement over a Citus connection of its
    # own, from where a propagated CREATE ROLE would wait for its own
    # transaction: refused (0A000 on that connection; Citus reports a COPY
    # error from its connections as XX000), nothing written.
    with pytest.raises(psycopg.Error, match="cannot be added through a Citus connection") as e:
        with su.cursor().copy("COPY control_plane.tenants (tenant_id, name) FROM STDIN") as cp:
            cp.write_row((uuid.uuid4(), f"isel_{tag}_copy"))
    assert e.value.sqlstate in ("0A000", "XX000")
    # The same with local execution off (Citus then inserts over a connection too).
    with pytest.raises(psycopg.Error, match="cannot be added through a Citus connection"):
        with su.transaction():
            su.execute("SET LOCAL citus.enable_local_execution = off")
            su.execute("SELECT dbrag.create_tenant(%s)", (f"isel_{tag}_lexoff",))
    roles = [r[0] for r in su.execute("SELECT tenant_role FROM control_plane.tenants WHERE name LIKE %s",
                                      (f"isel_{tag}_%",))]
    assert len(roles) == 6
    for port in (cluster.coord, cluster.w1, cluster.w2):
        with conn(port) as c:
            got = c.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (roles,)).fetchall()
            assert sorted(got) == sorted((r, True) for r in roles), port
    assert su.execute("SELECT count(*) FROM pg_dist_authinfo WHERE rolename = ANY(%s)",
                      (roles,)).fetchone()[0] == 2 * len(roles)
    # A member of one of them reaches the workers as that tenant.
    t = su.execute("SELECT tenant_id FROM control_plane.tenants WHERE tenant_role = %s", (roles[0],)).fetchone()[0]
    with cluster.login(cluster.app) as c:
        c.execute("SELECT dbrag.set_tenant(%s::uuid)", (t,))
        assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0
    # A rolled-back INSERT ... SELECT leaves no role anywhere.
    gone = [uuid.uuid4(), uuid.uuid4()]
    with su.transaction():
        su.execute("INSERT INTO control_plane.tenants (tenant_id, name) "
                   "SELECT t, %s || t FROM unnest(%s::uuid[]) t", (f"isel_{tag}_", gone))
        raise psycopg.Rollback()
    for port in (cluster.coord, cluster.w1, cluster.w2):
        with conn(port) as c:
            assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname IN "
                             "(SELECT dbrag.tenant_role_name(t) FROM unnest(%s::uuid[]) t)",
                             (gone,)).fetchone()[0] == 0, port
    su.execute("DELETE FROM control_plane.tenants WHERE name LIKE %s", (f"isel_{tag}_%",))
    for port in (cluster.coord, cluster.w1, cluster.w2):
        with conn(port) as c:
            assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (roles,)).fetchone()[0] == 0


def test_forwarding_off_fails_closed(cluster):
    """dbrag.citus_tenant_forwarding = off (superuser only) stops the hook:
    a tenant set with set_tenant no longer reaches the workers, which then
    see no tenant (no rows, writes refused); a member's login still works."""
    su = cluster.su
    with cluster.login(cluster.app) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SET dbrag.citus_tenant_forwarding = off")
    su.execute(f"ALTER ROLE {cluster.app} SET dbrag.citus_tenant_forwarding = off")
    su.execute(f"ALTER ROLE {cluster.alice} SET dbrag.citus_tenant_forwarding = off")
    try:
        with cluster.login(cluster.app) as c:
            c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.a,))
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == 0
            with c.transaction():
                c.execute("SELECT dbrag.set_tenant(%s, true)", (token_for(cluster.b),))
                assert c.execute("SELECT count(*) FROM app.orders WHERE tenant_id = %s",
                                 (cluster.b,)).fetchone()[0] == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT dbrag.set_tenant(%s::uuid)", (cluster.a,))
                c.execute("INSERT INTO app.orders VALUES (%s, 777777, 1)", (cluster.a,))
        with cluster.login(cluster.alice) as c:
            assert c.execute("SELECT count(*) FROM app.orders").fetchone()[0] == ROWS_PER_TENANT["a"]
    finally:
        su.execute(f"ALTER ROLE {cluster.app} RESET dbrag.citus_tenant_forwarding")
        su.execute(f"ALTER ROLE {cluster.alice} RESET dbrag.citus_tenant_forwarding")
