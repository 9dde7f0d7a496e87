"""Metadata catalog (docs/connections-and-keys.md): sync a local schema, search it in plain
English, and keep tenants' catalogs apart."""

import threading

import psycopg
import pytest

from conftest import connect, tenant_role

SCHEMA_SQL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.singer (singer_id int PRIMARY KEY, name text, country text, age int);
CREATE TABLE {s}.stadium (stadium_id int PRIMARY KEY, name text, capacity int, city text);
CREATE TABLE {s}.concert (concert_id int PRIMARY KEY, concert_name text, year int,
                          stadium_id int REFERENCES {s}.stadium);
CREATE TABLE {s}.singer_in_concert (concert_id int REFERENCES {s}.concert,
                                    singer_id int REFERENCES {s}.singer, PRIMARY KEY (concert_id, singer_id));
CREATE TABLE {s}."OrderItems" ("orderId" int, "unitPrice" numeric, quantity int);
CREATE TABLE {s}.accounts (id int PRIMARY KEY, login text, password_hash text, api_token text, ssn text);
COMMENT ON TABLE {s}.accounts IS 'customers who buy from the shop';
INSERT INTO {s}.singer VALUES (1, 'Joe Sharp', 'Netherlands', 52), (2, 'Timbaland', 'United States', 32);
INSERT INTO {s}.stadium VALUES (1, 'Stark''s Park', 10104, 'Kirkcaldy');
INSERT INTO {s}.accounts VALUES (1, 'ann', 'sekrit-hash-value', 'tok-123456', '123-45-6789');
"""


def make_local_connection(su, tenant, role, schema):
    """A schema of tables and an active local connection to it. The grants go
    to the tenant's own role (what pg_dbrag acts as), not to `role`."""
    role = tenant_role(su, tenant)
    su.execute(SCHEMA_SQL.format(s=schema))
    su.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    su.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    return su.execute(
        "INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
        "VALUES (%s, %s, 'local', %s, true) RETURNING connection_id", (tenant, schema, schema)).fetchone()[0]


@pytest.fixture
def catalogs(su, tenants):
    sa, sb = f"cat_a_{tenants.tag}", f"cat_b_{tenants.tag}"
    ca = make_local_connection(su, tenants.a, tenants.a_role, sa)
    cb = make_local_connection(su, tenants.b, tenants.b_role, sb)
    su.execute(f"CREATE TABLE {sb}.b_only_secret_plans (plan text)")
    su.execute(f"GRANT SELECT ON {sb}.b_only_secret_plans TO {tenants.b_trole}")
    return tenants, (sa, ca), (sb, cb)


def sync(conn):
    return conn.execute("SELECT added, changed, removed, unchanged FROM dbrag.sync_catalog()").fetchone()


def test_sync_is_incremental(su, catalogs):
    tenants, (sa, _), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        assert sync(a) == (6, 0, 0, 0)
        assert sync(a) == (0, 0, 0, 6)
        su.execute(f"ALTER TABLE {sa}.stadium ADD COLUMN opened date")
        su.execute(f"DROP TABLE {sa}.\"OrderItems\"")
        assert sync(a) == (0, 1, 1, 4)
        status = su.execute("SELECT status::text FROM control_plane.tenant_databases WHERE schema_name = %s",
                            (sa,)).fetchone()[0]
        assert status == "connected"


def test_catalog_content(catalogs):
    tenants, (sa, _), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        sync(a)
        row = a.execute("SELECT data_types, relationships, sample_values, row_estimate "
                        "FROM control_plane.table_metadata_catalog WHERE table_name = 'concert'").fetchone()
        types, rels, samples, _ = row
        assert types["year"] == "integer"
        assert {"dir": "out", "columns": ["stadium_id"], "schema": sa, "table": "stadium",
                "other_columns": ["stadium_id"]} in rels
        assert any(r["dir"] == "in" and r["table"] == "singer_in_concert" for r in rels)
        singer_samples = a.execute("SELECT sample_values FROM control_plane.table_metadata_catalog "
                                   "WHERE table_name = 'singer'").fetchone()[0]
        assert "Joe Sharp" in singer_samples["name"]
        secrets = a.execute("SELECT sample_values, table_description FROM control_plane.table_metadata_catalog "
                            "WHERE table_name = 'accounts'").fetchone()
        assert set(secrets[0]) == {"id", "login"}
        assert secrets[1] == "customers who buy from the shop"


def test_search_in_plain_english(catalogs):
    tenants, (sa, _), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        sync(a)
        top = a.execute("SELECT table_name, matched FROM dbrag.search_catalog('how many singers do we have', 3)").fetchall()
        assert top[0][0] == "singer" and "singer" in top[0][1]
        assert a.execute("SELECT table_name FROM dbrag.search_catalog('order items unit price')").fetchone()[0] == "OrderItems"
        # A synonym found only in a comment.
        assert a.execute("SELECT table_name FROM dbrag.search_catalog('customers', 1)").fetchone()[0] == "accounts"
        # Two hits joined through a junction table bring it along.
        rows = a.execute("SELECT table_name, via_join FROM dbrag.search_catalog('singer names per concert', 2)").fetchall()
        assert ("singer_in_concert", True) in rows or ("singer_in_concert", False) in rows
        assert a.execute("SELECT count(*) FROM dbrag.search_catalog('the of and')").fetchone()[0] == 0


def test_tenants_never_see_each_others_catalog(catalogs):
    tenants, (sa, ca), (sb, cb) = catalogs
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        sync(a)
        sync(b)
        assert {r[0] for r in a.execute("SELECT DISTINCT schema_name FROM control_plane.table_metadata_catalog")} == {sa}
        assert {r[0] for r in b.execute("SELECT DISTINCT schema_name FROM control_plane.table_metadata_catalog")} == {sb}
        assert a.execute("SELECT count(*) FROM dbrag.search_catalog('secret plans')").fetchone()[0] == 0
        assert b.execute("SELECT table_name FROM dbrag.search_catalog('secret plans', 1)").fetchone()[0] == "b_only_secret_plans"
        # A cannot sync B's connection by id.
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT * FROM dbrag.sync_catalog(%s)", (cb,))
        assert e.value.sqlstate == "42704"


def test_local_schema_needs_usage(su, tenants):
    schema = f"hidden_{tenants.tag}"
    su.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int)")
    su.execute("INSERT INTO control_plane.tenant_databases (tenant_id, name, kind, schema_name, is_active) "
               "VALUES (%s, 'hidden', 'local', %s, true)", (tenants.a, schema))
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(psycopg.Error) as e:
            sync(a)
        assert e.value.sqlstate == "42501"


def test_search_errors(catalogs):
    tenants, _, _ = catalogs
    with tenants.conn(tenants.stranger) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM dbrag.search_catalog('x')")
        assert e.value.sqlstate == "42501"
    with tenants.conn(tenants.a_role) as a:
        sync(a)
        for sql, state in (("SELECT * FROM dbrag.search_catalog(NULL)", "22004"),
                           ("SELECT * FROM dbrag.search_catalog('x', 0)", "22023"),
                           ("SELECT * FROM dbrag.search_catalog('x', NULL)", "22023")):
            with pytest.raises(psycopg.Error) as e:
                a.execute(sql)
            assert e.value.sqlstate == state
        # A huge question is bounded, not an error.
        assert a.execute("SELECT count(*) FROM dbrag.search_catalog(repeat('singer ', 200000))").fetchone()[0] >= 1


def test_search_uses_tenant_first_gin_index(su, catalogs):
    tenants, (sa, ca), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        sync(a)
    # A warehouse-sized catalog for tenant A: 20k more tables.
    su.execute("INSERT INTO control_plane.table_metadata_catalog (tenant_id, connection_id, schema_name, table_name, data_types) "
               "SELECT %s, %s, %s, 'generated_table_' || g, jsonb_build_object('col_' || (g %% 97), 'int') "
               "FROM generate_series(1, 20000) g", (tenants.a, ca, sa))
    su.execute("ANALYZE control_plane.table_metadata_catalog")
    su.execute("LOAD 'auto_explain'")
    su.execute("SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; "
               "SET auto_explain.log_level = notice")
    notices = []
    su.add_notice_handler(lambda d: notices.append(d.message_primary))
    su.execute("SELECT dbrag.set_tenant(%s::uuid)", (tenants.a,))
    top = su.execute("SELECT table_name FROM dbrag.search_catalog('singer country', 1)").fetchone()[0]
    assert top == "singer"
    plans = "\n".join(notices)
    open("/tmp/search_plans.txt", "w").write(plans)
    assert "table_metadata_catalog_search_idx" in plans, plans[-3000:]


def test_remote_postgres_catalog(database, tenants):
    from remote_fixture import remote_conninfo, setup_remote
    setup_remote()
    with tenants.conn(tenants.b_role) as b, tenants.conn(tenants.a_role) as a:
        cid = b.execute("SELECT dbrag.create_connection('remote shop', 'postgres', %s)",
                        (remote_conninfo(),)).fetchone()[0]
        b.execute("SELECT dbrag.activate_connection(%s)", (cid,))
        added = b.execute("SELECT added FROM dbrag.sync_catalog()").fetchone()[0]
        assert added == 4  # customers, orders, order_items, hidden_payroll (listed, not sampled)
        assert b.execute("SELECT * FROM dbrag.sync_catalog()").fetchone() == (0, 0, 0, 4)
        row = b.execute("SELECT sample_values, relationships FROM control_plane.table_metadata_catalog "
                        "WHERE connection_id = %s AND table_name = 'customers'", (cid,)).fetchone()
        assert "Ada" in row[0]["name"]
        assert any(r["dir"] == "in" and r["table"] == "orders" for r in row[1])
        hidden = b.execute("SELECT sample_values FROM control_plane.table_metadata_catalog "
                           "WHERE connection_id = %s AND table_name = 'hidden_payroll'", (cid,)).fetchone()[0]
        assert hidden == {}
        assert b.execute("SELECT table_name FROM dbrag.search_catalog('customers by region', 1)").fetchone()[0] == "customers"
        assert a.execute("SELECT count(*) FROM control_plane.table_metadata_catalog WHERE connection_id = %s",
                         (cid,)).fetchone()[0] == 0


# Term statistics for the BM25-style ranking: kept by the catalog's triggers,
# always equal to a count over the catalog itself.
STATS_DRIFT = """
WITH truth AS (
    SELECT c.tenant_id, c.connection_id, l AS lexeme, count(*) AS df
    FROM control_plane.table_metadata_catalog c, unnest(tsvector_to_array(c.search_vector)) l
    WHERE c.tenant_id = %(t)s GROUP BY 1, 2, 3
), kept AS (
    SELECT tenant_id, connection_id, lexeme, doc_freq AS df FROM control_plane.catalog_term_stats
    WHERE tenant_id = %(t)s
)
SELECT (SELECT count(*) FROM (SELECT * FROM truth EXCEPT SELECT * FROM kept) x)
     + (SELECT count(*) FROM (SELECT * FROM kept EXCEPT SELECT * FROM truth) y)
     + (SELECT count(*) FROM (
           SELECT c.connection_id, count(*), sum(length(c.search_vector))
           FROM control_plane.table_metadata_catalog c WHERE c.tenant_id = %(t)s GROUP BY 1
           EXCEPT SELECT connection_id, doc_count, total_length FROM control_plane.catalog_doc_stats
           WHERE tenant_id = %(t)s AND doc_count > 0) z)
"""


def stats_drift(su, tenant):
    return su.execute(STATS_DRIFT, {"t": tenant}).fetchone()[0]


def test_term_statistics_follow_the_catalog(su, catalogs):
    tenants, (sa, ca), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        sync(a)
        assert su.execute("SELECT doc_count FROM control_plane.catalog_doc_stats WHERE tenant_id = %s",
                          (tenants.a,)).fetchone()[0] == 6
        assert su.execute("SELECT doc_freq FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'singer'", (tenants.a,)).fetchone()[0] == 2
        assert stats_drift(su, tenants.a) == 0
        # The shortest name holding a word: "singer" (one word), not singer_in_concert.
        assert su.execute("SELECT min_name_words FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'singer'", (tenants.a,)).fetchone()[0] == 1
        assert su.execute("SELECT min_name_words FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'concert'", (tenants.a,)).fetchone()[0] == 1
        assert su.execute("SELECT min_name_words FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'age'", (tenants.a,)).fetchone()[0] is None
        su.execute(f"ALTER TABLE {sa}.stadium ADD COLUMN opened date")
        su.execute(f"DROP TABLE {sa}.singer_in_concert")
        su.execute(f"COMMENT ON TABLE {sa}.concert IS 'gigs and shows'")
        sync(a)
        assert stats_drift(su, tenants.a) == 0
        assert su.execute("SELECT doc_freq FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'singer'", (tenants.a,)).fetchone()[0] == 1
        # A lexeme no table holds any more leaves no row behind.
        su.execute(f"DROP TABLE {sa}.\"OrderItems\"")
        sync(a)
        assert su.execute("SELECT count(*) FROM control_plane.catalog_term_stats "
                          "WHERE tenant_id = %s AND lexeme = 'quantiti'", (tenants.a,)).fetchone()[0] == 0
        assert stats_drift(su, tenants.a) == 0
    # Deleting the connection takes its statistics along.
    su.execute("DELETE FROM control_plane.tenant_databases WHERE connection_id = %s", (ca,))
    assert su.execute("SELECT count(*) FROM control_plane.catalog_term_stats WHERE tenant_id = %s",
                      (tenants.a,)).fetchone()[0] == 0


def test_term_statistics_are_tenant_scoped(su, catalogs):
    tenants, _, _ = catalogs
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        sync(a)
        sync(b)
        for conn, own in ((a, tenants.a), (b, tenants.b)):
            # Readable only through RLS, and only the reader's own rows.
            rows = conn.execute("SELECT DISTINCT tenant_id FROM control_plane.catalog_term_stats").fetchall()
            assert rows == [(own,)]
            # Nobody writes them but the catalog's triggers.
            with pytest.raises(psycopg.Error) as e:
                conn.execute("UPDATE control_plane.catalog_term_stats SET doc_freq = 1000000")
            assert e.value.sqlstate == "42501"
            with pytest.raises(psycopg.Error) as e:
                conn.execute("INSERT INTO control_plane.catalog_doc_stats (tenant_id, connection_id, doc_count) "
                             "SELECT tenant_id, connection_id, 1 FROM control_plane.catalog_doc_stats")
            assert e.value.sqlstate == "42501"
    with tenants.conn(tenants.app_role) as app:
        app.execute("SELECT dbrag.set_tenant(%s)", (tenants.b,))
        assert {r[0] for r in app.execute("SELECT DISTINCT tenant_id FROM control_plane.catalog_term_stats")} == {tenants.b}


def test_concurrent_catalog_writers_keep_exact_statistics(su, catalogs):
    """Eight sessions insert, update and delete catalog rows of one
    connection at once; the counters end equal to a recount."""
    tenants, (_, ca), _ = catalogs
    errors = []

    def writer(w):
        try:
            with connect() as c:
                for i in range(15):
                    with c.transaction():
                        c.execute("INSERT INTO control_plane.table_metadata_catalog "
                                  "(tenant_id, connection_id, schema_name, table_name, data_types) "
                                  "VALUES (%s, %s, 'conc', %s, %s)",
                                  (tenants.a, ca, f"w{w}_orders_{i}", f'{{"amount_{i % 4}": "numeric"}}'))
                        if i % 3 == 0:
                            c.execute("UPDATE control_plane.table_metadata_catalog SET table_description = %s "
                                      "WHERE tenant_id = %s AND connection_id = %s AND table_name = %s",
                                      (f"refunds of writer {w}", tenants.a, ca, f"w{w}_orders_{i}"))
                        if i % 5 == 4:
                            c.execute("DELETE FROM control_plane.table_metadata_catalog "
                                      "WHERE tenant_id = %s AND connection_id = %s AND table_name = %s",
                                      (tenants.a, ca, f"w{w}_orders_{i - 1}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert stats_drift(su, tenants.a) == 0
    assert su.execute("SELECT doc_freq FROM control_plane.catalog_term_stats WHERE tenant_id = %s "
                      "AND lexeme = 'order'", (tenants.a,)).fetchone()[0] == 8 * 12


def test_best_table_is_never_cut(su, catalogs):
    """5,000 look-alikes that share the question's common words, written
    before the one table whose name the question spells: the old candidate
    set (2,000 rows in index order) cut it; rarest-terms-first keeps it."""
    tenants, (_, ca), _ = catalogs
    with tenants.conn(tenants.a_role) as a:
        sync(a)
        su.execute("""
            INSERT INTO control_plane.table_metadata_catalog
                (tenant_id, connection_id, schema_name, table_name, data_types, table_description)
            SELECT %s, %s, 'dw', 'fact_' || g, jsonb_build_object('region', 'text', 'sales', 'numeric',
                   'month', 'date', 'customer_id', 'integer'), 'monthly sales per region'
            FROM generate_series(1, 5000) g""", (tenants.a, ca))
        su.execute("""
            INSERT INTO control_plane.table_metadata_catalog
                (tenant_id, connection_id, schema_name, table_name, data_types)
            VALUES (%s, %s, 'dw', 'regional_sales_forecast', '{"quarter": "text", "forecast": "numeric"}')""",
                   (tenants.a, ca))
        rows = a.execute("SELECT table_name, matched FROM dbrag.search_catalog("
                         "'monthly sales forecast per region', 5)").fetchall()
        assert rows[0][0] == "regional_sales_forecast", rows
        assert "forecast" in rows[0][1]
        # A question of common words only still ranks every table that holds
        # them: the ones that hold more of them in their names come first.
        su.execute("""
            INSERT INTO control_plane.table_metadata_catalog
                (tenant_id, connection_id, schema_name, table_name, data_types)
            VALUES (%s, %s, 'dw', 'region_sales', '{"total": "numeric"}')""", (tenants.a, ca))
        assert a.execute("SELECT table_name FROM dbrag.search_catalog('sales by region', 1)").fetchone()[0] \
            == "region_sales"
