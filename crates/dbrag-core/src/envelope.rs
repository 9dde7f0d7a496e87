//! AES-256-GCM envelope for secrets at rest (provider API keys and the like).
//!
//! Wire format of a sealed blob, version 1:
//!
//! ```text
//! offset  size  field
//! 0       1     version, 0x01
//! 1       1     L, key-id length, 1..=64
//! 2       L     key id, ASCII [A-Za-z0-9_.-]
//! 2+L     12    nonce (random, from the OS)
//! 14+L    n+16  AES-256-GCM ciphertext of the n-byte plaintext, 16-byte tag appended
//! ```
//!
//! Minimum length is 2 + 1 + 12 + 16 = 31 bytes (one-char key id, empty plaintext).
//! The GCM associated data is the header (bytes `0..2+L`) followed by the
//! caller's context `aad`, so neither the key id nor the context can be
//! swapped without failing authentication. The header is self-delimiting,
//! which keeps that concatenation unambiguous.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Format version written by [`seal`].
pub const VERSION: u8 = 0x01;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Shortest possible blob: header with a one-byte key id, nonce, tag.
pub const MIN_BLOB_LEN: usize = 2 + 1 + NONCE_LEN + TAG_LEN;

/// Why a key could not be loaded or a blob could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The keyring is empty.
    NoKey,
    /// A key or key id given by the operator is invalid.
    BadKey(&'static str),
    /// A key file line is invalid (1-based line number).
    BadKeyfile { line: usize, reason: &'static str },
    /// The blob is shorter than its header says it must be.
    Truncated,
    /// The blob's first byte is not a version this code reads.
    UnsupportedVersion(u8),
    /// The blob's header is structurally invalid (bad key-id length or characters).
    Malformed(&'static str),
    /// The blob names a key id the keyring does not hold.
    UnknownKeyId(String),
    /// GCM tag mismatch: tampering, wrong context, or wrong key bytes.
    AuthenticationFailed,
    /// The OS random number generator failed.
    Rng,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::NoKey => write!(f, "no encryption key is configured"),
            EnvelopeError::BadKey(why) => write!(f, "invalid encryption key: {why}"),
            EnvelopeError::BadKeyfile { line, reason } => {
                write!(f, "invalid key file, line {line}: {reason}")
            }
            EnvelopeError::Truncated => write!(f, "encrypted value is truncated"),
            EnvelopeError::UnsupportedVersion(v) => {
                write!(f, "encrypted value has unsupported format version {v}")
            }
            EnvelopeError::Malformed(why) => write!(f, "encrypted value is malformed: {why}"),
            EnvelopeError::UnknownKeyId(id) => write!(
                f,
                "encrypted value was sealed with key {id:?}, which is not in the keyring"
            ),
            EnvelopeError::AuthenticationFailed => write!(
                f,
                "decryption failed: the ciphertext was tampered with, or the context / key does not match"
            ),
            EnvelopeError::Rng => write!(f, "the operating system's random number generator failed"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// A named 256-bit key. `Debug` never shows the key bytes.
#[derive(Clone)]
pub struct Key {
    /// Key id written into every blob sealed with this key.
    pub id: String,
    bytes: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl Key {
    /// Builds a key from an id (1..=64 chars of `[A-Za-z0-9_.-]`) and exactly 64 hex digits.
    pub fn from_hex(id: &str, hex: &str) -> Result<Key, EnvelopeError> {
        if !valid_key_id(id.as_bytes()) {
            return Err(EnvelopeError::BadKey(
                "key id must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        Ok(Key {
            id: id.to_string(),
            bytes: parse_key_hex(hex)?,
        })
    }

    /// Constant-time comparison of the key bytes.
    fn same_bytes(&self, other: &Key) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

/// Keys by id; the last key is the active one that [`seal`] uses.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// Builds a keyring from keys oldest-first; duplicate ids are refused.
    pub fn from_keys(keys: Vec<Key>) -> Result<Keyring, EnvelopeError> {
        let mut ring = Keyring::default();
        for key in keys {
            if ring.get(&key.id).is_some() {
                return Err(EnvelopeError::BadKey("duplicate key id"));
            }
            ring.keys.push(key);
        }
        Ok(ring)
    }

    /// Parses `key_id:64hexdigits` lines (blank lines and `#` comments ignored), oldest first.
    /// An empty file gives an empty keyring; sealing with it reports [`EnvelopeError::NoKey`].
    pub fn parse_keyfile(text: &str) -> Result<Keyring, EnvelopeError> {
        let mut ring = Keyring::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| EnvelopeError::BadKeyfile {
                line: n + 1,
                reason,
            };
            let (id, hex) = line
                .split_once(':')
                .ok_or_else(|| bad("expected key_id:64 hex digits"))?;
            let key = Key::from_hex(id.trim(), hex.trim()).map_err(|e| match e {
                EnvelopeError::BadKey(why) => bad(why),
                _ => bad("invalid key"),
            })?;
            if ring.get(&key.id).is_some() {
                return Err(bad("duplicate key id"));
            }
            ring.keys.push(key);
        }
        Ok(ring)
    }

    /// A one-key ring from a 64-hex-digit master key; its id is `m` + the first 8 hex digits
    /// of SHA-256(key), so a wrong key shows up as an unknown key id rather than as tampering.
    pub fn from_master_hex(hex: &str) -> Result<Keyring, EnvelopeError> {
        let bytes = parse_key_hex(hex.trim())?;
        let digest = Sha256::digest(bytes);
        let fingerprint = hex::encode(&digest[..4]);
        Ok(Keyring {
            keys: vec![Key {
                id: format!("m{fingerprint}"),
                bytes,
            }],
        })
    }

    /// Appends `newer`'s keys after this ring's, so `newer`'s active key becomes active.
    /// An id present in both must carry the same bytes (it is then kept once, in its old place).
    pub fn merge(mut self, newer: Keyring) -> Result<Keyring, EnvelopeError> {
        for key in newer.keys {
            match self.get(&key.id) {
                Some(old) if old.same_bytes(&key) => {}
                Some(_) => {
                    return Err(EnvelopeError::BadKey(
                        "the same key id names two different keys",
                    ))
                }
                None => self.keys.push(key),
            }
        }
        Ok(self)
    }

    /// The key new blobs are sealed with (the last one), if any.
    pub fn active(&self) -> Option<&Key> {
        self.keys.last()
    }

    /// The key with this id, if present.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Key ids, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Encrypts `plaintext` under the active key, binding `aad` (e.g. tenant id + column) to it.
/// The nonce is 96 random bits from the OS.
pub fn seal(ring: &Keyring, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|_| EnvelopeError::Rng)?;
    seal_with_nonce(ring, &nonce, plaintext, aad)
}

/// [`seal`] with a caller-chosen nonce; only for deterministic tests (nonce reuse breaks GCM).
#[doc(hidden)]
pub fn seal_with_nonce(
    ring: &Keyring,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let key = ring.active().ok_or(EnvelopeError::NoKey)?;
    let id = key.id.as_bytes();
    // Keys are validated on construction; re-check since the id field is public.
    let id_len = u8::try_from(id.len())
        .ok()
        .filter(|_| valid_key_id(id))
        .ok_or(EnvelopeError::BadKey(
            "key id must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
        ))?;

    let mut blob = Vec::with_capacity(2 + id.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    blob.push(VERSION);
    blob.push(id_len);
    blob.extend_from_slice(id);
    let full_aad = [&blob[..], aad].concat();

    let cipher = cipher_for(key);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad: &full_aad,
            },
        )
        .map_err(|_| EnvelopeError::Malformed("plaintext is too large to encrypt"))?;
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

/// Decrypts a blob made by [`seal`] with the same `aad`, choosing the key by the blob's key id.
pub fn open(ring: &Keyring, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let (id, header_len) = parse_header(blob)?;
    if ring.is_empty() {
        return Err(EnvelopeError::NoKey);
    }
    let key = ring
        .get(id)
        .ok_or_else(|| EnvelopeError::UnknownKeyId(id.to_string()))?;
    let (header, rest) = blob.split_at(header_len);
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let full_aad = [header, aad].concat();
    cipher_for(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &full_aad,
            },
        )
        .map_err(|_| EnvelopeError::AuthenticationFailed)
}

/// The key id a blob was sealed under (for rotation: find blobs not under the active key).
/// Checks the header and length only; it does not authenticate the blob.
pub fn key_id_of(blob: &[u8]) -> Result<&str, EnvelopeError> {
    parse_header(blob).map(|(id, _)| id)
}

/// Returns the key id and the header length (2 + L), after checking the blob is long
/// enough to also hold a nonce and a tag.
fn parse_header(blob: &[u8]) -> Result<(&str, usize), EnvelopeError> {
    let (&version, rest) = blob.split_first().ok_or(EnvelopeError::Truncated)?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let (&len, rest) = rest.split_first().ok_or(EnvelopeError::Truncated)?;
    let len = usize::from(len);
    if len == 0 || len > MAX_KEY_ID_LEN {
        return Err(EnvelopeError::Malformed("key id length must be 1 to 64"));
    }
    if rest.len() < len + NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let id = &rest[..len];
    if !valid_key_id(id) {
        return Err(EnvelopeError::Malformed("key id has invalid characters"));
    }
    let id =
        std::str::from_utf8(id).map_err(|_| EnvelopeError::Malformed("key id is not ASCII"))?;
    Ok((id, 2 + len))
}

fn cipher_for(key: &Key) -> Aes256Gcm {
    Aes256Gcm::new(&key.bytes.into())
}

fn valid_key_id(id: &[u8]) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn parse_key_hex(hex: &str) -> Result<[u8; 32], EnvelopeError> {
    if hex.len() != 64 {
        return Err(EnvelopeError::BadKey(
            "key must be exactly 64 hex digits (32 bytes)",
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex, &mut bytes)
        .map_err(|_| EnvelopeError::BadKey("key must be exactly 64 hex digits (32 bytes)"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn ring() -> Keyring {
        Keyring::parse_keyfile(&format!("# keys\nold:{K1}\n\n  new : {K2}  \n")).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let r = ring();
        let blob = seal(&r, b"sk-secret", b"tenant-1/openai").unwrap();
        assert_eq!(blob[0], VERSION);
        assert_eq!(blob[1], 3);
        assert_eq!(&blob[2..5], b"new");
        assert_eq!(blob.len(), 2 + 3 + 12 + 9 + 16);
        assert_eq!(key_id_of(&blob).unwrap(), "new");
        assert_eq!(open(&r, &blob, b"tenant-1/openai").unwrap(), b"sk-secret");
        // Empty plaintext gives the minimum length with a 1-char id.
        let one = Keyring::from_keys(vec![Key::from_hex("a", K1).unwrap()]).unwrap();
        let blob = seal(&one, b"", b"").unwrap();
        assert_eq!(blob.len(), MIN_BLOB_LEN);
        assert_eq!(open(&one, &blob, b"").unwrap(), b"");
    }

    #[test]
    fn random_nonces_differ() {
        let r = ring();
        assert_ne!(seal(&r, b"x", b"").unwrap(), seal(&r, b"x", b"").unwrap());
    }

    #[test]
    fn older_key_still_opens() {
        let old_only = Keyring::parse_keyfile(&format!("old:{K1}")).unwrap();
        let blob = seal(&old_only, b"v", b"ctx").unwrap();
        assert_eq!(open(&ring(), &blob, b"ctx").unwrap(), b"v");
        assert_eq!(key_id_of(&blob).unwrap(), "old");
    }

    #[test]
    fn different_aad_fails() {
        let r = ring();
        let blob = seal(&r, b"secret", b"tenant-a").unwrap();
        assert_eq!(
            open(&r, &blob, b"tenant-b"),
            Err(EnvelopeError::AuthenticationFailed)
        );
        assert_eq!(
            open(&r, &blob, b""),
            Err(EnvelopeError::AuthenticationFailed)
        );
    }

    #[test]
    fn every_bit_flip_fails() {
        let r = ring();
        let blob = seal_with_nonce(&r, &[7u8; 12], b"short msg", b"aad").unwrap();
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut b = blob.clone();
                b[i] ^= 1 << bit;
                assert!(open(&r, &b, b"aad").is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_truncation_fails() {
        let r = ring();
        let blob = seal(&r, b"0123456789", b"").unwrap();
        for n in 0..blob.len() {
            assert!(open(&r, &blob[..n], b"").is_err(), "length {n}");
            let _ = key_id_of(&blob[..n]);
        }
        assert_eq!(open(&r, &[], b""), Err(EnvelopeError::Truncated));
        assert_eq!(open(&r, &[1], b""), Err(EnvelopeError::Truncated));
        assert_eq!(open(&r, &blob[..20], b""), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn header_errors() {
        let r = ring();
        let mut blob = seal(&r, b"x", b"").unwrap();
        blob[0] = 2;
        assert_eq!(
            open(&r, &blob, b""),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
        let mut blob = seal(&r, b"x", b"").unwrap();
        blob[1] = 0;
        assert!(matches!(
            open(&r, &blob, b""),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut blob = seal(&r, b"x", b"").unwrap();
        blob[2] = b'/';
        assert!(matches!(
            open(&r, &blob, b""),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_key_id() {
        let other = Keyring::parse_keyfile(&format!("elsewhere:{K1}")).unwrap();
        let blob = seal(&other, b"x", b"").unwrap();
        assert_eq!(
            open(&ring(), &blob, b""),
            Err(EnvelopeError::UnknownKeyId("elsewhere".into()))
        );
        assert_eq!(
            open(&Keyring::default(), &blob, b""),
            Err(EnvelopeError::NoKey)
        );
        assert_eq!(
            seal(&Keyring::default(), b"x", b""),
            Err(EnvelopeError::NoKey)
        );
    }

    #[test]
    fn wrong_key_same_id_fails() {
        let a = Keyring::parse_keyfile(&format!("k:{K1}")).unwrap();
        let b = Keyring::parse_keyfile(&format!("k:{K2}")).unwrap();
        let blob = seal(&a, b"x", b"").unwrap();
        assert_eq!(
            open(&b, &blob, b""),
            Err(EnvelopeError::AuthenticationFailed)
        );
    }

    #[test]
    fn master_key_id_is_a_fingerprint() {
        let a = Keyring::from_master_hex(K1).unwrap();
        let b = Keyring::from_master_hex(&format!(" {K2}\n")).unwrap();
        let id = a.active().unwrap().id.clone();
        assert_eq!(id.len(), 9);
        assert!(id.starts_with('m'));
        assert_ne!(id, b.active().unwrap().id);
        let blob = seal(&a, b"x", b"").unwrap();
        assert_eq!(open(&b, &blob, b""), Err(EnvelopeError::UnknownKeyId(id)));
        assert!(Keyring::from_master_hex("abcd").is_err());
    }

    #[test]
    fn merge_rules() {
        let master = Keyring::from_master_hex(K1).unwrap();
        let merged = master.clone().merge(ring()).unwrap();
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.active().unwrap().id, "new");
        let blob = seal(&master, b"x", b"").unwrap();
        assert_eq!(open(&merged, &blob, b"").unwrap(), b"x");
        // Same id, same bytes: kept once.
        assert_eq!(ring().merge(ring()).unwrap().len(), 2);
        // Same id, other bytes: refused.
        let clash = Keyring::parse_keyfile(&format!("new:{K1}")).unwrap();
        assert!(matches!(ring().merge(clash), Err(EnvelopeError::BadKey(_))));
        let dup = vec![
            Key::from_hex("a", K1).unwrap(),
            Key::from_hex("a", K2).unwrap(),
        ];
        assert!(Keyring::from_keys(dup).is_err());
    }

    #[test]
    fn keyfile_errors() {
        let line_of = |text: &str| match Keyring::parse_keyfile(text) {
            Err(EnvelopeError::BadKeyfile { line, .. }) => line,
            other => panic!("{other:?}"),
        };
        assert_eq!(line_of(&format!("a:{K1}\nb:{}", &K2[..62])), 2); // short key
        assert_eq!(line_of(&format!("a:{}zz", &K1[..62])), 1); // bad hex
        assert_eq!(line_of(&format!("a:{K1}\n# c\na:{K2}")), 3); // duplicate id
        assert_eq!(line_of(K1), 1); // missing colon
        assert_eq!(line_of(&format!(":{K1}")), 1); // empty id
        assert_eq!(line_of(&format!("bad id:{K1}")), 1);
        assert_eq!(line_of(&format!("{}:{K1}", "x".repeat(65))), 1);
        assert_eq!(line_of(&format!("a:{K1}00")), 1); // long key
        assert!(Keyring::parse_keyfile("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn no_secrets_in_debug_or_errors() {
        let r = ring();
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("[0, 1, 2"));
        assert!(!dbg.contains(K1) && !dbg.contains("31, 30"));
        let err = Keyring::parse_keyfile(&format!("a:{}zz", &K1[..62])).unwrap_err();
        assert!(!err.to_string().contains(&K1[..10]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn open_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open(&ring(), &bytes, b"aad");
            let _ = key_id_of(&bytes);
        }

        #[test]
        fn open_plausible_headers_never_panics(
            len in 0u8..80,
            tail in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut b = vec![VERSION, len];
            b.extend_from_slice(b"new");
            b.extend_from_slice(&tail);
            prop_assert!(open(&ring(), &b, b"").is_err());
        }

        #[test]
        fn round_trips(pt in proptest::collection::vec(any::<u8>(), 0..300),
                       aad in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = ring();
            let blob = seal(&r, &pt, &aad).unwrap();
            prop_assert_eq!(open(&r, &blob, &aad).unwrap(), pt);
        }
    }
}
