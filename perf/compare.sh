#!/usr/bin/env bash
# End-to-end comparison on one machine, in one run: sluice send/recv against
# the tools users would otherwise pick -- tar | socat, an rsync daemon with
# --whole-file (what the rsync SST method runs), and local cp -a.
#
# Corpus (generated once, reused): one big file of mixed pages (half
# repetitive text, half random, 16 KiB pages) and many 4-64 KiB files.
# Every timing ends with `sync -f DEST`, so all tools are compared on
# durable results (sluice also syncfs'es before it reports success).
# CPU is user+sys of every process involved (both ends), via /usr/bin/time.
#
# Every run writes a new destination directory and nothing is deleted until
# the end: on ext4, creating files within about a minute of deleting many
# others makes the inode allocator skip "recently deleted" inodes one buffer
# lookup at a time (perf: 38 % of all cycles in find_get_block_common and
# recently_deleted), which would charge one tool for the previous one's rm.
#
# Usage: perf/compare.sh [WORKDIR]
#   env: BIG_MIB=4096 SMALL=20000 RUNS=2 STREAMS=2
#        TOOLS="sluice socat rsync cp" SETS="big small"
#   compression: TOOLS="sluice_lz4 socat_lz4 sluice_zstd socat_zstd" SETS=big
#     (sluice --compress lz4 | zstd:1 against tar | lz4 -z | socat and
#      tar | zstd -1 -T2 | socat, decompressing before tar -x)
#   TLS: TOOLS="sluice sluice_tls socat socat_tls" SETS=big
#     (mutual TLS with verification on both tools: sluice --tls-mode
#      verify-identity against socat OPENSSL-LISTEN/OPENSSL with verify=1;
#      a throwaway CA and certificates are made with openssl in WORKDIR/pki)
#   before/after: SLUICE_OLD=/path/to/previous/sluice TOOLS="sluice_old sluice"
#     (the same commands through another build, alternating in one run)
#   rate accuracy: MODE=rate RATE=200M  (2 GiB to tmpfs through
#     sluice --rate-limit and through pv -L | socat; reports achieved rates)
# Needs: socat rsync time pv lz4 zstd (apt-get install -y ...), a release build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
work=${1:-$repo/perf/out/work}
BIG_MIB=${BIG_MIB:-4096}
SMALL=${SMALL:-20000}
RUNS=${RUNS:-2}
STREAMS=${STREAMS:-2}
TOOLS=${TOOLS:-sluice socat rsync cp}
SETS=${SETS:-big small}
MODE=${MODE:-compare}
RATE=${RATE:-200M}
sluice=$repo/target/release/sluice
for tool in socat rsync /usr/bin/time tar cp bc ss pv lz4 zstd openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y socat rsync time pv lz4 zstd" >&2; exit 2; }
done
[ -x "$sluice" ] || (cd "$repo" && cargo build --release)

. "$here/corpus.sh"
corpus=$(perf_corpus "$work" "$sluice" "$BIG_MIB" "$SMALL")
# Warm the source page cache the same way for every tool.
cat "$corpus"/big/* >/dev/null
find "$corpus/small" -type f -exec cat {} + >/dev/null

port=$((20000 + RANDOM % 20000))
results=$work/results.tsv
: >"$results"

# cpu FILE...: sum of user+sys seconds reported by /usr/bin/time -f "%U %S"
cpu() { awk '/^[0-9.]+ [0-9.]+$/ {s += $1 + $2} END {printf "%.2f", s}' "$@"; }
now() { date +%s.%N; }

settle() { sync; sleep 2; }

run_sluice_old() { local sluice=$SLUICE_OLD; run_sluice "$@"; }
run_sluice() { # src [extra send flags...]
  local t0 t1 src=$1
  shift
  rm -f "$work/recv.json"
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$work/t1" "$sluice" -q recv --listen 127.0.0.1:$port --dir "$dest" --json "${recv_flags[@]}" >"$work/recv.json" 2>"$work/recv.err" &
  local rpid=$!
  while [ ! -s "$work/recv.json" ]; do sleep 0.01; done
  local token; token=$(sed -E 's/.*"token":"([0-9a-f]+)".*/\1/' "$work/recv.json")
  if ! SLUICE_TOKEN=$token /usr/bin/time -f "%U %S" -o "$work/t2" "$sluice" -q send --streams "$STREAMS" "$@" --to 127.0.0.1:$port "$src" 2>"$work/send.err"; then
    cat "$work/send.err" >&2; kill $rpid 2>/dev/null; exit 1
  fi
  wait $rpid
  sync -f "$dest"
  t1=$(now)
  echo "$t0 $t1 $(cpu "$work/t1" "$work/t2")"
}

wait_listen() { until ss -ltnH "sport = :$port" | grep -q .; do sleep 0.01; done; }

run_socat() { # src [compress-cmd decompress-cmd [listen-address connect-address]]
  local t0 t1 z=${2:+| $2} unz=${3:+| $3}
  local listen=${4:-TCP-LISTEN:$port,reuseaddr} connect=${5:-TCP:127.0.0.1:$port}
  mkdir -p "$dest"
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$work/t1" bash -c "socat -u $listen stdio $unz | tar -xf - -C '$dest'" &
  local rpid=$!
  wait_listen
  /usr/bin/time -f "%U %S" -o "$work/t2" bash -c "tar -cf - -C '$1' . $z | socat -u stdio $connect"
  wait $rpid
  sync -f "$dest"
  t1=$(now)
  echo "$t0 $t1 $(cpu "$work/t1" "$work/t2")"
}

run_rsync() { # src
  local t0 t1
  mkdir -p "$dest"
  cat >"$work/rsyncd.conf" <<CONF
uid = root
gid = root
use chroot = false
pid file = $work/rsyncd.pid
[sst]
path = $dest
read only = false
CONF
  /usr/bin/time -f "%U %S" -o "$work/t1" rsync --daemon --no-detach --config="$work/rsyncd.conf" --port=$port --address=127.0.0.1 &
  local dpid=$!
  wait_listen
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$work/t2" rsync -a --whole-file --inplace "$1/" "rsync://127.0.0.1:$port/sst/"
  sync -f "$dest"
  t1=$(now)
  kill "$(cat "$work/rsyncd.pid")"
  wait $dpid 2>/dev/null || true
  rm -f "$work/rsyncd.pid"
  echo "$t0 $t1 $(cpu "$work/t1" "$work/t2")"
}

run_cp() { # src
  local t0 t1
  t0=$(now)
  /usr/bin/time -f "%U %S" -o "$work/t1" cp -a "$1" "$dest"
  sync -f "$dest"
  t1=$(now)
  echo "$t0 $t1 $(cpu "$work/t1")"
}

recv_flags=()
pki=$work/pki
make_pki() {
  [ -f "$pki/client.pem" ] && return
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=sluice perf CA" 2>/dev/null
    for who in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $who.key -out $who.csr -subj "/CN=$who" 2>/dev/null
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >$who.ext
      openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
    done
  )
}
run_sluice_tls() {
  make_pki
  recv_flags=(--tls-mode verify-identity --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --tls-ca "$pki/ca.pem")
  run_sluice "$1" --tls-mode verify-identity --tls-cert "$pki/client.pem" --tls-key "$pki/client.key" --tls-ca "$pki/ca.pem"
  recv_flags=()
}
run_socat_tls() {
  make_pki
  run_socat "$1" "" "" "OPENSSL-LISTEN:$port,reuseaddr,cert=$pki/server.pem,key=$pki/server.key,cafile=$pki/ca.pem,verify=1" \
    "OPENSSL:127.0.0.1:$port,cert=$pki/client.pem,key=$pki/client.key,cafile=$pki/ca.pem,verify=1"
}
run_sluice_lz4() { run_sluice "$1" --compress lz4; }
run_sluice_zstd() { run_sluice "$1" --compress zstd:1; }
run_socat_lz4() { run_socat "$1" "lz4 -z -c" "lz4 -d -c"; }
run_socat_zstd() { run_socat "$1" "zstd -1 -T2 -c" "zstd -d -c"; }

if [ "$MODE" = rate ]; then
  # Accuracy of the limiter: 2 GiB into tmpfs, so the disk plays no part.
  src=$work/rate-src
  mkdir -p "$src"
  [ -f "$src/2g.bin" ] || head -c $((2 << 30)) "$corpus/big/mixed.bin" >"$src/2g.bin"
  limit=$(numfmt --from=iec "$RATE")
  for run in $(seq 1 "$RUNS"); do
    dest=/dev/shm/sluice-rate-$$
    rm -rf "$dest"
    read -r t0 t1 _ < <(run_sluice "$src" --rate-limit "$RATE")
    secs=$(echo "$t1 - $t0" | bc -l)
    printf 'rate	sluice	%d	%.2f s	%.2f MiB/s	error %+.2f %%
' "$run" "$secs" "$(echo "2048 / $secs" | bc -l)" \
      "$(echo "((2147483648 / $secs) / $limit - 1) * 100" | bc -l)" | tee -a "$results"
    rm -rf "$dest"
    mkdir -p "$dest"
    t0=$(now)
    socat -u TCP-LISTEN:$port,reuseaddr "CREATE:$dest/2g.bin" &
    rpid=$!
    wait_listen
    pv -q -L "$(echo "$RATE" | tr 'MGK' 'mgk')" "$src/2g.bin" | socat -u stdio TCP:127.0.0.1:$port
    wait $rpid
    t1=$(now)
    secs=$(echo "$t1 - $t0" | bc -l)
    printf 'rate	pv	%d	%.2f s	%.2f MiB/s	error %+.2f %%
' "$run" "$secs" "$(echo "2048 / $secs" | bc -l)" \
      "$(echo "((2147483648 / $secs) / $limit - 1) * 100" | bc -l)" | tee -a "$results"
    rm -rf "$dest"
  done
  exit 0
fi

for set in $SETS; do
  src=$corpus/$set
  bytes=$(du -sb --apparent-size "$src" | cut -f1)
  for run in $(seq 1 "$RUNS"); do
    for tool in $TOOLS; do
      dest=$work/dest/$set-$tool-$run
      mkdir -p "$work/dest"
      settle
      read -r t0 t1 c < <(run_$tool "$src")
      secs=$(echo "$t1 - $t0" | bc -l)
      mibs=$(echo "$bytes / 1048576 / $secs" | bc -l)
      cpg=$(echo "$c / ($bytes / 1073741824)" | bc -l)
      printf '%s\t%s\t%d\t%.2f\t%.0f\t%.2f\n' "$set" "$tool" "$run" "$secs" "$mibs" "$cpg" | tee -a "$results"
    done
  done
done
rm -rf "$work/dest"
echo
echo "set tool run seconds MiB/s CPU-s/GiB -> $results"
