//! The tenant in force on Citus worker nodes (docs/scale-out.md).
//!
//! Row-level security on a distributed table is evaluated on the worker
//! holding the shard, in a session the coordinator opened as its current
//! role. That session cannot see the coordinator's superuser-only tenant
//! setting. When Citus is loaded, every statement that Citus executes on
//! other nodes first gives them `SET LOCAL dbrag.tenant_assertion =
//! '<signed>'` inside the remote transaction Citus opens for it (an executor
//! hook, whether `set_tenant` was called for the transaction or for the
//! session). The worker accepts the value only if it verifies: signed with
//! the secret all nodes share, for the role the worker session runs as, for
//! this database, and not expired (dbrag_core::node_assertion).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr, CString};

use dbrag_core::node_assertion::{self, AssertionError};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::pg_sys::GucAction::GUC_ACTION_LOCAL;
use pgrx::pg_sys::GucContext::PGC_USERSET;
use pgrx::prelude::*;
use pgrx::PgList;
use serde_json::json;

use crate::audit;
use crate::error::{DbragError, Kind};
use crate::gucs;
use crate::pg::citus::{citus_loaded, keep_execution_remote};

pub const ASSERTION_GUC: &CStr = c"dbrag.tenant_assertion";

/// Longest lifetime of an assertion, in seconds: it lives for one
/// transaction, the bound only limits what a copied value is good for.
const ASSERTION_TTL: i64 = 3600;

pub static TENANT_ASSERTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `dbrag.citus_tenant_forwarding` (superuser, default on). Off, the
/// executor hook returns before anything else: a tenant set with
/// `set_tenant` no longer reaches the workers, which then see no tenant
/// (closed). For measuring what the hook costs (bench/citus.sh) and for
/// clusters whose callers are members' login roles only.
pub static FORWARDING: GucSetting<bool> = GucSetting::<bool>::new(true);

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
    GucRegistry::define_bool_guc(
        c"dbrag.citus_tenant_forwarding",
        c"Forward the tenant set with dbrag.set_tenant to Citus workers.",
        c"Off: the workers see no tenant from set_tenant (members' login roles still reach them).",
        &FORWARDING,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"dbrag.citus_shard_pruning",
        c"Plan the model's statement for the tenant's Citus shard only.",
        c"Off: the statement runs on every shard (the same rows, row security alone filtering them).",
        &crate::pg::citus::SHARD_PRUNING,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The raw assertion in this session, if any.
pub fn assertion_setting() -> Option<String> {
    gucs::string_value(&TENANT_ASSERTION)
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

/// Before `set_tenant` looks anything up: in a transaction block on Citus,
/// the calls that follow it (ask, sync_catalog) need Citus's remote
/// execution, which it refuses once a lookup ran locally.
pub fn before_switch() {
    // SAFETY: a plain read of transaction state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        keep_execution_remote();
    }
}

thread_local! {
    /// The tenant `set_tenant` last put in force and the latest expiry a
    /// value forwarded for it may carry (a token's own `exp`).
    static NOT_AFTER: Cell<Option<(uuid::Uuid, Option<i64>)>> = const { Cell::new(None) };
    /// The last value signed: (tenant, role, cap, its exp, value).
    static SIGNED: RefCell<Option<(uuid::Uuid, pg_sys::Oid, Option<i64>, i64, String)>> =
        const { RefCell::new(None) };
    /// What the workers were last given: (local transaction, subtransaction,
    /// value; empty for "no tenant").
    static FORWARDED: RefCell<Option<(u32, pg_sys::SubTransactionId, String)>> =
        const { RefCell::new(None) };
    /// Citus's entry points, looked up once per backend.
    static CITUS_FNS: Cell<Option<Option<CitusFns>>> = const { Cell::new(None) };
}

/// The two functions of Citus 13 that carry a `SET LOCAL` to the workers:
/// `UseCoordinatedTransaction` (every worker connection of the transaction
/// then starts with `BEGIN` followed by the transaction's propagated
/// `SET LOCAL`s, remote_transaction.c) and `PostprocessVariableSetStmt`
/// (sends one to the connections already open and records it for those
/// opened later, commands/variableset.c). Citus's own utility hook calls
/// the second only inside transaction blocks, DO blocks and procedures.
#[derive(Clone, Copy)]
struct CitusFns {
    use_coordinated_transaction: unsafe extern "C-unwind" fn(),
    postprocess_set: unsafe extern "C-unwind" fn(*mut pg_sys::VariableSetStmt, *const c_char),
}

fn citus_fns() -> Option<CitusFns> {
    if let Some(known) = CITUS_FNS.with(|c| c.get()) {
        return known;
    }
    // The signatures below are Citus 13's (read in its source, tag v13.2.2);
    // another major version is not called into: its workers see no tenant.
    let version = crate::pg::citus::citus_version();
    if !version.as_deref().is_some_and(|v| v.starts_with("13.")) {
        warning!(
            "Citus {} is not a version pg_dbrag forwards tenants with (13.x): a tenant set with dbrag.set_tenant does not reach the workers (they see no tenant)",
            version.as_deref().unwrap_or("?")
        );
        CITUS_FNS.with(|c| c.set(Some(None)));
        return None;
    }
    // SAFETY: Citus is loaded in this backend (checked by the caller), so
    // load_external_function finds the loaded library; with signalNotFound
    // false a missing symbol is NULL.
    let found = unsafe {
        let lookup = |name: &CStr| {
            pg_sys::load_external_function(
                c"citus".as_ptr(),
                name.as_ptr(),
                false,
                std::ptr::null_mut(),
            )
        };
        let a = lookup(c"UseCoordinatedTransaction");
        let b = lookup(c"PostprocessVariableSetStmt");
        (!a.is_null() && !b.is_null()).then(|| CitusFns {
            use_coordinated_transaction: std::mem::transmute::<
                *mut std::ffi::c_void,
                unsafe extern "C-unwind" fn(),
            >(a),
            postprocess_set: std::mem::transmute::<
                *mut std::ffi::c_void,
                unsafe extern "C-unwind" fn(*mut pg_sys::VariableSetStmt, *const c_char),
            >(b),
        })
    };
    if found.is_none() {
        warning!("this Citus build lacks UseCoordinatedTransaction/PostprocessVariableSetStmt: a tenant set with dbrag.set_tenant does not reach the workers (they see no tenant)");
    }
    CITUS_FNS.with(|c| c.set(Some(found)));
    found
}

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

/// Chain the executor hook that forwards the tenant (from `_PG_init`).
pub fn init() {
    // SAFETY: hooks are chained once per backend, from _PG_init.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
}

/// Before every statement that Citus executes on other nodes: give the
/// workers the tenant in force, whether `set_tenant` was called for the
/// transaction or for the session (docs/scale-out.md §4). pg_dbrag is
/// preloaded after Citus, so this runs before Citus's own hook starts the
/// distributed execution.
///
/// Not `#[pg_guard]` on purpose: an ERROR of the executor or of the next
/// hook (a permission check, say) longjmps straight through this frame,
/// which holds nothing to drop, and reaches the client exactly as
/// PostgreSQL raised it, instead of being turned into a Rust panic and back
/// (which replaced its DETAIL). Our own part runs behind the guard below.
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    // SAFETY: the executor passes a valid QueryDesc; the previous hook (or
    // the standard function) gets it unchanged.
    unsafe {
        if FORWARDING.get() {
            forward_tenant_if_distributed(query_desc, eflags);
        }
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query_desc, eflags),
            None => raw::standard_ExecutorStart(query_desc, eflags),
        }
    }
}

/// PostgreSQL's own function, called without pgrx's error boundary (see
/// `executor_start`).
mod raw {
    use pgrx::pg_sys;
    use std::ffi::c_int;
    unsafe extern "C-unwind" {
        pub fn standard_ExecutorStart(query_desc: *mut pg_sys::QueryDesc, eflags: c_int);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forward_tenant_if_distributed(
    query_desc: *mut pg_sys::QueryDesc,
    eflags: c_int,
) {
    // SAFETY: a valid QueryDesc, read only.
    unsafe {
        if eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as c_int == 0
            && citus_loaded()
            && (gucs::tenant_setting_is_set() || forwarded_in_this_transaction())
            && !(*query_desc).plannedstmt.is_null()
            && plan_is_distributed((*query_desc).plannedstmt)
        {
            sync_workers();
        }
    }
}

/// Whether this transaction's workers were given a tenant (which a
/// `reset_tenant` must take back).
fn forwarded_in_this_transaction() -> bool {
    // SAFETY: MyProc is set for every backend that runs statements.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    FORWARDED.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|(l, _, v)| *l == lxid && !v.is_empty())
    })
}

/// Whether a plan holds one of Citus's distributed scans.
unsafe fn plan_is_distributed(stmt: *mut pg_sys::PlannedStmt) -> bool {
    // SAFETY: a planned statement's tree, read only.
    unsafe { has_citus_scan((*stmt).planTree, 0) || any_citus_scan((*stmt).subplans, 0) }
}

/// Whether a plan of `plans`, a List of plan trees, holds a Citus scan.
unsafe fn any_citus_scan(plans: *mut pg_sys::List, depth: u32) -> bool {
    // SAFETY: a List of Plan nodes of a valid plan tree (NULL is empty).
    unsafe {
        PgList::<pg_sys::Plan>::from_pg(plans)
            .iter_ptr()
            .any(|p| has_citus_scan(p, depth))
    }
}

unsafe fn has_citus_scan(plan: *mut pg_sys::Plan, depth: u32) -> bool {
    if plan.is_null() || depth > 64 {
        return false;
    }
    // SAFETY: nodes of a valid plan tree; each cast follows its node tag.
    unsafe {
        match (*plan).type_ {
            pg_sys::NodeTag::T_CustomScan => {
                let scan = plan as *mut pg_sys::CustomScan;
                let methods = (*scan).methods;
                if !methods.is_null() && !(*methods).CustomName.is_null() {
                    let name = CStr::from_ptr((*methods).CustomName).to_bytes();
                    // "Citus Adaptive", "Citus INSERT ... SELECT", "Citus MERGE INTO ..."
                    if name.starts_with(b"Citus ") {
                        return true;
                    }
                }
                if any_citus_scan((*scan).custom_plans, depth + 1) {
                    return true;
                }
            }
            pg_sys::NodeTag::T_Append => {
                if any_citus_scan((*plan.cast::<pg_sys::Append>()).appendplans, depth + 1) {
                    return true;
                }
            }
            pg_sys::NodeTag::T_MergeAppend => {
                if any_citus_scan((*plan.cast::<pg_sys::MergeAppend>()).mergeplans, depth + 1) {
                    return true;
                }
            }
            pg_sys::NodeTag::T_SubqueryScan => {
                let s = plan as *mut pg_sys::SubqueryScan;
                if has_citus_scan((*s).subplan, depth + 1) {
                    return true;
                }
            }
            _ => {}
        }
        has_citus_scan((*plan).lefttree, depth + 1) || has_citus_scan((*plan).righttree, depth + 1)
    }
}

/// After `set_tenant` put `tenant` in force: remember the latest expiry a
/// value forwarded for it may carry (`not_after`, a token's `exp`). Inside a
/// transaction block the value is signed now, so `SHOW
/// dbrag.tenant_assertion` names it; the workers get it before the next
/// statement that reaches them (`executor_start`).
pub fn forward_tenant(tenant: uuid::Uuid, not_after: Option<i64>) {
    NOT_AFTER.with(|c| c.set(Some((tenant, not_after))));
    // SAFETY: a plain read of transaction state.
    if citus_loaded() && unsafe { pg_sys::IsTransactionBlock() } {
        if let Some(value) = wanted_assertion() {
            set_local_assertion(&value);
        }
    }
}

/// The assertion the workers should hold for this statement, None when no
/// tenant is in force (or Citus connects as another role than the caller's:
/// a security-definer function or restricted operation).
fn wanted_assertion() -> Option<String> {
    let setting = gucs::tenant_setting();
    if setting.is_empty() {
        return None;
    }
    let tenant = uuid::Uuid::try_parse(&setting).ok()?;
    // SAFETY: plain reads of backend state.
    let role = unsafe { pg_sys::GetUserId() };
    let cap = NOT_AFTER
        .with(|c| c.get())
        .and_then(|(t, cap)| if t == tenant { cap } else { None });
    let now = now_unix();
    if let Some(cap) = cap {
        if cap <= now {
            DbragError::new(
                Kind::BadToken,
                format!("the token that put tenant {tenant} in force has expired"),
            )
            .hint("Citus workers accept the tenant only until the token's exp; call dbrag.set_tenant with a fresh token")
            .raise()
        }
    }
    // Re-sign when half of the lifetime is gone: the same value statement
    // after statement lets each worker session verify it once.
    if let Some(v) = SIGNED.with(|c| {
        c.borrow().as_ref().and_then(|(t, r, c2, exp, v)| {
            (*t == tenant && *r == role && *c2 == cap && exp - now > ASSERTION_TTL / 2)
                .then(|| v.clone())
        })
    }) {
        return Some(v);
    }
    let Some(secret) = gucs::string_value(&gucs::JWT_SECRET) else {
        warning!("dbrag.jwt_secret is not set: the tenant in force does not reach Citus workers");
        return None;
    };
    // Citus connects to the workers as the current role.
    let role_name = name_of(role)?;
    let exp = (now + ASSERTION_TTL).min(cap.unwrap_or(i64::MAX));
    let value = match node_assertion::sign(
        secret.as_bytes(),
        &tenant.to_string(),
        exp,
        &role_name,
        &database_name(),
    ) {
        Ok(a) => a,
        Err(e) => DbragError::new(Kind::NotConfigured, e.to_string()).raise(),
    };
    // The value is our own text of base64url, uuid and digit characters;
    // anything else would be a bug, refused rather than quoted.
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        DbragError::new(
            Kind::NotConfigured,
            "node assertion has unexpected characters",
        )
        .raise()
    }
    SIGNED.with(|c| *c.borrow_mut() = Some((tenant, role, cap, exp, value.clone())));
    Some(value)
}

fn set_local_assertion(value: &str) {
    let Ok(v) = CString::new(value) else { return };
    // Our registered setting, for this transaction.
    gucs::set(ASSERTION_GUC, &v, PGC_USERSET, GUC_ACTION_LOCAL);
}

/// Give the workers of this transaction the tenant in force (or take it
/// back after `reset_tenant`), once per transaction and value. Every worker
/// connection Citus uses for the statement then runs inside `BEGIN; SET
/// LOCAL dbrag.tenant_assertion = '…'`, so nothing outlives the transaction
/// on a connection that Citus keeps for the next one, whichever tenant that
/// one is for.
fn sync_workers() {
    // SAFETY: plain reads of backend state.
    let (lxid, subxid, borrowed_role) = unsafe {
        (
            (*pg_sys::MyProc).lxid,
            pg_sys::GetCurrentSubTransactionId(),
            pg_sys::InLocalUserIdChange() || pg_sys::InSecurityRestrictedOperation(),
        )
    };
    // Inside a security-definer function or a restricted operation (work as
    // a tenant's role, which the workers know by its login) Citus connects
    // as a role the caller's value does not name: leave it as it is.
    if borrowed_role {
        return;
    }
    let wanted = wanted_assertion().unwrap_or_default();
    let done = FORWARDED.with(|c| match c.borrow().as_ref() {
        Some((l, s, v)) if *l == lxid => {
            (*s == subxid && *v == wanted) || (wanted.is_empty() && v.is_empty())
        }
        // Nothing given to this transaction's workers yet.
        _ => wanted.is_empty(),
    });
    if done {
        return;
    }
    let Some(fns) = citus_fns() else { return };
    set_local_assertion(&wanted);
    let statement =
        CString::new(format!("SET LOCAL dbrag.tenant_assertion = '{wanted}'")).unwrap_or_default();
    // SAFETY: Citus's functions with the arguments its utility hook passes:
    // the parsed statement and its text. Both may raise an ERROR (a worker
    // connection failed), which the guard turns into this statement's error.
    unsafe {
        let parsed = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            statement.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        let Some(raw) = parsed.get_ptr(0) else { return };
        let stmt = (*raw).stmt as *mut pg_sys::VariableSetStmt;
        pg_sys::ffi::pg_guard_ffi_boundary(|| (fns.use_coordinated_transaction)());
        pg_sys::ffi::pg_guard_ffi_boundary(|| (fns.postprocess_set)(stmt, statement.as_ptr()));
    }
    FORWARDED.with(|c| *c.borrow_mut() = Some((lxid, subxid, wanted)));
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
    let tenant = crate::pg::privileged::as_extension(|| {
        Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT tenant_id FROM control_plane.tenants WHERE tenant_role = $1::pg_catalog.name",
            &[pgrx::datum::DatumWithOid::from(name.as_str())],
        )
    });
    crate::error::spi_row_or_raise(tenant, "the tenant of a tenant role")
        .map(|t| uuid::Uuid::from_bytes(*t.as_bytes()))
}
