//! Verified queries and feedback (docs/llm-and-guard.md, "Verified queries
//! and feedback"): question → SQL pairs a tenant vouches for, checked by the
//! guard when saved; a question that matches one is answered with its SQL
//! without calling the model, and the closest ones lead the prompt's
//! examples. Feedback on a history row may become a training example when
//! the tenant's setting `feedback_examples` is on.

use dbrag_core::prompt::PromptExample;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::connection_store::{self as connections, Connection};
use crate::error::{required, DbragError, Kind};
use crate::pg::privileged;
use crate::tenant;

/// Longest SQL accepted, in characters (as `add_example`).
const MAX_SQL_CHARS: usize = 100_000;
/// How many verified queries lead the prompt's examples.
const PROMPT_VERIFIED: i64 = 5;

/// The statement argument: not NULL, not blank, at most [`MAX_SQL_CHARS`]
/// (54000 beyond), without copying a longer argument first.
fn check_sql(sql: Option<&str>, name: &str) -> String {
    let s = required(sql, name);
    let too_long = || -> ! {
        DbragError::new(
            Kind::TooLarge,
            format!("{name} is longer than {MAX_SQL_CHARS} characters"),
        )
        .raise()
    };
    if s.len() > MAX_SQL_CHARS * 4 {
        too_long()
    }
    let s = s.trim();
    if s.is_empty() {
        DbragError::new(Kind::BadArgument, format!("{name} must not be empty")).raise();
    }
    if s.chars().count() > MAX_SQL_CHARS {
        too_long()
    }
    s.to_string()
}

/// The guard's verdict on `sql` for `conn`, as the tenant's role: the same
/// check `ask` runs on the model's statement, with its SQLSTATEs (42601 not
/// one read-only SELECT or not valid, 42501 a forbidden relation or function).
fn guard(conn: &Connection, sql: &str) {
    let role = crate::act_as::tenant_role(conn.tenant_id);
    match crate::engine::check(conn, role, sql) {
        crate::engine::Checked::Ok(_) => {}
        crate::engine::Checked::Refused(e) => e.raise(),
        crate::engine::Checked::Invalid(msg) => DbragError::new(
            Kind::RefusedSql,
            format!("the statement is not valid: {msg}"),
        )
        .raise(),
    }
}

/// `dbrag.add_verified_query(question, sql)`: save a pair for the tenant in
/// force and its active connection, after the guard accepts the SQL.
#[pg_extern(volatile, parallel_unsafe)]
fn add_verified_query(question: Option<&str>, sql: Option<&str>) -> pgrx::Uuid {
    let question = crate::question::check_question(question);
    let sql = check_sql(sql, "sql");
    crate::pg::restricted::refuse_if_restricted("dbrag.add_verified_query");
    let conn = connections::active();
    guard(&conn, &sql);
    privileged::as_extension(|| {
        Spi::get_one_with_args::<pgrx::Uuid>(
            "INSERT INTO control_plane.verified_queries \
                    (tenant_id, connection_id, question, normalized_question, sql, search_vector, created_by) \
             VALUES ($1, $2, $3, dbrag._normalize_question($3), $4, \
                     pg_catalog.setweight(pg_catalog.to_tsvector(dbrag._search_config(), $3), 'A'), $5) \
             RETURNING verified_id",
            &[
                DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
                DatumWithOid::from(tenant::to_pg(conn.id)),
                DatumWithOid::from(question.as_str()),
                DatumWithOid::from(sql.as_str()),
                DatumWithOid::from(crate::audit::login_role_name().as_str()),
            ],
        )
    })
    .unwrap_or_else(|e| DbragError::from(e).raise())
    .unwrap_or_else(|| DbragError::new(Kind::NotFound, "the verified query was not saved").raise())
}

/// The SQL of the newest verified query of `conn` whose question equals
/// `question` once both are normalised (`dbrag._normalize_question`).
pub fn matching_sql(conn: &Connection, question: &str) -> Option<String> {
    privileged::as_extension(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT pg_catalog.left(v.sql, 100000) FROM control_plane.verified_queries v \
                     WHERE v.tenant_id = $1 AND v.connection_id = $2 \
                       AND pg_catalog.md5(v.normalized_question) = pg_catalog.md5(dbrag._normalize_question($3)) \
                       AND v.normalized_question = dbrag._normalize_question($3) \
                     ORDER BY v.created_at DESC LIMIT 1",
                    Some(1),
                    &[
                        DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
                        DatumWithOid::from(tenant::to_pg(conn.id)),
                        DatumWithOid::from(question),
                    ],
                )?
                .first()
                .get_one::<String>()
        })
    })
    .ok()
    .flatten()
}

/// The verified queries of `conn` closest to `question` (shared words,
/// ranked), for the head of the prompt's examples.
pub fn prompt_examples(conn: &Connection, question: &str) -> Vec<PromptExample> {
    privileged::as_extension(|| {
        Spi::connect(|client| {
            let mut out = Vec::new();
            for row in client.select(
                "SELECT pg_catalog.left(v.question, 8000), pg_catalog.left(v.sql, 100000) \
                 FROM control_plane.verified_queries v, dbrag._question_query($3) q \
                 WHERE v.tenant_id = $1 AND v.connection_id = $2 \
                   AND q.query IS NOT NULL AND v.search_vector @@ q.query \
                 ORDER BY pg_catalog.ts_rank(v.search_vector, q.query) DESC, v.created_at DESC LIMIT $4",
                None,
                &[
                    DatumWithOid::from(tenant::to_pg(conn.tenant_id)),
                    DatumWithOid::from(tenant::to_pg(conn.id)),
                    DatumWithOid::from(question),
                    DatumWithOid::from(PROMPT_VERIFIED),
                ],
            )? {
                out.push(PromptExample {
                    question: row.get(1)?.unwrap_or_default(),
                    sql: row.get(2)?.unwrap_or_default(),
                });
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_default()
}

/// The tenant's setting `feedback_examples` (control_plane.tenants.settings):
/// true makes helpful answers and corrected SQL training examples. Absent
/// or null is off; anything but a boolean is a 22023 error.
fn feedback_examples_on(tenant_id: uuid::Uuid) -> bool {
    let value: Option<String> = privileged::as_extension(|| {
        Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.jsonb_typeof(settings -> 'feedback_examples') || ':' || \
                    COALESCE(settings ->> 'feedback_examples', '') \
             FROM control_plane.tenants WHERE tenant_id = $1",
            &[DatumWithOid::from(tenant::to_pg(tenant_id))],
        )
    })
    .ok()
    .flatten();
    match value.as_deref() {
        None | Some("null:") => false,
        Some("boolean:true") => true,
        Some("boolean:false") => false,
        Some(_) => DbragError::new(
            Kind::BadArgument,
            "tenant setting feedback_examples must be a boolean",
        )
        .hint("an operator fixes control_plane.tenants.settings")
        .raise(),
    }
}

/// `dbrag.feedback(history_id, helpful, corrected_sql)`: judge one of the
/// tenant's history rows. Another tenant's id reads as unknown (42704).
#[pg_extern(volatile, parallel_unsafe)]
fn feedback(
    history_id: Option<pgrx::Uuid>,
    helpful: Option<bool>,
    corrected_sql: default!(Option<&str>, "NULL"),
) {
    let history_id = required(history_id, "history_id");
    let helpful = required(helpful, "helpful");
    let corrected = corrected_sql.map(|s| check_sql(Some(s), "corrected_sql"));
    crate::pg::restricted::refuse_if_restricted("dbrag.feedback");
    let t = tenant::require();
    let tp = tenant::to_pg(t);
    // (question, generated_sql, status, connection_id) of the row, if it is
    // this tenant's.
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<pgrx::Uuid>,
    );
    // Locked, so two judgements of one row at once do not both add an example.
    let row: Option<Row> = privileged::as_extension(|| {
        Spi::connect_mut(|client| {
            let r = client.update(
                "SELECT pg_catalog.left(question, 8000), pg_catalog.left(generated_sql, 100000), status, connection_id \
                 FROM control_plane.query_history WHERE tenant_id = $1 AND query_id = $2 FOR UPDATE",
                Some(1),
                &[DatumWithOid::from(tp), DatumWithOid::from(history_id)],
            )?;
            if r.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let r = r.first();
            Ok(Some((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        })
    })
    .unwrap_or_else(|e| DbragError::from(e).raise());
    let Some((question, generated, status, connection_id)) = row else {
        DbragError::new(
            Kind::NotFound,
            format!("query history row {history_id} does not exist for this tenant"),
        )
        .raise()
    };
    if let Some(sql) = &corrected {
        // Checked against the connection the question was asked on (the
        // active one when that connection is gone).
        let conn = match connection_id {
            Some(id) if connection_exists(t, id) => connections::load(tenant::from_pg(id)),
            _ => connections::active(),
        };
        guard(&conn, sql);
    }
    // The example this judgement makes, if the tenant lets feedback teach.
    let example_sql = match (&corrected, helpful, status.as_deref()) {
        (Some(sql), _, _) => Some(sql.clone()),
        (None, true, Some("ok" | "cached")) => generated,
        _ => None,
    };
    let example = match (question, example_sql) {
        (Some(q), Some(sql)) if feedback_examples_on(t) => Some((q, sql)),
        _ => None,
    };
    privileged::as_extension(|| {
        Spi::connect_mut(|client| {
            // The example an earlier judgement of this row made goes.
            client.update(
                "DELETE FROM control_plane.training_examples e USING control_plane.query_feedback f \
                 WHERE f.tenant_id = $1 AND f.query_id = $2 AND e.tenant_id = $1 AND e.example_id = f.example_id",
                None,
                &[DatumWithOid::from(tp), DatumWithOid::from(history_id)],
            )?;
            let example_id: Option<pgrx::Uuid> = match &example {
                Some((q, sql)) => client
                    .update(
                        "INSERT INTO control_plane.training_examples (tenant_id, kind, question, sql) \
                         VALUES ($1, 'example', $2, $3) RETURNING example_id",
                        Some(1),
                        &[
                            DatumWithOid::from(tp),
                            DatumWithOid::from(q.as_str()),
                            DatumWithOid::from(sql.as_str()),
                        ],
                    )?
                    .first()
                    .get_one::<pgrx::Uuid>()?,
                None => None,
            };
            client.update(
                "INSERT INTO control_plane.query_feedback \
                        (tenant_id, query_id, helpful, corrected_sql, example_id, login_role) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, query_id) DO UPDATE \
                    SET helpful = EXCLUDED.helpful, corrected_sql = EXCLUDED.corrected_sql, \
                        example_id = EXCLUDED.example_id, login_role = EXCLUDED.login_role, \
                        created_at = EXCLUDED.created_at",
                None,
                &[
                    DatumWithOid::from(tp),
                    DatumWithOid::from(history_id),
                    DatumWithOid::from(helpful),
                    DatumWithOid::from(corrected.as_deref()),
                    DatumWithOid::from(example_id),
                    DatumWithOid::from(crate::audit::login_role_name().as_str()),
                ],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .unwrap_or_else(|e| DbragError::from(e).raise());
}

fn connection_exists(tenant_id: uuid::Uuid, id: pgrx::Uuid) -> bool {
    privileged::as_extension(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM control_plane.tenant_databases \
                            WHERE tenant_id = $1 AND connection_id = $2)",
            &[
                DatumWithOid::from(tenant::to_pg(tenant_id)),
                DatumWithOid::from(id),
            ],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}
