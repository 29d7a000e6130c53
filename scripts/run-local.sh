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
# Usage:
#   scripts/run-local.sh [--debug] [--no-build]    start, print the URLs, stop all on Ctrl-C
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

stop_all() {
  [ -f "$PID_FILE" ] || { log "nothing to stop (no $PID_FILE)"; return 0; }
  local lines=() name pid program i
  mapfile -t lines <"$PID_FILE"
  # Reverse start order: the gateway first, redis last.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    [ -n "${lines[i]}" ] || continue
    read -r name pid program <<<"${lines[i]}"
    stop_pid "$name" "$pid" "$program"
  done
  rm -f "$PID_FILE"
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
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
BIN_DIR="$TARGET_DIR/$PROFILE"

# --- what the stack needs ----------------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
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

for port in 3001 3011 3002 3003 8080 9901; do
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

export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PAYMENTS_URL="http://127.0.0.1:3002"
export NOTIFICATIONS_URL="http://127.0.0.1:3003"

LISTEN=127.0.0.1:3002 start payments "$BIN_DIR/backend" payments
LISTEN=127.0.0.1:3003 start notifications "$BIN_DIR/backend" notifications
wait_healthy payments http://127.0.0.1:3002/health
wait_healthy notifications http://127.0.0.1:3003/health

LISTEN=127.0.0.1:3001 REPLICA_ID=reservations-1 start reservations-1 "$BIN_DIR/backend" reservations
LISTEN=127.0.0.1:3011 REPLICA_ID=reservations-2 start reservations-2 "$BIN_DIR/backend" reservations
wait_healthy reservations-1 http://127.0.0.1:3001/health
wait_healthy reservations-2 http://127.0.0.1:3011/health

gateway_started=0
if [ -x "$BIN_DIR/gateway" ] && [ -f "$GATEWAY_CONF" ]; then
  start gateway "$BIN_DIR/gateway" -c "$GATEWAY_CONF"
  wait_healthy gateway http://127.0.0.1:8080/health
  gateway_started=1
else
  log "WARNING: gateway not started ($BIN_DIR/gateway or $GATEWAY_CONF missing)"
fi
STARTED_OK=1

cat >&2 <<EOF

  The stack runs (logs: $LOG_DIR/):
EOF
if [ "$gateway_started" = 1 ]; then
  cat >&2 <<EOF
    gateway        http://127.0.0.1:8080/api/events
    admin          http://127.0.0.1:9901/   (dashboard)  /status  /metrics
EOF
fi
cat >&2 <<EOF
    reservations   http://127.0.0.1:3001   http://127.0.0.1:3011   (/health /ready /metrics /admin/audit)
    payments       http://127.0.0.1:3002
    notifications  http://127.0.0.1:3003
    redis          redis://127.0.0.1:$REDIS_PORT

EOF

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
