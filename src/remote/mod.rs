//! The PostgreSQL client for remote data planes: libpq's asynchronous API,
//! the way contrib postgres_fdw uses it. Every wait is on the socket and the
//! backend's latch together (`WaitLatchOrSocket`), in slices of at most
//! 100 ms with `check_for_interrupts!()` after each, so `statement_timeout`
//! and `pg_cancel_backend` end a hung remote at once. A guard owns the
//! connection: its `Drop` cancels a query in flight and calls `PQfinish`,
//! also when an ERROR unwinds through it.
//!
//! The conninfo (with its password) lives only in this process's memory for
//! the length of a call; messages are redacted of the password.

use std::ffi::{c_char, c_int, CStr, CString};
use std::time::{Duration, Instant};

use dbrag_core::conninfo::{self, Summary};
use pgrx::pg_sys;
use pq_sys as pq;

use crate::error::{DbragError, Kind, Result};

/// A text-format result.
#[derive(Debug, Clone, Default)]
pub struct RemoteRows {
    pub columns: Vec<String>,
    /// Type oids as the remote server reports them.
    pub types: Vec<u32>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// A parsed conninfo: libpq's keyword/value pairs for the options given.
#[derive(Clone)]
pub struct Parsed {
    pub options: Vec<(String, String)>,
}

impl Parsed {
    pub fn summary(&self) -> Result<Summary> {
        conninfo::summarize(&self.options)
            .map_err(|e| DbragError::new(Kind::BadArgument, e.to_string()))
    }

    fn password(&self) -> Option<String> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == "password")
            .map(|(_, v)| v.clone())
    }
}

/// Parse a conninfo (key=value or URI) with libpq, without connecting.
pub fn parse(conninfo: &str) -> Result<Parsed> {
    let Ok(c) = CString::new(conninfo) else {
        return Err(DbragError::new(
            Kind::BadArgument,
            "conninfo must not contain NUL bytes",
        ));
    };
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: libpq allocates the array and the message; both freed below.
    let opts = unsafe { pq::PQconninfoParse(c.as_ptr(), &mut err) };
    if opts.is_null() {
        let detail = if err.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated message from libpq, freed right after.
            let m = unsafe { CStr::from_ptr(err).to_string_lossy().into_owned() };
            unsafe { pq::PQfreemem(err.cast()) };
            m
        };
        // libpq quotes the text it could not parse, which may be the password:
        // only the "invalid option" form (which quotes a keyword) is passed on.
        let mut e = DbragError::new(Kind::BadArgument, "conninfo is not a valid libpq connection string or URI")
            .hint("write key=value pairs (host=… port=… dbname=… user=… password=…) or a postgresql:// URI");
        if detail.starts_with("invalid connection option") {
            e = DbragError::new(Kind::BadArgument, format!("conninfo: {}", detail.trim()));
        }
        return Err(e);
    }
    let mut options = Vec::new();
    // SAFETY: the array ends with an entry whose keyword is NULL.
    unsafe {
        let mut p = opts;
        while !(*p).keyword.is_null() {
            if !(*p).val.is_null() {
                options.push((
                    CStr::from_ptr((*p).keyword).to_string_lossy().into_owned(),
                    CStr::from_ptr((*p).val).to_string_lossy().into_owned(),
                ));
            }
            p = p.add(1);
        }
        pq::PQconninfoFree(opts);
    }
    Ok(Parsed { options })
}

/// The checks of docs/connections-and-keys.md made before connecting.
pub fn check_before_connect(parsed: &Parsed) -> Result<()> {
    if crate::pg::restricted::caller_is_superuser() {
        return Ok(());
    }
    conninfo::check_unprivileged(&parsed.options).map(|_| ()).map_err(|e| {
        DbragError::new(Kind::Forbidden, format!("connection refused: {e}")).hint(
            "a remote connection must use TCP (host=name or address) and authenticate with the password it carries",
        )
    })
}

/// An open connection. Dropping it cancels a query in flight and closes it.
pub struct Session {
    conn: *mut pq::PGconn,
    password: Option<String>,
    busy: bool,
    /// Most bytes of values one statement's result may hold here (54000
    /// past it): rows arrive one at a time (single-row mode), so a hostile
    /// or endless result is refused as it comes, never buffered whole.
    pub max_result_bytes: usize,
}

/// The default [`Session::max_result_bytes`].
pub const MAX_RESULT_BYTES: usize = 64 << 20;

impl Drop for Session {
    fn drop(&mut self) {
        if self.conn.is_null() {
            return;
        }
        // SAFETY: conn is ours; the cancel object is a self-contained copy.
        unsafe {
            if self.busy {
                let cancel = pq::PQgetCancel(self.conn);
                if !cancel.is_null() {
                    send_cancel(cancel);
                }
            }
            pq::PQfinish(self.conn);
        }
        self.conn = std::ptr::null_mut();
    }
}

struct CancelHandle(*mut pq::PGcancel);
// SAFETY: a PGcancel is a plain copy of address and key; PQcancel is
// documented as safe to call from any thread.
unsafe impl Send for CancelHandle {}

/// Ask the remote server to cancel the query in flight. PQcancel opens a
/// new connection and blocks (libpq 15 has no timeout for it), so it runs on
/// a short-lived thread with every signal blocked, which touches nothing of
/// PostgreSQL's: the backend goes on at once even if the remote is gone.
unsafe fn send_cancel(cancel: *mut pq::PGcancel) {
    fn cancel_now(handle: CancelHandle) {
        let mut buf = [0 as c_char; 256];
        // SAFETY: handle.0 is a live PGcancel, freed exactly once here.
        unsafe {
            pq::PQcancel(handle.0, buf.as_mut_ptr(), buf.len() as c_int);
            pq::PQfreeCancel(handle.0);
        }
    }
    let handle = CancelHandle(cancel);
    let spawned = crate::pg::spawn_signal_free("pg_dbrag cancel", Some(256 * 1024), move || {
        cancel_now(handle)
    });
    if spawned.is_err() {
        // The closure never ran (and CancelHandle frees nothing on drop):
        // cancel inline instead.
        cancel_now(CancelHandle(cancel));
    }
}

/// Remote NOTICEs are the remote's business: keep them out of this server's log.
unsafe extern "C" fn ignore_notice(_arg: *mut std::ffi::c_void, _message: *const c_char) {}

fn deadline_after(ms: i32) -> Instant {
    Instant::now() + Duration::from_millis(ms.max(1) as u64)
}

const READ: u32 = pg_sys::WL_SOCKET_READABLE;
/// How long ending a remote transaction may take.
const ROLLBACK_MS: i32 = 2000;
const WRITE: u32 = pg_sys::WL_SOCKET_WRITEABLE;

/// Wait until the socket is ready (or 100 ms passed), then serve interrupts.
/// Returns Err(Timeout) once `deadline` has passed.
fn wait_socket(
    sock: c_int,
    socket_events: u32,
    deadline: Instant,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let now = Instant::now();
    if now >= deadline {
        return Err(DbragError::new(Kind::Timeout, what()));
    }
    let slice = (deadline - now).min(Duration::from_millis(100));
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
    if sock >= 0 {
        events |= socket_events;
    }
    // SAFETY: MyLatch is the backend's own latch; sock is libpq's live socket.
    unsafe {
        let rc = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as c_int,
            sock as pg_sys::pgsocket,
            slice.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if rc & pg_sys::WL_LATCH_SET as c_int != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    // statement_timeout and pg_cancel_backend land here (an ERROR unwinds
    // through the Session, whose Drop cancels and closes the connection).
    pgrx::check_for_interrupts!();
    Ok(())
}

fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: libpq returns NUL-terminated strings valid until the next call.
        unsafe { CStr::from_ptr(p).to_string_lossy().trim().to_string() }
    }
}

impl Session {
    fn redact(&self, message: &str) -> String {
        conninfo::redact(message, self.password.as_deref())
    }

    /// Wait until the socket is ready for `events` (or the deadline), then
    /// read what arrived into libpq's buffer.
    fn wait_and_read(
        &mut self,
        events: u32,
        deadline: Instant,
        timeout_msg: &dyn Fn() -> String,
    ) -> Result<()> {
        // SAFETY: conn is live.
        wait_socket(
            unsafe { pq::PQsocket(self.conn) },
            events,
            deadline,
            timeout_msg,
        )?;
        // SAFETY: conn is live.
        if unsafe { pq::PQconsumeInput(self.conn) } == 0 {
            self.busy = false;
            return Err(DbragError::new(
                Kind::Remote,
                format!("lost the remote connection: {}", self.error_message()),
            ));
        }
        Ok(())
    }

    /// Send what libpq still buffers (non-blocking mode), serving input
    /// meanwhile as libpq asks, within `deadline`.
    fn flush(&mut self, deadline: Instant, timeout_msg: &dyn Fn() -> String) -> Result<()> {
        loop {
            // SAFETY: conn is live.
            match unsafe { pq::PQflush(self.conn) } {
                0 => return Ok(()),
                1 => self.wait_and_read(READ | WRITE, deadline, timeout_msg)?,
                _ => {
                    self.busy = false;
                    return Err(DbragError::new(
                        Kind::Remote,
                        format!("could not send the query: {}", self.error_message()),
                    ));
                }
            }
        }
    }

    fn error_message(&self) -> String {
        // SAFETY: conn is live.
        self.redact(&cstr_lossy(unsafe { pq::PQerrorMessage(self.conn) }))
    }

    /// Connect within `timeout_ms`, honouring interrupts. Applies the
    /// password rule of docs/connections-and-keys.md for non-superusers. Under
    /// dbrag.query_memory_limit: a server can announce a long message
    /// during start-up too.
    pub fn connect(parsed: &Parsed, timeout_ms: i32) -> Result<Session> {
        crate::pg::timer::within_memory_limit(|| Self::connect_unwatched(parsed, timeout_ms))
    }

    fn connect_unwatched(parsed: &Parsed, timeout_ms: i32) -> Result<Session> {
        check_before_connect(parsed)?;
        let mut keys: Vec<CString> = Vec::new();
        let mut vals: Vec<CString> = Vec::new();
        let mut push = |k: &str, v: &str| -> Result<()> {
            match (CString::new(k), CString::new(v)) {
                (Ok(k), Ok(v)) => {
                    keys.push(k);
                    vals.push(v);
                    Ok(())
                }
                _ => Err(DbragError::new(
                    Kind::BadArgument,
                    "conninfo must not contain NUL bytes",
                )),
            }
        };
        for (k, v) in &parsed.options {
            if k == "client_encoding" {
                continue;
            }
            push(k, v)?;
        }
        // SAFETY: a static name owned by the backend.
        let encoding = cstr_lossy(unsafe { pg_sys::GetDatabaseEncodingName() });
        push("client_encoding", &encoding)?;
        push("fallback_application_name", "pg_dbrag")?;
        let mut kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();
        kp.push(std::ptr::null());
        vp.push(std::ptr::null());

        let deadline = deadline_after(timeout_ms);
        // SAFETY: NULL-terminated arrays of C strings that outlive the call.
        let conn = unsafe { pq::PQconnectStartParams(kp.as_ptr(), vp.as_ptr(), 0) };
        if conn.is_null() {
            return Err(DbragError::new(
                Kind::Remote,
                "out of memory starting a remote connection",
            ));
        }
        let session = Session {
            conn,
            password: parsed.password(),
            busy: false,
            max_result_bytes: MAX_RESULT_BYTES,
        };
        // SAFETY: conn is live for the whole loop (owned by session).
        if unsafe { pq::PQstatus(conn) } == pq::ConnStatusType::CONNECTION_BAD {
            return Err(session.connect_failed(false));
        }
        // Whether a server answered at all (libpq waits to read only once
        // the TCP connection is up): before that, a failure is 08001.
        let mut reached = false;
        let mut state = pq::PostgresPollingStatusType::PGRES_POLLING_WRITING;
        let timeout_msg =
            || format!("could not connect to the remote server within {timeout_ms} ms");
        loop {
            match state {
                pq::PostgresPollingStatusType::PGRES_POLLING_OK => break,
                pq::PostgresPollingStatusType::PGRES_POLLING_FAILED => {
                    return Err(session.connect_failed(reached))
                }
                pq::PostgresPollingStatusType::PGRES_POLLING_READING => {
                    reached = true;
                    wait_socket(unsafe { pq::PQsocket(conn) }, READ, deadline, &timeout_msg)?
                }
                _ => wait_socket(unsafe { pq::PQsocket(conn) }, WRITE, deadline, &timeout_msg)?,
            }
            // SAFETY: as above.
            state = unsafe { pq::PQconnectPoll(conn) };
        }
        if !crate::pg::restricted::caller_is_superuser()
            && unsafe { pq::PQconnectionUsedPassword(conn) } == 0
        {
            return Err(DbragError::new(
                Kind::Forbidden,
                "connection refused: the remote server did not ask for the password",
            )
            .hint(
                "non-superusers may only use remote servers that authenticate them by password",
            ));
        }
        // SAFETY: conn is live; the processor is a static function.
        unsafe {
            // Non-blocking: a large query to a remote that stopped reading
            // must not block the backend in send(); see flush() below.
            pq::PQsetnonblocking(conn, 1);
            pq::PQsetNoticeProcessor(conn, Some(ignore_notice), std::ptr::null_mut());
        }
        Ok(session)
    }

    /// Why connecting failed, as one of the kinds of README.md "Errors":
    /// the server refused the password (28P01) or the client by its rules
    /// (28000), could not be reached or refused the session (08001), or
    /// broke the protocol during start-up (58000). libpq keeps the server's
    /// SQLSTATE of a start-up error to itself: the server's message (which
    /// the remote's lc_messages may translate) and whether a password was
    /// asked for tell them apart.
    fn connect_failed(&self, reached: bool) -> DbragError {
        let msg = self.error_message();
        let text = format!("could not connect to the remote server: {msg}");
        let hint =
            "check host, port, database, user and password; the server must accept TCP connections";
        // SAFETY: conn is live (owned by self).
        let asked_password = unsafe { pq::PQconnectionUsedPassword(self.conn) } != 0
            || unsafe { pq::PQconnectionNeedsPassword(self.conn) } != 0;
        let server_said = msg.contains("FATAL:");
        if msg.contains("authentication failed") || (asked_password && msg.contains("password")) {
            return DbragError::new(Kind::AuthFailed, text).hint(hint);
        }
        if msg.contains("pg_hba.conf") {
            let mut e = DbragError::new(Kind::AuthFailed, text).hint(hint);
            e.code = Some(pgrx::PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION);
            return e;
        }
        let kind = if !reached || server_said {
            Kind::ConnectFailed
        } else {
            Kind::Remote
        };
        DbragError::new(kind, text).hint(hint)
    }

    /// Send `sql`: with `params` None as a simple query (several statements
    /// allowed, used only for the extension's own fixed text), otherwise
    /// through the extended protocol (exactly one statement) with text
    /// parameters. Then wait for its results until `deadline`.
    fn run(
        &mut self,
        sql: &str,
        params: Option<&[Option<&str>]>,
        deadline: Instant,
        timeout_ms: i32,
    ) -> Result<RemoteRows> {
        let Ok(csql) = CString::new(sql) else {
            return Err(DbragError::new(
                Kind::BadArgument,
                "query must not contain NUL bytes",
            ));
        };
        let params = params.map(|ps| {
            ps.iter()
                .map(|p| p.map(CString::new).transpose())
                .collect::<std::result::Result<Vec<Option<CString>>, _>>()
        });
        let owned = match params {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return Err(DbragError::new(
                    Kind::BadArgument,
                    "parameter must not contain NUL bytes",
                ))
            }
        };
        // SAFETY: conn is live; the arrays outlive the call (libpq copies them).
        let sent = unsafe {
            match &owned {
                None => pq::PQsendQuery(self.conn, csql.as_ptr()),
                Some(values) => {
                    let ptrs: Vec<*const c_char> = values
                        .iter()
                        .map(|o| o.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
                        .collect();
                    pq::PQsendQueryParams(
                        self.conn,
                        csql.as_ptr(),
                        ptrs.len() as c_int,
                        std::ptr::null(),
                        if ptrs.is_empty() {
                            std::ptr::null()
                        } else {
                            ptrs.as_ptr()
                        },
                        std::ptr::null(),
                        std::ptr::null(),
                        0,
                    )
                }
            }
        };
        if sent == 0 {
            return Err(DbragError::new(
                Kind::Remote,
                format!("remote query failed: {}", self.error_message()),
            ));
        }
        self.busy = true;
        // One row per result for the statement of the extended protocol:
        // the byte cap below acts while rows arrive.
        let single = owned.is_some();
        if single {
            // SAFETY: conn is live, a query was just sent and nothing read.
            unsafe { pq::PQsetSingleRowMode(self.conn) };
        }
        let timeout_msg = || format!("the remote query took longer than {timeout_ms} ms");
        self.flush(deadline, &timeout_msg)?;
        let mut last: Option<RemoteRows> = None;
        let mut failure: Option<DbragError> = None;
        let mut acc: Option<RemoteRows> = None;
        let mut bytes = 0usize;
        loop {
            // SAFETY: conn is live.
            while unsafe { pq::PQisBusy(self.conn) } != 0 {
                self.wait_and_read(READ, deadline, &timeout_msg)?;
            }
            // SAFETY: not busy, so PQgetResult does not block.
            let res = unsafe { pq::PQgetResult(self.conn) };
            if res.is_null() {
                break;
            }
            // SAFETY: res is live until cleared below.
            let one_row =
                unsafe { pq::PQresultStatus(res) } == pq::ExecStatusType::PGRES_SINGLE_TUPLE;
            let outcome = self.take_result(res, single);
            // SAFETY: res came from PQgetResult and is cleared once.
            unsafe { pq::PQclear(res) };
            match outcome {
                Ok(rows) if one_row => {
                    bytes = rows.rows.iter().flatten().fold(bytes, |n, v| {
                        n.saturating_add(v.as_ref().map_or(0, String::len) + 8)
                    });
                    if bytes > self.max_result_bytes {
                        // Still busy: the session is dropped, which cancels
                        // the remote query and closes the connection.
                        return Err(DbragError::new(
                            Kind::TooLarge,
                            format!(
                                "the remote result is larger than {} MB",
                                self.max_result_bytes >> 20
                            ),
                        )
                        .hint("ask for fewer rows or columns (max_rows), or narrower values"));
                    }
                    match acc.as_mut() {
                        Some(a) => a.rows.extend(rows.rows),
                        None => acc = Some(rows),
                    }
                }
                // The zero-row result that ends a single-row sequence.
                Ok(rows) => last = Some(acc.take().unwrap_or(rows)),
                Err(mut e) => {
                    if e.kind == Kind::Timeout {
                        // The remote's statement_timeout is ours: the same
                        // message as when our own clock stops it first.
                        e.message = format!("{}: {}", timeout_msg(), e.message);
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        self.busy = false;
        match failure {
            Some(e) => Err(e),
            None => Ok(last.unwrap_or_default()),
        }
    }

    /// The rows of `res`, or its error: for the caller's `statement` (not
    /// the extension's own BEGIN/ROLLBACK) a rejected statement keeping the
    /// remote SQLSTATE (crate::error::statement_code) with the remote's
    /// primary message only (its DETAIL may quote values).
    fn take_result(&self, res: *mut pq::PGresult, statement: bool) -> Result<RemoteRows> {
        // SAFETY: res is a live result for the duration of this call.
        unsafe {
            match pq::PQresultStatus(res) {
                pq::ExecStatusType::PGRES_TUPLES_OK | pq::ExecStatusType::PGRES_SINGLE_TUPLE => {
                    let nf = pq::PQnfields(res);
                    let nt = pq::PQntuples(res);
                    let mut out = RemoteRows::default();
                    for f in 0..nf {
                        out.columns.push(cstr_lossy(pq::PQfname(res, f)));
                        out.types.push(pq::PQftype(res, f));
                    }
                    for r in 0..nt {
                        let mut row = Vec::with_capacity(nf as usize);
                        for f in 0..nf {
                            if pq::PQgetisnull(res, r, f) != 0 {
                                row.push(None);
                            } else {
                                let p = pq::PQgetvalue(res, r, f);
                                let len = pq::PQgetlength(res, r, f).max(0) as usize;
                                let bytes = std::slice::from_raw_parts(p as *const u8, len);
                                row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
                            }
                        }
                        out.rows.push(row);
                    }
                    Ok(out)
                }
                pq::ExecStatusType::PGRES_COMMAND_OK | pq::ExecStatusType::PGRES_EMPTY_QUERY => {
                    Ok(RemoteRows::default())
                }
                _ => {
                    let state =
                        cstr_lossy(pq::PQresultErrorField(res, pq::PG_DIAG_SQLSTATE as c_int));
                    let primary = self.redact(&cstr_lossy(pq::PQresultErrorField(
                        res,
                        pq::PG_DIAG_MESSAGE_PRIMARY as c_int,
                    )));
                    let msg = if primary.is_empty() {
                        self.error_message()
                    } else {
                        primary
                    };
                    let text = format!("remote query failed: {msg}");
                    if state == "57014" {
                        // Ours is the remote statement_timeout; a cancel
                        // from elsewhere says so.
                        return Err(if msg.contains("user request") {
                            DbragError::new(
                                Kind::Cancelled,
                                format!("the remote query was cancelled: {msg}"),
                            )
                        } else {
                            DbragError::new(Kind::Timeout, text)
                        });
                    }
                    if statement && !state.is_empty() {
                        return Err(DbragError::statement(
                            text,
                            Some(&state),
                            format!("remote SQLSTATE {state}"),
                        ));
                    }
                    Err(DbragError::new(Kind::Remote, text))
                }
            }
        }
    }

    /// One read-only statement: `BEGIN READ ONLY`, a remote
    /// `statement_timeout`, then `sql` with `params` (extended protocol, so a
    /// single statement), all within `timeout_ms` as seen from here too.
    /// The session stays usable after a statement that failed on the remote
    /// (its transaction is rolled back); after a local timeout it does not.
    ///
    /// It runs under dbrag.query_memory_limit (53200): libpq enlarges its
    /// buffer to the length a server announces for a row or an error
    /// message (up to 2 GB) before the bytes arrive.
    pub fn query_read_only(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        timeout_ms: i32,
    ) -> Result<RemoteRows> {
        crate::pg::timer::within_memory_limit(|| {
            self.query_read_only_unwatched(sql, params, timeout_ms)
        })
    }

    fn query_read_only_unwatched(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        timeout_ms: i32,
    ) -> Result<RemoteRows> {
        let timeout_ms = timeout_ms.max(1);
        let deadline = deadline_after(timeout_ms);
        self.run(
            &format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout_ms}"),
            None,
            deadline,
            timeout_ms,
        )?;
        let outcome = self.run(sql, Some(params), deadline, timeout_ms);
        if outcome.is_err() && self.busy {
            return outcome;
        }
        // Ends the transaction also when the statement failed remotely.
        let end = self.run("ROLLBACK", None, deadline_after(ROLLBACK_MS), ROLLBACK_MS);
        let rows = outcome?;
        end?;
        Ok(rows)
    }
}
