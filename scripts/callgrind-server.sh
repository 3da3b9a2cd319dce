#!/usr/bin/env bash
# Instructions of the whole server's shard thread per echoed message, counted by callgrind:
# `percore serve --shards 1 --no-pin` runs under `valgrind --tool=callgrind --separate-threads=yes`,
# `percore load --connections C --size S --duration D` drives it, the shard thread's Ir is
# dumped (`callgrind_control -d`) once the load is done and divided by the messages the load
# echoed in its window. Not deterministic like scripts/callgrind.sh (a loop turn's fixed costs
# are shared by however many messages it carries, which depends on timing), so compare two
# binaries with runs back to back, and read differences of a few percent with care.
#
#   scripts/callgrind-server.sh [--server BIN] [--load BIN] [--backends epoll,uring] [--runs N]
#                               [--size BYTES] [--connections N] [--duration S] [--floor DIR]
#                               [--server-args "ARGS"]
#
# Defaults: target/release/percore (built here) for both, both backends, 2 runs each, 10
# connections of 20-byte messages for 5 s. The large cells of issue 14: `--size 16384`,
# `--size 65536`, `--size 1048576 --connections 10` (a 1 MiB message takes ~1 s under valgrind:
# give it `--duration 20`). `--floor DIR` (the output of ../shared/tools/floor/build.sh) also
# runs the raw echoes there (`rawecho`, `uring_echo`; no framing at all) under callgrind, driven
# by `peerload raw` with the same connections and size: the user-space instructions a TCP echo
# cannot avoid (their messages are peerload's rate times its 1 s intervals, approximate).
# `--server-args` adds options to `percore serve` (e.g. "--send-direct-bytes-min 8192").
# Prints one line per run: server, shard-thread Ir, messages, Ir per message. KEEP_DUMPS=DIR
# keeps the dumps (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SERVER= LOAD= BACKENDS=epoll,uring RUNS=2 SIZE=20 CONNS=10 DURATION=5 FLOOR= SERVER_ARGS=
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVER=$2; shift 2 ;;
        --load) LOAD=$2; shift 2 ;;
        --backends) BACKENDS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --floor) FLOOR=$2; shift 2 ;;
        --server-args) SERVER_ARGS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$SERVER" ] || [ -z "$LOAD" ]; then
    cargo build --release -p percore-bench >&2
    SERVER=${SERVER:-target/release/percore}
    LOAD=${LOAD:-target/release/percore}
fi

TMP=$(mktemp -d)
VG=
cleanup() {
    [ -n "$VG" ] && kill -9 "$VG" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# A TCP connection to the server and away: it wakes the shard. valgrind 3.19 treats
# io_uring_enter as a syscall that does not block, so a shard waiting in it keeps valgrind's
# thread lock: the main thread cannot print its first line, and a dump request is not served,
# until something wakes the shard.
poke() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null || true; }

for backend in ${BACKENDS//,/ }; do
    for run in $(seq 1 "$RUNS"); do
        rm -f "$TMP"/cg.* "$TMP"/serve.out
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$TMP/cg.%p" \
            "$SERVER" serve --addr "127.0.0.1:$port" --backend "$backend" --shards 1 --no-pin $SERVER_ARGS \
            >"$TMP/serve.out" 2>"$TMP/serve.err" &
        VG=$!
        for _ in $(seq 1 240); do
            grep -qs '^listening on' "$TMP/serve.out" && break
            sleep 0.5
            poke "$port"
        done
        grep -q '^listening on' "$TMP/serve.out" || { cat "$TMP/serve.err" >&2; echo "server did not start" >&2; exit 1; }
        json=$("$LOAD" load --url "ws://127.0.0.1:$port/" --connections "$CONNS" --size "$SIZE" --duration "$DURATION" --json)
        msgs=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
        callgrind_control -d "$VG" >/dev/null 2>&1 &
        for _ in $(seq 1 120); do
            ls "$TMP"/cg.*-02 >/dev/null 2>&1 && break
            poke "$port"
            sleep 0.5
        done
        sleep 1
        kill -9 "$VG" 2>/dev/null || true
        wait "$VG" 2>/dev/null || true
        VG=
        # The shard thread's dump: the busiest thread but the main one (thread 1: start-up,
        # then it waits for a signal; the server has no other thread).
        ir=
        for f in "$TMP"/cg.*-0[2-9]; do
            t=$(sed -n 's/^summary: *//p' "$f" | head -1)
            if [ -n "$t" ] && { [ -z "$ir" ] || [ "$t" -gt "$ir" ]; }; then ir=$t; fi
        done
        [ -n "$ir" ] || { echo "no shard-thread dump found" >&2; ls "$TMP" >&2; exit 1; }
        echo "percore $backend run $run: shard thread $ir Ir, $msgs messages, $(( ir / msgs )) Ir/message"
        if [ -n "${KEEP_DUMPS:-}" ]; then
            mkdir -p "$KEEP_DUMPS"
            for f in "$TMP"/cg.*-0[2-9]; do cp "$f" "$KEEP_DUMPS/$backend-$SIZE-$run.${f##*/}"; done
        fi
    done
done

# The floor: the raw echoes, same connections and size, driven by peerload raw.
if [ -n "$FLOOR" ]; then
    for server in rawecho uring_echo; do
        [ -x "$FLOOR/$server" ] && [ -x "$FLOOR/peerload" ] || { echo "no $FLOOR/$server or peerload: run ../shared/tools/floor/build.sh $FLOOR" >&2; exit 1; }
        for run in $(seq 1 "$RUNS"); do
            rm -f "$TMP"/cg.* "$TMP"/serve.out
            port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$TMP/cg.%p" \
                "$FLOOR/$server" "$port" >"$TMP/serve.out" 2>"$TMP/serve.err" &
            VG=$!
            for _ in $(seq 1 240); do
                timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break
                sleep 0.5
            done
            out=$(timeout $((DURATION + 60)) "$FLOOR/peerload" raw 127.0.0.1 "$port" "$CONNS" "$SIZE" 1 "$DURATION" 2>&1 || true)
            msgs=$(echo "$out" | awk '/^Msg\/sec:/ { s += $2 } END { printf "%d", s }')
            callgrind_control -d "$VG" >/dev/null 2>&1 &
            for _ in $(seq 1 120); do
                ls "$TMP"/cg.*-01 >/dev/null 2>&1 && break
                poke "$port"
                sleep 0.5
            done
            sleep 1
            kill -9 "$VG" 2>/dev/null || true
            wait "$VG" 2>/dev/null || true
            VG=
            ir=
            for f in "$TMP"/cg.*-0[1-9]; do
                t=$(sed -n 's/^summary: *//p' "$f" | head -1)
                if [ -n "$t" ] && { [ -z "$ir" ] || [ "$t" -gt "$ir" ]; }; then ir=$t; fi
            done
            # valgrind 3.19 stops uring_echo with SIGILL (an instruction it does not know):
            # say so and go on with the other.
            if [ -z "$ir" ] || [ "${msgs:-0}" -eq 0 ]; then
                echo "$server run $run: no count (callgrind: $(grep -m1 -o 'unhandled instruction.*\|Illegal.*\|SIGILL.*' "$TMP/serve.err" || echo 'no dump'); load: $(echo "$out" | tail -1))"
                continue
            fi
            echo "$server run $run: $ir Ir, ~$msgs messages, $(( ir / msgs )) Ir/message"
        done
    done
fi
