//! The metadata catalog (docs/connections-and-keys.md): introspect a connection's schema, keep one
//! row per table in `control_plane.table_metadata_catalog`, search it.
//!
//! Introspection and sampling run as the tenant's role (crate::act_as),
//! whoever calls, so a `local` connection shows only the tables and columns
//! the tenant's role may read (and RLS applies to the sampled rows). Writes
//! run as the extension with the tenant id set explicitly. The search itself is `dbrag.search_catalog` in sql/catalog.sql.

use std::collections::BTreeMap;

use dbrag_core::introspect::TableEntry;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::connection_store::{self, Connection};
use crate::engine::Introspected;
use crate::error::{raise, Kind, OrRaise};
use crate::pg::privileged;
use crate::tenant;

/// Introspect whatever the connection reaches, as the tenant's role; at
/// most `budget` values for the value index.
fn introspect(conn: &Connection, budget: i64) -> Introspected {
    let mut engine = crate::engine::open(conn);
    crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
        engine.introspect(&conn.schema_name, budget)
    })
    .or_raise()
}

/// Counts of one sync.
pub struct SyncSummary {
    pub added: i32,
    pub changed: i32,
    pub removed: i32,
    pub unchanged: i32,
    /// Tables written by this sync (added or changed).
    pub written: Vec<(String, String)>,
}

/// Store `entries` as the connection's catalog: insert new tables, rewrite
/// changed ones, delete vanished ones, leave unchanged rows alone.
pub fn store(conn: &Connection, entries: &[TableEntry]) -> SyncSummary {
    let tenant_pg = tenant::to_pg(conn.tenant_id);
    let conn_pg = tenant::to_pg(conn.id);
    let existing = privileged::as_extension(|| {
        Spi::connect(|client| {
            let mut out = BTreeMap::new();
            for row in client.select(
                "SELECT schema_name, table_name, coalesce(source_hash, '') FROM control_plane.table_metadata_catalog \
                 WHERE tenant_id = $1 AND connection_id = $2",
                None,
                &[DatumWithOid::from(tenant_pg), DatumWithOid::from(conn_pg)],
            )? {
                let s: String = row.get(1)?.unwrap_or_default();
                let t: String = row.get(2)?.unwrap_or_default();
                let h: String = row.get(3)?.unwrap_or_default();
                out.insert((s, t), h);
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    let existing: BTreeMap<(String, String), String> =
        crate::error::spi_or_raise(existing, "the stored catalog");

    let mut summary = SyncSummary {
        added: 0,
        changed: 0,
        removed: 0,
        unchanged: 0,
        written: Vec::new(),
    };
    let mut to_write: Vec<Value> = Vec::new();
    for e in entries {
        let key = (e.schema_name.clone(), e.table_name.clone());
        match existing.get(&key) {
            Some(h) if *h == e.source_hash() => summary.unchanged += 1,
            Some(_) => {
                summary.changed += 1;
                summary.written.push(key.clone());
                to_write.push(e.to_row());
            }
            None => {
                summary.added += 1;
                summary.written.push(key.clone());
                to_write.push(e.to_row());
            }
        }
    }
    let schemas: Vec<String> = entries.iter().map(|e| e.schema_name.clone()).collect();
    let tables: Vec<String> = entries.iter().map(|e| e.table_name.clone()).collect();
    let written = pgrx::JsonB(Value::Array(to_write));
    let removed: i64 = privileged::as_extension(|| {
        Spi::connect_mut(|client| {
            client.update(
                "INSERT INTO control_plane.table_metadata_catalog AS c \
                   (tenant_id, connection_id, schema_name, table_name, table_description, column_descriptions, \
                    data_types, sample_values, relationships, row_estimate, primary_key, column_order, \
                    source_hash, last_synced) \
                 SELECT $1, $2, r.schema_name, r.table_name, r.table_description, \
                        coalesce(r.column_descriptions, '{}'), coalesce(r.data_types, '{}'), \
                        coalesce(r.sample_values, '{}'), coalesce(r.relationships, '[]'), \
                        r.row_estimate, coalesce(r.primary_key, '{}'), coalesce(r.column_order, '{}'), \
                        r.source_hash, pg_catalog.now() \
                 FROM pg_catalog.jsonb_to_recordset($3) AS r(schema_name text, table_name text, \
                      table_description text, column_descriptions jsonb, data_types jsonb, sample_values jsonb, \
                      relationships jsonb, row_estimate bigint, primary_key text[], column_order text[], \
                      source_hash text) \
                 ON CONFLICT (tenant_id, connection_id, schema_name, table_name) DO UPDATE SET \
                   table_description = EXCLUDED.table_description, column_descriptions = EXCLUDED.column_descriptions, \
                   data_types = EXCLUDED.data_types, sample_values = EXCLUDED.sample_values, \
                   relationships = EXCLUDED.relationships, row_estimate = EXCLUDED.row_estimate, \
                   primary_key = EXCLUDED.primary_key, column_order = EXCLUDED.column_order, \
                   source_hash = EXCLUDED.source_hash, last_synced = EXCLUDED.last_synced",
                None,
                &[DatumWithOid::from(tenant_pg), DatumWithOid::from(conn_pg), DatumWithOid::from(written)],
            )?;
            let gone = client.update(
                "DELETE FROM control_plane.table_metadata_catalog c \
                 WHERE c.tenant_id = $1 AND c.connection_id = $2 AND NOT EXISTS ( \
                   SELECT 1 FROM unnest($3::text[], $4::text[]) u(s, t) \
                   WHERE u.s = c.schema_name AND u.t = c.table_name)",
                None,
                &[
                    DatumWithOid::from(tenant_pg),
                    DatumWithOid::from(conn_pg),
                    DatumWithOid::from(schemas),
                    DatumWithOid::from(tables),
                ],
            )?;
            let removed = gone.len() as i64;
            // Two statements: on Citus the catalog stays on the coordinator
            // while connections are distributed, and Citus cannot run an
            // UPDATE of one with a subquery over the other.
            let version: String = client
                .select(
                    "SELECT pg_catalog.md5(coalesce(pg_catalog.string_agg(source_hash, ',' ORDER BY schema_name, table_name), '')) \
                     FROM control_plane.table_metadata_catalog WHERE tenant_id = $1 AND connection_id = $2",
                    Some(1),
                    &[DatumWithOid::from(tenant_pg), DatumWithOid::from(conn_pg)],
                )?
                .first()
                .get_one::<String>()?
                .unwrap_or_default();
            client.update(
                "UPDATE control_plane.tenant_databases SET status = 'connected', \
                   connection_metadata = connection_metadata || pg_catalog.jsonb_build_object( \
                     'last_synced', pg_catalog.now(), 'tables', $3::int, 'catalog_version', $4::text) \
                 WHERE tenant_id = $1 AND connection_id = $2",
                None,
                &[
                    DatumWithOid::from(tenant_pg),
                    DatumWithOid::from(conn_pg),
                    DatumWithOid::from(entries.len() as i32),
                    DatumWithOid::from(version),
                ],
            )?;
            Ok::<_, pgrx::spi::Error>(removed)
        })
    })
    .unwrap_or_else(|e| raise(Kind::Internal, format!("storing the catalog failed: {e}")));
    summary.removed = removed as i32;
    summary
}

/// `dbrag.sync_catalog(connection, describe)`: introspect and store; one summary row.
#[pg_extern(volatile, parallel_unsafe)]
fn sync_catalog(
    connection: default!(Option<pgrx::Uuid>, "NULL"),
    describe: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(added, i32),
        name!(changed, i32),
        name!(removed, i32),
        name!(unchanged, i32),
    ),
> {
    let conn = connection_store::given_or_active(connection);
    let budget = crate::value_index::budget(&conn);
    let (entries, values) = introspect(&conn, budget);
    let summary = store(&conn, &entries);
    crate::value_index::store(&conn, &values);
    if describe.unwrap_or(false) {
        // As the tenant's role too, like the rest of the sync.
        crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
            crate::describe::describe_tables(&conn, &summary.written)
        });
    }
    crate::audit::record(
        "catalog_synced",
        Some(&conn.tenant_id.to_string()),
        json!({"connection_id": conn.id.to_string(), "tables": entries.len(),
               "added": summary.added, "changed": summary.changed, "removed": summary.removed,
               "values": values.len()}),
    );
    TableIterator::once((
        summary.added,
        summary.changed,
        summary.removed,
        summary.unchanged,
    ))
}

/// `dbrag.identifier_words(ident)`: `OrderItems` → `order items`, for search vectors.
#[pg_extern(immutable, strict, parallel_safe)]
fn identifier_words(ident: &str) -> String {
    let ident = crate::error::bounded(ident, "identifier", crate::error::limits::IDENTIFIER);
    dbrag_core::identifier_words(ident)
}
