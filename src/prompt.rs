//! The NL-to-SQL prompt (docs/llm-and-guard.md): the tables the catalog
//! search ranks for the question, the values it names (crate::value_index),
//! the tenant's examples, verified queries and documentation, the earlier
//! turns, cut to `dbrag.prompt_token_budget`; `dbrag.build_prompt`.

use dbrag_core::prompt::{PromptExample, PromptInput, PromptTable};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::connection_store::{self as connections, Connection};
use crate::error::{DbragError, Kind};
use crate::gucs;
use crate::pg::privileged;
use crate::question::check_question;
use crate::tenant;

/// How many catalog hits the prompt starts from.
const PROMPT_HITS: i32 = 12;
/// The tables the search ranks for this question, with their catalog rows;
/// `named` (tables holding a value the question names, crate::value_index)
/// go right after the search's direct hits when the search missed them.
pub fn prompt_tables(
    conn: &Connection,
    question: &str,
    named: &[(String, String)],
) -> Vec<PromptTable> {
    let t = tenant::to_pg(conn.tenant_id);
    let c = tenant::to_pg(conn.id);
    let rows: Vec<Value> =
        Spi::connect(|client| {
            // Two statements, not one join: on Citus a join of the search with
            // the (distributed) catalog on one tenant's key is pushed down to a
            // worker whole, where the search's own query would then be a nested
            // distributed query, which Citus refuses.
            let mut schemas: Vec<String> = Vec::new();
            let mut tables: Vec<String> = Vec::new();
            let mut direct = 0;
            for row in client.select(
            "SELECT s.schema_name::text, s.table_name::text, s.via_join FROM dbrag.search_catalog($1, $2) s \
             ORDER BY s.via_join, s.score DESC",
            None,
            &[DatumWithOid::from(question), DatumWithOid::from(PROMPT_HITS)],
        )? {
            schemas.push(row.get::<String>(1)?.unwrap_or_default());
            tables.push(row.get::<String>(2)?.unwrap_or_default());
            if !row.get::<bool>(3)?.unwrap_or(false) {
                direct = schemas.len();
            }
        }
            for (s, t) in named {
                if !schemas.iter().zip(&tables).any(|(a, b)| a == s && b == t) {
                    schemas.insert(direct, s.clone());
                    tables.insert(direct, t.clone());
                    direct += 1;
                }
            }
            // As text: see crate::pg::jsonb (pgrx's JsonB panics on some values).
            let sql = "SELECT pg_catalog.to_jsonb(m)::pg_catalog.text \
                   FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[])) \
                        WITH ORDINALITY AS k(schema_name, table_name, pos) \
                   JOIN control_plane.table_metadata_catalog m \
                     ON m.tenant_id = $1 AND m.connection_id = $2 \
                    AND m.schema_name = k.schema_name AND m.table_name = k.table_name \
                   ORDER BY k.pos";
            crate::pg::jsonb::first_column_values(client.select(
                sql,
                None,
                &[
                    DatumWithOid::from(t),
                    DatumWithOid::from(c),
                    DatumWithOid::from(schemas),
                    DatumWithOid::from(tables),
                ],
            )?)
        })
        .unwrap_or_else(|e| {
            DbragError::new(Kind::Internal, format!("catalog search failed: {e}")).raise()
        });
    rows.iter()
        .map(crate::describe::table_from_catalog_row)
        .collect()
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
                // Cut to the limits of add_example/add_documentation: a
                // tenant may also write the table directly, so a row can
                // be up to 1 GB, and Rust would copy it whole.
                "SELECT e.kind, pg_catalog.left(e.question, 8000), pg_catalog.left(e.sql, 100000), \
                        pg_catalog.left(e.content, 100000) \
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
/// With earlier turns of a conversation (newest first), the catalog and
/// examples are searched with the newest earlier question too.
pub fn prompt_for(
    conn: &Connection,
    question: &str,
    retry: Option<(String, String)>,
    turns: &[PromptExample],
) -> dbrag_core::prompt::Prompt {
    // Values the question names: a line each, first in the documentation,
    // and their tables in the prompt.
    let values = crate::value_index::find(
        conn.tenant_id,
        Some(conn.id),
        question,
        crate::value_index::PROMPT_VALUES,
        true,
    );
    let mut named: Vec<(String, String)> = Vec::new();
    for m in &values {
        let key = (m.schema.clone(), m.table.clone());
        if !named.contains(&key) {
            named.push(key);
        }
    }
    let search = crate::conversation::search_text(question, turns);
    let tables = prompt_tables(conn, &search, &named);
    let (examples, mut documentation) = prompt_examples(conn.tenant_id, &search);
    documentation.splice(
        0..0,
        values
            .iter()
            .map(|m| crate::value_index::prompt_line(m, &conn.schema_name)),
    );
    // The tenant's verified queries lead the examples (crate::verified).
    let examples = [crate::verified::prompt_examples(conn, question), examples].concat();
    let input = PromptInput {
        dialect: crate::engine::open(conn).dialect(),
        default_schema: Some(conn.schema_name.clone()),
        question: question.to_string(),
        tables,
        examples,
        documentation,
        budget_tokens: gucs::PROMPT_TOKEN_BUDGET.get().max(500) as usize,
        retry,
        conversation: turns.to_vec(),
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
    let p = prompt_for(&conn, &question, None, &[]);
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
