#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 1800) or RUNS executions
# (default 10 million), whichever ends first, and prints one line each:
#   fuzz/run.sh [SECONDS] [RUNS]        (TARGETS="mycnf cpat" picks some)
# A crash or hang fails the script; its input is left in artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-1800}
runs=${2:-10000000}
failed=0
targets=${TARGETS:-wire_frames handshake mbstream mycnf sst_args cpat journal}
for t in $targets; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -runs="$runs" \
       -max_len=4096 -rss_limit_mb=512 -timeout=10 >"$log" 2>&1; then
    echo "$t: $(grep -E "^Done [0-9]+ runs" "$log" | tail -1)"
  else
    echo "$t: FAILED"
    grep -E "ERROR|panicked|SUMMARY" "$log" | head -5
    failed=1
  fi
  rm -f "$log"
done
exit "$failed"
