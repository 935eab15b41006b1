#!/bin/sh
# Webhook intake benchmark: installs Debian's `wrk` (the load generator,
# run as a second process on loopback) if it is missing, then runs
# runner/benches/intake.rs, which prints the webhook route's throughput and
# latency next to an unsigned no-op baseline measured in the same run.
#
#   scripts/bench-intake.sh
set -eu
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "bench-intake: installing wrk" >&2
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq wrk
fi

cargo bench -p kiln --bench intake
