//! MySQL and MariaDB data planes over the `mysql` crate's synchronous client
//! (no TLS, no OpenSSL; see docs/engines.md).
//!
//! This runs in the helper process, never in a backend. Every conversation
//! with the server runs on a worker thread; the main thread waits on the
//! worker's channel in 20 ms slices and stops at the call's deadline or
//! when the backend cancels (closes our stdin: `statement_timeout`, the
//! extension's deadline, `pg_cancel_backend` served by the backend). On the
//! way out, after the reply, it sends `KILL QUERY <thread id>` over a second
//! short connection, so the server stops too. Each statement also carries a
//! server-side limit
//! (`max_execution_time` on MySQL, `max_statement_time` on MariaDB) and runs
//! in `START TRANSACTION READ ONLY`; the socket has read/write timeouts.
//!
//! The client never reads a local file for the server (no LOCAL INFILE
//! handler: a server that asks gets an empty file), never connects to a
//! socket (`prefer_socket` off, no socket option accepted) and never sends
//! the password in clear (cleartext plugin off).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbrag_core::dataplane_target::MysqlTarget;
use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Value as MyValue};
use serde_json::{json, Map, Value};

use dbrag_core::frame::{
    ErrorKind as Kind, Introspection, Rows as JsonRows, WireError as DbragError,
};
use dbrag_core::words::looks_secret;

use crate::{set_pending_kill, Result};

/// How long the KILL QUERY connection may take.
const KILL_TIMEOUT_MS: u64 = 3000;
/// Extra socket time past a statement's own limit before the worker gives up.
const SOCKET_GRACE_MS: u64 = 5000;
/// Rows read per table for samples.
const SAMPLE_ROWS: usize = dbrag_core::introspect::SAMPLE_ROWS as usize;
/// JSON text read per table for samples (the catalog keeps a few short values).
const SAMPLE_BYTES: usize = 4 << 20;

fn redact(message: &str, target: &MysqlTarget) -> String {
    dbrag_core::conninfo::redact(message, target.password.as_deref())
}

fn opts(target: &MysqlTarget, database: Option<&str>, connect_ms: u64, io_ms: u64) -> OptsBuilder {
    OptsBuilder::new()
        .ip_or_hostname(Some(target.host.clone()))
        .tcp_port(target.port)
        .user(Some(target.user.clone()))
        .pass(target.password.clone())
        .db_name(database.map(str::to_string))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_millis(connect_ms)))
        .read_timeout(Some(Duration::from_millis(io_ms)))
        .write_timeout(Some(Duration::from_millis(io_ms)))
        .enable_cleartext_plugin(false)
        .local_infile_handler(None)
        .stmt_cache_size(0)
}

/// A failure from the server or the client library, as a DbragError:
/// a refused password (1045) is an authentication failure, any other
/// server error while connecting a connect failure, a server error on a
/// statement a rejected statement with MySQL's SQLSTATE; client-side
/// failures (the protocol, a lost socket) stay `Remote`.
fn my_error(e: mysql::Error, target: &MysqlTarget, doing: &str) -> DbragError {
    let connecting = doing == CONNECTING;
    if let mysql::Error::MySqlError(ref m) = e {
        // 3024: MySQL's max_execution_time; 1969: MariaDB's max_statement_time.
        if matches!(m.code, 3024 | 1969) {
            return DbragError::new(
                Kind::Timeout,
                format!(
                    "the MySQL query was stopped: {}",
                    redact(&m.message, target)
                ),
            );
        }
        // 1317: KILL QUERY from elsewhere (ours comes with a deadline, above).
        if m.code == 1317 {
            return DbragError::new(
                Kind::Cancelled,
                format!(
                    "the MySQL query was cancelled: {}",
                    redact(&m.message, target)
                ),
            );
        }
        let message = format!(
            "{doing} failed: {} (MySQL error {})",
            redact(&m.message, target),
            m.code
        );
        // 1045: access denied (user or password); 1698: no password for a
        // socket-authenticated account.
        if matches!(m.code, 1045 | 1698) {
            return DbragError::new(Kind::AuthFailed, message);
        }
        if connecting {
            return DbragError::new(Kind::ConnectFailed, message);
        }
        let detail = format!("MySQL error {}, SQLSTATE {}", m.code, m.state);
        return DbragError::statement(message, Some(m.state.clone()), detail);
    }
    let unreachable = matches!(
        &e,
        mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(_))
    ) || matches!(&e, mysql::Error::IoError(io) if matches!(
        io.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
    ));
    let kind = if connecting && unreachable {
        Kind::ConnectFailed
    } else {
        Kind::Remote
    };
    DbragError::new(
        kind,
        format!("{doing} failed: {}", redact(&e.to_string(), target)),
    )
}

const CONNECTING: &str = "connecting to the MySQL server";

enum Msg<T> {
    Connected(u32),
    Done(Result<T>),
}

/// The worker's way to answer once, possibly before it has cleaned up.
pub struct Reply<T> {
    tx: Option<mpsc::Sender<Msg<T>>>,
}

impl<T> Reply<T> {
    pub fn send(&mut self, r: Result<T>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Done(r));
        }
    }
}

/// Sends `KILL QUERY` when the backend leaves before the worker answered
/// (an ERROR unwinding through it included).
struct KillGuard<T> {
    target: MysqlTarget,
    rx: mpsc::Receiver<Msg<T>>,
    thread_id: Option<u32>,
    cancelled: Arc<AtomicBool>,
    finished: bool,
}

impl<T> KillGuard<T> {
    fn stop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.cancelled.store(true, Ordering::SeqCst);
        // A Connected message may be waiting in the channel.
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Connected(id) = msg {
                self.thread_id = Some(id);
            }
        }
        if let Some(id) = self.thread_id {
            kill_query(self.target.clone(), id);
        }
    }
}

impl<T> Drop for KillGuard<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `KILL QUERY id` over a second connection, sent by the process after its
/// reply has gone out: the backend goes on at once even if the server is
/// slow to answer.
fn kill_query(target: MysqlTarget, id: u32) {
    set_pending_kill(Box::new(move || {
        let o = opts(&target, None, KILL_TIMEOUT_MS, KILL_TIMEOUT_MS);
        if let Ok(mut c) = Conn::new(o) {
            let _ = c.query_drop(format!("KILL QUERY {id}"));
        }
    }));
}

/// Run `job` on a worker thread with a fresh connection to `database`,
/// inside `START TRANSACTION READ ONLY` with each statement limited to
/// `statement_ms` on the server. The backend waits until the job answers,
/// `deadline_ms` passes (Kind::Timeout), or an interrupt arrives (the
/// interrupt's own ERROR), serving interrupts every 20 ms.
pub fn run<T, F>(
    target: &MysqlTarget,
    database: Option<&str>,
    connect_ms: i32,
    statement_ms: i32,
    deadline_ms: Option<i32>,
    job: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Conn, &mut Reply<T>) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Msg<T>>();
    let cancelled = Arc::new(AtomicBool::new(false));
    let worker_cancelled = cancelled.clone();
    let worker_target = target.clone();
    let database = database.map(str::to_string);
    let connect_ms = connect_ms.max(1) as u64;
    let statement_ms = statement_ms.max(1);
    let io_ms = statement_ms as u64 + SOCKET_GRACE_MS;
    let spawned = std::thread::Builder::new().name("mysql".into()).spawn(move || {
        let mut reply = Reply {
            tx: Some(tx.clone()),
        };
        let o = opts(&worker_target, database.as_deref(), connect_ms, io_ms);
        let mut conn = match Conn::new(o) {
            Ok(c) => c,
            Err(e) => {
                let err = my_error(e, &worker_target, CONNECTING);
                let err = if matches!(err.kind, Kind::Remote | Kind::ConnectFailed | Kind::AuthFailed) {
                    err.hint("check host, port, user, password and database; the server must accept TCP connections")
                } else {
                    err
                };
                return reply.send(Err(err));
            }
        };
        let _ = tx.send(Msg::Connected(conn.connection_id()));
        if worker_cancelled.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = prepare_session(&mut conn, statement_ms) {
            return reply.send(Err(my_error(
                e,
                &worker_target,
                "setting up the MySQL session",
            )));
        }
        let outcome = job(&mut conn, &mut reply);
        reply.send(outcome);
    });
    if let Err(e) = spawned {
        return Err(DbragError::new(
            Kind::Remote,
            format!("could not start a client thread: {e}"),
        ));
    }
    let mut guard = KillGuard {
        target: target.clone(),
        rx,
        thread_id: None,
        cancelled,
        finished: false,
    };
    let deadline =
        deadline_ms.map(|ms| (ms, Instant::now() + Duration::from_millis(ms.max(1) as u64)));
    loop {
        match guard.rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Msg::Connected(id)) => guard.thread_id = Some(id),
            Ok(Msg::Done(r)) => {
                guard.finished = true;
                return r;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                guard.finished = true;
                return Err(DbragError::new(
                    Kind::Remote,
                    "the MySQL client thread ended without an answer",
                ));
            }
        }
        if crate::cancelled() {
            // The backend left (an interrupt, its own deadline): the guard
            // kills the query on the way out.
            guard.stop();
            return Err(DbragError::new(
                Kind::Timeout,
                "the MySQL query was cancelled",
            ));
        }
        if let Some((ms, at)) = deadline {
            if Instant::now() >= at {
                guard.stop();
                return Err(DbragError::new(
                    Kind::Timeout,
                    format!("the MySQL query took longer than {ms} ms"),
                ));
            }
        }
    }
}

/// Server-side limits and a read-only transaction.
fn prepare_session(conn: &mut Conn, statement_ms: i32) -> mysql::Result<()> {
    let version: Option<String> = conn.query_first("SELECT VERSION()")?;
    let mariadb = version
        .unwrap_or_default()
        .to_ascii_lowercase()
        .contains("mariadb");
    if mariadb {
        conn.query_drop(format!(
            "SET SESSION max_statement_time = {:.3}",
            statement_ms as f64 / 1000.0
        ))?;
    } else {
        conn.query_drop(format!("SET SESSION max_execution_time = {statement_ms}"))?;
        // Fresh row estimates in information_schema (MySQL 8 caches them a day).
        let _ = conn.query_drop("SET SESSION information_schema_stats_expiry = 0");
    }
    conn.query_drop("START TRANSACTION READ ONLY")
}

// ---------------------------------------------------------------- values

fn hex_bytes(b: &[u8]) -> String {
    format!("\\x{}", hex::encode(b))
}

/// A decimal as a JSON number when f64 holds it exactly, else as text.
fn decimal(text: &str) -> Value {
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() {
            let normalized = text.trim_start_matches('+');
            let back = f.to_string();
            if back == normalized
                || text
                    .parse::<i64>()
                    .is_ok_and(|i| i as f64 == f && i.abs() < (1 << 53))
            {
                return json!(f);
            }
            if let (Some(a), Some(b)) = (strip_zeros(normalized), strip_zeros(&back)) {
                if a == b {
                    return json!(f);
                }
            }
        }
    }
    json!(text)
}

fn strip_zeros(s: &str) -> Option<String> {
    if s.contains('e') || s.contains('E') {
        return None;
    }
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    };
    Some(s.to_string())
}

/// One MySQL value as PostgreSQL's to_jsonb would show the same data.
fn to_json(v: &MyValue, ctype: ColumnType, charset: u16) -> Value {
    use ColumnType::*;
    match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => json!(i),
        MyValue::UInt(u) => json!(u),
        MyValue::Float(f) if f.is_finite() => json!(*f as f64),
        MyValue::Double(f) if f.is_finite() => json!(f),
        MyValue::Float(f) => json!(f.to_string()),
        MyValue::Double(f) => json!(f.to_string()),
        MyValue::Date(y, mo, d, h, mi, s, us) => {
            if ctype == MYSQL_TYPE_DATE || ctype == MYSQL_TYPE_NEWDATE {
                json!(format!("{y:04}-{mo:02}-{d:02}"))
            } else if *us > 0 {
                json!(format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}"
                ))
            } else {
                json!(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"))
            }
        }
        MyValue::Time(neg, days, h, mi, s, us) => {
            let hours = *days as u64 * 24 + *h as u64;
            let sign = if *neg { "-" } else { "" };
            if *us > 0 {
                json!(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
            } else {
                json!(format!("{sign}{hours:02}:{mi:02}:{s:02}"))
            }
        }
        MyValue::Bytes(b) => match ctype {
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => decimal(&String::from_utf8_lossy(b)),
            MYSQL_TYPE_JSON => {
                serde_json::from_slice(b).unwrap_or_else(|_| json!(String::from_utf8_lossy(b)))
            }
            MYSQL_TYPE_BIT | MYSQL_TYPE_GEOMETRY => json!(hex_bytes(b)),
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR => {
                let t = String::from_utf8_lossy(b);
                t.parse::<i64>()
                    .map(|i| json!(i))
                    .unwrap_or_else(|_| json!(t))
            }
            MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => decimal(&String::from_utf8_lossy(b)),
            // charset 63 is "binary": BLOB, BINARY, VARBINARY.
            _ if charset == 63 => json!(hex_bytes(b)),
            _ => json!(String::from_utf8_lossy(b)),
        },
    }
}

/// Read up to `max_rows + 1` rows of a binary-protocol result as JSON objects.
/// More than `max_bytes` of JSON text ends the read with `Ok(None)`.
#[allow(clippy::type_complexity)]
fn collect(
    result: &mut mysql::QueryResult<'_, '_, '_, mysql::Binary>,
    max_rows: usize,
    max_bytes: usize,
) -> mysql::Result<Option<(Vec<String>, Vec<Value>, bool)>> {
    let columns: Vec<(String, ColumnType, u16)> = result
        .columns()
        .as_ref()
        .iter()
        .map(|c| {
            (
                c.name_str().into_owned(),
                c.column_type(),
                c.character_set(),
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut bytes = 0usize;
    for row in result.by_ref() {
        let row = row?;
        if rows.len() >= max_rows {
            truncated = true;
            break;
        }
        let mut obj = Map::new();
        for (i, (name, ctype, charset)) in columns.iter().enumerate() {
            let v = row
                .as_ref(i)
                .map(|v| to_json(v, *ctype, *charset))
                .unwrap_or(Value::Null);
            obj.insert(name.clone(), v);
        }
        let obj = Value::Object(obj);
        bytes = bytes.saturating_add(crate::json_len(&obj));
        if bytes > max_bytes {
            return Ok(None);
        }
        rows.push(obj);
    }
    Ok(Some((
        columns.into_iter().map(|c| c.0).collect(),
        rows,
        truncated,
    )))
}

/// Run one statement (already checked) and return at most `max_rows` rows.
/// The rows go back to the backend before the rest of the result is
/// drained, so a large result does not hold the caller.
pub fn query(
    target: &MysqlTarget,
    database: &str,
    sql: String,
    max_rows: usize,
    max_bytes: usize,
    connect_ms: i32,
    timeout_ms: i32,
) -> Result<JsonRows> {
    let t = target.clone();
    run(
        target,
        Some(database),
        connect_ms,
        timeout_ms,
        Some(timeout_ms),
        move |conn, reply| {
            let mut result = conn
                .exec_iter(sql.as_str(), ())
                .map_err(|e| my_error(e, &t, "the MySQL query"))?;
            let (columns, rows, truncated) = collect(&mut result, max_rows, max_bytes)
                .map_err(|e| my_error(e, &t, "the MySQL query"))?
                .ok_or_else(|| crate::too_large(max_bytes))?;
            reply.send(Ok(JsonRows {
                columns,
                rows,
                truncated,
            }));
            // Dropping the result drains what is left, on this thread only.
            Ok(JsonRows::default())
        },
    )
}

/// Tables and views of `database` the account may see.
pub fn list_tables(
    target: &MysqlTarget,
    database: &str,
    connect_ms: i32,
    timeout_ms: i32,
) -> Result<Vec<String>> {
    let t = target.clone();
    let db = database.to_string();
    run(
        target,
        None,
        connect_ms,
        timeout_ms,
        Some(timeout_ms + connect_ms),
        move |conn, _| {
            let exists: Option<u8> = conn
                .exec_first(
                    "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                    (db.as_str(),),
                )
                .map_err(|e| my_error(e, &t, "listing databases"))?;
            if exists.is_none() {
                return Err(DbragError::new(
                Kind::NotFound,
                format!("database \"{db}\" does not exist on the MySQL server (or this account may not see it)"),
            ));
            }
            let mut names: Vec<String> = conn
                .exec(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                    (db.as_str(),),
                )
                .map_err(|e| my_error(e, &t, "listing tables"))?;
            names.sort();
            Ok(names)
        },
    )
}

fn text(v: &MyValue) -> Option<String> {
    match v {
        MyValue::NULL => None,
        MyValue::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        MyValue::Int(i) => Some(i.to_string()),
        MyValue::UInt(u) => Some(u.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn texts(row: &mysql::Row) -> Vec<Option<String>> {
    (0..row.len())
        .map(|i| row.as_ref(i).and_then(text))
        .collect()
}

/// Whether a MySQL column type yields useful sample text.
fn sampleable(column_type: &str) -> bool {
    let t = column_type.to_ascii_lowercase();
    !(t.contains("blob")
        || t.contains("binary")
        || t.starts_with("bit")
        || t == "json"
        || t.starts_with("geometry")
        || t.starts_with("point")
        || t.starts_with("linestring")
        || t.starts_with("polygon")
        || t.starts_with("multi")
        || t.starts_with("geomcollection")
        || t.starts_with("geometrycollection"))
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Introspect `database` through information_schema, then read a few rows
/// of each table (never the secret-looking or binary columns).
pub fn introspect(
    target: &MysqlTarget,
    database: &str,
    connect_ms: i32,
    statement_ms: i32,
) -> Result<Introspection> {
    let t = target.clone();
    let db = database.to_string();
    run(
        target,
        Some(database),
        connect_ms,
        statement_ms,
        None,
        move |conn, _| {
            let fail = |what: &'static str| {
                let t = t.clone();
                move |e: mysql::Error| my_error(e, &t, what)
            };
            let tables: Vec<mysql::Row> = conn
            .exec(
                "SELECT TABLE_NAME, TABLE_TYPE, TABLE_COMMENT, TABLE_ROWS FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
                (db.as_str(),),
            )
            .map_err(fail("reading information_schema.TABLES"))?;
            let columns: Vec<mysql::Row> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COLUMN_COMMENT FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (db.as_str(),),
            )
            .map_err(fail("reading information_schema.COLUMNS"))?;
            let keys: Vec<mysql::Row> = conn
            .exec(
                // Not TABLE_CONSTRAINTS: MariaDB shows it only to accounts with
                // more than SELECT. Both servers name the primary key PRIMARY.
                "SELECT TABLE_NAME, CASE WHEN CONSTRAINT_NAME = 'PRIMARY' THEN 'PRIMARY KEY' ELSE 'FOREIGN KEY' END, \
                        CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME \
                 FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND (CONSTRAINT_NAME = 'PRIMARY' OR REFERENCED_TABLE_NAME IS NOT NULL) \
                 ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
                (db.as_str(),),
            )
            .map_err(fail("reading information_schema.KEY_COLUMN_USAGE"))?;

            let mut out = Introspection {
                tables: Vec::new(),
                samples: Vec::new(),
            };
            for row in &tables {
                let r = texts(row);
                let name = r[0].clone().unwrap_or_default();
                let is_view = r[1].as_deref() == Some("VIEW");
                let comment = r[2]
                    .clone()
                    .filter(|c| !c.is_empty() && !(is_view && c == "VIEW"));
                let estimate = r[3].as_deref().and_then(|s| s.parse::<i64>().ok());
                let cols: Vec<(String, String, Option<String>)> = columns
                    .iter()
                    .map(texts)
                    .filter(|c| c[0].as_deref() == Some(name.as_str()))
                    .map(|c| {
                        (
                            c[1].clone().unwrap_or_default(),
                            c[2].clone().unwrap_or_default(),
                            c[3].clone().filter(|s| !s.is_empty()),
                        )
                    })
                    .collect();
                let mine: Vec<Vec<Option<String>>> = keys
                    .iter()
                    .map(texts)
                    .filter(|k| k[0].as_deref() == Some(name.as_str()))
                    .collect();
                let primary_key: Vec<String> = mine
                    .iter()
                    .filter(|k| k[1].as_deref() == Some("PRIMARY KEY"))
                    .filter_map(|k| k[3].clone())
                    .collect();
                let mut fks: Vec<(String, Value)> = Vec::new();
                for k in mine
                    .iter()
                    .filter(|k| k[1].as_deref() == Some("FOREIGN KEY"))
                {
                    let cname = k[2].clone().unwrap_or_default();
                    let idx = match fks.iter().position(|(n, _)| *n == cname) {
                        Some(i) => i,
                        None => {
                            fks.push((
                            cname.clone(),
                            json!({"columns": [], "schema": k[4], "table": k[5], "other_columns": []}),
                        ));
                            fks.len() - 1
                        }
                    };
                    let fk = &mut fks[idx].1;
                    if let Some(a) = fk["columns"].as_array_mut() {
                        a.push(json!(k[3]));
                    }
                    if let Some(a) = fk["other_columns"].as_array_mut() {
                        a.push(json!(k[6]));
                    }
                }
                out.tables.push(
                json!({
                    "table": name,
                    "kind": if is_view { "v" } else { "r" },
                    "comment": comment,
                    "row_estimate": estimate,
                    "columns": cols.iter().map(|(n, ty, c)| json!({"name": n, "type": ty, "comment": c})).collect::<Vec<_>>(),
                    "primary_key": primary_key,
                    "foreign_keys": fks.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                })
                .to_string(),
            );
                let wanted: Vec<&String> = cols
                    .iter()
                    .filter(|(n, ty, _)| !looks_secret(n) && sampleable(ty))
                    .map(|(n, _, _)| n)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let sql = format!(
                    "SELECT {} FROM {}.{} LIMIT {SAMPLE_ROWS}",
                    wanted
                        .iter()
                        .map(|c| quote(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    quote(&db),
                    quote(&name)
                );
                // A table the account may not read simply has no samples.
                if let Ok(mut result) = conn.exec_iter(sql.as_str(), ()) {
                    if let Ok(Some((_, rows, _))) = collect(&mut result, SAMPLE_ROWS, SAMPLE_BYTES)
                    {
                        out.samples.push((name.clone(), rows));
                    }
                }
            }
            Ok(out)
        },
    )
}
