-- The control plane (docs/isolation.md). Every tenant-scoped table leads its primary
-- key, unique constraints and indexes with tenant_id, so the tenant-first
-- index serves the RLS predicate and the table can be distributed by
-- tenant_id on Citus.

CREATE FUNCTION control_plane.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

CREATE TABLE control_plane.tenants (
    tenant_id    uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    name         text NOT NULL UNIQUE CHECK (pg_catalog.btrim(name) <> '' AND pg_catalog.length(name) <= 200),
    organization text,
    email        text,
    environment  control_plane.tenant_environment NOT NULL DEFAULT 'production',
    status       control_plane.tenant_status NOT NULL DEFAULT 'active',
    settings     jsonb NOT NULL DEFAULT '{}' CHECK (pg_catalog.jsonb_typeof(settings) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Last, where ALTER TABLE ADD COLUMN puts it on an update from 0.1.0.
    tenant_role  name UNIQUE   -- the tenant's NOLOGIN role (sql/tenant_roles.sql)
);
CREATE INDEX tenants_status_idx ON control_plane.tenants (status);

CREATE TABLE control_plane.tenant_members (
    tenant_id   uuid NOT NULL REFERENCES control_plane.tenants ON DELETE CASCADE,
    member      regrole NOT NULL,
    tenant_role control_plane.member_role NOT NULL DEFAULT 'analyst',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, member)
);

CREATE TABLE control_plane.tenant_databases (
    tenant_id           uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                        REFERENCES control_plane.tenants ON DELETE CASCADE,
    connection_id       uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    name                text NOT NULL CHECK (pg_catalog.btrim(name) <> '' AND pg_catalog.length(name) <= 200),
    kind                text NOT NULL CHECK (kind IN ('local', 'postgres', 'mysql', 'sqlite')),
    host                text,
    port                integer CHECK (port BETWEEN 1 AND 65535),
    database_name       text,
    username            text,
    schema_name         text NOT NULL DEFAULT 'public',
    credentials         bytea,
    status              control_plane.database_status NOT NULL DEFAULT 'disconnected',
    is_active           boolean NOT NULL DEFAULT false,
    connection_metadata jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, connection_id),
    UNIQUE (tenant_id, name)
);
COMMENT ON COLUMN control_plane.tenant_databases.credentials IS
    'AES-256-GCM envelope of the whole conninfo, bound to tenant_id||connection_id; never plaintext';
-- One active connection per tenant.
CREATE UNIQUE INDEX tenant_databases_one_active ON control_plane.tenant_databases (tenant_id) WHERE is_active;

CREATE TABLE control_plane.table_metadata_catalog (
    tenant_id           uuid NOT NULL DEFAULT dbrag.current_tenant_id(),
    connection_id       uuid NOT NULL,
    schema_name         text NOT NULL,
    table_name          text NOT NULL,
    table_description   text,
    column_descriptions jsonb NOT NULL DEFAULT '{}',
    data_types          jsonb NOT NULL DEFAULT '{}',
    sample_values       jsonb NOT NULL DEFAULT '{}',
    relationships       jsonb NOT NULL DEFAULT '[]',
    row_estimate        bigint,
    primary_key         text[] NOT NULL DEFAULT '{}',
    column_order        text[] NOT NULL DEFAULT '{}',  -- jsonb objects do not keep column order
    source_hash         text,
    search_vector       tsvector,
    last_synced         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, connection_id, schema_name, table_name),
    FOREIGN KEY (tenant_id, connection_id)
        REFERENCES control_plane.tenant_databases (tenant_id, connection_id) ON DELETE CASCADE
);
-- btree_gin lets one GIN index lead with tenant_id (SECURITY.md, full-text under RLS).
CREATE INDEX table_metadata_catalog_search_idx
    ON control_plane.table_metadata_catalog USING gin (tenant_id, search_vector);

CREATE TABLE control_plane.training_examples (
    tenant_id     uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                  REFERENCES control_plane.tenants ON DELETE CASCADE,
    example_id    uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    kind          text NOT NULL DEFAULT 'example' CHECK (kind IN ('example', 'documentation')),
    question      text,
    sql           text,
    content       text,
    search_vector tsvector,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, example_id),
    CHECK ((kind = 'example' AND question IS NOT NULL AND sql IS NOT NULL)
        OR (kind = 'documentation' AND content IS NOT NULL))
);
CREATE INDEX training_examples_search_idx
    ON control_plane.training_examples USING gin (tenant_id, search_vector);

CREATE TABLE control_plane.query_history (
    tenant_id         uuid NOT NULL DEFAULT dbrag.current_tenant_id()
                      REFERENCES control_plane.tenants ON DELETE CASCADE,
    query_id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    connection_id     uuid,
    login_role        text NOT NULL DEFAULT session_user,
    question          text,
    generated_sql     text,
    status            text NOT NULL CHECK (status IN ('ok', 'cached', 'verified', 'refused', 'error', 'model_error', 'timeout')),
    error             text,
    llm_ms            double precision,
    execution_ms      double precision,
    row_count         bigint,
    prompt_tokens     integer,
    completion_tokens integer,
    result_hash       text,
    catalog_version   text,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Last, where ALTER TABLE ADD COLUMN puts them on an update from 0.1.0.
    acting_role       text,  -- the role the statement ran as (the tenant's role)
    model             text,  -- the model that wrote the SQL
    conversation_id   uuid,  -- the conversation of a follow-up (per tenant; docs/llm-and-guard.md)
    explanation       text,  -- the model's explanation of the SQL (explain_sql, ask(explain => true))
    PRIMARY KEY (tenant_id, query_id)
);
CREATE INDEX query_history_recent_idx ON control_plane.query_history (tenant_id, created_at DESC);
CREATE INDEX query_history_conversation_idx ON control_plane.query_history
    (tenant_id, conversation_id, created_at DESC) WHERE conversation_id IS NOT NULL;

CREATE TABLE control_plane.audit_log (
    tenant_id   uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
                REFERENCES control_plane.tenants ON DELETE CASCADE,
    audit_id    bigint GENERATED ALWAYS AS IDENTITY,
    event       text NOT NULL,
    login_role  text NOT NULL DEFAULT session_user,
    acting_role text NOT NULL DEFAULT current_user,
    backend_pid integer,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (tenant_id, audit_id)
);
CREATE INDEX audit_log_recent_idx ON control_plane.audit_log (tenant_id, created_at DESC);

CREATE TABLE control_plane.system_config (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- updated_at on every table that has it.
CREATE TRIGGER tenants_touch BEFORE UPDATE ON control_plane.tenants
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();
CREATE TRIGGER tenant_members_touch BEFORE UPDATE ON control_plane.tenant_members
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();
CREATE TRIGGER tenant_databases_touch BEFORE UPDATE ON control_plane.tenant_databases
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();
CREATE TRIGGER training_examples_touch BEFORE UPDATE ON control_plane.training_examples
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();
CREATE TRIGGER system_config_touch BEFORE UPDATE ON control_plane.system_config
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();

-- Backends cache who their tenant is; a change to tenants or memberships
-- must reach them all at commit.
CREATE FUNCTION control_plane.invalidate_tenant_cache() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM dbrag._invalidate_tenant_cache(TG_RELID);
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.invalidate_tenant_cache();
CREATE TRIGGER tenant_members_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.tenant_members
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane.invalidate_tenant_cache();

-- The platform's own tenant, with a fixed id so dumps and audit rows agree.
INSERT INTO control_plane.tenants (tenant_id, name, organization, environment, status)
VALUES ('00000000-0000-0000-0000-000000000001', 'system_admin', 'platform', 'production', 'active');

-- Tenant data survives pg_dump / pg_restore; the seeded row is recreated by
-- CREATE EXTENSION, so it is left out of the dump.
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenants',
    $$WHERE tenant_id <> '00000000-0000-0000-0000-000000000001'$$);
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenant_members', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenant_databases', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.table_metadata_catalog', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.training_examples', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.query_history', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.audit_log_audit_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.system_config', '');
