#!/usr/bin/env bash
# The compiler wrapper of scripts/fuzz.sh (RUSTC_WORKSPACE_WRAPPER): adds
# libFuzzer's coverage instrumentation to Kiln's own crates only.
#
# cargo-fuzz instruments every crate through RUSTFLAGS, which rebuilds the
# whole dependency graph (wasmtime, cranelift, ...) a second time: ~15
# minutes on a 2-core machine. A workspace wrapper touches only the
# workspace's crates, so the fuzz build reuses the dependencies the test
# build already compiled and only `kiln` and the targets compile again.
# Coverage then guides the fuzzer through Kiln's code, which is what the
# targets are about. Only `kiln` and the targets are instrumented: build
# scripts (and the workspace crates they link, such as kiln-plugin-build)
# run without libFuzzer's runtime.
set -euo pipefail
rustc=$1
shift
case "${CARGO_PKG_NAME:-}:$*" in
kiln:*"--crate-name build_script_"* | kiln-fuzz:*"--crate-name build_script_"*)
    exec "$rustc" "$@"
    ;;
kiln:* | kiln-fuzz:*) ;;
*)
    exec "$rustc" "$@"
    ;;
esac
# The dev profile's opt-level 0 and debug assertions stay: an optimised
# `kiln` took ~4x as long to compile, which CI pays on every run.
exec "$rustc" "$@" \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing
