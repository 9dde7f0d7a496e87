//! Catching a PostgreSQL error the way a PL/pgSQL exception block does: the
//! work runs in an internal subtransaction that is kept when it succeeds and
//! rolled back when it fails or raises, leaving the outer transaction usable.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// Run `f` in an internal subtransaction with a scratch memory context.
/// Kept (its locks held to the end of the transaction) when `f` returns Ok;
/// rolled back when it returns Err or raises. A raised error comes back as
/// the outer `Err` for the caller to inspect or rethrow.
pub fn run<R, E>(f: impl FnOnce() -> Result<R, E>) -> Result<Result<R, E>, CaughtError> {
    // SAFETY: the PL/pgSQL exception-block protocol: remember the caller's
    // memory context and resource owner, begin, work, then release or roll
    // back exactly once and restore both.
    unsafe {
        let oldcxt = pg_sys::CurrentMemoryContext;
        let oldowner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let scratch = pg_sys::AllocSetContextCreateInternal(
            oldcxt,
            c"dbrag subtransaction".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        pg_sys::MemoryContextSwitchTo(scratch);

        let outcome: Result<Result<R, E>, CaughtError> =
            PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
                .catch_others(Err)
                .execute();

        pg_sys::MemoryContextSwitchTo(oldcxt);
        if matches!(outcome, Ok(Ok(_))) {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(oldcxt);
        pg_sys::CurrentResourceOwner = oldowner;
        pg_sys::MemoryContextDelete(scratch);
        outcome
    }
}

/// The SQLSTATE and message of a caught PostgreSQL error, None for a Rust panic.
pub fn report_of(e: &CaughtError) -> Option<(pgrx::PgSqlErrorCode, String)> {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
            Some((r.sql_error_code(), r.message().to_string()))
        }
        CaughtError::RustPanic { .. } => None,
    }
}
