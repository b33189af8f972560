//! Fuzz target: arbitrary headers through attempt and message id parsing,
//! the `wire` helpers and the retry and dead-letter copies. The body lives
//! in `backstop_fuzz::headers`, so `cargo test` replays saved inputs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| backstop_fuzz::headers(data));
