#!/usr/bin/env bash
# sluice over a real, rate-limited link between two hosts: two network
# namespaces joined by a veth pair (10.77.0.1 ↔ 10.77.0.2), each side shaped
# with `tc qdisc … tbf` (netem is not available on this kernel class), BBR
# or cubic as asked. `sluice recv` runs in one namespace and `sluice send`
# in the other, on the perf corpus (half repetitive text, half random
# pages), once per compression setting, alternating in one run: wall time,
# bytes on the wire (the veth's tx counter) and CPU of both ends.
#
# The rig for the adaptive compression and stream-count work (issue 15) and
# for resume under link faults (issue 12); the namespaces are removed at
# exit. Needs root, iproute2, /usr/bin/time and a release build.
#
# Usage: perf/link-compare.sh [WORKDIR]
#   env: RATES="1gbit 100mbit" COMPRESS="none lz4 zstd:1 auto" BIG_MIB=1024
#        (a rate of "unshaped" runs the veth without tbf: both ends on the
#        same cores, what a 10 GbE link to a busy receiver looks like)
#        SMALL=0 RUNS=1 STREAMS=2 CC=bbr
#        CCS="bbr cubic": sluice's own sockopt cc=, one row each (the
#        namespaces' default stays CC); with it, the rtt_ms column is the
#        median round trip of pings across the link during the transfer
#        (what Galera's replication traffic beside the SST sees)
#        PIN=0: both ends pinned to that CPU (taskset), a receiver that is
#        short of CPU behind a fast link
#        SLUICE_OLD=<another build>: a setting written old-X (old-auto)
#        runs that build with --compress X, in the same run
#        BLACKHOLE="START SPAN": START s into each transfer the path drops
#        everything for SPAN s, connections left alone (the receiver's
#        address is taken away: the sender's packets leave and vanish, as
#        when a path fails in the middle, and TCP's retransmission timeout
#        doubles meanwhile; a link set down would give the ends carrier
#        events or local errors instead)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-$repo/perf/out/link}
RATES=${RATES:-1gbit 100mbit}
COMPRESS=${COMPRESS:-none lz4 zstd:1 auto}
BIG_MIB=${BIG_MIB:-1024}
SMALL=${SMALL:-0}
RUNS=${RUNS:-1}
STREAMS=${STREAMS:-2}
CC=${CC:-bbr}
sluice=$repo/target/release/sluice
[ -x "$sluice" ] || (cd "$repo" && cargo build --release)
command -v ip >/dev/null && command -v tc >/dev/null || { echo "needs iproute2" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

a=sluice-a-$$
b=sluice-b-$$
cleanup() {
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$a"
ip netns add "$b"
ip link add va type veth peer name vb
ip link set va netns "$a"
ip link set vb netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev va
ip -n "$b" addr add 10.77.0.2/24 dev vb
for ns in "$a" "$b"; do
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_congestion_control="$CC" >/dev/null
done
ip -n "$a" link set va up
ip -n "$b" link set vb up

. "$here/corpus.sh"
corpus=$(perf_corpus "$work" "$sluice" "$BIG_MIB" "$SMALL")
cat "$corpus"/big/* >/dev/null
sources=("$corpus/big")
[ "$SMALL" = 0 ] || sources+=("$corpus/small")
bytes=$(du -sb "${sources[@]}" | awk '{s += $1} END {print s}')

echo "machine: $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(date -u +%F); corpus $((bytes >> 20)) MiB; streams $STREAMS; $CC"
CCS=${CCS:-default}
printf '%-8s %-8s %4s %8s %9s %10s %9s %9s %7s %7s\n' rate compress run wall_s MiB/s wire_MiB ratio cpu_s cc rtt_ms
for rate in $RATES; do
  # tbf on both egresses: the data direction and the acks.
  for pair in "$a va" "$b vb"; do
    set -- $pair
    if [ "$rate" = unshaped ]; then
      tc -n "$1" qdisc del dev "$2" root 2>/dev/null || true
    else
      tc -n "$1" qdisc replace dev "$2" root tbf rate "$rate" burst 256kb latency 50ms
    fi
  done
  for run in $(seq 1 "$RUNS"); do
    for c in $COMPRESS; do
     for cc in $CCS; do
      dest=$work/dest-$rate-$c-$run
      rm -rf "$dest"
      tokfile=$work/token-$$
      rm -f "$tokfile"
      ip netns exec "$b" /usr/bin/time -f "%U %S" -o "$work/recv.time" \
        ${PIN:+taskset -c "$PIN"} "$sluice" -q recv --listen 10.77.0.2:4444 --dir "$dest" --token-file "$tokfile" &
      rpid=$!
      for _ in $(seq 1 100); do [ -s "$tokfile" ] && break; sleep 0.05; done
      tx0=$(ip netns exec "$a" cat /sys/class/net/va/statistics/tx_bytes)
      bin=$sluice
      mode=$c
      if [ "${c#old-}" != "$c" ]; then
        bin=${SLUICE_OLD:?old-$mode needs SLUICE_OLD}
        mode=${c#old-}
      fi
      opts=()
      [ "$cc" = default ] || opts=(--sockopt "cc=$cc")
      ppid=
      if [ "$CCS" != default ]; then
        ip netns exec "$b" ping -i 0.1 10.77.0.1 >"$work/ping.out" 2>&1 &
        ppid=$!
      fi
      t0=$(date +%s.%N)
      if [ -n "${BLACKHOLE:-}" ]; then
        set -- $BLACKHOLE
        (sleep "$1"; ip -n "$b" addr del 10.77.0.2/24 dev vb; sleep "$2"; ip -n "$b" addr add 10.77.0.2/24 dev vb) &
      fi
      SLUICE_TOKEN=$(cat "$tokfile") ip netns exec "$a" /usr/bin/time -f "%U %S" -o "$work/send.time" \
        ${PIN:+taskset -c "$PIN"} "$bin" -q send --to 10.77.0.2:4444 --streams "$STREAMS" --compress "$mode" "${opts[@]}" "${sources[@]}"
      wait "$rpid"
      t1=$(date +%s.%N)
      rtt=-
      if [ -n "$ppid" ]; then
        kill "$ppid" 2>/dev/null || true
        wait "$ppid" 2>/dev/null || true
        rtt=$(sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' "$work/ping.out" | sort -n | awk '{v[NR] = $1} END {if (NR) printf "%.1f", v[int((NR + 1) / 2)]; else print "-"}')
      fi
      tx1=$(ip netns exec "$a" cat /sys/class/net/va/statistics/tx_bytes)
      cpu=$(cat "$work/recv.time" "$work/send.time" | awk '{s += $1 + $2} END {printf "%.2f", s}')
      wall=$(echo "$t1 - $t0" | bc -l)
      wire=$(( (tx1 - tx0) >> 20 ))
      printf '%-8s %-8s %4s %8.2f %9.0f %10s %9.2f %9s %7s %7s\n' "$rate" "$c" "$run" "$wall" "$(echo "($bytes / 1048576) / $wall" | bc -l)" "$wire" \
        "$(echo "$bytes / ($tx1 - $tx0)" | bc -l)" "$cpu" "$cc" "$rtt"
      rm -rf "$dest" "$tokfile"
     done
    done
  done
done
