-- Row-level security (docs/isolation.md). Policies compare the tenant column with
-- dbrag.current_tenant_id(), a STABLE C function: the planner evaluates it
-- once per scan and uses the tenant-first index, unlike a per-row plpgsql check.

-- Force RLS on `tbl` and (re)create the four tenant policies; with
-- admin_access, dbrag_admin also gets policies that see every tenant.
CREATE FUNCTION dbrag._tenant_policies(tbl regclass, tenant_column name, admin_access boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
    pred text := pg_catalog.format('%I = dbrag.current_tenant_id()', tenant_column);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    -- Drop the ones there are (DROP POLICY IF EXISTS would NOTICE about the rest).
    FOR cmd IN SELECT p.polname FROM pg_catalog.pg_policy p
               WHERE p.polrelid = tbl AND p.polname ~ '^dbrag_(tenant|admin)_(select|insert|update|delete)$'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %s', cmd, tbl);
    END LOOP;
    EXECUTE pg_catalog.format('CREATE POLICY dbrag_tenant_select ON %s FOR SELECT USING (%s)', tbl, pred);
    EXECUTE pg_catalog.format('CREATE POLICY dbrag_tenant_insert ON %s FOR INSERT WITH CHECK (%s)', tbl, pred);
    EXECUTE pg_catalog.format('CREATE POLICY dbrag_tenant_update ON %s FOR UPDATE USING (%s) WITH CHECK (%s)', tbl, pred, pred);
    EXECUTE pg_catalog.format('CREATE POLICY dbrag_tenant_delete ON %s FOR DELETE USING (%s)', tbl, pred);
    IF admin_access THEN
        -- Role-targeted policies are dropped at rewrite time for other roles,
        -- so tenants' plans keep the plain index-friendly predicate.
        EXECUTE pg_catalog.format('CREATE POLICY dbrag_admin_select ON %s FOR SELECT TO dbrag_admin USING (true)', tbl);
        EXECUTE pg_catalog.format('CREATE POLICY dbrag_admin_insert ON %s FOR INSERT TO dbrag_admin WITH CHECK (true)', tbl);
        EXECUTE pg_catalog.format('CREATE POLICY dbrag_admin_update ON %s FOR UPDATE TO dbrag_admin USING (true) WITH CHECK (true)', tbl);
        EXECUTE pg_catalog.format('CREATE POLICY dbrag_admin_delete ON %s FOR DELETE TO dbrag_admin USING (true)', tbl);
    END IF;
END
$$;

-- A table tenants only read (their own rows) and operators write: forced
-- RLS, dbrag_tenant_select and dbrag_admin's four policies.
CREATE FUNCTION dbrag._tenant_read_policies(tbl regclass, tenant_column name)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._tenant_policies(tbl, tenant_column, true);
    EXECUTE pg_catalog.format('DROP POLICY dbrag_tenant_insert ON %1$s; DROP POLICY dbrag_tenant_update ON %1$s; '
                              'DROP POLICY dbrag_tenant_delete ON %1$s', tbl);
END
$$;

SELECT dbrag._tenant_policies(t, 'tenant_id', true)
FROM unnest(ARRAY[
    'control_plane.tenant_members',
    'control_plane.tenant_databases',
    'control_plane.table_metadata_catalog',
    'control_plane.training_examples',
    'control_plane.query_history',
    'control_plane.audit_log'
]::regclass[]) AS t;

-- The tenant registry: a tenant reads its own row; only operators write.
SELECT dbrag._tenant_read_policies('control_plane.tenants', 'tenant_id');

-- system_config is platform-wide: operators only.
ALTER TABLE control_plane.system_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE control_plane.system_config FORCE ROW LEVEL SECURITY;
CREATE POLICY dbrag_admin_all ON control_plane.system_config TO dbrag_admin USING (true) WITH CHECK (true);

-- Application tables: sql/app_isolation.sql.
