//! Quoting for SQL text built from catalog names (never from a user's
//! free text: that goes through bound parameters).

/// A quoted identifier, as PostgreSQL's quote_ident() would write it (always
/// quoted). SQLite reads the same form.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A quoted literal, as quote_literal() would write it (standard strings).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A MySQL identifier in backquotes.
pub fn quote_mysql(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_double_their_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Order Items"), "\"Order Items\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_mysql("a`b"), "`a``b`");
        assert_eq!(quote_literal("\\"), "'\\'");
    }
}
