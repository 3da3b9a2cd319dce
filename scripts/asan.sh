#!/usr/bin/env bash
# AddressSanitizer over the engine's tests (unit + integration, both backends: every
# integration test runs on epoll and on io_uring) and the simd crate's tests, with the nightly
# toolchain: RUSTFLAGS=-Zsanitizer=address, std rebuilt with it (-Zbuild-std), target
# x86_64-unknown-linux-gnu, in target/asan. LeakSanitizer runs too (ASan's default on Linux).
#
# usage: scripts/asan.sh [-- CARGO_TEST_ARGS...]
#
# Left out: the doc tests (rustdoc does not take the sanitizer flags), and Autobahn (a Python
# client against `percore serve`, run by scripts/autobahn.sh, not by cargo test). The Python
# `websockets` interop test (tests/python_websockets.rs) runs when its venv exists
# ($PERCORE_PYENV, made by scripts/test.sh; it is a client in another process, the server side
# is instrumented), else it prints SKIP.
#
# Installs what it needs: the nightly toolchain and its rust-src component (for -Zbuild-std).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "${1:-}" = "--" ] && shift
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,16p' "$0"; exit 0; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "== asan: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "== asan: rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

TARGET=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Zsanitizer=address -Cdebug-assertions"
export CARGO_TARGET_DIR="$ROOT/target/asan"
# Leaks are errors; a report names the allocation site.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1}"
export PERCORE_REQUIRE_URING=${PERCORE_REQUIRE_URING:-1}
export PERCORE_PYENV=${PERCORE_PYENV:-$HOME/.cache/percore-pyenv}

STEPS=()
step() {
  local name=$1; shift
  echo "== asan: $name"
  local t0 rc=0
  t0=$(date +%s)
  "$@" || rc=$?
  STEPS+=("$(printf '%-36s %5d s  %s' "$name" "$(( $(date +%s) - t0 ))" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}

CARGO=(cargo +nightly test -Zbuild-std --target "$TARGET")
rc=0
step "build (std and tests instrumented)" "${CARGO[@]}" --no-run -p percore -p percore-simd --lib --tests || exit 1
step "simd: unit + integration tests" "${CARGO[@]}" -p percore-simd --lib --tests "$@" || rc=1
step "engine: unit tests" "${CARGO[@]}" -p percore --lib "$@" || rc=1
step "engine: integration tests (epoll + io_uring)" "${CARGO[@]}" -p percore --test '*' "$@" || rc=1

echo
echo "== asan summary ($RUSTFLAGS, $TARGET)"
printf '%s\n' "${STEPS[@]}"
exit $rc
