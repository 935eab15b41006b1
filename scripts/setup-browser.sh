#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the dashboard test
# (tests/dashboard.rs drives it over the DevTools protocol), if missing.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "setup: chromium present"
    exit 0
fi
echo "setup: installing chromium (dashboard browser test)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may be running its own apt at boot: wait for the lock.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core
