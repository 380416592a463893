#!/usr/bin/env bash
# Two ways of running cutover against nutcracker, in one run, at a few clients: for tuning
# a flag or trying a change. Variant A and variant B are each a binary, extra arguments
# and environment variables; the three proxies sit over the same 3 redis-servers, and in
# every round they take turns (who goes first rotates), so the machine's noise falls on
# all alike. Prints, per cell, the medians over rounds of requests/s and of p99 against
# nutcracker's, and in how many rounds each variant's p99 was above nutcracker's.
#
# Usage: A_ARGS="--busy-poll 50" B_ARGS="--busy-poll 200" benches/variants.sh [requests] [rounds]
#        A_BIN=path/to/cutover B_BIN=... (default: this tree's release build)
#        A_ENV="NAME=value" B_ENV=...    (a scratch build's switch, say)
#        CLIENTS="1 4" PIPELINE=1 TESTS="set get" (the defaults)
# Needs: redis-server, redis-benchmark (7.x: its CSV has the percentiles), nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000}
ROUNDS=${2:-5}
CLIENTS=${CLIENTS:-"1 4"}
PIPELINE=${PIPELINE:-1}
TESTS=${TESTS:-"set get"}
cargo build --release --quiet
A_BIN=${A_BIN:-target/release/cutover}
B_BIN=${B_BIN:-target/release/cutover}
. benches/lib.sh

BACKENDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); done
NC=$(free_port); A=$(free_port); B=$(free_port)
bench_pool "$NC" "${BACKENDS[@]}" > "$WORK/nc.yml"
bench_pool "$A" "${BACKENDS[@]}" > "$WORK/a.yml"
bench_pool "$B" "${BACKENDS[@]}" > "$WORK/b.yml"
nutcracker_start nc
# shellcheck disable=SC2086 # the arguments are word lists
CUTOVER_ENV=${A_ENV:-} cutover_start a "$A_BIN" ${A_ARGS:-}
# shellcheck disable=SC2086
CUTOVER_ENV=${B_ENV:-} cutover_start b "$B_BIN" ${B_ARGS:-}
wait_port "$NC"; wait_port "$A"; wait_port "$B"

: > "$WORK/runs"
names=(nc a b); ports=("$NC" "$A" "$B")
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do for t in $TESTS; do
    line="$round $c $t"
    for k in 0 1 2; do i=$(( (k + round) % 3 )); printf -v "res_$i" '%s' "$(latency_run "${ports[$i]}" "$c" "$PIPELINE" "$t")"; done
    echo "$line $res_0 $res_1 $res_2" >> "$WORK/runs"
  done; done
done

echo "A: ${A_ENV:-} $A_BIN ${A_ARGS:-}"
echo "B: ${B_ENV:-} $B_BIN ${B_ARGS:-}"
echo "medians of $ROUNDS rounds, $N requests each, pipeline $PIPELINE; p99 in ms"
printf '\n%-3s %-4s %9s %9s %9s %6s %6s | %7s %7s %7s | %9s %9s\n' c cmd nc A B A/nc B/nc "p99 nc" "p99 A" "p99 B" "A p99>nc" "B p99>nc"
for c in $CLIENTS; do for t in $TESTS; do
  awk -v c="$c" -v t="$t" '$2==c && $3==t' "$WORK/runs" > "$WORK/cell"
  # Columns: round, clients, test, then requests/s, p50, p99 of nutcracker, A and B.
  col() { awk -v k="$1" '{print $k}' "$WORK/cell" | median; }
  above() { awk -v k="$1" '$k > $6 {n++} END {print n+0}' "$WORK/cell"; }
  nc=$(col 4); a=$(col 7); b=$(col 10)
  printf '%-3s %-4s %9.0f %9.0f %9.0f %6.2f %6.2f | %7s %7s %7s | %6s/%-2s %6s/%-2s\n' "$c" "${t^^}" "$nc" "$a" "$b" \
    "$(echo "$a/$nc" | bc -l)" "$(echo "$b/$nc" | bc -l)" "$(col 6)" "$(col 9)" "$(col 12)" "$(above 9)" "$ROUNDS" "$(above 12)" "$ROUNDS"
done; done
