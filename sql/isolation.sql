-- Row-level security (SPEC §3). Policies compare the tenant column with
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
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    FOREACH cmd IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %I ON %s', 'dbrag_tenant_' || cmd, tbl);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %I ON %s', 'dbrag_admin_' || cmd, tbl);
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
ALTER TABLE control_plane.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE control_plane.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY dbrag_tenant_select ON control_plane.tenants FOR SELECT
    USING (tenant_id = dbrag.current_tenant_id());
CREATE POLICY dbrag_admin_select ON control_plane.tenants FOR SELECT TO dbrag_admin USING (true);
CREATE POLICY dbrag_admin_insert ON control_plane.tenants FOR INSERT TO dbrag_admin WITH CHECK (true);
CREATE POLICY dbrag_admin_update ON control_plane.tenants FOR UPDATE TO dbrag_admin USING (true) WITH CHECK (true);
CREATE POLICY dbrag_admin_delete ON control_plane.tenants FOR DELETE TO dbrag_admin USING (true);

-- system_config is platform-wide: operators only.
ALTER TABLE control_plane.system_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE control_plane.system_config FORCE ROW LEVEL SECURITY;
CREATE POLICY dbrag_admin_all ON control_plane.system_config TO dbrag_admin USING (true) WITH CHECK (true);

-- dbrag.enable_tenant_isolation: the same protection for an application table.
CREATE FUNCTION dbrag.enable_tenant_isolation(tbl regclass, tenant_column name DEFAULT 'tenant_id')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col_type regtype;
    kind "char";
    orphans bigint;
    has_index boolean;
BEGIN
    IF tbl IS NULL OR tenant_column IS NULL OR tenant_column = '' THEN
        RAISE EXCEPTION 'table and tenant column must not be NULL or empty' USING ERRCODE = '22004';
    END IF;
    SELECT c.relkind INTO kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    SELECT a.atttypid::regtype INTO col_type FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND NOT a.attisdropped AND a.attnum > 0;
    IF col_type IS NULL THEN
        -- No default while adding: existing rows must not silently join the
        -- caller's tenant; they stay NULL and are refused below.
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I uuid', tbl, tenant_column);
    ELSIF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column %.% is %, a tenant column must be uuid', tbl, tenant_column, col_type
            USING ERRCODE = '22023';
    END IF;
    EXECUTE pg_catalog.format('SELECT count(*) FROM ONLY %s WHERE %I IS NULL', tbl, tenant_column) INTO orphans;
    IF orphans > 0 THEN
        RAISE EXCEPTION '% has % rows without a tenant', tbl, orphans USING ERRCODE = '23502',
            HINT = pg_catalog.format('assign them first: UPDATE %s SET %I = ''<tenant uuid>'' WHERE %I IS NULL',
                                     tbl, tenant_column, tenant_column);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT dbrag.current_tenant_id()', tbl, tenant_column);
    EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
    PERFORM dbrag._tenant_policies(tbl, tenant_column, false);
    -- A tenant-first index, unless one already leads with the tenant column.
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = tbl AND a.attname = tenant_column
    ) INTO has_index;
    IF NOT has_index THEN
        EXECUTE pg_catalog.format('CREATE INDEX %I ON %s (%I)',
            pg_catalog.left((SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = tbl), 40)
                || '_' || pg_catalog.left(tenant_column, 15) || '_dbrag_idx',
            tbl, tenant_column);
    END IF;
END
$$;

-- dbrag.disable_tenant_isolation: drop the policies and RLS; the column and
-- its data stay.
CREATE FUNCTION dbrag.disable_tenant_isolation(tbl regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    FOREACH cmd IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %I ON %s', 'dbrag_tenant_' || cmd, tbl);
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %I ON %s', 'dbrag_admin_' || cmd, tbl);
    END LOOP;
    EXECUTE pg_catalog.format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', tbl);
END
$$;
