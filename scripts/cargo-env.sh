# Sourced by scripts/kiln.sh and scripts/test.sh: how both compile Kiln.
#
# Kiln's own crates are compiled by clippy-driver, the compiler with clippy's
# lints added (what `cargo clippy` runs), so one compile both lints and builds
# them. A separate `cargo clippy` pass would type-check every dependency a
# second time (metadata only, which the real build cannot reuse): on a fresh
# clone that was ~10 of the suite's ~23 minutes. Dependencies are compiled by
# rustc as usual (cargo applies the wrapper to workspace members only).
#
# The demo sources this too: cargo keys a crate's artifacts on the wrapper,
# so the demo and the tests must agree on it to share one build. Lints are
# errors in both (`-D warnings`), as CI requires.
#
# Without clippy-driver (a toolchain without the clippy component) the demo
# builds with plain rustc; scripts/test.sh refuses to run without it.
if kiln_clippy_driver=$(rustup which clippy-driver 2>/dev/null) ||
    kiln_clippy_driver=$(command -v clippy-driver); then
    export RUSTC_WORKSPACE_WRAPPER="$kiln_clippy_driver"
    # clippy-driver's argument encoding, as `cargo clippy -- -D warnings` sets it.
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
else
    unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
fi
unset kiln_clippy_driver
