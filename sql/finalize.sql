-- Privileges. Tenant roles reach control-plane rows only through RLS; the
-- secrets table is reached only through the API and the dbrag.connections view.
GRANT USAGE ON SCHEMA control_plane TO PUBLIC;
GRANT USAGE ON SCHEMA dbrag TO PUBLIC;

GRANT SELECT ON control_plane.tenants, control_plane.tenant_members,
    control_plane.table_metadata_catalog, control_plane.query_history,
    control_plane.audit_log, control_plane.catalog_doc_stats, control_plane.catalog_term_stats TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON control_plane.training_examples TO PUBLIC;

GRANT ALL ON ALL TABLES IN SCHEMA control_plane TO dbrag_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA control_plane TO dbrag_admin;

-- Operator-only entry points.
REVOKE EXECUTE ON FUNCTION dbrag.create_tenant(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag.add_tenant_member(uuid, regrole, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag.remove_tenant_member(uuid, regrole) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag.set_tenant_status(uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag.issue_token(uuid, integer, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._audit(text, uuid, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._tenant_policies(regclass, name, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._tenant_read_policies(regclass, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.create_tenant(text, text, text),
    dbrag.add_tenant_member(uuid, regrole, text), dbrag.remove_tenant_member(uuid, regrole),
    dbrag.set_tenant_status(uuid, text), dbrag.issue_token(uuid, integer, text),
    dbrag._audit(text, uuid, jsonb) TO dbrag_admin;

-- Credentials and connections (docs/connections-and-keys.md). encrypt/decrypt are open to
-- everyone: their context is domain-separated from the extension's own
-- secrets, which no SQL-level context can open.
REVOKE EXECUTE ON FUNCTION dbrag.rotate_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.rotate_key() TO dbrag_admin;
REVOKE EXECUTE ON FUNCTION dbrag._remote_query(uuid, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._dataplane_query(uuid, text, integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._dataplane_check(uuid, text) FROM PUBLIC;
-- Schema-per-tenant: operators only.
REVOKE EXECUTE ON FUNCTION dbrag.create_tenant_schema(uuid), dbrag.drop_tenant_schema(uuid, boolean),
    dbrag._sync_tenant_schema(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.create_tenant_schema(uuid), dbrag.drop_tenant_schema(uuid, boolean),
    dbrag._sync_tenant_schema(uuid) TO dbrag_admin;

-- Internal functions (docs/function-privileges.md lists every function of
-- the extension with the roles that may execute it, and a test holds the
-- catalog to that table). Trigger and event-trigger functions need no
-- EXECUTE grant to fire; the SQL bodies of enable/disable_tenant_isolation
-- are called by dbrag._isolation_guarded through the function manager,
-- which checks and audits first; the cache invalidation is called by the
-- triggers on tenants and tenant_members, which only operators write.
REVOKE EXECUTE ON FUNCTION control_plane.touch_updated_at(), control_plane.invalidate_tenant_cache(),
    control_plane.catalog_search_vector(), control_plane.example_search_vector(),
    control_plane.catalog_stats_trigger(), control_plane.catalog_stats_truncate(),
    dbrag._auto_isolate() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._enable_tenant_isolation(regclass, name, boolean),
    dbrag._disable_tenant_isolation(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._invalidate_tenant_cache(oid), dbrag._require_admin(),
    dbrag.audit_queue_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._invalidate_tenant_cache(oid), dbrag._require_admin(),
    dbrag.audit_queue_status() TO dbrag_admin;
REVOKE EXECUTE ON FUNCTION dbrag.adopt_tenant_schema(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.adopt_tenant_schema(uuid) TO dbrag_admin;
