#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, formatting, lints, then
# every test (plugins are built to components by the runner's build script).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's wall time, so a slow CI run says where the time went.
phase_start=$SECONDS
phase() {
    echo "test.sh: ${1} took $((SECONDS - phase_start)) s (total ${SECONDS} s)" >&2
    phase_start=$SECONDS
}

scripts/setup.sh
phase setup
cargo fmt --all --check

# One compile lints and builds every target (lib, bins, tests, benches):
# clippy-driver compiles Kiln's crates (scripts/cargo-env.sh). Benches are only
# built here, not run (`cargo bench` runs them).
. scripts/cargo-env.sh
if [ -z "${RUSTC_WORKSPACE_WRAPPER:-}" ]; then
    echo "error: clippy-driver not found; the suite lints every crate with it" \
        "(rustup component add clippy)" >&2
    exit 1
fi
cargo test --workspace --all-targets --locked --no-run
phase build
cargo test --workspace --locked
phase tests

# The demo (scripts/kiln.sh: `cargo build -p kiln`) must find its binary
# already built by the tests, not rebuild the crate graph. A dependency whose
# features differ between `-p kiln` and `--workspace` breaks that silently;
# cargo reports every unit it had to compile as "fresh":false.
demo_build=$(cargo build --locked -p kiln --bin kiln --message-format=json-render-diagnostics)
if grep -q '"fresh":false' <<<"$demo_build"; then
    echo "error: the demo's build (cargo build -p kiln) is not shared with the tests'" \
        "(cargo test --workspace): a dependency resolves to different features in the two;" \
        "compare 'cargo tree -e features' of both" >&2
    exit 1
fi

# Each fuzz target runs briefly from its seed corpus (docs/fuzzing.md); a
# crash fails the suite with the input to replay it.
phase "demo build check"
scripts/fuzz.sh all 15
phase fuzz
