//! Fuzz target: arbitrary bytes as a message body through backstop's decode
//! path and idempotency key extraction. The body lives in
//! `backstop_fuzz::decode`, so `cargo test` replays saved inputs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| backstop_fuzz::decode(data));
