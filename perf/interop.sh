#!/usr/bin/env bash
# Two sluice builds against each other, with killed connections: the
# receiver of one build and the sender of the other copy a tree at a set
# rate while `ss -K` kills the session's sockets three times; both must end
# with exit 0 and an identical copy (the builds agree on a protocol version
# and on its resume count).
# Usage: perf/interop.sh RECV_BIN SEND_BIN SRC_DIR [WORKDIR=/var/tmp/sluice-interop]
# Needs root (ss -K) and iproute2.
set -euo pipefail
R=$1 S=$2 SRC=$3 W=${4:-/var/tmp/sluice-interop}
mkdir -p "$W" && rm -rf "$W/dest"
"$R" recv --listen 127.0.0.1:0 --json --dir "$W/dest" > "$W/recv.json" 2> "$W/recv.log" &
rp=$!
for _ in $(seq 50); do [ -s "$W/recv.json" ] && break; sleep 0.1; done
addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['addr'])" "$W/recv.json")
token=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['token'])" "$W/recv.json")
port=${addr##*:}
SLUICE_TOKEN=$token "$S" send --to "$addr" --rate-limit 60M --streams 3 "$SRC" 2> "$W/send.log" &
sp=$!
for _ in 1 2 3; do sleep 0.9; ss -K "( sport = :$port or dport = :$port )" > /dev/null 2>&1 || true; done
se=0; wait $sp || se=$?
re=0; wait $rp || re=$?
same=identical; diff -r "$SRC" "$W/dest" > /dev/null || same=DIFFERENT
echo "sender exit $se, receiver exit $re, copy $same, $(grep -c 'sent .* again' "$W/send.log" || true) resumptions"
[ "$se" = 0 ] && [ "$re" = 0 ] && [ "$same" = identical ]
