//! What the end-to-end benchmarks share: iteration counts, medians, and the
//! demo's sample repository.

use std::path::Path;
use std::time::Duration;

/// Iterations: `KILN_BENCH_ITERS` (else `default`) under `cargo bench`, which
/// passes `--bench`; one under `cargo test --benches`, enough to prove the
/// benchmark runs.
pub fn iterations(default: usize) -> usize {
    if !std::env::args().any(|a| a == "--bench") {
        return 1;
    }
    std::env::var("KILN_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The middle sample (sorts `v`).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Copies the demo's sample repository (`runner/demo/sample-repo`) to `dst`.
#[allow(dead_code, reason = "not every benchmark needs a repository")]
pub fn sample_repo(dst: &Path) -> std::io::Result<()> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/sample-repo");
    std::fs::create_dir_all(dst.join("tests"))?;
    for f in ["README.md", "slugify.sh", "tests/run.sh"] {
        std::fs::copy(demo.join(f), dst.join(f))?;
    }
    Ok(())
}
