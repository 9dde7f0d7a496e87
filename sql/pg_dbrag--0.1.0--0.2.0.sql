-- pg_dbrag 0.1.0 → 0.2.0, run by ALTER EXTENSION pg_dbrag UPDATE.
--
-- Rules for every section of this file (docs/operations.md, "Upgrading"):
--   * one section per change, headed by a comment naming it;
--   * never drop data: no DROP TABLE / DROP COLUMN of anything holding rows,
--     backfill new columns from what is there;
--   * the result must equal a fresh CREATE EXTENSION of 0.2.0, object for
--     object (definitions, defaults, constraints, indexes, policies, triggers,
--     grants, comments, pg_extension_config_dump entries): the schema check
--     in scripts/upgrade_test.sh compares the two and fails CI otherwise;
--   * new tables holding tenant data get pg_extension_config_dump, and the
--     grants finalize.sql gives (e.g. GRANT ALL … TO dbrag_admin);
--   * functions implemented in Rust are declared exactly as the generated
--     install script declares them (`cargo pgrx schema` prints it).
-- Once 0.2.0 is released this file is frozen; later changes go into
-- pg_dbrag--0.2.0--<next>.sql.

\echo Use "ALTER EXTENSION pg_dbrag UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Tenant schema roles are named per database (dump/restore into a second
-- database of the same cluster; docs/operations.md). 0.1.0 named them
-- dbrag_t_<tenant hex>; they are renamed to dbrag._tenant_role_name(tenant)
-- and the tenant's recorded name follows. Nothing is dropped.
CREATE FUNCTION dbrag._tenant_role_name(tenant uuid) RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('dbrag_t_%s_%s',
        pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()::text), 8),
        pg_catalog.replace(tenant::text, '-', ''))::name
$$;
REVOKE EXECUTE ON FUNCTION dbrag._tenant_role_name(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._tenant_role_name(uuid) TO dbrag_admin;

-- dbrag.adopt_tenant_schema(tenant): a schema role of this database's own for
-- a tenant schema restored from another database's dump.
CREATE FUNCTION dbrag.adopt_tenant_schema(tenant uuid) RETURNS text
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'adopt_tenant_schema_wrapper';
REVOKE EXECUTE ON FUNCTION dbrag.adopt_tenant_schema(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.adopt_tenant_schema(uuid) TO dbrag_admin;

DO $$
DECLARE
    t record;
    new_role name;
BEGIN
    FOR t IN SELECT tenant_id, settings->>'tenant_schema_role' AS old_role
             FROM control_plane.tenants WHERE settings ? 'tenant_schema_role'
    LOOP
        new_role := dbrag._tenant_role_name(t.tenant_id);
        IF t.old_role = 'dbrag_t_' || pg_catalog.replace(t.tenant_id::text, '-', '')
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = t.old_role)
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = new_role) THEN
            EXECUTE pg_catalog.format('ALTER ROLE %I RENAME TO %I', t.old_role, new_role);
            EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', new_role,
                'pg_dbrag: schema role of tenant ' || t.tenant_id || ' in database ' || pg_catalog.current_database());
            UPDATE control_plane.tenants
               SET settings = settings || pg_catalog.jsonb_build_object('tenant_schema_role', new_role::text)
             WHERE tenant_id = t.tenant_id;
        END IF;
    END LOOP;
END
$$;
