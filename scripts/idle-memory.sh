#!/usr/bin/env bash
# User memory per idle connection, ws:// beside wss://, on each backend: the server's RSS with
# no connection, then with N idle connections (read by the load generator at the end of its
# window, every connection still open), divided by N.
#
#   scripts/idle-memory.sh [--connections 10000] [--duration 8] [--backends "epoll uring"]
#                          [-- SERVE_ARGS...]
#
# Server: `percore serve --backend B --shards 2 --no-pin --idle-timeout-secs 2` on CPU 0 (a ping
# every ~2 s, so each connection has sent and received a few records since its handshake; over
# TLS with a certificate from `percore cert`, listening for wss:// only); load: `percore load
# --mode idle --connections N --duration D --server-pid PID --json` on CPU 1 (it answers the
# pings; over TLS it verifies the server against the test CA). One server per row, rows run
# one after the other. RSS is what the process touched (heap, slab, io_uring buffer rings), not
# the kernel's socket memory. Prints a markdown table; its last column names the mappings that
# grew most (KiB grown / KiB mapped, from /proc/PID/smaps 2 s before the end of the window): the
# malloc arenas of the two shards, and on io_uring the two provided-buffer rings (recv_buffers x
# recv_buffer_bytes each, 16 MiB by default; consumed incrementally, so the pages touched grow
# with the bytes received, up to that bound per shard, whatever the number of connections).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=10000
DURATION=8
BACKENDS="epoll uring"
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) N=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --backends) BACKENDS=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
EXTRA=("$@")

BIN=./target/release/percore
[ -x "$BIN" ] || cargo build --release -p percore-bench
TMP=$(mktemp -d)
SPID=
cleanup() {
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
"$BIN" cert --out "$TMP/tls" --name localhost --name 127.0.0.1 >/dev/null

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

echo "| backend | transport | connections open at end | errors | server RSS empty KiB | with $N idle KiB | bytes/connection | mappings grown most (KiB / KiB) |"
echo "|---|---|--:|--:|--:|--:|--:|---|"
for backend in $BACKENDS; do
    for transport in ws wss; do
        PORT=$(free_port)
        TLS_SERVE=()
        TLS_LOAD=()
        if [ "$transport" = wss ]; then
            TLS_SERVE=(--tls-cert "$TMP/tls/cert.pem" --tls-key "$TMP/tls/key.pem")
            TLS_LOAD=(--tls-ca "$TMP/tls/ca.pem")
        fi
        taskset -c 0 "$BIN" serve --backend "$backend" --shards 2 --no-pin --idle-timeout-secs 2 \
            --addr "127.0.0.1:$PORT" "${TLS_SERVE[@]}" "${EXTRA[@]}" >"$TMP/serve.log" 2>&1 &
        SPID=$!
        for _ in $(seq 100); do
            ss -ltnH "sport = :$PORT" | grep -q . && break
            sleep 0.05
        done
        sleep 1
        EMPTY_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
        cp "/proc/$SPID/smaps" "$TMP/smaps-empty"
        rm -f "$TMP/smaps-loaded"
        taskset -c 1 "$BIN" load --url "$transport://127.0.0.1:$PORT/" "${TLS_LOAD[@]}" \
            --connections "$N" --mode idle --duration "$DURATION" --server-pid "$SPID" --json \
            >"$TMP/load.json" 2>"$TMP/load.err" &
        LPID=$!
        # smaps 2 s before the end of the window, which starts once all N are connected
        ( while [ "$(ss -tnH state established "sport = :$PORT" | wc -l)" -lt "$N" ]; do
              kill -0 "$LPID" 2>/dev/null || exit 0
              sleep 0.2
          done
          sleep $((DURATION > 3 ? DURATION - 2 : 1))
          kill -0 "$LPID" 2>/dev/null && cp "/proc/$SPID/smaps" "$TMP/smaps-loaded" ) &
        SMPID=$!
        LRC=0
        wait "$LPID" || LRC=$?
        wait "$SMPID" 2>/dev/null || true
        kill -INT "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
        SPID=
        if [ "$LRC" != 0 ] || [ ! -s "$TMP/load.json" ]; then
            echo "idle-memory.sh: load failed on $backend $transport (status $LRC):" >&2
            tail -5 "$TMP/load.err" >&2
            exit 1
        fi
        python3 - "$TMP/load.json" "$EMPTY_KB" "$backend" "$transport" "$TMP/smaps-empty" "$TMP/smaps-loaded" <<'EOF'
import json, os, sys
d = json.load(open(sys.argv[1])); empty = int(sys.argv[2])
rss = d.get("server_rss_kb") or 0
n = max(d["connections"], 1)
def parse(p):
    maps, cur = {}, None
    for l in open(p):
        f = l.split()
        if "-" in f[0] and not f[0].endswith(":"):
            a, b = (int(x, 16) for x in f[0].split("-"))
            cur = f[0]; maps[cur] = [0, (b - a) // 1024]
        elif f[0] == "Rss:":
            maps[cur][0] = int(f[1])
    return maps
grown = "(no smaps)"
if os.path.exists(sys.argv[6]):
    e, l = parse(sys.argv[5]), parse(sys.argv[6])
    rows = sorted(((v[0] - e.get(k, [0])[0], v[1]) for k, v in l.items()), reverse=True)
    grown = ", ".join(f"+{g}/{m}" for g, m in rows[:4] if g > 256)
print(f"| {sys.argv[3]} | {sys.argv[4]} | {d['open_at_end']} | {d['errors']} | {empty} | {rss} | "
      f"**{(rss - empty) * 1024 / n:.0f}** | {grown} |")
EOF
    done
done
