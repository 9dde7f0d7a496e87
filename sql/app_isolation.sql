-- Tenant isolation for application tables (docs/isolation.md): the same forced RLS and
-- index-friendly policies as the control plane, a report of every way a
-- database can leak across tenants, and the dbrag.auto_isolate guard.
--
-- The public entry points are thin SQL wrappers over dbrag._isolation_guarded
-- (Rust), which marks "pg_dbrag is changing isolation now" for the duration
-- of the call, so the auto_isolate event trigger neither warns about nor
-- re-isolates the half-done table between the statements below.

-- Tables whose isolation pg_dbrag itself manages (its control plane).
CREATE FUNCTION dbrag._is_own_table(tbl oid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = tbl
          AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
          AND d.deptype = 'e' AND e.extname = 'pg_dbrag')
$$;

-- The statements that rebuild unique index `idx` so that it leads with
-- `tenant_column` (same name, same kind: primary key, unique constraint or
-- unique index; same INCLUDE, NULLS NOT DISTINCT, DEFERRABLE, predicate,
-- replica identity and CLUSTER mark). Refuses when a foreign key depends on
-- it: those keys must be rebuilt tenant-first together, by hand. With
-- strict => false (the report), an index it cannot rebuild yields a comment
-- instead of an error.
CREATE FUNCTION dbrag._tenant_first_unique_sql(idx oid, tenant_column name, strict boolean DEFAULT true)
RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ix pg_catalog.pg_index;
    con pg_catalog.pg_constraint;
    tbl regclass;
    idx_name name;
    idx_kind "char";
    nsp name;
    nsp_oid oid;
    am name;
    keys text[];
    incl text[];
    def text;
    prefix text;
    new_name text;
    n int := 0;
    fks text;
    out text[];
BEGIN
    SELECT * INTO ix FROM pg_catalog.pg_index i WHERE i.indexrelid = idx;
    IF NOT FOUND OR NOT ix.indisunique THEN
        RAISE EXCEPTION '% is not a unique index', idx::regclass USING ERRCODE = '22023';
    END IF;
    tbl := ix.indrelid;
    SELECT c.relname, c.relkind, n.nspname, n.oid, a.amname INTO idx_name, idx_kind, nsp, nsp_oid, am
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_am a ON a.oid = c.relam
    WHERE c.oid = idx;
    SELECT pg_catalog.string_agg(pg_catalog.format('%I on %s', f.conname, f.conrelid::regclass), ', ')
    INTO fks
    FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conindid = idx;
    IF fks IS NOT NULL THEN
        RAISE EXCEPTION 'unique index % cannot be rebuilt tenant-first: foreign keys depend on it (%)', idx::regclass, fks
            USING ERRCODE = '2BP01',
                  HINT = pg_catalog.format('give the referencing tables a %I column, drop those foreign keys, '
                      'rebuild the key as (%I, ...), and recreate them as FOREIGN KEY (%I, ...) REFERENCES %s (%I, ...)',
                      tenant_column, tenant_column, tenant_column, tbl, tenant_column);
    END IF;
    SELECT * INTO con FROM pg_catalog.pg_constraint c
    WHERE c.conindid = idx AND c.conrelid = ix.indrelid AND c.contype IN ('p', 'u');
    IF FOUND THEN
        -- A constraint names plain columns only: rebuild it from their names,
        -- the tenant column first and not twice.
        SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.ord)
                   FILTER (WHERE k.ord <= ix.indnkeyatts AND a.attname <> tenant_column),
               pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.ord)
                   FILTER (WHERE k.ord > ix.indnkeyatts)
        INTO keys, incl
        FROM pg_catalog.unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum;
        out := ARRAY[pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s%s (%s)%s%s;',
            tbl, con.conname, con.conname,
            CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END,
            CASE WHEN ix.indnullsnotdistinct THEN ' NULLS NOT DISTINCT' ELSE '' END,
            pg_catalog.array_to_string(pg_catalog.quote_ident(tenant_column) || COALESCE(keys, '{}'), ', '),
            CASE WHEN incl IS NOT NULL THEN ' INCLUDE (' || pg_catalog.array_to_string(incl, ', ') || ')' ELSE '' END,
            CASE WHEN con.condeferrable THEN ' DEFERRABLE'
                 || CASE WHEN con.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END ELSE '' END)];
        new_name := idx_name;
    ELSE
        -- A unique index may hold expressions, operator classes, collations
        -- and a predicate: keep its definition verbatim and put the tenant
        -- column in front of its key list.
        def := pg_catalog.pg_get_indexdef(idx);
        prefix := pg_catalog.format('CREATE UNIQUE INDEX %s ON %s%s USING %s (',
            pg_catalog.quote_ident(idx_name), CASE WHEN idx_kind = 'I' THEN 'ONLY ' ELSE '' END,
            pg_catalog.format('%I.%I', (SELECT n2.nspname FROM pg_catalog.pg_class c2
                JOIN pg_catalog.pg_namespace n2 ON n2.oid = c2.relnamespace WHERE c2.oid = ix.indrelid),
                (SELECT c2.relname FROM pg_catalog.pg_class c2 WHERE c2.oid = ix.indrelid)),
            pg_catalog.quote_ident(am));
        IF pg_catalog.left(def, pg_catalog.length(prefix)) <> prefix THEN
            IF NOT strict THEN
                RETURN ARRAY['-- rebuild by hand, with ' || pg_catalog.quote_ident(tenant_column) || ' first: ' || def];
            END IF;
            RAISE EXCEPTION 'cannot rebuild unique index %: unexpected definition %', idx::regclass, def
                USING ERRCODE = '22023';
        END IF;
        LOOP
            new_name := pg_catalog.left(idx_name, 50) || '_dbrag' || CASE WHEN n > 0 THEN n::text ELSE '' END;
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                  WHERE c.relname = new_name AND c.relnamespace = nsp_oid);
            n := n + 1;
        END LOOP;
        out := ARRAY[
            pg_catalog.format('CREATE UNIQUE INDEX %I ON %s USING %I (%I, %s;', new_name, tbl, am, tenant_column,
                pg_catalog.substr(def, pg_catalog.length(prefix) + 1)),
            pg_catalog.format('DROP INDEX %s;', idx::regclass),
            pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I;', nsp, new_name, idx_name)];
    END IF;
    IF ix.indisreplident THEN
        out := out || pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %I;', tbl, idx_name);
    END IF;
    IF ix.indisclustered THEN
        out := out || pg_catalog.format('ALTER TABLE %s CLUSTER ON %I;', tbl, idx_name);
    END IF;
    RETURN out;
END
$$;

-- Unique indexes of `tbl` that do not lead with the tenant column, with the
-- statements that fix each. Indexes attached to a partitioned parent's index
-- are reported at the parent. A table whose primary key is the tenant column
-- alone holds one row per tenant (a registry such as control_plane.tenants):
-- its other unique keys are global on purpose and are not reported.
CREATE FUNCTION dbrag._non_tenant_first_unique(tbl oid, tenant_column name)
RETURNS TABLE(idx oid, idx_text text, tenant_in_key boolean, is_constraint boolean)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.indexrelid,
           pg_catalog.format('%s %s (%s)',
               CASE WHEN c.contype = 'p' THEN 'primary key'
                    WHEN c.contype = 'u' THEN 'unique constraint'
                    ELSE 'unique index' END,
               pg_catalog.quote_ident(ic.relname),
               (SELECT pg_catalog.string_agg(pg_catalog.pg_get_indexdef(i.indexrelid, k, true), ', ')
                FROM pg_catalog.generate_series(1, i.indnkeyatts) AS k)),
           ta.attnum = ANY (i.indkey::int2[]),
           c.oid IS NOT NULL
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_attribute ta ON ta.attrelid = i.indrelid AND ta.attname = tenant_column
                                    AND NOT ta.attisdropped
    LEFT JOIN pg_catalog.pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                                         AND c.contype IN ('p', 'u')
    WHERE i.indrelid = tbl AND i.indisunique AND i.indkey[0] <> ta.attnum
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index pk
                      WHERE pk.indrelid = tbl AND pk.indisprimary AND pk.indnkeyatts = 1
                        AND pk.indkey[0] = ta.attnum)
    ORDER BY ic.relname
$$;

-- The column Citus distributes a table by, NULL for a table Citus does not
-- hash-distribute (or where Citus is not installed).
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

-- The body of dbrag.enable_tenant_isolation (docs/isolation.md); call the public one.
CREATE FUNCTION dbrag._enable_tenant_isolation(tbl regclass, tenant_column name, rebuild_unique boolean)
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

-- The body of dbrag.disable_tenant_isolation: drop the tenant policies and
-- RLS (on partitions and children too); the column, its data and its
-- indexes stay. RLS stays enabled when the table has policies of its own.
CREATE FUNCTION dbrag._disable_tenant_isolation(tbl regclass)
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

-- dbrag.enable_tenant_isolation(tbl, tenant_column, rebuild_unique): add the
-- tenant column if missing (DEFAULT dbrag.current_tenant_id(), NOT NULL),
-- force RLS, create the four index-friendly policies and a tenant-first
-- index; report unique keys that do not lead with the tenant column, and
-- rebuild them tenant-first when rebuild_unique. Idempotent. Runs with the
-- caller's rights: the caller must own the table.
CREATE FUNCTION dbrag.enable_tenant_isolation(tbl regclass, tenant_column name DEFAULT 'tenant_id',
                                              rebuild_unique boolean DEFAULT false)
RETURNS void LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT dbrag._isolation_guarded('enable', tbl::pg_catalog.oid, tenant_column::pg_catalog.text, rebuild_unique)
$$;

-- dbrag.disable_tenant_isolation(tbl): the reverse; the column and its data stay.
CREATE FUNCTION dbrag.disable_tenant_isolation(tbl regclass)
RETURNS void LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT dbrag._isolation_guarded('disable', tbl::pg_catalog.oid, NULL, NULL)
$$;

-- Tables that hold tenants' rows, with their tenant column: a column read by
-- a policy that calls a dbrag function, a column whose default is
-- dbrag.current_tenant_id(), or a uuid column named tenant_id. `only`
-- limits the search to some tables (the event trigger's).
CREATE FUNCTION dbrag._tenant_tables(only_rels oid[] DEFAULT NULL)
RETURNS TABLE(rel oid, tenant_column name, attnum smallint)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    WITH candidates AS (
        SELECT d.refobjid AS rel, d.refobjsubid::smallint AS attnum, 1 AS rank
        FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass
          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0
          AND (only_rels IS NULL OR d.refobjid = ANY (only_rels))
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend f
                      JOIN pg_catalog.pg_proc p ON p.oid = f.refobjid
                      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                      WHERE f.classid = d.classid AND f.objid = d.objid
                        AND f.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND n.nspname = 'dbrag')
        UNION ALL
        SELECT ad.adrelid, ad.adnum, 2 FROM pg_catalog.pg_attrdef ad
        WHERE (only_rels IS NULL OR ad.adrelid = ANY (only_rels))
          AND pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) = 'dbrag.current_tenant_id()'
        UNION ALL
        SELECT a.attrelid, a.attnum, 3 FROM pg_catalog.pg_attribute a
        WHERE a.attname = 'tenant_id' AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
          AND a.attnum > 0 AND NOT a.attisdropped AND (only_rels IS NULL OR a.attrelid = ANY (only_rels))
    )
    SELECT DISTINCT ON (c.oid) c.oid, a.attname, a.attnum
    FROM candidates x
    JOIN pg_catalog.pg_class c ON c.oid = x.rel
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.attnum AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
    ORDER BY c.oid, x.rank, a.attnum
$$;

-- dbrag.isolation_report(): one row per way this database can leak rows
-- across tenants or defeat the tenant index, with the statement that fixes
-- it. Severity: critical (rows of one tenant reachable by another now),
-- warning (weaker than it should be: owner bypass, per-row policies, probing
-- through unique keys, roles that skip RLS), info (the bootstrap superuser,
-- which necessarily exists). Runs with the caller's rights over the
-- catalogs, which every role may read; tenant members are those the caller
-- sees in control_plane.tenant_members (an operator: all). JIT is off: the
-- planner's guesses for the catalog functions make the plan look expensive
-- enough to compile, which took seconds for a query that runs in
-- milliseconds.
CREATE FUNCTION dbrag.isolation_report()
RETURNS TABLE(severity text, object text, finding text, fix text)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
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

-- dbrag.auto_isolate (off / warn / enforce): on every CREATE TABLE, CREATE
-- TABLE AS, SELECT INTO and ALTER TABLE, a table (or a partition of it) that
-- has a tenant column (as dbrag._tenant_tables() defines it) but no forced
-- row-level security gets a WARNING with the statement that isolates it
-- (warn), or is isolated there and then by dbrag.enable_tenant_isolation
-- (enforce); when isolation fails — rows without a tenant — the DDL is
-- refused. Temporary tables and extensions' own tables are left alone.
CREATE FUNCTION dbrag._auto_isolate() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mode text := dbrag._auto_isolate_mode();
    rels oid[];
    r record;
    msg text;
    state text;
BEGIN
    IF mode = 'off' THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(DISTINCT x.relid) INTO rels
    FROM pg_catalog.pg_event_trigger_ddl_commands() cmd
    CROSS JOIN LATERAL (SELECT cmd.objid AS relid
                        UNION SELECT pt.relid FROM pg_catalog.pg_partition_tree(cmd.objid) pt) AS x
    WHERE cmd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND cmd.object_type = 'table'
      AND NOT cmd.in_extension;
    IF rels IS NULL THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT c.oid::regclass AS rel, t.tenant_column
        FROM dbrag._tenant_tables(rels) t
        JOIN pg_catalog.pg_class c ON c.oid = t.rel
        WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e')
        ORDER BY c.oid
    LOOP
        IF mode = 'warn' THEN
            RAISE WARNING 'table % has tenant column % but no forced row-level security', r.rel, r.tenant_column
                USING HINT = pg_catalog.format('isolate it: SELECT dbrag.enable_tenant_isolation(%L, %L);',
                                               r.rel::text, r.tenant_column);
        ELSE
            BEGIN
                PERFORM dbrag.enable_tenant_isolation(r.rel, r.tenant_column);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
                RAISE EXCEPTION 'dbrag.auto_isolate is enforce and % cannot be isolated: %', r.rel, msg
                    USING ERRCODE = state,
                          HINT = 'give every row a tenant (for a new column: ADD COLUMN ... uuid NOT NULL DEFAULT '
                                 '''<tenant uuid>''), or have a superuser SET LOCAL dbrag.auto_isolate = off '
                                 'for this migration';
            END;
            RAISE NOTICE 'dbrag.auto_isolate: isolated % by tenant column %', r.rel, r.tenant_column;
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER dbrag_auto_isolate ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
    EXECUTE FUNCTION dbrag._auto_isolate();

-- The name of a tenant's schema role in THIS database: roles are shared by
-- every database of the cluster, tenant ids are not unique across them (a
-- dump restored into a second database keeps its tenant ids), so the name
-- carries a tag of the database name. A role recorded under another
-- database's tag (a restored copy) is never granted or revoked here
-- (docs/operations.md, "A second copy in the same cluster").
CREATE FUNCTION dbrag._tenant_role_name(tenant uuid) RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('dbrag_t_%s_%s',
        pg_catalog.left(pg_catalog.md5(pg_catalog.current_database()::text), 8),
        pg_catalog.replace(tenant::text, '-', ''))::name
$$;
REVOKE EXECUTE ON FUNCTION dbrag._tenant_role_name(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dbrag._tenant_role_name(uuid) TO dbrag_admin;
