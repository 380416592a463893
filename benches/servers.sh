#!/usr/bin/env bash
# Where a few clients' time goes when a pool has three servers instead of one: nutcracker
# and cutover (as it starts by default) each over one redis-server and over three, driven
# by redis-benchmark at pipeline 1. Prints, per cell, the medians over rounds (the four
# proxies taking turns, who goes first rotating) of requests/s, of each cutover's ratio to
# the nutcracker over the same servers in the same round, and, per request, the context
# switches and CPU time of the redis-servers and of the proxy (from /proc: switches
# voluntary and not, CPU from schedstat). Each request to a server of its own wakes that
# server, where one server takes several clients' requests in one write; the switches
# show it.
#
# Usage: benches/servers.sh [requests-per-run] [rounds]     (defaults: 40000 5)
#        CLIENTS="4" TESTS="set get" (the defaults)
# Needs: redis-server, redis-benchmark (7.x), nutcracker.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000}
ROUNDS=${2:-5}
CLIENTS=${CLIENTS:-4}
TESTS=${TESTS:-"set get"}
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh

BACKENDS=(); SERVER_PIDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); SERVER_PIDS+=("$RPID"); done
names=(nc1 nc3 cut1 cut3); ports=(); pids=()
for name in "${names[@]}"; do
  port=$(free_port); ports+=("$port")
  if [[ $name == *1 ]]; then bench_pool "$port" "${BACKENDS[0]}"; else bench_pool "$port" "${BACKENDS[@]}"; fi > "$WORK/$name.yml"
  if [[ $name == nc* ]]; then
    nutcracker_start "$name"; pids+=("$NUTCRACKER_PID")
  else
    cutover_start "$name" "$BIN"; pids+=("$CUTOVER_PID")
  fi
done
for port in "${ports[@]}"; do wait_port "$port"; done

# Context switches of processes "$@" so far, voluntary and not.
switches() { local p; for p in "$@"; do awk '/ctxt_switches/ {s += $2} END {print s}' "/proc/$p/status"; done | awk '{s += $1} END {print s}'; }
# CPU µs of processes "$@" so far.
cpu_all() { local p; for p in "$@"; do cpu_us "$p"; done | awk '{s += $1} END {print s}'; }

# A line a run: clients, test, proxy, requests/s, then per request the servers' switches
# and CPU µs and the proxy's switches and CPU µs.
: > "$WORK/runs"
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do for t in $TESTS; do
    for k in 0 1 2 3; do
      i=$(( (k + round) % 4 ))
      s0=$(switches "${SERVER_PIDS[@]}"); u0=$(cpu_all "${SERVER_PIDS[@]}"); p0=$(switches "${pids[$i]}"); q0=$(cpu_us "${pids[$i]}")
      rps=$(latency_run "${ports[$i]}" "$c" 1 "$t" | awk '{print $1}')
      s1=$(switches "${SERVER_PIDS[@]}"); u1=$(cpu_all "${SERVER_PIDS[@]}"); p1=$(switches "${pids[$i]}"); q1=$(cpu_us "${pids[$i]}")
      echo "$round $c $t ${names[$i]} $rps $(( s1 - s0 )) $(( u1 - u0 )) $(( p1 - p0 )) $(( q1 - q0 ))" >> "$WORK/runs"
    done
  done; done
done

echo "medians of $ROUNDS rounds, $N requests each, pipeline 1; per request: switches and CPU µs"
printf '\n%-3s %-4s %-5s %10s %7s | %9s %9s | %9s %9s\n' c cmd proxy "requests/s" "/nc" "srv sw" "srv µs" "proxy sw" "proxy µs"
for c in $CLIENTS; do for t in $TESTS; do
  for name in "${names[@]}"; do
    nc=nc${name: -1}
    # The ratio to the nutcracker over the same servers, round by round.
    ratio=$(awk -v c="$c" -v t="$t" -v n="$name" -v m="$nc" '$2==c && $3==t && $4==n {r[$1]=$5} $2==c && $3==t && $4==m {b[$1]=$5} END {for (k in r) printf "%.3f\n", r[k] / b[k]}' "$WORK/runs" | median)
    col() { awk -v c="$c" -v t="$t" -v n="$name" -v k="$1" -v N="$N" '$2==c && $3==t && $4==n {print (k == 5 ? $k : $k / N)}' "$WORK/runs" | median; }
    printf '%-3s %-4s %-5s %10.0f %7.2f | %9.2f %9.1f | %9.2f %9.1f\n' "$c" "${t^^}" "$name" "$(col 5)" "$ratio" "$(col 6)" "$(col 7)" "$(col 8)" "$(col 9)"
  done
done; done
