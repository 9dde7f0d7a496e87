//! Ciphertext envelopes (dbrag_core::envelope): `open` and `key_id_of` on
//! arbitrary bytes, the key-file parser on arbitrary text, and a seal/open
//! round trip of arbitrary plaintext and associated data.
//! Input: first byte = mode, the rest the payload.
#![no_main]

use dbrag_core::envelope::{key_id_of, open, seal_with_nonce, Key, Keyring};
use libfuzzer_sys::fuzz_target;

fn ring() -> Keyring {
    Keyring::from_keys(vec![
        Key::from_hex("old", &"11".repeat(32)).expect("valid key"),
        Key::from_hex("k2", &"22".repeat(32)).expect("valid key"),
    ])
    .expect("valid ring")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = ring();
    match mode % 4 {
        0 => {
            // A blob from the table: never opens without the right tag.
            if let Ok(id) = key_id_of(rest) {
                assert!(!id.is_empty() && id.len() <= 64);
            }
            assert!(open(&ring, rest, b"aad").is_err() || rest.len() >= 2 + 1 + 12 + 16);
            let _ = open(&Keyring::default(), rest, b"");
        }
        1 => {
            // Round trip; the same blob with other associated data, or one
            // bit flipped anywhere, does not open.
            let split = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
            let (aad, plain) = rest.split_at(split);
            let blob = seal_with_nonce(&ring, &[7u8; 12], plain, aad).expect("seal");
            assert_eq!(open(&ring, &blob, aad).expect("open"), plain);
            assert_eq!(key_id_of(&blob).expect("header"), "k2");
            let mut other = aad.to_vec();
            other.push(0);
            assert!(open(&ring, &blob, &other).is_err());
            let i = usize::from(*plain.first().unwrap_or(&0)) % blob.len();
            let mut flipped = blob.clone();
            flipped[i] ^= 1 << (plain.len() % 8);
            assert!(open(&ring, &flipped, aad).is_err());
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(r) = Keyring::parse_keyfile(text) {
                    // An empty file is an empty ring (sealing then says NoKey).
                    assert_eq!(r.is_empty(), r.active().is_none());
                    assert_eq!(r.ids().count(), r.len());
                }
                let _ = Keyring::from_master_hex(text);
            }
        }
        _ => {
            // A blob that names a key of the ring, with arbitrary contents.
            let mut blob = vec![1u8, 3];
            blob.extend_from_slice(b"old");
            blob.extend_from_slice(rest);
            assert!(open(&ring, &blob, b"").is_err());
        }
    }
});
