#!/usr/bin/env bash
# Run the `kiln` command line from a fresh clone: setup, build, run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
exec cargo run --quiet --release --locked -p kiln -- "$@"
