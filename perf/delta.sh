#!/usr/bin/env bash
# A delta update against a full copy, on loopback, in one run: the perf
# corpus (one big file of mixed 16 KiB pages, many small files) is copied,
# then PCT % of the big file's pages are rewritten in part (every
# (100/PCT)th page: scattered, the worst case for page granularity), and
# the stale copy is brought up to date two ways, alternating: `sluice copy`
# into a fresh directory (everything travels) and `sluice copy --delta`
# over the stale copy (only changed pages travel; both ends hash every
# page). Wall time, CPU (user+sys) and the bytes that travelled; every
# result is compared with the source (cmp -r via diff -r).
#
# Usage: perf/delta.sh [WORKDIR]
#   env: BIG_MIB=2048 SMALL=5000 PCT=5 RUNS=2
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-$repo/perf/out/delta}
BIG_MIB=${BIG_MIB:-2048}
SMALL=${SMALL:-5000}
PCT=${PCT:-5}
RUNS=${RUNS:-2}
bin=$repo/target/release/sluice
[ -x "$bin" ] || (cd "$repo" && cargo build --release --quiet)
echo "machine: $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(date -u +%F)"
mkdir -p "$work"
src=$work/src
[ -d "$src" ] || "$bin" gen-sample --corpus --big-mib "$BIG_MIB" --small "$SMALL" "$src" 2>/dev/null
big=$(find "$src" -type f -size +100M | head -1)
timed() { # label, command...: wall s, CPU s, and the log's delta line
  local label=$1; shift
  local t0 t1 cpu
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/time" "$@" 2> "$work/log" >/dev/null
  t1=$(date +%s.%N)
  cpu=$(awk '{print $1 + $2}' "$work/time")
  sync -f "$work"
  printf '%-8s wall %6.2f s  CPU %6.2f s  %s\n' "$label" "$(echo "$t1 - $t0" | bc)" "$cpu" \
    "$(grep -o 'delta: .*' "$work/log" | tail -1)"
}
for run in $(seq 1 "$RUNS"); do
  rm -rf "$work/stale" "$work/fresh"
  "$bin" copy "$src" "$work/stale" 2>/dev/null
  # Age the source: PCT % of the big file's pages, rewritten in part.
  python3 - "$big" "$PCT" "$run" <<'EOF'
import os, sys
path, pct, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
step = max(1, 100 // pct)
with open(path, 'r+b') as f:
    pages = os.path.getsize(path) // 16384
    for p in range(run % step, pages, step):
        f.seek(p * 16384 + 512)
        f.write(os.urandom(256))
EOF
  sync -f "$work"
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  timed full "$bin" copy "$src" "$work/fresh"
  diff -rq "$src" "$work/fresh" >/dev/null && echo "         full copy identical"
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  timed delta "$bin" copy --delta "$src" "$work/stale"
  diff -rq "$src" "$work/stale" >/dev/null && echo "         delta copy identical"
done
