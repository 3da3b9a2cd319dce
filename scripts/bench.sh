#!/usr/bin/env bash
# Benchmark matrix: build the release binary, then `percore bench` with the given options.
#   scripts/bench.sh                      # percore epoll + io_uring, 5 s cells
#   scripts/bench.sh --quick --compare    # 1 s cells, with fastwebsockets and tokio-tungstenite
#   scripts/bench.sh --idle 100000        # server memory per idle connection
#   scripts/bench.sh --compare --save bench/results/$(date -u +%Y-%m-%d)-matrix
#   scripts/bench.sh --open-loop 25,50,80 # latency at fixed shares of the best server's maximum
#   scripts/bench.sh --peer 'uwebsockets=~/.cache/percore-uws/uws_echo {port} echo none' \
#       --generator load_test=~/.cache/percore-uws/load_test   # see bench/README.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p percore-bench
exec ./target/release/percore bench "$@"
