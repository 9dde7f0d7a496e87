//! Calls into the data-plane helper process, `pg_dbrag_dataplane`
//! (crates/dbrag-dataplane), which runs the MySQL and SQLite clients outside
//! the backend: what a hostile server or file makes those libraries do (an
//! abort on a failed allocation, a crash, a loop) ends that process, never
//! the backend. See docs/engines.md, "Containment".
//!
//! One process per call, started from the backend (not a postmaster child)
//! with an empty environment; one request frame on its stdin, one reply
//! frame on its stdout, both length-prefixed and checked against a cap
//! before anything is allocated (dbrag_core::frame). The backend waits in
//! 20 ms slices and serves interrupts in between; an interrupt, an ERROR or
//! its own deadline closes the process's stdin (it then stops its query
//! and exits) and the process is reaped at the next call. A process that
//! ends without a reply is a 58000 ERROR saying how it ended.

use std::ffi::CStr;
use std::io::{ErrorKind as IoKind, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dbrag_core::frame::{self, ErrorKind, Reply, Request, MAX_REPLY_BYTES, MAX_REQUEST_BYTES};
use pgrx::pg_sys;
use serde_json::Value;

use crate::error::{DbragError, Kind, Result};
use crate::gucs;
use crate::pg::interrupt_pending;

/// The helper's file name, next to the extension's shared library.
pub const BINARY: &str = "pg_dbrag_dataplane";
/// Time past the request's own deadline before the backend gives up on
/// the process and kills it (it has a watchdog of its own at 4 s).
const GRACE_MS: u64 = 6000;
/// Address space of the helper beyond dbrag.query_memory_limit, in MB.
const PROCESS_BASE_MB: i32 = 256;
/// Bytes of the process's stderr kept to tell how it ended.
const STDERR_TAIL: usize = 4096;

/// Processes left to finish a KILL QUERY after a cancel, reaped later.
static LEFT: Mutex<Vec<(i32, Instant)>> = Mutex::new(Vec::new());

/// Where the helper is installed: `$(pg_config --pkglibdir)/pg_dbrag_dataplane`.
pub fn binary_path() -> PathBuf {
    // SAFETY: a NUL-terminated path PostgreSQL sets once at start.
    let dir = unsafe { CStr::from_ptr((&raw const pg_sys::pkglib_path).cast()) };
    PathBuf::from(dir.to_string_lossy().into_owned()).join(BINARY)
}

/// Reap processes left earlier; kill those past their grace.
fn reap_left() {
    let Ok(mut left) = LEFT.lock() else {
        return;
    };
    left.retain(|(pid, since)| {
        let mut status = 0;
        // SAFETY: waiting on our own child without blocking.
        let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return false;
        }
        if since.elapsed() > Duration::from_millis(GRACE_MS) {
            // SAFETY: our own child; the blocking wait returns at once after SIGKILL.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, &mut status, 0);
            }
            return false;
        }
        true
    });
}

/// A running helper; dropping it before the reply cancels the call.
struct Running {
    pid: i32,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: ChildStderr,
    done: bool,
}

impl Running {
    /// Kill at once and reap (the process misbehaves).
    fn kill(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.stdin = None;
        let mut status = 0;
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }

    /// After the reply: reap now, or later if the process is still sending
    /// a KILL QUERY.
    fn finish(&mut self) {
        self.done = true;
        self.stdin = None;
        let mut status = 0;
        // SAFETY: our own child, without blocking.
        if unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } == 0 {
            if let Ok(mut left) = LEFT.lock() {
                left.push((self.pid, Instant::now()));
            }
        }
    }

    /// Wait for the exit after EOF on its output; the status.
    fn wait(&mut self) -> i32 {
        self.done = true;
        self.stdin = None;
        let mut status = 0;
        for _ in 0..100 {
            // SAFETY: our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return status;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: our own child, still running 200 ms after closing its output.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, &mut status, 0);
        }
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Closing stdin tells the process to stop its query and exit.
        self.stdin = None;
        if let Ok(mut left) = LEFT.lock() {
            left.push((self.pid, Instant::now()));
        }
    }
}

fn nonblocking(fd: i32) {
    // SAFETY: flag change on our own pipe end.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGSEGV => "SIGSEGV, a memory fault",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGXCPU => "SIGXCPU, its CPU time limit",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "a signal",
    }
}

/// Why the process ended without a reply, without quoting its output
/// (which may hold what a hostile server sent).
fn ended(engine: &str, status: i32, stderr: &[u8], memory_mb: i32) -> DbragError {
    let text = String::from_utf8_lossy(stderr);
    let out_of_memory = text.contains("memory allocation of") || text.contains("out of memory");
    let how = if out_of_memory {
        format!("it ran out of memory (limit {memory_mb} MB)")
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        format!("it was ended by signal {sig} ({})", signal_name(sig))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
        "its watchdog ended it past the deadline".to_string()
    } else if text.contains("panicked") {
        "its client library failed".to_string()
    } else if libc::WIFEXITED(status) {
        format!("it exited with code {}", libc::WEXITSTATUS(status))
    } else {
        "it ended".to_string()
    };
    DbragError::new(
        Kind::Remote,
        format!("the {engine} client process ended without an answer: {how}"),
    )
    .hint("the server or file sent something the client could not handle; the PostgreSQL server is unaffected")
}

/// Run one request in a fresh helper process; the reply's payload, or its
/// error as a DbragError. `engine` names the data plane in messages.
pub fn call(engine: &str, request: &Request, budget_ms: u64) -> Result<Value> {
    reap_left();
    let payload = serde_json::to_vec(request)
        .map_err(|e| DbragError::new(Kind::Internal, format!("encoding the request: {e}")))?;
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(DbragError::new(
            Kind::TooLarge,
            format!(
                "the request to the {engine} client is larger than {} MB",
                MAX_REQUEST_BYTES >> 20
            ),
        ));
    }
    // Address space: the statement's budget plus the process's own code,
    // stacks and SQLite's page cache.
    let memory_mb = gucs::QUERY_MEMORY_LIMIT_MB
        .get()
        .saturating_add(PROCESS_BASE_MB);
    let cpu_seconds = budget_ms / 1000 + 10;
    let path = binary_path();
    let mut child =
        Command::new(&path)
            .arg("--memory-mb")
            .arg(memory_mb.to_string())
            .arg("--cpu-seconds")
            .arg(cpu_seconds.to_string())
            .env_clear()
            // One malloc arena: each extra one reserves 64 MB of address space,
            // which counts against RLIMIT_AS.
            .env("MALLOC_ARENA_MAX", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                DbragError::new(
                Kind::NotConfigured,
                format!("could not start the {engine} client process {}: {e}", path.display()),
            )
            .hint("install the extension with its helper binary (scripts/lib.sh install_extension)")
            })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(DbragError::new(
            Kind::Internal,
            "the helper's pipes are missing",
        ));
    };
    let mut run = Running {
        pid: child.id() as i32,
        stdin: Some(stdin),
        stdout,
        stderr,
        done: false,
    };
    drop(child);
    if let Some(w) = run.stdin.as_mut() {
        // The request is small (≤ 4 MB) and the process reads it first; a
        // process that died already shows as EOF below.
        let _ = frame::write_frame(w, &payload, MAX_REQUEST_BYTES);
    }
    nonblocking(run.stdout.as_raw_fd());
    nonblocking(run.stderr.as_raw_fd());

    let deadline = Instant::now() + Duration::from_millis(budget_ms + GRACE_MS);
    let mut header = Vec::with_capacity(4);
    let mut body: Option<Vec<u8>> = None;
    let mut want = 0usize;
    let mut err_tail: Vec<u8> = Vec::new();
    let mut out_open = true;
    let mut chunk = [0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if out_open { run.stdout.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: run.stderr.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfd entries on our own descriptors.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 20) };
        // stderr: keep the tail only.
        loop {
            match run.stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    err_tail.extend_from_slice(&chunk[..n]);
                    if err_tail.len() > STDERR_TAIL {
                        let cut = err_tail.len() - STDERR_TAIL;
                        err_tail.drain(..cut);
                    }
                }
                Err(_) => break,
            }
        }
        while out_open {
            let r = match body.as_mut() {
                None => {
                    let mut b = [0u8; 4];
                    let need = 4 - header.len();
                    match run.stdout.read(&mut b[..need]) {
                        Ok(n) => {
                            header.extend_from_slice(&b[..n]);
                            if header.len() == 4 {
                                let h = [header[0], header[1], header[2], header[3]];
                                want = frame::payload_len(h, MAX_REPLY_BYTES).map_err(|e| {
                                    run.kill();
                                    DbragError::new(
                                        Kind::Remote,
                                        format!("the {engine} client process answered out of protocol: {e}"),
                                    )
                                })?;
                                body = Some(Vec::with_capacity(want.min(1 << 20)));
                            }
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(buf) => {
                    let room = (want - buf.len()).min(chunk.len());
                    match run.stdout.read(&mut chunk[..room]) {
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if body.as_ref().is_some_and(|b| b.len() == want) {
                let payload = body.take().unwrap_or_default();
                run.finish();
                return match frame::parse_reply(&payload) {
                    Ok(Reply::Ok(v)) => Ok(v),
                    Ok(Reply::Error(e)) => Err(from_wire(e)),
                    Err(e) => Err(DbragError::new(
                        Kind::Remote,
                        format!("the {engine} client process answered out of protocol: {e}"),
                    )),
                };
            }
            match r {
                Ok(0) => out_open = false,
                Ok(_) => {}
                Err(e) if e.kind() == IoKind::WouldBlock || e.kind() == IoKind::Interrupted => {
                    break
                }
                Err(_) => out_open = false,
            }
        }
        if !out_open {
            // An interrupt that arrived meanwhile is the caller's answer.
            if interrupt_pending() {
                pgrx::check_for_interrupts!();
            }
            let status = run.wait();
            // Whatever stderr still holds.
            let _ = run.stderr.read_to_end(&mut err_tail);
            return Err(ended(engine, status, &err_tail, memory_mb));
        }
        if interrupt_pending() {
            // statement_timeout, a deadline of ours or pg_cancel_backend:
            // the ERROR unwinds through `run`, which cancels the process.
            pgrx::check_for_interrupts!();
        }
        if Instant::now() >= deadline {
            run.kill();
            return Err(DbragError::new(
                Kind::Timeout,
                format!(
                    "the {engine} client process did not answer within {} ms",
                    budget_ms + GRACE_MS
                ),
            ));
        }
    }
}

fn from_wire(e: frame::WireError) -> DbragError {
    if e.kind == ErrorKind::Statement {
        let detail = e.detail.unwrap_or_default();
        return DbragError::statement(e.message, e.sqlstate.as_deref(), detail);
    }
    let kind = match e.kind {
        ErrorKind::Remote => Kind::Remote,
        ErrorKind::ConnectFailed => Kind::ConnectFailed,
        ErrorKind::AuthFailed => Kind::AuthFailed,
        ErrorKind::Statement => Kind::Statement,
        ErrorKind::Cancelled => Kind::Cancelled,
        ErrorKind::Timeout => Kind::Timeout,
        ErrorKind::Forbidden => Kind::Forbidden,
        ErrorKind::NotFound => Kind::NotFound,
        ErrorKind::RefusedSql => Kind::RefusedSql,
        ErrorKind::BadArgument => Kind::BadArgument,
        ErrorKind::TooLarge => Kind::TooLarge,
    };
    let mut out = DbragError::new(kind, e.message);
    out.hint = e.hint;
    out.detail = e.detail;
    out
}
