-- Teaching material for the model, per tenant (docs/llm-and-guard.md). SECURITY INVOKER:
-- the rows go through the training_examples policies like any insert.

CREATE FUNCTION dbrag.add_example(question text, sql text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    IF question IS NULL OR pg_catalog.btrim(question) = '' OR sql IS NULL OR pg_catalog.btrim(sql) = '' THEN
        RAISE EXCEPTION 'question and sql must not be empty' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.length(question) > 8000 OR pg_catalog.length(sql) > 100000 THEN
        RAISE EXCEPTION 'example is too long (question 8000, sql 100000 characters at most)' USING ERRCODE = '22023';
    END IF;
    IF dbrag.current_tenant_id() IS NULL THEN
        RAISE EXCEPTION 'no tenant is in force' USING ERRCODE = '42501';
    END IF;
    INSERT INTO control_plane.training_examples (kind, question, sql)
    VALUES ('example', add_example.question, add_example.sql) RETURNING example_id INTO id;
    RETURN id;
END
$$;

CREATE FUNCTION dbrag.add_documentation(content text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    IF content IS NULL OR pg_catalog.btrim(content) = '' THEN
        RAISE EXCEPTION 'documentation must not be empty' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.length(content) > 100000 THEN
        RAISE EXCEPTION 'documentation is longer than 100000 characters' USING ERRCODE = '22023';
    END IF;
    IF dbrag.current_tenant_id() IS NULL THEN
        RAISE EXCEPTION 'no tenant is in force' USING ERRCODE = '42501';
    END IF;
    INSERT INTO control_plane.training_examples (kind, content)
    VALUES ('documentation', add_documentation.content) RETURNING example_id INTO id;
    RETURN id;
END
$$;

-- The dbrag.usage view: sql/budget.sql (it shows what is left of the budgets).

-- A tenant's conversations (docs/llm-and-guard.md, "Conversations"). security_invoker,
-- so the query_history policies decide the rows, as for dbrag.usage.
CREATE VIEW dbrag.conversations WITH (security_invoker = true) AS
SELECT h.tenant_id,
       h.conversation_id,
       (pg_catalog.array_agg(h.question ORDER BY h.created_at, h.query_id))[1] AS first_question,
       pg_catalog.count(*) AS turns,
       pg_catalog.max(h.created_at) AS last_activity
FROM control_plane.query_history h
WHERE h.conversation_id IS NOT NULL
GROUP BY h.tenant_id, h.conversation_id;
GRANT SELECT ON dbrag.conversations TO PUBLIC;
