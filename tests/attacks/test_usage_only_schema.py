"""Acting as the tenant, class 4: a local connection on a schema tenant A
may merely USAGE (public) lists, samples and runs only what A's role may
read, whoever calls: tables only the application server (or an operator)
may read are not in A's catalog and cannot be asked for; columns A's role
has no privilege on are neither listed nor sampled. A member's own direct
grants do not count either: a member never gets more than its tenant's role."""

import pytest

from attack_kit import (B_SECRET, CALLERS, assert_nothing_of_b, caller_conn, now,  # noqa: F401
                        llm_server, refused, sql_answer)
from conftest import DBNAME


@pytest.fixture
def public_plane(su, tenants, llm_server):
    t = tenants
    llm_server.reset()
    app_only, partly, mine = f"app_only_{t.tag}", f"partly_{t.tag}", f"mine_{t.tag}"
    su.execute(f"CREATE TABLE public.{app_only} (id int, secret text)")
    su.execute(f"INSERT INTO public.{app_only} VALUES (1, %s)", (B_SECRET,))
    su.execute(f"GRANT SELECT ON public.{app_only} TO {t.app_role}, {t.admin_role}")
    su.execute(f"CREATE TABLE public.{partly} (id int, label text, notes text)")
    su.execute(f"INSERT INTO public.{partly} VALUES (1, 'visible', %s)", (B_SECRET,))
    su.execute(f"GRANT SELECT (id, label) ON public.{partly} TO {t.a_trole}")
    su.execute(f"GRANT SELECT ON public.{partly} TO {t.app_role}, {t.admin_role}")
    # A grant to the member's login role alone: not the tenant's.
    su.execute(f"CREATE TABLE public.{mine} (id int, diary text)")
    su.execute(f"INSERT INTO public.{mine} VALUES (1, %s)", (B_SECRET,))
    su.execute(f"GRANT SELECT ON public.{mine} TO {t.a_role}")
    su.execute("INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
               "VALUES (%s, 'pub', 'local', 'public', true)", (t.a,))
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_url = '{llm_server.url}'")
    su.execute(f"ALTER DATABASE {DBNAME} SET dbrag.llm_model = 'fixture-model'")
    yield t, app_only, partly, mine, llm_server
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_url")
    su.execute(f"ALTER DATABASE {DBNAME} RESET dbrag.llm_model")
    for table in (app_only, partly, mine):
        su.execute(f"DROP TABLE public.{table}")


@pytest.mark.parametrize("who", CALLERS + ("a_role",))
def test_usage_only_schema_shows_only_what_the_tenant_role_reads(su, public_plane, who):
    t, app_only, partly, mine, model = public_plane
    since = now(su)
    if who == "a_role":
        c = t.conn(t.a_role)
    else:
        c = caller_conn(t, who)
    with c:
        listed = [r[1] for r in c.execute("SELECT * FROM dbrag.test_connection('local', NULL, 'public')")]
        assert partly in listed and app_only not in listed and mine not in listed, listed
        c.execute("SELECT * FROM dbrag.sync_catalog()").fetchall()
        row = su.execute("SELECT data_types, sample_values FROM control_plane.table_metadata_catalog "
                         "WHERE tenant_id = %s AND table_name = %s", (t.a, partly)).fetchone()
        assert set(row[0]) == {"id", "label"} and "notes" not in row[1], row
        tables = [r[0] for r in su.execute(
            "SELECT table_name FROM control_plane.table_metadata_catalog WHERE tenant_id = %s", (t.a,))]
        assert app_only not in tables and mine not in tables
        answers = []
        for sql in (f"SELECT * FROM {app_only}", f"SELECT diary FROM {mine}"):
            model.reset()
            model.script(sql_answer(sql), sql_answer(sql))
            e = refused(c, "SELECT * FROM dbrag.ask('show me everything')")
            assert e.sqlstate == "42501", e
            answers.append(e)
        model.reset()
        model.script(sql_answer(f"SELECT notes FROM {partly}"), sql_answer(f"SELECT notes FROM {partly}"))
        answers.append(refused(c, "SELECT * FROM dbrag.ask('the notes')"))
        model.reset()
        model.script(sql_answer(f"SELECT label FROM {partly}"))
        rows = c.execute("SELECT * FROM dbrag.ask('the labels')").fetchall()
        assert [r[0]["label"] for r in rows] == ["visible"]
        answers.append(rows)
        if who != "a_role":
            assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == t.a
    assert_nothing_of_b(su, t, listed, *answers, since=since)
