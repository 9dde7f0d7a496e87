//! A schema of this database (kind `local`), read through SPI as the
//! current role: callers run it as the tenant's role (crate::act_as), so
//! only what that role may read is listed, introspected, sampled and run,
//! and row-level security applies.

use std::collections::HashSet;

use dbrag_core::introspect::{
    entries_from_introspection, sampled_column, samples_from_rows, TableEntry, INTROSPECT_SQL,
    SAMPLE_ROWS,
};
use dbrag_core::sql_text::quote_ident;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{Map, Value};

use super::{
    Checked, Engine, Introspected, Limits, Readable, RunError, RunResult, Source, Statement,
};
use crate::error::{raise, DbragError, Kind, Result};
use crate::pg::privileged;
use dbrag_core::values::{branches, collect_with, Dialect, Found, TEXT_COLUMNS_SQL};

/// A NOTICE every this many tables during a sync.
pub(crate) const PROGRESS_EVERY: usize = 100;

pub struct Local;

impl Local {
    pub fn open(source: Source) -> Result<Self> {
        if let Source::Given {
            conninfo: Some(_), ..
        } = source
        {
            raise(Kind::BadArgument, "a local connection takes no conninfo");
        }
        Ok(Local)
    }
}

impl Engine for Local {
    /// This server, so its real version.
    fn dialect(&self) -> String {
        // SAFETY: GetConfigOption of a built-in setting returns a valid string.
        let version = unsafe {
            let p = pgrx::pg_sys::GetConfigOption(c"server_version".as_ptr(), true, false);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        // "15.20 (Debian 15.20-0+deb12u1)" → "15.20".
        let version = version.split_whitespace().next().unwrap_or_default();
        format!("PostgreSQL {version}").trim_end().to_string()
    }

    fn checks_schema(&self) -> bool {
        true
    }

    fn check_schema(&mut self, schema: &str) -> Result<()> {
        check_local_schema(schema)
    }

    fn readable(&self, _schema: &str, _conninfo: Option<&str>) -> Result<Readable> {
        Ok(Readable {
            database: Some(current_database()),
            ..Readable::default()
        })
    }

    fn list_tables(&mut self, schema: &str) -> Result<Vec<(String, String)>> {
        local_tables(schema)
    }

    fn check_works(&mut self, schema: &str) -> Result<()> {
        check_local_schema(schema)
    }

    fn introspect(&mut self, schema: &str, budget: i64) -> Result<Introspected> {
        Ok(introspect_local(schema, budget))
    }

    fn check(&mut self, statement: &Statement) -> Checked {
        let allowed = crate::guard::relation_oids(
            statement
                .allowed
                .iter()
                .map(|(s, t)| (s.as_str(), t.as_str())),
        );
        // Parse analysis may run the tenant's code (a type's input
        // function on a literal): as the tenant's role, like the run.
        super::pg_checked(crate::act_as::as_role(
            statement.role,
            statement.schema,
            || crate::guard::check_local(statement.sql, &allowed),
        ))
    }

    /// Plan and run as the current role (the tenant's), read-only, under
    /// the deadline, at most `max_rows` rows, each as jsonb text (a cast to
    /// json on a tenant's type runs as the tenant's role too).
    fn run_read_only(&mut self, sql: &str, limits: Limits) -> RunResult {
        run_local(sql, limits)
    }
}

fn current_database() -> String {
    Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text")
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Schemas a `local` connection never reaches, whatever the caller's rights.
fn is_system_schema(name: &str) -> bool {
    matches!(
        name,
        "pg_catalog" | "information_schema" | "pg_toast" | "control_plane" | "dbrag"
    ) || name.starts_with("pg_temp_")
        || name.starts_with("pg_toast_temp_")
}

/// Tables of `schema` the caller may read, as (schema, table); a schema with
/// none gives one row with no table. No row: the schema does not exist.
pub(crate) const LIST_TABLES: &str =
    "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
     FROM pg_catalog.pg_namespace n \
     LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid \
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
          AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT') \
     WHERE n.nspname = $1 ORDER BY 2";

pub(crate) fn shape_tables(
    schema: &str,
    rows: Vec<(String, Option<String>)>,
    remote: bool,
) -> Result<Vec<(String, String)>> {
    if rows.is_empty() {
        let where_ = if remote { " on the remote server" } else { "" };
        return Err(DbragError::new(
            Kind::NotFound,
            format!("schema \"{schema}\" does not exist{where_}"),
        ));
    }
    Ok(rows
        .into_iter()
        .filter_map(|(s, t)| t.map(|t| (s, t)))
        .collect())
}

/// A `local` schema the caller may use: not a system schema, existing, and
/// with USAGE granted to the current role (for a tenant: its role, see
/// crate::act_as).
fn check_local_schema(schema: &str) -> Result<()> {
    if is_system_schema(schema) {
        return Err(DbragError::new(
            Kind::Forbidden,
            format!("schema \"{schema}\" is a system schema and cannot be a data-plane connection"),
        ));
    }
    // Not get_one: an empty result is an error there, and "no such schema" is an answer here.
    let found: Option<bool> = privileged::with_pinned_search_path(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n \
                 WHERE n.nspname = $1",
                None,
                &[DatumWithOid::from(schema)],
            )?;
            match rows.into_iter().next() {
                Some(row) => Ok::<_, pgrx::spi::Error>(Some(row.get::<bool>(1)?.unwrap_or(false))),
                None => Ok(None),
            }
        })
    })?;
    match found {
        None => Err(DbragError::new(Kind::NotFound, format!("schema \"{schema}\" does not exist"))),
        Some(false) => Err(DbragError::new(
            Kind::Forbidden,
            format!("permission denied for schema \"{schema}\": a local connection reaches only schemas you may use"),
        )
        .hint("ask the schema's owner for GRANT USAGE ON SCHEMA ... TO your role")),
        Some(true) => Ok(()),
    }
}

fn local_tables(schema: &str) -> Result<Vec<(String, String)>> {
    check_local_schema(schema)?;
    let rows = privileged::with_pinned_search_path(|| {
        Spi::connect(|client| {
            let mut out = Vec::new();
            for row in client.select(LIST_TABLES, None, &[DatumWithOid::from(schema)])? {
                out.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<String>(2)?,
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })?;
    shape_tables(schema, rows, false)
}

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
        collect_local(schema, &entries, budget)
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
        // As text: a row with a number beyond an f64 or JSON nested over
        // 128 levels made pgrx's JsonB panic and sync_catalog fail with
        // XX000. Such a row now gives no samples (crate::pg::jsonb).
        Spi::connect(|client| {
            crate::pg::jsonb::first_column_values(client.select(&sql, None, &[])?)
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

/// Values of a local schema's tables, read as the current role (the
/// tenant's) through SPI; a failing statement is rolled back alone.
fn collect_local(schema: &str, entries: &[TableEntry], budget: i64) -> Vec<Found> {
    if budget <= 0 || entries.is_empty() {
        return Vec::new();
    }
    let text: HashSet<(String, String)> = Spi::connect(|client| {
        let mut out = HashSet::new();
        for row in client.select(TEXT_COLUMNS_SQL, None, &[DatumWithOid::from(schema)])? {
            out.insert((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    let todo = branches(entries, Some(&text));
    collect_with(Dialect::Postgres, entries, todo, budget, |sql| {
        let outcome = crate::pg::subxact::run(|| {
            Spi::connect(|client| {
                let mut out = Vec::new();
                for row in client.select(sql, None, &[])? {
                    let b: i32 = row.get(1)?.unwrap_or(-1);
                    if let (Ok(b), Some(v)) = (usize::try_from(b), row.get::<String>(2)?) {
                        out.push((b, v));
                    }
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        });
        match outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(e.to_string()),
            Err(caught) => match crate::pg::subxact::report_of(&caught) {
                Some((code, message)) if !crate::guard::must_rethrow(code) => Err(message),
                _ => caught.rethrow(),
            },
        }
    })
}

/// On Citus, `dbrag.current_tenant_id()`'s oid and its value for the role
/// running the statement (the tenant's); None elsewhere or without a tenant.
fn tenant_for_pruning(
    client: &pgrx::spi::SpiClient<'_>,
) -> std::result::Result<Option<(pgrx::pg_sys::Oid, [u8; 16])>, pgrx::spi::Error> {
    if !crate::pg::citus::citus_loaded() {
        return Ok(None);
    }
    let row = client.select(
        "SELECT 'dbrag.current_tenant_id()'::pg_catalog.regprocedure::pg_catalog.oid, \
                dbrag.current_tenant_id()",
        Some(1),
        &[],
    )?;
    let Some(row) = row.into_iter().next() else {
        return Ok(None);
    };
    let func = row.get::<pgrx::pg_sys::Oid>(1)?;
    let tenant = row.get::<pgrx::Uuid>(2)?;
    Ok(func.zip(tenant).map(|(f, t)| (f, *t.as_bytes())))
}

fn run_local(sql: &str, limits: Limits) -> RunResult {
    let Limits {
        max_rows,
        max_bytes,
        timeout_ms: timeout,
    } = limits;
    // Rows as text, never through pgrx's JsonB: a row holding a number
    // beyond an f64 or JSON nested over 128 levels made it panic (XX000),
    // and numerics lost digits on the way. See crate::pg::jsonb.
    let wrapped = format!(
        "SELECT pg_catalog.to_jsonb(q)::pg_catalog.text FROM (\n{sql}\n) q LIMIT {}",
        max_rows + 1
    );
    let explain = format!("EXPLAIN (FORMAT JSON)\n{sql}\n");
    let deadline = crate::pg::timer::Deadline::arm(timeout);
    let outcome = crate::pg::subxact::run(|| {
        // SAFETY: saved at this subtransaction's nest level and restored
        // when it ends, committed or not (a LOCAL setting would outlive it).
        unsafe {
            pgrx::pg_sys::set_config_option(
                c"transaction_read_only".as_ptr(),
                c"on".as_ptr(),
                pgrx::pg_sys::GucContext::PGC_USERSET,
                pgrx::pg_sys::GucSource::PGC_S_SESSION,
                pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        Spi::connect_mut(|client| {
            // On Citus: the tenant's shard only (crate::pg::citus).
            let tenant = tenant_for_pruning(client)?;
            // EXPLAIN is not a plain SELECT, so it cannot go through the
            // read-only SPI path; the transaction is read-only anyway.
            crate::pg::citus::with_tenant_pruning(tenant, || {
                client.update(&explain, None, &[]).map(drop)
            })?;
            // Row by row through a cursor, counting bytes: the row cap
            // bounds rows, not their width (one row of to_jsonb text may
            // reach 1 GB), and a select would hold all of them at once.
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut cursor = crate::pg::citus::with_tenant_pruning(tenant, || {
                client.try_open_cursor(&wrapped, &[])
            })?;
            loop {
                let batch = cursor.fetch(1)?;
                if batch.is_empty() {
                    break;
                }
                for row in batch {
                    let text = row.get::<String>(1)?.unwrap_or_else(|| "null".into());
                    bytes += text.len();
                    if bytes > max_bytes {
                        return Ok::<_, pgrx::spi::Error>(None);
                    }
                    rows.push(text);
                }
            }
            Ok(Some(rows))
        })
    });
    let fired = deadline.fired();
    let out_of_memory = deadline
        .memory_exceeded()
        .then(crate::pg::timer::memory_error);
    drop(deadline);
    match outcome {
        Ok(Ok(None)) => Err(RunError::Fatal(
            DbragError::new(
                Kind::TooLarge,
                format!("the answer is larger than {} MB", max_bytes >> 20),
            )
            .hint("ask for fewer rows or columns (max_rows), or narrower values"),
        )),
        Ok(Ok(Some(mut rows))) => {
            let truncated = rows.len() as i64 > max_rows;
            rows.truncate(max_rows as usize);
            Ok((rows, truncated))
        }
        Ok(Err(e)) => Err(RunError::Retryable(DbragError::from(e))),
        Err(caught) => {
            if let Some(e) = out_of_memory {
                return Err(RunError::Fatal(e));
            }
            if fired {
                return Err(RunError::Fatal(
                    DbragError::new(
                        Kind::Timeout,
                        format!("the generated statement took longer than {timeout} ms"),
                    )
                    .hint("ask a narrower question, or raise dbrag.query_timeout_ms"),
                ));
            }
            match crate::pg::subxact::report_of(&caught) {
                Some((pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message)) => {
                    Err(RunError::Fatal(DbragError::new(Kind::Forbidden, message)))
                }
                Some((code, message)) if !crate::guard::must_rethrow(code) => {
                    let mut e = DbragError::new(Kind::Statement, message);
                    e.code = Some(code);
                    Err(RunError::Retryable(e))
                }
                _ => caught.rethrow(),
            }
        }
    }
}
