#!/usr/bin/env bash
# Smoke test of the scaled stack (SPEC §10.3), docker-compose.cluster.yml: base images → build →
# up → every service healthy and the Redis Cluster created → checks of the three gateways and the
# cluster → `loadtest scenario cluster-flood --cluster` and `loadtest scenario shard-failover
# --cluster` → down -v. The stack is always taken down; the logs of failed services are printed,
# and the time of each step.
#
# Usage: scripts/compose-cluster-smoke.sh
# Environment (all optional), as scripts/compose-smoke.sh:
#   SKIP_BASE_IMAGES=1  do not run scripts/build-base-images.sh (images come from a registry)
#   SKIP_BUILD=1        use the seat-gateway-stack:latest image as it is (no compose build)
#   SKIP_SCENARIOS=1    stop after the checks, without the two scenarios
#   KEEP_STACK=1        leave the stack running at the end (for debugging)
#   HEALTH_WAIT_SECS    how long all services may take to become healthy (default 240)
#   LOADTEST_BIN        the loadtest binary to run (default: the newest host build, else built)
# Host ports: GATEWAY_1_PORT (80), GATEWAY_2_PORT (8081), GATEWAY_3_PORT (8082),
# GATEWAY_1_ADMIN_PORT (9901), GATEWAY_2_ADMIN_PORT (9902), GATEWAY_3_ADMIN_PORT (9903).
# The main stack (docker-compose.yml) must not be running: both publish the same ports.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CLUSTER_FILE="$ROOT/docker-compose.cluster.yml"
# The scenarios' `docker compose stop/start/exec` calls reach the same project through it.
export COMPOSE_FILE=$CLUSTER_FILE
HEALTH_WAIT_SECS=${HEALTH_WAIT_SECS:-240}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAYS=("http://127.0.0.1:${GATEWAY_1_PORT:-80}" "http://127.0.0.1:${GATEWAY_2_PORT:-8081}"
  "http://127.0.0.1:${GATEWAY_3_PORT:-8082}")
ADMINS=("http://127.0.0.1:${GATEWAY_1_ADMIN_PORT:-9901}" "http://127.0.0.1:${GATEWAY_2_ADMIN_PORT:-9902}"
  "http://127.0.0.1:${GATEWAY_3_ADMIN_PORT:-9903}")
INIT_SERVICE=redis-cluster-init

T0=$SECONDS
timings=()
step_started=$SECONDS
step_name=""
step() { step_started=$SECONDS; step_name=$*; printf '\n==> [cluster-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
done_step() { timings+=("$(printf '%-30s %4d s' "$1" $((SECONDS - step_started)))"); step_name=""; }
log() { printf '[cluster-smoke] %s\n' "$*" >&2; }
die() { printf '[cluster-smoke] FAILED: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "no Docker engine reachable"
command -v curl >/dev/null || die "curl not found"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose -f "$CLUSTER_FILE")
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose -f "$CLUSTER_FILE")
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { "${COMPOSE[@]}" "$@"; }
log "using: ${COMPOSE[*]}"

# Health of a service's container; for one without a health check its state, and for the
# one-shot init "done" once it exited 0.
service_state() {
  local cid
  cid=$(compose ps -q "$1" 2>/dev/null | head -n 1)
  [ -n "$cid" ] || { echo missing; return; }
  docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else if and (eq .State.Status "exited") (eq .State.ExitCode 0)}}done{{else}}{{.State.Status}}{{end}}' "$cid" 2>/dev/null || echo missing
}

print_summary() {
  printf '\n[cluster-smoke] timings:\n' >&2
  local t
  for t in "${timings[@]}"; do printf '  %s\n' "$t" >&2; done
  printf '  %-30s %4d s\n' total $((SECONDS - T0)) >&2
}

# The failed scenario's report is printed again at the very end, where a CI log's tail shows it.
FAILED_REPORT=""
print_failed_checks() {
  [ -f "$1" ] || return 0
  printf '\n[cluster-smoke] failed checks and figures of %s:\n' "$1" >&2
  python3 - "$1" >&2 <<'PY' || true
import json, sys
doc = json.load(open(sys.argv[1]))
for s in doc.get("scenarios", []):
    if s.get("passed"):
        continue
    print(f"  scenario {s.get('name')}: error {s.get('error')}")
    for c in s.get("checks", []):
        if not c.get("pass"):
            print(f"  FAILED {c['check']}: expected {c['expected']}; measured {c['measured']}")
    print("  figures: " + json.dumps(s.get("figures", {}))[:4000])
PY
}

STACK_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The step that failed still shows its time.
  [ -z "$step_name" ] || done_step "FAILED: ${step_name:0:22}"
  if [ "$STACK_UP" = 1 ]; then
    if [ "$rc" != 0 ]; then
      log "failure: state of the stack"
      compose ps >&2 || true
      local svc state
      for svc in $(compose config --services 2>/dev/null); do
        state=$(service_state "$svc")
        case "$state" in healthy|done) continue ;; esac
        log "---- $svc is $state: last log lines"
        compose logs --no-color --tail=60 "$svc" >&2 || true
      done
      log "---- redis-1: cluster nodes"
      compose exec -T redis-1 redis-cli cluster nodes >&2 || true
    fi
    if [ "${KEEP_STACK:-0}" = 1 ]; then
      log "KEEP_STACK=1: the stack stays up (${COMPOSE[*]} down -v to remove it)"
    else
      step "down -v"
      timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >&2 || log "down -v failed"
      done_step "down -v"
    fi
  fi
  [ -z "$FAILED_REPORT" ] || print_failed_checks "$FAILED_REPORT"
  print_summary
  if [ "$rc" = 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. images -------------------------------------------------------------------------------------
if [ "${SKIP_BASE_IMAGES:-0}" != 1 ]; then
  step "base images (scripts/build-base-images.sh)"
  scripts/build-base-images.sh
  done_step "base images"
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "${COMPOSE[*]} build"
  build_log="$TARGET_DIR/compose-cluster-build.log"
  mkdir -p "$(dirname "$build_log")"
  if ! timeout 3600 "${COMPOSE[@]}" build >"$build_log" 2>&1; then
    grep -nE '^(error|warning: build failed)|error:|No space left|Killed|signal: 9' "$build_log" | tail -40 >&2 || true
    tail -40 "$build_log" >&2
    die "compose build failed (full output: $build_log)"
  fi
  tail -3 "$build_log" >&2
  done_step "compose build"
else
  docker image inspect seat-gateway-stack:latest >/dev/null 2>&1 \
    || die "SKIP_BUILD=1 but there is no image seat-gateway-stack:latest"
fi

# --- 2. up and healthy -------------------------------------------------------------------------------
step "${COMPOSE[*]} up -d"
STACK_UP=1
timeout 300 "${COMPOSE[@]}" up -d || die "compose up failed"
done_step "compose up -d"

step "waiting until every service is healthy and $INIT_SERVICE is done (at most ${HEALTH_WAIT_SECS}s)"
deadline=$((SECONDS + HEALTH_WAIT_SECS))
services=$(compose config --services)
while true; do
  pending=()
  for svc in $services; do
    state=$(service_state "$svc")
    case "$svc:$state" in
      *:healthy|"$INIT_SERVICE":done) ;;
      "$INIT_SERVICE":exited) die "$INIT_SERVICE failed" ;;
      *:exited|*:dead|*:missing) die "$svc is $state" ;;
      *) pending+=("$svc:$state") ;;
    esac
  done
  [ ${#pending[@]} -gt 0 ] || break
  [ "$SECONDS" -lt "$deadline" ] || die "not healthy after ${HEALTH_WAIT_SECS}s: ${pending[*]}"
  sleep 1
done
log "all healthy: $(echo "$services" | tr '\n' ' ')"
done_step "all healthy, cluster created"

# --- 3. checks ----------------------------------------------------------------------------------------
step "checks: the Redis Cluster and the three gateways"
info=$(compose exec -T redis-1 redis-cli cluster info | tr -d '\r')
case "$info" in *cluster_state:ok*) ;; *) die "cluster_state is not ok: $info" ;; esac
# Flags are the third field ("myself,master" on the node asked).
masters=$(compose exec -T redis-1 redis-cli cluster nodes | awk '$3 ~ /(^|,)master(,|$)/' | wc -l)
[ "$masters" = 3 ] || die "expected 3 masters, cluster nodes lists $masters"
log "redis cluster: state ok, 3 masters, 3 replicas"
for i in 0 1 2; do
  gw=${GATEWAYS[i]} admin=${ADMINS[i]}
  body=$(curl -fsS --max-time 5 "$gw/api/events") || die "GET $gw/api/events failed"
  case "$body" in *'"EVT-001"'*) ;; *) die "GET $gw/api/events does not list EVT-001: $(printf '%s' "$body" | head -c 300)" ;; esac
  status=""
  for _ in $(seq 1 40); do
    status=$(curl -fsS --max-time 5 "$admin/status") || die "GET $admin/status failed"
    # The store is up and all three gateways' heartbeats are seen (compact or pretty JSON).
    if printf '%s' "$status" | tr -d ' \n' | grep -q '"available":true' \
       && printf '%s' "$status" | tr -d ' \n' | grep -q '"gateways":3'; then
      break
    fi
    sleep 0.5
  done
  printf '%s' "$status" | tr -d ' \n' | grep -q '"gateways":3' \
    || die "$admin/status: the limit store is not up or does not see 3 gateways: $(printf '%s' "$status" | tr -d '\n' | grep -o '"limitStore":{[^}]*}')"
  log "gateway $((i + 1)) ($gw): events listed; limit store up, 3 gateways seen"
done
done_step "cluster + gateway checks"

# --- 4. the two scenarios -----------------------------------------------------------------------------
if [ "${SKIP_SCENARIOS:-0}" != 1 ]; then
  loadtest=${LOADTEST_BIN:-}
  if [ -z "$loadtest" ]; then
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
  targets=(--cluster --compose-file "$CLUSTER_FILE")
  for i in 0 1 2; do targets+=(--gateway "${GATEWAYS[i]}" --admin "${ADMINS[i]}"); done
  for scenario in cluster-flood shard-failover; do
    step "loadtest scenario $scenario --cluster ($loadtest)"
    timeout 600 "$loadtest" scenario "$scenario" "${targets[@]}" \
      --json "$TARGET_DIR/loadtest-cluster-$scenario.json" --out-dir "$TARGET_DIR/loadtest-cluster" \
      || { FAILED_REPORT="$TARGET_DIR/loadtest-cluster-$scenario.json"; die "loadtest scenario $scenario failed"; }
    done_step "$scenario"
  done
fi
