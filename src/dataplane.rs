//! Operators' and tests' access to a data plane through crate::engine:
//! `dbrag._dataplane_query` (the guard against the connection's catalog,
//! then one read-only statement with a row cap, a time limit and
//! cancellation) and `dbrag._dataplane_check` (the guard's verdict alone).
//! Rows come back as one JSON object per row, column name to value, as
//! PostgreSQL's `to_jsonb` writes them.

use pgrx::prelude::*;

use crate::connection_store::{self, catalog_tables, Connection, EngineKind};
use crate::engine::{self, Checked};
use crate::error::{raise, required, DbragError, Kind, OrRaise, Result};
use crate::gucs;

/// The guard for a `mysql` or `sqlite` connection: one read-only SELECT
/// over the connection's catalog tables and allowed functions. Returns the
/// statement to run (as printed by the parser, comments dropped). Refusals:
/// 42601 (does not parse, not one read-only SELECT) or 42501 (a table or
/// function outside the rules); a parse error carries the parser's message.
fn check_statement(conn: &Connection, sql: &str) -> Result<String> {
    let mut e = engine::open(conn);
    if !e.own_dialect_guard() {
        return Err(DbragError::new(
            Kind::BadArgument,
            format!(
                "check_statement is for MySQL and SQLite connections; a {} connection is checked on PostgreSQL's own parse tree",
                conn.kind.as_str()
            ),
        ));
    }
    let allowed = catalog_tables(conn);
    let statement = engine::Statement {
        sql,
        role: pgrx::pg_sys::InvalidOid,
        schema: &conn.schema_name,
        allowed: &allowed,
    };
    match e.check(&statement) {
        Checked::Ok(s) => Ok(s),
        Checked::Refused(e) => Err(e),
        Checked::Invalid(m) => Err(DbragError::new(Kind::RefusedSql, m)),
    }
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
    let conn = connection_store::load(crate::tenant::from_pg(required(connection, "connection")));
    let sql = required(sql, "sql");
    let mut e = engine::open(&conn);
    let checked = if e.own_dialect_guard() {
        check_statement(&conn, sql).or_raise()
    } else {
        sql.to_string()
    };
    if conn.kind == EngineKind::Local {
        raise(
            Kind::BadArgument,
            "a local connection runs in this database: execute_read_only is for remote engines",
        );
    }
    let timeout = timeout_ms.unwrap_or_else(|| gucs::QUERY_TIMEOUT_MS.get());
    let (rows, truncated) = crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
        let limits = engine::Limits {
            max_rows: max_rows.unwrap_or(100) as i64,
            max_bytes: usize::MAX,
            timeout_ms: timeout,
        };
        e.run_read_only(&checked, limits)
            .map_err(engine::RunError::into_error)
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
    let conn = connection_store::load(crate::tenant::from_pg(required(connection, "connection")));
    check_statement(&conn, required(sql, "sql")).or_raise()
}
