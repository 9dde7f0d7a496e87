"""The SQL guard (docs/llm-and-guard.md): PostgreSQL's own parser and analyzer decide what
a model-written statement reads and calls. One test per refused construct,
accepted statements that analysts write, the remote (raw parse tree)
variant, and garbage that must never crash the backend.

dbrag._guard_check(sql, allowed regclass[]) answers 'ok' or raises: 42601 not
one read-only SELECT, 42501 a forbidden relation or function, PostgreSQL's
own SQLSTATE for text that does not parse or analyze."""

import random
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from conftest import connect

NOT_SELECT, FORBIDDEN = "42601", "42501"
IDLE = psycopg.pq.TransactionStatus.IDLE


def usable(conn):
    """The connection is back to idle (no transaction or subtransaction left
    open by the guard) and answers."""
    assert conn.info.transaction_status == IDLE
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert conn.info.transaction_status == IDLE


@pytest.fixture(scope="module")
def shop(database):
    """A schema with two allowed tables, and things around them that are not allowed."""
    s = "g_" + uuid.uuid4().hex[:8]
    with connect() as c:
        c.execute(f"""
            CREATE SCHEMA {s};
            CREATE TABLE {s}.customers (id int PRIMARY KEY, name text, region text);
            CREATE TABLE {s}.orders (id int PRIMARY KEY, customer_id int REFERENCES {s}.customers,
                                     amount numeric, created_at timestamptz DEFAULT now(), tags jsonb);
            CREATE TABLE {s}.secret (id int, payload text);
            CREATE VIEW {s}.big_orders AS SELECT * FROM {s}.orders WHERE amount > 100;
            CREATE SEQUENCE {s}.seq;
            CREATE DOMAIN {s}.positive AS int CHECK (VALUE > 0);
            CREATE FUNCTION {s}.volatile_fn() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
            CREATE FUNCTION {s}.stable_fn() RETURNS bigint LANGUAGE sql STABLE
                AS 'SELECT count(*) FROM {s}.secret';
            CREATE FUNCTION {s}.plus(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + $2';
            CREATE OPERATOR {s}.#+# (LEFTARG = int, RIGHTARG = int, FUNCTION = {s}.plus);
            INSERT INTO {s}.customers VALUES (1, 'ann', 'north'), (2, 'bob', 'south');
            INSERT INTO {s}.orders VALUES (1, 1, 50, now(), '{{"a": 1}}'), (2, 2, 150, now(), '{{}}');
        """)
    yield s
    with connect() as c:
        c.execute(f"DROP SCHEMA {s} CASCADE")


def allowed_of(shop, names=("orders", "customers")):
    return [f"{shop}.{n}" for n in names]


def guard(conn, sql, allowed):
    return conn.execute("SELECT dbrag._guard_check(%s, %s::regclass[])", (sql, allowed)).fetchone()[0]


def refused(conn, sql, allowed, sqlstate):
    with pytest.raises(psycopg.Error) as e:
        guard(conn, sql, allowed)
    assert e.value.sqlstate == sqlstate, (sql, e.value.sqlstate, str(e.value))
    usable(conn)
    return str(e.value)


# ---------------------------------------------------------------- refused: shape

SHAPE = {
    "two_statements": "SELECT 1 FROM {s}.orders; SELECT 2",
    "delete": "DELETE FROM {s}.orders",
    "update": "UPDATE {s}.orders SET amount = 0",
    "insert": "INSERT INTO {s}.orders (id) VALUES (99)",
    "merge": "MERGE INTO {s}.orders o USING {s}.customers c ON o.id = c.id WHEN MATCHED THEN DELETE",
    "data_modifying_cte": "WITH d AS (DELETE FROM {s}.orders RETURNING *) SELECT * FROM d",
    "data_modifying_cte_insert": "WITH i AS (INSERT INTO {s}.orders (id) VALUES (98) RETURNING id) SELECT id FROM i",
    "select_into": "SELECT * INTO {s}.copy FROM {s}.orders",
    "for_update": "SELECT * FROM {s}.orders FOR UPDATE",
    "for_share": "SELECT * FROM {s}.orders FOR SHARE",
    "for_update_in_subquery": "SELECT * FROM (SELECT * FROM {s}.orders FOR NO KEY UPDATE) o",
    "for_key_share_in_cte": "WITH o AS (SELECT * FROM {s}.orders FOR KEY SHARE) SELECT * FROM o",
    "explain": "EXPLAIN SELECT * FROM {s}.orders",
    "copy": "COPY {s}.orders TO STDOUT",
    "create_table_as": "CREATE TABLE {s}.x AS SELECT * FROM {s}.orders",
    "set": "SET search_path = public",
    "do_block": "DO $$ BEGIN PERFORM 1; END $$",
    "call": "CALL {s}.nothing()",
    "empty": " ; ",
    "comment_only": "-- nothing here",
}


@pytest.mark.parametrize("case", sorted(SHAPE))
def test_refused_shape(su, shop, case):
    refused(su, SHAPE[case].format(s=shop), allowed_of(shop), NOT_SELECT)


# ---------------------------------------------------------------- refused: functions

FUNCTIONS = {
    "set_config_in_materialized_cte":
        "WITH s AS MATERIALIZED (SELECT set_config('app.current_tenant_id', 'x', true)) "
        "SELECT o.* FROM {s}.orders o, s",
    "pg_sleep": "SELECT pg_sleep(1) FROM {s}.orders",
    "pg_sleep_for": "SELECT pg_sleep_for('1 second')",
    "pg_advisory_lock": "SELECT pg_advisory_lock(42)",
    "pg_advisory_xact_lock": "SELECT pg_advisory_xact_lock(id) FROM {s}.orders",
    "query_to_xml": "SELECT query_to_xml('SELECT * FROM {s}.secret', true, true, '')",
    "query_to_xmlschema": "SELECT query_to_xmlschema('SELECT * FROM {s}.secret', true, true, '')",
    "query_to_xml_and_xmlschema":
        "SELECT query_to_xml_and_xmlschema('SELECT * FROM {s}.secret', true, true, '')",
    "cursor_to_xml": "SELECT cursor_to_xml('c'::refcursor, 10, true, true, '')",
    "cursor_to_xmlschema": "SELECT cursor_to_xmlschema('c'::refcursor, true, true, '')",
    "ts_stat": "SELECT * FROM ts_stat('SELECT to_tsvector(payload) FROM {s}.secret')",
    "ts_rewrite_text":
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM {s}.secret')",
    "database_to_xml": "SELECT database_to_xml(true, true, '')",
    "schema_to_xml": "SELECT schema_to_xml('{s}', true, true, '')",
    "table_to_xml": "SELECT table_to_xml('{s}.secret'::regclass, true, true, '')",
    "table_to_xml_on_an_allowed_table": "SELECT table_to_xml('{s}.orders'::regclass, true, true, '')",
    "pg_read_file": "SELECT pg_read_file('/etc/passwd')",
    "pg_read_binary_file": "SELECT pg_read_binary_file('/etc/passwd')",
    "pg_ls_dir": "SELECT * FROM pg_ls_dir('.')",
    "pg_stat_file": "SELECT pg_stat_file('postgresql.conf')",
    "lo_import": "SELECT lo_import('/etc/passwd')",
    "lo_export": "SELECT lo_export(1234, '/tmp/x')",
    "lo_get": "SELECT lo_get(1234)",
    "current_setting": "SELECT current_setting('dbrag.jwt_secret')",
    "txid_current": "SELECT txid_current()",
    "pg_current_xact_id": "SELECT pg_current_xact_id()",
    "nextval": "SELECT nextval('{s}.seq')",
    "pg_terminate_backend": "SELECT pg_terminate_backend(1)",
    "pg_cancel_backend": "SELECT pg_cancel_backend(1)",
    "pg_reload_conf": "SELECT pg_reload_conf()",
    "pg_notify": "SELECT pg_notify('c', 'x')",
    "pg_export_snapshot": "SELECT pg_export_snapshot()",
    "pg_stat_get_activity": "SELECT * FROM pg_stat_get_activity(NULL)",
    "obj_description": "SELECT obj_description('{s}.secret'::regclass, 'pg_class')",
    "random_is_volatile": "SELECT * FROM {s}.orders ORDER BY random()",
    "clock_timestamp_is_volatile": "SELECT clock_timestamp()",
    "volatile_user_function": "SELECT {s}.volatile_fn()",
    "stable_user_function_reads_other_tables": "SELECT {s}.stable_fn() FROM {s}.orders",
    "user_operator": "SELECT id OPERATOR({s}.#+#) 1 FROM {s}.orders",
    "cast_to_user_domain": "SELECT id::{s}.positive FROM {s}.orders",
    "function_deep_in_a_subquery":
        "SELECT * FROM {s}.orders WHERE id IN (SELECT customer_id FROM {s}.orders "
        "WHERE amount > (SELECT pg_backend_pid()))",
    "function_in_having": "SELECT region FROM {s}.customers GROUP BY region HAVING count(*) > pg_backend_pid()",
    "function_in_lateral": "SELECT * FROM {s}.orders o, LATERAL (SELECT set_config('a.b', 'c', true)) x",
    "function_in_union_branch": "SELECT id FROM {s}.orders UNION ALL SELECT pg_backend_pid()",
    "function_in_values": "SELECT * FROM (VALUES (pg_backend_pid())) v",
    "function_in_order_by": "SELECT * FROM {s}.orders ORDER BY pg_backend_pid()",
    "function_in_join_condition":
        "SELECT * FROM {s}.orders o JOIN {s}.customers c ON c.id = o.customer_id AND pg_backend_pid() > 0",
}


@pytest.mark.parametrize("case", sorted(FUNCTIONS))
def test_refused_function(su, shop, case):
    msg = refused(su, FUNCTIONS[case].format(s=shop), allowed_of(shop), FORBIDDEN)
    assert "not allowed" in msg


def test_dblink_is_refused_installed_or_not(su, shop):
    sql = "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(a int)"
    with pytest.raises(psycopg.Error) as e:
        guard(su, sql, allowed_of(shop))
    # Not installed: analysis fails (42883); installed: refused (42501).
    assert e.value.sqlstate in (FORBIDDEN, "42883")


# ---------------------------------------------------------------- refused: relations

RELATIONS = {
    "pg_class_in_an_in_subselect":
        "SELECT * FROM {s}.orders WHERE id IN (SELECT oid::int FROM pg_class)",
    "pg_stat_activity": "SELECT query FROM pg_stat_activity",
    "pg_authid": "SELECT rolpassword FROM pg_authid",
    "information_schema_tables": "SELECT table_name FROM information_schema.tables",
    "control_plane_tenants": "SELECT * FROM control_plane.tenants",
    "control_plane_in_a_cte": "WITH t AS (SELECT * FROM control_plane.tenant_databases) SELECT count(*) FROM t",
    "table_not_allowed": "SELECT * FROM {s}.secret",
    "table_not_allowed_in_a_join": "SELECT * FROM {s}.orders o JOIN {s}.secret x ON x.id = o.id",
    "table_not_allowed_in_exists":
        "SELECT * FROM {s}.orders o WHERE EXISTS (SELECT 1 FROM {s}.secret x WHERE x.id = o.id)",
    "table_not_allowed_in_target_list": "SELECT (SELECT payload FROM {s}.secret LIMIT 1) FROM {s}.orders",
    "view_not_allowed": "SELECT * FROM {s}.big_orders",
    "sequence": "SELECT last_value FROM {s}.seq",
    "table_not_allowed_in_lateral":
        "SELECT * FROM {s}.orders o, LATERAL (SELECT * FROM {s}.secret x WHERE x.id = o.id) l",
    "table_not_allowed_via_table_statement": "TABLE {s}.secret",
}


@pytest.mark.parametrize("case", sorted(RELATIONS))
def test_refused_relation(su, shop, case):
    msg = refused(su, RELATIONS[case].format(s=shop), allowed_of(shop), FORBIDDEN)
    assert "is not one of the tables" in msg


def test_view_allowed_when_listed(su, shop):
    assert guard(su, f"SELECT count(*) FROM {shop}.big_orders", allowed_of(shop, ("big_orders",))) == "ok"


def test_nothing_allowed_refuses_every_table(su, shop):
    refused(su, f"SELECT * FROM {shop}.orders", [], FORBIDDEN)


# ---------------------------------------------------------------- accepted

ACCEPTED = {
    "plain": "SELECT id, amount FROM {s}.orders",
    "trailing_semicolon_and_comment": "SELECT id FROM {s}.orders; -- done",
    "join_aggregate": "SELECT c.region, count(*), sum(o.amount) AS revenue FROM {s}.orders o "
                      "JOIN {s}.customers c ON c.id = o.customer_id GROUP BY c.region ORDER BY 3 DESC LIMIT 5",
    "window": "SELECT id, amount, rank() OVER (PARTITION BY customer_id ORDER BY amount DESC), "
              "sum(amount) OVER (ORDER BY created_at ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM {s}.orders",
    "cte": "WITH top AS (SELECT customer_id, sum(amount) s FROM {s}.orders GROUP BY 1) "
           "SELECT c.name, t.s FROM top t JOIN {s}.customers c ON c.id = t.customer_id",
    "recursive_cte": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) "
                     "SELECT i FROM n",
    "subqueries": "SELECT * FROM {s}.customers c WHERE EXISTS (SELECT 1 FROM {s}.orders o "
                  "WHERE o.customer_id = c.id AND o.amount > (SELECT avg(amount) FROM {s}.orders))",
    "dates_and_strings": "SELECT date_trunc('month', created_at), to_char(created_at, 'YYYY-MM'), "
                         "upper(c.name), coalesce(c.region, '?'), now() - interval '1 year', "
                         "extract(year FROM created_at) FROM {s}.orders o JOIN {s}.customers c ON c.id = o.customer_id "
                         "WHERE created_at >= current_date - 30 AND c.name ILIKE 'a%'",
    "json": "SELECT tags->>'a', jsonb_typeof(tags), jsonb_build_object('id', id) FROM {s}.orders "
            "WHERE tags ? 'a'",
    "case_and_filter": "SELECT count(*) FILTER (WHERE amount > 100), "
                       "CASE WHEN sum(amount) > 0 THEN 'yes' ELSE 'no' END FROM {s}.orders",
    "generate_series_in_from": "SELECT d::date, count(o.id) FROM generate_series(now() - interval '7 days', now(), "
                               "interval '1 day') d LEFT JOIN {s}.orders o ON o.created_at::date = d::date GROUP BY 1",
    "values_and_union": "SELECT 1 AS x UNION SELECT id FROM {s}.orders UNION SELECT * FROM (VALUES (7)) v",
    "tablesample": "SELECT count(*) FROM {s}.orders TABLESAMPLE BERNOULLI (50) REPEATABLE (1)",
    "distinct_on_grouping_sets": "SELECT DISTINCT ON (region) region, name FROM {s}.customers ORDER BY region, name",
    "rollup": "SELECT region, count(*) FROM {s}.customers GROUP BY ROLLUP (region)",
    "pg_typeof_and_size": "SELECT pg_typeof(amount), pg_size_pretty(1024::bigint) FROM {s}.orders",
    "lateral_unnest": "SELECT o.id, t FROM {s}.orders o, LATERAL unnest(ARRAY['a','b']) t",
    "percentile": "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM {s}.orders",
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted(su, shop, case):
    assert guard(su, ACCEPTED[case].format(s=shop), allowed_of(shop)) == "ok"


def test_unqualified_names_follow_the_search_path(su, shop):
    su.execute(f"SET search_path = {shop}")
    assert guard(su, "SELECT count(*) FROM orders JOIN customers ON customers.id = orders.customer_id",
                 allowed_of(shop)) == "ok"
    refused(su, "SELECT * FROM secret", allowed_of(shop), FORBIDDEN)
    # pg_catalog is searched first: an unqualified pg_class is the catalog's.
    refused(su, "SELECT * FROM pg_class", allowed_of(shop), FORBIDDEN)
    su.execute("RESET search_path")


# ---------------------------------------------------------------- invalid SQL

@pytest.mark.parametrize("sql,sqlstate", [
    ("SELECT * FROM {s}.no_such_table", "42P01"),
    ("SELECT no_such_column FROM {s}.orders", "42703"),
    ("SELECT no_such_function(id) FROM {s}.orders", "42883"),
    ("SELEC id FROM {s}.orders", "42601"),
    ("SELECT id FROM {s}.orders WHERE", "42601"),
    ("SELECT 'abc'::int", "22P02"),
    ("SELECT $1", "42P02"),
])
def test_invalid_sql_keeps_postgres_sqlstate(su, shop, sql, sqlstate):
    with pytest.raises(psycopg.Error) as e:
        guard(su, sql.format(s=shop), allowed_of(shop))
    assert e.value.sqlstate == sqlstate, str(e.value)
    usable(su)


def test_invalid_sql_leaves_the_transaction_usable_and_unlocked(shop, database):
    """The guard's subtransaction: after a caught analysis error, or a
    refusal of FOR UPDATE (whose analysis takes a row-share lock), the
    caller's transaction goes on, with no lock left behind."""
    with connect() as c:
        c.autocommit = False
        c.execute("CREATE TEMP TABLE probe (x int)")
        c.execute("INSERT INTO probe VALUES (1)")
        out = c.execute("SELECT dbrag._guard_check(%s, %s::regclass[], false)",
                        (f"SELECT nope FROM {shop}.orders", allowed_of(shop))).fetchone()[0]
        assert out.startswith("42703")
        out = c.execute("SELECT dbrag._guard_check(%s, %s::regclass[], false)",
                        (f"SELECT * FROM {shop}.secret FOR UPDATE", allowed_of(shop))).fetchone()[0]
        assert out.startswith("42601")
        locks = c.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
            "AND relation = %s::regclass", (f"{shop}.secret",)).fetchone()[0]
        assert locks == 0
        # Accepted: the analysis' AccessShareLock is kept until the end of the
        # transaction, so the checked relations cannot change before the run.
        assert c.execute("SELECT dbrag._guard_check(%s, %s::regclass[], false)",
                         (f"SELECT * FROM {shop}.orders", allowed_of(shop))).fetchone()[0] == "ok"
        modes = [r[0] for r in c.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
            "AND relation = %s::regclass", (f"{shop}.orders",))]
        assert modes == ["AccessShareLock"]
        c.execute("INSERT INTO probe VALUES (2)")
        assert c.execute("SELECT count(*) FROM probe").fetchone()[0] == 2
        c.commit()


def test_guard_functions_are_superuser_only(tenants, shop):
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(errors.InsufficientPrivilege):
            a.execute("SELECT dbrag._guard_check('SELECT 1', '{}'::regclass[])")
        with pytest.raises(errors.InsufficientPrivilege):
            a.execute("SELECT dbrag._guard_check_remote('SELECT 1', '{}'::text[], 'public')")


# ---------------------------------------------------------------- remote (raw parse tree)

REMOTE_ALLOWED = ["public.orders", "public.customers", "sales.items"]


def rguard(conn, sql, allowed=REMOTE_ALLOWED, schema="public"):
    return conn.execute("SELECT dbrag._guard_check_remote(%s, %s, %s)", (sql, allowed, schema)).fetchone()[0]


def rrefused(conn, sql, sqlstate):
    with pytest.raises(psycopg.Error) as e:
        rguard(conn, sql)
    assert e.value.sqlstate == sqlstate, (sql, e.value.sqlstate, str(e.value))
    usable(conn)
    return str(e.value)


REMOTE_SHAPE = [
    "SELECT 1 FROM orders; SELECT 2",
    "DELETE FROM orders",
    "UPDATE orders SET amount = 0",
    "INSERT INTO orders VALUES (1)",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "WITH s AS (SELECT 1), d AS (UPDATE orders SET amount = 1 RETURNING *) SELECT * FROM s",
    "SELECT * INTO copy FROM orders",
    "SELECT * FROM orders FOR UPDATE",
    "SELECT * FROM (SELECT * FROM orders FOR SHARE) o",
    "EXPLAIN SELECT * FROM orders",
    "COPY orders TO STDOUT",
    "SET search_path = x",
]


@pytest.mark.parametrize("sql", REMOTE_SHAPE)
def test_remote_refused_shape(su, sql):
    rrefused(su, sql, NOT_SELECT)


REMOTE_FORBIDDEN = [
    "SELECT * FROM secret",
    "SELECT * FROM other.orders",
    "SELECT * FROM pg_class",
    "SELECT * FROM pg_catalog.pg_class",
    "SELECT * FROM pg_stat_activity",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM control_plane.tenants",
    "SELECT * FROM orders WHERE id IN (SELECT oid::int FROM pg_class)",
    "SELECT * FROM db.public.orders",
    "SELECT * FROM items",  # lives in sales, not in the default schema
    # CTE names are not relations, but only within their scope:
    "SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) x, secret",
    "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
    "WITH a AS (SELECT * FROM secret) SELECT * FROM a",
    "SELECT pg_sleep(1)",
    "SELECT set_config('a.b', 'c', false)",
    "WITH s AS MATERIALIZED (SELECT set_config('a.b', 'c', true)) SELECT * FROM orders, s",
    "SELECT pg_advisory_lock(1)",
    "SELECT query_to_xml('select 1', true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT * FROM ts_stat('select 1')",
    "SELECT ts_rewrite('a'::tsquery, 'select 1')",
    "SELECT database_to_xml(true, true, '')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT * FROM dblink('x', 'select 1') AS t(a int)",
    "SELECT current_setting('x')",
    "SELECT random()",
    "SELECT my_function(id) FROM orders",
    "SELECT public.lower(name) FROM customers",
    "SELECT nextval('s')",
    "SELECT id OPERATOR(public.+) 1 FROM orders",
    "SELECT id <<< 1 FROM orders",
    "SELECT * FROM orders WHERE id <<< ANY (SELECT id FROM customers)",
    "SELECT * FROM orders ORDER BY id USING <<<",
    "SELECT 'orders'::regclass",
    "SELECT id::public.mytype FROM orders",
    "SELECT count(*) FROM orders TABLESAMPLE system_time (10)",
    "SELECT * FROM orders WHERE amount > (SELECT max(pg_backend_pid()) FROM customers)",
    "SELECT (SELECT payload FROM secret LIMIT 1) FROM orders",
    "SELECT * FROM orders o, LATERAL (SELECT * FROM secret) s",
    "SELECT id FROM orders UNION SELECT id FROM secret",
]


@pytest.mark.parametrize("sql", REMOTE_FORBIDDEN)
def test_remote_refused(su, sql):
    rrefused(su, sql, FORBIDDEN)


REMOTE_ACCEPTED = [
    "SELECT id, amount FROM orders",
    "SELECT * FROM public.orders o JOIN sales.items i ON i.order_id = o.id",
    "SELECT c.region, count(*), sum(o.amount) FROM orders o JOIN customers c ON c.id = o.customer_id "
    "GROUP BY c.region HAVING sum(o.amount) > 10 ORDER BY 3 DESC LIMIT 5",
    "SELECT id, rank() OVER (PARTITION BY customer_id ORDER BY amount DESC) FROM orders",
    "WITH t AS (SELECT customer_id, sum(amount) s FROM orders GROUP BY 1) SELECT * FROM t JOIN customers c ON c.id = t.customer_id",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b",
    "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount > 100)",
    "SELECT date_trunc('month', created_at), extract(year FROM created_at), now() - interval '1 day', "
    "created_at AT TIME ZONE 'UTC', current_date FROM orders",
    "SELECT substring(name FROM 1 FOR 2), trim(name), position('a' IN name), upper(name), "
    "coalesce(region, '?'), nullif(region, ''), greatest(1, 2) FROM customers",
    "SELECT * FROM customers WHERE name LIKE 'a%' OR name ILIKE 'B%' OR name SIMILAR TO 'c%' "
    "OR id BETWEEN 1 AND 3 OR region IS NULL",
    "SELECT CASE WHEN amount > 100 THEN 'big' ELSE 'small' END, amount::numeric(10,2), "
    "id::text, '2024-01-01'::date FROM orders",
    "SELECT d, count(*) FROM generate_series(1, 10) d LEFT JOIN orders o ON o.id = d GROUP BY d",
    "SELECT tags->>'a', jsonb_array_length(tags->'b') FROM orders WHERE tags @> '{\"a\": 1}'",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM orders",
    "SELECT count(*) FILTER (WHERE amount > 1) FROM orders",
    "SELECT pg_catalog.lower(name) FROM customers",
    "SELECT count(*) FROM orders TABLESAMPLE BERNOULLI (10)",
    "TABLE orders",
    "SELECT * FROM orders;",
]


@pytest.mark.parametrize("sql", REMOTE_ACCEPTED)
def test_remote_accepted(su, sql):
    assert rguard(su, sql) == "ok"


def test_remote_default_schema(su):
    assert rguard(su, "SELECT * FROM items", schema="sales") == "ok"
    with pytest.raises(errors.InsufficientPrivilege):
        rguard(su, "SELECT * FROM orders", schema="sales")


def test_remote_syntax_error_keeps_sqlstate(su):
    with pytest.raises(psycopg.Error) as e:
        rguard(su, "SELEC 1")
    assert e.value.sqlstate == "42601" and "syntax error" in str(e.value)


# ---------------------------------------------------------------- garbage never crashes

TOKENS = ["SELECT", "FROM", "WHERE", "WITH", "(", ")", ",", ";", "*", "'", '"', "$$", "--", "/*", "*/",
          "INTO", "FOR UPDATE", "UNION", "JOIN", "ON", "1", "x", "orders", "pg_class", "pg_sleep(",
          "::", "[", "]", "::regclass", "LATERAL", "VALUES", "ARRAY[", "E'\\", "U&'", "\\", "\u00e9",
          "\U0001F600", "OPERATOR(", "RECURSIVE", "AS", "TABLE", "DELETE", "RETURNING", "$1", "%", "\t", "\n"]


def garbage(rng):
    kind = rng.random()
    if kind < 0.5:
        return " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 30)))
    if kind < 0.8:
        return "".join(chr(rng.choice([rng.randint(1, 127), rng.randint(128, 0x2FFF)]))
                       for _ in range(rng.randint(0, 200)))
    if kind < 0.85:
        depth = rng.choice([10, 1000, 100000])
        return "SELECT " + "(" * depth + "1" + ")" * rng.choice([depth, depth - 1])
    if kind < 0.9:
        # Deep expression and sub-select nesting: the stack-depth check, not a crash.
        depth = rng.choice([100, 5000, 50000])
        if rng.random() < 0.5:
            return "SELECT " + " + ".join(["1"] * depth)
        return "SELECT " + "(SELECT " * depth + "1" + ")" * depth
    return "SELECT " + ", ".join(["x"] * rng.randint(1, 20000))


def test_garbage_never_crashes_the_backend(su, shop):
    rng = random.Random(20240605)
    pid = su.execute("SELECT pg_backend_pid()").fetchone()[0]
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(400):
        sql = garbage(rng)
        for call in (lambda: guard(su, sql, allowed_of(shop)), lambda: rguard(su, sql)):
            try:
                call()
                outcomes["ok"] += 1
            except psycopg.Error as e:
                assert e.sqlstate and not e.sqlstate.startswith("XX"), (sql[:200], e.sqlstate, str(e)[:300])
                # A clear message, not an accumulation of backtraces.
                assert len(str(e)) < 2000 and len(e.diag.message_detail or "") < 2000
                outcomes["refused"] += 1
            assert su.info.transaction_status == IDLE, sql[:200]
    # Same backend all along: nothing crashed or reset the connection.
    assert su.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("sql", [
    "SELECT " + " + ".join(["1"] * 100000),
    "SELECT " + "(SELECT " * 20000 + "1" + ")" * 20000,
    "SELECT " + "(" * 200000 + "1" + ")" * 200000,
    "SELECT " + "ARRAY[" * 50000 + "1" + "]" * 50000,
], ids=["sum_chain", "nested_selects", "parentheses", "nested_arrays"])
def test_deep_nesting_is_an_error_not_a_crash(su, shop, sql):
    for call in (lambda: guard(su, sql, allowed_of(shop)), lambda: rguard(su, sql)):
        t0 = time.monotonic()
        try:
            call()
        except psycopg.Error as e:
            assert e.sqlstate in ("54001", "42601"), (e.sqlstate, str(e)[:200])
            assert len(str(e)) < 2000 and len(e.diag.message_detail or "") < 2000
        assert time.monotonic() - t0 < 5
        usable(su)
