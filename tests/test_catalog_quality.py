"""Search quality: recall@5 and all-gold@5 of the tables each gold query
reads, over the fixture in tests/fixtures/catalog_quality (31 tables, 92
questions), against plain BM25 computed here over the same table texts, in
two modes: the 31 tables alone, and the same 31 in a 100,000-table warehouse
of generated look-alikes drawn from the fixture's own vocabulary."""

import collections
import json
import math
import pathlib

import pytest

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "catalog_quality"
# Measured with the english configuration: 0.960 on 2026-11-30 (IDF ranking;
# 0.964 with ts_rank before it). The floors sit below today's figures so a
# ranking regression fails the suite.
RECALL_AT_5_FLOOR = 0.93
WAREHOUSE_RECALL_AT_5_FLOOR = 0.90
DISTRACTORS = 100_000


@pytest.fixture
def shop(su, tenants):
    su.execute("DROP SCHEMA IF EXISTS shop CASCADE")
    su.execute((FIXTURE / "schema.sql").read_text())
    su.execute(f"GRANT USAGE ON SCHEMA shop TO {tenants.a_trole}")
    su.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {tenants.a_trole}")
    tenants.shop_conn = su.execute(
        "INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
        "VALUES (%s, 'shop', 'local', 'shop', true) RETURNING connection_id", (tenants.a,)).fetchone()[0]
    yield tenants
    # Drops the catalog rows (and the warehouse's 100k) with the connection.
    su.execute("DELETE FROM control_plane.tenant_databases WHERE tenant_id = %s AND connection_id = %s",
               (tenants.a, tenants.shop_conn))
    su.execute("DROP SCHEMA shop CASCADE")


def questions():
    qs = json.loads((FIXTURE / "questions.json").read_text())
    assert len(qs) >= 50
    return qs


def score(rankings, qs):
    """recall@5 (mean fraction of gold tables in the top 5), all-gold@5
    (fraction of questions with every gold table in the top 5), misses."""
    total, complete, misses = 0.0, 0, []
    for q, found in zip(qs, rankings):
        gold = set(q["tables"])
        hit = len(gold & set(found[:5])) / len(gold)
        total += hit
        complete += hit == 1
        if hit < 1:
            misses.append((q["question"], sorted(gold - set(found[:5])), found[:5]))
    return total / len(qs), complete / len(qs), misses


def ours(conn, qs):
    return [[f"{s}.{t}" for s, t in conn.execute(
        "SELECT schema_name, table_name FROM dbrag.search_catalog(%s, 5) LIMIT 5", (q["question"],)).fetchall()]
        for q in qs]


def bm25(su, tenant, connection, qs, k1=1.2, b=0.75):
    """Okapi BM25 over the same table texts (name, columns, comments,
    descriptions, sample values) with the same analyser, written here from
    the textbook formula and independent of the extension's ranking."""
    postings = collections.defaultdict(list)
    lengths = {}
    cur = su.execute(
        "SELECT c.schema_name || '.' || c.table_name, u.lexeme, pg_catalog.cardinality(u.positions) "
        "FROM control_plane.table_metadata_catalog c, unnest(c.search_vector) u "
        "WHERE c.tenant_id = %s AND c.connection_id = %s", (tenant, connection))
    for doc, lexeme, tf in cur:
        postings[lexeme].append((doc, tf))
        lengths[doc] = lengths.get(doc, 0) + tf
    n = len(lengths)
    avgdl = sum(lengths.values()) / n
    out = []
    for q in qs:
        terms = su.execute("SELECT tsvector_to_array(to_tsvector(dbrag._search_config(), %s))",
                           (q["question"],)).fetchone()[0]
        scores = collections.defaultdict(float)
        for term in terms:
            plist = postings.get(term, [])
            if not plist:
                continue
            idf = math.log(1 + (n - len(plist) + 0.5) / (len(plist) + 0.5))
            for doc, tf in plist:
                scores[doc] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[doc] / avgdl))
        out.append([d for d, _ in sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:5]])
    return out


def report(mode, qs, mine, baseline):
    r, g, misses = score(mine, qs)
    br, bg, _ = score(baseline, qs)
    print(f"{mode}: search_catalog recall@5 = {r:.3f}, all-gold@5 = {g:.3f}; "
          f"BM25 recall@5 = {br:.3f}, all-gold@5 = {bg:.3f} ({len(qs)} questions, {len(misses)} with a miss)")
    for m in misses:
        print("  miss:", m)
    return r, g, br, bg


def add_distractors(su, tenant, connection, count):
    """`count` generated tables in schema dw of the same connection, written
    server-side, drawn from the fixture's own words, each kind in its own
    role: a name of one word of the fixture's table names between a warehouse
    prefix and a number (stg_orders_4711), and six columns named with words of
    its column names; like most staging tables, no comments. Deterministic
    (hashes of the row number, no random())."""
    su.execute(r"""
        WITH real AS (
            SELECT * FROM control_plane.table_metadata_catalog WHERE tenant_id = %(t)s AND connection_id = %(c)s
        ), names AS (
            SELECT pg_catalog.array_agg(DISTINCT w ORDER BY w) AS v FROM (
                SELECT regexp_split_to_table(dbrag.identifier_words(r.table_name), '\s+') AS w FROM real r
            ) s WHERE w ~ '^[a-z]{2,}$'
        ), cols AS (
            SELECT pg_catalog.array_agg(DISTINCT w ORDER BY w) AS v FROM (
                SELECT regexp_split_to_table(dbrag.identifier_words(k), '\s+') AS w
                FROM real r, jsonb_object_keys(r.data_types) k
            ) s WHERE w ~ '^[a-z]{2,}$'
        ), pick AS (
            SELECT g,
                   names.v[1 + (hashint8(g * 64) & 2147483647) %% cardinality(names.v)] AS nw,
                   (SELECT array_agg(cols.v[1 + (hashint8(g * 64 + j) & 2147483647) %% cardinality(cols.v)] ORDER BY j)
                    FROM generate_series(1, 14) j) AS iw
            FROM generate_series(1, %(n)s) g, names, cols
        )
        INSERT INTO control_plane.table_metadata_catalog
            (tenant_id, connection_id, schema_name, table_name, data_types)
        SELECT %(t)s, %(c)s, 'dw',
               (ARRAY['stg', 'fact', 'dim', 'tmp', 'raw', 'agg', 'hist', 'bak'])[1 + g %% 8] || '_' || nw || '_' || g,
               jsonb_build_object(iw[3] || '_id', 'integer', iw[4] || '_' || iw[5], 'text',
                                  iw[6] || '_' || iw[7], 'numeric', iw[8] || '_' || iw[9], 'text',
                                  iw[10] || '_' || iw[11], 'timestamptz', iw[12] || '_' || iw[13] || '_' || iw[14], 'text')
        FROM pick
    """, {"t": tenant, "c": connection, "n": count})
    su.execute("ANALYZE control_plane.table_metadata_catalog")


def test_recall_at_5(su, shop):
    qs = questions()
    with shop.conn(shop.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        mine = ours(a, qs)
    baseline = bm25(su, shop.a, shop.shop_conn, qs)
    r, _, br, _ = report("plain (31 tables)", qs, mine, baseline)
    assert r >= RECALL_AT_5_FLOOR
    assert r >= br


def test_recall_at_5_in_a_100k_table_warehouse(su, shop):
    qs = questions()
    with shop.conn(shop.a_role) as a:
        a.execute("SELECT * FROM dbrag.sync_catalog()")
        plain, plain_all, _ = score(ours(a, qs), qs)
        add_distractors(su, shop.a, shop.shop_conn, DISTRACTORS)
        n = a.execute("SELECT count(*) FROM control_plane.table_metadata_catalog").fetchone()[0]
        assert n == DISTRACTORS + 31
        mine = ours(a, qs)
    baseline = bm25(su, shop.a, shop.shop_conn, qs)
    r, _, br, _ = report(f"warehouse (31 + {DISTRACTORS:,} tables)", qs, mine, baseline)
    print(f"plain (31 tables), same run: recall@5 = {plain:.3f}, all-gold@5 = {plain_all:.3f}")
    assert r >= br
    # Measured 2026-11-30: 0.942 against plain 0.960 (BM25 0.384 in the same
    # run); 0.933 before the tables whose names hold no question word got a
    # candidate list of their own (docs/catalog-search.md).
    assert r >= WAREHOUSE_RECALL_AT_5_FLOOR
    # The goal: the warehouse loses at most 0.02 of recall@5 against plain.
    assert r >= plain - 0.02, f"warehouse recall@5 {r:.3f} is more than 0.02 below plain {plain:.3f}"
