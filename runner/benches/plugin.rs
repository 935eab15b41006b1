//! Plugin host benchmark: instantiating a plugin (fresh Store + instance
//! from the cached InstancePre) and one import round trip (guest → host →
//! guest), each next to a native Rust call measured in the same run, for a
//! plugin of each supported contract version side by side: `ping` (0.2.0,
//! built with the SDK) and `frozen-0-1-0` (0.1.0, bare wit-bindgen), both
//! calling `session.get-budget` in a loop. The versions' conversions to the
//! host's domain types must not show: 0.1.0 / 0.2.0 ≤ 1.1×.
//!
//! Run with `cargo bench -p kiln --bench plugin` (`-- instantiate` for the
//! instantiate figures alone, e.g. under a profiler). Targets on the reference
//! machine (2 cores): instantiate ≤ 10 µs, round trip ≤ 2 µs.
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::imports::RunContext;
use kiln::plugin::{PluginHost, PluginLimits, Task, Trigger, builtin};
use kiln::session::{Budget, MemoryEvents};

fn task(instructions: String) -> Task {
    Task {
        run_id: "bench".into(),
        role: "triage".into(),
        repo: "acme/widgets".into(),
        issue: None,
        pull_request: None,
        branch: "kiln/bench".into(),
        base_branch: "main".into(),
        trigger: Trigger::Manual,
        instructions: Some(instructions),
        args: Vec::new(),
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

/// One plugin's figures.
struct Figures {
    instantiate: Duration,
    round_trip: Duration,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut host = PluginHost::new(PluginLimits::default()).expect("host");
    host.grant_role(
        "frozen",
        kiln::plugin::CapabilitySet::parse(&["model.complete", "forge.read", "forge.comment"])
            .expect("grant"),
    );
    let load = |name: &str| {
        let path = builtin::test_plugin_path(name).expect("test plugin built");
        host.load(&std::fs::read(path).expect("read plugin"))
            .expect("load plugin")
    };
    // (label, plugin, the instructions that make it call get-budget N times)
    let plugins = [
        ("0.2.0 (ping, SDK)", load("ping"), ""),
        ("0.1.0 (frozen-0-1-0)", load("frozen-0-1-0"), "ping "),
    ];
    let events = Arc::new(MemoryEvents::new());

    for (_, plugin, _) in &plugins {
        for _ in 0..1_000 {
            rt.block_on(host.instantiate_probe(plugin))
                .expect("instantiate");
        }
    }
    // Samples of the two versions interleave, so load on the machine hits both alike.
    let mut instantiate: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..21 {
        for (i, (_, plugin, _)) in plugins.iter().enumerate() {
            instantiate[i].push(median_per_call(1, 2_000, || {
                rt.block_on(host.instantiate_probe(plugin))
                    .expect("instantiate");
            }));
        }
    }
    let native_instantiate = median_per_call(21, 200_000, || {
        black_box(native_setup(black_box("bench")));
    });
    // `-- instantiate`: only this part, e.g. under a profiler.
    if std::env::args().skip(1).any(|a| a == "instantiate") {
        for ((label, _, _), mut samples) in plugins.iter().zip(instantiate) {
            samples.sort();
            println!(
                "{label}: instantiate {:.2} µs (median), native setup {:.3} µs",
                samples[samples.len() / 2].as_secs_f64() * 1e6,
                native_instantiate.as_secs_f64() * 1e6
            );
        }
        return;
    }

    // Round trip: one run making N import calls minus one making none.
    let run_with = |(plugin, prefix): (&kiln::plugin::LoadedPlugin, &str), calls: u64| {
        let start = Instant::now();
        let report = rt.block_on(host.run(
            plugin,
            task(format!("{prefix}{calls}")),
            RunContext::new(events.clone()),
        ));
        report.result.expect("ping run");
        start.elapsed()
    };
    const CALLS: u64 = 1_000_000;
    let mut round_trip: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (_, plugin, prefix) in &plugins {
        run_with((plugin, prefix), CALLS);
    }
    for _ in 0..7 {
        for (i, (_, plugin, prefix)) in plugins.iter().enumerate() {
            let p = (&**plugin, *prefix);
            round_trip[i].push(run_with(p, CALLS).saturating_sub(run_with(p, 0)) / CALLS as u32);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let figures: Vec<Figures> = (0..2)
        .map(|i| Figures {
            instantiate: median(&mut instantiate[i]),
            round_trip: median(&mut round_trip[i]),
        })
        .collect();
    let budget = Budget::default();
    let native_call = median_per_call(21, 1_000_000, || {
        black_box(native_get_budget(black_box(&budget)));
    });

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("plugin host benchmark (median)");
    for ((label, _, _), f) in plugins.iter().zip(&figures) {
        println!("  {label}");
        println!(
            "    instantiate (Store + instance from InstancePre): {:>9.2} µs   native setup: {:>7.3} µs   ratio {:>8.1}x   target ≤ 10 µs: {}",
            f.instantiate.as_secs_f64() * 1e6,
            native_instantiate.as_secs_f64() * 1e6,
            ratio(f.instantiate, native_instantiate),
            verdict(f.instantiate <= Duration::from_micros(10))
        );
        println!(
            "    import round trip (session.get-budget):          {:>9.3} µs   native call:  {:>7.3} µs   ratio {:>8.1}x   target ≤ 2 µs: {}",
            f.round_trip.as_secs_f64() * 1e6,
            native_call.as_secs_f64() * 1e6,
            ratio(f.round_trip, native_call),
            verdict(f.round_trip <= Duration::from_micros(2))
        );
    }
    let (new, old) = (&figures[0], &figures[1]);
    let inst = ratio(old.instantiate, new.instantiate);
    let trip = ratio(old.round_trip, new.round_trip);
    println!(
        "  0.1.0 / 0.2.0: instantiate {inst:.2}x, round trip {trip:.2}x   target ≤ 1.1x: {}",
        verdict(inst <= 1.1 && trip <= 1.1)
    );
}
