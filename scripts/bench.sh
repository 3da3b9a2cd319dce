#!/usr/bin/env bash
# Benchmark matrix: build the release binary, then `percore bench` with the given options.
#   scripts/bench.sh                      # percore epoll + io_uring, 5 s cells
#   scripts/bench.sh --quick --compare    # 1 s cells, with fastwebsockets and tokio-tungstenite
#   scripts/bench.sh --idle 100000        # server memory per idle connection
#   scripts/bench.sh --compare --save bench/results/$(date -u +%Y-%m-%d)-matrix
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p percore-bench
exec ./target/release/percore bench "$@"
