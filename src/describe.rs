//! Descriptions of catalog tables: a stored catalog row as the prompt's
//! table ([`table_from_catalog_row`], for the NL-to-SQL prompt too), and
//! `sync_catalog(describe => true)`'s model-written descriptions
//! ([`describe_tables`]). Below both crate::catalog and crate::nl2sql.

use dbrag_core::prompt::{PromptColumn, PromptForeignKey, PromptTable};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::Value;

use crate::connection_store::Connection;
use crate::error::DbragError;
use crate::pg::privileged;
use crate::tenant;

pub fn table_from_catalog_row(m: &Value) -> PromptTable {
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

const DESCRIBE_SYSTEM: &str =
    "You document database tables for analysts who ask questions in plain language.\n\
Answer with one JSON object and nothing else: {\"table\": \"<one sentence: what a row is>\", \
\"columns\": {\"<column>\": \"<a few words>\"}}. Mention synonyms an analyst might use.";

/// `sync_catalog(describe => true)`: the model writes a description for each
/// table this sync wrote, and for its columns. Comments from the database
/// win over the model's words; a table whose answer is unusable keeps none,
/// with a WARNING, and the sync still succeeds.
pub fn describe_tables(conn: &Connection, tables: &[(String, String)]) {
    if tables.is_empty() {
        return;
    }
    let cfg = crate::llm::tenant_config(conn.tenant_id).unwrap_or_else(|e| e.raise());
    let t = tenant::to_pg(conn.tenant_id);
    let c = tenant::to_pg(conn.id);
    for (i, (schema, table)) in tables.iter().enumerate() {
        // As text: see crate::pg::jsonb (pgrx's JsonB panics on some values).
        let row: Option<String> = privileged::as_extension(|| {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT pg_catalog.to_jsonb(m)::pg_catalog.text FROM control_plane.table_metadata_catalog m \
                         WHERE tenant_id = $1 AND connection_id = $2 AND schema_name = $3 AND table_name = $4",
                        Some(1),
                        &[
                            DatumWithOid::from(t),
                            DatumWithOid::from(c),
                            DatumWithOid::from(schema.as_str()),
                            DatumWithOid::from(table.as_str()),
                        ],
                    )?
                    .first()
                    .get_one::<String>()
            })
        })
        .ok()
        .flatten();
        let Some(row) = row.as_deref().and_then(crate::pg::jsonb::from_text) else {
            continue;
        };
        let ddl = dbrag_core::prompt::table_ddl(&table_from_catalog_row(&row));
        let reply = crate::llm::complete(&cfg, DESCRIBE_SYSTEM, &ddl).unwrap_or_else(|e| e.raise());
        let Some((table_text, columns)) = dbrag_core::prompt::parse_descriptions(&reply.text)
        else {
            warning!(
                "sync_catalog: the model's description of {schema}.{table} was not JSON; kept none"
            );
            continue;
        };
        let generated: serde_json::Map<String, Value> = columns
            .into_iter()
            .filter(|(col, _)| row["data_types"].get(col).is_some())
            .map(|(col, d)| (col, Value::String(d)))
            .collect();
        privileged::as_extension(|| {
            Spi::run_with_args(
                "UPDATE control_plane.table_metadata_catalog \
                 SET table_description = COALESCE(table_description, $5), \
                     column_descriptions = $6::jsonb OPERATOR(pg_catalog.||) column_descriptions \
                 WHERE tenant_id = $1 AND connection_id = $2 AND schema_name = $3 AND table_name = $4",
                &[
                    DatumWithOid::from(t),
                    DatumWithOid::from(c),
                    DatumWithOid::from(schema.as_str()),
                    DatumWithOid::from(table.as_str()),
                    DatumWithOid::from(table_text),
                    DatumWithOid::from(pgrx::JsonB(Value::Object(generated))),
                ],
            )
        })
        .unwrap_or_else(|e| DbragError::from(e).raise());
        if (i + 1) % 10 == 0 {
            notice!(
                "sync_catalog: described {} tables of {}",
                i + 1,
                tables.len()
            );
        }
    }
}
