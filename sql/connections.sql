-- Credentials and connections (docs/connections-and-keys.md).

-- Tenants' model API keys: AES-256-GCM envelopes bound to the tenant
-- (never plaintext). Written and read only by the extension's functions;
-- the global key is a row of system_config ('llm_api_key').
CREATE TABLE control_plane.llm_credentials (
    tenant_id  uuid NOT NULL REFERENCES control_plane.tenants ON DELETE CASCADE,
    api_key    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id)
);
COMMENT ON COLUMN control_plane.llm_credentials.api_key IS
    'AES-256-GCM envelope of the API key, bound to the tenant; never plaintext';
CREATE TRIGGER llm_credentials_touch BEFORE UPDATE ON control_plane.llm_credentials
    FOR EACH ROW EXECUTE FUNCTION control_plane.touch_updated_at();
SELECT dbrag._tenant_policies('control_plane.llm_credentials', 'tenant_id', true);
SELECT pg_catalog.pg_extension_config_dump('control_plane.llm_credentials', '');

-- dbrag.connections: the tenant's connections without the secret. A
-- security_invoker view, so row-level security on tenant_databases decides
-- the rows (a tenant sees its own; dbrag_admin sees all); tenants hold a
-- column-level grant that leaves out the credentials column.
GRANT SELECT (tenant_id, connection_id, name, kind, host, port, database_name, username,
              schema_name, status, is_active, connection_metadata, created_at, updated_at)
    ON control_plane.tenant_databases TO PUBLIC;

CREATE VIEW dbrag.connections WITH (security_invoker = true) AS
SELECT d.connection_id, d.tenant_id, d.name, d.kind, d.host, d.port, d.database_name,
       d.username, d.schema_name, d.status, d.is_active, d.connection_metadata,
       d.created_at, d.updated_at
FROM control_plane.tenant_databases d;
COMMENT ON VIEW dbrag.connections IS 'The tenant''s data-plane connections, without credentials';
GRANT SELECT ON dbrag.connections TO PUBLIC;
