#!/usr/bin/env bash
# SST wall time, stock mariabackup method vs sluice, on a real two-node
# Galera cluster on loopback (same dataset, same run, alternating).
# Usage: perf/sst-compare.sh [MiB=4096] [rounds=2] [workdir=/tmp/sluice-sst-bench]
# Needs root and: mariadb-server galera-4 mariadb-backup socat (pv optional).
# SST_SECTION='streams=2\nfoo=bar' adds lines to both nodes' [sst] groups.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet --example sst_compare
echo "machine: $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(date -u +%F)"
exec target/release/examples/sst_compare "$PWD/target/release/sluice" "${1:-4096}" "${2:-2}" "${3:-/tmp/sluice-sst-bench}"
