#!/usr/bin/env bash
# Runs the whole stack on this machine without Docker, on the ports of SPEC §3:
#
#   redis-server   127.0.0.1:6379   (reused when one already answers there, else started here)
#   payments       127.0.0.1:3002   backend payments
#   notifications  127.0.0.1:3003   backend notifications
#   reservations   127.0.0.1:3001   backend reservations  (REPLICA_ID=reservations-1)
#                  127.0.0.1:3011   backend reservations  (REPLICA_ID=reservations-2)
#   gateway        127.0.0.1:8080   gateway -c conf/gateway.local.yaml, admin 127.0.0.1:9901
#
# With --cluster, the scaled stack of SPEC §10.3 instead:
#
#   redis-server   127.0.0.1:7000..7005   a Redis Cluster, 3 masters + 3 replicas (data in
#                                         .run/redis-cluster/<port>, created afresh each start)
#   payments, reservations ×2             as above, with REDIS_MODE=cluster and
#                                         REDIS_URL=redis://127.0.0.1:7000,...,redis://127.0.0.1:7005
#   notifications                         as above
#   gateway-1..3   127.0.0.1:8080, :8081, :8082, admin :9901, :9902, :9903, each with a config
#                  generated from conf/gateway.local.yaml into .run/ (zones per_ip and
#                  reservations `scope: cluster`, limit_store on the six nodes)
#
# Usage:
#   scripts/run-local.sh [--debug] [--no-build]    start, print the URLs, stop all on Ctrl-C
#   scripts/run-local.sh --cluster [...]           the scaled stack (above)
#   scripts/run-local.sh --detach [--debug] ...    start, wait until healthy, return 0
#                                                  (pids in .run/pids)
#   scripts/run-local.sh stop                      stop what a detached run started
#   scripts/run-local.sh status                    show what runs
#
#   --debug     use debug builds (much faster to compile, slower to run)
#   --no-build  use the binaries already built
#
# Logs go to .run/logs/<name>.log. Binaries come from $CARGO_TARGET_DIR (default ./target).
# Environment: RUST_LOG (default info), WAIT_SECS (health wait per service, default 60),
# SKIP_INSTALL=1 (never call apt-get: only say what is missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_DIR="$ROOT/.run"
LOG_DIR="$RUN_DIR/logs"
PID_FILE="$RUN_DIR/pids"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WAIT_SECS=${WAIT_SECS:-60}
STOP_SECS=10
REDIS_PORT=6379
GATEWAY_CONF="$ROOT/conf/gateway.local.yaml"
CLUSTER_PORTS=(7000 7001 7002 7003 7004 7005)
CLUSTER_DIR="$RUN_DIR/redis-cluster"
# Ports of the cluster nodes this script started, read by `stop` (which may run in another
# invocation): a node that a scenario killed and restarted has a pid the pid file does not know.
CLUSTER_PORTS_FILE="$CLUSTER_DIR/ports"
export RUST_LOG=${RUST_LOG:-info}

log() { printf '[run-local] %s\n' "$*" >&2; }
die() { printf '[run-local] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

healthy() { curl -fs -o /dev/null --max-time 2 "$1"; }

# --- pid bookkeeping: one "name pid program" line per process this script started ---------------
alive() { kill -0 "$1" 2>/dev/null; }

# True when pid $1 still runs the executable $2 (its resolved path, as recorded at start): a
# recycled pid belongs to someone else.
runs() {
  local exe
  alive "$1" || return 1
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 0 # no /proc: trust the pid
  [ "${exe% (deleted)}" = "$2" ]
}

stop_pid() {
  local name=$1 pid=$2 program=$3 i
  runs "$pid" "$program" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_SECS * 10; i++)); do
    alive "$pid" || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) still running after ${STOP_SECS}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Shuts down the Redis Cluster nodes on the ports this script recorded, if they are still ours
# (their data directory is under $CLUSTER_DIR): covers nodes restarted by a failover demo.
stop_cluster_nodes() {
  [ -f "$CLUSTER_PORTS_FILE" ] || return 0
  local port dir
  for port in $(cat "$CLUSTER_PORTS_FILE"); do
    dir=$(timeout 2 redis-cli -p "$port" config get dir 2>/dev/null | sed -n 2p) || true
    case "$dir" in
      "$CLUSTER_DIR"/*)
        timeout 5 redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
        log "stopped redis cluster node :$port" ;;
    esac
  done
  rm -f "$CLUSTER_PORTS_FILE"
}

stop_all() {
  [ -f "$PID_FILE" ] || { stop_cluster_nodes; log "nothing to stop (no $PID_FILE)"; return 0; }
  local lines=() name pid program i
  mapfile -t lines <"$PID_FILE"
  # Reverse start order: the gateway first, redis last.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    [ -n "${lines[i]}" ] || continue
    read -r name pid program <<<"${lines[i]}"
    stop_pid "$name" "$pid" "$program"
  done
  rm -f "$PID_FILE"
  stop_cluster_nodes
}

status() {
  [ -f "$PID_FILE" ] || { log "not running (no $PID_FILE)"; return 1; }
  local name pid program rc=0
  while read -r name pid program; do
    if runs "$pid" "$program"; then printf '%-16s pid %-8s running\n' "$name" "$pid"
    else printf '%-16s pid %-8s NOT RUNNING (log: %s)\n' "$name" "$pid" "$LOG_DIR/$name.log"; rc=1
    fi
  done <"$PID_FILE"
  return "$rc"
}

# --- arguments ------------------------------------------------------------------------------------------
PROFILE=release
DETACH=0
BUILD=1
CLUSTER=0
case "${1:-}" in
  stop) stop_all; exit 0 ;;
  status) status; exit $? ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --release) PROFILE=release ;;
    --detach|-d) DETACH=1 ;;
    --no-build) BUILD=0 ;;
    --cluster) CLUSTER=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
BIN_DIR="$TARGET_DIR/$PROFILE"

# --- what the stack needs ----------------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v curl >/dev/null || need+=(curl)
if [ "$BUILD" = 1 ]; then command -v cmake >/dev/null || need+=(cmake); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if [ "${SKIP_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null \
     && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    log "installing ${need[*]} with apt-get"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
      || die "apt-get install ${need[*]} failed"
  else
    die "missing: ${need[*]}. Install them, e.g. on Debian/Ubuntu: sudo apt-get install ${need[*]}"
  fi
fi

if [ -f "$PID_FILE" ]; then
  while read -r name pid program; do
    if runs "$pid" "$program"; then
      die "already running ($name, pid $pid): scripts/run-local.sh stop first"
    fi
  done <"$PID_FILE"
  rm -f "$PID_FILE"
fi

ports=(3001 3011 3002 3003 8080 9901)
if [ "$CLUSTER" = 1 ]; then
  ports+=(8081 8082 9902 9903)
  # Each node also listens on its cluster bus port, port + 10000.
  for p in "${CLUSTER_PORTS[@]}"; do ports+=("$p" $((p + 10000))); done
fi
for port in "${ports[@]}"; do
  if port_open "$port"; then
    die "port 127.0.0.1:$port is already in use (see: ss -ltnp 'sport = :$port'); stop that process first"
  fi
done

# --- build ----------------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), then rerun"
  cargo_flags=()
  [ "$PROFILE" = release ] && cargo_flags+=(--release)
  log "cargo build ${cargo_flags[*]} -p backend -p gateway -p loadtest (the first release build takes several minutes)"
  (cd "$ROOT" && cargo build "${cargo_flags[@]}" -p backend -p gateway -p loadtest) || die "cargo build failed"
fi
[ -x "$BIN_DIR/backend" ] || die "$BIN_DIR/backend not found (build it, or drop --no-build)"

# --- start --------------------------------------------------------------------------------------------------
mkdir -p "$LOG_DIR" "$RUN_DIR/redis"
: >"$PID_FILE"

# Whatever ends this script before the stack is up (an error, a failed health check, Ctrl-C)
# stops what it started; in the foreground, so does any later exit.
STARTED_OK=0
on_exit() {
  local rc=$?
  if [ "$STARTED_OK" = 0 ] || [ "$DETACH" = 0 ]; then
    [ "$STARTED_OK" = 1 ] || log "start-up did not complete; stopping what was started"
    stop_all
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOGFILE COMMAND...: in its own session, so a Ctrl-C meant for a later command in
# the same terminal does not reach it; stop uses the recorded pid.
start() {
  local name=$1
  shift
  : >"$LOG_DIR/$name.log"
  (cd "$ROOT" && exec setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null) &
  printf '%s %s %s\n' "$name" "$!" "$(readlink -f "$(command -v "$1")")" >>"$PID_FILE"
  log "started $name (pid $!): $*"
}

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$PID_FILE"; }

# wait_healthy NAME URL: bounded; fails with the end of the service's log.
wait_healthy() {
  local name=$1 url=$2 pid deadline=$((SECONDS + WAIT_SECS))
  pid=$(pid_of "$name")
  while ! healthy "$url"; do
    if [ -n "$pid" ] && ! alive "$pid"; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name exited during start-up (log: $LOG_DIR/$name.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name not healthy at $url after ${WAIT_SECS}s (log: $LOG_DIR/$name.log)"
    fi
    sleep 0.2
  done
  log "$name healthy ($url)"
}

# redis_field PORT SECTION FIELD: one field of `INFO SECTION` (or `CLUSTER INFO` for section
# cluster) of a local node.
redis_field() {
  local out
  if [ "$2" = cluster ]; then out=$(timeout 2 redis-cli -p "$1" cluster info 2>/dev/null)
  else out=$(timeout 2 redis-cli -p "$1" info "$2" 2>/dev/null); fi
  printf '%s\n' "$out" | tr -d '\r' | sed -n "s/^$3://p"
}

start_redis_cluster() {
  local port dir deadline ok addrs=()
  mkdir -p "$CLUSTER_DIR"
  : >"$CLUSTER_PORTS_FILE"
  for port in "${CLUSTER_PORTS[@]}"; do
    dir="$CLUSTER_DIR/$port"
    # A fresh cluster each start, like the standalone redis (no persistence across runs).
    rm -rf "$dir"
    mkdir -p "$dir"
    # --set-proc-title no keeps the command line readable in /proc, so a failover demo that
    # kills a node can start it again exactly as it was.
    start "redis-$port" redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --cluster-require-full-coverage no \
      --appendonly yes --save "" --daemonize no --set-proc-title no
    echo "$port" >>"$CLUSTER_PORTS_FILE"
    addrs+=("127.0.0.1:$port")
  done
  deadline=$((SECONDS + WAIT_SECS))
  for port in "${CLUSTER_PORTS[@]}"; do
    until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do
      alive "$(pid_of "redis-$port")" || die "redis-server :$port exited (log: $LOG_DIR/redis-$port.log)"
      [ "$SECONDS" -lt "$deadline" ] || die "redis-server :$port not answering after ${WAIT_SECS}s"
      sleep 0.2
    done
  done
  log "creating the Redis Cluster: ${addrs[*]} (3 masters, 3 replicas)"
  timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$LOG_DIR/redis-cluster-create.log" 2>&1 \
    || { tail -n 20 "$LOG_DIR/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  # Every slot served and every replica in sync: a master killed before its replica synced is
  # never failed over.
  while :; do
    ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      [ "$(redis_field "$port" cluster cluster_state)" = ok ] || ok=0
      [ "$(redis_field "$port" cluster cluster_slots_ok)" = 16384 ] || ok=0
      if [ "$(redis_field "$port" replication role)" = slave ]; then
        [ "$(redis_field "$port" replication master_link_status)" = up ] || ok=0
      fi
    done
    [ "$ok" = 0 ] || break
    [ "$SECONDS" -lt "$deadline" ] || die "Redis Cluster not ok (or replicas not in sync) after ${WAIT_SECS}s: redis-cli -p 7000 cluster nodes"
    sleep 0.3
  done
  log "redis cluster healthy: 16384 slots, every replica in sync (127.0.0.1:${CLUSTER_PORTS[0]}..${CLUSTER_PORTS[5]})"
}

if [ "$CLUSTER" = 1 ]; then
  start_redis_cluster
  export REDIS_MODE=cluster
  REDIS_URL=$(printf 'redis://127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")
  export REDIS_URL=${REDIS_URL%,}
else
  if command -v redis-cli >/dev/null && [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
    log "redis already answers on 127.0.0.1:$REDIS_PORT: using it (it will not be stopped)"
  elif port_open "$REDIS_PORT"; then
    die "port $REDIS_PORT is taken by something that is not an answering redis-server"
  else
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_DIR/redis" \
      --save "" --appendonly no --daemonize no
    deadline=$((SECONDS + WAIT_SECS))
    until [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; do
      alive "$(pid_of redis)" || die "redis-server exited (log: $LOG_DIR/redis.log)"
      [ "$SECONDS" -lt "$deadline" ] || die "redis-server not answering after ${WAIT_SECS}s"
      sleep 0.2
    done
    log "redis healthy (127.0.0.1:$REDIS_PORT)"
  fi

  export PAYMENTS_URL="http://127.0.0.1:3002"
  export NOTIFICATIONS_URL="http://127.0.0.1:3003"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi

LISTEN=127.0.0.1:3002 start payments "$BIN_DIR/backend" payments
LISTEN=127.0.0.1:3003 start notifications "$BIN_DIR/backend" notifications
wait_healthy payments http://127.0.0.1:3002/health
wait_healthy notifications http://127.0.0.1:3003/health

LISTEN=127.0.0.1:3001 REPLICA_ID=reservations-1 start reservations-1 "$BIN_DIR/backend" reservations
LISTEN=127.0.0.1:3011 REPLICA_ID=reservations-2 start reservations-2 "$BIN_DIR/backend" reservations
wait_healthy reservations-1 http://127.0.0.1:3001/health
wait_healthy reservations-2 http://127.0.0.1:3011/health

# cluster_gateway_conf N PORT ADMIN: conf/gateway.local.yaml on other ports, with the limit
# zones decided in the Redis Cluster (SPEC §10.1), written to .run/gateway-N.cluster.yaml.
cluster_gateway_conf() {
  local out="$RUN_DIR/gateway-$1.cluster.yaml" store
  store=$(printf '"redis://127.0.0.1:%s", ' "${CLUSTER_PORTS[@]}")
  awk -v listen="$2" -v admin="$3" -v store="[${store%, }]" '
    /^listen:/ { print "listen: \"127.0.0.1:" listen "\""; next }
    /^admin_listen:/ { print "admin_listen: \"127.0.0.1:" admin "\""; next }
    /^limit_req_status:/ {
      print "limit_store:                 # generated by scripts/run-local.sh --cluster"
      print "  redis: " store
      print "  timeout_ms: 25"
      print "  fallback: local"
    }
    /^  (per_ip|reservations): *[{].*[}]/ { sub(/ *[}][[:space:]]*$/, ", scope: cluster }") }
    { print }' "$GATEWAY_CONF" >"$out"
  "$BIN_DIR/gateway" -t -c "$out" >&2 || die "generated $out is invalid"
  printf '%s' "$out"
}

gateway_started=0
if [ -x "$BIN_DIR/gateway" ] && [ -f "$GATEWAY_CONF" ]; then
  if [ "$CLUSTER" = 1 ]; then
    for i in 1 2 3; do
      conf=$(cluster_gateway_conf "$i" $((8079 + i)) $((9900 + i)))
      start "gateway-$i" "$BIN_DIR/gateway" -c "$conf"
    done
    for i in 1 2 3; do wait_healthy "gateway-$i" "http://127.0.0.1:$((8079 + i))/health"; done
  else
    start gateway "$BIN_DIR/gateway" -c "$GATEWAY_CONF"
    wait_healthy gateway http://127.0.0.1:8080/health
  fi
  gateway_started=1
else
  log "WARNING: gateway not started ($BIN_DIR/gateway or $GATEWAY_CONF missing)"
fi
STARTED_OK=1

cat >&2 <<EOF

  The stack runs (logs: $LOG_DIR/):
EOF
if [ "$gateway_started" = 1 ] && [ "$CLUSTER" = 1 ]; then
  cat >&2 <<EOF
    gateways       http://127.0.0.1:8080/api/events   :8081   :8082   (one client limit over all three)
    admins         http://127.0.0.1:9901/   :9902   :9903   (dashboard)  /status  /metrics
EOF
elif [ "$gateway_started" = 1 ]; then
  cat >&2 <<EOF
    gateway        http://127.0.0.1:8080/api/events
    admin          http://127.0.0.1:9901/   (dashboard)  /status  /metrics
EOF
fi
cat >&2 <<EOF
    reservations   http://127.0.0.1:3001   http://127.0.0.1:3011   (/health /ready /metrics /admin/audit)
    payments       http://127.0.0.1:3002
    notifications  http://127.0.0.1:3003
EOF
if [ "$CLUSTER" = 1 ]; then
  cat >&2 <<EOF
    redis cluster  127.0.0.1:7000 .. 127.0.0.1:7005   (redis-cli -p 7000 cluster nodes)
    demos          loadtest scenario cluster-flood;  loadtest scenario shard-failover

EOF
else
  cat >&2 <<EOF
    redis          redis://127.0.0.1:$REDIS_PORT

EOF
fi

if [ "$DETACH" = 1 ]; then
  log "detached; stop with: scripts/run-local.sh stop"
  exit 0
fi

# Foreground: stay until Ctrl-C (or SIGTERM); the EXIT trap stops everything.
trap 'echo >&2; exit 0' INT TERM
log "press Ctrl-C to stop"
declare -A reported=()
while true; do
  while read -r name pid program; do
    if ! runs "$pid" "$program" && [ -z "${reported[$name]:-}" ]; then
      log "WARNING: $name (pid $pid) exited; see $LOG_DIR/$name.log"
      reported[$name]=1
    fi
  done <"$PID_FILE"
  sleep 1 &
  wait $! || true
done
