//! Running the extension's own fixed queries with the extension's rights.
//!
//! Like a `SECURITY DEFINER` function: the user id is switched to the bootstrap
//! superuser (so the query is not bound by tenant policies and must filter by
//! tenant itself), the operation is security-restricted, and `search_path` is
//! pinned to `pg_catalog, pg_temp` so a hostile path cannot plant look-alike
//! operators or functions (CVE-2018-1058 class). Only fixed SQL text with
//! bound arguments runs here, never text from a client.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Open a GUC nest level with `search_path` set to `path`; undone by
/// [`restore_settings`] (or by transaction / subtransaction abort).
pub fn push_search_path(path: &std::ffi::CStr) -> i32 {
    // SAFETY: a plain call; GUC_ACTION_SAVE is allowed in parallel mode and
    // undone by AtEOXact_GUC.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    crate::gucs::set(
        c"search_path",
        path,
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_SAVE,
    );
    level
}

/// Close a nest level opened by [`push_search_path`].
pub fn restore_settings(level: i32) {
    // SAFETY: closes exactly the level that was opened.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
}

/// Run `f` as the extension. On an ERROR, transaction or subtransaction abort
/// restores the user id and the settings, as it does for SECURITY DEFINER.
pub fn as_extension<R>(f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain backend state calls, paired below on the normal path.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let level = push_search_path(c"pg_catalog, pg_temp");
    crate::pg::citus::allow_nested_reads();
    let result = f();
    restore_settings(level);
    // SAFETY: undoes the switch made above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// Run `f` with `search_path` pinned but as the calling user, so RLS applies.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    let level = push_search_path(c"pg_catalog, pg_temp");
    let result = f();
    restore_settings(level);
    result
}

/// The login role's oid (what membership is resolved from).
pub fn session_user() -> pg_sys::Oid {
    // SAFETY: always valid inside a backend.
    unsafe { pg_sys::GetSessionUserId() }
}

/// The effective user's oid.
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: always valid inside a backend.
    unsafe { pg_sys::GetUserId() }
}

/// Whether the effective user has the privileges of role `name` (superusers do).
pub fn current_user_has_role(name: &std::ffi::CStr) -> bool {
    // SAFETY: get_role_oid with missing_ok returns InvalidOid for a missing role.
    unsafe {
        let role = pg_sys::get_role_oid(name.as_ptr(), true);
        if role == pg_sys::InvalidOid {
            return pg_sys::superuser();
        }
        pg_sys::has_privs_of_role(pg_sys::GetUserId(), role)
    }
}

/// Whether the effective user is a platform operator: superuser or `dbrag_admin`.
pub fn is_platform_admin() -> bool {
    current_user_has_role(c"dbrag_admin")
}

/// The values of the first column of a fixed query's rows, in order, NULLs
/// left out. Whose rights it runs with is the caller's choice (wrap it in
/// [`as_extension`] for the extension's).
pub fn column<T: IntoDatum + FromDatum>(
    sql: &str,
    args: &[DatumWithOid],
) -> Result<Vec<T>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(sql, None, args)? {
            if let Some(v) = row.get::<T>(1)? {
                out.push(v);
            }
        }
        Ok(out)
    })
}
