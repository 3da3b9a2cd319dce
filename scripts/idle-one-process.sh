#!/usr/bin/env bash
# N idle connections on ONE io_uring server process (direct descriptors: the connections are
# not in the file table, so RLIMIT_NOFILE = 20000 does not cap them; each shard's ring has its
# own table of --direct-fds-max entries).
#
#   scripts/idle-one-process.sh [--connections 100000] [--shards 7] [--duration 10] [-- SERVE_ARGS...]
#
# Server: `percore serve --backend uring --direct-fds --shards S --no-pin --idle-timeout-secs 2`
# on CPU 0 (plus SERVE_ARGS); load: `percore load --connections N --mode idle --duration D
# --server-pid PID --json` on CPU 1 (it answers the server's pings). Prints the load's result,
# the server's RSS empty and at the end of the window (read by the load while every connection
# is still open), bytes per connection, TCP sockets in use over time (/proc/net/sockstat), the
# server's counters when it stops, and which memory mappings grew (smaps, the last second with all N open).
#
# "Empty" is the server after a warm-up of 100 idle connections for 3 s (pinged), all closed:
# `percore serve` drops its start-up code pages once it listens, and the code that serves
# connections comes back on first use (~2.5 MB of the binary and libc, once); charged to the
# N connections it would read as ~25 B per connection at 100k that no connection holds.
# Shards: 7 by default, so that 100k connections (14,300 per shard) fit each shard's first
# fixed-file table (RLIMIT_NOFILE = 20,000 entries here; a shard opens another ring, with its
# own buffer ring, once a table is down to its last 4,097 entries: past 15,903 connections).
# PERCORE_BIN=PATH runs another build (default ./target/release/percore).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=100000
SHARDS=7
DURATION=10
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
EXTRA=("$@")

BIN=${PERCORE_BIN:-./target/release/percore}
[ -x "$BIN" ] || cargo build --release -p percore-bench
TMP=$(mktemp -d)
SPID=
MPID=
cleanup() {
    [ -n "$MPID" ] && kill "$MPID" 2>/dev/null || true
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 "$BIN" serve --backend uring --direct-fds --shards "$SHARDS" --no-pin \
    --idle-timeout-secs 2 --addr "127.0.0.1:$PORT" "${EXTRA[@]}" >"$TMP/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do
    ss -ltnH "sport = :$PORT" | grep -q . && break
    sleep 0.05
done
taskset -c 1 "$BIN" load --url "ws://127.0.0.1:$PORT/" --connections 100 --mode idle \
    --duration 3 --json >"$TMP/warmup.json" 2>"$TMP/warmup.err" || true
sleep 1
EMPTY_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
cp "/proc/$SPID/smaps" "$TMP/smaps-empty"

T0=$(date +%s.%N)
( while kill -0 "$SPID" 2>/dev/null; do
      echo "$(date +%s.%N) $(awk '/^TCP:/ {print $3}' /proc/net/sockstat) $(awk '/VmRSS/ {print $2}' "/proc/$SPID/status" 2>/dev/null)"
      sleep 1
  done ) >"$TMP/monitor.log" &
MPID=$!

LSTART=$(date +%s.%N)
taskset -c 1 "$BIN" load --url "ws://127.0.0.1:$PORT/" --connections "$N" --mode idle \
    --duration "$DURATION" --server-pid "$SPID" --json >"$TMP/load.json" 2>"$TMP/load.err" &
LPID=$!
# smaps while every connection is open (the last sample with all N of them in
# /proc/net/sockstat, both ends on this host; the load's progress lines go nowhere without a
# terminal)
( while kill -0 "$LPID" 2>/dev/null; do
      if [ "$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)" -ge $((2 * N)) ]; then
          cp "/proc/$SPID/smaps" "$TMP/smaps-loaded.new" 2>/dev/null &&
              mv "$TMP/smaps-loaded.new" "$TMP/smaps-loaded"
      fi
      sleep 1
  done ) &
SMPID=$!
LRC=0
wait "$LPID" || LRC=$?
LEND=$(date +%s.%N)
wait "$SMPID" 2>/dev/null || true
sleep 3 # server counters a little after the load's resets
kill -INT "$SPID"
wait "$SPID" || true
SPID=
kill "$MPID" 2>/dev/null || true
MPID=

echo "## $N idle connections, one \`$(basename "$BIN") serve --backend uring --direct-fds --shards $SHARDS --idle-timeout-secs 2 ${EXTRA[*]}\` process"
echo
echo "- date: $(date -u '+%F %H:%M') UTC, commit $(git rev-parse --short HEAD); load exit status $LRC"
python3 - "$TMP/load.json" "$EMPTY_KB" "$N" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); empty = int(sys.argv[2]); n = int(sys.argv[3])
rss = d.get("server_rss_kb") or 0
print(f"- load: connections {d['connections']} of {n}, connect_s {d['connect_s']:.2f}, "
      f"open_at_end {d['open_at_end']}, errors {d['errors']} {d['errors_detail']}, "
      f"server CPU {d['server_cpu_us'] / 1e6:.2f} s over the run")
print(f"- server RSS: empty {empty} KiB, window end {rss} KiB, "
      f"**{(rss - empty) * 1024 / max(d['connections'], 1):.0f} bytes/connection**")
EOF
echo "- server at stop: $(tail -1 "$TMP/serve.log")"
echo
echo "TCP sockets in use (both ends) and server RSS, per second (t = seconds since the load started; the load ended at t = $(python3 -c "print(f'{$LEND - $LSTART:.1f}')")):"
echo
awk -v t0="$LSTART" '{ printf "    t=%5.1f  tcp_inuse=%7d  rss_kib=%s\n", $1 - t0, $2, $3 }' "$TMP/monitor.log"
if [ -f "$TMP/smaps-loaded" ]; then
    echo
    echo "Mappings that grew (KiB, empty -> the last second with every connection open):"
    echo
    python3 - "$TMP/smaps-empty" "$TMP/smaps-loaded" <<'EOF'
import sys
def parse(p):
    maps = {}; cur = None
    for l in open(p):
        f = l.split()
        if "-" in f[0] and not f[0].endswith(":"):
            cur = f[0]; maps[cur] = [0, " ".join(f[5:]) or "[anon]"]
        elif f[0] == "Rss:":
            maps[cur][0] = int(f[1])
    return maps
e = parse(sys.argv[1]); l = parse(sys.argv[2])
rows = []
for k, (rss, name) in l.items():
    a, b = (int(x, 16) for x in k.split("-"))
    d = rss - e.get(k, [0])[0]
    if d > 64:
        rows.append((d, (b - a) // 1024, name))
for d, size, name in sorted(rows, reverse=True):
    print(f"    +{d:6d} KiB  (mapping {size:6d} KiB) {name}")
print(f"    total RSS {sum(v[0] for v in l.values())} KiB")
EOF
fi
