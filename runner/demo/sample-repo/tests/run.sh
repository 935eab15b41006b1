#!/usr/bin/env bash
# Runs the slugify test cases; exits 1 if any case fails.
cd "$(dirname "$0")/.." || exit 2
source ./slugify.sh

failed=0
check() {
  local got
  got="$(slugify "$1")"
  if [[ "$got" == "$2" ]]; then
    echo "ok    '$1' -> '$got'"
  else
    echo "FAIL  '$1' -> '$got' (expected '$2')"
    failed=1
  fi
}

check "Hello World" "hello-world"
check "Kiln 2" "kiln-2"
check "already-a-slug" "already-a-slug"

exit "$failed"
