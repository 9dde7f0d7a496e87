//! Settings. Secrets are superuser-only and hidden from `SHOW ALL`/`pg_settings`;
//! the tenant in force is a superuser-only setting that only the extension's
//! own code writes (docs/isolation.md, SECURITY.md): parallel workers inherit it, clients cannot
//! forge it with `SET`, `set_config`, a function's `SET` clause or PGOPTIONS.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use pgrx::pg_sys;

/// Name of the setting that holds the tenant in force.
pub const TENANT_GUC: &CStr = c"dbrag.tenant_id";

// The tenant setting is registered by hand because it needs a check hook.
static mut TENANT_ID_VALUE: *mut std::ffi::c_char = std::ptr::null_mut();

pub static JWT_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWT_PUBLIC_KEYS_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static JWT_ISSUER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWT_AUDIENCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static AUDIT_TENANT_SWITCHES: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MASTER_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static TRUST_GUC_TENANT: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static LLM_PROVIDER: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"openai"));
pub static LLM_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static LLM_MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static LLM_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static LLM_MAX_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static LLM_TEMPERATURE: GucSetting<f64> = GucSetting::<f64>::new(0.0);
pub static PROMPT_TOKEN_BUDGET: GucSetting<i32> = GucSetting::<i32>::new(6000);
pub static QUERY_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static REMOTE_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
pub static QUERY_MEMORY_LIMIT_MB: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static SEARCH_CONFIG: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"english"));
pub static AUTO_ISOLATE: GucSetting<AutoIsolate> = GucSetting::<AutoIsolate>::new(AutoIsolate::Off);
pub static SQLITE_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `dbrag.auto_isolate`: what the event trigger does with a new or altered
/// table that has a tenant column but no forced row-level security.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AutoIsolate {
    /// Nothing.
    #[name = c"off"]
    Off,
    /// A WARNING that names the table and the statement that isolates it.
    #[name = c"warn"]
    Warn,
    /// Isolate it with dbrag.enable_tenant_isolation; refuse the DDL when that fails.
    #[name = c"enforce"]
    Enforce,
}

impl AutoIsolate {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoIsolate::Off => "off",
            AutoIsolate::Warn => "warn",
            AutoIsolate::Enforce => "enforce",
        }
    }
}

/// Accept an empty value or a canonical UUID, so a superuser's typo fails at
/// `SET` time instead of silently meaning "no tenant".
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    if newval.is_null() || (*newval).is_null() {
        return true;
    }
    match CStr::from_ptr(*newval).to_str() {
        Ok("") => true,
        Ok(s) => uuid::Uuid::try_parse(s).is_ok() && s.len() == 36,
        Err(_) => false,
    }
}

/// The raw tenant setting ("" when none).
pub fn tenant_setting() -> String {
    // SAFETY: PostgreSQL owns the pointer and only changes it between statements.
    unsafe {
        let p = TENANT_ID_VALUE;
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Whether a tenant is set (without copying the value).
pub fn tenant_setting_is_set() -> bool {
    // SAFETY: PostgreSQL owns the pointer and only changes it between statements.
    unsafe {
        let p = TENANT_ID_VALUE;
        !p.is_null() && *p != 0
    }
}

/// A string setting's value, empty strings read as unset.
pub fn string_value(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .and_then(|c| c.into_string().ok())
        .filter(|s| !s.trim().is_empty())
}

pub fn register() {
    let secret = GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL;

    // SAFETY: called once from _PG_init with static strings and a static slot.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            TENANT_GUC.as_ptr(),
            c"Tenant in force (written only by dbrag.set_tenant).".as_ptr(),
            c"Superuser-only: clients change it through dbrag.set_tenant, never SET.".as_ptr(),
            &raw mut TENANT_ID_VALUE,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            (pg_sys::GUC_NOT_IN_SAMPLE | pg_sys::GUC_NO_SHOW_ALL) as i32,
            Some(check_tenant_id),
            None,
            None,
        );
    }

    GucRegistry::define_string_guc(
        c"dbrag.jwt_secret",
        c"HS256 secret for dbrag.set_tenant(token).",
        c"Hidden from non-superusers.",
        &JWT_SECRET,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_string_guc(
        c"dbrag.jwt_public_keys_file",
        c"JWKS file of public keys for RS256, ES256 and EdDSA tokens in dbrag.set_tenant(token).",
        c"Read by the server and re-read when the file changes; tokens pick a key by kid.",
        &JWT_PUBLIC_KEYS_FILE,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.jwt_issuer",
        c"When set, set_tenant(token) requires the token's iss claim to equal it.",
        c"",
        &JWT_ISSUER,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.jwt_audience",
        c"When set, set_tenant(token) requires the token's aud claim to include it.",
        c"",
        &JWT_AUDIENCE,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_bool_guc(
        c"dbrag.audit_tenant_switches",
        c"Write a tenant_switch audit row for every successful dbrag.set_tenant.",
        c"Refusals are always audited. Off saves a write per switch for applications that set the tenant in every transaction.",
        &AUDIT_TENANT_SWITCHES,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.master_key",
        c"AES-256 master key as 64 hex digits.",
        c"Hidden from non-superusers; never stored in a table.",
        &MASTER_KEY,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_string_guc(
        c"dbrag.master_key_file",
        c"File of key_id:hex lines; the last line encrypts.",
        c"Read by the server; hidden from non-superusers.",
        &MASTER_KEY_FILE,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_bool_guc(
        c"dbrag.trust_guc_tenant",
        c"Also read app.current_tenant_id (spoofable compatibility mode).",
        c"Off by default. Any client can set app.current_tenant_id, so this mode trusts every client.",
        &TRUST_GUC_TENANT,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.llm_provider",
        c"Model wire format: openai or anthropic.",
        c"",
        &LLM_PROVIDER,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.llm_url",
        c"Model endpoint base URL.",
        c"Superuser-only: the stored API key is sent there.",
        &LLM_URL,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.llm_model",
        c"Model name sent to the endpoint.",
        c"",
        &LLM_MODEL,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"dbrag.llm_timeout_ms",
        c"Longest wait for one model answer, in milliseconds.",
        c"",
        &LLM_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dbrag.llm_max_tokens",
        c"max_tokens asked of the model.",
        c"",
        &LLM_MAX_TOKENS,
        16,
        32_000,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_float_guc(
        c"dbrag.llm_temperature",
        c"Sampling temperature asked of the model.",
        c"",
        &LLM_TEMPERATURE,
        0.0,
        2.0,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"dbrag.prompt_token_budget",
        c"Upper bound on the prompt's size in tokens.",
        c"",
        &PROMPT_TOKEN_BUDGET,
        500,
        200_000,
        GucContext::Userset,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"dbrag.query_timeout_ms",
        c"Longest run of a generated statement, in milliseconds.",
        c"",
        &QUERY_TIMEOUT_MS,
        10,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dbrag.query_memory_limit",
        c"Memory a generated statement or a catalog sync may grow the backend by; also the data-plane helper process's memory.",
        c"Past it the statement ends with SQLSTATE 53200 and the session goes on.",
        &QUERY_MEMORY_LIMIT_MB,
        16,
        1_048_576,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"dbrag.remote_connect_timeout_ms",
        c"Longest wait to connect to a remote data plane, in milliseconds.",
        c"",
        &REMOTE_CONNECT_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"dbrag.search_config",
        c"Text search configuration of the catalog.",
        c"",
        &SEARCH_CONFIG,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_enum_guc(
        c"dbrag.auto_isolate",
        c"off, warn or enforce: what happens to a new or altered table with a tenant column and no forced RLS.",
        c"warn: a WARNING with the statement that isolates it; enforce: dbrag.enable_tenant_isolation runs, and the DDL is refused when it cannot.",
        &AUTO_ISOLATE,
        GucContext::Suset,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"dbrag.sqlite_dir",
        c"The only directory SQLite connections may open files under.",
        c"",
        &SQLITE_DIR,
        GucContext::Suset,
        GucFlags::empty(),
    );
}

/// After every module defined its settings (lib.rs): unknown dbrag.*
/// names are refused from then on.
pub fn reserve_prefix() {
    // SAFETY: reserves the prefix so unknown dbrag.* names are refused.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"dbrag".as_ptr()) };
}

/// Set `name` as a session-level source with the rights of `context`, for
/// as long as `action` says (SET: the session, LOCAL: the transaction,
/// SAVE: the current GUC nest level). A refusal is an ERROR.
pub fn set(
    name: &CStr,
    value: &CStr,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    // SAFETY: NUL-terminated strings; set_config_option reports a refusal
    // or an unknown name as an ERROR, which the FFI boundary carries.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

/// Write the tenant setting as the extension (the only writer).
pub fn write_tenant_setting(value: &str, is_local: bool) {
    let value = CString::new(value).unwrap_or_default();
    let action = if is_local {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    } else {
        pg_sys::GucAction::GUC_ACTION_SET
    };
    // PGC_SUSET asserts the extension's own right.
    set(TENANT_GUC, &value, pg_sys::GucContext::PGC_SUSET, action);
}

/// `app.current_tenant_id` as a client set it (compatibility mode only).
pub fn app_tenant_setting() -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown name.
    unsafe {
        let p = pg_sys::GetConfigOption(c"app.current_tenant_id".as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned()).filter(|s| !s.is_empty())
        }
    }
}
