-- A role per tenant (docs/isolation.md): a NOLOGIN role created with the
-- tenant, granted to exactly its active members, dropped with it. Data-plane
-- grants go to it; everything pg_dbrag does for the tenant runs as it.

-- The one place the naming lives: 'dbrag_tenant_', a tag of the database's
-- name (as dbrag._tenant_role_name does for schema owners: a copy restored
-- beside the original in one cluster gets roles of its own) and the id's 32
-- hex digits.
CREATE FUNCTION dbrag.tenant_role_name(tenant uuid) RETURNS name
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('dbrag_tenant_%s_%s',
        pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()::pg_catalog.text), 8),
        pg_catalog.replace(tenant::pg_catalog.text, '-', ''))::pg_catalog.name
$$;

CREATE FUNCTION control_plane.sync_tenant_role() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    on_coordinator boolean := true;
    on_citus boolean := false;
    -- On Citus the trigger fires on a shard (tenants_102008): its table's
    -- and its own name are the shard's without the shard id.
    tbl text := pg_catalog.regexp_replace(TG_TABLE_NAME, '_[0-9]+$', '');
    trg text := pg_catalog.regexp_replace(TG_NAME, '_[0-9]+$', '');
BEGIN
    -- On Citus the trigger fires on every node's copy of these reference
    -- tables; roles are made on the coordinator, which propagates them.
    IF pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NOT NULL THEN
        on_citus := true;
        EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO on_coordinator;
        IF NOT on_coordinator THEN
            RETURN NULL;
        END IF;
    END IF;
    -- A new tenant's role: on one node at once (tenants_role); on Citus at
    -- commit (tenants_role_deferred). An INSERT ... SELECT or COPY into the
    -- reference table fires the row triggers while Citus still streams the
    -- rows to the workers, whose connections cannot carry the CREATE ROLE
    -- then (docs/scale-out.md, section 5).
    -- On Citus a COPY (or an INSERT while local execution is off) reaches
    -- the coordinator's placement through a connection of Citus's own, in
    -- another backend of the same distributed transaction: a CREATE ROLE
    -- propagated from there waits for a lock its own transaction holds.
    -- A row whose role exists needs nothing (Citus copying a placement).
    IF on_citus AND tbl = 'tenants' AND TG_OP = 'INSERT'
       AND pg_catalog.current_setting('application_name') LIKE 'citus\_internal gpid=%' THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_roles r
                   WHERE r.rolname = dbrag.tenant_role_name(NEW.tenant_id)
                     AND pg_catalog.shobj_description(r.oid, 'pg_authid')
                         = 'pg_dbrag: role of tenant ' || NEW.tenant_id::text) THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'tenants cannot be added through a Citus connection to the coordinator (COPY, or INSERT with citus.enable_local_execution off)'
            USING ERRCODE = '0A000',
                  HINT = 'use dbrag.create_tenant, INSERT ... VALUES or INSERT ... SELECT with citus.enable_local_execution on';
    END IF;
    IF tbl = 'tenants' AND TG_OP = 'INSERT' AND on_citus = (trg = 'tenants_role') THEN
        RETURN NULL;
    END IF;
    IF tbl = 'tenants' AND TG_OP = 'DELETE' THEN
        -- Only this database's own role (a restored copy may record the original's).
        IF OLD.tenant_role = dbrag.tenant_role_name(OLD.tenant_id) THEN
            PERFORM dbrag._drop_tenant_role(OLD.tenant_role);
            -- On Citus its password for the nodes' connections goes too
            -- (pg_dist_authinfo is a superuser's to write).
            IF pg_catalog.to_regclass('pg_catalog.pg_dist_authinfo') IS NOT NULL
               AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
                EXECUTE 'DELETE FROM pg_catalog.pg_dist_authinfo WHERE rolename = $1' USING OLD.tenant_role;
                PERFORM pg_catalog.run_command_on_workers(pg_catalog.format(
                    'DELETE FROM pg_catalog.pg_dist_authinfo WHERE rolename = %L', OLD.tenant_role));
            END IF;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM dbrag._sync_tenant_role(OLD.tenant_id);
    ELSE
        PERFORM dbrag._sync_tenant_role(NEW.tenant_id);
        IF TG_OP = 'INSERT' AND tbl <> 'tenant_members'
           AND pg_catalog.to_regclass('pg_catalog.pg_dist_authinfo') IS NOT NULL THEN
            PERFORM dbrag._citus_tenant_login(NEW.tenant_id);
        END IF;
        -- A tenant made in an earlier transaction has its role on the
        -- workers by now: adding a member copies its password row there.
        IF on_citus AND TG_OP = 'INSERT' AND tbl = 'tenant_members'
           AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
            PERFORM dbrag._citus_copy_logins(ARRAY[dbrag.tenant_role_name(NEW.tenant_id)]);
        END IF;
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
CREATE CONSTRAINT TRIGGER tenants_role_deferred AFTER INSERT ON control_plane.tenants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();
CREATE TRIGGER tenant_members_role AFTER INSERT OR UPDATE OR DELETE ON control_plane.tenant_members
    FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();

-- The platform's own tenant (seeded before these triggers existed).
SELECT dbrag._sync_tenant_role('00000000-0000-0000-0000-000000000001');

REVOKE EXECUTE ON FUNCTION dbrag._sync_tenant_role(uuid), dbrag._drop_tenant_role(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION control_plane.sync_tenant_role() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._sync_tenant_role(uuid), dbrag._drop_tenant_role(text) TO dbrag_admin;
