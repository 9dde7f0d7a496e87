//! The SQL guard (docs/llm-and-guard.md): decides, on PostgreSQL's own parse tree, whether
//! a statement a model wrote may run. Never regular expressions over text.
//!
//! Local connections ([`check_local`]): the text is parsed (`raw_parser`),
//! must be exactly one `SelectStmt` without `INTO`, and is then analyzed
//! (`parse_analyze_fixedparams`) with the search path the caller will run it
//! under. The `Query` is walked (`query_tree_walker` with
//! `QTW_EXAMINE_RTES_BEFORE`, `expression_tree_walker`, into every sub-`Query`:
//! CTEs, sub-selects in `FROM`, `WHERE`, target lists):
//! - every `Query` is a `SELECT` with no data-modifying CTE and no row locks;
//! - every relation read is in the caller's allowed set (so `pg_catalog`,
//!   `information_schema`, `control_plane` and views outside the set are out);
//! - every function and operator called (`check_functions_in_node`) lives in
//!   `pg_catalog`, is not volatile and is not on the deny-list
//!   ([`dbrag_core::sqlguard::denied_function`]);
//! - casts to domains (whose CHECK constraints may call any function) and
//!   table-sampling methods from extensions are refused.
//!
//! Parse analysis runs in an internal subtransaction, as a PL/pgSQL exception
//! block does: an unknown table or column becomes [`GuardError::Invalid`]
//! (for the model's retry) and the caller's transaction stays usable. On
//! success the subtransaction is kept, so the `AccessShareLock`s analysis took
//! hold until the end of the caller's transaction: a view cannot be replaced
//! between the check and the run. The caller must run the statement in the
//! same transaction and under the same `search_path` it was checked with.
//!
//! What the statement does not name (views expanded by the rewriter, their
//! row-level security policies, a negator or commutator the planner picks,
//! casts inside `to_jsonb`) is not judged by owner: analysis, EXPLAIN and
//! the run happen as the tenant's role inside a security-restricted
//! operation (crate::act_as), so such code can do nothing the tenant could
//! not do itself, whoever called.
//!
//! Remote connections ([`check_remote`]): the tables do not exist here, so
//! only the raw parse tree is checked: one `SelectStmt`, no `INTO`, no locking
//! clause, no data-modifying `WITH`, every table name (CTE names in scope
//! excepted) schema-qualified or resolved against the connection's schema and
//! in the allowed set, every function, operator and cast type on the allow-lists
//! of [`dbrag_core::sqlguard`].

use std::any::Any;
use std::collections::{BTreeSet, HashSet};
use std::ffi::{c_void, CStr, CString};

use dbrag_core::sqlguard;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

use pgrx::{PgList, PgSqlErrorCode};

use crate::error::{required, DbragError, Kind};

/// Why a statement may not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardError {
    /// Not exactly one read-only `SELECT` (SQLSTATE 42601).
    NotReadOnlySelect(String),
    /// A relation or function the statement may not use (SQLSTATE 42501).
    Forbidden(String),
    /// The statement does not parse or analyze: unknown table or column,
    /// syntax error… Carries PostgreSQL's own SQLSTATE and message, fit to
    /// hand back to the model for its retry.
    Invalid {
        sqlstate: PgSqlErrorCode,
        message: String,
    },
}

impl GuardError {
    pub fn message(&self) -> &str {
        match self {
            GuardError::NotReadOnlySelect(m) | GuardError::Forbidden(m) => m,
            GuardError::Invalid { message, .. } => message,
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            GuardError::NotReadOnlySelect(_) => PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            GuardError::Forbidden(_) => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            GuardError::Invalid { sqlstate, .. } => *sqlstate,
        }
    }

    /// Raise as an ERROR with [`GuardError::sqlstate`]; never returns.
    pub fn raise(self) -> ! {
        let hint = match &self {
            GuardError::NotReadOnlySelect(_) => "only one read-only SELECT (or WITH … SELECT) statement may run",
            GuardError::Forbidden(_) => "the statement may read only the tables of the tenant's catalog and call only allowed built-in functions",
            GuardError::Invalid { .. } => "the statement does not parse or refers to something that does not exist",
        };
        ErrorReport::new(self.sqlstate(), self.message().to_string(), "pg_dbrag")
            .set_hint(hint)
            .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl std::fmt::Display for GuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<GuardError> for DbragError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Forbidden(m) => DbragError::new(Kind::Forbidden, m),
            GuardError::NotReadOnlySelect(m) => DbragError::new(Kind::RefusedSql, m),
            GuardError::Invalid { message, .. } => DbragError::new(Kind::RefusedSql, message),
        }
    }
}

/// A statement that passed the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedStatement {
    /// The statement text, trimmed, without trailing semicolons. Comments are
    /// kept: embed it in a larger statement only on lines of its own.
    pub sql: String,
    /// Relations read (local only), sorted.
    pub relations: Vec<pg_sys::Oid>,
    /// Tables read as (schema, table), sorted.
    pub tables: Vec<(String, String)>,
    /// Names of the functions called (operators as their functions), sorted.
    pub functions: Vec<String>,
}

// ---------------------------------------------------------------------------
// Shared plumbing
// ---------------------------------------------------------------------------

/// The five-character SQLSTATE of a packed error code.
fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let v = code as i32;
    (0..5)
        .map(|i| char::from((((v >> (6 * i)) & 0x3F) as u8) + b'0'))
        .collect()
}

/// Errors that are not about the statement (a cancel, out of memory, an
/// internal failure) and must reach the caller as they are.
pub fn must_rethrow(code: PgSqlErrorCode) -> bool {
    let s = sqlstate_text(code);
    matches!(&s[..2], "57" | "53" | "58" | "XX" | "40" | "25")
}

/// Run `f` inside an internal subtransaction ([`crate::pg::subxact::run`]). A
/// PostgreSQL error raised by `f` becomes [`GuardError::Invalid`], unless
/// [`must_rethrow`] says otherwise.
fn guarded<R>(f: impl FnOnce() -> Result<R, GuardError>) -> Result<R, GuardError> {
    match crate::pg::subxact::run(f) {
        Ok(result) => result,
        Err(CaughtError::PostgresError(report)) | Err(CaughtError::ErrorReport(report))
            if !must_rethrow(report.sql_error_code()) =>
        {
            Err(GuardError::Invalid {
                sqlstate: report.sql_error_code(),
                message: report.message().to_string(),
            })
        }
        Err(other) => other.rethrow(),
    }
}

/// Parse `text` and return its single statement, or refuse.
///
/// # Safety
/// Inside [`guarded`]; the tree lives in the current memory context.
unsafe fn single_select(text: &CStr) -> Result<*mut pg_sys::RawStmt, GuardError> {
    let list = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
        text.as_ptr(),
        pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
    ));
    match list.len() {
        0 => {
            return Err(GuardError::NotReadOnlySelect(
                "the statement is empty".into(),
            ))
        }
        1 => {}
        n => {
            return Err(GuardError::NotReadOnlySelect(format!(
                "exactly one statement may run, this text holds {n}"
            )))
        }
    }
    let raw = list
        .head()
        .ok_or_else(|| GuardError::NotReadOnlySelect("the statement is empty".into()))?;
    let stmt = (*raw).stmt;
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
        let name = if stmt.is_null() {
            "an empty statement".to_string()
        } else {
            let p = pg_sys::CreateCommandName(stmt);
            if p.is_null() {
                "another statement".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        return Err(GuardError::NotReadOnlySelect(format!(
            "only a SELECT statement may run, not {name}"
        )));
    }
    if !(*(stmt as *mut pg_sys::SelectStmt)).intoClause.is_null() {
        return Err(GuardError::NotReadOnlySelect(
            "SELECT … INTO creates a table; only a plain SELECT may run".into(),
        ));
    }
    Ok(raw)
}

fn statement_text(sql: &str) -> Result<(String, CString), GuardError> {
    let text = sqlguard::trim_statement(sql).to_string();
    if text.is_empty() {
        return Err(GuardError::NotReadOnlySelect(
            "the statement is empty".into(),
        ));
    }
    let c = CString::new(text.clone()).map_err(|_| GuardError::Invalid {
        sqlstate: PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        message: "the statement contains a NUL character".into(),
    })?;
    Ok((text, c))
}

/// # Safety
/// `p` is NULL or a valid C string.
unsafe fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// The names in a list of `String` nodes (qualified names).
///
/// # Safety
/// `list` is NIL or a list of `String` nodes.
unsafe fn name_list(list: *mut pg_sys::List) -> Vec<String> {
    PgList::<pg_sys::Node>::from_pg(list)
        .iter_ptr()
        .map(|n| {
            if !n.is_null() && (*n).type_ == pg_sys::NodeTag::T_String {
                cstr((*(n as *mut pg_sys::String)).sval).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Local: the analyzed Query
// ---------------------------------------------------------------------------

struct LocalWalk<'a> {
    allowed: &'a HashSet<pg_sys::Oid>,
    refusal: Option<GuardError>,
    /// A panic (a PostgreSQL error caught by a pg_sys call) parked by a
    /// callback, resumed once the C walker has returned.
    parked: Option<Box<dyn Any + Send>>,
    relations: BTreeSet<u32>,
    functions: BTreeSet<String>,
}

/// Check a statement for a `local` connection. `allowed` holds the relations
/// the tenant may read (the tables of its catalog for the active connection).
/// Run it under the `search_path` the statement will run with, in the same
/// transaction.
pub fn check_local(
    sql: &str,
    allowed: &HashSet<pg_sys::Oid>,
) -> Result<GuardedStatement, GuardError> {
    let (text, ctext) = statement_text(sql)?;
    let (relations, functions) = guarded(|| unsafe {
        let raw = single_select(&ctext)?;
        let query = pg_sys::parse_analyze_fixedparams(
            raw,
            ctext.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
        );
        let mut walk = LocalWalk {
            allowed,
            refusal: None,
            parked: None,
            relations: BTreeSet::new(),
            functions: BTreeSet::new(),
        };
        walk_local(
            query as *mut pg_sys::Node,
            &mut walk as *mut LocalWalk as *mut c_void,
        );
        if let Some(payload) = walk.parked.take() {
            std::panic::resume_unwind(payload);
        }
        if let Some(e) = walk.refusal {
            return Err(e);
        }
        Ok((walk.relations, walk.functions))
    })?;
    let relations: Vec<pg_sys::Oid> = relations.into_iter().map(pg_sys::Oid::from).collect();
    let mut tables: Vec<(String, String)> = relations.iter().map(|&r| relation_name(r)).collect();
    tables.sort();
    Ok(GuardedStatement {
        sql: text,
        relations,
        tables,
        functions: functions.into_iter().collect(),
    })
}

/// The oids of the (schema, table) pairs that exist here, for [`check_local`]'s
/// allowed set. Names are exact (as stored in the catalog, not case-folded);
/// pairs that do not resolve are skipped. Looks names up without permission
/// checks or locks, as a catalog read does.
pub fn relation_oids<'a>(
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HashSet<pg_sys::Oid> {
    let mut out = HashSet::new();
    for (schema, table) in tables {
        let (Ok(schema), Ok(table)) = (CString::new(schema), CString::new(table)) else {
            continue;
        };
        // SAFETY: syscache lookups with missing_ok; InvalidOid when absent.
        unsafe {
            let nsp = pg_sys::get_namespace_oid(schema.as_ptr(), true);
            if nsp == pg_sys::InvalidOid {
                continue;
            }
            let rel = pg_sys::get_relname_relid(table.as_ptr(), nsp);
            if rel != pg_sys::InvalidOid {
                out.insert(rel);
            }
        }
    }
    out
}

fn relation_name(rel: pg_sys::Oid) -> (String, String) {
    // SAFETY: syscache lookups; NULL (a dropped relation) reads as "?".
    unsafe {
        let schema = cstr(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(rel)))
            .unwrap_or_else(|| "?".into());
        let name = cstr(pg_sys::get_rel_name(rel)).unwrap_or_else(|| u32::from(rel).to_string());
        (schema, name)
    }
}

/// One `Query` level: a plain read.
///
/// # Safety
/// `q` is a valid analyzed Query.
unsafe fn check_query(q: *mut pg_sys::Query) -> Result<(), GuardError> {
    let q = &*q;
    if !q.utilityStmt.is_null() || q.commandType == pg_sys::CmdType::CMD_UTILITY {
        return Err(GuardError::NotReadOnlySelect(
            "only a SELECT statement may run, not a utility command".into(),
        ));
    }
    if q.commandType != pg_sys::CmdType::CMD_SELECT {
        return Err(GuardError::NotReadOnlySelect(
            "a WITH clause may not modify data (INSERT, UPDATE, DELETE)".into(),
        ));
    }
    if q.hasModifyingCTE {
        return Err(GuardError::NotReadOnlySelect(
            "a WITH clause may not modify data (INSERT, UPDATE, DELETE)".into(),
        ));
    }
    if !q.rowMarks.is_null() || q.hasForUpdate {
        return Err(GuardError::NotReadOnlySelect(
            "FOR UPDATE / FOR SHARE locks rows; only a plain read may run".into(),
        ));
    }
    Ok(())
}

/// # Safety
/// `rte` is a valid range-table entry.
unsafe fn check_rte(
    rte: *mut pg_sys::RangeTblEntry,
    walk: &mut LocalWalk,
) -> Result<(), GuardError> {
    let rte = &*rte;
    if rte.rtekind == pg_sys::RTEKind::RTE_RELATION {
        if !walk.allowed.contains(&rte.relid) {
            let (schema, name) = relation_name(rte.relid);
            let what = match rte.relkind as u8 {
                b'v' => "view",
                b'm' => "materialized view",
                b'S' => "sequence",
                b'f' => "foreign table",
                _ => "relation",
            };
            return Err(GuardError::Forbidden(format!(
                "{what} {schema}.{name} is not one of the tables this tenant may query"
            )));
        }
        walk.relations.insert(u32::from(rte.relid));
        if !rte.tablesample.is_null() {
            check_tablesample((*rte.tablesample).tsmhandler)?;
        }
    }
    Ok(())
}

/// # Safety
/// Syscache lookups only.
unsafe fn check_tablesample(handler: pg_sys::Oid) -> Result<(), GuardError> {
    let name = cstr(pg_sys::get_func_name(handler)).unwrap_or_default();
    let builtin =
        pg_sys::get_func_namespace(handler) == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE);
    if builtin && sqlguard::tablesample_method_allowed(&name) {
        Ok(())
    } else {
        Err(GuardError::Forbidden(format!(
            "TABLESAMPLE {name} is not allowed: only the built-in SYSTEM and BERNOULLI methods"
        )))
    }
}

/// # Safety
/// Syscache lookups only.
unsafe fn check_function(funcid: pg_sys::Oid) -> Result<String, GuardError> {
    let Some(name) = cstr(pg_sys::get_func_name(funcid)) else {
        return Err(GuardError::Forbidden(format!(
            "function {} does not exist",
            u32::from(funcid)
        )));
    };
    let nsp = pg_sys::get_func_namespace(funcid);
    if nsp != pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) {
        let schema = cstr(pg_sys::get_namespace_name(nsp)).unwrap_or_else(|| "?".into());
        return Err(GuardError::Forbidden(format!(
            "function {schema}.{name} is not allowed: only built-in functions (schema pg_catalog) may be called"
        )));
    }
    if let Some(why) = sqlguard::denied_function(&name) {
        return Err(GuardError::Forbidden(format!(
            "function {name} is not allowed: {why}"
        )));
    }
    if pg_sys::func_volatile(funcid) as u8 == pg_sys::PROVOLATILE_VOLATILE {
        return Err(GuardError::Forbidden(format!(
            "function {name} is not allowed: it is volatile (it may change state or give another result on every call)"
        )));
    }
    Ok(name)
}

/// Run one step of a walk called back from C. A panic (a PostgreSQL error
/// that a pg_sys call inside already caught and flushed, or a Rust panic) is
/// handed to `park` and the walk stops, so nothing unwinds or longjmps
/// through PostgreSQL's walker frames; the Rust code that started the walk
/// resumes it inside the guard's subtransaction. (With `#[pg_guard]`, an
/// error at depth N would be re-raised N times, its detail growing each time.)
///
/// # Safety
/// `park` stores into the walk's context, valid for the call.
unsafe fn from_c(step: impl FnOnce() -> bool, park: impl FnOnce(Box<dyn Any + Send>)) -> bool {
    match std::panic::catch_unwind(AssertUnwindSafe(step)) {
        Ok(stop) => stop,
        Err(payload) => {
            park(payload);
            true
        }
    }
}

unsafe extern "C-unwind" fn function_checker(funcid: pg_sys::Oid, ctx: *mut c_void) -> bool {
    let walk = ctx as *mut LocalWalk;
    from_c(
        || {
            let walk = &mut *walk;
            match check_function(funcid) {
                Ok(name) => {
                    walk.functions.insert(name);
                    false
                }
                Err(e) => {
                    walk.refusal = Some(e);
                    true
                }
            }
        },
        |p| (*walk).parked = Some(p),
    )
}

/// Whether the stack is within 64 kB of `max_stack_depth`. The walkers stop
/// there with a refusal instead of letting PostgreSQL's own stack check raise
/// an ERROR deep inside a chain of callbacks.
#[inline(never)]
fn near_stack_limit() -> bool {
    let probe = std::mem::MaybeUninit::<[u8; 64 * 1024]>::uninit();
    std::hint::black_box(&probe);
    // SAFETY: reads the stack pointer against max_stack_depth; never raises.
    unsafe { pg_sys::stack_is_too_deep() }
}

fn too_deep() -> GuardError {
    GuardError::Invalid {
        sqlstate: PgSqlErrorCode::ERRCODE_STATEMENT_TOO_COMPLEX,
        message: "the statement is nested too deeply".into(),
    }
}

/// The callback PostgreSQL's walkers call (see [`from_c`]); Rust code calls
/// [`walk_local`] directly.
unsafe extern "C-unwind" fn local_walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    from_c(
        || walk_local(node, ctx),
        |p| (*(ctx as *mut LocalWalk)).parked = Some(p),
    )
}

/// # Safety
/// `node` is NULL or a node of an analyzed Query; `ctx` points to a [`LocalWalk`].
unsafe fn walk_local(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let walk = &mut *(ctx as *mut LocalWalk);
    if near_stack_limit() {
        walk.refusal = Some(too_deep());
        return true;
    }
    let fail = |walk: &mut LocalWalk, e: GuardError| {
        walk.refusal = Some(e);
        true
    };
    match (*node).type_ {
        pg_sys::NodeTag::T_Query => {
            let q = node as *mut pg_sys::Query;
            if let Err(e) = check_query(q) {
                return fail(walk, e);
            }
            return pg_sys::query_tree_walker(
                q,
                Some(local_walker),
                ctx,
                pg_sys::QTW_EXAMINE_RTES_BEFORE as i32,
            );
        }
        pg_sys::NodeTag::T_RangeTblEntry => {
            // Seen before its contents (QTW_EXAMINE_RTES_BEFORE); the walker
            // then descends into its subquery, functions and values itself.
            return match check_rte(node as *mut pg_sys::RangeTblEntry, walk) {
                Ok(()) => false,
                Err(e) => fail(walk, e),
            };
        }
        pg_sys::NodeTag::T_TableSampleClause => {
            if let Err(e) =
                check_tablesample((*(node as *mut pg_sys::TableSampleClause)).tsmhandler)
            {
                return fail(walk, e);
            }
        }
        pg_sys::NodeTag::T_CoerceToDomain => {
            return fail(
                walk,
                GuardError::Forbidden(
                    "casts to domain types are not allowed (a domain's CHECK constraint may call any function); cast to its base type".into(),
                ),
            );
        }
        _ => {}
    }
    if pg_sys::check_functions_in_node(node, Some(function_checker), ctx) {
        return true;
    }
    pg_sys::expression_tree_walker(node, Some(local_walker), ctx)
}

// ---------------------------------------------------------------------------
// Remote: the raw parse tree
// ---------------------------------------------------------------------------

struct RemoteWalk<'a> {
    allowed: &'a HashSet<(String, String)>,
    default_schema: &'a str,
    /// CTE names visible at the current point, innermost WITH last.
    scopes: Vec<Vec<String>>,
    refusal: Option<GuardError>,
    parked: Option<Box<dyn Any + Send>>,
    tables: BTreeSet<(String, String)>,
    functions: BTreeSet<String>,
}

/// Check a statement for a remote PostgreSQL connection, whose tables do not
/// exist here. `allowed_tables` holds (schema, table) of the tenant's catalog
/// for the connection; unqualified names resolve against `default_schema`.
///
/// The statement must then run on the remote server with `search_path` set
/// to `default_schema` alone (pg_catalog is searched first implicitly, so
/// unqualified functions are the built-ins), in a read-only transaction.
pub fn check_remote(
    sql: &str,
    allowed_tables: &HashSet<(String, String)>,
    default_schema: &str,
) -> Result<GuardedStatement, GuardError> {
    let (text, ctext) = statement_text(sql)?;
    let (tables, functions) = guarded(|| unsafe {
        let raw = single_select(&ctext)?;
        let mut walk = RemoteWalk {
            allowed: allowed_tables,
            default_schema,
            scopes: Vec::new(),
            refusal: None,
            parked: None,
            tables: BTreeSet::new(),
            functions: BTreeSet::new(),
        };
        walk_remote((*raw).stmt, &mut walk as *mut RemoteWalk as *mut c_void);
        if let Some(payload) = walk.parked.take() {
            std::panic::resume_unwind(payload);
        }
        match walk.refusal {
            Some(e) => Err(e),
            None => Ok((walk.tables, walk.functions)),
        }
    })?;
    Ok(GuardedStatement {
        sql: text,
        relations: Vec::new(),
        tables: tables.into_iter().collect(),
        functions: functions.into_iter().collect(),
    })
}

fn check_remote_relation(rv: &pg_sys::RangeVar, walk: &mut RemoteWalk) -> Result<(), GuardError> {
    // SAFETY: names of a parsed RangeVar are NULL or valid strings.
    let (catalog, schema, name) =
        unsafe { (cstr(rv.catalogname), cstr(rv.schemaname), cstr(rv.relname)) };
    let name = name.unwrap_or_default();
    if catalog.is_some() {
        return Err(GuardError::Forbidden(format!(
            "relation {name}: three-part names (database.schema.table) are not allowed"
        )));
    }
    let schema = match schema {
        Some(s) => s,
        None => {
            if walk.scopes.iter().any(|scope| scope.contains(&name)) {
                return Ok(()); // a CTE of an enclosing WITH, not a relation
            }
            if name.starts_with("pg_") {
                return Err(GuardError::Forbidden(format!(
                    "relation {name} is not allowed: an unqualified pg_* name means the system catalog; qualify a table of that name with its schema"
                )));
            }
            walk.default_schema.to_string()
        }
    };
    let key = (schema, name);
    if !walk.allowed.contains(&key) {
        return Err(GuardError::Forbidden(format!(
            "relation {}.{} is not one of the tables this tenant may query",
            key.0, key.1
        )));
    }
    walk.tables.insert(key);
    Ok(())
}

/// A qualified name is allowed only in `pg_catalog`; returns the last part.
fn builtin_name(parts: &[String], what: &str) -> Result<String, GuardError> {
    match parts {
        [name] => Ok(name.clone()),
        [schema, name] if schema == "pg_catalog" => Ok(name.clone()),
        _ => Err(GuardError::Forbidden(format!(
            "{what} {} is not allowed: only built-ins may be used",
            parts.join(".")
        ))),
    }
}

/// # Safety
/// `node` is a valid raw parse node.
unsafe fn check_remote_node(
    node: *mut pg_sys::Node,
    walk: &mut RemoteWalk,
) -> Result<(), GuardError> {
    use pg_sys::NodeTag::*;
    match (*node).type_ {
        T_RangeVar => check_remote_relation(&*(node as *mut pg_sys::RangeVar), walk)?,
        T_FuncCall => {
            let parts = name_list((*(node as *mut pg_sys::FuncCall)).funcname);
            let name = builtin_name(&parts, "function")?;
            if let Some(why) = sqlguard::denied_function(&name) {
                return Err(GuardError::Forbidden(format!(
                    "function {name} is not allowed: {why}"
                )));
            }
            if !sqlguard::remote_function_allowed(&name) {
                return Err(GuardError::Forbidden(format!(
                    "function {name} is not allowed: on a remote connection only the built-in functions of the guard's allow-list may be called"
                )));
            }
            walk.functions.insert(name);
        }
        T_A_Expr => {
            let e = &*(node as *mut pg_sys::A_Expr);
            use pg_sys::A_Expr_Kind::*;
            if matches!(e.kind, AEXPR_OP | AEXPR_OP_ANY | AEXPR_OP_ALL) {
                check_remote_operator(name_list(e.name))?;
            }
        }
        T_SubLink => {
            let s = &*(node as *mut pg_sys::SubLink);
            if !s.operName.is_null() {
                check_remote_operator(name_list(s.operName))?;
            }
        }
        T_SortBy => {
            let s = &*(node as *mut pg_sys::SortBy);
            if !s.useOp.is_null() {
                check_remote_operator(name_list(s.useOp))?;
            }
        }
        T_TypeName => {
            let t = &*(node as *mut pg_sys::TypeName);
            let parts = name_list(t.names);
            let name = builtin_name(&parts, "type")?;
            if t.pct_type || !sqlguard::remote_type_allowed(&name) {
                return Err(GuardError::Forbidden(format!(
                    "type {name} is not allowed on a remote connection: use a built-in scalar type"
                )));
            }
        }
        T_RangeTableSample => {
            let parts = name_list((*(node as *mut pg_sys::RangeTableSample)).method);
            let name = builtin_name(&parts, "TABLESAMPLE method")?;
            if !sqlguard::tablesample_method_allowed(&name) {
                return Err(GuardError::Forbidden(format!(
                    "TABLESAMPLE {name} is not allowed: only the built-in SYSTEM and BERNOULLI methods"
                )));
            }
        }
        T_ParamRef => {
            return Err(GuardError::Invalid {
                sqlstate: PgSqlErrorCode::ERRCODE_UNDEFINED_PARAMETER,
                message: "the statement uses a parameter ($n); write the value into it".into(),
            })
        }
        T_InsertStmt | T_UpdateStmt | T_DeleteStmt | T_MergeStmt => {
            return Err(GuardError::NotReadOnlySelect(
                "a WITH clause may not modify data (INSERT, UPDATE, DELETE, MERGE)".into(),
            ))
        }
        T_IntoClause => {
            return Err(GuardError::NotReadOnlySelect(
                "SELECT … INTO creates a table; only a plain SELECT may run".into(),
            ))
        }
        T_LockingClause => {
            return Err(GuardError::NotReadOnlySelect(
                "FOR UPDATE / FOR SHARE locks rows; only a plain read may run".into(),
            ))
        }
        _ => {}
    }
    Ok(())
}

fn check_remote_operator(parts: Vec<String>) -> Result<(), GuardError> {
    let name = builtin_name(&parts, "operator")?;
    if sqlguard::remote_operator_allowed(&name) {
        Ok(())
    } else {
        Err(GuardError::Forbidden(format!(
            "operator {name} is not allowed on a remote connection: only the built-in operators of the guard's allow-list"
        )))
    }
}

/// The callback `raw_expression_tree_walker` calls (see [`from_c`]); Rust
/// calls [`walk_remote`] directly.
unsafe extern "C-unwind" fn remote_walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    from_c(
        || walk_remote(node, ctx),
        |p| (*(ctx as *mut RemoteWalk)).parked = Some(p),
    )
}

/// # Safety
/// `node` is NULL or a raw parse node; `ctx` points to a [`RemoteWalk`].
unsafe fn walk_remote(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    let walk = &mut *(ctx as *mut RemoteWalk);
    if near_stack_limit() {
        walk.refusal = Some(too_deep());
        return true;
    }
    if let Err(e) = check_remote_node(node, walk) {
        walk.refusal = Some(e);
        return true;
    }
    if (*node).type_ != pg_sys::NodeTag::T_SelectStmt {
        return pg_sys::raw_expression_tree_walker(node, Some(remote_walker), ctx);
    }

    let stmt = node as *mut pg_sys::SelectStmt;
    if !(*stmt).intoClause.is_null() {
        walk.refusal = Some(GuardError::NotReadOnlySelect(
            "SELECT … INTO creates a table; only a plain SELECT may run".into(),
        ));
        return true;
    }
    if !(*stmt).lockingClause.is_null() {
        walk.refusal = Some(GuardError::NotReadOnlySelect(
            "FOR UPDATE / FOR SHARE locks rows; only a plain read may run".into(),
        ));
        return true;
    }
    let with = (*stmt).withClause;
    if with.is_null() {
        return pg_sys::raw_expression_tree_walker(node, Some(remote_walker), ctx);
    }

    // CTE scoping as PostgreSQL resolves it: in a plain WITH each query sees
    // the CTEs before it; in WITH RECURSIVE every CTE sees all of them. The
    // statement's body sees all. A name outside its scope is a relation.
    let ctes: Vec<*mut pg_sys::CommonTableExpr> =
        PgList::<pg_sys::CommonTableExpr>::from_pg((*with).ctes)
            .iter_ptr()
            .collect();
    let names: Vec<String> = ctes
        .iter()
        .map(|c| cstr((**c).ctename).unwrap_or_default())
        .collect();
    walk.scopes.push(if (*with).recursive {
        names.clone()
    } else {
        Vec::new()
    });
    for (cte, name) in ctes.iter().zip(&names) {
        if walk_remote((**cte).ctequery, ctx) {
            walk.scopes.pop();
            return true;
        }
        if let Some(scope) = walk.scopes.last_mut() {
            if !scope.contains(name) {
                scope.push(name.clone());
            }
        }
    }
    // Walk the rest of the statement without walking the WITH clause again.
    (*stmt).withClause = std::ptr::null_mut();
    let stop = pg_sys::raw_expression_tree_walker(node, Some(remote_walker), ctx);
    (*stmt).withClause = with;
    walk.scopes.pop();
    stop
}

// ---------------------------------------------------------------------------
// SQL entry points for tests and diagnostics (superuser-only)
// ---------------------------------------------------------------------------

/// `dbrag._guard_check(sql, allowed, raise_error)`: 'ok', or the guard's
/// error (42601 not a single read-only SELECT, 42501 a forbidden relation or
/// function, the original SQLSTATE for SQL that does not parse or analyze),
/// raised, or returned as `'SQLSTATE: message'` when `raise_error` is false.
/// `allowed` is `oid[]`; a `regclass[]` is accepted by implicit cast.
#[pg_extern(volatile, parallel_unsafe, name = "_guard_check")]
fn guard_check_sql(
    sql: Option<&str>,
    allowed: Option<Vec<Option<pg_sys::Oid>>>,
    raise_error: default!(Option<bool>, true),
) -> String {
    let sql = crate::error::bounded(required(sql, "sql"), "sql", crate::error::limits::SQL);
    let allowed: HashSet<pg_sys::Oid> = allowed.unwrap_or_default().into_iter().flatten().collect();
    match check_local(sql, &allowed) {
        Ok(_) => "ok".into(),
        Err(e) if raise_error == Some(false) => {
            format!("{}: {}", sqlstate_text(e.sqlstate()), e.message())
        }
        Err(e) => e.raise(),
    }
}

/// `dbrag._guard_check_remote(sql, allowed 'schema.table'[], default_schema)`.
#[pg_extern(volatile, parallel_unsafe, name = "_guard_check_remote")]
fn guard_check_remote_sql(
    sql: Option<&str>,
    allowed: Option<Vec<Option<String>>>,
    default_schema: default!(Option<&str>, "'public'"),
) -> &'static str {
    let sql = crate::error::bounded(required(sql, "sql"), "sql", crate::error::limits::SQL);
    let default_schema = default_schema.unwrap_or("public");
    let mut set = HashSet::new();
    for name in allowed.unwrap_or_default().into_iter().flatten() {
        match name.split_once('.') {
            Some((s, t)) => set.insert((s.to_string(), t.to_string())),
            None => set.insert((default_schema.to_string(), name)),
        };
    }
    match check_remote(sql, &set, default_schema) {
        Ok(_) => "ok",
        Err(e) => e.raise(),
    }
}

pgrx::extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION dbrag._guard_check(text, oid[], boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._guard_check_remote(text, text[], text) FROM PUBLIC;
"#,
    name = "guard_grants",
    requires = [guard_check_sql, guard_check_remote_sql]
);
