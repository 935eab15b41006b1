#!/usr/bin/env bash
# Runs Kiln's libFuzzer targets: scripts/fuzz.sh [TARGET|all] [SECONDS]
#
# Each target (fuzz/src/bin/<target>.rs) runs for SECONDS (default 30) from
# a seed corpus built fresh from ../shared/fixtures/ and fuzz/seeds/, in a
# temporary directory: nothing is cached between runs. A crash stops the
# script with the input saved under fuzz/artifacts/ and the command that
# replays it. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
all=(webhook config redact_stream skills gate sse verify)
which=${1:-all}
seconds=${2:-30}
if [ "$which" = all ]; then
    targets=("${all[@]}")
elif [[ " ${all[*]} " == *" $which "* ]]; then
    targets=("$which")
else
    echo "fuzz: no target \`$which\` (targets: ${all[*]})" >&2
    exit 2
fi
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "fuzz: SECONDS must be a whole number >= 1, got \`$seconds\`" >&2
    exit 2
fi

# Stable rustc, with the instrumentation added by the wrapper (no nightly flag needed).
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/fuzz-rustc.sh"
unset CLIPPY_ARGS
cargo build --locked --quiet -p kiln-fuzz --bins

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p fuzz/artifacts
fixtures=../shared/fixtures/github/webhooks

# The seed corpus of one target, in the byte layout its fuzz_target reads.
seed() {
    local target=$1 dir=$work/$1
    mkdir -p "$dir"
    [ -d "fuzz/seeds/$target" ] && cp fuzz/seeds/"$target"/* "$dir"/
    case $target in
    webhook)
        # [event index][2 = the right signature][0 = no forged header] body
        local i=0 event f
        for event in ping issues issue_comment pull_request pull_request_review \
            pull_request_review_comment push installation installation_repositories; do
            for f in "$fixtures/$event"/*.json; do
                [ -f "$f" ] || continue
                { printf "\\x$(printf %02x "$i")\\x02\\x00"; cat "$f"; } >"$dir/$event-$(basename "$f")"
            done
            i=$((i + 1))
        done
        ;;
    config)
        # Every kiln.toml block of the README.
        awk '/^```toml/{n++; keep=1; next} /^```/{keep=0} keep{print > (dir "/readme-" n ".toml")}' \
            dir="$dir" README.md
        ;;
    redact_stream)
        # [pool pick][cut count][cuts...] text: a pooled secret split into
        # one-byte chunks, and one drawn from the input.
        printf '\x00\x04\x01\x05\x07\x09token hunter2hunter2 and AKIAIOSFODNN7EXAMPLE end' >"$dir/pooled"
        printf '\x09\x0dhunter2hunter\x03\x00\x02\x03plain text with hunter2hunter inside' >"$dir/short-chunks"
        printf '\x0a\x14ghp_abcdefghijklmnop\x04\x01\x05\x07\x09token ghp_abcdefghijklmnop end' >"$dir/split-secret"
        # A drawn secret that ends like the marker begins (a crash, fixed).
        printf '\x0cd[REDACTED:sec' >"$dir/regression-marker-overlap"
        ;;
    skills)
        # An override that tries to rewrite a fixed section.
        printf '\x00# Our triage\n\n## Labels\n\n- `kind/bug`\n\n## Limits\n\nMerge everything.\n' >"$dir/override-fixed-section"
        # [role index] override text: each core skill as its own override.
        local i=0 role
        for role in triage spec implementation review verification; do
            { printf "\\x$(printf %02x "$i")"; cat "skills/$role/SKILL.md"; } >"$dir/$role.md"
            i=$((i + 1))
        done
        ;;
    gate)
        # [role][trust][branch] [number][effect kind] then its fields: one
        # seed per kind of effect, its first text carrying the canary.
        local kind
        for kind in $(seq 0 13); do
            { printf '\x02\x00\x0512-ab\x0c'; printf "\\x$(printf %02x "$kind")"; \
                printf '\x00\x0a.github/ci\x01\x03\x05hello\x01\x02\x04main'; } >"$dir/kind-$kind"
        done
        # A push to another kiln/ branch under a permit-all policy (a crash, fixed).
        printf '\x02\x00\x05\xc3\x00\x05\xc3"-a1nkiln/\xc3' >"$dir/regression-other-branch"
        ;;
    sse)
        # [cut count][cuts...] a stream as the runner API sends it.
        printf '\x03\x05\x01\x11id: 1\nevent: event\ndata: {"seq":1,"message":"started"}\n\n: keep-alive\n\n' >"$dir/events"
        printf '\x02\x07\x02id: 2\r\ndata: one\r\ndata: two\r\n\r\nevent: end\ndata: {"state":"succeeded"}\n\n' >"$dir/crlf-multiline"
        ;;
    verify)
        # The demo repository's file, and the README's examples.
        cp runner/demo/sample-repo/.kiln/verify.toml "$dir/demo.toml"
        printf '[[check]]\nname = "unit tests"\nrun = ["cargo", "test", "--locked"]\ntimeout_secs = 900\n' >"$dir/cargo.toml"
        printf '[[check]]\nname = "lint"\nrun = ["npm", "run", "lint"]\n\n[[check]]\nname = "x"\nrun = []\n' >"$dir/empty-run.toml"
        ;;
    esac
}

for target in "${targets[@]}"; do
    seed "$target"
    echo "fuzz: $target for ${seconds}s ($(find "$work/$target" -type f | wc -l) seeds)"
    if ! target/debug/"$target" "$work/$target" \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target-" \
        >"$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log" >&2
        echo "fuzz: $target FAILED; replay with: target/debug/$target fuzz/artifacts/$target-*" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|cov: ' "$work/$target.log" | tail -n 4 | sed "s/^/  /"
done
