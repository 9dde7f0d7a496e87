-- The value index (docs/catalog-search.md, "Values"): distinct values of a
-- connection's low-cardinality text columns, read at sync as the tenant's
-- role and replaced by each sync, so a question that names a value finds
-- the table and column holding it. Tenant-first keys, forced RLS like the
-- other tenant tables; dropped with the connection.
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
