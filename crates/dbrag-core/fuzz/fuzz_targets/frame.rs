//! The framed pipe protocol between the backend and the data-plane helper
//! (dbrag_core::frame): arbitrary bytes as the stream the backend reads.
//! A frame is never larger than the cap, whatever its header says, and
//! neither reading nor parsing panics.
#![no_main]

use dbrag_core::frame::{parse_reply, payload_len, read_frame, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small cap, so the over-cap path is reached.
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let cap = (c as usize) * 64;
    let mut stream = rest;
    while let Ok(payload) = read_frame(&mut stream, cap) {
        assert!(payload.len() <= cap);
        if let Ok(reply) = parse_reply(&payload) {
            // What parses prints back and parses the same.
            let again = serde_json::to_vec(&reply).unwrap();
            let back: Reply = serde_json::from_slice(&again).unwrap();
            assert_eq!(back, reply);
        }
        let _ = serde_json::from_slice::<Request>(&payload);
    }
    if rest.len() >= 4 {
        let h = [rest[0], rest[1], rest[2], rest[3]];
        if let Ok(n) = payload_len(h, cap) {
            assert!(n <= cap);
        }
    }
});
