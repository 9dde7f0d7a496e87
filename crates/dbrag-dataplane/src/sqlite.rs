//! SQLite data planes over `rusqlite` with its bundled SQLite (no system
//! library, the same SQLite everywhere; see docs/engines.md).
//!
//! This runs in the helper process, never in a backend. The backend has
//! resolved the path under `dbrag.sqlite_dir/<tenant_id>/`
//! ([`dbrag_core::dataplane_target::resolve_sqlite_path`] refuses `..`,
//! absolute paths elsewhere and symlinks that lead out). The file is opened
//! read-only without URI parsing and without following a final symlink,
//! with `PRAGMA query_only`, `trusted_schema` off, defensive mode, no
//! attached databases, and limits on string length and SQL size. Queries
//! run with a progress handler that stops the VM when the backend cancels
//! or the call's own deadline has passed. An authorizer refuses, at prepare time, everything but reads
//! and allowed functions — a second wall behind the guard.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbrag_core::dialect_guard::{self, Dialect};
use dbrag_core::frame::{ErrorKind as Kind, Rows as JsonRows, WireError as DbragError};
use dbrag_core::words::looks_secret;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection as Db, OpenFlags};
use serde_json::{json, Map, Value};

use crate::{cancelled, Result};

/// Longest string or blob a query may build (bounds randomblob, printf…).
const MAX_LENGTH: i32 = 16 * 1024 * 1024;
/// VM instructions between two looks at the clock and the interrupt flags.
const PROGRESS_OPS: i32 = 1000;
const SAMPLE_ROWS: usize = dbrag_core::introspect::SAMPLE_ROWS as usize;
/// JSON text one schema read may return (names, types, samples).
const SCHEMA_BYTES: usize = 32 << 20;
/// The schema name of the only database a connection reaches.
pub const SCHEMA: &str = "main";

fn sqlite_error(e: rusqlite::Error, doing: &str) -> DbragError {
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
            Kind::ConnectFailed
        }
        _ => Kind::Remote,
    };
    DbragError::new(kind, format!("{doing} failed: {e}"))
}

/// What a statement's own fault looks like in SQLite: an error in its text
/// (SQLITE_ERROR: no such column, a syntax error) or a value it computed.
/// SQLite has no SQLSTATE: the result code goes to DETAIL.
fn statement_error(e: &rusqlite::Error, doing: &str) -> Option<DbragError> {
    let code = match e {
        rusqlite::Error::SqlInputError { error, .. } => error.extended_code,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::Unknown
                    | rusqlite::ErrorCode::TypeMismatch
                    | rusqlite::ErrorCode::TooBig
            ) =>
        {
            f.extended_code
        }
        _ => return None,
    };
    Some(DbragError::statement(
        format!("{doing} failed: {e}"),
        None,
        format!("SQLite result code {code}"),
    ))
}

/// What the user's statement is called in messages (and how its errors are told apart).
const QUERY: &str = "the SQLite query";

/// What a connection may do at prepare time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Generated statements: reads of user tables and allowed functions.
    Query,
    /// The extension's own introspection: also sqlite_schema and read pragmas.
    Introspect,
}

fn authorize(mode: Mode, ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Authorization::Allow,
        AuthAction::Read { table_name, .. } => {
            let internal = table_name.to_ascii_lowercase().starts_with("sqlite_");
            if internal && mode == Mode::Query {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if dialect_guard::denied_function(Dialect::Sqlite, &name).is_some() {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        // The argument of these is a table name: they only read.
        AuthAction::Pragma { pragma_name, .. }
            if mode == Mode::Introspect
                && matches!(
                    pragma_name,
                    "table_info" | "table_xinfo" | "foreign_key_list" | "index_list"
                ) =>
        {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }
}

/// Open `path` read-only with the protections above.
fn open(path: &PathBuf, mode: Mode) -> Result<Db> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let db =
        Db::open_with_flags(path, flags).map_err(|e| sqlite_error(e, "opening the SQLite file"))?;
    let setup = || -> rusqlite::Result<()> {
        db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        db.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
            false,
        )?;
        db.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            false,
        )?;
        db.execute_batch("PRAGMA query_only = 1;")?;
        db.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        db.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_LENGTH)?;
        db.set_limit(
            Limit::SQLITE_LIMIT_SQL_LENGTH,
            dialect_guard::MAX_SQL_BYTES as i32 * 2,
        )?;
        // Verify it is a database at all (the header is read lazily).
        db.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok(())
    };
    setup().map_err(|e| sqlite_error(e, "opening the SQLite file"))?;
    db.authorizer(Some(move |ctx: AuthContext<'_>| authorize(mode, ctx)))
        .map_err(|e| sqlite_error(e, "opening the SQLite file"))?;
    Ok(db)
}

/// Stop the VM on an interrupt or after `timeout_ms`.
fn arm(db: &Db, timeout_ms: Option<i32>) -> Result<Option<Instant>> {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms.max(1) as u64));
    db.progress_handler(
        PROGRESS_OPS,
        Some(move || cancelled() || deadline.is_some_and(|d| Instant::now() >= d)),
    )
    .map_err(|e| sqlite_error(e, "arming the SQLite progress handler"))?;
    Ok(deadline)
}

/// An interrupted statement (the deadline, or the backend left) as a timeout.
fn interrupted(e: rusqlite::Error, timeout_ms: Option<i32>, doing: &str) -> DbragError {
    let is_interrupt = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted);
    if is_interrupt {
        return DbragError::new(
            Kind::Timeout,
            format!(
                "the SQLite query took longer than {} ms",
                timeout_ms.unwrap_or(0)
            ),
        );
    }
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied {
            return DbragError::new(Kind::Forbidden, format!("{doing} was refused: {e}"));
        }
    }
    if doing == QUERY {
        if let Some(statement) = statement_error(&e, doing) {
            return statement;
        }
    }
    sqlite_error(e, doing)
}

fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) if f.is_finite() => json!(f),
        ValueRef::Real(f) => json!(f.to_string()),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(format!("\\x{}", hex::encode(b))),
    }
}

fn run_rows(
    db: &Db,
    sql: &str,
    max_rows: usize,
    timeout_ms: Option<i32>,
    doing: &str,
) -> Result<JsonRows> {
    run_rows_within(db, sql, max_rows, SCHEMA_BYTES, timeout_ms, doing)
}

/// As [`run_rows`], failing with 54000 past `max_bytes` of JSON text.
fn run_rows_within(
    db: &Db,
    sql: &str,
    max_rows: usize,
    max_bytes: usize,
    timeout_ms: Option<i32>,
    doing: &str,
) -> Result<JsonRows> {
    arm(db, timeout_ms)?;
    let mut stmt = db
        .prepare(sql)
        .map_err(|e| interrupted(e, timeout_ms, doing))?;
    if !stmt.readonly() {
        return Err(DbragError::new(
            Kind::RefusedSql,
            "only a read-only statement may run on SQLite",
        ));
    }
    let columns: Vec<String> = stmt
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut rows = stmt
        .query([])
        .map_err(|e| interrupted(e, timeout_ms, doing))?;
    let mut out = JsonRows {
        columns: columns.clone(),
        ..Default::default()
    };
    let mut bytes = 0usize;
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                if out.rows.len() >= max_rows {
                    out.truncated = true;
                    break;
                }
                let mut obj = Map::new();
                for (i, name) in columns.iter().enumerate() {
                    let v = row.get_ref(i).map(to_json).unwrap_or(Value::Null);
                    obj.insert(name.clone(), v);
                }
                let obj = Value::Object(obj);
                bytes = bytes.saturating_add(crate::json_len(&obj));
                if bytes > max_bytes {
                    return Err(crate::too_large(max_bytes));
                }
                out.rows.push(obj);
            }
            Ok(None) => break,
            Err(e) => return Err(interrupted(e, timeout_ms, doing)),
        }
    }
    Ok(out)
}

/// Run one checked statement on the file, at most `max_rows` rows back.
pub fn query(
    path: &PathBuf,
    sql: &str,
    max_rows: usize,
    max_bytes: usize,
    timeout_ms: i32,
) -> Result<JsonRows> {
    let db = open(path, Mode::Query)?;
    run_rows_within(&db, sql, max_rows, max_bytes, Some(timeout_ms), QUERY)
}

/// User tables and views of the file.
pub fn list_tables(path: &PathBuf, timeout_ms: i32) -> Result<Vec<String>> {
    let db = open(path, Mode::Introspect)?;
    let rows = run_rows(
        &db,
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        100_000,
        Some(timeout_ms),
        "listing SQLite tables",
    )?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect())
}

/// `-- comments` written after a column (or on the CREATE line) in the
/// table's CREATE statement: SQLite keeps no comments of its own.
fn comments_from_ddl(ddl: &str, columns: &[String]) -> (Option<String>, Map<String, Value>) {
    let mut table = None;
    let mut cols = Map::new();
    for (i, line) in ddl.lines().enumerate() {
        let Some((code, comment)) = line.split_once("--") else {
            continue;
        };
        let comment = comment.trim();
        if comment.is_empty() {
            continue;
        }
        if i == 0 && code.to_ascii_lowercase().contains("create") {
            table = Some(comment.to_string());
            continue;
        }
        let first = code
            .trim()
            .trim_start_matches(['"', '`', '['])
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | '`' | ']' | ',' | '('))
            .next()
            .unwrap_or("");
        if let Some(c) = columns.iter().find(|c| c.eq_ignore_ascii_case(first)) {
            cols.insert(c.clone(), json!(comment));
        }
    }
    (table, cols)
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Introspection in catalog::INTROSPECT_SQL's shape, plus sample rows.
pub fn introspect(
    path: &PathBuf,
    timeout_ms: i32,
) -> Result<(Vec<String>, Vec<(String, Vec<Value>)>)> {
    let db = open(path, Mode::Introspect)?;
    let timeout = Some(timeout_ms);
    let doing = "reading the SQLite schema";
    let tables = run_rows(
        &db,
        "SELECT name, type, sql FROM sqlite_schema WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        100_000,
        timeout,
        doing,
    )?;
    let has_stat1 = run_rows(
        &db,
        "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'",
        1,
        timeout,
        doing,
    )?
    .rows
    .len()
        == 1;
    let mut out = Vec::new();
    let mut samples = Vec::new();
    for t in &tables.rows {
        let name = t["name"].as_str().unwrap_or_default().to_string();
        let is_view = t["type"].as_str() == Some("view");
        let q = quote(&name);
        let info = run_rows(
            &db,
            &format!(
                "SELECT name, type, pk FROM pragma_table_info({})",
                quote_literal(&name)
            ),
            10_000,
            timeout,
            doing,
        )
        .or_else(|_| {
            run_rows(
                &db,
                &format!("PRAGMA table_info({q})"),
                10_000,
                timeout,
                doing,
            )
        })?;
        let names: Vec<String> = info
            .rows
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        let (table_comment, col_comments) =
            comments_from_ddl(t["sql"].as_str().unwrap_or_default(), &names);
        let columns: Vec<Value> = info
            .rows
            .iter()
            .map(|c| {
                let n = c["name"].as_str().unwrap_or_default();
                let ty = c["type"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("any");
                json!({"name": n, "type": ty.to_lowercase(), "comment": col_comments.get(n)})
            })
            .collect();
        let mut pk: Vec<(i64, String)> = info
            .rows
            .iter()
            .filter_map(|c| {
                let k = c["pk"].as_i64().unwrap_or(0);
                (k > 0).then(|| (k, c["name"].as_str().unwrap_or_default().to_string()))
            })
            .collect();
        pk.sort();
        let mut fks: Vec<(i64, Value)> = Vec::new();
        if !is_view {
            let list = run_rows(
                &db,
                &format!("PRAGMA foreign_key_list({q})"),
                10_000,
                timeout,
                doing,
            )?;
            for fk in &list.rows {
                let id = fk["id"].as_i64().unwrap_or(0);
                let idx = match fks.iter().position(|(i, _)| *i == id) {
                    Some(i) => i,
                    None => {
                        fks.push((id, json!({"columns": [], "schema": SCHEMA, "table": fk["table"], "other_columns": []})));
                        fks.len() - 1
                    }
                };
                let entry = &mut fks[idx].1;
                if let Some(a) = entry["columns"].as_array_mut() {
                    a.push(fk["from"].clone());
                }
                if let Some(a) = entry["other_columns"].as_array_mut() {
                    a.push(fk["to"].clone());
                }
            }
        }
        let estimate = if is_view {
            None
        } else {
            let from_stat = if has_stat1 {
                run_rows(
                    &db,
                    &format!(
                        "SELECT stat FROM sqlite_stat1 WHERE tbl = {} LIMIT 1",
                        quote_literal(&name)
                    ),
                    1,
                    timeout,
                    doing,
                )
                .ok()
                .and_then(|r| {
                    r.rows
                        .first()
                        .and_then(|s| s["stat"].as_str().map(str::to_string))
                })
                .and_then(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<i64>().ok())
                })
            } else {
                None
            };
            from_stat.or_else(|| {
                // max(rowid) costs one index probe; WITHOUT ROWID tables have none.
                run_rows(
                    &db,
                    &format!("SELECT max(rowid) AS n FROM {q}"),
                    1,
                    timeout,
                    doing,
                )
                .ok()
                .and_then(|r| r.rows.first().map(|v| v["n"].as_i64().unwrap_or(0)))
            })
        };
        out.push(
            json!({
                "table": name,
                "kind": if is_view { "v" } else { "r" },
                "comment": table_comment,
                "row_estimate": estimate,
                "columns": columns,
                "primary_key": pk.into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
                "foreign_keys": fks.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        let wanted: Vec<String> = info
            .rows
            .iter()
            .filter(|c| {
                let n = c["name"].as_str().unwrap_or_default();
                let ty = c["type"].as_str().unwrap_or_default().to_ascii_lowercase();
                !looks_secret(n) && !ty.contains("blob")
            })
            .map(|c| quote(c["name"].as_str().unwrap_or_default()))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let sql = format!("SELECT {} FROM {q} LIMIT {SAMPLE_ROWS}", wanted.join(", "));
        if let Ok(rows) = run_rows(&db, &sql, SAMPLE_ROWS, timeout, doing) {
            // Blobs stored in columns declared otherwise are not samples.
            let rows = rows
                .rows
                .into_iter()
                .map(|mut r| {
                    if let Some(o) = r.as_object_mut() {
                        o.retain(|_, v| !v.as_str().is_some_and(|s| s.starts_with("\\x")));
                    }
                    r
                })
                .collect();
            samples.push((name, rows));
        }
    }
    Ok((out, samples))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
