//! Shared-memory structs of the preloaded library (the audit queue, the
//! tenant budgets): one place chains PostgreSQL's shmem_request and
//! shmem_startup hooks and runs the documented protocol for each struct.
//! A module describes its struct as a [`Segment`] and calls [`register`]
//! from its `init`, which `_PG_init` calls while preloading.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::Mutex;

/// One struct in shared memory, with a named LWLock tranche of one lock.
pub struct Segment {
    /// Its ShmemIndex name, also the name of its lock's tranche.
    pub name: &'static CStr,
    pub size: usize,
    /// Called once, in the postmaster, on the zeroed struct with its lock.
    pub init: unsafe fn(*mut u8, *mut pg_sys::LWLock),
    /// Called in every process with the struct's address.
    pub attach: unsafe fn(*mut u8),
}

static SEGMENTS: Mutex<Vec<&'static Segment>> = Mutex::new(Vec::new());
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;

fn segments() -> Vec<&'static Segment> {
    match SEGMENTS.lock() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Reserve `segment`; does nothing unless the library is being preloaded
/// (then the struct is never attached and its module reports it missing).
pub fn register(segment: &'static Segment) {
    // SAFETY: runs in the postmaster while preloading, single-threaded;
    // the hooks are chained once, by the first registration.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        let mut list = match SEGMENTS.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if list.is_empty() {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
            PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
            pg_sys::shmem_startup_hook = Some(shmem_startup);
        }
        list.push(segment);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: chained hook; runs in the postmaster while sizes are collected.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        for s in segments() {
            pg_sys::RequestAddinShmemSpace(s.size);
            pg_sys::RequestNamedLWLockTranche(s.name.as_ptr(), 1);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: the documented protocol for an add-in's shared memory: under
    // AddinShmemInitLock, find or create each struct and initialise it once.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        for s in segments() {
            let mut found = false;
            let p = pg_sys::ShmemInitStruct(s.name.as_ptr(), s.size, &mut found).cast::<u8>();
            if !found {
                std::ptr::write_bytes(p, 0, s.size);
                (s.init)(
                    p,
                    &raw mut (*pg_sys::GetNamedLWLockTranche(s.name.as_ptr())).lock,
                );
            }
            (s.attach)(p);
        }
        pg_sys::LWLockRelease(init_lock);
    }
}
