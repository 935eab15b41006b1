#!/usr/bin/env bash
# Run the `kiln` command line from a fresh clone: setup, build, run.
#
# Built with the dev profile and the same compiler settings
# (scripts/cargo-env.sh) into the same target dir as scripts/test.sh, so
# the demo and the test suite share one build of the crate graph (whichever
# runs first builds it; the other only compiles what it adds). Dependencies
# are optimised even in dev builds (see the root Cargo.toml), which is fast
# enough for the demo. Deploy `kiln serve` from `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
# Same compiler settings as the tests (scripts/cargo-env.sh), or cargo would
# keep a second build of Kiln's crates.
. scripts/cargo-env.sh
kiln=$(cargo build --quiet --locked -p kiln --bin kiln --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
exec "$kiln" "$@"
