#!/usr/bin/env bash
# Server syscalls per message under ping-pong load, per backend.
#
#   scripts/syscalls.sh [--backends epoll,uring] [--connections 1000] [--size 20]
#                       [--duration 5] [--strace] [--save FILE.md]
#
# For each backend: `percore serve --backend B --shards 1 --no-pin` restricted to CPU 0,
# `percore load --connections N --size S --duration D --json` restricted to CPU 1. Once all N
# connections are established (counted with `ss`), `perf stat` attaches to the server and
# counts syscall tracepoints (raw_syscalls:sys_enter = every syscall, plus the ones that
# matter one by one, plus io_uring submissions and poll arming) until the load generator has
# ended; counts are divided by the messages echoed in the load's measured window. The connect
# phase is therefore not counted; the window's ends (messages in flight, the resets at the end)
# add at most about N syscalls, far below the totals.
#
# --strace: a second run per backend under `strace -c -f -p PID` (same attach points) for the
# full per-syscall breakdown. strace stops the server at every syscall: read its ratios only.
#
# Needs perf with tracepoints (/sys/kernel/tracing), strace for --strace, taskset, ss.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BACKENDS=epoll,uring
CONNS=1000
SIZE=20
DURATION=5
STRACE=0
SAVE=
while [ $# -gt 0 ]; do
    case "$1" in
        --backends) BACKENDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --strace) STRACE=1; shift ;;
        --save) SAVE=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

BIN=./target/release/percore
[ -x "$BIN" ] || cargo build --release -p percore-bench
TMP=$(mktemp -d)
SPID=
cleanup() {
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

SC=(read recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_pwait2
    epoll_ctl io_uring_enter accept4 futex)
EVENTS=raw_syscalls:sys_enter
for s in "${SC[@]}"; do EVENTS+=",syscalls:sys_enter_$s"; done
EVENTS+=",io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_poll_arm"
EVENTS+=",io_uring:io_uring_queue_async_work,io_uring:io_uring_task_work_run"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server BACKEND -> sets SPID, PORT
start_server() {
    PORT=$(free_port)
    taskset -c 0 "$BIN" serve --backend "$1" --shards 1 --no-pin --addr "127.0.0.1:$PORT" \
        >"$TMP/serve.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do
        ss -ltnH "sport = :$PORT" | grep -q . && return 0
        sleep 0.05
    done
    echo "server ($1) did not listen on $PORT:" >&2; cat "$TMP/serve.log" >&2; exit 1
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
}

# run_load -> starts the load in the background (LPID), returns once all connections are up
run_load() {
    taskset -c 1 "$BIN" load --url "ws://127.0.0.1:$PORT/" --connections "$CONNS" --size "$SIZE" \
        --duration "$DURATION" --server-pid "$SPID" --json >"$TMP/load.json" 2>"$TMP/load.err" &
    LPID=$!
    for _ in $(seq 600); do
        n=$(ss -tnH state established "( sport = :$PORT )" | wc -l)
        [ "$n" -ge "$CONNS" ] && return 0
        kill -0 "$LPID" 2>/dev/null || break
        sleep 0.05
    done
    echo "only $n of $CONNS connections established" >&2; cat "$TMP/load.err" >&2; exit 1
}

json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }

ROWS=()
DETAIL=()
for B in ${BACKENDS//,/ }; do
    # --- perf stat: counts, little overhead
    start_server "$B"
    run_load
    perf stat -x, -e "$EVENTS" -p "$SPID" -o "$TMP/perf.csv" &
    PPID_=$!
    wait "$LPID" || true
    kill -INT "$PPID_"; wait "$PPID_" 2>/dev/null || true
    stop_server
    MSGS=$(json "$TMP/load.json" messages)
    ERRS=$(json "$TMP/load.json" errors)
    CPU=$(json "$TMP/load.json" server_cpu_us_per_msg)
    ROW=$(python3 - "$TMP/perf.csv" "$MSGS" "$B" "$ERRS" "$CPU" <<'EOF'
import sys
path, msgs, backend, errs, cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or line.startswith("#"):
        continue
    try:
        c[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
    except ValueError:
        pass
tot = c.get("sys_enter", 0)
per = lambda k: c.get(k, 0) / msgs if msgs else float("nan")
reads = sum(c.get(k, 0) for k in ("read", "recvfrom", "recvmsg"))
writes = sum(c.get(k, 0) for k in ("write", "writev", "sendto", "sendmsg"))
waits = sum(c.get(k, 0) for k in ("epoll_wait", "epoll_pwait", "epoll_pwait2"))
top = sorted(((v, k) for k, v in c.items() if k not in ("sys_enter",) and v), reverse=True)
print(f"| {backend} | {msgs} | {errs} | {cpu} | {tot} | {tot/msgs:.3f} | {waits/msgs:.3f} | "
      f"{reads/msgs:.3f} | {writes/msgs:.3f} | {per('epoll_ctl'):.4f} | {per('io_uring_enter'):.3f} | "
      f"{per('io_uring_submit_req'):.3f} | {per('io_uring_complete'):.3f} | {per('io_uring_poll_arm'):.3f} | "
      f"{per('io_uring_queue_async_work'):.4f} |")
print("DETAIL " + backend + ": " + ", ".join(f"{k} {v}" for v, k in top))
EOF
)
    ROWS+=("$(echo "$ROW" | grep -v '^DETAIL')")
    DETAIL+=("$(echo "$ROW" | grep '^DETAIL' | sed 's/^DETAIL //')")

    # --- strace -c: every syscall by name (slow: ratios only)
    if [ "$STRACE" = 1 ]; then
        start_server "$B"
        run_load
        strace -c -f -p "$SPID" -o "$TMP/strace.txt" 2>/dev/null &
        STPID=$!
        wait "$LPID" || true
        kill -INT "$STPID"; wait "$STPID" 2>/dev/null || true
        stop_server
        SMSGS=$(json "$TMP/load.json" messages)
        DETAIL+=("strace -c, $B, $SMSGS messages in the window (calls / message):")
        DETAIL+=("$(awk -v m="$SMSGS" '/^ *[0-9]/ && NF>=5 { name=$NF; calls=$4; printf "    %-16s %10d calls  %.3f/msg\n", name, calls, calls/m }' "$TMP/strace.txt" | head -12)")
    fi
done

OUT=$(
    echo "- command: \`scripts/syscalls.sh --backends $BACKENDS --connections $CONNS --size $SIZE --duration $DURATION$([ "$STRACE" = 1 ] && echo ' --strace')\`"
    echo "- date: $(date -u '+%F %H:%M') UTC"
    echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs, Linux $(uname -r); shared, noisy"
    echo "- server: \`percore serve --backend B --shards 1 --no-pin\` on CPU 0; load: \`percore load --connections $CONNS --size $SIZE --duration $DURATION --json\` on CPU 1"
    echo
    echo "Per message = per echoed message (one frame in, one frame out) in the load's measured window."
    echo
    echo "| backend | messages | errors | server CPU µs/msg | syscalls | syscalls/msg | epoll_wait/msg | read+recv/msg | write+send/msg | epoll_ctl/msg | io_uring_enter/msg | SQEs/msg | CQEs/msg | poll arms/msg | io-wq punts/msg |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Raw counts (perf stat tracepoints over the window):"
    echo
    printf '%s\n' "${DETAIL[@]}" | sed 's/^/    /'
)
echo "$OUT"
if [ -n "$SAVE" ]; then
    { echo "# Server syscalls per message"; echo; echo "$OUT"; } >"$SAVE"
fi
