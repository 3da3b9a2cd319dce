#!/usr/bin/env bash
# Broadcast 1 -> N subscribers on one server, against the same subscribers split over two
# servers joined through a NATS broker (and one server with --cluster, for the bridge's own
# cost). The configurations alternate, REPS runs each; the table gives medians.
#
#   scripts/cluster-bench.sh [--reps 3] [--connections 10000] [--duration 5] \
#       [--backend epoll|uring] [--save FILE.md]
#
# Servers (1 shard each) and nats-server run on CPU 0, the load generator (one thread) on CPU 1.
# Connection 0 publishes (closed loop: its next message when its own copy is back); with two
# servers the connections alternate between them, so the publisher and half the subscribers are
# on server A, the other half on server B, reached through the broker. Server CPU is both
# servers' user+system time over the window; broker CPU is nats-server's over the whole run
# (10 ms ticks). Every address is on 127.0.0.1, every port free, every process stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=3
CONNS=10000
DURATION=5
BACKEND=epoll
SAVE=
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --backend) BACKEND=$2; shift 2 ;;
        --save) SAVE=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

NATS=$(command -v nats-server || true)
for p in /usr/sbin/nats-server /usr/bin/nats-server; do
    [ -n "$NATS" ] || { [ -x "$p" ] && NATS=$p; }
done
[ -n "$NATS" ] || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }

cargo build --release -p percore-bench >&2
BIN=./target/release/percore
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ticks PID -> utime + stime in clock ticks
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

NATS_PORT=$(free_port)
taskset -c 0 "$NATS" -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
done
URL=nats://127.0.0.1:$NATS_PORT

# serve PORT [ARGS...] -> starts a server, prints its pid once it listens
serve() {
    local port=$1; shift
    taskset -c 0 "$BIN" serve --addr "127.0.0.1:$port" --backend "$BACKEND" --shards 1 \
        --no-pin --mode broadcast --shutdown-grace-secs 1 "$@" >"$TMP/serve-$port.out" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do
        grep -q listening "$TMP/serve-$port.out" 2>/dev/null && break
        sleep 0.05
    done
    echo "$pid"
}

stop() {
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
    done
}

# run CONFIG -> one JSON line: the load summary plus config and broker CPU
run() {
    local config=$1 a b urls pids
    a=$(free_port)
    case "$config" in
        one) A=$(serve "$a"); urls="ws://127.0.0.1:$a/"; pids=$A ;;
        one+cluster)
            A=$(serve "$a" --cluster "$URL"); urls="ws://127.0.0.1:$a/"; pids=$A ;;
        two)
            b=$(free_port)
            A=$(serve "$a" --cluster "$URL")
            B=$(serve "$b" --cluster "$URL")
            urls="ws://127.0.0.1:$a/,ws://127.0.0.1:$b/"; pids="$A,$B" ;;
    esac
    local t0 t1
    t0=$(ticks "$NATS_PID")
    taskset -c 1 "$BIN" load --url "$urls" --mode broadcast --connections "$CONNS" \
        --publishers 1 --duration "$DURATION" --json --server-pid "$pids" --quiet \
        >"$TMP/load.json"
    t1=$(ticks "$NATS_PID")
    stop ${pids//,/ }
    python3 - "$config" "$((t1 - t0))" "$(getconf CLK_TCK)" "$TMP/load.json" <<'EOF'
import json, sys
config, ticks, hz, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = json.load(open(path))
s["config"] = config
s["broker_cpu_us"] = ticks * 1e6 / hz
print(json.dumps(s))
EOF
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%F %H:%M')
: >"$TMP/runs.jsonl"
for rep in $(seq "$REPS"); do
    for config in one two one+cluster; do
        echo "rep $rep: $config" >&2
        run "$config" | tee -a "$TMP/runs.jsonl" >&2
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

OUT=$(python3 - "$TMP/runs.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs)
print("| configuration | runs | deliveries/s | published | p50 ms | p99 ms | server CPU µs/delivery | broker CPU µs/delivery | load CPU µs/delivery | server RSS MiB | errors | open at end |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
names = {"one": "1 server", "one+cluster": "1 server, --cluster (all local)", "two": "2 servers through NATS"}
for c in ["one", "two", "one+cluster"]:
    rs = [r for r in runs if r["config"] == c]
    if not rs: continue
    print("| %s | %d | %.0f | %.0f | %.1f | %.1f | %.2f | %.3f | %.2f | %.1f | %d | %d |" % (
        names[c], len(rs),
        med([r["msgs_per_s"] for r in rs]),
        med([r["sent"] for r in rs]),
        med([r["p50_us"] for r in rs]) / 1000,
        med([r["p99_us"] for r in rs]) / 1000,
        med([r["server_cpu_us_per_msg"] for r in rs]),
        med([r["broker_cpu_us"] / max(r["messages"], 1) for r in rs]),
        med([r["client_cpu_us_per_msg"] for r in rs]),
        med([r["server_rss_kb"] for r in rs]) / 1024,
        max(r["errors"] for r in rs),
        min(r["open_at_end"] for r in rs)))
print()
print("Each run (in the order they ran):")
print()
print("| configuration | deliveries/s | published | p50 ms | p99 ms | server CPU µs/delivery | broker CPU ms (run) | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|")
for r in runs:
    print("| %s | %.0f | %d | %.1f | %.1f | %.2f | %.0f | %d |" % (
        r["config"], r["msgs_per_s"], r["sent"], r["p50_us"] / 1000, r["p99_us"] / 1000,
        r["server_cpu_us_per_msg"], r["broker_cpu_us"] / 1000, r["errors"]))
EOF
)
HEAD=$(cat <<EOF
- command: \`scripts/cluster-bench.sh --reps $REPS --connections $CONNS --duration $DURATION --backend $BACKEND\`
- date: $START UTC, commit $(git rev-parse --short HEAD); nats-server $("$NATS" --version | awk '{print $2}')
- load average (1/5/15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER
EOF
)
echo "$HEAD"
echo
echo "$OUT"
if [ -n "$SAVE" ]; then
    { echo "$HEAD"; echo; echo "$OUT"; } >"$SAVE.table"
    echo "table written to $SAVE.table" >&2
fi
