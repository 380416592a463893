# Shared by the benchmark scripts (sourced, not run): a work directory and the processes
# started, both cleaned up on exit; free loopback ports; waiting for a port; one latency run; medians.
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 400); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
# One redis-benchmark run of test $4 through port $1 with $2 clients at pipeline $3, $N
# requests: "requests/s p50 p99" (latencies in ms; redis-benchmark 7.x's CSV has them).
latency_run() {
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -P "$3" -n "$N" -r 100000 -t "$4" --csv 2>/dev/null \
    | awk -F'","' '/^"(SET|GET)"/{gsub(/"/,"",$0); split($0,f,","); print f[2], f[5], f[7]}'
}
# CPU time of process $1 so far, all its threads, in µs (the kernel's run time per thread);
# 0 when $1 is empty (a target with no process of its own to measure).
cpu_us() {
  if [ -z "$1" ]; then echo 0; return; fi
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s / 1000}'
}
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
# Start a redis-server on a free port (in this shell, not a subshell, so cleanup stops
# it): its port is left in $PORT and its pid in $RPID. Its directory is $REDIS_DIR, or
# $WORK: a server started where another wrote a snapshot for a replica's full sync loads it.
redis() { PORT=$(free_port); redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "${REDIS_DIR:-$WORK}" --daemonize no >/dev/null 2>&1 & PIDS+=($!); RPID=$!; wait_port "$PORT"; }
# Config lines for the servers on ports "$@", weight 1 each.
servers() { for p in "$@"; do printf '   - 127.0.0.1:%s:1\n' "$p"; done; }
# Pool `bench` (fnv1a_64, ketama, as the twemproxy configs we meet) listening on port $1,
# over the servers on ports $2...
bench_pool() { printf 'bench:\n  listen: 127.0.0.1:%s\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n' "$1"; shift; servers "$@"; }
# Start nutcracker on the config $WORK/$1.yml (written beforehand), logging to
# $WORK/$1.log, with its stats port free; in this shell, not a subshell, so cleanup stops
# it. Its pid is left in $NUTCRACKER_PID.
nutcracker_start() {
  nutcracker -c "$WORK/$1.yml" -s "$(free_port)" -a 127.0.0.1 -o "$WORK/$1.log" >/dev/null 2>&1 & PIDS+=($!); NUTCRACKER_PID=$!
}
# Start the cutover binary $2 on the config $WORK/$1.yml (written beforehand), logging to
# $WORK/$1.log, with its stats port and admin API on free ports (no admin token) and the
# arguments $3..., and with the environment variables in $CUTOVER_ENV ("NAME=value ...",
# a scratch build's switch, say); in this shell, not a subshell, so cleanup stops it. Its
# pid is left in $CUTOVER_PID and its admin API's port in $CUTOVER_ADMIN.
cutover_start() {
  local name=$1 bin=$2; shift 2
  CUTOVER_ADMIN=$(free_port)
  # shellcheck disable=SC2086 # CUTOVER_ENV is a word list
  env ${CUTOVER_ENV:-} "$bin" -c "$WORK/$name.yml" -s "$(free_port)" -a 127.0.0.1 --no-admin-token --admin "127.0.0.1:$CUTOVER_ADMIN" -o "$WORK/$name.log" "$@" & PIDS+=($!); CUTOVER_PID=$!
}
