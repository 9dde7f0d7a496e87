//! SQLite data planes. A connection names a file under
//! `dbrag.sqlite_dir/<tenant_id>/` (superuser-only);
//! [`dbrag_core::dataplane_target::resolve_sqlite_path`] refuses `..`,
//! absolute paths elsewhere and symlinks that lead out. The file is read by
//! `rusqlite` with its bundled SQLite in the data-plane helper process
//! (crate::pg::helper, crates/dbrag-dataplane): a corrupt or crafted file can
//! end that process, never the backend. See docs/engines.md.

use std::path::PathBuf;

use dbrag_core::dataplane_target::{self, SqlitePathError};
use dbrag_core::frame::{Introspection, Request, Rows};
use serde_json::Value;

use dbrag_core::dialect_guard::{self, Dialect};
use dbrag_core::introspect::entries_with_samples;

use super::{
    batch_bounds, Bounds, Checked, Engine, EngineKind, Introspected, JsonRows, Limits, Readable,
    RunResult, Source, Statement, Target,
};
use crate::error::{DbragError, Kind, Result};
use crate::gucs;
use crate::pg::helper;
use crate::value_index::helper_batch;
use dbrag_core::values::{self};

/// The schema name of the only database a connection reaches.
pub const SCHEMA: &str = dbrag_core::dataplane_target::SQLITE_SCHEMA;

/// The canonical path of `given` under the tenant's own directory,
/// `dbrag.sqlite_dir/<tenant_id>/`, or the refusal. One directory per tenant:
/// with a shared one, a tenant that knew another tenant's file name could
/// open it through a connection of its own.
pub fn resolve(given: &str, tenant: Option<uuid::Uuid>) -> Result<PathBuf> {
    let Some(dir) = gucs::string_value(&gucs::SQLITE_DIR) else {
        return Err(DbragError::new(
            Kind::NotConfigured,
            "SQLite connections are disabled: dbrag.sqlite_dir is not set",
        )
        .hint("a superuser sets the directory SQLite files may be opened from: ALTER SYSTEM SET dbrag.sqlite_dir = '/path'; SELECT pg_reload_conf()"));
    };
    let Some(tenant) = tenant else {
        return Err(DbragError::new(
            Kind::Forbidden,
            "SQLite files belong to tenants: put a tenant in force first",
        ));
    };
    let tenant_dir = std::path::Path::new(&dir).join(tenant.to_string());
    dataplane_target::resolve_sqlite_path(&tenant_dir, given).map_err(|e| match e {
        SqlitePathError::Outside(_) => DbragError::new(Kind::Forbidden, e.to_string()).hint(
            "give a path relative to the tenant's directory dbrag.sqlite_dir/<tenant_id>, without .. and without symlinks that lead out of it",
        ),
        SqlitePathError::Missing(_) => DbragError::new(Kind::NotFound, e.to_string()),
        SqlitePathError::BadDirectory(_) => DbragError::new(
            Kind::NotConfigured,
            format!("the tenant's SQLite directory {} is not usable: {e}", tenant_dir.display()),
        )
        .hint("an operator creates dbrag.sqlite_dir/<tenant_id>/ for each tenant that uses SQLite files"),
        SqlitePathError::Invalid(_) => DbragError::new(Kind::BadArgument, e.to_string()),
    })
}

const ENGINE: &str = "SQLite";

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| {
        DbragError::new(
            Kind::Remote,
            format!("the {ENGINE} client process answered out of protocol: {e}"),
        )
    })
}

fn text(path: &PathBuf) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| DbragError::new(Kind::BadArgument, "the SQLite path is not UTF-8"))
}

/// Run one checked statement on the file within `bounds` (54000 past its
/// bytes).
pub fn query(path: &PathBuf, sql: &str, bounds: Bounds) -> Result<JsonRows> {
    let timeout_ms = bounds.timeout_ms;
    let request = Request::SqliteQuery {
        path: text(path)?,
        sql: sql.to_string(),
        max_rows: bounds.rows as u64,
        max_bytes: bounds.bytes as u64,
        timeout_ms,
    };
    let rows: Rows = decode(helper::call(ENGINE, &request, timeout_ms.max(1) as u64)?)?;
    Ok(JsonRows {
        columns: rows.columns,
        rows: rows.rows,
        truncated: rows.truncated,
    })
}

/// User tables and views of the file.
pub fn list_tables(path: &PathBuf) -> Result<Vec<String>> {
    let timeout_ms = gucs::QUERY_TIMEOUT_MS.get();
    let request = Request::SqliteListTables {
        path: text(path)?,
        timeout_ms,
    };
    decode(helper::call(ENGINE, &request, timeout_ms.max(1) as u64)?)
}

/// Introspection in dbrag_core::introspect::INTROSPECT_SQL's shape, plus
/// sample rows.
#[allow(clippy::type_complexity)]
pub fn introspect(path: &PathBuf) -> Result<(Vec<String>, Vec<(String, Vec<Value>)>)> {
    let timeout_ms = gucs::QUERY_TIMEOUT_MS.get();
    let request = Request::SqliteIntrospect {
        path: text(path)?,
        timeout_ms,
    };
    let found: Introspection = decode(helper::call(
        ENGINE,
        &request,
        10 * timeout_ms.max(1) as u64,
    )?)?;
    Ok((found.tables, found.samples))
}

pub struct Sqlite {
    path: Target<PathBuf>,
}

impl Sqlite {
    pub fn open(source: Source) -> Result<Self> {
        let path = Target::open(source, |conninfo, tenant| {
            resolve(conninfo, tenant)
                .inspect_err(|e| super::audit_refusal(EngineKind::Sqlite, tenant, e))
        })?;
        Ok(Sqlite { path })
    }

    /// The resolved file under the tenant's directory.
    fn path(&mut self) -> Result<PathBuf> {
        self.path.get(resolve)
    }
}

impl Engine for Sqlite {
    fn own_dialect_guard(&self) -> bool {
        true
    }

    fn dialect(&self) -> String {
        "SQLite 3".to_string()
    }

    /// Always `main`.
    fn resolve_schema(&self, given: &str) -> Result<String> {
        if given != "public" && given != SCHEMA {
            return Err(DbragError::new(
                Kind::BadArgument,
                "a SQLite connection reads the file's main schema: leave schema_name out or write 'main'",
            ));
        }
        Ok(SCHEMA.to_string())
    }

    fn readable(&self, _schema: &str, conninfo: Option<&str>) -> Result<Readable> {
        Ok(Readable {
            database: conninfo.map(str::to_string),
            ..Readable::default()
        })
    }

    fn list_tables(&mut self, _schema: &str) -> Result<Vec<(String, String)>> {
        let path = self.path()?;
        Ok(list_tables(&path)?
            .into_iter()
            .map(|name| (SCHEMA.to_string(), name))
            .collect())
    }

    fn check_works(&mut self, schema: &str) -> Result<()> {
        self.list_tables(schema).map(|_| ())
    }

    /// Through sqlite_schema and its pragmas; then the value index's batches.
    fn introspect(&mut self, _schema: &str, budget: i64) -> Result<Introspected> {
        let path = self.path()?;
        let (tables, samples) = introspect(&path)?;
        let entries = entries_with_samples(SCHEMA, &tables, samples);
        let todo = values::branches(&entries, None);
        let timeout_ms = gucs::QUERY_TIMEOUT_MS.get();
        let values = if budget <= 0 || todo.is_empty() {
            Vec::new()
        } else {
            values::collect_with(values::Dialect::Sqlite, &entries, todo, budget, |sql| {
                helper_batch(query(&path, sql, batch_bounds(timeout_ms)).map(|r| r.rows))
            })
        };
        Ok((entries, values))
    }

    fn check(&mut self, statement: &Statement) -> Checked {
        super::dialect_checked(
            dialect_guard::check(Dialect::Sqlite, statement.sql, SCHEMA, statement.allowed)
                .map(|c| c.sql),
        )
    }

    fn run_read_only(&mut self, sql: &str, limits: Limits) -> RunResult {
        let bounds = limits.checked()?;
        let mut run = || {
            let path = self.path()?;
            let limited =
                dialect_guard::with_row_limit(Dialect::Sqlite, sql, bounds.rows as u64 + 1)
                    .unwrap_or_else(|| sql.to_string());
            let rows = query(&path, &limited, bounds)?;
            super::json_text(rows, bounds.bytes)
        };
        run().map_err(super::remote_run_error)
    }
}
