-- Catalog search (docs/catalog-search.md). search_vector weights: table name (A) over
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

-- Term statistics for BM25-style ranking: per tenant and connection, how
-- many catalog tables hold each lexeme (document frequency), how many
-- tables there are and their total length in lexemes. Kept current by the
-- statement-level triggers below, so a question never scans the catalog to
-- learn how rare its words are. Tenant-first keys; the triggers lock the
-- connection's totals row before any lexeme row, so concurrent syncs of one
-- connection queue up instead of deadlocking.
CREATE TABLE control_plane.catalog_doc_stats (
    tenant_id     uuid NOT NULL,
    connection_id uuid NOT NULL,
    doc_count     bigint NOT NULL DEFAULT 0,
    total_length  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, connection_id),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
CREATE TABLE control_plane.catalog_term_stats (
    tenant_id     uuid NOT NULL,
    connection_id uuid NOT NULL,
    lexeme        text NOT NULL,
    doc_freq      bigint NOT NULL,
    -- The fewest words of a table name holding the lexeme (NULL: in no
    -- name). Never raised when tables leave, so it stays a lower bound:
    -- what the search's stopping rule needs.
    min_name_words integer,
    PRIMARY KEY (tenant_id, connection_id, lexeme),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
SELECT dbrag._tenant_policies(t, 'tenant_id', true)
FROM unnest(ARRAY['control_plane.catalog_doc_stats', 'control_plane.catalog_term_stats']::regclass[]) AS t;

-- Apply one statement's changes: +1 per lexeme of each new search vector,
-- -1 per lexeme of each old one. SECURITY DEFINER so the statistics need no
-- grant: the rows it reads are the ones the catalog's own policies let the
-- statement write. Rows that fall to zero are removed.
CREATE FUNCTION control_plane._catalog_stats_apply(added tsvector[], a_tenant uuid[], a_conn uuid[],
                                                  removed tsvector[], r_tenant uuid[], r_conn uuid[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone_t uuid[];
    gone_c uuid[];
    gone_l text[];
    live_c uuid[];
BEGIN
    -- Connections that still exist (deleting one cascades to its catalog
    -- rows, whose statistics go with it). A statement of its own: on Citus
    -- the connections are distributed and the statistics are not.
    SELECT pg_catalog.array_agg(x.connection_id) INTO live_c
    FROM control_plane.tenant_databases x
    WHERE x.connection_id = ANY (a_conn || r_conn);
    live_c := COALESCE(live_c, '{}');
    -- Totals first (lock order: the connection's row, then lexemes in order).
    INSERT INTO control_plane.catalog_doc_stats AS s (tenant_id, connection_id, doc_count, total_length)
    SELECT d.tenant_id, d.connection_id, pg_catalog.sum(d.sign), pg_catalog.sum(d.sign * d.len)
    FROM (SELECT a.t AS tenant_id, a.c AS connection_id, 1 AS sign,
                 pg_catalog.length(COALESCE(a.v, ''::tsvector)) AS len
          FROM ROWS FROM (pg_catalog.unnest(added), pg_catalog.unnest(a_tenant), pg_catalog.unnest(a_conn)) a(v, t, c)
          UNION ALL
          SELECT r.t, r.c, -1, pg_catalog.length(COALESCE(r.v, ''::tsvector))
          FROM ROWS FROM (pg_catalog.unnest(removed), pg_catalog.unnest(r_tenant), pg_catalog.unnest(r_conn)) r(v, t, c)) d
    WHERE d.connection_id = ANY (live_c)
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (tenant_id, connection_id) DO UPDATE
        SET doc_count = s.doc_count + EXCLUDED.doc_count,
            total_length = s.total_length + EXCLUDED.total_length;
    WITH up AS (
        INSERT INTO control_plane.catalog_term_stats AS s (tenant_id, connection_id, lexeme, doc_freq, min_name_words)
        SELECT d.tenant_id, d.connection_id, d.lexeme, pg_catalog.sum(d.sign), pg_catalog.min(d.name_words)
        FROM (SELECT a.t AS tenant_id, a.c AS connection_id, l.lexeme, 1 AS sign,
                     CASE WHEN 'A' = ANY (l.weights)
                          THEN pg_catalog.length(pg_catalog.ts_filter(a.v, '{a}')) END AS name_words
              FROM ROWS FROM (pg_catalog.unnest(added), pg_catalog.unnest(a_tenant), pg_catalog.unnest(a_conn)) a(v, t, c),
                   pg_catalog.unnest(COALESCE(a.v, ''::tsvector)) l
              UNION ALL
              SELECT r.t, r.c, l, -1, NULL
              FROM ROWS FROM (pg_catalog.unnest(removed), pg_catalog.unnest(r_tenant), pg_catalog.unnest(r_conn)) r(v, t, c),
                   pg_catalog.unnest(pg_catalog.tsvector_to_array(COALESCE(r.v, ''::tsvector))) l) d
        WHERE d.connection_id = ANY (live_c)
        GROUP BY 1, 2, 3
        HAVING pg_catalog.sum(d.sign) <> 0 OR pg_catalog.min(d.name_words) IS NOT NULL
        ORDER BY 1, 2, 3
        ON CONFLICT (tenant_id, connection_id, lexeme) DO UPDATE
            SET doc_freq = s.doc_freq + EXCLUDED.doc_freq,
                min_name_words = LEAST(s.min_name_words, EXCLUDED.min_name_words)
        RETURNING s.tenant_id, s.connection_id, s.lexeme, s.doc_freq
    )
    SELECT pg_catalog.array_agg(up.tenant_id), pg_catalog.array_agg(up.connection_id), pg_catalog.array_agg(up.lexeme)
      INTO gone_t, gone_c, gone_l
      FROM up WHERE up.doc_freq <= 0;
    -- Lexemes no table holds any more.
    IF gone_l IS NOT NULL THEN
        DELETE FROM control_plane.catalog_term_stats s
        USING ROWS FROM (pg_catalog.unnest(gone_t), pg_catalog.unnest(gone_c), pg_catalog.unnest(gone_l)) g(t, c, l)
        WHERE s.tenant_id = g.t AND s.connection_id = g.c AND s.lexeme = g.l AND s.doc_freq <= 0;
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION control_plane._catalog_stats_apply(tsvector[], uuid[], uuid[], tsvector[], uuid[], uuid[]) FROM PUBLIC;

CREATE FUNCTION control_plane.catalog_stats_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    av tsvector[]; at uuid[]; ac uuid[];
    rv tsvector[]; rt uuid[]; rc uuid[];
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT pg_catalog.array_agg(n.search_vector), pg_catalog.array_agg(n.tenant_id), pg_catalog.array_agg(n.connection_id)
          INTO av, at, ac FROM new_rows n;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT pg_catalog.array_agg(o.search_vector), pg_catalog.array_agg(o.tenant_id), pg_catalog.array_agg(o.connection_id)
          INTO rv, rt, rc FROM old_rows o;
    END IF;
    IF av IS NOT NULL OR rv IS NOT NULL THEN
        PERFORM control_plane._catalog_stats_apply(COALESCE(av, '{}'), COALESCE(at, '{}'), COALESCE(ac, '{}'),
                                                   COALESCE(rv, '{}'), COALESCE(rt, '{}'), COALESCE(rc, '{}'));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER table_metadata_catalog_stats_ins AFTER INSERT ON control_plane.table_metadata_catalog
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
CREATE TRIGGER table_metadata_catalog_stats_upd AFTER UPDATE ON control_plane.table_metadata_catalog
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
CREATE TRIGGER table_metadata_catalog_stats_del AFTER DELETE ON control_plane.table_metadata_catalog
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
-- TRUNCATE empties the statistics with the catalog.
CREATE FUNCTION control_plane.catalog_stats_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM control_plane.catalog_term_stats;
    DELETE FROM control_plane.catalog_doc_stats;
    RETURN NULL;
END
$$;
CREATE TRIGGER table_metadata_catalog_stats_truncate AFTER TRUNCATE ON control_plane.table_metadata_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_truncate();
-- Not in pg_dump's extension data: restoring the catalog rebuilds them.

-- dbrag.search_catalog: ranked tables of the tenant's active connection.
-- SECURITY DEFINER so it filters by the tenant in force itself and can use
-- the (tenant_id, search_vector) GIN index: under RLS the planner may not
-- push the non-leakproof @@ into the index scan ahead of the policy.
--
-- Score of a table for the question's lexemes t (BM25-like, docs/catalog-search.md):
--   sum over t of idf(t) * w(t)  +  name_bonus * (question words in the table's name / words in its name)
-- idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) from control_plane.catalog_term_stats;
-- w(t) = 1 when t is in the table's name, else the weight of the best field
-- holding it (columns, comments, samples) times a length normalisation <= 1.
-- So a table that holds only the terms of a set S scores at most
-- sum(idf(S)) + name_bonus: candidates are taken rarest term first, every
-- table of a term at once, until the k-th best score so far reaches the bound
-- of the terms not yet taken (MaxScore). No table that could enter the top k
-- is ever cut; a question of common words costs the rows of the terms it needs.
CREATE FUNCTION dbrag.search_catalog(question text, k integer DEFAULT 10)
RETURNS TABLE (schema_name text, table_name text, score real, matched text[], via_join boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
-- With one tenant's rows all sharing the GIN index's leading key, the planner
-- overprices the index against a scan of the whole table; the index is what
-- keeps a 100k-table tenant's search in milliseconds, so it is pinned here.
-- Custom plans only: after five calls PL/pgSQL would try a generic plan,
-- which cannot know that one tenant owns 100k rows and the next 100 (a
-- generic plan made calls 20x slower from the sixth on in bench/catalog.sh).
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    -- Field weights (columns, comments, samples; a name word weighs
    -- 1 + name_bonus / words in the name), tuned on the catalog-quality
    -- fixture in both of its modes, and how many rows one batch of rare
    -- terms may fetch. No length normalisation: a wide table is not less
    -- about a word than a narrow one.
    w_b CONSTANT float8 := 0.3;
    w_c CONSTANT float8 := 0.7;
    w_d CONSTANT float8 := 0.6;
    name_bonus CONSTANT float8 := 2.5;
    batch_rows CONSTANT bigint := 2000;
    -- The first stage keeps the best m = 4k; look-alikes are then moved
    -- behind tables that add other question words (see below).
    m integer := LEAST(4 * k, 1000);
    t uuid := dbrag.current_tenant_id();
    conn uuid;
    terms text[];
    n_docs float8;
    lex text[];
    df bigint[];
    mnw integer[];
    ub float8[];
    idf float8[];
    q_any tsquery[];
    q_a tsquery[];
    q_b tsquery[];
    q_c tsquery[];
    n_terms integer;
    score_sql text := '0';
    scan_sql text;
    merge_sql text;
    done boolean[];
    top_s text[] := '{}';
    top_t text[] := '{}';
    top_sc float8[] := '{}';
    q_named tsquery;
    nn_s text[] := '{}';
    nn_t text[] := '{}';
    nn_sc float8[] := '{}';
    batch tsquery;
    batch_df bigint;
    theta float8;
    bound float8;
    i integer;
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
    SELECT s.doc_count INTO n_docs
      FROM control_plane.catalog_doc_stats s WHERE s.tenant_id = t AND s.connection_id = conn;
    IF COALESCE(n_docs, 0) <= 0 THEN
        RETURN;
    END IF;
    terms := pg_catalog.tsvector_to_array(pg_catalog.to_tsvector(dbrag._search_config(), pg_catalog.left(question, 4000)));
    -- The question's lexemes the catalog holds, rarest first; at most 64
    -- (a longer question keeps its 64 rarest words).
    SELECT pg_catalog.array_agg(x.lexeme ORDER BY x.doc_freq, x.lexeme),
           pg_catalog.array_agg(x.doc_freq ORDER BY x.doc_freq, x.lexeme),
           pg_catalog.array_agg(x.min_name_words ORDER BY x.doc_freq, x.lexeme)
      INTO lex, df, mnw
      FROM (SELECT s.lexeme, s.doc_freq, s.min_name_words
            FROM (SELECT DISTINCT u.l FROM pg_catalog.unnest(terms) u(l)) q
            JOIN control_plane.catalog_term_stats s
              ON s.tenant_id = t AND s.connection_id = conn AND s.lexeme = q.l
            WHERE s.doc_freq > 0
            ORDER BY s.doc_freq, s.lexeme LIMIT 64) x;
    IF lex IS NULL THEN
        RETURN;
    END IF;
    n_terms := pg_catalog.cardinality(lex);
    idf := ARRAY(SELECT pg_catalog.ln(1 + (n_docs - LEAST(d, n_docs) + 0.5) / (d + 0.5))
                 FROM pg_catalog.unnest(df) WITH ORDINALITY u(d, o) ORDER BY o);
    -- The most a term can add to any table's score.
    ub := ARRAY(SELECT idf[o] * CASE WHEN mnw[o] IS NULL THEN GREATEST(w_b, w_c, w_d)
                                     ELSE 1 + name_bonus / GREATEST(mnw[o], 1) END
                FROM pg_catalog.generate_subscripts(lex, 1) o ORDER BY o);
    q_any := ARRAY(SELECT pg_catalog.quote_literal(l)::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_a := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':A')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_b := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':B')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_c := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':C')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    -- Any question word in a table's name.
    q_named := (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(l) || ':A', ' | ') FROM pg_catalog.unnest(lex) l)::tsquery;
    -- The score as one flat expression (no per-row sub-select); only
    -- subscripts are spliced in, every value is a bound parameter.
    FOR i IN 1..n_terms LOOP
        score_sql := score_sql || pg_catalog.format(
            ' + $1[%1$s] * CASE WHEN NOT c.search_vector @@ $2[%1$s] THEN 0'
            ' WHEN c.search_vector @@ $3[%1$s] THEN 1 + %5$s / GREATEST(1,'
            ' pg_catalog.length(pg_catalog.ts_filter(c.search_vector, ''{a}'')))'
            ' WHEN c.search_vector @@ $4[%1$s] THEN %2$s'
            ' WHEN c.search_vector @@ $5[%1$s] THEN %3$s ELSE %4$s END',
            i, w_b, w_c, w_d, name_bonus);
    END LOOP;
    -- One batch: score the tables matching $9 (at most $11 of them when $11
    -- is not NULL) and merge them into two lists of the best m so far: all
    -- tables (its m-th score is the MaxScore bar), and the tables whose
    -- names hold no question word. A warehouse's thousand copies of one
    -- name (stg_orders_1, fact_orders_2, ... for a question about orders)
    -- can fill the first list; the second keeps the differently named table
    -- the question also needs (order_items, whose columns hold its words).
    -- When all the question's tables fit in one batch, the first list alone
    -- (cheaper for the many small tenants; the second stays empty).
    -- A list of the best m so far ($10) merged with new rows: the list is
    -- the arrays $%1$s, $%2$s, $%3$s (schemas, tables, scores), %4$s the rows.
    merge_sql := $q$
                SELECT d.s, d.tn, d.sc
                FROM (SELECT DISTINCT ON (u.s, u.tn) u.s, u.tn, u.sc
                      FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest($%1$s::text[]), pg_catalog.unnest($%2$s::text[]),
                                                     pg_catalog.unnest($%3$s::float8[])) p(s, tn, sc)
                            UNION ALL
                            (%4$s)) u
                      ORDER BY u.s, u.tn) d
                ORDER BY d.sc DESC, d.tn, d.s LIMIT $10$q$;
    IF (SELECT pg_catalog.sum(x) FROM pg_catalog.unnest(df) x) <= batch_rows THEN
        scan_sql := pg_catalog.format($q$
        SELECT pg_catalog.array_agg(f.s ORDER BY f.sc DESC, f.tn, f.s),
               pg_catalog.array_agg(f.tn ORDER BY f.sc DESC, f.tn, f.s),
               pg_catalog.array_agg(f.sc ORDER BY f.sc DESC, f.tn, f.s),
               $16::text[], $17::text[], $18::float8[]
        FROM (%s) f
        $q$, pg_catalog.format(merge_sql, 12, 13, 14, pg_catalog.format($q$
                          SELECT c.schema_name, c.table_name, (%s)::float8
                          FROM (SELECT c0.schema_name, c0.table_name, c0.search_vector
                                FROM control_plane.table_metadata_catalog c0
                                WHERE c0.tenant_id = $7 AND c0.connection_id = $8 AND c0.search_vector @@ $9
                                LIMIT $11) c
                          ORDER BY 3 DESC, 2, 1 LIMIT $10$q$, score_sql)));
    ELSE
        scan_sql := pg_catalog.format($q$
            WITH b AS MATERIALIZED (
                SELECT c.schema_name AS s, c.table_name AS tn, (%s)::float8 AS sc, c.search_vector @@ $15 AS named
                FROM (SELECT c0.schema_name, c0.table_name, c0.search_vector
                      FROM control_plane.table_metadata_catalog c0
                      WHERE c0.tenant_id = $7 AND c0.connection_id = $8 AND c0.search_vector @@ $9
                      LIMIT $11) c
            ), best AS (%s
            ), unnamed AS (%s
            )
            SELECT (SELECT pg_catalog.array_agg(x.s ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.tn ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.sc ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.s ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x),
                   (SELECT pg_catalog.array_agg(x.tn ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x),
                   (SELECT pg_catalog.array_agg(x.sc ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x)
            $q$, score_sql,
            pg_catalog.format(merge_sql, 12, 13, 14,
                'SELECT b.s, b.tn, b.sc FROM b ORDER BY b.sc DESC, b.tn, b.s LIMIT $10'),
            pg_catalog.format(merge_sql, 16, 17, 18,
                'SELECT b.s, b.tn, b.sc FROM b WHERE NOT b.named ORDER BY b.sc DESC, b.tn, b.s LIMIT $10'));
    END IF;
    -- Seed: tables holding every term (all-terms before any-term); a bounded
    -- sample, it only raises the bar early. Not needed when one batch takes
    -- every term anyway.
    IF n_terms > 1 AND (SELECT pg_catalog.sum(x) FROM pg_catalog.unnest(df) x) > batch_rows THEN
        batch := (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(l), ' & ') FROM pg_catalog.unnest(lex) l)::tsquery;
        EXECUTE scan_sql INTO top_s, top_t, top_sc, nn_s, nn_t, nn_sc
            USING idf, q_any, q_a, q_b, q_c, NULL::float8, t, conn, batch, m, batch_rows, top_s, top_t, top_sc,
                  q_named, nn_s, nn_t, nn_sc;
    END IF;
    done := pg_catalog.array_fill(false, ARRAY[n_terms]);
    LOOP
        IF NOT (false = ANY (done)) THEN
            EXIT;
        END IF;
        theta := CASE WHEN COALESCE(pg_catalog.cardinality(top_sc), 0) >= m THEN top_sc[m] END;
        bound := (SELECT pg_catalog.sum(ub[o]) FROM pg_catalog.generate_subscripts(done, 1) o WHERE NOT done[o]);
        EXIT WHEN theta IS NOT NULL AND theta >= bound;
        -- The next rarest terms, as many as fit in one batch (at least one);
        -- every table holding them is scored.
        batch := NULL;
        batch_df := 0;
        FOR i IN 1..n_terms LOOP
            CONTINUE WHEN done[i];
            EXIT WHEN batch IS NOT NULL AND batch_df + df[i] > batch_rows;
            batch := CASE WHEN batch IS NULL THEN q_any[i] ELSE batch || q_any[i] END;
            batch_df := batch_df + df[i];
            done[i] := true;
        END LOOP;
        EXECUTE scan_sql INTO top_s, top_t, top_sc, nn_s, nn_t, nn_sc
            USING idf, q_any, q_a, q_b, q_c, NULL::float8, t, conn, batch, m, NULL::bigint,
                  COALESCE(top_s, '{}'), COALESCE(top_t, '{}'), COALESCE(top_sc, '{}'),
                  q_named, COALESCE(nn_s, '{}'), COALESCE(nn_t, '{}'), COALESCE(nn_sc, '{}');
    END LOOP;
    IF top_s IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH first_stage AS MATERIALIZED (
        SELECT h.s AS schema_name, h.tn AS table_name, h.sc AS score, c.relationships,
               ARRAY(SELECT x FROM pg_catalog.unnest(lex) x
                     WHERE c.search_vector @@ pg_catalog.quote_literal(x)::tsquery ORDER BY x) AS matched,
               ARRAY(SELECT x FROM pg_catalog.unnest(lex) x
                     WHERE c.search_vector @@ (pg_catalog.quote_literal(x) || ':A')::tsquery ORDER BY x) AS in_name
        FROM (SELECT DISTINCT x.s, x.tn, x.sc
              FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest(top_s), pg_catalog.unnest(top_t), pg_catalog.unnest(top_sc)) a(s, tn, sc)
                    UNION ALL
                    SELECT * FROM ROWS FROM (pg_catalog.unnest(nn_s), pg_catalog.unnest(nn_t), pg_catalog.unnest(nn_sc)) z(s, tn, sc)) x) h
        JOIN control_plane.table_metadata_catalog c
          ON c.tenant_id = t AND c.connection_id = conn AND c.schema_name = h.s AND c.table_name = h.tn
    ), hits AS MATERIALIZED (
        -- Look-alikes: a table whose name holds the same question words as a
        -- better one (stg_orders_17 after orders) goes behind the tables that
        -- bring other words, so ten copies of one table do not crowd out the
        -- table it joins.
        SELECT f.schema_name, f.table_name, f.score, f.relationships, f.matched, f.nth > 1 AS lookalike
        FROM (SELECT f0.*, pg_catalog.row_number() OVER (PARTITION BY f0.in_name ORDER BY f0.score DESC, f0.table_name, f0.schema_name) AS nth
              FROM first_stage f0) f
        ORDER BY f.nth > 1, f.score DESC, f.table_name, f.schema_name
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
    -- Hits, then the tables that join them, then the look-alikes.
    SELECT o.schema_name, o.table_name, o.score, o.matched, o.via_join FROM (
        SELECT h.schema_name, h.table_name, h.score::real AS score, h.matched, false AS via_join,
               CASE WHEN h.lookalike THEN 2 ELSE 0 END AS tier
        FROM hits h
        UNION ALL
        SELECT n.schema_name, n.table_name, (n.score / 2)::real, ARRAY[]::text[], true, 1
        FROM neighbours n
        JOIN control_plane.table_metadata_catalog c
          ON c.tenant_id = t AND c.connection_id = conn
         AND c.schema_name = n.schema_name AND c.table_name = n.table_name) o
    ORDER BY o.tier, o.score DESC, o.table_name;
END
$$;
