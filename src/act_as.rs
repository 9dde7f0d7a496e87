//! Acting as the tenant: every piece of work done for a tenant (listing and
//! introspecting its data plane, sampling, the guard's parse analysis,
//! EXPLAIN, running the model's SQL, the checks of test_connection and
//! activate_connection) runs as the tenant's own NOLOGIN role, whoever
//! called: a member's login role, the application server (`dbrag_app`) or
//! an operator (`dbrag_admin`, a superuser).
//!
//! This is what PostgreSQL itself does to run untrusted code during
//! maintenance commands (REFRESH MATERIALIZED VIEW, VACUUM, index builds):
//! the user id is switched with `SECURITY_RESTRICTED_OPERATION`, a GUC nest
//! level pins `search_path` to `pg_catalog, <schema>, pg_temp` (pg_catalog
//! first, so a tenant's `=` operator cannot shadow the built-in one), and
//! both are restored on every path out, errors included, with any setting
//! the tenant's code changed rolled back. So a view, policy, cast, operator
//! or function of the tenant can do nothing the tenant could not do itself,
//! and the extension's functions that change the tenant in force, issue
//! tokens or reveal secrets refuse to run inside it ([`crate::pg::restricted::refuse_if_restricted`]).

use std::ffi::CString;
use std::panic::AssertUnwindSafe;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use crate::error::{DbragError, Kind};
use crate::pg::privileged;
use crate::tenant;
use dbrag_core::sql_text::quote_ident;

/// The tenant's role, as recorded in `control_plane.tenants.tenant_role`.
/// 55000 when the tenant has none (an operator runs
/// `dbrag._sync_tenant_role(tenant)`), or when the role is not a plain one
/// (SUPERUSER, BYPASSRLS, CREATEROLE, or the rights of dbrag_app/dbrag_admin).
pub fn tenant_role(tenant_id: uuid::Uuid) -> pg_sys::Oid {
    let name: Option<String> = crate::error::spi_row_or_raise(
        privileged::as_extension(|| {
            Spi::get_one_with_args::<String>(
                "SELECT tenant_role::pg_catalog.text FROM control_plane.tenants WHERE tenant_id = $1",
                &[DatumWithOid::from(tenant::to_pg(tenant_id))],
            )
        }),
        "the tenant's role",
    );
    let missing = || -> ! {
        DbragError::new(
            Kind::NotConfigured,
            format!("tenant {tenant_id} has no role of its own"),
        )
        .hint("an operator runs SELECT dbrag._sync_tenant_role(tenant)")
        .raise()
    };
    let Some(name) = name else { missing() };
    let Ok(cname) = CString::new(name) else {
        missing()
    };
    // SAFETY: a syscache lookup with missing_ok, then attribute and
    // membership lookups on valid oids.
    let (oid, privileged_role) = unsafe {
        let oid = pg_sys::get_role_oid(cname.as_ptr(), true);
        if oid == pg_sys::InvalidOid {
            missing()
        }
        let reaches = |name: &std::ffi::CStr| {
            let r = pg_sys::get_role_oid(name.as_ptr(), true);
            r != pg_sys::InvalidOid && pg_sys::has_privs_of_role(oid, r)
        };
        (
            oid,
            pg_sys::superuser_arg(oid)
                || pg_sys::has_bypassrls_privilege(oid)
                || pg_sys::has_createrole_privilege(oid)
                || reaches(c"dbrag_app")
                || reaches(c"dbrag_admin"),
        )
    };
    // Its code would run with more than a tenant's rights: refuse to act.
    if privileged_role {
        DbragError::new(
            Kind::NotConfigured,
            format!("the role of tenant {tenant_id} has privileges a tenant's role may not have"),
        )
        .hint("ALTER ROLE ... NOSUPERUSER NOBYPASSRLS NOCREATEROLE, and revoke dbrag_app and dbrag_admin from it")
        .raise()
    }
    oid
}

/// Run `f` as `role` in a security-restricted operation with `search_path`
/// = `pg_catalog, <schema>, pg_temp`. Restored on every path out.
pub fn as_role<R>(role: pg_sys::Oid, schema: &str, f: impl FnOnce() -> R) -> R {
    let path = CString::new(format!("pg_catalog, {}, pg_temp", quote_ident(schema)))
        .unwrap_or_else(|_| CString::from(c"pg_catalog, pg_temp"));
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain backend state calls, undone by `restore` below on every
    // path (and by transaction abort, as for SECURITY DEFINER).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let level = privileged::push_search_path(&path);
    crate::pg::restricted::enter_tenant_work();
    let restore = move || {
        crate::pg::restricted::leave_tenant_work();
        // SAFETY: closes exactly the level opened above and deeper ones;
        // like REFRESH MATERIALIZED VIEW, settings the tenant's code changed
        // are rolled back (isCommit = false), then the user id is restored.
        unsafe {
            pg_sys::AtEOXact_GUC(false, level);
            pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        }
    };
    let out = PgTryBuilder::new(AssertUnwindSafe(f))
        .catch_others(|e| {
            restore();
            e.rethrow()
        })
        .execute();
    restore();
    out
}

/// Run `f` as the role of tenant `tenant_id` (see [`as_role`]).
pub fn as_tenant<R>(tenant_id: uuid::Uuid, schema: &str, f: impl FnOnce() -> R) -> R {
    let role = tenant_role(tenant_id);
    as_role(role, schema, f)
}

/// The name of a role, for history and audit rows.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr lookup returns NULL for a dropped role.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        if p.is_null() {
            role.to_u32().to_string()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}
