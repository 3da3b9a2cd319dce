#!/usr/bin/env bash
# Instructions per operation on the hot paths, counted by callgrind (deterministic: the same
# binary gives the same counts on a busy or an idle machine, so a regression check can use it).
#
#   scripts/callgrind.sh [--save FILE.md] [CASE...]      # default: every case
#
# Runs `engine/examples/icount.rs` (release build) under `valgrind --tool=callgrind` twice per
# case: `icount CASE N 0` (setup only) and `icount CASE N N` (setup + N operations). The
# difference of the two totals divided by N is the instruction count of one operation.
# A release build for this machine: the unmasking kernel and simdutf8's implementation are
# chosen at run time from the CPU features valgrind reports (printed in the table).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SAVE=
CASES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --save) SAVE=$2; shift 2 ;;
        *) CASES+=("$1"); shift ;;
    esac
done

cargo build --release -p percore --example icount >&2
BIN=./target/release/examples/icount
[ ${#CASES[@]} -gt 0 ] || mapfile -t CASES < <("$BIN" list)

# operations per case: enough that setup noise vanishes, few enough to stay quick
n_for() {
    case "$1" in
        *-16k) echo 400 ;;
        *deflate*) echo 2000 ;;
        handshake) echo 2000 ;;
        *) echo 20000 ;;
    esac
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# instructions CASE N RUN -> total Ir of the whole process
instructions() {
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" "$BIN" "$1" "$2" "$3" \
        >"$TMP/stdout" 2>"$TMP/stderr"
    grep -m1 'Collected :' "$TMP/stderr" | awk '{print $NF}'
}

ROWS=()
for c in "${CASES[@]}"; do
    n=$(n_for "$c")
    base=$(instructions "$c" "$n" 0)
    full=$(instructions "$c" "$n" "$n")
    kernel=$(sed -n 's/.*unmask=\([a-z0-9_]*\).*/\1/p' "$TMP/stdout")
    per=$(( (full - base) / n ))
    ROWS+=("| $c | $n | $base | $full | $per | $kernel |")
    echo "$c: $per instructions/op" >&2
done

OUT=$(
    echo "- command: \`scripts/callgrind.sh\` (valgrind $(valgrind --version | sed 's/valgrind-//'), callgrind, Ir)"
    echo "- date: $(date -u '+%F %H:%M') UTC, commit $(git rev-parse --short HEAD)"
    echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), rustc $(rustc --version | cut -d' ' -f2)"
    echo
    echo "| case | N | Ir setup only | Ir setup + N ops | **Ir / op** | unmask kernel |"
    echo "|---|--:|--:|--:|--:|---|"
    printf '%s\n' "${ROWS[@]}"
)
echo "$OUT"
if [ -n "$SAVE" ]; then
    { echo "# Instructions per operation (callgrind)"; echo; echo "$OUT"; } >"$SAVE"
fi
