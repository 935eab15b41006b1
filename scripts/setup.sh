#!/usr/bin/env bash
# Installs what building and testing Kiln needs on a fresh machine, and
# nothing that is already there:
#   - the Rust standard library for wasm32-unknown-unknown (role plugins are
#     built for it): `rustup target add`, or, where rustup cannot reach its
#     server, Debian's rust-web packages (the plugin build then uses them with
#     -Zbuild-std; see plugins/build);
#   - PostgreSQL's server binaries (Debian's `postgresql`): the store's
#     contract suite runs against a throwaway cluster the tests start;
#   - the sandbox's needs (scripts/setup-sandbox.sh, if present).
set -euo pipefail
cd "$(dirname "$0")/.."

has_wasm_std() {
    local libdir
    libdir=$(rustc --print target-libdir --target wasm32-unknown-unknown 2>/dev/null) || return 1
    compgen -G "$libdir/libcore-*" >/dev/null
}

if has_wasm_std; then
    echo "setup: wasm32-unknown-unknown standard library present"
elif command -v rustup >/dev/null && timeout 180 rustup target add wasm32-unknown-unknown && has_wasm_std; then
    echo "setup: installed wasm32-unknown-unknown with rustup"
elif [ -x /usr/bin/cargo ] && dpkg -s rust-web-src >/dev/null 2>&1; then
    echo "setup: using Debian's rust-web toolchain for plugins"
else
    echo "setup: rustup could not install wasm32-unknown-unknown; installing Debian's rust-web packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq rustc-web cargo-web rust-web-src rust-web-llvm lld-22
fi

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "setup: PostgreSQL server present"
else
    echo "setup: installing Debian's postgresql (the store's tests start a throwaway cluster)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq postgresql
    # The package starts a system cluster; the tests never use it.
    if command -v pg_ctlcluster >/dev/null; then
        for c in /etc/postgresql/*/main; do
            [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop 2>/dev/null || true
        done
    fi
fi

if [ -x scripts/setup-sandbox.sh ]; then
    scripts/setup-sandbox.sh
fi
if [ -x scripts/setup-browser.sh ]; then scripts/setup-browser.sh; fi
