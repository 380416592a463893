#!/usr/bin/env bash
# Latency and throughput at every concurrency: 3 redis-servers behind nutcracker and behind
# cutover (same config), plus one redis-server directly, driven by redis-benchmark at 1,
# 4, 16 and 50 clients, pipeline 1 and 16, SET and GET. Prints, per cell, the median of
# ROUNDS rounds (the three targets taking turns, who goes first rotating) of requests/s
# and of p50 and p99 latency (redis-benchmark's own percentiles), and cutover/nutcracker.
#
# Usage: benches/latency.sh [requests-per-run] [rounds]     (defaults: 40000 5)
#        CLIENTS="1 4" PIPELINES=1 benches/latency.sh       (a subset)
# Needs: redis-server, redis-benchmark (7.x: its CSV has the percentiles), nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000}
ROUNDS=${2:-5}
CLIENTS=${CLIENTS:-"1 4 16 50"}
PIPELINES=${PIPELINES:-"1 16"}
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh

BACKENDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); done
redis; DIRECT=$PORT
NC=$(free_port); CUT=$(free_port)
bench_pool "$NC" "${BACKENDS[@]}" > "$WORK/nc.yml"; bench_pool "$CUT" "${BACKENDS[@]}" > "$WORK/cut.yml"
nutcracker -c "$WORK/nc.yml" -s "$(free_port)" -a 127.0.0.1 -o "$WORK/nc.log" >/dev/null 2>&1 & PIDS+=($!)
"$BIN" -c "$WORK/cut.yml" -s "$(free_port)" -a 127.0.0.1 --no-admin-token --admin "127.0.0.1:$(free_port)" -o "$WORK/cut.log" & PIDS+=($!)
wait_port "$NC"; wait_port "$CUT"

# One run: "rps p50 p99" of test $4 through port $1 with $2 clients at pipeline $3.
run() {
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -P "$3" -n "$N" -r 100000 -t "$4" --csv 2>/dev/null \
    | awk -F'","' '/^"(SET|GET)"/{gsub(/"/,"",$0); split($0,f,","); print f[2], f[5], f[7]}'
}

: > "$WORK/runs"
names=(direct nutcracker cutover); ports=("$DIRECT" "$NC" "$CUT")
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do for p in $PIPELINES; do for t in set get; do
    for k in 0 1 2; do
      i=$(( (k + round) % 3 ))
      echo "$c $p $t ${names[$i]} $(run "${ports[$i]}" "$c" "$p" "$t")" >> "$WORK/runs"
    done
  done; done; done
done

col() { awk -v c="$1" -v p="$2" -v t="$3" -v n="$4" -v k="$5" '$1==c && $2==p && $3==t && $4==n {print $k}' "$WORK/runs" | median; }
echo "medians of $ROUNDS rounds, $N requests each; latency in ms (redis-benchmark's percentiles)"
printf '\n%-3s %-3s %-4s %10s %10s %10s %7s | %7s %7s %7s | %7s %7s %7s\n' c P cmd direct nutcracker cutover cut/nc "p50 nc" "p50 cut" "" "p99 nc" "p99 cut" ""
for c in $CLIENTS; do for p in $PIPELINES; do for t in set get; do
  d=$(col "$c" "$p" "$t" direct 5); nc=$(col "$c" "$p" "$t" nutcracker 5); cu=$(col "$c" "$p" "$t" cutover 5)
  p50n=$(col "$c" "$p" "$t" nutcracker 6); p50c=$(col "$c" "$p" "$t" cutover 6)
  p99n=$(col "$c" "$p" "$t" nutcracker 7); p99c=$(col "$c" "$p" "$t" cutover 7)
  printf '%-3s %-3s %-4s %10.0f %10.0f %10.0f %7.2f | %7s %7s %7s | %7s %7s %7s\n' "$c" "$p" "${t^^}" "$d" "$nc" "$cu" "$(echo "$cu/$nc" | bc -l)" \
    "$p50n" "$p50c" "$(awk -v a="$p50c" -v b="$p50n" 'BEGIN{print (a<=b)?"ok":"worse"}')" \
    "$p99n" "$p99c" "$(awk -v a="$p99c" -v b="$p99n" 'BEGIN{print (a<=b)?"ok":"worse"}')"
done; done; done
