//! Data-plane connections (docs/connections-and-keys.md): the tenant's rows of
//! `control_plane.tenant_databases`, read and written as the extension and
//! always filtered by the tenant in force (the row store is
//! crate::connection_store); the SQL workflow (test, create, update, delete,
//! activate), which reaches the data plane through crate::engine.
//!
//! Kind `local` is a schema of this database that the caller may already
//! read. Kind `postgres` is a remote server over libpq (`crate::remote`):
//! its whole conninfo is stored only as ciphertext bound to
//! tenant_id‖connection_id; host, port, database and user stay readable.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::connection_store::load;
use crate::crypto::{self, Purpose};
use crate::engine::{self, EngineKind, Readable, Source};
use crate::error::{raise, required, DbragError, Kind, OrRaise};
use crate::pg::privileged;
use crate::tenant;

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
    let list = || {
        let mut engine = engine::open_kind(
            kind,
            Source::Given {
                conninfo,
                tenant: t,
            },
        )
        .or_raise();
        let schema = engine.resolve_schema(schema).or_raise();
        engine.list_tables(&schema).or_raise()
    };
    // For a tenant: as its role (crate::act_as), whoever calls. An operator
    // with no tenant in force tests with its own rights.
    let tables = match t {
        Some(t) => crate::act_as::as_tenant(t, schema, list),
        None => list(),
    };
    TableIterator::new(tables)
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
    let (parts, credentials) = {
        let engine = crate::act_as::as_tenant(t, &schema, || {
            let mut engine = engine::open_kind(
                kind,
                Source::Given {
                    conninfo,
                    tenant: Some(t),
                },
            )
            .or_raise();
            engine.check_schema(&schema).or_raise();
            engine
        });
        schema = engine.resolve_schema(&schema).or_raise();
        let parts = engine.readable(&schema, conninfo).or_raise();
        let blob = conninfo.map(|info| {
            crypto::seal_internal(
                info,
                Purpose::Connection {
                    tenant: t,
                    connection: id,
                },
            )
            .or_raise()
        });
        (parts, blob)
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
        let mut engine = engine::open(&conn);
        if engine.checks_schema() {
            crate::act_as::as_tenant(t, s, || engine.check_schema(s)).or_raise();
        }
        new_schema = Some(engine.resolve_schema(s).or_raise());
        changed.push("schema_name");
    }
    let mut new_parts: Option<(Readable, Vec<u8>)> = None;
    if let Some(info) = conninfo {
        let target = crate::act_as::as_tenant(t, &conn.schema_name, || {
            engine::open_kind(
                conn.kind,
                Source::Given {
                    conninfo: Some(info),
                    tenant: Some(t),
                },
            )
            .or_raise()
        });
        let schema_now = new_schema
            .clone()
            .unwrap_or_else(|| conn.schema_name.clone());
        let parts = target.readable(&schema_now, Some(info)).or_raise();
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
    let shown_db = new_schema
        .clone()
        .filter(|_| engine::open(&conn).schema_is_database());
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

/// `dbrag.activate_connection(connection)`: check the connection works
/// (decrypt, connect, schema present; for local, USAGE on the schema), then
/// make it the tenant's only active one.
#[pg_extern(volatile, parallel_unsafe)]
fn activate_connection(connection: Option<pgrx::Uuid>) {
    let conn = load(tenant::from_pg(required(connection, "connection")));
    // Decrypt, connect, schema present (for local: USAGE on it), as the
    // tenant's role.
    let mut engine = engine::open(&conn);
    crate::act_as::as_tenant(conn.tenant_id, &conn.schema_name, || {
        engine.check_works(&conn.schema_name)
    })
    .or_raise();
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
    let rows =
        engine::postgres::remote_query(&conn, sql, &[], timeout_ms.unwrap_or(10_000)).or_raise();
    pgrx::JsonB(json!({"columns": rows.columns, "types": rows.types, "rows": rows.rows}))
}
