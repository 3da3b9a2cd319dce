#!/usr/bin/env bash
# Autobahn|Testsuite conformance: run the fuzzingclient against `percore serve` on each backend
# and compare every case's verdict with conformance/autobahn/expected-<backend>.json.
#
# usage: scripts/autobahn.sh [--backend epoll|uring|all] [--compression M] [--tls] [--cases PATS]
#                             [--full] [--update] [--release]
#   --backend B       which backend(s) to test (default all: epoll, and io_uring when it starts)
#   --compression M   percore serve --compression M: dedicated (default), shared or off
#   --tls             over wss://: the server gets a certificate from `percore cert` (made for
#                     the run, key in the run's temporary directory) and the fuzzingclient
#                     VERIFIES it against that CA: its spec names "hostname": "localhost" (SNI +
#                     verification against OpenSSL's default trust) and SSL_CERT_FILE points at
#                     the test CA. Verdicts are compared with the same expected-<backend>.json.
#   --cases PATS      only these case patterns (comma separated, e.g. "1.*,5.*"; default: the
#                     cases below)
#   --full            every 12.*/13.* case (permessage-deflate, minutes); without it, cases
#                     1.*-10.* and the 12/13 subset in conformance/autobahn/ci-deflate-cases.txt
#   --update          write the expected files from this run instead of comparing
#   --release         build percore with --release (default: debug build, faster to compile)
# env: PERCORE_REQUIRE_URING=1 makes an io_uring backend that does not start a failure.
# exit status: 0 = every case as expected, 1 = some case differs / not allowed, 2 = could not run
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${AUTOBAHN_TOOLS:-$ROOT/../shared/tools/autobahn}
CONF=$ROOT/conformance/autobahn
SPEC=$CONF/fuzzingclient.json
AB_VENV=${AUTOBAHN_VENV:-$HOME/.cache/autobahn-py3}

BACKENDS=all FULL=0 UPDATE=0 PROFILE=debug COMPRESSION=dedicated TLS=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKENDS=$2; shift 2 ;;
    --compression) COMPRESSION=$2; shift 2 ;;
    --tls) TLS=1; shift ;;
    --cases) ONLY=$2; shift 2 ;;
    --full) FULL=1; shift ;;
    --update) UPDATE=1; shift ;;
    --release) PROFILE=release; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "autobahn.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$BACKENDS" in
  all) BACKENDS="epoll uring" ;;
  epoll|uring) ;;
  *) echo "autobahn.sh: --backend must be epoll, uring or all" >&2; exit 2 ;;
esac
case "$COMPRESSION" in
  off|shared|dedicated) ;;
  *) echo "autobahn.sh: --compression must be off, shared or dedicated" >&2; exit 2 ;;
esac
[ -x "$TOOLS/run.sh" ] || { echo "autobahn.sh: $TOOLS/run.sh not found" >&2; exit 2; }

echo "== autobahn: building percore ($PROFILE)"
BUILD=(cargo build -p percore-bench --bin percore)
[ "$PROFILE" = release ] && BUILD+=(--release)
(cd "$ROOT" && "${BUILD[@]}")
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/$PROFILE/percore
[ -x "$BIN" ] || { echo "autobahn.sh: $BIN not built" >&2; exit 2; }

"$TOOLS/setup.sh" >/dev/null

# Cases from the committed spec (every case); without --full, 12.*/13.* are cut down to the
# subset listed in ci-deflate-cases.txt (one id per line, # comments).
CASES=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["cases"]))' "$SPEC")
EXCL=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["exclude-cases"]))' "$SPEC")
if [ "$FULL" != 1 ]; then
  SUBSET=$(grep -v '^\s*#' "$CONF/ci-deflate-cases.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
  CASES="1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*,11.*,$SUBSET"
fi
[ -n "$ONLY" ] && CASES=$ONLY
if [ "$TLS" = 1 ] && [ "$UPDATE" = 1 ]; then
  echo "autobahn.sh: --update records ws:// verdicts; run it without --tls" >&2
  exit 2
fi

WORK=$(mktemp -d /tmp/percore-autobahn.XXXXXX)
SERVER_PID=""
SERVE_TLS=()
if [ "$TLS" = 1 ]; then
  "$BIN" cert --out "$WORK/tls" --name localhost --name 127.0.0.1 >/dev/null
  SERVE_TLS=(--tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem")
fi
# Stop the server with SIGTERM (graceful shutdown, --shutdown-grace-secs 5 by default); one that
# is still running 20 s later is killed with a warning (shutdown is checked by the engine's
# graceful_shutdown tests; here it must only never block the script).
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "autobahn.sh: WARNING: percore serve did not exit within 20 s of SIGTERM; killed" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Start `percore serve` on a free port; returns 1 when it exits before listening (log in $WORK).
start_server() {
  local backend=$1 port=$2 cli_backend
  cli_backend=$backend
  "$BIN" serve --addr "127.0.0.1:$port" --backend "$cli_backend" --no-pin --shards 2 \
    --compression "$COMPRESSION" "${SERVE_TLS[@]}" \
    >"$WORK/server-$backend.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      return 1
    fi
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "autobahn.sh: percore serve did not listen on port $port within 30 s" >&2
  cleanup
  return 2
}

rc=0
for backend in $BACKENDS; do
  if [ "$TLS" = 1 ]; then
    echo "== autobahn: backend $backend, wss:// (verified against the run's test CA)"
  else
    echo "== autobahn: backend $backend"
  fi
  port=$(free_port)
  status=0
  start_server "$backend" "$port" || status=$?
  if [ "$status" = 1 ]; then
    if [ "$backend" = uring ] && [ "${PERCORE_REQUIRE_URING:-0}" != 1 ] \
       && grep -qi "not available\|unsupported\|not supported" "$WORK/server-$backend.log"; then
      echo "SKIP autobahn on io_uring: the server does not start with it here:"
      sed 's/^/  /' "$WORK/server-$backend.log"
      continue
    fi
    echo "autobahn.sh: percore serve ($backend) exited at start:" >&2
    sed 's/^/  /' "$WORK/server-$backend.log" >&2
    exit 2
  elif [ "$status" != 0 ]; then
    exit 2
  fi

  out=$WORK/reports-$backend
  run_rc=0
  # The 216 compression cases alone take 10-30 minutes on a busy 2-core machine.
  timeout=900
  [ "$FULL" = 1 ] && timeout=3600
  t_run=$(date +%s)
  if [ "$TLS" = 1 ]; then
    # Our own spec: run.sh's has no "hostname", which makes the fuzzingclient skip
    # certificate verification (and SNI).
    mkdir -p "$out"
    "$AB_VENV/bin/python" -c '
import json, sys
path, outdir, url, cases, excl = sys.argv[1:6]
json.dump({"outdir": outdir,
           "servers": [{"agent": "percore", "url": url, "hostname": "localhost"}],
           "cases": [c for c in cases.split(",") if c],
           "exclude-cases": [c for c in excl.split(",") if c],
           "exclude-agent-cases": {}}, open(path, "w"), indent=2)
' "$out/fuzzingclient.json" "$out" "wss://127.0.0.1:$port" "$CASES" "$EXCL"
    ( cd "$out" && SSL_CERT_FILE="$WORK/tls/ca.pem" PYTHONUTF8=1 PYTHONWARNINGS=ignore \
        timeout "$timeout" "$AB_VENV/bin/wstest" -m fuzzingclient -s "$out/fuzzingclient.json" ) \
      >"$out/wstest.log" 2>&1 || run_rc=$?
    if [ "$run_rc" != 0 ]; then
      echo "autobahn.sh: wstest failed (rc=$run_rc):" >&2
      tail -n 20 "$out/wstest.log" >&2
      run_rc=2
    fi
  else
    RUN=("$TOOLS/run.sh" --outdir "$out" --agent percore --timeout "$timeout")
    [ -n "$EXCL" ] && RUN+=(--exclude "$EXCL")
    "${RUN[@]}" "ws://127.0.0.1:$port" "$CASES" || run_rc=$?
  fi
  echo "autobahn: $backend: fuzzingclient ran $(( $(date +%s) - t_run )) s"
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "autobahn.sh: percore serve ($backend) died during the run; its log:" >&2
    tail -n 30 "$WORK/server-$backend.log" >&2
    rc=1
  fi
  cleanup
  if [ ! -f "$out/index.json" ] || [ "$run_rc" = 2 ]; then
    echo "autobahn.sh: no report for $backend (run.sh rc=$run_rc)" >&2
    exit 2
  fi

  cmp_rc=0
  "$AB_VENV/bin/python" - "$out/index.json" "$CONF/expected-$backend.json" "$UPDATE" "$FULL" \
    "$COMPRESSION" "$ONLY" <<'EOF' || cmp_rc=$?
import json, sys
from collections import Counter
index, expected_path, update, full = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
compression = sys.argv[5]
subset = sys.argv[6] != ""
res = json.load(open(index))
res = res.get("percore") or next(iter(res.values()))
key = lambda c: tuple(int(x) for x in c.split("."))
got = {cid: r["behavior"] for cid, r in res.items()}
print("autobahn: %s" % ", ".join("%d %s" % (n, b) for b, n in sorted(Counter(got.values()).items())))
ALLOWED = {"OK", "NON-STRICT", "INFORMATIONAL"}
def allowed(cid, b):
    # Without compression the server declines permessage-deflate: 12.*/13.* are UNIMPLEMENTED.
    deflate_case = cid.split(".")[0] in ("12", "13")
    if compression == "off" and deflate_case:
        return b == "UNIMPLEMENTED"
    return b in ALLOWED
bad = [c for c in sorted(got, key=key) if not allowed(c, got[c])]
if update:
    try:
        old = json.load(open(expected_path))
    except FileNotFoundError:
        old = {}
    if not full:  # keep the recorded 12.*/13.* verdicts of an earlier --full run
        got = {**{c: b for c, b in old.items() if c.split(".")[0] in ("12", "13")}, **got}
    if compression == "off":  # the expected files record the server with compression
        got = {**got, **{c: b for c, b in old.items() if c.split(".")[0] in ("12", "13")}}
    with open(expected_path, "w") as f:
        json.dump({c: got[c] for c in sorted(got, key=key)}, f, indent=1)
        f.write("\n")
    print("autobahn: wrote %s (%d cases)" % (expected_path, len(got)))
    if bad:
        print("autobahn: NOT ALLOWED verdicts recorded (fix the server): %s"
              % " ".join("%s=%s" % (c, got[c]) for c in bad))
        sys.exit(1)
    sys.exit(0)
try:
    exp = json.load(open(expected_path))
except FileNotFoundError:
    print("autobahn: %s missing; run scripts/autobahn.sh --update" % expected_path)
    sys.exit(1)
diff, improved, missing = [], [], []
for cid in sorted(exp, key=key):
    deflate_case = cid.split(".")[0] in ("12", "13")
    if deflate_case and (compression == "off" or (not full and cid not in got)):
        continue  # the subset run, or a server without compression (checked by allowed())
    if subset and cid not in got:
        continue  # --cases: only what ran is compared
    b = got.get(cid)
    if b is None:
        missing.append(cid)
    elif b != exp[cid] and not (compression == "off" and deflate_case):
        (improved if b == "OK" else diff).append("%s: expected %s, got %s" % (cid, exp[cid], b))
extra = [c for c in sorted(got, key=key) if c not in exp]
for line in improved:
    print("autobahn: improved (record with --update): " + line)
for line in diff:
    print("autobahn: DIFFERS " + line)
for c in missing:
    print("autobahn: MISSING " + c)
for c in extra:
    print("autobahn: NEW CASE (not in expected file) %s: %s" % (c, got[c]))
for c in bad:
    print("autobahn: NOT ALLOWED %s: %s" % (c, got[c]))
if diff or missing or extra or bad:
    print("autobahn: %d differing, %d missing, %d unexpected, %d not allowed"
          % (len(diff), len(missing), len(extra), len(bad)))
    sys.exit(1)
print("autobahn: all %d cases as expected" % len(got))
EOF
  if [ "$cmp_rc" != 0 ]; then
    rc=1
  else
    echo "autobahn: $backend matches $(basename "$CONF/expected-$backend.json")"
  fi
done
exit $rc
