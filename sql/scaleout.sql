-- Citus: spread the control plane over a cluster (docs/scale-out.md).
--
-- Tenant-scoped tables (a tenant_id column that leads the primary key) are
-- hash-distributed by tenant_id in one co-location group, so a tenant's
-- connections, catalog, examples, history and audit rows sit on one node;
-- the rest (tenants, memberships, platform settings) become reference
-- tables, which every node holds in full. Foreign-key targets go first.
-- Safe to run again: tables Citus already knows are skipped. Works on a
-- populated install (Citus copies the rows into the shards).
-- True when the table has a tenant_id column that leads its primary key.
CREATE FUNCTION dbrag._tenant_leads_key(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = rel AND i.indisprimary AND a.attname = 'tenant_id')
$$;
REVOKE ALL ON FUNCTION dbrag._tenant_leads_key(oid) FROM PUBLIC;

-- Copy the coordinator's pg_dist_authinfo rows of these roles to the
-- workers, which need them when they open connections as a tenant's role
-- themselves (a query that a worker plans for a client connected to it).
-- A worker takes a row only for a role it has (Citus checks it with a
-- constraint), and a role created in this transaction reaches the workers
-- at commit: such rows are skipped here, and copied by a later call (a
-- member added to the tenant, or dbrag.citus_sync_logins()). The workers' rows
-- are written over their own connections, outside this transaction.
-- (The commands carry passwords: never shown by citus.log_remote_commands.)
CREATE FUNCTION dbrag._citus_copy_logins(roles name[])
RETURNS TABLE (nodename text, nodeport integer, success boolean, result text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET citus.log_remote_commands = off AS $$
DECLARE
    rows_sql text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('(%s, %L, %L)', a.nodeid, a.rolename, a.authinfo), ', ')
      INTO rows_sql
      FROM pg_catalog.pg_dist_authinfo a
     WHERE a.rolename = ANY (roles) AND a.nodeid IN (0, -1);
    IF rows_sql IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT w.nodename, w.nodeport, w.success, w.result
      FROM pg_catalog.run_command_on_workers(
        'INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo) '
        'SELECT v.nodeid, v.rolename, v.authinfo FROM (VALUES ' || rows_sql || ') '
        'AS v (nodeid, rolename, authinfo) '
        'WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = v.rolename) '
        'ON CONFLICT DO NOTHING') w;
END
$$;
REVOKE ALL ON FUNCTION dbrag._citus_copy_logins(name[]) FROM PUBLIC;

-- For the operator: every tenant role's password row on every worker (after
-- tenants were created inside a transaction block, or a worker was added).
-- Safe to run again; a superuser's, as pg_dist_authinfo is.
CREATE FUNCTION dbrag.citus_sync_logins()
RETURNS TABLE (nodename text, nodeport integer, success boolean, result text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'permission denied to copy tenants'' logins to the workers'
            USING ERRCODE = '42501', HINT = 'run it as a superuser on the Citus coordinator';
    END IF;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_authinfo') IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = '55000';
    END IF;
    RETURN QUERY SELECT * FROM dbrag._citus_copy_logins(ARRAY(
        SELECT t.tenant_role FROM control_plane.tenants t
         WHERE t.tenant_role = dbrag.tenant_role_name(t.tenant_id)));
END
$$;
REVOKE ALL ON FUNCTION dbrag.citus_sync_logins() FROM PUBLIC;

-- On a Citus coordinator: let Citus reach the workers as a tenant's role.
-- Work for a tenant runs as its role (docs/isolation.md), and Citus opens
-- its worker connections as the current role, so the role gets LOGIN with
-- a random password that only pg_dist_authinfo (superuser-only, on every
-- node) holds: no client can log in as it. ALTER ROLE reaches the workers
-- through Citus. Safe to run again.
CREATE FUNCTION dbrag._citus_tenant_login(tenant uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET citus.log_remote_commands = off AS $$
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
    PERFORM dbrag._citus_copy_logins(ARRAY[r]);
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
