#!/usr/bin/env bash
# Run the `kiln` command line from a fresh clone: setup, build, run.
#
# Built with the dev profile into the same target dir as scripts/test.sh, so
# the demo and the test suite share one build of the crate graph (whichever
# runs first builds it; the other only compiles what it adds). Dependencies
# are optimised even in dev builds (see the root Cargo.toml), which is fast
# enough for the demo. Deploy `kiln serve` from `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
exec cargo run --quiet --locked -p kiln -- "$@"
