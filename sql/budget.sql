-- Model budgets per tenant (docs/llm-and-guard.md, "Budgets"): calls per minute
-- and tokens per day, NULL = unlimited. Operators write; a tenant reads its own
-- row. The counters live in shared memory (dbrag.budget_status()).
CREATE TABLE control_plane.tenant_budgets (
    tenant_id        uuid PRIMARY KEY REFERENCES control_plane.tenants ON DELETE CASCADE,
    calls_per_minute integer CHECK (calls_per_minute >= 0),
    tokens_per_day   bigint CHECK (tokens_per_day >= 0),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenant_budgets', '');
SELECT dbrag._tenant_read_policies('control_plane.tenant_budgets', 'tenant_id');
GRANT SELECT ON control_plane.tenant_budgets TO PUBLIC;

-- dbrag.set_tenant_budget(tenant, calls_per_minute, tokens_per_day): operators only.
CREATE FUNCTION dbrag.set_tenant_budget(tenant uuid, calls_per_minute integer, tokens_per_day bigint)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF calls_per_minute < 0 OR tokens_per_day < 0 THEN
        RAISE EXCEPTION 'budgets must be >= 0 (NULL = unlimited)' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM control_plane.tenants t WHERE t.tenant_id = set_tenant_budget.tenant) THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = '42704';
    END IF;
    INSERT INTO control_plane.tenant_budgets AS b (tenant_id, calls_per_minute, tokens_per_day)
    VALUES (set_tenant_budget.tenant, set_tenant_budget.calls_per_minute, set_tenant_budget.tokens_per_day)
    ON CONFLICT (tenant_id) DO UPDATE
        SET calls_per_minute = EXCLUDED.calls_per_minute, tokens_per_day = EXCLUDED.tokens_per_day,
            -- The new row's default: Citus refuses non-IMMUTABLE
            -- functions in DO UPDATE on a distributed table.
            updated_at = EXCLUDED.updated_at;
    PERFORM dbrag._audit('budget_set', tenant, pg_catalog.jsonb_build_object(
        'calls_per_minute', calls_per_minute, 'tokens_per_day', tokens_per_day));
END
$$;
REVOKE EXECUTE ON FUNCTION dbrag.set_tenant_budget(uuid, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.set_tenant_budget(uuid, integer, bigint) TO dbrag_admin;

-- Usage per tenant: calls and tokens from the history, and what is left of
-- the budgets. security_invoker, so the query_history policies decide the
-- history rows and dbrag.budget_status() the budget rows: a tenant sees its
-- own line, dbrag_admin every tenant's.
CREATE VIEW dbrag.usage WITH (security_invoker = true) AS
SELECT COALESCE(h.tenant_id, b.tenant_id) AS tenant_id,
       COALESCE(h.calls, 0) AS calls,
       COALESCE(h.answered, 0) AS answered,
       COALESCE(h.from_cache, 0) AS from_cache,
       COALESCE(h.refused, 0) AS refused,
       COALESCE(h.prompt_tokens, 0) AS prompt_tokens,
       COALESCE(h.completion_tokens, 0) AS completion_tokens,
       h.last_call,
       b.calls_per_minute,
       b.calls_left_this_minute,
       b.minute_resets_at,
       b.tokens_per_day,
       b.tokens_used_today,
       b.tokens_left_today,
       b.day_resets_at
FROM (SELECT q.tenant_id,
             pg_catalog.count(*) AS calls,
             pg_catalog.count(*) FILTER (WHERE q.status IN ('ok', 'cached', 'verified')) AS answered,
             pg_catalog.count(*) FILTER (WHERE q.status = 'cached') AS from_cache,
             pg_catalog.count(*) FILTER (WHERE q.status = 'refused') AS refused,
             COALESCE(pg_catalog.sum(q.prompt_tokens), 0) AS prompt_tokens,
             COALESCE(pg_catalog.sum(q.completion_tokens), 0) AS completion_tokens,
             pg_catalog.max(q.created_at) AS last_call
      FROM control_plane.query_history q
      GROUP BY q.tenant_id) h
FULL JOIN dbrag.budget_status() b ON b.tenant_id = h.tenant_id;
GRANT SELECT ON dbrag.usage TO PUBLIC;
