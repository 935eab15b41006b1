//! Plugin host benchmark: instantiating a plugin (fresh Store + instance
//! from the cached InstancePre) and one import round trip (guest → host →
//! guest), each next to a native Rust call measured in the same run.
//!
//! Run with `cargo bench -p kiln --bench plugin`. Targets on the reference
//! machine (2 cores): instantiate ≤ 10 µs, round trip ≤ 2 µs.
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::imports::RunContext;
use kiln::plugin::{PluginHost, PluginLimits, Task, Trigger, builtin};
use kiln::session::{Budget, MemoryEvents};

fn task(calls: u64) -> Task {
    Task {
        run_id: "bench".into(),
        role: "triage".into(),
        repo: "acme/widgets".into(),
        issue: None,
        pull_request: None,
        branch: "kiln/bench".into(),
        base_branch: "main".into(),
        trigger: Trigger::Manual,
        instructions: Some(calls.to_string()),
    }
}

/// Median of `samples` timings of `f`, each timing `batch` calls.
fn median_per_call(samples: usize, batch: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed() / batch
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// What a native host would do instead of instantiating: build the run's state.
#[inline(never)]
fn native_setup(run: &str) -> (String, Budget, Vec<u8>) {
    (
        run.to_string(),
        Budget {
            max_turns: Some(30),
            ..Budget::default()
        },
        Vec::with_capacity(64),
    )
}

/// The native counterpart of the `session.get-budget` import.
#[inline(never)]
fn native_get_budget(b: &Budget) -> u64 {
    u64::from(b.turns) + b.tokens + b.cost_micro_usd
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let host = PluginHost::new(PluginLimits::default()).expect("host");
    let path = builtin::test_plugin_path("ping").expect("ping plugin built");
    let plugin = host
        .load(&std::fs::read(path).expect("read ping"))
        .expect("load ping");
    let events = Arc::new(MemoryEvents::new());

    // Instantiate: fresh Store + instance from the cached InstancePre.
    for _ in 0..1_000 {
        rt.block_on(host.instantiate_probe(&plugin))
            .expect("instantiate");
    }
    let instantiate = median_per_call(21, 2_000, || {
        rt.block_on(host.instantiate_probe(&plugin))
            .expect("instantiate");
    });
    let native_instantiate = median_per_call(21, 200_000, || {
        black_box(native_setup(black_box("bench")));
    });

    // Round trip: one run making N import calls minus one making none.
    let run_with = |calls: u64| {
        let start = Instant::now();
        let report = rt.block_on(host.run(&plugin, task(calls), RunContext::new(events.clone())));
        report.result.expect("ping run");
        start.elapsed()
    };
    const CALLS: u64 = 1_000_000;
    run_with(CALLS);
    let mut per_call: Vec<Duration> = (0..7)
        .map(|_| run_with(CALLS).saturating_sub(run_with(0)) / CALLS as u32)
        .collect();
    per_call.sort();
    let round_trip = per_call[per_call.len() / 2];
    let budget = Budget::default();
    let native_call = median_per_call(21, 1_000_000, || {
        black_box(native_get_budget(black_box(&budget)));
    });

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    println!("plugin host benchmark (release, median)");
    println!(
        "  instantiate (Store + instance from InstancePre): {:>9.2} µs   native setup: {:>7.3} µs   ratio {:>8.1}x   target ≤ 10 µs: {}",
        instantiate.as_secs_f64() * 1e6,
        native_instantiate.as_secs_f64() * 1e6,
        ratio(instantiate, native_instantiate),
        if instantiate <= Duration::from_micros(10) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  import round trip (session.get-budget):          {:>9.3} µs   native call:  {:>7.3} µs   ratio {:>8.1}x   target ≤ 2 µs: {}",
        round_trip.as_secs_f64() * 1e6,
        native_call.as_secs_f64() * 1e6,
        ratio(round_trip, native_call),
        if round_trip <= Duration::from_micros(2) {
            "met"
        } else {
            "MISSED"
        }
    );
}
