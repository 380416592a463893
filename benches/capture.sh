#!/usr/bin/env bash
# Replication capture, in one run:
#   1. throughput through a proxy migrating with `capture: replication` (it only forwards)
#      against the same proxy with no migration, redis-benchmark -c 50 SET at pipeline 1
#      and 16, rounds taking turns;
#   2. whether the capture keeps up: redis-benchmark writes straight to the source as fast
#      as it takes them; the source's accepted rate against the capture's applied rate
#      (commands taken from the stream over the time until its lag is back under 1 KB),
#      and how long that took after the load stopped.
#
# Usage: benches/capture.sh [requests-per-run] [rounds]     (defaults: 200000 5)
# Needs: redis-server, redis-benchmark, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-5}
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh

redis; SRC=$PORT; T=(); for _ in 1 2 3; do redis; T+=("$PORT"); done
PLAIN=$(free_port); CAP=$(free_port)
printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n' "$PLAIN" "$SRC" > "$WORK/plain.yml"
{ printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n  migrate_to: fleet\n  migrate:\n    capture: replication\nfleet:\n  redis: true\n  servers:\n' "$CAP" "$SRC"
  for p in "${T[@]}"; do printf '   - 127.0.0.1:%s:1\n' "$p"; done; } > "$WORK/cap.yml"
cutover_start plain "$BIN"
cutover_start cap "$BIN"; ADMIN=$CUTOVER_ADMIN
wait_port "$PLAIN"; wait_port "$CAP"
status() { curl -s "127.0.0.1:$ADMIN/status"; }
field() { python3 -c "import json,sys; s=json.load(sys.stdin)['pools'][0]['migration']['capture']['servers'][0]; print(s['$1'])"; }
for _ in $(seq 1 600); do status | grep -q '"done":true' && break; sleep 0.5; done

bench() { redis-benchmark -h 127.0.0.1 -p "$1" -c 50 -n "$N" -r 100000 -P "$2" -t set --csv 2>/dev/null | awk -F'","' '/^"SET"/{printf "%d\n", $2}'; }
: > "$WORK/runs"
for round in $(seq 1 "$ROUNDS"); do
  for P in 1 16; do
    if [ $((round % 2)) = 0 ]; then order="plain cap"; else order="cap plain"; fi
    for who in $order; do
      port=$PLAIN; [ "$who" = cap ] && port=$CAP
      echo "$P $who $(bench "$port" "$P")" >> "$WORK/runs"
    done
  done
done
m() { awk -v p="$1" -v w="$2" '$1==p && $2==w {print $3}' "$WORK/runs" | median; }
echo "medians of $ROUNDS rounds, $N requests each, 50 clients"
printf '\n%-10s %12s %12s %8s\n' "SET" "no migration" "capture" "ratio"
for P in 1 16; do
  a=$(m "$P" plain); b=$(m "$P" cap)
  printf 'pipeline %-2s %12d %12d %8.2f\n' "$P" "$a" "$b" "$(echo "$b/$a" | bc -l)"
done

# 2. Keeping up: a flood straight to the source.
before=$(status | field commands)
start=$(date +%s.%N)
redis-benchmark -h 127.0.0.1 -p "$SRC" -c 50 -n "$N" -r 100000 -P 16 -t set -q >/dev/null 2>&1
stopped=$(date +%s.%N)
for _ in $(seq 1 6000); do
  lag=$(status | field lag_bytes)
  [ "$lag" -lt 1024 ] && break
  sleep 0.05
done
caught=$(date +%s.%N)
after=$(status | field commands)
python3 - "$N" "$start" "$stopped" "$caught" "$before" "$after" <<'EOF'
import sys
n, start, stopped, caught, before, after = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5]), int(sys.argv[6])
load = stopped - start
print(f"\nstraight to the source: {n} SETs in {load:.2f} s = {n / load:,.0f}/s accepted")
print(f"capture: {after - before} commands applied in {caught - start:.2f} s = {(after - before) / (caught - start):,.0f}/s; lag under 1 KB {caught - stopped:.2f} s after the load stopped")
EOF
