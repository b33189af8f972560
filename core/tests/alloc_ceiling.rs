//! Allocation ceiling: allocations per message of `stack_memory_store`
//! (the full stack with a `MemoryStore` on the in-memory broker, the
//! harness of `benches/support/drain.rs`) as the slope between 2,000 and
//! 4,000 messages. Its own test target without the libtest harness, so
//! nothing else allocates in this process. Fails above [`CEILING`]; lower
//! the ceiling when a change lowers the count.

use std::alloc::System;
use std::process::ExitCode;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "../benches/support/drain.rs"]
mod drain;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The most allocations per message `stack_memory_store` may make: the
/// figure reached (17 before the store and acker answered at once, the
/// request was lent to its attempts and the broker kept its messages
/// shared; 9 before a finished message's future gave its box to the
/// next; 8 before the lease's cancellation became a tripwire in the lease
/// itself, its token made only when asked for; 6 before the in-memory
/// broker's deliveries shared one settler instead of each boxing an
/// acker; 5 before the driver's in-flight set reused its slots instead of
/// allocating a task node per message; 4 before the lease held the
/// request's lease token instead of an extension of its own). What
/// remains: the payload's key (the user's `String`), the key as stored,
/// and the lease in the renewer (with its tripwire and the request's
/// lease token).
const CEILING: f64 = 3.0;

/// Fractions above the ceiling that are not a new per-message allocation:
/// a buffer that grows once more in the larger run (a doubling) adds a
/// few thousandths.
const TOLERANCE: f64 = 0.1;

const SMALL: u64 = 2_000;
const LARGE: u64 = 4_000;

fn allocations(n: u64) -> u64 {
    let prepared = drain::prepare(drain::Scenario::StackMemoryStore, n);
    let region = Region::new(GLOBAL);
    drain::drain_queue(prepared);
    region.change().allocations as u64
}

fn main() -> ExitCode {
    // A warm-up run, so lazily initialised statics are not counted.
    allocations(100);
    let per_message =
        (allocations(LARGE) as f64 - allocations(SMALL) as f64) / (LARGE - SMALL) as f64;
    println!("stack_memory_store: {per_message:.3} allocations per message (ceiling {CEILING})");
    if per_message > CEILING + TOLERANCE {
        eprintln!(
            "allocation ceiling exceeded: {per_message:.3} allocations per message > {CEILING}; find the new allocation (cargo bench -p backstop --bench instr) or, if it is deliberate, raise CEILING in this file and say why"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
