//! Natural language to SQL (docs/llm-and-guard.md): the model call on the
//! prompt (crate::prompt), the engine's guard and read-only run
//! (crate::engine) with one retry, recorded by crate::history (which also
//! holds the answer cache); explain_sql.

use pgrx::prelude::*;
use sha2::Digest;

use crate::connection_store::{self as connections, Connection};
use crate::engine::{Checked, RunError};
use crate::error::{DbragError, Kind};
use crate::gucs;
use crate::history::{
    cached_sql, catalog_version, history_row, record_failure, remember, Attempt, Failure,
};
use crate::question::{check_question, MAX_QUESTION_CHARS};
use crate::tenant;

// ---------------------------------------------------------------- generation and execution

/// Largest answer `ask` returns, in bytes of jsonb text (all rows together).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Retries after a failed attempt (docs/llm-and-guard.md: one).
const RETRIES: usize = 1;

/// Ask the model for SQL; the statement as the model wrote it.
fn ask_model(
    conn: &Connection,
    question: &str,
    retry: Option<(String, String)>,
    attempt: &mut Attempt,
) -> Result<String, Failure> {
    let cfg =
        crate::llm::tenant_config(conn.tenant_id).map_err(|e| Failure::new("model_error", e))?;
    let prompt = crate::prompt::prompt_for(conn, question, retry, &attempt.turns);
    let reply = call_model(&cfg, &prompt.system, &prompt.user, attempt)?;
    dbrag_core::extract_sql(&reply.text).map_err(|e| {
        Failure::new(
            "model_error",
            DbragError::new(
                Kind::Model,
                format!("the model's answer holds no usable SQL: {e}"),
            ),
        )
    })
}

/// Plan and run a checked statement as the tenant's role (crate::act_as),
/// read-only, under `dbrag.query_timeout_ms`, at most `max_rows` rows and
/// [`MAX_ANSWER_BYTES`], each as jsonb text (a cast to json on a tenant's
/// type runs as the tenant's role too).
fn execute(
    conn: &Connection,
    role: pgrx::pg_sys::Oid,
    sql: &str,
    max_rows: i64,
) -> Result<(Vec<String>, bool), RunError> {
    let mut engine = crate::engine::open(conn);
    let limits = crate::engine::Limits {
        max_rows,
        max_bytes: MAX_ANSWER_BYTES,
        timeout_ms: gucs::QUERY_TIMEOUT_MS.get(),
    };
    crate::act_as::as_role(role, &conn.schema_name, || {
        engine.run_read_only(sql, limits)
    })
}

/// Generate (or reuse) SQL, check it, and with `run` execute it; one retry
/// with the error text when checking or running fails.
fn answer(
    conn: &Connection,
    question: &str,
    max_rows: i64,
    run: bool,
    attempt: &mut Attempt,
) -> Result<Vec<String>, Failure> {
    let version = catalog_version(conn).unwrap_or_default();
    let role = crate::act_as::tenant_role(conn.tenant_id);
    let acting_role = crate::act_as::role_name(role);
    attempt.acting_role = Some(acting_role.clone());
    attempt.model = crate::llm::config_for(conn.tenant_id, None)
        .ok()
        .map(|c| c.model);
    let mut retry: Option<(String, String)> = None;
    // A verified query for the same question first, then the cache. A
    // follow-up means something else than the same words alone: neither.
    let mut from_verified = if attempt.turns.is_empty() {
        crate::verified::matching_sql(conn, question)
    } else {
        None
    };
    let mut from_cache = match &attempt.model {
        Some(model) if from_verified.is_none() && attempt.turns.is_empty() => {
            cached_sql(conn, question, &version, &acting_role, model)
        }
        _ => None,
    };
    for round in 0..=RETRIES {
        attempt.verified = false;
        let sql = match (from_verified.take(), from_cache.take()) {
            (Some(sql), _) => {
                attempt.verified = true;
                sql
            }
            (None, Some(sql)) => {
                attempt.cached = true;
                sql
            }
            (None, None) => {
                attempt.cached = false;
                ask_model(conn, question, retry.take(), attempt)?
            }
        };
        attempt.sql = Some(sql.clone());
        let last = round == RETRIES;
        let checked = match crate::engine::check(conn, role, &sql) {
            Checked::Ok(s) => s,
            Checked::Refused(e) => return Err(Failure::new("refused", e)),
            Checked::Invalid(msg) if !last => {
                retry = Some((sql, msg));
                continue;
            }
            Checked::Invalid(msg) => {
                return Err(Failure::new(
                    "error",
                    DbragError::new(
                        Kind::RefusedSql,
                        format!("the generated statement is not valid: {msg}"),
                    ),
                ))
            }
        };
        attempt.sql = Some(checked.clone());
        if !run {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        match execute(conn, role, &checked, max_rows) {
            Ok((rows, truncated)) => {
                attempt.execution_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                attempt.rows = Some(rows.len() as i64);
                let text = format!("[{}]", rows.join(","));
                attempt.result_hash = Some(hex::encode(sha2::Sha256::digest(text.as_bytes())));
                if truncated {
                    notice!("pg_dbrag: the answer was cut at {max_rows} rows (max_rows)");
                }
                return Ok(rows);
            }
            Err(RunError::Fatal(e)) => {
                attempt.execution_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                let status = if e.kind == Kind::Timeout {
                    "timeout"
                } else {
                    "error"
                };
                return Err(Failure::new(status, e));
            }
            Err(RunError::Retryable(e)) if !last => retry = Some((checked, e.message)),
            Err(RunError::Retryable(mut e)) => {
                e.message = format!("the generated statement failed: {}", e.message);
                return Err(Failure::new("error", e));
            }
        }
    }
    Err(Failure::new(
        "error",
        DbragError::new(Kind::Model, "no statement passed"),
    ))
}

/// The whole call: answer, history row, and on failure a durable history
/// row (and audit row for refusals) before the error is raised.
fn answer_and_record(
    question: Option<&str>,
    max_rows: i64,
    run: bool,
    conversation: Option<uuid::Uuid>,
    explain: bool,
) -> (Vec<String>, Option<String>) {
    let question = check_question(question);
    if !crate::pg::citus::keep_execution_remote() && run {
        // Citus would stop the statement's cursor halfway with XX000.
        DbragError::new(
            Kind::NotConfigured,
            "on Citus, ask() cannot run its statement after an earlier statement of this transaction ran on the coordinator's own placements",
        )
        .hint("call ask() before other statements of the transaction (after set_tenant), or in a transaction of its own")
        .raise();
    }
    if !(1..=100_000).contains(&max_rows) {
        DbragError::new(Kind::BadArgument, "max_rows must be between 1 and 100000").raise();
    }
    let conn = connections::active();
    let mut attempt = Attempt {
        catalog_version: catalog_version(&conn),
        conversation,
        ..Attempt::default()
    };
    if let Some(c) = conversation {
        attempt.turns = crate::conversation::earlier_turns(&conn, c);
    }
    let history_id = uuid::Uuid::new_v4();
    match answer(&conn, &question, max_rows, run, &mut attempt) {
        Ok(rows) => {
            let status = if attempt.verified {
                "verified"
            } else if attempt.cached {
                "cached"
            } else {
                "ok"
            };
            if explain {
                if let Some(sql) = attempt.sql.clone() {
                    // The rows stand; an explanation that fails is a WARNING.
                    match explain_checked(&conn, &sql, &mut attempt) {
                        Ok(text) => attempt.explanation = Some(text),
                        Err(f) => warning!("pg_dbrag: no explanation: {}", f.error.message),
                    }
                }
            }
            crate::audit::insert_row(
                "query_history",
                &history_row(&conn, history_id, Some(&question), &attempt, status, None),
            );
            remember(&conn, history_id, status, &attempt);
            (rows, attempt.sql)
        }
        Err(f) => record_failure(&conn, history_id, Some(&question), &attempt, f),
    }
}

/// `dbrag.generate_sql(question, conversation)`: one checked SQL statement
/// for the question (a follow-up within `conversation` when given).
#[pg_extern(volatile, parallel_unsafe)]
fn generate_sql(
    question: Option<&str>,
    conversation: default!(Option<pgrx::Uuid>, "NULL"),
) -> Option<String> {
    answer_and_record(question, 1, false, conversation.map(tenant::from_pg), false).1
}

/// `dbrag.ask(question, max_rows, conversation, explain)`: generate, check
/// and run; one jsonb per row. With `explain`, the model also explains the
/// statement it ran (`dbrag.last_answer()`).
#[pg_extern(volatile, parallel_unsafe)]
fn ask(
    question: Option<&str>,
    max_rows: default!(Option<i32>, 1000),
    conversation: default!(Option<pgrx::Uuid>, "NULL"),
    explain: default!(Option<bool>, false),
) -> SetOfIterator<'static, crate::pg::jsonb::JsonbText> {
    let (rows, _) = answer_and_record(
        question,
        max_rows.unwrap_or(1000) as i64,
        true,
        conversation.map(tenant::from_pg),
        explain.unwrap_or(false),
    );
    SetOfIterator::new(rows.into_iter().map(crate::pg::jsonb::JsonbText))
}

// ---------------------------------------------------------------- explanations

/// Definitions of the catalog tables the statement names (with their
/// descriptions and comments), so the explanation can use the tenant's
/// words: found by the catalog search over the statement's text, kept when
/// the statement spells the table's name; bounded in count and size.
fn explain_tables(conn: &Connection, sql: &str) -> Vec<String> {
    const MAX_TABLES: usize = 5;
    const MAX_DDL_CHARS: usize = 2000;
    let search: String = sql.chars().take(MAX_QUESTION_CHARS).collect();
    let lower = sql.to_lowercase();
    crate::prompt::prompt_tables(conn, &search, &[])
        .iter()
        .filter(|t| {
            let name = t
                .qualified_name
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_lowercase();
            !name.is_empty() && lower.contains(&name)
        })
        .take(MAX_TABLES)
        .map(|t| {
            let ddl = dbrag_core::prompt::table_ddl(t);
            match ddl.char_indices().nth(MAX_DDL_CHARS) {
                Some((at, _)) => format!("{}\n  -- …", &ddl[..at]),
                None => ddl,
            }
        })
        .collect()
}

/// One model call on behalf of `attempt`: its time and tokens are added
/// there; a failure is a `timeout` or `model_error` history status.
fn call_model(
    cfg: &crate::llm::ModelConfig,
    system: &str,
    user: &str,
    attempt: &mut Attempt,
) -> Result<dbrag_core::ModelReply, Failure> {
    let started = std::time::Instant::now();
    let reply = crate::llm::complete(cfg, system, user);
    attempt.llm_ms += started.elapsed().as_secs_f64() * 1000.0;
    let reply = reply.map_err(|e| {
        let status = if e.kind == Kind::Timeout {
            "timeout"
        } else {
            "model_error"
        };
        Failure::new(status, e)
    })?;
    attempt.prompt_tokens += reply.prompt_tokens.unwrap_or(0);
    attempt.completion_tokens += reply.completion_tokens.unwrap_or(0);
    Ok(reply)
}

/// The model's explanation of a statement the guard accepted.
fn explain_checked(conn: &Connection, sql: &str, attempt: &mut Attempt) -> Result<String, Failure> {
    let mut cfg =
        crate::llm::tenant_config(conn.tenant_id).map_err(|e| Failure::new("model_error", e))?;
    cfg.max_tokens = cfg.max_tokens.min(crate::conversation::EXPLAIN_MAX_TOKENS);
    let user = crate::conversation::explain_prompt(
        &crate::engine::open(conn).dialect(),
        sql,
        &explain_tables(conn, sql),
    );
    let reply = call_model(&cfg, crate::conversation::EXPLAIN_SYSTEM, &user, attempt)?;
    dbrag_core::prompt::clean_explanation(&reply.text).ok_or_else(|| {
        Failure::new(
            "model_error",
            DbragError::new(Kind::Model, "the model's answer holds no explanation"),
        )
    })
}

/// `dbrag.explain_sql(sql)`: the guard first, as for `ask` (as the tenant's
/// role, the same SQLSTATE on refusal, no model call then); then the
/// model's plain-language explanation. Recorded in history without a
/// question, with the explanation (docs/llm-and-guard.md).
#[pg_extern(volatile, parallel_unsafe)]
fn explain_sql(sql: Option<&str>) -> Option<String> {
    let sql = crate::conversation::check_statement(sql);
    // (explain_sql does not run the statement: execution may stay local.)
    crate::pg::citus::keep_execution_remote();
    let conn = connections::active();
    let role = crate::act_as::tenant_role(conn.tenant_id);
    let mut attempt = Attempt {
        catalog_version: catalog_version(&conn),
        acting_role: Some(crate::act_as::role_name(role)),
        model: crate::llm::config_for(conn.tenant_id, None)
            .ok()
            .map(|c| c.model),
        sql: Some(sql.clone()),
        ..Attempt::default()
    };
    let history_id = uuid::Uuid::new_v4();
    let outcome = match crate::engine::check(&conn, role, &sql) {
        Checked::Ok(checked) => {
            attempt.sql = Some(checked.clone());
            explain_checked(&conn, &checked, &mut attempt)
        }
        Checked::Refused(e) => Err(Failure::new("refused", e)),
        Checked::Invalid(msg) => Err(Failure::new(
            "error",
            DbragError::new(
                Kind::RefusedSql,
                format!("the statement is not valid: {msg}"),
            ),
        )),
    };
    match outcome {
        Ok(text) => {
            attempt.explanation = Some(text.clone());
            crate::audit::insert_row(
                "query_history",
                &history_row(&conn, history_id, None, &attempt, "ok", None),
            );
            remember(&conn, history_id, "ok", &attempt);
            Some(text)
        }
        Err(f) => record_failure(&conn, history_id, None, &attempt, f),
    }
}
