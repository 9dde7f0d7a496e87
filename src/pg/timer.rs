//! A deadline and a memory bound of the extension's own for work inside
//! one statement.
//!
//! `statement_timeout` is armed when the top-level statement starts, so a
//! function cannot bound the statement it runs by setting it (SECURITY.md). This
//! arms a user timeout that cancels the query the way statement_timeout
//! does; [`Deadline::fired`] tells the caller that the cancel was ours, so it
//! can say "took longer than N ms". Dropping the guard disarms it, on every
//! path out, unwinding included.
//!
//! The memory bound (`dbrag.query_memory_limit`): when armed, a periodic
//! timeout reads the process's private data size from /proc/self/statm
//! every 25 ms, in the SIGALRM handler with nothing but open/read/close on
//! a stack buffer (async-signal-safe, no allocation), and cancels the query
//! the way the deadline does once the backend has grown by more than the
//! limit since the watch was armed. [`MemoryWatch::exceeded`] tells the
//! caller the cancel was ours, so it can end the statement with 53200 and
//! the backend lives on — before the kernel's OOM killer would end it and
//! take every session down with it (crash recovery).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

use pgrx::pg_sys;

// timeout.h is not in pgrx's bindings; these are its PostgreSQL 15 entries.
const USER_TIMEOUT: i32 = 12;
extern "C-unwind" {
    fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C-unwind" fn()>) -> i32;
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
    fn enable_timeout_every(id: i32, fin_time: pg_sys::TimestampTz, delay_ms: i32);
}

static TIMEOUT_ID: AtomicI32 = AtomicI32::new(-1);
static FIRED: AtomicBool = AtomicBool::new(false);

/// In the SIGALRM handler: say the cancel is ours (`fired`) and request it,
/// with flags only, as StatementCancelHandler does.
unsafe fn cancel_from_handler(fired: &AtomicBool) {
    fired.store(true, Ordering::SeqCst);
    // SAFETY: plain stores and SetLatch, which is async-signal-safe.
    unsafe {
        pg_sys::InterruptPending = 1;
        pg_sys::QueryCancelPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// The user timeout of `handler`, registered on first use in this backend.
fn registered(id: &AtomicI32, handler: unsafe extern "C-unwind" fn()) -> i32 {
    let known = id.load(Ordering::Relaxed);
    if known >= 0 {
        return known;
    }
    // SAFETY: registering a handler once per backend, outside signal context.
    let new = unsafe { RegisterTimeout(USER_TIMEOUT, Some(handler)) };
    id.store(new, Ordering::Relaxed);
    new
}

/// Runs in the SIGALRM handler.
unsafe extern "C-unwind" fn on_deadline() {
    // SAFETY: signal context, which cancel_from_handler is written for.
    unsafe { cancel_from_handler(&FIRED) }
}

fn timeout_id() -> i32 {
    registered(&TIMEOUT_ID, on_deadline)
}

/// An armed deadline; disarmed when dropped. It also holds a memory watch.
pub struct Deadline {
    id: i32,
    memory: MemoryWatch,
}

impl Deadline {
    pub fn arm(ms: i32) -> Deadline {
        let id = timeout_id();
        FIRED.store(false, Ordering::SeqCst);
        let memory = MemoryWatch::arm();
        // SAFETY: a registered timeout id.
        unsafe { enable_timeout_after(id, ms.max(1)) };
        Deadline { id, memory }
    }

    /// Whether the cancel that interrupted the work was this deadline's.
    pub fn fired(&self) -> bool {
        FIRED.load(Ordering::SeqCst)
    }

    /// Whether the cancel was the memory bound's.
    pub fn memory_exceeded(&self) -> bool {
        self.memory.exceeded()
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

// ---------------------------------------------------------------- memory

/// How often the memory watch looks, in milliseconds.
const MEMORY_CHECK_MS: i32 = 25;

static MEM_TIMEOUT_ID: AtomicI32 = AtomicI32::new(-1);
static MEM_ARMED: AtomicBool = AtomicBool::new(false);
static MEM_FIRED: AtomicBool = AtomicBool::new(false);
/// Private data size, in pages, when the watch was armed.
static MEM_BASE_PAGES: AtomicI64 = AtomicI64::new(0);
/// Pages the backend may grow by.
static MEM_LIMIT_PAGES: AtomicI64 = AtomicI64::new(i64::MAX);

/// Field 6 of /proc/self/statm (private data + stack, in pages), read with
/// async-signal-safe calls only; -1 when it cannot be read.
fn data_pages() -> i64 {
    let mut buf = [0u8; 256];
    // SAFETY: open/read/close on a stack buffer: async-signal-safe.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return -1;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return -1;
    }
    statm_data(&buf[..n as usize])
}

/// The sixth number of a statm line, or -1.
pub fn statm_data(text: &[u8]) -> i64 {
    let mut field = 0;
    let mut value: i64 = 0;
    let mut in_number = false;
    for &b in text {
        if b.is_ascii_digit() {
            if !in_number {
                in_number = true;
                field += 1;
                value = 0;
            }
            value = value.saturating_mul(10).saturating_add((b - b'0') as i64);
        } else {
            if in_number && field == 6 {
                return value;
            }
            in_number = false;
        }
    }
    if in_number && field == 6 {
        value
    } else {
        -1
    }
}

/// Runs in the SIGALRM handler every MEMORY_CHECK_MS while armed.
unsafe extern "C-unwind" fn on_memory_check() {
    if !MEM_ARMED.load(Ordering::SeqCst) || MEM_FIRED.load(Ordering::SeqCst) {
        return;
    }
    let now = data_pages();
    if now < 0 {
        return;
    }
    let grown = now - MEM_BASE_PAGES.load(Ordering::SeqCst);
    if grown > MEM_LIMIT_PAGES.load(Ordering::SeqCst) {
        // SAFETY: signal context, which cancel_from_handler is written for.
        unsafe { cancel_from_handler(&MEM_FIRED) }
    }
}

fn memory_timeout_id() -> i32 {
    registered(&MEM_TIMEOUT_ID, on_memory_check)
}

/// The memory bound in force while it lives; disarmed when dropped. A
/// watch armed inside another one leaves the outer one in charge.
pub struct MemoryWatch {
    outer: bool,
}

impl MemoryWatch {
    pub fn arm() -> MemoryWatch {
        if MEM_ARMED.load(Ordering::SeqCst) {
            return MemoryWatch { outer: false };
        }
        let base = data_pages();
        if base < 0 {
            return MemoryWatch { outer: false };
        }
        // SAFETY: sysconf is always callable.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
        let limit_mb = crate::gucs::QUERY_MEMORY_LIMIT_MB.get().max(1) as i64;
        MEM_BASE_PAGES.store(base, Ordering::SeqCst);
        MEM_LIMIT_PAGES.store(limit_mb * (1 << 20) / page, Ordering::SeqCst);
        MEM_FIRED.store(false, Ordering::SeqCst);
        MEM_ARMED.store(true, Ordering::SeqCst);
        let id = memory_timeout_id();
        // SAFETY: a registered timeout id; PostgreSQL re-arms it every
        // MEMORY_CHECK_MS until disabled.
        unsafe {
            let first = pg_sys::GetCurrentTimestamp() + MEMORY_CHECK_MS as i64 * 1000;
            enable_timeout_every(id, first, MEMORY_CHECK_MS);
        }
        MemoryWatch { outer: true }
    }

    /// Whether the cancel that interrupted the work was the memory bound's.
    pub fn exceeded(&self) -> bool {
        MEM_FIRED.load(Ordering::SeqCst)
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        MEM_ARMED.store(false, Ordering::SeqCst);
        // SAFETY: disarming a registered timeout is always allowed; a cancel
        // of ours still pending after the work must not hit the caller's
        // next step.
        unsafe {
            disable_timeout(memory_timeout_id(), false);
            if MEM_FIRED.swap(false, Ordering::SeqCst) {
                pg_sys::QueryCancelPending = 0;
            }
        }
    }
}

/// The ERROR for an exceeded bound (SQLSTATE 53200).
pub fn memory_error() -> crate::error::DbragError {
    crate::error::DbragError::new(
        crate::error::Kind::OutOfMemory,
        format!(
            "the statement used more than dbrag.query_memory_limit ({} MB) and was stopped",
            crate::gucs::QUERY_MEMORY_LIMIT_MB.get()
        ),
    )
    .hint("ask a narrower question (fewer or smaller values), or have an operator raise dbrag.query_memory_limit")
}

/// Run `f` under the memory bound; a cancel of the bound's becomes the
/// 53200 ERROR, any other error goes on as it was.
pub fn within_memory_limit<R>(f: impl FnOnce() -> R) -> R {
    let watch = MemoryWatch::arm();
    let f = std::panic::AssertUnwindSafe(f);
    let out = pgrx::PgTryBuilder::new(move || {
        // The whole wrapper is captured, not its field (edition 2021
        // would capture only the field, which is not UnwindSafe).
        let f = f;
        (f.0)()
    })
    .catch_others(|e| {
        if MEM_FIRED.swap(false, Ordering::SeqCst) {
            memory_error().raise()
        }
        e.rethrow()
    })
    .execute();
    drop(watch);
    out
}
