"""Resource abuse through the question, the model's answer and the
statement it writes (docs/llm-and-guard.md, README.md "Errors"): each ends in a clear ERROR within its
bound (size, depth, deadline, row cap, answer size) and the session goes on;
no backend crashes or hangs past its limit."""

import time

import pytest

from attack_kit import B_SECRET, history, llm_server, plane, refused, sql_answer, still_works  # noqa: F401  (fixtures)


def ask(conn, question="singers please", **kw):
    args = ", ".join(f"{k} => {v}" for k, v in kw.items())
    return conn.execute(f"SELECT * FROM dbrag.ask(%s{', ' + args if args else ''})", (question,)).fetchall()


def ask_fails(conn, model, answers, state, within=5.0, question="singers please"):
    model.reset()  # no answer left over from the case before
    model.script(*answers)
    t0 = time.monotonic()
    e = refused(conn, "SELECT * FROM dbrag.ask(%s)", (question,))
    assert e.sqlstate == state, e
    assert time.monotonic() - t0 < within
    still_works(conn)
    return e


def test_huge_question(plane):
    t = plane.t
    with t.conn(t.a_role) as a:
        calls = len(plane.model.requests())
        for q in ("x" * 8001, "how many singers " * 600_000):
            t0 = time.monotonic()
            e = refused(a, "SELECT * FROM dbrag.ask(%s)", (q,))
            assert e.sqlstate == "22023" and time.monotonic() - t0 < 3
            e = refused(a, "SELECT dbrag.build_prompt(%s)", (q,))
            assert e.sqlstate == "22023"
        assert len(plane.model.requests()) == calls
        still_works(a)


def test_model_answer_of_megabytes(plane):
    t, model = plane.t, plane.model
    with t.conn(t.a_role) as a:
        # A body past the client's limit is refused, not buffered whole.
        ask_fails(a, model, [{"raw_body": "{\"choices\": [" + " " * (6 << 20) + "]}"}], "39000")
        # A well-formed reply whose text is over the answer limit.
        ask_fails(a, model, [{"content": "SELECT 1 -- " + "x" * (300 << 10)}], "39000")
        # A statement of 200 KB, under the limit: one IN list of 40,000 values.
        big = "SELECT name FROM singer WHERE singer_id IN (" + ",".join(str(i) for i in range(40_000)) + ")"
        model.script(sql_answer(big))
        assert len(ask(a)) == 2


def test_deeply_nested_json_from_the_model(plane):
    t, model = plane.t, plane.model
    with t.conn(t.a_role) as a:
        for body in ("[" * 200_000, '{"choices":' * 50_000, '{"a":' * 100 + "1" + "}" * 100):
            ask_fails(a, model, [{"raw_body": body}], "39000")


def test_deeply_nested_expressions_in_generated_sql(plane):
    # The parser, the analyser and the guard's walks each stop with an
    # ERROR; none may overflow the stack or hang.
    t, model = plane.t, plane.model
    with t.conn(t.a_role) as a:
        for sql in ("SELECT " + "(" * 5000 + "1" + ")" * 5000,
                    "SELECT " + "+".join(["1"] * 20_000),
                    "SELECT " + "abs(" * 3000 + "1" + ")" * 3000,
                    "SELECT " + "(SELECT " * 400 + "1" + ")" * 400,
                    "SELECT * FROM singer WHERE " + " OR ".join(f"(age = {i} AND (name = 'x' OR country = 'y'))" for i in range(3000)),
                    "SELECT " + "ARRAY[" * 3000 + "1" + "]" * 3000):
            model.reset()
            model.script(sql_answer(sql), sql_answer(sql))
            t0 = time.monotonic()
            try:
                ask(a)
            except Exception as e:  # a clean refusal, with its SQLSTATE
                assert getattr(e, "sqlstate", None) in ("42601", "54001"), e
            assert time.monotonic() - t0 < 10
            still_works(a)


def test_unbounded_recursion_is_stopped_by_the_deadline(su, plane):
    t, model = plane.t, plane.model
    su.execute(f"ALTER ROLE {t.a_role} SET dbrag.query_timeout_ms = 500")
    with t.conn(t.a_role) as a:
        for sql in ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
                    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r) SELECT max(n) FROM r",
                    "SELECT count(*) FROM generate_series(1, 1000000000000)"):
            e = ask_fails(a, model, [sql_answer(sql)], "57014", within=4)
            assert "500 ms" in str(e)
        assert [h[0] for h in history(a)] == ["timeout"] * 3


def test_row_explosion_against_the_row_cap(su, plane):
    t, model = plane.t, plane.model
    notices = []
    with t.conn(t.a_role) as a:
        a.add_notice_handler(lambda d: notices.append(d.message_primary))
        cross = "SELECT s1.name FROM singer s1, singer s2, singer s3, singer s4, singer s5, singer s6, singer s7, " \
                "singer s8, singer s9, singer s10, singer s11, singer s12, singer s13, singer s14, singer s15"
        model.script(sql_answer(cross))
        assert len(ask(a)) == 1000  # the default cap, of 32,768 rows
        model.script(sql_answer("SELECT g FROM generate_series(1, 100000000) g"))
        assert len(ask(a, max_rows=10)) == 10
        assert sum("max_rows" in n for n in notices) == 2
        for bad in (0, -5, 100_001, 2**31 - 1):
            assert refused(a, "SELECT * FROM dbrag.ask('x', max_rows => %s)", (bad,)).sqlstate == "22023"


def test_wide_rows_against_the_answer_size_limit(su, plane):
    # 64 rows of 4 MB each: far under the row cap, over the 64 MB bound.
    t, model = plane.t, plane.model
    su.execute(f"ALTER ROLE {t.a_role} SET dbrag.query_timeout_ms = 20000")
    wide = "SELECT repeat(s1.name, 500000) AS w FROM singer s1, singer s2, singer s3, singer s4, singer s5, singer s6"
    with t.conn(t.a_role) as a:
        e = ask_fails(a, model, [sql_answer(wide)], "54000", within=20)
        assert "64 MB" in str(e)
        assert history(a)[-1][0] == "error"
        # Just under the bound is fine.
        model.script(sql_answer("SELECT repeat(name, 100000) AS w FROM singer"))
        assert len(ask(a)) == 2


def test_values_serde_cannot_hold(su, plane):
    # Regression: a number beyond an f64 or JSON nested over 128 levels made
    # pgrx's JsonB panic (XX000) in ask() and in sync_catalog's samples.
    t, model = plane.t, plane.model
    deep = "[" * 300 + "]" * 300
    su.execute(f"CREATE TABLE {plane.sa}.odd (id int, big numeric, doc jsonb)")
    su.execute(f"INSERT INTO {plane.sa}.odd VALUES (1, 1e400, %s)", (deep,))
    su.execute(f"INSERT INTO {plane.sa}.odd VALUES (2, 12345678901234567890.123456789, '{{}}')")
    su.execute(f"GRANT SELECT ON {plane.sa}.odd TO {t.a_trole}")
    with t.conn(t.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        model.script(sql_answer("SELECT id, big, doc FROM odd ORDER BY id"))
        rows = [r[0] for r in a.execute("SELECT * FROM dbrag.ask('odd values')")]
        assert len(rows) == 2
        # Returned exactly: no rounding through an f64.
        exact = a.execute("SELECT (j ->> 'big')::numeric = 12345678901234567890.123456789 "
                          "FROM dbrag.ask('odd values') j WHERE (j ->> 'id')::int = 2").fetchone()
        assert rows[1]["big"] is not None and exact == (True,)
        assert a.execute(f"SELECT pg_column_size(doc) > 0 FROM {plane.sa}.odd WHERE id = 1").fetchone()[0]


def test_hung_model_is_bounded_by_its_timeout(su, plane):
    t, model = plane.t, plane.model
    su.execute(f"ALTER ROLE {t.a_role} SET dbrag.llm_timeout_ms = 500")
    with t.conn(t.a_role) as a:
        ask_fails(a, model, [{"hang": True}], "57014", within=3)
        ask_fails(a, model, [{"content": "SELECT 1", "delay_ms": 5000}], "57014", within=3)
        assert [h[0] for h in history(a)] == ["timeout", "timeout"]
