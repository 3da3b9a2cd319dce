#!/usr/bin/env bash
# Memory after a storm: per backend (one after the other), one `percore serve --shards 2`,
# warmed up with 2,000 echoes of 64 KiB; then five rounds of 1,000 connections that upgrade,
# send the first half of a 128 KiB frame and reset; the server's RSS fresh, before the storm
# (warmed up), at the peak, right after, 10 s and 15 s later.
#
# usage: scripts/storm.sh [--json] [--check] [PERCORE_STORM_ARGS...]   (see `percore storm --help`)
#   --check   exit 1 unless RSS is back within 10 % of its pre-storm value 10 s after the
#             storm, on every backend (without it the script only measures)
#
# Builds the release binary first. Bounded (killed after 10 minutes); targets 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in -h|--help) sed -n "2,12p" "$0"; exit 0 ;; esac
cargo build --release -p percore-bench >&2
exec timeout --kill-after=10 600 ./target/release/percore storm "$@"
