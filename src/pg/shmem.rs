//! Shared-memory structs of the preloaded library (the audit queue, the
//! tenant budgets): one place chains PostgreSQL's shmem_request and
//! shmem_startup hooks and runs the documented protocol for each struct.
//! A module declares its struct as a static [`Segment`] and registers it
//! from its `init`, which `_PG_init` calls while preloading.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// One struct `T` in shared memory with a lock of its own (a named LWLock
/// tranche of one): `static X: Segment<T> = Segment::new(c"name", init);`,
/// then `X.register()` from `_PG_init`, `X.get()` to reach it and
/// `X.locked(f)` to work on it under its lock.
pub struct Segment<T: 'static> {
    /// Its ShmemIndex name, also the name of its lock's tranche.
    name: &'static CStr,
    /// Called once, in the postmaster, on the zeroed struct.
    init: unsafe fn(*mut T),
    ptr: AtomicPtr<Shared<T>>,
}

/// What shared memory holds for a segment: its lock, then the struct.
#[repr(C)]
struct Shared<T> {
    lock: *mut pg_sys::LWLock,
    value: T,
}

impl<T> Segment<T> {
    pub const fn new(name: &'static CStr, init: unsafe fn(*mut T)) -> Self {
        Segment {
            name,
            init,
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The struct; null when the library was not preloaded.
    pub fn get(&self) -> *mut T {
        let p = self.ptr.load(Ordering::Relaxed);
        if p.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: a non-null pointer is the attached struct.
        unsafe { &raw mut (*p).value }
    }

    /// Run `f` on the struct under its lock (exclusive). `f` must not raise.
    /// An internal error when the library was not preloaded: callers check
    /// `get().is_null()` first.
    pub fn locked<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let p = self.ptr.load(Ordering::Relaxed);
        if p.is_null() {
            pgrx::error!("{} is not in shared memory", self.name.to_string_lossy());
        }
        // SAFETY: the attached struct; the lock is held for the duration of
        // `f`, plain Rust that touches only the struct.
        unsafe {
            pg_sys::LWLockAcquire((*p).lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let r = f(&mut (*p).value);
            pg_sys::LWLockRelease((*p).lock);
            r
        }
    }

    /// Reserve the struct; does nothing unless the library is being
    /// preloaded (then `get` stays null).
    pub fn register(&'static self) {
        register(self);
    }
}

/// What the hooks need of a segment, whatever its struct.
trait Registered: Sync {
    fn name(&self) -> &'static CStr;
    fn size(&self) -> usize;
    /// # Safety
    /// `p` points to `size()` zeroed bytes of shared memory; `lock` is its lock.
    unsafe fn create(&self, p: *mut u8, lock: *mut pg_sys::LWLock);
    fn attach(&self, p: *mut u8);
}

impl<T> Registered for Segment<T> {
    fn name(&self) -> &'static CStr {
        self.name
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Shared<T>>()
    }
    unsafe fn create(&self, p: *mut u8, lock: *mut pg_sys::LWLock) {
        // SAFETY: as the caller promises.
        unsafe {
            let s = p.cast::<Shared<T>>();
            (*s).lock = lock;
            (self.init)(&raw mut (*s).value);
        }
    }
    fn attach(&self, p: *mut u8) {
        self.ptr.store(p.cast(), Ordering::Relaxed);
    }
}

static SEGMENTS: Mutex<Vec<&'static dyn Registered>> = Mutex::new(Vec::new());
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;

fn segments() -> Vec<&'static dyn Registered> {
    match SEGMENTS.lock() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn register(segment: &'static dyn Registered) {
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
            pg_sys::RequestAddinShmemSpace(s.size());
            pg_sys::RequestNamedLWLockTranche(s.name().as_ptr(), 1);
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
            let p = pg_sys::ShmemInitStruct(s.name().as_ptr(), s.size(), &mut found).cast::<u8>();
            if !found {
                std::ptr::write_bytes(p, 0, s.size());
                let lock = &raw mut (*pg_sys::GetNamedLWLockTranche(s.name().as_ptr())).lock;
                s.create(p, lock);
            }
            s.attach(p);
        }
        pg_sys::LWLockRelease(init_lock);
    }
}
