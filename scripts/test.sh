#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, formatting, lints, then
# every test (plugins are built to components by the runner's build script).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
