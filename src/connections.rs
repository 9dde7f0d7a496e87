//! Data-plane connections (SPEC §5): the tenant's rows of
//! `control_plane.tenant_databases`, read as the extension and always
//! filtered by the tenant in force.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::error::{DbragError, Kind};
use crate::privileged;
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
    pub is_active: bool,
}

const SELECT_CONNECTION: &str = "SELECT connection_id, tenant_id, name, kind, schema_name, is_active \
     FROM control_plane.tenant_databases WHERE tenant_id = $1";

fn fetch(sql: &str, args: &[DatumWithOid]) -> Option<Connection> {
    privileged::as_extension(|| {
        Spi::connect(|client| {
            let rows = client.select(sql, Some(1), args)?;
            for row in rows {
                let kind: String = row.get(4)?.unwrap_or_default();
                let (Some(id), Some(tenant_id)) = (row.get::<pgrx::Uuid>(1)?, row.get::<pgrx::Uuid>(2)?) else {
                    continue;
                };
                return Ok(Some(Connection {
                    id: tenant::from_pg(id),
                    tenant_id: tenant::from_pg(tenant_id),
                    name: row.get(3)?.unwrap_or_default(),
                    kind: EngineKind::parse(&kind).unwrap_or(EngineKind::Local),
                    schema_name: row.get(5)?.unwrap_or_default(),
                    is_active: row.get(6)?.unwrap_or(false),
                }));
            }
            Ok::<_, pgrx::spi::Error>(None)
        })
    })
    .unwrap_or(None)
}

/// The caller's connection `id`; another tenant's id reads as not found.
pub fn load(id: uuid::Uuid) -> Connection {
    let t = tenant::require();
    fetch(
        &format!("{SELECT_CONNECTION} AND connection_id = $2"),
        &[DatumWithOid::from(tenant::to_pg(t)), DatumWithOid::from(tenant::to_pg(id))],
    )
    .unwrap_or_else(|| {
        DbragError::new(Kind::NotFound, format!("connection {id} does not exist for this tenant")).raise()
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
