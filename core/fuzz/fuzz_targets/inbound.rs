//! Fuzz target: arbitrary AMQP deliveries and Kafka records through
//! backstop's broker → message conversion. The body lives in
//! `backstop_fuzz::inbound`, so `cargo test` replays saved inputs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| backstop_fuzz::inbound(data));
