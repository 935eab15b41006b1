#!/bin/sh
# Prepares this machine to build Kiln's sandbox images. Idempotent: installs
# only what is missing, through apt, from the machine's own apt sources.
#
#   scripts/setup-sandbox.sh                 # packages only
#   scripts/setup-sandbox.sh --build-images  # ... then `kiln image build` (needs cargo)
#
# Needed on the host: a running Docker engine (not installed here), and
#   mmdebstrap              makes the base root filesystem (with its Recommends)
#   debian-archive-keyring  lets mmdebstrap verify Debian's archive
#   git                     host-side repository mirrors and workspaces
set -eu

missing=""
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing="$missing debian-archive-keyring"
command -v git >/dev/null 2>&1 || missing="$missing git"

if [ -n "$missing" ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "setup-sandbox: installing$missing" >&2
  # A fresh machine may be running its own apt at boot: wait for the lock.
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing
else
  echo "setup-sandbox: mmdebstrap, debian-archive-keyring and git already present" >&2
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup-sandbox: warning: the Docker engine is not reachable; sandbox tests will fail" >&2
fi

if [ "${1:-}" = "--build-images" ]; then
  cd "$(dirname "$0")/.."
  # Through kiln.sh: the same build of Kiln as the demo's and the tests'.
  scripts/kiln.sh image build
fi
