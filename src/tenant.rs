//! Tenant context: who is asking (docs/isolation.md).
//!
//! The tenant in force lives in the superuser-only setting `dbrag.tenant_id`,
//! written only here after the caller proved a right to it. Parallel workers
//! receive it with the rest of the settings. When it is empty, a login role
//! listed in `tenant_members` gets its one tenant. Resolution is cached per
//! backend and dropped on any relcache invalidation, which the triggers on
//! `tenants` and `tenant_members` send when a row there changes. Tenant
//! status and membership are cached the same way, so `set_tenant` in every
//! transaction (connection poolers) costs no query once a tenant was seen.
//!
//! Tokens are HS256 with `dbrag.jwt_secret`, or RS256/ES256/EdDSA verified
//! with the public keys of `dbrag.jwt_public_keys_file` (a JWKS document,
//! re-read when the file changes), so the database need hold no signing
//! secret (README, "Tokens from an identity provider").

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use dbrag_core::jwt::{self, Alg, Jwks};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::error::{raise, required, DbragError, Kind};
use crate::gucs;
use crate::pg::privileged;
use crate::scaleout;

static EPOCH: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, PartialEq)]
struct CacheKey {
    setting: String,
    app_setting: Option<String>,
    assertion: Option<String>,
    session_user: pg_sys::Oid,
    epoch: u64,
}

/// Most tenants whose status one backend keeps; the map is emptied beyond.
const STATUS_CACHE_MAX: usize = 4096;

thread_local! {
    static RESOLVED: RefCell<Option<(CacheKey, Option<uuid::Uuid>)>> = const { RefCell::new(None) };
    /// Tenant → status (None: no such tenant), valid for one epoch.
    static STATUS: RefCell<(u64, HashMap<uuid::Uuid, Option<String>>)> =
        RefCell::new((0, HashMap::new()));
    /// (epoch, login role) → its single active tenant.
    static MEMBERSHIP: RefCell<Option<(u64, pg_sys::Oid, Option<uuid::Uuid>)>> =
        const { RefCell::new(None) };
    /// The parsed public key file and what it was parsed from.
    static PUBLIC_KEYS: RefCell<Option<(KeyFileStamp, Rc<Jwks>)>> = const { RefCell::new(None) };
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

/// Tenant status as stored, cached until the next invalidation.
fn tenant_status(tenant: uuid::Uuid) -> Option<String> {
    let epoch = EPOCH.load(Ordering::Relaxed);
    if let Some(hit) = STATUS.with(|c| {
        let c = c.borrow();
        (c.0 == epoch).then(|| c.1.get(&tenant).cloned()).flatten()
    }) {
        return hit;
    }
    let status = tenant_status_uncached(tenant);
    // An invalidation during the lookup bumps the epoch: the entry is then
    // filed under the old one and never served.
    STATUS.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != epoch || c.1.len() >= STATUS_CACHE_MAX {
            c.0 = epoch;
            c.1.clear();
        }
        c.1.insert(tenant, status.clone());
    });
    status
}

/// Tenant status as stored, looked up as the extension (no policy applies):
/// None when there is no such tenant; a failed lookup is XX000, never read
/// as "no such tenant".
fn tenant_status_uncached(tenant: uuid::Uuid) -> Option<String> {
    let id = pgrx::Uuid::from_bytes(*tenant.as_bytes());
    let status = privileged::as_extension(|| {
        // A read-only select: this runs inside parallel workers too.
        Spi::connect(|client| {
            client
                // Always one row: NULL when there is no such tenant.
                .select(
                    "SELECT (SELECT status::text FROM control_plane.tenants WHERE tenant_id = $1)",
                    Some(1),
                    &[DatumWithOid::from(id)],
                )?
                .first()
                .get_one::<String>()
        })
    });
    crate::error::spi_or_raise(status, "the tenant's status")
}

/// The single active tenant the login role is a member of, if exactly one;
/// cached until the next invalidation.
fn membership_tenant(member: pg_sys::Oid) -> Option<uuid::Uuid> {
    let epoch = EPOCH.load(Ordering::Relaxed);
    if let Some(hit) = MEMBERSHIP.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|(e, m, t)| (*e == epoch && *m == member).then_some(*t))
    }) {
        return hit;
    }
    let tenant = membership_tenant_uncached(member);
    MEMBERSHIP.with(|c| *c.borrow_mut() = Some((epoch, member, tenant)));
    tenant
}

fn membership_tenant_uncached(member: pg_sys::Oid) -> Option<uuid::Uuid> {
    let found = privileged::as_extension(|| {
        privileged::column::<pgrx::Uuid>(
            "SELECT m.tenant_id FROM control_plane.tenant_members m \
             JOIN control_plane.tenants t ON t.tenant_id = m.tenant_id \
             WHERE m.member = $1::pg_catalog.oid::pg_catalog.regrole AND t.status = 'active' LIMIT 2",
            &[DatumWithOid::from(member)],
        )
    });
    let found: Vec<pgrx::Uuid> = crate::error::spi_or_raise(found, "the login role's tenants");
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
    // On Citus, work for a tenant reaches the workers as the tenant's role.
    if let Some(t) = scaleout::role_tenant(key.session_user) {
        return active(t);
    }
    if let Some(assertion) = &key.assertion {
        return active(scaleout::asserted_tenant(assertion));
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
        assertion: scaleout::assertion_setting(),
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

/// Whether this session has an open cursor. A cursor evaluates the tenant
/// when its scan starts and keeps it: one opened (or partly fetched) under
/// tenant A would go on returning A's rows after a switch to B. Declared,
/// partly fetched and held (`WITH HOLD`) cursors are all portals in the
/// READY state; the statement calling us is ACTIVE, not READY.
fn has_open_cursors() -> bool {
    // SAFETY: reads the backend's portal table; no allocation, no error.
    !unsafe { pg_sys::ThereAreNoReadyPortals() }
}

/// Put `tenant` in force after checking that it exists and is active.
/// `detail` goes into the audit rows (the switch's, when switches are audited).
fn switch_to(
    tenant: uuid::Uuid,
    is_local: bool,
    via: &str,
    detail: serde_json::Value,
    not_after: Option<i64>,
) -> pgrx::Uuid {
    scaleout::before_switch();
    if current() != Some(tenant) && has_open_cursors() {
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
                with_detail(
                    json!({"via": via, "reason": format!("tenant is {status}")}),
                    &detail,
                ),
            );
            DbragError::new(Kind::Forbidden, format!("tenant {tenant} is {status}"))
                .hint("only active tenants can be put in force; see dbrag.set_tenant_status")
                .raise()
        }
        None => {
            audit::record_durable(
                "tenant_switch_refused",
                None,
                with_detail(
                    json!({"via": via, "reason": "unknown tenant", "claimed_tenant": tenant.to_string()}),
                    &detail,
                ),
            );
            raise(Kind::NotFound, format!("tenant {tenant} does not exist"))
        }
    }
    gucs::write_tenant_setting(&tenant.to_string(), is_local);
    scaleout::forward_tenant(tenant, not_after);
    if gucs::AUDIT_TENANT_SWITCHES.get() {
        audit::record(
            "tenant_switch",
            Some(&tenant.to_string()),
            with_detail(json!({"via": via, "is_local": is_local}), &detail),
        );
    }
    to_pg(tenant)
}

/// `base` with the members of `extra` (an object) added.
fn with_detail(mut base: serde_json::Value, extra: &serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// (path, size, mtime in ns, inode) of the public key file.
type KeyFileStamp = (String, u64, i128, u64);

fn keys_not_configured(message: String) -> DbragError {
    DbragError::new(Kind::NotConfigured, message).hint(
        "a superuser points dbrag.jwt_public_keys_file at a readable JWKS document \
         ({\"keys\": [...]}) of the identity provider's public keys",
    )
}

/// The public keys of `dbrag.jwt_public_keys_file`, parsed once per backend
/// and again when the setting or the file's size, mtime or inode changes.
fn public_keys(path: &str) -> Result<Rc<Jwks>, DbragError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        keys_not_configured(format!(
            "cannot read the file named by dbrag.jwt_public_keys_file: {e}"
        ))
    })?;
    let stamp: KeyFileStamp = (
        path.to_string(),
        meta.len(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.ino(),
    );
    if let Some(hit) = PUBLIC_KEYS.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|(s, k)| (s == &stamp).then(|| k.clone()))
    }) {
        return Ok(hit);
    }
    if meta.len() > jwt::MAX_JWKS_LEN as u64 {
        return Err(keys_not_configured(format!(
            "dbrag.jwt_public_keys_file is larger than {} bytes",
            jwt::MAX_JWKS_LEN
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        keys_not_configured(format!(
            "cannot read the file named by dbrag.jwt_public_keys_file: {e}"
        ))
    })?;
    let keys = Rc::new(
        Jwks::parse(&bytes)
            .map_err(|e| keys_not_configured(format!("dbrag.jwt_public_keys_file: {e}")))?,
    );
    PUBLIC_KEYS.with(|c| *c.borrow_mut() = Some((stamp, keys.clone())));
    Ok(keys)
}

/// `dbrag.set_tenant(token)`: put the tenant named by a signed token in force.
#[pg_extern(volatile, parallel_unsafe, name = "set_tenant")]
fn set_tenant_token(token: Option<&str>, is_local: default!(Option<bool>, false)) -> pgrx::Uuid {
    crate::pg::restricted::refuse_if_restricted("dbrag.set_tenant");
    let token = required(token, "token");
    let is_local = is_local.unwrap_or(false);
    let secret = gucs::string_value(&gucs::JWT_SECRET);
    let keys_file = gucs::string_value(&gucs::JWT_PUBLIC_KEYS_FILE);
    if secret.is_none() && keys_file.is_none() {
        audit::record_durable(
            "token_refused",
            None,
            json!({"reason": "neither dbrag.jwt_secret nor dbrag.jwt_public_keys_file is set"}),
        );
        DbragError::new(
            Kind::NotConfigured,
            "token login is not configured: dbrag.jwt_secret is not set",
        )
        .hint(
            "a superuser sets dbrag.jwt_secret (HS256) or dbrag.jwt_public_keys_file \
             (RS256, ES256, EdDSA) in postgresql.conf or with ALTER SYSTEM",
        )
        .raise()
    };
    // The header is read unverified, only to pick the key and to describe
    // the token in audit rows; verify() re-reads it and decides.
    let header = jwt::token_header(token).ok();
    let described = match &header {
        Some(h) => json!({"alg": h.alg.name(), "kid": h.kid}),
        None => json!({}),
    };
    let jwks = match (&header, &keys_file) {
        (Some(h), Some(path)) if h.alg != Alg::Hs256 => match public_keys(path) {
            Ok(k) => Some(k),
            Err(e) => {
                audit::record_durable(
                    "token_refused",
                    None,
                    with_detail(json!({"reason": e.message.clone()}), &described),
                );
                e.raise()
            }
        },
        _ => None,
    };
    let issuer = gucs::string_value(&gucs::JWT_ISSUER);
    let audience = gucs::string_value(&gucs::JWT_AUDIENCE);
    let verifier = jwt::Verifier {
        hs256_secret: secret.as_deref().map(str::as_bytes),
        public_keys: jwks.as_deref(),
        issuer: issuer.as_deref(),
        audience: audience.as_deref(),
    };
    match verify_cached(token, &secret, &jwks, &verifier) {
        Ok(claims) => {
            let tenant = match uuid::Uuid::try_parse(&claims.tenant_id) {
                Ok(t) => t,
                Err(_) => raise(Kind::BadToken, "token claim tenant_id is not a uuid"),
            };
            switch_to(tenant, is_local, "token", described, Some(claims.exp))
        }
        Err(e) => {
            audit::record_durable(
                "token_refused",
                None,
                with_detail(json!({"reason": e.to_string()}), &described),
            );
            let mut err = DbragError::new(Kind::BadToken, format!("tenant token refused: {e}"));
            if uuid::Uuid::try_parse(token.trim()).is_ok() {
                err = err.hint("to set a tenant by id, pass a uuid: dbrag.set_tenant('…'::uuid)");
            }
            err.raise()
        }
    }
}

/// Most verified tokens one backend remembers (each at most 8 KB).
const VERIFIED_CACHE_MAX: usize = 256;

/// A verified token: its claims and the key material that verified it.
struct Verified {
    claims: jwt::Claims,
    /// The public keys in force then (None: the HS256 secret verified it).
    keys: Option<Rc<Jwks>>,
}

thread_local! {
    /// Tokens this backend verified, by their exact text, valid while the
    /// HS256 secret (first member) and the public key document are the same.
    /// A pooled application sends the same user's token in every
    /// transaction; the signature is checked once, the claims every time.
    static VERIFIED: RefCell<(Option<String>, HashMap<String, Verified>)> =
        RefCell::new((None, HashMap::new()));
}

/// `jwt::verify`, remembering successes for the same key material.
fn verify_cached(
    token: &str,
    secret: &Option<String>,
    jwks: &Option<Rc<Jwks>>,
    verifier: &jwt::Verifier<'_>,
) -> Result<jwt::Claims, jwt::TokenError> {
    let now = now_unix();
    let hit = VERIFIED.with(|c| {
        let mut c = c.borrow_mut();
        if &c.0 != secret {
            c.0 = secret.clone();
            c.1.clear();
        }
        let v = c.1.get(token)?;
        let same_keys = match (&v.keys, jwks) {
            (None, _) => true,
            (Some(a), Some(b)) => Rc::ptr_eq(a, b),
            (Some(_), None) => false,
        };
        same_keys.then(|| v.claims.clone())
    });
    if let Some(claims) = hit {
        // Time, issuer and audience are checked at every use.
        jwt::check_claims(&claims, verifier, now)?;
        return Ok(claims);
    }
    let claims = jwt::verify(token, verifier, now)?;
    let by_public_key = jwt::token_header(token).is_ok_and(|h| h.alg != Alg::Hs256);
    VERIFIED.with(|c| {
        let mut c = c.borrow_mut();
        if c.1.len() >= VERIFIED_CACHE_MAX {
            c.1.clear();
        }
        c.1.insert(
            token.to_string(),
            Verified {
                claims: claims.clone(),
                keys: if by_public_key { jwks.clone() } else { None },
            },
        );
    });
    Ok(claims)
}

/// `dbrag.set_tenant(uuid)`: for the trusted application server and operators.
#[pg_extern(volatile, parallel_unsafe, name = "set_tenant")]
fn set_tenant_uuid(
    tenant: Option<pgrx::Uuid>,
    is_local: default!(Option<bool>, false),
) -> pgrx::Uuid {
    crate::pg::restricted::refuse_if_restricted("dbrag.set_tenant");
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
    if member_with_createrole() {
        audit::record_durable(
            "tenant_switch_refused",
            None,
            json!({"via": "uuid", "reason": "tenant member with CREATEROLE", "claimed_tenant": tenant.to_string()}),
        );
        DbragError::new(
            Kind::Forbidden,
            "permission denied to set a tenant by id: the login role is a tenant member with CREATEROLE",
        )
        .hint("a tenant member is bound to its tenant; CREATEROLE lets it grant itself dbrag_app. ALTER ROLE ... NOCREATEROLE (see dbrag.isolation_report())")
        .raise()
    }
    switch_to(tenant, is_local, "uuid", json!({}), None)
}

/// Whether the login role has CREATEROLE and is listed in tenant_members:
/// such a role can have granted itself dbrag_app to pick any tenant. The
/// attribute is read from the role cache first, so the usual caller pays
/// no query.
fn member_with_createrole() -> bool {
    let login = privileged::session_user();
    // SAFETY: syscache lookups of an existing role.
    let suspicious =
        unsafe { !pg_sys::superuser_arg(login) && pg_sys::has_createrole_privilege(login) };
    if !suspicious {
        return false;
    }
    let member = privileged::as_extension(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM control_plane.tenant_members \
             WHERE member OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regrole)",
            &[DatumWithOid::from(login)],
        )
    });
    crate::error::spi_row_or_raise(member, "the login role's memberships").unwrap_or(true)
}

/// `dbrag.reset_tenant()`: clear the tenant set by `set_tenant`.
#[pg_extern(volatile, parallel_unsafe)]
fn reset_tenant() {
    crate::pg::restricted::refuse_if_restricted("dbrag.reset_tenant");
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
    crate::pg::restricted::refuse_if_restricted("dbrag.issue_token");
    let tenant = from_pg(required(tenant, "tenant"));
    if !privileged::is_platform_admin() {
        raise(
            Kind::Forbidden,
            "permission denied to issue tokens: requires dbrag_admin",
        );
    }
    if member_with_createrole() {
        DbragError::new(
            Kind::Forbidden,
            "permission denied to issue tokens: the login role is a tenant member with CREATEROLE",
        )
        .hint("a tenant member is bound to its tenant; CREATEROLE lets it grant itself dbrag_admin. ALTER ROLE ... NOCREATEROLE (see dbrag.isolation_report())")
        .raise()
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
    // An unknown id would fail the audit row's foreign key with a raw 23503.
    if tenant_status(tenant).is_none() {
        raise(Kind::NotFound, format!("tenant {tenant} does not exist"));
    }
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

/// Drop every backend's cached resolution at commit (called by the triggers
/// on tenants and tenant_members). Not executable by PUBLIC; `rel` must be
/// one of pg_dbrag's own tables.
#[pg_extern(volatile, parallel_unsafe)]
fn _invalidate_tenant_cache(rel: pg_sys::Oid) {
    // A table in control_plane: one of the extension's own, or on Citus a
    // shard of one, which Citus creates beside it and where the trigger
    // fires too. Read from the syscache: the shard may be new in this
    // command, not yet visible to a query.
    // SAFETY: syscache lookups that return 0 / InvalidOid for unknown oids.
    let own = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"control_plane".as_ptr(), true);
        nsp != pg_sys::InvalidOid
            && pg_sys::get_rel_relkind(rel) as u8 == pg_sys::RELKIND_RELATION
            && pg_sys::get_rel_namespace(rel) == nsp
    };
    if !own {
        raise(
            Kind::BadArgument,
            format!(
                "relation {} (OID {}) is not a table of pg_dbrag",
                // SAFETY: get_rel_name returns NULL for an unknown oid.
                unsafe {
                    let p = pg_sys::get_rel_name(rel);
                    if p.is_null() {
                        "?".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                },
                rel.to_u32()
            ),
        );
    }
    // SAFETY: the relation exists (checked above); queues an invalidation for commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
}

/// `dbrag._audit(event, tenant, detail)`: an audit row from the SQL-written API.
#[pg_extern(volatile, parallel_unsafe)]
fn _audit(
    event: Option<&str>,
    tenant: Option<pgrx::Uuid>,
    detail: default!(Option<pgrx::JsonB>, "'{}'"),
) {
    let event = required(event, "event");
    let tenant = tenant.map(|t| from_pg(t).to_string());
    audit::record(
        event,
        tenant.as_deref(),
        detail.map(|d| d.0).unwrap_or(json!({})),
    );
}
