#!/usr/bin/env bash
# End-to-end proxy benchmark: 3 redis-servers behind nutcracker and behind cutover (same
# config), plus one redis-server directly, all driven by redis-benchmark in one run.
# Prints requests/s per target, the ratio cutover/nutcracker, and each proxy's CPU seconds
# per million requests (user+system, from /proc).
#
# Each figure is the median of ROUNDS runs (default 3), the targets taking turns so that
# noise from other work on the machine falls on all of them alike.
#
# Usage: benches/e2e.sh [requests-per-run] [rounds]      (defaults 200000 3)
# Needs: redis-server, redis-benchmark, nutcracker; builds cutover in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-3}
CLIENTS=50
cargo build --release --quiet
BIN=target/release/cutover
. benches/lib.sh
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
TICKS=$(getconf CLK_TCK)

BACKENDS=(); for _ in 1 2 3; do redis; BACKENDS+=("$PORT"); done
redis; DIRECT=$PORT

NC_PORT=$(free_port); CUT_PORT=$(free_port)
bench_pool "$NC_PORT" "${BACKENDS[@]}" > "$WORK/nc.yml"
bench_pool "$CUT_PORT" "${BACKENDS[@]}" > "$WORK/cut.yml"
nutcracker_start nc; NC_PID=$NUTCRACKER_PID
cutover_start cut "$BIN"; CUT_PID=$CUTOVER_PID
wait_port "$NC_PORT"; wait_port "$CUT_PORT"

# One redis-benchmark run: prints "set_rps get_rps".
bench() {
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$CLIENTS" -n "$N" -r 100000 -P "$2" -t set,get --csv 2>/dev/null \
    | awk -F'","' '/^"SET"/{s=$2} /^"GET"/{g=$2} END{printf "%d %d\n", s, g}'
}


printf '%-4s %-4s %12s %12s %12s %8s %16s %16s\n' "P" "cmd" "redis" "nutcracker" "cutover" "ratio" "nc cpu s/Mreq" "cut cpu s/Mreq"
for P in 1 16; do
  : > "$WORK/runs"
  for _ in $(seq 1 "$ROUNDS"); do
    read -r d_set d_get < <(bench "$DIRECT" "$P")
    c0=$(cpu_ticks "$NC_PID"); read -r n_set n_get < <(bench "$NC_PORT" "$P"); c1=$(cpu_ticks "$NC_PID")
    k0=$(cpu_ticks "$CUT_PID"); read -r c_set c_get < <(bench "$CUT_PORT" "$P"); k1=$(cpu_ticks "$CUT_PID")
    nc_cpu=$(echo "scale=3; ($c1 - $c0) / $TICKS / (2 * $N / 1000000)" | bc)
    cut_cpu=$(echo "scale=3; ($k1 - $k0) / $TICKS / (2 * $N / 1000000)" | bc)
    echo "$d_set $d_get $n_set $n_get $c_set $c_get $nc_cpu $cut_cpu" >> "$WORK/runs"
  done
  col() { awk -v c="$1" '{print $c}' "$WORK/runs" | median; }
  nc_cpu=$(col 7); cut_cpu=$(col 8)
  for cmd in SET GET; do
    if [ $cmd = SET ]; then d=$(col 1); n=$(col 3); c=$(col 5); else d=$(col 2); n=$(col 4); c=$(col 6); fi
    ratio=$(echo "scale=2; $c / $n" | bc)
    printf '%-4s %-4s %12s %12s %12s %8s %16s %16s\n' "$P" "$cmd" "$d" "$n" "$c" "${ratio}x" "$nc_cpu" "$cut_cpu"
  done
done
