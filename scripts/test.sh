#!/usr/bin/env bash
# Runs every test of the project: the one command README and CI use.
#
#   scripts/test.sh            install what is missing (when root/sudo), fmt, clippy, all cargo
#                              tests, the demo scenarios against scripts/run-local.sh, and the
#                              docker compose smoke test when a Docker engine is available
#
# Environment switches (all optional):
#   SKIP_INSTALL=1   never call apt-get; fail with the list of what is missing instead
#   SKIP_LOCAL=1     skip the scenarios against the local (no Docker) stacks
#   SKIP_COMPOSE=1   skip the docker compose smoke tests (main and scaled stack)
#   COMPOSE_SCENARIOS=0  compose smoke test without `loadtest scenario all --compose`
#   SKIP_SCHEMATHESIS=1  skip the Schemathesis run against the reservations OpenAPI document
#   SKIP_FUZZ=1      skip scripts/fuzz.sh (CI runs each target FUZZ_SECONDS=20 s without a
#                    sanitizer: Rust panics are what it looks for; FUZZ_SANITIZER=address for ASan)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

step() { printf '\n==> %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

# --- 1. what the tests need -------------------------------------------------------------------
need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v slowhttptest >/dev/null || need_pkgs+=(slowhttptest)
command -v ss >/dev/null || [ -x /usr/sbin/ss ] || need_pkgs+=(iproute2)  # gateway_pingora_knobs reads socket timers
command -v python3 >/dev/null || need_pkgs+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if [ "${SKIP_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    step "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    die "missing packages: ${need_pkgs[*]} (install them: apt-get install ${need_pkgs[*]})"
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"

# --- 2. static checks ---------------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- 3. unit, integration, concurrency and browser tests ---------------------------------------
step "cargo test (workspace)"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"

# --- 3a. fuzz the parsers of hostile input (config, X-Forwarded-For, rates) --------------------
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  step "cargo fuzz: config, xff, rate (${FUZZ_SECONDS:-20} s each)"
  FUZZ_SANITIZER=${FUZZ_SANITIZER:-none} timeout 2400 scripts/fuzz.sh
fi

# --- 3b. the reservations API against its own OpenAPI document ---------------------------------
if [ "${SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  step "schemathesis against the reservations OpenAPI document"
  timeout 900 scripts/schemathesis.sh
fi

# --- 4. the demo scenarios against the local stack, without Docker ------------------------------
if [ "${SKIP_LOCAL:-0}" != 1 ]; then
  step "scenarios against scripts/run-local.sh"
  cleanup_local() { scripts/run-local.sh stop || true; }
  trap cleanup_local EXIT
  # Debug builds: the tests above just built them, and the scenarios judge behaviour, not speed.
  scripts/run-local.sh --detach --debug
  timeout 600 "${CARGO_TARGET_DIR:-$ROOT/target}/debug/loadtest" scenario all \
    --json "$ROOT/target/loadtest-local.json" --out-dir "$ROOT/target/loadtest-local"
  cleanup_local
  # The scaled stack of SPEC §10.3 without Docker: six local Redis Cluster nodes, the backend in
  # cluster mode, three gateways sharing cluster zones; its two scenarios.
  step "scaled-stack scenarios against scripts/run-local.sh --cluster"
  scripts/run-local.sh --cluster --detach --debug --no-build
  timeout 300 "${CARGO_TARGET_DIR:-$ROOT/target}/debug/loadtest" scenario cluster-flood \
    --json "$ROOT/target/loadtest-cluster-flood.json" --out-dir "$ROOT/target/loadtest-local"
  timeout 300 "${CARGO_TARGET_DIR:-$ROOT/target}/debug/loadtest" scenario shard-failover \
    --json "$ROOT/target/loadtest-shard-failover.json" --out-dir "$ROOT/target/loadtest-local"
  cleanup_local
  trap - EXIT
fi

# --- 5. the compose stack, built air-gapped -----------------------------------------------------
if [ "${SKIP_COMPOSE:-0}" != 1 ]; then
  if docker info >/dev/null 2>&1; then
    # Builds the image (a cold release build in Docker takes 10-30 min on 2 cores), starts the
    # stack, waits for health, checks the gateway and a live SIGHUP reload, runs the six demos
    # with real `docker compose stop/start` (COMPOSE_SCENARIOS=0 skips them), tears it down.
    step "docker compose smoke test"
    if [ "${COMPOSE_SCENARIOS:-1}" = 1 ]; then
      timeout 3600 scripts/compose-smoke.sh
    else
      SKIP_SCENARIOS=1 timeout 3600 scripts/compose-smoke.sh
    fi
    # The scaled stack from the same image (already built): cluster-flood and shard-failover
    # with real `docker compose stop/start` of a Redis master (about 2 minutes).
    step "docker compose smoke test of the scaled stack (docker-compose.cluster.yml)"
    SKIP_BASE_IMAGES=1 SKIP_BUILD=1 timeout 1200 scripts/compose-cluster-smoke.sh
  else
    echo "(no Docker engine reachable: compose smoke tests skipped)"
  fi
fi

step "all tests passed"
