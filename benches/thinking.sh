#!/usr/bin/env bash
# What busy polling's `auto` costs and gains for a client that waits between requests:
# one client on one connection sends a GET, reads the reply, spins for THINK µs, and
# again, through cutover as it starts by default (--busy-poll auto) and through cutover
# --busy-poll off, over one redis-server, the two taking turns. Prints, per wait, the
# medians over rounds of each one's time a request (what the client sees, wait included)
# and CPU time a request (all the proxy's threads, from /proc/PID/task/*/schedstat).
# A client that waits too long for the window to catch its next request should cost no
# more CPU with auto than with off.
#
# Usage: benches/thinking.sh [rounds]       (default 3)
#        THINK="0 20 50 100 200 1000"       (the waits, in µs; these are the default)
#        ARGS="--threads 2"                 (more arguments for both cutovers)
#        SPREAD=exp                         (each wait drawn from an exponential distribution
#                                            with the given mean, as independent requests
#                                            arrive; waits over 300 µs mostly slept, where
#                                            fixed waits spin throughout)
# Needs: redis-server, python3.
set -euo pipefail
# shellcheck disable=SC2086 # ARGS is a word list
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THINK=${THINK:-"0 20 50 100 200 1000"}
cargo build --release --quiet
. benches/lib.sh

redis; BACKEND=$PORT
AUTO=$(free_port); OFF=$(free_port)
bench_pool "$AUTO" "$BACKEND" > "$WORK/auto.yml"; bench_pool "$OFF" "$BACKEND" > "$WORK/off.yml"
cutover_start auto target/release/cutover ${ARGS:-}; AUTOPID=$CUTOVER_PID
cutover_start off target/release/cutover --busy-poll off ${ARGS:-}; OFFPID=$CUTOVER_PID
wait_port "$AUTO"; wait_port "$OFF"

# The client: $1 port, $2 wait in µs, $3 requests, $4 `exp` for random waits; prints µs
# a request.
cat > "$WORK/client.py" <<'PY'
import random, socket, sys, time
port, think, n = int(sys.argv[1]), float(sys.argv[2]) / 1e6, int(sys.argv[3])
spread = sys.argv[4] == "exp"
random.seed(7)
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = b"*2\r\n$3\r\nGET\r\n$5\r\nthink\r\n"
start = time.perf_counter()
for _ in range(n):
    s.sendall(request)
    s.recv(64)
    wait = random.expovariate(1 / think) if spread and think > 0 else think
    until = time.perf_counter() + wait
    if spread and wait > 0.0003:
        time.sleep(wait - 0.0002)
    while time.perf_counter() < until:
        pass
print((time.perf_counter() - start) / n * 1e6)
PY

: > "$WORK/runs"
names=(auto off); ports=("$AUTO" "$OFF"); pids=("$AUTOPID" "$OFFPID")
for round in $(seq 1 "$ROUNDS"); do
  for think in $THINK; do
    n=$(( 2000000 / (think + 60) ))
    for k in 0 1; do
      i=$(( (k + round) % 2 ))
      before=$(cpu_us "${pids[$i]}")
      wall=$(python3 "$WORK/client.py" "${ports[$i]}" "$think" "$n" "${SPREAD:-fixed}")
      after=$(cpu_us "${pids[$i]}")
      echo "$think ${names[$i]} $wall $(echo "($after - $before) / $n" | bc -l)" >> "$WORK/runs"
    done
  done
done

col() { awk -v t="$1" -v n="$2" -v k="$3" '$1==t && $2==n {print $k}' "$WORK/runs" | median; }
echo "medians of $ROUNDS rounds; µs a request, as the client sees it and in the proxy's CPU; arguments: ${ARGS:-none}; waits: ${SPREAD:-fixed}"
printf '\n%-9s %10s %10s | %10s %10s\n' "wait µs" "auto" "off" "auto cpu" "off cpu"
for think in $THINK; do
  printf '%-9s %10.1f %10.1f | %10.1f %10.1f\n' "$think" "$(col "$think" auto 3)" "$(col "$think" off 3)" "$(col "$think" auto 4)" "$(col "$think" off 4)"
done
