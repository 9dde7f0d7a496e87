//! One place where pg_dbrag's failures become PostgreSQL errors.
//!
//! pgrx turns a panic or `error!()` into XX000; clients branch on SQLSTATE, so
//! every refusal goes through [`raise`] with the code that fits.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// The kinds of failure the API reports, each bound to one SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 28000: a tenant token that is forged, expired or malformed.
    BadToken,
    /// 42501: a privilege or tenant-boundary violation.
    Forbidden,
    /// 22023: an argument that cannot be used.
    BadArgument,
    /// 22004: a NULL where a value is required.
    NullArgument,
    /// 55000: configuration that must be in place first (a key, a model, an active connection).
    NotConfigured,
    /// 42P01: a named object (tenant, connection) that does not exist for the caller.
    NotFound,
    /// 58000: the remote server or the data-plane client broke off: a
    /// protocol violation, a lost connection, the client process ended.
    Remote,
    /// 08001: the data plane could not be reached (connection refused, no
    /// route, the server refused the session before any statement).
    ConnectFailed,
    /// 28P01: the data plane rejected the credentials (28000 when the
    /// server refused the client by its rules, e.g. pg_hba.conf).
    AuthFailed,
    /// The data plane rejected the statement: the remote's SQLSTATE where
    /// PostgreSQL knows it (see [`statement_code`]), else HV000; the
    /// remote's own code is in DETAIL. The only kind the model may retry.
    Statement,
    /// 57014: the statement was cancelled on request (not by a deadline).
    Cancelled,
    /// XX000: a fault of pg_dbrag itself (an internal query, a reply out of
    /// protocol).
    Internal,
    /// 39000: the model endpoint failed or answered something unusable.
    Model,
    /// 57014: a call took longer than its limit.
    Timeout,
    /// 42601: generated SQL that does not pass the guard.
    RefusedSql,
    /// 42710: an object to be created exists already and is not ours.
    Duplicate,
    /// 2BP01: objects still depend on what is to be dropped.
    DependentObjects,
    /// 54000: a result larger than the extension passes on.
    TooLarge,
    /// 53200: a statement grew the backend past dbrag.query_memory_limit.
    OutOfMemory,
    /// 53400: a tenant's model budget (calls per minute, tokens per day) is spent.
    OverBudget,
}

impl Kind {
    fn code(self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            Kind::BadToken => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            Kind::Forbidden => ERRCODE_INSUFFICIENT_PRIVILEGE,
            Kind::BadArgument => ERRCODE_INVALID_PARAMETER_VALUE,
            Kind::NullArgument => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Kind::NotConfigured => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Kind::NotFound => ERRCODE_UNDEFINED_OBJECT,
            Kind::Remote => ERRCODE_SYSTEM_ERROR,
            Kind::ConnectFailed => ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            Kind::AuthFailed => ERRCODE_INVALID_PASSWORD,
            Kind::Statement => ERRCODE_FDW_ERROR,
            Kind::Cancelled => ERRCODE_QUERY_CANCELED,
            Kind::Internal => ERRCODE_INTERNAL_ERROR,
            Kind::Model => ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION,
            Kind::Timeout => ERRCODE_QUERY_CANCELED,
            Kind::RefusedSql => ERRCODE_SYNTAX_ERROR,
            Kind::Duplicate => ERRCODE_DUPLICATE_OBJECT,
            Kind::DependentObjects => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            Kind::TooLarge => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            Kind::OutOfMemory => ERRCODE_OUT_OF_MEMORY,
            Kind::OverBudget => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        }
    }
}

/// Classes of SQLSTATE this table gives a meaning of its own: a remote
/// statement error in one of them is reported as HV000, never as if the
/// connection, the credentials, a deadline or pg_dbrag had failed.
const RESERVED_CLASSES: [&str; 9] = ["08", "28", "3D", "53", "54", "55", "57", "58", "XX"];

fn known_code(state: &str) -> Option<PgSqlErrorCode> {
    let b = state.as_bytes();
    if b.len() != 5
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return None;
    }
    let code = b.iter().enumerate().fold(0i32, |n, (i, c)| {
        n + ((((*c as i32) - ('0' as i32)) & 0x3F) << (6 * i))
    });
    let known = PgSqlErrorCode::from(code);
    // From<i32> answers XX000 for a code it does not know.
    (known != PgSqlErrorCode::ERRCODE_INTERNAL_ERROR || state == "XX000").then_some(known)
}

/// The SQLSTATE of a statement the data plane rejected: the remote's own
/// code when PostgreSQL knows it, else its class's (42S22 → 42000), else
/// HV000 (fdw_error); HV000 too for classes [`RESERVED_CLASSES`].
pub fn statement_code(remote: Option<&str>) -> PgSqlErrorCode {
    let Some(state) = remote.filter(|s| s.len() == 5 && s.is_ascii()) else {
        return PgSqlErrorCode::ERRCODE_FDW_ERROR;
    };
    if RESERVED_CLASSES.contains(&&state[..2]) {
        return PgSqlErrorCode::ERRCODE_FDW_ERROR;
    }
    known_code(state)
        .or_else(|| known_code(&format!("{}000", &state[..2])))
        .unwrap_or(PgSqlErrorCode::ERRCODE_FDW_ERROR)
}

/// A failure on its way to the client: kind, message, optional hint and
/// detail, and for [`Kind::Statement`] the SQLSTATE it keeps.
#[derive(Debug, Clone)]
pub struct DbragError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    pub detail: Option<String>,
    /// Overrides the kind's SQLSTATE (a statement error's own code).
    pub code: Option<PgSqlErrorCode>,
}

impl DbragError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        DbragError {
            kind,
            message: message.into(),
            hint: None,
            detail: None,
            code: None,
        }
    }

    /// A statement the data plane rejected, with the remote's SQLSTATE
    /// (None where the engine has none) and a DETAIL naming it.
    pub fn statement(
        message: impl Into<String>,
        remote_state: Option<&str>,
        detail: String,
    ) -> Self {
        let mut e = DbragError::new(Kind::Statement, message);
        e.code = Some(statement_code(remote_state));
        e.detail = Some(detail);
        e
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The SQLSTATE this error is raised with.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        self.code.unwrap_or_else(|| self.kind.code())
    }

    /// Raise as an ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.message, "pg_dbrag");
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl std::fmt::Display for DbragError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, DbragError>;

/// Raise `kind` with `message`; never returns.
pub fn raise(kind: Kind, message: impl Into<String>) -> ! {
    DbragError::new(kind, message).raise()
}

/// Unwrap a result or raise its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

/// SPI failures are bugs or concurrent DDL, not user errors: report them as
/// internal errors (XX000) with the SPI text, never a panic, and never as
/// missing configuration. The one exception is a lookup that found no row
/// where one was expected (a tenant or connection removed meanwhile, an
/// unknown id): 42704.
impl From<pgrx::spi::Error> for DbragError {
    fn from(e: pgrx::spi::Error) -> Self {
        if matches!(e, pgrx::spi::Error::InvalidPosition) {
            return DbragError::new(
                Kind::NotFound,
                "pg_dbrag found no row where one was expected (an unknown or removed tenant or connection)",
            );
        }
        DbragError::new(
            Kind::Internal,
            format!("pg_dbrag internal query failed: {e}"),
        )
    }
}

/// The answer of an internal query on which a decision rests, or XX000
/// naming `what` it was for: never an empty answer in place of a failure.
pub fn spi_or_raise<T>(r: std::result::Result<T, pgrx::spi::Error>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => DbragError::new(
            Kind::Internal,
            format!("pg_dbrag internal query failed ({what}): {e}"),
        )
        .raise(),
    }
}

/// As [`spi_or_raise`] for a one-row lookup: no row is `None`, any other
/// failure XX000.
pub fn spi_row_or_raise<T>(
    r: std::result::Result<Option<T>, pgrx::spi::Error>,
    what: &str,
) -> Option<T> {
    match r {
        Err(pgrx::spi::Error::InvalidPosition) => None,
        other => spi_or_raise(other, what),
    }
}

/// Longest arguments, checked before anything is built from them (the
/// table of limits is in README.md, "Limits").
pub mod limits {
    /// dbrag.identifier_words: a name or a catalog key.
    pub const IDENTIFIER: usize = 64 << 10;
    /// A conninfo or URI.
    pub const CONNINFO: usize = 64 << 10;
    /// A connection name, an engine kind, a role.
    pub const NAME: usize = 1024;
    /// A model API key.
    pub const API_KEY: usize = 64 << 10;
    /// dbrag.encrypt's plaintext and dbrag.decrypt's ciphertext.
    pub const SECRET: usize = 16 << 20;
    /// An encryption context.
    pub const CONTEXT: usize = 64 << 10;
    /// SQL given to the superuser-only diagnostics (_guard_check…).
    pub const SQL: usize = 1 << 20;
    /// A prompt given to the superuser-only _llm_complete.
    pub const PROMPT: usize = 4 << 20;
}

/// Refuse an argument longer than `max` bytes (54000), before anything is
/// allocated from it.
pub fn bounded<'a>(value: &'a str, name: &str, max: usize) -> &'a str {
    bounded_len(value.len(), name, max);
    value
}

/// As [`bounded`], for a length.
pub fn bounded_len(len: usize, name: &str, max: usize) {
    if len > max {
        DbragError::new(
            Kind::TooLarge,
            format!("{name} is longer than the limit of {max} bytes ({len} bytes)"),
        )
        .raise();
    }
}

/// Require a non-NULL argument, naming it in the error.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    match value {
        Some(v) => v,
        None => DbragError::new(Kind::NullArgument, format!("{name} must not be NULL")).raise(),
    }
}
