//! Instructions and allocations per message, as slopes.
//!
//! ```text
//! cargo bench -p backstop --bench instr
//! ```
//!
//! For each scenario of the fixed harness (`support/drain.rs`) and each
//! size (10,000 and 20,000 messages) this binary re-runs itself under
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect=*::drain_queue` and reads the instructions collected; it
//! counts allocations in process with a counting allocator. Each figure is
//! the slope `(X(20k) − X(10k)) / 10k`, so set-up costs cancel. It prints
//! exactly three rows:
//!
//! ```text
//! BENCH-INSTR<TAB>name<TAB>instructions_per_msg<TAB>allocations_per_msg
//! ```
//!
//! named `bare_loop`, `stack_no_store` and `stack_memory_store`, then one
//! line of its own for the cost of tracing with a subscriber installed:
//!
//! ```text
//! BENCH-INSTR-LIFECYCLE<TAB>stack_memory_store_info_subscriber<TAB>instructions_per_msg<TAB>allocations_per_msg<TAB>instructions_over_stack_memory_store
//! ```
//!
//! (`stack_memory_store` run the same way with the application's usual
//! `tracing_subscriber::fmt` subscriber at `info` installed as the global
//! default in the measured child; its allocations are counted with the
//! same subscriber as the thread's default), and exits non-zero when
//! valgrind is missing. The counting allocator adds a few instructions per
//! allocation to every row (a relaxed atomic add or two).
//!
//! The measured child runs with glibc's fast bins off
//! (`GLIBC_TUNABLES=glibc.malloc.mxfast=0`): with them, freeing the drained
//! messages merges the fast bins all at once (`malloc_consolidate`,
//! millions of instructions in one call) whenever a freed block grows past
//! 64 KB, and whether that happens in the 10k run, in the 20k run or in
//! both depends on how the heap happens to be laid out, so a row moved by
//! 500 to 1,000 between two builds for no change of theirs. Without fast
//! bins a free costs the same each time; every row is higher for it (the
//! bare loop by about 900). `BENCH_INSTR_GLIBC_DEFAULT=1` measures with
//! glibc's defaults.

use std::alloc::System;
use std::path::Path;
use std::process::{Command, ExitCode};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/drain.rs"]
mod drain;

use drain::Scenario;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The glibc tunables of the measured child: no fast bins
/// (`glibc.malloc.mxfast=0`, see the module docs), after any the caller
/// set; `BENCH_INSTR_GLIBC_DEFAULT=1` measures with glibc's defaults.
fn glibc_tunables() -> String {
    let set = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os("BENCH_INSTR_GLIBC_DEFAULT").is_some() {
        return set;
    }
    match set.as_str() {
        "" => "glibc.malloc.mxfast=0".to_owned(),
        set => format!("{set}:glibc.malloc.mxfast=0"),
    }
}

/// Set in the re-run child: `<scenario>:<n>`.
const CHILD: &str = "BACKSTOP_INSTR_CHILD";

/// The two sizes of the slope.
const SMALL: u64 = 10_000;
const LARGE: u64 = 20_000;

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("instr: valgrind not found: install valgrind (apt)");
            return ExitCode::FAILURE;
        }
    }
    let dir = std::env::temp_dir().join(format!("backstop-instr-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("instr: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut status = ExitCode::SUCCESS;
    let mut memory_store = None;
    for scenario in Scenario::ALL {
        match measure(scenario, &dir) {
            Ok((instructions, allocations)) => {
                println!(
                    "BENCH-INSTR\t{}\t{instructions:.0}\t{allocations:.1}",
                    scenario.name(),
                );
                if scenario == Scenario::StackMemoryStore {
                    memory_store = Some(instructions);
                }
            }
            Err(e) => {
                eprintln!("instr: {}: {e}", scenario.name());
                status = ExitCode::FAILURE;
            }
        }
    }
    let lifecycle = Scenario::LIFECYCLE;
    match (measure(lifecycle, &dir), memory_store) {
        (Ok((instructions, allocations)), Some(base)) => println!(
            "BENCH-INSTR-LIFECYCLE\t{}\t{instructions:.0}\t{allocations:.1}\t{:.0}",
            lifecycle.name(),
            instructions - base,
        ),
        (Err(e), _) => {
            eprintln!("instr: {}: {e}", lifecycle.name());
            status = ExitCode::FAILURE;
        }
        (Ok(_), None) => status = ExitCode::FAILURE,
    }
    let _ = std::fs::remove_dir_all(&dir);
    status
}

/// A scenario's instructions and allocations per message.
fn measure(scenario: Scenario, dir: &Path) -> Result<(f64, f64), String> {
    let small = instructions(scenario, SMALL, dir)?;
    let large = instructions(scenario, LARGE, dir)?;
    let allocations = slope(allocations(scenario, SMALL), allocations(scenario, LARGE));
    Ok((slope(small, large), allocations))
}

/// `(large − small) / (LARGE − SMALL)`.
fn slope(small: u64, large: u64) -> f64 {
    (large as f64 - small as f64) / (LARGE - SMALL) as f64
}

/// The re-run child: prepares, then drains inside the toggled function.
fn child(spec: &str) -> ExitCode {
    let parsed = spec
        .split_once(':')
        .and_then(|(name, n)| Some((Scenario::parse(name)?, n.parse::<u64>().ok()?)));
    let Some((scenario, n)) = parsed else {
        eprintln!("instr: bad {CHILD}={spec:?} (want <scenario>:<n>)");
        return ExitCode::FAILURE;
    };
    if scenario.wants_subscriber()
        && let Err(e) = tracing::subscriber::set_global_default(drain::info_subscriber())
    {
        eprintln!("instr: cannot install the subscriber: {e}");
        return ExitCode::FAILURE;
    }
    drain::drain_queue(drain::prepare(scenario, n));
    ExitCode::SUCCESS
}

/// Instructions collected inside `drain_queue` for `n` messages.
fn instructions(scenario: Scenario, n: u64, dir: &Path) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let out = dir.join(format!("callgrind.{}.{n}", scenario.name()));
    let run = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            // The function itself, not its async block (`drain_queue::{{closure}}`):
            // entering a second matching frame would toggle collection off.
            "--toggle-collect=*::drain_queue",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env(CHILD, format!("{}:{n}", scenario.name()))
        .env("GLIBC_TUNABLES", glibc_tunables())
        .output()
        .map_err(|e| format!("running valgrind: {e}"))?;
    if !run.status.success() {
        return Err(format!(
            "valgrind run failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let text =
        std::fs::read_to_string(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no instruction total in {}", out.display()))
}

/// Allocations made while draining `n` messages, in this process.
fn allocations(scenario: Scenario, n: u64) -> u64 {
    let prepared = drain::prepare(scenario, n);
    let drain = || {
        let region = Region::new(GLOBAL);
        drain::drain_queue(prepared);
        region.change().allocations as u64
    };
    if scenario.wants_subscriber() {
        tracing::subscriber::with_default(drain::info_subscriber(), drain)
    } else {
        drain()
    }
}
