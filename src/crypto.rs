//! Secrets at rest (docs/connections-and-keys.md): AES-256-GCM envelopes (`dbrag_core::envelope`)
//! under a keyring read from superuser-only settings, never from a table.
//!
//! The keyring is `dbrag.master_key` (one key, id `m` + fingerprint) followed
//! by the lines of `dbrag.master_key_file` (`key_id:hex`, the last encrypts).
//! It is parsed once per backend and parsed again only when either setting's
//! text or the key file's size, mtime or inode changes (SECURITY.md: derive once,
//! not per call).
//!
//! Associated data is domain-separated: what `dbrag.encrypt(text, context)`
//! binds is `dbrag:sql:` + context, what the extension binds to its own
//! secrets is `dbrag:internal:` + purpose. No SQL-level context can therefore
//! open a connection's credentials or an LLM API key, whoever holds the bytes.

use std::cell::RefCell;
use std::rc::Rc;

use dbrag_core::envelope::{self, EnvelopeError, Keyring};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::json;

use crate::audit;
use crate::error::{raise, DbragError, Kind, OrRaise, Result};
use crate::gucs;
use crate::pg::privileged;
use crate::tenant;

const SQL_DOMAIN: &[u8] = b"dbrag:sql:";
const INTERNAL_DOMAIN: &[u8] = b"dbrag:internal:";

/// What an internal secret is bound to.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// A connection's conninfo: tenant_id ‖ connection_id.
    Connection {
        tenant: uuid::Uuid,
        connection: uuid::Uuid,
    },
    /// A tenant's LLM API key, or the global one.
    LlmKey { tenant: Option<uuid::Uuid> },
}

impl Purpose {
    fn aad(self) -> Vec<u8> {
        let tail = match self {
            Purpose::Connection { tenant, connection } => {
                format!("connection:{tenant}:{connection}")
            }
            Purpose::LlmKey { tenant: Some(t) } => format!("llm_api_key:{t}"),
            Purpose::LlmKey { tenant: None } => "llm_api_key:global".to_string(),
        };
        [INTERNAL_DOMAIN, tail.as_bytes()].concat()
    }
}

fn sql_aad(context: &str) -> Vec<u8> {
    [SQL_DOMAIN, context.as_bytes()].concat()
}

// ---------------------------------------------------------------- keyring

#[derive(Clone, PartialEq)]
struct RingSource {
    master: Option<String>,
    file: Option<String>,
    /// (size, mtime in ns, inode) of the key file when one is set.
    stamp: Option<(u64, i128, u64)>,
}

thread_local! {
    static RING: RefCell<Option<(RingSource, Rc<Keyring>)>> = const { RefCell::new(None) };
}

fn not_configured(message: impl Into<String>) -> DbragError {
    DbragError::new(Kind::NotConfigured, message).hint(
        "a superuser sets dbrag.master_key (64 hex digits) or dbrag.master_key_file \
         (lines of key_id:hex) in postgresql.conf or with ALTER SYSTEM, then reloads",
    )
}

fn file_stamp(path: &str) -> Result<(u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        not_configured(format!(
            "cannot read the key file named by dbrag.master_key_file: {e}"
        ))
    })?;
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    Ok((meta.len(), mtime, meta.ino()))
}

fn build_ring(source: &RingSource) -> Result<Keyring> {
    let mut ring = Keyring::default();
    if let Some(hex) = &source.master {
        ring = Keyring::from_master_hex(hex)
            .map_err(|e| not_configured(format!("dbrag.master_key is unusable: {e}")))?;
    }
    if let Some(path) = &source.file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            not_configured(format!(
                "cannot read the key file named by dbrag.master_key_file: {e}"
            ))
        })?;
        let from_file = Keyring::parse_keyfile(&text)
            .map_err(|e| not_configured(format!("dbrag.master_key_file: {e}")))?;
        ring = ring.merge(from_file).map_err(|e| {
            not_configured(format!(
                "dbrag.master_key and dbrag.master_key_file disagree: {e}"
            ))
        })?;
    }
    Ok(ring)
}

/// The keyring in force (possibly empty), cached per backend.
fn keyring() -> Result<Rc<Keyring>> {
    let master = gucs::string_value(&gucs::MASTER_KEY);
    let file = gucs::string_value(&gucs::MASTER_KEY_FILE);
    let stamp = match &file {
        Some(path) => Some(file_stamp(path)?),
        None => None,
    };
    let source = RingSource {
        master,
        file,
        stamp,
    };
    if let Some(hit) = RING.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|(s, r)| (s == &source).then(|| r.clone()))
    }) {
        return Ok(hit);
    }
    let ring = Rc::new(build_ring(&source)?);
    RING.with(|c| *c.borrow_mut() = Some((source, ring.clone())));
    Ok(ring)
}

fn map_envelope_error(e: EnvelopeError) -> DbragError {
    match e {
        EnvelopeError::NoKey => not_configured("no encryption key is configured"),
        EnvelopeError::Rng => DbragError::new(Kind::NotConfigured, e.to_string()),
        EnvelopeError::BadKey(_) | EnvelopeError::BadKeyfile { .. } => not_configured(e.to_string()),
        EnvelopeError::UnknownKeyId(_) => DbragError::new(Kind::BadArgument, e.to_string())
            .hint("the key that encrypted it must stay in dbrag.master_key_file until dbrag.rotate_key() has run"),
        EnvelopeError::Truncated | EnvelopeError::UnsupportedVersion(_) | EnvelopeError::Malformed(_) => {
            DbragError::new(Kind::BadArgument, e.to_string())
        }
        EnvelopeError::AuthenticationFailed => DbragError::new(Kind::BadArgument, e.to_string()),
    }
}

fn seal_aad(plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let ring = keyring()?;
    envelope::seal(&ring, plaintext, aad).map_err(map_envelope_error)
}

fn open_aad(blob: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let ring = keyring()?;
    envelope::open(&ring, blob, aad).map_err(map_envelope_error)
}

fn utf8(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| DbragError::new(Kind::BadArgument, "decrypted value is not valid text"))
}

/// Encrypt an internal secret for `purpose`.
pub fn seal_internal(plaintext: &str, purpose: Purpose) -> Result<Vec<u8>> {
    seal_aad(plaintext.as_bytes(), &purpose.aad())
}

/// Decrypt an internal secret sealed for `purpose`.
pub fn open_internal(blob: &[u8], purpose: Purpose) -> Result<String> {
    utf8(open_aad(blob, &purpose.aad())?)
}

// ---------------------------------------------------------------- SQL API

/// `dbrag.encrypt(plaintext, context)`: an AES-256-GCM envelope of
/// `plaintext` bound to `context` (fresh random nonce: VOLATILE). STRICT,
/// like pgcrypto: a NULL in gives NULL out.
#[pg_extern(volatile, strict, parallel_safe)]
fn encrypt(plaintext: &str, context: &str) -> Vec<u8> {
    use crate::error::{bounded, limits};
    bounded(plaintext, "plaintext", limits::SECRET);
    bounded(context, "context", limits::CONTEXT);
    seal_aad(plaintext.as_bytes(), &sql_aad(context)).or_raise()
}

/// `dbrag.decrypt(ciphertext, context)`: the plaintext, or a clear error
/// (wrong key, wrong context, tampered or truncated value), never garbage.
#[pg_extern(stable, strict, parallel_safe)]
fn decrypt(ciphertext: &[u8], context: &str) -> String {
    crate::pg::restricted::refuse_if_restricted("dbrag.decrypt");
    use crate::error::{bounded, bounded_len, limits};
    bounded_len(ciphertext.len(), "ciphertext", limits::SECRET + 1024);
    bounded(context, "context", limits::CONTEXT);
    open_aad(ciphertext, &sql_aad(context))
        .and_then(utf8)
        .or_raise()
}

/// `dbrag.encryption_key_id(ciphertext)`: the id of the key a value was
/// sealed under (to see what `rotate_key` will touch); not authenticated.
#[pg_extern(immutable, parallel_safe)]
fn encryption_key_id(ciphertext: Option<&[u8]>) -> Option<String> {
    ciphertext.map(|c| {
        envelope::key_id_of(c)
            .map(str::to_string)
            .map_err(map_envelope_error)
            .or_raise()
    })
}

// ---------------------------------------------------------------- LLM API keys

const GLOBAL_LLM_KEY: &str = "llm_api_key";

/// `dbrag.set_llm_api_key(key, global)`: store (or, with NULL, remove) the
/// model API key of the tenant in force, or the global one (operators only).
#[pg_extern(volatile, parallel_unsafe)]
fn set_llm_api_key(key: Option<&str>, global: default!(Option<bool>, false)) {
    crate::pg::restricted::refuse_if_restricted("dbrag.set_llm_api_key");
    let global = global.unwrap_or(false);
    if let Some(k) = key {
        crate::error::bounded(k, "key", crate::error::limits::API_KEY);
        if k.trim().is_empty() {
            raise(
                Kind::BadArgument,
                "the API key must not be empty; pass NULL to remove the stored key",
            );
        }
    }
    // The global key is a row of system_config, a tenant's a row of llm_credentials.
    let tenant = if global {
        if !privileged::is_platform_admin() {
            DbragError::new(
                Kind::Forbidden,
                "permission denied to set the global LLM API key",
            )
            .hint("only superusers and dbrag_admin may; a tenant sets its own with global => false")
            .raise();
        }
        None
    } else {
        Some(tenant::require())
    };
    let (upsert, delete) = match tenant {
        None => (
            "INSERT INTO control_plane.system_config (key, value) \
             VALUES ($1, pg_catalog.jsonb_build_object('ciphertext', pg_catalog.encode($2, 'base64'))) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            "DELETE FROM control_plane.system_config WHERE key = $1",
        ),
        Some(_) => (
            "INSERT INTO control_plane.llm_credentials (tenant_id, api_key) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET api_key = EXCLUDED.api_key",
            "DELETE FROM control_plane.llm_credentials WHERE tenant_id = $1",
        ),
    };
    let row_key = || match tenant {
        None => DatumWithOid::from(GLOBAL_LLM_KEY),
        Some(t) => DatumWithOid::from(tenant::to_pg(t)),
    };
    let blob = key.map(|k| seal_internal(k, Purpose::LlmKey { tenant }).or_raise());
    privileged::as_extension(|| -> std::result::Result<(), pgrx::spi::Error> {
        match &blob {
            Some(b) => Spi::run_with_args(upsert, &[row_key(), DatumWithOid::from(b.as_slice())]),
            None => Spi::run_with_args(delete, &[row_key()]),
        }
    })
    .map_err(DbragError::from)
    .or_raise();
    let event = if key.is_some() {
        "llm_key_set"
    } else {
        "llm_key_removed"
    };
    let scope = if tenant.is_some() { "tenant" } else { "global" };
    audit::record(
        event,
        tenant.map(|t| t.to_string()).as_deref(),
        json!({ "scope": scope }),
    );
}

/// `dbrag.llm_api_key_status()`: which key the tenant in force would use
/// ('tenant', 'global' or NULL), without revealing it.
#[pg_extern(stable, parallel_safe)]
fn llm_api_key_status() -> Option<String> {
    let t = tenant::current();
    let (own, global) = stored_llm_keys(t);
    if own.is_some() {
        Some("tenant".into())
    } else if global.is_some() {
        Some("global".into())
    } else {
        None
    }
}

fn stored_llm_keys(tenant: Option<uuid::Uuid>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    privileged::as_extension(|| {
        let own = match tenant {
            Some(t) => Spi::get_one_with_args::<Vec<u8>>(
                "SELECT api_key FROM control_plane.llm_credentials WHERE tenant_id = $1",
                &[DatumWithOid::from(tenant::to_pg(t))],
            )
            .unwrap_or(None),
            None => None,
        };
        let global = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT pg_catalog.decode(value ->> 'ciphertext', 'base64') FROM control_plane.system_config WHERE key = $1",
            &[DatumWithOid::from(GLOBAL_LLM_KEY)],
        )
        .unwrap_or(None);
        (own, global)
    })
}

/// The model API key for `tenant`: its own key first, else the global one.
/// For the NL-to-SQL code only; the plaintext never goes back to SQL.
#[allow(dead_code)] // called by the NL-to-SQL module
/// The tenant's own LLM API key only (for a tenant that set its own URL).
pub fn tenant_llm_api_key(tenant: uuid::Uuid) -> Option<String> {
    let (own, _) = stored_llm_keys(Some(tenant));
    own.map(|blob| {
        open_internal(
            &blob,
            Purpose::LlmKey {
                tenant: Some(tenant),
            },
        )
        .or_raise()
    })
}

pub fn llm_api_key(tenant: Option<uuid::Uuid>) -> Option<String> {
    let (own, global) = stored_llm_keys(tenant);
    if let (Some(blob), Some(t)) = (own, tenant) {
        return Some(open_internal(&blob, Purpose::LlmKey { tenant: Some(t) }).or_raise());
    }
    global.map(|blob| open_internal(&blob, Purpose::LlmKey { tenant: None }).or_raise())
}

// ---------------------------------------------------------------- rotation

/// Re-seal `blob` under the active key when it is under another one.
/// Ok(None): already current. Err: it does not open (left as it is).
fn reseal(
    ring: &Keyring,
    blob: &[u8],
    aad: &[u8],
) -> std::result::Result<Option<Vec<u8>>, EnvelopeError> {
    let active = ring.active().ok_or(EnvelopeError::NoKey)?;
    if envelope::key_id_of(blob)? == active.id {
        return Ok(None);
    }
    let plain = envelope::open(ring, blob, aad)?;
    envelope::seal(ring, &plain, aad).map(Some)
}

/// `dbrag.rotate_key()`: re-encrypt every stored secret that is not under
/// the newest key, in the caller's transaction; returns how many changed.
/// A value that does not decrypt is left as it is, with a WARNING.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_key() -> i64 {
    crate::pg::restricted::refuse_if_restricted("dbrag.rotate_key");
    if !privileged::is_platform_admin() {
        DbragError::new(Kind::Forbidden, "permission denied to rotate keys")
            .hint("only superusers and dbrag_admin may call dbrag.rotate_key()")
            .raise();
    }
    let ring = keyring().or_raise();
    let Some(active) = ring.active().map(|k| k.id.clone()) else {
        not_configured("no encryption key is configured").raise()
    };
    let mut changed = 0i64;
    let mut skipped: Vec<String> = Vec::new();
    let result = privileged::as_extension(|| -> std::result::Result<(), pgrx::spi::Error> {
        // Connections.
        let rows: Vec<(pgrx::Uuid, pgrx::Uuid, Vec<u8>)> = Spi::connect_mut(|client| {
            let mut out = Vec::new();
            for row in client.update(
                "SELECT tenant_id, connection_id, credentials FROM control_plane.tenant_databases \
                 WHERE credentials IS NOT NULL FOR UPDATE",
                None,
                &[],
            )? {
                if let (Some(t), Some(c), Some(b)) = (row.get(1)?, row.get(2)?, row.get(3)?) {
                    out.push((t, c, b));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })?;
        for (t, c, blob) in rows {
            let purpose = Purpose::Connection {
                tenant: tenant::from_pg(t),
                connection: tenant::from_pg(c),
            };
            match reseal(&ring, &blob, &purpose.aad()) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    Spi::run_with_args(
                        "UPDATE control_plane.tenant_databases SET credentials = $3 \
                         WHERE tenant_id = $1 AND connection_id = $2",
                        &[
                            DatumWithOid::from(t),
                            DatumWithOid::from(c),
                            DatumWithOid::from(new.as_slice()),
                        ],
                    )?;
                    changed += 1;
                }
                Err(e) => skipped.push(format!(
                    "connection {} of tenant {}: {e}",
                    tenant::from_pg(c),
                    tenant::from_pg(t)
                )),
            }
        }
        // Tenants' LLM API keys.
        let rows: Vec<(pgrx::Uuid, Vec<u8>)> = Spi::connect_mut(|client| {
            let mut out = Vec::new();
            for row in client.update(
                "SELECT tenant_id, api_key FROM control_plane.llm_credentials FOR UPDATE",
                None,
                &[],
            )? {
                if let (Some(t), Some(b)) = (row.get(1)?, row.get(2)?) {
                    out.push((t, b));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })?;
        for (t, blob) in rows {
            let purpose = Purpose::LlmKey {
                tenant: Some(tenant::from_pg(t)),
            };
            match reseal(&ring, &blob, &purpose.aad()) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    Spi::run_with_args(
                        "UPDATE control_plane.llm_credentials SET api_key = $2 WHERE tenant_id = $1",
                        &[DatumWithOid::from(t), DatumWithOid::from(new.as_slice())],
                    )?;
                    changed += 1;
                }
                Err(e) => {
                    skipped.push(format!("LLM API key of tenant {}: {e}", tenant::from_pg(t)))
                }
            }
        }
        // The global LLM API key.
        let global: Option<Vec<u8>> = Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT pg_catalog.decode(value ->> 'ciphertext', 'base64') FROM control_plane.system_config \
                 WHERE key = $1 FOR UPDATE",
                None,
                &[DatumWithOid::from(GLOBAL_LLM_KEY)],
            )?;
            match rows.into_iter().next() {
                Some(row) => row.get::<Vec<u8>>(1),
                None => Ok(None),
            }
        })?;
        if let Some(blob) = global {
            match reseal(&ring, &blob, &Purpose::LlmKey { tenant: None }.aad()) {
                Ok(None) => {}
                Ok(Some(new)) => {
                    Spi::run_with_args(
                        "UPDATE control_plane.system_config \
                         SET value = pg_catalog.jsonb_build_object('ciphertext', pg_catalog.encode($2, 'base64')) \
                         WHERE key = $1",
                        &[DatumWithOid::from(GLOBAL_LLM_KEY), DatumWithOid::from(new.as_slice())],
                    )?;
                    changed += 1;
                }
                Err(e) => skipped.push(format!("global LLM API key: {e}")),
            }
        }
        Ok(())
    });
    result.map_err(DbragError::from).or_raise();
    for s in &skipped {
        warning!("pg_dbrag: rotate_key left a value that does not decrypt: {s}");
    }
    audit::record(
        "key_rotated",
        None,
        json!({"key_id": active, "reencrypted": changed, "undecryptable": skipped.len()}),
    );
    changed
}
