//! The model client's PostgreSQL-free pieces: which endpoint a base URL
//! means, how a URL is shown in a message, and what each HTTP failure is
//! called. The HTTP exchange itself lives in `src/llm.rs`.
//!
//! Every message built here is safe to show the calling user: URLs lose
//! their user-info and query string, and [`redact`] removes the API key from
//! anything a provider echoed back.

use std::fmt;

use crate::answer::{parse_anthropic_messages, parse_openai_chat, AnswerError};

/// Largest response body read from a model endpoint, in bytes.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest excerpt of a non-JSON error body quoted in a message, in chars.
const MAX_BODY_EXCERPT: usize = 200;

/// A model API's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI chat completions, also spoken by vLLM, Ollama, llama.cpp server, LiteLLM…
    OpenAi,
    /// Anthropic messages.
    Anthropic,
}

impl Provider {
    /// `openai` or `anthropic`, in any case, surrounding blanks ignored.
    pub fn parse(s: &str) -> Option<Provider> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    /// Path appended to the API base.
    pub fn path(self) -> &'static str {
        match self {
            Provider::OpenAi => "/chat/completions",
            Provider::Anthropic => "/messages",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The endpoint to POST to, from the configured API base
/// (`http://127.0.0.1:8080/v1` → `http://127.0.0.1:8080/v1/chat/completions`).
/// A URL that already ends with the provider's path is used as given.
/// Only `http` and `https` URLs with a host are accepted.
pub fn endpoint(provider: Provider, base: &str) -> Result<String, String> {
    let base = base.trim();
    let lower = base.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("http://") {
        r
    } else if let Some(r) = lower.strip_prefix("https://") {
        r
    } else {
        return Err(format!(
            "the model URL {} is not an http:// or https:// URL",
            display_url(base)
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("the model URL {} has no host", display_url(base)));
    }
    if base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the model URL {} contains blanks or control characters",
            display_url(base)
        ));
    }
    if base.contains(['?', '#']) {
        return Err(format!(
            "the model URL {} must not carry a query string or fragment: give the API base, e.g. http://127.0.0.1:8080/v1",
            display_url(base)
        ));
    }
    let trimmed = base.trim_end_matches('/');
    if trimmed.ends_with(provider.path()) {
        Ok(trimmed.to_string())
    } else {
        Ok(format!("{trimmed}{}", provider.path()))
    }
}

/// A URL as shown in messages: scheme, host, port and path only (no
/// user-info, query or fragment, which may hold credentials).
pub fn display_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or("");
    let shown: String = format!("{scheme}{host}{path}").chars().take(200).collect();
    shown
}

/// `message` with every occurrence of `secret` replaced (secrets shorter
/// than 4 characters are not searched for: they would match ordinary words).
pub fn redact(message: &str, secret: Option<&str>) -> String {
    match secret.map(str::trim) {
        Some(s) if s.len() >= 4 => message.replace(s, "[redacted]"),
        _ => message.to_string(),
    }
}

/// Seconds from a `Retry-After` header: a number of seconds (an HTTP date
/// is reported as given, shortened).
pub fn retry_after_text(value: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(format!("{} s", secs.ceil() as u64));
        }
    }
    let shown: String = v.chars().filter(|c| !c.is_control()).take(40).collect();
    Some(format!("at {shown}"))
}

/// The provider's own error text in an error response, or a short excerpt of the body.
fn provider_message(provider: Provider, body: &[u8]) -> Option<String> {
    let parsed = match provider {
        Provider::OpenAi => parse_openai_chat(body),
        Provider::Anthropic => parse_anthropic_messages(body),
    };
    match parsed {
        Err(AnswerError::Provider(msg)) => Some(msg),
        _ => {
            let text = std::str::from_utf8(body).ok()?.trim();
            if text.is_empty() {
                return None;
            }
            let excerpt: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_BODY_EXCERPT)
                .collect();
            Some(excerpt)
        }
    }
}

/// The message for a non-2xx answer from the model endpoint at `url`.
pub fn http_failure(
    provider: Provider,
    url: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> (String, Option<String>) {
    let shown = display_url(url);
    let detail = provider_message(provider, body)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status {
        429 => {
            let when = retry_after
                .and_then(retry_after_text)
                .map(|t| format!("; the endpoint asks to retry after {t}"))
                .unwrap_or_default();
            (
                format!("the model endpoint {shown} is rate-limiting requests (HTTP 429){when}{detail}"),
                Some("wait and ask again, or raise the rate limit of the model provider account".into()),
            )
        }
        401 | 403 => (
            format!("the model endpoint {shown} refused the request (HTTP {status}){detail}"),
            Some("check the API key stored for this tenant or the global one".into()),
        ),
        300..=399 => (
            format!("the model endpoint {shown} answered with a redirect (HTTP {status}); redirects are not followed"),
            Some("set the model URL to the address the endpoint redirects to".into()),
        ),
        500..=599 => (
            format!("the model endpoint {shown} failed (HTTP {status}){detail}"),
            Some("the model server is failing; try again later or check the server".into()),
        ),
        _ => (
            format!("the model endpoint {shown} rejected the request (HTTP {status}){detail}"),
            Some("check dbrag.llm_url, dbrag.llm_model and dbrag.llm_provider".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint(Provider::OpenAi, "http://127.0.0.1:8080/v1").unwrap(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(
            endpoint(Provider::OpenAi, "http://127.0.0.1:8080/v1/").unwrap(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(
            endpoint(Provider::Anthropic, "https://api.example.com/v1").unwrap(),
            "https://api.example.com/v1/messages"
        );
        assert_eq!(
            endpoint(Provider::OpenAi, "http://h/v1/chat/completions").unwrap(),
            "http://h/v1/chat/completions"
        );
        assert!(endpoint(Provider::OpenAi, "ftp://h/v1").is_err());
        assert!(endpoint(Provider::OpenAi, "http:///v1").is_err());
        assert!(endpoint(Provider::OpenAi, "http://:80/v1").is_err());
        assert!(endpoint(Provider::OpenAi, "http://h/v1?key=secret").is_err());
        assert!(endpoint(Provider::OpenAi, "127.0.0.1:8080").is_err());
        assert!(endpoint(Provider::OpenAi, "http://h/v 1").is_err());
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            display_url("https://user:pw@api.example.com:8443/v1?key=abc#x"),
            "https://api.example.com:8443/v1"
        );
        assert_eq!(display_url("http://h"), "http://h");
        let err = endpoint(Provider::OpenAi, "http://u:secretpw@h/v1?k=secretkey").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("Incorrect API key provided: sk-abcdef", Some("sk-abcdef")),
            "Incorrect API key provided: [redacted]"
        );
        assert_eq!(redact("a b", Some("a")), "a b");
        assert_eq!(redact("x", None), "x");
    }

    #[test]
    fn failures() {
        let (m, h) = http_failure(
            Provider::OpenAi,
            "http://h/v1/chat/completions",
            429,
            Some("7"),
            br#"{"error":{"message":"slow down"}}"#,
        );
        assert!(
            m.contains("rate-limiting") && m.contains("7 s") && m.contains("slow down"),
            "{m}"
        );
        assert!(h.is_some());
        let (m, _) = http_failure(Provider::Anthropic, "http://h/v1/messages", 500, None, b"");
        assert!(m.contains("HTTP 500"), "{m}");
        let (m, _) = http_failure(
            Provider::Anthropic,
            "http://h/v1/messages",
            529,
            None,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(m.contains("Overloaded"), "{m}");
        let (m, _) = http_failure(
            Provider::OpenAi,
            "http://h/x",
            404,
            None,
            b"<html>\nnot found</html>",
        );
        assert!(m.contains("<html> not found"), "{m}");
        assert_eq!(retry_after_text("1.5").as_deref(), Some("2 s"));
        assert!(retry_after_text("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .starts_with("at Wed"));
        assert_eq!(retry_after_text(" "), None);
    }

    proptest::proptest! {
        #[test]
        fn url_handling_never_panics_nor_shows_user_info(
            user in "[a-z]{1,8}", pw in "[A-Za-z0-9]{6,12}", host in "[a-z0-9.:-]{0,20}",
            tail in "\\PC{0,40}",
        ) {
            let url = format!("https://{user}:{pw}@{host}/{tail}");
            let needle = format!(":{pw}@");
            let shown = display_url(&url);
            proptest::prop_assert!(!shown.contains(&needle), "{}", shown);
            if let Err(msg) = endpoint(Provider::OpenAi, &url) {
                proptest::prop_assert!(!msg.contains(&needle), "{}", msg);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), status in 100u16..600) {
            let _ = endpoint(Provider::Anthropic, &s);
            let _ = display_url(&s);
            let _ = retry_after_text(&s);
            let _ = redact(&s, Some("secret-key"));
            let _ = http_failure(Provider::OpenAi, &s, status, Some(&s), &body);
            let _ = http_failure(Provider::Anthropic, &s, status, None, &body);
        }
    }

    #[test]
    fn providers() {
        assert_eq!(Provider::parse(" OpenAI "), Some(Provider::OpenAi));
        assert_eq!(Provider::parse("anthropic"), Some(Provider::Anthropic));
        assert_eq!(Provider::parse("gemini"), None);
    }
}
