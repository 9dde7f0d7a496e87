-- Catalog search (SPEC §5, §9). search_vector weights: table name (A) over
-- column names (B) over comments and descriptions (C) over sample values (D);
-- identifiers are split into words (order_items, OrderItems -> order items).

-- The text search configuration of the catalog (dbrag.search_config).
CREATE FUNCTION dbrag._search_config() RETURNS regconfig
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('dbrag.search_config', true), ''), 'english')::regconfig
$$;

CREATE FUNCTION control_plane.catalog_search_vector() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg regconfig := dbrag._search_config();
    column_words text;
    descriptions text;
    samples text;
BEGIN
    SELECT pg_catalog.string_agg(dbrag.identifier_words(k), ' ')
      INTO column_words FROM pg_catalog.jsonb_object_keys(NEW.data_types) k;
    SELECT pg_catalog.string_agg(e.value #>> '{}', ' ')
      INTO descriptions FROM pg_catalog.jsonb_each(NEW.column_descriptions) e;
    SELECT pg_catalog.string_agg(v #>> '{}', ' ')
      INTO samples
      FROM pg_catalog.jsonb_each(NEW.sample_values) e, pg_catalog.jsonb_array_elements(e.value) v
     WHERE pg_catalog.jsonb_typeof(e.value) = 'array';
    NEW.search_vector :=
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, dbrag.identifier_words(NEW.table_name)), 'A') ||
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, COALESCE(column_words, '')), 'B') ||
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg,
            COALESCE(NEW.table_description, '') || ' ' || COALESCE(descriptions, '')), 'C') ||
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, COALESCE(samples, '')), 'D');
    RETURN NEW;
END
$$;

CREATE TRIGGER table_metadata_catalog_search BEFORE INSERT OR UPDATE
    ON control_plane.table_metadata_catalog
    FOR EACH ROW EXECUTE FUNCTION control_plane.catalog_search_vector();

CREATE FUNCTION control_plane.example_search_vector() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg regconfig := dbrag._search_config();
BEGIN
    NEW.search_vector :=
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, COALESCE(NEW.question, '')), 'A') ||
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, COALESCE(NEW.content, '')), 'B') ||
        pg_catalog.setweight(pg_catalog.to_tsvector(cfg, COALESCE(NEW.sql, '')), 'D');
    RETURN NEW;
END
$$;

CREATE TRIGGER training_examples_search BEFORE INSERT OR UPDATE
    ON control_plane.training_examples
    FOR EACH ROW EXECUTE FUNCTION control_plane.example_search_vector();

-- The lexemes of a question, OR-ed into a query. Lexemes come out of
-- to_tsvector already normalised, so they are quoted as-is.
CREATE FUNCTION dbrag._question_query(question text, OUT terms text[], OUT query tsquery)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t, CASE WHEN pg_catalog.cardinality(t) > 0 THEN
                 (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(x), ' | ') FROM pg_catalog.unnest(t) x)::tsquery
               END
    FROM (SELECT pg_catalog.tsvector_to_array(
                   pg_catalog.to_tsvector(dbrag._search_config(), pg_catalog.left(question, 4000))) AS t) s
$$;

-- dbrag.search_catalog: ranked tables of the tenant's active connection.
-- SECURITY DEFINER so it filters by the tenant in force itself and can use
-- the (tenant_id, search_vector) GIN index: under RLS the planner may not
-- push the non-leakproof @@ into the index scan ahead of the policy (SPEC §9).
-- Ranking is over a bounded candidate set so a question of common words
-- against a 10k-table warehouse costs milliseconds, not a full ranking.
CREATE FUNCTION dbrag.search_catalog(question text, k integer DEFAULT 10)
RETURNS TABLE (schema_name text, table_name text, score real, matched text[], via_join boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
-- With one tenant's rows all sharing the GIN index's leading key, the planner
-- overprices the index against a scan of the whole table; the index is what
-- keeps a 100k-table tenant's search in milliseconds, so it is pinned here.
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    t uuid := dbrag.current_tenant_id();
    conn uuid;
    q record;
BEGIN
    IF question IS NULL THEN
        RAISE EXCEPTION 'question must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF t IS NULL THEN
        RAISE EXCEPTION 'no tenant is in force' USING ERRCODE = '42501',
            HINT = 'call dbrag.set_tenant(token), or connect as a role listed in control_plane.tenant_members';
    END IF;
    SELECT d.connection_id INTO conn FROM control_plane.tenant_databases d
    WHERE d.tenant_id = t AND d.is_active;
    IF conn IS NULL THEN
        RAISE EXCEPTION 'this tenant has no active connection' USING ERRCODE = '55000',
            HINT = 'create one with dbrag.create_connection(...) and call dbrag.activate_connection(id)';
    END IF;
    SELECT * INTO q FROM dbrag._question_query(question);
    IF q.query IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        SELECT c.schema_name, c.table_name, c.search_vector, c.relationships
        FROM control_plane.table_metadata_catalog c
        WHERE c.tenant_id = t AND c.connection_id = conn AND c.search_vector @@ q.query
        LIMIT 2000
    ), scored AS (
        -- The weighted rank, plus how much of the table's own name the
        -- question covers: "singers" should rank singer above singer_in_concert.
        SELECT c.schema_name, c.table_name, c.relationships,
               pg_catalog.ts_rank('{0.05, 0.2, 0.4, 1.0}', c.search_vector, q.query)
                 + (SELECT pg_catalog.count(*) FILTER (WHERE x = ANY (q.terms))::real
                           / GREATEST(pg_catalog.count(*), 1)
                    FROM pg_catalog.unnest(pg_catalog.tsvector_to_array(pg_catalog.to_tsvector(
                         dbrag._search_config(), dbrag.identifier_words(c.table_name)))) x) AS score,
               ARRAY(SELECT x FROM pg_catalog.unnest(pg_catalog.tsvector_to_array(c.search_vector)) x
                     WHERE x = ANY (q.terms) ORDER BY x) AS matched
        FROM candidates c
    ), hits AS MATERIALIZED (
        SELECT * FROM scored s
        ORDER BY s.score DESC, s.table_name
        LIMIT k
    ), neighbours AS (
        -- Tables that join two or more hits (junction tables, bridges).
        SELECT r->>'schema' AS schema_name, r->>'table' AS table_name,
               pg_catalog.min(h.score) AS score
        FROM hits h, pg_catalog.jsonb_array_elements(h.relationships) r
        WHERE NOT EXISTS (SELECT 1 FROM hits h2
                          WHERE h2.schema_name = r->>'schema' AND h2.table_name = r->>'table')
        GROUP BY 1, 2
        HAVING pg_catalog.count(DISTINCT (h.schema_name, h.table_name)) >= 2
    )
    SELECT h.schema_name, h.table_name, h.score::real, h.matched, false FROM hits h
    UNION ALL
    SELECT n.schema_name, n.table_name, (n.score / 2)::real, ARRAY[]::text[], true
    FROM neighbours n
    JOIN control_plane.table_metadata_catalog c
      ON c.tenant_id = t AND c.connection_id = conn
     AND c.schema_name = n.schema_name AND c.table_name = n.table_name
    ORDER BY 5, 3 DESC, 2;
END
$$;
