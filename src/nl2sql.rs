//! Natural language to SQL (SPEC §6): the prompt from the tenant's catalog,
//! examples and documentation; the model call; the guard; execution.

use dbrag_core::prompt::{PromptColumn, PromptExample, PromptForeignKey, PromptInput, PromptTable};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::connections::{self, Connection, EngineKind};
use crate::error::{required, DbragError, Kind};
use crate::gucs;
use crate::privileged;
use crate::tenant;

/// How many catalog hits the prompt starts from.
const PROMPT_HITS: i32 = 12;
/// Longest question accepted, in characters.
pub const MAX_QUESTION_CHARS: usize = 8000;

pub fn check_question(question: Option<&str>) -> String {
    let q = required(question, "question").trim().to_string();
    if q.is_empty() {
        DbragError::new(Kind::BadArgument, "question must not be empty").raise();
    }
    if q.chars().count() > MAX_QUESTION_CHARS {
        DbragError::new(
            Kind::BadArgument,
            format!("question is longer than {MAX_QUESTION_CHARS} characters"),
        )
        .raise();
    }
    q
}

pub fn dialect(conn: &Connection) -> &'static str {
    match conn.kind {
        EngineKind::Local | EngineKind::Postgres => "PostgreSQL 15",
        EngineKind::Mysql => "MySQL 8 / MariaDB",
        EngineKind::Sqlite => "SQLite 3",
    }
}

/// The tables the search ranks for this question, with their catalog rows.
fn prompt_tables(conn: &Connection, question: &str) -> Vec<PromptTable> {
    let t = tenant::to_pg(conn.tenant_id);
    let c = tenant::to_pg(conn.id);
    let rows: Vec<Value> = Spi::connect(|client| {
        let mut out = Vec::new();
        let sql = "SELECT pg_catalog.to_jsonb(m) FROM dbrag.search_catalog($1, $2) s \
                   JOIN control_plane.table_metadata_catalog m \
                     ON m.tenant_id = $3 AND m.connection_id = $4 \
                    AND m.schema_name = s.schema_name AND m.table_name = s.table_name \
                   ORDER BY s.via_join, s.score DESC";
        for row in client.select(
            sql,
            None,
            &[
                DatumWithOid::from(question),
                DatumWithOid::from(PROMPT_HITS),
                DatumWithOid::from(t),
                DatumWithOid::from(c),
            ],
        )? {
            if let Some(j) = row.get::<pgrx::JsonB>(1)? {
                out.push(j.0);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| {
        DbragError::new(Kind::NotConfigured, format!("catalog search failed: {e}")).raise()
    });
    rows.iter().map(table_from_catalog_row).collect()
}

fn table_from_catalog_row(m: &Value) -> PromptTable {
    let schema = m["schema_name"].as_str().unwrap_or_default();
    let name = m["table_name"].as_str().unwrap_or_default();
    let q = dbrag_core::prompt::quote_if_needed;
    // Columns in table order (column_order), any others after them.
    let mut names: Vec<String> = m["column_order"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(types) = m["data_types"].as_object() {
        for k in types.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let columns = Some(&names)
        .map(|names| {
            names
                .iter()
                .filter(|col| m["data_types"].get(col.as_str()).is_some())
                .map(|col| PromptColumn {
                    name: col.clone(),
                    data_type: m["data_types"][col].as_str().unwrap_or("text").to_string(),
                    comment: m["column_descriptions"][col].as_str().map(str::to_string),
                    samples: m["sample_values"][col]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let foreign_keys = m["relationships"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["dir"] == "out")
        .map(|r| PromptForeignKey {
            columns: strings(&r["columns"]),
            target: format!(
                "{}.{}",
                q(r["schema"].as_str().unwrap_or_default()),
                q(r["table"].as_str().unwrap_or_default())
            ),
            target_columns: strings(&r["other_columns"]),
        })
        .collect();
    PromptTable {
        qualified_name: format!("{}.{}", q(schema), q(name)),
        description: m["table_description"].as_str().map(str::to_string),
        row_estimate: m["row_estimate"].as_i64(),
        columns,
        primary_key: strings(&m["primary_key"]),
        foreign_keys,
    }
}

/// The tenant's most similar examples and documentation, as the extension
/// with an explicit tenant filter (the GIN index leads with tenant_id).
fn prompt_examples(tenant_id: uuid::Uuid, question: &str) -> (Vec<PromptExample>, Vec<String>) {
    let t = tenant::to_pg(tenant_id);
    privileged::as_extension(|| {
        Spi::connect(|client| {
            let mut examples = Vec::new();
            let mut docs = Vec::new();
            for row in client.select(
                "SELECT e.kind, e.question, e.sql, e.content \
                 FROM control_plane.training_examples e, dbrag._question_query($2) q \
                 WHERE e.tenant_id = $1 AND q.query IS NOT NULL AND e.search_vector @@ q.query \
                 ORDER BY pg_catalog.ts_rank(e.search_vector, q.query) DESC LIMIT 20",
                None,
                &[DatumWithOid::from(t), DatumWithOid::from(question)],
            )? {
                let kind: String = row.get(1)?.unwrap_or_default();
                if kind == "example" {
                    examples.push(PromptExample {
                        question: row.get(2)?.unwrap_or_default(),
                        sql: row.get(3)?.unwrap_or_default(),
                    });
                } else if let Some(c) = row.get::<String>(4)? {
                    docs.push(c);
                }
            }
            Ok::<_, pgrx::spi::Error>((examples, docs))
        })
    })
    .unwrap_or_default()
}

/// Assemble the prompt for `question` against `conn`.
pub fn prompt_for(
    conn: &Connection,
    question: &str,
    retry: Option<(String, String)>,
) -> dbrag_core::prompt::Prompt {
    let tables = prompt_tables(conn, question);
    let (examples, documentation) = prompt_examples(conn.tenant_id, question);
    let input = PromptInput {
        dialect: dialect(conn).to_string(),
        default_schema: Some(conn.schema_name.clone()),
        question: question.to_string(),
        tables,
        examples,
        documentation,
        budget_tokens: gucs::PROMPT_TOKEN_BUDGET.get().max(500) as usize,
        retry,
    };
    dbrag_core::prompt::build(&input).unwrap_or_else(|e| {
        DbragError::new(Kind::BadArgument, e.to_string())
            .hint("ask a shorter question")
            .raise()
    })
}

/// `dbrag.build_prompt(question)`: exactly the messages the model would get.
#[pg_extern(stable, parallel_unsafe)]
fn build_prompt(question: Option<&str>) -> pgrx::JsonB {
    let question = check_question(question);
    let conn = connections::active();
    let p = prompt_for(&conn, &question, None);
    pgrx::JsonB(json!({
        "messages": [
            {"role": "system", "content": p.system},
            {"role": "user", "content": p.user},
        ],
        "estimated_tokens": p.estimated_tokens,
        "budget_tokens": gucs::PROMPT_TOKEN_BUDGET.get(),
        "tables_included": p.tables_included,
        "tables_left_out": p.tables_left_out,
        "columns_trimmed": p.columns_trimmed,
    }))
}
