-- Roles are cluster-wide: create them only when missing, so a second database
-- can install the extension too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dbrag_admin') THEN
        CREATE ROLE dbrag_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dbrag_app') THEN
        CREATE ROLE dbrag_app NOLOGIN;
    END IF;
END
$$;

CREATE SCHEMA control_plane;
COMMENT ON SCHEMA control_plane IS 'pg_dbrag control plane: tenants, connections, catalog, history, audit';

CREATE TYPE control_plane.tenant_environment AS ENUM ('development', 'staging', 'production');
CREATE TYPE control_plane.tenant_status AS ENUM ('active', 'inactive', 'suspended', 'pending');
CREATE TYPE control_plane.database_status AS ENUM
    ('active', 'inactive', 'migrating', 'error', 'connected', 'disconnected');
CREATE TYPE control_plane.member_role AS ENUM ('admin', 'developer', 'analyst');
