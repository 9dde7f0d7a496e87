//! Compact JWS (HS256 only) verification and signing for tenant tokens.
//!
//! The verifier is deliberately narrow: one algorithm, canonical base64url,
//! the signature checked in constant time before any payload byte is parsed,
//! and a fixed set of claims. Anything unexpected is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes; bounds the work done on hostile input.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The claims of a verified tenant token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Canonical UUID of the tenant, lowercased.
    pub tenant_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: Option<i64>,
    /// Not-before, seconds since the Unix epoch.
    pub nbf: Option<i64>,
    /// Optional role name chosen by the issuer.
    pub role: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No (or an empty) signing secret is configured.
    NoSecret,
    /// The token is not a well-formed compact JWS.
    Malformed(&'static str),
    /// The header names an algorithm other than HS256 (truncated to 32 chars).
    UnsupportedAlgorithm(String),
    /// The HMAC does not match.
    BadSignature,
    /// `now >= exp`.
    Expired,
    /// `now < nbf`.
    NotYetValid,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim is present but has the wrong type or shape.
    InvalidClaim(&'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NoSecret => write!(f, "no token signing secret is configured"),
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::UnsupportedAlgorithm(alg) => write!(
                f,
                "unsupported token algorithm {alg:?} (only HS256 is accepted)"
            ),
            TokenError::BadSignature => write!(f, "token signature is invalid"),
            TokenError::Expired => write!(f, "token has expired"),
            TokenError::NotYetValid => write!(f, "token is not valid yet (nbf is in the future)"),
            TokenError::MissingClaim(c) => write!(f, "token is missing the {c:?} claim"),
            TokenError::InvalidClaim(c) => write!(f, "token claim {c:?} is invalid"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Verifies an HS256 compact JWS against `secret` at time `now_unix` and returns its claims.
/// The signature is checked in constant time before the payload is parsed.
pub fn verify_hs256(token: &str, secret: &[u8], now_unix: i64) -> Result<Claims, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    if token.is_empty() {
        return Err(TokenError::Malformed("token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "token must have exactly three segments",
        ));
    };

    let header = decode_segment(h64, "header is not canonical base64url")?;
    check_header(&header)?;

    let signature = decode_segment(s64, "signature is not canonical base64url")?;
    // Signed input is the ASCII text "header.payload", exactly as received.
    let signed_len = h64.len() + 1 + p64.len();
    let signed = token
        .get(..signed_len)
        .ok_or(TokenError::Malformed("token segments are inconsistent"))?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
    mac.update(signed.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;

    // Only now is the payload trusted enough to parse.
    let payload = decode_segment(p64, "payload is not canonical base64url")?;
    let claims = parse_claims(&payload)?;
    if now_unix >= claims.exp {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if now_unix < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(claims)
}

/// Signs `claims` (a JSON object) as an HS256 compact JWS with header `{"alg":"HS256","typ":"JWT"}`.
/// Does not validate the claims, so tests can mint deliberately bad tokens.
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    if !claims.is_object() {
        return Err(TokenError::Malformed("claims must be a JSON object"));
    }
    let payload = serde_json::to_vec(claims)
        .map_err(|_| TokenError::Malformed("claims must be a JSON object"))?;
    let mut token = String::new();
    token.push_str(&URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
    mac.update(token.as_bytes());
    let sig = mac.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

/// Decodes one segment; the engine refuses padding, '+', '/' and non-zero trailing bits,
/// so every accepted segment has exactly one spelling.
fn decode_segment(seg: &str, why: &'static str) -> Result<Vec<u8>, TokenError> {
    if seg.is_empty() {
        return Err(TokenError::Malformed("token has an empty segment"));
    }
    URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| TokenError::Malformed(why))
}

/// Top-level member names of a JSON object text, refusing a name given twice.
///
/// serde_json keeps the last of duplicate members; another parser (an
/// issuer's, a proxy's) may keep the first. A token whose `tenant_id` (or
/// `alg`, `exp`) two parsers could read differently is refused outright
/// (RFC 7515 §5.2 allows either; refusing is the safe one).
struct UniqueMembers;

impl<'de> serde::Deserialize<'de> for UniqueMembers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = UniqueMembers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueMembers, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name) {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(UniqueMembers)
            }
        }
        d.deserialize_map(Names)
    }
}

/// A JSON object with no duplicate top-level member.
/// `messages`: not an object, not JSON, a duplicate member.
fn json_object(
    bytes: &[u8],
    messages: [&'static str; 3],
) -> Result<Map<String, Value>, TokenError> {
    let map = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(TokenError::Malformed(messages[0])),
        Err(_) => return Err(TokenError::Malformed(messages[1])),
    };
    serde_json::from_slice::<UniqueMembers>(bytes)
        .map_err(|_| TokenError::Malformed(messages[2]))?;
    Ok(map)
}

fn check_header(bytes: &[u8]) -> Result<(), TokenError> {
    let header = json_object(
        bytes,
        [
            "header is not a JSON object",
            "header is not valid JSON",
            "header names a member twice",
        ],
    )?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => {
            return Err(TokenError::UnsupportedAlgorithm(truncate(alg, 32)));
        }
        Some(_) => return Err(TokenError::Malformed("header \"alg\" is not a string")),
        None => return Err(TokenError::Malformed("header has no \"alg\"")),
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(TokenError::Malformed("header \"typ\" is not JWT")),
    }
    // RFC 7515 §4.1.11: extensions we do not understand must make us refuse.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "header has \"crit\" extensions, which are not supported",
        ));
    }
    Ok(())
}

fn parse_claims(bytes: &[u8]) -> Result<Claims, TokenError> {
    let obj = json_object(
        bytes,
        [
            "payload is not a JSON object",
            "payload is not valid JSON",
            "payload names a claim twice",
        ],
    )?;
    let tenant_id = match obj.get("tenant_id") {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim("tenant_id")),
        Some(Value::String(s)) => canonical_uuid(s).ok_or(TokenError::InvalidClaim("tenant_id"))?,
        Some(_) => return Err(TokenError::InvalidClaim("tenant_id")),
    };
    let exp = match obj.get("exp") {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim("exp")),
        Some(v) => integer(v).ok_or(TokenError::InvalidClaim("exp"))?,
    };
    let nbf = optional_integer(&obj, "nbf")?;
    let iat = optional_integer(&obj, "iat")?;
    let role = match obj.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(TokenError::InvalidClaim("role")),
    };
    Ok(Claims {
        tenant_id,
        exp,
        iat,
        nbf,
        role,
    })
}

/// Optional numeric claims: absent or null means "not given"; anything else must be an integer.
fn optional_integer(
    obj: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, TokenError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => integer(v).map(Some).ok_or(TokenError::InvalidClaim(name)),
    }
}

/// An i64 written without fraction or exponent (serde_json keeps those as floats).
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Returns the lowercased UUID if `s` is exactly 8-4-4-4-12 hex digits.
fn canonical_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// At most `max` chars of `s`, cut on a char boundary.
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;
    const TENANT: &str = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";

    fn good_claims() -> Value {
        json!({"tenant_id": TENANT, "exp": NOW + 3600, "iat": NOW - 10, "role": "analyst"})
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s.as_bytes())
    }

    fn hs256(input: &str, secret: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Builds a token from raw header/payload JSON text, signed with HS256.
    fn raw_token(header: &str, payload: &str, secret: &[u8]) -> String {
        let signed = format!("{}.{}", b64(header), b64(payload));
        let sig = hs256(&signed, secret);
        format!("{signed}.{sig}")
    }

    #[test]
    fn round_trip() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        let c = verify_hs256(&t, SECRET, NOW).unwrap();
        assert_eq!(c.tenant_id, TENANT.to_ascii_lowercase());
        assert_eq!(c.exp, NOW + 3600);
        assert_eq!(c.iat, Some(NOW - 10));
        assert_eq!(c.nbf, None);
        assert_eq!(c.role.as_deref(), Some("analyst"));
    }

    #[test]
    fn empty_secret() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        assert_eq!(verify_hs256(&t, b"", NOW), Err(TokenError::NoSecret));
        assert_eq!(sign_hs256(&good_claims(), b""), Err(TokenError::NoSecret));
    }

    #[test]
    fn duplicate_members_are_refused() {
        // Regression (attack suite): serde_json kept the last of two
        // tenant_id claims, so a token could name one tenant to a
        // first-wins parser and another to the server.
        let other = "00000000-0000-0000-0000-000000000002";
        let payload = format!(
            r#"{{"tenant_id":"{other}","exp":{},"tenant_id":"{TENANT}"}}"#,
            NOW + 60
        );
        let t = raw_token(r#"{"alg":"HS256"}"#, &payload, SECRET);
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed("payload names a claim twice"))
        );
        let good = good_claims().to_string();
        let t = raw_token(r#"{"alg":"none","alg":"HS256"}"#, &good, SECRET);
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed("header names a member twice"))
        );
        // Nested objects may repeat names of the top level.
        let nested = format!(
            r#"{{"tenant_id":"{TENANT}","exp":{},"ext":{{"exp":1,"tenant_id":2}}}}"#,
            NOW + 60
        );
        assert!(verify_hs256(
            &raw_token(r#"{"alg":"HS256"}"#, &nested, SECRET),
            SECRET,
            NOW
        )
        .is_ok());
    }

    #[test]
    fn alg_none_refused() {
        let payload = good_claims().to_string();
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&payload));
        // The header is judged first, so the refusal names the algorithm.
        assert_eq!(
            verify_hs256(&unsigned, SECRET, NOW),
            Err(TokenError::UnsupportedAlgorithm("none".into()))
        );
        for alg in ["none", "None", "NONE"] {
            let t = raw_token(&format!(r#"{{"alg":"{alg}"}}"#), &payload, SECRET);
            assert_eq!(
                verify_hs256(&t, SECRET, NOW),
                Err(TokenError::UnsupportedAlgorithm(alg.into()))
            );
        }
    }

    #[test]
    fn other_algs_refused_even_with_hs256_signature() {
        let payload = good_claims().to_string();
        for alg in ["HS384", "RS256", "hs256", "HS256 "] {
            let t = raw_token(
                &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
                &payload,
                SECRET,
            );
            assert_eq!(
                verify_hs256(&t, SECRET, NOW),
                Err(TokenError::UnsupportedAlgorithm(alg.into()))
            );
        }
        let t = raw_token(r#"{"typ":"JWT"}"#, &payload, SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        let t = raw_token(r#"{"alg":256}"#, &payload, SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn long_alg_is_truncated() {
        let alg = "X".repeat(500);
        let t = raw_token(&format!(r#"{{"alg":"{alg}"}}"#), "{}", SECRET);
        match verify_hs256(&t, SECRET, NOW) {
            Err(TokenError::UnsupportedAlgorithm(a)) => assert_eq!(a.len(), 32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn typ_and_crit() {
        let payload = good_claims().to_string();
        let t = raw_token(r#"{"alg":"HS256","typ":"jwt"}"#, &payload, SECRET);
        assert!(verify_hs256(&t, SECRET, NOW).is_ok());
        let t = raw_token(r#"{"alg":"HS256","typ":"JOSE"}"#, &payload, SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        let t = raw_token(r#"{"alg":"HS256","crit":["exp"]}"#, &payload, SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn tampered_payload() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let mut evil = good_claims();
        evil["tenant_id"] = json!("00000000-0000-0000-0000-000000000000");
        let forged = format!("{}.{}.{}", parts[0], b64(&evil.to_string()), parts[2]);
        assert_eq!(
            verify_hs256(&forged, SECRET, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_secret() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        assert_eq!(
            verify_hs256(&t, b"another secret", NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_boundaries() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        assert!(verify_hs256(&t, SECRET, NOW + 3599).is_ok());
        assert_eq!(
            verify_hs256(&t, SECRET, NOW + 3600),
            Err(TokenError::Expired)
        );
        assert_eq!(verify_hs256(&t, SECRET, i64::MAX), Err(TokenError::Expired));
    }

    #[test]
    fn nbf_in_future() {
        let claims = json!({"tenant_id": TENANT, "exp": NOW + 3600, "nbf": NOW + 60});
        let t = sign_hs256(&claims, SECRET).unwrap();
        assert_eq!(verify_hs256(&t, SECRET, NOW), Err(TokenError::NotYetValid));
        assert!(verify_hs256(&t, SECRET, NOW + 60).is_ok());
    }

    #[test]
    fn claim_shapes() {
        let cases = [
            (
                json!({"exp": NOW + 10}),
                TokenError::MissingClaim("tenant_id"),
            ),
            (
                json!({"tenant_id": TENANT}),
                TokenError::MissingClaim("exp"),
            ),
            (
                json!({"tenant_id": "tenant-42", "exp": NOW + 10}),
                TokenError::InvalidClaim("tenant_id"),
            ),
            (
                json!({"tenant_id": "3f2504e04f8911d39a0c0305e82c3301", "exp": NOW + 10}),
                TokenError::InvalidClaim("tenant_id"),
            ),
            (
                json!({"tenant_id": "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}", "exp": NOW + 10}),
                TokenError::InvalidClaim("tenant_id"),
            ),
            (
                json!({"tenant_id": 42, "exp": NOW + 10}),
                TokenError::InvalidClaim("tenant_id"),
            ),
            (
                json!({"tenant_id": TENANT, "exp": (NOW + 10) as f64 + 0.5}),
                TokenError::InvalidClaim("exp"),
            ),
            (
                json!({"tenant_id": TENANT, "exp": "tomorrow"}),
                TokenError::InvalidClaim("exp"),
            ),
            (
                json!({"tenant_id": TENANT, "exp": NOW + 10, "nbf": 1.5}),
                TokenError::InvalidClaim("nbf"),
            ),
            (
                json!({"tenant_id": TENANT, "exp": NOW + 10, "iat": "x"}),
                TokenError::InvalidClaim("iat"),
            ),
            (
                json!({"tenant_id": TENANT, "exp": NOW + 10, "role": ["admin"]}),
                TokenError::InvalidClaim("role"),
            ),
        ];
        for (claims, want) in cases {
            let t = sign_hs256(&claims, SECRET).unwrap();
            assert_eq!(verify_hs256(&t, SECRET, NOW), Err(want), "{claims}");
        }
        // Exponent notation is a float in JSON terms: refused.
        let t = raw_token(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"tenant_id":"{TENANT}","exp":1.8e9}}"#),
            SECRET,
        );
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::InvalidClaim("exp"))
        );
        // Payload that is not an object.
        let t = raw_token(r#"{"alg":"HS256"}"#, "[1,2]", SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn padded_or_standard_base64_refused() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        // The HS256 signature is 32 bytes = 43 chars unpadded; add the '=' a padded encoder would.
        let padded = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);
        assert!(matches!(
            verify_hs256(&padded, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        let std_alphabet = t.replace('-', "+").replace('_', "/");
        if std_alphabet != t {
            assert!(verify_hs256(&std_alphabet, SECRET, NOW).is_err());
        }
        let with_plus = format!("{}+.{}.{}", parts[0], parts[1], parts[2]);
        assert!(matches!(
            verify_hs256(&with_plus, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn segment_counts_and_sizes() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        assert!(matches!(
            verify_hs256(&format!("{t}.abc"), SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        let two: Vec<&str> = t.split('.').take(2).collect();
        assert!(matches!(
            verify_hs256(&two.join("."), SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify_hs256("", SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify_hs256("..", SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
        let huge = format!(
            "{}.{}.{}",
            "a".repeat(5000),
            "b".repeat(5000),
            "c".repeat(43)
        );
        assert_eq!(
            verify_hs256(&huge, SECRET, NOW),
            Err(TokenError::Malformed("token is too long"))
        );
    }

    #[test]
    fn non_json_header() {
        let t = format!("{}.{}.{}", b64("not json"), b64("{}"), "AAAA");
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed("header is not valid JSON"))
        );
        let t = raw_token("\"HS256\"", "{}", SECRET);
        assert!(matches!(
            verify_hs256(&t, SECRET, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn display_never_leaks_secret() {
        let t = sign_hs256(&good_claims(), SECRET).unwrap();
        let err = verify_hs256(&t, b"hunter2-hunter2", NOW).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,400}") {
            let _ = verify_hs256(&s, SECRET, NOW);
        }

        #[test]
        fn arbitrary_three_segment_tokens_never_panic(
            a in "[A-Za-z0-9_=+/-]{0,80}",
            b in "[A-Za-z0-9_=+/-]{0,80}",
            c in "[A-Za-z0-9_=+/-]{0,80}",
        ) {
            let _ = verify_hs256(&format!("{a}.{b}.{c}"), SECRET, NOW);
        }

        #[test]
        fn single_byte_change_never_yields_other_claims(
            idx in any::<prop::sample::Index>(),
            byte in 0x20u8..0x7f,
        ) {
            let t = sign_hs256(&good_claims(), SECRET).unwrap();
            let want = verify_hs256(&t, SECRET, NOW).unwrap();
            let mut bytes = t.into_bytes();
            let i = idx.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let changed = String::from_utf8(bytes).unwrap();
            // Canonical base64url and an exact signed input mean any change is refused;
            // the weaker property (never different claims) follows.
            let got = verify_hs256(&changed, SECRET, NOW);
            prop_assert!(got.is_err(), "accepted {:?} (original {:?})", got, want);
        }
    }
}
