//! The model's prompt: catalog hits, examples and documentation inside a
//! token budget that holds whatever the schema's size (docs/llm-and-guard.md). Tables come
//! in rank order; a table that does not fit whole keeps its key columns and
//! the columns the question mentions; what still does not fit is left out
//! and counted.

use std::collections::HashSet;

/// One column as the prompt shows it.
#[derive(Debug, Clone, Default)]
pub struct PromptColumn {
    pub name: String,
    pub data_type: String,
    pub comment: Option<String>,
    pub samples: Vec<String>,
}

/// A foreign key from this table's `columns` to `target` (`schema.table`).
#[derive(Debug, Clone, Default)]
pub struct PromptForeignKey {
    pub columns: Vec<String>,
    pub target: String,
    pub target_columns: Vec<String>,
}

/// One catalog table.
#[derive(Debug, Clone, Default)]
pub struct PromptTable {
    pub qualified_name: String,
    pub description: Option<String>,
    pub row_estimate: Option<i64>,
    pub columns: Vec<PromptColumn>,
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<PromptForeignKey>,
}

/// A question→SQL pair the tenant taught.
#[derive(Debug, Clone)]
pub struct PromptExample {
    pub question: String,
    pub sql: String,
}

/// Everything a prompt is made of.
#[derive(Debug, Clone)]
pub struct PromptInput {
    pub dialect: String,
    pub default_schema: Option<String>,
    pub question: String,
    /// Best first.
    pub tables: Vec<PromptTable>,
    /// Most similar first.
    pub examples: Vec<PromptExample>,
    /// Most similar first.
    pub documentation: Vec<String>,
    pub budget_tokens: usize,
    /// The previous attempt and its error, for the one retry.
    pub retry: Option<(String, String)>,
    /// Earlier turns of the conversation (question and the SQL that
    /// answered it, never rows), newest first. Kept newest first inside
    /// their share of the budget and shown oldest first.
    pub conversation: Vec<PromptExample>,
}

/// Characters of an earlier turn's question and SQL shown in the prompt.
pub const TURN_QUESTION_CHARS: usize = 500;
pub const TURN_SQL_CHARS: usize = 2000;
/// Most tokens the earlier turns take, whatever the budget.
pub const CONVERSATION_MAX_TOKENS: usize = 4000;

/// The two messages sent to the model, and how they were fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    pub estimated_tokens: usize,
    pub tables_included: usize,
    pub tables_left_out: usize,
    pub columns_trimmed: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PromptError {
    QuestionTooLong { tokens: usize, limit: usize },
}

impl std::fmt::Display for PromptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptError::QuestionTooLong { tokens, limit } => write!(
                f,
                "the question is about {tokens} tokens; at most {limit} fit the prompt budget"
            ),
        }
    }
}

/// A conservative token estimate: about four characters a token for
/// English and SQL, rounded up.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

const SYSTEM: &str = "You translate questions into SQL for a {dialect} database.\n\
Answer with exactly one read-only SELECT statement (WITH is allowed) in a ```sql code block, nothing else.\n\
Use only the tables and columns listed below; never system catalogs, never statements that change data or settings.\n\
If the question cannot be answered from these tables, answer with SELECT NULL WHERE false and say nothing else.";

/// The question's words (singular forms) and its identifier-like tokens
/// (`col_7`, `unit_price`) as written.
fn question_words(question: &str) -> HashSet<String> {
    let mut out: HashSet<String> = question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(|w| normalise(&w.to_lowercase()))
        .collect();
    out.extend(
        question
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| w.contains('_'))
            .map(str::to_lowercase),
    );
    out
}

/// A crude singular form, so "orders" meets "order_id".
fn normalise(word: &str) -> String {
    let w = word.trim_end_matches("es").trim_end_matches('s');
    if w.len() >= 3 {
        w.to_string()
    } else {
        word.to_string()
    }
}

fn mentions(column: &PromptColumn, words: &HashSet<String>) -> bool {
    crate::words::split_identifier(&column.name)
        .iter()
        .any(|w| words.contains(&normalise(w)))
        || column.comment.as_deref().is_some_and(|c| {
            c.split(|ch: char| !ch.is_alphanumeric())
                .any(|w| w.len() > 2 && words.contains(&normalise(&w.to_lowercase())))
        })
}

/// A column's definition and its trailing note (comment, samples).
fn render_column(table: &PromptTable, c: &PromptColumn) -> (String, String) {
    let mut line = format!("  {} {}", quote_if_needed(&c.name), c.data_type);
    if table.primary_key.len() == 1 && table.primary_key[0] == c.name {
        line.push_str(" PRIMARY KEY");
    }
    for fk in &table.foreign_keys {
        if fk.columns.len() == 1 && fk.columns[0] == c.name {
            line.push_str(&format!(
                " REFERENCES {}({})",
                fk.target,
                fk.target_columns
                    .iter()
                    .map(|s| quote_if_needed(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let mut notes = Vec::new();
    if let Some(comment) = &c.comment {
        notes.push(one_line(comment, 160));
    }
    if !c.samples.is_empty() {
        let samples: Vec<String> = c
            .samples
            .iter()
            .take(3)
            .map(|s| format!("'{}'", one_line(s, 40).replace('\'', "''")))
            .collect();
        notes.push(format!("e.g. {}", samples.join(", ")));
    }
    (line, notes.join("; "))
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// Longest explanation kept (`explain_sql`), in characters.
pub const MAX_EXPLANATION_CHARS: usize = 4000;

/// The explanation in the model's answer: code blocks and control
/// characters removed, whitespace tidied, at most
/// `MAX_EXPLANATION_CHARS`; None when no prose is left.
pub fn clean_explanation(answer: &str) -> Option<String> {
    let mut prose = String::new();
    let mut in_fence = false;
    for line in answer.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    let cleaned: String = prose
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let lines: Vec<&str> = cleaned.lines().map(str::trim_end).collect();
    let mut text = lines.join("\n");
    while text.contains("\n\n\n") {
        text = text.replace("\n\n\n", "\n\n");
    }
    let text = text.trim();
    if !text.chars().any(char::is_alphanumeric) {
        return None;
    }
    Some(match text.char_indices().nth(MAX_EXPLANATION_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    })
}

/// At most `max` characters of `s`, with "…" when cut (line breaks kept).
fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// Identifiers that are not plain lower-case words are double-quoted.
pub fn quote_if_needed(ident: &str) -> String {
    let plain = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// Render a table with the given columns; `hidden` columns are counted.
fn render_table(table: &PromptTable, columns: &[&PromptColumn], hidden: usize) -> String {
    let mut out = format!("-- {}", table.qualified_name);
    if let Some(d) = &table.description {
        out.push_str(&format!(": {}", one_line(d, 300)));
    }
    if let Some(n) = table.row_estimate {
        out.push_str(&format!(" (about {n} rows)"));
    }
    out.push('\n');
    out.push_str(&format!("CREATE TABLE {} (\n", table.qualified_name));
    let mut items: Vec<(String, String)> =
        columns.iter().map(|c| render_column(table, c)).collect();
    if table.primary_key.len() > 1 {
        let pk: Vec<String> = table
            .primary_key
            .iter()
            .map(|s| quote_if_needed(s))
            .collect();
        items.push((format!("  PRIMARY KEY ({})", pk.join(", ")), String::new()));
    }
    for fk in table.foreign_keys.iter().filter(|fk| fk.columns.len() > 1) {
        items.push((
            format!(
                "  FOREIGN KEY ({}) REFERENCES {}({})",
                fk.columns
                    .iter()
                    .map(|s| quote_if_needed(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                fk.target,
                fk.target_columns
                    .iter()
                    .map(|s| quote_if_needed(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            String::new(),
        ));
    }
    let last = items.len().saturating_sub(1);
    for (i, (def, note)) in items.iter().enumerate() {
        out.push_str(def);
        if i < last {
            out.push(',');
        }
        if !note.is_empty() {
            out.push_str(" -- ");
            out.push_str(note);
        }
        out.push('\n');
    }
    if hidden > 0 {
        out.push_str(&format!("  -- {hidden} more columns not shown\n"));
    }
    out.push_str(");\n");
    out
}

/// A table's whole definition as the prompt shows it.
pub fn table_ddl(table: &PromptTable) -> String {
    let all: Vec<&PromptColumn> = table.columns.iter().collect();
    render_table(table, &all, 0)
}

/// The JSON object in a model's answer to a describe request:
/// `{"table": "...", "columns": {"col": "..."}}`, fences and prose around it
/// ignored. Descriptions are flattened to one line and bounded.
pub fn parse_descriptions(answer: &str) -> Option<(Option<String>, Vec<(String, String)>)> {
    let start = answer.find('{')?;
    let end = answer.rfind('}')?;
    if end <= start {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&answer[start..=end]).ok()?;
    let table = v
        .get("table")
        .and_then(|t| t.as_str())
        .map(|t| one_line(t, 400))
        .filter(|t| !t.is_empty());
    let columns = v
        .get("columns")
        .and_then(|c| c.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|d| (k.clone(), one_line(d, 200))))
                .filter(|(_, d)| !d.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some((table, columns))
}

/// The table whole if it fits in `room` tokens, else trimmed to its key
/// columns and the columns the question mentions (then others, in order,
/// while they fit); None when not even the key columns fit.
fn fit_table(table: &PromptTable, words: &HashSet<String>, room: usize) -> Option<(String, usize)> {
    let all: Vec<&PromptColumn> = table.columns.iter().collect();
    let whole = render_table(table, &all, 0);
    if estimate_tokens(&whole) <= room {
        return Some((whole, 0));
    }
    let keyish = |c: &PromptColumn| {
        table.primary_key.contains(&c.name)
            || table
                .foreign_keys
                .iter()
                .any(|fk| fk.columns.contains(&c.name))
    };
    // Key columns, then columns the question names exactly, then columns
    // sharing a word with it; trimming takes from the end of that order.
    let tokens: HashSet<String> = words.iter().cloned().collect();
    let exact = |c: &PromptColumn| tokens.contains(&c.name.to_lowercase());
    let mut keep: Vec<&PromptColumn> = Vec::new();
    for pass in 0..3 {
        for c in &table.columns {
            let wanted = match pass {
                0 => keyish(c),
                1 => exact(c),
                _ => mentions(c, words),
            };
            if wanted && !keep.iter().any(|k| k.name == c.name) {
                keep.push(c);
            }
        }
    }
    let mut rendered = render_table(table, &keep, table.columns.len() - keep.len());
    while estimate_tokens(&rendered) > room && !keep.is_empty() {
        let non_key = keep.iter().filter(|c| !keyish(c)).count();
        // Far over: drop half of the non-key columns at once.
        let mut to_drop = if non_key > 8 && estimate_tokens(&rendered) > room * 2 {
            non_key / 2
        } else {
            1
        };
        while to_drop > 0 && !keep.is_empty() {
            let at = keep
                .iter()
                .rposition(|c| !keyish(c))
                .unwrap_or(keep.len() - 1);
            keep.remove(at);
            to_drop -= 1;
        }
        rendered = render_table(table, &keep, table.columns.len() - keep.len());
    }
    if keep.is_empty() {
        return None;
    }
    for c in &table.columns {
        if keep.iter().any(|k| k.name == c.name) {
            continue;
        }
        let mut more = keep.clone();
        more.push(c);
        let candidate = render_table(table, &more, table.columns.len() - more.len());
        if estimate_tokens(&candidate) > room {
            break;
        }
        keep = more;
        rendered = candidate;
    }
    Some((rendered, table.columns.len() - keep.len()))
}

/// Build the prompt inside `budget_tokens`.
pub fn build(input: &PromptInput) -> Result<Prompt, PromptError> {
    let system = SYSTEM.replace("{dialect}", &input.dialect);
    let mut tail = String::new();
    if let Some((sql, error)) = &input.retry {
        tail.push_str(&format!(
            "\nYour previous answer was:\n```sql\n{}\n```\nIt failed with: {}\nWrite a corrected statement.\n",
            sql,
            one_line(error, 600)
        ));
    }
    tail.push_str(&format!("\nQuestion: {}\n", input.question.trim()));
    let mut head = format!("Dialect: {}\n", input.dialect);
    if let Some(schema) = &input.default_schema {
        head.push_str(&format!(
            "Default schema: {schema} (its tables may be written unqualified)\n"
        ));
    }
    let fixed = estimate_tokens(&system) + estimate_tokens(&head) + estimate_tokens(&tail) + 16;
    let question_limit = input.budget_tokens / 2;
    if estimate_tokens(&input.question) > question_limit {
        return Err(PromptError::QuestionTooLong {
            tokens: estimate_tokens(&input.question),
            limit: question_limit,
        });
    }
    let available = input.budget_tokens.saturating_sub(fixed);
    // Tables first; examples and documentation get a fixed share and give
    // what they do not use back to the tables.
    let example_share = available * 15 / 100;
    let doc_share = available * 10 / 100;

    let mut examples = String::new();
    for ex in &input.examples {
        let block = format!(
            "Q: {}\n```sql\n{}\n```\n",
            one_line(&ex.question, 400),
            ex.sql.trim()
        );
        if estimate_tokens(&examples) + estimate_tokens(&block) > example_share {
            continue;
        }
        examples.push_str(&block);
    }
    let mut docs = String::new();
    for d in &input.documentation {
        let block = format!("- {}\n", one_line(d, 1200));
        if estimate_tokens(&docs) + estimate_tokens(&block) > doc_share {
            continue;
        }
        docs.push_str(&block);
    }
    // Earlier turns: newest first while they fit; an older turn never
    // displaces a newer one, and the first that does not fit ends the list.
    let conversation_share = (available * 20 / 100).min(CONVERSATION_MAX_TOKENS);
    let mut turns: Vec<String> = Vec::new();
    let mut turn_tokens = 0;
    for turn in &input.conversation {
        let block = format!(
            "Q: {}\n```sql\n{}\n```\n",
            one_line(&turn.question, TURN_QUESTION_CHARS),
            cut_chars(turn.sql.trim(), TURN_SQL_CHARS)
        );
        let t = estimate_tokens(&block);
        if turn_tokens + t > conversation_share {
            break;
        }
        turn_tokens += t;
        turns.push(block);
    }
    let conversation: String = turns.into_iter().rev().collect();
    let mut table_room = available
        .saturating_sub(
            estimate_tokens(&examples) + estimate_tokens(&docs) + estimate_tokens(&conversation),
        )
        .saturating_sub(24);
    let words = question_words(&input.question);
    let mut tables = String::new();
    let (mut included, mut trimmed) = (0, 0);
    // Once the room is nearly used up, lower-ranked tables are not tried:
    // the cost stays bounded by the budget, not by the schema's size.
    let mut misses = 0;
    for t in &input.tables {
        if table_room < 24 || misses >= 3 {
            break;
        }
        match fit_table(t, &words, table_room) {
            Some((text, hidden)) => {
                table_room = table_room.saturating_sub(estimate_tokens(&text));
                tables.push_str(&text);
                tables.push('\n');
                included += 1;
                trimmed += hidden;
                if hidden > 0 {
                    misses += 1;
                }
            }
            None => misses += 1,
        }
    }
    let mut user = head;
    user.push_str("\nTables:\n");
    user.push_str(if tables.is_empty() {
        "(none found for this question)\n"
    } else {
        &tables
    });
    if !examples.is_empty() {
        user.push_str("\nExamples of questions and the SQL that answers them:\n");
        user.push_str(&examples);
    }
    if !docs.is_empty() {
        user.push_str("\nDocumentation:\n");
        user.push_str(&docs);
    }
    if !conversation.is_empty() {
        user.push_str(
            "\nEarlier in this conversation (oldest first); the question may refer to it:\n",
        );
        user.push_str(&conversation);
    }
    user.push_str(&tail);
    let estimated_tokens = estimate_tokens(&system) + estimate_tokens(&user);
    Ok(Prompt {
        system,
        user,
        estimated_tokens,
        tables_included: included,
        tables_left_out: input.tables.len() - included,
        columns_trimmed: trimmed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, ncols: usize) -> PromptTable {
        PromptTable {
            qualified_name: format!("s.{name}"),
            description: Some(format!("the {name} table")),
            row_estimate: Some(100),
            columns: (0..ncols)
                .map(|i| PromptColumn {
                    name: if i == 0 {
                        "id".into()
                    } else {
                        format!("col_{i}")
                    },
                    data_type: "integer".into(),
                    comment: (i % 3 == 0).then(|| format!("comment of column {i}")),
                    samples: vec!["1".into(), "2".into()],
                })
                .collect(),
            primary_key: vec!["id".into()],
            foreign_keys: vec![],
        }
    }

    fn input(tables: Vec<PromptTable>, budget: usize) -> PromptInput {
        PromptInput {
            dialect: "PostgreSQL 15".into(),
            default_schema: Some("s".into()),
            question: "how many rows have col_7 above 3".into(),
            tables,
            examples: vec![PromptExample {
                question: "count rows".into(),
                sql: "SELECT count(*) FROM s.t0".into(),
            }],
            documentation: vec!["col_7 is measured in euros".into()],
            budget_tokens: budget,
            retry: None,
            conversation: vec![],
        }
    }

    fn turn(i: usize) -> PromptExample {
        PromptExample {
            question: format!("question number {i}"),
            sql: format!("SELECT {i} FROM s.t0"),
        }
    }

    #[test]
    fn conversation_comes_before_the_question_oldest_first() {
        let mut i = input(vec![table("t0", 3)], 6000);
        // Newest first, as the history lookup returns them.
        i.conversation = vec![turn(2), turn(1)];
        let p = build(&i).unwrap();
        let one = p.user.find("question number 1").unwrap();
        let two = p.user.find("question number 2").unwrap();
        let q = p.user.find("Question: how many rows").unwrap();
        assert!(one < two && two < q);
        assert!(p.user.contains("SELECT 2 FROM s.t0"));
    }

    #[test]
    fn conversation_keeps_the_newest_turns_inside_its_share() {
        for budget in [500, 2000, 6000, 200_000] {
            let mut i = input(vec![table("t0", 3)], budget);
            i.conversation = (0..500).rev().map(turn).collect();
            let mut big = turn(1000);
            big.sql = format!("SELECT {} FROM s.t0", "x, ".repeat(10_000));
            big.question = "long ".repeat(5000);
            i.conversation.insert(3, big);
            let p = build(&i).unwrap();
            assert!(
                p.estimated_tokens <= budget,
                "{} > {budget}",
                p.estimated_tokens
            );
            let shown: Vec<usize> = (0..500)
                .filter(|n| p.user.contains(&format!("question number {n}\n")))
                .collect();
            // A contiguous run of the newest turns.
            if let Some(oldest) = shown.first() {
                assert_eq!(shown, (*oldest..500).collect::<Vec<_>>());
            }
            assert!(shown.len() < 500);
            assert!(p.user.chars().count() < (CONVERSATION_MAX_TOKENS + budget) * 4);
        }
        let mut i = input(vec![table("t0", 3)], 6000);
        i.conversation = (0..500).rev().map(turn).collect();
        assert!(build(&i).unwrap().user.contains("question number 499\n"));
    }

    #[test]
    fn small_schema_is_shown_whole() {
        let p = build(&input(vec![table("t0", 5), table("t1", 5)], 6000)).unwrap();
        assert_eq!(p.tables_included, 2);
        assert_eq!(p.columns_trimmed, 0);
        assert!(p.user.contains("CREATE TABLE s.t0"));
        assert!(p.user.contains("id integer PRIMARY KEY"));
        assert!(p.user.contains("SELECT count(*) FROM s.t0"));
        assert!(p.user.contains("euros"));
        assert!(p
            .user
            .ends_with("Question: how many rows have col_7 above 3\n"));
    }

    #[test]
    fn budget_holds_for_ten_thousand_tables() {
        let tables: Vec<PromptTable> = (0..10_000).map(|i| table(&format!("t{i}"), 40)).collect();
        for budget in [500, 2000, 6000, 20_000] {
            let p = build(&input(tables.clone(), budget)).unwrap();
            assert!(
                p.estimated_tokens <= budget,
                "{} > {budget}",
                p.estimated_tokens
            );
            assert!(p.tables_included >= 1);
            assert!(p.tables_left_out > 0);
        }
    }

    #[test]
    fn wide_table_keeps_keys_and_mentioned_columns() {
        let p = build(&input(vec![table("wide", 2000)], 1500)).unwrap();
        assert!(p.estimated_tokens <= 1500);
        assert_eq!(p.tables_included, 1);
        assert!(p.columns_trimmed > 1000);
        assert!(p.user.contains("id integer PRIMARY KEY"));
        assert!(p.user.contains("col_7 integer"));
        assert!(p.user.contains("more columns not shown"));
    }

    #[test]
    fn long_question_is_refused() {
        let mut i = input(vec![table("t0", 3)], 1000);
        i.question = "word ".repeat(2000);
        assert!(matches!(
            build(&i),
            Err(PromptError::QuestionTooLong { .. })
        ));
    }

    #[test]
    fn retry_carries_previous_sql_and_error() {
        let mut i = input(vec![table("t0", 3)], 3000);
        i.retry = Some((
            "SELECT nope FROM s.t0".into(),
            "column \"nope\" does not exist".into(),
        ));
        let p = build(&i).unwrap();
        assert!(p.user.contains("SELECT nope FROM s.t0"));
        assert!(p.user.contains("does not exist"));
    }

    #[test]
    fn descriptions_are_taken_from_prose_and_fences() {
        let answer = "Sure!\n```json\n{\"table\": \"People who  sing.\", \"columns\": {\"name\": \"stage name\", \"x\": 3}}\n```";
        let (t, cols) = parse_descriptions(answer).unwrap();
        assert_eq!(t.as_deref(), Some("People who sing."));
        assert_eq!(cols, vec![("name".to_string(), "stage name".to_string())]);
        assert!(parse_descriptions("no json here").is_none());
        assert!(parse_descriptions("} {").is_none());
    }

    #[test]
    fn identifiers_are_quoted_when_needed() {
        assert_eq!(quote_if_needed("order_items"), "order_items");
        assert_eq!(quote_if_needed("OrderItems"), "\"OrderItems\"");
        assert_eq!(quote_if_needed("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn explanation_is_prose_only_and_bounded() {
        assert_eq!(clean_explanation(""), None);
        assert_eq!(clean_explanation("  \n\t "), None);
        assert_eq!(clean_explanation("```sql\nSELECT 1\n```"), None);
        assert_eq!(clean_explanation("\u{0}\u{1}..."), None);
        assert_eq!(
            clean_explanation("It counts singers.\n```sql\nSELECT 1\n```\n\u{0}").as_deref(),
            Some("It counts singers.")
        );
        let long = clean_explanation(&"word ".repeat(10_000)).unwrap();
        assert!(long.chars().count() <= MAX_EXPLANATION_CHARS + 1);
    }
}
