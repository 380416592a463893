#!/usr/bin/env bash
# Latency and throughput at every concurrency: 3 redis-servers behind nutcracker, behind
# cutover as it starts by default (busy polling `auto`) and behind cutover --busy-poll
# $POLL (default `off`; same config), plus one redis-server
# directly, driven by redis-benchmark at 1, 4, 16 and 50 clients, pipeline 1 and 16, SET
# and GET. Prints, per cell, the median of ROUNDS rounds (the four targets taking turns,
# who goes first rotating) of requests/s and of p50 and p99 latency (redis-benchmark's
# own percentiles), cutover/nutcracker for both cutovers, and each proxy's CPU time a
# request (all its threads, from /proc/PID/task/*/schedstat): what polling costs.
#
# Usage: benches/latency.sh [requests-per-run] [rounds]     (defaults: 40000 5)
#        CLIENTS="1 4" PIPELINES=1 benches/latency.sh       (a subset)
#        POLL=50 benches/latency.sh                         (the other cutover's --busy-poll; default off)
# Needs: redis-server, redis-benchmark (7.x: its CSV has the percentiles), nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000}
ROUNDS=${2:-5}
CLIENTS=${CLIENTS:-"1 4 16 50"}
PIPELINES=${PIPELINES:-"1 16"}
POLL=${POLL:-off}
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh

BACKENDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); done
redis; DIRECT=$PORT
NC=$(free_port); CUT=$(free_port); OTHER=$(free_port)
bench_pool "$NC" "${BACKENDS[@]}" > "$WORK/nc.yml"; bench_pool "$CUT" "${BACKENDS[@]}" > "$WORK/cut.yml"
bench_pool "$OTHER" "${BACKENDS[@]}" > "$WORK/other.yml"
nutcracker_start nc; NCPID=$NUTCRACKER_PID
cutover_start cut "$BIN"; CUTPID=$CUTOVER_PID
cutover_start other "$BIN" --busy-poll "$POLL"; OTHERPID=$CUTOVER_PID
wait_port "$NC"; wait_port "$CUT"; wait_port "$OTHER"

: > "$WORK/runs"
names=(direct nutcracker cutover other); ports=("$DIRECT" "$NC" "$CUT" "$OTHER")
pids=("" "$NCPID" "$CUTPID" "$OTHERPID")
# A line a run: clients, pipeline, test, target, requests/s, p50, p99, and the proxy's
# CPU µs a request (0 for the direct connection).
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do for p in $PIPELINES; do for t in set get; do
    for k in 0 1 2 3; do
      i=$(( (k + round) % 4 ))
      before=$(cpu_us "${pids[$i]}")
      result=$(latency_run "${ports[$i]}" "$c" "$p" "$t")
      after=$(cpu_us "${pids[$i]}")
      echo "$c $p $t ${names[$i]} $result $(echo "($after - $before) / $N" | bc -l)" >> "$WORK/runs"
    done
  done; done; done
done

col() { awk -v c="$1" -v p="$2" -v t="$3" -v n="$4" -v k="$5" '$1==c && $2==p && $3==t && $4==n {print $k}' "$WORK/runs" | median; }
ratio() { echo "$1/$2" | bc -l; }
# A proxy's latency, with "!" when it is above nutcracker's ($2).
mark() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%s%s", a, (a>b)?"!":""}'; }
echo "medians of $ROUNDS rounds, $N requests each; cutover as it starts by default (--busy-poll auto); other = cutover --busy-poll $POLL"
echo "latency in ms (redis-benchmark's percentiles): direct / nutcracker / cutover / other; ! marks above nutcracker's"
echo "cpu: each proxy's CPU µs a request, nutcracker / cutover / other"
printf '\n%-3s %-3s %-4s %9s %9s %9s %9s %7s %7s | %-29s | %-29s | %s\n' c P cmd direct nutcracker cutover other cut/nc other/nc "p50" "p99" "cpu"
for c in $CLIENTS; do for p in $PIPELINES; do for t in set get; do
  for n in direct nutcracker cutover other; do
    for k in 5 6 7 8; do eval "v_${n}_$k=$(col "$c" "$p" "$t" "$n" "$k")"; done
  done
  printf '%-3s %-3s %-4s %9.0f %9.0f %9.0f %9.0f %7.2f %7.2f | %-29s | %-29s | %.1f / %.1f / %.1f\n' "$c" "$p" "${t^^}" \
    "$v_direct_5" "$v_nutcracker_5" "$v_cutover_5" "$v_other_5" \
    "$(ratio "$v_cutover_5" "$v_nutcracker_5")" "$(ratio "$v_other_5" "$v_nutcracker_5")" \
    "$v_direct_6 / $v_nutcracker_6 / $(mark "$v_cutover_6" "$v_nutcracker_6") / $(mark "$v_other_6" "$v_nutcracker_6")" \
    "$v_direct_7 / $v_nutcracker_7 / $(mark "$v_cutover_7" "$v_nutcracker_7") / $(mark "$v_other_7" "$v_nutcracker_7")" \
    "$v_nutcracker_8" "$v_cutover_8" "$v_other_8"
done; done; done
