//! The record of NL-to-SQL calls: what one call did ([`Attempt`]), its
//! `control_plane.query_history` row (durable on failure, with an audit row
//! for refusals), the session's last answer, and the answer cache read back
//! from the history ([`cached_sql`]).

use dbrag_core::prompt::PromptExample;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::connection_store::Connection;
use crate::error::DbragError;
use crate::pg::privileged;
use crate::tenant;

/// What one call did, for the history row.
#[derive(Default)]
pub struct Attempt {
    pub sql: Option<String>,
    pub llm_ms: f64,
    pub execution_ms: Option<f64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub rows: Option<i64>,
    pub result_hash: Option<String>,
    pub cached: bool,
    /// The SQL is a verified query's (crate::verified): no model call.
    pub verified: bool,
    pub catalog_version: Option<String>,
    /// The role the statement runs as (the tenant's, crate::act_as).
    pub acting_role: Option<String>,
    /// The model that writes the SQL.
    pub model: Option<String>,
    /// The conversation the call belongs to, and its earlier turns
    /// (newest first; crate::conversation).
    pub conversation: Option<uuid::Uuid>,
    pub turns: Vec<PromptExample>,
    /// The model's explanation of the SQL (explain => true, explain_sql).
    pub explanation: Option<String>,
}

/// Why a call ended without rows: the history status and the error.
pub struct Failure {
    pub status: &'static str,
    pub error: DbragError,
}

impl Failure {
    pub fn new(status: &'static str, error: DbragError) -> Self {
        Failure { status, error }
    }
}

pub fn catalog_version(conn: &Connection) -> Option<String> {
    privileged::as_extension(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT connection_metadata ->> 'catalog_version' FROM control_plane.tenant_databases \
                     WHERE tenant_id = $1 AND connection_id = $2",
                    Some(1),
                    &[DatumWithOid::from(tenant::to_pg(conn.tenant_id)), DatumWithOid::from(tenant::to_pg(conn.id))],
                )?
                .first()
                .get_one::<String>()
        })
    })
    .ok()
    .flatten()
}

/// SQL generated earlier for the same question, for the same tenant, acting
/// role, connection, catalog version and model, outside any conversation
/// (a follow-up's SQL depends on its earlier turns).
pub fn cached_sql(
    conn: &Connection,
    question: &str,
    version: &str,
    acting_role: &str,
    model: &str,
) -> Option<String> {
    privileged::as_extension(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT generated_sql FROM control_plane.query_history \
                     WHERE tenant_id = $1 AND connection_id = $2 AND question = $3 AND catalog_version = $4 \
                       AND acting_role = $5 AND model = $6 \
                       AND status IN ('ok', 'cached') AND generated_sql IS NOT NULL \
                       AND conversation_id IS NULL \
                     ORDER BY created_at DESC LIMIT 1",
                    Some(1),
                    &[
                        DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
                        DatumWithOid::from(tenant::to_pg(conn.id)),
                        DatumWithOid::from(question),
                        DatumWithOid::from(version),
                        DatumWithOid::from(acting_role),
                        DatumWithOid::from(model),
                    ],
                )?
                .first()
                .get_one::<String>()
        })
    })
    .ok()
    .flatten()
}

pub fn history_row(
    conn: &Connection,
    history_id: uuid::Uuid,
    question: Option<&str>,
    attempt: &Attempt,
    status: &str,
    error: Option<&str>,
) -> Value {
    json!({
        "tenant_id": conn.tenant_id.to_string(),
        "query_id": history_id.to_string(),
        "connection_id": conn.id.to_string(),
        "login_role": crate::audit::login_role_name(),
        "question": question,
        "generated_sql": attempt.sql,
        "status": status,
        "error": error,
        "llm_ms": attempt.llm_ms,
        "execution_ms": attempt.execution_ms,
        "row_count": attempt.rows,
        "prompt_tokens": attempt.prompt_tokens,
        "completion_tokens": attempt.completion_tokens,
        "result_hash": attempt.result_hash,
        "catalog_version": attempt.catalog_version,
        "acting_role": attempt.acting_role,
        // No model wrote a verified query's SQL.
        "model": if attempt.verified { None } else { attempt.model.clone() },
        "conversation_id": attempt.conversation.map(|c| c.to_string()),
        "explanation": attempt.explanation,
    })
}

/// A failed call: its history row, committed whatever happens to the
/// caller's transaction, the session's last answer, an audit row when the
/// guard refused the statement; then the error.
pub fn record_failure(
    conn: &Connection,
    history_id: uuid::Uuid,
    question: Option<&str>,
    attempt: &Attempt,
    f: Failure,
) -> ! {
    crate::audit::write_durable(
        "query_history",
        history_row(
            conn,
            history_id,
            question,
            attempt,
            f.status,
            Some(&f.error.message),
        ),
    );
    remember(conn, history_id, f.status, attempt);
    if f.status == "refused" {
        crate::audit::record_durable(
            "sql_refused",
            Some(&conn.tenant_id.to_string()),
            json!({"reason": f.error.message, "sql": attempt.sql}),
        );
    }
    f.error.raise()
}

pub fn remember(conn: &Connection, history_id: uuid::Uuid, status: &str, attempt: &Attempt) {
    crate::conversation::remember(
        conn.tenant_id,
        history_id,
        status,
        attempt.sql.as_deref(),
        attempt.conversation,
        attempt.explanation.as_deref(),
    );
}
