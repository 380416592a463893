#!/usr/bin/env bash
# Two builds of cutover side by side, in one run: the commit REV ("before", built in a git
# worktree under target/) and the working tree ("after"), rounds taking turns so that the
# machine's noise falls on both alike. Measures:
#
#   1. plain proxying, 3 redis-servers, redis-benchmark -c 50 SET and GET at pipeline 1 and
#      16: before, after, and nutcracker on the same servers (ratios after/before and each
#      against nutcracker);
#   2. mirroring: SET and GET at pipeline 16 through a proxy migrating one source into 3
#      targets, against the same build proxying that source alone (the mirror-on/off ratio
#      of benches/migration.sh), for each build.
#
# Usage: benches/builds.sh REV [requests-per-run] [rounds]   (defaults: 200000 5)
# Needs: redis-server, redis-benchmark, nutcracker, curl, git.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: benches/builds.sh REV [requests] [rounds]}
N=${2:-200000}
ROUNDS=${3:-5}
OLD_TREE=$PWD/target/bench-before
if [ ! -d "$OLD_TREE" ]; then git worktree add --detach "$OLD_TREE" "$REV" >/dev/null; fi
git -C "$OLD_TREE" checkout --quiet --detach "$REV"
(cd "$OLD_TREE" && CARGO_TARGET_DIR=$PWD/../bench-before-target cargo build --release --quiet)
cargo build --release --quiet
OLD=$PWD/target/bench-before-target/release/cutover
NEW=$PWD/target/release/cutover
. benches/lib.sh

# Servers: three for plain proxying; one source and three targets for mirroring.
PLAIN=(); for _ in 1 2 3; do redis; PLAIN+=("$PORT"); done
redis; SRC=$PORT; TARGETS=(); for _ in 1 2 3; do redis; TARGETS+=("$PORT"); done
pool() { bench_pool "$1" "${PLAIN[@]}"; }
source_only() { printf 'legacy:\n  listen: 127.0.0.1:%s\n  redis: true\n  servers:\n' "$1"; servers "$SRC"; }
migrating() { source_only "$1"; printf '  migrate_to: fleet\nfleet:\n  redis: true\n  hash: fnv1a_64\n  servers:\n'; servers "${TARGETS[@]}"; }

# start NAME BINARY CONFIG-FUNCTION: a proxy; sets PORT_<NAME> and ADMIN_<NAME>. Not
# lib.sh's cutover_start: REV may predate --no-admin-token (59367b1 does), and an
# unknown flag would stop the old build; /status, all this script asks, needs no token.
start() {
  local port admin; port=$(free_port); admin=$(free_port)
  "$3" "$port" > "$WORK/$1.yml"
  if [ "$2" = nutcracker ]; then
    nutcracker_start "$1"
  else
    "$2" -c "$WORK/$1.yml" -s "$(free_port)" -a 127.0.0.1 --admin "127.0.0.1:$admin" -o "$WORK/$1.log" >/dev/null 2>&1 & PIDS+=($!)
  fi
  wait_port "$port"
  printf -v "PORT_$1" '%s' "$port"; printf -v "ADMIN_$1" '%s' "$admin"
}
start nutcracker nutcracker pool
start old "$OLD" pool
start new "$NEW" pool
start old_off "$OLD" source_only
start new_off "$NEW" source_only
start old_on "$OLD" migrating
start new_on "$NEW" migrating
for admin in "$ADMIN_old_on" "$ADMIN_new_on"; do
  for _ in $(seq 1 600); do curl -s "127.0.0.1:$admin/status" | grep -q '"done":true' && break; sleep 0.5; done
done

# bench PORT PIPELINE TEST: requests/s.
bench() { redis-benchmark -h 127.0.0.1 -p "$1" -c 50 -n "$N" -r 100000 -P "$2" -t "$3" --csv 2>/dev/null | awk -F'","' '/^"(SET|GET)"/{printf "%d\n", $2}'; }

: > "$WORK/runs"
for round in $(seq 1 "$ROUNDS"); do
  # Turns rotate each round: who goes first changes.
  names=(nutcracker old new); off=$((round % 3)); names=("${names[@]:off}" "${names[@]:0:off}")
  for P in 1 16; do for t in set get; do for name in "${names[@]}"; do
    port_var="PORT_$name"; echo "plain $P $t $name $(bench "${!port_var}" "$P" "$t")" >> "$WORK/runs"
  done; done; done
  for t in set get; do
    if [ $((round % 2)) = 0 ]; then order=(old_off old_on new_off new_on); else order=(new_off new_on old_off old_on); fi
    for name in "${order[@]}"; do port_var="PORT_$name"; echo "mirror 16 $t $name $(bench "${!port_var}" 16 "$t")" >> "$WORK/runs"; done
  done
done

m() { awk -v k="$1" -v p="$2" -v t="$3" -v n="$4" '$1==k && $2==p && $3==t && $4==n {print $5}' "$WORK/runs" | median; }
echo "before: $(git rev-parse --short "$REV"), after: working tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')); medians of $ROUNDS rounds, $N requests each"
printf '\n%-4s %-4s %12s %12s %12s %9s %11s %11s\n' P cmd nutcracker before after after/bef "before/nc" "after/nc"
for P in 1 16; do for t in set get; do
  nc=$(m plain "$P" "$t" nutcracker); o=$(m plain "$P" "$t" old); n=$(m plain "$P" "$t" new)
  printf '%-4s %-4s %12d %12d %12d %9.2f %11.2f %11.2f\n' "$P" "${t^^}" "$nc" "$o" "$n" "$(echo "$n/$o" | bc -l)" "$(echo "$o/$nc" | bc -l)" "$(echo "$n/$nc" | bc -l)"
done; done
printf '\n%-9s %12s %12s %12s %12s %10s %10s\n' "P16" "before off" "before on" "after off" "after on" "before on/off" "after on/off"
for t in set get; do
  oo=$(m mirror 16 "$t" old_off); on=$(m mirror 16 "$t" old_on); no=$(m mirror 16 "$t" new_off); nn=$(m mirror 16 "$t" new_on)
  printf '%-9s %12d %12d %12d %12d %10.2f %10.2f\n' "${t^^}" "$oo" "$on" "$no" "$nn" "$(echo "$on/$oo" | bc -l)" "$(echo "$nn/$no" | bc -l)"
done
