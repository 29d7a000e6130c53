#!/usr/bin/env bash
# Side-by-side benchmark of the gateway, NGINX and a bare Pingora proxy, same upstream, same
# connections, release build, limits on but not binding (GitHub issue 4 and its follow-up).
#
#   scripts/bench-gateway-vs-nginx.sh [--route static|real] [--targets "nginx bare gateway"]
#                                     [--duration 15s] [--connections 64] [--threads 2]
#                                     [--warmup 3s] [--rounds 2] [--modes "log nolog"]
#                                     [--path /api/events] [--bare-args "--no-work-stealing"]
#                                     [--no-build] [--gateway-bin PATH] [--bare-bin PATH]
#                                     [--backend-bin PATH] [--perf DIR] [--callgrind DIR]
#                                     [--out FILE] [--keep]
#
#   --route static (default): the upstream is a separate nginx (1 worker) answering a 95-byte
#       JSON body from memory (bench/upstream.nginx.conf.tmpl). Targets: nginx, bare, gateway
#       (default all three); wrk asks GET /api/events through each.
#   --route real: the upstream is one `backend reservations` process on its own redis-server
#       (both started here on free ports; the demo events, EVT-001 among them, are seeded at
#       start). Targets: direct (wrk straight at the reservations process), nginx, bare,
#       gateway (default "direct nginx gateway"); wrk asks GET /api/events/EVT-001 (3.8 KB JSON
#       read from Redis). --modes defaults to "nolog" here.
#   Targets: nginx = bench/nginx.conf.tmpl (worker_processes 2); gateway = bench/gateway.yaml.tmpl
#       (server.threads 2; limits, bulkhead, health checks, breaker on, not binding); bare = the
#       smallest Pingora proxy (gateway/examples/bare_proxy.rs, 2 threads, defaults; --bare-args
#       are passed to it, e.g. "--no-work-stealing").
#   Modes: log = NGINX access_log buffer=64k, gateway RUST_LOG=info (one access line per request);
#       nolog = access_log off, RUST_LOG=info,access=off. The bare proxy never logs.
#
# What it does (docs/benchmarks.md has the reasoning and the results):
#   1. builds what the targets need in release (`cargo build --release -p gateway`, `cargo build
#      --release -p gateway --example bare_proxy`, `cargo build --release -p backend` for --route
#      real) unless --no-build; a binary given with --gateway-bin, --bare-bin or --backend-bin is
#      used as it is; installs wrk, nginx-light, redis-server with apt-get when missing (as root);
#   2. starts the upstream, then per mode every target on a free loopback port, checks each
#      answers 200 with exactly the upstream's body (and, nginx and gateway, an X-Request-Id);
#   3. runs `wrk -t2 -c64 -d15s --latency` against the targets in turn, round after round, the
#      order rotated by one each round (nginx bare gateway, bare gateway nginx, gateway nginx
#      bare, ...), each run after a warm-up and a 1 s pause;
#      with --perf DIR, one extra unmeasured run per target under `perf record -e cpu-clock -g`,
#      the top symbols in DIR/<route>-<mode>-<target>.txt;
#      with --callgrind DIR, bare and gateway are each run once more under valgrind's callgrind
#      (wrk -t1 -c8 for 15 s after a warm-up, instrumentation switched on only for that load): the
#      instructions executed per request, which unlike throughput do not drift with the machine's
#      load, go into the report, and the functions by own instructions per request into
#      DIR/<route>-<mode>-<target>.callgrind.txt (needs valgrind; apt-get install valgrind);
#   4. reads Requests/sec and the latency percentiles, each target's and the upstream's CPU time
#      per run from /proc (CPU µs per request), prints a table of medians over the rounds with
#      the ratios (gateway/bare, gateway/nginx, bare/nginx; real route: each proxy against
#      direct), writes the JSON report (default $CARGO_TARGET_DIR/bench/gateway-vs-nginx.json,
#      gateway-vs-nginx-real.json for --route real) and the same figures as Markdown next to it.
# Every process it starts is stopped on exit (trap), and every wait is bounded.
set -euo pipefail

ROUTE=static
TARGETS=""
DURATION=15s
CONNECTIONS=64
THREADS=2
WARMUP=3s
ROUNDS=2
MODES=""
URL_PATH=""
BARE_ARGS=""
BUILD=1
KEEP=0
OUT=""
PERF_DIR=""
CALLGRIND_DIR=""
GATEWAY_BIN=""
BARE_BIN=""
BACKEND_BIN=""
COMMAND_LINE=scripts/bench-gateway-vs-nginx.sh   # as run, for the report (words with spaces quoted)
for a in "$@"; do case "$a" in *" "*) COMMAND_LINE="$COMMAND_LINE \"$a\"" ;; *) COMMAND_LINE="$COMMAND_LINE $a" ;; esac; done

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --route) ROUTE=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --path) URL_PATH=$2; shift 2 ;;
    --bare-args) BARE_ARGS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --gateway-bin) GATEWAY_BIN=$2; shift 2 ;;
    --bare-bin) BARE_BIN=$2; shift 2 ;;
    --backend-bin) BACKEND_BIN=$2; shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    --callgrind) CALLGRIND_DIR=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$ROUTE" in
  static)
    TARGETS=${TARGETS:-"nginx bare gateway"}
    MODES=${MODES:-"log nolog"}
    URL_PATH=${URL_PATH:-/api/events}
    allowed="nginx bare gateway" ;;
  real)
    TARGETS=${TARGETS:-"direct nginx gateway"}
    MODES=${MODES:-nolog}
    URL_PATH=${URL_PATH:-/api/events/EVT-001}
    allowed="direct nginx bare gateway" ;;
  *) echo "--route: unknown route '$ROUTE' (static, real)" >&2; exit 2 ;;
esac
for t in $TARGETS; do
  case " $allowed " in *" $t "*) ;; *) echo "--targets: '$t' is not a target of --route $ROUTE ($allowed)" >&2; exit 2 ;; esac
done
[ -n "${TARGETS// /}" ] || { echo "--targets is empty" >&2; exit 2; }
for m in $MODES; do
  case "$m" in log|nolog) ;; *) echo "--modes: unknown mode '$m' (log, nolog)" >&2; exit 2 ;; esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds must be a positive integer" >&2; exit 2 ;; esac
case "$URL_PATH" in /api/*) ;; *) [ "$ROUTE" = static ] || { echo "--path must start with /api/ for --route real" >&2; exit 2; } ;; esac
has_target() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$ROUTE" = real ]; then
  OUT=${OUT:-$TARGET_DIR/bench/gateway-vs-nginx-real.json}
else
  OUT=${OUT:-$TARGET_DIR/bench/gateway-vs-nginx.json}
fi
# The reservations process logs one line per request at info; warn keeps its cost out of the
# comparison (the same for every target either way).
BACKEND_RUST_LOG=${BACKEND_RUST_LOG:-warn}

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds in a wrk duration (15s, 2m, 1h, or plain seconds).
secs() {
  case "$1" in
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *h) echo $(( ${1%h} * 3600 )) ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------- tools
need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if has_target nginx || [ "$ROUTE" = static ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
fi
if [ "$ROUTE" = real ]; then
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
fi
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${need_apt[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends "${need_apt[@]}" >&2 \
      || die "apt-get install ${need_apt[*]} failed"
  else
    die "missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]})"
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -n "$PERF_DIR" ]; then
  command -v perf >/dev/null 2>&1 || die "--perf needs perf (Debian: apt-get install linux-perf)"
  mkdir -p "$PERF_DIR"
  PERF_DIR=$(cd "$PERF_DIR" && pwd)
fi
if [ -n "$CALLGRIND_DIR" ]; then
  command -v callgrind_control >/dev/null 2>&1 || die "--callgrind needs valgrind (Debian: apt-get install valgrind)"
  mkdir -p "$CALLGRIND_DIR"
  CALLGRIND_DIR=$(cd "$CALLGRIND_DIR" && pwd)
fi
for t in curl python3; do
  command -v "$t" >/dev/null 2>&1 || die "missing $t"
done

if [ "$BUILD" = 1 ]; then
  # Separate commands: an example build unifies the dev-dependencies' features into the
  # gateway crate, and the gateway binary must be the one `cargo build -p gateway` gives.
  # A binary given with --gateway-bin, --bare-bin or --backend-bin is used as it is, not built.
  if has_target gateway && [ -z "$GATEWAY_BIN" ]; then
    log "cargo build --release -p gateway (target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR timeout 3600 cargo build --release -p gateway) \
      || die "release build failed"
  fi
  if has_target bare && [ -z "$BARE_BIN" ]; then
    log "cargo build --release -p gateway --example bare_proxy"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR timeout 3600 cargo build --release -p gateway --example bare_proxy) \
      || die "release build of the bare proxy failed"
  fi
  if [ "$ROUTE" = real ] && [ -z "$BACKEND_BIN" ]; then
    log "cargo build --release -p backend"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR timeout 3600 cargo build --release -p backend) \
      || die "release build of the backend failed"
  fi
fi
GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
BARE_BIN=${BARE_BIN:-$TARGET_DIR/release/examples/bare_proxy}
BACKEND_BIN=${BACKEND_BIN:-$TARGET_DIR/release/backend}
if has_target gateway; then
  [ -x "$GATEWAY_BIN" ] || die "no release binary at $GATEWAY_BIN (run without --no-build)"
fi
if has_target bare; then
  [ -x "$BARE_BIN" ] || die "no bare proxy at $BARE_BIN (cargo build --release -p gateway --example bare_proxy, run without --no-build, or leave bare out of --targets)"
fi
if [ "$ROUTE" = real ]; then
  [ -x "$BACKEND_BIN" ] || die "no release backend at $BACKEND_BIN (cargo build --release -p backend, or run without --no-build)"
fi

# ---------------------------------------------------------------- processes
RUN=$(mktemp -d "${TMPDIR:-/tmp}/bench-gw-vs-nginx.XXXXXX")
STARTED=()   # pids of every process this script started (nginx masters, proxies, redis, backend)

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid i
  # Reverse start order: proxies before their upstream.
  for (( i = ${#STARTED[@]} - 1; i >= 0; i-- )); do
    pid=${STARTED[i]}
    [ -n "$pid" ] && stop_pid "$pid"
  done
  if [ "$KEEP" = 1 ]; then
    log "kept run directory $RUN"
  else
    rm -rf "$RUN"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback TCP port below the ephemeral range (random probe, bounded), never one this
# run already handed out (USED_PORTS).
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}
alloc_port() { # VAR: sets VAR to a free port and remembers it
  local p
  p=$(free_port)
  USED_PORTS="$USED_PORTS$p "
  printf -v "$1" '%s' "$p"
}

# Waits (bounded) until URL answers HTTP 200.
wait_http() {
  local url=$1 what=$2 pid=$3 tries=${4:-100}
  for _ in $(seq 1 "$tries"); do
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (logs in $RUN, --keep keeps them)"
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  die "$what did not answer 200 at $url within $(( tries / 10 )) s"
}

render() { # template output, then KEY=VALUE pairs for @KEY@
  local tmpl=$1 out=$2
  shift 2
  cp "$tmpl" "$out"
  local kv
  for kv in "$@"; do
    python3 - "$out" "${kv%%=*}" "${kv#*=}" <<'PY'
import sys
path, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path) as f:
    text = f.read()
with open(path, "w") as f:
    f.write(text.replace("@" + key + "@", value))
PY
  done
}

# Replaces OLD by NEW in FILE, exactly once (fails when the template changed shape).
replace_once() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    raise SystemExit(f"{path}: expected exactly one {old!r}, found {text.count(old)}")
open(path, "w").write(text.replace(old, new))
PY
}

# CPU seconds (user+sys) used so far by processes and their direct children (nginx workers).
cpu_secs() {
  local total=0 root pid ticks
  for root in "$@"; do
    for pid in "$root" $(ps -o pid= --ppid "$root" 2>/dev/null); do
      ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
      total=$(( total + ticks ))
    done
  done
  python3 -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$total"
}

# ---------------------------------------------------------------- the upstream
UPSTREAM_PIDS=()
if [ "$ROUTE" = static ]; then
  alloc_port UPSTREAM_PORT
  render "$ROOT/bench/upstream.nginx.conf.tmpl" "$RUN/upstream.conf" "RUN=$RUN" "UPSTREAM_PORT=$UPSTREAM_PORT"
  "$NGINX" -t -q -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" || die "upstream nginx config invalid"
  "$NGINX" -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" &
  UPSTREAM_PID=$!
  STARTED+=("$UPSTREAM_PID")
  UPSTREAM_PIDS=("$UPSTREAM_PID")
  wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "upstream nginx" "$UPSTREAM_PID"
  log "upstream nginx (1 worker) on 127.0.0.1:$UPSTREAM_PORT"
else
  alloc_port REDIS_PORT
  alloc_port UPSTREAM_PORT
  mkdir -p "$RUN/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" --save "" --appendonly no \
    --daemonize no >"$RUN/redis.log" 2>&1 &
  REDIS_PID=$!
  STARTED+=("$REDIS_PID")
  ok=0
  for _ in $(seq 1 100); do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited: $(tail -3 "$RUN/redis.log")"
    if [ "$(timeout 2 redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ]; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || die "redis-server did not answer PONG on 127.0.0.1:$REDIS_PORT within 10 s"
  # Payments and notifications are not running: a GET of an event needs neither.
  LISTEN=127.0.0.1:$UPSTREAM_PORT REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ REPLICA_ID=bench-reservations \
    PAYMENTS_URL=http://127.0.0.1:9 NOTIFICATIONS_URL=http://127.0.0.1:9 RUST_LOG=$BACKEND_RUST_LOG \
    "$BACKEND_BIN" reservations >"$RUN/reservations.log" 2>&1 &
  UPSTREAM_PID=$!
  STARTED+=("$UPSTREAM_PID")
  UPSTREAM_PIDS=("$UPSTREAM_PID" "$REDIS_PID")
  wait_http "http://127.0.0.1:$UPSTREAM_PORT/health" "reservations" "$UPSTREAM_PID" 300
  # The demo events are seeded at start; wait (bounded) until the benchmarked one is there.
  wait_http "http://127.0.0.1:$UPSTREAM_PORT$URL_PATH" "reservations ($URL_PATH)" "$UPSTREAM_PID" 300
  log "reservations (RUST_LOG=$BACKEND_RUST_LOG) on 127.0.0.1:$UPSTREAM_PORT, redis-server on 127.0.0.1:$REDIS_PORT"
fi
EXPECTED_BODY=$(curl -s --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT$URL_PATH")
[ "$(curl -s --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT$URL_PATH")" = "$EXPECTED_BODY" ] \
  || die "the upstream's answer to $URL_PATH changes between requests: cannot check the proxies relay it"
BODY_BYTES=$(curl -s -o /dev/null -w '%{size_download}' --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT$URL_PATH")
log "upstream answers $URL_PATH with $BODY_BYTES bytes"

# ---------------------------------------------------------------- the targets
declare -A PORT PID
ADMIN_PORT=""
start_targets() { # mode
  local mode=$1 access gateway_rust_log t
  if [ "$mode" = log ]; then
    access="access_log $RUN/nginx.access.log bench buffer=64k;"
    gateway_rust_log=info
  else
    access="access_log off;"
    gateway_rust_log=info,access=off
  fi
  for t in $TARGETS; do
    case "$t" in
      direct)
        PORT[$t]=$UPSTREAM_PORT
        PID[$t]="" ;;
      nginx)
        alloc_port "PORT[$t]"
        render "$ROOT/bench/nginx.conf.tmpl" "$RUN/nginx-$mode.conf" "RUN=$RUN" \
          "UPSTREAM_PORT=$UPSTREAM_PORT" "PROXY_PORT=${PORT[$t]}" "ACCESS_LOG=$access"
        [ "$ROUTE" = real ] && replace_once "$RUN/nginx-$mode.conf" "location / {" "location /api/ {"
        "$NGINX" -t -q -e "$RUN/nginx.error.log" -c "$RUN/nginx-$mode.conf" || die "proxy nginx config invalid"
        "$NGINX" -e "$RUN/nginx.error.log" -c "$RUN/nginx-$mode.conf" &
        PID[$t]=$!
        STARTED+=("${PID[$t]}") ;;
      bare)
        alloc_port "PORT[$t]"
        launch "$mode" "$t" ;;
      gateway)
        alloc_port "PORT[$t]"
        alloc_port ADMIN_PORT
        render "$ROOT/bench/gateway.yaml.tmpl" "$RUN/gateway-$mode.yaml" \
          "UPSTREAM_PORT=$UPSTREAM_PORT" "PROXY_PORT=${PORT[$t]}" "ADMIN_PORT=$ADMIN_PORT"
        [ "$ROUTE" = real ] && replace_once "$RUN/gateway-$mode.yaml" "path_prefix: /" "path_prefix: /api/"
        "$GATEWAY_BIN" -t -c "$RUN/gateway-$mode.yaml" >/dev/null || die "gateway config invalid"
        launch "$mode" "$t" ;;
    esac
  done

  # Each must relay the upstream's answer unchanged; nginx and the gateway add X-Request-Id.
  local hdrs body
  for t in $TARGETS; do
    [ -n "${PID[$t]}" ] && wait_http "http://127.0.0.1:${PORT[$t]}$URL_PATH" "$t" "${PID[$t]}"
    hdrs=$(curl -s -D - -o "$RUN/check-$t.body" --max-time 2 "http://127.0.0.1:${PORT[$t]}$URL_PATH")
    body=$(cat "$RUN/check-$t.body")
    [ "$body" = "$EXPECTED_BODY" ] || die "$t did not relay the upstream body: ${body:0:300}"
    case "$t" in
      nginx|gateway) printf '%s' "$hdrs" | grep -qi '^x-request-id:' || die "$t sent no X-Request-Id" ;;
    esac
    log "mode $mode: $t on :${PORT[$t]}${PID[$t]:+ (pid ${PID[$t]})}"
  done
}

# Starts bare or gateway (port, config already chosen) in the background, its command line
# prefixed by the words after TARGET (e.g. valgrind's); sets PID[TARGET].
launch() { # mode target [prefix...]
  local mode=$1 t=$2 gateway_rust_log=info
  shift 2
  [ "$mode" = log ] || gateway_rust_log=info,access=off
  case "$t" in
    bare)
      # shellcheck disable=SC2086 # --bare-args is a word list on purpose
      "$@" "$BARE_BIN" --listen "127.0.0.1:${PORT[$t]}" --upstream "127.0.0.1:$UPSTREAM_PORT" \
        --threads 2 $BARE_ARGS >>"$RUN/bare-$mode.log" 2>&1 & ;;
    gateway)
      RUST_LOG=$gateway_rust_log "$@" "$GATEWAY_BIN" -c "$RUN/gateway-$mode.yaml" >>"$RUN/gateway-$mode.log" 2>&1 & ;;
  esac
  PID[$t]=$!
  STARTED+=("${PID[$t]}")
}

stop_targets() {
  local t
  for t in $TARGETS; do
    [ -n "${PID[$t]:-}" ] && stop_pid "${PID[$t]}"
    PID[$t]=""
  done
}

WRK_BOUND=$(( $(secs "$DURATION") + 30 ))
WARM_BOUND=$(( $(secs "$WARMUP") + 30 ))

run_one() { # mode target round
  local mode=$1 t=$2 round=$3 base c0 c1 u0 u1 pcpu
  base="$RUN/results/$mode-$t-$round"
  local url="http://127.0.0.1:${PORT[$t]}$URL_PATH"
  timeout "$WARM_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >"$base.warmup" 2>&1 \
    || die "wrk warm-up against $t failed: $(tail -3 "$base.warmup")"
  sleep 1
  cut -d' ' -f1 /proc/loadavg >"$base.load"
  c0=0; [ -n "${PID[$t]}" ] && c0=$(cpu_secs "${PID[$t]}")
  u0=$(cpu_secs "${UPSTREAM_PIDS[@]}")
  timeout "$WRK_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$base.wrk" 2>&1 \
    || die "wrk against $t failed: $(tail -3 "$base.wrk")"
  c1=0; [ -n "${PID[$t]}" ] && c1=$(cpu_secs "${PID[$t]}")
  u1=$(cpu_secs "${UPSTREAM_PIDS[@]}")
  pcpu=null
  [ -n "${PID[$t]}" ] && pcpu=$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$c0" "$c1")
  printf '%s %s\n' "$pcpu" "$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$u0" "$u1")" >"$base.cpu"
  if [ -n "${PID[$t]}" ]; then kill -0 "${PID[$t]}" 2>/dev/null || die "$t died during the run (logs in $RUN)"; fi
  kill -0 "$UPSTREAM_PID" 2>/dev/null || die "the upstream died during the run (logs in $RUN)"
  log "$mode $t round $round: $(grep -E 'Requests/sec' "$base.wrk" | tr -s ' ') p99 $(awk '$1=="99%"{print $2}' "$base.wrk"), target cpu $(cut -d' ' -f1 "$base.cpu") s, upstream cpu $(cut -d' ' -f2 "$base.cpu") s"
}

# One unmeasured run of TARGET under `perf record` (software cpu-clock event: works in VMs without
# hardware counters); the top self-time symbols go to $PERF_DIR/<route>-<mode>-<target>.txt.
# For direct, the reservations process is recorded.
profile_one() { # mode target
  local mode=$1 t=$2 pid pids p data txt
  pid=${PID[$t]:-$UPSTREAM_PID}
  pids=$pid
  for p in $(ps -o pid= --ppid "$pid" 2>/dev/null); do pids="$pids,$p"; done
  data="$RUN/$mode-$t.perf.data"
  txt="$PERF_DIR/$ROUTE-$mode-$t.txt"
  timeout "$WRK_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$t]}$URL_PATH" >"$RUN/results/$mode-$t-perf.wrk" 2>&1 &
  local wrk_pid=$!
  sleep 1
  timeout "$WRK_BOUND" perf record -q -e cpu-clock -F 999 -g -p "$pids" -o "$data" -- sleep $(( $(secs "$DURATION") > 3 ? $(secs "$DURATION") - 2 : 1 )) >/dev/null 2>&1 \
    || log "perf record failed for $t"
  wait "$wrk_pid" || true
  {
    echo "# $t ($ROUTE route, mode $mode): perf record -e cpu-clock -g during wrk -t$THREADS -c$CONNECTIONS -d$DURATION (unmeasured run)"
    grep -E 'Requests/sec|99%' "$RUN/results/$mode-$t-perf.wrk" || true
    echo "## by shared object"
    timeout 300 perf report -i "$data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 10' || true
    echo "## top symbols (self time)"
    timeout 300 perf report -i "$data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 60' || true
  } >"$txt"
  rm -f "$data"
  log "perf profile of $t ($mode) in $txt"
}

# Instructions per request of bare or gateway: the target is started again under callgrind with
# instrumentation off, warmed up, then counted over one wrk run at low concurrency (valgrind runs
# the program ~50x slower and one thread at a time: only the count is meaningful, not the rate).
# The count goes to results/<mode>-<target>.ir, the functions by own instructions per request
# to $CALLGRIND_DIR/<route>-<mode>-<target>.callgrind.txt.
callgrind_one() { # mode target
  local mode=$1 t=$2 out url requests
  out="$RUN/$mode-$t.callgrind"
  url="http://127.0.0.1:${PORT[$t]}$URL_PATH"
  stop_pid "${PID[$t]}"
  launch "$mode" "$t" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out"
  wait_http "$url" "$t under callgrind" "${PID[$t]}" 600
  timeout 60 wrk -t1 -c8 -d3s "$url" >/dev/null 2>&1 || die "wrk warm-up against $t under callgrind failed"
  timeout 30 callgrind_control -i on "${PID[$t]}" >/dev/null || die "callgrind_control -i on failed for $t"
  requests=$(timeout 60 wrk -t1 -c8 -d15s "$url" 2>&1 | awk '/requests in/{print $1}')
  timeout 60 callgrind_control -d "${PID[$t]}" >/dev/null || die "callgrind_control -d failed for $t"
  stop_pid "${PID[$t]}"
  python3 - "$out" "${requests:-0}" "$RUN/results/$mode-$t.ir" "$CALLGRIND_DIR/$ROUTE-$mode-$t.callgrind.txt" "$t" <<'PY'
import collections, glob, re, sys
out, requests, ir_file, txt, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if requests <= 0:
    sys.exit(f"callgrind run of {target}: wrk reported no requests")
names, own, cur, after_calls = {}, collections.Counter(), None, False
def name(s):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m:
        return s
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), m.group(1))
# The dump (callgrind_control -d) is the file with the highest part number.
for path in sorted(glob.glob(out + "*"), key=lambda p: int(p.rsplit(".", 1)[-1]) if p.rsplit(".", 1)[-1].isdigit() else 0)[-1:]:
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            cur = name(line[3:].strip())
        elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
            if line.startswith("cfn="):
                name(line[4:].strip())
        elif line.startswith("calls="):
            after_calls = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2 and not after_calls:
                own[cur] += int(parts[1])
            after_calls = False
total = sum(own.values())
per_request = total / requests
open(ir_file, "w").write(f"{per_request:.0f}\n")
with open(txt, "w") as f:
    f.write(f"# {target}: {per_request:,.0f} instructions per request ({total:,} over {requests:,} requests, callgrind, wrk -t1 -c8 -d15s)\n")
    f.write("# own instructions per request, share, function\n")
    for fn, n in own.most_common(80):
        f.write(f"{n / requests:9.0f} {100 * n / total:5.1f}%  {fn}\n")
PY
  log "callgrind: $t ($mode) $(cat "$RUN/results/$mode-$t.ir") instructions per request; functions in $CALLGRIND_DIR/$ROUTE-$mode-$t.callgrind.txt"
}

mkdir -p "$RUN/results"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "load average before: $LOAD_BEFORE; route $ROUTE ($URL_PATH), targets: $TARGETS; wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP, $ROUNDS round(s), modes: $MODES"
for mode in $MODES; do
  start_targets "$mode"
  # The order rotates by one each round (nginx bare gateway, bare gateway nginx, ...), so over
  # as many rounds as targets each target runs once in every position.
  read -r -a order <<<"$TARGETS"
  for round in $(seq 1 "$ROUNDS"); do
    for (( i = 0; i < ${#order[@]}; i++ )); do
      run_one "$mode" "${order[(i + round - 1) % ${#order[@]}]}" "$round"
    done
  done
  if [ -n "$PERF_DIR" ]; then
    for t in $TARGETS; do
      profile_one "$mode" "$t"
    done
  fi
  if [ -n "$CALLGRIND_DIR" ]; then
    for t in $TARGETS; do
      case "$t" in bare|gateway) callgrind_one "$mode" "$t" ;; esac
    done
  fi
  # Limits must not have bound: count the gateway's own rejections from its metrics.
  if has_target gateway; then
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$RUN/results/$mode-gateway.metrics" || true
  fi
  stop_targets
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$(dirname "$OUT")"
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then GIT_REV="$GIT_REV (modified tree)"; fi
BENCH_ROUTE=$ROUTE BENCH_TARGETS=$TARGETS BENCH_MODES=$MODES BENCH_ROUNDS=$ROUNDS BENCH_PATH=$URL_PATH \
BENCH_THREADS=$THREADS BENCH_CONNECTIONS=$CONNECTIONS BENCH_DURATION=$DURATION BENCH_WARMUP=$WARMUP \
BENCH_STARTED_AT=$STARTED_AT BENCH_LOAD_BEFORE=$LOAD_BEFORE BENCH_LOAD_AFTER=$LOAD_AFTER \
BENCH_COMMAND=$COMMAND_LINE BENCH_GIT_REV=$GIT_REV BENCH_BARE_ARGS=$BARE_ARGS \
BENCH_BACKEND_RUST_LOG=$BACKEND_RUST_LOG BENCH_BODY_BYTES=$BODY_BYTES \
python3 - "$RUN/results" "$OUT" <<'PY'
import json, os, re, statistics, sys

results, out = sys.argv[1], sys.argv[2]
env = os.environ
route = env["BENCH_ROUTE"]
targets = env["BENCH_TARGETS"].split()
modes = env["BENCH_MODES"].split()
rounds = int(env["BENCH_ROUNDS"])


def ms(v):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", v)
    if not m:
        raise SystemExit(f"cannot read latency {v!r}")
    n, u = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def parse(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not rps:
        raise SystemExit(f"no Requests/sec in {path}:\n{text}")
    r = {"requests_per_sec": float(rps.group(1))}
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        r[f"p{p}_ms"] = ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([0-9.]+\w+)", text)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    if m:
        r["socket_errors_by_kind"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rnd(v, n):
    return None if v is None else round(v, n)


def ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


PROXY_NAMES = {"direct": "direct", "nginx": "nginx", "bare": "bare Pingora", "gateway": "gateway"}
if route == "static":
    pairs = [("gateway", "bare"), ("gateway", "nginx"), ("bare", "nginx")]
else:
    pairs = [("gateway", "nginx"), ("bare", "nginx"), ("gateway", "bare")]
pairs = [(a, b) for a, b in pairs if a in targets and b in targets]

report = {
    "started_at": env["BENCH_STARTED_AT"],
    "command": env["BENCH_COMMAND"],
    "git": env["BENCH_GIT_REV"],
    "route": route,
    "path": env["BENCH_PATH"],
    "upstream_body_bytes": int(env["BENCH_BODY_BYTES"]),
    "targets": targets,
    "bare_args": env["BENCH_BARE_ARGS"],
    "backend_rust_log": env["BENCH_BACKEND_RUST_LOG"] if route == "real" else None,
    "aggregate": f"median of {rounds} alternating round(s)",
    "machine": {"cpus": os.cpu_count(), "load_before": env["BENCH_LOAD_BEFORE"],
                "load_after": env["BENCH_LOAD_AFTER"], "kernel": os.uname().release},
    "wrk": {"threads": int(env["BENCH_THREADS"]), "connections": int(env["BENCH_CONNECTIONS"]),
            "duration": env["BENCH_DURATION"], "warmup": env["BENCH_WARMUP"], "rounds": rounds},
    "modes": {},
}
for mode in modes:
    per = {}
    for t in targets:
        runs = []
        for r in range(1, rounds + 1):
            base = os.path.join(results, f"{mode}-{t}-{r}")
            x = parse(base + ".wrk")
            cpu, up_cpu = open(base + ".cpu").read().split()
            x["proxy_cpu_s"] = None if cpu == "null" else float(cpu)
            x["upstream_cpu_s"] = float(up_cpu)
            n = x["requests"]
            x["proxy_cpu_us_per_request"] = (round(x["proxy_cpu_s"] * 1e6 / n, 1)
                                             if n and x["proxy_cpu_s"] is not None else None)
            x["upstream_cpu_us_per_request"] = round(x["upstream_cpu_s"] * 1e6 / n, 1) if n else None
            x["load1"] = float(open(base + ".load").read().strip())
            x["round"] = r
            runs.append(x)
        per[t] = {
            "runs": runs,
            "requests_per_sec": rnd(med(x["requests_per_sec"] for x in runs), 1),
            "p50_ms": rnd(med(x["p50_ms"] for x in runs), 3),
            "p99_ms": rnd(med(x["p99_ms"] for x in runs), 3),
            "proxy_cpu_us_per_request": rnd(med(x["proxy_cpu_us_per_request"] for x in runs), 1),
            "upstream_cpu_us_per_request": rnd(med(x["upstream_cpu_us_per_request"] for x in runs), 1),
            "non_2xx": sum(x["non_2xx"] for x in runs),
            "socket_errors": sum(x["socket_errors"] for x in runs),
        }
        ir_path = os.path.join(results, f"{mode}-{t}.ir")
        if os.path.exists(ir_path):
            per[t]["instructions_per_request"] = int(open(ir_path).read().strip())
    if "gateway" in targets:
        rejected = {}
        mpath = os.path.join(results, f"{mode}-gateway.metrics")
        if os.path.exists(mpath):
            for line in open(mpath):
                name = line.split("{")[0].split(" ")[0]
                if name in ("gateway_ratelimit_rejected_total", "gateway_limit_conn_rejected_total",
                            "gateway_bulkhead_rejected_total", "gateway_circuit_rejected_total"):
                    rejected[name] = rejected.get(name, 0) + float(line.rsplit(" ", 1)[1])
        per["gateway"]["limiter_rejections"] = rejected
    for a, b in pairs:
        pa, pb = per[a], per[b]
        per[f"ratio_{a}_over_{b}"] = {
            "throughput": ratio(pa["requests_per_sec"], pb["requests_per_sec"]),
            "p99": ratio(pa["p99_ms"], pb["p99_ms"]),
            "cpu_per_request": ratio(pa["proxy_cpu_us_per_request"], pb["proxy_cpu_us_per_request"]),
            "instructions_per_request": ratio(pa.get("instructions_per_request"),
                                              pb.get("instructions_per_request")),
        }
    if "direct" in targets:
        d = per["direct"]
        for t in targets:
            if t == "direct":
                continue
            p = per[t]
            per[f"{t}_vs_direct"] = {
                "throughput": ratio(p["requests_per_sec"], d["requests_per_sec"]),
                "p99": ratio(p["p99_ms"], d["p99_ms"]),
                "p50_added_ms": rnd(p["p50_ms"] - d["p50_ms"], 3),
                "p99_added_ms": rnd(p["p99_ms"] - d["p99_ms"], 3),
                "proxy_cpu_us_per_request": p["proxy_cpu_us_per_request"],
            }
    report["modes"][mode] = per

with open(out, "w") as f:
    json.dump(report, f, indent=2)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


lines = []
w = report["wrk"]
lines.append(f"route {route} (GET {report['path']}, {report['upstream_body_bytes']} bytes), "
             f"wrk -t{w['threads']} -c{w['connections']} -d{w['duration']} --latency, "
             f"{rounds} round(s) alternating, medians; {os.cpu_count()} CPUs shared by wrk, proxies and upstream; "
             f"load before {report['machine']['load_before']}, after {report['machine']['load_after']}")
hdr = (f"{'mode':6} {'target':8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/req':>10} "
       f"{'upstr us':>8} {'non-2xx':>7} {'sock err':>8}   runs (req/s | p99 ms | load1)")
lines.append(hdr)
lines.append("-" * len(hdr))
warnings = []
for mode, per in report["modes"].items():
    for t in targets:
        p = per[t]
        runs = ", ".join(f"{x['requests_per_sec']:.0f} | {x['p99_ms']:.2f} | {x['load1']:.1f}" for x in p["runs"])
        lines.append(f"{mode:6} {t:8} {p['requests_per_sec']:>9.1f} {p['p50_ms']:>7.2f} {p['p99_ms']:>7.2f} "
                     f"{fmt(p['proxy_cpu_us_per_request'], '>10.1f')} {fmt(p['upstream_cpu_us_per_request'], '>8.1f')} "
                     f"{p['non_2xx']:>7} {p['socket_errors']:>8}   {runs}")
        if p["non_2xx"] or p["socket_errors"]:
            warnings.append(f"{mode} {t}: {p['non_2xx']} non-2xx responses, {p['socket_errors']} socket errors")
    for a, b in pairs:
        r = per[f"ratio_{a}_over_{b}"]
        lines.append(f"{mode:6} {a}/{b}: throughput {fmt(r['throughput'], '.3f')}, p99 {fmt(r['p99'], '.3f')}, "
                     f"cpu/request {fmt(r['cpu_per_request'], '.3f')}"
                     + (f", instructions/request {r['instructions_per_request']:.3f}"
                        if r["instructions_per_request"] is not None else ""))
    for t in targets:
        if "instructions_per_request" in per[t]:
            lines.append(f"{mode:6} {t}: {per[t]['instructions_per_request']:,} instructions per request (callgrind)")
    for t in targets:
        v = per.get(f"{t}_vs_direct")
        if v:
            lines.append(f"{mode:6} {t} vs direct: throughput {fmt(v['throughput'], '.3f')}, p99 {fmt(v['p99'], '.3f')} "
                         f"({v['p99_added_ms']:+.2f} ms), p50 {v['p50_added_ms']:+.2f} ms, "
                         f"proxy cpu {fmt(v['proxy_cpu_us_per_request'], '.1f')} us/request")
    rej = per.get("gateway", {}).get("limiter_rejections") or {}
    if any(rej.values()):
        warnings.append(f"{mode}: the gateway's limits bound: {rej}")
print()
print("\n".join(lines))
for wmsg in warnings:
    print(f"WARNING: {wmsg}")

# The same figures as Markdown, ready for docs/benchmarks.md.
md = [f"`{report['command']}` — {report['started_at']}, git {report['git']}, "
      f"load average {report['machine']['load_before']} before, {report['machine']['load_after']} after; "
      f"GET {report['path']} ({report['upstream_body_bytes']} bytes), wrk -t{w['threads']} -c{w['connections']} "
      f"-d{w['duration']}, medians of {rounds} alternating round(s).", ""]
for mode, per in report["modes"].items():
    md.append(f"| {mode} | req/s | p50 | p99 | CPU µs/req (target) | CPU µs/req (upstream) | runs (req/s) |")
    md.append("|---|---|---|---|---|---|---|")
    for t in targets:
        p = per[t]
        md.append(f"| {PROXY_NAMES[t]} | {p['requests_per_sec']:.0f} | {p['p50_ms']:.2f} ms | {p['p99_ms']:.2f} ms | "
                  f"{fmt(p['proxy_cpu_us_per_request'], '.1f')} | {fmt(p['upstream_cpu_us_per_request'], '.1f')} | "
                  + ", ".join(f"{x['requests_per_sec']:.0f}" for x in p["runs"]) + " |")
    md.append("")
    if pairs:
        md.append("| ratio | throughput | p99 | CPU per request | instructions per request |")
        md.append("|---|---|---|---|---|")
        for a, b in pairs:
            r = per[f"ratio_{a}_over_{b}"]
            md.append(f"| {a}/{b} | {fmt(r['throughput'], '.2f')} | {fmt(r['p99'], '.2f')} | {fmt(r['cpu_per_request'], '.2f')} "
                      f"| {fmt(r['instructions_per_request'], '.2f')} |")
        md.append("")
    vs = [(t, per[f"{t}_vs_direct"]) for t in targets if f"{t}_vs_direct" in per]
    if vs:
        md.append("| against direct | throughput | p99 | p99 added | p50 added | proxy CPU µs/req |")
        md.append("|---|---|---|---|---|---|")
        for t, v in vs:
            md.append(f"| {PROXY_NAMES[t]} | {fmt(v['throughput'], '.2f')} | {fmt(v['p99'], '.2f')} | "
                      f"{v['p99_added_ms']:+.2f} ms | {v['p50_added_ms']:+.2f} ms | {fmt(v['proxy_cpu_us_per_request'], '.1f')} |")
        md.append("")
md_path = os.path.splitext(out)[0] + ".md"
with open(md_path, "w") as f:
    f.write("\n".join(md))
print()
print(f"JSON: {out}")
print(f"Markdown: {md_path}")
PY
