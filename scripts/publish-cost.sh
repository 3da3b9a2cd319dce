#!/usr/bin/env bash
# Instructions one publish costs the publishing thread (callgrind, deterministic), three ways:
# the engine built without the `cluster` feature, with it but no cluster configured, and with a
# cluster configured (the bridge's own work is on its thread and not counted here).
#
#   scripts/publish-cost.sh [N]        # default 20000 publishes of 20 bytes
#
# Runs `engine/examples/publish_cost.rs` under `valgrind --tool=callgrind` with collection
# switched on only inside its `publish` function (one `Publisher::publish` call), three times
# each: a publish wakes the shard (and the bridge) only when no wake-up is pending, so counts
# vary by a few percent with thread timing; the table gives each run and the median.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-20000}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# A port nothing listens on: the bridge keeps reconnecting and counts the publishes unsent.
DEAD=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# ir LABEL BINARY ARGS... -> a table row: instructions per publish, three runs and the median
ir() {
    local label=$1; shift
    local runs=()
    for _ in 1 2 3; do
        valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
            --toggle-collect='publish_cost::publish' "$@" >"$TMP/out" 2>"$TMP/err"
        local total
        total=$(grep -m1 'Collected :' "$TMP/err" | awk '{print $NF}')
        runs+=("$(( total / N ))")
    done
    local median
    median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
    echo "| $label | $N | ${runs[*]} | $median | $(cat "$TMP/out") |"
}

cargo build --release -p percore --example publish_cost >&2
cp target/release/examples/publish_cost "$TMP/without"
cargo build --release -p percore --features cluster --example publish_cost >&2
cp target/release/examples/publish_cost "$TMP/with"

echo "- command: \`scripts/publish-cost.sh $N\` (valgrind $(valgrind --version | sed 's/valgrind-//'), callgrind, Ir inside \`Publisher::publish\`)"
echo "- date: $(date -u '+%F %H:%M') UTC, commit $(git rev-parse --short HEAD)"
echo
echo "| engine | publishes | Ir/publish, 3 runs | median | counters (last run) |"
echo "|---|--:|--:|--:|---|"
ir "without the \`cluster\` feature" "$TMP/without" "$N"
ir "feature on, no cluster configured" "$TMP/with" "$N"
ir "cluster configured" "$TMP/with" "$N" "nats://127.0.0.1:$DEAD"
