//! Tenant tokens (dbrag_core::jwt). Random bytes almost never carry a valid
//! HMAC, so half the inputs are signed here first: that drives the header
//! and claims parsers, which only run once the signature checks out.
//! Input: first byte = mode; mode 0: the rest is the token; otherwise the
//! rest is `header JSON` NUL `payload JSON`, signed with the secret.
#![no_main]

use dbrag_core::jwt::{verify_hs256, MAX_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";
const NOW: i64 = 1_700_000_000;

fn b64(raw: &[u8]) -> String {
    base64_lite::encode(raw)
}

/// base64url without padding, written here so the target does not trust
/// the crate's own encoder.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode(raw: &[u8]) -> String {
        let mut out = String::new();
        for chunk in raw.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

fn check(token: &str) {
    if let Ok(claims) = verify_hs256(token, SECRET, NOW) {
        // A verified token names one canonical, lower-case uuid and has not expired.
        assert_eq!(claims.tenant_id.len(), 36);
        assert!(claims
            .tenant_id
            .bytes()
            .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert!(NOW < claims.exp);
        assert!(claims.nbf.is_none_or(|nbf| nbf <= NOW));
        assert!(token.len() <= MAX_TOKEN_LEN);
    }
    // Another secret refuses everything.
    assert!(verify_hs256(token, b"another-secret", NOW).is_err());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            check(token);
        }
        return;
    }
    let mut parts = rest.splitn(2, |&b| b == 0);
    let header = parts.next().unwrap_or_default();
    let payload = parts.next().unwrap_or_default();
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let sig = hmac_lite::hs256(SECRET, signing_input.as_bytes());
    check(&format!("{signing_input}.{}", b64(&sig)));
});

/// The signature through the crate's dependency, not the crate's own code.
mod hmac_lite {
    use hmac::{Hmac, Mac};
    pub fn hs256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }
}
