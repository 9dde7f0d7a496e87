//! The tenant in force on Citus worker nodes (docs/scale-out.md).
//!
//! Row-level security on a distributed table is evaluated on the worker
//! holding the shard, in a session the coordinator opened as its current
//! role. That session cannot see the coordinator's superuser-only tenant
//! setting. When Citus is loaded, `set_tenant` therefore also issues
//! `SET LOCAL dbrag.tenant_assertion = '<signed>'`, which Citus forwards to
//! every worker connection of the transaction (its `propagate_set_commands`
//! machinery). The worker accepts the value only if it verifies: signed with
//! the secret all nodes share, for the role the worker session runs as, for
//! this database, and not expired (dbrag_core::node_assertion).

use std::ffi::{CStr, CString};

use dbrag_core::node_assertion::{self, AssertionError};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::error::{DbragError, Kind};
use crate::gucs;

pub const ASSERTION_GUC: &CStr = c"dbrag.tenant_assertion";

/// Longest lifetime of an assertion, in seconds: it lives for one
/// transaction, the bound only limits what a copied value is good for.
const ASSERTION_TTL: i64 = 3600;

pub static TENANT_ASSERTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
    // User-settable on purpose: Citus replays the SET LOCAL on the worker as
    // the client's role. A value is worth nothing unless it verifies.
    GucRegistry::define_string_guc(
        ASSERTION_GUC,
        c"Signed tenant assertion forwarded by a Citus coordinator.",
        c"Written by dbrag.set_tenant on the coordinator; verified on every read.",
        &TENANT_ASSERTION,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
}

/// The raw assertion in this session, if any.
pub fn assertion_setting() -> Option<String> {
    gucs::string_value(&TENANT_ASSERTION)
}

/// True when the Citus library is loaded in this backend.
pub fn citus_loaded() -> bool {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown name.
    unsafe {
        !pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null()
    }
}

/// Set one of Citus's settings (registered whenever `citus_loaded()`) for
/// this transaction or the caller's nest level; a refusal is an ERROR.
fn set_citus_setting(
    name: &CStr,
    value: &CStr,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    // SAFETY: static C strings naming a setting Citus registered.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

fn name_of(role: pg_sys::Oid) -> Option<String> {
    // SAFETY: GetUserNameFromId with noerr returns NULL for a dropped role.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn database_name() -> String {
    // SAFETY: MyDatabaseId is set for every backend that runs SQL.
    unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Inside a nest level opened by `privileged::push_search_path`: let the
/// extension's own lookups (tenants and memberships, reference tables on
/// Citus) run while a worker executes a shard query. Citus refuses nested
/// distributed queries there by default; a reference table's rows are on
/// every node, so the lookup is local and exact.
pub fn allow_nested_reads() {
    if !citus_loaded() {
        return;
    }
    // Saved at the caller's nest level.
    set_citus_setting(
        c"citus.allow_nested_distributed_execution",
        c"on",
        pg_sys::GucContext::PGC_SUSET,
        pg_sys::GucAction::GUC_ACTION_SAVE,
    );
}

/// For the rest of the transaction, let Citus reach the coordinator's own
/// placements over connections rather than in this backend. The model's
/// statement is read through a cursor inside a subtransaction; Citus fetches
/// its intermediate results over a connection, and refuses that once an
/// earlier statement of the transaction (a tenant or catalog lookup) ran
/// locally. Must run before the first lookup of the call.
pub fn keep_execution_remote() {
    if !citus_loaded() {
        return;
    }
    set_citus_setting(
        c"citus.enable_local_execution",
        c"off",
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
}

/// Before `set_tenant` looks anything up: in a transaction block on Citus,
/// the calls that follow it (ask, sync_catalog) need Citus's remote
/// execution, which it refuses once a lookup ran locally.
pub fn before_switch() {
    // SAFETY: a plain read of transaction state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        keep_execution_remote();
    }
}

/// After `set_tenant` put `tenant` in force: forward it to the workers of
/// this transaction when Citus is loaded. `not_after` caps the assertion's
/// expiry (a token's own `exp`).
pub fn forward_tenant(tenant: uuid::Uuid, not_after: Option<i64>) {
    // Only a transaction block has worker connections that outlive this
    // statement; outside one, Citus forwards nothing (and needs nothing:
    // the statement that called set_tenant has already been planned).
    // SAFETY: plain reads of transaction state.
    if !citus_loaded() || !unsafe { pg_sys::IsTransactionBlock() } {
        return;
    }
    let Some(secret) = gucs::string_value(&gucs::JWT_SECRET) else {
        warning!("dbrag.jwt_secret is not set: the tenant in force does not reach Citus workers");
        return;
    };
    // Citus connects to the workers as the current role.
    // SAFETY: GetUserId is valid in any transaction.
    let Some(role) = name_of(unsafe { pg_sys::GetUserId() }) else {
        return;
    };
    let exp = (now_unix() + ASSERTION_TTL).min(not_after.unwrap_or(i64::MAX));
    let assertion = match node_assertion::sign(
        secret.as_bytes(),
        &tenant.to_string(),
        exp,
        &role,
        &database_name(),
    ) {
        Ok(a) => a,
        Err(e) => DbragError::new(Kind::NotConfigured, e.to_string()).raise(),
    };
    // Citus forwards SET LOCAL statements (not set_config calls) of a
    // transaction block when propagate_set_commands is 'local'.
    set_citus_setting(
        c"citus.propagate_set_commands",
        c"local",
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
    // The value is our own text of base64url, uuid and digit characters;
    // anything else would be a bug, refused rather than quoted.
    if !assertion
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        DbragError::new(
            Kind::NotConfigured,
            "node assertion has unexpected characters",
        )
        .raise()
    }
    let statement = format!("SET LOCAL dbrag.tenant_assertion = '{assertion}'");
    if let Err(e) = Spi::run(&statement) {
        DbragError::new(
            Kind::NotConfigured,
            format!("could not forward the tenant to Citus workers: {e}"),
        )
        .raise()
    }
}

/// The tenant a verified assertion in this session names. An assertion that
/// does not verify is refused with an ERROR (and an audit row), never
/// ignored: a worker session must not fall back to another tenant.
pub fn asserted_tenant(assertion: &str) -> uuid::Uuid {
    let Some(secret) = gucs::string_value(&gucs::JWT_SECRET) else {
        DbragError::new(
            Kind::NotConfigured,
            "dbrag.tenant_assertion is set but dbrag.jwt_secret is not configured on this node",
        )
        .hint("every Citus node needs the same dbrag.jwt_secret")
        .raise()
    };
    // SAFETY: GetSessionUserId is valid in any transaction.
    let role = name_of(unsafe { pg_sys::GetSessionUserId() }).unwrap_or_default();
    match node_assertion::verify(
        secret.as_bytes(),
        assertion,
        &role,
        &database_name(),
        now_unix(),
    ) {
        Ok(a) => match uuid::Uuid::try_parse(&a.tenant_id) {
            Ok(t) => t,
            Err(_) => DbragError::new(Kind::BadToken, "node assertion names no tenant").raise(),
        },
        Err(e) => {
            // Parallel workers cannot write; their leader refused first.
            // SAFETY: a plain read of backend state.
            if unsafe { pg_sys::ParallelWorkerNumber } < 0 {
                audit::record_durable(
                    "node_assertion_refused",
                    None,
                    json!({"reason": e.to_string()}),
                );
            }
            let kind = match e {
                AssertionError::WrongRole => Kind::Forbidden,
                AssertionError::NoSecret => Kind::NotConfigured,
                _ => Kind::BadToken,
            };
            DbragError::new(kind, format!("tenant assertion refused: {e}"))
                .hint("dbrag.tenant_assertion is written by dbrag.set_tenant on a Citus coordinator; it cannot be set by hand")
                .raise()
        }
    }
}

/// On Citus, the tenant whose own role this session logged in as: the
/// coordinator reaches the workers as the tenant's role while it works for
/// the tenant (crate::act_as). None elsewhere, and for any other role.
pub fn role_tenant(session_user: pg_sys::Oid) -> Option<uuid::Uuid> {
    if !citus_loaded() {
        return None;
    }
    let name = name_of(session_user)?;
    if !name.starts_with("dbrag_tenant_") {
        return None;
    }
    let tenant = crate::privileged::as_extension(|| {
        Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT tenant_id FROM control_plane.tenants WHERE tenant_role = $1::pg_catalog.name",
            &[pgrx::datum::DatumWithOid::from(name.as_str())],
        )
    });
    crate::error::spi_row_or_raise(tenant, "the tenant of a tenant role")
        .map(|t| uuid::Uuid::from_bytes(*t.as_bytes()))
}
