//! Node assertions: the tenant in force, carried from a Citus coordinator to
//! its workers inside the transaction's `SET LOCAL` commands.
//!
//! A worker cannot see the coordinator's superuser-only tenant setting, and a
//! client may set any user-settable setting itself, so the value is signed
//! with a key derived from the secret every node shares (`dbrag.jwt_secret`)
//! and bound to the role the worker session runs as, the database and an
//! expiry. A client that copies one into its own session gets nothing it did
//! not already have: the role must match, and the tenant is one that role
//! could put in force on the coordinator.
//!
//! Format: `v1.<tenant uuid>.<exp>.<role, base64url>.<mac, base64url>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Longest assertion accepted, in bytes (a role name is at most 63 bytes).
pub const MAX_ASSERTION_LEN: usize = 512;
const VERSION: &str = "v1";
const KEY_LABEL: &[u8] = b"dbrag:node-assertion:v1";

/// A verified assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAssertion {
    pub tenant_id: String,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    NoSecret,
    Malformed(&'static str),
    BadSignature,
    Expired,
    /// Signed for another role than the session's.
    WrongRole,
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::NoSecret => write!(f, "no signing secret is configured on this node"),
            AssertionError::Malformed(why) => write!(f, "malformed node assertion: {why}"),
            AssertionError::BadSignature => write!(f, "node assertion signature does not match"),
            AssertionError::Expired => write!(f, "node assertion has expired"),
            AssertionError::WrongRole => write!(f, "node assertion was issued to another role"),
        }
    }
}

fn mac_for(
    secret: &[u8],
    tenant: &str,
    exp: i64,
    role: &str,
    database: &str,
) -> Result<HmacSha256, AssertionError> {
    if secret.is_empty() {
        return Err(AssertionError::NoSecret);
    }
    // A key of its own, so an assertion can never pass as a tenant token.
    let mut kdf = HmacSha256::new_from_slice(secret).map_err(|_| AssertionError::NoSecret)?;
    kdf.update(KEY_LABEL);
    let key = kdf.finalize().into_bytes();
    let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| AssertionError::NoSecret)?;
    // Length-prefixed fields: no two field lists share a message.
    for field in [VERSION, tenant, &exp.to_string(), role, database] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field.as_bytes());
    }
    Ok(mac)
}

/// Sign an assertion that `role` acts for `tenant` in `database` until `exp`.
pub fn sign(
    secret: &[u8],
    tenant: &str,
    exp: i64,
    role: &str,
    database: &str,
) -> Result<String, AssertionError> {
    let mac = mac_for(secret, tenant, exp, role, database)?;
    Ok(format!(
        "{VERSION}.{tenant}.{exp}.{}.{}",
        URL_SAFE_NO_PAD.encode(role.as_bytes()),
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

/// Verify an assertion for the session's `role` in `database` at `now`.
pub fn verify(
    secret: &[u8],
    assertion: &str,
    role: &str,
    database: &str,
    now: i64,
) -> Result<NodeAssertion, AssertionError> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(AssertionError::Malformed("too long"));
    }
    let parts: Vec<&str> = assertion.split('.').collect();
    let [version, tenant, exp, role_b64, mac_b64] = parts.as_slice() else {
        return Err(AssertionError::Malformed(
            "expected five dot-separated parts",
        ));
    };
    if *version != VERSION {
        return Err(AssertionError::Malformed("unknown version"));
    }
    if tenant.len() != 36 || !tenant.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(AssertionError::Malformed("tenant is not a canonical uuid"));
    }
    let exp: i64 = exp
        .parse()
        .map_err(|_| AssertionError::Malformed("expiry is not a number"))?;
    let signed_role = URL_SAFE_NO_PAD
        .decode(role_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(AssertionError::Malformed("role is not base64url"))?;
    let mac_bytes = URL_SAFE_NO_PAD
        .decode(mac_b64)
        .map_err(|_| AssertionError::Malformed("signature is not base64url"))?;
    // The signature first: nothing about an unsigned value is reported.
    mac_for(secret, tenant, exp, &signed_role, database)?
        .verify_slice(&mac_bytes)
        .map_err(|_| AssertionError::BadSignature)?;
    if signed_role != role {
        return Err(AssertionError::WrongRole);
    }
    if now >= exp {
        return Err(AssertionError::Expired);
    }
    Ok(NodeAssertion {
        tenant_id: tenant.to_ascii_lowercase(),
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "6f1c2a9e-0000-4000-8000-00000000000a";

    #[test]
    fn round_trip() {
        let a = sign(b"s3cret", T, 1000, "app", "db").unwrap();
        let v = verify(b"s3cret", &a, "app", "db", 999).unwrap();
        assert_eq!(v.tenant_id, T);
        assert_eq!(v.exp, 1000);
    }

    #[test]
    fn refusals() {
        let a = sign(b"s3cret", T, 1000, "app", "db").unwrap();
        assert_eq!(
            verify(b"other", &a, "app", "db", 1),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            verify(b"s3cret", &a, "app", "otherdb", 1),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            verify(b"s3cret", &a, "tenant_login", "db", 1),
            Err(AssertionError::WrongRole)
        );
        assert_eq!(
            verify(b"s3cret", &a, "app", "db", 1000),
            Err(AssertionError::Expired)
        );
        assert_eq!(
            verify(b"", &a, "app", "db", 1),
            Err(AssertionError::NoSecret)
        );
        // Another tenant or a later expiry with the same signature.
        let forged = a.replacen(T, "6f1c2a9e-0000-4000-8000-00000000000b", 1);
        assert_eq!(
            verify(b"s3cret", &forged, "app", "db", 1),
            Err(AssertionError::BadSignature)
        );
        let later = a.replacen(".1000.", ".9999.", 1);
        assert_eq!(
            verify(b"s3cret", &later, "app", "db", 1),
            Err(AssertionError::BadSignature)
        );
        // Another role's name swapped in keeps the signature of the first.
        let swapped = a.replacen(
            &URL_SAFE_NO_PAD.encode(b"app"),
            &URL_SAFE_NO_PAD.encode(b"bob"),
            1,
        );
        assert_eq!(
            verify(b"s3cret", &swapped, "bob", "db", 1),
            Err(AssertionError::BadSignature)
        );
        for junk in [
            "",
            "v1",
            "v1....",
            "v2.a.b.c.d",
            &"x".repeat(600),
            "v1.a.1.YQ.YQ",
        ] {
            assert!(
                matches!(
                    verify(b"s3cret", junk, "app", "db", 1),
                    Err(AssertionError::Malformed(_))
                ),
                "{junk}"
            );
        }
    }
}
