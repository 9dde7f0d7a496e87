-- Tenant administration refusals, each with its SQLSTATE, message and hint,
-- as an operator (a member of dbrag_admin), the application server (a
-- member of dbrag_app), a tenant member and a stranger call them.
\pset format unaligned
\pset fieldsep ' | '
-- CONTEXT lines would pin line numbers of function bodies.
\set SHOW_CONTEXT never
CREATE ROLE regress_adm_operator LOGIN IN ROLE dbrag_admin;
CREATE ROLE regress_adm_app LOGIN IN ROLE dbrag_app;
CREATE ROLE regress_adm_member LOGIN;
CREATE ROLE regress_adm_stranger LOGIN;
CREATE ROLE regress_adm_super SUPERUSER;
CREATE ROLE regress_adm_bypass BYPASSRLS;
CREATE ROLE regress_adm_creator CREATEROLE;
CREATE ROLE regress_adm_nested LOGIN;
GRANT regress_adm_app TO regress_adm_nested;
-- A tenant's id by name, for the statements below (ids are random).
CREATE FUNCTION regress_util.tenant(tenant_name text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'SELECT tenant_id FROM control_plane.tenants WHERE name = tenant_name';
SET ROLE regress_adm_operator;
SELECT dbrag.create_tenant('regress_acme', 'Acme', 'ops@acme.example') IS NOT NULL AS created;
SELECT dbrag.create_tenant('regress_dormant') IS NOT NULL AS created;
SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_member', 'developer');
SELECT dbrag.set_tenant_status(regress_util.tenant('regress_dormant'), 'suspended');
SELECT name, status, organization FROM control_plane.tenants WHERE name LIKE 'regress\_%' ORDER BY name;
SELECT n, regress_util.mask(regress_util.try(s)) AS result FROM (VALUES
    -- create_tenant
    (1, $q$SELECT dbrag.create_tenant(NULL)$q$),
    (2, $q$SELECT dbrag.create_tenant('   ')$q$),
    (3, $q$SELECT dbrag.create_tenant(repeat('n', 201))$q$),
    (4, $q$SELECT dbrag.create_tenant('regress_acme')$q$),
    -- add_tenant_member: ids, roles, kinds of role
    (5, $q$SELECT dbrag.add_tenant_member('not-a-uuid', 'regress_adm_member')$q$),
    (6, $q$SELECT dbrag.add_tenant_member('00000000-0000-0000-0000-00000000beef', 'regress_adm_member')$q$),
    (7, $q$SELECT dbrag.add_tenant_member(NULL, 'regress_adm_member')$q$),
    (8, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_nosuch')$q$),
    (9, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_super')$q$),
    (10, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_bypass')$q$),
    (11, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_creator')$q$),
    (12, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_app')$q$),
    (13, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_nested')$q$),
    (14, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_operator')$q$),
    (15, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_member', 'owner')$q$),
    (16, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_member', NULL)$q$),
    -- set_tenant_status
    (17, $q$SELECT dbrag.set_tenant_status(regress_util.tenant('regress_acme'), 'deleted')$q$),
    (18, $q$SELECT dbrag.set_tenant_status(regress_util.tenant('regress_acme'), NULL)$q$),
    (19, $q$SELECT dbrag.set_tenant_status('00000000-0000-0000-0000-000000000001', 'suspended')$q$),
    (20, $q$SELECT dbrag.set_tenant_status('00000000-0000-0000-0000-00000000beef', 'active')$q$),
    (21, $q$SELECT dbrag.set_tenant_status('00000000-0000-0000-0000-00000000beef', 'Active')$q$),
    -- removing a member that is not one is not an error
    (22, $q$SELECT dbrag.remove_tenant_member('00000000-0000-0000-0000-00000000beef', 'regress_adm_member')$q$),
    -- tokens
    (23, $q$SELECT dbrag.issue_token('00000000-0000-0000-0000-00000000beef')$q$),
    (24, $q$SELECT dbrag.issue_token(regress_util.tenant('regress_acme'), 0)$q$),
    (25, $q$SELECT dbrag.issue_token(NULL)$q$),
    -- putting a tenant in force, as the operator
    (26, $q$SELECT dbrag.set_tenant('00000000-0000-0000-0000-00000000beef'::uuid)$q$),
    (27, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_dormant'))$q$),
    (28, $q$SELECT dbrag.set_tenant('not.a.token')$q$),
    -- a uuid written as a bare literal is taken as a token (text wins)
    (29, $q$SELECT dbrag.set_tenant('00000000-0000-0000-0000-00000000beef')$q$)
) AS t(n, s) ORDER BY n;
RESET ROLE;
-- The application server: no tenant administration, set_tenant by id only
-- for tenants that exist and are active.
SET ROLE regress_adm_app;
SELECT n, regress_util.mask(regress_util.try(s)) AS result FROM (VALUES
    (1, $q$SELECT dbrag.create_tenant('regress_by_app')$q$),
    (2, $q$SELECT dbrag.set_tenant_status(regress_util.tenant('regress_acme'), 'active')$q$),
    (3, $q$SELECT dbrag.issue_token(regress_util.tenant('regress_acme'))$q$),
    (4, $q$SELECT dbrag.set_tenant('00000000-0000-0000-0000-00000000beef'::uuid)$q$),
    (5, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_dormant'))$q$),
    (6, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_acme')) = regress_util.tenant('regress_acme')$q$),
    (7, $q$SELECT dbrag.current_tenant_id() = regress_util.tenant('regress_acme')$q$),
    (8, $q$SELECT dbrag.reset_tenant()$q$),
    (9, $q$SELECT dbrag.current_tenant_id()$q$)
) AS t(n, s) ORDER BY n;
RESET ROLE;
-- A tenant member (here through SET ROLE: its tenant, found from the login
-- role, is tested over real logins by tests/): no tenant by id.
SET ROLE regress_adm_member;
SELECT n, regress_util.mask(regress_util.try(s)) AS result FROM (VALUES
    (1, $q$SELECT dbrag.create_tenant('regress_by_member')$q$),
    (2, $q$SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_stranger')$q$),
    (3, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_dormant'))$q$),
    (4, $q$SELECT dbrag.set_tenant('00000000-0000-0000-0000-000000000001'::uuid)$q$),
    (5, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_acme')) = regress_util.tenant('regress_acme')$q$)
) AS t(n, s) ORDER BY n;
RESET ROLE;
-- A stranger: neither member, server nor operator.
SET ROLE regress_adm_stranger;
SELECT n, regress_util.mask(regress_util.try(s)) AS result FROM (VALUES
    (1, $q$SELECT dbrag.create_tenant('regress_by_stranger')$q$),
    (2, $q$SELECT dbrag.set_tenant_status(regress_util.tenant('regress_acme'), 'active')$q$),
    (3, $q$SELECT dbrag.set_tenant(regress_util.tenant('regress_acme'))$q$),
    (4, $q$SELECT dbrag.current_tenant_id()$q$)
) AS t(n, s) ORDER BY n;
RESET ROLE;
-- As a client reads one refusal, hint included:
SET ROLE regress_adm_operator;
SELECT dbrag.add_tenant_member(regress_util.tenant('regress_acme'), 'regress_adm_creator');
RESET ROLE;
-- Each tenant has its role, granted to its active members only.
SELECT t.name, regress_util.mask(t.tenant_role) AS tenant_role,
       (SELECT string_agg(m.rolname, ', ' ORDER BY m.rolname)
        FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member
        WHERE am.roleid = t.tenant_role::regrole) AS granted_to
FROM control_plane.tenants t WHERE t.name LIKE 'regress\_%' ORDER BY t.name;
-- Removing the tenants drops their roles.
CREATE TABLE regress_util.gone AS
    SELECT tenant_role FROM control_plane.tenants WHERE name LIKE 'regress\_%';
DELETE FROM control_plane.tenants WHERE name LIKE 'regress\_%';
SELECT count(*) AS roles_left FROM pg_roles WHERE rolname IN (SELECT tenant_role FROM regress_util.gone);
DROP TABLE regress_util.gone;
DROP FUNCTION regress_util.tenant(text);
DROP ROLE regress_adm_operator, regress_adm_app, regress_adm_member, regress_adm_stranger,
    regress_adm_super, regress_adm_bypass, regress_adm_creator, regress_adm_nested;
