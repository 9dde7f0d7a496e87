//! Conninfo rules (dbrag_core::conninfo) on arbitrary keyword/value lists,
//! as libpq's PQconninfoParse hands them over. Input: `key=value` entries
//! separated by NUL bytes.
#![no_main]

use dbrag_core::conninfo::{check_unprivileged, is_socket_host, redact, summarize, FILE_OPTIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options: Vec<(String, String)> = text
        .split('\0')
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = summarize(&options);
    if let Ok(summary) = check_unprivileged(&options) {
        // Accepted: a password, no file option, and every host position TCP.
        assert!(summary
            .password
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty()));
        assert!(!options
            .iter()
            .any(|(k, _)| FILE_OPTIONS.contains(&k.as_str())));
        let last = |key: &str| {
            options
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let hosts: Vec<&str> = last("host")
            .map(|h| h.split(',').collect())
            .unwrap_or_default();
        let addrs: Vec<&str> = last("hostaddr")
            .map(|h| h.split(',').collect())
            .unwrap_or_default();
        assert!(!hosts.is_empty() || !addrs.is_empty());
        for i in 0..hosts.len().max(addrs.len()) {
            let addr = addrs.get(i).map(|a| a.trim()).unwrap_or("");
            if addr.is_empty() {
                assert!(!is_socket_host(hosts.get(i).copied().unwrap_or("")));
            }
        }
        // The password is masked in any message that quotes it.
        if let Some(pw) = summary.password.as_deref() {
            if pw.len() >= 2 && !pw.contains('*') {
                let message = format!("could not connect with {text}");
                assert!(!redact(&message, Some(pw)).contains(pw));
            }
        }
    }
});
