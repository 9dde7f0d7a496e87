//! A deadline of the extension's own for work inside one statement.
//!
//! `statement_timeout` is armed when the top-level statement starts, so a
//! function cannot bound the statement it runs by setting it (SPEC §9). This
//! arms a user timeout that cancels the query the way statement_timeout
//! does; [`Deadline::fired`] tells the caller that the cancel was ours, so it
//! can say "took longer than N ms". Dropping the guard disarms it, on every
//! path out, unwinding included.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::pg_sys;

// timeout.h is not in pgrx's bindings; these are its PostgreSQL 15 entries.
const USER_TIMEOUT: i32 = 12;
extern "C-unwind" {
    fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C-unwind" fn()>) -> i32;
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
}

static TIMEOUT_ID: AtomicI32 = AtomicI32::new(-1);
static FIRED: AtomicBool = AtomicBool::new(false);

/// Runs in the SIGALRM handler: only flags, as StatementCancelHandler does.
unsafe extern "C-unwind" fn on_deadline() {
    FIRED.store(true, Ordering::SeqCst);
    pg_sys::InterruptPending = 1;
    pg_sys::QueryCancelPending = 1;
    pg_sys::SetLatch(pg_sys::MyLatch);
}

fn timeout_id() -> i32 {
    let id = TIMEOUT_ID.load(Ordering::Relaxed);
    if id >= 0 {
        return id;
    }
    // SAFETY: registering a handler once per backend, outside signal context.
    let id = unsafe { RegisterTimeout(USER_TIMEOUT, Some(on_deadline)) };
    TIMEOUT_ID.store(id, Ordering::Relaxed);
    id
}

/// An armed deadline; disarmed when dropped.
pub struct Deadline {
    id: i32,
}

impl Deadline {
    pub fn arm(ms: i32) -> Deadline {
        let id = timeout_id();
        FIRED.store(false, Ordering::SeqCst);
        // SAFETY: a registered timeout id.
        unsafe { enable_timeout_after(id, ms.max(1)) };
        Deadline { id }
    }

    /// Whether the cancel that interrupted the work was this deadline's.
    pub fn fired(&self) -> bool {
        FIRED.load(Ordering::SeqCst)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // SAFETY: disarming a registered timeout is always allowed. A deadline
        // that fired after the work had finished must not cancel the caller's
        // next step, so its pending cancel is withdrawn.
        unsafe {
            disable_timeout(self.id, false);
            if FIRED.swap(false, Ordering::SeqCst) {
                pg_sys::QueryCancelPending = 0;
            }
        }
    }
}
