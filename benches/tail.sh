#!/usr/bin/env bash
# The tail under a long flood: 3 redis-servers behind nutcracker and behind cutover (and,
# given B_BIN, a second cutover build: before a change against after), 50 clients
# pipelining 16 GETs for several seconds each run. Short runs hide what happens every few
# seconds (a stall of the proxy's thread shows only in the maximum latency of a run that
# lasts past it), so each run here is long. Prints, per target, the medians over rounds of
# requests/s, p99 and maximum latency (redis-benchmark's, in ms), and the peak resident
# memory of each proxy; the targets take turns, who goes first rotating.
#
# Usage: benches/tail.sh [requests-per-run] [rounds]     (defaults: 8000000 3)
#        B_BIN=path/to/other/cutover benches/tail.sh     (a second build beside this tree's)
#        CLIENTS=50 PIPELINE=16 TEST=get                 (the defaults)
# Needs: redis-server, redis-benchmark (7.x: its CSV has the percentiles), nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-8000000}
ROUNDS=${2:-3}
CLIENTS=${CLIENTS:-50}
PIPELINE=${PIPELINE:-16}
TEST=${TEST:-get}
cargo build --release --quiet
. benches/lib.sh

BACKENDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); done
names=(nutcracker cutover); ports=(); pids=()
# start_proxy NAME [BINARY]: nutcracker, or the cutover binary BINARY, over the servers.
start_proxy() {
  local port; port=$(free_port); bench_pool "$port" "${BACKENDS[@]}" > "$WORK/$1.yml"
  if [ $# -eq 1 ]; then
    nutcracker_start "$1"; pids+=("$NUTCRACKER_PID")
  else
    cutover_start "$1" "$2" >/dev/null 2>&1; pids+=("$CUTOVER_PID")
  fi
  ports+=("$port"); wait_port "$port"
}
start_proxy nutcracker
start_proxy cutover target/release/cutover
if [ -n "${B_BIN:-}" ]; then
  names+=(B); start_proxy B "$B_BIN"
fi
count=${#names[@]}

# One run: "requests/s p99 max" (redis-benchmark's CSV: test, rps, avg, min, p50, p95, p99, max).
tail_run() {
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$CLIENTS" -P "$PIPELINE" -n "$N" -r 100000 -t "$TEST" --csv 2>/dev/null \
    | awk '/^"(SET|GET)"/{gsub(/"/,"",$0); split($0,f,","); print f[2], f[7], f[8]}'
}
: > "$WORK/runs"
for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do
    i=$(( (k + round) % count ))
    echo "${names[$i]} $(tail_run "${ports[$i]}")" >> "$WORK/runs"
  done
done

echo "$CLIENTS clients, pipeline $PIPELINE, ${TEST^^}, $N requests a run; medians of $ROUNDS rounds; latency in ms"
printf '%-11s %10s %7s %8s %8s %8s %14s\n' target "requests/s" "p99" "max" "/nc rps" "/nc max" "peak RSS (MB)"
col() { awk -v n="$1" -v k="$2" '$1==n {print $k}' "$WORK/runs" | median; }
nc_rps=$(col nutcracker 2); nc_max=$(col nutcracker 4)
for i in $(seq 0 $((count - 1))); do
  n=${names[$i]}; rps=$(col "$n" 2); max=$(col "$n" 4)
  hwm=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/${pids[$i]}/status")
  printf '%-11s %10.0f %7s %8s %8.2f %8.2f %14s\n' "$n" "$rps" "$(col "$n" 3)" "$max" \
    "$(echo "$rps/$nc_rps" | bc -l)" "$(echo "$max/$nc_max" | bc -l)" "$hwm"
done
