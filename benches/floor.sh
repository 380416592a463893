#!/usr/bin/env bash
# What a proxy on tokio could gain at a few clients, at most: one redis-server behind
# nutcracker, behind cutover (--busy-poll off: nothing else here polls), and behind the
# byte relay of examples/relay.rs in its two ways (one task per client; two tasks handing
# bytes through channels, as cutover's session and server connection do). The relay
# parses nothing and gives each client its own backend connection, so it is a floor on
# the work per request, not a proxy to compare features with. redis-benchmark at
# pipeline 1, SET and GET; per cell, the medians over rounds of requests/s and of each
# target's ratio to nutcracker in the same round (the four take turns, who goes first
# rotating).
#
# Usage: benches/floor.sh [requests-per-run] [rounds]     (defaults: 40000 7)
#        CLIENTS="1 4" (the default)
#        POLL=auto RELAY_ARGS=--spin: the same with polling, cutover's --busy-poll (off
#        unless told) beside relays that never sleep (the ceiling of polling)
# Needs: redis-server, redis-benchmark, nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000}
ROUNDS=${2:-7}
CLIENTS=${CLIENTS:-"1 4"}
cargo build --release --quiet --bin cutover --example relay
. benches/lib.sh

redis; BACKEND=$PORT
NC=$(free_port); CUT=$(free_port); ONE=$(free_port); TWO=$(free_port)
bench_pool "$NC" "$BACKEND" > "$WORK/nc.yml"; bench_pool "$CUT" "$BACKEND" > "$WORK/cut.yml"
nutcracker_start nc
cutover_start cut target/release/cutover --busy-poll "${POLL:-off}"
# shellcheck disable=SC2086 # RELAY_ARGS is a word list
target/release/examples/relay "127.0.0.1:$ONE" "127.0.0.1:$BACKEND" ${RELAY_ARGS:-} & PIDS+=($!)
# shellcheck disable=SC2086
target/release/examples/relay "127.0.0.1:$TWO" "127.0.0.1:$BACKEND" --tasks ${RELAY_ARGS:-} & PIDS+=($!)
wait_port "$NC"; wait_port "$CUT"; wait_port "$ONE"; wait_port "$TWO"

# One line a round and cell: clients, test, then requests/s of nutcracker, cutover, the
# one-task relay and the two-task relay.
: > "$WORK/runs"
ports=("$NC" "$CUT" "$ONE" "$TWO")
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do for t in set get; do
    for k in 0 1 2 3; do
      i=$(( (k + round) % 4 ))
      printf -v "rps_$i" '%s' "$(latency_run "${ports[$i]}" "$c" 1 "$t" | awk '{print $1}')"
    done
    echo "$c $t $rps_0 $rps_1 $rps_2 $rps_3" >> "$WORK/runs"
  done; done
done

echo "medians of $ROUNDS rounds, $N requests each, pipeline 1, one redis-server; cutover --busy-poll ${POLL:-off}, relays ${RELAY_ARGS:-as they are}"
printf '\n%-3s %-4s %9s %9s %9s %9s | %7s %7s %7s\n' c cmd nc cutover "relay 1" "relay 2" "cut/nc" "1/nc" "2/nc"
for c in $CLIENTS; do for t in set get; do
  awk -v c="$c" -v t="$t" '$1==c && $2==t' "$WORK/runs" > "$WORK/cell"
  col() { awk -v k="$1" '{print $k}' "$WORK/cell" | median; }
  # The median of the per-round ratios of column $1 to nutcracker's (column 3).
  per_round() { awk -v k="$1" '{printf "%.3f\n", $k / $3}' "$WORK/cell" | median; }
  printf '%-3s %-4s %9.0f %9.0f %9.0f %9.0f | %7.2f %7.2f %7.2f\n' "$c" "${t^^}" \
    "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(per_round 4)" "$(per_round 5)" "$(per_round 6)"
done; done
