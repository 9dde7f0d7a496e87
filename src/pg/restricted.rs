//! Security-restricted operations and work done for a tenant: the flags
//! the privileged paths consult (docs/architecture.md). `crate::act_as`
//! sets them; every module below it may read them.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::error::{DbragError, Kind};

thread_local! {
    /// How many `crate::act_as::as_tenant` calls are in progress on this backend.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether work for a tenant is in progress: connection rules relaxed for
/// superuser callers (socket hosts, no password) must then never apply.
pub fn acting_for_tenant() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Whether the backend runs inside a security-restricted operation (work
/// for a tenant, or PostgreSQL's own maintenance commands).
pub fn in_restricted_operation() -> bool {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::InSecurityRestrictedOperation() }
}

/// Refuse (42501) when called inside a security-restricted operation: a
/// tenant's view calling `dbrag.set_tenant(B)` while the application server
/// syncs the tenant's catalog fails instead.
pub fn refuse_if_restricted(what: &str) {
    if in_restricted_operation() {
        DbragError::new(
            Kind::Forbidden,
            format!("{what} cannot be called inside a security-restricted operation"),
        )
        .hint("code pg_dbrag runs for a tenant (its views, policies, casts and functions) may not change the tenant in force, issue tokens or read secrets")
        .raise()
    }
}

/// Work for a tenant begins (crate::act_as).
pub fn enter_tenant_work() {
    DEPTH.with(|d| d.set(d.get() + 1));
}

/// Work for a tenant ends, on every path out (crate::act_as).
pub fn leave_tenant_work() {
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
}

/// Whether the caller may let libpq use the server's own identity: the login
/// role and the current role must both be superusers (so neither a tenant
/// running through the extension's privileged path nor a superuser who took
/// a tenant's role with `SET ROLE` qualifies), and never while pg_dbrag
/// works for a tenant (crate::act_as), whoever called.
pub fn caller_is_superuser() -> bool {
    if acting_for_tenant() {
        return false;
    }
    // SAFETY: plain catalog lookups on valid role oids.
    unsafe { pg_sys::superuser() && pg_sys::superuser_arg(pg_sys::GetSessionUserId()) }
}
