"""Search quality: recall@5 of the tables each gold query reads, over the
fixture in tests/fixtures/catalog_quality (31 tables, 92 questions)."""

import json
import pathlib

import pytest

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "catalog_quality"
# Measured 2026-11-25: 0.964 with the english configuration (7 of 92 questions
# miss one gold table, all of them a join partner). The floor sits just
# below it so a ranking regression fails the suite.
RECALL_AT_5_FLOOR = 0.93


@pytest.fixture
def shop(su, tenants):
    su.execute("DROP SCHEMA IF EXISTS shop CASCADE")
    su.execute((FIXTURE / "schema.sql").read_text())
    su.execute(f"GRANT USAGE ON SCHEMA shop TO {tenants.a_trole}")
    su.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {tenants.a_trole}")
    su.execute("INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
               "VALUES (%s, 'shop', 'local', 'shop', true)", (tenants.a,))
    yield tenants
    su.execute("DROP SCHEMA shop CASCADE")


def test_recall_at_5(shop):
    questions = json.loads((FIXTURE / "questions.json").read_text())
    assert len(questions) >= 50
    with shop.conn(shop.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        total, misses = 0.0, []
        for q in questions:
            found = [f"{s}.{t}" for s, t in a.execute(
                "SELECT schema_name, table_name FROM dbrag.search_catalog(%s, 5) LIMIT 5",
                (q["question"],)).fetchall()]
            gold = set(q["tables"])
            hit = len(gold & set(found)) / len(gold)
            total += hit
            if hit < 1:
                misses.append((q["question"], sorted(gold - set(found)), found))
        recall = total / len(questions)
    print(f"recall@5 = {recall:.3f} over {len(questions)} questions; {len(misses)} with a miss")
    for m in misses:
        print("  miss:", m)
    assert recall >= RECALL_AT_5_FLOOR
