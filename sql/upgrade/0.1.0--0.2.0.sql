-- pg_dbrag 0.1.0 → 0.2.0, run by ALTER EXTENSION pg_dbrag UPDATE.
--
-- This is the TEMPLATE of sql/pg_dbrag--0.1.0--0.2.0.sql: scripts/upgrade_script.py
-- expands it wherever an installable script is needed (scripts/lib.sh
-- install_extension, scripts/package.sh). At release the expanded script is
-- frozen as sql/pg_dbrag--0.1.0--0.2.0.sql (`upgrade_script.py freeze
-- 0.1.0--0.2.0`), and this file goes. docs/operations.md, "Releases".
--
-- Rules for every section of this file (docs/operations.md, "Upgrading"):
--   * one section per change, headed by a comment naming it;
--   * a definition the install script holds is not written again here: a
--     directive line takes it from sql/*.sql (a directive matching no
--     statement, or more than one, fails the expansion):
--       -- @include sql/x.sql        a file entirely new in 0.2.0;
--       -- @function schema.name     its CREATE FUNCTION, as CREATE OR REPLACE;
--       -- @view schema.name         the same for a view;
--       -- @statements sql/x.sql: FIRST .. LAST
--                                    the statements from the one beginning
--                                    with FIRST through the one beginning
--                                    with LAST (".. LAST" may be left out);
--     literal SQL is for what only an update does (ALTER TABLE … ADD COLUMN,
--     backfills, grants that differ from the install's at this point) and
--     for functions implemented in Rust, declared exactly as the generated
--     install script declares them (`cargo pgrx schema` prints it);
--   * never drop data: no DROP TABLE / DROP COLUMN of anything holding rows,
--     backfill new columns from what is there;
--   * the result must equal a fresh CREATE EXTENSION of 0.2.0, object for
--     object (definitions, defaults, constraints, indexes, policies, triggers,
--     grants, comments, pg_extension_config_dump entries): the schema check
--     in scripts/upgrade_test.sh compares the two and fails CI otherwise;
--   * new tables holding tenant data get pg_extension_config_dump, and the
--     grants finalize.sql gives (e.g. GRANT ALL … TO dbrag_admin).

\echo Use "ALTER EXTENSION pg_dbrag UPDATE TO '0.2.0'" to load this file. \quit

-- ===========================================================================
-- Function privileges, CREATEROLE members, bounded audit writer
-- (docs/function-privileges.md; SECURITY.md "Refusals are audited without
-- exhausting the server"). The library's audit queue lives in shared memory:
-- it takes effect after the server restarts with the new library preloaded.
-- ===========================================================================

-- dbrag._tenant_policies: refuses anything but a table (42809) instead of building ALTER TABLE from oid 0.
-- @function dbrag._tenant_policies

-- dbrag._disable_tenant_isolation: the same, and refuses anything but a table (42809).
-- @function dbrag._disable_tenant_isolation

-- dbrag.isolation_report: new findings 9 and 10: tenant members with CREATEROLE, and tenant members that can act as dbrag_app or dbrag_admin.
-- @function dbrag.isolation_report

-- dbrag.add_tenant_member: refuses a missing role (42704), roles with CREATEROLE and roles that can act as dbrag_app or dbrag_admin (22023).
-- @function dbrag.add_tenant_member

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
-- @statements sql/finalize.sql: REVOKE EXECUTE ON FUNCTION dbrag._enable_tenant_isolation(regclass .. GRANT EXECUTE ON FUNCTION dbrag._invalidate_tenant_cache(oid)

-- ---------------------------------------------------------------------------
-- Tenant schema roles are named per database (dump/restore into a second
-- database of the same cluster; docs/operations.md). 0.1.0 named them
-- dbrag_t_<tenant hex>; they are renamed to dbrag._tenant_role_name(tenant)
-- and the tenant's recorded name follows. Nothing is dropped.
-- @statements sql/app_isolation.sql: CREATE FUNCTION dbrag._tenant_role_name .. GRANT EXECUTE ON FUNCTION dbrag._tenant_role_name

-- dbrag.adopt_tenant_schema(tenant): a schema role of this database's own for
-- a tenant schema restored from another database's dump.
CREATE FUNCTION dbrag.adopt_tenant_schema(tenant uuid) RETURNS text
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'adopt_tenant_schema_wrapper';
-- @statements sql/finalize.sql: REVOKE EXECUTE ON FUNCTION dbrag.adopt_tenant_schema .. GRANT EXECUTE ON FUNCTION dbrag.adopt_tenant_schema

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

-- @include sql/scaleout.sql

-- dbrag._distribution_column: the column Citus distributes a table by.
-- @function dbrag._distribution_column

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

-- @statements sql/tenant_roles.sql: CREATE FUNCTION dbrag.tenant_role_name .. CREATE TRIGGER tenant_members_role

-- @statements sql/tenant_roles.sql: REVOKE EXECUTE ON FUNCTION dbrag._sync_tenant_role .. GRANT EXECUTE ON FUNCTION dbrag._sync_tenant_role

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

-- @statements sql/catalog.sql: CREATE TABLE control_plane.catalog_doc_stats .. CREATE TRIGGER table_metadata_catalog_stats_truncate
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

-- @function dbrag.search_catalog

-- Trigger functions of the catalog statistics are not executable by PUBLIC
-- (docs/function-privileges.md).
REVOKE EXECUTE ON FUNCTION control_plane.catalog_stats_trigger(), control_plane.catalog_stats_truncate() FROM PUBLIC;


-- ===========================================================================
-- Verified queries and feedback (issue 17, section 3; docs/llm-and-guard.md,
-- "Verified queries and feedback").
-- New: dbrag._normalize_question(text), control_plane.verified_queries,
-- control_plane.query_feedback, view dbrag.verified_queries,
-- dbrag.add_verified_query(text, text), dbrag.remove_verified_query(uuid),
-- dbrag.feedback(uuid, boolean, text).
-- Changed: query_history.status also allows 'verified'; dbrag.usage counts
-- verified answers as answered (its final definition is in "Model budgets").
-- ===========================================================================

ALTER TABLE control_plane.query_history DROP CONSTRAINT query_history_status_check;
ALTER TABLE control_plane.query_history ADD CONSTRAINT query_history_status_check
    CHECK (status IN ('ok', 'cached', 'verified', 'refused', 'error', 'model_error', 'timeout'));


-- @include sql/verified.sql
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

-- dbrag._tenant_read_policies(tbl, tenant_column): the policies of a table
-- tenants only read (here tenant_budgets; tenants keeps the same ones).
-- @function dbrag._tenant_read_policies
-- @statements sql/finalize.sql: REVOKE EXECUTE ON FUNCTION dbrag._tenant_read_policies

-- @statements sql/budget.sql: CREATE TABLE control_plane.tenant_budgets .. GRANT EXECUTE ON FUNCTION dbrag.set_tenant_budget

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

-- @view dbrag.usage
GRANT SELECT ON dbrag.usage TO PUBLIC;
-- ===========================================================================
-- The four tenant policies written once: dbrag._enable_tenant_isolation no
-- longer writes them itself; dbrag._isolation_guarded calls
-- dbrag._tenant_policies(tbl, tenant_column, false) after it, on each table.
-- ===========================================================================

-- @function dbrag._enable_tenant_isolation
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

-- @statements sql/nl2sql.sql: CREATE VIEW dbrag.conversations .. GRANT SELECT ON dbrag.conversations

-- ===========================================================================
-- Value index (docs/catalog-search.md, "Values"): distinct values of
-- low-cardinality text columns, filled by the next sync_catalog of each
-- connection (empty until then).
-- New: control_plane.value_index (RLS like the other tenant tables, dumped
-- with the extension's data, SELECT to PUBLIC, ALL to dbrag_admin) and its
-- three indexes; dbrag.search_values(text, integer).
-- ===========================================================================

-- @include sql/value_index.sql
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
