//! MySQL and MariaDB data planes. The client (the `mysql` crate, no TLS)
//! runs in the data-plane helper process (crate::pg::helper,
//! crates/dbrag-dataplane): a hostile server can end that process, never
//! the backend. This side checks the connection's URI for the caller and
//! turns calls into requests; see docs/engines.md. The guard is
//! sqlparser's tree in MySQL's dialect (dbrag_core::dialect_guard).

use dbrag_core::dataplane_target::{self, MysqlTarget, MysqlUriError};
use dbrag_core::frame::{Introspection, MysqlConn, Request, Rows};

use dbrag_core::dialect_guard::{self, Dialect};
use dbrag_core::introspect::entries_with_samples;

use super::{
    batch_bounds, Bounds, Checked, Engine, EngineKind, Introspected, JsonRows, Limits, Readable,
    RunResult, Source, Statement, Target,
};
use crate::error::{DbragError, Kind, Result};
use crate::gucs;
use crate::pg::helper;
use crate::pg::restricted::caller_is_superuser;
use crate::value_index::helper_batch;
use dbrag_core::values::{self};

const ENGINE: &str = "MySQL";

/// Parse a `mysql://` conninfo and apply docs/connections-and-keys.md's rules for the caller.
pub fn parse_target(conninfo: &str) -> Result<MysqlTarget> {
    let target = dataplane_target::parse_mysql_uri(conninfo).map_err(uri_error)?;
    if !caller_is_superuser() {
        dataplane_target::check_mysql_unprivileged(&target).map_err(uri_error)?;
    }
    Ok(target)
}

fn uri_error(e: MysqlUriError) -> DbragError {
    match e {
        MysqlUriError::Socket | MysqlUriError::NoPassword => {
            DbragError::new(Kind::Forbidden, format!("connection refused: {e}")).hint(
                "a MySQL connection must use TCP (host and port) and authenticate with the password it carries",
            )
        }
        MysqlUriError::Syntax(_) | MysqlUriError::Parameter(_) => {
            DbragError::new(Kind::BadArgument, e.to_string())
                .hint("write mysql://user:password@host:port/database (percent-encode special characters)")
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| {
        DbragError::new(
            Kind::Remote,
            format!("the {ENGINE} client process answered out of protocol: {e}"),
        )
    })
}

fn ms(v: i32) -> u64 {
    v.max(1) as u64
}

/// Run one statement (already checked) within `bounds` (54000 past its
/// bytes); the connect timeout is dbrag.remote_connect_timeout_ms.
pub fn query(
    target: &MysqlTarget,
    database: &str,
    sql: String,
    bounds: Bounds,
) -> Result<JsonRows> {
    let connect_ms = gucs::REMOTE_CONNECT_TIMEOUT_MS.get();
    let timeout_ms = bounds.timeout_ms;
    let request = Request::MysqlQuery {
        target: MysqlConn::from(target),
        database: database.to_string(),
        sql,
        max_rows: bounds.rows as u64,
        max_bytes: bounds.bytes.min(u64::MAX as usize) as u64,
        connect_ms,
        timeout_ms,
    };
    let rows: Rows = decode(helper::call(
        ENGINE,
        &request,
        ms(connect_ms) + ms(timeout_ms),
    )?)?;
    Ok(JsonRows {
        columns: rows.columns,
        rows: rows.rows,
        truncated: rows.truncated,
    })
}

/// Tables and views of `database` the account may see (connect and
/// statement timeouts: dbrag.remote_connect_timeout_ms, dbrag.query_timeout_ms).
pub fn list_tables(target: &MysqlTarget, database: &str) -> Result<Vec<String>> {
    let connect_ms = gucs::REMOTE_CONNECT_TIMEOUT_MS.get();
    let timeout_ms = gucs::QUERY_TIMEOUT_MS.get();
    let request = Request::MysqlListTables {
        target: MysqlConn::from(target),
        database: database.to_string(),
        connect_ms,
        timeout_ms,
    };
    decode(helper::call(
        ENGINE,
        &request,
        ms(connect_ms) + ms(timeout_ms),
    )?)
}

/// Introspect `database` through information_schema, then read a few rows
/// of each table (never the secret-looking or binary columns); timeouts as
/// for [`list_tables`], per statement.
pub fn introspect(target: &MysqlTarget, database: &str) -> Result<Introspection> {
    let connect_ms = gucs::REMOTE_CONNECT_TIMEOUT_MS.get();
    let statement_ms = gucs::QUERY_TIMEOUT_MS.get();
    let request = Request::MysqlIntrospect {
        target: MysqlConn::from(target),
        database: database.to_string(),
        connect_ms,
        statement_ms,
    };
    decode(helper::call(
        ENGINE,
        &request,
        ms(connect_ms) + 10 * ms(statement_ms),
    )?)
}

pub struct Mysql {
    target: Target<MysqlTarget>,
}

impl Mysql {
    pub fn open(source: Source) -> Result<Self> {
        let target = Target::open(source, |conninfo, tenant| {
            parse_target(conninfo)
                .inspect_err(|e| super::audit_refusal(EngineKind::Mysql, tenant, e))
        })?;
        Ok(Mysql { target })
    }

    /// The target, checked for the caller (as the tenant's role when
    /// working for one).
    fn target(&mut self) -> Result<MysqlTarget> {
        self.target.get(|conninfo, _| parse_target(conninfo))
    }
}

impl Engine for Mysql {
    fn own_dialect_guard(&self) -> bool {
        true
    }

    fn dialect(&self) -> String {
        "MySQL 8 / MariaDB".to_string()
    }

    /// The database: schema_name, or the URI's when schema_name is the
    /// default 'public'.
    fn resolve_schema(&self, given: &str) -> Result<String> {
        match self.target.given() {
            Some(t) if given == "public" => match &t.database {
                Some(db) => Ok(db.clone()),
                None => Err(DbragError::new(
                    Kind::BadArgument,
                    "a mysql connection needs a database",
                )
                .hint(
                    "name it in the URI (mysql://user:password@host/database) or as schema_name",
                )),
            },
            _ => Ok(given.to_string()),
        }
    }

    fn readable(&self, schema: &str, _conninfo: Option<&str>) -> Result<Readable> {
        Ok(match self.target.given() {
            Some(t) => Readable {
                host: Some(t.host.clone()),
                port: Some(t.port as i32),
                database: Some(schema.to_string()),
                user: Some(t.user.clone()),
            },
            None => Readable::default(),
        })
    }

    fn schema_is_database(&self) -> bool {
        true
    }

    fn list_tables(&mut self, schema: &str) -> Result<Vec<(String, String)>> {
        let target = self.target()?;
        Ok(list_tables(&target, schema)?
            .into_iter()
            .map(|name| (schema.to_string(), name))
            .collect())
    }

    fn check_works(&mut self, schema: &str) -> Result<()> {
        self.list_tables(schema).map(|_| ())
    }

    /// Through information_schema, on the client's worker thread
    /// (interruptible; each statement limited by dbrag.query_timeout_ms on
    /// the server); then the value index's batches.
    fn introspect(&mut self, schema: &str, budget: i64) -> Result<Introspected> {
        let target = self.target()?;
        let timeout_ms = gucs::QUERY_TIMEOUT_MS.get();
        let found = introspect(&target, schema)?;
        let entries = entries_with_samples(schema, &found.tables, found.samples);
        let todo = values::branches(&entries, None);
        let values = if budget <= 0 || todo.is_empty() {
            Vec::new()
        } else {
            values::collect_with(values::Dialect::Mysql, &entries, todo, budget, |sql| {
                helper_batch(
                    query(&target, schema, sql.to_string(), batch_bounds(timeout_ms))
                        .map(|r| r.rows),
                )
            })
        };
        Ok((entries, values))
    }

    fn check(&mut self, statement: &Statement) -> Checked {
        super::dialect_checked(
            dialect_guard::check(
                Dialect::MySql,
                statement.sql,
                statement.schema,
                statement.allowed,
            )
            .map(|c| c.sql),
        )
    }

    fn run_read_only(&mut self, sql: &str, limits: Limits) -> RunResult {
        let bounds = limits.checked()?;
        let mut run = || {
            let target = self.target()?;
            let database = self
                .target
                .conn()
                .map(|c| c.schema_name.clone())
                .unwrap_or_default();
            let limited =
                dialect_guard::with_row_limit(Dialect::MySql, sql, bounds.rows as u64 + 1)
                    .unwrap_or_else(|| sql.to_string());
            let rows = query(&target, &database, limited, bounds)?;
            super::json_text(rows, bounds.bytes)
        };
        run().map_err(super::remote_run_error)
    }
}
