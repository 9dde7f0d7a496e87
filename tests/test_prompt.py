"""The prompt (docs/llm-and-guard.md): built from the caller's own catalog and examples
only, and inside the token budget whatever the schema's size."""

import psycopg
import pytest

from test_catalog import make_local_connection


@pytest.fixture
def two_catalogs(su, tenants):
    sa, sb = f"pa_{tenants.tag}", f"pb_{tenants.tag}"
    make_local_connection(su, tenants.a, tenants.a_role, sa)
    make_local_connection(su, tenants.b, tenants.b_role, sb)
    su.execute(f"CREATE TABLE {sb}.b_singer_fees (fee numeric)")
    su.execute(f"GRANT SELECT ON {sb}.b_singer_fees TO {tenants.b_trole}")
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        b.execute("SELECT * FROM dbrag.sync_catalog()")
        a.execute("SELECT dbrag.add_example('how many singers from A land', 'SELECT count(*) FROM singer')")
        b.execute("SELECT dbrag.add_example('how many singers in B world', 'SELECT count(*) FROM b_singer_fees')")
        b.execute("SELECT dbrag.add_documentation('singers fees are in euros for B')")
    return tenants, sa, sb


def prompt_text(conn, question):
    p = conn.execute("SELECT dbrag.build_prompt(%s)", (question,)).fetchone()[0]
    return p, "\n".join(m["content"] for m in p["messages"])


def test_prompt_holds_only_own_tables_and_examples(two_catalogs):
    tenants, sa, sb = two_catalogs
    q = "how many singers do we have"
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        pa, ta = prompt_text(a, q)
        pb, tb = prompt_text(b, q)
    assert f"CREATE TABLE {sa}.singer" in ta and sb not in ta
    assert "A land" in ta and "B world" not in ta and "euros" not in ta
    assert f"CREATE TABLE {sb}.singer" in tb and sa not in tb
    assert "B world" in tb and "euros" in tb and "A land" not in tb
    # The prompt names this server's real version.
    with tenants.conn(tenants.a_role) as a:
        version = a.execute("SHOW server_version").fetchone()[0].split()[0]
    assert f"PostgreSQL {version}" in ta and version.startswith("15.")
    assert "Joe Sharp" in ta  # samples
    assert pa["messages"][0]["role"] == "system"
    assert ta.rstrip().endswith("Question: how many singers do we have")


def test_prompt_budget_holds_for_a_huge_schema(su, two_catalogs):
    tenants, sa, _ = two_catalogs
    conn = su.execute("SELECT connection_id FROM control_plane.tenant_databases WHERE tenant_id = %s",
                      (tenants.a,)).fetchone()[0]
    # 5,000 singer-ish tables of 60 columns each.
    su.execute("INSERT INTO control_plane.table_metadata_catalog (tenant_id, connection_id, schema_name, table_name, data_types) "
               "SELECT %s, %s, %s, 'singer_stats_' || g, "
               "(SELECT jsonb_object_agg('metric_' || c, 'numeric') FROM generate_series(1, 60) c) "
               "FROM generate_series(1, 5000) g", (tenants.a, conn, sa))
    with tenants.conn(tenants.a_role) as a:
        for budget in (800, 6000):
            a.execute(f"SET dbrag.prompt_token_budget = {budget}")
            p, text = prompt_text(a, "average singer metric_7 per year")
            assert p["estimated_tokens"] <= budget
            assert len(text) / 4 <= budget
            assert p["tables_included"] >= 1


def test_prompt_argument_errors(two_catalogs):
    tenants, _, _ = two_catalogs
    with tenants.conn(tenants.a_role) as a:
        for q, state in ((None, "22004"), ("", "22023"), ("   ", "22023"), ("x" * 9000, "22023")):
            with pytest.raises(psycopg.Error) as e:
                a.execute("SELECT dbrag.build_prompt(%s)", (q,))
            assert e.value.sqlstate == state
        for args, state in (((None, "SELECT 1"), "22023"), (("q", ""), "22023")):
            with pytest.raises(psycopg.Error) as e:
                a.execute("SELECT dbrag.add_example(%s, %s)", args)
            assert e.value.sqlstate == state
    with tenants.conn(tenants.stranger) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.build_prompt('anything')")
        assert e.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT dbrag.add_example('q', 'SELECT 1')")
        assert e.value.sqlstate == "42501"
