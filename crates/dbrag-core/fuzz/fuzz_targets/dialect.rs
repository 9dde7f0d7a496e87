//! The MySQL/SQLite guard (dbrag_core::dialect_guard) on what a model may
//! write, and the MySQL URI and SQLite path rules (dbrag_core::dataplane_target)
//! on what a tenant may give. Input: first byte = mode, the rest the text.
#![no_main]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dbrag_core::dataplane_target::{
    check_mysql_unprivileged, parse_mysql_uri, resolve_sqlite_path,
};
use dbrag_core::dialect_guard::{check, with_row_limit, Dialect};
use libfuzzer_sys::fuzz_target;

fn allowed(dialect: Dialect) -> HashSet<(String, String)> {
    let schema = match dialect {
        Dialect::MySql => "shop",
        Dialect::Sqlite => "main",
    };
    ["customers", "orders", "Order Items"]
        .iter()
        .map(|t| (schema.to_string(), t.to_string()))
        .collect()
}

/// A directory with one database file, and a file beside it (outside);
/// under TMPDIR, which scripts/fuzz.sh points at its own temporary directory.
fn sqlite_dir() -> &'static (PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("dbrag_fuzz_sqlite_{}", std::process::id()));
        let dir = root.join("tenant");
        std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
        std::fs::write(dir.join("shop.db"), b"").expect("temp file");
        std::fs::write(root.join("outside.db"), b"").expect("temp file");
        (dir, root.join("outside.db"))
    })
}

fn check_statement(dialect: Dialect, sql: &str) {
    let allowed = allowed(dialect);
    let schema = if dialect == Dialect::MySql {
        "shop"
    } else {
        "main"
    };
    if let Ok(c) = check(dialect, sql, schema, &allowed) {
        // What runs is what was checked: the printed statement passes again,
        // unchanged, and reads only allowed tables.
        let again =
            check(dialect, &c.sql, schema, &allowed).expect("a checked statement checks again");
        assert_eq!(again.sql, c.sql);
        for t in &c.tables {
            let folded = (t.0.to_lowercase(), t.1.to_lowercase());
            assert!(
                allowed.contains(t)
                    || allowed
                        .iter()
                        .any(|a| (a.0.to_lowercase(), a.1.to_lowercase()) == folded),
                "{t:?} read by {:?}",
                c.sql
            );
        }
        if dialect == Dialect::MySql {
            assert!(!c.sql.contains('\\'));
        }
        if let Some(limited) = with_row_limit(dialect, &c.sql, 11) {
            assert!(
                check(dialect, &limited, schema, &allowed).is_ok(),
                "{limited:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 4 {
        0 => check_statement(Dialect::MySql, text),
        1 => check_statement(Dialect::Sqlite, text),
        2 => {
            if let Ok(t) = parse_mysql_uri(text) {
                let _ = check_mysql_unprivileged(&t);
                assert!(!t.host.is_empty() && t.port > 0);
                // Debug output never shows the password.
                let shown = format!("{t:?}");
                assert!(t.password.is_none() || shown.contains("\"***\""));
            }
        }
        _ => {
            let (dir, outside) = sqlite_dir();
            if let Ok(p) = resolve_sqlite_path(dir, text) {
                let canon = dir.canonicalize().expect("dir");
                assert!(p.starts_with(&canon) && p != canon, "{p:?} from {text:?}");
                assert_ne!(p, outside.canonicalize().expect("outside"));
            }
            let _ = resolve_sqlite_path(Path::new("relative/dir"), text);
        }
    }
});
