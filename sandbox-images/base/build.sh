#!/bin/sh
# Base sandbox image recipe: a minimal Debian root filesystem as a tarball.
#
# Usage: build.sh OUTPUT.tar < apt-sources
#
# The apt sources come on stdin (deb822 or one-line format) so that the
# recipe never names a mirror: Kiln pipes in the machine's own apt
# configuration. `kiln image build base` then turns the tarball into an image
# with `docker import` (no registry involved). The recipe's hash, not a
# version number, names the image, so editing this file triggers a rebuild.
set -eu
out="$1"
suite="${KILN_BASE_SUITE:-bookworm}"

# minbase: only Essential packages + apt; we add what every role needs.
# The `agent` user (uid 1000) is who every sandbox command runs as.
exec mmdebstrap \
  --variant=minbase \
  --include=git,ca-certificates,bash,coreutils \
  --customize-hook='chroot "$1" useradd -m -u 1000 -U -s /bin/bash agent' \
  --customize-hook='mkdir -p "$1/workspace" && chown 1000:1000 "$1/workspace"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  "$suite" "$out" -
