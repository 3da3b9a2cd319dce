#!/usr/bin/env bash
# One million WebSocket connections on ONE `percore serve` process, every one pinged.
#
#   scripts/million.sh [--connections 1000000] [--hold 130] [--idle 60] [--probe 60]
#                      [--ramp 12000] [--shards 2] [--json] [--keep DIR] [-- SERVE_ARGS...]
#
# Server: `percore serve --backend uring --direct-fds --shards S --idle-timeout-secs 60` (the
# connections are io_uring direct descriptors; a shard whose connections outgrow one
# fixed-file table, which RLIMIT_NOFILE caps, opens another ring). Load: `percore load --mode
# idle --connections N --duration HOLD --linger 120` (worker processes of <= 18,000 connections,
# 127.0.0.x sources with explicit ports); it answers every ping. Once all are up, a second
# `percore load --mode echo --connections 100 --rate 500` measures echo latency while the
# others sit idle. After the hold the server gets SIGINT: a graceful shutdown (close 1001 to
# every connection, the load answers each close frame).
#
# Reports: connect time, errors, connections that answered a ping, server RSS and user bytes
# per connection, kernel slab per connection (both ends are on this host: per pair), server
# CPU per ping (server CPU over the hold / pings answered in it; includes the 100-connection
# echo probe), echo p99, shutdown time and the server's RSS through the shutdown (sampled every
# 0.1 s: at SIGINT and its peak). With --json the last line is one JSON object. PERCORE_BIN
# names another build of the binary to run (a before/after comparison).
#
# Needs about 13 KiB of free memory per connection (kernel ~10 KiB per loopback pair): the
# script refuses to start without it. The server runs under `nice -n 10`, the load under
# `nice -n 19` and opens at most --ramp connections per second: on a shared 2-core machine a
# storm of 56 load processes at the server's priority starved it (handshakes past their
# timeout, the run abandoned at ~340k of 1M).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=1000000
HOLD=130
IDLE=60
PROBE=60
RAMP=12000
SHARDS=2
JSON=0
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --hold) HOLD=$2; shift 2 ;;
        --shards) SHARDS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --probe) PROBE=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --json) JSON=1; shift ;;
        --keep) KEEP=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
EXTRA=("$@")

NEED_KB=$((N * 13))
AVAIL_KB=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ "$AVAIL_KB" -lt "$NEED_KB" ]; then
    echo "million.sh: $N connections need about $((NEED_KB / 1048576 + 1)) GiB available; MemAvailable is $((AVAIL_KB / 1048576)) GiB" >&2
    exit 1
fi

BIN=${PERCORE_BIN:-./target/release/percore}
[ -x "$BIN" ] || cargo build --release -p percore-bench >&2
TMP=$(mktemp -d)
SPID=
LPID=
MPID=
RPID=
ERRORS=unknown
keep() {
    mkdir -p "$1"
    cp -p "$TMP"/* "$1"/ 2>/dev/null || true
}
cleanup() {
    [ -n "$MPID" ] && kill "$MPID" 2>/dev/null || true
    [ -n "$RPID" ] && kill "$RPID" 2>/dev/null || true
    [ -n "$LPID" ] && kill "$LPID" 2>/dev/null || true
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
    if [ -n "$KEEP" ]; then
        keep "$KEEP"
        echo "million.sh: evidence kept in $KEEP" >&2
    elif [ "$ERRORS" != 0 ]; then
        # A run with errors (or one that did not get as far as counting them) keeps its files.
        KEPT=$(mktemp -d "${TMPDIR:-/tmp}/million-evidence.XXXXXX")
        keep "$KEPT"
        echo "million.sh: errors=$ERRORS: evidence kept in $KEPT" >&2
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { [ "$JSON" = 1 ] || echo "$@"; echo "$@" >>"$TMP/steps.log"; }

"$BIN" tune --connections "$N" >"$TMP/tune.txt" 2>&1 || true

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PER_SHARD=$(( (N + SHARDS - 1) / SHARDS + 10000 ))
SERVE_ARGS=(--backend uring --direct-fds --shards "$SHARDS" --idle-timeout-secs "$IDLE"
    --pong-timeout-secs 30 --handshake-timeout-secs 120 --connections-max $((N + 1000)) --direct-fds-max "$PER_SHARD"
    --recv-buffer-bytes 4096 --recv-buffers 64 --shutdown-grace-secs 60
    --addr "127.0.0.1:$PORT" "${EXTRA[@]}")
nice -n 10 "$BIN" serve "${SERVE_ARGS[@]}" >"$TMP/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 200); do
    ss -ltnH "sport = :$PORT" | grep -q . && break
    sleep 0.05
done
sleep 1
EMPTY_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
SLAB0_KB=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SPID/stat"; }
healthz() { curl -s --max-time 5 "http://127.0.0.1:$PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null || echo 0; }

( while kill -0 "$SPID" 2>/dev/null; do
      echo "$(date +%s.%N) $(awk '/^TCP:/ {print $3}' /proc/net/sockstat) $(awk '/VmRSS/ {print $2}' "/proc/$SPID/status" 2>/dev/null) $(awk '/^Slab:/ {print $2}' /proc/meminfo) $(awk '{print $14 + $15}' "/proc/$SPID/stat" 2>/dev/null)"
      sleep 5
  done ) >"$TMP/monitor.log" &
MPID=$!

# Kernel TCP counters (listen queue overflows, SYN cookies, failed connects) before, once all
# are up, and at the end: a connection the server never accepted shows there.
nstat_to() { nstat -az 2>/dev/null >"$TMP/$1" || true; }
nstat_to nstat-start.txt
log "million: $N connections, server pid $SPID on port $PORT: percore serve ${SERVE_ARGS[*]}"
T0=$(date +%s.%N)
nice -n 19 "$BIN" load --url "ws://127.0.0.1:$PORT/" --connections "$N" --mode idle \
    --duration "$HOLD" --linger 120 --timeout 120 --ramp "$RAMP" --server-pid "$SPID" --json \
    >"$TMP/idle.json" 2>"$TMP/idle.err" &
LPID=$!

# Connected: the server holds N + the one /healthz connection asking.
UP=0
while kill -0 "$LPID" 2>/dev/null; do
    UP=$(healthz)
    [ "$UP" -ge "$N" ] && break
    sleep 2
done
T_UP=$(date +%s.%N)
log "million: $UP connections up after $(python3 -c "print(f'{$T_UP - $T0:.1f}')") s (script clock)"

nstat_to nstat-up.txt

# Settle, then memory with everything up; then the echo probe meanwhile.
sleep 20
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
SLAB1_KB=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
grep -E '^(TCP|sockets):' /proc/net/sockstat >"$TMP/sockstat"
awk '/^(TCP|tw_sock_TCP|sock_inode_cache|dentry|filp|kmalloc-[0-9]+|io_kiocb|skbuff_head_cache) / {printf "%s %d KiB\n", $1, $3 * $4 / 1024}' /proc/slabinfo >"$TMP/slabinfo" 2>/dev/null || true
cp "/proc/$SPID/smaps_rollup" "$TMP/smaps_rollup" 2>/dev/null || true
log "million: server RSS $RSS_KB KiB (empty $EMPTY_KB), slab +$((SLAB1_KB - SLAB0_KB)) KiB"
nice -n 10 "$BIN" load --url "ws://127.0.0.1:$PORT/" --connections 100 --mode echo --rate 500 \
    --duration "$PROBE" --json >"$TMP/echo.json" 2>"$TMP/echo.err" || true
log "million: echo probe done"

# The hold ends: graceful shutdown while the load lingers.
while kill -0 "$LPID" 2>/dev/null && ! grep -q "window over" "$TMP/idle.err"; do sleep 1; done
# The server's RSS through the shutdown, every 0.1 s until it exits (the 5 s monitor misses
# its peak).
( while kill -0 "$SPID" 2>/dev/null; do
      echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' "/proc/$SPID/status" 2>/dev/null)"
      sleep 0.1
  done ) >"$TMP/shutdown-rss.log" &
RPID=$!
TS0=$(date +%s.%N)
kill -INT "$SPID"
wait "$SPID" || true
TS1=$(date +%s.%N)
SPID=
wait "$RPID" 2>/dev/null || true
RPID=
LRC=0
wait "$LPID" || LRC=$?
LPID=
kill "$MPID" 2>/dev/null || true
MPID=
nstat_to nstat-end.txt
log "million: server stopped in $(python3 -c "print(f'{$TS1 - $TS0:.1f}')") s; load exit $LRC"

python3 - "$TMP" "$N" "$EMPTY_KB" "$RSS_KB" "$SLAB0_KB" "$SLAB1_KB" "$TS0" "$TS1" "$JSON" "$HOLD" "$SHARDS" "$LRC" <<'EOF'
import json, sys, os, re
tmp, n, empty, rss, slab0, slab1, ts0, ts1, as_json, hold, shards, lrc = sys.argv[1:]
n, empty, rss, slab0, slab1 = int(n), int(empty), int(rss), int(slab0), int(slab1)
as_json = as_json == "1"
def load(p):
    try:
        return json.loads(open(os.path.join(tmp, p)).read().strip().splitlines()[-1])
    except Exception:
        return {}
idle, echo = load("idle.json"), load("echo.json")
stop = [l for l in open(os.path.join(tmp, "serve.log")) if l.startswith("stopped:")]
stopd = dict(kv.split("=") for kv in stop[-1].split()[1:]) if stop else {}
closes = [l for l in open(os.path.join(tmp, "serve.log")) if l.startswith("shutdown:")]
closesd = {k: int(v) for k, v in (kv.split("=") for kv in closes[-1].split()[1:])} if closes else {}
rss_rows = []
for l in open(os.path.join(tmp, "shutdown-rss.log")):
    f = l.split()
    if len(f) == 2 and f[1].isdigit():
        rss_rows.append((float(f[0]) - float(ts0), int(f[1])))
rss_peak = max(rss_rows, key=lambda r: r[1]) if rss_rows else (None, None)
conns = idle.get("connections", 0)
user = (rss - empty) * 1024 / max(conns, 1)
slab = (slab1 - slab0) * 1024 / max(conns, 1)
errors = idle.get("errors", -1) + echo.get("errors", 0)
def nstat(p):
    try:
        return {l.split()[0]: int(l.split()[1]) for l in open(os.path.join(tmp, p)) if len(l.split()) >= 2 and l.split()[1].isdigit()}
    except Exception:
        return {}
ns0, ns1 = nstat("nstat-start.txt"), nstat("nstat-end.txt")
tcp_keys = ["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv",
            "TcpExtSyncookiesFailed", "TcpAttemptFails", "TcpExtTCPReqQFullDrop"]
tcp = {k: ns1.get(k, 0) - ns0.get(k, 0) for k in tcp_keys if k in ns0 and k in ns1}
out = {
    "connections": conns,
    "connections_target": n,
    "errors": errors,
    "errors_detail": idle.get("errors_detail"),
    "connect_s": idle.get("connect_s"),
    "hold_s": float(hold),
    "shards": int(shards),
    "open_at_end": idle.get("open_at_end"),
    "pings_answered": idle.get("pings_answered"),
    "pings_in_window": idle.get("pings_in_window"),
    "connections_pinged": idle.get("connections_pinged"),
    "server_rss_kb": rss,
    "server_rss_empty_kb": empty,
    "bytes_per_conn": round(user),
    "slab_bytes_per_pair": round(slab),
    "server_cpu_s_window": (idle.get("server_cpu_us") or 0) / 1e6,
    "server_cpu_us_per_ping": idle.get("server_cpu_us_per_ping"),
    "echo_connections": echo.get("connections"),
    "echo_msgs": echo.get("messages"),
    "echo_p50_us": echo.get("p50_us"),
    "echo_p99_us": echo.get("p99_us"),
    "echo_max_us": echo.get("max_us"),
    "closed_by_server": idle.get("closed_by_server"),
    "shutdown_s": round(float(ts1) - float(ts0), 1),
    "shutdown_rss_start_kib": rss_rows[0][1] if rss_rows else None,
    "shutdown_rss_peak_kib": rss_peak[1],
    "shutdown_rss_peak_at_s": round(rss_peak[0], 1) if rss_peak[0] is not None else None,
    "shutdown_closes": closesd.get("closes"),
    "shutdown_close_turns": closesd.get("turns"),
    "server_stop": stopd,
    "load_exit": int(lrc),
    "tcp_counters": tcp,
}
if not as_json:
    print()
    print(f"connections      {conns} of {n} in {out['connect_s']} s; errors {errors} {out['errors_detail']}")
    print(f"pinged           {out['connections_pinged']} connections answered >= 1 ping; pings answered {out['pings_answered']} ({out['pings_in_window']} in the {hold} s hold)")
    print(f"server memory    RSS {rss} KiB (empty {empty} KiB): {user:.0f} B per connection")
    print(f"kernel slab      +{(slab1 - slab0) / 1024:.0f} MiB: {slab:.0f} B per connection pair (both ends on this host)")
    print(f"server CPU       {out['server_cpu_s_window']:.2f} s over the hold: {out['server_cpu_us_per_ping']} us per ping (echo probe included)")
    print(f"echo (100 conns) p50 {out['echo_p50_us']} us, p99 {out['echo_p99_us']} us, max {out['echo_max_us']} us over {out['echo_msgs']} echoes")
    print(f"shutdown         {out['shutdown_s']} s; close frames answered {out['closed_by_server']}; server: {stop[-1].strip() if stop else '?'}")
    print(f"shutdown RSS     {out['shutdown_rss_start_kib']} KiB at SIGINT, peak {out['shutdown_rss_peak_kib']} KiB {out['shutdown_rss_peak_at_s']} s after it (sampled every 0.1 s); closes begun {out['shutdown_closes']} in {out['shutdown_close_turns']} loop turns")
    print(f"kernel TCP       {' '.join(f'{k}=+{v}' for k, v in tcp.items())} (host-wide, over the run)")
    print()
    print("kernel slab caches with everything up:")
    print(open(os.path.join(tmp, "slabinfo")).read().rstrip())
    print(open(os.path.join(tmp, "sockstat")).read().rstrip())
    print()
    print("t(s) tcp_inuse server_rss_kib slab_kib server_cpu_ticks, every 5 s:")
    rows = [l.split() for l in open(os.path.join(tmp, "monitor.log")) if len(l.split()) == 5]
    if rows:
        t0 = float(rows[0][0])
        for r in rows:
            print(f"  {float(r[0]) - t0:6.0f} {r[1]:>8} {r[2]:>8} {r[3]:>9} {r[4]:>6}")
    print()
    print("percore tune --connections", n, "(this host):")
    print(open(os.path.join(tmp, "tune.txt")).read().rstrip())
with open(os.path.join(tmp, "result.json"), "w") as f:
    f.write(json.dumps(out) + "\n")
with open(os.path.join(tmp, "errors"), "w") as f:
    f.write(f"{errors if lrc == '0' or errors != 0 else 'load-exit-' + lrc}\n")
print(json.dumps(out))
EOF
ERRORS=$(cat "$TMP/errors" 2>/dev/null || echo unknown)
