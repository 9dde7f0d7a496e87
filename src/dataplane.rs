//! Running a checked statement on a remote data plane, rows back as JSON.

use crate::catalog::quote_ident;
use crate::connections::{self, Connection, EngineKind};
use crate::error::{DbragError, Kind};

/// Run `sql` (already through the guard) read-only on `conn`, at most
/// `max_rows` rows (and whether more existed), within `timeout_ms`.
pub fn execute_read_only(
    conn: &Connection,
    sql: &str,
    max_rows: i64,
    max_bytes: usize,
    timeout_ms: i32,
) -> Result<(Vec<String>, bool), DbragError> {
    match conn.kind {
        EngineKind::Postgres => {
            // The statement on lines of its own: a trailing comment cannot
            // swallow the wrapper.
            let wrapped = format!(
                "SELECT pg_catalog.to_jsonb(q)::text FROM (\n{sql}\n) q LIMIT {}",
                max_rows + 1
            );
            let mut session = connections::open_session(conn)?;
            let rows = session.query_read_only(&wrapped, &[], timeout_ms)?;
            // jsonb text as the remote printed it; jsonb_in checks it on
            // the way out (crate::jsonb::JsonbText).
            let mut out: Vec<String> = rows
                .rows
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect();
            // The same bound on the answer's size as for local connections
            // (libpq has already buffered it; a remote server is trusted
            // with the statement's timeout, see SECURITY.md).
            if out.iter().map(String::len).sum::<usize>() > max_bytes {
                return Err(DbragError::new(
                    Kind::TooLarge,
                    format!("the answer is larger than {} MB", max_bytes >> 20),
                )
                .hint("ask for fewer rows or columns (max_rows), or narrower values"));
            }
            let truncated = out.len() as i64 > max_rows;
            out.truncate(max_rows as usize);
            Ok((out, truncated))
        }
        other => Err(DbragError::new(
            Kind::NotConfigured,
            format!(
                "running statements on {} connections is not supported",
                other.as_str()
            ),
        )),
    }
}

/// The schema-qualified search path text for a local connection.
pub fn local_search_path(schema: &str) -> String {
    format!("{}, pg_catalog, pg_temp", quote_ident(schema))
}
