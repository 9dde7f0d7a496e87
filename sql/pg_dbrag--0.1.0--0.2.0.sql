-- Upgrade pg_dbrag 0.1.0 → 0.2.0. Sections are merged from several changes;
-- each names its change. Data is never dropped.

-- ---------------------------------------------------------------------------
-- Act as the tenant (issue 12, sections 1–4): a NOLOGIN role per tenant,
-- all work for a tenant runs as it; cache and history keyed by acting role
-- and model.
-- ---------------------------------------------------------------------------

ALTER TABLE control_plane.tenants ADD COLUMN IF NOT EXISTS tenant_role name UNIQUE;
ALTER TABLE control_plane.query_history ADD COLUMN IF NOT EXISTS acting_role text;
ALTER TABLE control_plane.query_history ADD COLUMN IF NOT EXISTS model text;

CREATE FUNCTION dbrag."_sync_tenant_role"(
	"tenant" uuid
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_sync_tenant_role_wrapper';

CREATE FUNCTION dbrag."_drop_tenant_role"(
	"role" TEXT
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_drop_tenant_role_wrapper';

CREATE FUNCTION dbrag.tenant_role_name(tenant uuid) RETURNS name
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('dbrag_tenant_' OPERATOR(pg_catalog.||) pg_catalog.replace(tenant::pg_catalog.text, '-', ''))::pg_catalog.name
$$;

CREATE FUNCTION control_plane.sync_tenant_role() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' AND TG_OP = 'DELETE' THEN
        PERFORM dbrag._drop_tenant_role(OLD.tenant_role);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM dbrag._sync_tenant_role(OLD.tenant_id);
    ELSE
        PERFORM dbrag._sync_tenant_role(NEW.tenant_id);
        IF TG_OP = 'UPDATE' AND OLD.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
            PERFORM dbrag._sync_tenant_role(OLD.tenant_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_role AFTER INSERT OR UPDATE OF status ON control_plane.tenants
    FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();
CREATE TRIGGER tenants_role_drop AFTER DELETE ON control_plane.tenants
    FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();
CREATE TRIGGER tenant_members_role AFTER INSERT OR UPDATE OR DELETE ON control_plane.tenant_members
    FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();

REVOKE EXECUTE ON FUNCTION dbrag._sync_tenant_role(uuid), dbrag._drop_tenant_role(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._sync_tenant_role(uuid), dbrag._drop_tenant_role(text) TO dbrag_admin;

-- Every existing tenant gets its role, granted to its active members.
SELECT dbrag._sync_tenant_role(tenant_id) FROM control_plane.tenants ORDER BY tenant_id;

-- Tenant schemas: the owner role is taken from every member (and from
-- dbrag_admin); the tenant's role gets USAGE and CREATE instead. Members'
-- direct grants on tables there stay as they are: move them to the tenant's
-- role (docs/isolation.md).
SELECT dbrag._sync_tenant_schema(tenant_id) FROM control_plane.tenants
WHERE settings ? 'tenant_schema' ORDER BY tenant_id;
