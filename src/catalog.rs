//! The metadata catalog (docs/connections-and-keys.md): introspect a connection's schema, keep one
//! row per table in `control_plane.table_metadata_catalog`, search it.
//!
//! Introspection and sampling run as the tenant's role (crate::act_as),
//! whoever calls, so a `local` connection shows only the tables and columns
//! the tenant's role may read (and RLS applies to the sampled rows). Writes
//! run as the extension with the tenant id set explicitly. The search itself is `dbrag.search_catalog` in sql/catalog.sql.

use std::collections::BTreeMap;

use dbrag_core::introspect::{
    entries_from_introspection, entries_with_samples, sampled_column, samples_from_rows,
    TableEntry, SAMPLE_ROWS,
};
use dbrag_core::sql_text::quote_ident;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Map, Value};

use crate::connections::{self, Connection, EngineKind};
use crate::error::{raise, Kind};
use crate::gucs;
use crate::pg::privileged;
use crate::tenant;

/// A NOTICE every this many tables during a sync.
const PROGRESS_EVERY: usize = 100;

/// One JSON object per table of a schema: columns, keys, comments, estimate.
/// The same text runs through SPI and on a remote PostgreSQL server.
pub const INTROSPECT_SQL: &str = r#"
SELECT pg_catalog.json_build_object(
  'table', c.relname,
  'kind', c.relkind::text,
  'comment', pg_catalog.obj_description(c.oid, 'pg_class'),
  'row_estimate', CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END,
  'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                 'name', a.attname,
                 'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
                 'comment', pg_catalog.col_description(c.oid, a.attnum)) ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'primary_key', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                  FROM pg_catalog.pg_index i
                  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary),
  'foreign_keys', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                     'columns', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                                 FROM pg_catalog.unnest(co.conkey) WITH ORDINALITY k(attnum, ord)
                                 JOIN pg_catalog.pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.attnum),
                     'schema', rn.nspname,
                     'table', rc.relname,
                     'other_columns', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                                       FROM pg_catalog.unnest(co.confkey) WITH ORDINALITY k(attnum, ord)
                                       JOIN pg_catalog.pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.attnum))
                     ORDER BY co.conname)
                   FROM pg_catalog.pg_constraint co
                   JOIN pg_catalog.pg_class rc ON rc.oid = co.confrelid
                   JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
                   WHERE co.conrelid = c.oid AND co.contype = 'f')
)::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
ORDER BY c.relname
"#;

/// [`INTROSPECT_SQL`] for a `local` connection: only tables and columns
/// the current role (the tenant's) may read.
fn introspect_local_sql() -> String {
    INTROSPECT_SQL
        .replace(
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)",
            "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT'))",
        )
        .replace(
            "AND NOT c.relispartition\n",
            "AND NOT c.relispartition AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')\n",
        )
}

/// Introspect a local schema as the current role (the tenant's), with the
/// values of its low-cardinality text columns (at most `budget`).
fn introspect_local(schema: &str, budget: i64) -> Introspected {
    let can_use: bool = crate::error::spi_row_or_raise(
        Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.has_schema_privilege($1, 'USAGE')",
            &[DatumWithOid::from(schema)],
        ),
        "the schema privilege",
    )
    .unwrap_or(false);
    if !can_use {
        raise(
            Kind::Forbidden,
            format!("permission denied for schema {schema}"),
        );
    }
    let sql = introspect_local_sql();
    let rows: Vec<String> = Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(&sql, None, &[DatumWithOid::from(schema)])? {
            if let Some(s) = row.get::<String>(1)? {
                out.push(s);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| {
        raise(
            Kind::Internal,
            format!("introspection of schema {schema} failed: {e}"),
        )
    });
    let mut entries = entries_from_introspection(schema, &rows);
    // Sample rows can be wide: under dbrag.query_memory_limit (53200).
    let values = crate::pg::timer::within_memory_limit(|| {
        for (i, entry) in entries.iter_mut().enumerate() {
            entry.sample_values = sample_local(entry);
            if (i + 1) % PROGRESS_EVERY == 0 {
                notice!("sync_catalog: sampled {} tables of {}", i + 1, rows.len());
            }
        }
        crate::value_index::collect_local(schema, &entries, budget)
    });
    (entries, values)
}

/// A few rows of a local table, read as the current role (the tenant's):
/// only the columns it may read (the entry holds no others) and that are
/// sampled at all. A row that fails (a policy's or view's error) yields no
/// samples.
fn sample_local(entry: &TableEntry) -> Map<String, Value> {
    let columns: Vec<String> = entry
        .column_order
        .iter()
        .filter(|c| sampled_column(entry, c))
        .map(|c| quote_ident(c))
        .collect();
    if columns.is_empty() {
        return Map::new();
    }
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t)::pg_catalog.text FROM (SELECT {} FROM {}.{} LIMIT {SAMPLE_ROWS}) t",
        columns.join(", "),
        quote_ident(&entry.schema_name),
        quote_ident(&entry.table_name)
    );
    let rows = crate::pg::subxact::run(|| {
        Spi::connect(|client| {
            let mut out = Vec::new();
            // As text: a row with a number beyond an f64 or JSON nested
            // over 128 levels made pgrx's JsonB panic and sync_catalog fail
            // with XX000. Such a row now gives no samples (crate::pg::jsonb).
            for row in client.select(&sql, None, &[])? {
                if let Some(j) = row
                    .get::<String>(1)?
                    .as_deref()
                    .and_then(crate::pg::jsonb::from_text)
                {
                    out.push(j);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    let rows: Vec<Value> = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            notice!(
                "sync_catalog: no samples of {}.{}: {e}",
                entry.schema_name,
                entry.table_name
            );
            Vec::new()
        }
        Err(caught) => match crate::pg::subxact::report_of(&caught) {
            Some((code, message)) if !crate::guard::must_rethrow(code) => {
                notice!(
                    "sync_catalog: no samples of {}.{}: {message}",
                    entry.schema_name,
                    entry.table_name
                );
                Vec::new()
            }
            _ => caught.rethrow(),
        },
    };
    samples_from_rows(entry, &rows)
}

/// Introspect a remote PostgreSQL schema over one session: the same
/// introspection query, then a few rows of each table for samples, then the
/// value index's reads. What the remote role may not read yields no samples.
fn introspect_postgres(conn: &Connection, budget: i64) -> Introspected {
    let timeout = gucs::QUERY_TIMEOUT_MS.get();
    let mut session = connections::open_session(conn).unwrap_or_else(|e| e.raise());
    let rows = session
        .query_read_only(INTROSPECT_SQL, &[Some(conn.schema_name.as_str())], timeout)
        .unwrap_or_else(|e| e.raise());
    let texts: Vec<String> = rows
        .rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let mut entries = entries_from_introspection(&conn.schema_name, &texts);
    let total = entries.len();
    for (i, entry) in entries.iter_mut().enumerate() {
        let sql = format!(
            "SELECT pg_catalog.to_jsonb(t)::text FROM {}.{} t LIMIT {SAMPLE_ROWS}",
            quote_ident(&entry.schema_name),
            quote_ident(&entry.table_name)
        );
        let sample_rows: Vec<Value> = match session.query_read_only(&sql, &[], timeout) {
            Ok(r) => r
                .rows
                .into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect(),
            // A table the account may not read (a rejected statement) or a
            // remote that broke off: no samples for it, the sync goes on.
            Err(e) if matches!(e.kind, Kind::Remote | Kind::Statement) => Vec::new(),
            Err(e) => e.raise(),
        };
        entry.sample_values = samples_from_rows(entry, &sample_rows);
        if (i + 1) % PROGRESS_EVERY == 0 {
            notice!("sync_catalog: sampled {} tables of {}", i + 1, total);
        }
    }
    let values = crate::value_index::collect_postgres(
        &mut session,
        &conn.schema_name,
        &entries,
        budget,
        timeout,
    );
    (entries, values)
}

/// The tables found, and the values of their low-cardinality text columns
/// (crate::value_index).
type Introspected = (Vec<TableEntry>, Vec<crate::value_index::Found>);

/// Introspect whatever the connection reaches, as the tenant's role; at
/// most `budget` values for the value index.
fn introspect(conn: &Connection, budget: i64) -> Introspected {
    crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
        introspect_as_tenant(conn, budget)
    })
}

fn introspect_as_tenant(conn: &Connection, budget: i64) -> Introspected {
    match conn.kind {
        EngineKind::Local => introspect_local(&conn.schema_name, budget),
        EngineKind::Postgres => introspect_postgres(conn, budget),
        EngineKind::Mysql | EngineKind::Sqlite => {
            let entries = if conn.kind == EngineKind::Mysql {
                introspect_mysql(conn)
            } else {
                introspect_sqlite(conn)
            };
            let values = crate::value_index::collect_dataplane(conn, &entries, budget);
            (entries, values)
        }
    }
}

/// Introspect a MySQL/MariaDB database through information_schema, on the
/// client's worker thread (interruptible; each statement limited by
/// dbrag.query_timeout_ms on the server).
fn introspect_mysql(conn: &Connection) -> Vec<TableEntry> {
    let target = crate::dataplane::mysql_target(conn).unwrap_or_else(|e| e.raise());
    let found = crate::mysql::introspect(
        &target,
        &conn.schema_name,
        gucs::REMOTE_CONNECT_TIMEOUT_MS.get(),
        gucs::QUERY_TIMEOUT_MS.get(),
    )
    .unwrap_or_else(|e| e.raise());
    entries_with_samples(&conn.schema_name, &found.tables, found.samples)
}

/// Introspect a SQLite file through sqlite_schema and its pragmas.
fn introspect_sqlite(conn: &Connection) -> Vec<TableEntry> {
    let path = crate::dataplane::sqlite_path(conn).unwrap_or_else(|e| e.raise());
    let (tables, samples) = crate::sqlite::introspect(&path).unwrap_or_else(|e| e.raise());
    entries_with_samples(crate::sqlite::SCHEMA, &tables, samples)
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
    let conn = connections::given_or_active(connection);
    let budget = crate::value_index::budget(&conn);
    let (entries, values) = introspect(&conn, budget);
    let summary = store(&conn, &entries);
    crate::value_index::store(&conn, &values);
    if describe.unwrap_or(false) {
        // As the tenant's role too, like the rest of the sync.
        crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
            crate::nl2sql::describe_tables(&conn, &summary.written)
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
