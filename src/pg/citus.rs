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
        let major_13 = citus_version().is_some_and(|v| v.starts_with("13."));
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

/// `citus.version` of the loaded library (None without Citus). pg_dbrag
/// calls into Citus's C functions only under the major version whose
/// source their signatures were read in.
pub fn citus_version() -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown name.
    unsafe {
        let p = pg_sys::GetConfigOption(c"citus.version".as_ptr(), true, false);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
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

// ---- Shard pruning for the model's statement
//
// The policies of an isolated table compare `tenant_id` with
// `dbrag.current_tenant_id()`, a STABLE call that Citus cannot prune shards
// with: a model's statement without its own tenant filter ran on every shard
// (Citus issue #7415), 7.5× the latency of the same report with a tenant
// filter in `bench/citus.sh`. Citus does prune by a constant in a policy's qual. So
// while pg_dbrag plans the model's statement (and only then), the call in
// the row-security quals is replaced by its value for this statement: the
// same rows by construction, now one shard. The workers still apply their
// own policies with their own tenant; a wrong shard would return nothing,
// never another tenant's rows. The plan is never kept (an unsaved SPI plan),
// and only the outermost planning is changed: a function planned during
// constant folding may keep its plan, which must not carry the value.

thread_local! {
    /// Set by [`with_tenant_pruning`] for the next outermost planning:
    /// `dbrag.current_tenant_id()`'s oid and its value now.
    static PRUNE_FOR: Cell<Option<(pg_sys::Oid, [u8; 16])>> = const { Cell::new(None) };
}

/// `dbrag.citus_shard_pruning` (superuser, default on). Off, the model's
/// statement is planned as written and runs on every shard (the same
/// rows): for measuring what pruning saves (bench/citus.sh).
pub static SHARD_PRUNING: pgrx::GucSetting<bool> = pgrx::GucSetting::<bool>::new(true);

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

/// Chain the planner hook (from `_PG_init`; it acts only inside
/// [`with_tenant_pruning`]).
pub fn init() {
    // SAFETY: hooks are chained once per backend, from _PG_init.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
}

/// Run `plan_and_run` (one SPI call that plans a statement) with the tenant
/// in force written into that statement's row-security quals as a constant,
/// so Citus sends it to the tenant's shard only. Nothing changes without
/// Citus or without a tenant.
pub fn with_tenant_pruning<R>(
    current_tenant: Option<(pg_sys::Oid, [u8; 16])>,
    plan_and_run: impl FnOnce() -> R,
) -> R {
    if current_tenant.is_none() || !SHARD_PRUNING.get() || !citus_loaded() {
        return plan_and_run();
    }
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            PRUNE_FOR.with(|c| c.set(None));
        }
    }
    let _clear = Clear;
    PRUNE_FOR.with(|c| c.set(current_tenant));
    plan_and_run()
}

/// Not `#[pg_guard]`, as `scaleout::executor_start`: an ERROR of the next
/// planner passes through untouched; the rewrite runs behind the guard.
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // Taken, so nested plannings (Citus's subplans, functions folded at
    // plan time) see nothing.
    if let Some(target) = PRUNE_FOR.with(|c| c.take()) {
        // SAFETY: the planner's own copy of the query, ours to change.
        unsafe { pin_tenant(parse, target.0, &target.1) };
    }
    // SAFETY: the arguments as the planner passed them.
    unsafe {
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => raw::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    }
}

mod raw {
    use pgrx::pg_sys;
    unsafe extern "C-unwind" {
        pub fn standard_planner(
            parse: *mut pg_sys::Query,
            query_string: *const std::ffi::c_char,
            cursor_options: std::ffi::c_int,
            bound_params: pg_sys::ParamListInfo,
        ) -> *mut pg_sys::PlannedStmt;
    }
}

struct Pin {
    func: pg_sys::Oid,
    value: [u8; 16],
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn pin_tenant(
    query: *mut pg_sys::Query,
    func: pg_sys::Oid,
    value: &[u8; 16],
) {
    let mut pin = Pin {
        func,
        value: *value,
    };
    // SAFETY: a valid Query; the walker follows node tags.
    unsafe {
        walk(query.cast(), (&mut pin as *mut Pin).cast());
    }
}

/// Every range-table entry of the query, its subqueries, CTEs and sublinks:
/// the row-security quals get the value in place of the call.
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: nodes of a valid query tree, each cast after its tag.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => pg_sys::query_tree_walker(
                node.cast(),
                Some(walk),
                ctx,
                pg_sys::QTW_EXAMINE_RTES_BEFORE as std::ffi::c_int,
            ),
            pg_sys::NodeTag::T_RangeTblEntry => {
                let rte = node as *mut pg_sys::RangeTblEntry;
                if !(*rte).securityQuals.is_null() {
                    (*rte).securityQuals = pg_sys::expression_tree_mutator(
                        (*rte).securityQuals.cast(),
                        replace_call_as_c(),
                        ctx,
                    )
                    .cast();
                }
                // The walker goes on into the (new) quals and any subquery.
                false
            }
            _ => pg_sys::expression_tree_walker(node, Some(walk), ctx),
        }
    }
}

/// `dbrag.current_tenant_id()` with no arguments → the uuid constant; a
/// sublink's query is left to `walk`, which reaches it next.
unsafe extern "C-unwind" fn replace_call(
    node: *mut pg_sys::Node,
    ctx: *mut std::ffi::c_void,
) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    // SAFETY: nodes of a valid expression tree, each cast after its tag;
    // ctx is the Pin of pin_tenant, alive for the walk.
    unsafe {
        let pin = &*(ctx as *const Pin);
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => node,
            pg_sys::NodeTag::T_FuncExpr
                if (*(node as *mut pg_sys::FuncExpr)).funcid == pin.func
                    && (*(node as *mut pg_sys::FuncExpr)).args.is_null() =>
            {
                let uuid = pg_sys::palloc(16) as *mut u8;
                std::ptr::copy_nonoverlapping(pin.value.as_ptr(), uuid, 16);
                pg_sys::makeConst(
                    pg_sys::UUIDOID,
                    -1,
                    pg_sys::InvalidOid,
                    16,
                    pg_sys::Datum::from(uuid),
                    false,
                    false,
                )
                .cast()
            }
            _ => pg_sys::expression_tree_mutator(node, replace_call_as_c(), ctx),
        }
    }
}

type MutatorAsC = unsafe extern "C-unwind" fn() -> *mut pg_sys::Node;

/// `replace_call` as PostgreSQL 15 declares a mutator: a function pointer
/// of no declared arguments, called with (node, context).
fn replace_call_as_c() -> Option<MutatorAsC> {
    type Mutator =
        unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut std::ffi::c_void) -> *mut pg_sys::Node;
    // SAFETY: the same C function pointer; expression_tree_mutator calls it
    // with exactly these two arguments.
    Some(unsafe { std::mem::transmute::<Mutator, MutatorAsC>(replace_call) })
}
