//! Data-plane connections (docs/connections-and-keys.md): the tenant's rows of
//! `control_plane.tenant_databases`, read and written as the extension and
//! always filtered by the tenant in force; the SQL workflow (test, create,
//! update, delete, activate); and the Rust API the catalog and NL-to-SQL code
//! use to reach a connection ([`remote_query`], [`conninfo`]).
//!
//! Kind `local` is a schema of this database that the caller may already
//! read. Kind `postgres` is a remote server over libpq (`crate::remote`):
//! its whole conninfo is stored only as ciphertext bound to
//! tenant_id‖connection_id; host, port, database and user stay readable.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::crypto::{self, Purpose};
use crate::error::{raise, required, DbragError, Kind, OrRaise, Result};
use crate::gucs;
use crate::pg::privileged;
pub use crate::remote::RemoteRows;
use crate::remote::{self, Session};
use crate::tenant;
use dbrag_core::dataplane_target::MysqlTarget;

/// The engines a connection can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// A schema of this database.
    Local,
    /// A remote PostgreSQL server over libpq.
    Postgres,
    Mysql,
    Sqlite,
}

impl EngineKind {
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "local" => Some(EngineKind::Local),
            "postgres" => Some(EngineKind::Postgres),
            "mysql" => Some(EngineKind::Mysql),
            "sqlite" => Some(EngineKind::Sqlite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Local => "local",
            EngineKind::Postgres => "postgres",
            EngineKind::Mysql => "mysql",
            EngineKind::Sqlite => "sqlite",
        }
    }
}

/// One connection row, without its secret.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub name: String,
    pub kind: EngineKind,
    pub schema_name: String,
}

const SELECT_CONNECTION: &str = "SELECT connection_id, tenant_id, name, kind, schema_name \
     FROM control_plane.tenant_databases WHERE tenant_id = $1";

fn fetch(sql: &str, args: &[DatumWithOid]) -> Option<Connection> {
    let found = privileged::as_extension(|| {
        Spi::connect(|client| {
            let rows = client.select(sql, Some(1), args)?;
            for row in rows {
                let kind: String = row.get(4)?.unwrap_or_default();
                let (Some(id), Some(tenant_id)) =
                    (row.get::<pgrx::Uuid>(1)?, row.get::<pgrx::Uuid>(2)?)
                else {
                    continue;
                };
                // An unknown kind is a fault, never read as a local schema.
                let Some(kind) = EngineKind::parse(&kind) else {
                    DbragError::new(
                        Kind::Internal,
                        format!(
                            "connection {} has an unknown kind {kind:?}",
                            tenant::from_pg(id)
                        ),
                    )
                    .raise()
                };
                return Ok(Some(Connection {
                    id: tenant::from_pg(id),
                    tenant_id: tenant::from_pg(tenant_id),
                    name: row.get(3)?.unwrap_or_default(),
                    kind,
                    schema_name: row.get(5)?.unwrap_or_default(),
                }));
            }
            Ok::<_, pgrx::spi::Error>(None)
        })
    });
    // A failed read is XX000, not "does not exist".
    crate::error::spi_or_raise(found, "the connection")
}

/// The caller's connection `id`; another tenant's id reads as not found.
pub fn load(id: uuid::Uuid) -> Connection {
    let t = tenant::require();
    fetch(
        &format!("{SELECT_CONNECTION} AND connection_id = $2"),
        &[
            DatumWithOid::from(tenant::to_pg(t)),
            DatumWithOid::from(tenant::to_pg(id)),
        ],
    )
    .unwrap_or_else(|| {
        DbragError::new(
            Kind::NotFound,
            format!("connection {id} does not exist for this tenant"),
        )
        .raise()
    })
}

/// The tenant's active connection, or a 55000 error that says what to do.
pub fn active() -> Connection {
    let t = tenant::require();
    fetch(&format!("{SELECT_CONNECTION} AND is_active"), &[DatumWithOid::from(tenant::to_pg(t))])
        .unwrap_or_else(|| {
            DbragError::new(Kind::NotConfigured, "this tenant has no active connection")
                .hint("create one with dbrag.create_connection(...) and call dbrag.activate_connection(id)")
                .raise()
        })
}

/// `load(id)` when given, else the active connection.
pub fn given_or_active(id: Option<pgrx::Uuid>) -> Connection {
    match id {
        Some(id) => load(tenant::from_pg(id)),
        None => active(),
    }
}

// ---------------------------------------------------------------- Rust API

/// The decrypted conninfo of a `postgres` connection, for internal use only:
/// never log it, never return it to SQL.
#[allow(dead_code)] // for the catalog and NL-to-SQL modules
pub fn conninfo(conn: &Connection) -> String {
    conninfo_checked(conn).or_raise()
}

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
    credentials(conn)
}

/// The decrypted conninfo (postgres), URI (mysql) or path (sqlite) of a
/// connection, for internal use only: never log it, never return it to SQL.
pub fn credentials(conn: &Connection) -> Result<String> {
    if conn.kind == EngineKind::Local {
        return Err(DbragError::new(
            Kind::BadArgument,
            format!(
                "connection {} is a local schema, which has no conninfo",
                conn.id
            ),
        ));
    }
    let blob = crate::error::spi_row_or_raise(
        privileged::as_extension(|| {
            Spi::get_one_with_args::<Vec<u8>>(
                "SELECT credentials FROM control_plane.tenant_databases WHERE tenant_id = $1 AND connection_id = $2",
                &[DatumWithOid::from(tenant::to_pg(conn.tenant_id)), DatumWithOid::from(tenant::to_pg(conn.id))],
            )
        }),
        "the connection's credentials",
    );
    let Some(blob) = blob else {
        return Err(DbragError::new(
            Kind::NotConfigured,
            format!("connection {} has no stored credentials", conn.id),
        )
        .hint("set them with dbrag.update_connection(id, conninfo => ...)"));
    };
    crypto::open_internal(
        &blob,
        Purpose::Connection {
            tenant: conn.tenant_id,
            connection: conn.id,
        },
    )
    .map_err(|e| {
        DbragError::new(
            e.kind,
            format!(
                "the stored credentials of connection {} do not decrypt: {}",
                conn.id, e.message
            ),
        )
    })
}

/// Open a session to a `postgres` connection (connect timeout from
/// `dbrag.remote_connect_timeout_ms`), applying docs/connections-and-keys.md's password rule.
pub fn open_session(conn: &Connection) -> Result<Session> {
    let info = conninfo_checked(conn)?;
    let parsed = remote::parse(&info)?;
    Session::connect(&parsed, gucs::REMOTE_CONNECT_TIMEOUT_MS.get())
}

/// Run one read-only statement on a `postgres` connection and return its
/// rows as text. `timeout_ms` bounds the statement (here and as the remote
/// `statement_timeout`); the connect timeout is `dbrag.remote_connect_timeout_ms`.
/// Failures: the kinds of README.md "Errors" (08001, 28P01, a rejected
/// statement's own SQLSTATE, 57014, 58000), never with the password.
pub fn remote_query(
    conn: &Connection,
    sql: &str,
    params: &[Option<&str>],
    timeout_ms: i32,
) -> Result<RemoteRows> {
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
    let mut session = open_session(conn)?;
    session.query_read_only(sql, params, timeout_ms)
}

// ---------------------------------------------------------------- checks

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
const LIST_TABLES: &str = "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
     FROM pg_catalog.pg_namespace n \
     LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid \
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
          AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT') \
     WHERE n.nspname = $1 ORDER BY 2";

fn shape_tables(
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

fn parse_kind(kind: &str) -> EngineKind {
    let kind = crate::error::bounded(kind, "kind", crate::error::limits::NAME);
    match EngineKind::parse(kind.trim()) {
        Some(k) => k,
        None => DbragError::new(
            Kind::BadArgument,
            format!("unknown connection kind \"{kind}\""),
        )
        .hint("use 'local' (a schema of this database), 'postgres', 'mysql' (MySQL or MariaDB) or 'sqlite' (a file under dbrag.sqlite_dir)")
        .raise(),
    }
}

fn check_schema_name(schema: &str) {
    if schema.trim().is_empty() || schema.len() > 63 {
        raise(Kind::BadArgument, "schema_name must be 1 to 63 bytes");
    }
}

fn check_name(name: &str) {
    if name.trim().is_empty() || name.chars().count() > 200 {
        raise(
            Kind::BadArgument,
            "connection name must be 1 to 200 characters",
        );
    }
}

/// Parse and pre-check a postgres conninfo; a refusal is audited durably.
fn parse_postgres_conninfo(conninfo: &str, tenant: Option<uuid::Uuid>) -> remote::Parsed {
    let parsed = remote::parse(conninfo).or_raise();
    if let Err(e) = remote::check_before_connect(&parsed) {
        audit::record_durable(
            "connection_refused",
            tenant.map(|t| t.to_string()).as_deref(),
            json!({"reason": e.message}),
        );
        e.raise();
    }
    parsed
}

/// Where a non-local conninfo points, checked for the caller.
enum Target {
    Postgres(remote::Parsed),
    Mysql(MysqlTarget),
    Sqlite(std::path::PathBuf),
}

/// Parse and check a conninfo of `kind`; a refusal (42501) is audited durably.
fn prepare_target(kind: EngineKind, conninfo: &str, tenant: Option<uuid::Uuid>) -> Target {
    let conninfo = crate::error::bounded(conninfo, "conninfo", crate::error::limits::CONNINFO);
    let outcome = match kind {
        EngineKind::Postgres => return Target::Postgres(parse_postgres_conninfo(conninfo, tenant)),
        EngineKind::Mysql => crate::mysql::parse_target(conninfo).map(Target::Mysql),
        EngineKind::Sqlite => crate::sqlite::resolve(conninfo, tenant).map(Target::Sqlite),
        EngineKind::Local => Err(DbragError::new(
            Kind::BadArgument,
            "a local connection takes no conninfo",
        )),
    };
    match outcome {
        Ok(t) => t,
        Err(e) => {
            if e.kind == Kind::Forbidden {
                audit::record_durable(
                    "connection_refused",
                    tenant.map(|t| t.to_string()).as_deref(),
                    json!({"kind": kind.as_str(), "reason": e.message}),
                );
            }
            e.raise()
        }
    }
}

/// The schema a connection of `kind` reads: for MySQL the database
/// (schema_name, or the URI's database when schema_name is the default
/// 'public'); for SQLite always `main`.
fn resolve_schema(kind: EngineKind, schema: &str, target: Option<&Target>) -> String {
    match (kind, target) {
        (EngineKind::Mysql, Some(Target::Mysql(t))) if schema == "public" => match &t.database {
            Some(db) => db.clone(),
            None => DbragError::new(Kind::BadArgument, "a mysql connection needs a database")
                .hint("name it in the URI (mysql://user:password@host/database) or as schema_name")
                .raise(),
        },
        (EngineKind::Sqlite, _) => {
            if schema != "public" && schema != crate::sqlite::SCHEMA {
                raise(
                    Kind::BadArgument,
                    "a SQLite connection reads the file's main schema: leave schema_name out or write 'main'",
                );
            }
            crate::sqlite::SCHEMA.to_string()
        }
        _ => schema.to_string(),
    }
}

/// Tables of `schema` the target shows, as (schema, table).
fn target_tables(target: &mut Target, schema: &str) -> Result<Vec<(String, String)>> {
    let connect_ms = gucs::REMOTE_CONNECT_TIMEOUT_MS.get();
    match target {
        Target::Postgres(parsed) => {
            let mut session = Session::connect(parsed, connect_ms)?;
            remote_tables(&mut session, schema)
        }
        Target::Mysql(t) => {
            Ok(
                crate::mysql::list_tables(t, schema, connect_ms, gucs::QUERY_TIMEOUT_MS.get())?
                    .into_iter()
                    .map(|name| (schema.to_string(), name))
                    .collect(),
            )
        }
        Target::Sqlite(path) => Ok(crate::sqlite::list_tables(path)?
            .into_iter()
            .map(|name| (crate::sqlite::SCHEMA.to_string(), name))
            .collect()),
    }
}

fn target_readable(target: &Target, schema: &str, given: &str) -> Readable {
    match target {
        Target::Postgres(parsed) => readable_parts(parsed),
        Target::Mysql(t) => Readable {
            host: Some(t.host.clone()),
            port: Some(t.port as i32),
            database: Some(schema.to_string()),
            user: Some(t.user.clone()),
        },
        Target::Sqlite(_) => Readable {
            host: None,
            port: None,
            database: Some(given.to_string()),
            user: None,
        },
    }
}

// ---------------------------------------------------------------- SQL API

/// `dbrag.test_connection(kind, conninfo, schema_name)`: connect and list the
/// schema's tables the connection may read; saves nothing.
#[pg_extern(volatile, parallel_unsafe)]
fn test_connection(
    kind: Option<&str>,
    conninfo: default!(Option<&str>, "NULL"),
    schema_name: default!(Option<&str>, "'public'"),
) -> TableIterator<'static, (name!(schema_name, String), name!(table_name, String))> {
    // A tenant (or an operator) only: the server must not become a network
    // probe for roles that belong to nobody.
    let t = tenant::current();
    if t.is_none() && !privileged::is_platform_admin() {
        tenant::require();
    }
    let kind = parse_kind(required(kind, "kind"));
    let schema = required(schema_name, "schema_name");
    check_schema_name(schema);
    let list = || match kind {
        EngineKind::Local => {
            if conninfo.is_some() {
                raise(Kind::BadArgument, "a local connection takes no conninfo");
            }
            local_tables(schema).or_raise()
        }
        _ => {
            let info = required(conninfo, "conninfo");
            let mut target = prepare_target(kind, info, t);
            let schema = resolve_schema(kind, schema, Some(&target));
            target_tables(&mut target, &schema).or_raise()
        }
    };
    // For a tenant: as its role (crate::act_as), whoever calls. An operator
    // with no tenant in force tests with its own rights.
    let tables = match t {
        Some(t) => crate::act_as::as_tenant(t, schema, list),
        None => list(),
    };
    TableIterator::new(tables)
}

struct Readable {
    host: Option<String>,
    port: Option<i32>,
    database: Option<String>,
    user: Option<String>,
}

fn readable_parts(parsed: &remote::Parsed) -> Readable {
    let s = parsed.summary().or_raise();
    Readable {
        host: s.host,
        port: s.port,
        database: s.database,
        user: s.user,
    }
}

fn current_database() -> String {
    Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text")
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn name_taken(t: uuid::Uuid, name: &str, except: Option<uuid::Uuid>) -> bool {
    let taken = privileged::as_extension(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM control_plane.tenant_databases \
             WHERE tenant_id = $1 AND name = $2 AND connection_id IS DISTINCT FROM $3)",
            &[
                DatumWithOid::from(tenant::to_pg(t)),
                DatumWithOid::from(name),
                DatumWithOid::from(except.map(tenant::to_pg)),
            ],
        )
    });
    crate::error::spi_row_or_raise(taken, "the connection names").unwrap_or(false)
}

/// `dbrag.create_connection(name, kind, conninfo, schema_name)`: save a
/// connection for the tenant in force (status disconnected) and return its id.
#[pg_extern(volatile, parallel_unsafe)]
fn create_connection(
    name: Option<&str>,
    kind: Option<&str>,
    conninfo: default!(Option<&str>, "NULL"),
    schema_name: default!(Option<&str>, "'public'"),
) -> pgrx::Uuid {
    let t = tenant::require();
    let name = required(name, "name");
    check_name(name);
    let kind = parse_kind(required(kind, "kind"));
    let schema = required(schema_name, "schema_name");
    check_schema_name(schema);
    let id = uuid::Uuid::new_v4();
    let mut schema = schema.to_string();
    let (parts, credentials) = match kind {
        EngineKind::Local => {
            if conninfo.is_some() {
                raise(Kind::BadArgument, "a local connection takes no conninfo");
            }
            crate::act_as::as_tenant(t, &schema, || check_local_schema(&schema)).or_raise();
            (
                Readable {
                    host: None,
                    port: None,
                    database: Some(current_database()),
                    user: None,
                },
                None,
            )
        }
        _ => {
            let info = required(conninfo, "conninfo");
            let target =
                crate::act_as::as_tenant(t, &schema, || prepare_target(kind, info, Some(t)));
            schema = resolve_schema(kind, &schema, Some(&target));
            let parts = target_readable(&target, &schema, info);
            let blob = crypto::seal_internal(
                info,
                Purpose::Connection {
                    tenant: t,
                    connection: id,
                },
            )
            .or_raise();
            (parts, Some(blob))
        }
    };
    if name_taken(t, name, None) {
        DbragError::new(
            Kind::BadArgument,
            format!("this tenant already has a connection named \"{name}\""),
        )
        .hint("pick another name, or change the existing one with dbrag.update_connection")
        .raise();
    }
    privileged::as_extension(|| {
        Spi::run_with_args(
            "INSERT INTO control_plane.tenant_databases \
             (tenant_id, connection_id, name, kind, host, port, database_name, username, schema_name, credentials, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'disconnected')",
            &[
                DatumWithOid::from(tenant::to_pg(t)),
                DatumWithOid::from(tenant::to_pg(id)),
                DatumWithOid::from(name),
                DatumWithOid::from(kind.as_str()),
                DatumWithOid::from(parts.host.clone()),
                DatumWithOid::from(parts.port),
                DatumWithOid::from(parts.database.clone()),
                DatumWithOid::from(parts.user.clone()),
                DatumWithOid::from(schema.as_str()),
                DatumWithOid::from(credentials.as_deref()),
            ],
        )
    })
    .map_err(DbragError::from)
    .or_raise();
    audit::record(
        "connection_created",
        Some(&t.to_string()),
        json!({"connection_id": id.to_string(), "name": name, "kind": kind.as_str(),
               "host": parts.host, "port": parts.port, "database": parts.database,
               "user": parts.user, "schema": schema}),
    );
    tenant::to_pg(id)
}

/// `dbrag.update_connection(connection, conninfo, schema_name, name)`:
/// change what is given; a new conninfo or schema resets the status to
/// disconnected (the catalog must be synced again).
#[pg_extern(volatile, parallel_unsafe)]
fn update_connection(
    connection: Option<pgrx::Uuid>,
    conninfo: default!(Option<&str>, "NULL"),
    schema_name: default!(Option<&str>, "NULL"),
    name: default!(Option<&str>, "NULL"),
) {
    let conn = load(tenant::from_pg(required(connection, "connection")));
    let t = conn.tenant_id;
    let mut changed: Vec<&str> = Vec::new();
    if let Some(n) = name {
        check_name(n);
        if name_taken(t, n, Some(conn.id)) {
            raise(
                Kind::BadArgument,
                format!("this tenant already has a connection named \"{n}\""),
            );
        }
        changed.push("name");
    }
    let mut new_schema: Option<String> = None;
    if let Some(s) = schema_name {
        check_schema_name(s);
        if conn.kind == EngineKind::Local {
            crate::act_as::as_tenant(t, s, || check_local_schema(s)).or_raise();
        }
        new_schema = Some(match conn.kind {
            EngineKind::Sqlite => resolve_schema(conn.kind, s, None),
            _ => s.to_string(),
        });
        changed.push("schema_name");
    }
    let mut new_parts: Option<(Readable, Vec<u8>)> = None;
    if let Some(info) = conninfo {
        if conn.kind == EngineKind::Local {
            raise(Kind::BadArgument, "a local connection takes no conninfo");
        }
        let target = crate::act_as::as_tenant(t, &conn.schema_name, || {
            prepare_target(conn.kind, info, Some(t))
        });
        let schema_now = new_schema
            .clone()
            .unwrap_or_else(|| conn.schema_name.clone());
        let parts = target_readable(&target, &schema_now, info);
        let blob = crypto::seal_internal(
            info,
            Purpose::Connection {
                tenant: t,
                connection: conn.id,
            },
        )
        .or_raise();
        new_parts = Some((parts, blob));
        changed.push("conninfo");
    }
    if changed.is_empty() {
        return;
    }
    let reset = conninfo.is_some() || schema_name.is_some();
    // A MySQL connection shows its database as database_name.
    let shown_db = match (&new_schema, conn.kind) {
        (Some(s), EngineKind::Mysql) => Some(s.clone()),
        _ => None,
    };
    let (host, port, db, user, blob) = match &new_parts {
        Some((p, b)) => (
            p.host.clone(),
            p.port,
            p.database.clone(),
            p.user.clone(),
            Some(b.as_slice()),
        ),
        None => (None, None, shown_db.clone(), None, None),
    };
    privileged::as_extension(|| {
        Spi::run_with_args(
            "UPDATE control_plane.tenant_databases SET \
               name = COALESCE($3, name), \
               schema_name = COALESCE($4, schema_name), \
               host = CASE WHEN $5 THEN $6 ELSE host END, \
               port = CASE WHEN $5 THEN $7 ELSE port END, \
               database_name = CASE WHEN $5 THEN $8 ELSE COALESCE($8, database_name) END, \
               username = CASE WHEN $5 THEN $9 ELSE username END, \
               credentials = CASE WHEN $5 THEN $10 ELSE credentials END, \
               status = CASE WHEN $11 THEN 'disconnected'::control_plane.database_status ELSE status END \
             WHERE tenant_id = $1 AND connection_id = $2",
            &[
                DatumWithOid::from(tenant::to_pg(t)),
                DatumWithOid::from(tenant::to_pg(conn.id)),
                DatumWithOid::from(name),
                DatumWithOid::from(new_schema.as_deref()),
                DatumWithOid::from(new_parts.is_some()),
                DatumWithOid::from(host),
                DatumWithOid::from(port),
                DatumWithOid::from(db),
                DatumWithOid::from(user),
                DatumWithOid::from(blob),
                DatumWithOid::from(reset),
            ],
        )
    })
    .map_err(DbragError::from)
    .or_raise();
    audit::record(
        "connection_updated",
        Some(&t.to_string()),
        json!({"connection_id": conn.id.to_string(), "changed": changed}),
    );
}

/// `dbrag.delete_connection(connection)`: remove it and its catalog rows.
#[pg_extern(volatile, parallel_unsafe)]
fn delete_connection(connection: Option<pgrx::Uuid>) {
    let conn = load(tenant::from_pg(required(connection, "connection")));
    privileged::as_extension(|| {
        Spi::run_with_args(
            "DELETE FROM control_plane.tenant_databases WHERE tenant_id = $1 AND connection_id = $2",
            &[DatumWithOid::from(tenant::to_pg(conn.tenant_id)), DatumWithOid::from(tenant::to_pg(conn.id))],
        )
    })
    .map_err(DbragError::from)
    .or_raise();
    audit::record(
        "connection_deleted",
        Some(&conn.tenant_id.to_string()),
        json!({"connection_id": conn.id.to_string(), "name": conn.name}),
    );
}

/// What activate_connection checks, as the tenant's role: decrypt, connect,
/// schema present; for local, USAGE on the schema.
fn check_works(conn: &Connection) {
    match conn.kind {
        EngineKind::Local => check_local_schema(&conn.schema_name).or_raise(),
        EngineKind::Postgres => {
            let rows = remote_query(
                conn,
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
                &[Some(&conn.schema_name)],
                gucs::REMOTE_CONNECT_TIMEOUT_MS.get(),
            )
            .or_raise();
            if rows.rows.is_empty() {
                raise(
                    Kind::NotFound,
                    format!(
                        "schema \"{}\" does not exist on the remote server",
                        conn.schema_name
                    ),
                );
            }
        }
        EngineKind::Mysql => {
            let target = crate::dataplane::mysql_target(conn).or_raise();
            crate::mysql::list_tables(
                &target,
                &conn.schema_name,
                gucs::REMOTE_CONNECT_TIMEOUT_MS.get(),
                gucs::QUERY_TIMEOUT_MS.get(),
            )
            .or_raise();
        }
        EngineKind::Sqlite => {
            let path = crate::dataplane::sqlite_path(conn).or_raise();
            crate::sqlite::list_tables(&path).or_raise();
        }
    }
}

/// `dbrag.activate_connection(connection)`: check the connection works
/// (decrypt, connect, schema present; for local, USAGE on the schema), then
/// make it the tenant's only active one.
#[pg_extern(volatile, parallel_unsafe)]
fn activate_connection(connection: Option<pgrx::Uuid>) {
    let conn = load(tenant::from_pg(required(connection, "connection")));
    crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || check_works(&conn));
    let args = [
        DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
        DatumWithOid::from(tenant::to_pg(conn.id)),
    ];
    privileged::as_extension(|| {
        // Two statements: the one-active unique index is checked row by row.
        Spi::run_with_args(
            "UPDATE control_plane.tenant_databases SET is_active = false \
             WHERE tenant_id = $1 AND is_active AND connection_id <> $2",
            &args,
        )?;
        Spi::run_with_args(
            "UPDATE control_plane.tenant_databases SET is_active = true \
             WHERE tenant_id = $1 AND connection_id = $2 AND NOT is_active",
            &args,
        )
    })
    .map_err(DbragError::from)
    .or_raise();
    audit::record(
        "connection_activated",
        Some(&conn.tenant_id.to_string()),
        json!({"connection_id": conn.id.to_string(), "name": conn.name}),
    );
}

/// `dbrag._remote_query(connection, sql, timeout_ms)`: run one read-only
/// statement on a remote connection of the tenant in force and return
/// `{columns, types, rows}`. Superuser only: for operators and tests.
#[pg_extern(volatile, parallel_unsafe)]
fn _remote_query(
    connection: Option<pgrx::Uuid>,
    sql: Option<&str>,
    timeout_ms: default!(Option<i32>, 10000),
) -> pgrx::JsonB {
    // SAFETY: a plain check of the current role.
    if !unsafe { pg_sys::superuser() } {
        raise(
            Kind::Forbidden,
            "permission denied: dbrag._remote_query is for superusers only",
        );
    }
    let conn = load(tenant::from_pg(required(connection, "connection")));
    let sql = required(sql, "sql");
    let rows = remote_query(&conn, sql, &[], timeout_ms.unwrap_or(10_000)).or_raise();
    pgrx::JsonB(json!({"columns": rows.columns, "types": rows.types, "rows": rows.rows}))
}
