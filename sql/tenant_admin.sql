-- Tenant administration (docs/isolation.md), for platform operators (dbrag_admin).
-- SECURITY INVOKER: the operator's own grants and the admin policies apply.

CREATE FUNCTION dbrag._require_admin() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user, 'dbrag_admin', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied: tenant administration requires dbrag_admin'
            USING ERRCODE = '42501', HINT = 'GRANT dbrag_admin TO <operator role>';
    END IF;
END
$$;

-- dbrag.check_tenant_access(tenant): may the caller act for this tenant?
CREATE FUNCTION dbrag.check_tenant_access(tenant uuid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(tenant = dbrag.current_tenant_id(), false)
        OR pg_catalog.pg_has_role(current_user, 'dbrag_admin', 'USAGE')
$$;

CREATE FUNCTION dbrag.create_tenant(name text, organization text DEFAULT NULL, email text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    PERFORM dbrag._require_admin();
    IF name IS NULL OR pg_catalog.btrim(name) = '' THEN
        RAISE EXCEPTION 'tenant name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.length(name) > 200 THEN
        RAISE EXCEPTION 'tenant name is longer than 200 characters' USING ERRCODE = '22023';
    END IF;
    INSERT INTO control_plane.tenants (name, organization, email)
    VALUES (create_tenant.name, create_tenant.organization, create_tenant.email)
    RETURNING tenant_id INTO new_id;
    PERFORM dbrag._audit('tenant_created', new_id, pg_catalog.jsonb_build_object('name', name));
    RETURN new_id;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'a tenant named "%" already exists', name USING ERRCODE = '23505';
END
$$;

CREATE FUNCTION dbrag.add_tenant_member(tenant uuid, member regrole, tenant_role text DEFAULT 'analyst')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    IF tenant IS NULL OR member IS NULL THEN
        RAISE EXCEPTION 'tenant and member must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF tenant_role IS NULL OR tenant_role NOT IN ('admin', 'developer', 'analyst') THEN
        RAISE EXCEPTION 'tenant_role must be admin, developer or analyst' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM control_plane.tenants t WHERE t.tenant_id = add_tenant_member.tenant) THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = '42704';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = member) THEN
        RAISE EXCEPTION 'role with OID % does not exist', member::oid USING ERRCODE = '42704';
    END IF;
    IF (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.oid = member) THEN
        RAISE EXCEPTION 'role % bypasses row-level security and cannot be a tenant member', member
            USING ERRCODE = '22023', HINT = 'tenants connect as roles without SUPERUSER or BYPASSRLS';
    END IF;
    -- CREATEROLE can grant any non-superuser role, dbrag_app and dbrag_admin included.
    IF (SELECT r.rolcreaterole FROM pg_catalog.pg_roles r WHERE r.oid = member) THEN
        RAISE EXCEPTION 'role % has CREATEROLE and cannot be a tenant member', member
            USING ERRCODE = '22023',
                  HINT = pg_catalog.format('CREATEROLE lets it grant itself dbrag_app or dbrag_admin and act for '
                      'any tenant: ALTER ROLE %s NOCREATEROLE first', member);
    END IF;
    IF pg_catalog.pg_has_role(member, 'dbrag_app', 'MEMBER') OR pg_catalog.pg_has_role(member, 'dbrag_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'role % can act as dbrag_app or dbrag_admin and cannot be a tenant member', member
            USING ERRCODE = '22023',
                  HINT = 'the application server and operators pick tenants by id; a tenant member is bound to '
                         'its tenant: use a login role of its own';
    END IF;
    INSERT INTO control_plane.tenant_members (tenant_id, member, tenant_role)
    VALUES (add_tenant_member.tenant, add_tenant_member.member,
            add_tenant_member.tenant_role::control_plane.member_role)
    ON CONFLICT ON CONSTRAINT tenant_members_pkey DO UPDATE SET tenant_role = EXCLUDED.tenant_role;
    PERFORM dbrag._audit('member_added', tenant,
        pg_catalog.jsonb_build_object('member', member::text, 'tenant_role', tenant_role));
    -- A tenant with a schema of its own: the member gets its schema role.
    PERFORM dbrag._sync_tenant_schema(tenant);
END
$$;

CREATE FUNCTION dbrag.remove_tenant_member(tenant uuid, member regrole)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    DELETE FROM control_plane.tenant_members m
    WHERE m.tenant_id = remove_tenant_member.tenant AND m.member = remove_tenant_member.member;
    IF FOUND THEN
        PERFORM dbrag._audit('member_removed', tenant, pg_catalog.jsonb_build_object('member', member::text));
        PERFORM dbrag._sync_tenant_schema(tenant);
    END IF;
END
$$;

CREATE FUNCTION dbrag.set_tenant_status(tenant uuid, status text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    IF status IS NULL OR status NOT IN ('active', 'inactive', 'suspended', 'pending') THEN
        RAISE EXCEPTION 'status must be active, inactive, suspended or pending' USING ERRCODE = '22023';
    END IF;
    IF tenant = '00000000-0000-0000-0000-000000000001' AND status <> 'active' THEN
        RAISE EXCEPTION 'the system_admin tenant cannot be deactivated' USING ERRCODE = '22023';
    END IF;
    UPDATE control_plane.tenants t SET status = set_tenant_status.status::control_plane.tenant_status
    WHERE t.tenant_id = set_tenant_status.tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = '42704';
    END IF;
    PERFORM dbrag._audit('tenant_status', tenant, pg_catalog.jsonb_build_object('status', status));
    -- Only an active tenant's members keep its schema role.
    PERFORM dbrag._sync_tenant_schema(tenant);
END
$$;
