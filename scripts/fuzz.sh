#!/usr/bin/env bash
# Continuous fuzzing: every cargo-fuzz target of engine/fuzz for a bounded time each.
#
# usage: scripts/fuzz.sh [--seconds N] [--target T]... [--work DIR] [--keep-going]
#   --seconds N   fuzzing time per target (default 60)
#   --target T    only this target (repeatable; default: every target `cargo fuzz list` names)
#   --work DIR    where new coverage inputs and artifacts go (default $PERCORE_FUZZ_WORK or
#                 ~/.cache/percore-fuzz); kept between runs on one machine, never in git
#
# Each target starts from its committed seeds (engine/fuzz/corpus/T) and regression inputs
# (engine/fuzz/regressions/T) plus what earlier runs on this machine found (WORK/T/corpus).
# New coverage inputs go to WORK/T/corpus only. A crash, timeout, out-of-memory or leak input
# is copied into engine/fuzz/regressions/T/ (commit it: `cargo test` replays that folder on
# stable, engine/tests/proto_fuzz_corpus.rs) and the script exits 1 after the other targets.
#
# Needs the nightly toolchain and cargo-fuzz: a missing cargo-fuzz is installed with
# `cargo install --locked cargo-fuzz` (about a minute), missing nightly with rustup.
# exit status: 0 = no finding, 1 = a finding (see above) or a fuzzer failure, 2 = could not run
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ=$ROOT/engine/fuzz

SECONDS_PER=60
TARGETS=()
WORK=${PERCORE_FUZZ_WORK:-$HOME/.cache/percore-fuzz}
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER=$2; shift 2 ;;
    --target) TARGETS+=("$2"); shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$SECONDS_PER" in
  ''|*[!0-9]*) echo "fuzz.sh: --seconds must be a positive integer" >&2; exit 2 ;;
esac
[ "$SECONDS_PER" -gt 0 ] || { echo "fuzz.sh: --seconds must be positive" >&2; exit 2; }

t0=$(date +%s)
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "== fuzz: installing the nightly toolchain (rustup toolchain install nightly --profile minimal)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: cargo-fuzz is missing: cargo install --locked cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
t_tools=$(date +%s)

cd "$FUZZ"
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
[ ${#TARGETS[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 2; }
known=$(cargo +nightly fuzz list)
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$known" || { echo "fuzz.sh: unknown target $t (have: $(echo $known))" >&2; exit 2; }
done

echo "== fuzz: building ${TARGETS[*]} (cargo +nightly fuzz build -O, AddressSanitizer)"
cargo +nightly fuzz build -O
t_build=$(date +%s)

rc=0
ROWS=()
for t in "${TARGETS[@]}"; do
  corpus=$WORK/$t/corpus
  artifacts=$WORK/$t/artifacts
  regress=$FUZZ/regressions/$t
  mkdir -p "$corpus" "$artifacts"
  # Artifacts of an earlier run were already reported then; start clean so that whatever is
  # there afterwards is from this run.
  find "$artifacts" -mindepth 1 -delete
  before=$(find "$corpus" -type f | wc -l)
  dirs=("$corpus" "$FUZZ/corpus/$t")
  [ -d "$regress" ] && dirs+=("$regress")
  log=$WORK/$t/last-run.log
  echo "== fuzz: $t for ${SECONDS_PER} s (new inputs: $corpus)"
  frc=0
  cargo +nightly fuzz run -O "$t" "${dirs[@]}" -- \
    -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || frc=$?
  after=$(find "$corpus" -type f | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  findings=()
  for f in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/leak-*; do
    [ -f "$f" ] || continue
    mkdir -p "$regress"
    cp "$f" "$regress/"
    findings+=("$(basename "$f")")
  done
  status=ok
  if [ ${#findings[@]} -gt 0 ]; then
    status="FOUND ${#findings[@]}"
    rc=1
    echo "fuzz: $t: ${findings[*]} copied to engine/fuzz/regressions/$t/ (commit them)" >&2
    echo "fuzz: reproduce: (cd engine/fuzz && cargo +nightly fuzz run $t regressions/$t/${findings[0]})" >&2
    grep -E -A 2 'panicked at|^==[0-9]+== *ERROR|^SUMMARY|^Failing input' "$log" | head -n 30 >&2 || true
  elif [ "$frc" != 0 ]; then
    status="fuzzer exit $frc"
    rc=1
    echo "fuzz: $t: the fuzzer exited with $frc and left no artifact; its log:" >&2
    tail -n 30 "$log" >&2
  fi
  ROWS+=("$(printf '%-16s %8s s %12s %7s %7s %9s %s' "$t" "$SECONDS_PER" "${execs:-?}" \
    "${cov:-?}" "${ft:-?}" "+$((after - before))" "$status")")
done
t_end=$(date +%s)

echo
echo "== fuzz summary (tools $((t_tools - t0)) s, build $((t_build - t_tools)) s, fuzzing $((t_end - t_build)) s)"
printf '%-16s %10s %12s %7s %7s %9s %s\n' target time execs cov ft new status
printf '%s\n' "${ROWS[@]}"
exit $rc
