#!/usr/bin/env bash
# slugify: turn a title into a URL slug (lowercase, words joined by '-').

slugify() {
  printf '%s' "$1" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9' '-'
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  if [[ $# -ne 1 ]]; then
    echo "usage: slugify.sh TITLE" >&2
    exit 2
  fi
  slugify "$1"
  echo
fi
