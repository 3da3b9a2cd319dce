#!/usr/bin/env bash
# The live dashboard in headless Chromium: `percore serve --metrics` with an echo load and a
# few idle connections (pinged every second, for round trips), the page opened from the metrics
# port by playwright-core driving Debian's chromium (installed here when missing; playwright
# downloads no browser of its own). Checks that the page loads with nothing from elsewhere, that
# every chart draws and that they update while the load runs; the screenshot goes to
# target/dashboard-test/dashboard.png (PERCORE_DASHBOARD_OUT to change). About 20 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${PERCORE_DASHBOARD_OUT:-target/dashboard-test}
PERCORE_NODE_MODULES=${PERCORE_NODE_MODULES:-$HOME/.cache/percore-node/node_modules}
if ! command -v chromium >/dev/null; then
  echo "== installing chromium"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f "$PERCORE_NODE_MODULES/playwright-core/package.json" ]; then
  echo "== installing playwright-core ($PERCORE_NODE_MODULES)"
  if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  mkdir -p "$(dirname "$PERCORE_NODE_MODULES")"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$(dirname "$PERCORE_NODE_MODULES")" \
    --no-audit --no-fund --silent 'playwright-core@1'
fi
BIN=${PERCORE_BIN:-target/debug/percore}
if [ -z "${PERCORE_BIN:-}" ]; then
  cargo build -q -p percore-bench
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

"$BIN" serve --addr 127.0.0.1:0 --shards 2 --no-pin --idle-timeout-secs 1 \
  --metrics 127.0.0.1:0 >"$TMP/serve.out" 2>"$TMP/serve.err" &
PIDS+=($!)
for _ in $(seq 1 100); do
  grep -qs '^metrics on' "$TMP/serve.out" && break
  sleep 0.1
done
ws=$(sed -n 's/^listening on \([0-9.:]*\) .*/\1/p' "$TMP/serve.out")
dash=$(sed -n 's/^metrics on .* dashboard \(http:[^ ]*\)$/\1/p' "$TMP/serve.out")
[ -n "$ws" ] && [ -n "$dash" ] || { cat "$TMP/serve.out" "$TMP/serve.err" >&2; exit 1; }
echo "== dashboard $dash, load on ws://$ws"
"$BIN" load --url "ws://$ws/" --connections 20 --duration 20 --json >"$TMP/echo.json" 2>&1 &
PIDS+=($!)
"$BIN" load --url "ws://$ws/" --mode idle --connections 10 --duration 20 --json >"$TMP/idle.json" 2>&1 &
PIDS+=($!)
# Let a few snapshots with load accumulate before the page opens.
sleep 3
NODE_PATH="$PERCORE_NODE_MODULES" node bench/tests/dashboard/dashboard.cjs "$dash" "$OUT"
