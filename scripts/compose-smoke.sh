#!/usr/bin/env bash
# Compose smoke test (what CI runs): base images → build → up → all healthy → checks through the
# gateway (health, events, live SIGHUP reload without failed requests) → the demo scenarios
# (`loadtest scenario all --compose`) → down -v. The stack is always taken down, and the logs of
# the services that failed are printed.
#
# Usage: scripts/compose-smoke.sh
# (The scaled stack, docker-compose.cluster.yml, has its own: scripts/compose-cluster-smoke.sh.)
# Environment (all optional):
#   SKIP_BASE_IMAGES=1  do not run scripts/build-base-images.sh (images come from a registry)
#   SKIP_BUILD=1        use the seat-gateway-stack:latest image as it is (no compose build)
#   SKIP_SCENARIOS=1    stop after the checks, without the loadtest scenarios
#   KEEP_STACK=1        leave the stack running at the end (for debugging)
#   HEALTH_WAIT_SECS    how long all services may take to become healthy (default 180)
#   GATEWAY_PORT        host port of the gateway (default 80; also read by docker-compose.yml)
#   LOADTEST_BIN        the loadtest binary to run (default: built on the host, see below)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# The scenarios' own `docker compose stop/start` calls find the project through this variable
# (a caller may set it, e.g. to add an override file: COMPOSE_FILE=a.yml:b.yml).
export COMPOSE_FILE=${COMPOSE_FILE:-$ROOT/docker-compose.yml}
HEALTH_WAIT_SECS=${HEALTH_WAIT_SECS:-180}
GATEWAY_PORT=${GATEWAY_PORT:-80}
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
ADMIN="http://127.0.0.1:${GATEWAY_ADMIN_PORT:-9901}"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

T0=$SECONDS
timings=()
step_started=$SECONDS
step() { step_started=$SECONDS; printf '\n==> [smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
done_step() { timings+=("$(printf '%-28s %4d s' "$1" $((SECONDS - step_started)))"); }
log() { printf '[smoke] %s\n' "$*" >&2; }
die() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "no Docker engine reachable"
command -v curl >/dev/null || die "curl not found"

# `docker compose` (v2 plugin) when present, else `docker-compose` (v1.29).
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { "${COMPOSE[@]}" "$@"; }
log "using: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# Health (or state, for a service without a health check) of one service's container.
service_state() {
  local cid
  cid=$(compose ps -q "$1" 2>/dev/null | head -n 1)
  [ -n "$cid" ] || { echo missing; return; }
  docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$cid" 2>/dev/null || echo missing
}

print_summary() {
  printf '\n[smoke] timings:\n' >&2
  local t
  for t in "${timings[@]}"; do printf '  %s\n' "$t" >&2; done
  printf '  %-28s %4d s\n' total $((SECONDS - T0)) >&2
}

STACK_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$STACK_UP" = 1 ]; then
    if [ "$rc" != 0 ]; then
      log "failure: state of the stack"
      compose ps >&2 || true
      local svc state shown=0
      for svc in $(compose config --services 2>/dev/null); do
        state=$(service_state "$svc")
        if [ "$state" != healthy ]; then
          log "---- $svc is $state: last log lines"
          compose logs --no-color --tail=80 "$svc" >&2 || true
          shown=1
        fi
      done
      if [ "$shown" = 0 ]; then
        log "---- all services healthy; last log lines of the gateway and reservations"
        compose logs --no-color --tail=40 gateway reservations-1 reservations-2 >&2 || true
      fi
    fi
    if [ "${KEEP_STACK:-0}" = 1 ]; then
      log "KEEP_STACK=1: the stack stays up (${COMPOSE[*]} down -v to remove it)"
    else
      step "down -v"
      timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >&2 || log "down -v failed"
      done_step "down -v"
    fi
  fi
  print_summary
  if [ "$rc" = 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. base images ------------------------------------------------------------------------------------
if [ "${SKIP_BASE_IMAGES:-0}" != 1 ]; then
  step "base images (scripts/build-base-images.sh)"
  scripts/build-base-images.sh
  done_step "base images"
fi

# --- 2. build the stack image -------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "${COMPOSE[*]} build"
  # The build prints tens of thousands of lines (C build scripts included): keep them in a file
  # and show what explains a failure, so that a CI log cut to its tail still has the cause.
  build_log="$TARGET_DIR/compose-build.log"
  mkdir -p "$(dirname "$build_log")"
  if ! timeout 3600 "${COMPOSE[@]}" build >"$build_log" 2>&1; then
    log "compose build failed; full output in $build_log. Error lines:"
    grep -nE '^(error|warning: build failed)|error:|No space left|Killed|signal: 9' "$build_log" | tail -40 >&2 || true
    log "last lines:"
    tail -40 "$build_log" >&2
    log "disk and memory:"
    df -h / /var/lib/docker 2>/dev/null >&2 || true
    free -m >&2 || true
    die "compose build failed"
  fi
  tail -3 "$build_log" >&2
  done_step "compose build"
else
  docker image inspect seat-gateway-stack:latest >/dev/null 2>&1 \
    || die "SKIP_BUILD=1 but there is no image seat-gateway-stack:latest"
fi

# --- 3. up and healthy ------------------------------------------------------------------------------------
step "${COMPOSE[*]} up -d"
STACK_UP=1
timeout 300 "${COMPOSE[@]}" up -d || die "compose up failed"
done_step "compose up -d"

step "waiting until every service is healthy (at most ${HEALTH_WAIT_SECS}s)"
deadline=$((SECONDS + HEALTH_WAIT_SECS))
services=$(compose config --services)
while true; do
  pending=()
  for svc in $services; do
    state=$(service_state "$svc")
    case "$state" in
      healthy) ;;
      exited|dead|missing) die "$svc is $state" ;;
      *) pending+=("$svc:$state") ;;
    esac
  done
  [ ${#pending[@]} -gt 0 ] || break
  [ "$SECONDS" -lt "$deadline" ] || die "not healthy after ${HEALTH_WAIT_SECS}s: ${pending[*]}"
  sleep 1
done
log "all healthy: $(echo "$services" | tr '\n' ' ')"
done_step "all services healthy"

# --- 4. checks through the gateway ------------------------------------------------------------------------
step "checks through the gateway at $GATEWAY"
body=$(curl -fsS --max-time 5 "$GATEWAY/health") || die "GET $GATEWAY/health failed"
case "$body" in *'"ok"'*) log "GET /health: $body" ;; *) die "GET /health answered $body" ;; esac

body=$(curl -fsS --max-time 5 "$GATEWAY/api/events") || die "GET $GATEWAY/api/events failed"
case "$body" in
  *'"EVT-001"'*) log "GET /api/events: $(printf '%s' "$body" | head -c 200)..." ;;
  *) die "GET /api/events does not list EVT-001: $(printf '%s' "$body" | head -c 300)" ;;
esac

curl -fsS --max-time 5 -o /dev/null "$ADMIN/status" || die "GET $ADMIN/status failed"
log "GET admin /status: 200"

uid=$(compose exec -T gateway id -u | tr -d '\r') || die "compose exec gateway id -u failed"
[ "$uid" != 0 ] || die "the gateway runs as root"
log "gateway runs as uid $uid and serves port 80"

# Live reload: SIGHUP while one keep-alive connection sends requests. Every request must answer
# 200 on that same connection (curl reports a new connect if the gateway had closed it), and the
# reload must be counted as ok. The requests go to the gateway's own /health so that they do not
# use up the rate-limit budget the scenarios start with; one proxied request follows the reload.
reloads_ok() {
  curl -fsS --max-time 5 "$ADMIN/metrics" \
    | awk '/^gateway_config_reloads_total\{/ && /result="ok"/ { sum += $NF } END { print sum + 0 }'
}
before=$(reloads_ok) || die "GET $ADMIN/metrics failed"
n=40
urls=()
for _ in $(seq 1 "$n"); do urls+=(-o /dev/null "$GATEWAY/health"); done
traffic_out=$(mktemp)
curl -sS --max-time 30 --rate 20/s -w '%{http_code} %{num_connects}\n' "${urls[@]}" \
  >"$traffic_out" 2>&1 &
traffic=$!
sleep 0.7
compose kill -s HUP gateway >/dev/null 2>&1 || die "compose kill -s HUP gateway failed"
wait "$traffic" || true
ok=$(grep -c '^200 ' "$traffic_out" || true)
reconnects=$(awk 'NR > 1 && $2 != "0"' "$traffic_out" | wc -l)
summary=$(sort "$traffic_out" | uniq -c | tr '\n' ' ')
rm -f "$traffic_out"
[ "$ok" = "$n" ] || die "only $ok of $n requests answered 200 around the SIGHUP reload ($summary)"
[ "$reconnects" = 0 ] || die "the keep-alive connection was dropped by the SIGHUP reload ($reconnects reconnects)"
after=$before
for _ in $(seq 1 50); do
  after=$(reloads_ok)
  [ "$after" -gt "$before" ] && break
  sleep 0.2
done
[ "$after" -gt "$before" ] || die "gateway_config_reloads_total{result=\"ok\"} did not increase after SIGHUP ($before → $after)"
curl -fsS --max-time 5 -o /dev/null "$GATEWAY/api/events" || die "GET /api/events failed after the reload"
[ "$(service_state gateway)" = healthy ] || die "gateway not healthy after SIGHUP"
log "SIGHUP reload: ok ($before → $after reloads); $n/$n requests on one keep-alive connection answered 200; proxying works after it"
done_step "gateway checks + reload"

# --- 5. the demo scenarios ---------------------------------------------------------------------------------
if [ "${SKIP_SCENARIOS:-0}" != 1 ]; then
  step "loadtest scenario all --compose"
  # The scenarios run on the host: they reach the published ports and stop/start services with
  # compose (COMPOSE_FILE is exported for them).
  loadtest=${LOADTEST_BIN:-}
  if [ -z "$loadtest" ]; then
    # The most recently built of the release and debug binaries.
    for candidate in "$TARGET_DIR/release/loadtest" "$TARGET_DIR/debug/loadtest"; do
      [ -x "$candidate" ] || continue
      if [ -z "$loadtest" ] || [ "$candidate" -nt "$loadtest" ]; then loadtest=$candidate; fi
    done
  fi
  if [ -z "$loadtest" ]; then
    log "no host-built loadtest binary: cargo build --release -p loadtest"
    cargo build --release -p loadtest
    loadtest="$TARGET_DIR/release/loadtest"
  fi
  mkdir -p "$TARGET_DIR"
  log "running $loadtest"
  timeout 1200 "$loadtest" scenario all --compose --gateway "$GATEWAY" \
    --json "$TARGET_DIR/loadtest-compose.json" --out-dir "$TARGET_DIR/loadtest-compose" \
    || die "loadtest scenarios failed"
  done_step "loadtest scenarios"
fi
