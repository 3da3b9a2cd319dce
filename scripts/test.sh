#!/usr/bin/env bash
# The one test command: formatting, lints, every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the integration tests need on a fresh machine: a Python venv with `websockets` (an
# independent client for the interop test) and the Autobahn|Testsuite venv.
PERCORE_PYENV=${PERCORE_PYENV:-$HOME/.cache/percore-pyenv}
export PERCORE_PYENV PERCORE_REQUIRE_PY=1
# io_uring is available on the machines this project runs on: a backend that does not start is a
# failure, not a skip (PERCORE_REQUIRE_URING=0 to allow skipping elsewhere).
export PERCORE_REQUIRE_URING=${PERCORE_REQUIRE_URING:-1}
# Same for network namespaces (tests/half_open.rs): root and iproute2 are there.
export PERCORE_REQUIRE_NETNS=${PERCORE_REQUIRE_NETNS:-1}
echo "== python venv with websockets and prometheus_client ($PERCORE_PYENV)"
if ! "$PERCORE_PYENV/bin/python" -c 'import websockets.sync.client' >/dev/null 2>&1; then
  python3 -m venv "$PERCORE_PYENV"
  "$PERCORE_PYENV/bin/pip" install -q --disable-pip-version-check 'websockets>=13'
fi
# Node `ws` (an independent permessage-deflate client for the interop test), kept in a cache
# directory like the Python venv.
PERCORE_NODE_MODULES=${PERCORE_NODE_MODULES:-$HOME/.cache/percore-node/node_modules}
export PERCORE_NODE_MODULES PERCORE_REQUIRE_NODE=1
echo "== node ws ($PERCORE_NODE_MODULES)"
if [ ! -f "$PERCORE_NODE_MODULES/ws/package.json" ]; then
  if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm
  fi
  mkdir -p "$(dirname "$PERCORE_NODE_MODULES")"
  npm install --prefix "$(dirname "$PERCORE_NODE_MODULES")" --no-audit --no-fund --silent 'ws@8'
fi
# Headless Chromium: a browser's `new WebSocket(url, ['chat'])` against `percore serve`.
export PERCORE_REQUIRE_BROWSER=1
if ! command -v chromium >/dev/null; then
  echo "== chromium"
  apt-get update -qq && apt-get install -y -qq chromium
fi
# An independent parser of the metrics' text format (bench/tests/serve_metrics.rs).
if ! "$PERCORE_PYENV/bin/python" -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
  "$PERCORE_PYENV/bin/pip" install -q --disable-pip-version-check 'prometheus-client>=0.20'
fi
# Node with a built-in WebSocket (22+, or 20/21 with --experimental-websocket) runs the browser
# resume client (bench/tests/resume_js.rs); Debian's own nodejs may be older: then Node 22 from
# the npm registry (the `node` package) into a cache directory (PERCORE_REQUIRE_NODE, set above,
# makes a missing one a failure for both Node tests).
has_ws_node() {
  "$1" -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null ||
    "$1" --experimental-websocket -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null
}
echo "== node with a WebSocket"
if ! command -v node >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
if ! has_ws_node node; then
  PERCORE_NODE22_DIR=${PERCORE_NODE22_DIR:-$HOME/.cache/percore-node22}
  if [ ! -x "$PERCORE_NODE22_DIR/node_modules/node/bin/node" ]; then
    command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
    npm install --silent --prefix "$PERCORE_NODE22_DIR" node@22
  fi
  export PATH="$PERCORE_NODE22_DIR/node_modules/node/bin:$PATH"
fi
node --version
echo "== autobahn testsuite venv"
../shared/tools/autobahn/setup.sh
# The reference tools the bench tests run: uWebSockets' load_test and uws_echo (built once into
# ~/.cache/percore-uws, ~20 s); the floor's raw echo and peerload are compiled by the tests.
export PERCORE_UWS_DIR=${PERCORE_UWS_DIR:-$HOME/.cache/percore-uws}
export PERCORE_REQUIRE_TOOLS=1
if [ ! -x "$PERCORE_UWS_DIR/load_test" ] || [ ! -x "$PERCORE_UWS_DIR/uws_echo" ]; then
  echo "== uWebSockets reference tools ($PERCORE_UWS_DIR)"
  if ! command -v g++ >/dev/null || [ ! -e /usr/include/zlib.h ]; then
    apt-get update -qq && apt-get install -y -qq g++ zlib1g-dev
  fi
  ../shared/tools/uws/build.sh "$PERCORE_UWS_DIR"
fi

# The cluster tests start their own nats-server (Debian's package): a missing one is a failure,
# not a skip.
export PERCORE_REQUIRE_NATS=1
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ] && [ ! -x /usr/bin/nats-server ]; then
  echo "== nats-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy (engine without its default features: no Prometheus text; the tests add tls)"
cargo clippy -p percore --no-default-features --all-targets -- -D warnings
echo "== cargo clippy (engine without any optional feature: no cluster, TLS or Prometheus code built)"
cargo clippy -p percore --no-default-features --lib -- -D warnings
echo "== cargo clippy (engine with its default features only)"
cargo clippy -p percore --lib -- -D warnings
echo "== cargo doc (engine with cluster and tls, warnings are errors: missing docs, broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p percore --features cluster,tls
echo "== cargo test"
cargo test --workspace
echo "== dashboard in headless chromium"
bash scripts/dashboard-test.sh
echo "== autobahn conformance"
bash scripts/autobahn.sh --backend all
echo "== autobahn conformance over wss:// (1.*-11.* + the 12/13 subset, the client verifies the test CA; ~60 s a backend)"
bash scripts/autobahn.sh --backend all --tls
