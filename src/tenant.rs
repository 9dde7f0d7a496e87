//! Tenant context: who is asking (SPEC §2).
//!
//! The tenant in force lives in the superuser-only setting `dbrag.tenant_id`,
//! written only here after the caller proved a right to it. Parallel workers
//! receive it with the rest of the settings. When it is empty, a login role
//! listed in `tenant_members` gets its one tenant. Resolution is cached per
//! backend and dropped on any relcache invalidation, which the triggers on
//! `tenants` and `tenant_members` send when a row there changes.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use dbrag_core::jwt;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::error::{raise, required, DbragError, Kind};
use crate::gucs;
use crate::privileged;

static EPOCH: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, PartialEq)]
struct CacheKey {
    setting: String,
    app_setting: Option<String>,
    session_user: pg_sys::Oid,
    epoch: u64,
}

thread_local! {
    static RESOLVED: RefCell<Option<(CacheKey, Option<uuid::Uuid>)>> = const { RefCell::new(None) };
}

unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

pub fn init() {
    // SAFETY: registered once per backend from _PG_init.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        )
    };
}

/// Tenant status as stored, looked up as the extension (no policy applies).
fn tenant_status(tenant: uuid::Uuid) -> Option<String> {
    let id = pgrx::Uuid::from_bytes(*tenant.as_bytes());
    privileged::as_extension(|| {
        // A read-only select: this runs inside parallel workers too.
        Spi::connect(|client| {
            client
                .select(
                    "SELECT status::text FROM control_plane.tenants WHERE tenant_id = $1",
                    Some(1),
                    &[DatumWithOid::from(id)],
                )?
                .first()
                .get_one::<String>()
        })
    })
    .unwrap_or(None)
}

/// The single active tenant the login role is a member of, if exactly one.
fn membership_tenant(member: pg_sys::Oid) -> Option<uuid::Uuid> {
    let found: Vec<pgrx::Uuid> = privileged::as_extension(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT m.tenant_id FROM control_plane.tenant_members m \
                 JOIN control_plane.tenants t ON t.tenant_id = m.tenant_id \
                 WHERE m.member = $1::pg_catalog.oid::pg_catalog.regrole AND t.status = 'active' LIMIT 2",
                None,
                &[DatumWithOid::from(member)],
            )?;
            let mut out = Vec::new();
            for row in rows {
                if let Some(id) = row.get::<pgrx::Uuid>(1)? {
                    out.push(id);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_default();
    if found.len() == 1 {
        Some(uuid::Uuid::from_bytes(*found[0].as_bytes()))
    } else {
        None
    }
}

fn active(tenant: uuid::Uuid) -> Option<uuid::Uuid> {
    (tenant_status(tenant).as_deref() == Some("active")).then_some(tenant)
}

fn resolve(key: &CacheKey) -> Option<uuid::Uuid> {
    if !key.setting.is_empty() {
        return uuid::Uuid::try_parse(&key.setting).ok().and_then(active);
    }
    if let Some(app) = &key.app_setting {
        return uuid::Uuid::try_parse(app).ok().and_then(active);
    }
    membership_tenant(key.session_user)
}

/// The tenant in force, or None.
pub fn current() -> Option<uuid::Uuid> {
    let key = CacheKey {
        setting: gucs::tenant_setting(),
        app_setting: if gucs::TRUST_GUC_TENANT.get() {
            gucs::app_tenant_setting()
        } else {
            None
        },
        session_user: privileged::session_user(),
        epoch: EPOCH.load(Ordering::Relaxed),
    };
    if let Some(hit) = RESOLVED.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|(k, v)| (k == &key).then_some(*v))
    }) {
        return hit;
    }
    let tenant = resolve(&key);
    RESOLVED.with(|c| *c.borrow_mut() = Some((key, tenant)));
    tenant
}

/// The tenant in force, or a 42501 error that says how to get one.
pub fn require() -> uuid::Uuid {
    match current() {
        Some(t) => t,
        None => DbragError::new(Kind::Forbidden, "no tenant is in force")
            .hint("call dbrag.set_tenant(token), or connect as a role listed in control_plane.tenant_members")
            .raise(),
    }
}

pub fn to_pg(t: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*t.as_bytes())
}

pub fn from_pg(t: pgrx::Uuid) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*t.as_bytes())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Open cursors of this session. A cursor evaluates the tenant when its scan
/// starts and keeps it: one opened (or partly fetched) under tenant A would
/// go on returning A's rows after a switch to B.
fn open_cursors() -> i64 {
    // The unnamed portal is the statement calling us, not a cursor.
    privileged::with_pinned_search_path(|| {
        Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_cursors WHERE name OPERATOR(pg_catalog.<>) ''",
        )
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// Put `tenant` in force after checking that it exists and is active.
fn switch_to(tenant: uuid::Uuid, is_local: bool, via: &str) -> pgrx::Uuid {
    if current() != Some(tenant) && open_cursors() > 0 {
        DbragError::new(
            Kind::NotConfigured,
            "cannot switch tenants while cursors are open",
        )
        .hint("close them first (CLOSE ALL); a cursor keeps the tenant it started with")
        .raise();
    }
    match tenant_status(tenant).as_deref() {
        Some("active") => {}
        Some(status) => {
            audit::record_durable(
                "tenant_switch_refused",
                Some(&tenant.to_string()),
                json!({"via": via, "reason": format!("tenant is {status}")}),
            );
            DbragError::new(Kind::Forbidden, format!("tenant {tenant} is {status}"))
                .hint("only active tenants can be put in force; see dbrag.set_tenant_status")
                .raise()
        }
        None => {
            audit::record_durable(
                "tenant_switch_refused",
                None,
                json!({"via": via, "reason": "unknown tenant", "claimed_tenant": tenant.to_string()}),
            );
            raise(Kind::NotFound, format!("tenant {tenant} does not exist"))
        }
    }
    gucs::write_tenant_setting(&tenant.to_string(), is_local);
    audit::record(
        "tenant_switch",
        Some(&tenant.to_string()),
        json!({"via": via, "is_local": is_local}),
    );
    to_pg(tenant)
}

/// `dbrag.set_tenant(token)`: put the tenant named by a server-signed token in force.
#[pg_extern(volatile, parallel_unsafe, name = "set_tenant")]
fn set_tenant_token(token: Option<&str>, is_local: default!(Option<bool>, false)) -> pgrx::Uuid {
    let token = required(token, "token");
    let is_local = is_local.unwrap_or(false);
    let Some(secret) = gucs::string_value(&gucs::JWT_SECRET) else {
        audit::record_durable(
            "token_refused",
            None,
            json!({"reason": "dbrag.jwt_secret is not set"}),
        );
        DbragError::new(
            Kind::NotConfigured,
            "token login is not configured: dbrag.jwt_secret is not set",
        )
        .hint("a superuser sets dbrag.jwt_secret in postgresql.conf or with ALTER SYSTEM")
        .raise()
    };
    match jwt::verify_hs256(token, secret.as_bytes(), now_unix()) {
        Ok(claims) => {
            let tenant = match uuid::Uuid::try_parse(&claims.tenant_id) {
                Ok(t) => t,
                Err(_) => raise(Kind::BadToken, "token claim tenant_id is not a uuid"),
            };
            switch_to(tenant, is_local, "token")
        }
        Err(e) => {
            audit::record_durable("token_refused", None, json!({"reason": e.to_string()}));
            let mut err = DbragError::new(Kind::BadToken, format!("tenant token refused: {e}"));
            if uuid::Uuid::try_parse(token.trim()).is_ok() {
                err = err.hint("to set a tenant by id, pass a uuid: dbrag.set_tenant('…'::uuid)");
            }
            err.raise()
        }
    }
}

/// `dbrag.set_tenant(uuid)`: for the trusted application server and operators.
#[pg_extern(volatile, parallel_unsafe, name = "set_tenant")]
fn set_tenant_uuid(
    tenant: Option<pgrx::Uuid>,
    is_local: default!(Option<bool>, false),
) -> pgrx::Uuid {
    let tenant = from_pg(required(tenant, "tenant"));
    let is_local = is_local.unwrap_or(false);
    if !(privileged::current_user_has_role(c"dbrag_app") || privileged::is_platform_admin()) {
        audit::record_durable(
            "tenant_switch_refused",
            None,
            json!({"via": "uuid", "reason": "role lacks dbrag_app", "claimed_tenant": tenant.to_string()}),
        );
        DbragError::new(Kind::Forbidden, "permission denied to set a tenant by id")
            .hint("only roles granted dbrag_app or dbrag_admin may; others use a signed token")
            .raise()
    }
    switch_to(tenant, is_local, "uuid")
}

/// `dbrag.reset_tenant()`: clear the tenant set by `set_tenant`.
#[pg_extern(volatile, parallel_unsafe)]
fn reset_tenant() {
    gucs::write_tenant_setting("", false);
}

/// `dbrag.current_tenant_id()`: the tenant in force, NULL when none.
#[pg_extern(stable, parallel_safe)]
fn current_tenant_id() -> Option<pgrx::Uuid> {
    current().map(to_pg)
}

/// `dbrag.issue_token(tenant, ttl_seconds, role)`: sign a tenant token with
/// the server's secret, for operators and the trusted application server.
#[pg_extern(volatile, parallel_unsafe)]
fn issue_token(
    tenant: Option<pgrx::Uuid>,
    ttl_seconds: default!(Option<i32>, 3600),
    role: default!(Option<&str>, "NULL"),
) -> String {
    let tenant = from_pg(required(tenant, "tenant"));
    if !privileged::is_platform_admin() {
        raise(
            Kind::Forbidden,
            "permission denied to issue tokens: requires dbrag_admin",
        );
    }
    let ttl = ttl_seconds.unwrap_or(3600);
    if !(1..=31 * 24 * 3600).contains(&ttl) {
        raise(
            Kind::BadArgument,
            "ttl_seconds must be between 1 and 2678400",
        );
    }
    let Some(secret) = gucs::string_value(&gucs::JWT_SECRET) else {
        raise(Kind::NotConfigured, "dbrag.jwt_secret is not set");
    };
    let now = now_unix();
    let mut claims = json!({"tenant_id": tenant.to_string(), "iat": now, "exp": now + ttl as i64});
    if let Some(r) = role {
        let r = crate::error::bounded(r, "role", crate::error::limits::NAME);
        claims["role"] = json!(r);
    }
    audit::record(
        "token_issued",
        Some(&tenant.to_string()),
        json!({"ttl_seconds": ttl}),
    );
    match jwt::sign_hs256(&claims, secret.as_bytes()) {
        Ok(t) => t,
        Err(e) => raise(Kind::BadArgument, e.to_string()),
    }
}

/// Drop every backend's cached resolution at commit (called by triggers).
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_tenant_cache(rel: pg_sys::Oid) {
    // SAFETY: queues an invalidation message for commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
}

/// `dbrag._audit(event, tenant, detail)`: an audit row from the SQL-written API.
#[pg_extern(volatile, parallel_unsafe)]
fn _audit(event: &str, tenant: Option<pgrx::Uuid>, detail: default!(Option<pgrx::JsonB>, "'{}'")) {
    let tenant = tenant.map(|t| from_pg(t).to_string());
    audit::record(
        event,
        tenant.as_deref(),
        detail.map(|d| d.0).unwrap_or(json!({})),
    );
}
