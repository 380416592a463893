#!/usr/bin/env bash
# Migration benchmarks, every figure measured in this one run:
#  1. Backfill: fill a source Redis with about MB megabytes of mixed data (benches/fill.py),
#     then copy it into a 3-server pool with the reference one-off script
#     (benches/reference_migrate.py: 10 threads, PTTL + DUMP + RESTORE per key) and with
#     `cutover migrate`; print keys/s, MB/s and the ratio.
#  2. Mirroring: redis-benchmark SET/GET (50 clients, pipeline 16) through cutover with
#     mirroring off and on; print the ratio, where the SETs' CPU went (machine, source,
#     targets, proxy), and the mirror lag p50/p99 under that load.
#  3. Cutover pause: under a moderate write load (redis-benchmark SET, 10 clients,
#     pipeline 1), verify, then flip cutover/rollback 10 times each; print the pauses.
#
# Usage: benches/migration.sh [MB] [PARTS]      (defaults: 150, "backfill mirror pause";
#        ROUNDS=N in the environment sets the mirror part's rounds, default 11)
#        BIN=path/to/cutover runs another build (before a change, say)
# Needs: redis-server, redis-benchmark, redis-cli, nutcracker, python3 with redis-py.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-150}
PARTS=${2:-backfill mirror pause}
cargo build --release --quiet
BIN=${BIN:-$PWD/target/release/cutover}
. benches/lib.sh

redis; SRC=$PORT; SRC_PID=$RPID; redis; T1=$PORT; T1_PID=$RPID; redis; T2=$PORT; T2_PID=$RPID; redis; T3=$PORT; T3_PID=$RPID
pool() { printf '  servers:\n   - 127.0.0.1:%s:1 fleet1\n   - 127.0.0.1:%s:1 fleet2\n   - 127.0.0.1:%s:1 fleet3\n' "$T1" "$T2" "$T3"; }
{ printf 'fleet:\n  redis: true\n  hash: fnv1a_64\n'; pool; } > "$WORK/fleet.yml"
NC=$(free_port)
{ printf 'fleet:\n  listen: 127.0.0.1:%s\n  redis: true\n  hash: fnv1a_64\n  timeout: 10000\n' "$NC"; pool; } > "$WORK/nc.yml"
nutcracker_start nc; wait_port "$NC"
flush_targets() { for p in "$T1" "$T2" "$T3"; do redis-cli -p "$p" FLUSHALL >/dev/null; done; }

if [[ $PARTS == *backfill* ]]; then
echo "filling the source with ~${MB} MB of mixed data..."
python3 benches/fill.py "$MB" | redis-cli -p "$SRC" --pipe >/dev/null
KEYS=$(redis-cli -p "$SRC" DBSIZE)
USED=$(redis-cli -p "$SRC" INFO memory | awk -F: '/^used_memory:/{printf "%.0f", $2/1e6}')
echo "source: $KEYS keys, ${USED} MB used"

t0=$(date +%s.%N); python3 -W ignore benches/reference_migrate.py "$SRC" "$NC" >/dev/null; t1=$(date +%s.%N)
REF=$(echo "$t1 - $t0" | bc)
REF_KEYS=$(( $(redis-cli -p "$T1" DBSIZE) + $(redis-cli -p "$T2" DBSIZE) + $(redis-cli -p "$T3" DBSIZE) ))
flush_targets
t0=$(date +%s.%N); "$BIN" migrate --from "127.0.0.1:$SRC" --to "$WORK/fleet.yml" >/dev/null 2>&1; t1=$(date +%s.%N)
CUT=$(echo "$t1 - $t0" | bc)
CUT_KEYS=$(( $(redis-cli -p "$T1" DBSIZE) + $(redis-cli -p "$T2" DBSIZE) + $(redis-cli -p "$T3" DBSIZE) ))

printf '\n%-28s %10s %10s %12s %10s\n' "backfill of $KEYS keys" "seconds" "keys" "keys/s" "MB/s"
printf '%-28s %10.1f %10d %12.0f %10.1f\n' "reference script (10 thr)" "$REF" "$REF_KEYS" "$(echo "$REF_KEYS / $REF" | bc -l)" "$(echo "$USED / $REF" | bc -l)"
printf '%-28s %10.1f %10d %12.0f %10.1f\n' "cutover migrate" "$CUT" "$CUT_KEYS" "$(echo "$CUT_KEYS / $CUT" | bc -l)" "$(echo "$USED / $CUT" | bc -l)"
printf 'cutover / reference: %.1fx\n' "$(echo "$REF / $CUT" | bc -l)"
fi

# 2. Mirroring on and off.
flush_targets
PLAIN=$(free_port); MIRROR=$(free_port)
printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n' "$PLAIN" "$SRC" > "$WORK/plain.yml"
{ printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n  migrate_to: fleet\n' "$MIRROR" "$SRC"; printf 'fleet:\n  redis: true\n  hash: fnv1a_64\n'; pool; } > "$WORK/mirror.yml"
cutover_start plain "$BIN" >/dev/null 2>&1; PLAIN_PID=$CUTOVER_PID
cutover_start mirror "$BIN" >/dev/null 2>&1; MIRROR_PID=$CUTOVER_PID; ADMIN=$CUTOVER_ADMIN
# CPU seconds a process has used (user + system), from /proc.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
wait_port "$PLAIN"; wait_port "$MIRROR"
# Let the mirror-on proxy finish its backfill first, so the run measures mirroring.
for _ in $(seq 1 1200); do curl -s "127.0.0.1:$ADMIN/status" | grep -q '"queued":0' && curl -s "127.0.0.1:$ADMIN/status" | grep -q '"done":true' && break; sleep 0.5; done
# Requests/s of redis-benchmark test $2 (set or get) through the proxy on port $1.
bench() { redis-benchmark -h 127.0.0.1 -p "$1" -c 50 -n 200000 -r 100000 -P 16 -t "$2" --csv 2>/dev/null | awk -F'","' '/^"(SET|GET)"/{printf "%d\n", $2}'; }
# Busy CPU seconds of the whole machine (user, nice, system, irq, softirq: not idle,
# iowait or time stolen by the hypervisor).
machine_busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat; }
# CPU seconds so far of: the machine, the source, the three targets together, proxy $1.
cpu_snapshot() { echo "$(machine_busy) $(cpu_seconds "$SRC_PID") $(echo "$(cpu_seconds "$T1_PID") + $(cpu_seconds "$T2_PID") + $(cpu_seconds "$T3_PID")" | bc) $(cpu_seconds "$1")"; }
# Medians of ROUNDS rounds (default 11), the two proxies taking turns (a shared 2-core
# machine is noisy).
ROUNDS=${ROUNDS:-11}
if [[ $PARTS == *mirror* ]]; then
: > "$WORK/mirror_runs"; : > "$WORK/set_cpu"
cpu_plain0=$(cpu_seconds "$PLAIN_PID"); cpu_mirror0=$(cpu_seconds "$MIRROR_PID")
for _ in $(seq 1 "$ROUNDS"); do
  before_off=$(cpu_snapshot "$PLAIN_PID"); off_set=$(bench "$PLAIN" set); after_off=$(cpu_snapshot "$PLAIN_PID")
  off_get=$(bench "$PLAIN" get)
  before_on=$(cpu_snapshot "$MIRROR_PID"); on_set=$(bench "$MIRROR" set); after_on=$(cpu_snapshot "$MIRROR_PID")
  on_get=$(bench "$MIRROR" get)
  echo "$off_set $off_get $on_set $on_get" >> "$WORK/mirror_runs"
  echo "$before_off $after_off $before_on $after_on" >> "$WORK/set_cpu"
done
cpu_plain=$(echo "$(cpu_seconds "$PLAIN_PID") - $cpu_plain0" | bc); cpu_mirror=$(echo "$(cpu_seconds "$MIRROR_PID") - $cpu_mirror0" | bc)
col() { awk -v c="$1" '{print $c}' "$WORK/mirror_runs" | median; }
off_set=$(col 1); off_get=$(col 2); on_set=$(col 3); on_get=$(col 4)
printf '\n%-22s %12s %12s %8s\n' "proxy, pipeline 16" "mirror off" "mirror on" "ratio"
printf '%-22s %12d %12d %8.2f\n' "SET requests/s" "$off_set" "$on_set" "$(echo "$on_set / $off_set" | bc -l)"
printf '%-22s %12d %12d %8.2f\n' "GET requests/s" "$off_get" "$on_get" "$(echo "$on_get / $off_get" | bc -l)"
printf 'SET on/off per round: %s(median of the rounds: %s)\n' "$(awk '{printf "%.2f ", $3 / $1}' "$WORK/mirror_runs")" \
  "$(awk '{printf "%.2f\n", $3 / $1}' "$WORK/mirror_runs" | median)"
printf 'proxy CPU for the same %d x 400,000 requests (SET and GET): mirror off %s s, mirror on %s s\n' "$ROUNDS" "$cpu_plain" "$cpu_mirror"
# Where the CPU of the SET rounds went, per SET; and what the ratio could be, were the
# machine CPU-bound, if mirroring cost the proxy nothing (only the targets' Redis work).
awk '{ for (i = 1; i <= 4; i++) { off[i] += $(i + 4) - $i; on[i] += $(i + 12) - $(i + 8) } }
  END {
    n = NR * 200000 / 1e6
    printf "CPU per SET, us (machine / source Redis / target Redis / proxy): mirror off %.2f / %.2f / %.2f / %.2f, mirror on %.2f / %.2f / %.2f / %.2f\n", off[1]/n, off[2]/n, off[3]/n, off[4]/n, on[1]/n, on[2]/n, on[3]/n, on[4]/n
    printf "CPU-bound ceiling of the SET ratio with a free proxy (machine off / (machine on - proxy extra)): %.2f\n", off[1] / (on[1] - (on[4] - off[4]))
  }' "$WORK/set_cpu"
sleep 2
curl -s "127.0.0.1:$ADMIN/metrics" | python3 -c '
import sys
buckets = []
for line in sys.stdin:
    if line.startswith("cutover_mirror_lag_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
total = buckets[-1][1] if buckets else 0
def q(p):
    for le, n in buckets:
        if n >= p * total:
            return le * 1000
    return float("nan")
print("mirror lag under that load: p50 <= %.2f ms, p99 <= %.2f ms (%d lags sampled, one write in 8; bucket upper bounds)" % (q(0.5), q(0.99), total))
'
fi

# 3. Cutover pause under a moderate write load, on the mirror-on proxy (backfill done).
if [[ $PARTS == *pause* ]]; then
redis-benchmark -h 127.0.0.1 -p "$MIRROR" -c 10 -n 100000000 -r 100000 -t set -q >/dev/null 2>&1 & LOAD=$!; PIDS+=($LOAD)
sleep 1
# The mirror-off proxy of part 2 wrote to the same source without mirroring: repair what
# it left behind, then verify (a cutover needs a verify that found nothing).
for query in "?repair=true" ""; do
  curl -s -X POST "127.0.0.1:$ADMIN/verify$query" >/dev/null
  sleep 0.5
  for _ in $(seq 1 600); do curl -s "127.0.0.1:$ADMIN/status" | grep -q '"running":false' && break; sleep 0.5; done
done
: > "$WORK/pauses"
for _ in $(seq 1 10); do
  for call in cutover rollback; do
    answer=$(curl -s -X POST "127.0.0.1:$ADMIN/$call")
    pause=$(echo "$answer" | sed -n 's/.*"pause_ms":\([0-9.]*\).*/\1/p')
    if [ -n "$pause" ]; then echo "$pause" >> "$WORK/pauses"; else echo "$call refused: $answer" | cut -c1-400 >&2; fi
    sleep 0.5
  done
done
kill "$LOAD" 2>/dev/null || true
N=$(wc -l < "$WORK/pauses")
printf '\ncutover/rollback pause under a moderate SET load (%d flips, ms): median %s, max %s\n' "$N" \
  "$(median < "$WORK/pauses")" "$(sort -n "$WORK/pauses" | tail -1)"
fi
