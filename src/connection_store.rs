//! The row store of data-plane connections: `control_plane.tenant_databases`
//! read as the extension and always filtered by the tenant in force
//! ([`load`], [`active`]), the decrypted credentials ([`credentials`]) and
//! the connection's catalog tables, the guard's allow-set
//! ([`catalog_tables`]). The SQL functions that write connections are
//! crate::connections; the engines that reach them are crate::engine.

use std::collections::HashSet;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::crypto::{self, Purpose};
use crate::error::{DbragError, Kind, Result};
use crate::pg::privileged;
use crate::tenant;

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
