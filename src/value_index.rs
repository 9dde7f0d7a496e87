//! The value index (docs/catalog-search.md, "Values"): at sync, the distinct
//! values of a connection's low-cardinality text columns go into
//! `control_plane.value_index`; a question that names one ("orders shipped
//! to Lyon", "status SHIPPED", "Lyin") finds the table and column holding it.
//!
//! Values are read where the samples are read, as the tenant's role
//! (crate::catalog runs this inside crate::act_as), never from the columns
//! the samples skip (crate::sampled_column: secret-looking names,
//! binary and JSON columns). Every read is bounded: rows per table, columns
//! per table, characters per value, distinct values per column, values per
//! tenant.

use std::collections::{HashMap, HashSet};

use dbrag_core::words::{normalize_value as normalize, one_edit, value_words as words};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::Value;

use crate::connection_store::Connection;
use crate::error::{raise, DbragError, Kind};
use crate::pg::privileged;
use crate::tenant;
use dbrag_core::introspect::{sampled_column, TableEntry};
use dbrag_core::sql_text::{quote_ident, quote_literal, quote_mysql};

/// Rows read per table to find a column's distinct values.
pub const VALUE_ROWS: usize = 1000;
/// A column whose rows read hold more distinct values than this is not indexed.
pub const MAX_DISTINCT: usize = 50;
/// Longest value indexed, in characters (longer ones are skipped).
pub const MAX_VALUE_CHARS: usize = 100;
/// Text columns read per table.
pub const MAX_COLUMNS_PER_TABLE: usize = 32;
/// Values kept per tenant, over all its connections.
pub const MAX_VALUES_PER_TENANT: i64 = 20_000;
/// Words of the longest value a question can name.
const MAX_VALUE_WORDS: usize = 4;
/// Columns read per statement.
const BATCH: usize = 32;
/// Words of a question looked at.
const MAX_QUESTION_WORDS: usize = 256;
/// Typo candidates read per question.
const MAX_TYPO_CANDIDATES: i64 = 2000;
/// Value lines in a prompt.
pub const PROMPT_VALUES: usize = 8;

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
fn indexable(value: &str) -> Option<String> {
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
fn texty(data_type: &str) -> bool {
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
fn batch_sql(dialect: Dialect, entries: &[TableEntry], part: &[(usize, usize, String)]) -> String {
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
                        quote_ident(dbrag_core::dataplane_target::SQLITE_SCHEMA),
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

/// A helper-process batch (MySQL, SQLite): its rows, or the statement's
/// own failure (retried column by column); any other failure is raised.
pub fn helper_batch(r: crate::error::Result<Vec<Value>>) -> BatchResult {
    match r {
        Ok(rows) => Ok(json_rows(rows)),
        Err(e) if matches!(e.kind, Kind::Remote | Kind::Statement | Kind::TooLarge) => {
            Err(e.to_string())
        }
        Err(e) => e.raise(),
    }
}

/// How many values this connection may keep: the tenant's bound less what
/// its other connections hold.
pub fn budget(conn: &Connection) -> i64 {
    let t = tenant::to_pg(conn.tenant_id);
    let c = tenant::to_pg(conn.id);
    let others: i64 = privileged::as_extension(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT pg_catalog.count(*) FROM control_plane.value_index \
             WHERE tenant_id = $1 AND connection_id <> $2",
            &[DatumWithOid::from(t), DatumWithOid::from(c)],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(0);
    (MAX_VALUES_PER_TENANT - others).max(0)
}

/// Replace the connection's values with `found`.
pub fn store(conn: &Connection, found: &[Found]) {
    let t = tenant::to_pg(conn.tenant_id);
    let c = tenant::to_pg(conn.id);
    let mut schemas = Vec::with_capacity(found.len());
    let mut tables = Vec::with_capacity(found.len());
    let mut columns = Vec::with_capacity(found.len());
    let mut values = Vec::with_capacity(found.len());
    let mut norms = Vec::with_capacity(found.len());
    for f in found {
        let Some(norm) = indexable(&f.value) else {
            continue;
        };
        schemas.push(f.schema.clone());
        tables.push(f.table.clone());
        columns.push(f.column.clone());
        values.push(f.value.clone());
        norms.push(norm);
    }
    privileged::as_extension(|| {
        Spi::connect_mut(|client| {
            client.update(
                "DELETE FROM control_plane.value_index WHERE tenant_id = $1 AND connection_id = $2",
                None,
                &[DatumWithOid::from(t), DatumWithOid::from(c)],
            )?;
            if !values.is_empty() {
                client.update(
                    "INSERT INTO control_plane.value_index \
                       (tenant_id, connection_id, schema_name, table_name, column_name, value, value_norm) \
                     SELECT $1, $2, u.s, u.t, u.c, u.v, u.n \
                     FROM ROWS FROM (pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), \
                          pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), \
                          pg_catalog.unnest($7::text[])) AS u(s, t, c, v, n) \
                     ON CONFLICT DO NOTHING",
                    None,
                    &[
                        DatumWithOid::from(t),
                        DatumWithOid::from(c),
                        DatumWithOid::from(schemas),
                        DatumWithOid::from(tables),
                        DatumWithOid::from(columns),
                        DatumWithOid::from(values),
                        DatumWithOid::from(norms),
                    ],
                )?;
            }
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .unwrap_or_else(|e| {
        raise(
            Kind::NotConfigured,
            format!("storing the value index failed: {e}"),
        )
    });
}

/// A value a question names.
#[derive(Debug, Clone)]
pub struct Match {
    pub connection_id: uuid::Uuid,
    pub schema: String,
    pub table: String,
    pub column: String,
    pub value: String,
    /// The question's words that name it.
    pub said: String,
    pub score: f32,
}

/// Words too common in questions to name a value on their own.
const STOPWORDS: &[&str] = &[
    "a", "all", "an", "and", "are", "as", "at", "be", "by", "each", "for", "from", "give", "has",
    "have", "how", "in", "is", "it", "its", "list", "many", "me", "much", "my", "of", "on", "or",
    "our", "per", "show", "than", "that", "the", "their", "them", "there", "this", "to", "was",
    "were", "what", "when", "where", "which", "who", "with",
];

/// Up to four-word runs of the question's words (single stop words left
/// out), with the word span each covers.
fn grams(words: &[String], max_n: usize) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for n in 1..=max_n {
        for start in 0..words.len().saturating_sub(n - 1) {
            if n == 1 && STOPWORDS.contains(&words[start].as_str()) {
                continue;
            }
            let g = words[start..start + n].join(" ");
            if g.chars().count() < 2 || g.chars().count() > MAX_VALUE_CHARS {
                continue;
            }
            if seen.insert(g.clone()) {
                out.push((g, start, start + n));
            }
        }
    }
    out
}

type Row = (pgrx::Uuid, String, String, String, String, String);

fn read_rows(sql: &str, args: &[DatumWithOid]) -> Vec<Row> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(sql, None, args)? {
            let Some(c) = row.get::<pgrx::Uuid>(1)? else {
                continue;
            };
            out.push((
                c,
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<String>(4)?.unwrap_or_default(),
                row.get::<String>(5)?.unwrap_or_default(),
                row.get::<String>(6)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| raise(Kind::NotConfigured, format!("value search failed: {e}")))
}

/// The values `question` names in the tenant's index (of one connection,
/// or of all), best first: exact matches of one to four words (1.0), then
/// one-typo matches of one or two words of four letters or more (0.5).
/// Run as the caller (RLS applies) unless `as_extension`.
pub fn find(
    tenant_id: uuid::Uuid,
    connection: Option<uuid::Uuid>,
    question: &str,
    k: usize,
    as_extension: bool,
) -> Vec<Match> {
    let head: String = question.chars().take(4000).collect();
    let mut ws = words(&head);
    ws.truncate(MAX_QUESTION_WORDS);
    if ws.is_empty() || k == 0 {
        return Vec::new();
    }
    let all = grams(&ws, MAX_VALUE_WORDS);
    let t = tenant::to_pg(tenant_id);
    let c = connection.map(tenant::to_pg);
    let run = |sql: &str, args: &[DatumWithOid]| {
        if as_extension {
            privileged::as_extension(|| read_rows(sql, args))
        } else {
            privileged::with_pinned_search_path(|| read_rows(sql, args))
        }
    };
    let exact_terms: Vec<String> = all.iter().map(|(g, _, _)| g.clone()).collect();
    let exact = run(
        "SELECT v.connection_id, v.schema_name, v.table_name, v.column_name, v.value, v.value_norm \
         FROM control_plane.value_index v \
         WHERE v.tenant_id = $1 AND ($2::uuid IS NULL OR v.connection_id = $2) \
           AND v.value_norm = ANY ($3::text[]) \
         ORDER BY pg_catalog.length(v.value_norm) DESC, v.table_name, v.column_name, v.value LIMIT 500",
        &[
            DatumWithOid::from(t),
            DatumWithOid::from(c),
            DatumWithOid::from(exact_terms),
        ],
    );
    let mut out: Vec<Match> = Vec::new();
    let mut covered = vec![false; ws.len()];
    let mut keys: HashSet<(pgrx::Uuid, String, String, String, String)> = HashSet::new();
    for (conn, s, tb, col, v, norm) in exact {
        if let Some((_, a, b)) = all.iter().find(|(g, _, _)| *g == norm) {
            covered[*a..*b].iter_mut().for_each(|x| *x = true);
        }
        if keys.insert((conn, s.clone(), tb.clone(), col.clone(), v.clone())) {
            out.push(Match {
                connection_id: tenant::from_pg(conn),
                schema: s,
                table: tb,
                column: col,
                value: v,
                said: norm,
                score: 1.0,
            });
        }
    }
    // One typo: words (and pairs) of four letters or more no exact match covers.
    let typo: Vec<String> = grams(&ws, 2)
        .into_iter()
        .filter(|(g, a, b)| g.chars().count() >= 4 && !covered[*a..*b].iter().any(|x| *x))
        .map(|(g, _, _)| g)
        .collect();
    if !typo.is_empty() {
        let prefixes: Vec<String> = typo.iter().map(|g| g.chars().take(2).collect()).collect();
        let suffixes: Vec<String> = typo
            .iter()
            .map(|g| {
                let cs: Vec<char> = g.chars().collect();
                cs[cs.len() - 2..].iter().collect()
            })
            .collect();
        let min_len = (typo.iter().map(|g| g.chars().count()).min().unwrap_or(4) as i32 - 1).max(4);
        let max_len = typo.iter().map(|g| g.chars().count()).max().unwrap_or(4) as i32 + 1;
        let candidates = run(
            "SELECT v.connection_id, v.schema_name, v.table_name, v.column_name, v.value, v.value_norm \
             FROM control_plane.value_index v \
             WHERE v.tenant_id = $1 AND ($2::uuid IS NULL OR v.connection_id = $2) \
               AND (v.value_prefix = ANY ($3::text[]) OR v.value_suffix = ANY ($4::text[])) \
               AND pg_catalog.length(v.value_norm) BETWEEN $5 AND $6 \
             LIMIT $7",
            &[
                DatumWithOid::from(t),
                DatumWithOid::from(c),
                DatumWithOid::from(prefixes),
                DatumWithOid::from(suffixes),
                DatumWithOid::from(min_len),
                DatumWithOid::from(max_len),
                DatumWithOid::from(MAX_TYPO_CANDIDATES),
            ],
        );
        for (conn, s, tb, col, v, norm) in candidates {
            let Some(said) = typo.iter().find(|g| one_edit(g, &norm)) else {
                continue;
            };
            if keys.insert((conn, s.clone(), tb.clone(), col.clone(), v.clone())) {
                out.push(Match {
                    connection_id: tenant::from_pg(conn),
                    schema: s,
                    table: tb,
                    column: col,
                    value: v,
                    said: said.clone(),
                    score: 0.5,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.value.chars().count().cmp(&a.value.chars().count()))
            .then_with(|| (&a.table, &a.column, &a.value).cmp(&(&b.table, &b.column, &b.value)))
    });
    out.truncate(k);
    out
}

/// The prompt's line for a match: `'Lyon' is a value of customers.city`
/// (the schema named when it is not the connection's default one).
pub fn prompt_line(m: &Match, default_schema: &str) -> String {
    let q = dbrag_core::prompt::quote_if_needed;
    let table = if m.schema == default_schema {
        format!("{}.{}", q(&m.table), q(&m.column))
    } else {
        format!("{}.{}.{}", q(&m.schema), q(&m.table), q(&m.column))
    };
    let mut line = format!("{} is a value of {table}", quote_literal(&m.value));
    if m.score < 1.0 {
        line.push_str(&format!(" (the question writes \"{}\")", m.said));
    }
    line
}

/// `dbrag.search_values(question, k)`: the values a question names in the
/// index of the caller's tenant (all its connections), under the caller's
/// row security.
#[pg_extern(stable)]
fn search_values(
    question: Option<&str>,
    k: default!(Option<i32>, 10),
) -> TableIterator<
    'static,
    (
        name!(connection_id, pgrx::Uuid),
        name!(schema_name, String),
        name!(table_name, String),
        name!(column_name, String),
        name!(value, String),
        name!(score, f32),
    ),
> {
    let question = crate::question::check_question(question);
    let k = k.unwrap_or(10);
    if !(1..=1000).contains(&k) {
        DbragError::new(Kind::BadArgument, "k must be between 1 and 1000").raise();
    }
    let tenant_id = tenant::require();
    let found = find(tenant_id, None, &question, k as usize, false);
    TableIterator::new(found.into_iter().map(|m| {
        (
            tenant::to_pg(m.connection_id),
            m.schema,
            m.table,
            m.column,
            m.value,
            m.score,
        )
    }))
}
