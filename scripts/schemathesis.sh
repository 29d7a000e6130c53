#!/usr/bin/env bash
# Fuzzes the reservations service's public API against its own OpenAPI document
# (GET /openapi.json) with Schemathesis, on a private stack: redis-server, `backend payments`,
# `backend notifications` and `backend reservations`, each on a free loopback port.
#
#   scripts/schemathesis.sh [--no-build] [--release] [-- EXTRA SCHEMATHESIS ARGS]
#
# Checks: not_a_server_error (no 5xx: every dependency is up, so even a documented 503 is a
# failure here), status_code_conformance, content_type_conformance,
# response_schema_conformance, response_headers_conformance (X-Request-Id on every answer,
# Retry-After on 503), negative_data_rejection (schema-invalid input gets a 4xx),
# missing_required_header, unsupported_method and allow_header_conformance (JSON 405 with
# Allow), ensure_resource_availability and use_after_free. Not positive_data_acceptance: a
# schema-valid reservation may rightly be refused by the state of the world (402 over 10000,
# 422 for seats on a general-admission event, 422 for a reused Idempotency-Key). Phases:
# examples, coverage, fuzzing, stateful (POST -> GET/cancel/list through the document's links).
# After the run, GET /admin/audit must report the invariants of SPEC §5 intact, no service may
# have died or panicked, and each must still answer /health.
#
# Installs Schemathesis from PyPI into a virtualenv when missing (python3 with venv needed).
# Stops everything it started on exit. Exits non-zero on any failure.
#
# Environment (all optional):
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 100: about 40 s of
#                              fuzzing, under 2 minutes in all on 2 cores); e.g. 1000 for a
#                              long run
#   SCHEMATHESIS_PHASES        default examples,coverage,fuzzing,stateful
#   SCHEMATHESIS_SEED          fixed seed for a reproducible run (default: random, printed)
#   SCHEMATHESIS_VENV          virtualenv (default $CARGO_TARGET_DIR/schemathesis-venv)
#   SCHEMATHESIS_REPORT_DIR    JUnit report and logs (default $CARGO_TARGET_DIR/schemathesis)
#   SCHEMATHESIS_TIMEOUT       hard limit of the schemathesis run in seconds (default 900)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SCHEMATHESIS_PIN="schemathesis==4.32.5"
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
PHASES=${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful}
SEED=${SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}
VENV=${SCHEMATHESIS_VENV:-$TARGET_DIR/schemathesis-venv}
REPORT_DIR=${SCHEMATHESIS_REPORT_DIR:-$TARGET_DIR/schemathesis}
RUN_TIMEOUT=${SCHEMATHESIS_TIMEOUT:-900}
WAIT_SECS=60
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[schemathesis.sh] %s\n' "$*" >&2; }
die() { printf '[schemathesis.sh] ERROR: %s\n' "$*" >&2; exit 1; }

BUILD=1
PROFILE=debug
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --release) PROFILE=release ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"
command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"

# --- Schemathesis ------------------------------------------------------------------------------
ST="$VENV/bin/schemathesis"
want_version=${SCHEMATHESIS_PIN#*==}
if ! [ -x "$ST" ] || [ "$("$ST" --version 2>/dev/null | awk '{print $NF}')" != "$want_version" ]; then
  log "installing $SCHEMATHESIS_PIN into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SCHEMATHESIS_PIN" \
    || die "pip install $SCHEMATHESIS_PIN failed"
fi
log "$("$ST" --version)"

# --- build ---------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  flags=()
  [ "$PROFILE" = release ] && flags+=(--release)
  log "cargo build ${flags[*]} -p backend"
  (cd "$ROOT" && cargo build "${flags[@]}" -p backend) || die "cargo build failed"
fi
BIN="$TARGET_DIR/$PROFILE/backend"
[ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"

# --- the stack -----------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.XXXXXX")
PIDS=()
NAMES=()
KEEP_LOGS=0

cleanup() {
  local rc=$? i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    local n=0
    while kill -0 "${PIDS[i]}" 2>/dev/null && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    kill -KILL "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] || [ "$KEEP_LOGS" = 1 ]; then
    mkdir -p "$REPORT_DIR/logs"
    cp "$WORK"/*.log "$REPORT_DIR/logs/" 2>/dev/null || true
    log "service logs kept in $REPORT_DIR/logs"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free TCP port on 127.0.0.1, never one handed out before in this run, and below the kernel's
# ephemeral range: a port the kernel could hand out (bind to 0) may be taken as the source port
# of an outgoing connection (the services connect to Redis and to each other) before its service
# binds it, which made the reservations process fail with "Address already in use".
GIVEN=" "
free_port() {
  local p i
  for i in $(seq 1 100); do
    p=$(python3 -c '
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    p = random.randint(10000, max(10001, lo - 1))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()')
    [ -n "$p" ] || continue
    case "$GIVEN" in *" $p "*) continue ;; esac
    GIVEN="$GIVEN$p "
    echo "$p"
    return 0
  done
  die "no free port"
}

# start NAME COMMAND...: in the background, logging to $WORK/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
  NAMES+=("$name")
}

wait_http() {
  local name=$1 url=$2 deadline=$((SECONDS + WAIT_SECS))
  until curl -fs -o /dev/null --max-time 2 "$url"; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$WORK/$name.log" >&2 || true; die "$name not answering $url after ${WAIT_SECS}s"; }
    sleep 0.2
  done
}

REDIS_PORT=$(free_port)
PAY_PORT=$(free_port)
NOTIF_PORT=$(free_port)
RES_PORT=$(free_port)
mkdir -p "$WORK/redis"
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis"
deadline=$((SECONDS + WAIT_SECS))
until (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || die "redis-server did not start"
  sleep 0.1
done

export RUST_LOG=${RUST_LOG:-warn}
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
export PAYMENTS_URL="http://127.0.0.1:$PAY_PORT"
export NOTIFICATIONS_URL="http://127.0.0.1:$NOTIF_PORT"
LISTEN=127.0.0.1:$PAY_PORT start payments "$BIN" payments
LISTEN=127.0.0.1:$NOTIF_PORT start notifications "$BIN" notifications
LISTEN=127.0.0.1:$RES_PORT REPLICA_ID=schemathesis start reservations "$BIN" reservations
wait_http payments "$PAYMENTS_URL/health"
wait_http notifications "$NOTIFICATIONS_URL/health"
wait_http reservations "http://127.0.0.1:$RES_PORT/ready"
BASE="http://127.0.0.1:$RES_PORT"
log "stack up: reservations $BASE, payments :$PAY_PORT, notifications :$NOTIF_PORT, redis :$REDIS_PORT"

# --- the run -------------------------------------------------------------------------------------
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance
CHECKS+=,response_schema_conformance,response_headers_conformance,negative_data_rejection
CHECKS+=,missing_required_header,unsupported_method,allow_header_conformance
CHECKS+=,ensure_resource_availability,use_after_free
mkdir -p "$REPORT_DIR"
started=$SECONDS
log "schemathesis: max-examples $MAX_EXAMPLES, phases $PHASES, seed $SEED"
st_rc=0
# Some generated ids are swapped for the demo data's, so the saga and the links get exercised.
export SCHEMATHESIS_HOOKS="$ROOT/scripts/schemathesis_hooks.py" PYTHONDONTWRITEBYTECODE=1
# From the report directory: Schemathesis keeps its cache of past failures (replayed first on the
# next run) in ./.schemathesis.
(cd "$REPORT_DIR" && exec timeout "$RUN_TIMEOUT" "$ST" run "$BASE/openapi.json" \
  --url "$BASE" \
  --checks "$CHECKS" \
  --phases "$PHASES" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 20 \
  --report junit --report-junit-path "$REPORT_DIR/junit.xml" \
  "${EXTRA[@]}") || st_rc=$?
log "schemathesis finished in $((SECONDS - started))s with exit code $st_rc"

# --- afterwards: no data lost, nothing died -----------------------------------------------------
failed=0
[ "$st_rc" -eq 0 ] || failed=1
for i in "${!PIDS[@]}"; do
  if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
    log "FAIL: ${NAMES[i]} exited during the run (log kept)"
    failed=1
  fi
done
if grep -l 'panicked' "$WORK"/*.log >/dev/null 2>&1; then
  log "FAIL: a service panicked:"
  grep -h -m 5 'panicked' "$WORK"/*.log >&2 || true
  failed=1
fi
for url in "$BASE/health" "$PAYMENTS_URL/health" "$NOTIFICATIONS_URL/health"; do
  curl -fs -o /dev/null --max-time 5 "$url" || { log "FAIL: $url does not answer after the run"; failed=1; }
done
# Sagas the run started may still be settling: give the audit a few tries.
audit_ok=0
for _ in $(seq 1 20); do
  audit=$(curl -s --max-time 5 "$BASE/admin/audit" || true)
  if printf '%s' "$audit" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("ok") is True else 1)' 2>/dev/null; then
    audit_ok=1
    break
  fi
  sleep 0.5
done
if [ "$audit_ok" = 1 ]; then
  log "audit: ok (the invariants of SPEC §5 hold after the run)"
else
  log "FAIL: /admin/audit reports violations after the run: $audit"
  failed=1
fi

if [ "$failed" = 0 ]; then
  log "PASS (seed $SEED; JUnit report $REPORT_DIR/junit.xml)"
else
  KEEP_LOGS=1
  log "FAILED (rerun with SCHEMATHESIS_SEED=$SEED to reproduce)"
  exit 1
fi
