//! Tenant isolation for application tables (docs/isolation.md): the guard that keeps
//! the `dbrag.auto_isolate` event trigger quiet while pg_dbrag itself changes
//! a table's isolation, and schema-per-tenant.
//!
//! The DDL of `enable_tenant_isolation` lives in `sql/app_isolation.sql`;
//! here it runs inside [`IsolationGuard`], so the statements it issues one
//! by one (each a `ddl_command_end` of its own) are not judged half-done.

use std::cell::Cell;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::error::{raise, required, DbragError, Kind};
use crate::gucs::{self, AutoIsolate};
use crate::pg::privileged;
use crate::tenant;

thread_local! {
    /// How many guarded isolation calls are running in this backend.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Marks "pg_dbrag is changing isolation" until dropped. An ERROR raised
/// inside unwinds through Rust frames as a panic, so the drop runs on that
/// path too.
struct IsolationGuard;

impl IsolationGuard {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        IsolationGuard
    }
}

impl Drop for IsolationGuard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// `dbrag._isolation_guarded(op, tbl, tenant_column, rebuild_unique)`: run
/// the body of enable/disable_tenant_isolation as the caller, guarded, on the
/// table and each of its partitions and inheritance children, then audit it.
///
/// The bodies (`dbrag._enable_tenant_isolation`, `_disable_tenant_isolation`)
/// are not executable by PUBLIC, so nobody skips the checks here or the audit
/// row by calling them directly; they are invoked through the function
/// manager, which does not check EXECUTE, and run with the caller's rights.
#[pg_extern(volatile, parallel_unsafe)]
fn _isolation_guarded(
    op: Option<&str>,
    tbl: Option<pg_sys::Oid>,
    tenant_column: Option<&str>,
    rebuild_unique: Option<bool>,
) {
    let op = required(op, "op");
    let body = match op {
        "enable" => {
            "dbrag._enable_tenant_isolation(pg_catalog.regclass, pg_catalog.name, pg_catalog.bool)"
        }
        "disable" => {
            if gucs::AUTO_ISOLATE.get() == AutoIsolate::Enforce {
                DbragError::new(
                    Kind::NotConfigured,
                    "dbrag.auto_isolate is enforce: tenant tables stay isolated",
                )
                .hint("a superuser runs SET LOCAL dbrag.auto_isolate = off first, in the same transaction")
                .raise()
            }
            "dbrag._disable_tenant_isolation(pg_catalog.regclass)"
        }
        _ => raise(Kind::BadArgument, "op must be enable or disable"),
    };
    let Some(tbl) = tbl else {
        raise(Kind::NullArgument, "table must not be NULL")
    };
    let column = if op == "enable" {
        match tenant_column {
            Some(c) if !c.is_empty() => c,
            _ => raise(
                Kind::NullArgument,
                "table and tenant column must not be NULL or empty",
            ),
        }
    } else {
        ""
    };
    if column.contains('\0') {
        raise(Kind::BadArgument, "tenant column must not contain NUL");
    }
    let _guard = IsolationGuard::enter();
    let (func, policies, rels) = privileged::with_pinned_search_path(|| {
        // The four tenant policies, written once for the control plane and
        // for application tables (sql/isolation.sql).
        let policies = crate::error::spi_row_or_raise(
            Spi::get_one::<pg_sys::Oid>(
                "SELECT 'dbrag._tenant_policies(pg_catalog.regclass, pg_catalog.name, pg_catalog.bool)'\
                 ::pg_catalog.regprocedure::pg_catalog.oid",
            ),
            "the policy function",
        )
        .unwrap_or(pg_sys::InvalidOid);
        let func = crate::error::spi_row_or_raise(
            Spi::get_one_with_args::<pg_sys::Oid>(
                "SELECT $1::pg_catalog.regprocedure::pg_catalog.oid",
                &[DatumWithOid::from(body)],
            ),
            "the isolation function",
        )
        .unwrap_or(pg_sys::InvalidOid);
        // The table first, then its partitions and children, depth first.
        let rels = privileged::column::<pg_sys::Oid>(
            "WITH RECURSIVE d(rel, path) AS ( \
                 SELECT $1::pg_catalog.oid, ARRAY[$1::pg_catalog.oid] \
                 UNION ALL \
                 SELECT h.inhrelid, d.path OPERATOR(pg_catalog.||) h.inhrelid \
                 FROM d JOIN pg_catalog.pg_inherits h ON h.inhparent OPERATOR(pg_catalog.=) d.rel \
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) h.inhrelid \
                 WHERE c.relkind IN ('r', 'p')) \
             SELECT rel FROM d ORDER BY path",
            &[DatumWithOid::from(tbl)],
        );
        // The tables that get the policies: never an empty list in place
        // of a failure.
        let rels: Vec<pg_sys::Oid> = crate::error::spi_or_raise(rels, "the table's partitions");
        (func, policies, rels)
    });
    if func == pg_sys::InvalidOid || policies == pg_sys::InvalidOid {
        raise(Kind::NotConfigured, "pg_dbrag is not installed completely");
    }
    let rels = if rels.is_empty() { vec![tbl] } else { rels };
    for rel in rels {
        call_body(
            func,
            op == "enable",
            rel,
            column,
            rebuild_unique.unwrap_or(false),
        );
        if op == "enable" {
            // Tenant policies only: dbrag_admin's see-all policies are for
            // the control plane.
            call_body(policies, true, rel, column, false);
        }
    }
    let table = privileged::with_pinned_search_path(|| {
        // The name as the catalogs spell it now, schema-qualified.
        Spi::get_one_with_args::<String>(
            "SELECT $1::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text",
            &[DatumWithOid::from(tbl)],
        )
        .ok()
        .flatten()
    });
    // Changing a table's isolation is an operator's act worth a record.
    let mut detail = json!({"table": table});
    if op == "enable" {
        detail["tenant_column"] = json!(tenant_column);
        detail["rebuild_unique"] = json!(rebuild_unique.unwrap_or(false));
    }
    audit::record(
        if op == "enable" {
            "isolation_enabled"
        } else {
            "isolation_disabled"
        },
        None,
        detail,
    );
}

/// Call one of the SQL bodies (or dbrag._tenant_policies, which has the
/// enable body's signature) on one table, as the caller. Errors it raises
/// reach the client with their own SQLSTATE.
fn call_body(func: pg_sys::Oid, enable: bool, rel: pg_sys::Oid, column: &str, rebuild: bool) {
    // SAFETY: the arguments match the bodies' signatures (regclass, name,
    // boolean) and (regclass); a name is a palloc'd NAMEDATALEN buffer that
    // namestrcpy fills (truncating, as the cast to name does); none is NULL.
    unsafe {
        if enable {
            let name = pg_sys::palloc0(pg_sys::NAMEDATALEN as usize) as pg_sys::Name;
            let Ok(c) = std::ffi::CString::new(column) else {
                raise(Kind::BadArgument, "tenant column must not contain NUL")
            };
            pg_sys::namestrcpy(name, c.as_ptr());
            pg_sys::OidFunctionCall3Coll(
                func,
                pg_sys::InvalidOid,
                pg_sys::Datum::from(rel),
                pg_sys::Datum::from(name),
                pg_sys::Datum::from(rebuild),
            );
        } else {
            pg_sys::OidFunctionCall1Coll(func, pg_sys::InvalidOid, pg_sys::Datum::from(rel));
        }
    }
}

/// `dbrag._auto_isolate_mode()`: what the event trigger should do now —
/// `off` while pg_dbrag itself is changing isolation, else the setting.
#[pg_extern(stable, parallel_safe)]
fn _auto_isolate_mode() -> &'static str {
    if DEPTH.with(|d| d.get()) > 0 {
        return "off";
    }
    gucs::AUTO_ISOLATE.get().as_str()
}

// ---------------------------------------------------------------------------
// Schema-per-tenant
// ---------------------------------------------------------------------------

// The tenant's settings record the schema under `tenant_schema` and its
// role under `tenant_schema_role`.

fn require_admin(what: &str) {
    if !privileged::is_platform_admin() {
        DbragError::new(
            Kind::Forbidden,
            format!("permission denied: {what} requires dbrag_admin"),
        )
        .hint("GRANT dbrag_admin TO <operator role>")
        .raise()
    }
}

/// Names derived from the tenant id (and, for the cluster-wide role, a tag
/// of this database's name: `dbrag._tenant_role_name`): only `[a-z0-9_]`, so
/// they never need quoting and cannot carry SQL.
fn schema_names(tenant: uuid::Uuid) -> (String, String) {
    let hex = tenant.simple().to_string();
    let role = Spi::get_one_with_args::<String>(
        "SELECT dbrag._tenant_role_name($1)::text",
        &[DatumWithOid::from(tenant::to_pg(tenant))],
    )
    .unwrap_or_else(|e| DbragError::from(e).raise())
    .unwrap_or_default();
    if role.len() != 49
        || !role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        raise(
            Kind::BadArgument,
            "dbrag._tenant_role_name returned an unexpected name",
        );
    }
    (format!("tenant_{hex}"), role)
}

/// The tenant's status and recorded schema/role, read as the extension.
fn tenant_schema_row(tenant: uuid::Uuid) -> Option<(String, Option<String>, Option<String>)> {
    let id = tenant::to_pg(tenant);
    let row = Spi::connect(|client| {
        let rows = client.select(
            "SELECT status::text, settings->>'tenant_schema', settings->>'tenant_schema_role' \
             FROM control_plane.tenants WHERE tenant_id = $1",
            Some(1),
            &[DatumWithOid::from(id)],
        )?;
        let mut out = None;
        for r in rows {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?,
                r.get::<String>(3)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    });
    row.unwrap_or_else(|e| DbragError::from(e).raise())
}

fn exists(sql: &str, name: &str) -> bool {
    Spi::get_one_with_args::<bool>(sql, &[DatumWithOid::from(name)])
        .unwrap_or_else(|e| DbragError::from(e).raise())
        .unwrap_or(false)
}

fn role_exists(name: &str) -> bool {
    exists(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)",
        name,
    )
}

fn schema_exists(name: &str) -> bool {
    exists(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        name,
    )
}

fn run(sql: &str) {
    if let Err(e) = Spi::run(sql) {
        DbragError::from(e).raise()
    }
}

/// The members of `role`, quoted.
fn members_of(role: &str) -> Vec<String> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for r in client.select(
            "SELECT pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(am.member)) \
             FROM pg_catalog.pg_auth_members am JOIN pg_catalog.pg_roles g ON g.oid = am.roleid \
             WHERE g.rolname = $1",
            None,
            &[DatumWithOid::from(role)],
        )? {
            if let Some(m) = r.get::<String>(1)? {
                out.push(m);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| DbragError::from(e).raise())
}

/// A tenant schema's owner role: NOLOGIN, no attributes, and a comment that
/// names the tenant and this database (how a restored copy tells its own
/// roles from the original's).
fn create_schema_role(tenant: uuid::Uuid, role: &str) {
    run(&format!(
        "CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
    ));
    comment_schema_role(tenant, role);
}

fn comment_schema_role(tenant: uuid::Uuid, role: &str) {
    // The database's name goes in as a quoted literal (it may hold quotes).
    let comment = Spi::get_one::<String>(&format!(
        "SELECT pg_catalog.quote_literal('pg_dbrag: schema role of tenant {tenant} in database ' \
         || pg_catalog.current_database())"
    ))
    .unwrap_or_else(|e| DbragError::from(e).raise())
    .unwrap_or_default();
    run(&format!("COMMENT ON ROLE {role} IS {comment}"));
}

/// The schema's owner is granted to nobody (no member can `SET ROLE` to it,
/// so nothing a member did survives its removal); members reach the schema
/// through the tenant's role, which gets USAGE and CREATE. Runs as the
/// extension; the caller has been checked.
fn schema_grants(tenant: uuid::Uuid, schema: &str, owner: &str) {
    for member in members_of(owner) {
        run(&format!("REVOKE {owner} FROM {member} CASCADE"));
    }
    let tenant_role = crate::act_as::role_name(crate::act_as::tenant_role(tenant));
    run(&format!(
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {}",
        dbrag_core::sql_text::quote_ident(&tenant_role)
    ));
}

/// `dbrag.create_tenant_schema(tenant) → text`: a schema `tenant_<hex>` owned
/// by a dedicated NOLOGIN role `dbrag_t_<hex>` that is granted to nobody;
/// the tenant's role (`tenants.tenant_role`, granted to its active members)
/// gets USAGE and CREATE on it. Recorded in the tenant's settings.
/// Idempotent: returns the recorded schema. dbrag_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn create_tenant_schema(tenant: Option<pgrx::Uuid>) -> String {
    let tenant = tenant::from_pg(required(tenant, "tenant"));
    require_admin("create_tenant_schema");
    let (schema, role) = schema_names(tenant);
    privileged::as_extension(|| {
        let Some((_, recorded_schema, recorded_role)) = tenant_schema_row(tenant) else {
            raise(Kind::NotFound, format!("tenant {tenant} does not exist"))
        };
        let recorded = recorded_schema.as_deref() == Some(schema.as_str())
            && recorded_role.as_deref() == Some(role.as_str());
        if !recorded {
            if role_exists(&role) {
                DbragError::new(
                    Kind::Duplicate,
                    format!("role {role} already exists and is not this tenant's"),
                )
                .hint("drop or rename that role, then call dbrag.create_tenant_schema again")
                .raise()
            }
            if schema_exists(&schema) {
                DbragError::new(
                    Kind::Duplicate,
                    format!("schema {schema} already exists and is not this tenant's"),
                )
                .hint(
                    "a schema restored from another database's dump: dbrag.adopt_tenant_schema(tenant); \
                     otherwise drop or rename it, then call dbrag.create_tenant_schema again",
                )
                .raise()
            }
        }
        if !role_exists(&role) {
            create_schema_role(tenant, &role);
        } else {
            comment_schema_role(tenant, &role);
        }
        if !schema_exists(&schema) {
            run(&format!("CREATE SCHEMA {schema} AUTHORIZATION {role}"));
        }
        // New schemas grant nothing to PUBLIC; say so explicitly all the same.
        run(&format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"));
        run(&format!(
            "COMMENT ON SCHEMA {schema} IS 'pg_dbrag: schema of tenant {tenant}'"
        ));
        let id = tenant::to_pg(tenant);
        if let Err(e) = Spi::run_with_args(
            "UPDATE control_plane.tenants SET settings = settings \
             || pg_catalog.jsonb_build_object('tenant_schema', $2::text, 'tenant_schema_role', $3::text) \
             WHERE tenant_id = $1",
            &[DatumWithOid::from(id), DatumWithOid::from(schema.as_str()), DatumWithOid::from(role.as_str())],
        ) {
            DbragError::from(e).raise()
        }
        schema_grants(tenant, &schema, &role);
    });
    audit::record(
        "tenant_schema_created",
        Some(&tenant.to_string()),
        json!({"schema": schema, "role": role}),
    );
    schema
}

/// `dbrag.drop_tenant_schema(tenant, cascade)`: drop the tenant's schema
/// (refused while it holds objects, unless cascade), whatever the schema
/// role owns in this database, and the role. dbrag_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_tenant_schema(tenant: Option<pgrx::Uuid>, cascade: default!(Option<bool>, false)) {
    let tenant = tenant::from_pg(required(tenant, "tenant"));
    let cascade = cascade.unwrap_or(false);
    require_admin("drop_tenant_schema");
    let (schema, role) = privileged::as_extension(|| {
        let Some((_, Some(schema), Some(role))) = tenant_schema_row(tenant) else {
            raise(
                Kind::NotFound,
                format!("tenant {tenant} has no schema of its own"),
            )
        };
        // Recorded names were written by create_tenant_schema; check their
        // shape all the same before they go into DDL.
        if (schema.clone(), role.clone()) != schema_names(tenant) {
            raise(
                Kind::BadArgument,
                "the tenant's recorded schema names are not pg_dbrag's",
            );
        }
        if schema_exists(&schema) {
            let occupied = exists(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_namespace n \
                 ON d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = n.oid \
                 WHERE n.nspname = $1)",
                &schema,
            );
            if occupied && !cascade {
                DbragError::new(
                    Kind::DependentObjects,
                    format!("schema {schema} of tenant {tenant} is not empty"),
                )
                .hint("drop its objects first, or call dbrag.drop_tenant_schema(tenant, cascade => true)")
                .raise()
            }
            run(&format!(
                "DROP SCHEMA {schema}{}",
                if cascade { " CASCADE" } else { "" }
            ));
        }
        if role_exists(&role) {
            run(&format!("DROP OWNED BY {role}"));
            run(&format!("DROP ROLE {role}"));
        }
        let id = tenant::to_pg(tenant);
        if let Err(e) = Spi::run_with_args(
            "UPDATE control_plane.tenants SET settings = settings - 'tenant_schema' - 'tenant_schema_role' \
             WHERE tenant_id = $1",
            &[DatumWithOid::from(id)],
        ) {
            DbragError::from(e).raise()
        }
        (schema, role)
    });
    audit::record(
        "tenant_schema_dropped",
        Some(&tenant.to_string()),
        json!({"schema": schema, "role": role, "cascade": cascade}),
    );
}

/// `[a-z0-9_]` only: a recorded role name of pg_dbrag's shape, safe in DDL.
fn is_tenant_role_shape(role: &str) -> bool {
    role.starts_with("dbrag_t_")
        && role.len() <= 63
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The GRANT statements that give `to` what `from` was granted on objects of
/// this database (tables, columns, sequences, schemas, functions, types, the
/// database itself), built by `format` with quoted identifiers.
const COPY_GRANTS_SQL: &str = "\
WITH r AS (SELECT (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) AS old, $2::text AS new) \
SELECT pg_catalog.format('GRANT %s ON %s %s TO %I%s', a.privilege_type, \
           CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::pg_catalog.regclass, r.new, \
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = r.old \
UNION ALL \
SELECT pg_catalog.format('GRANT %s (%I) ON TABLE %s TO %I%s', a.privilege_type, att.attname, \
           att.attrelid::pg_catalog.regclass, r.new, CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) a \
WHERE a.grantee = r.old AND att.attnum > 0 AND NOT att.attisdropped \
UNION ALL \
SELECT pg_catalog.format('GRANT %s ON SCHEMA %I TO %I%s', a.privilege_type, n.nspname, r.new, \
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a WHERE a.grantee = r.old \
UNION ALL \
SELECT pg_catalog.format('GRANT %s ON %s %s TO %I%s', a.privilege_type, \
           CASE WHEN p.prokind = 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::pg_catalog.regprocedure, r.new, \
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a WHERE a.grantee = r.old \
UNION ALL \
SELECT pg_catalog.format('GRANT %s ON TYPE %s TO %I%s', a.privilege_type, t.oid::pg_catalog.regtype, r.new, \
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_type t, pg_catalog.aclexplode(t.typacl) a WHERE a.grantee = r.old \
UNION ALL \
SELECT pg_catalog.format('GRANT %s ON DATABASE %I TO %I%s', a.privilege_type, d.datname, r.new, \
           CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
FROM r, pg_catalog.pg_database d, pg_catalog.aclexplode(d.datacl) a \
WHERE a.grantee = r.old AND d.datname = pg_catalog.current_database()";

/// Give role `to` every privilege role `from` holds in this database.
fn copy_grants(from: &str, to: &str) {
    let grants: Vec<String> = Spi::connect(|client| {
        let rows = client.select(
            COPY_GRANTS_SQL,
            None,
            &[DatumWithOid::from(from), DatumWithOid::from(to)],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(sql) = r.get::<String>(1)? {
                out.push(sql);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| DbragError::from(e).raise());
    for sql in grants {
        run(&sql);
    }
}

/// `dbrag.adopt_tenant_schema(tenant) → text`: give a tenant schema restored
/// under another database's name (a second copy of a dump in the same
/// cluster, a renamed database) a schema role of this database's own. The
/// new role is granted here what the recorded role was granted here, takes
/// over in THIS database what the recorded role owned (`REASSIGN OWNED`),
/// the recorded role loses its privileges here (`DROP OWNED`, this database
/// only), the tenant's active members are granted the new one. The recorded role and the other database are left
/// untouched. Returns the new role. dbrag_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn adopt_tenant_schema(tenant: Option<pgrx::Uuid>) -> String {
    let tenant = tenant::from_pg(required(tenant, "tenant"));
    require_admin("adopt_tenant_schema");
    let (old, role) = privileged::as_extension(|| {
        let Some((_, Some(schema), Some(old))) = tenant_schema_row(tenant) else {
            raise(
                Kind::NotFound,
                format!("tenant {tenant} has no schema of its own"),
            )
        };
        let (want_schema, role) = schema_names(tenant);
        if schema != want_schema || !is_tenant_role_shape(&old) {
            raise(
                Kind::BadArgument,
                "the tenant's recorded schema names are not pg_dbrag's",
            );
        }
        if old == role {
            schema_grants(tenant, &schema, &role);
            return (old, role);
        }
        if role_exists(&role) {
            DbragError::new(
                Kind::Duplicate,
                format!("role {role} already exists and is not this tenant's"),
            )
            .hint("drop or rename that role, then call dbrag.adopt_tenant_schema again")
            .raise()
        }
        create_schema_role(tenant, &role);
        if role_exists(&old) {
            copy_grants(&old, &role);
            // Both act on the current database only (and on shared objects,
            // which a schema role never owns).
            run(&format!("REASSIGN OWNED BY {old} TO {role}"));
            run(&format!("DROP OWNED BY {old}"));
        }
        if schema_exists(&schema) {
            run(&format!("ALTER SCHEMA {schema} OWNER TO {role}"));
            run(&format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"));
        }
        let id = tenant::to_pg(tenant);
        if let Err(e) = Spi::run_with_args(
            "UPDATE control_plane.tenants SET settings = settings \
             || pg_catalog.jsonb_build_object('tenant_schema_role', $2::text) WHERE tenant_id = $1",
            &[DatumWithOid::from(id), DatumWithOid::from(role.as_str())],
        ) {
            DbragError::from(e).raise()
        }
        schema_grants(tenant, &schema, &role);
        // The tenant's own role is this database's too (the triggers made it
        // when the tenants were restored); give it what the original
        // database's role of the tenant was granted here.
        let original_trole = old.replacen("dbrag_t_", "dbrag_tenant_", 1);
        let trole = Spi::get_one_with_args::<String>(
            "SELECT dbrag.tenant_role_name($1)::text",
            &[DatumWithOid::from(id)],
        )
        .unwrap_or_else(|e| DbragError::from(e).raise())
        .unwrap_or_default();
        if original_trole != trole && role_exists(&original_trole) && role_exists(&trole) {
            copy_grants(&original_trole, &trole);
        }
        (old, role)
    });
    audit::record(
        "tenant_schema_adopted",
        Some(&tenant.to_string()),
        json!({"role": role, "previous_role": old}),
    );
    role
}

/// `dbrag._sync_tenant_schema(tenant)`: after a membership or status change,
/// keep the schema's owner granted to nobody and the schema granted to the
/// tenant's role (which follows its active members). No-op for a tenant
/// without a schema. dbrag_admin only (called by add/remove_tenant_member
/// and set_tenant_status).
#[pg_extern(volatile, parallel_unsafe)]
fn _sync_tenant_schema(tenant: Option<pgrx::Uuid>) {
    let tenant = tenant::from_pg(required(tenant, "tenant"));
    require_admin("tenant administration");
    privileged::as_extension(|| {
        if let Some((_, Some(schema), Some(role))) = tenant_schema_row(tenant) {
            if (schema.clone(), role.clone()) == schema_names(tenant)
                && role_exists(&role)
                && schema_exists(&schema)
            {
                schema_grants(tenant, &schema, &role);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// A role per tenant
// ---------------------------------------------------------------------------
//
// Every tenant has a NOLOGIN role of its own (`control_plane.tenants.tenant_role`,
// named by `dbrag.tenant_role_name(tenant)`), granted to exactly the tenant's
// member login roles while the tenant is active. Data-plane grants go to it,
// and all work pg_dbrag does for the tenant runs as it (crate::act_as).
// Triggers on `tenants` and `tenant_members` keep it in step.

/// What COMMENT ON ROLE says about a tenant's role: how an existing role
/// of that name is recognised as this tenant's (restore into a second
/// database of the same cluster finds it already there).
fn tenant_role_comment(tenant: uuid::Uuid) -> String {
    format!("pg_dbrag: role of tenant {tenant}")
}

fn role_comment(name: &str) -> Option<String> {
    crate::error::spi_row_or_raise(
        Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[DatumWithOid::from(name)],
        ),
        "a role's comment",
    )
}

/// Grant `role` to exactly the active tenant's member login roles (never a
/// superuser or BYPASSRLS role), revoke it from everyone else.
fn sync_role_members(tenant: uuid::Uuid, role: &str) {
    let id = tenant::to_pg(tenant);
    let changes: Vec<(bool, String)> = Spi::connect(|client| {
        let rows = client.select(
            "WITH wanted AS ( \
                 SELECT m.member::pg_catalog.oid AS oid FROM control_plane.tenant_members m \
                 JOIN control_plane.tenants t ON t.tenant_id = m.tenant_id \
                 JOIN pg_catalog.pg_roles r ON r.oid = m.member::pg_catalog.oid \
                 WHERE m.tenant_id = $1 AND t.status = 'active' AND NOT (r.rolsuper OR r.rolbypassrls)), \
             have AS ( \
                 SELECT am.member AS oid FROM pg_catalog.pg_auth_members am \
                 JOIN pg_catalog.pg_roles g ON g.oid = am.roleid WHERE g.rolname = $2) \
             SELECT true, pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(oid)) \
                 FROM (SELECT oid FROM wanted EXCEPT SELECT oid FROM have) a \
             UNION ALL \
             SELECT false, pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(oid)) \
                 FROM (SELECT oid FROM have EXCEPT SELECT oid FROM wanted) d",
            None,
            &[DatumWithOid::from(id), DatumWithOid::from(role)],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let (Some(grant), Some(name)) = (r.get::<bool>(1)?, r.get::<String>(2)?) {
                out.push((grant, name));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| DbragError::from(e).raise());
    let quoted = dbrag_core::sql_text::quote_ident(role);
    for (grant, member) in changes {
        if grant {
            run(&format!("GRANT {quoted} TO {member}"));
        } else {
            run(&format!("REVOKE {quoted} FROM {member} CASCADE"));
        }
    }
}

/// `dbrag._sync_tenant_role(tenant) → name`: create the tenant's role when
/// missing (NOLOGIN, no SUPERUSER/BYPASSRLS/CREATEDB/CREATEROLE/REPLICATION),
/// record it, and grant it to exactly the active tenant's members. NULL for
/// a tenant that does not exist (a cascade from its removal). Called by the
/// triggers on tenants and tenant_members; dbrag_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn _sync_tenant_role(tenant: Option<pgrx::Uuid>) -> Option<String> {
    let tenant = tenant::from_pg(required(tenant, "tenant"));
    require_admin("tenant administration");
    crate::pg::restricted::refuse_if_restricted("dbrag._sync_tenant_role");
    privileged::as_extension(|| {
        let row = Spi::connect(|client| {
            let rows = client.select(
                "SELECT tenant_role::pg_catalog.text, dbrag.tenant_role_name(tenant_id)::pg_catalog.text \
                 FROM control_plane.tenants WHERE tenant_id = $1",
                Some(1),
                &[DatumWithOid::from(tenant::to_pg(tenant))],
            )?;
            let mut out = None;
            for r in rows {
                out = Some((r.get::<String>(1)?, r.get::<String>(2)?.unwrap_or_default()));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap_or_else(|e| DbragError::from(e).raise());
        let (recorded, named) = row?;
        // Always this database's own name: a copy restored beside the
        // original in one cluster records the original's role, which this
        // database must never grant, revoke or drop (docs/operations.md).
        let role = named;
        let quoted = dbrag_core::sql_text::quote_ident(&role);
        let ours = tenant_role_comment(tenant);
        if role_exists(&role) {
            if role_comment(&role).as_deref() != Some(ours.as_str()) {
                DbragError::new(
                    Kind::Duplicate,
                    format!("role {role} already exists and is not the role of tenant {tenant}"),
                )
                .hint("drop or rename that role, then call dbrag._sync_tenant_role(tenant) again")
                .raise()
            }
            let unsafe_role = exists(
                // LOGIN only where Citus must reach the workers as the role
                // (its password only in pg_dist_authinfo: docs/scale-out.md).
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1 AND \
                 (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb OR rolreplication \
                  OR (rolcanlogin AND pg_catalog.to_regclass('pg_catalog.pg_dist_authinfo') IS NULL)))",
                &role,
            );
            if unsafe_role {
                DbragError::new(
                    Kind::Forbidden,
                    format!("role {role} of tenant {tenant} has attributes a tenant's role may not have"),
                )
                .hint(format!("ALTER ROLE {quoted} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"))
                .raise()
            }
        } else {
            run(&format!(
                "CREATE ROLE {quoted} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT"
            ));
            run(&format!(
                "COMMENT ON ROLE {quoted} IS {}",
                dbrag_core::sql_text::quote_literal(&ours)
            ));
        }
        if recorded.as_deref() != Some(role.as_str()) {
            if let Err(e) = Spi::run_with_args(
                "UPDATE control_plane.tenants SET tenant_role = $2::pg_catalog.name WHERE tenant_id = $1",
                &[DatumWithOid::from(tenant::to_pg(tenant)), DatumWithOid::from(role.as_str())],
            ) {
                DbragError::from(e).raise()
            }
        }
        sync_role_members(tenant, &role);
        Some(role)
    })
}

/// `dbrag._drop_tenant_role(role)`: after a tenant's removal, take its role
/// from every member and drop it; a role that still owns objects or holds
/// privileges (in this or another database) is kept, with no members, and a
/// WARNING names it. Only roles pg_dbrag made for a tenant. dbrag_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn _drop_tenant_role(role: Option<&str>) {
    require_admin("tenant administration");
    crate::pg::restricted::refuse_if_restricted("dbrag._drop_tenant_role");
    let Some(role) = role else { return };
    privileged::as_extension(|| {
        if !role_exists(role)
            || !role_comment(role).is_some_and(|c| c.starts_with("pg_dbrag: role of tenant "))
        {
            return;
        }
        let quoted = dbrag_core::sql_text::quote_ident(role);
        for m in members_of(role) {
            run(&format!("REVOKE {quoted} FROM {m} CASCADE"));
        }
        let dropped = crate::pg::subxact::run(|| Spi::run(&format!("DROP ROLE {quoted}")));
        if !matches!(dropped, Ok(Ok(()))) {
            warning!(
                "role {role} of the removed tenant still owns objects or holds privileges; it was kept, with no members"
            );
        }
    });
}
