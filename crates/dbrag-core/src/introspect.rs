//! Typed introspection: what a data plane's introspection query (or the
//! data-plane helper) reports for each table, parsed into [`TableEntry`],
//! with foreign keys mirrored on both ends and a few sample values per
//! column, never from secret-looking, binary or JSON columns. Every engine
//! uses these rules (docs/architecture.md).

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::words::looks_secret;

/// One JSON object per table of a schema: columns, keys, comments, estimate.
/// The same text runs through SPI (local connections, restricted to what
/// the role may read) and on a remote PostgreSQL server.
pub const INTROSPECT_SQL: &str = r#"
SELECT pg_catalog.json_build_object(
  'table', c.relname,
  'kind', c.relkind::text,
  'comment', pg_catalog.obj_description(c.oid, 'pg_class'),
  'row_estimate', CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END,
  'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                 'name', a.attname,
                 'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
                 'comment', pg_catalog.col_description(c.oid, a.attnum)) ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'primary_key', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                  FROM pg_catalog.pg_index i
                  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary),
  'foreign_keys', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                     'columns', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                                 FROM pg_catalog.unnest(co.conkey) WITH ORDINALITY k(attnum, ord)
                                 JOIN pg_catalog.pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.attnum),
                     'schema', rn.nspname,
                     'table', rc.relname,
                     'other_columns', (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord)
                                       FROM pg_catalog.unnest(co.confkey) WITH ORDINALITY k(attnum, ord)
                                       JOIN pg_catalog.pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.attnum))
                     ORDER BY co.conname)
                   FROM pg_catalog.pg_constraint co
                   JOIN pg_catalog.pg_class rc ON rc.oid = co.confrelid
                   JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
                   WHERE co.conrelid = c.oid AND co.contype = 'f')
)::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
ORDER BY c.relname
"#;

/// Sample values kept per column, and their longest length.
pub const SAMPLES_PER_COLUMN: usize = 5;
pub const SAMPLE_MAX_CHARS: usize = 80;
/// Rows read per table to draw samples from.
pub const SAMPLE_ROWS: i64 = 50;
/// What sync_catalog found for one table, ready to store.
#[derive(Debug, Clone)]
pub struct TableEntry {
    pub schema_name: String,
    pub table_name: String,
    pub description: Option<String>,
    pub column_descriptions: Map<String, Value>,
    pub data_types: Map<String, Value>,
    pub sample_values: Map<String, Value>,
    pub relationships: Vec<Value>,
    pub row_estimate: Option<i64>,
    pub primary_key: Vec<String>,
    pub column_order: Vec<String>,
}

impl TableEntry {
    pub fn source_hash(&self) -> String {
        let canonical = json!([
            self.description,
            self.column_descriptions,
            self.data_types,
            self.sample_values,
            self.relationships,
            self.row_estimate,
            self.primary_key,
            self.column_order,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    pub fn to_row(&self) -> Value {
        json!({
            "schema_name": self.schema_name,
            "table_name": self.table_name,
            "table_description": self.description,
            "column_descriptions": self.column_descriptions,
            "data_types": self.data_types,
            "sample_values": self.sample_values,
            "relationships": self.relationships,
            "row_estimate": self.row_estimate,
            "primary_key": self.primary_key,
            "column_order": self.column_order,
            "source_hash": self.source_hash(),
        })
    }
}

/// Parse the introspection rows into entries (samples filled separately).
pub fn entries_from_introspection(schema: &str, rows: &[String]) -> Vec<TableEntry> {
    let mut entries: Vec<TableEntry> = Vec::new();
    for raw in rows {
        let Ok(v) = serde_json::from_str::<Value>(raw) else {
            continue;
        };
        let Some(table) = v["table"].as_str() else {
            continue;
        };
        let mut data_types = Map::new();
        let mut column_descriptions = Map::new();
        let mut column_order = Vec::new();
        for col in v["columns"].as_array().into_iter().flatten() {
            let Some(name) = col["name"].as_str() else {
                continue;
            };
            column_order.push(name.to_string());
            data_types.insert(name.to_string(), col["type"].clone());
            if let Some(c) = col["comment"].as_str() {
                column_descriptions.insert(name.to_string(), json!(c));
            }
        }
        let relationships = v["foreign_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|fk| {
                json!({"dir": "out", "columns": fk["columns"], "schema": fk["schema"],
                       "table": fk["table"], "other_columns": fk["other_columns"]})
            })
            .collect();
        entries.push(TableEntry {
            schema_name: schema.to_string(),
            table_name: table.to_string(),
            description: v["comment"].as_str().map(str::to_string),
            column_descriptions,
            data_types,
            sample_values: Map::new(),
            relationships,
            row_estimate: v["row_estimate"].as_i64(),
            primary_key: v["primary_key"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect(),
            column_order,
        });
    }
    add_incoming_relationships(&mut entries);
    entries
}

/// Mirror each foreign key on the table it points to, so either end knows
/// its join partners.
fn add_incoming_relationships(entries: &mut [TableEntry]) {
    let index: HashMap<(String, String), usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| ((e.schema_name.clone(), e.table_name.clone()), i))
        .collect();
    let mut incoming: Vec<(usize, Value)> = Vec::new();
    for e in entries.iter() {
        for rel in &e.relationships {
            let key = (
                rel["schema"].as_str().unwrap_or_default().to_string(),
                rel["table"].as_str().unwrap_or_default().to_string(),
            );
            if let Some(&target) = index.get(&key) {
                incoming.push((
                    target,
                    json!({"dir": "in", "columns": rel["other_columns"], "schema": e.schema_name,
                           "table": e.table_name, "other_columns": rel["columns"]}),
                ));
            }
        }
    }
    for (target, rel) in incoming {
        entries[target].relationships.push(rel);
    }
}

/// Distinct sample values per column from a few rows given as JSON objects.
pub fn samples_from_rows(entry: &TableEntry, rows: &[Value]) -> Map<String, Value> {
    let mut out = Map::new();
    for column in entry.data_types.keys() {
        if !sampled_column(entry, column) {
            continue;
        }
        let mut seen: Vec<String> = Vec::new();
        for row in rows {
            let text = match &row[column] {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let text: String = text.chars().take(SAMPLE_MAX_CHARS).collect();
            // A NUL (MySQL and SQLite text may hold one) cannot be stored
            // in jsonb: such a sample failed the whole sync with 22P05.
            if text.contains('\0') {
                continue;
            }
            if !text.trim().is_empty() && !seen.contains(&text) {
                seen.push(text);
            }
            if seen.len() >= SAMPLES_PER_COLUMN {
                break;
            }
        }
        if !seen.is_empty() {
            out.insert(column.clone(), json!(seen));
        }
    }
    out
}

/// Whether a column's values are sampled: not secret-looking by name, not
/// binary, JSON or a text-search vector.
pub fn sampled_column(entry: &TableEntry, column: &str) -> bool {
    if looks_secret(column) {
        return false;
    }
    let kind = entry.data_types[column].as_str().unwrap_or_default();
    !(kind.starts_with("bytea") || kind.contains("json") || kind.starts_with("tsvector"))
}

/// Entries from introspection texts plus sample rows per table.
pub fn entries_with_samples(
    schema: &str,
    tables: &[String],
    samples: Vec<(String, Vec<Value>)>,
) -> Vec<TableEntry> {
    let mut entries = entries_from_introspection(schema, tables);
    let samples: HashMap<String, Vec<Value>> = samples.into_iter().collect();
    for entry in entries.iter_mut() {
        if let Some(rows) = samples.get(&entry.table_name) {
            entry.sample_values = samples_from_rows(entry, rows);
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intro(table: &str, cols: &[(&str, &str)], fks: Value) -> String {
        let columns: Vec<Value> = cols
            .iter()
            .map(|(n, t)| json!({"name": n, "type": t, "comment": null}))
            .collect();
        json!({"table": table, "kind": "r", "comment": "c", "row_estimate": 7,
               "columns": columns, "primary_key": ["id"], "foreign_keys": fks})
        .to_string()
    }

    #[test]
    fn entries_parse_and_mirror_foreign_keys() {
        let rows = vec![
            intro(
                "orders",
                &[("id", "integer"), ("customer_id", "integer")],
                json!([{"columns": ["customer_id"], "schema": "s", "table": "customers", "other_columns": ["id"]}]),
            ),
            intro(
                "customers",
                &[("id", "integer"), ("name", "text")],
                Value::Null,
            ),
            "not json".to_string(),
        ];
        let e = entries_from_introspection("s", &rows);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].column_order, vec!["id", "customer_id"]);
        assert_eq!(e[0].row_estimate, Some(7));
        assert_eq!(e[0].relationships[0]["dir"], "out");
        assert_eq!(e[1].relationships.len(), 1);
        assert_eq!(e[1].relationships[0]["dir"], "in");
        assert_eq!(e[1].relationships[0]["table"], "orders");
    }

    #[test]
    fn samples_skip_secrets_binary_json_nul_and_duplicates() {
        let e = &entries_from_introspection(
            "s",
            &[intro(
                "t",
                &[
                    ("name", "text"),
                    ("password", "text"),
                    ("blob", "bytea"),
                    ("doc", "jsonb"),
                ],
                Value::Null,
            )],
        )[0];
        assert!(sampled_column(e, "name"));
        assert!(!sampled_column(e, "password"));
        assert!(!sampled_column(e, "blob"));
        assert!(!sampled_column(e, "doc"));
        let rows: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("n{}", i % 7), "password": "x", "blob": "y", "doc": "z"}))
            .chain([json!({"name": "a\u{0}b"}), json!({"name": "x".repeat(200)})])
            .collect();
        let s = samples_from_rows(e, &rows);
        assert_eq!(s.len(), 1);
        let names = s["name"].as_array().unwrap();
        assert_eq!(names.len(), SAMPLES_PER_COLUMN);
        assert_eq!(names[0], "n0");
    }

    #[test]
    fn long_samples_are_cut_and_hash_follows_content() {
        let e =
            &mut entries_from_introspection("s", &[intro("t", &[("name", "text")], Value::Null)])
                [0]
            .clone();
        let s = samples_from_rows(e, &[json!({"name": "é".repeat(200)})]);
        assert_eq!(
            s["name"][0].as_str().unwrap().chars().count(),
            SAMPLE_MAX_CHARS
        );
        let before = e.source_hash();
        e.sample_values = s;
        assert_ne!(before, e.source_hash());
        assert_eq!(e.to_row()["source_hash"], json!(e.source_hash()));
    }

    #[test]
    fn samples_by_table_name() {
        let tables = vec![intro("t", &[("name", "text")], Value::Null)];
        let e = entries_with_samples(
            "main",
            &tables,
            vec![("t".into(), vec![json!({"name": "x"})])],
        );
        assert_eq!(e[0].sample_values["name"], json!(["x"]));
        assert_eq!(e[0].schema_name, "main");
    }
}
