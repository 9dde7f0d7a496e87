-- Verified queries and feedback (docs/llm-and-guard.md, "Verified queries and
-- feedback"). Tenant-scoped like the other control-plane tables: tenant-first
-- keys and indexes, forced row security, operators see every tenant.

-- The form of a question that verified queries are matched on: lower case,
-- runs of white space as one space, trailing sentence punctuation (. ? !)
-- dropped. Nothing else: words, numbers and operators stay as they are, so
-- "amount > 100" and "amount < 100" never match each other.
CREATE FUNCTION dbrag._normalize_question(question text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.btrim(pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(pg_catalog.lower(question), '\s+', ' ', 'g'),
               '[\s.?!]+$', ''))
$$;

-- Question → SQL pairs a tenant vouches for, each checked by the guard
-- against the connection it was saved for. Written only by
-- dbrag.add_verified_query (as the extension, for the tenant in force).
CREATE TABLE control_plane.verified_queries (
    tenant_id           uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                        REFERENCES control_plane.tenants ON DELETE CASCADE,
    verified_id         uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    connection_id       uuid NOT NULL,
    question            text NOT NULL CHECK (pg_catalog.length(question) <= 8000),
    normalized_question text NOT NULL,
    sql                 text NOT NULL CHECK (pg_catalog.length(sql) <= 100000),
    search_vector       tsvector,
    created_by          text NOT NULL DEFAULT session_user,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, verified_id),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
-- md5: a btree entry cannot hold an 8000-character question.
CREATE INDEX verified_queries_question_idx
    ON control_plane.verified_queries (tenant_id, connection_id, pg_catalog.md5(normalized_question));
CREATE INDEX verified_queries_search_idx
    ON control_plane.verified_queries USING gin (tenant_id, search_vector);

-- One row per history row a user judged (the latest judgement wins).
-- example_id: the training example the judgement made, when the tenant's
-- setting feedback_examples is on.
CREATE TABLE control_plane.query_feedback (
    tenant_id     uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                  REFERENCES control_plane.tenants ON DELETE CASCADE,
    query_id      uuid NOT NULL,
    helpful       boolean NOT NULL,
    corrected_sql text CHECK (pg_catalog.length(corrected_sql) <= 100000),
    example_id    uuid,
    login_role    text NOT NULL DEFAULT session_user,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, query_id),
    FOREIGN KEY (tenant_id, query_id)
        REFERENCES control_plane.query_history (tenant_id, query_id) ON DELETE CASCADE
);

SELECT dbrag._tenant_policies(t, 'tenant_id', true)
FROM unnest(ARRAY['control_plane.verified_queries', 'control_plane.query_feedback']::regclass[]) AS t;

-- Tenants read their rows and may delete verified queries; new ones only
-- through dbrag.add_verified_query, which runs the guard first.
GRANT SELECT, DELETE ON control_plane.verified_queries TO PUBLIC;
GRANT SELECT ON control_plane.query_feedback TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('control_plane.verified_queries', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.query_feedback', '');

-- A tenant's verified queries (security_invoker: the table's policies decide
-- the rows; dbrag_admin sees every tenant's).
CREATE VIEW dbrag.verified_queries WITH (security_invoker = true) AS
SELECT v.tenant_id, v.verified_id, v.connection_id, v.question, v.sql, v.created_by, v.created_at
FROM control_plane.verified_queries v;
GRANT SELECT ON dbrag.verified_queries TO PUBLIC;

-- Remove one verified query. SECURITY INVOKER: the delete goes through the
-- tenant policies, so another tenant's id reads as unknown.
CREATE FUNCTION dbrag.remove_verified_query(verified_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF remove_verified_query.verified_id IS NULL THEN
        RAISE EXCEPTION 'verified_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM control_plane.verified_queries v WHERE v.verified_id = remove_verified_query.verified_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'verified query % does not exist for this tenant', remove_verified_query.verified_id
            USING ERRCODE = '42704';
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION dbrag._normalize_question(text) FROM PUBLIC;
