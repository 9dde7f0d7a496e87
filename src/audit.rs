//! The audit trail: security-relevant events in `control_plane.audit_log`.
//!
//! A refusal raises an ERROR, and an ERROR rolls back every row the same
//! transaction wrote. Refusals are exactly what an auditor must see, so they
//! are written by [`record_durable`]: a short-lived background worker commits
//! the row in a transaction of its own (PostgreSQL has no autonomous
//! transactions) while the backend waits, then the backend raises.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::privileged;

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

/// Commit `row` into `table` from a background worker and wait for it.
/// When no worker slot is free, the event goes to the server log instead.
pub fn write_durable(table: &str, row: Value) {
    let payload = json!({"table": table, "row": row}).to_string();
    let bytes = payload.as_bytes();
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
                log!("pg_dbrag: durable writer did not report back; event: {payload}");
            }
        }
        Err(_) => {
            log!("pg_dbrag: no background worker slot for the audit writer; event: {payload}");
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
