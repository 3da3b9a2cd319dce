#!/usr/bin/env bash
# Miri (the undefined-behaviour interpreter) over the code that runs without the operating
# system: the simd crate (scalar unmasking, the SSE2/AVX2/AVX-512 kernels as far as Miri
# implements their intrinsics, streaming UTF-8) and the engine's sans-IO protocol (`proto`).
#
# usage: scripts/miri.sh [--quick]
#   --quick   simd at the default target features only (skip the AVX2 and AVX-512 passes)
#
# What runs, and what is fenced out:
# - simd: every test (tests/unmask.rs, tests/utf8.rs, unit tests). Under Miri the tests use
#   shorter lengths and fewer proptest cases (`cfg(miri)` in the test files); a kernel runs only
#   when `is_x86_feature_detected!` says so, which under Miri follows the compile-time target
#   features: SSE2 by default, then a pass with `-C target-feature=+avx2` and one with
#   `+avx512f,+avx2` so every x86 kernel is interpreted once. simdutf8 picks its scalar fallback
#   or the SIMD code the same way.
# - engine: the unit tests of `proto::` (handshake, frame codec, decoder, close state machine,
#   proptests with PROPTEST_CASES cases; three large-payload tests skipped, see below) and
#   tests/proto_fuzz_corpus.rs (fuzz bodies over the seeds, fewer mutations under Miri). Not the shard/io tests nor the integration tests:
#   sockets, epoll and io_uring are system calls Miri cannot run.
#
# Installs what it needs: the nightly toolchain (rustup), its miri and rust-src components.
# PROPTEST_CASES (default 8) sets the proptest cases of the engine's proto tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "miri.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "== miri: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
  echo "== miri: rustup component add miri rust-src --toolchain nightly"
  rustup component add miri rust-src --toolchain nightly
fi
cargo +nightly miri setup >/dev/null

export PROPTEST_CASES=${PROPTEST_CASES:-8}
# Without isolation: the fuzz-body test reads the corpus files, proptest reads PROPTEST_CASES.
export MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-disable-isolation"

STEPS=()
step() {
  local name=$1; shift
  echo "== miri: $name"
  local t0 rc=0
  t0=$(date +%s)
  "$@" || rc=$?
  STEPS+=("$(printf '%-44s %5d s  %s' "$name" "$(( $(date +%s) - t0 ))" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}

rc=0
step "simd (default target features: SSE2)" \
  cargo +nightly miri test -p percore-simd --lib --tests || rc=1
if [ "$QUICK" = 0 ]; then
  step "simd unmask with +avx2" env RUSTFLAGS="-C target-feature=+avx2" \
    CARGO_TARGET_DIR="$ROOT/target/miri-avx2" \
    cargo +nightly miri test -p percore-simd --test unmask || rc=1
  step "simd unmask with +avx512f,+avx2" env RUSTFLAGS="-C target-feature=+avx512f,+avx2" \
    CARGO_TARGET_DIR="$ROOT/target/miri-avx512" \
    cargo +nightly miri test -p percore-simd --test unmask || rc=1
fi
# Skipped: three tests whose only difference from others that run is a large payload (a
# 1 MiB text frame, up to 70 KB per proptest case, a 70 KB tungstenite message): the same code
# paths on small payloads are covered; interpreted, each takes many minutes.
step "engine proto unit tests" \
  cargo +nightly miri test -p percore --lib proto:: -- \
    --skip encode_then_decode_roundtrips --skip invalid_utf8_fails_fast_mid_frame_1007 \
    --skip frames_from_tungstenite_client_decode || rc=1
step "engine fuzz bodies over the corpus" \
  cargo +nightly miri test -p percore --test proto_fuzz_corpus || rc=1

echo
echo "== miri summary (PROPTEST_CASES=$PROPTEST_CASES)"
printf '%s\n' "${STEPS[@]}"
exit $rc
