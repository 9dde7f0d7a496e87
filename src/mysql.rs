//! MySQL and MariaDB data planes. The client (the `mysql` crate, no TLS)
//! runs in the data-plane helper process (crate::pg::helper,
//! crates/dbrag-dataplane): a hostile server can end that process, never
//! the backend. This side checks the connection's URI for the caller and
//! turns calls into requests; see docs/engines.md.

use dbrag_core::dataplane_target::{self, MysqlTarget, MysqlUriError};
use dbrag_core::frame::{Introspection, MysqlConn, Request, Rows};

use crate::dataplane::JsonRows;
use crate::error::{DbragError, Kind, Result};
use crate::pg::helper;
use crate::pg::restricted::caller_is_superuser;

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

/// Run one statement (already checked) and return at most `max_rows` rows
/// and at most `max_bytes` of JSON text (54000 past it).
pub fn query(
    target: &MysqlTarget,
    database: &str,
    sql: String,
    max_rows: usize,
    max_bytes: usize,
    connect_ms: i32,
    timeout_ms: i32,
) -> Result<JsonRows> {
    let request = Request::MysqlQuery {
        target: MysqlConn::from(target),
        database: database.to_string(),
        sql,
        max_rows: max_rows as u64,
        max_bytes: max_bytes.min(u64::MAX as usize) as u64,
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

/// Tables and views of `database` the account may see.
pub fn list_tables(
    target: &MysqlTarget,
    database: &str,
    connect_ms: i32,
    timeout_ms: i32,
) -> Result<Vec<String>> {
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
/// of each table (never the secret-looking or binary columns).
pub fn introspect(
    target: &MysqlTarget,
    database: &str,
    connect_ms: i32,
    statement_ms: i32,
) -> Result<Introspection> {
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
