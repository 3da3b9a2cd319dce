#!/usr/bin/env bash
# Soak: well-behaved and hostile clients for N minutes against percore serve, both backends at
# the same time (each backend has its own echo server and broadcast server, 2 shards each);
# see `percore soak --help` and bench/src/soak/mod.rs for the classes and their rates.
#
# usage: scripts/soak.sh [--minutes N] [--json] [--backends epoll,uring] [-- PERCORE_SOAK_ARGS...]
#   --minutes N   length of the load (default 10; fractions allowed); draining the last
#                 messages and stopping the servers add about 20 s
#   --json        the last line of stdout is a JSON list, one object per backend, with at least
#                 backend, lost (well-behaved messages lost), rss_growth_pct (last half of the
#                 run), server_died, the per-class details and the errors
#
# Builds the release binary first. Bounded: the soak is killed if it runs 3 minutes past its
# length; its servers die with it (they are its children and ask the kernel for that), and it
# stops them itself at the end. Targets 127.0.0.1 only, free ports.
# exit status: 0 = pass; 1 = a well-behaved message lost, an unexpected outcome, a server died
# or RSS grew more than 2 % over the last half; 2 = could not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MINUTES=10
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --json) ARGS+=(--json); shift ;;
    --backends) ARGS+=(--backends "$2"); shift 2 ;;
    --) shift; ARGS+=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
LIMIT=$(python3 -c 'import sys; m=float(sys.argv[1]); assert 0 < m <= 1440; print(int(m*60) + 180)' "$MINUTES" 2>/dev/null) \
  || { echo "soak.sh: --minutes must be a number in (0, 1440]" >&2; exit 2; }

cargo build --release -p percore-bench >&2
SOAK_PID=
cleanup() {
  if [ -n "$SOAK_PID" ] && kill -0 "$SOAK_PID" 2>/dev/null; then
    kill "$SOAK_PID" 2>/dev/null || true
    wait "$SOAK_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rc=0
timeout --kill-after=10 "$LIMIT" ./target/release/percore soak --minutes "$MINUTES" "${ARGS[@]}" &
SOAK_PID=$!
wait "$SOAK_PID" || rc=$?
SOAK_PID=
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "soak.sh: the soak did not finish within $LIMIT s and was stopped" >&2
  exit 1
fi
exit $rc
