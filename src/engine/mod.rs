//! One data-plane abstraction (docs/architecture.md, "Engines"): the
//! [`Engine`] trait lists tables, introspects into typed entries
//! (`dbrag_core::introspect`), checks a statement and runs it read-only
//! with a row cap, a byte cap and a time limit. Cancellation is
//! PostgreSQL's own: every engine polls `crate::pg::interrupt_pending`
//! while it waits, so `statement_timeout` and `pg_cancel_backend` end it.
//!
//! [`open`] holds the only `match` on the engine kind: adding an engine is
//! one file here and one arm there.

use std::collections::HashSet;

use dbrag_core::dialect_guard::GuardError;
use dbrag_core::introspect::TableEntry;
use pgrx::pg_sys;
use serde_json::{json, Value};

pub use crate::connection_store::{Connection, EngineKind};
use crate::error::{DbragError, Kind, Result};
use crate::value_index::Found;

pub mod local;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

/// Rows of one statement, one JSON object per row (MySQL and SQLite
/// answers through the data-plane helper).
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // columns: for callers that need the order
pub struct JsonRows {
    pub columns: Vec<String>,
    /// One JSON object per row.
    pub rows: Vec<Value>,
    /// More rows existed than were read.
    pub truncated: bool,
}

/// The tables found, and the values of their low-cardinality text columns
/// (crate::value_index).
pub type Introspected = (Vec<TableEntry>, Vec<Found>);

/// A statement's verdict: Ok(the statement to run), refused (not the
/// model's to fix) or invalid (the model may retry with the message).
pub enum Checked {
    Ok(String),
    Refused(DbragError),
    Invalid(String),
}

/// How a run failed: the model may fix a statement error (it is sent the
/// message alone); everything else ends the request.
pub enum RunError {
    Retryable(DbragError),
    Fatal(DbragError),
}

impl RunError {
    pub fn into_error(self) -> DbragError {
        match self {
            RunError::Retryable(e) | RunError::Fatal(e) => e,
        }
    }
}

/// What a connection row shows of where it points (never the password).
#[derive(Default)]
pub struct Readable {
    pub host: Option<String>,
    pub port: Option<i32>,
    pub database: Option<String>,
    pub user: Option<String>,
}

/// Where an engine's target comes from: a stored connection (credentials
/// decrypted when first needed) or a conninfo given to test_connection,
/// create_connection or update_connection (checked for the caller when the
/// engine is opened; a refusal is audited durably).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Stored(&'a Connection),
    Given {
        conninfo: Option<&'a str>,
        tenant: Option<uuid::Uuid>,
    },
}

/// A data plane. Every method runs as whoever calls it: callers wrap work
/// for a tenant in crate::act_as.
pub trait Engine {
    /// Whether statements are checked by the engine's own dialect guard
    /// (sqlparser) rather than PostgreSQL's parse tree.
    fn own_dialect_guard(&self) -> bool {
        false
    }

    /// The SQL dialect the prompt names.
    fn dialect(&self) -> String;

    /// The schema a connection reads, from the one given (`public` when
    /// left out): engines with a fixed schema or a database in their
    /// conninfo decide here.
    fn resolve_schema(&self, given: &str) -> Result<String> {
        Ok(given.to_string())
    }

    /// Whether [`Engine::check_schema`] checks anything (it then runs as
    /// the tenant's role).
    fn checks_schema(&self) -> bool {
        false
    }

    /// Check that `schema` may be used before a connection row names it
    /// (local: not a system schema, USAGE granted).
    fn check_schema(&mut self, _schema: &str) -> Result<()> {
        Ok(())
    }

    /// What the connection row shows: host, port, database, user.
    fn readable(&self, schema: &str, conninfo: Option<&str>) -> Result<Readable>;

    /// Whether the row's database_name shows the schema (MySQL: the
    /// schema is the database).
    fn schema_is_database(&self) -> bool {
        false
    }

    /// Tables of `schema` the account may read, as (schema, table); 42704
    /// when the schema does not exist.
    fn list_tables(&mut self, schema: &str) -> Result<Vec<(String, String)>>;

    /// What activate_connection checks: decrypt, connect, schema present.
    fn check_works(&mut self, schema: &str) -> Result<()>;

    /// Tables with columns, keys, comments and samples, and at most
    /// `budget` values for the value index.
    fn introspect(&mut self, schema: &str, budget: i64) -> Result<Introspected>;

    /// The guard's verdict on a statement.
    fn check(&mut self, statement: &Statement) -> Checked;

    /// Run one checked statement read-only within `limits`.
    fn run_read_only(&mut self, sql: &str, limits: Limits) -> RunResult;
}

/// A statement for the guard: the SQL, the tenant role it is checked for,
/// the connection's schema and the (schema, table) pairs it may read.
pub struct Statement<'a> {
    pub sql: &'a str,
    pub role: pg_sys::Oid,
    pub schema: &'a str,
    pub allowed: &'a HashSet<(String, String)>,
}

/// The bounds of one run: at most `max_rows` rows (and whether more
/// existed), at most `max_bytes` of jsonb text (54000), within
/// `timeout_ms` (57014).
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_rows: i64,
    pub max_bytes: usize,
    pub timeout_ms: i32,
}

impl Limits {
    /// The row cap as a count (22023 when negative) and a timeout of at
    /// least 1 ms.
    fn checked(self) -> std::result::Result<Bounds, RunError> {
        Ok(Bounds {
            rows: row_cap(self.max_rows)?,
            bytes: self.max_bytes,
            timeout_ms: self.timeout_ms.max(1),
        })
    }
}

/// The bounds of one of the value index's batches (dbrag_core::values).
pub(crate) fn batch_bounds(timeout_ms: i32) -> Bounds {
    Bounds {
        rows: dbrag_core::values::BATCH_ROWS,
        bytes: dbrag_core::values::BATCH_BYTES,
        timeout_ms: timeout_ms.max(1),
    }
}

/// [`Limits`] once checked: what a data-plane request carries.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub rows: usize,
    pub bytes: usize,
    pub timeout_ms: i32,
}

/// The rows of a run as jsonb text, and whether more existed.
pub type RunResult = std::result::Result<(Vec<String>, bool), RunError>;

/// Open an engine of `kind`. No I/O for a stored connection; a given
/// conninfo is parsed and checked for the caller. THE match on the kind.
pub fn open_kind(kind: EngineKind, source: Source) -> Result<Box<dyn Engine>> {
    Ok(match kind {
        EngineKind::Local => Box::new(local::Local::open(source)?),
        EngineKind::Postgres => Box::new(postgres::Postgres::open(source)?),
        EngineKind::Mysql => Box::new(mysql::Mysql::open(source)?),
        EngineKind::Sqlite => Box::new(sqlite::Sqlite::open(source)?),
    })
}

/// The engine of a stored connection.
pub fn open(conn: &Connection) -> Box<dyn Engine> {
    match open_kind(conn.kind, Source::Stored(conn)) {
        Ok(e) => e,
        Err(e) => e.raise(),
    }
}

/// Audit a refused conninfo (42501) durably: the attempt is kept even when
/// the statement fails.
pub(crate) fn audit_refusal(kind: EngineKind, tenant: Option<uuid::Uuid>, e: &DbragError) {
    if e.kind == Kind::Forbidden {
        crate::audit::record_durable(
            "connection_refused",
            tenant.map(|t| t.to_string()).as_deref(),
            json!({"kind": kind.as_str(), "reason": e.message}),
        );
    }
}

/// Where a remote engine points: a given conninfo, checked for the caller
/// when the engine is opened, or a stored connection's, decrypted and
/// checked when first needed (inside the tenant's role).
pub(crate) struct Target<T> {
    conn: Option<Connection>,
    checked: Option<T>,
}

impl<T: Clone> Target<T> {
    /// `check(conninfo, tenant)`: parse and check a given conninfo (and
    /// audit a refusal).
    pub fn open(
        source: Source,
        check: impl FnOnce(&str, Option<uuid::Uuid>) -> Result<T>,
    ) -> Result<Self> {
        match source {
            Source::Stored(conn) => Ok(Target {
                conn: Some(conn.clone()),
                checked: None,
            }),
            Source::Given { tenant, .. } => {
                let conninfo = given_conninfo(&source).unwrap_or_default();
                Ok(Target {
                    conn: None,
                    checked: Some(check(conninfo, tenant)?),
                })
            }
        }
    }

    /// The target of a given conninfo (None for a stored connection).
    pub fn given(&self) -> Option<&T> {
        match self.conn {
            None => self.checked.as_ref(),
            Some(_) => None,
        }
    }

    /// The stored connection, if any.
    pub fn conn(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// The checked target; for a stored connection `check(credentials,
    /// tenant)` on first use.
    pub fn get(&mut self, check: impl FnOnce(&str, Option<uuid::Uuid>) -> Result<T>) -> Result<T> {
        if let Some(t) = &self.checked {
            return Ok(t.clone());
        }
        let Some(conn) = &self.conn else {
            return Err(DbragError::new(
                Kind::Internal,
                "an engine without a target",
            ));
        };
        let t = check(
            &crate::connection_store::credentials(conn)?,
            Some(conn.tenant_id),
        )?;
        self.checked = Some(t.clone());
        Ok(t)
    }
}

/// The conninfo of a given source, bounded; None for a stored one.
pub(crate) fn given_conninfo<'a>(source: &Source<'a>) -> Option<&'a str> {
    match source {
        Source::Given { conninfo, .. } => Some(crate::error::bounded(
            crate::error::required(*conninfo, "conninfo"),
            "conninfo",
            crate::error::limits::CONNINFO,
        )),
        Source::Stored(_) => None,
    }
}

/// The check of a statement against the connection's catalog tables.
pub fn check(conn: &Connection, role: pg_sys::Oid, sql: &str) -> Checked {
    let allowed = crate::connection_store::catalog_tables(conn);
    open(conn).check(&Statement {
        sql,
        role,
        schema: &conn.schema_name,
        allowed: &allowed,
    })
}

/// A dialect guard's verdict (MySQL, SQLite) as [`Checked`].
pub(crate) fn dialect_checked(v: std::result::Result<String, GuardError>) -> Checked {
    match v {
        Ok(normalized) => Checked::Ok(normalized),
        Err(GuardError::Syntax(m)) => Checked::Invalid(m),
        Err(e) => Checked::Refused(guard_error(e)),
    }
}

/// A dialect guard's verdict as the error to raise.
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

/// A remote engine's failure: only the data plane's verdict on the
/// statement is the model's to fix; a permission the role lacks is not,
/// and connect and authentication failures never reach the model (README.md,
/// "Errors").
pub(crate) fn remote_run_error(e: DbragError) -> RunError {
    match e.kind {
        Kind::Statement if e.sqlstate() != pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE => {
            RunError::Retryable(e)
        }
        _ => RunError::Fatal(e),
    }
}

/// The same bound on an answer's size as for local connections. The
/// client has already buffered it: a remote server is trusted with the
/// statement's time limit (SECURITY.md).
pub(crate) fn within_bytes(rows: Vec<String>, max_bytes: usize) -> Result<Vec<String>> {
    if rows.iter().map(String::len).sum::<usize>() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(rows)
}

/// 54000: the answer is over `max_bytes`.
pub(crate) fn too_large(max_bytes: usize) -> DbragError {
    DbragError::new(
        Kind::TooLarge,
        format!("the answer is larger than {} MB", max_bytes >> 20),
    )
    .hint("ask for fewer rows or columns (max_rows), or narrower values")
}

/// Helper-process rows (MySQL, SQLite) as jsonb text, within `max_bytes`.
pub(crate) fn json_text(rows: JsonRows, max_bytes: usize) -> Result<(Vec<String>, bool)> {
    let text = rows
        .rows
        .iter()
        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
        .collect();
    within_bytes(text, max_bytes).map(|text| (text, rows.truncated))
}

/// The row cap of one run, bounded.
pub(crate) fn row_cap(max_rows: i64) -> std::result::Result<usize, RunError> {
    if max_rows < 0 {
        return Err(RunError::Fatal(DbragError::new(
            Kind::BadArgument,
            "max_rows must not be negative",
        )));
    }
    Ok(max_rows.min(1_000_000) as usize)
}

/// PostgreSQL's guard verdict (local and remote PostgreSQL) as [`Checked`].
pub(crate) fn pg_checked(
    result: std::result::Result<crate::guard::GuardedStatement, crate::guard::GuardError>,
) -> Checked {
    use crate::guard::GuardError;
    match result {
        Ok(stmt) => Checked::Ok(stmt.sql),
        // A permission the caller lacks is not the model's to fix.
        Err(GuardError::Invalid { sqlstate, message })
            if sqlstate == pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE =>
        {
            Checked::Refused(DbragError::new(Kind::Forbidden, message))
        }
        Err(GuardError::Invalid { message, .. }) => Checked::Invalid(message),
        Err(e) => Checked::Refused(e.into()),
    }
}
