#!/usr/bin/env bash
# Fuzzes a running runner API with schemathesis against its own
# /openapi.json and fails on any 5xx (check `not_a_server_error`).
#
#   scripts/fuzz-api.sh URL TOKEN [extra schemathesis args]
#   KILN_URL=http://127.0.0.1:7878 KILN_TOKEN=kiln_... scripts/fuzz-api.sh
#
# TOKEN should be an admin token so every operation gets past auth. The
# tokens operations are fuzzed too: point this at a throwaway store (as the
# `fuzz_the_api_with_schemathesis` test in tests/api.rs does), not at a
# runner people use. schemathesis is installed from PyPI into a venv under
# target/ the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

URL="${1:-${KILN_URL:-}}"
TOKEN="${2:-${KILN_TOKEN:-}}"
shift $(( $# > 2 ? 2 : $# ))
if [ -z "$URL" ] || [ -z "$TOKEN" ]; then
    echo "usage: scripts/fuzz-api.sh URL TOKEN (or KILN_URL / KILN_TOKEN)" >&2
    exit 2
fi

VENV="$PWD/target/fuzz-venv"
if [ ! -x "$VENV/bin/st" ]; then
    echo "fuzz-api: installing schemathesis into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi

# schemathesis keeps a cache in its working directory: keep it under target/.
mkdir -p target/fuzz-work
cd target/fuzz-work

fuzz() {
    "$VENV/bin/st" run "$URL/openapi.json" \
        --url "$URL" \
        --header "Authorization: Bearer $TOKEN" \
        --checks not_a_server_error \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "${FUZZ_EXAMPLES:-100}" \
        --request-timeout 10 \
        --seed "${FUZZ_SEED:-1}" \
        --generation-database none \
        --no-color \
        "$@"
}

# Revoking tokens last: fuzzing DELETE /tokens/{id} revokes the fuzzer's own
# token sooner or later, after which every other operation would only see 401.
fuzz --exclude-path-regex '^/tokens/' "$@"
fuzz --include-path-regex '^/tokens/' "$@"
