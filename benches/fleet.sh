#!/usr/bin/env bash
# A fleet of three cutover proxies migrating one pool through etcd, in one run:
#   1. the fleet-wide pause of FLIPS flips (cutover and rollback, taking turns) while
#      redis-benchmark writes through all three members: the slowest member's hold per
#      flip (from the leader's /status), and the time each flip call took;
#   2. throughput of the three members together against one member alone (SET, 50
#      clients in all, pipeline 1), in the same phase.
#
# Usage: benches/fleet.sh [flips] [requests]     (defaults: 10 200000)
# Needs: etcd, redis-server, redis-benchmark, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
FLIPS=${1:-10}
N=${2:-200000}
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh

# etcd on free ports, its data in the work directory.
EC=$(free_port); EP=$(free_port)
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "bench=http://127.0.0.1:$EP" >"$WORK/etcd.log" 2>&1 & PIDS+=($!)
wait_port "$EC"

redis; SRC=$PORT; T=(); for _ in 1 2 3; do redis; T+=("$PORT"); done
redis-benchmark -p "$SRC" -n 50000 -r 50000 -t set -q >/dev/null 2>&1
TOKEN=bench-fleet-token
LISTEN=(); ADMIN=()
for n in 1 2 3; do
  L=$(free_port); A=$(free_port); LISTEN+=("$L"); ADMIN+=("$A")
  { printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n' "$L"; servers "$SRC"
    printf '  migrate_to: fleet\n  migrate:\n    capture: replication\n    coordination: etcd://127.0.0.1:%s/bench\nfleet:\n  redis: true\n  servers:\n' "$EC"
    servers "${T[@]}"; } > "$WORK/m$n.yml"
  "$BIN" -c "$WORK/m$n.yml" -s "$(free_port)" -a 127.0.0.1 --admin "127.0.0.1:$A" \
    --admin-token "$TOKEN" -o "$WORK/m$n.log" & PIDS+=($!)
  wait_port "$L"
done
status() { curl -s "127.0.0.1:$1/status"; }
post() { curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" "127.0.0.1:$1$2"; }
fleet_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['pools'][0]['fleet']['$1'])"; }
LEAD=""
for _ in $(seq 1 600); do
  for a in "${ADMIN[@]}"; do
    [ "$(status "$a" | fleet_field role)" = leader ] && LEAD=$a
  done
  [ -n "$LEAD" ] && status "$LEAD" | grep -q '"done":true' && break
  sleep 0.1
done
[ -n "$LEAD" ] || { echo "no leader elected" >&2; exit 1; }
[ "$(post "$LEAD" /verify)" = 202 ] || { echo "verify refused" >&2; exit 1; }
for _ in $(seq 1 300); do status "$LEAD" | grep -q '"running":false' && break; sleep 0.1; done

# 1. Flips under write load through every member.
for L in "${LISTEN[@]}"; do
  redis-benchmark -p "$L" -c 10 -n 100000000 -r 100000 -t set -q >/dev/null 2>&1 & PIDS+=($!)
done
sleep 1
: > "$WORK/pauses"
for i in $(seq 1 "$FLIPS"); do
  if [ $((i % 2)) = 1 ]; then path=/cutover; else path=/rollback; fi
  start=$(date +%s%N)
  until [ "$(post "$LEAD" "$path")" = 200 ]; do sleep 0.05; start=$(date +%s%N); done
  took=$(( ($(date +%s%N) - start) / 1000 ))
  echo "$(status "$LEAD" | fleet_field last_pause_ms) $((took / 1000))" >> "$WORK/pauses"
  sleep 0.5
done
for p in "${PIDS[@]:$((${#PIDS[@]} - 3))}"; do kill "$p" 2>/dev/null || true; done
echo "fleet-wide pause of $FLIPS flips (three members under SET load through each)"
awk '{print $1}' "$WORK/pauses" | sort -n | awk '{a[NR]=$1} END {printf "  slowest member hold, ms: median %.1f, max %.1f\n", a[int((NR+1)/2)], a[NR]}'
awk '{print $2}' "$WORK/pauses" | sort -n | awk '{a[NR]=$1} END {printf "  flip call on the leader, ms: median %d, max %d\n", a[int((NR+1)/2)], a[NR]}'
echo "  each flip (pause ms, call ms): $(tr '\n' ';' < "$WORK/pauses")"

# 2. Three members together against one.
rps() { awk -F'","' '/^"SET"/{printf "%d\n", $2}'; }
one=$(redis-benchmark -p "${LISTEN[0]}" -c 50 -n "$N" -r 100000 -t set --csv 2>/dev/null | rps)
LOADS=()
for L in "${LISTEN[@]}"; do
  (redis-benchmark -p "$L" -c 17 -n $((N / 3)) -r 100000 -t set --csv 2>/dev/null | rps > "$WORK/rps.$L") &
  LOADS+=($!)
done
for p in "${LOADS[@]}"; do wait "$p"; done
three=$(cat "$WORK"/rps.* | awk '{s+=$1} END {print s}')
printf '\nSET, 50 clients: one member %d req/s; three members together %d req/s; ratio %.2f\n' \
  "$one" "$three" "$(echo "$three/$one" | bc -l)"
