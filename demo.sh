#!/usr/bin/env bash
# The whole job on one machine: move a live Redis into a 3-server pool with no downtime.
#
# Starts a source redis-server and a 3-server target pool on free local ports, fills the
# source with every type of key, starts cutover in migration mode in front of it, runs a
# live workload through cutover, and shows the backfill, a verify pass, the cutover (with
# the pause clients saw), a verify the other way, the finalize and the final state. Stops
# everything it started, whatever happens.
#
# Usage: ./demo.sh            (installs redis-server and redis-tools with apt if missing)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  step "installing redis-server and redis-tools (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

step "building cutover (release)"
cargo build --release --quiet
BIN=$PWD/target/release/cutover

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# A port nothing listens on (probed with bash's /dev/tcp, no extra tools).
free_port() {
  while :; do
    local p=$((20000 + RANDOM % 40000))
    (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "$p"; return; }
  done
}
wait_port() { for _ in $(seq 1 400); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
redis() {
  PORT=$(free_port)
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$PORT"
}
keys() { redis-cli -p "$1" DBSIZE; }

step "starting a source Redis and a 3-server target pool"
redis; SRC=$PORT; redis; T1=$PORT; redis; T2=$PORT; redis; T3=$PORT
echo "source 127.0.0.1:$SRC; targets 127.0.0.1:$T1, :$T2, :$T3"

step "filling the source (strings, hashes, lists, sets, sorted sets; some with TTLs)"
fill() { redis-benchmark -p "$SRC" -q "$@" >/dev/null; }
fill -r 40000 -n 40000 -d 200 -t set
fill -r 5000 -n 20000 HSET hash:__rand_int__ field:__rand_int__ __rand_int__
fill -r 5000 -n 20000 RPUSH list:__rand_int__ item:__rand_int__
fill -r 5000 -n 20000 SADD set:__rand_int__ member:__rand_int__
fill -r 5000 -n 20000 ZADD zset:__rand_int__ __rand_int__ member:__rand_int__
fill -r 5000 -n 5000 SETEX ttl:__rand_int__ 3600 expiring
echo "source: $(keys "$SRC") keys"

PROXY=$(free_port); ADMIN=$(free_port)
cat >"$WORK/cutover.yml" <<EOF
# The pool the app uses, unchanged from nutcracker, plus two keys: where it moves to,
# and how.
app:
  listen: 127.0.0.1:$PROXY
  redis: true
  servers:
   - 127.0.0.1:$SRC:1 old
  migrate_to: fleet
  migrate:
    backfill_keys_per_second: 15000   # slow enough to watch
    shadow_ratio: 0.1                 # check one read in ten against the target
    state_file: $WORK/app.state
# The new servers, placed exactly as nutcracker would place keys.
fleet:
  redis: true
  hash: fnv1a_64
  distribution: ketama
  servers:
   - 127.0.0.1:$T1:1 fleet1
   - 127.0.0.1:$T2:1 fleet2
   - 127.0.0.1:$T3:1 fleet3
EOF
step "starting cutover in migration mode"
sed -n '/^app:/,$p' "$WORK/cutover.yml"
"$BIN" -c "$WORK/cutover.yml" -s "$(free_port)" -a 127.0.0.1 --admin "127.0.0.1:$ADMIN" -o "$WORK/cutover.log" &
PIDS+=($!)
wait_port "$PROXY"
ctl() { "$BIN" ctl --admin "127.0.0.1:$ADMIN" "$@"; }

step "a live workload through cutover (redis-benchmark, 4 clients, writes and reads)"
redis-benchmark -p "$PROXY" -c 4 -l -r 40000 -d 200 -t set,get,incr,lpush,sadd,hset -q >/dev/null 2>&1 &
LOAD=$!
PIDS+=($LOAD)

step "backfill (cutover ctl status, every second)"
for _ in $(seq 1 300); do
  STATUS=$(ctl status)
  echo "$STATUS" | grep '  backfill'
  echo "$STATUS" | grep -q 'backfill \[#*\] 100.0%' && break
  sleep 1
done
echo "$STATUS"

step "verify: every key of the source against the target (cutover ctl verify)"
ctl verify

step "cutover: the target pool becomes authoritative (cutover ctl cutover)"
for attempt in 1 2 3 4 5; do
  if ctl cutover; then break; fi
  [ "$attempt" = 5 ] && exit 1
  echo "(retrying)"; sleep 1
done
redis-cli -p "$PROXY" INFO cutover | grep migration_phase

step "still serving: 3 more seconds of load, now on the target, mirrored back to the source"
sleep 3
kill "$LOAD" 2>/dev/null || true
sleep 0.5

step "verify the other way: the target is the reference now"
ctl verify

step "finalize: stop mirroring; cutover is a plain twemproxy for the target pool"
ctl finalize

step "final state"
echo "source old:  $(keys "$SRC") keys"
echo "fleet1:      $(keys "$T1") keys"
echo "fleet2:      $(keys "$T2") keys"
echo "fleet3:      $(keys "$T3") keys   (together $(( $(keys "$T1") + $(keys "$T2") + $(keys "$T3") )))"
step "stopping everything the demo started"
