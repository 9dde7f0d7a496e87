//! A remote PostgreSQL server (kind `postgres`) over libpq
//! (crate::remote): the conninfo is checked for the caller when given and
//! decrypted when first needed; statements run read-only on the remote with
//! its own `statement_timeout`, and PostgreSQL's guard checks them against
//! the remote schema's catalog tables.

use std::collections::HashSet;

use dbrag_core::introspect::{
    entries_from_introspection, samples_from_rows, TableEntry, INTROSPECT_SQL, SAMPLE_ROWS,
};
use dbrag_core::sql_text::quote_ident;
use pgrx::prelude::*;
use serde_json::{json, Value};

use super::local::{shape_tables, LIST_TABLES, PROGRESS_EVERY};
use super::{
    Bounds, Checked, Connection, Engine, EngineKind, Introspected, Limits, Readable, RunResult,
    Source, Statement, Target,
};
use crate::error::{raise, DbragError, Kind, Result};
use crate::gucs;
use crate::remote::{self, RemoteRows, Session};
use dbrag_core::values::{branches, collect_with, Dialect, Found, TEXT_COLUMNS_SQL};

pub struct Postgres {
    target: Target<remote::Parsed>,
}

impl Postgres {
    pub fn open(source: Source) -> Result<Self> {
        let target = Target::open(source, |conninfo, tenant| {
            let parsed = remote::parse(conninfo)?;
            if let Err(e) = remote::check_before_connect(&parsed) {
                crate::audit::record_durable(
                    "connection_refused",
                    tenant.map(|t| t.to_string()).as_deref(),
                    json!({"reason": e.message}),
                );
                return Err(e);
            }
            Ok(parsed)
        })?;
        Ok(Postgres { target })
    }

    /// A new session (connect timeout from `dbrag.remote_connect_timeout_ms`),
    /// applying docs/connections-and-keys.md's password rule.
    fn session(&mut self) -> Result<Session> {
        let parsed = self.target.get(|conninfo, _| remote::parse(conninfo))?;
        Session::connect(&parsed, gucs::REMOTE_CONNECT_TIMEOUT_MS.get())
    }
}

impl Engine for Postgres {
    /// A remote server's version is not known here.
    fn dialect(&self) -> String {
        "PostgreSQL".to_string()
    }

    fn readable(&self, _schema: &str, _conninfo: Option<&str>) -> Result<Readable> {
        let Some(parsed) = self.target.given() else {
            return Ok(Readable::default());
        };
        let s = parsed.summary()?;
        Ok(Readable {
            host: s.host,
            port: s.port,
            database: s.database,
            user: s.user,
        })
    }

    fn list_tables(&mut self, schema: &str) -> Result<Vec<(String, String)>> {
        let mut session = self.session()?;
        remote_tables(&mut session, schema)
    }

    fn check_works(&mut self, schema: &str) -> Result<()> {
        let mut session = self.session()?;
        let rows = session.query_read_only(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[Some(schema)],
            gucs::REMOTE_CONNECT_TIMEOUT_MS.get(),
        )?;
        if rows.rows.is_empty() {
            raise(
                Kind::NotFound,
                format!("schema \"{schema}\" does not exist on the remote server"),
            );
        }
        Ok(())
    }

    /// One session for the introspection query, the samples and the value
    /// index's reads.
    fn introspect(&mut self, schema: &str, budget: i64) -> Result<Introspected> {
        let mut session = self.session()?;
        Ok(introspect_postgres(&mut session, schema, budget))
    }

    fn check(&mut self, statement: &Statement) -> Checked {
        super::pg_checked(crate::guard::check_remote(
            statement.sql,
            statement.allowed,
            statement.schema,
        ))
    }

    fn run_read_only(&mut self, sql: &str, limits: Limits) -> RunResult {
        let bounds = limits.checked()?;
        self.run(sql, bounds).map_err(super::remote_run_error)
    }
}

impl Postgres {
    fn run(&mut self, sql: &str, bounds: Bounds) -> Result<(Vec<String>, bool)> {
        let Bounds {
            rows: max,
            bytes: max_bytes,
            timeout_ms,
        } = bounds;
        let body = sql.trim().trim_end_matches(';');
        let wrapped = format!(
            "SELECT pg_catalog.to_jsonb(q)::pg_catalog.text FROM (\n{body}\n) q LIMIT {}",
            max as u64 + 1
        );
        // Rows counted as they come (54000 past max_bytes).
        let mut session = self.session()?;
        session.max_result_bytes = max_bytes;
        let r = session.query_read_only(&wrapped, &[], timeout_ms)?;
        // jsonb text as the remote printed it, never parsed here: jsonb_in
        // checks it on the way out (crate::pg::jsonb::JsonbText).
        let mut rows: Vec<String> = r
            .rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect();
        let truncated = rows.len() > max;
        rows.truncate(max);
        super::within_bytes(rows, max_bytes).map(|rows| (rows, truncated))
    }
}

/// The decrypted conninfo of a `postgres` connection: never log it, never
/// return it to SQL.
fn conninfo_checked(conn: &Connection) -> Result<String> {
    if conn.kind != EngineKind::Postgres {
        return Err(DbragError::new(
            Kind::BadArgument,
            format!(
                "connection {} is of kind {}, not a remote PostgreSQL server",
                conn.id,
                conn.kind.as_str()
            ),
        ));
    }
    crate::connection_store::credentials(conn)
}

/// Open a session to a `postgres` connection.
fn open_session(conn: &Connection) -> Result<Session> {
    let info = conninfo_checked(conn)?;
    let parsed = remote::parse(&info)?;
    Session::connect(&parsed, gucs::REMOTE_CONNECT_TIMEOUT_MS.get())
}

/// Run one read-only statement on a `postgres` connection and return its
/// rows as text (`dbrag._remote_query`). `timeout_ms` bounds the statement
/// (here and as the remote `statement_timeout`); the connect timeout is
/// `dbrag.remote_connect_timeout_ms`. Failures: the kinds of README.md
/// "Errors" (08001, 28P01, a rejected statement's own SQLSTATE, 57014,
/// 58000), never with the password.
pub fn remote_query(
    conn: &Connection,
    sql: &str,
    params: &[Option<&str>],
    timeout_ms: i32,
) -> Result<RemoteRows> {
    let mut session = open_session(conn)?;
    session.query_read_only(sql, params, timeout_ms)
}

fn remote_tables(session: &mut Session, schema: &str) -> Result<Vec<(String, String)>> {
    let rows =
        session.query_read_only(LIST_TABLES, &[Some(schema)], gucs::QUERY_TIMEOUT_MS.get())?;
    let rows = rows
        .rows
        .into_iter()
        .map(|mut r| {
            let t = r.get_mut(1).and_then(Option::take);
            let s = r.get_mut(0).and_then(Option::take).unwrap_or_default();
            (s, t)
        })
        .collect();
    shape_tables(schema, rows, true)
}

/// Introspect a remote PostgreSQL schema over one session: the same
/// introspection query, then a few rows of each table for samples, then the
/// value index's reads. What the remote role may not read yields no samples.
fn introspect_postgres(session: &mut Session, schema: &str, budget: i64) -> Introspected {
    let timeout = gucs::QUERY_TIMEOUT_MS.get();
    let rows = session
        .query_read_only(INTROSPECT_SQL, &[Some(schema)], timeout)
        .unwrap_or_else(|e| e.raise());
    let texts: Vec<String> = rows
        .rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let mut entries = entries_from_introspection(schema, &texts);
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
    let values = collect_postgres(session, schema, &entries, budget, timeout);
    (entries, values)
}

/// Values of a remote PostgreSQL schema over the sync's own session.
fn collect_postgres(
    session: &mut Session,
    schema: &str,
    entries: &[TableEntry],
    budget: i64,
    timeout_ms: i32,
) -> Vec<Found> {
    if budget <= 0 || entries.is_empty() {
        return Vec::new();
    }
    let text: HashSet<(String, String)> =
        match session.query_read_only(TEXT_COLUMNS_SQL, &[Some(schema)], timeout_ms) {
            Ok(r) => r
                .rows
                .into_iter()
                .filter_map(|row| {
                    let mut it = row.into_iter();
                    Some((it.next()??, it.next()??))
                })
                .collect(),
            Err(e) if matches!(e.kind, Kind::Remote | Kind::Statement) => HashSet::new(),
            Err(e) => e.raise(),
        };
    let todo = branches(entries, Some(&text));
    collect_with(
        Dialect::Postgres,
        entries,
        todo,
        budget,
        |sql| match session.query_read_only(sql, &[], timeout_ms) {
            Ok(r) => Ok(r
                .rows
                .into_iter()
                .filter_map(|row| {
                    let mut it = row.into_iter();
                    let b = it.next()??.parse::<usize>().ok()?;
                    Some((b, it.next()??))
                })
                .collect()),
            // A rejected statement (a table the account may not read) or a
            // remote that broke off: retried column by column, then skipped.
            Err(e) if matches!(e.kind, Kind::Remote | Kind::Statement) => Err(e.to_string()),
            Err(e) => e.raise(),
        },
    )
}
