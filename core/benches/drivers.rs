//! In-memory throughput of the drivers, and CPU per message, against the
//! bare loop in the same run.
//!
//! ```text
//! cargo bench -p backstop --bench drivers
//! BENCH_MESSAGES=200000 BENCH_ROUNDS=5 cargo bench -p backstop --bench drivers
//! ```
//!
//! The queue of the in-memory broker is pre-filled with `BENCH_MESSAGES`
//! orders (default 1,000,000; the harness of `benches/instr.rs`: `{"id":…,
//! "amount":…}` decoded from JSON, the idempotency key is `id`), then
//! drained on a tokio runtime with two worker threads by one of three
//! sides:
//!
//! * **bare loop**: the source read directly, each order decoded, handed
//!   to the handler's work and acked, one message at a time (the floor);
//! * **one driver**: one `Runner` (concurrency 64) with the full stack and
//!   a `MemoryStore`;
//! * **two drivers**: two `Runner`s on the queue (concurrency 32 each),
//!   sharing one stack and its store, each on a worker thread of its own.
//!
//! Each side runs once per round, `BENCH_ROUNDS` rounds (default 3), each
//! run in a fresh process (this binary again: a heap that held the last
//! run's million messages would make the next run slower), in an order
//! that rotates from round to round (`BENCH_SIDES=two` or
//! `BENCH_SIDES=bare,one` runs only those, for a profiler; the ratios are
//! then left out); filling the queue is outside
//! the measurement. A side reports the median of its rounds: messages per
//! second (wall clock, from the first delivery asked for to the last
//! settled) and the process's CPU per message (every thread's time on the
//! CPU during the drain, from `/proc/self/task/*/schedstat`; Linux). The
//! last lines are `BENCH-DRIVERS<TAB>side<TAB>msgs_per_s<TAB>cpu_us_per_msg`
//! for `scripts/bench.sh`.

use std::time::{Duration, Instant};

use backstop::Runner;

#[path = "support/drain.rs"]
mod drain;
#[path = "support/latency.rs"]
mod latency;

/// Messages in flight in all, split between the drivers.
const IN_FLIGHT: usize = 64;

/// What drains the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    BareLoop,
    OneDriver,
    TwoDrivers,
}

impl Side {
    const ALL: [Side; 3] = [Side::BareLoop, Side::OneDriver, Side::TwoDrivers];

    /// Its short name, as `BENCH_SIDES` lists it.
    fn short(self) -> &'static str {
        match self {
            Side::BareLoop => "bare",
            Side::OneDriver => "one",
            Side::TwoDrivers => "two",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::BareLoop => "bare loop",
            Side::OneDriver => "one driver",
            Side::TwoDrivers => "two drivers",
        }
    }
}

/// One drain: how long it took and the CPU the process spent meanwhile.
#[derive(Clone, Copy, Debug)]
struct Drained {
    wall: Duration,
    cpu: Duration,
}

/// Set in a run's child process: the side it drains with.
const CHILD: &str = "BACKSTOP_DRIVERS_CHILD";

fn main() {
    let n = env_number("BENCH_MESSAGES", 1_000_000);
    let count = usize::try_from(n).unwrap_or(usize::MAX);
    if let Ok(short) = std::env::var(CHILD) {
        let side = Side::ALL
            .into_iter()
            .find(|side| side.short() == short)
            .unwrap_or_else(|| panic!("{CHILD}={short:?}: not a side"));
        let drained = drain(side, n);
        println!("{}\t{}", drained.wall.as_nanos(), drained.cpu.as_nanos());
        return;
    }
    let rounds = latency::rounds(3);
    if cpu_time().is_none() {
        eprintln!("drivers: /proc/self/task/*/schedstat unreadable; CPU per message shown as 0");
    }
    let wanted = std::env::var("BENCH_SIDES").ok();
    let runs = |side: Side| {
        wanted
            .as_deref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == side.short()))
    };
    let mut results: Vec<Vec<Drained>> = vec![Vec::new(); Side::ALL.len()];
    for round in 0..rounds {
        for i in 0..Side::ALL.len() {
            let index = (i + round) % Side::ALL.len();
            let side = Side::ALL[index];
            if !runs(side) {
                continue;
            }
            let drained = run_child(side);
            println!(
                "round {}: {:<12} {:>10.0} msgs/s  {:>6.2} µs CPU/msg",
                round + 1,
                side.name(),
                latency::rate(count, drained.wall),
                micros_per(n, drained.cpu),
            );
            results[index].push(drained);
        }
    }
    if Side::ALL.into_iter().any(|side| !runs(side)) {
        return;
    }
    println!(
        "\nmedians of {rounds} rounds, {n} messages each (full stack + MemoryStore, 2 worker threads):"
    );
    println!(
        "{:<12} {:>10} {:>8} {:>10} {:>9}",
        "side", "msgs/s", "vs bare", "CPU µs", "vs bare"
    );
    let medians: Vec<(f64, f64)> = results
        .iter_mut()
        .map(|runs| {
            let wall = median(runs.iter().map(|r| r.wall).collect());
            let cpu = median(runs.iter().map(|r| r.cpu).collect());
            (latency::rate(count, wall), micros_per(n, cpu))
        })
        .collect();
    let (bare_rate, bare_cpu) = medians[0];
    for (side, (rate, cpu)) in Side::ALL.iter().zip(&medians) {
        println!(
            "{:<12} {:>10.0} {:>8.2} {:>10.2} {:>9.2}",
            side.name(),
            rate,
            rate / bare_rate,
            cpu,
            cpu / bare_cpu,
        );
    }
    for (side, (rate, cpu)) in Side::ALL.iter().zip(&medians) {
        println!("BENCH-DRIVERS\t{}\t{rate:.0}\t{cpu:.3}", side.name());
    }
}

/// Runs `side` once in a child process of its own and reads what it measured.
fn run_child(side: Side) -> Drained {
    let exe = std::env::current_exe().expect("this bench's path");
    let out = std::process::Command::new(exe)
        .env(CHILD, side.short())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the bench's child");
    assert!(out.status.success(), "{}: the child failed", side.name());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text
        .trim()
        .split('\t')
        .map(|f| f.parse::<u64>().expect("the child prints nanoseconds"));
    let mut next = || Duration::from_nanos(fields.next().expect("two figures"));
    Drained {
        wall: next(),
        cpu: next(),
    }
}

/// Fills a queue with `n` orders, then drains it with `side` on a runtime
/// of two worker threads and measures.
fn drain(side: Side, n: u64) -> Drained {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a two-worker runtime");
    let broker = drain::filled(n);
    // Room for every key of the drain.
    let capacity = usize::try_from(n).unwrap_or(usize::MAX).saturating_mul(2);
    let stack = drain::memory_store_stack(&broker, capacity);
    let cpu_before = cpu_time().unwrap_or_default();
    let started = Instant::now();
    let handled = runtime.block_on(async {
        match side {
            Side::BareLoop => {
                // On a worker thread, as the drivers are.
                tokio::spawn(drain::bare_loop(drain::source(&broker, IN_FLIGHT)))
                    .await
                    .expect("the bare loop ends")
            }
            Side::OneDriver | Side::TwoDrivers => {
                let drivers = if side == Side::OneDriver { 1 } else { 2 };
                let each = IN_FLIGHT / drivers;
                let runs: Vec<_> = (0..drivers)
                    .map(|_| {
                        let runner = Runner::new(drain::source(&broker, each), stack.clone())
                            .concurrency(each);
                        tokio::spawn(runner.run())
                    })
                    .collect();
                let mut handled = 0;
                for run in runs {
                    handled += run
                        .await
                        .expect("a driver ends")
                        .expect("a driver drains the queue")
                        .handled;
                }
                handled
            }
        }
    });
    let wall = started.elapsed();
    let cpu = cpu_time().unwrap_or_default().saturating_sub(cpu_before);
    assert_eq!(handled, n, "{}: every message handled", side.name());
    Drained { wall, cpu }
}

/// The CPU time of every live thread of this process (the runtime's
/// workers live through the whole bench), or `None` off Linux.
fn cpu_time() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        total += Duration::from_nanos(ns);
    }
    Some(total)
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn median(mut all: Vec<Duration>) -> Duration {
    all.sort_unstable();
    all[all.len() / 2]
}

#[allow(clippy::cast_precision_loss)] // message counts are far below 2^52
fn micros_per(n: u64, took: Duration) -> f64 {
    took.as_secs_f64() * 1e6 / n as f64
}
