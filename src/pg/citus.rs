//! Citus's settings as pg_dbrag's plumbing needs them: whether Citus is
//! loaded, and the nest-level settings the privileged path and `ask` use
//! (docs/scale-out.md). The scale-out features are crate::scaleout.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

thread_local! {
    static CITUS_SEEN: Cell<bool> = const { Cell::new(false) };
    /// Citus 13's `GetCurrentLocalExecutionStatus`, looked up once.
    static LOCAL_STATUS_FN: Cell<Option<Option<LocalStatusFn>>> = const { Cell::new(None) };
}

type LocalStatusFn = unsafe extern "C-unwind" fn() -> u32;

/// `LOCAL_EXECUTION_REQUIRED` in Citus 13's `LocalExecutionStatus`
/// (distributed/local_executor.h, tag v13.2.2).
const LOCAL_EXECUTION_REQUIRED: u32 = 0;

/// True when this transaction already ran a statement on the coordinator's
/// own placements (Citus 13; false where the status cannot be read).
fn local_execution_required() -> bool {
    if !citus_loaded() {
        return false;
    }
    let status_fn = LOCAL_STATUS_FN.with(|c| {
        if let Some(known) = c.get() {
            return known;
        }
        // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown name.
        let major_13 = unsafe {
            let p = pg_sys::GetConfigOption(c"citus.version".as_ptr(), true, false);
            !p.is_null() && CStr::from_ptr(p).to_bytes().starts_with(b"13.")
        };
        // SAFETY: Citus is loaded, so load_external_function finds the
        // library; with signalNotFound false a missing symbol is NULL. The
        // signature is Citus 13's, checked by the version above.
        let found = major_13
            .then(|| unsafe {
                let f = pg_sys::load_external_function(
                    c"citus".as_ptr(),
                    c"GetCurrentLocalExecutionStatus".as_ptr(),
                    false,
                    std::ptr::null_mut(),
                );
                (!f.is_null())
                    .then(|| std::mem::transmute::<*mut std::ffi::c_void, LocalStatusFn>(f))
            })
            .flatten();
        c.set(Some(found));
        found
    });
    // SAFETY: a read of Citus's per-backend status, no arguments.
    status_fn.is_some_and(|f| unsafe { f() } == LOCAL_EXECUTION_REQUIRED)
}

/// True when the Citus library is loaded in this backend.
pub fn citus_loaded() -> bool {
    // A loaded library stays loaded: remember a yes.
    if CITUS_SEEN.with(|c| c.get()) {
        return true;
    }
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown name.
    let loaded = unsafe {
        !pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null()
    };
    if loaded {
        CITUS_SEEN.with(|c| c.set(true));
    }
    loaded
}

/// Set one of Citus's settings for this transaction or the caller's nest
/// level, when Citus is loaded (it registers them); a refusal is an ERROR.
pub fn set_citus_setting(
    name: &CStr,
    value: &CStr,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    if citus_loaded() {
        crate::gucs::set(name, value, context, action);
    }
}

/// Inside a nest level opened by `privileged::push_search_path`: let the
/// extension's own lookups (tenants and memberships, reference tables on
/// Citus) run while a worker executes a shard query. Citus refuses nested
/// distributed queries there by default; a reference table's rows are on
/// every node, so the lookup is local and exact.
pub fn allow_nested_reads() {
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
///
/// When a statement of the transaction already ran locally, Citus refuses
/// the switch ("cannot switch local execution status … visibility
/// problems"): execution then stays local, as the transaction began it, and
/// this returns false.
pub fn keep_execution_remote() -> bool {
    if local_execution_required() {
        return false;
    }
    set_citus_setting(
        c"citus.enable_local_execution",
        c"off",
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_LOCAL,
    );
    true
}
