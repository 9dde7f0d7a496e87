//! PostgreSQL plumbing, below every feature module: privileged SQL
//! (`privileged`), internal subtransactions (`subxact`), deadlines and the
//! memory limit (`timer`), the data-plane child process (`helper`), jsonb
//! text (`jsonb`), the security-restricted flags (`restricted`) and
//! Citus's settings (`citus`). Nothing
//! here imports a feature module (scripts/check_layers.py).

pub mod citus;
pub mod helper;
pub mod jsonb;
pub mod privileged;
pub mod restricted;
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
