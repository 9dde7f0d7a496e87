//! The audit trail: security-relevant events in `control_plane.audit_log`.
//!
//! A refusal raises an ERROR, and an ERROR rolls back every row the same
//! transaction wrote. Refusals are exactly what an auditor must see, so they
//! are written by [`record_durable`]: the row is committed in a transaction of
//! its own (PostgreSQL has no autonomous transactions) by a background worker
//! while the backend waits, then the backend raises.
//!
//! One worker serves the whole server (SECURITY.md, "Refusals are audited
//! without exhausting the server"): backends put rows into a fixed queue in
//! shared memory and wait on a condition variable; the one audit writer
//! drains the queue in batches, one transaction per batch, each row in a
//! subtransaction of its own, and exits after a second without work. A flood
//! of refusals from any number of sessions takes one worker slot, never more.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::pg::privileged;

use crate::pg::shmem;

/// Events without a tenant of their own (a forged token names nobody we can
/// trust) are filed under the platform's own tenant.
pub const SYSTEM_TENANT: &str = "00000000-0000-0000-0000-000000000001";

/// Tables the extension appends to, with the columns it may set.
const DURABLE_TABLES: &[(&str, &[&str])] = &[
    (
        "audit_log",
        &[
            "tenant_id",
            "event",
            "login_role",
            "acting_role",
            "backend_pid",
            "detail",
        ],
    ),
    (
        "query_history",
        &[
            "tenant_id",
            "query_id",
            "connection_id",
            "login_role",
            "question",
            "generated_sql",
            "status",
            "error",
            "llm_ms",
            "execution_ms",
            "row_count",
            "prompt_tokens",
            "completion_tokens",
            "result_hash",
            "catalog_version",
            "acting_role",
            "model",
            "conversation_id",
            "explanation",
        ],
    ),
];

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: noerr lookup returns NULL for a dropped role.
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("{}", oid.to_u32())
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// The login role's name (what history and audit rows record).
pub fn login_role_name() -> String {
    role_name(privileged::session_user())
}

fn audit_row(event: &str, tenant: Option<&str>, detail: Value) -> Value {
    json!({
        "tenant_id": tenant.unwrap_or(SYSTEM_TENANT),
        "event": event,
        "login_role": role_name(privileged::session_user()),
        "acting_role": role_name(privileged::current_user()),
        "backend_pid": unsafe { pg_sys::MyProcPid },
        "detail": detail,
    })
}

/// Append an audit row inside the caller's transaction (kept if it commits).
pub fn record(event: &str, tenant: Option<&str>, detail: Value) {
    let row = audit_row(event, tenant, detail);
    insert_row("audit_log", &row);
}

/// Append an audit row that survives the ERROR the caller is about to raise.
pub fn record_durable(event: &str, tenant: Option<&str>, detail: Value) {
    let row = audit_row(event, tenant, detail);
    write_durable("audit_log", row);
}

/// Insert `row` (a jsonb object shaped like the table) into one of the
/// durable tables, as the extension. Unknown keys are ignored, missing ones
/// take the column default.
pub fn insert_row(table: &str, row: &Value) {
    let Some((_, allowed)) = DURABLE_TABLES.iter().find(|(t, _)| *t == table) else {
        return;
    };
    let Some(fields) = row.as_object() else {
        return;
    };
    // Only columns from the fixed list above are named; values are bound.
    let columns: Vec<&str> = allowed
        .iter()
        .copied()
        .filter(|c| fields.get(*c).is_some_and(|v| !v.is_null()))
        .collect();
    if columns.is_empty() {
        return;
    }
    let list = columns.join(", ");
    let sql = format!(
        "INSERT INTO control_plane.{table} ({list}) SELECT {list} FROM \
         pg_catalog.jsonb_populate_record(NULL::control_plane.{table}, $1)"
    );
    let arg = pgrx::JsonB(row.clone());
    privileged::as_extension(|| {
        if let Err(e) = Spi::run_with_args(&sql, &[DatumWithOid::from(arg)]) {
            pgrx::warning!("pg_dbrag could not write to {table}: {e}");
        }
    });
}

/// Commit `row` into `table` through the audit writer and wait for it.
/// The row is committed when this returns, unless the queue could not take
/// it within [`WAIT_LIMIT`]; then the event goes to the server log.
pub fn write_durable(table: &str, row: Value) {
    let payload = fit_payload(json!({"table": table, "row": row}));
    if QUEUE.get().is_null() {
        // Not preloaded: no queue in shared memory. The library warns about
        // that when it loads; a one-off worker keeps the row durable.
        write_durable_oneshot(&payload);
        return;
    }
    submit(&payload);
}

// ---------------------------------------------------------------------------
// The queue in shared memory
// ---------------------------------------------------------------------------

/// Slots in the queue: at most this many rows wait at once; further
/// writers wait for a free slot (up to [`WAIT_LIMIT`]).
const SLOTS: usize = 128;
/// Bytes of one queued row (the JSON text); longer text values are cut.
const SLOT_BYTES: usize = 8 * 1024;
/// How long a backend waits for its row to be committed.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// The writer exits after this long without work.
const IDLE_EXIT: Duration = Duration::from_secs(1);

const FREE: u32 = 0;
const READY: u32 = 1;
const TAKEN: u32 = 2;
const DONE: u32 = 3;
const FAILED: u32 = 4;

#[repr(C)]
struct Slot {
    state: u32,
    /// The writing backend gave up waiting: whoever finishes the slot frees it.
    abandoned: bool,
    db: pg_sys::Oid,
    ticket: u64,
    /// Pid of the writer that took it (TAKEN).
    taken_by: i32,
    len: u32,
    data: [u8; SLOT_BYTES],
}

#[repr(C)]
struct Queue {
    /// Signalled when a row is queued (the writer sleeps on it).
    work_cv: pg_sys::ConditionVariable,
    /// Signalled when rows are finished or slots are freed (backends sleep on it).
    done_cv: pg_sys::ConditionVariable,
    /// A writer has been launched and has not exited.
    running: bool,
    /// Its database, its launch generation, its pid (0 until it starts).
    db: pg_sys::Oid,
    generation: u64,
    pid: i32,
    next_ticket: u64,
    /// Counters, for `dbrag.audit_queue_status()`.
    written: u64,
    failed: u64,
    dropped: u64,
    batches: u64,
    launches: u64,
    slots: [Slot; SLOTS],
}

/// Reserved by [`init`]; null when the library was not preloaded.
static QUEUE: shmem::Segment<Queue> = shmem::Segment::new(c"pg_dbrag audit queue", |q| {
    // SAFETY: `q` is the zeroed queue, just created.
    unsafe {
        pg_sys::ConditionVariableInit(&raw mut (*q).work_cv);
        pg_sys::ConditionVariableInit(&raw mut (*q).done_cv);
    }
});

/// Called from `_PG_init`; reserves the queue while preloading only.
pub fn init() {
    QUEUE.register();
}

/// Run `f` on the queue under its lock. `f` must not raise.
fn locked<R>(f: impl FnOnce(&mut Queue) -> R) -> R {
    QUEUE.locked(f)
}

fn sleep_on(cv: fn(*mut Queue) -> *mut pg_sys::ConditionVariable, ms: i64) {
    // SAFETY: a condition variable in our shared struct; the sleep checks for
    // interrupts, so cancel and terminate still work while waiting.
    unsafe {
        pg_sys::ConditionVariableTimedSleep(cv(QUEUE.get()), ms, pg_sys::PG_WAIT_EXTENSION);
    }
}

fn work_cv(q: *mut Queue) -> *mut pg_sys::ConditionVariable {
    // SAFETY: address of a field; no read.
    unsafe { &raw mut (*q).work_cv }
}

fn done_cv(q: *mut Queue) -> *mut pg_sys::ConditionVariable {
    // SAFETY: address of a field; no read.
    unsafe { &raw mut (*q).done_cv }
}

fn broadcast(cv: fn(*mut Queue) -> *mut pg_sys::ConditionVariable) {
    // SAFETY: a condition variable in our shared struct.
    unsafe { pg_sys::ConditionVariableBroadcast(cv(QUEUE.get())) };
}

/// The row as JSON text of at most [`SLOT_BYTES`]: the longest text values
/// are cut (and marked) until it fits.
fn fit_payload(mut message: Value) -> Vec<u8> {
    for _ in 0..64 {
        let text = message.to_string();
        if text.len() <= SLOT_BYTES {
            return text.into_bytes();
        }
        let Some(longest) = longest_string(&mut message) else {
            break;
        };
        let keep = longest.len() / 2;
        let mut cut = keep.min(longest.len());
        while !longest.is_char_boundary(cut) {
            cut -= 1;
        }
        longest.truncate(cut);
        longest.push_str("…[truncated]");
    }
    // Nothing left to cut (many short values): keep what identifies the event.
    let row = &message["row"];
    json!({
        "table": message["table"],
        "row": {
            "tenant_id": row["tenant_id"],
            "event": row["event"],
            "status": row["status"],
            "login_role": row["login_role"],
            "acting_role": row["acting_role"],
            "backend_pid": row["backend_pid"],
            "detail": {"truncated": true},
        },
    })
    .to_string()
    .into_bytes()
}

fn longest_string(v: &mut Value) -> Option<&mut String> {
    match v {
        Value::String(s) if s.len() > 64 => Some(s),
        Value::Array(items) => items
            .iter_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        Value::Object(map) => map
            .values_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        _ => None,
    }
}

/// Claimed slot of this backend: if the wait ends by an ERROR (cancel,
/// terminate), the slot is left for the writer to finish and free.
struct Claim {
    idx: usize,
    ticket: u64,
    settled: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (idx, ticket) = (self.idx, self.ticket);
        locked(|q| {
            let s = &mut q.slots[idx];
            if s.ticket == ticket {
                if matches!(s.state, DONE | FAILED) {
                    s.state = FREE;
                } else {
                    // READY or TAKEN: the row is still written; the writer frees it.
                    s.abandoned = true;
                }
            }
        });
        broadcast(done_cv);
    }
}

fn submit(payload: &[u8]) {
    if payload.len() > SLOT_BYTES {
        // fit_payload keeps every row within a slot; never copy past one.
        log!(
            "pg_dbrag: audit event too large for the queue; event: {}",
            String::from_utf8_lossy(payload)
        );
        return;
    }
    let deadline = Instant::now() + WAIT_LIMIT;
    // SAFETY: plain backend globals.
    let my_db = unsafe { pg_sys::MyDatabaseId };
    // 1. A free slot.
    let mut claim = loop {
        let got = locked(|q| {
            let idx = q.slots.iter().position(|s| s.state == FREE)?;
            q.next_ticket += 1;
            let ticket = q.next_ticket;
            let s = &mut q.slots[idx];
            s.state = READY;
            s.abandoned = false;
            s.db = my_db;
            s.ticket = ticket;
            s.taken_by = 0;
            s.len = payload.len() as u32;
            s.data[..payload.len()].copy_from_slice(payload);
            Some((idx, ticket))
        });
        if let Some((idx, ticket)) = got {
            break Claim {
                idx,
                ticket,
                settled: false,
            };
        }
        if Instant::now() >= deadline {
            locked(|q| q.dropped += 1);
            log!(
                "pg_dbrag: the audit queue is full; event: {}",
                String::from_utf8_lossy(payload)
            );
            return;
        }
        sleep_on(done_cv, 10);
    };
    broadcast(work_cv);
    // 2. Wait until the writer has committed it, starting one when none runs.
    loop {
        let (state, launch) = locked(|q| {
            let s = &mut q.slots[claim.idx];
            if s.ticket != claim.ticket {
                return (FREE, None);
            }
            let state = s.state;
            if matches!(state, DONE | FAILED) {
                s.state = FREE;
                return (state, None);
            }
            if !q.running {
                q.running = true;
                q.db = my_db;
                q.pid = 0;
                q.generation += 1;
                q.launches += 1;
                return (state, Some(q.generation));
            }
            (state, None)
        });
        if matches!(state, DONE | FAILED | FREE) {
            claim.settled = true;
            // SAFETY: ends a sleep prepared by ConditionVariableTimedSleep, if any.
            unsafe { pg_sys::ConditionVariableCancelSleep() };
            broadcast(done_cv);
            return;
        }
        if let Some(generation) = launch {
            launch_writer(my_db, generation);
        }
        if Instant::now() >= deadline {
            let withdrawn = locked(|q| {
                let s = &mut q.slots[claim.idx];
                if s.ticket == claim.ticket && s.state == READY {
                    s.state = FREE;
                    q.dropped += 1;
                    true
                } else {
                    false
                }
            });
            if withdrawn {
                claim.settled = true;
                log!(
                    "pg_dbrag: the audit writer did not take the event within {} s; event: {}",
                    WAIT_LIMIT.as_secs(),
                    String::from_utf8_lossy(payload)
                );
            }
            // Otherwise it is being written: Claim's drop leaves it to the writer.
            // SAFETY: as above.
            unsafe { pg_sys::ConditionVariableCancelSleep() };
            return;
        }
        sleep_on(done_cv, 100);
    }
}

/// Start the audit writer for `db`. On failure the queue is marked as having
/// no writer, so the next waiting backend tries again.
fn launch_writer(db: pg_sys::Oid, generation: u64) {
    let started = BackgroundWorkerBuilder::new("pg_dbrag audit writer")
        .set_type("pg_dbrag audit writer")
        .set_library("pg_dbrag")
        .set_function("pg_dbrag_audit_writer_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32() as usize)))
        .set_extra(&generation.to_string())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    // A writer that stopped already either ran (and cleared its mark) or
    // could not start (and never set its pid): only the latter is cleared.
    let ok = matches!(started.map(|w| w.wait_for_startup()), Ok(Ok(_)));
    if !ok {
        locked(|q| {
            if q.generation == generation && q.pid == 0 {
                q.running = false;
            }
        });
    }
}

/// Clears the writer's mark in the queue on every way out of the writer.
#[pg_guard]
unsafe extern "C-unwind" fn writer_exit(_code: i32, arg: pg_sys::Datum) {
    let generation = arg.value() as u64;
    // SAFETY: our own pid; the queue exists (the writer started from it).
    let me = unsafe { pg_sys::MyProcPid };
    locked(|q| {
        if q.generation == generation {
            q.running = false;
            q.pid = 0;
        }
        for s in q.slots.iter_mut() {
            if s.state == TAKEN && s.taken_by == me {
                s.state = if s.abandoned { FREE } else { FAILED };
            }
        }
    });
    broadcast(done_cv);
}

/// Main of the audit writer: drain the queue for its database in batches.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_dbrag_audit_writer_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    let generation: u64 = BackgroundWorker::get_extra().parse().unwrap_or(0);
    // SAFETY: registered before any work; runs on proc_exit, normal or not.
    unsafe {
        if QUEUE.get().is_null() {
            return;
        }
        pg_sys::on_shmem_exit(Some(writer_exit), pg_sys::Datum::from(generation as usize));
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    // SAFETY: plain backend global.
    let me = unsafe { pg_sys::MyProcPid };
    let alive = locked(|q| {
        if q.generation == generation && q.running {
            q.pid = me;
            true
        } else {
            false
        }
    });
    if !alive {
        return;
    }
    let mut idle_since = Instant::now();
    loop {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        let (batch, exit) = locked(|q| {
            let mut batch = Vec::new();
            for (idx, s) in q.slots.iter_mut().enumerate() {
                if s.state == READY && s.db == db {
                    s.state = TAKEN;
                    s.taken_by = me;
                    batch.push((idx, s.ticket, s.data[..s.len as usize].to_vec()));
                }
            }
            if !batch.is_empty() {
                return (batch, false);
            }
            // Nothing for this database: leave when rows of another database
            // wait (their backends start a writer there) or after a quiet spell.
            let others = q.slots.iter().any(|s| s.state == READY && s.db != db);
            if others || idle_since.elapsed() >= IDLE_EXIT {
                q.running = false;
                q.pid = 0;
                return (batch, true);
            }
            (batch, false)
        });
        if exit {
            break;
        }
        if batch.is_empty() {
            sleep_on(work_cv, 200);
            continue;
        }
        // SAFETY: ends the sleep prepared above, if any.
        unsafe { pg_sys::ConditionVariableCancelSleep() };
        let outcomes: Vec<bool> = BackgroundWorker::transaction(|| {
            // A row whose insert waits on a lock (its tenant being deleted by
            // a transaction still open) fails alone instead of stalling the queue.
            let _ = Spi::run("SET LOCAL lock_timeout = '2s'");
            batch.iter().map(|(_, _, bytes)| write_one(bytes)).collect()
        });
        locked(|q| {
            q.batches += 1;
            for ((idx, ticket, _), ok) in batch.iter().zip(&outcomes) {
                if *ok {
                    q.written += 1;
                } else {
                    q.failed += 1;
                }
                let s = &mut q.slots[*idx];
                if s.ticket == *ticket && s.state == TAKEN {
                    s.state = if s.abandoned {
                        FREE
                    } else if *ok {
                        DONE
                    } else {
                        FAILED
                    };
                }
            }
        });
        broadcast(done_cv);
        idle_since = Instant::now();
    }
}

/// Insert one queued row in a subtransaction of its own, so one bad row
/// (its tenant deleted meanwhile, say) does not take the batch with it.
fn write_one(bytes: &[u8]) -> bool {
    let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    let table = message["table"].as_str().unwrap_or_default().to_string();
    let outcome = crate::pg::subxact::run(|| {
        insert_row(&table, &message["row"]);
        Ok::<(), ()>(())
    });
    match outcome {
        Ok(Ok(())) => true,
        _ => {
            log!(
                "pg_dbrag: the audit writer could not write to {table}; event: {}",
                String::from_utf8_lossy(bytes)
            );
            false
        }
    }
}

/// `dbrag.audit_queue_status()`: the audit writer's queue, for operators.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_queue_status() -> pgrx::JsonB {
    if !privileged::is_platform_admin() {
        crate::error::raise(
            crate::error::Kind::Forbidden,
            "permission denied: dbrag.audit_queue_status requires dbrag_admin",
        );
    }
    if QUEUE.get().is_null() {
        return pgrx::JsonB(json!({"shared_memory": false}));
    }
    pgrx::JsonB(locked(|q| {
        json!({
            "shared_memory": true,
            "slots": SLOTS,
            "slot_bytes": SLOT_BYTES,
            "queued": q.slots.iter().filter(|s| s.state == READY).count(),
            "in_flight": q.slots.iter().filter(|s| s.state != FREE).count(),
            "writer_running": q.running,
            "writer_pid": q.pid,
            "written": q.written,
            "failed": q.failed,
            "dropped": q.dropped,
            "batches": q.batches,
            "launches": q.launches,
        })
    }))
}

// ---------------------------------------------------------------------------
// Without the queue (library not preloaded)
// ---------------------------------------------------------------------------

/// One worker for one row, as before the queue existed.
fn write_durable_oneshot(payload: &[u8]) {
    let bytes = payload;
    // SAFETY: a fresh segment of exactly the payload's size plus its length word.
    let handle = unsafe {
        let size = bytes.len() + 4;
        let seg = pg_sys::dsm_create(size, 0);
        let base = pg_sys::dsm_segment_address(seg) as *mut u8;
        let len = (bytes.len() as u32).to_le_bytes();
        std::ptr::copy_nonoverlapping(len.as_ptr(), base, 4);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(4), bytes.len());
        (seg, pg_sys::dsm_segment_handle(seg))
    };
    let started = BackgroundWorkerBuilder::new("pg_dbrag durable writer")
        .set_type("pg_dbrag durable writer")
        .set_library("pg_dbrag")
        .set_function("pg_dbrag_durable_writer_main")
        .set_argument(Some(pg_sys::Datum::from(handle.1 as usize)))
        .set_extra(&unsafe { pg_sys::MyDatabaseId }.to_u32().to_string())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match started {
        Ok(worker) => {
            if worker.wait_for_shutdown().is_err() {
                log!(
                    "pg_dbrag: durable writer did not report back; event: {}",
                    String::from_utf8_lossy(payload)
                );
            }
        }
        Err(_) => {
            log!(
                "pg_dbrag: no background worker slot for the audit writer; event: {}",
                String::from_utf8_lossy(payload)
            );
        }
    }
    // SAFETY: the worker has exited (or never started); we own the segment.
    unsafe { pg_sys::dsm_detach(handle.0) };
}

/// Main of the durable writer: attach the segment, insert one row, exit.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_dbrag_durable_writer_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let dboid: u32 = BackgroundWorker::get_extra().parse().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    let handle = arg.value() as pg_sys::dsm_handle;
    BackgroundWorker::transaction(|| {
        // SAFETY: the creating backend keeps the segment alive until we exit.
        let payload = unsafe {
            let seg = pg_sys::dsm_attach(handle);
            if seg.is_null() {
                return;
            }
            let base = pg_sys::dsm_segment_address(seg) as *const u8;
            let mut len = [0u8; 4];
            std::ptr::copy_nonoverlapping(base, len.as_mut_ptr(), 4);
            let len = u32::from_le_bytes(len) as usize;
            let body = std::slice::from_raw_parts(base.add(4), len).to_vec();
            pg_sys::dsm_detach(seg);
            body
        };
        let Ok(message) = serde_json::from_slice::<Value>(&payload) else {
            return;
        };
        let table = message["table"].as_str().unwrap_or_default().to_string();
        insert_row(&table, &message["row"]);
    });
}
