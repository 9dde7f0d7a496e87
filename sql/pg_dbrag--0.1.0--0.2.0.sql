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

-- ===========================================================================
-- Function privileges, CREATEROLE members, bounded audit writer
-- (docs/function-privileges.md; SECURITY.md "Refusals are audited without
-- exhausting the server"). The library's audit queue lives in shared memory:
-- it takes effect after the server restarts with the new library preloaded.
-- ===========================================================================

-- dbrag._tenant_policies: refuses anything but a table (42809) instead of building ALTER TABLE from oid 0.
CREATE OR REPLACE FUNCTION dbrag._tenant_policies(tbl regclass, tenant_column name, admin_access boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
    pred text := pg_catalog.format('%I = dbrag.current_tenant_id()', tenant_column);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    -- Drop the ones there are (DROP POLICY IF EXISTS would NOTICE about the rest).
    FOR cmd IN SELECT p.polname FROM pg_catalog.pg_policy p
               WHERE p.polrelid = tbl AND p.polname ~ '^dbrag_(tenant|admin)_(select|insert|update|delete)$'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %s', cmd, tbl);
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

-- dbrag._disable_tenant_isolation: the same, and refuses anything but a table (42809).
CREATE OR REPLACE FUNCTION dbrag._disable_tenant_isolation(tbl regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = tbl AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    IF dbrag._is_own_table(tbl) THEN
        RAISE EXCEPTION '% belongs to pg_dbrag, which manages its isolation itself', tbl USING ERRCODE = '22023';
    END IF;
    FOR cmd IN SELECT p.polname FROM pg_catalog.pg_policy p
               WHERE p.polrelid = tbl AND p.polname ~ '^dbrag_(tenant|admin)_(select|insert|update|delete)$'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %s', cmd, tbl);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = tbl) THEN
        RAISE NOTICE '% keeps row-level security enabled for its other policies', tbl;
    ELSE
        EXECUTE pg_catalog.format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', tbl);
    END IF;
    -- Partitions and children: dbrag._isolation_guarded calls this for each.
END
$$;

-- dbrag.isolation_report: new findings 9 and 10: tenant members with CREATEROLE, and tenant members that can act as dbrag_app or dbrag_admin.
CREATE OR REPLACE FUNCTION dbrag.isolation_report()
RETURNS TABLE(severity text, object text, finding text, fix text)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
WITH tt AS (
    SELECT t.rel, t.tenant_column, t.attnum, c.relname, c.relkind, c.relispartition,
           c.relrowsecurity, c.relforcerowsecurity, c.relowner,
           c.oid::regclass::text AS qname,
           pg_catalog.format('(%I = dbrag.current_tenant_id())', t.tenant_column) AS canonical,
           pg_catalog.format('(dbrag.current_tenant_id() = %I)', t.tenant_column) AS canonical_rev,
           EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = t.rel) AS has_policies
    FROM dbrag._tenant_tables() t JOIN pg_catalog.pg_class c ON c.oid = t.rel
),
pol AS (
    SELECT tt.*, p.oid AS polid, p.polname, p.polpermissive, p.polroles,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS q,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS w,
           (SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s, %s)', pr.oid::regproc, l.lanname,
                        CASE pr.provolatile WHEN 'v' THEN 'volatile' WHEN 's' THEN 'stable' ELSE 'immutable' END),
                        ', ' ORDER BY pr.oid)
            FROM pg_catalog.pg_depend d
            JOIN pg_catalog.pg_proc pr ON pr.oid = d.refobjid
            JOIN pg_catalog.pg_language l ON l.oid = pr.prolang
            WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid
              AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
              AND (pr.provolatile = 'v' OR l.lanname NOT IN ('sql', 'c', 'internal'))) AS per_row
    FROM tt JOIN pg_catalog.pg_policy p ON p.polrelid = tt.rel
),
bad_pol AS (
    SELECT pol.* FROM pol
    WHERE NOT (
        -- the tenant predicate, on the tenant column
        (q IS NOT NULL OR w IS NOT NULL)
        AND (q IS NULL OR q IN (canonical, canonical_rev))
        AND (w IS NULL OR w IN (canonical, canonical_rev)))
      AND NOT (
        -- the operators' see-everything policies, for dbrag_admin only
        polroles = ARRAY[(SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'dbrag_admin')]
        AND COALESCE(q, 'true') = 'true' AND COALESCE(w, 'true') = 'true')
),
view_deps AS (
    -- views and materialized views over tenant tables, through other views too
    WITH RECURSIVE dep(view_oid, base) AS (
        SELECT r.ev_class, d.refobjid
        FROM pg_catalog.pg_rewrite r
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
        WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> r.ev_class
        UNION
        SELECT dep.view_oid, d.refobjid
        FROM dep
        JOIN pg_catalog.pg_rewrite r ON r.ev_class = dep.base
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
        WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> r.ev_class
    )
    SELECT DISTINCT ON (v.oid) v.oid, v.relkind, v.relowner, v.oid::regclass::text AS vname,
           tt.qname AS base_name, tt.relowner AS base_owner, tt.relforcerowsecurity AS base_forced,
           COALESCE((SELECT pg_catalog.bool_or(pg_catalog.lower(o) IN
                        ('security_invoker=true', 'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'))
                     FROM pg_catalog.unnest(v.reloptions) o), false) AS invoker,
           ro.rolname AS owner_name, ro.rolsuper OR ro.rolbypassrls AS owner_bypasses,
           pg_catalog.pg_has_role(v.relowner, 'dbrag_admin', 'USAGE') AS owner_is_admin
    FROM dep
    JOIN tt ON tt.rel = dep.base
    JOIN pg_catalog.pg_class v ON v.oid = dep.view_oid
    JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
    JOIN pg_catalog.pg_roles ro ON ro.oid = v.relowner
    WHERE v.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      -- pg_dbrag's own views filter by the tenant in force themselves
      AND NOT (dbrag._is_own_table(v.oid)
               AND pg_catalog.pg_get_viewdef(v.oid) LIKE '%dbrag.current_tenant_id()%')
    ORDER BY v.oid, (tt.relforcerowsecurity AND tt.relowner <> v.relowner)
),
bypass_roles AS (
    SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls FROM pg_catalog.pg_roles r
    WHERE r.rolsuper OR r.rolbypassrls
),
members AS (
    -- tenant members the caller may see (operators: all of them)
    SELECT r.oid, r.rolname, r.rolsuper, r.rolcreaterole,
           pg_catalog.string_agg(pg_catalog.quote_ident(t.name), ', ' ORDER BY t.name) AS tenant_names
    FROM control_plane.tenant_members m
    JOIN control_plane.tenants t ON t.tenant_id = m.tenant_id
    JOIN pg_catalog.pg_roles r ON r.oid = m.member::pg_catalog.oid
    GROUP BY r.oid, r.rolname, r.rolsuper, r.rolcreaterole
),
findings AS (
    -- 1. Tenant tables without RLS, or with RLS the owner skips.
    SELECT CASE WHEN NOT tt.relrowsecurity THEN 'critical' ELSE 'warning' END AS severity,
           'table ' || tt.qname AS object,
           CASE WHEN NOT tt.relrowsecurity THEN
                    pg_catalog.format('has tenant column %I but row-level security is not enabled: '
                        'any role with SELECT reads every tenant''s rows', tt.tenant_column)
                    || CASE WHEN tt.relispartition THEN ' (it is a partition: queried directly it does not apply '
                        'its parent''s policies)' ELSE '' END
                ELSE pg_catalog.format('row-level security is enabled but not forced: its owner %s, and '
                        'everything that runs as the owner, skips the tenant policies',
                        pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(tt.relowner))) END AS finding,
           CASE WHEN NOT tt.relrowsecurity OR NOT tt.has_policies THEN
                    pg_catalog.format('SELECT dbrag.enable_tenant_isolation(%L, %L);', tt.qname, tt.tenant_column)
                ELSE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', tt.qname) END AS fix
    FROM tt
    WHERE NOT (tt.relrowsecurity AND tt.relforcerowsecurity)
    UNION ALL
    -- 2. Policies the planner cannot turn into a tenant index scan, or that widen access.
    SELECT CASE WHEN bp.polpermissive AND (bp.q = 'true' OR bp.w = 'true') THEN 'critical'
                WHEN pg_catalog.concat(bp.q, bp.w) ~ 'current_setting\(''(?!dbrag\.)' THEN 'critical'
                ELSE 'warning' END,
           pg_catalog.format('policy %I on %s', bp.polname, bp.qname),
           CASE WHEN bp.polpermissive AND (bp.q = 'true' OR bp.w = 'true') THEN
                    'permissive policy that lets every row through: permissive policies are OR-ed, '
                    'so every role it applies to reads or writes every tenant''s rows'
                WHEN pg_catalog.concat(bp.q, bp.w) ~ 'current_setting\(''(?!dbrag\.)' THEN
                    'reads a setting that any client can change with SET or set_config(): '
                    'a client picks whichever tenant it likes'
                WHEN bp.per_row IS NOT NULL THEN
                    pg_catalog.format('not index-friendly: calls %s for every row, so the planner cannot use '
                        'a %I index and evaluates the function row by row', bp.per_row, bp.tenant_column)
                ELSE pg_catalog.format('not of the form %s = dbrag.current_tenant_id(), which the planner '
                        'turns into a %I index scan', pg_catalog.quote_ident(bp.tenant_column), bp.tenant_column)
           END || pg_catalog.format(' (%s)', pg_catalog.concat_ws(', ',
                    'USING ' || bp.q, 'WITH CHECK ' || bp.w)),
           CASE WHEN bp.polname ~ '^dbrag_tenant_' THEN ''
                ELSE pg_catalog.format('DROP POLICY %I ON %s; ', bp.polname, bp.qname) END
           || pg_catalog.format('SELECT dbrag.enable_tenant_isolation(%L, %L);', bp.qname, bp.tenant_column)
    FROM bad_pol bp
    UNION ALL
    -- 3. Tenant tables no index of which leads with the tenant column.
    SELECT 'warning', 'table ' || tt.qname,
           pg_catalog.format('no index leads with tenant column %I: every tenant''s query scans the whole table',
               tt.tenant_column),
           pg_catalog.format('CREATE INDEX ON %s (%I);', tt.qname, tt.tenant_column)
    FROM tt
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = tt.rel AND i.indkey[0] = tt.attnum AND i.indpred IS NULL
          AND am.amname IN ('btree', 'hash'))
    UNION ALL
    -- 4. Unique keys that do not lead with the tenant column.
    SELECT CASE WHEN u.tenant_in_key THEN 'info' ELSE 'warning' END,
           pg_catalog.format('%s on %s', u.idx_text, tt.qname),
           CASE WHEN u.tenant_in_key THEN
                    pg_catalog.format('%I is in the key but not first: a %I-first scan cannot use it',
                        tt.tenant_column, tt.tenant_column)
                ELSE pg_catalog.format('does not include %I: uniqueness spans tenants, so an INSERT failing '
                        'with 23505 tells a tenant that another tenant holds the value, and Citus cannot '
                        'distribute the table by %I', tt.tenant_column, tt.tenant_column) END
           || CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conindid = u.idx)
                   THEN '; foreign keys reference it and must be rebuilt tenant-first with it' ELSE '' END,
           CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conindid = u.idx)
                THEN pg_catalog.format('-- rebuild the foreign keys that reference it as (%I, ...), then: '
                         'SELECT dbrag.enable_tenant_isolation(%L, %L, rebuild_unique => true);',
                         tt.tenant_column, tt.qname, tt.tenant_column)
                ELSE pg_catalog.array_to_string(dbrag._tenant_first_unique_sql(u.idx, tt.tenant_column, false), ' ') END
    FROM tt, LATERAL dbrag._non_tenant_first_unique(tt.rel, tt.tenant_column) u
    UNION ALL
    -- 5. Views that check the tenant policies as their owner, and materialized views.
    SELECT CASE WHEN vd.relkind = 'm' OR vd.owner_bypasses OR vd.owner_is_admin
                     OR (vd.relowner = vd.base_owner AND NOT vd.base_forced) THEN 'critical'
                ELSE 'warning' END,
           CASE WHEN vd.relkind = 'm' THEN 'materialized view ' ELSE 'view ' END || vd.vname,
           CASE WHEN vd.relkind = 'm' THEN
                    pg_catalog.format('stores rows of tenant table %s as whoever refreshed it saw them; '
                        'row-level security does not apply to materialized views', vd.base_name)
                WHEN vd.owner_bypasses THEN
                    pg_catalog.format('reads tenant table %s without security_invoker, as its owner %s, who '
                        'bypasses row-level security: every caller reads every tenant''s rows',
                        vd.base_name, pg_catalog.quote_ident(vd.owner_name))
                WHEN vd.owner_is_admin THEN
                    pg_catalog.format('reads tenant table %s without security_invoker, as its owner %s, a '
                        'member of dbrag_admin: every caller gets the operators'' policies',
                        vd.base_name, pg_catalog.quote_ident(vd.owner_name))
                WHEN vd.relowner = vd.base_owner AND NOT vd.base_forced THEN
                    pg_catalog.format('reads tenant table %s without security_invoker, as its owner %s, who '
                        'owns the table, whose row-level security is not forced: every caller reads every '
                        'tenant''s rows', vd.base_name, pg_catalog.quote_ident(vd.owner_name))
                ELSE pg_catalog.format('reads tenant table %s without security_invoker: policies and '
                        'privileges are checked for its owner %s, not for the caller',
                        vd.base_name, pg_catalog.quote_ident(vd.owner_name)) END,
           CASE WHEN vd.relkind = 'm' THEN
                    pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC; -- or replace it with a view '
                        'WITH (security_invoker = true)', vd.vname)
                ELSE pg_catalog.format('ALTER VIEW %s SET (security_invoker = true);', vd.vname) END
    FROM view_deps vd
    WHERE vd.relkind = 'm' OR NOT vd.invoker
    UNION ALL
    -- 6. SECURITY DEFINER functions whose search_path a caller can choose.
    SELECT CASE WHEN ro.rolsuper OR ro.rolbypassrls THEN 'critical' ELSE 'warning' END,
           pg_catalog.format('%s %I.%I(%s)', CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
               n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
           pg_catalog.format('SECURITY DEFINER without a pinned search_path: a caller who puts a schema of '
               'their own first in search_path runs look-alike functions and operators as its owner %s%s',
               pg_catalog.quote_ident(ro.rolname),
               CASE WHEN ro.rolsuper OR ro.rolbypassrls THEN ', who bypasses row-level security' ELSE '' END),
           pg_catalog.format('ALTER %s %I.%I(%s) SET search_path = pg_catalog, pg_temp; -- and qualify the names it uses',
               CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
               n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid))
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_catalog.pg_roles ro ON ro.oid = p.proowner
    WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_(toast|temp_)'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) cfg WHERE cfg LIKE 'search\_path=%')
    UNION ALL
    -- 7. Login roles that skip row-level security.
    SELECT CASE WHEN r.oid = 10 THEN 'info' ELSE 'warning' END,
           'role ' || pg_catalog.quote_ident(r.rolname),
           CASE WHEN r.oid = 10 THEN
                    'the bootstrap superuser: it necessarily exists and skips every policy; keep it for '
                    'maintenance, and never let an application or a tenant connect as it'
                ELSE pg_catalog.format('can log in and %s: its sessions skip every row-level security policy',
                        CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END) END,
           CASE WHEN r.oid = 10 THEN '-- none in SQL: limit where it may connect from in pg_hba.conf'
                WHEN r.rolsuper THEN pg_catalog.format('ALTER ROLE %I NOSUPERUSER NOBYPASSRLS;', r.rolname)
                ELSE pg_catalog.format('ALTER ROLE %I NOBYPASSRLS;', r.rolname) END
    FROM pg_catalog.pg_roles r
    WHERE r.rolcanlogin AND (r.rolsuper OR r.rolbypassrls)
    UNION ALL
    -- 8. Login roles that can SET ROLE to a role that skips row-level security.
    SELECT 'warning', 'role ' || pg_catalog.quote_ident(m.rolname),
           pg_catalog.format('can log in and SET ROLE %I, which %s: that session skips every row-level '
               'security policy', b.rolname, CASE WHEN b.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
           CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members am WHERE am.roleid = b.oid AND am.member = m.oid)
                THEN pg_catalog.format('REVOKE %I FROM %I;', b.rolname, m.rolname)
                ELSE pg_catalog.format('-- revoke the chain of role memberships from %I to %I', m.rolname, b.rolname) END
    FROM pg_catalog.pg_roles m, bypass_roles b
    WHERE m.rolcanlogin AND NOT (m.rolsuper OR m.rolbypassrls) AND m.oid <> b.oid
      AND pg_catalog.pg_has_role(m.oid, b.oid, 'MEMBER')
    UNION ALL
    -- 9. Tenant members with CREATEROLE: they can grant themselves dbrag_app or dbrag_admin.
    SELECT 'critical', 'role ' || pg_catalog.quote_ident(mb.rolname),
           pg_catalog.format('is a member of tenant %s and has CREATEROLE: it can grant itself dbrag_app or '
               'dbrag_admin and then act for any tenant', mb.tenant_names),
           pg_catalog.format('ALTER ROLE %I NOCREATEROLE;', mb.rolname)
    FROM members mb
    WHERE mb.rolcreaterole AND NOT mb.rolsuper
    UNION ALL
    -- 10. Tenant members that can act as the application server or an operator.
    SELECT 'critical', 'role ' || pg_catalog.quote_ident(mb.rolname),
           pg_catalog.format('is a member of tenant %s and can act as %I: %s', mb.tenant_names, p.rolname,
               CASE p.rolname WHEN 'dbrag_app' THEN 'it can put any tenant in force with dbrag.set_tenant(uuid)'
                    ELSE 'it reads and writes every tenant''s rows' END),
           CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members am WHERE am.roleid = p.oid AND am.member = mb.oid)
                THEN pg_catalog.format('REVOKE %I FROM %I;', p.rolname, mb.rolname)
                ELSE pg_catalog.format('-- revoke the chain of role memberships from %I to %I', mb.rolname, p.rolname) END
    FROM members mb
    JOIN pg_catalog.pg_roles p ON p.rolname IN ('dbrag_app', 'dbrag_admin')
    WHERE NOT mb.rolsuper AND pg_catalog.pg_has_role(mb.oid, p.oid, 'MEMBER')
)
SELECT f.severity, f.object, f.finding, f.fix FROM findings f
ORDER BY CASE f.severity WHEN 'critical' THEN 1 WHEN 'warning' THEN 2 ELSE 3 END, f.object, f.finding
$$;

-- dbrag.add_tenant_member: refuses a missing role (42704), roles with CREATEROLE and roles that can act as dbrag_app or dbrag_admin (22023).
CREATE OR REPLACE FUNCTION dbrag.add_tenant_member(tenant uuid, member regrole, tenant_role text DEFAULT 'analyst')
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

-- dbrag.audit_queue_status(): the audit writer's queue, for operators.
CREATE FUNCTION dbrag.audit_queue_status() RETURNS jsonb
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'audit_queue_status_wrapper';

-- Internal functions (docs/function-privileges.md lists every function of
-- the extension with the roles that may execute it, and a test holds the
-- catalog to that table). Trigger and event-trigger functions need no
-- EXECUTE grant to fire; the SQL bodies of enable/disable_tenant_isolation
-- are called by dbrag._isolation_guarded through the function manager,
-- which checks and audits first; the cache invalidation is called by the
-- triggers on tenants and tenant_members, which only operators write.
REVOKE EXECUTE ON FUNCTION control_plane.touch_updated_at(), control_plane.invalidate_tenant_cache(),
    control_plane.catalog_search_vector(), control_plane.example_search_vector(),
    dbrag._auto_isolate() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._enable_tenant_isolation(regclass, name, boolean),
    dbrag._disable_tenant_isolation(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._invalidate_tenant_cache(oid), dbrag._require_admin(),
    dbrag.audit_queue_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._invalidate_tenant_cache(oid), dbrag._require_admin(),
    dbrag.audit_queue_status() TO dbrag_admin;

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

-- ===========================================================================
-- Citus: dbrag.distribute_control_plane(), isolation of tables Citus already
-- distributes (docs/scale-out.md).
-- ===========================================================================

-- True when the table has a tenant_id column that leads its primary key.
CREATE FUNCTION dbrag._tenant_leads_key(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = rel AND i.indisprimary AND a.attname = 'tenant_id')
$$;
REVOKE ALL ON FUNCTION dbrag._tenant_leads_key(oid) FROM PUBLIC;

-- On a Citus coordinator: let Citus reach the workers as a tenant's role.
-- Work for a tenant runs as its role (docs/isolation.md), and Citus opens
-- its worker connections as the current role, so the role gets LOGIN with
-- a random password that only pg_dist_authinfo (superuser-only, on every
-- node) holds: no client can log in as it. ALTER ROLE reaches the workers
-- through Citus. Safe to run again.
CREATE FUNCTION dbrag._citus_tenant_login(tenant uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r name;
    pw text;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_authinfo') IS NULL THEN
        RETURN;
    END IF;
    SELECT t.tenant_role INTO r FROM control_plane.tenants t WHERE t.tenant_id = tenant;
    IF r IS NULL OR r <> dbrag.tenant_role_name(tenant)
       OR EXISTS (SELECT FROM pg_catalog.pg_dist_authinfo a WHERE a.rolename = r) THEN
        RETURN;
    END IF;
    -- 244 bits from the server's strong random source.
    pw := pg_catalog.replace(pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', '');
    EXECUTE pg_catalog.format('ALTER ROLE %I LOGIN PASSWORD %L', r, pw);
    INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo)
    VALUES (0, r, 'password=' || pw), (-1, r, 'password=' || pw);
    PERFORM pg_catalog.run_command_on_workers(pg_catalog.format(
        'INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo) VALUES (0, %L, %L), (-1, %L, %L)',
        r, 'password=' || pw, r, 'password=' || pw));
END
$$;
REVOKE ALL ON FUNCTION dbrag._citus_tenant_login(uuid) FROM PUBLIC;

CREATE FUNCTION dbrag.distribute_control_plane()
RETURNS TABLE (table_name regclass, placement text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pending oid[];
    done    oid[] := '{}';
    rel     oid;
    progressed boolean;
    anchor  regclass := NULL;
    fk      record;
    fks     jsonb := '[]';
    local_only oid[];
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to distribute the control plane'
            USING ERRCODE = '42501', HINT = 'run it as a superuser on the Citus coordinator';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = '55000',
                  HINT = 'preload it (shared_preload_libraries = ''citus,pg_dbrag''), CREATE EXTENSION citus, add the workers, then call this again';
    END IF;
    -- The control plane keeps updated_at, search vectors and the tenant
    -- cache with row triggers; Citus runs them on the shards only when asked.
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- Keys to reference tables need one connection per node in this transaction.
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

    SELECT pg_catalog.array_agg(c.oid) INTO local_only
    FROM pg_catalog.pg_class c
    WHERE c.relnamespace = 'control_plane'::regnamespace
      AND c.relname IN ('audit_log', 'table_metadata_catalog', 'catalog_term_stats', 'catalog_doc_stats');

    SELECT pg_catalog.array_agg(c.oid ORDER BY c.relname) INTO pending
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'control_plane' AND c.relkind IN ('r', 'p') AND NOT c.relispartition;

    SELECT pg_catalog.array_agg(p.logicalrelid::oid) INTO done
    FROM pg_dist_partition p WHERE p.logicalrelid::oid = ANY (pending);
    done := COALESCE(done, '{}');
    -- A previous run left the coordinator-only tables without their keys.
    IF done <> '{}' THEN
        done := done || ARRAY(
            SELECT l FROM pg_catalog.unnest(local_only) l
            WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k
                              WHERE k.conrelid = l AND k.contype = 'f'));
    END IF;

    -- The anchor of the co-location group, if a previous run made one.
    SELECT p.logicalrelid INTO anchor FROM pg_dist_partition p
    WHERE p.logicalrelid = 'control_plane.tenant_databases'::regclass;

    -- Citus turns every local table linked by a foreign key to a new
    -- reference table into a table of its own kind, which clashes with the
    -- copies the extension already made on the workers. So the keys between
    -- control_plane tables are dropped on every node while the tables are
    -- placed, then added back (Citus then creates them on every shard).
    FOR fk IN
        SELECT k.conrelid::regclass AS tbl, k.conname, pg_catalog.pg_get_constraintdef(k.oid) AS def
        FROM pg_catalog.pg_constraint k
        JOIN pg_catalog.pg_class c ON c.oid = k.confrelid
        WHERE k.contype = 'f' AND c.relnamespace = 'control_plane'::regnamespace
          AND k.conrelid = ANY (pending) AND NOT k.conrelid = ANY (done)
    LOOP
        fks := fks || pg_catalog.jsonb_build_object('tbl', fk.tbl::text, 'name', fk.conname, 'def', fk.def);
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
        -- The workers' copies too: adding the keys back reaches every node.
        PERFORM run_command_on_workers(
            pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', fk.tbl, fk.conname));
    END LOOP;

    LOOP
        progressed := false;
        FOREACH rel IN ARRAY pending LOOP
            CONTINUE WHEN rel = ANY (done);
            -- The anchor of the co-location group goes first.
            CONTINUE WHEN anchor IS NULL AND dbrag._tenant_leads_key(rel)
                AND rel NOT IN ('control_plane.tenants'::regclass, 'control_plane.tenant_members'::regclass)
                AND rel <> 'control_plane.tenant_databases'::regclass;
            IF rel = ANY (local_only) THEN
                -- Ordinary tables on the coordinator (docs/scale-out.md): the
                -- audit trail, which the extension appends to as itself
                -- inside callers' transactions (Citus refuses a later read of
                -- placements another role wrote in the same transaction), and
                -- the catalog with its search statistics, which statement
                -- triggers keep and correlated queries rank (neither of which
                -- Citus runs on distributed tables). Their keys to other
                -- control_plane tables are not added back.
                table_name := rel; placement := 'local to the coordinator';
            ELSIF rel IN ('control_plane.tenants'::regclass, 'control_plane.tenant_members'::regclass)
               OR NOT dbrag._tenant_leads_key(rel) THEN
                PERFORM create_reference_table(rel::regclass);
                table_name := rel; placement := 'reference';
            ELSIF anchor IS NULL THEN
                PERFORM create_distributed_table(rel::regclass, 'tenant_id');
                anchor := rel;
                table_name := rel; placement := 'distributed by tenant_id';
            ELSE
                PERFORM create_distributed_table(rel::regclass, 'tenant_id', colocate_with => anchor::text);
                table_name := rel; placement := 'distributed by tenant_id, co-located with ' || anchor::text;
            END IF;
            done := done || rel;
            progressed := true;
            RETURN NEXT;
        END LOOP;
        EXIT WHEN NOT progressed;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.unnest(pending) p WHERE NOT p = ANY (done)) THEN
        RAISE EXCEPTION 'some control_plane tables could not be placed'
            USING ERRCODE = '55000';
    END IF;
    -- Tenants' roles must reach the workers (docs/scale-out.md).
    PERFORM dbrag._citus_tenant_login(t.tenant_id) FROM control_plane.tenants t ORDER BY t.tenant_id;
    -- Keys back, referenced tables first (all are placed by now).
    FOR fk IN SELECT * FROM pg_catalog.jsonb_to_recordset(fks) AS x(tbl text, name text, def text)
              WHERE NOT x.tbl::regclass::oid = ANY (local_only) LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tbl, fk.name, fk.def);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION dbrag.distribute_control_plane() FROM PUBLIC;

-- dbrag._distribution_column: the column Citus distributes a table by.
CREATE FUNCTION dbrag._distribution_column(tbl regclass) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
             FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1 AND p.partmethod = ''h'''
        INTO col USING tbl;
    RETURN col;
END
$$;

-- dbrag._enable_tenant_isolation: no longer recurses into partitions and children itself
-- (dbrag._isolation_guarded calls it for each, through the function manager);
-- leaves a Citus distribution column's NOT NULL and default alone. Its one
-- definition is in the last section ("The four tenant policies written once").

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
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('dbrag_tenant_%s_%s',
        pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()::pg_catalog.text), 8),
        pg_catalog.replace(tenant::pg_catalog.text, '-', ''))::pg_catalog.name
$$;

CREATE FUNCTION control_plane.sync_tenant_role() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    on_coordinator boolean := true;
    -- On Citus the trigger fires on a shard (tenants_102008): its table's
    -- name is the shard's without the shard id.
    tbl text := pg_catalog.regexp_replace(TG_TABLE_NAME, '_[0-9]+$', '');
BEGIN
    -- On Citus the trigger fires on every node's copy of these reference
    -- tables; roles are made on the coordinator, which propagates them.
    IF pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NOT NULL THEN
        EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO on_coordinator;
        IF NOT on_coordinator THEN
            RETURN NULL;
        END IF;
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
REVOKE EXECUTE ON FUNCTION control_plane.sync_tenant_role() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._sync_tenant_role(uuid), dbrag._drop_tenant_role(text) TO dbrag_admin;

-- Every existing tenant gets its role, granted to its active members.
SELECT dbrag._sync_tenant_role(tenant_id) FROM control_plane.tenants ORDER BY tenant_id;

-- Tenant schemas: the owner role is taken from every member (and from
-- dbrag_admin); the tenant's role gets USAGE and CREATE instead. Members'
-- direct grants on tables there stay as they are: move them to the tenant's
-- role (docs/isolation.md).
SELECT dbrag._sync_tenant_schema(tenant_id) FROM control_plane.tenants
WHERE settings ? 'tenant_schema' ORDER BY tenant_id;
-- Privileges granted while an extension script runs are recorded as the
-- extension's initial privileges, which pg_dump leaves out: the grants just
-- made on the tenant schemas (not members of the extension) would be lost
-- by a dump and restore. They are the tenants', not the extension's.
DO $$
BEGIN
    DELETE FROM pg_catalog.pg_init_privs i
    USING control_plane.tenants t
    WHERE t.settings ? 'tenant_schema'
      AND i.classoid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
      AND i.objoid = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = t.settings->>'tenant_schema')
      AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                        AND d.objid = i.objoid AND d.deptype = 'e');
END
$$;

-- ===========================================================================
-- Catalog search: per-connection term statistics and IDF ranking with
-- rarest-terms-first candidates (docs/catalog-search.md).
-- New: control_plane.catalog_doc_stats, control_plane.catalog_term_stats
-- (RLS like the other tenant tables), control_plane._catalog_stats_apply,
-- control_plane.catalog_stats_trigger, control_plane.catalog_stats_truncate
-- and four statement triggers on control_plane.table_metadata_catalog.
-- Changed: dbrag.search_catalog (same signature).
-- The statistics are backfilled from the catalog rows already there.
-- ===========================================================================

-- No catalog writes between the backfill and the triggers taking over.
LOCK TABLE control_plane.table_metadata_catalog IN SHARE ROW EXCLUSIVE MODE;

-- Term statistics for BM25-style ranking: per tenant and connection, how
-- many catalog tables hold each lexeme (document frequency), how many
-- tables there are and their total length in lexemes. Kept current by the
-- statement-level triggers below, so a question never scans the catalog to
-- learn how rare its words are. Tenant-first keys; the triggers lock the
-- connection's totals row before any lexeme row, so concurrent syncs of one
-- connection queue up instead of deadlocking.
CREATE TABLE control_plane.catalog_doc_stats (
    tenant_id     uuid NOT NULL,
    connection_id uuid NOT NULL,
    doc_count     bigint NOT NULL DEFAULT 0,
    total_length  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, connection_id),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
CREATE TABLE control_plane.catalog_term_stats (
    tenant_id     uuid NOT NULL,
    connection_id uuid NOT NULL,
    lexeme        text NOT NULL,
    doc_freq      bigint NOT NULL,
    -- The fewest words of a table name holding the lexeme (NULL: in no
    -- name). Never raised when tables leave, so it stays a lower bound:
    -- what the search's stopping rule needs.
    min_name_words integer,
    PRIMARY KEY (tenant_id, connection_id, lexeme),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
SELECT dbrag._tenant_policies(t, 'tenant_id', true)
FROM unnest(ARRAY['control_plane.catalog_doc_stats', 'control_plane.catalog_term_stats']::regclass[]) AS t;

-- Apply one statement's changes: +1 per lexeme of each new search vector,
-- -1 per lexeme of each old one. SECURITY DEFINER so the statistics need no
-- grant: the rows it reads are the ones the catalog's own policies let the
-- statement write. Rows that fall to zero are removed.
CREATE FUNCTION control_plane._catalog_stats_apply(added tsvector[], a_tenant uuid[], a_conn uuid[],
                                                  removed tsvector[], r_tenant uuid[], r_conn uuid[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone_t uuid[];
    gone_c uuid[];
    gone_l text[];
    live_c uuid[];
BEGIN
    -- Connections that still exist (deleting one cascades to its catalog
    -- rows, whose statistics go with it). A statement of its own: on Citus
    -- the connections are distributed and the statistics are not.
    SELECT pg_catalog.array_agg(x.connection_id) INTO live_c
    FROM control_plane.tenant_databases x
    WHERE x.connection_id = ANY (a_conn || r_conn);
    live_c := COALESCE(live_c, '{}');
    -- Totals first (lock order: the connection's row, then lexemes in order).
    INSERT INTO control_plane.catalog_doc_stats AS s (tenant_id, connection_id, doc_count, total_length)
    SELECT d.tenant_id, d.connection_id, pg_catalog.sum(d.sign), pg_catalog.sum(d.sign * d.len)
    FROM (SELECT a.t AS tenant_id, a.c AS connection_id, 1 AS sign,
                 pg_catalog.length(COALESCE(a.v, ''::tsvector)) AS len
          FROM ROWS FROM (pg_catalog.unnest(added), pg_catalog.unnest(a_tenant), pg_catalog.unnest(a_conn)) a(v, t, c)
          UNION ALL
          SELECT r.t, r.c, -1, pg_catalog.length(COALESCE(r.v, ''::tsvector))
          FROM ROWS FROM (pg_catalog.unnest(removed), pg_catalog.unnest(r_tenant), pg_catalog.unnest(r_conn)) r(v, t, c)) d
    WHERE d.connection_id = ANY (live_c)
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (tenant_id, connection_id) DO UPDATE
        SET doc_count = s.doc_count + EXCLUDED.doc_count,
            total_length = s.total_length + EXCLUDED.total_length;
    WITH up AS (
        INSERT INTO control_plane.catalog_term_stats AS s (tenant_id, connection_id, lexeme, doc_freq, min_name_words)
        SELECT d.tenant_id, d.connection_id, d.lexeme, pg_catalog.sum(d.sign), pg_catalog.min(d.name_words)
        FROM (SELECT a.t AS tenant_id, a.c AS connection_id, l.lexeme, 1 AS sign,
                     CASE WHEN 'A' = ANY (l.weights)
                          THEN pg_catalog.length(pg_catalog.ts_filter(a.v, '{a}')) END AS name_words
              FROM ROWS FROM (pg_catalog.unnest(added), pg_catalog.unnest(a_tenant), pg_catalog.unnest(a_conn)) a(v, t, c),
                   pg_catalog.unnest(COALESCE(a.v, ''::tsvector)) l
              UNION ALL
              SELECT r.t, r.c, l, -1, NULL
              FROM ROWS FROM (pg_catalog.unnest(removed), pg_catalog.unnest(r_tenant), pg_catalog.unnest(r_conn)) r(v, t, c),
                   pg_catalog.unnest(pg_catalog.tsvector_to_array(COALESCE(r.v, ''::tsvector))) l) d
        WHERE d.connection_id = ANY (live_c)
        GROUP BY 1, 2, 3
        HAVING pg_catalog.sum(d.sign) <> 0 OR pg_catalog.min(d.name_words) IS NOT NULL
        ORDER BY 1, 2, 3
        ON CONFLICT (tenant_id, connection_id, lexeme) DO UPDATE
            SET doc_freq = s.doc_freq + EXCLUDED.doc_freq,
                min_name_words = LEAST(s.min_name_words, EXCLUDED.min_name_words)
        RETURNING s.tenant_id, s.connection_id, s.lexeme, s.doc_freq
    )
    SELECT pg_catalog.array_agg(up.tenant_id), pg_catalog.array_agg(up.connection_id), pg_catalog.array_agg(up.lexeme)
      INTO gone_t, gone_c, gone_l
      FROM up WHERE up.doc_freq <= 0;
    -- Lexemes no table holds any more.
    IF gone_l IS NOT NULL THEN
        DELETE FROM control_plane.catalog_term_stats s
        USING ROWS FROM (pg_catalog.unnest(gone_t), pg_catalog.unnest(gone_c), pg_catalog.unnest(gone_l)) g(t, c, l)
        WHERE s.tenant_id = g.t AND s.connection_id = g.c AND s.lexeme = g.l AND s.doc_freq <= 0;
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION control_plane._catalog_stats_apply(tsvector[], uuid[], uuid[], tsvector[], uuid[], uuid[]) FROM PUBLIC;

CREATE FUNCTION control_plane.catalog_stats_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    av tsvector[]; at uuid[]; ac uuid[];
    rv tsvector[]; rt uuid[]; rc uuid[];
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT pg_catalog.array_agg(n.search_vector), pg_catalog.array_agg(n.tenant_id), pg_catalog.array_agg(n.connection_id)
          INTO av, at, ac FROM new_rows n;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT pg_catalog.array_agg(o.search_vector), pg_catalog.array_agg(o.tenant_id), pg_catalog.array_agg(o.connection_id)
          INTO rv, rt, rc FROM old_rows o;
    END IF;
    IF av IS NOT NULL OR rv IS NOT NULL THEN
        PERFORM control_plane._catalog_stats_apply(COALESCE(av, '{}'), COALESCE(at, '{}'), COALESCE(ac, '{}'),
                                                   COALESCE(rv, '{}'), COALESCE(rt, '{}'), COALESCE(rc, '{}'));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER table_metadata_catalog_stats_ins AFTER INSERT ON control_plane.table_metadata_catalog
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
CREATE TRIGGER table_metadata_catalog_stats_upd AFTER UPDATE ON control_plane.table_metadata_catalog
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
CREATE TRIGGER table_metadata_catalog_stats_del AFTER DELETE ON control_plane.table_metadata_catalog
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_trigger();
-- TRUNCATE empties the statistics with the catalog.
CREATE FUNCTION control_plane.catalog_stats_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM control_plane.catalog_term_stats;
    DELETE FROM control_plane.catalog_doc_stats;
    RETURN NULL;
END
$$;
CREATE TRIGGER table_metadata_catalog_stats_truncate AFTER TRUNCATE ON control_plane.table_metadata_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.catalog_stats_truncate();
-- Not in pg_dump's extension data: restoring the catalog rebuilds them.

INSERT INTO control_plane.catalog_doc_stats (tenant_id, connection_id, doc_count, total_length)
SELECT c.tenant_id, c.connection_id, pg_catalog.count(*), pg_catalog.sum(pg_catalog.length(COALESCE(c.search_vector, ''::tsvector)))
FROM control_plane.table_metadata_catalog c
GROUP BY 1, 2;
INSERT INTO control_plane.catalog_term_stats (tenant_id, connection_id, lexeme, doc_freq, min_name_words)
SELECT c.tenant_id, c.connection_id, l.lexeme, pg_catalog.count(*),
       pg_catalog.min(CASE WHEN 'A' = ANY (l.weights)
                           THEN pg_catalog.length(pg_catalog.ts_filter(c.search_vector, '{a}')) END)
FROM control_plane.table_metadata_catalog c,
     pg_catalog.unnest(COALESCE(c.search_vector, ''::tsvector)) l
GROUP BY 1, 2, 3;

GRANT SELECT ON control_plane.catalog_doc_stats, control_plane.catalog_term_stats TO PUBLIC;
GRANT ALL ON control_plane.catalog_doc_stats, control_plane.catalog_term_stats TO dbrag_admin;

-- dbrag.search_catalog: ranked tables of the tenant's active connection.
-- SECURITY DEFINER so it filters by the tenant in force itself and can use
-- the (tenant_id, search_vector) GIN index: under RLS the planner may not
-- push the non-leakproof @@ into the index scan ahead of the policy.
--
-- Score of a table for the question's lexemes t (BM25-like, docs/catalog-search.md):
--   sum over t of idf(t) * w(t)  +  name_bonus * (question words in the table's name / words in its name)
-- idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) from control_plane.catalog_term_stats;
-- w(t) = 1 when t is in the table's name, else the weight of the best field
-- holding it (columns, comments, samples) times a length normalisation <= 1.
-- So a table that holds only the terms of a set S scores at most
-- sum(idf(S)) + name_bonus: candidates are taken rarest term first, every
-- table of a term at once, until the k-th best score so far reaches the bound
-- of the terms not yet taken (MaxScore). No table that could enter the top k
-- is ever cut; a question of common words costs the rows of the terms it needs.
CREATE OR REPLACE FUNCTION dbrag.search_catalog(question text, k integer DEFAULT 10)
RETURNS TABLE (schema_name text, table_name text, score real, matched text[], via_join boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
-- With one tenant's rows all sharing the GIN index's leading key, the planner
-- overprices the index against a scan of the whole table; the index is what
-- keeps a 100k-table tenant's search in milliseconds, so it is pinned here.
-- Custom plans only: after five calls PL/pgSQL would try a generic plan,
-- which cannot know that one tenant owns 100k rows and the next 100 (a
-- generic plan made calls 20x slower from the sixth on in bench/catalog.sh).
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    -- Field weights (columns, comments, samples; a name word weighs
    -- 1 + name_bonus / words in the name), tuned on the catalog-quality
    -- fixture in both of its modes, and how many rows one batch of rare
    -- terms may fetch. No length normalisation: a wide table is not less
    -- about a word than a narrow one.
    w_b CONSTANT float8 := 0.3;
    w_c CONSTANT float8 := 0.7;
    w_d CONSTANT float8 := 0.6;
    name_bonus CONSTANT float8 := 2.5;
    batch_rows CONSTANT bigint := 2000;
    -- The first stage keeps the best m = 4k; look-alikes are then moved
    -- behind tables that add other question words (see below).
    m integer := LEAST(4 * k, 1000);
    t uuid := dbrag.current_tenant_id();
    conn uuid;
    terms text[];
    n_docs float8;
    lex text[];
    df bigint[];
    mnw integer[];
    ub float8[];
    idf float8[];
    q_any tsquery[];
    q_a tsquery[];
    q_b tsquery[];
    q_c tsquery[];
    n_terms integer;
    score_sql text := '0';
    scan_sql text;
    done boolean[];
    top_s text[] := '{}';
    top_t text[] := '{}';
    top_sc float8[] := '{}';
    q_named tsquery;
    nn_s text[] := '{}';
    nn_t text[] := '{}';
    nn_sc float8[] := '{}';
    batch tsquery;
    batch_df bigint;
    theta float8;
    bound float8;
    i integer;
BEGIN
    IF question IS NULL THEN
        RAISE EXCEPTION 'question must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF t IS NULL THEN
        RAISE EXCEPTION 'no tenant is in force' USING ERRCODE = '42501',
            HINT = 'call dbrag.set_tenant(token), or connect as a role listed in control_plane.tenant_members';
    END IF;
    SELECT d.connection_id INTO conn FROM control_plane.tenant_databases d
    WHERE d.tenant_id = t AND d.is_active;
    IF conn IS NULL THEN
        RAISE EXCEPTION 'this tenant has no active connection' USING ERRCODE = '55000',
            HINT = 'create one with dbrag.create_connection(...) and call dbrag.activate_connection(id)';
    END IF;
    SELECT s.doc_count INTO n_docs
      FROM control_plane.catalog_doc_stats s WHERE s.tenant_id = t AND s.connection_id = conn;
    IF COALESCE(n_docs, 0) <= 0 THEN
        RETURN;
    END IF;
    terms := pg_catalog.tsvector_to_array(pg_catalog.to_tsvector(dbrag._search_config(), pg_catalog.left(question, 4000)));
    -- The question's lexemes the catalog holds, rarest first; at most 64
    -- (a longer question keeps its 64 rarest words).
    SELECT pg_catalog.array_agg(x.lexeme ORDER BY x.doc_freq, x.lexeme),
           pg_catalog.array_agg(x.doc_freq ORDER BY x.doc_freq, x.lexeme),
           pg_catalog.array_agg(x.min_name_words ORDER BY x.doc_freq, x.lexeme)
      INTO lex, df, mnw
      FROM (SELECT s.lexeme, s.doc_freq, s.min_name_words
            FROM (SELECT DISTINCT u.l FROM pg_catalog.unnest(terms) u(l)) q
            JOIN control_plane.catalog_term_stats s
              ON s.tenant_id = t AND s.connection_id = conn AND s.lexeme = q.l
            WHERE s.doc_freq > 0
            ORDER BY s.doc_freq, s.lexeme LIMIT 64) x;
    IF lex IS NULL THEN
        RETURN;
    END IF;
    n_terms := pg_catalog.cardinality(lex);
    idf := ARRAY(SELECT pg_catalog.ln(1 + (n_docs - LEAST(d, n_docs) + 0.5) / (d + 0.5))
                 FROM pg_catalog.unnest(df) WITH ORDINALITY u(d, o) ORDER BY o);
    -- The most a term can add to any table's score.
    ub := ARRAY(SELECT idf[o] * CASE WHEN mnw[o] IS NULL THEN GREATEST(w_b, w_c, w_d)
                                     ELSE 1 + name_bonus / GREATEST(mnw[o], 1) END
                FROM pg_catalog.generate_subscripts(lex, 1) o ORDER BY o);
    q_any := ARRAY(SELECT pg_catalog.quote_literal(l)::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_a := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':A')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_b := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':B')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    q_c := ARRAY(SELECT (pg_catalog.quote_literal(l) || ':C')::tsquery FROM pg_catalog.unnest(lex) WITH ORDINALITY u(l, o) ORDER BY o);
    -- Any question word in a table's name.
    q_named := (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(l) || ':A', ' | ') FROM pg_catalog.unnest(lex) l)::tsquery;
    -- The score as one flat expression (no per-row sub-select); only
    -- subscripts are spliced in, every value is a bound parameter.
    FOR i IN 1..n_terms LOOP
        score_sql := score_sql || pg_catalog.format(
            ' + $1[%1$s] * CASE WHEN NOT c.search_vector @@ $2[%1$s] THEN 0'
            ' WHEN c.search_vector @@ $3[%1$s] THEN 1 + %5$s / GREATEST(1,'
            ' pg_catalog.length(pg_catalog.ts_filter(c.search_vector, ''{a}'')))'
            ' WHEN c.search_vector @@ $4[%1$s] THEN %2$s'
            ' WHEN c.search_vector @@ $5[%1$s] THEN %3$s ELSE %4$s END',
            i, w_b, w_c, w_d, name_bonus);
    END LOOP;
    -- One batch: score the tables matching $9 (at most $11 of them when $11
    -- is not NULL) and merge them into two lists of the best m so far: all
    -- tables (its m-th score is the MaxScore bar), and the tables whose
    -- names hold no question word. A warehouse's thousand copies of one
    -- name (stg_orders_1, fact_orders_2, ... for a question about orders)
    -- can fill the first list; the second keeps the differently named table
    -- the question also needs (order_items, whose columns hold its words).
    -- When all the question's tables fit in one batch, the first list alone
    -- (cheaper for the many small tenants; the second stays empty).
    IF (SELECT pg_catalog.sum(x) FROM pg_catalog.unnest(df) x) <= batch_rows THEN
        scan_sql := pg_catalog.format($q$
        SELECT pg_catalog.array_agg(f.s ORDER BY f.sc DESC, f.tn, f.s),
               pg_catalog.array_agg(f.tn ORDER BY f.sc DESC, f.tn, f.s),
               pg_catalog.array_agg(f.sc ORDER BY f.sc DESC, f.tn, f.s),
               $16::text[], $17::text[], $18::float8[]
        FROM (SELECT d.s, d.tn, d.sc
              FROM (SELECT DISTINCT ON (u.s, u.tn) u.s, u.tn, u.sc
                    FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::text[]), pg_catalog.unnest($14::float8[])) p(s, tn, sc)
                          UNION ALL
                          (SELECT c.schema_name, c.table_name, (%s)::float8
                           FROM (SELECT c0.schema_name, c0.table_name, c0.search_vector
                                 FROM control_plane.table_metadata_catalog c0
                                 WHERE c0.tenant_id = $7 AND c0.connection_id = $8 AND c0.search_vector @@ $9
                                 LIMIT $11) c
                           ORDER BY 3 DESC, 2, 1 LIMIT $10)) u
                    ORDER BY u.s, u.tn) d
              ORDER BY d.sc DESC, d.tn, d.s LIMIT $10) f
        $q$, score_sql);
    ELSE
        scan_sql := pg_catalog.format($q$
            WITH b AS MATERIALIZED (
                SELECT c.schema_name AS s, c.table_name AS tn, (%s)::float8 AS sc, c.search_vector @@ $15 AS named
                FROM (SELECT c0.schema_name, c0.table_name, c0.search_vector
                      FROM control_plane.table_metadata_catalog c0
                      WHERE c0.tenant_id = $7 AND c0.connection_id = $8 AND c0.search_vector @@ $9
                      LIMIT $11) c
            ), best AS (
                SELECT d.s, d.tn, d.sc
                FROM (SELECT DISTINCT ON (u.s, u.tn) u.s, u.tn, u.sc
                      FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::text[]),
                                                     pg_catalog.unnest($14::float8[])) p(s, tn, sc)
                            UNION ALL
                            (SELECT b.s, b.tn, b.sc FROM b ORDER BY b.sc DESC, b.tn, b.s LIMIT $10)) u
                      ORDER BY u.s, u.tn) d
                ORDER BY d.sc DESC, d.tn, d.s LIMIT $10
            ), unnamed AS (
                SELECT d.s, d.tn, d.sc
                FROM (SELECT DISTINCT ON (u.s, u.tn) u.s, u.tn, u.sc
                      FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest($16::text[]), pg_catalog.unnest($17::text[]),
                                                     pg_catalog.unnest($18::float8[])) p(s, tn, sc)
                            UNION ALL
                            (SELECT b.s, b.tn, b.sc FROM b WHERE NOT b.named ORDER BY b.sc DESC, b.tn, b.s LIMIT $10)) u
                      ORDER BY u.s, u.tn) d
                ORDER BY d.sc DESC, d.tn, d.s LIMIT $10
            )
            SELECT (SELECT pg_catalog.array_agg(x.s ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.tn ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.sc ORDER BY x.sc DESC, x.tn, x.s) FROM best x),
                   (SELECT pg_catalog.array_agg(x.s ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x),
                   (SELECT pg_catalog.array_agg(x.tn ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x),
                   (SELECT pg_catalog.array_agg(x.sc ORDER BY x.sc DESC, x.tn, x.s) FROM unnamed x)
            $q$, score_sql);
    END IF;
    -- Seed: tables holding every term (all-terms before any-term); a bounded
    -- sample, it only raises the bar early. Not needed when one batch takes
    -- every term anyway.
    IF n_terms > 1 AND (SELECT pg_catalog.sum(x) FROM pg_catalog.unnest(df) x) > batch_rows THEN
        batch := (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(l), ' & ') FROM pg_catalog.unnest(lex) l)::tsquery;
        EXECUTE scan_sql INTO top_s, top_t, top_sc, nn_s, nn_t, nn_sc
            USING idf, q_any, q_a, q_b, q_c, NULL::float8, t, conn, batch, m, batch_rows, top_s, top_t, top_sc,
                  q_named, nn_s, nn_t, nn_sc;
    END IF;
    done := pg_catalog.array_fill(false, ARRAY[n_terms]);
    LOOP
        IF NOT (false = ANY (done)) THEN
            EXIT;
        END IF;
        theta := CASE WHEN COALESCE(pg_catalog.cardinality(top_sc), 0) >= m THEN top_sc[m] END;
        bound := (SELECT pg_catalog.sum(ub[o]) FROM pg_catalog.generate_subscripts(done, 1) o WHERE NOT done[o]);
        EXIT WHEN theta IS NOT NULL AND theta >= bound;
        -- The next rarest terms, as many as fit in one batch (at least one);
        -- every table holding them is scored.
        batch := NULL;
        batch_df := 0;
        FOR i IN 1..n_terms LOOP
            CONTINUE WHEN done[i];
            EXIT WHEN batch IS NOT NULL AND batch_df + df[i] > batch_rows;
            batch := CASE WHEN batch IS NULL THEN q_any[i] ELSE batch || q_any[i] END;
            batch_df := batch_df + df[i];
            done[i] := true;
        END LOOP;
        EXECUTE scan_sql INTO top_s, top_t, top_sc, nn_s, nn_t, nn_sc
            USING idf, q_any, q_a, q_b, q_c, NULL::float8, t, conn, batch, m, NULL::bigint,
                  COALESCE(top_s, '{}'), COALESCE(top_t, '{}'), COALESCE(top_sc, '{}'),
                  q_named, COALESCE(nn_s, '{}'), COALESCE(nn_t, '{}'), COALESCE(nn_sc, '{}');
    END LOOP;
    IF top_s IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH first_stage AS MATERIALIZED (
        SELECT h.s AS schema_name, h.tn AS table_name, h.sc AS score, c.relationships,
               ARRAY(SELECT x FROM pg_catalog.unnest(lex) x
                     WHERE c.search_vector @@ pg_catalog.quote_literal(x)::tsquery ORDER BY x) AS matched,
               ARRAY(SELECT x FROM pg_catalog.unnest(lex) x
                     WHERE c.search_vector @@ (pg_catalog.quote_literal(x) || ':A')::tsquery ORDER BY x) AS in_name
        FROM (SELECT DISTINCT x.s, x.tn, x.sc
              FROM (SELECT * FROM ROWS FROM (pg_catalog.unnest(top_s), pg_catalog.unnest(top_t), pg_catalog.unnest(top_sc)) a(s, tn, sc)
                    UNION ALL
                    SELECT * FROM ROWS FROM (pg_catalog.unnest(nn_s), pg_catalog.unnest(nn_t), pg_catalog.unnest(nn_sc)) z(s, tn, sc)) x) h
        JOIN control_plane.table_metadata_catalog c
          ON c.tenant_id = t AND c.connection_id = conn AND c.schema_name = h.s AND c.table_name = h.tn
    ), hits AS MATERIALIZED (
        -- Look-alikes: a table whose name holds the same question words as a
        -- better one (stg_orders_17 after orders) goes behind the tables that
        -- bring other words, so ten copies of one table do not crowd out the
        -- table it joins.
        SELECT f.schema_name, f.table_name, f.score, f.relationships, f.matched, f.nth > 1 AS lookalike
        FROM (SELECT f0.*, pg_catalog.row_number() OVER (PARTITION BY f0.in_name ORDER BY f0.score DESC, f0.table_name, f0.schema_name) AS nth
              FROM first_stage f0) f
        ORDER BY f.nth > 1, f.score DESC, f.table_name, f.schema_name
        LIMIT k
    ), neighbours AS (
        -- Tables that join two or more hits (junction tables, bridges).
        SELECT r->>'schema' AS schema_name, r->>'table' AS table_name,
               pg_catalog.min(h.score) AS score
        FROM hits h, pg_catalog.jsonb_array_elements(h.relationships) r
        WHERE NOT EXISTS (SELECT 1 FROM hits h2
                          WHERE h2.schema_name = r->>'schema' AND h2.table_name = r->>'table')
        GROUP BY 1, 2
        HAVING pg_catalog.count(DISTINCT (h.schema_name, h.table_name)) >= 2
    )
    -- Hits, then the tables that join them, then the look-alikes.
    SELECT o.schema_name, o.table_name, o.score, o.matched, o.via_join FROM (
        SELECT h.schema_name, h.table_name, h.score::real AS score, h.matched, false AS via_join,
               CASE WHEN h.lookalike THEN 2 ELSE 0 END AS tier
        FROM hits h
        UNION ALL
        SELECT n.schema_name, n.table_name, (n.score / 2)::real, ARRAY[]::text[], true, 1
        FROM neighbours n
        JOIN control_plane.table_metadata_catalog c
          ON c.tenant_id = t AND c.connection_id = conn
         AND c.schema_name = n.schema_name AND c.table_name = n.table_name) o
    ORDER BY o.tier, o.score DESC, o.table_name;
END
$$;

-- Trigger functions of the catalog statistics are not executable by PUBLIC
-- (docs/function-privileges.md).
REVOKE EXECUTE ON FUNCTION control_plane.catalog_stats_trigger(), control_plane.catalog_stats_truncate() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- dbrag.isolation_report runs with JIT off (docs/isolation.md): its plan's
-- estimates crossed the JIT thresholds and each call spent seconds
-- compiling. (Any later CREATE OR REPLACE of it must keep SET jit = off.)
-- ---------------------------------------------------------------------------
ALTER FUNCTION dbrag.isolation_report() SET jit = off;

-- ===========================================================================
-- Verified queries and feedback (issue 17, section 3; docs/llm-and-guard.md,
-- "Verified queries and feedback").
-- New: dbrag._normalize_question(text), control_plane.verified_queries,
-- control_plane.query_feedback, view dbrag.verified_queries,
-- dbrag.add_verified_query(text, text), dbrag.remove_verified_query(uuid),
-- dbrag.feedback(uuid, boolean, text).
-- Changed: query_history.status also allows 'verified'; dbrag.usage counts
-- verified answers as answered.
-- ===========================================================================

ALTER TABLE control_plane.query_history DROP CONSTRAINT query_history_status_check;
ALTER TABLE control_plane.query_history ADD CONSTRAINT query_history_status_check
    CHECK (status IN ('ok', 'cached', 'verified', 'refused', 'error', 'model_error', 'timeout'));

CREATE OR REPLACE VIEW dbrag.usage WITH (security_invoker = true) AS
SELECT h.tenant_id,
       pg_catalog.count(*) AS calls,
       pg_catalog.count(*) FILTER (WHERE h.status IN ('ok', 'cached', 'verified')) AS answered,
       pg_catalog.count(*) FILTER (WHERE h.status = 'cached') AS from_cache,
       pg_catalog.count(*) FILTER (WHERE h.status = 'refused') AS refused,
       COALESCE(pg_catalog.sum(h.prompt_tokens), 0) AS prompt_tokens,
       COALESCE(pg_catalog.sum(h.completion_tokens), 0) AS completion_tokens,
       pg_catalog.max(h.created_at) AS last_call
FROM control_plane.query_history h
GROUP BY h.tenant_id;

-- The form of a question that verified queries are matched on: lower case,
-- runs of white space as one space, trailing sentence punctuation (. ? !)
-- dropped. Nothing else: words, numbers and operators stay as they are, so
-- "amount > 100" and "amount < 100" never match each other.
CREATE FUNCTION dbrag._normalize_question(question text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.btrim(pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(pg_catalog.lower(question), '\s+', ' ', 'g'),
               '[\s.?!]+$', ''))
$$;

-- Question → SQL pairs a tenant vouches for, each checked by the guard
-- against the connection it was saved for. Written only by
-- dbrag.add_verified_query (as the extension, for the tenant in force).
CREATE TABLE control_plane.verified_queries (
    tenant_id           uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                        REFERENCES control_plane.tenants ON DELETE CASCADE,
    verified_id         uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    connection_id       uuid NOT NULL,
    question            text NOT NULL CHECK (pg_catalog.length(question) <= 8000),
    normalized_question text NOT NULL,
    sql                 text NOT NULL CHECK (pg_catalog.length(sql) <= 100000),
    search_vector       tsvector,
    created_by          text NOT NULL DEFAULT session_user,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, verified_id),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
-- md5: a btree entry cannot hold an 8000-character question.
CREATE INDEX verified_queries_question_idx
    ON control_plane.verified_queries (tenant_id, connection_id, pg_catalog.md5(normalized_question));
CREATE INDEX verified_queries_search_idx
    ON control_plane.verified_queries USING gin (tenant_id, search_vector);

-- One row per history row a user judged (the latest judgement wins).
-- example_id: the training example the judgement made, when the tenant's
-- setting feedback_examples is on.
CREATE TABLE control_plane.query_feedback (
    tenant_id     uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                  REFERENCES control_plane.tenants ON DELETE CASCADE,
    query_id      uuid NOT NULL,
    helpful       boolean NOT NULL,
    corrected_sql text CHECK (pg_catalog.length(corrected_sql) <= 100000),
    example_id    uuid,
    login_role    text NOT NULL DEFAULT session_user,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, query_id),
    FOREIGN KEY (tenant_id, query_id)
        REFERENCES control_plane.query_history (tenant_id, query_id) ON DELETE CASCADE
);

SELECT dbrag._tenant_policies(t, 'tenant_id', true)
FROM unnest(ARRAY['control_plane.verified_queries', 'control_plane.query_feedback']::regclass[]) AS t;

-- Tenants read their rows and may delete verified queries; new ones only
-- through dbrag.add_verified_query, which runs the guard first.
GRANT SELECT, DELETE ON control_plane.verified_queries TO PUBLIC;
GRANT SELECT ON control_plane.query_feedback TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('control_plane.verified_queries', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.query_feedback', '');

-- A tenant's verified queries (security_invoker: the table's policies decide
-- the rows; dbrag_admin sees every tenant's).
CREATE VIEW dbrag.verified_queries WITH (security_invoker = true) AS
SELECT v.tenant_id, v.verified_id, v.connection_id, v.question, v.sql, v.created_by, v.created_at
FROM control_plane.verified_queries v;
GRANT SELECT ON dbrag.verified_queries TO PUBLIC;

-- Remove one verified query. SECURITY INVOKER: the delete goes through the
-- tenant policies, so another tenant's id reads as unknown.
CREATE FUNCTION dbrag.remove_verified_query(verified_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF remove_verified_query.verified_id IS NULL THEN
        RAISE EXCEPTION 'verified_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM control_plane.verified_queries v WHERE v.verified_id = remove_verified_query.verified_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'verified query % does not exist for this tenant', remove_verified_query.verified_id
            USING ERRCODE = '42704';
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION dbrag._normalize_question(text) FROM PUBLIC;
GRANT ALL ON control_plane.verified_queries, control_plane.query_feedback TO dbrag_admin;

CREATE FUNCTION dbrag."add_verified_query"(
	"question" TEXT,
	"sql" TEXT
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'add_verified_query_wrapper';

CREATE FUNCTION dbrag."feedback"(
	"history_id" uuid,
	"helpful" bool,
	"corrected_sql" TEXT DEFAULT NULL
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'feedback_wrapper';
-- ===========================================================================
-- Model budgets per tenant (docs/llm-and-guard.md, "Budgets"): the table
-- control_plane.tenant_budgets, dbrag.set_tenant_budget, dbrag.budget_status
-- and new columns at the end of dbrag.usage. The counters live in shared
-- memory, reserved by the preloaded library (restart after installing it, as
-- for every update); without pg_dbrag in shared_preload_libraries a tenant
-- with a budget gets 55000 at a model call rather than an unenforced limit.
-- ===========================================================================

-- Model budgets per tenant (docs/llm-and-guard.md, "Budgets"): calls per minute
-- and tokens per day, NULL = unlimited. Operators write; a tenant reads its own
-- row. The counters live in shared memory (dbrag.budget_status()).
CREATE TABLE control_plane.tenant_budgets (
    tenant_id        uuid PRIMARY KEY REFERENCES control_plane.tenants ON DELETE CASCADE,
    calls_per_minute integer CHECK (calls_per_minute >= 0),
    tokens_per_day   bigint CHECK (tokens_per_day >= 0),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenant_budgets', '');
ALTER TABLE control_plane.tenant_budgets ENABLE ROW LEVEL SECURITY;
ALTER TABLE control_plane.tenant_budgets FORCE ROW LEVEL SECURITY;
CREATE POLICY dbrag_tenant_select ON control_plane.tenant_budgets FOR SELECT
    USING (tenant_id = dbrag.current_tenant_id());
CREATE POLICY dbrag_admin_select ON control_plane.tenant_budgets FOR SELECT TO dbrag_admin USING (true);
CREATE POLICY dbrag_admin_insert ON control_plane.tenant_budgets FOR INSERT TO dbrag_admin WITH CHECK (true);
CREATE POLICY dbrag_admin_update ON control_plane.tenant_budgets FOR UPDATE TO dbrag_admin USING (true) WITH CHECK (true);
CREATE POLICY dbrag_admin_delete ON control_plane.tenant_budgets FOR DELETE TO dbrag_admin USING (true);
GRANT SELECT ON control_plane.tenant_budgets TO PUBLIC;

-- dbrag.set_tenant_budget(tenant, calls_per_minute, tokens_per_day): operators only.
CREATE FUNCTION dbrag.set_tenant_budget(tenant uuid, calls_per_minute integer, tokens_per_day bigint)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF calls_per_minute < 0 OR tokens_per_day < 0 THEN
        RAISE EXCEPTION 'budgets must be >= 0 (NULL = unlimited)' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM control_plane.tenants t WHERE t.tenant_id = set_tenant_budget.tenant) THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = '42704';
    END IF;
    INSERT INTO control_plane.tenant_budgets AS b (tenant_id, calls_per_minute, tokens_per_day)
    VALUES (set_tenant_budget.tenant, set_tenant_budget.calls_per_minute, set_tenant_budget.tokens_per_day)
    ON CONFLICT (tenant_id) DO UPDATE
        SET calls_per_minute = EXCLUDED.calls_per_minute, tokens_per_day = EXCLUDED.tokens_per_day,
            updated_at = pg_catalog.now();
    PERFORM dbrag._audit('budget_set', tenant, pg_catalog.jsonb_build_object(
        'calls_per_minute', calls_per_minute, 'tokens_per_day', tokens_per_day));
END
$$;
REVOKE EXECUTE ON FUNCTION dbrag.set_tenant_budget(uuid, integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag.set_tenant_budget(uuid, integer, bigint) TO dbrag_admin;

GRANT ALL ON control_plane.tenant_budgets TO dbrag_admin;

CREATE FUNCTION dbrag."budget_status"() RETURNS TABLE (
	"tenant_id" uuid,
	"calls_per_minute" INT,
	"calls_left_this_minute" INT,
	"minute_resets_at" timestamp with time zone,
	"tokens_per_day" bigint,
	"tokens_used_today" bigint,
	"tokens_left_today" bigint,
	"day_resets_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'budget_status_wrapper';

-- Usage per tenant: calls and tokens from the history, and what is left of
-- the budgets. security_invoker, so the query_history policies decide the
-- history rows and dbrag.budget_status() the budget rows: a tenant sees its
-- own line, dbrag_admin every tenant's.
CREATE OR REPLACE VIEW dbrag.usage WITH (security_invoker = true) AS
SELECT COALESCE(h.tenant_id, b.tenant_id) AS tenant_id,
       COALESCE(h.calls, 0) AS calls,
       COALESCE(h.answered, 0) AS answered,
       COALESCE(h.from_cache, 0) AS from_cache,
       COALESCE(h.refused, 0) AS refused,
       COALESCE(h.prompt_tokens, 0) AS prompt_tokens,
       COALESCE(h.completion_tokens, 0) AS completion_tokens,
       h.last_call,
       b.calls_per_minute,
       b.calls_left_this_minute,
       b.minute_resets_at,
       b.tokens_per_day,
       b.tokens_used_today,
       b.tokens_left_today,
       b.day_resets_at
FROM (SELECT q.tenant_id,
             pg_catalog.count(*) AS calls,
             pg_catalog.count(*) FILTER (WHERE q.status IN ('ok', 'cached', 'verified')) AS answered,
             pg_catalog.count(*) FILTER (WHERE q.status = 'cached') AS from_cache,
             pg_catalog.count(*) FILTER (WHERE q.status = 'refused') AS refused,
             COALESCE(pg_catalog.sum(q.prompt_tokens), 0) AS prompt_tokens,
             COALESCE(pg_catalog.sum(q.completion_tokens), 0) AS completion_tokens,
             pg_catalog.max(q.created_at) AS last_call
      FROM control_plane.query_history q
      GROUP BY q.tenant_id) h
FULL JOIN dbrag.budget_status() b ON b.tenant_id = h.tenant_id;
GRANT SELECT ON dbrag.usage TO PUBLIC;
-- ===========================================================================
-- The four tenant policies written once: dbrag._enable_tenant_isolation no
-- longer writes them itself; dbrag._isolation_guarded calls
-- dbrag._tenant_policies(tbl, tenant_column, false) after it, on each table.
-- ===========================================================================

CREATE OR REPLACE FUNCTION dbrag._enable_tenant_isolation(tbl regclass, tenant_column name, rebuild_unique boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col_type regtype;
    kind "char";
    added boolean := false;
    has_index boolean;
    orphans bigint;
    u record;
    stmt text;
    distributed boolean;
BEGIN
    IF tbl IS NULL OR tenant_column IS NULL OR tenant_column = '' THEN
        RAISE EXCEPTION 'table and tenant column must not be NULL or empty' USING ERRCODE = '22004';
    END IF;
    SELECT c.relkind INTO kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    IF kind IS NULL OR kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;
    IF dbrag._is_own_table(tbl) THEN
        RAISE EXCEPTION '% belongs to pg_dbrag, which manages its isolation itself', tbl USING ERRCODE = '22023';
    END IF;
    -- Every ALTER below needs this lock; take it first rather than upgrade.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);

    SELECT a.atttypid::regtype INTO col_type FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND NOT a.attisdropped AND a.attnum > 0;
    IF col_type IS NULL THEN
        -- No default while adding: existing rows must not silently join the
        -- caller's tenant; they stay NULL and are refused below.
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I uuid', tbl, tenant_column);
        added := true;
    ELSIF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column %.% is %, a tenant column must be uuid', tbl, tenant_column, col_type
            USING ERRCODE = '22023',
                  HINT = 'convert it first: ALTER TABLE ... ALTER COLUMN ... TYPE uuid USING ...::uuid';
    END IF;
    -- Citus refuses any ALTER of a distribution column, even one that
    -- changes nothing; a distributed table's key column is NOT NULL already.
    distributed := COALESCE(dbrag._distribution_column(tbl) = tenant_column, false);
    BEGIN
        IF NOT distributed THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, tenant_column);
        END IF;
    EXCEPTION WHEN not_null_violation THEN
        IF added THEN
            RAISE EXCEPTION '% has rows, and a tenant column added now would leave them without a tenant', tbl
                USING ERRCODE = '23502',
                      HINT = pg_catalog.format('add and fill it first: ALTER TABLE %s ADD COLUMN %I uuid; '
                          'UPDATE %s SET %I = ''<tenant uuid>''; then call dbrag.enable_tenant_isolation again',
                          tbl, tenant_column, tbl, tenant_column);
        END IF;
        -- Under forced RLS the count sees only the caller's rows; say what we can.
        EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE %I IS NULL', tbl, tenant_column) INTO orphans;
        RAISE EXCEPTION '% has % row(s) without a tenant in column %', tbl,
                CASE WHEN orphans > 0 THEN orphans::text ELSE 'some' END, tenant_column
            USING ERRCODE = '23502',
                  HINT = pg_catalog.format('assign them first: UPDATE %s SET %I = ''<tenant uuid>'' WHERE %I IS NULL',
                      tbl, tenant_column, tenant_column);
    END;
    IF distributed THEN
        RAISE NOTICE '% is distributed by %: Citus cannot give that column a default, so inserts must name the tenant', tbl, tenant_column
            USING HINT = 'isolate a table before create_distributed_table to get the default';
    ELSE
        EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT dbrag.current_tenant_id()', tbl, tenant_column);
    END IF;
    -- The four tenant policies: dbrag._isolation_guarded calls
    -- dbrag._tenant_policies(tbl, tenant_column, false) right after this
    -- body, as the same caller (sql/isolation.sql writes them once).

    -- Permissive policies are OR-ed: one of the owner's own can widen access.
    FOR u IN SELECT p.polname, pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS q
             FROM pg_catalog.pg_policy p
             WHERE p.polrelid = tbl AND p.polpermissive AND p.polname !~ '^dbrag_(tenant|admin)_'
    LOOP
        RAISE WARNING 'policy % on % is permissive: it is OR-ed with the tenant policies and can let other tenants'' rows through', u.polname, tbl
            USING DETAIL = pg_catalog.format('USING %s', COALESCE(u.q, '(none)')),
                  HINT = pg_catalog.format('make it restrictive or drop it: DROP POLICY %I ON %s;', u.polname, tbl);
    END LOOP;

    -- A tenant-first index, unless a usable one already leads with the column.
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = tbl AND a.attname = tenant_column AND i.indpred IS NULL
          AND am.amname IN ('btree', 'hash')
    ) INTO has_index;
    IF NOT has_index THEN
        -- Let PostgreSQL pick a free name (<table>_<column>_idx).
        EXECUTE pg_catalog.format('CREATE INDEX ON %s (%I)', tbl, tenant_column);
    END IF;

    -- Unique keys that do not lead with the tenant column: a tenant can probe
    -- another tenant's values through 23505, and Citus cannot distribute.
    FOR u IN SELECT * FROM dbrag._non_tenant_first_unique(tbl, tenant_column) LOOP
        IF rebuild_unique THEN
            FOREACH stmt IN ARRAY dbrag._tenant_first_unique_sql(u.idx, tenant_column) LOOP
                EXECUTE stmt;
            END LOOP;
            RAISE NOTICE 'rebuilt % of % to lead with %', u.idx_text, tbl, tenant_column;
        ELSE
            RAISE WARNING '% of % does not lead with %', u.idx_text, tbl, tenant_column
                USING DETAIL = CASE WHEN u.tenant_in_key
                        THEN 'The tenant column is in the key but not first: the tenant-first index scan cannot use it.'
                        ELSE 'Uniqueness spans tenants: an INSERT that fails with 23505 tells a tenant that another tenant holds the value, and Citus cannot distribute the table by the tenant column.' END,
                      HINT = pg_catalog.format('rebuild it: SELECT dbrag.enable_tenant_isolation(%L, %L, rebuild_unique => true);',
                          tbl::text, tenant_column);
        END IF;
    END LOOP;

    -- Partitions and inheritance children are tables of their own (queried
    -- directly they apply their own policies, not the parent's):
    -- dbrag._isolation_guarded calls this body for each of them too.
END
$$;
-- ===========================================================================
-- Follow-up questions and explanations (docs/llm-and-guard.md, "Conversations,
-- explanations and the last answer").
-- New: query_history.conversation_id and .explanation (last, as in a fresh
-- install), index query_history_conversation_idx, view dbrag.conversations,
-- functions dbrag.explain_sql(text), dbrag.last_answer().
-- Changed signatures: dbrag.ask(text, integer) becomes
-- ask(text, integer, uuid, boolean) and dbrag.generate_sql(text) becomes
-- generate_sql(text, uuid), all new arguments with defaults, so positional
-- calls ask('q') and ask('q', 10) keep working; EXECUTE stays with PUBLIC.
-- ===========================================================================

ALTER TABLE control_plane.query_history ADD COLUMN IF NOT EXISTS conversation_id uuid;
ALTER TABLE control_plane.query_history ADD COLUMN IF NOT EXISTS explanation text;
CREATE INDEX IF NOT EXISTS query_history_conversation_idx ON control_plane.query_history
    (tenant_id, conversation_id, created_at DESC) WHERE conversation_id IS NOT NULL;

DROP FUNCTION dbrag.ask(text, integer);
DROP FUNCTION dbrag.generate_sql(text);

CREATE FUNCTION dbrag."ask"(
	"question" TEXT,
	"max_rows" INT DEFAULT 1000,
	"conversation" uuid DEFAULT NULL,
	"explain" bool DEFAULT false
) RETURNS SETOF jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ask_wrapper';

CREATE FUNCTION dbrag."generate_sql"(
	"question" TEXT,
	"conversation" uuid DEFAULT NULL
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'generate_sql_wrapper';

CREATE FUNCTION dbrag."explain_sql"(
	"sql" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'explain_sql_wrapper';

CREATE FUNCTION dbrag."last_answer"() RETURNS jsonb
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'last_answer_wrapper';

-- A tenant's conversations (docs/llm-and-guard.md, "Conversations"). security_invoker,
-- so the query_history policies decide the rows, as for dbrag.usage.
CREATE VIEW dbrag.conversations WITH (security_invoker = true) AS
SELECT h.tenant_id,
       h.conversation_id,
       (pg_catalog.array_agg(h.question ORDER BY h.created_at, h.query_id))[1] AS first_question,
       pg_catalog.count(*) AS turns,
       pg_catalog.max(h.created_at) AS last_activity
FROM control_plane.query_history h
WHERE h.conversation_id IS NOT NULL
GROUP BY h.tenant_id, h.conversation_id;
GRANT SELECT ON dbrag.conversations TO PUBLIC;

-- ===========================================================================
-- Value index (docs/catalog-search.md, "Values"): distinct values of
-- low-cardinality text columns, filled by the next sync_catalog of each
-- connection (empty until then).
-- New: control_plane.value_index (RLS like the other tenant tables, dumped
-- with the extension's data, SELECT to PUBLIC, ALL to dbrag_admin) and its
-- three indexes; dbrag.search_values(text, integer).
-- ===========================================================================

CREATE TABLE control_plane.value_index (
    tenant_id     uuid NOT NULL,
    connection_id uuid NOT NULL,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    column_name   text NOT NULL,
    value         text NOT NULL,
    -- Lower-case words of the value joined by one space ("New-York" -> "new york").
    value_norm    text NOT NULL,
    -- Its first and last two letters: where one-typo candidates are looked
    -- up. Columns, not expression indexes, so that under the caller's row
    -- security (which keeps non-leakproof left()/right() out of index
    -- conditions) the lookup still uses an index.
    value_prefix  text GENERATED ALWAYS AS (pg_catalog.left(value_norm, 2)) STORED,
    value_suffix  text GENERATED ALWAYS AS (pg_catalog.right(value_norm, 2)) STORED,
    PRIMARY KEY (tenant_id, connection_id, schema_name, table_name, column_name, value),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
-- Exact matches, then one-typo candidates by their first or last two letters.
CREATE INDEX value_index_norm ON control_plane.value_index (tenant_id, value_norm);
CREATE INDEX value_index_prefix ON control_plane.value_index (tenant_id, value_prefix);
CREATE INDEX value_index_suffix ON control_plane.value_index (tenant_id, value_suffix);
SELECT dbrag._tenant_policies('control_plane.value_index', 'tenant_id', true);
SELECT pg_catalog.pg_extension_config_dump('control_plane.value_index', '');
GRANT SELECT ON control_plane.value_index TO PUBLIC;
GRANT ALL ON control_plane.value_index TO dbrag_admin;

CREATE FUNCTION dbrag."search_values"(
	"question" TEXT, /* Option < & str > */
	"k" INT DEFAULT 10 /* Option < i32 > */
) RETURNS TABLE (
	"connection_id" uuid,  /* pgrx :: Uuid */
	"schema_name" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"column_name" TEXT,  /* String */
	"value" TEXT,  /* String */
	"score" real  /* f32 */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'search_values_wrapper';

-- ===========================================================================
-- A new tenant's role on Citus at commit (docs/scale-out.md, section 5):
-- INSERT ... SELECT into control_plane.tenants on a cluster. The row
-- trigger makes the role at once on one node; on Citus the deferred
-- constraint trigger tenants_role_deferred makes it at commit, when Citus
-- has finished streaming the rows to the workers. COPY on a cluster (a
-- Citus connection to the coordinator's placement) is refused, 0A000.
-- ===========================================================================

CREATE OR REPLACE FUNCTION control_plane.sync_tenant_role() RETURNS trigger
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
        IF TG_OP = 'UPDATE' AND OLD.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
            PERFORM dbrag._sync_tenant_role(OLD.tenant_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER tenants_role_deferred AFTER INSERT ON control_plane.tenants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION control_plane.sync_tenant_role();

-- ===========================================================================
-- set_tenant_budget on Citus: a budget changed a second time (INSERT ... ON
-- CONFLICT DO UPDATE on the distributed tenant_budgets) takes updated_at from
-- the new row's default instead of calling now(), which Citus refuses there.
-- ===========================================================================

CREATE OR REPLACE FUNCTION dbrag.set_tenant_budget(tenant uuid, calls_per_minute integer, tokens_per_day bigint)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._require_admin();
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF calls_per_minute < 0 OR tokens_per_day < 0 THEN
        RAISE EXCEPTION 'budgets must be >= 0 (NULL = unlimited)' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM control_plane.tenants t WHERE t.tenant_id = set_tenant_budget.tenant) THEN
        RAISE EXCEPTION 'tenant % does not exist', tenant USING ERRCODE = '42704';
    END IF;
    INSERT INTO control_plane.tenant_budgets AS b (tenant_id, calls_per_minute, tokens_per_day)
    VALUES (set_tenant_budget.tenant, set_tenant_budget.calls_per_minute, set_tenant_budget.tokens_per_day)
    ON CONFLICT (tenant_id) DO UPDATE
        SET calls_per_minute = EXCLUDED.calls_per_minute, tokens_per_day = EXCLUDED.tokens_per_day,
            -- The new row's default: Citus refuses non-IMMUTABLE
            -- functions in DO UPDATE on a distributed table.
            updated_at = EXCLUDED.updated_at;
    PERFORM dbrag._audit('budget_set', tenant, pg_catalog.jsonb_build_object(
        'calls_per_minute', calls_per_minute, 'tokens_per_day', tokens_per_day));
END
$$;
