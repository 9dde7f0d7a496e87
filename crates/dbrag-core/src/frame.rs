//! The framed protocol between a PostgreSQL backend and the data-plane
//! helper process (`pg_dbrag_dataplane`), which runs the MySQL and SQLite
//! clients outside the backend (docs/engines.md, "Containment").
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! UTF-8 JSON. The length is checked against the reader's cap before any
//! byte of the payload is allocated, so a helper that went wrong (or a
//! hostile server that took it over) can make the backend allocate at most
//! the cap. One request frame goes to the helper; one reply frame comes
//! back: `{"ok": …}` or `{"error": {"kind", "message", "hint"}}`.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest request the helper accepts: the statement (bounded at
/// `dialect_guard::MAX_SQL_BYTES`) and a conninfo, with room to spare.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest reply the backend accepts: the answer cap of a generated
/// statement (64 MB) and JSON overhead; catalog replies are smaller.
pub const MAX_REPLY_BYTES: usize = 80 << 20;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended before a whole frame (the peer exited).
    Eof,
    /// The announced length is above the cap.
    TooLarge(u64, usize),
    /// The payload is not the JSON expected.
    Malformed(String),
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Eof => write!(f, "the stream ended before a whole frame"),
            FrameError::TooLarge(n, cap) => {
                write!(
                    f,
                    "a frame of {n} bytes is larger than the limit of {cap} bytes"
                )
            }
            FrameError::Malformed(m) => write!(f, "a malformed frame: {m}"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Check a frame header: the payload length, if within `cap`.
pub fn payload_len(header: [u8; 4], cap: usize) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(header) as u64;
    if n > cap as u64 {
        return Err(FrameError::TooLarge(n, cap));
    }
    Ok(n as usize)
}

/// Read one frame's payload, at most `cap` bytes.
pub fn read_frame<R: Read>(r: &mut R, cap: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    read_all(r, &mut header)?;
    let n = payload_len(header, cap)?;
    let mut buf = vec![0u8; n];
    read_all(r, &mut buf)?;
    Ok(buf)
}

fn read_all<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Eof
        } else {
            FrameError::Io(e)
        }
    })
}

/// Write one frame (refused above `cap`, as the reader would refuse it).
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8], cap: usize) -> Result<(), FrameError> {
    if payload.len() > cap {
        return Err(FrameError::TooLarge(payload.len() as u64, cap));
    }
    w.write_all(&(payload.len() as u32).to_be_bytes())
        .and_then(|_| w.write_all(payload))
        .and_then(|_| w.flush())
        .map_err(FrameError::Io)
}

/// A MySQL server to reach, checked by the backend for the caller
/// (dataplane_target::check_mysql_unprivileged).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct MysqlConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl fmt::Debug for MysqlConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl From<&crate::dataplane_target::MysqlTarget> for MysqlConn {
    fn from(t: &crate::dataplane_target::MysqlTarget) -> Self {
        MysqlConn {
            host: t.host.clone(),
            port: t.port,
            user: t.user.clone(),
            password: t.password.clone(),
            database: t.database.clone(),
        }
    }
}

impl From<MysqlConn> for crate::dataplane_target::MysqlTarget {
    fn from(c: MysqlConn) -> Self {
        crate::dataplane_target::MysqlTarget {
            host: c.host,
            port: c.port,
            user: c.user,
            password: c.password,
            database: c.database,
        }
    }
}

/// What the backend asks the helper for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    MysqlQuery {
        target: MysqlConn,
        database: String,
        sql: String,
        max_rows: u64,
        max_bytes: u64,
        connect_ms: i32,
        timeout_ms: i32,
    },
    MysqlListTables {
        target: MysqlConn,
        database: String,
        connect_ms: i32,
        timeout_ms: i32,
    },
    MysqlIntrospect {
        target: MysqlConn,
        database: String,
        connect_ms: i32,
        statement_ms: i32,
    },
    SqliteQuery {
        path: String,
        sql: String,
        max_rows: u64,
        max_bytes: u64,
        timeout_ms: i32,
    },
    SqliteListTables {
        path: String,
        timeout_ms: i32,
    },
    SqliteIntrospect {
        path: String,
        timeout_ms: i32,
    },
}

/// The kinds of failure the helper reports; the backend maps each to the
/// SQLSTATE of its own error kind of the same name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Remote,
    /// The server could not be reached (the file could not be opened).
    ConnectFailed,
    /// The server rejected the credentials.
    AuthFailed,
    /// The server rejected the statement (its SQLSTATE in `sqlstate`).
    Statement,
    Cancelled,
    Timeout,
    Forbidden,
    NotFound,
    RefusedSql,
    BadArgument,
    TooLarge,
}

/// A failure in the helper, as it goes back to the backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Facts for DETAIL (the remote's error code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The remote's SQLSTATE of a rejected statement, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            hint: None,
            detail: None,
            sqlstate: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A rejected statement: the remote's SQLSTATE (if any) and a detail.
    pub fn statement(
        message: impl Into<String>,
        sqlstate: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        WireError {
            kind: ErrorKind::Statement,
            message: message.into(),
            hint: None,
            detail: Some(detail.into()),
            sqlstate,
        }
    }
}

/// The helper's one answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Value),
    Error(WireError),
}

/// Rows of a query as the helper returns them: one JSON object per row.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Value>,
    pub truncated: bool,
}

/// What sync_catalog needs from an engine: one introspection JSON per table
/// and sample rows per table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Introspection {
    pub tables: Vec<String>,
    pub samples: Vec<(String, Vec<Value>)>,
}

/// Parse a reply payload.
pub fn parse_reply(payload: &[u8]) -> Result<Reply, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let reply = Reply::Error(WireError::new(ErrorKind::Timeout, "slow").hint("h"));
        write_frame(
            &mut buf,
            &serde_json::to_vec(&reply).unwrap(),
            MAX_REPLY_BYTES,
        )
        .unwrap();
        let payload = read_frame(&mut buf.as_slice(), MAX_REPLY_BYTES).unwrap();
        assert_eq!(parse_reply(&payload).unwrap(), reply);
    }

    #[test]
    fn length_checked_before_allocating() {
        // 4 GiB - 1 announced, nothing behind it: refused on the header.
        let data = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut data.as_slice(), 1024),
            Err(FrameError::TooLarge(4294967295, 1024))
        ));
    }

    #[test]
    fn truncated_frames() {
        assert!(matches!(
            read_frame(&mut [0u8, 0].as_slice(), 10),
            Err(FrameError::Eof)
        ));
        assert!(matches!(
            read_frame(&mut [0u8, 0, 0, 5, b'{'].as_slice(), 10),
            Err(FrameError::Eof)
        ));
        assert!(parse_reply(b"{\"ok\":").is_err());
        assert!(parse_reply(b"[1,2]").is_err());
    }

    #[test]
    fn requests_round_trip() {
        let r = Request::SqliteQuery {
            path: "/x".into(),
            sql: "SELECT 1".into(),
            max_rows: 5,
            max_bytes: 10,
            timeout_ms: 100,
        };
        let text = serde_json::to_vec(&r).unwrap();
        let back: Request = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, r);
    }
}
