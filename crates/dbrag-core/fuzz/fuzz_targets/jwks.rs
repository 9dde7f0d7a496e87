//! Public keys and public-key tokens (dbrag_core::jwt). First byte = mode;
//! even: the rest is a JWKS document for Jwks::parse; odd: the rest is a
//! token verified against a fixed document holding one RSA, one P-256 and
//! one Ed25519 key (made with Python's cryptography package), next to an
//! HS256 secret. Seeds are valid tokens for each key, so mutations reach
//! the key lookup, the key-type check and the signature verifiers.
#![no_main]

use std::sync::OnceLock;

use dbrag_core::jwt::{verify, Jwks, Verifier, MAX_JWKS_KEYS};
use libfuzzer_sys::fuzz_target;

const DOC: &str = r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": "pjwgXrgNs0pJPjM3k6Xq2EvZAs8EAFA7bFyK1hh4LShEj_ugem8FypRtpnjW3LJcnCifGMGk4e9Wfonu90tdgbmALwbevfSvGbHqVAmCtAcyu0apfm2SDHz2lteaGiE4JbviKHBhhTYMgP6Llp87OkMigAUK84L5-CIdG3MIWXpg0dQzusXXD0tXcPUcNUj15HSAu0A3cPnQbbOr_soxZO-teUnxQfDOixVy-fr7pClTOwyxcGl1FlGx3_kSUY8ZfqhNQOMqhIOBGc_FqE-VMlAq_spxzJJbAYtGZnyrUiTy_4X2SXeHWTMLlosXmrKt-7BswBjxNZXB7liEaRvGbQ", "e": "AQAB"}, {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "33Agze_FZa_NHDHYUKJRFuMPevaiPUoTfeR-ttFJkCU", "y": "7CNz2lpLUfNjwDuX1AjmJVQT1QF0Ia1KHXcnwtuGwss"}, {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "pTh2PnaE1j92aL4xXXPMl_gbZVL7_T_fKDXbstkXztw"}, {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "pjwgXrgNs0pJPjM3k6Xq2EvZAs8EAFA7bFyK1hh4LShEj_ugem8FypRtpnjW3LJcnCifGMGk4e9Wfonu90tdgbmALwbevfSvGbHqVAmCtAcyu0apfm2SDHz2lteaGiE4JbviKHBhhTYMgP6Llp87OkMigAUK84L5-CIdG3MIWXpg0dQzusXXD0tXcPUcNUj15HSAu0A3cPnQbbOr_soxZO-teUnxQfDOixVy-fr7pClTOwyxcGl1FlGx3_kSUY8ZfqhNQOMqhIOBGc_FqE-VMlAq_spxzJJbAYtGZnyrUiTy_4X2SXeHWTMLlosXmrKt-7BswBjxNZXB7liEaRvGbQ", "e": "AQAB"}]}"#;
const NOW: i64 = 1_700_000_000;

fn keys() -> &'static Jwks {
    static KEYS: OnceLock<Jwks> = OnceLock::new();
    KEYS.get_or_init(|| Jwks::parse(DOC.as_bytes()).expect("the fixed document parses"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(k) = Jwks::parse(rest) {
            // A parsed document has usable keys, within bounds, kids unique.
            assert!(!k.keys().is_empty() && k.keys().len() <= MAX_JWKS_KEYS);
            for key in k.keys() {
                assert!(std::ptr::eq(k.get(key.kid()).expect("own kid"), key));
            }
        }
        return;
    }
    let Ok(token) = std::str::from_utf8(rest) else {
        return;
    };
    let v = Verifier {
        hs256_secret: Some(b"fuzz-secret-0123456789abcdef"),
        public_keys: Some(keys()),
        ..Default::default()
    };
    if let Ok(claims) = verify(token, &v, NOW) {
        assert_eq!(claims.tenant_id.len(), 36);
        assert!(NOW < claims.exp);
        // Without the public keys, only HS256 could have verified.
        let hs_only = Verifier {
            hs256_secret: v.hs256_secret,
            ..Default::default()
        };
        let header = dbrag_core::jwt::token_header(token).expect("verified header");
        assert_eq!(
            verify(token, &hs_only, NOW).is_ok(),
            header.alg == dbrag_core::jwt::Alg::Hs256
        );
    }
});
