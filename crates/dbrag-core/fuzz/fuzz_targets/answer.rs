//! The model's reply (dbrag_core::answer): provider response bodies and the
//! SQL located in free text. A model, or whatever answers on its URL, is
//! untrusted: nothing here may panic on what it sends.
#![no_main]

use dbrag_core::answer::{
    extract_sql, parse_anthropic_messages, parse_openai_chat, MAX_ANSWER_LEN,
};
use dbrag_core::llmhttp::{display_url, endpoint, http_failure, retry_after_text, Provider};
use libfuzzer_sys::fuzz_target;

fn check_sql(text: &str) {
    if let Ok(sql) = extract_sql(text) {
        assert!(!sql.is_empty());
        assert!(text.len() <= MAX_ANSWER_LEN);
        assert!(!sql.ends_with(';'), "{sql:?}");
        assert_eq!(sql.trim(), sql);
    }
}

fuzz_target!(|data: &[u8]| {
    for reply in [parse_openai_chat(data), parse_anthropic_messages(data)]
        .into_iter()
        .flatten()
    {
        assert!(!reply.text.trim().is_empty());
        check_sql(&reply.text);
    }
    let text = std::str::from_utf8(data).ok();
    if let Some(text) = text {
        check_sql(text);
        let _ = retry_after_text(text);
        let _ = display_url(text);
    }
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let _ = http_failure(provider, "http://127.0.0.1:1/v1", 429, text, data);
        let _ = http_failure(provider, "http://u:p@127.0.0.1:1/v1", 500, None, data);
        if let Some(text) = text {
            let _ = endpoint(provider, text);
        }
    }
});
