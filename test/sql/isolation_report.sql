-- dbrag.isolation_report() on planted mistakes: one table, view, function or
-- role per mistake in schema regress_iso, then every suggested fix applied
-- and the report read again.
\pset format unaligned
\pset fieldsep ' | '
CREATE SCHEMA regress_iso;
-- Done right: the canonical policies, forced, a tenant-first key.
CREATE TABLE regress_iso.good (tenant_id uuid NOT NULL DEFAULT dbrag.current_tenant_id(), id int,
    PRIMARY KEY (tenant_id, id));
SELECT dbrag.enable_tenant_isolation('regress_iso.good');
-- A tenant column and no row-level security at all.
CREATE TABLE regress_iso.no_rls (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
-- The right policy, not forced: the owner skips it.
CREATE TABLE regress_iso.not_forced (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
ALTER TABLE regress_iso.not_forced ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON regress_iso.not_forced USING (tenant_id = dbrag.current_tenant_id());
-- An extra permissive policy USING (true) beside the tenant policies.
CREATE TABLE regress_iso.open_policy (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
SELECT dbrag.enable_tenant_isolation('regress_iso.open_policy');
CREATE POLICY everyone ON regress_iso.open_policy USING (true);
-- A policy on a setting any client can SET.
CREATE TABLE regress_iso.by_setting (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
ALTER TABLE regress_iso.by_setting ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY mine ON regress_iso.by_setting USING (tenant_id = current_setting('app.tenant')::uuid);
-- Policies the planner cannot turn into a tenant index scan.
CREATE FUNCTION regress_iso.my_tenant() RETURNS uuid LANGUAGE plpgsql STABLE
    AS 'BEGIN RETURN dbrag.current_tenant_id(); END';
CREATE TABLE regress_iso.per_row (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
ALTER TABLE regress_iso.per_row ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY mine ON regress_iso.per_row USING (tenant_id = regress_iso.my_tenant());
CREATE TABLE regress_iso.as_text (tenant_id uuid NOT NULL, id int, PRIMARY KEY (tenant_id, id));
ALTER TABLE regress_iso.as_text ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY mine ON regress_iso.as_text USING (tenant_id::text = dbrag.current_tenant_id()::text);
-- Unique keys across tenants, and no index that leads with the tenant column.
CREATE TABLE regress_iso.users (id serial PRIMARY KEY, tenant_id uuid NOT NULL, email text UNIQUE);
ALTER TABLE regress_iso.users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY t ON regress_iso.users USING (tenant_id = dbrag.current_tenant_id())
    WITH CHECK (tenant_id = dbrag.current_tenant_id());
-- The tenant column in the key, but second.
CREATE TABLE regress_iso.late_key (id int, tenant_id uuid NOT NULL, UNIQUE (id, tenant_id));
CREATE INDEX ON regress_iso.late_key (tenant_id);
ALTER TABLE regress_iso.late_key ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY t ON regress_iso.late_key USING (tenant_id = dbrag.current_tenant_id());
-- Views over a tenant table: owned by a superuser, and materialized.
CREATE VIEW regress_iso.good_view AS SELECT * FROM regress_iso.good;
CREATE MATERIALIZED VIEW regress_iso.good_snapshot AS SELECT * FROM regress_iso.good;
-- SECURITY DEFINER without a pinned search_path.
CREATE FUNCTION regress_iso.count_good() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT count(*) FROM regress_iso.good';
-- Login roles that skip row-level security, directly or through SET ROLE.
CREATE ROLE regress_iso_bypass LOGIN BYPASSRLS;
CREATE ROLE regress_iso_super SUPERUSER NOLOGIN;
CREATE ROLE regress_iso_via LOGIN IN ROLE regress_iso_super;
-- A tenant member that gets CREATEROLE after it joined.
CREATE ROLE regress_iso_member LOGIN;
SELECT dbrag.add_tenant_member(dbrag.create_tenant('regress_iso_tenant'), 'regress_iso_member');
ALTER ROLE regress_iso_member CREATEROLE;
CREATE VIEW regress_iso.findings AS
    SELECT severity, object, finding, fix FROM dbrag.isolation_report()
    WHERE object ~ 'regress_iso' ORDER BY object, finding;
SELECT * FROM regress_iso.findings;
-- Run by a role that is neither operator nor member: the same findings
-- from the catalogs (every role may read them), but no tenant members (it
-- sees none in control_plane.tenant_members).
CREATE ROLE regress_iso_reader;
SET ROLE regress_iso_reader;
SELECT severity, object FROM dbrag.isolation_report() WHERE object ~ 'regress_iso' ORDER BY object, finding;
RESET ROLE;
DROP ROLE regress_iso_reader;
-- Apply every fix it suggests (the ones that are SQL), then report again.
CREATE TABLE regress_iso.fixes AS SELECT object, fix FROM regress_iso.findings WHERE fix NOT LIKE '--%';
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM regress_iso.fixes ORDER BY object LOOP
        EXECUTE f.fix;
    END LOOP;
END
$$;
SELECT * FROM regress_iso.findings;
-- A materialized view stays listed after the REVOKE: the report cannot tell
-- who should read it. Drop what this file made.
SELECT count(*) FROM control_plane.tenants WHERE name = 'regress_iso_tenant';
DELETE FROM control_plane.tenants WHERE name = 'regress_iso_tenant';
SET client_min_messages = warning;
DROP SCHEMA regress_iso CASCADE;
RESET client_min_messages;
DROP ROLE regress_iso_bypass, regress_iso_via, regress_iso_super, regress_iso_member;
