#!/usr/bin/env bash
# permessage-deflate CPU side by side: percore against uWebSockets, servers alternated.
#
#   scripts/deflate-bench.sh [--reps N] [--duration S] [--save FILE.md] [--skip-broadcast]
#
# Echo: server CPU µs per echoed 1 KiB JSON-like message, 100 connections, closed loop, driven
# by `percore load --deflate` (which inflates and verifies every reply), for each compression
# mode (shared, dedicated) and each server (percore epoll, percore io_uring, uWebSockets'
# uws_echo with its shared / dedicated compressor), plus the same without compression.
# Broadcast: 1 publisher -> 10,000 subscribers, 1 KiB JSON-like messages, percore shared mode
# against no compression: server CPU per delivery.
# The server runs on CPU 1 (taskset), the load generator on CPU 0; every cell is repeated N
# times (default 3), the servers alternated within each repetition; the tables give medians.
# The machine is shared: figures are noisy (the load average is recorded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=3 DURATION=5 SAVE= BROADCAST=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --save) SAVE=$2; shift 2 ;;
    --skip-broadcast) BROADCAST=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "deflate-bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release -p percore-bench --bin percore >&2
BIN=./target/release/percore
UWS_DIR=${PERCORE_UWS_DIR:-$HOME/.cache/percore-uws}
[ -x "$UWS_DIR/uws_echo" ] || ../shared/tools/uws/build.sh "$UWS_DIR" >&2
UWS=$UWS_DIR/uws_echo

WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME PORT: start server NAME on CPU 1 listening on PORT.
start() {
  local name=$1 port=$2
  case "$name" in
    percore-*)
      local rest=${name#percore-} backend comp mode=echo
      backend=${rest%%-*}; rest=${rest#*-}; comp=${rest%%-*}
      [[ "$name" == *-broadcast ]] && mode=broadcast
      taskset -c 1 "$BIN" serve --addr "127.0.0.1:$port" --backend "$backend" --shards 1 \
        --no-pin --mode "$mode" --compression "$comp" --idle-timeout-secs 0 \
        >"$WORK/server.log" 2>&1 &
      ;;
    uws-*)
      local comp=${name#uws-}
      taskset -c 1 "$UWS" "$port" echo "$comp" 0 >"$WORK/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$port" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "deflate-bench.sh: $name did not listen" >&2; cat "$WORK/server.log" >&2; exit 1
}

# cell NAME LOADARGS...: one measurement; prints "NAME cpu_us_per_msg msgs_per_s errors"
cell() {
  local name=$1; shift
  local port; port=$(free_port)
  start "$name" "$port"
  local out
  out=$(taskset -c 0 "$BIN" load --url "ws://127.0.0.1:$port/" --json --server-pid "$SERVER_PID" \
        --duration "$DURATION" "$@" 2>"$WORK/load.err" || true)
  stop_server
  python3 - "$name" "$out" <<'PY'
import json, sys
name, out = sys.argv[1], sys.argv[2]
try:
    d = json.loads(out)
    print(name, "%.3f" % (d["server_cpu_us_per_msg"] or float("nan")), "%.0f" % d["msgs_per_s"], d["errors"])
except Exception:
    print(name, "nan", "0", "no-result")
PY
}

ECHO_SERVERS=(percore-epoll-shared percore-uring-shared uws-shared
              percore-epoll-dedicated percore-uring-dedicated uws-dedicated
              percore-epoll-off percore-uring-off uws-none)
RESULTS=$WORK/results.txt
: >"$RESULTS"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%F %H:%M')
for rep in $(seq 1 "$REPS"); do
  for s in "${ECHO_SERVERS[@]}"; do
    if [[ "$s" == *-off || "$s" == *-none ]]; then
      r=$(cell "$s" --connections 100 --size 1024 --payload json)
    else
      r=$(cell "$s" --connections 100 --size 1024 --deflate)
    fi
    echo "echo $r" | tee -a "$RESULTS" >&2
  done
  if [ "$BROADCAST" = 1 ]; then
    for s in percore-epoll-shared-broadcast percore-epoll-off-broadcast; do
      extra=(--payload json)
      [[ "$s" == *shared* ]] && extra=(--deflate)
      r=$(cell "$s" --mode broadcast --connections 10000 --publishers 1 --size 1024 "${extra[@]}")
      echo "broadcast $r" | tee -a "$RESULTS" >&2
    done
  fi
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

TABLE=$(python3 - "$RESULTS" "$REPS" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    kind, name, cpu, rate, err = line.split()
    rows.setdefault((kind, name), []).append((float(cpu), float(rate), err))
med = lambda xs: st.median(xs) if xs else float("nan")
def get(kind, name):
    v = rows.get((kind, name), [])
    return med([c for c, _, _ in v]), med([r for _, r, _ in v]), [c for c, _, _ in v], sorted({e for _, _, e in v})
print("| mode | server | server CPU µs/msg (median) | runs | msgs/s (median) | errors | ratio to uWS |")
print("|---|---|--:|---|--:|---|--:|")
for mode, uws in (("shared", "uws-shared"), ("dedicated", "uws-dedicated"), ("off", "uws-none")):
    base = get("echo", uws)[0]
    for srv in ("percore-epoll-%s" % mode, "percore-uring-%s" % mode, uws):
        c, r, runs, errs = get("echo", srv)
        label = srv.replace("percore-", "percore ").replace("-%s" % mode, "").replace("uws-none", "uWS").replace("uws-%s" % mode, "uWS")
        print("| %s | %s | %.2f | %s | %.0f | %s | %.2f |" % (mode, label, c, " ".join("%.2f" % x for x in runs), r, ",".join(errs), c / base))
if any(k == "broadcast" for k, _ in rows):
    print()
    print("| broadcast 1 -> 10,000 | server CPU µs/delivery (median) | runs | deliveries/s (median) | errors |")
    print("|---|--:|---|--:|---|")
    base = get("broadcast", "percore-epoll-off-broadcast")[0]
    for srv, label in (("percore-epoll-shared-broadcast", "percore epoll, deflate shared"), ("percore-epoll-off-broadcast", "percore epoll, no compression")):
        c, r, runs, errs = get("broadcast", srv)
        print("| %s | %.3f | %s | %.0f | %s |" % (label, c, " ".join("%.3f" % x for x in runs), r, ",".join(errs)))
    print()
    print("deflate / no compression, CPU per delivery: %.2f" % (get("broadcast", "percore-epoll-shared-broadcast")[0] / base))
PY
)
OUT=$(
  echo "- command: \`scripts/deflate-bench.sh --reps $REPS --duration $DURATION\`"
  echo "- date: $START UTC, commit $(git rev-parse --short HEAD); load average before: $LOAD0, after: $LOAD1"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, Linux $(uname -r); shared with other builds: figures are noisy"
  echo
  echo "$TABLE"
)
echo "$OUT"
if [ -n "$SAVE" ]; then
  { echo "# permessage-deflate: server CPU against uWebSockets"; echo; echo "$OUT"; } >"$SAVE"
fi
