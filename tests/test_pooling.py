"""Tenants behind a connection pooler: PgBouncer (Debian's package, started
by scripts/test.sh) in front of the test cluster.

- dbrag_test:          transaction pooling, 5 server connections
- dbrag_test_tx1:      transaction pooling, 1 server connection (so which
                       client gets the connection next is known)
- dbrag_test_session:  session pooling, 1 server connection,
                       server_reset_query = DISCARD ALL

Clients are non-superuser login roles over TCP through the pooler: a role
with tokens only (no membership), the application server (dbrag_app, by
uuid) and the operator (dbrag_admin, by uuid)."""

import os
import random
import threading
import uuid

import psycopg
import pytest

from conftest import HOST, ROLE_PASSWORD, token_for

POOLER_PORT = int(os.environ.get("DBRAG_PGBOUNCER_PORT",
                                 str(int(os.environ.get("DBRAG_TEST_PORT", "55432")) + 3)))
ROWS_PER_TENANT = 7


def pooled(role, dbname="dbrag_test"):
    # Named prepared statements do not survive transaction pooling
    # (PgBouncer 1.18): psycopg must not prepare.
    return psycopg.connect(host=HOST, port=POOLER_PORT, user=role, password=ROLE_PASSWORD,
                           dbname=dbname, autocommit=True, prepare_threshold=None)


@pytest.fixture
def pool_setup(su, tenants):
    """Four tenants (A, B and two more) with rows in an isolated table; the
    table's rows name their tenant, so a leak is visible in the data."""
    tag = tenants.tag
    extra = [su.execute("SELECT dbrag.create_tenant(%s)", (f"p{i}_{tag}",)).fetchone()[0]
             for i in range(2)]
    ids = [tenants.a, tenants.b] + extra
    table = f"public.pool_items_{tag}"
    su.execute(f"CREATE TABLE {table} (tenant_id uuid NOT NULL, id int NOT NULL, "
               "owner_name text NOT NULL, PRIMARY KEY (tenant_id, id))")
    for t in ids:
        su.execute(f"INSERT INTO {table} SELECT %s, g, %s FROM generate_series(1, %s) g",
                   (t, str(t), ROWS_PER_TENANT))
    su.execute("SELECT dbrag.enable_tenant_isolation(%s)", (table,))
    roles = (tenants.stranger, tenants.app_role, tenants.admin_role)
    su.execute(f"GRANT SELECT ON {table} TO {', '.join(roles)}")
    return table, ids


CLIENTS = 40
TX_PER_CLIENT = 260          # 40 x 260 = 10,400 transactions
NO_TENANT_SHARE = 0.1        # transactions that set no tenant at all


def test_transaction_pooling_keeps_tenants_apart(su, tenants, pool_setup):
    """40 clients of four tenants over 5 server connections, each
    transaction BEGIN; set_tenant(..., true); query; COMMIT. Not one row of
    another tenant over 10,400 transactions; a transaction that sets no
    tenant sees no rows, whoever had its server connection before.

    PgBouncer pools per (database, role), so all 40 clients log in as the
    application server's role (dbrag_app), as an application would; two
    transactions in three pass an end user's token, one in three the
    tenant's uuid."""
    table, ids = pool_setup
    tokens = {t: token_for(t) for t in ids}
    failures, done, served = [], [0] * CLIENTS, {}
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(n):
        role = tenants.app_role
        rng = random.Random(n)
        try:
            with pooled(role) as c:
                start.wait(timeout=60)
                for _ in range(TX_PER_CLIENT):
                    t = rng.choice(ids)
                    none = rng.random() < NO_TENANT_SHARE
                    by_token = rng.random() < 2 / 3
                    with c.transaction():
                        if not none and by_token:
                            c.execute("SELECT dbrag.set_tenant(%s, true)", (tokens[t],))
                        elif not none:
                            c.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (t,))
                        rows = c.execute(f"SELECT owner_name, count(*) FROM {table} "
                                         "GROUP BY 1").fetchall()
                        cur, pid = c.execute("SELECT dbrag.current_tenant_id(), "
                                             "pg_backend_pid()").fetchone()
                    want = [] if none else [(str(t), ROWS_PER_TENANT)]
                    if rows != want or cur != (None if none else t):
                        with lock:
                            failures.append((role, None if none else t, cur, rows))
                    with lock:
                        served.setdefault(pid, set()).add(cur)
                    done[n] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                failures.append((role, "exception", repr(e)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, f"{len(failures)} bad transactions, first: {failures[:5]}"
    assert sum(done) == CLIENTS * TX_PER_CLIENT >= 10_000
    # The pooler really multiplexed: at most 5 server backends, and backends
    # were shared by several tenants (and by transactions with none).
    assert 1 <= len(served) <= 5, served.keys()
    assert max(len(v) for v in served.values()) >= 3


def _rows(c, table):
    return c.execute(f"SELECT DISTINCT owner_name FROM {table}").fetchall()


def test_session_level_set_tenant_leaks_under_transaction_pooling(su, tenants, pool_setup):
    """What the README warns about: a session-level set_tenant (is_local
    false) stays on the server connection, and transaction pooling hands
    that connection to the next client. is_local => true ends with the
    transaction, so the next client gets nothing."""
    table, ids = pool_setup
    a = ids[0]
    role = tenants.stranger
    with pooled(role, "dbrag_test_tx1") as x, pooled(role, "dbrag_test_tx1") as y:
        assert _rows(y, table) == []
        pid_x = x.execute("SELECT dbrag.set_tenant(%s), pg_backend_pid()",
                          (token_for(a),)).fetchone()[1]
        pid_y, seen = y.execute("SELECT pg_backend_pid(), dbrag.current_tenant_id()").fetchone()
        assert pid_y == pid_x, "one server connection: y runs where x ran"
        assert seen == a and _rows(y, table) == [(str(a),)], \
            "the session-level tenant of x leaked to y"
        y.execute("SELECT dbrag.reset_tenant()")
        assert _rows(y, table) == []

        # The guidance: set it per transaction, with is_local => true.
        with x.transaction():
            x.execute("SELECT dbrag.set_tenant(%s, true)", (token_for(a),))
            assert _rows(x, table) == [(str(a),)]
        pid_y, seen = y.execute("SELECT pg_backend_pid(), dbrag.current_tenant_id()").fetchone()
        assert pid_y == pid_x
        assert seen is None and _rows(y, table) == []
        # Outside a transaction block is_local lasts one statement only.
        x.execute("SELECT dbrag.set_tenant(%s, true)", (token_for(a),))
        assert _rows(x, table) == []
        # The application server by uuid: the same.
        with pooled(tenants.app_role, "dbrag_test_tx1") as app:
            with app.transaction():
                app.execute("SELECT dbrag.set_tenant(%s::uuid, true)", (a,))
                assert _rows(app, table) == [(str(a),)]
            assert app.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] is None


def test_session_pooling_discard_all_clears_the_tenant(su, tenants, pool_setup):
    """Session pooling: a client's session-level tenant is wiped by
    server_reset_query = DISCARD ALL before the server connection serves
    the next client."""
    table, ids = pool_setup
    b = ids[1]
    role = tenants.stranger
    with pooled(tenants.admin_role, "dbrag_test_session") as op:
        # The operator through the pooler, by uuid.
        assert op.execute("SELECT dbrag.set_tenant(%s::uuid)", (b,)).fetchone()[0] == b
        assert _rows(op, table) == [(str(b),)]
    with pooled(role, "dbrag_test_session") as x:
        pid_x = x.execute("SELECT dbrag.set_tenant(%s), pg_backend_pid()",
                          (token_for(b),)).fetchone()[1]
        assert _rows(x, table) == [(str(b),)]
    with pooled(role, "dbrag_test_session") as y:
        pid_y, seen = y.execute("SELECT pg_backend_pid(), dbrag.current_tenant_id()").fetchone()
        assert pid_y == pid_x, "one server connection, reused after DISCARD ALL"
        assert seen is None
        assert _rows(y, table) == []
    # While a session holds the connection, it keeps its tenant across
    # transactions (session pooling gives a client its own connection).
    with pooled(tenants.app_role, "dbrag_test_session") as app:
        app.execute("SELECT dbrag.set_tenant(%s::uuid)", (b,))
        for _ in range(3):
            with app.transaction():
                assert _rows(app, table) == [(str(b),)]
