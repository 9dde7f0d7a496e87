//! PostgreSQL plumbing, below every feature module: privileged SQL
//! (`privileged`), internal subtransactions (`subxact`), deadlines and the
//! memory limit (`timer`), the data-plane child process (`helper`), jsonb
//! text (`jsonb`), the security-restricted flags (`restricted`) and
//! Citus's settings (`citus`), shared-memory segments (`shmem`); threads that never take a signal
//! ([`spawn_signal_free`]). Nothing
//! here imports a feature module (scripts/check_layers.py).

pub mod citus;
pub mod helper;
pub mod jsonb;
pub mod privileged;
pub mod restricted;
pub mod shmem;
pub mod subxact;
pub mod timer;

use pgrx::pg_sys;

/// Whether PostgreSQL has an interrupt waiting (a cancel, a timeout, a
/// termination). Only reads a flag: safe from inside a C callback, where
/// serving the interrupt (a longjmp) would not be.
pub fn interrupt_pending() -> bool {
    // SAFETY: a sig_atomic_t the signal handlers set; a volatile read.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 }
}

/// Start `f` on a new thread with every signal blocked, so that
/// PostgreSQL's signal handlers (cancel, timeouts, latches) run on the
/// backend's thread only. The thread must touch nothing of PostgreSQL's.
/// `stack` bytes of stack when given.
pub fn spawn_signal_free(
    name: &str,
    stack: Option<usize>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = std::thread::Builder::new().name(name.into());
    if let Some(bytes) = stack {
        builder = builder.stack_size(bytes);
    }
    // SAFETY: plain POSIX calls on local signal sets. The new thread
    // inherits the mask in force when it is created; the backend's mask is
    // restored right after the spawn, and a signal arriving meanwhile stays
    // pending until then.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let spawned = builder.spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned.map(|_| ())
    }
}
