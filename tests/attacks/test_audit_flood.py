"""A flood of refused tokens (SECURITY.md, "Refusals are audited without
exhausting the server"): every refusal is audited by a row that survives its
ERROR, written by one audit writer through a queue in shared memory. 5,000
bad tokens from 20 sessions take at most one background-worker slot, parallel
query keeps its workers meanwhile, and every refusal has its audit row."""

import threading
import time
import uuid

import psycopg

from attack_kit import llm_server, plane, refused, sql_answer  # noqa: F401  (fixtures)
from conftest import ROLE_PASSWORD, connect

SESSIONS = 20
PER_SESSION = 250
WRITERS = ("SELECT count(*) FROM pg_stat_activity "
           "WHERE backend_type IN ('pg_dbrag audit writer', 'pg_dbrag durable writer')")
PARALLEL = ("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
            "SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2")


def workers_launched(conn, table):
    plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {table}").fetchone()[0]
    found = [n.get("Workers Launched") for n in walk(plan) if "Workers Launched" in n]
    return max(found) if found else 0


def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_token_flood_takes_one_worker_slot_and_loses_no_row(su, tenants):
    flooder = f"flood_{tenants.tag}"
    su.execute(f"CREATE ROLE {flooder} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
    table = f"public.par_{tenants.tag}"
    su.execute(f"CREATE TABLE {table} AS SELECT g AS x FROM generate_series(1, 200000) g")
    su.execute(f"ANALYZE {table}")
    status_before = su.execute("SELECT dbrag.audit_queue_status()").fetchone()[0]
    assert status_before["shared_memory"] is True

    errors, refusals = [], [0] * SESSIONS
    done = threading.Event()

    def flood(i):
        try:
            with connect(user=flooder, password=ROLE_PASSWORD) as c:
                for n in range(PER_SESSION):
                    try:
                        c.execute("SELECT dbrag.set_tenant(%s::text)", (f"bad.{i}.{n}-{uuid.uuid4().hex}",))
                        errors.append("a bad token was accepted")
                    except psycopg.Error as e:
                        if e.sqlstate != "28000":
                            errors.append(f"{e.sqlstate}: {e}")
                        else:
                            refusals[i] += 1
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(SESSIONS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    peak_writers, launched_during = 0, []
    with connect() as watch:
        watch.execute(PARALLEL)
        while any(t.is_alive() for t in threads):
            peak_writers = max(peak_writers, watch.execute(WRITERS).fetchone()[0])
            if len(launched_during) < 20:
                launched_during.append(workers_launched(watch, table))
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        for t in threads:
            t.join()
        done.set()
        launched_after = workers_launched(watch, table)

    assert not errors, errors[:5]
    assert sum(refusals) == SESSIONS * PER_SESSION
    # One worker slot for audit, however many sessions refuse at once.
    assert peak_writers <= 1, peak_writers
    # Parallel query kept its workers during the flood and after it.
    assert launched_during and min(launched_during) > 0, launched_during
    assert launched_after > 0
    # Nothing lost: every refusal has its committed row.
    rows = su.execute("SELECT count(*) FROM control_plane.audit_log "
                      "WHERE event = 'token_refused' AND login_role = %s", (flooder,)).fetchone()[0]
    assert rows == SESSIONS * PER_SESSION, (rows, elapsed)
    status = su.execute("SELECT dbrag.audit_queue_status()").fetchone()[0]
    assert status["dropped"] == status_before["dropped"], status
    assert status["written"] - status_before["written"] >= SESSIONS * PER_SESSION
    # Batched: far fewer transactions than rows.
    assert status["batches"] - status_before["batches"] < SESSIONS * PER_SESSION, status
    print(f"flood: {SESSIONS * PER_SESSION} refusals in {elapsed:.1f} s, "
          f"{status['batches'] - status_before['batches']} batches, peak writers {peak_writers}, "
          f"workers launched during {sorted(launched_during)}")
    su.execute(f"DROP TABLE {table}")


def test_the_writer_is_on_demand(su, tenants):
    """No refusals, no writer: it leaves after a quiet second."""
    with tenants.conn(tenants.a_role) as a:
        try:
            a.execute("SELECT dbrag.set_tenant('not-a-token'::text)")
        except psycopg.Error as e:
            assert e.sqlstate == "28000"
    deadline = time.monotonic() + 10
    while su.execute(WRITERS).fetchone()[0] > 0:
        assert time.monotonic() < deadline, "the audit writer did not exit"
        time.sleep(0.1)


def test_queue_status_is_for_operators(tenants):
    with tenants.conn(tenants.admin_role) as ops:
        status = ops.execute("SELECT dbrag.audit_queue_status()").fetchone()[0]
        assert status["slots"] > 0 and "writer_running" in status
    with tenants.conn(tenants.a_role) as a:
        try:
            a.execute("SELECT dbrag.audit_queue_status()")
            raise AssertionError("a tenant read the audit queue")
        except psycopg.Error as e:
            assert e.sqlstate == "42501"


def test_a_row_larger_than_a_queue_slot_is_cut_not_lost(su, plane):
    """A refused answer to a long question: its history row and its audit
    row are larger than a queue slot; the longest values are cut (and say
    so), the rows are there."""
    t = plane.t
    question = "which singers " + "é" * 7000  # 14 kB of UTF-8
    long_sql = "DELETE FROM singer WHERE name = '" + "x" * 6000 + "'"
    plane.model.reset()
    plane.model.script(sql_answer(long_sql), sql_answer(long_sql))
    with t.conn(t.a_role) as a:
        e = refused(a, "SELECT * FROM dbrag.ask(%s)", (question,))
        assert e.sqlstate == "42601"
    row = su.execute("SELECT question, generated_sql, status FROM control_plane.query_history "
                     "WHERE tenant_id = %s ORDER BY created_at DESC LIMIT 1", (t.a,)).fetchone()
    assert row[2] == "refused"
    assert row[0].startswith("which singers é") and row[0].endswith("[truncated]")
    assert len(row[0].encode()) + len((row[1] or "").encode()) < 8192
    audit = su.execute("SELECT detail FROM control_plane.audit_log WHERE tenant_id = %s "
                       "AND event = 'sql_refused' ORDER BY created_at DESC LIMIT 1", (t.a,)).fetchone()
    assert audit is not None and audit[0]["sql"].startswith("DELETE FROM singer")


def test_refusals_in_two_databases_at_once(su, tenants):
    """The one writer serves one database at a time; rows of another database
    wait for it to leave and then get a writer of their own. None is lost."""
    other = f"other_{tenants.tag}"
    su.execute(f"CREATE DATABASE {other}")
    try:
        with connect(dbname=other) as c:
            c.execute("CREATE EXTENSION pg_dbrag CASCADE")
        flooder = f"flood2_{tenants.tag}"
        su.execute(f"CREATE ROLE {flooder} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
        errors = []

        def flood(db):
            try:
                with connect(user=flooder, password=ROLE_PASSWORD, dbname=db) as c:
                    for n in range(50):
                        try:
                            c.execute("SELECT dbrag.set_tenant(%s::text)", (f"bad-{n}",))
                        except psycopg.Error as e:
                            if e.sqlstate != "28000":
                                errors.append(f"{e.sqlstate}: {e}")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=flood, args=(db,)) for db in [su.info.dbname, other] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        count = ("SELECT count(*) FROM control_plane.audit_log "
                 f"WHERE event = 'token_refused' AND login_role = '{flooder}'")
        assert su.execute(count).fetchone()[0] == 200
        with connect(dbname=other) as c:
            assert c.execute(count).fetchone()[0] == 200
    finally:
        su.execute(f"DROP DATABASE {other} WITH (FORCE)")


def test_cancelled_waits_leave_no_slot_behind(su, tenants):
    """A backend cancelled while it waits for its row (statement_timeout)
    leaves the slot to the writer, which still writes the row and frees it."""
    before = su.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'token_refused' "
                        "AND login_role = %s", (tenants.stranger,)).fetchone()[0]
    cancelled = 0
    with tenants.conn(tenants.stranger) as s:
        s.execute("SET statement_timeout = '2ms'")
        for n in range(100):
            try:
                s.execute("SELECT dbrag.set_tenant(%s::text)", (f"bad-{n}",))
            except psycopg.Error as e:
                assert e.sqlstate in ("28000", "57014"), e
                cancelled += e.sqlstate == "57014"
        s.execute("RESET statement_timeout")
        assert s.execute("SELECT 1").fetchone()[0] == 1
    deadline = time.monotonic() + 10
    while True:
        status = su.execute("SELECT dbrag.audit_queue_status()").fetchone()[0]
        if status["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    after = su.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'token_refused' "
                       "AND login_role = %s", (tenants.stranger,)).fetchone()[0]
    # Every refusal that reached the queue is written; cancelled ones may or may not have.
    assert after - before >= 100 - cancelled
    print(f"cancelled while waiting: {cancelled} of 100")
