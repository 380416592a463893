#!/usr/bin/env bash
# How long a cutover under replication capture takes when the target servers' full syncs
# are slow, as a large server's are: before the gate closes, the cutover opens a stream to
# every target server and waits out its full sync (rule 13). Each target server's
# snapshots are made to take SECONDS (`rdb-key-save-delay`, spread over its keys); the
# time of `POST /cutover` is printed for each build given, in turns.
#
# Usage: benches/prepare.sh [targets] [seconds] [rounds]     (defaults: 2 2 2)
#        BINS="path/to/before path/to/after" (default: this tree's release build)
# Needs: redis-server, redis-cli, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${1:-2}
SECONDS_EACH=${2:-2}
ROUNDS=${3:-2}
cargo build --release --quiet
BINS=${BINS:-$PWD/target/release/cutover}
. benches/lib.sh

# One migration of 1,000 keys into $TARGETS fresh target servers with the build $1, then
# its cutover, timed: seconds left in $TOOK. (Not in a subshell: cleanup stops what it
# starts.)
cutover_time() {
  local source targets=() listen admin
  # Its own directory: the full syncs leave snapshots, which a server started beside
  # them would load.
  REDIS_DIR=$(mktemp -d -p "$WORK")
  redis; source=$PORT
  redis-cli -p "$source" eval "for i=1,1000 do redis.call('SET','k'..i,i) end" 0 > /dev/null
  for _ in $(seq 1 "$TARGETS"); do redis; targets+=("$PORT"); done
  listen=$(free_port)
  printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n   - 127.0.0.1:%s:1\n  migrate_to: fleet\n  migrate:\n    capture: replication\nfleet:\n  redis: true\n  servers:\n' "$listen" "$source" > "$WORK/p.yml"
  servers "${targets[@]}" >> "$WORK/p.yml"
  cutover_start p "$1"; admin=$CUTOVER_ADMIN
  wait_port "$listen"; wait_port "$admin"
  for _ in $(seq 1 200); do curl -s "127.0.0.1:$admin/status" | grep -q '"backfill":{"state":"done"' && break; sleep 0.1; done
  curl -s -X POST "127.0.0.1:$admin/verify" > /dev/null
  for _ in $(seq 1 200); do curl -s "127.0.0.1:$admin/status" | grep -q '"cutover":{"ready":true' && break; sleep 0.1; done
  for t in "${targets[@]}"; do
    redis-cli -p "$t" config set rdb-key-save-delay $((SECONDS_EACH * 1000000 / $(redis-cli -p "$t" dbsize))) > /dev/null
  done
  local started answer
  started=$(date +%s.%N)
  answer=$(curl -s -X POST "127.0.0.1:$admin/cutover")
  echo "$answer" | grep -q '"cutover":true' || { echo "cutover refused: ${answer:0:300}" >&2; exit 1; }
  TOOK=$(echo "$(date +%s.%N) - $started" | bc)
}

echo "a cutover under capture, $TARGETS target servers whose full syncs take ${SECONDS_EACH} s each (s):"
for round in $(seq 1 "$ROUNDS"); do
  for bin in $BINS; do cutover_time "$bin"; printf '  round %s  %-50s %6.2f\n' "$round" "$bin" "$TOOK"; done
done
