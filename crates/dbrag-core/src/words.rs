//! Splitting catalog identifiers into search words: `order_items`, `OrderItems`
//! and `orderItems` all give `order items`, so a question's words can match them.

use std::collections::HashSet;

/// Lowercased words of an identifier, deduplicated, in order of first appearance.
/// Splits on non-alphanumerics, case changes (acronyms kept whole) and letter/digit
/// boundaries; single-digit tokens are dropped (`address2` → `address`).
pub fn split_identifier(ident: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for run in ident.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = run.chars().collect();
        let mut start = 0;
        for i in 1..=chars.len() {
            if i == chars.len() || boundary(&chars, i) {
                let token: String = chars[start..i].iter().collect::<String>().to_lowercase();
                let single_digit =
                    token.chars().count() == 1 && token.chars().all(char::is_numeric);
                if !single_digit && seen.insert(token.clone()) {
                    out.push(token);
                }
                start = i;
            }
        }
    }
    out
}

/// The identifier's words joined by single spaces (`HTTPRequestLog` → `http request log`).
pub fn identifier_words(ident: &str) -> String {
    split_identifier(ident).join(" ")
}

/// Whether a word boundary falls between `chars[i - 1]` and `chars[i]` (0 < i < len).
fn boundary(chars: &[char], i: usize) -> bool {
    let prev = chars[i - 1];
    let cur = chars[i];
    if prev.is_numeric() != cur.is_numeric() {
        return true;
    }
    if cur.is_uppercase() && !prev.is_uppercase() && !prev.is_numeric() {
        return true; // camelCase
    }
    // Acronym followed by a word: the last capital starts the word (HTTPRequest).
    if prev.is_uppercase() && cur.is_uppercase() {
        if let Some(&next) = chars.get(i + 1) {
            return next.is_lowercase() && !plural_s(chars, i + 1);
        }
    }
    false
}

/// A lone lowercase `s` after an acronym is its plural (`userIDs`, `URLsByHost`), not a word.
fn plural_s(chars: &[char], i: usize) -> bool {
    chars.get(i) == Some(&'s') && chars.get(i + 1).is_none_or(|c| !c.is_lowercase())
}

/// Columns whose values are never sampled: their names look like secrets.
pub fn looks_secret(column: &str) -> bool {
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "ssn",
        "key",
        "apikey",
        "salt",
        "hash",
        "cvv",
        "pin",
        "iban",
        "credential",
        "credentials",
        "otp",
        "private",
    ];
    let lower = column.to_lowercase();
    if ["social_security", "credit_card", "card_number", "api_key"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return true;
    }
    split_identifier(column)
        .iter()
        .any(|w| WORDS.contains(&w.as_str()))
}

/// A text value or question cut into lower-case words of letters and digits
/// (everything else separates): `"O'Brien"` → `["o", "brien"]`. How the
/// value index stores values and cuts questions.
pub fn value_words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// [`value_words`] joined by one space.
pub fn normalize_value(s: &str) -> String {
    value_words(s).join(" ")
}

/// Whether `a` and `b` differ by at most one edit: an insertion, a deletion,
/// a substitution or a swap of two neighbours.
pub fn one_edit(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let p = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if p == a.len() && p == b.len() {
        return true;
    }
    let s = a[p..]
        .iter()
        .rev()
        .zip(b[p..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ra, rb) = (a.len() - p - s, b.len() - p - s);
    if ra <= 1 && rb <= 1 {
        return true;
    }
    ra == 2 && rb == 2 && a[p] == b[p + 1] && a[p + 1] == b[p]
}

#[cfg(test)]
mod tests {
    #[test]
    fn value_normalization() {
        assert_eq!(super::normalize_value("  New-York  City "), "new york city");
        assert_eq!(super::normalize_value("O'Brien"), "o brien");
        assert_eq!(super::normalize_value("LYON"), "lyon");
    }

    #[test]
    fn one_edit_cases() {
        use super::one_edit;
        assert!(one_edit("lyin", "lyon"));
        assert!(one_edit("lyn", "lyon"));
        assert!(one_edit("lyoon", "lyon"));
        assert!(one_edit("ylon", "lyon"));
        assert!(one_edit("lyon", "lyon"));
        assert!(!one_edit("lion", "lyin"));
        assert!(!one_edit("paris", "lyon"));
        assert!(!one_edit("lyonss", "lyon"));
        assert!(!one_edit("", "ab"));
        assert!(one_edit("", "a"));
    }

    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<String> {
        split_identifier(s)
    }

    #[test]
    fn cases() {
        let cases: &[(&str, &[&str])] = &[
            ("order_items", &["order", "items"]),
            ("OrderItems", &["order", "items"]),
            ("orderItems", &["order", "items"]),
            ("order-items", &["order", "items"]),
            ("HTTPRequestLog", &["http", "request", "log"]),
            ("parseHTTPResponse", &["parse", "http", "response"]),
            ("userIDs", &["user", "ids"]),
            ("URLsByHost", &["urls", "by", "host"]),
            ("customer_ID", &["customer", "id"]),
            ("address2", &["address"]),
            ("sha256_hash", &["sha", "256", "hash"]),
            ("line_2_total", &["line", "total"]),
            ("v2Users", &["v", "users"]),
            ("status_status", &["status"]),
            ("CamelCase_snake_case", &["camel", "case", "snake"]),
            ("  weird..name  ", &["weird", "name"]),
            ("\"Quoted Table\"", &["quoted", "table"]),
            ("été_Größe", &["été", "größe"]),
            ("A", &["a"]),
            ("ID", &["id"]),
            ("", &[]),
            ("___", &[]),
            ("7", &[]),
            ("42", &["42"]),
        ];
        for (input, want) in cases {
            assert_eq!(words(input), *want, "{input:?}");
        }
    }

    #[test]
    fn joined() {
        assert_eq!(identifier_words("order_items"), "order items");
        assert_eq!(identifier_words("HTTPRequestLog"), "http request log");
        assert_eq!(identifier_words(""), "");
    }

    proptest! {
        #[test]
        fn never_panics_and_words_are_clean(s in "\\PC{0,80}") {
            for w in split_identifier(&s) {
                prop_assert!(!w.is_empty());
                prop_assert!(!w.chars().any(|c| c.is_whitespace() || c == '_'));
            }
        }
    }
}
