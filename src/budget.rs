//! Model budgets per tenant (docs/llm-and-guard.md, "Budgets").
//!
//! An operator sets, per tenant, model calls per minute and tokens per day
//! in `control_plane.tenant_budgets` (`dbrag.set_tenant_budget`). Every model
//! call made for a tenant goes through [`crate::llm::complete`], which takes
//! a [`Reservation`] here first and settles it with the real token count.
//!
//! The counters live in shared memory, one slot per tenant with a budget,
//! under one LWLock held only for a few comparisons: every session of the
//! server sees the same counts, and no row lock is held across a model call.
//! A call is counted when it is reserved, so N sessions racing for the last
//! call of a minute get exactly one of them. Tokens are only known after the
//! call: a reservation holds an estimate (prompt bytes / 4 + the answer
//! limit) until the reply settles it with the provider's count, and a call is
//! admitted while tokens used plus tokens reserved are under the day's
//! limit, so each session overshoots by at most its one call in flight.
//!
//! Windows: calls per fixed UTC minute, tokens per UTC day. A restart clears
//! shared memory; a tenant's slot is then seeded with the day's tokens
//! recorded in `control_plane.query_history` (asks; descriptions at sync are
//! not in the history). Slots are bounded ([`SLOTS`]); a full table reuses
//! the least recently used slot with no call in flight and no call in the
//! current minute (re-seeded the same way), else refuses with 53400.
//!
//! On Citus every node has its own shared memory: a budgeted tenant's model
//! calls are made on the coordinator only, and refused on a worker with
//! 55000, so connecting to the workers does not multiply the budget.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::error::{DbragError, Kind};
use crate::pg::privileged;
use crate::pg::shmem;

/// Tenants with a budget whose counters shared memory holds at once.
pub const SLOTS: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    in_use: bool,
    tenant: [u8; 16],
    /// The minute (unix seconds / 60) `calls` counts.
    minute: i64,
    calls: u32,
    /// Calls in flight (a slot with calls in flight is never reused).
    in_flight: u32,
    /// The UTC day (unix seconds / 86400) `tokens` and `reserved` count.
    day: i64,
    tokens: u64,
    reserved: u64,
    last_used: i64,
}

#[repr(C)]
struct Table {
    /// Slots `0..used` are in use (a lookup scans only those); a slot is
    /// reused in place, never freed.
    used: u32,
    slots: [Slot; SLOTS],
}

/// Reserved by [`init`]; null when the library was not preloaded. Zeroed
/// is its initial state.
static TABLE: shmem::Segment<Table> = shmem::Segment::new(c"pg_dbrag tenant budgets", |_| {});

/// Reserve the table; called from `_PG_init` while preloading only.
pub fn init() {
    TABLE.register();
}

fn available() -> bool {
    !TABLE.get().is_null()
}

/// Run `f` on the table under its lock. `f` must not raise.
fn locked<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    TABLE.locked(f)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A tenant's limits; None = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub calls_per_minute: Option<i32>,
    pub tokens_per_day: Option<i64>,
}

impl Limits {
    fn unlimited(&self) -> bool {
        self.calls_per_minute.is_none() && self.tokens_per_day.is_none()
    }
}

fn limits_for(tenant: uuid::Uuid) -> Result<Limits, DbragError> {
    let id = crate::tenant::to_pg(tenant);
    let row = privileged::as_extension(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT calls_per_minute, tokens_per_day FROM control_plane.tenant_budgets WHERE tenant_id = $1",
                Some(1),
                &[DatumWithOid::from(id)],
            )?;
            match rows.into_iter().next() {
                None => Ok::<_, pgrx::spi::SpiError>(Limits::default()),
                Some(r) => Ok(Limits {
                    calls_per_minute: r.get::<i32>(1)?,
                    tokens_per_day: r.get::<i64>(2)?,
                }),
            }
        })
    });
    row.map_err(|e| {
        DbragError::new(
            Kind::NotConfigured,
            format!("the tenant's budget cannot be read: {e}"),
        )
    })
}

/// True on a Citus worker (a node whose group is not the coordinator's, 0):
/// its shared memory counts only its own calls.
fn on_citus_worker() -> Result<bool, DbragError> {
    if !crate::pg::citus::citus_loaded() {
        return Ok(false);
    }
    let group = privileged::as_extension(|| -> Result<Option<i32>, pgrx::spi::SpiError> {
        // pg_dist_local_group exists once CREATE EXTENSION citus ran here.
        let installed = Spi::get_one::<bool>(
            "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL",
        )?
        .unwrap_or(false);
        if !installed {
            return Ok(None);
        }
        Spi::get_one::<i32>("SELECT groupid FROM pg_catalog.pg_dist_local_group")
    })
    .map_err(|e| {
        DbragError::new(
            Kind::Internal,
            format!("this node's Citus group cannot be read: {e}"),
        )
    })?;
    Ok(group.is_some_and(|g| g != 0))
}

/// Tokens the tenant's asks recorded today (UTC), to seed a fresh slot.
fn tokens_recorded_today(tenant: uuid::Uuid) -> u64 {
    let id = crate::tenant::to_pg(tenant);
    let sum: Option<i64> = privileged::as_extension(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT COALESCE(pg_catalog.sum(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), 0)::bigint \
             FROM control_plane.query_history \
             WHERE tenant_id = $1 AND created_at >= pg_catalog.date_trunc('day', pg_catalog.now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
            &[DatumWithOid::from(id)],
        )
    })
    .ok()
    .flatten();
    sum.unwrap_or(0).max(0) as u64
}

/// Bring a slot's windows up to `now`.
fn roll(slot: &mut Slot, now: i64) {
    let minute = now.div_euclid(60);
    if slot.minute != minute {
        slot.minute = minute;
        slot.calls = 0;
    }
    let day = now.div_euclid(86_400);
    if slot.day != day {
        slot.day = day;
        slot.tokens = 0;
        slot.reserved = 0;
    }
}

fn in_use(t: &Table) -> &[Slot] {
    &t.slots[..(t.used as usize).min(SLOTS)]
}

fn find(t: &Table, tenant: &[u8; 16]) -> Option<usize> {
    in_use(t)
        .iter()
        .position(|s| s.in_use && &s.tenant == tenant)
}

/// A free slot, or the least recently used one that is idle (nothing in
/// flight, no call this minute).
fn free_slot(t: &mut Table, now: i64) -> Option<usize> {
    if (t.used as usize) < SLOTS {
        t.used += 1;
        return Some(t.used as usize - 1);
    }
    let minute = now.div_euclid(60);
    in_use(t)
        .iter()
        .enumerate()
        .filter(|(_, s)| s.in_flight == 0 && (s.minute != minute || s.calls == 0))
        .min_by_key(|(_, s)| s.last_used)
        .map(|(i, _)| i)
}

/// One model call's claim on its tenant's budget. Settle it with the real
/// token count; dropped unsettled (an error, a cancel), the call stays
/// counted and its token estimate is released. A backend that exits during
/// the call (pg_terminate_backend: FATAL does not unwind) releases it in a
/// `before_shmem_exit` callback.
pub struct Reservation {
    claim: Claim,
    settled: bool,
}

#[derive(Clone, Copy, PartialEq)]
struct Claim {
    id: u64,
    slot: usize,
    tenant: [u8; 16],
    day: i64,
    estimate: u64,
}

thread_local! {
    /// Claims of this backend not settled yet, for the exit callback.
    static OPEN: std::cell::RefCell<Vec<Claim>> = const { std::cell::RefCell::new(Vec::new()) };
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static EXIT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn release_on_exit(_code: i32, _arg: pg_sys::Datum) {
    // No LWLock of ours is held here: the table's lock is never held across
    // anything that can raise, and FATAL comes from an interrupt check.
    let open = OPEN.with(|o| std::mem::take(&mut *o.borrow_mut()));
    for claim in open {
        release(claim, 0);
    }
}

fn release(claim: Claim, tokens: u64) {
    locked(|t| {
        let s = &mut t.slots[claim.slot];
        if !s.in_use || s.tenant != claim.tenant {
            return;
        }
        s.in_flight = s.in_flight.saturating_sub(1);
        // A call that straddles midnight is not charged to the new day.
        if s.day == claim.day {
            s.reserved = s.reserved.saturating_sub(claim.estimate);
            s.tokens = s.tokens.saturating_add(tokens);
        }
    });
}

impl Reservation {
    fn open(slot: usize, tenant: [u8; 16], day: i64, estimate: u64) -> Reservation {
        if !EXIT_HOOKED.with(|h| h.replace(true)) {
            // SAFETY: registers a callback that runs once, at backend exit.
            unsafe { pg_sys::before_shmem_exit(Some(release_on_exit), pg_sys::Datum::from(0)) };
        }
        let id = NEXT_ID.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        let claim = Claim {
            id,
            slot,
            tenant,
            day,
            estimate,
        };
        OPEN.with(|o| o.borrow_mut().push(claim));
        Reservation {
            claim,
            settled: false,
        }
    }

    pub fn estimate(&self) -> u64 {
        self.claim.estimate
    }

    pub fn settle(mut self, tokens: u64) {
        self.finish(tokens);
    }

    fn finish(&mut self, tokens: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let id = self.claim.id;
        let was_open = OPEN.with(|o| {
            let mut o = o.borrow_mut();
            let before = o.len();
            o.retain(|c| c.id != id);
            o.len() != before
        });
        if was_open {
            release(self.claim, tokens);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(0);
    }
}

/// A UTC timestamp from unix seconds, as ISO 8601 (`2026-11-30 19:33:00+00`).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

enum Refusal {
    Calls { limit: i32, resets: i64 },
    Tokens { limit: i64, used: u64, resets: i64 },
    Full,
}

/// Claim one model call for `tenant`, with `estimate` tokens held until the
/// call settles. None when the tenant has no budget.
pub fn reserve(tenant: uuid::Uuid, estimate: u64) -> Result<Option<Reservation>, DbragError> {
    let limits = limits_for(tenant)?;
    if limits.unlimited() {
        return Ok(None);
    }
    if on_citus_worker()? {
        return Err(DbragError::new(
            Kind::NotConfigured,
            "the tenant has a model budget, and budgeted model calls are made on the Citus coordinator, not on a worker",
        )
        .hint("connect to the coordinator for ask, generate_sql, explain_sql and descriptions at sync"));
    }
    if !available() {
        return Err(DbragError::new(
            Kind::NotConfigured,
            "the tenant has a model budget, and budgets need pg_dbrag in shared_preload_libraries",
        )
        .hint("add pg_dbrag to shared_preload_libraries and restart, or clear the budget with dbrag.set_tenant_budget(tenant, NULL, NULL)"));
    }
    let key = *tenant.as_bytes();
    let now = now_unix();
    // A tenant without a slot yet: its day's tokens are read before the lock.
    let seed = if locked(|t| find(t, &key)).is_none() {
        tokens_recorded_today(tenant)
    } else {
        0
    };
    let outcome = locked(|t| -> Result<(usize, i64), Refusal> {
        let idx = match find(t, &key) {
            Some(i) => i,
            None => {
                let i = free_slot(t, now).ok_or(Refusal::Full)?;
                t.slots[i] = Slot {
                    in_use: true,
                    tenant: key,
                    minute: now.div_euclid(60),
                    calls: 0,
                    in_flight: 0,
                    day: now.div_euclid(86_400),
                    tokens: seed,
                    reserved: 0,
                    last_used: now,
                };
                i
            }
        };
        let s = &mut t.slots[idx];
        roll(s, now);
        if let Some(limit) = limits.calls_per_minute {
            if i64::from(s.calls) >= i64::from(limit) {
                return Err(Refusal::Calls {
                    limit,
                    resets: (s.minute + 1) * 60,
                });
            }
        }
        if let Some(limit) = limits.tokens_per_day {
            let used = s.tokens.saturating_add(s.reserved);
            if used >= limit.max(0) as u64 {
                return Err(Refusal::Tokens {
                    limit,
                    used: s.tokens,
                    resets: (s.day + 1) * 86_400,
                });
            }
        }
        s.calls = s.calls.saturating_add(1);
        s.in_flight = s.in_flight.saturating_add(1);
        s.reserved = s.reserved.saturating_add(estimate);
        s.last_used = now;
        Ok((idx, s.day))
    });
    match outcome {
        Ok((slot, day)) => Ok(Some(Reservation::open(slot, key, day, estimate))),
        Err(refusal) => Err(refuse(tenant, refusal)),
    }
}

/// Audit the refusal (durably: the ERROR rolls back the caller's work) and
/// build the 53400 error.
fn refuse(tenant: uuid::Uuid, refusal: Refusal) -> DbragError {
    let tid = tenant.to_string();
    let (detail, message, hint) = match refusal {
        Refusal::Calls { limit, resets } => (
            json!({"budget": "calls_per_minute", "limit": limit, "resets_at": format_utc(resets)}),
            format!(
                "model budget exceeded: the tenant's {limit} model calls per minute are used; the budget resets at {}",
                format_utc(resets)
            ),
            format!("retry after {}; an operator can raise the limit with dbrag.set_tenant_budget", format_utc(resets)),
        ),
        Refusal::Tokens { limit, used, resets } => (
            json!({"budget": "tokens_per_day", "limit": limit, "used": used, "resets_at": format_utc(resets)}),
            format!(
                "model budget exceeded: the tenant's {limit} tokens per day are used; the budget resets at {}",
                format_utc(resets)
            ),
            format!("retry after {}; an operator can raise the limit with dbrag.set_tenant_budget", format_utc(resets)),
        ),
        Refusal::Full => (
            json!({"budget": "slots", "slots": SLOTS}),
            format!(
                "model budget cannot be tracked: all {SLOTS} budget slots are in use by tenants calling the model this minute"
            ),
            "retry in a minute; slots of tenants idle for a minute are reused".to_string(),
        ),
    };
    crate::audit::record_durable("budget_exceeded", Some(&tid), detail);
    DbragError::new(Kind::OverBudget, message).hint(hint)
}

fn timestamptz(unix: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    // PostgreSQL's epoch is 2000-01-01 UTC, in microseconds.
    pgrx::datum::TimestampWithTimeZone::try_from((unix - 946_684_800) * 1_000_000).ok()
}

/// `dbrag.budget_status()`: what is left of each budget in force, from the
/// shared counters: the caller's tenant only; dbrag_admin sees every tenant.
#[pg_extern(volatile, parallel_unsafe)]
fn budget_status() -> TableIterator<
    'static,
    (
        name!(tenant_id, pgrx::Uuid),
        name!(calls_per_minute, Option<i32>),
        name!(calls_left_this_minute, Option<i32>),
        name!(minute_resets_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(tokens_per_day, Option<i64>),
        name!(tokens_used_today, Option<i64>),
        name!(tokens_left_today, Option<i64>),
        name!(day_resets_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let admin = privileged::is_platform_admin();
    let tenant = if admin {
        None
    } else {
        match crate::tenant::current() {
            Some(t) => Some(t),
            None => return TableIterator::new(Vec::new()),
        }
    };
    let rows: Vec<(pgrx::Uuid, Option<i32>, Option<i64>)> = privileged::as_extension(|| {
        Spi::connect(|client| {
            let arg = tenant.map(crate::tenant::to_pg);
            let table = client.select(
                "SELECT tenant_id, calls_per_minute, tokens_per_day FROM control_plane.tenant_budgets \
                 WHERE ($1::uuid IS NULL OR tenant_id = $1) \
                   AND (calls_per_minute IS NOT NULL OR tokens_per_day IS NOT NULL) ORDER BY tenant_id",
                None,
                &[DatumWithOid::from(arg)],
            )?;
            let mut out = Vec::new();
            for r in table {
                if let Some(id) = r.get::<pgrx::Uuid>(1)? {
                    out.push((id, r.get::<i32>(2)?, r.get::<i64>(3)?));
                }
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
    })
    .unwrap_or_else(|e| {
        DbragError::new(Kind::NotConfigured, format!("budgets cannot be read: {e}")).raise()
    });
    let now = now_unix();
    let minute = now.div_euclid(60);
    let day = now.div_euclid(86_400);
    let result = rows
        .into_iter()
        .map(|(id, cpm, tpd)| {
            let key = *id.as_bytes();
            let (calls, tokens, reserved) = if available() {
                locked(|t| {
                    find(t, &key).map_or((0, 0, 0), |i| {
                        let s = &t.slots[i];
                        (
                            if s.minute == minute { s.calls } else { 0 },
                            if s.day == day { s.tokens } else { 0 },
                            if s.day == day { s.reserved } else { 0 },
                        )
                    })
                })
            } else {
                (0, 0, 0)
            };
            let used = tokens.min(i64::MAX as u64) as i64;
            let held = tokens.saturating_add(reserved).min(i64::MAX as u64) as i64;
            (
                id,
                cpm,
                cpm.map(|l| (i64::from(l) - i64::from(calls)).max(0) as i32),
                cpm.and_then(|_| timestamptz((minute + 1) * 60)),
                tpd,
                tpd.map(|_| used),
                tpd.map(|l| (l - held).max(0)),
                tpd.and_then(|_| timestamptz((day + 1) * 86_400)),
            )
        })
        .collect::<Vec<_>>();
    TableIterator::new(result)
}
