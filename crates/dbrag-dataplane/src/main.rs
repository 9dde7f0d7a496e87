//! `pg_dbrag_dataplane`: the MySQL/MariaDB and SQLite clients of pg_dbrag,
//! run outside the PostgreSQL backend (docs/engines.md, "Containment").
//!
//! A backend starts one process per call, writes one request frame to its
//! stdin and reads one reply frame from its stdout (dbrag_core::frame).
//! Whatever a hostile server or file makes the client libraries do — a
//! 2^50-column result set the `mysql` crate reserves memory for, a packet
//! that never ends, a corrupt page — happens here: the process has a
//! memory limit (RLIMIT_AS) and a CPU limit of its own, and when it aborts
//! or is killed the backend reports an ERROR and goes on.
//!
//! No PostgreSQL code runs here. At start the process puts every signal
//! back to its default, unblocks them all, leaves the backend's process
//! group (PostgreSQL signals it as a whole), closes every descriptor it
//! inherited beyond stdin/stdout/stderr and asks the kernel to kill it when
//! its parent (the backend) exits. The backend cancels a call by closing
//! the process's stdin; a watchdog thread ends the process a bounded time
//! after the request's own deadline whatever the client libraries do.

mod mysql;
mod sqlite;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dbrag_core::dataplane_target::MysqlTarget;
use dbrag_core::frame::{
    self, ErrorKind, Introspection, Reply, Request, WireError, MAX_REPLY_BYTES, MAX_REQUEST_BYTES,
};
use serde_json::Value;

pub type Result<T> = std::result::Result<T, WireError>;

static CANCELLED: AtomicBool = AtomicBool::new(false);
type KillJob = Box<dyn FnOnce() + Send>;
static PENDING_KILL: Mutex<Option<KillJob>> = Mutex::new(None);

/// Exit codes the backend tells apart.
const EXIT_BAD_REQUEST: i32 = 2;
const EXIT_WATCHDOG: i32 = 3;
/// How long past its request's deadline the process may live.
const WATCHDOG_GRACE_MS: u64 = 4000;

/// Whether the backend has gone (closed our stdin) or cancelled the call.
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Work to do after the reply has gone out (a MySQL `KILL QUERY`).
pub fn set_pending_kill(job: KillJob) {
    if let Ok(mut slot) = PENDING_KILL.lock() {
        *slot = Some(job);
    }
}

/// Length of a value as JSON text, without building the text.
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

pub fn too_large(max_bytes: usize) -> WireError {
    WireError::new(
        ErrorKind::TooLarge,
        format!("the answer is larger than {} MB", max_bytes >> 20),
    )
    .hint("ask for fewer rows or columns (max_rows), or narrower values")
}

/// Default signal dispositions, an empty signal mask, no inherited
/// descriptors past 2, death with the parent, and the resource limits.
fn contain(memory_mb: u64, cpu_seconds: u64) {
    // SAFETY: plain system calls on this process's own state, before any
    // thread is started.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Writing a reply to a backend that has gone must not kill us
        // before the pending KILL QUERY.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
        // Out of the backend's process group: PostgreSQL signals the
        // whole group on statement_timeout and pg_cancel_backend (SIGINT),
        // and the backend, not this process, serves those.
        libc::setsid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() == 1 {
            libc::_exit(EXIT_BAD_REQUEST);
        }
        let bytes = memory_mb.saturating_mul(1 << 20);
        let mem = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        libc::setrlimit(libc::RLIMIT_AS, &mem);
        let cpu = libc::rlimit {
            rlim_cur: cpu_seconds,
            rlim_max: cpu_seconds + 1,
        };
        libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        // No core files of a process that handles tenants' credentials.
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long the request may take, all told.
fn budget_ms(req: &Request) -> u64 {
    let ms = |v: &i32| (*v).max(1) as u64;
    match req {
        Request::MysqlQuery {
            connect_ms,
            timeout_ms,
            ..
        }
        | Request::MysqlListTables {
            connect_ms,
            timeout_ms,
            ..
        } => ms(connect_ms) + ms(timeout_ms),
        // Introspection runs several statements, each under statement_ms.
        Request::MysqlIntrospect {
            connect_ms,
            statement_ms,
            ..
        } => ms(connect_ms) + 10 * ms(statement_ms),
        Request::SqliteQuery { timeout_ms, .. } | Request::SqliteListTables { timeout_ms, .. } => {
            ms(timeout_ms)
        }
        Request::SqliteIntrospect { timeout_ms, .. } => 10 * ms(timeout_ms),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| WireError::new(ErrorKind::Remote, e.to_string()))
}

fn serve(req: Request) -> Result<Value> {
    let cap = |n: u64| (n as usize).min(MAX_REPLY_BYTES - (1 << 20));
    match req {
        Request::MysqlQuery {
            target,
            database,
            sql,
            max_rows,
            max_bytes,
            connect_ms,
            timeout_ms,
        } => {
            let target: MysqlTarget = target.into();
            to_value(mysql::query(
                &target,
                &database,
                sql,
                max_rows.min(1_000_000) as usize,
                cap(max_bytes),
                connect_ms,
                timeout_ms,
            )?)
        }
        Request::MysqlListTables {
            target,
            database,
            connect_ms,
            timeout_ms,
        } => {
            let target: MysqlTarget = target.into();
            to_value(mysql::list_tables(
                &target, &database, connect_ms, timeout_ms,
            )?)
        }
        Request::MysqlIntrospect {
            target,
            database,
            connect_ms,
            statement_ms,
        } => {
            let target: MysqlTarget = target.into();
            to_value(mysql::introspect(
                &target,
                &database,
                connect_ms,
                statement_ms,
            )?)
        }
        Request::SqliteQuery {
            path,
            sql,
            max_rows,
            max_bytes,
            timeout_ms,
        } => to_value(sqlite::query(
            &PathBuf::from(path),
            &sql,
            max_rows.min(1_000_000) as usize,
            cap(max_bytes),
            timeout_ms,
        )?),
        Request::SqliteListTables { path, timeout_ms } => {
            to_value(sqlite::list_tables(&PathBuf::from(path), timeout_ms)?)
        }
        Request::SqliteIntrospect { path, timeout_ms } => {
            let (tables, samples) = sqlite::introspect(&PathBuf::from(path), timeout_ms)?;
            to_value(Introspection { tables, samples })
        }
    }
}

/// `--bench N`: serve the request N times in this process and print the
/// median and p99 per call in microseconds (bench/dataplane.sh: the client
/// libraries' own cost, to set the per-call cost of the process against).
fn bench(request: &Request, n: usize) -> ! {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let ok = serve(request.clone()).is_ok();
        times.push(t.elapsed().as_micros() as u64);
        if !ok {
            eprintln!("the request failed");
            std::process::exit(1);
        }
    }
    times.sort_unstable();
    println!("{} {}", times[n / 2], times[(n * 99 / 100).min(n - 1)]);
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    contain(
        arg(&args, "--memory-mb", 512).max(64),
        arg(&args, "--cpu-seconds", 60).max(1),
    );
    let mut stdin = std::io::stdin().lock();
    let request = frame::read_frame(&mut stdin, MAX_REQUEST_BYTES)
        .ok()
        .and_then(|p| serde_json::from_slice::<Request>(&p).ok());
    let Some(request) = request else {
        std::process::exit(EXIT_BAD_REQUEST);
    };
    drop(stdin);
    if let Some(n) = args
        .iter()
        .position(|a| a == "--bench")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<usize>().ok())
    {
        bench(&request, n.clamp(1, 100_000));
    }
    let budget = budget_ms(&request);
    // The backend cancels by closing our stdin (or by exiting).
    let _ = std::thread::Builder::new().name("watch".into()).spawn(|| {
        let mut byte = [0u8; 1];
        let _ = std::io::stdin().read(&mut byte);
        CANCELLED.store(true, Ordering::SeqCst);
    });
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut waited = 0u64;
            let mut cancelled_at = None;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                waited += 50;
                if cancelled() && cancelled_at.is_none() {
                    cancelled_at = Some(waited);
                }
                let over = waited > budget + WATCHDOG_GRACE_MS
                    || cancelled_at.is_some_and(|at| waited > at + WATCHDOG_GRACE_MS);
                if over {
                    // SAFETY: ends the process at once, whatever its threads do.
                    unsafe { libc::_exit(EXIT_WATCHDOG) };
                }
            }
        });
    let reply = match serve(request) {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e),
    };
    let mut payload = serde_json::to_vec(&reply).unwrap_or_default();
    if payload.len() > MAX_REPLY_BYTES || payload.is_empty() {
        let e = Reply::Error(too_large(MAX_REPLY_BYTES - (1 << 20)));
        payload = serde_json::to_vec(&e).unwrap_or_default();
    }
    let mut out = std::io::stdout().lock();
    let _ = frame::write_frame(&mut out, &payload, MAX_REPLY_BYTES);
    drop(out);
    let job = PENDING_KILL.lock().ok().and_then(|mut s| s.take());
    if let Some(job) = job {
        job();
    }
    // SAFETY: skips destructors of threads still blocked on sockets.
    unsafe { libc::_exit(0) };
}
