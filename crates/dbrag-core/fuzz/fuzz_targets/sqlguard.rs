//! The SQL guard's name lists and statement trimming (dbrag_core::sqlguard):
//! the parts of the guard that need no PostgreSQL. (The parse-tree walk runs
//! inside the server; tests/test_guard.py feeds it garbage.)
#![no_main]

use dbrag_core::sqlguard::{
    denied_function, remote_function_allowed, remote_operator_allowed, remote_type_allowed,
    tablesample_method_allowed, trim_statement,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let trimmed = trim_statement(text);
    // A prefix of the trimmed input, with no trailing semicolon or blank.
    assert!(text.trim_start().starts_with(trimmed));
    assert!(!trimmed.ends_with(';'));
    assert_eq!(trimmed.trim_end(), trimmed);
    assert_eq!(trim_statement(trimmed), trimmed);

    let denied = denied_function(text);
    // Allowed on a remote connection implies not denied anywhere.
    if remote_function_allowed(text) {
        assert!(denied.is_none());
    }
    // Server-administration functions are refused whatever follows the prefix.
    if text.starts_with("pg_")
        && !matches!(
            text,
            "pg_typeof"
                | "pg_size_pretty"
                | "pg_size_bytes"
                | "pg_column_size"
                | "pg_collation_for"
        )
    {
        assert!(denied.is_some(), "{text:?}");
    }
    for f in [
        "set_config",
        "query_to_xml",
        "dblink",
        "lo_import",
        "pg_sleep",
    ] {
        assert!(denied_function(f).is_some());
    }
    let _ = remote_operator_allowed(text);
    let _ = remote_type_allowed(text);
    if tablesample_method_allowed(text) {
        assert!(text == "system" || text == "bernoulli");
    }
});
