-- Roles are cluster-wide: leave none behind. The tenants' roles went with
-- their tenants; the system tenant's role was made for this database by
-- CREATE EXTENSION and goes here.
SELECT dbrag._drop_tenant_role(tenant_role) FROM control_plane.tenants
WHERE tenant_id = '00000000-0000-0000-0000-000000000001';
SELECT name FROM control_plane.tenants ORDER BY name;
SET client_min_messages = warning;
DROP SCHEMA regress_util CASCADE;
RESET client_min_messages;
DROP EXTENSION pg_dbrag;
SELECT rolname FROM pg_roles
WHERE rolname ~ '^regress_'
   OR rolname LIKE 'dbrag\_tenant\_' || left(md5(current_database()), 8) || '\_%'
ORDER BY rolname;
