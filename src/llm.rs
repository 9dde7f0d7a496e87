//! The model client (docs/llm-and-guard.md, README.md "Errors", SECURITY.md "Blocking calls").
//!
//! One call is one HTTP POST: OpenAI-compatible chat completions
//! (`{url}/chat/completions`) or Anthropic messages (`{url}/messages`), where
//! the configured URL is the API base, e.g. `http://127.0.0.1:8080/v1`.
//!
//! The exchange runs on a thread of its own that does only I/O and never
//! touches PostgreSQL (no palloc, no elog, no SPI; all signals blocked, so
//! PostgreSQL's handlers keep running on the backend's thread). The backend
//! waits on a channel in slices of [`POLL_SLICE`] and calls
//! `check_for_interrupts!()` between them, so `statement_timeout` and
//! `pg_cancel_backend` end the wait mid-call. A thread left behind by a
//! cancel finishes on its own: its socket timeouts are the model timeout
//! plus [`THREAD_GRACE`].
//!
//! API keys: the caller passes the key. When the tenant overrides the URL
//! ([`ModelConfig::url_is_tenant_override`]), the caller must pass only the
//! tenant's own key, never the global one: the global key must not be sent to
//! an address a tenant chose.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dbrag_core::answer::{
    anthropic_request, openai_request, parse_anthropic_messages, parse_openai_chat,
};
pub use dbrag_core::llmhttp::Provider;
use dbrag_core::llmhttp::{self, display_url, redact, MAX_RESPONSE_BYTES};
use dbrag_core::{AnswerError, ModelReply};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use serde_json::json;

use crate::error::{required, DbragError, Kind, OrRaise};
use crate::gucs;
use crate::pg::privileged;

/// How long the backend blocks between two interrupt checks.
const POLL_SLICE: Duration = Duration::from_millis(20);
/// How much longer than the model timeout the I/O thread may live.
const THREAD_GRACE: Duration = Duration::from_millis(2_000);

/// Everything one model call needs.
#[derive(Clone)]
pub struct ModelConfig {
    pub provider: Provider,
    /// The API base (`http://host:port/v1`), or the full endpoint.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout_ms: u64,
    pub max_tokens: u32,
    pub temperature: f32,
    /// True when `url` comes from the tenant's settings: then only the
    /// tenant's own key may be sent there, never the global one.
    pub url_is_tenant_override: bool,
    /// The tenant the call is made for: its budget is charged
    /// (crate::budget). None for the global settings (diagnostics).
    pub tenant: Option<uuid::Uuid>,
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelConfig")
            .field("provider", &self.provider)
            .field("url", &display_url(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[set]"))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("url_is_tenant_override", &self.url_is_tenant_override)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// The tenant's model overrides from `control_plane.tenants.settings`.
#[derive(Debug, Default, Clone, PartialEq)]
struct TenantOverrides {
    url: Option<String>,
    model: Option<String>,
    provider: Option<String>,
}

fn tenant_overrides(tenant: uuid::Uuid) -> Result<TenantOverrides, DbragError> {
    let id = pgrx::Uuid::from_bytes(*tenant.as_bytes());
    // As text: pgrx's JsonB panics on some valid jsonb (crate::pg::jsonb).
    // No such tenant: no overrides.
    let settings: Option<String> = crate::error::spi_row_or_raise(
        privileged::as_extension(|| {
            Spi::connect(|client| {
                client
                    .select(
                        "SELECT settings::pg_catalog.text FROM control_plane.tenants WHERE tenant_id = $1",
                        Some(1),
                        &[DatumWithOid::from(id)],
                    )?
                    .first()
                    .get_one::<String>()
            })
        }),
        "the tenant's settings",
    );
    let Some(settings) = settings else {
        return Ok(TenantOverrides::default());
    };
    let Some(settings) = crate::pg::jsonb::from_text(&settings) else {
        return Err(DbragError::new(
            Kind::BadArgument,
            "the tenant's settings cannot be read: JSON nested over 128 levels or a number beyond double precision",
        )
        .hint("an operator fixes control_plane.tenants.settings"));
    };
    let field = |name: &str| -> Result<Option<String>, DbragError> {
        match settings.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(DbragError::new(
                Kind::BadArgument,
                format!("tenant setting {name} must be a string"),
            )
            .hint("an operator fixes control_plane.tenants.settings")),
        }
    };
    Ok(TenantOverrides {
        url: field("llm_url")?,
        model: field("llm_model")?,
        provider: field("llm_provider")?,
    })
}

/// The model settings for `tenant`: the `dbrag.llm_*` settings, with the
/// tenant's `llm_url`, `llm_model` and `llm_provider` settings taking
/// precedence. `api_key` is sent as given (see the module note on keys).
pub fn config_for(tenant: uuid::Uuid, api_key: Option<String>) -> Result<ModelConfig, DbragError> {
    let overrides = tenant_overrides(tenant)?;
    let mut cfg = build_config(overrides, api_key)?;
    cfg.tenant = Some(tenant);
    Ok(cfg)
}

/// The global model settings, without any tenant's override.
pub fn global_config(api_key: Option<String>) -> Result<ModelConfig, DbragError> {
    build_config(TenantOverrides::default(), api_key)
}

fn build_config(
    overrides: TenantOverrides,
    api_key: Option<String>,
) -> Result<ModelConfig, DbragError> {
    let url_is_tenant_override = overrides.url.is_some();
    let Some(url) = overrides.url.or_else(|| gucs::string_value(&gucs::LLM_URL)) else {
        return Err(DbragError::new(Kind::NotConfigured, "no model is configured: dbrag.llm_url is not set").hint(
            "a superuser runs ALTER SYSTEM SET dbrag.llm_url = 'http://host:port/v1' and SELECT pg_reload_conf(), \
             or an operator sets llm_url in the tenant's settings",
        ));
    };
    let provider_name = overrides
        .provider
        .or_else(|| gucs::string_value(&gucs::LLM_PROVIDER))
        .unwrap_or_else(|| "openai".into());
    let Some(provider) = Provider::parse(&provider_name) else {
        return Err(DbragError::new(
            Kind::BadArgument,
            format!(
                "unknown model provider {:?}",
                provider_name.chars().take(40).collect::<String>()
            ),
        )
        .hint("dbrag.llm_provider (or the tenant's llm_provider) is openai or anthropic"));
    };
    let Some(model) = overrides
        .model
        .or_else(|| gucs::string_value(&gucs::LLM_MODEL))
    else {
        return Err(DbragError::new(Kind::NotConfigured, "no model name is configured: dbrag.llm_model is not set")
            .hint("a superuser sets dbrag.llm_model, or an operator sets llm_model in the tenant's settings"));
    };
    // The endpoint is checked now, so a bad URL is reported before any work.
    llmhttp::endpoint(provider, &url).map_err(|m| DbragError::new(Kind::BadArgument, m))?;
    Ok(ModelConfig {
        provider,
        url,
        model,
        api_key: api_key.filter(|k| !k.trim().is_empty()),
        timeout_ms: gucs::LLM_TIMEOUT_MS.get().max(1) as u64,
        max_tokens: gucs::LLM_MAX_TOKENS.get().max(1) as u32,
        temperature: gucs::LLM_TEMPERATURE.get() as f32,
        url_is_tenant_override,
        tenant: None,
    })
}

/// What the I/O thread hands back.
enum Exchange {
    Answered {
        status: u16,
        retry_after: Option<String>,
        body: Vec<u8>,
    },
    TooLarge,
    Refused(String),
    TimedOut,
    Failed(String),
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            // Status codes are mapped here, with the provider's own message.
            .http_status_as_error(false)
            // A redirect could carry the key elsewhere: refuse to follow.
            .max_redirects(0)
            // The postmaster's environment is no place for model routing.
            .proxy(None)
            .user_agent(concat!("pg_dbrag/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    })
}

/// The HTTP exchange. Runs on the I/O thread: no PostgreSQL calls here.
fn exchange(
    url: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    limit: Duration,
) -> Exchange {
    let mut req = agent()
        .post(url)
        .config()
        .timeout_global(Some(limit))
        .build()
        .header("content-type", "application/json")
        .header("accept", "application/json");
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let mut resp = match req.send(&body[..]) {
        Ok(r) => r,
        Err(e) => return transport_failure(e),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match resp
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
    {
        Ok(body) => Exchange::Answered {
            status,
            retry_after,
            body,
        },
        Err(e) => transport_failure(e),
    }
}

fn transport_failure(e: ureq::Error) -> Exchange {
    match e {
        ureq::Error::BodyExceedsLimit(_) => Exchange::TooLarge,
        ureq::Error::Timeout(_) => Exchange::TimedOut,
        ureq::Error::ConnectionFailed => Exchange::Refused("connection failed".into()),
        ureq::Error::HostNotFound => Exchange::Refused("host not found".into()),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Exchange::Refused("connection refused".into()),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Exchange::TimedOut,
            _ => Exchange::Failed(io.to_string()),
        },
        other => Exchange::Failed(other.to_string()),
    }
}

/// Ask the model once: `system` and `user` messages, one answer back.
///
/// Errors: 57014 when the model takes longer than `cfg.timeout_ms` (and the
/// usual 57014 of `statement_timeout` or a cancel, raised by PostgreSQL);
/// 39000 for an unreachable endpoint, an HTTP error (429 says when to
/// retry), a body that is not JSON, over 4 MiB, or an empty answer; 53400
/// when the tenant's budget is spent (crate::budget: no call is made). No
/// message ever contains the API key.
pub fn complete(cfg: &ModelConfig, system: &str, user: &str) -> Result<ModelReply, DbragError> {
    let url = llmhttp::endpoint(cfg.provider, &cfg.url)
        .map_err(|m| DbragError::new(Kind::BadArgument, m))?;
    // A key that cannot be sent is refused before the budget is charged.
    if cfg
        .api_key
        .as_deref()
        .is_some_and(|k| k.trim().chars().any(char::is_control))
    {
        return Err(DbragError::new(
            Kind::BadArgument,
            "the API key contains control characters",
        ));
    }
    // The tenant's budget: one call claimed, tokens estimated until the reply
    // says how many were used (every model call for a tenant passes here).
    let reservation = match cfg.tenant {
        Some(tenant) => {
            let estimate = ((system.len() + user.len()) / 4) as u64 + u64::from(cfg.max_tokens);
            crate::budget::reserve(tenant, estimate)?
        }
        None => None,
    };
    let reply = call_model(cfg, &url, system, user)?;
    if let Some(r) = reservation {
        // A reply without a usage count is charged the estimate.
        let used = match (reply.prompt_tokens, reply.completion_tokens) {
            (None, None) => r.estimate(),
            (p, c) => (p.unwrap_or(0).max(0) as u64).saturating_add(c.unwrap_or(0).max(0) as u64),
        };
        r.settle(used);
    }
    Ok(reply)
}

/// One exchange with the model endpoint (see [`complete`]).
fn call_model(
    cfg: &ModelConfig,
    url: &str,
    system: &str,
    user: &str,
) -> Result<ModelReply, DbragError> {
    let url = url.to_string();
    let shown = display_url(&url);
    let key = cfg.api_key.as_deref();
    let fail = |kind: Kind, msg: String| DbragError::new(kind, redact(&msg, key));

    let (body, headers) = match cfg.provider {
        Provider::OpenAi => {
            let body = openai_request(&cfg.model, system, user, cfg.max_tokens, cfg.temperature);
            let mut headers = Vec::new();
            if let Some(k) = key {
                headers.push(("authorization", format!("Bearer {}", k.trim())));
            }
            (body, headers)
        }
        Provider::Anthropic => {
            let body = anthropic_request(&cfg.model, system, user, cfg.max_tokens, cfg.temperature);
            let mut headers = vec![("anthropic-version", "2023-06-01".to_string())];
            if let Some(k) = key {
                headers.push(("x-api-key", k.trim().to_string()));
            }
            (body, headers)
        }
    };
    for (_, value) in &headers {
        if value.chars().any(|c| c.is_control()) {
            return Err(DbragError::new(
                Kind::BadArgument,
                "the API key contains control characters",
            ));
        }
    }
    let body = body.to_string().into_bytes();
    let timeout = Duration::from_millis(cfg.timeout_ms);

    let (tx, rx) = mpsc::sync_channel::<Exchange>(1);
    let thread_url = url.clone();
    crate::pg::spawn_signal_free("dbrag-llm", None, move || {
        let outcome = exchange(&thread_url, &headers, body, timeout + THREAD_GRACE);
        // The backend may have stopped waiting (cancel, timeout): then nobody listens.
        let _ = tx.send(outcome);
    })
    .map_err(|e| fail(Kind::Model, format!("could not start the model call: {e}")))?;

    let started = Instant::now();
    let outcome = loop {
        match rx.recv_timeout(POLL_SLICE) {
            Ok(outcome) => break outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pgrx::check_for_interrupts!();
                if started.elapsed() >= timeout {
                    return Err(DbragError::new(
                        Kind::Timeout,
                        format!("the model did not answer within {} ms", cfg.timeout_ms),
                    )
                    .hint("raise dbrag.llm_timeout_ms, or use a faster model or endpoint"));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(fail(
                    Kind::Model,
                    format!("the call to the model endpoint {shown} ended without an answer"),
                ));
            }
        }
    };

    let (status, retry_after, body) = match outcome {
        Exchange::Answered {
            status,
            retry_after,
            body,
        } => (status, retry_after, body),
        Exchange::TooLarge => {
            return Err(fail(
                Kind::Model,
                format!(
                    "the model endpoint {shown} sent a response over {} MiB",
                    MAX_RESPONSE_BYTES >> 20
                ),
            ))
        }
        Exchange::TimedOut => {
            return Err(DbragError::new(
                Kind::Timeout,
                format!("the model did not answer within {} ms", cfg.timeout_ms),
            )
            .hint("raise dbrag.llm_timeout_ms, or use a faster model or endpoint"))
        }
        Exchange::Refused(why) => return Err(fail(
            Kind::Model,
            format!("could not reach the model endpoint {shown}: {why}"),
        )
        .hint(
            "check that the model server is running and dbrag.llm_url (or the tenant's llm_url)",
        )),
        Exchange::Failed(why) => {
            return Err(fail(
                Kind::Model,
                format!("the call to the model endpoint {shown} failed: {why}"),
            ))
        }
    };

    if !(200..300).contains(&status) {
        let (msg, hint) =
            llmhttp::http_failure(cfg.provider, &url, status, retry_after.as_deref(), &body);
        let mut err = fail(Kind::Model, msg);
        if let Some(h) = hint {
            err = err.hint(h);
        }
        return Err(err);
    }
    let parsed = match cfg.provider {
        Provider::OpenAi => parse_openai_chat(&body),
        Provider::Anthropic => parse_anthropic_messages(&body),
    };
    parsed.map_err(|e| {
        let msg = match e {
            AnswerError::NotJson => format!(
                "the model endpoint {shown} answered HTTP {status} with a body that is not a {} response",
                match cfg.provider {
                    Provider::OpenAi => "JSON chat-completions",
                    Provider::Anthropic => "JSON messages",
                }
            ),
            AnswerError::Empty => format!("the model at {shown} returned an empty answer"),
            other => format!("{other} ({shown})"),
        };
        fail(Kind::Model, msg)
    })
}

/// `dbrag._llm_complete(system, prompt, api_key)`: one model call with the
/// global settings, for tests and diagnostics. Superuser-only.
#[pg_extern(volatile, parallel_unsafe, name = "_llm_complete")]
fn llm_complete_sql(
    system: Option<&str>,
    prompt: Option<&str>,
    api_key: default!(Option<&str>, "NULL"),
) -> pgrx::JsonB {
    let system =
        crate::error::bounded(system.unwrap_or(""), "system", crate::error::limits::PROMPT);
    let prompt = crate::error::bounded(
        required(prompt, "prompt"),
        "prompt",
        crate::error::limits::PROMPT,
    );
    let cfg = global_config(api_key.map(str::to_string)).or_raise();
    let started = Instant::now();
    let reply = complete(&cfg, system, prompt).or_raise();
    pgrx::JsonB(json!({
        "text": reply.text,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "provider": cfg.provider.as_str(),
        "model": cfg.model,
        "ms": started.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// `dbrag._llm_config(tenant)`: the model settings in force for a tenant
/// (without any key), for tests and diagnostics. Superuser-only.
#[pg_extern(volatile, parallel_unsafe, name = "_llm_config")]
fn llm_config_sql(tenant: Option<pgrx::Uuid>) -> pgrx::JsonB {
    let tenant = required(tenant, "tenant");
    let cfg = config_for(uuid::Uuid::from_bytes(*tenant.as_bytes()), None).or_raise();
    pgrx::JsonB(json!({
        "provider": cfg.provider.as_str(),
        "url": display_url(&cfg.url),
        "model": cfg.model,
        "timeout_ms": cfg.timeout_ms,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "url_is_tenant_override": cfg.url_is_tenant_override,
    }))
}

pgrx::extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION dbrag._llm_complete(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dbrag._llm_config(uuid) FROM PUBLIC;
"#,
    name = "llm_grants",
    requires = [llm_complete_sql, llm_config_sql]
);

/// The model settings and key for the tenant: a tenant that points its
/// model elsewhere sends only its own key there, never the global one.
pub fn tenant_config(tenant_id: uuid::Uuid) -> std::result::Result<ModelConfig, DbragError> {
    let probe = config_for(tenant_id, None)?;
    let key = if probe.url_is_tenant_override {
        crate::crypto::tenant_llm_api_key(tenant_id)
    } else {
        crate::crypto::llm_api_key(Some(tenant_id))
    };
    config_for(tenant_id, key)
}
