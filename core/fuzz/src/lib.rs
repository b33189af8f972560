//! Fuzz targets for backstop: message decoding and header parsing.
//!
//! Each target's body is a plain function here, so the libFuzzer binaries in
//! `fuzz_targets/` stay one line each and `cargo test` (stable) replays every
//! seed in `seeds/<target>/` and every crash saved in `artifacts/<target>/`:
//!
//! - [`decode()`]: arbitrary bytes as a message body through the decode layer
//!   and [`Request::decode`](backstop::request::Request::decode) into several payload
//!   types, then idempotency key extraction and the decode dead letter.
//! - [`headers()`]: arbitrary headers through attempt and message id parsing,
//!   the [`wire`](backstop::wire) helpers and the retry and dead-letter copies,
//!   each copy received again as a broker would deliver it.
//! - [`inbound()`]: arbitrary AMQP deliveries and Kafka records (properties,
//!   timestamps such as 2^64-1 or -1, headers of any bytes) through
//!   backstop's broker → message conversion, the pure functions both
//!   adapters call (no broker client is linked).
//!
//! A target never panics on any input unless a property that backstop
//! documents is broken; every assertion names the property it checks.
//!
//! # Found and fixed
//!
//! Kept as regression tests below:
//!
//! 1. [`wire::parse_duration`](backstop::wire::parse_duration) panicked on
//!    `18446744073709551615s 1000000000ns` (humantime 2.4's carry at exactly
//!    one second, chronotope/humantime#66); it now refuses durations that
//!    could come near `u64::MAX` seconds.
//! 2. [`copy::retry`](backstop::copy::retry) panicked (through
//!    [`wire::format_time`](backstop::wire::format_time)) for a due time
//!    after 9999-12-31; `format_time` now clamps, and the retry layer caps
//!    `retry_after` at [`MAX_RETRY_AFTER`](backstop::retry::MAX_RETRY_AFTER).
//! 3. [`copy::dead_letter`](backstop::copy::dead_letter) and
//!    [`copy::retry`](backstop::copy::retry) kept an `x-backstop-first-failure`
//!    that is not an RFC 3339 time; it is now replaced.

#![forbid(unsafe_code)]

mod decode;
mod headers;
mod inbound;

pub use crate::decode::{NumberedOrder, Order, decode};
pub use crate::headers::{HeaderInput, headers};
pub use crate::inbound::inbound;

/// The names of the fuzz targets, each with a function of the same name here.
pub const TARGETS: [&str; 3] = ["decode", "headers", "inbound"];

/// Runs the target called `name` on `data`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "decode" => decode(data),
        "headers" => headers(data),
        "inbound" => inbound(data),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Every regular file under `dir`, sorted; none if it does not exist.
    fn inputs(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.ends_with(".gitkeep"))
            .collect();
        files.sort();
        files
    }

    /// Replays `dir`/`<target>/*` through each target; returns how many ran.
    fn replay(dir: &str) -> usize {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut ran = 0;
        for target in TARGETS {
            for file in inputs(&root.join(target)) {
                let data = std::fs::read(&file)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
                eprintln!("{target}: {}", file.display());
                assert!(run(target, &data));
                ran += 1;
            }
        }
        ran
    }

    #[test]
    fn seeds_pass_every_target() {
        for target in TARGETS {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seeds")
                .join(target);
            assert!(
                inputs(&dir).len() >= 3,
                "{} needs a few seed files",
                dir.display()
            );
        }
        replay("seeds");
    }

    /// Crashes `cargo fuzz` saved (gitignored): each fails here until fixed.
    #[test]
    fn saved_artifacts_pass_every_target() {
        let ran = replay("artifacts");
        eprintln!("{ran} saved artifact(s) replayed");
    }

    #[test]
    fn empty_input_passes_every_target() {
        for target in TARGETS {
            assert!(run(target, b""));
        }
        assert!(!run("no-such-target", b""));
    }

    /// Fixed issue 1: humantime's carry overflow, reached through `wire::parse_duration`.
    #[test]
    fn parse_duration_never_panics_at_the_carry() {
        assert_eq!(
            backstop::wire::parse_duration("18446744073709551615s 1000000000ns"),
            None
        );
    }

    /// Fixed issue 2: a due time the wire format cannot write.
    #[test]
    fn retry_copy_with_a_far_due_time() {
        headers(b"x-backstop-attempt:1\n@delay=8000 years\n");
    }

    /// An AMQP timestamp of 2^64-1 (a date before 1970 from a Java or .NET
    /// producer) panicked the RabbitMQ adapter; it is now no timestamp.
    #[test]
    fn amqp_timestamp_past_the_clock_is_none() {
        let mut data = vec![0u8; 8];
        data.push(1); // timestamp present
        data.extend_from_slice(&u64::MAX.to_le_bytes());
        inbound(&data);
    }

    /// Fixed issue 3: a first-failure header that is not a time is carried.
    #[test]
    fn first_failure_garbage_is_replaced() {
        headers(b"x-backstop-first-failure:yesterday\n");
    }
}
