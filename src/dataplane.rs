//! Running generated SQL on a data plane: the guard for engines whose SQL
//! PostgreSQL's parser cannot read ([`check_statement`], on
//! `dbrag_core::dialect_guard`), and one read-only statement on any remote
//! engine with a row cap, a time limit and cancellation
//! ([`execute_read_only`]). Rows come back as one JSON object per row,
//! column name to value, as PostgreSQL's `to_jsonb` writes them.

use std::collections::HashSet;

use dbrag_core::dialect_guard::{self, Dialect, GuardError};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::Value;

use crate::connections::{self, Connection, EngineKind};
use crate::error::{raise, required, DbragError, Kind, OrRaise, Result};
use crate::gucs;
use crate::pg::privileged;
use crate::tenant;
use crate::{mysql, sqlite};

/// Rows of one statement.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // columns: for callers that need the order
pub struct JsonRows {
    pub columns: Vec<String>,
    /// One JSON object per row.
    pub rows: Vec<Value>,
    /// More rows existed than were read.
    pub truncated: bool,
}

fn dialect_of(conn: &Connection) -> Result<(Dialect, String)> {
    match conn.kind {
        EngineKind::Mysql => Ok((Dialect::MySql, conn.schema_name.clone())),
        EngineKind::Sqlite => Ok((Dialect::Sqlite, sqlite::SCHEMA.to_string())),
        other => Err(DbragError::new(
            Kind::BadArgument,
            format!(
                "check_statement is for MySQL and SQLite connections; a {} connection is checked on PostgreSQL's own parse tree",
                other.as_str()
            ),
        )),
    }
}

/// The guard for a `mysql` or `sqlite` connection, with the guard's own
/// verdict: `GuardError::Syntax` is for the model's retry, the others are
/// refusals.
pub fn check_dialect(
    conn: &Connection,
    sql: &str,
    allowed_tables: &HashSet<(String, String)>,
) -> Result<std::result::Result<String, GuardError>> {
    let (dialect, schema) = dialect_of(conn)?;
    Ok(dialect_guard::check(dialect, sql, &schema, allowed_tables).map(|c| c.sql))
}

/// A guard verdict as the error to raise.
pub fn guard_error(e: GuardError) -> DbragError {
    match e {
        GuardError::Forbidden(m) => DbragError::new(Kind::Forbidden, m).hint(
            "the statement may read only the tables of the tenant's catalog and call only allowed built-in functions",
        ),
        GuardError::NotReadOnlySelect(m) => DbragError::new(Kind::RefusedSql, m)
            .hint("only one read-only SELECT (or WITH … SELECT) statement may run"),
        GuardError::Syntax(m) => DbragError::new(Kind::RefusedSql, m),
    }
}

/// The guard for a `mysql` or `sqlite` connection: one read-only SELECT
/// over `allowed_tables` (schema, table) and allowed functions. Returns the
/// statement to run (as printed by the parser, comments dropped). Refusals:
/// 42601 (does not parse, not one read-only SELECT) or 42501 (a table or
/// function outside the rules); a parse error carries the parser's message.
pub fn check_statement(
    conn: &Connection,
    sql: &str,
    allowed_tables: &HashSet<(String, String)>,
) -> Result<String> {
    check_dialect(conn, sql, allowed_tables)?.map_err(guard_error)
}

/// The decrypted target of a `mysql` connection, checked for the caller.
pub fn mysql_target(conn: &Connection) -> Result<dbrag_core::dataplane_target::MysqlTarget> {
    mysql::parse_target(&connections::credentials(conn)?)
}

/// The resolved file of a `sqlite` connection.
pub fn sqlite_path(conn: &Connection) -> Result<std::path::PathBuf> {
    sqlite::resolve(&connections::credentials(conn)?, Some(conn.tenant_id))
}

/// Run one read-only statement on a remote data plane: at most `max_rows`
/// rows (and whether more existed), within `timeout_ms`, cancellable by
/// `statement_timeout` and `pg_cancel_backend`. `sql` must have passed the
/// guard (for MySQL and SQLite: the text [`check_statement`] returned).
pub fn execute_read_only(
    conn: &Connection,
    sql: &str,
    max_rows: i64,
    max_bytes: usize,
    timeout_ms: i32,
) -> Result<(Vec<String>, bool)> {
    if max_rows < 0 {
        return Err(DbragError::new(
            Kind::BadArgument,
            "max_rows must not be negative",
        ));
    }
    let max = max_rows.min(1_000_000) as usize;
    let timeout_ms = timeout_ms.max(1);
    let rows =
        match conn.kind {
            EngineKind::Local => return Err(DbragError::new(
                Kind::BadArgument,
                "a local connection runs in this database: execute_read_only is for remote engines",
            )),
            EngineKind::Postgres => {
                let body = sql.trim().trim_end_matches(';');
                let wrapped = format!(
                    "SELECT pg_catalog.to_jsonb(q)::pg_catalog.text FROM (\n{body}\n) q LIMIT {}",
                    max as u64 + 1
                );
                // Rows counted as they come (54000 past max_bytes).
                let mut session = connections::open_session(conn)?;
                session.max_result_bytes = max_bytes;
                let r = session.query_read_only(&wrapped, &[], timeout_ms)?;
                // jsonb text as the remote printed it, never parsed here:
                // jsonb_in checks it on the way out (crate::pg::jsonb::JsonbText).
                let mut rows: Vec<String> = r
                    .rows
                    .into_iter()
                    .filter_map(|row| row.into_iter().next().flatten())
                    .collect();
                let truncated = rows.len() > max;
                rows.truncate(max);
                return within_bytes(rows, max_bytes).map(|rows| (rows, truncated));
            }
            EngineKind::Mysql => {
                let target = mysql_target(conn)?;
                let limited = dialect_guard::with_row_limit(Dialect::MySql, sql, max as u64 + 1)
                    .unwrap_or_else(|| sql.to_string());
                mysql::query(
                    &target,
                    &conn.schema_name,
                    limited,
                    max,
                    max_bytes,
                    gucs::REMOTE_CONNECT_TIMEOUT_MS.get(),
                    timeout_ms,
                )?
            }
            EngineKind::Sqlite => {
                let path = sqlite_path(conn)?;
                let limited = dialect_guard::with_row_limit(Dialect::Sqlite, sql, max as u64 + 1)
                    .unwrap_or_else(|| sql.to_string());
                sqlite::query(&path, &limited, max, max_bytes, timeout_ms)?
            }
        };
    let text = rows
        .rows
        .iter()
        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
        .collect();
    within_bytes(text, max_bytes).map(|text| (text, rows.truncated))
}

/// The same bound on an answer's size as for local connections. The
/// client has already buffered it: a remote server is trusted with the
/// statement's time limit (SECURITY.md).
fn within_bytes(rows: Vec<String>, max_bytes: usize) -> Result<Vec<String>> {
    if rows.iter().map(String::len).sum::<usize>() > max_bytes {
        return Err(DbragError::new(
            Kind::TooLarge,
            format!("the answer is larger than {} MB", max_bytes >> 20),
        )
        .hint("ask for fewer rows or columns (max_rows), or narrower values"));
    }
    Ok(rows)
}

/// (schema, table) of the connection's catalog rows: the guard's
/// allow-set, so a failed read is XX000, never an empty set.
pub fn catalog_tables(conn: &Connection) -> HashSet<(String, String)> {
    let tables = privileged::as_extension(|| {
        Spi::connect(|client| {
            let mut out = HashSet::new();
            for row in client.select(
                "SELECT schema_name, table_name FROM control_plane.table_metadata_catalog \
                 WHERE tenant_id = $1 AND connection_id = $2",
                None,
                &[
                    DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
                    DatumWithOid::from(tenant::to_pg(conn.id)),
                ],
            )? {
                if let (Some(s), Some(t)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                    out.insert((s, t));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    crate::error::spi_or_raise(tables, "the connection's catalog tables")
}

/// `dbrag._dataplane_query(connection, sql, max_rows, timeout_ms)`: the
/// guard against the connection's catalog (MySQL, SQLite), then the
/// statement, one jsonb per row. Superuser only: for operators and tests
/// until dbrag.ask() drives it.
#[pg_extern(volatile, parallel_unsafe)]
fn _dataplane_query(
    connection: Option<pgrx::Uuid>,
    sql: Option<&str>,
    max_rows: default!(Option<i32>, 100),
    timeout_ms: default!(Option<i32>, "NULL"),
) -> SetOfIterator<'static, crate::pg::jsonb::JsonbText> {
    // SAFETY: a plain check of the current role.
    if !unsafe { pg_sys::superuser() } {
        raise(
            Kind::Forbidden,
            "permission denied: dbrag._dataplane_query is for superusers only",
        );
    }
    let conn = connections::load(tenant::from_pg(required(connection, "connection")));
    let sql = required(sql, "sql");
    let checked = match conn.kind {
        EngineKind::Mysql | EngineKind::Sqlite => {
            check_statement(&conn, sql, &catalog_tables(&conn)).or_raise()
        }
        _ => sql.to_string(),
    };
    let timeout = timeout_ms.unwrap_or_else(|| gucs::QUERY_TIMEOUT_MS.get());
    let (rows, truncated) = crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
        execute_read_only(
            &conn,
            &checked,
            max_rows.unwrap_or(100) as i64,
            usize::MAX,
            timeout,
        )
    })
    .or_raise();
    if truncated {
        notice!("dbrag._dataplane_query: more rows existed than max_rows");
    }
    SetOfIterator::new(rows.into_iter().map(crate::pg::jsonb::JsonbText))
}

/// `dbrag._dataplane_check(connection, sql)`: the statement the guard would
/// run, or its refusal. Superuser only, for tests and operators.
#[pg_extern(volatile, parallel_unsafe)]
fn _dataplane_check(connection: Option<pgrx::Uuid>, sql: Option<&str>) -> String {
    // SAFETY: a plain check of the current role.
    if !unsafe { pg_sys::superuser() } {
        raise(
            Kind::Forbidden,
            "permission denied: dbrag._dataplane_check is for superusers only",
        );
    }
    let conn = connections::load(tenant::from_pg(required(connection, "connection")));
    check_statement(&conn, required(sql, "sql"), &catalog_tables(&conn)).or_raise()
}
