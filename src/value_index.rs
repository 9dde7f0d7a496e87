//! The value index (docs/catalog-search.md, "Values"): at sync, the distinct
//! values of a connection's low-cardinality text columns go into
//! `control_plane.value_index`; a question that names one ("orders shipped
//! to Lyon", "status SHIPPED", "Lyin") finds the table and column holding it.
//!
//! Values are read where the samples are read, by the engine
//! (crate::engine, inside crate::act_as), in batches written by
//! `dbrag_core::values`, never from the columns the samples skip
//! (`dbrag_core::introspect::sampled_column`: secret-looking names, binary
//! and JSON columns). Every read is bounded: rows per table, columns per
//! table, characters per value, distinct values per column, values per
//! tenant. Here: the tenant's bound, storing, and finding the values a
//! question names.

use std::collections::HashSet;

use dbrag_core::sql_text::quote_literal;
pub use dbrag_core::values::Found;
use dbrag_core::values::{indexable, json_rows, BatchResult, MAX_VALUE_CHARS, MAX_VALUE_WORDS};
use dbrag_core::words::{one_edit, value_words as words};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::Value;

use crate::connection_store::Connection;
use crate::error::{raise, DbragError, Kind};
use crate::pg::privileged;
use crate::tenant;

/// Values kept per tenant, over all its connections.
pub const MAX_VALUES_PER_TENANT: i64 = 20_000;
/// Words of a question looked at.
const MAX_QUESTION_WORDS: usize = 256;
/// Typo candidates read per question.
const MAX_TYPO_CANDIDATES: i64 = 2000;
/// Value lines in a prompt.
pub const PROMPT_VALUES: usize = 8;

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
