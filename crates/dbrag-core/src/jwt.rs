//! Compact JWS verification and signing for tenant tokens.
//!
//! Two kinds of key: an HS256 secret shared with the application (the
//! server can then also sign, `sign_hs256`), and public keys of an identity
//! provider, given as a JWKS document, for RS256, ES256 and EdDSA tokens
//! (the server holds no signing secret). The verifier is deliberately
//! narrow: four algorithms, each bound to one key type; public keys chosen
//! by `kid` and used only with the algorithm their type implies; canonical
//! base64url; the signature checked before any payload byte is parsed; a
//! fixed set of claims. Anything unexpected is refused.
//!
//! Signatures are RustCrypto's: `rsa` (PKCS#1 v1.5 with SHA-256), `p256`
//! (ECDSA P-256 with SHA-256, JWS's 64-byte r‖s form) and `ed25519-dalek`
//! (strict verification). Only public-key operations run here.

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
    /// Issuer (`iss`), when given.
    pub iss: Option<String>,
    /// Audiences (`aud`, a string or an array of strings); empty when absent.
    pub aud: Vec<String>,
}

/// Most audiences a token may list.
pub const MAX_AUDIENCES: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No (or an empty) signing secret is configured.
    NoSecret,
    /// The token is not a well-formed compact JWS.
    Malformed(&'static str),
    /// The header names an algorithm other than HS256, RS256, ES256 or EdDSA (truncated to 32 chars).
    UnsupportedAlgorithm(String),
    /// A supported algorithm for which no key is configured.
    AlgorithmNotConfigured(Alg),
    /// A public-key token without a `kid` header.
    MissingKeyId,
    /// No configured public key has this `kid` (truncated to 64 chars).
    UnknownKeyId(String),
    /// The `kid` names a key of another type than the token's algorithm needs.
    KeyTypeMismatch { kid: String, alg: Alg },
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
    /// An issuer is required and `iss` does not name it.
    WrongIssuer,
    /// An audience is required and `aud` does not include it.
    WrongAudience,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NoSecret => write!(f, "no token signing secret is configured"),
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::UnsupportedAlgorithm(alg) => write!(
                f,
                "unsupported token algorithm {alg:?} (accepted: HS256, RS256, ES256, EdDSA)"
            ),
            TokenError::AlgorithmNotConfigured(alg) => write!(
                f,
                "{} tokens are not accepted: no key for them is configured",
                alg.name()
            ),
            TokenError::MissingKeyId => write!(
                f,
                "token header has no \"kid\", which names the public key to verify it with"
            ),
            TokenError::UnknownKeyId(kid) => write!(f, "no configured public key has kid {kid:?}"),
            TokenError::KeyTypeMismatch { kid, alg } => write!(
                f,
                "key {kid:?} is not a {} key ({} tokens need {})",
                alg.name(),
                alg.name(),
                alg.key_type()
            ),
            TokenError::BadSignature => write!(f, "token signature is invalid"),
            TokenError::Expired => write!(f, "token has expired"),
            TokenError::NotYetValid => write!(f, "token is not valid yet (nbf is in the future)"),
            TokenError::MissingClaim(c) => write!(f, "token is missing the {c:?} claim"),
            TokenError::InvalidClaim(c) => write!(f, "token claim {c:?} is invalid"),
            TokenError::WrongIssuer => {
                write!(f, "token claim \"iss\" does not name the expected issuer")
            }
            TokenError::WrongAudience => write!(
                f,
                "token claim \"aud\" does not include the expected audience"
            ),
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
    verify(
        token,
        &Verifier {
            hs256_secret: Some(secret),
            ..Default::default()
        },
        now_unix,
    )
}

/// The keys a token may be verified with. An algorithm whose key is absent
/// is refused with [`TokenError::AlgorithmNotConfigured`].
#[derive(Clone, Copy, Default)]
pub struct Verifier<'a> {
    /// HS256 secret; an empty one counts as absent.
    pub hs256_secret: Option<&'a [u8]>,
    /// Public keys for RS256, ES256 and EdDSA.
    pub public_keys: Option<&'a Jwks>,
    /// When set, `iss` must equal it.
    pub issuer: Option<&'a str>,
    /// When set, `aud` must include it.
    pub audience: Option<&'a str>,
}

/// Algorithm and key id named by a token's header (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
}

/// Longest `kid` accepted, in bytes.
pub const MAX_KID_LEN: usize = 256;

/// Splits a token into its three segments after the size checks.
fn segments(token: &str) -> Result<(&str, &str, &str), TokenError> {
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
    Ok((h64, p64, s64))
}

/// The header of a token, parsed and checked but NOT verified: for audit
/// rows and error messages only, never for a decision.
pub fn token_header(token: &str) -> Result<Header, TokenError> {
    let (h64, _, _) = segments(token)?;
    check_header(&decode_segment(h64, "header is not canonical base64url")?)
}

/// Verifies a compact JWS with the key its header selects (HS256: the
/// secret; RS256/ES256/EdDSA: the public key named by `kid`, which must be
/// of the type the algorithm needs) and returns its claims. The payload is
/// parsed only after the signature checks out.
pub fn verify(token: &str, keys: &Verifier<'_>, now_unix: i64) -> Result<Claims, TokenError> {
    let (h64, p64, s64) = segments(token)?;
    let header = check_header(&decode_segment(h64, "header is not canonical base64url")?)?;
    let signature = decode_segment(s64, "signature is not canonical base64url")?;
    // Signed input is the ASCII text "header.payload", exactly as received.
    let signed_len = h64.len() + 1 + p64.len();
    let signed = token
        .get(..signed_len)
        .ok_or(TokenError::Malformed("token segments are inconsistent"))?;
    match header.alg {
        Alg::Hs256 => {
            let secret = keys
                .hs256_secret
                .filter(|s| !s.is_empty())
                .ok_or(TokenError::AlgorithmNotConfigured(Alg::Hs256))?;
            let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature)
                .map_err(|_| TokenError::BadSignature)?;
        }
        alg => {
            let jwks = keys
                .public_keys
                .ok_or(TokenError::AlgorithmNotConfigured(alg))?;
            let kid = header.kid.as_deref().ok_or(TokenError::MissingKeyId)?;
            let key = jwks
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKeyId(truncate(kid, 64)))?;
            if key.alg() != alg {
                return Err(TokenError::KeyTypeMismatch {
                    kid: truncate(kid, 64),
                    alg,
                });
            }
            if !key.verifies(signed.as_bytes(), &signature) {
                return Err(TokenError::BadSignature);
            }
        }
    }

    // Only now is the payload trusted enough to parse.
    let payload = decode_segment(p64, "payload is not canonical base64url")?;
    let claims = parse_claims(&payload)?;
    check_claims(&claims, keys, now_unix)?;
    Ok(claims)
}

/// The checks of a verified token's claims that depend on the time and the
/// configuration: expiry, not-before, issuer and audience. `verify` runs
/// them; a caller that remembers verified claims runs them at every use.
pub fn check_claims(claims: &Claims, keys: &Verifier<'_>, now_unix: i64) -> Result<(), TokenError> {
    if now_unix >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now_unix < nbf) {
        return Err(TokenError::NotYetValid);
    }
    if let Some(want) = keys.issuer {
        if claims.iss.as_deref() != Some(want) {
            return Err(TokenError::WrongIssuer);
        }
    }
    if let Some(want) = keys.audience {
        if !claims.aud.iter().any(|a| a == want) {
            return Err(TokenError::WrongAudience);
        }
    }
    Ok(())
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

fn check_header(bytes: &[u8]) -> Result<Header, TokenError> {
    let header = json_object(
        bytes,
        [
            "header is not a JSON object",
            "header is not valid JSON",
            "header names a member twice",
        ],
    )?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => match Alg::from_name(alg) {
            Some(a) => a,
            None => return Err(TokenError::UnsupportedAlgorithm(truncate(alg, 32))),
        },
        Some(_) => return Err(TokenError::Malformed("header \"alg\" is not a string")),
        None => return Err(TokenError::Malformed("header has no \"alg\"")),
    };
    match header.get("typ") {
        None => {}
        // RFC 9068 access tokens say at+jwt.
        Some(Value::String(t))
            if ["JWT", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|ok| t.eq_ignore_ascii_case(ok)) => {}
        Some(_) => return Err(TokenError::Malformed("header \"typ\" is not JWT")),
    }
    // RFC 7515 §4.1.11: extensions we do not understand must make us refuse.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed(
            "header has \"crit\" extensions, which are not supported",
        ));
    }
    // Keys come only from the configured file, never from the token.
    for embedded in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(embedded) {
            return Err(TokenError::Malformed(
                "header carries a key or key URL (jwk, jku, x5u, x5c), which is not accepted",
            ));
        }
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => {
            return Err(TokenError::Malformed(
                "header \"kid\" is not a short string",
            ))
        }
    };
    Ok(Header { alg, kid })
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
    let iss = match obj.get("iss") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(TokenError::InvalidClaim("iss")),
    };
    let aud = match obj.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) if list.len() <= MAX_AUDIENCES => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::InvalidClaim("aud"))?,
        Some(_) => return Err(TokenError::InvalidClaim("aud")),
    };
    Ok(Claims {
        tenant_id,
        exp,
        iat,
        nbf,
        role,
        iss,
        aud,
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

// ---------------------------------------------------------------- algorithms and public keys

/// The signature algorithms a token may name, each bound to one key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC-SHA-256 with the shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA key of 2048 to 4096 bits.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The name a JWS header uses (case-sensitive, RFC 7518).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn from_name(name: &str) -> Option<Alg> {
        [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa]
            .into_iter()
            .find(|a| a.name() == name)
    }

    fn key_type(self) -> &'static str {
        match self {
            Alg::Hs256 => "the shared secret",
            Alg::Rs256 => "an RSA key",
            Alg::Es256 => "an EC P-256 key",
            Alg::EdDsa => "an OKP Ed25519 key",
        }
    }
}

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_LEN: usize = 256 * 1024;
/// Most keys one document may list.
pub const MAX_JWKS_KEYS: usize = 64;

#[derive(Clone)]
enum PublicKey {
    Rsa(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// One public key of a JWKS document.
#[derive(Clone)]
pub struct Jwk {
    kid: String,
    key: PublicKey,
}

impl Jwk {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self.key {
            PublicKey::Rsa(_) => Alg::Rs256,
            PublicKey::P256(_) => Alg::Es256,
            PublicKey::Ed25519(_) => Alg::EdDsa,
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier as _;
        match &self.key {
            PublicKey::Rsa(vk) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| vk.verify(message, &sig).is_ok()),
            // JWS carries r‖s (RFC 7518 §3.4), not DER.
            PublicKey::P256(vk) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify(message, &sig).is_ok()),
            PublicKey::Ed25519(vk) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_strict(message, &sig).is_ok()),
        }
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jwk({:?}, {})", self.kid, self.alg().name())
    }
}

/// The signing keys of a JWKS document (RFC 7517), by `kid`.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
    skipped: usize,
}

/// Why a JWKS document was refused. The text names the key and the reason,
/// never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(pub String);

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwksError {}

fn jwks_err(kid: &str, why: impl fmt::Display) -> JwksError {
    JwksError(format!("key {:?}: {why}", truncate(kid, 64)))
}

impl Jwks {
    /// Parses a JWKS document: `{"keys": [ ... ]}`.
    ///
    /// Keys this verifier cannot use with a signature algorithm it accepts
    /// (`use` other than `sig`, `key_ops` without `verify`, other curves,
    /// RSA keys marked for another algorithm) are skipped, so a provider's
    /// document can be used as published. A usable key that is malformed,
    /// weak (RSA under 2048 bits), carries private members, or repeats a
    /// `kid` makes the whole document refused, as does a symmetric (`oct`)
    /// key: HS256 uses `dbrag.jwt_secret`, not a file of public keys.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
        if bytes.len() > MAX_JWKS_LEN {
            return Err(JwksError(format!(
                "the document is larger than {MAX_JWKS_LEN} bytes"
            )));
        }
        let doc = json_object(
            bytes,
            [
                "the document is not a JSON object",
                "the document is not valid JSON",
                "the document names a member twice",
            ],
        )
        .map_err(|e| JwksError(e.to_string().replace("malformed token: ", "")))?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError("the document has no \"keys\" array".to_string()));
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError(format!(
                "the document lists more than {MAX_JWKS_KEYS} keys"
            )));
        }
        let mut out = Jwks::default();
        for (i, entry) in entries.iter().enumerate() {
            let Value::Object(m) = entry else {
                return Err(JwksError(format!("keys[{i}] is not a JSON object")));
            };
            match parse_jwk(m)? {
                Some(jwk) => {
                    if out.keys.iter().any(|k| k.kid == jwk.kid) {
                        return Err(jwks_err(&jwk.kid, "the kid is given twice"));
                    }
                    out.keys.push(jwk);
                }
                None => out.skipped += 1,
            }
        }
        if out.keys.is_empty() {
            return Err(JwksError(
                "the document holds no usable signing key (RS256, ES256 or EdDSA)".to_string(),
            ));
        }
        Ok(out)
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The usable keys, in document order.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// How many entries were skipped as not usable for signatures here.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

fn member<'a>(m: &'a Map<String, Value>, kid: &str, name: &str) -> Result<&'a str, JwksError> {
    match m.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(jwks_err(kid, format!("\"{name}\" is not a string"))),
        None => Err(jwks_err(kid, format!("\"{name}\" is missing"))),
    }
}

fn member_bytes(m: &Map<String, Value>, kid: &str, name: &str) -> Result<Vec<u8>, JwksError> {
    URL_SAFE_NO_PAD
        .decode(member(m, kid, name)?)
        .map_err(|_| jwks_err(kid, format!("\"{name}\" is not canonical base64url")))
}

/// One entry: Some(key), None when it is not for us, or an error.
fn parse_jwk(m: &Map<String, Value>) -> Result<Option<Jwk>, JwksError> {
    let kid = match m.get("kid") {
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => k.clone(),
        Some(Value::String(_)) => {
            return Err(JwksError(format!(
                "a key's \"kid\" is empty or longer than {MAX_KID_LEN} bytes"
            )))
        }
        _ => {
            return Err(JwksError(
                "every key needs a \"kid\" (tokens select keys by kid)".to_string(),
            ))
        }
    };
    let kty = member(m, &kid, "kty")?;
    if kty == "oct" {
        return Err(jwks_err(
            &kid,
            "symmetric (oct) keys do not belong in the public key file; HS256 uses dbrag.jwt_secret",
        ));
    }
    // Private parts of RSA, EC and OKP keys.
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        if m.contains_key(private) {
            return Err(jwks_err(
                &kid,
                format!("holds the private member \"{private}\"; give public keys only"),
            ));
        }
    }
    match m.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Ok(None),
    }
    match m.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|o| o == "verify") => {}
        Some(_) => return Ok(None),
    }
    let (alg, key) = match kty {
        "RSA" => {
            let n = member_bytes(m, &kid, "n")?;
            let e = member_bytes(m, &kid, "e")?;
            let n = rsa::BigUint::from_bytes_be(&n);
            let e = rsa::BigUint::from_bytes_be(&e);
            let bits = n.bits();
            if !(2048..=4096).contains(&bits) {
                return Err(jwks_err(
                    &kid,
                    format!("RSA modulus of {bits} bits (2048 to 4096 accepted)"),
                ));
            }
            let public = rsa::RsaPublicKey::new(n, e)
                .map_err(|e| jwks_err(&kid, format!("not a usable RSA public key: {e}")))?;
            (
                Alg::Rs256,
                PublicKey::Rsa(Box::new(rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public))),
            )
        }
        "EC" => {
            if member(m, &kid, "crv")? != "P-256" {
                return Ok(None);
            }
            let x = member_bytes(m, &kid, "x")?;
            let y = member_bytes(m, &kid, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(jwks_err(&kid, "P-256 coordinates must be 32 bytes each"));
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| jwks_err(&kid, "the point is not on the P-256 curve"))?;
            (Alg::Es256, PublicKey::P256(vk))
        }
        "OKP" => {
            if member(m, &kid, "crv")? != "Ed25519" {
                return Ok(None);
            }
            let x = member_bytes(m, &kid, "x")?;
            let x: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| jwks_err(&kid, "an Ed25519 key is 32 bytes"))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| jwks_err(&kid, "not a valid Ed25519 public key"))?;
            if vk.is_weak() {
                return Err(jwks_err(&kid, "a weak (small-order) Ed25519 key"));
            }
            (Alg::EdDsa, PublicKey::Ed25519(vk))
        }
        _ => return Ok(None),
    };
    match m.get("alg") {
        None => {}
        Some(Value::String(a)) if a == alg.name() => {}
        // e.g. an RSA key published for PS256 or RS512: not ours to use.
        Some(_) => return Ok(None),
    }
    Ok(Some(Jwk { kid, key }))
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
        for alg in [
            "HS384", "RS512", "hs256", "HS256 ", "rs256", "ES384", "EdDSA ",
        ] {
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

    // ------------------------------------------------ public keys (JWKS)
    // Keys and tokens made with Python's `cryptography` package, so the
    // verifier is checked against an independent signer. Claims:
    // tenant 3f2504e0-…, exp 4102444800.
    const JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": "pjwgXrgNs0pJPjM3k6Xq2EvZAs8EAFA7bFyK1hh4LShEj_ugem8FypRtpnjW3LJcnCifGMGk4e9Wfonu90tdgbmALwbevfSvGbHqVAmCtAcyu0apfm2SDHz2lteaGiE4JbviKHBhhTYMgP6Llp87OkMigAUK84L5-CIdG3MIWXpg0dQzusXXD0tXcPUcNUj15HSAu0A3cPnQbbOr_soxZO-teUnxQfDOixVy-fr7pClTOwyxcGl1FlGx3_kSUY8ZfqhNQOMqhIOBGc_FqE-VMlAq_spxzJJbAYtGZnyrUiTy_4X2SXeHWTMLlosXmrKt-7BswBjxNZXB7liEaRvGbQ", "e": "AQAB"}, {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "33Agze_FZa_NHDHYUKJRFuMPevaiPUoTfeR-ttFJkCU", "y": "7CNz2lpLUfNjwDuX1AjmJVQT1QF0Ia1KHXcnwtuGwss"}, {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "pTh2PnaE1j92aL4xXXPMl_gbZVL7_T_fKDXbstkXztw"}, {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "pjwgXrgNs0pJPjM3k6Xq2EvZAs8EAFA7bFyK1hh4LShEj_ugem8FypRtpnjW3LJcnCifGMGk4e9Wfonu90tdgbmALwbevfSvGbHqVAmCtAcyu0apfm2SDHz2lteaGiE4JbviKHBhhTYMgP6Llp87OkMigAUK84L5-CIdG3MIWXpg0dQzusXXD0tXcPUcNUj15HSAu0A3cPnQbbOr_soxZO-teUnxQfDOixVy-fr7pClTOwyxcGl1FlGx3_kSUY8ZfqhNQOMqhIOBGc_FqE-VMlAq_spxzJJbAYtGZnyrUiTy_4X2SXeHWTMLlosXmrKt-7BswBjxNZXB7liEaRvGbQ", "e": "AQAB"}]}"#;
    const RS: &str = r#"eyJhbGciOiAiUlMyNTYiLCAia2lkIjogInJzYS0xIiwgInR5cCI6ICJKV1QifQ.eyJ0ZW5hbnRfaWQiOiAiM2YyNTA0ZTAtNGY4OS0xMWQzLTlhMGMtMDMwNWU4MmMzMzAxIiwgImV4cCI6IDQxMDI0NDQ4MDAsICJpYXQiOiAxNzAwMDAwMDAwfQ.FgPvDEN7WJPrrzvdrnGOFIfB7C-c2n6BR_G6FbuHq9m_0G_W2gqW6uhNmnCjAz7cmhmy-yviYbTgC2DtxIruKEA-WoG_0G_zXirECIEjuqKdYoVfx8T_ezjhaUxMuZumBpPhTYJH1VnC9O2kcPUlAGHe2hEgFZBFNhJFFkwKu8ig5P4h4ZdyzqvDzd6uV81Jo2d5z1jLJUG0nOHnUg7-elAyKQkMWZnEM-tqbbBnXHLy_cGQ-8JnPip4wxO9RLHoDoU0P57rYzdrxH_ZFwtrTvkXZmWrA5CUiGl8OPLCfhpDkX_UQob3OPVFC0I3plc9KgJ6xNlnv-w273F84DWRuw"#;
    const ES: &str = r#"eyJhbGciOiAiRVMyNTYiLCAia2lkIjogImVjLTEiLCAidHlwIjogIkpXVCJ9.eyJ0ZW5hbnRfaWQiOiAiM2YyNTA0ZTAtNGY4OS0xMWQzLTlhMGMtMDMwNWU4MmMzMzAxIiwgImV4cCI6IDQxMDI0NDQ4MDAsICJpYXQiOiAxNzAwMDAwMDAwfQ.CyR40tVj_yVoLO1ZvCDv-Ict5abfOoq23ea9TJa5oqNm8sS_GDQ5feQuiXJZeACFM1KlJXHL9Cbq1VBrq81ApA"#;
    const ED: &str = r#"eyJhbGciOiAiRWREU0EiLCAia2lkIjogImVkLTEiLCAidHlwIjogIkpXVCJ9.eyJ0ZW5hbnRfaWQiOiAiM2YyNTA0ZTAtNGY4OS0xMWQzLTlhMGMtMDMwNWU4MmMzMzAxIiwgImV4cCI6IDQxMDI0NDQ4MDAsICJpYXQiOiAxNzAwMDAwMDAwfQ.8SpAR_xTsEFUgHkFm3DIzwBx-eqPCdKwwexKubAaTFYQs68fmRRgloLEn39sefA_xhnHrfuVVyj-qrteAUSJAg"#;
    const WEAK: &str = r#"{"keys": [{"kty": "RSA", "kid": "weak", "n": "yH-dF8jTLt46KuSEjp8RSOP1KBgygeZMRmrpxogC7WiBVicdL_-DYS_rFZPrsfF6oHnfkwhPAZ4f29NFLtkp1XI3i3Smj8KwIR7j6B4MfymEie0zqFsSnyTxKrCWRaYtuQwuVwWdgrG2HnXulw17nkECeUXn4ay_si2vVm223Hs", "e": "AQAB"}]}"#;

    fn jwks() -> Jwks {
        Jwks::parse(JWKS.as_bytes()).unwrap()
    }

    fn with_keys(token: &str, jwks: &Jwks) -> Result<Claims, TokenError> {
        verify(
            token,
            &Verifier {
                hs256_secret: Some(SECRET),
                public_keys: Some(jwks),
                ..Default::default()
            },
            NOW,
        )
    }

    /// Re-signs nothing: swaps the header of `token`, keeping payload and signature.
    fn with_header(token: &str, header: &str) -> String {
        let mut parts = token.splitn(2, '.');
        parts.next();
        format!("{}.{}", b64(header), parts.next().unwrap())
    }

    #[test]
    fn jwks_parse_keeps_signing_keys_and_skips_others() {
        let k = jwks();
        let kids: Vec<(&str, Alg)> = k.keys().iter().map(|j| (j.kid(), j.alg())).collect();
        assert_eq!(
            kids,
            vec![
                ("rsa-1", Alg::Rs256),
                ("ec-1", Alg::Es256),
                ("ed-1", Alg::EdDsa)
            ]
        );
        assert_eq!(k.skipped(), 1, "the use=enc key is skipped");
    }

    #[test]
    fn public_key_tokens_verify() {
        let k = jwks();
        for t in [RS, ES, ED] {
            let c = with_keys(t, &k).unwrap();
            assert_eq!(c.tenant_id, "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
            assert_eq!(token_header(t).unwrap().kid.is_some(), true);
        }
        // Without public keys configured they are refused, by name.
        assert_eq!(
            verify_hs256(RS, SECRET, NOW),
            Err(TokenError::AlgorithmNotConfigured(Alg::Rs256))
        );
        // Expiry still applies.
        assert_eq!(
            verify(
                ES,
                &Verifier {
                    hs256_secret: None,
                    public_keys: Some(&k),
                    ..Default::default()
                },
                4102444800
            ),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn public_key_signatures_bind_header_and_payload() {
        let k = jwks();
        for t in [RS, ES, ED] {
            // One changed payload byte.
            let mut parts: Vec<String> = t.split('.').map(String::from).collect();
            let payload = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
            let forged = String::from_utf8(payload)
                .unwrap()
                .replace("3f2504e0", "3f2504e1");
            parts[1] = b64(&forged);
            assert_eq!(
                with_keys(&parts.join("."), &k),
                Err(TokenError::BadSignature)
            );
            // A truncated or empty signature.
            let sig = t.rsplit('.').next().unwrap();
            let cut = &t[..t.len() - sig.len() + 8];
            assert_eq!(with_keys(cut, &k), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn kid_selects_the_key_and_its_type_must_fit() {
        let k = jwks();
        // An ES256 signature presented as RS256 under the EC key's kid.
        let t = with_header(ES, r#"{"alg":"RS256","kid":"ec-1"}"#);
        assert_eq!(
            with_keys(&t, &k),
            Err(TokenError::KeyTypeMismatch {
                kid: "ec-1".into(),
                alg: Alg::Rs256
            })
        );
        // EdDSA header naming the RSA key.
        let t = with_header(ED, r#"{"alg":"EdDSA","kid":"rsa-1"}"#);
        assert!(matches!(
            with_keys(&t, &k),
            Err(TokenError::KeyTypeMismatch { .. })
        ));
        // Another key of the right type: signature fails.
        let t = with_header(RS, r#"{"alg":"RS256","kid":"enc-1"}"#);
        assert_eq!(
            with_keys(&t, &k),
            Err(TokenError::UnknownKeyId("enc-1".into()))
        );
        let t = with_header(ES, r#"{"alg":"ES256"}"#);
        assert_eq!(with_keys(&t, &k), Err(TokenError::MissingKeyId));
        let t = with_header(ES, r#"{"alg":"ES256","kid":"nope"}"#);
        assert_eq!(
            with_keys(&t, &k),
            Err(TokenError::UnknownKeyId("nope".into()))
        );
        // A key embedded in the header is never used.
        let t = with_header(ES, r#"{"alg":"ES256","kid":"ec-1","jwk":{"kty":"EC"}}"#);
        assert!(matches!(with_keys(&t, &k), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn hs256_signed_with_public_key_bytes_is_refused() {
        let k = jwks();
        let payload = URL_SAFE_NO_PAD
            .decode(RS.split('.').nth(1).unwrap())
            .unwrap();
        let payload = String::from_utf8(payload).unwrap();
        // The classic confusion: the public key (its JWKS text, its modulus)
        // used as an HMAC secret.
        let doc: Value = serde_json::from_str(JWKS).unwrap();
        let n = doc["keys"][0]["n"].as_str().unwrap().to_string();
        for secret in [JWKS.as_bytes().to_vec(), n.into_bytes()] {
            let t = raw_token(r#"{"alg":"HS256","kid":"rsa-1"}"#, &payload, &secret);
            assert_eq!(with_keys(&t, &k), Err(TokenError::BadSignature));
            assert_eq!(
                verify(
                    &t,
                    &Verifier {
                        hs256_secret: None,
                        public_keys: Some(&k),
                        ..Default::default()
                    },
                    NOW
                ),
                Err(TokenError::AlgorithmNotConfigured(Alg::Hs256))
            );
        }
        // alg none with a kid is still none.
        let t = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"rsa-1"}"#),
            b64(&payload)
        );
        assert_eq!(
            with_keys(&t, &k),
            Err(TokenError::UnsupportedAlgorithm("none".into()))
        );
    }

    #[test]
    fn issuer_and_audience_when_required() {
        let mut c = good_claims();
        c["iss"] = json!("https://idp.example/");
        c["aud"] = json!(["other-app", "dbrag"]);
        let t = sign_hs256(&c, SECRET).unwrap();
        let v = |iss: Option<&'static str>, aud: Option<&'static str>| Verifier {
            hs256_secret: Some(SECRET),
            issuer: iss,
            audience: aud,
            ..Default::default()
        };
        let got = verify(&t, &v(None, None), NOW).unwrap();
        assert_eq!(got.iss.as_deref(), Some("https://idp.example/"));
        assert_eq!(got.aud, vec!["other-app", "dbrag"]);
        assert!(verify(&t, &v(Some("https://idp.example/"), Some("dbrag")), NOW).is_ok());
        assert_eq!(
            verify(&t, &v(Some("https://evil.example/"), None), NOW),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(&t, &v(None, Some("billing")), NOW),
            Err(TokenError::WrongAudience)
        );
        // A token without the claims fails a required check.
        let bare = sign_hs256(&good_claims(), SECRET).unwrap();
        assert_eq!(
            verify(&bare, &v(Some("x"), None), NOW),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(&bare, &v(None, Some("x")), NOW),
            Err(TokenError::WrongAudience)
        );
        // Shapes.
        for (name, bad) in [
            ("iss", json!(5)),
            ("aud", json!(5)),
            ("aud", json!(["a", 1])),
        ] {
            let mut c = good_claims();
            c[name] = bad;
            let t = sign_hs256(&c, SECRET).unwrap();
            assert!(matches!(
                verify(&t, &v(None, None), NOW),
                Err(TokenError::InvalidClaim(_))
            ));
        }
        let mut c = good_claims();
        c["aud"] = json!(vec!["a"; MAX_AUDIENCES + 1]);
        let t = sign_hs256(&c, SECRET).unwrap();
        assert_eq!(
            verify(&t, &v(None, None), NOW),
            Err(TokenError::InvalidClaim("aud"))
        );
    }

    #[test]
    fn header_typ_and_kid_shapes() {
        let payload = good_claims().to_string();
        for typ in ["JWT", "at+jwt", "application/at+JWT"] {
            let t = raw_token(
                &format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#),
                &payload,
                SECRET,
            );
            assert!(verify_hs256(&t, SECRET, NOW).is_ok(), "{typ}");
        }
        let long = "k".repeat(MAX_KID_LEN + 1);
        for kid in [
            format!("{long:?}"),
            "\"\"".into(),
            "7".into(),
            "[\"a\"]".into(),
        ] {
            let t = raw_token(
                &format!(r#"{{"alg":"HS256","kid":{kid}}}"#),
                &payload,
                SECRET,
            );
            assert!(
                matches!(verify_hs256(&t, SECRET, NOW), Err(TokenError::Malformed(_))),
                "{kid}"
            );
        }
        // Algorithm names are case-sensitive.
        for alg in ["eddsa", "Rs256", "es256"] {
            let t = raw_token(
                &format!(r#"{{"alg":"{alg}","kid":"ec-1"}}"#),
                &payload,
                SECRET,
            );
            assert_eq!(
                with_keys(&t, &jwks()),
                Err(TokenError::UnsupportedAlgorithm(alg.into()))
            );
        }
    }

    #[test]
    fn jwks_documents_refused() {
        let bad = |doc: &str| Jwks::parse(doc.as_bytes()).unwrap_err().0;
        assert!(bad(WEAK).contains("1024 bits"), "{}", bad(WEAK));
        assert!(bad("[]").contains("not a JSON object"));
        assert!(bad("{").contains("not valid JSON"));
        assert!(bad(r#"{"keys":1}"#).contains("no \"keys\""));
        assert!(bad(r#"{"keys":[]}"#).contains("no usable"));
        assert!(bad(r#"{"keys":[],"keys":[]}"#).contains("twice"));
        assert!(bad(r#"{"keys":[{"kty":"oct","kid":"s","k":"AAAA"}]}"#).contains("oct"));
        assert!(bad(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#).contains("kid"));
        assert!(
            bad(r#"{"keys":[{"kty":"EC","kid":"e","crv":"P-256","x":"AA","y":"AA"}]}"#)
                .contains("32 bytes")
        );
        // x = 1, y = 1 is not on the curve.
        let one = b64(&format!("{}{}", "\0".repeat(31), "\u{1}"));
        let off = format!(
            r#"{{"keys":[{{"kty":"EC","kid":"e","crv":"P-256","x":"{one}","y":"{one}"}}]}}"#
        );
        assert!(
            bad(&off).contains("not on the P-256 curve"),
            "{}",
            bad(&off)
        );
        assert!(
            bad(r#"{"keys":[{"kty":"OKP","kid":"o","crv":"Ed25519","x":"AAAA"}]}"#)
                .contains("32 bytes")
        );
        assert!(
            bad(r#"{"keys":[{"kty":"OKP","kid":"o","crv":"Ed25519","x":"AA","d":"AA"}]}"#)
                .contains("private")
        );
        // The same kid twice.
        let doc: Value = serde_json::from_str(JWKS).unwrap();
        let ec = doc["keys"][1].clone();
        let twice = serde_json::json!({"keys": [ec.clone(), ec]}).to_string();
        assert!(bad(&twice).contains("twice"));
        // Size bounds.
        let huge = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(MAX_JWKS_LEN));
        assert!(bad(&huge).contains("larger"));
        let many =
            serde_json::json!({"keys": vec![serde_json::json!({}); MAX_JWKS_KEYS + 1]}).to_string();
        assert!(bad(&many).contains("more than"));
        // Other curves and algorithms are skipped, not refused, next to a good key.
        let mut mixed = doc.clone();
        mixed["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"}));
        mixed["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"kty":"RSA","kid":"ps","alg":"PS256","n":"AA","e":"AQAB"}));
        // (PS256 is parsed as an RSA key first: its tiny modulus is refused.)
        assert!(Jwks::parse(mixed.to_string().as_bytes()).is_err());
        mixed["keys"].as_array_mut().unwrap().pop();
        assert_eq!(
            Jwks::parse(mixed.to_string().as_bytes()).unwrap().skipped(),
            2
        );
    }

    proptest! {
        #[test]
        fn arbitrary_jwks_never_panic(s in ".{0,600}") {
            let _ = Jwks::parse(s.as_bytes());
        }

        #[test]
        fn public_key_token_byte_flips_never_verify(pos in 0usize..400, bit in 0u8..8) {
            let k = jwks();
            for t in [RS, ES, ED] {
                let mut b = t.as_bytes().to_vec();
                let i = pos % b.len();
                b[i] ^= 1 << bit;
                if let Ok(s) = std::str::from_utf8(&b) {
                    if s != t {
                        prop_assert!(with_keys(s, &k).is_err());
                    }
                }
            }
        }
    }
}
