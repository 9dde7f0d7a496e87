//! Taking the model's reply apart: provider response bodies, request bodies,
//! and the SQL statement inside a free-text answer.
//!
//! [`extract_sql`] only locates text; it never judges whether the SQL is safe
//! or even valid. That is the guard's job, on PostgreSQL's own parser, so a
//! fenced `DELETE` is returned as written and refused (and recorded) there.

use serde_json::{json, Value};
use std::fmt;

/// Largest model answer [`extract_sql`] looks at, in bytes.
pub const MAX_ANSWER_LEN: usize = 256 * 1024;
/// Longest provider error message kept, in chars.
const MAX_PROVIDER_MESSAGE: usize = 500;

/// The text of a model's reply and its token usage, when reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReply {
    /// The assistant's text.
    pub text: String,
    /// Tokens in the prompt, as the provider counted them.
    pub prompt_tokens: Option<i64>,
    /// Tokens in the completion, as the provider counted them.
    pub completion_tokens: Option<i64>,
}

/// Why no usable reply or SQL was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The response body is not JSON (or not the expected shape).
    NotJson,
    /// The provider returned an error (message truncated to 500 chars).
    Provider(String),
    /// The reply has no text.
    Empty,
    /// The answer contains nothing that looks like SQL.
    NoSql,
    /// The answer is over 256 KiB.
    TooLarge,
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::NotJson => write!(f, "the model provider's response is not valid JSON"),
            AnswerError::Provider(msg) => write!(f, "the model provider returned an error: {msg}"),
            AnswerError::Empty => write!(f, "the model returned an empty answer"),
            AnswerError::NoSql => write!(f, "the model's answer contains no SQL statement"),
            AnswerError::TooLarge => write!(f, "the model's answer is too large (over 256 KiB)"),
        }
    }
}

impl std::error::Error for AnswerError {}

/// Parses an OpenAI chat-completions response: `choices[0].message.content` and `usage`.
/// An `error` object becomes [`AnswerError::Provider`]; no or blank content is [`AnswerError::Empty`].
pub fn parse_openai_chat(body: &[u8]) -> Result<ModelReply, AnswerError> {
    let v = parse_object(body)?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(provider_error(err));
    }
    let message = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"));
    let text = match message.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        // Content may also be a list of parts: keep the text ones.
        Some(Value::Array(parts)) => text_parts(parts, "text"),
        _ => String::new(),
    };
    if text.trim().is_empty() {
        if let Some(Value::String(r)) = message.and_then(|m| m.get("refusal")) {
            return Err(AnswerError::Provider(truncate(
                &format!("the model refused: {r}"),
                MAX_PROVIDER_MESSAGE,
            )));
        }
        return Err(AnswerError::Empty);
    }
    let usage = v.get("usage");
    Ok(ModelReply {
        text,
        prompt_tokens: usage_field(usage, "prompt_tokens"),
        completion_tokens: usage_field(usage, "completion_tokens"),
    })
}

/// Parses an Anthropic messages response, concatenating the `text` content blocks.
/// `{"type":"error",...}` becomes [`AnswerError::Provider`]; no text is [`AnswerError::Empty`].
pub fn parse_anthropic_messages(body: &[u8]) -> Result<ModelReply, AnswerError> {
    let v = parse_object(body)?;
    let is_error = v.get("type").and_then(Value::as_str) == Some("error");
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(provider_error(err));
    }
    if is_error {
        return Err(AnswerError::Provider("unknown error".into()));
    }
    let text = match v.get("content") {
        Some(Value::Array(blocks)) => text_parts(blocks, "text"),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    if text.trim().is_empty() {
        return Err(AnswerError::Empty);
    }
    let usage = v.get("usage");
    Ok(ModelReply {
        text,
        prompt_tokens: usage_field(usage, "input_tokens"),
        completion_tokens: usage_field(usage, "output_tokens"),
    })
}

/// Request body for OpenAI chat completions (system message first, omitted when empty).
pub fn openai_request(
    model: &str,
    system: &str,
    user: &str,
    max_tokens: u32,
    temperature: f32,
) -> Value {
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user}));
    let mut req = json!({"model": model, "messages": messages, "max_tokens": max_tokens});
    if let Some(t) = temperature_json(temperature) {
        req["temperature"] = t;
    }
    req
}

/// Request body for Anthropic messages; the system prompt goes in the top-level `system` field.
pub fn anthropic_request(
    model: &str,
    system: &str,
    user: &str,
    max_tokens: u32,
    temperature: f32,
) -> Value {
    let mut req = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": user}],
    });
    if !system.is_empty() {
        req["system"] = json!(system);
    }
    if let Some(t) = temperature_json(temperature) {
        req["temperature"] = t;
    }
    req
}

/// The SQL statement in a model's answer, trimmed and without trailing semicolons.
/// Finds it only (fence, `SELECT`/`WITH` line, or a leading SQL keyword); never validates it.
pub fn extract_sql(text: &str) -> Result<String, AnswerError> {
    if text.len() > MAX_ANSWER_LEN {
        return Err(AnswerError::TooLarge);
    }
    let found = fenced_block(text)
        .or_else(|| statement_from_lines(text, true))
        .or_else(|| statement_from_lines(text, false))
        .or_else(|| leading_keyword_statement(text));
    match found.map(clean) {
        Some(sql) if !sql.is_empty() => Ok(sql),
        _ => Err(AnswerError::NoSql),
    }
}

// ---- response helpers -------------------------------------------------------

fn parse_object(body: &[u8]) -> Result<Value, AnswerError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(AnswerError::NotJson),
    }
}

/// Provider error object → message: `error.message`, a bare string, or the JSON itself.
fn provider_error(err: &Value) -> AnswerError {
    let msg = match err {
        Value::String(s) => s.clone(),
        other => match other.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => other.to_string(),
        },
    };
    AnswerError::Provider(truncate(&msg, MAX_PROVIDER_MESSAGE))
}

/// Concatenates the `text` of blocks whose `type` is `kind`.
fn text_parts(blocks: &[Value], kind: &str) -> String {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some(kind))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

fn usage_field(usage: Option<&Value>, name: &str) -> Option<i64> {
    usage.and_then(|u| u.get(name)).and_then(Value::as_i64)
}

/// f32 → JSON via its shortest decimal form, so 0.2 is sent as 0.2, not 0.20000000298….
/// Non-finite values are omitted (the provider's default applies).
fn temperature_json(t: f32) -> Option<Value> {
    if !t.is_finite() {
        return None;
    }
    let as_f64: f64 = t.to_string().parse().ok()?;
    Some(json!(as_f64))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

// ---- SQL location -----------------------------------------------------------

/// Language tags that mark a fence as SQL.
const SQL_TAGS: &[&str] = &[
    "sql",
    "postgresql",
    "postgres",
    "pgsql",
    "psql",
    "plpgsql",
    "pg",
];

/// Keywords that can open a statement; used to tell fence content from a language tag.
const STATEMENT_KEYWORDS: &[&str] = &[
    "SELECT",
    "WITH",
    "INSERT",
    "UPDATE",
    "DELETE",
    "DROP",
    "CREATE",
    "ALTER",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "COPY",
    "MERGE",
    "VALUES",
    "TABLE",
    "EXPLAIN",
    "VACUUM",
    "ANALYZE",
    "REINDEX",
    "CLUSTER",
    "CHECKPOINT",
    "DISCARD",
    "DEALLOCATE",
    "DO",
    "SET",
    "RESET",
    "SHOW",
    "CALL",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "START",
    "END",
    "ABORT",
    "LOCK",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "PREPARE",
    "EXECUTE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "DECLARE",
    "COMMENT",
    "SECURITY",
    "IMPORT",
    "LOAD",
    "REFRESH",
    "SAVEPOINT",
    "RELEASE",
];

/// Statement keywords rarely used to open an English sentence: matched in any case
/// when the whole answer starts with one.
const UNAMBIGUOUS_KEYWORDS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "MERGE",
    "VACUUM",
    "REINDEX",
    "CHECKPOINT",
    "DEALLOCATE",
    "DISCARD",
];

/// Clause keywords that may open a continuation line of a statement.
const CLAUSE_KEYWORDS: &[&str] = &[
    "FROM",
    "WHERE",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "CROSS",
    "NATURAL",
    "ON",
    "USING",
    "GROUP",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "AND",
    "OR",
    "NOT",
    "AS",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "WINDOW",
    "FOR",
    "RETURNING",
    "LATERAL",
    "INTO",
    "SET",
];

/// The first word of `s` (ASCII letters, digits, underscore).
fn first_word(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

fn is_statement_keyword(word: &str) -> bool {
    STATEMENT_KEYWORDS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(word))
}

/// Content of the first SQL-tagged fenced block, else of the first non-empty fenced block.
fn fenced_block(text: &str) -> Option<&str> {
    let mut first_any: Option<&str> = None;
    let mut pos = 0;
    while let Some((content, tagged_sql, next)) = next_fence(text, pos) {
        if !content.trim().is_empty() {
            if tagged_sql {
                return Some(content);
            }
            first_any.get_or_insert(content);
        }
        pos = next;
    }
    first_any
}

/// Finds the fenced block opening at or after `from`: returns its content (language tag
/// removed), whether the tag was SQL, and where to resume scanning.
fn next_fence(text: &str, from: usize) -> Option<(&str, bool, usize)> {
    let rest = text.get(from..)?;
    let (open, run, _) = fence_opener(rest)?;
    let fence = &rest[open..open + run];
    let body_start = open + run;
    let body_and_rest = &rest[body_start..];
    // An unterminated fence (answer cut off) runs to the end.
    let (body, after) = match body_and_rest.find(fence) {
        Some(close) => (&body_and_rest[..close], body_start + close + fence.len()),
        None => (body_and_rest, rest.len()),
    };
    let (content, tagged_sql) = strip_info_string(body);
    Some((content, tagged_sql, from + after))
}

/// Position, length and character of the first run of three or more '`' or '~'.
/// Single pass, so scanning a whole answer for fences stays linear.
fn fence_opener(s: &str) -> Option<(usize, usize, char)> {
    let mut pos = 0;
    while let Some(i) = s[pos..].find(['`', '~']) {
        let start = pos + i;
        let c = if s.as_bytes()[start] == b'`' {
            '`'
        } else {
            '~'
        };
        let run = s[start..].find(|x: char| x != c).unwrap_or(s.len() - start);
        if run >= 3 {
            return Some((start, run, c));
        }
        pos = start + run;
    }
    None
}

/// Removes a fence's language tag: a known SQL tag always, any other single word only
/// when it stands alone on the opening line and is not itself a SQL keyword.
fn strip_info_string(body: &str) -> (&str, bool) {
    let first_line_end = body.find('\n');
    let first_line = &body[..first_line_end.unwrap_or(body.len())];
    let trimmed = first_line.trim_start();
    let tag_end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
    let tag = &trimmed[..tag_end];
    if tag.is_empty() {
        return (body, false);
    }
    let after_tag = &trimmed[tag_end..];
    let is_sql_tag = SQL_TAGS.iter().any(|t| t.eq_ignore_ascii_case(tag));
    if is_sql_tag {
        let tag_offset = first_line.len() - trimmed.len() + tag_end;
        return (&body[tag_offset..], true);
    }
    let lone_word = after_tag.trim().is_empty() && first_line_end.is_some();
    let looks_like_tag = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'));
    if lone_word && looks_like_tag && !is_statement_keyword(tag) {
        let skip = first_line_end.map_or(body.len(), |e| e + 1);
        return (&body[skip..], false);
    }
    (body, false)
}

/// Strips a leading `SQL:` label and a single leading backtick from a line.
fn strip_label(line: &str) -> &str {
    let mut l = line.trim_start();
    if l.len() >= 4 && l.as_bytes()[..4].eq_ignore_ascii_case(b"sql:") {
        l = l[4..].trim_start();
    }
    if let Some(rest) = l.strip_prefix('`') {
        l = rest;
    }
    l
}

/// True if `word` equals `keyword`, in any case or (when `upper_only`) exactly.
fn word_is(word: &str, keyword: &str, upper_only: bool) -> bool {
    if upper_only {
        word == keyword
    } else {
        word.eq_ignore_ascii_case(keyword)
    }
}

/// Text from the first line whose first word is SELECT or WITH (a CTE, not the English
/// "With ..."), up to the end, or a blank line / `;` line end followed by prose.
/// `upper_only` limits the first pass to upper-case keywords so "Select the ..." prose
/// does not shadow a real statement later on.
fn statement_from_lines(text: &str, upper_only: bool) -> Option<&str> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let stripped = strip_label(line);
        let word = first_word(stripped);
        let hit = word_is(word, "SELECT", upper_only)
            || (word_is(word, "WITH", upper_only) && looks_like_cte(&text[offset..]));
        if hit {
            start = Some(offset + (line.len() - stripped.len()));
            break;
        }
        offset += line.len();
    }
    let start = start?;
    Some(&text[start..statement_end(text, start)])
}

/// Where the statement starting at `start` ends: before a blank line or after a line ending
/// in `;` when what follows does not look like more SQL.
fn statement_end(text: &str, start: usize) -> usize {
    let mut pos = start;
    let mut end = text.len();
    let mut break_pending = false;
    for line in text[start..].split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if !break_pending {
                end = pos;
            }
            break_pending = true;
        } else if break_pending {
            if !continues_sql(trimmed) {
                return end;
            }
            break_pending = false;
        }
        pos += line.len();
        if trimmed.ends_with(';') && !break_pending {
            end = pos;
            break_pending = true;
        }
    }
    if break_pending {
        end
    } else {
        text.len()
    }
}

/// A line that plausibly continues SQL after a blank line or a `;`: upper-case keyword
/// (lower case would be ambiguous with prose such as "And ...") or SQL punctuation.
fn continues_sql(line: &str) -> bool {
    if line.starts_with(['(', ')', ',']) || line.starts_with("--") || line.starts_with("/*") {
        return true;
    }
    let word = first_word(line);
    !word.is_empty()
        && word.bytes().all(|b| !b.is_ascii_lowercase())
        && (STATEMENT_KEYWORDS.contains(&word) || CLAUSE_KEYWORDS.contains(&word))
}

/// `WITH [RECURSIVE] name [(cols)] AS` — distinguishes a CTE from English "With".
fn looks_like_cte(text: &str) -> bool {
    // Bounded look-ahead: called once per WITH line, must not rescan the whole answer.
    let s = strip_label(prefix(text, 512));
    let s = s[first_word(s).len()..].trim_start();
    let w = first_word(s);
    if w.eq_ignore_ascii_case("recursive") {
        return true;
    }
    let s = if let Some(quoted) = s.strip_prefix('"') {
        match quoted.find('"') {
            Some(q) => &quoted[q + 1..],
            None => return false,
        }
    } else if w.is_empty() {
        return false;
    } else {
        &s[w.len()..]
    };
    let mut s = s.trim_start();
    if let Some(cols) = s.strip_prefix('(') {
        match cols.find(')') {
            Some(c) => s = cols[c + 1..].trim_start(),
            None => return false,
        }
    }
    first_word(s).eq_ignore_ascii_case("as")
}

/// At most `max` bytes of `s`, cut back to a char boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The whole answer, when it starts with a statement keyword other than SELECT/WITH.
fn leading_keyword_statement(text: &str) -> Option<&str> {
    let t = strip_label(text.trim_start());
    let word = first_word(t);
    let next = t[word.len()..].chars().next();
    let word_ends =
        matches!(next, None | Some(';') | Some('(')) || next.is_some_and(char::is_whitespace);
    if word.is_empty() || !word_ends {
        return None;
    }
    let unambiguous = UNAMBIGUOUS_KEYWORDS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(word));
    let upper_statement = STATEMENT_KEYWORDS.contains(&word);
    (unambiguous || upper_statement).then_some(t)
}

/// Trims whitespace, a wrapping pair of single backticks, and trailing semicolons.
fn clean(sql: &str) -> String {
    let mut s = sql.trim();
    if let Some(inner) = s.strip_prefix('`') {
        s = inner;
    }
    s = s.trim_end_matches(|c: char| c == ';' || c == '`' || c.is_whitespace());
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sql(text: &str) -> String {
        extract_sql(text).unwrap()
    }

    #[test]
    fn openai_ok() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"SELECT 1"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        let r = parse_openai_chat(body).unwrap();
        assert_eq!(r.text, "SELECT 1");
        assert_eq!(r.prompt_tokens, Some(12));
        assert_eq!(r.completion_tokens, Some(3));
    }

    #[test]
    fn openai_content_parts_and_missing_usage() {
        let body = br#"{"choices":[{"message":{"content":[{"type":"text","text":"SELECT "},{"type":"image_url"},{"type":"text","text":"2"}]}}]}"#;
        let r = parse_openai_chat(body).unwrap();
        assert_eq!(r.text, "SELECT 2");
        assert_eq!(r.prompt_tokens, None);
    }

    #[test]
    fn openai_errors() {
        let long = "e".repeat(2000);
        let body = format!(r#"{{"error":{{"message":"{long}","type":"invalid_request_error"}}}}"#);
        match parse_openai_chat(body.as_bytes()) {
            Err(AnswerError::Provider(m)) => assert_eq!(m.chars().count(), 500),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_openai_chat(br#"{"error":"quota"}"#),
            Err(AnswerError::Provider("quota".into()))
        );
        assert_eq!(
            parse_openai_chat(b"<html>502</html>"),
            Err(AnswerError::NotJson)
        );
        assert_eq!(parse_openai_chat(b"[1]"), Err(AnswerError::NotJson));
        assert_eq!(
            parse_openai_chat(br#"{"choices":[]}"#),
            Err(AnswerError::Empty)
        );
        assert_eq!(
            parse_openai_chat(br#"{"choices":[{"message":{"content":null}}]}"#),
            Err(AnswerError::Empty)
        );
        assert_eq!(
            parse_openai_chat(br#"{"choices":[{"message":{"content":"  \n"}}]}"#),
            Err(AnswerError::Empty)
        );
        assert!(matches!(
            parse_openai_chat(br#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#),
            Err(AnswerError::Provider(_))
        ));
    }

    #[test]
    fn anthropic_ok() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Here:\n"},{"type":"tool_use","id":"t"},{"type":"text","text":"SELECT 1"}],"usage":{"input_tokens":20,"output_tokens":5}}"#;
        let r = parse_anthropic_messages(body).unwrap();
        assert_eq!(r.text, "Here:\nSELECT 1");
        assert_eq!(r.prompt_tokens, Some(20));
        assert_eq!(r.completion_tokens, Some(5));
    }

    #[test]
    fn anthropic_errors() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            parse_anthropic_messages(body),
            Err(AnswerError::Provider("Overloaded".into()))
        );
        assert!(matches!(
            parse_anthropic_messages(br#"{"type":"error"}"#),
            Err(AnswerError::Provider(_))
        ));
        assert_eq!(
            parse_anthropic_messages(br#"{"type":"message","content":[]}"#),
            Err(AnswerError::Empty)
        );
        assert_eq!(parse_anthropic_messages(b""), Err(AnswerError::NotJson));
    }

    #[test]
    fn request_bodies() {
        let o = openai_request("gpt-4o-mini", "sys", "q", 500, 0.2);
        assert_eq!(o["model"], "gpt-4o-mini");
        assert_eq!(o["messages"][0]["role"], "system");
        assert_eq!(o["messages"][0]["content"], "sys");
        assert_eq!(o["messages"][1]["role"], "user");
        assert_eq!(o["max_tokens"], 500);
        assert_eq!(o["temperature"].to_string(), "0.2");
        let o = openai_request("m", "", "q", 1, f32::NAN);
        assert_eq!(o["messages"].as_array().unwrap().len(), 1);
        assert!(o.get("temperature").is_none());

        let a = anthropic_request("claude", "sys", "q", 700, 0.0);
        assert_eq!(a["system"], "sys");
        assert_eq!(a["messages"].as_array().unwrap().len(), 1);
        assert_eq!(a["messages"][0]["role"], "user");
        assert_eq!(a["max_tokens"], 700);
        assert_eq!(a["temperature"].to_string(), "0.0");
        assert!(anthropic_request("c", "", "q", 1, 0.5)
            .get("system")
            .is_none());
    }

    #[test]
    fn fenced_sql_in_prose() {
        let t = "Sure! Here is the query:\n\n```sql\nSELECT id, name\nFROM customers\nWHERE active;\n```\n\nThis lists active customers.";
        assert_eq!(sql(t), "SELECT id, name\nFROM customers\nWHERE active");
    }

    #[test]
    fn fence_variants() {
        assert_eq!(sql("```\nSELECT 1\n```"), "SELECT 1");
        assert_eq!(sql("~~~sql\nSELECT 2;\n~~~"), "SELECT 2");
        assert_eq!(sql("```SQL\nSELECT 3\n```"), "SELECT 3");
        assert_eq!(sql("```postgresql\nSELECT 4\n```"), "SELECT 4");
        assert_eq!(sql("Use ```SELECT 5``` here"), "SELECT 5");
        assert_eq!(sql("```sql SELECT 6```"), "SELECT 6");
        assert_eq!(sql("````sql\nSELECT '```'\n````"), "SELECT '```'");
        // Unterminated fence (answer cut off).
        assert_eq!(sql("```sql\nSELECT 7\nFROM t"), "SELECT 7\nFROM t");
    }

    #[test]
    fn first_sql_fence_wins() {
        let t = "```sql\nSELECT a FROM t\n```\nor\n```sql\nSELECT b FROM t\n```";
        assert_eq!(sql(t), "SELECT a FROM t");
        // A sql-tagged block is preferred over an earlier block of another kind.
        let t = "Schema:\n```json\n{\"t\": [\"a\"]}\n```\n```sql\nSELECT a FROM t\n```";
        assert_eq!(sql(t), "SELECT a FROM t");
        // Without any sql tag, the first non-empty block.
        let t = "```\n\n```\n```text\nSELECT 9\n```";
        assert_eq!(sql(t), "SELECT 9");
    }

    #[test]
    fn fence_content_is_not_validated() {
        assert_eq!(sql("```sql\nDELETE FROM t;\n```"), "DELETE FROM t");
        assert_eq!(
            sql("```\nSELECT 1; DROP TABLE t;\n```"),
            "SELECT 1; DROP TABLE t"
        );
    }

    #[test]
    fn unfenced_select() {
        assert_eq!(sql("SELECT 1"), "SELECT 1");
        assert_eq!(sql("  select *\n  from t;  \n"), "select *\n  from t");
        let t = "The answer is below.\nSELECT count(*)\nFROM orders\nWHERE total > 10;\n\nThis counts big orders.";
        assert_eq!(sql(t), "SELECT count(*)\nFROM orders\nWHERE total > 10");
        let t = "SELECT a\nFROM t\n\nThat is all.";
        assert_eq!(sql(t), "SELECT a\nFROM t");
        // A blank line inside the statement followed by more SQL keeps going.
        let t = "SELECT a\n\nFROM t\n\nWHERE a > 1";
        assert_eq!(sql(t), "SELECT a\n\nFROM t\n\nWHERE a > 1");
    }

    #[test]
    fn unfenced_with() {
        let t = "With the data available:\nWITH recent AS (SELECT * FROM o)\nSELECT count(*) FROM recent";
        assert_eq!(
            sql(t),
            "WITH recent AS (SELECT * FROM o)\nSELECT count(*) FROM recent"
        );
        assert_eq!(
            sql("with recursive r(n) as (select 1) select * from r"),
            "with recursive r(n) as (select 1) select * from r"
        );
        assert_eq!(
            sql("WITH \"X\" (a, b) AS (VALUES (1,2)) TABLE \"X\""),
            "WITH \"X\" (a, b) AS (VALUES (1,2)) TABLE \"X\""
        );
        // English "With" alone is not SQL.
        assert_eq!(
            extract_sql("With pleasure, but I need more details."),
            Err(AnswerError::NoSql)
        );
    }

    #[test]
    fn upper_case_statement_beats_prose_select() {
        let t = "Select the rows you need like this:\nSELECT * FROM t";
        assert_eq!(sql(t), "SELECT * FROM t");
    }

    #[test]
    fn sql_label() {
        assert_eq!(sql("SQL: SELECT 1;"), "SELECT 1");
        assert_eq!(sql("sql:\nSELECT 2"), "SELECT 2");
        assert_eq!(
            sql("Explanation first.\nSQL: SELECT 3\n\nDone."),
            "SELECT 3"
        );
        assert_eq!(sql("SQL: DELETE FROM t"), "DELETE FROM t");
    }

    #[test]
    fn inline_backticks() {
        assert_eq!(sql("`SELECT 1`"), "SELECT 1");
        assert_eq!(sql("Run:\n`SELECT 2;`"), "SELECT 2");
    }

    #[test]
    fn trailing_semicolons_and_multiple_statements() {
        assert_eq!(sql("SELECT 1;;;  \n ; "), "SELECT 1");
        assert_eq!(sql("SELECT 1;\nDELETE FROM t;"), "SELECT 1;\nDELETE FROM t");
        assert_eq!(sql("SELECT 1; DELETE FROM t"), "SELECT 1; DELETE FROM t");
        // Prose after a statement-ending semicolon is cut off.
        assert_eq!(sql("SELECT 1;\nThis returns one."), "SELECT 1");
    }

    #[test]
    fn other_leading_keywords() {
        assert_eq!(sql("DELETE FROM t"), "DELETE FROM t");
        assert_eq!(sql("  drop table t;"), "drop table t");
        assert_eq!(sql("INSERT INTO t VALUES (1)"), "INSERT INTO t VALUES (1)");
        assert_eq!(sql("UPDATE t SET a = 1"), "UPDATE t SET a = 1");
        assert_eq!(sql("TRUNCATE t"), "TRUNCATE t");
        assert_eq!(sql("EXPLAIN ANALYZE SELECT 1"), "EXPLAIN ANALYZE SELECT 1");
        assert_eq!(sql("CREATE TABLE x ()"), "CREATE TABLE x ()");
    }

    #[test]
    fn no_sql() {
        for t in [
            "",
            "   \n ",
            "I cannot answer that question with the available tables.",
            "Update: I need more context.",
            "Do you mean last month or last year?",
            "Show me the money",
            "```\n\n```",
        ] {
            assert_eq!(extract_sql(t), Err(AnswerError::NoSql), "{t:?}");
        }
    }

    #[test]
    fn too_large_checked_first() {
        let t = format!("SELECT 1 {}", " ".repeat(MAX_ANSWER_LEN));
        assert_eq!(extract_sql(&t), Err(AnswerError::TooLarge));
        let t = "x".repeat(MAX_ANSWER_LEN);
        assert_eq!(extract_sql(&t), Err(AnswerError::NoSql));
    }

    #[test]
    fn pathological_inputs_stay_linear() {
        // Each would be quadratic with a naive rescan per fence / per WITH line.
        let start = std::time::Instant::now();
        for unit in [
            "```x\n",
            "`` ~~ ",
            "WITH \"\n",
            "WITH a (\n",
            "SELECT 1;\n\n",
            "~~~\n```\n",
        ] {
            let t = unit.repeat(MAX_ANSWER_LEN / unit.len());
            let _ = extract_sql(&t);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn non_ascii_is_fine() {
        assert_eq!(
            sql("Voilà :\n```sql\nSELECT 'é' AS ü\n```"),
            "SELECT 'é' AS ü"
        );
        assert_eq!(sql("ÄÖ\nSELECT 'ß'"), "SELECT 'ß'");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn extract_never_panics(s in "\\PC{0,300}") {
            let _ = extract_sql(&s);
        }

        #[test]
        fn extract_never_panics_on_sqlish_noise(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("```"), Just("~~~"), Just("sql"), Just("SQL:"), Just("SELECT"),
                    Just("with"), Just("WITH"), Just(" AS "), Just("("), Just(")"),
                    Just("\""), Just(";"), Just("\n"), Just("\n\n"), Just(" "), Just("`"),
                    Just("é"), Just("DELETE"), Just("x"), Just("RECURSIVE"),
                ],
                0..40,
            )
        ) {
            let s: String = parts.concat();
            if let Ok(out) = extract_sql(&s) {
                prop_assert!(!out.is_empty());
                prop_assert!(!out.ends_with(';'));
            }
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_openai_chat(&bytes);
            let _ = parse_anthropic_messages(&bytes);
        }
    }
}
