//! The value index's reads (pg_dbrag's docs/catalog-search.md, "Values"):
//! which columns are read (sampled text columns, at most
//! [`MAX_COLUMNS_PER_TABLE`] per table), the batched statement in each
//! engine's dialect, and which values are kept (low-cardinality columns,
//! short values that look like names). The engines run the statements.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::introspect::{sampled_column, TableEntry};
use crate::sql_text::{quote_ident, quote_mysql};
use crate::words::normalize_value as normalize;

/// Rows read per table to find a column's distinct values.
pub const VALUE_ROWS: usize = 1000;
/// A column whose rows read hold more distinct values than this is not indexed.
pub const MAX_DISTINCT: usize = 50;
/// Longest value indexed, in characters (longer ones are skipped).
pub const MAX_VALUE_CHARS: usize = 100;
/// Text columns read per table.
pub const MAX_COLUMNS_PER_TABLE: usize = 32;
/// Words of the longest value a question can name.
pub const MAX_VALUE_WORDS: usize = 4;
/// Columns read per statement.
pub const BATCH: usize = 32;

/// One value of one column, as read.
#[derive(Debug, Clone)]
pub struct Found {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub value: String,
}

/// Whether a value read is worth indexing: short enough, no control
/// characters, has a letter, at least two characters, at most
/// [`MAX_VALUE_WORDS`] words.
pub fn indexable(value: &str) -> Option<String> {
    // Control characters (a NUL from MySQL or SQLite cannot even be stored
    // in PostgreSQL text) mark data, not a name a question would use.
    if value.chars().count() > MAX_VALUE_CHARS || value.chars().any(char::is_control) {
        return None;
    }
    let norm = normalize(value);
    if norm.chars().count() < 2
        || !norm.chars().any(char::is_alphabetic)
        || norm.split(' ').count() > MAX_VALUE_WORDS
    {
        return None;
    }
    Some(norm)
}

/// Whether a column's declared type is text (or an enum) by its name, for
/// engines whose catalogs are not asked (MySQL, SQLite).
pub fn texty(data_type: &str) -> bool {
    let t = data_type.to_ascii_lowercase();
    ["char", "text", "enum", "clob", "string"]
        .iter()
        .any(|k| t.contains(k))
}

/// Whose SQL a batch is written in.
#[derive(Clone, Copy, PartialEq)]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

/// The columns to read: (entry index, column), at most
/// [`MAX_COLUMNS_PER_TABLE`] per table, only sampled text columns.
pub fn branches(
    entries: &[TableEntry],
    text_columns: Option<&HashSet<(String, String)>>,
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let mut n = 0;
        for c in &e.column_order {
            if n >= MAX_COLUMNS_PER_TABLE {
                break;
            }
            if !e.data_types.contains_key(c) || !sampled_column(e, c) {
                continue;
            }
            let is_text = match text_columns {
                Some(set) => set.contains(&(e.table_name.clone(), c.clone())),
                None => texty(e.data_types[c].as_str().unwrap_or_default()),
            };
            if is_text {
                out.push((i, c.clone()));
                n += 1;
            }
        }
    }
    out
}

/// One statement reading the distinct values of `part` (tagged by their
/// position `b`): per column at most [`MAX_DISTINCT`] + 1 values of at most
/// [`MAX_VALUE_CHARS`] + 1 characters, from at most [`VALUE_ROWS`] rows.
pub fn batch_sql(
    dialect: Dialect,
    entries: &[TableEntry],
    part: &[(usize, usize, String)],
) -> String {
    let rows = VALUE_ROWS;
    let distinct = MAX_DISTINCT + 1;
    let chars = MAX_VALUE_CHARS + 1;
    part.iter()
        .map(|(b, i, col)| {
            let e = &entries[*i];
            match dialect {
                Dialect::Postgres => {
                    let c = quote_ident(col);
                    format!(
                        "SELECT {b} AS b, d.v FROM (SELECT DISTINCT pg_catalog.left(s.{c}::pg_catalog.text, {chars}) AS v \
                         FROM (SELECT {c} FROM {}.{} LIMIT {rows}) s WHERE s.{c} IS NOT NULL LIMIT {distinct}) d",
                        quote_ident(&e.schema_name),
                        quote_ident(&e.table_name)
                    )
                }
                Dialect::Mysql => {
                    let c = quote_mysql(col);
                    format!(
                        "SELECT {b} AS b, d.v FROM (SELECT DISTINCT LEFT(CAST(s.{c} AS CHAR), {chars}) AS v \
                         FROM (SELECT {c} FROM {}.{} LIMIT {rows}) s WHERE s.{c} IS NOT NULL LIMIT {distinct}) d",
                        quote_mysql(&e.schema_name),
                        quote_mysql(&e.table_name)
                    )
                }
                Dialect::Sqlite => {
                    let c = quote_ident(col);
                    format!(
                        "SELECT {b} AS b, d.v FROM (SELECT DISTINCT substr(CAST(s.{c} AS TEXT), 1, {chars}) AS v \
                         FROM (SELECT {c} FROM {}.{} LIMIT {rows}) s WHERE s.{c} IS NOT NULL LIMIT {distinct}) d",
                        quote_ident(crate::dataplane_target::SQLITE_SCHEMA),
                        quote_ident(&e.table_name)
                    )
                }
            }
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Most rows one batch can return.
pub const BATCH_ROWS: usize = BATCH * (MAX_DISTINCT + 1);
/// Most bytes of JSON one batch can return (4 bytes a character, framing).
pub const BATCH_BYTES: usize = BATCH_ROWS * ((MAX_VALUE_CHARS + 1) * 4 + 64);

/// What one statement returned: (branch, value) pairs, or why it failed
/// (the statement's own error: retried column by column).
pub type BatchResult = std::result::Result<Vec<(usize, String)>, String>;

/// Read the values of `branches` in batches through `run`, keep the
/// low-cardinality columns, stop at `budget` values.
pub fn collect_with(
    dialect: Dialect,
    entries: &[TableEntry],
    branches: Vec<(usize, String)>,
    budget: i64,
    mut run: impl FnMut(&str) -> BatchResult,
) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    if budget <= 0 {
        return out;
    }
    let tagged: Vec<(usize, usize, String)> = branches
        .into_iter()
        .enumerate()
        .map(|(b, (i, c))| (b, i, c))
        .collect();
    for part in tagged.chunks(BATCH) {
        let mut per_branch: HashMap<usize, Vec<String>> = HashMap::new();
        match run(&batch_sql(dialect, entries, part)) {
            Ok(rows) => {
                for (b, v) in rows {
                    per_branch.entry(b).or_default().push(v);
                }
            }
            Err(_) => {
                // One unreadable column (a policy's error, a remote grant)
                // must not cost the others their values.
                for one in part.chunks(1) {
                    if let Ok(rows) = run(&batch_sql(dialect, entries, one)) {
                        for (b, v) in rows {
                            per_branch.entry(b).or_default().push(v);
                        }
                    }
                }
            }
        }
        for (b, i, col) in part {
            let Some(values) = per_branch.remove(b) else {
                continue;
            };
            if values.len() > MAX_DISTINCT {
                continue;
            }
            let e = &entries[*i];
            let mut seen: HashSet<String> = HashSet::new();
            for v in values {
                if indexable(&v).is_none() || !seen.insert(v.clone()) {
                    continue;
                }
                out.push(Found {
                    schema: e.schema_name.clone(),
                    table: e.table_name.clone(),
                    column: col.clone(),
                    value: v,
                });
                if out.len() as i64 >= budget {
                    return out;
                }
            }
        }
    }
    out
}

/// The (table, column) pairs of a PostgreSQL schema whose type is a string
/// or an enum (domains over them too).
pub const TEXT_COLUMNS_SQL: &str = "SELECT c.relname::pg_catalog.text, a.attname::pg_catalog.text \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND t.typcategory IN ('S', 'E')";

/// (branch, value) pairs of a batch read as JSON objects {b, v}.
pub fn json_rows(rows: Vec<Value>) -> Vec<(usize, String)> {
    rows.into_iter()
        .filter_map(|r| {
            let b = match &r["b"] {
                Value::Number(n) => usize::try_from(n.as_u64()?).ok()?,
                Value::String(s) => s.parse().ok()?,
                _ => return None,
            };
            let v = match &r["v"] {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                other => other.to_string(),
            };
            Some((b, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(cols: &[(&str, &str)]) -> TableEntry {
        let columns: Vec<Value> = cols
            .iter()
            .map(|(n, t)| json!({"name": n, "type": t}))
            .collect();
        let row = json!({"table": "t", "columns": columns}).to_string();
        crate::introspect::entries_from_introspection("s", &[row]).remove(0)
    }

    #[test]
    fn indexable_values_look_like_names() {
        assert_eq!(indexable("Lyon").as_deref(), Some("lyon"));
        assert!(indexable("x").is_none());
        assert!(indexable("12345").is_none());
        assert!(indexable("a\u{0}b").is_none());
        assert!(indexable("one two three four five").is_none());
        assert!(indexable(&"y".repeat(MAX_VALUE_CHARS + 1)).is_none());
    }

    #[test]
    fn branches_skip_secret_and_non_text_columns() {
        let e = vec![entry(&[
            ("city", "varchar(20)"),
            ("password", "text"),
            ("n", "integer"),
        ])];
        assert_eq!(branches(&e, None), vec![(0, "city".to_string())]);
        let text: HashSet<(String, String)> = [("t".to_string(), "n".to_string())].into();
        assert_eq!(branches(&e, Some(&text)), vec![(0, "n".to_string())]);
    }

    #[test]
    fn batches_quote_per_dialect_and_keep_low_cardinality_columns() {
        let e = vec![entry(&[("ci\"ty", "text"), ("code", "text")])];
        let todo = branches(&e, None);
        let mut sqls = Vec::new();
        let found = collect_with(Dialect::Mysql, &e, todo, 10, |sql| {
            sqls.push(sql.to_string());
            // city: two values, one repeated; code: too many distinct values.
            let mut rows = vec![
                (0, "Lyon".to_string()),
                (0, "Lyon".to_string()),
                (0, "Paris".to_string()),
            ];
            rows.extend((0..=MAX_DISTINCT).map(|i| (1, format!("code {i}"))));
            Ok(rows)
        });
        assert!(sqls[0].contains("`ci\"ty`") && sqls[0].contains("UNION ALL"));
        let values: Vec<&str> = found.iter().map(|f| f.value.as_str()).collect();
        assert_eq!(values, vec!["Lyon", "Paris"]);
        assert!(
            batch_sql(Dialect::Postgres, &e, &[(0, 0, "ci\"ty".into())]).contains("\"ci\"\"ty\"")
        );
        assert!(batch_sql(Dialect::Sqlite, &e, &[(0, 0, "code".into())]).contains("\"main\".\"t\""));
    }

    #[test]
    fn a_failed_batch_is_retried_column_by_column_and_budget_stops() {
        let e = vec![entry(&[("a", "text"), ("b", "text")])];
        let todo = branches(&e, None);
        let found = collect_with(Dialect::Postgres, &e, todo, 1, |sql| {
            if sql.contains("UNION ALL") {
                Err("one column failed".into())
            } else if sql.contains("\"b\"") {
                Ok(vec![(1, "Berlin".to_string()), (1, "Bonn".to_string())])
            } else {
                Err("denied".into())
            }
        });
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].column, "b");
    }

    #[test]
    fn json_rows_read_numbers_and_strings() {
        let rows = vec![
            json!({"b": 1, "v": "x"}),
            json!({"b": "2", "v": 3}),
            json!({"b": null, "v": "y"}),
            json!({"b": 0, "v": null}),
        ];
        assert_eq!(
            json_rows(rows),
            vec![(1, "x".to_string()), (2, "3".to_string())]
        );
    }
}
