//! The prompt builder (dbrag_core::prompt) and identifier splitting
//! (dbrag_core::words) on arbitrary catalogs, questions, examples and
//! budgets: it never panics, and without a retry the prompt stays inside
//! its token budget whatever the schema holds.
#![no_main]

use dbrag_core::prompt::{
    build, estimate_tokens, quote_if_needed, PromptColumn, PromptError, PromptExample,
    PromptForeignKey, PromptInput, PromptTable,
};
use dbrag_core::words::{identifier_words, split_identifier};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn text(u: &mut Unstructured) -> Result<String> {
    u.arbitrary()
}

fn strings(u: &mut Unstructured, max: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| text(u)).collect()
}

fn table(u: &mut Unstructured) -> Result<PromptTable> {
    let n = u.int_in_range(0..=12)?;
    let columns = (0..n)
        .map(|_| {
            Ok(PromptColumn {
                name: text(u)?,
                data_type: text(u)?,
                comment: u.arbitrary()?,
                samples: strings(u, 4)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let primary_key = strings(u, 2)?;
    let f = u.int_in_range(0..=2)?;
    let foreign_keys = (0..f)
        .map(|_| {
            Ok(PromptForeignKey {
                columns: strings(u, 2)?,
                target: text(u)?,
                target_columns: strings(u, 2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PromptTable {
        qualified_name: text(u)?,
        description: u.arbitrary()?,
        row_estimate: u.arbitrary()?,
        columns,
        primary_key,
        foreign_keys,
    })
}

fn question_sql_pairs(u: &mut Unstructured, max: usize) -> Result<Vec<PromptExample>> {
    let n = u.int_in_range(0..=max)?;
    (0..n)
        .map(|_| {
            Ok(PromptExample {
                question: text(u)?,
                sql: text(u)?,
            })
        })
        .collect()
}

fn input(u: &mut Unstructured) -> Result<PromptInput> {
    let budget_tokens = u.int_in_range(500..=8000)?;
    let question = text(u)?;
    let default_schema: Option<String> = u.arbitrary()?;
    let t = u.int_in_range(0..=20)?;
    let tables = (0..t).map(|_| table(u)).collect::<Result<Vec<_>>>()?;
    let examples = question_sql_pairs(u, 4)?;
    let documentation = strings(u, 4)?;
    // Earlier turns of a conversation, as many as a long one may carry.
    let conversation = question_sql_pairs(u, 24)?;
    let retry = if u.arbitrary()? {
        Some((text(u)?, text(u)?))
    } else {
        None
    };
    Ok(PromptInput {
        dialect: "PostgreSQL 15".into(),
        // A schema name is an identifier: at most 63 bytes.
        default_schema: default_schema.map(|s| s.chars().take(63).collect()),
        question,
        tables,
        examples,
        documentation,
        budget_tokens,
        retry,
        conversation,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(input) = input(&mut u) else {
        return;
    };
    for t in &input.tables {
        let _ = identifier_words(&t.qualified_name);
        for c in &t.columns {
            let words = split_identifier(&c.name);
            assert!(words.iter().all(|w| !w.is_empty()));
            let q = quote_if_needed(&c.name);
            assert!(q == c.name || (q.starts_with('"') && q.ends_with('"')));
        }
    }
    match build(&input) {
        Ok(p) => {
            assert!(p.tables_included + p.tables_left_out <= input.tables.len());
            assert!(p.user.contains(input.question.trim()));
            if input.retry.is_none() {
                assert!(
                    p.estimated_tokens <= input.budget_tokens,
                    "{} tokens over a budget of {}",
                    p.estimated_tokens,
                    input.budget_tokens
                );
                assert!(
                    estimate_tokens(&p.system) + estimate_tokens(&p.user) <= input.budget_tokens
                );
            }
        }
        Err(PromptError::QuestionTooLong { tokens, limit }) => assert!(tokens > limit),
    }
});
