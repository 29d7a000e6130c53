#!/usr/bin/env bash
# Reservation path benchmark, two builds side by side (docs/benchmarks.md, backend section).
#
#   scripts/bench-reservations.sh --before DIR --after DIR [--rounds 3] [--duration 15s]
#                                 [--concurrency 64] [--out DIR]
#   scripts/bench-reservations.sh --bin DIR --modes "standalone cluster" [...]
#
# DIR holds a release `backend` binary. Each round runs both builds (or one build in both Redis
# modes), alternating which goes first, each on a fresh Redis with one reservations process,
# payments (at zero latency) and notifications from the same binary, and `loadtest bench
# reservations` (64 clients, general admission, zero-oversell check) over three events whose keys
# sit on the three masters of a cluster (the same events in both modes). `standalone` is one
# redis-server; `cluster` six nodes (three masters, three replicas) with the backend in
# `--redis-mode cluster`. Per run it records the load average, the CPU seconds each process used
# (Redis: all nodes), and Redis' per-command statistics summed over the masters (where the time
# goes). Everything it starts is stopped on exit; every wait is bounded.
set -euo pipefail

BEFORE="" AFTER="" BIN="" MODES="" ROUNDS=3 DURATION=15s CONCURRENCY=64
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
OUT="$TARGET_DIR/bench/reservations"
LOADTEST="$TARGET_DIR/release/loadtest"
while [ $# -gt 0 ]; do
  case "$1" in
    --before) BEFORE="$2"; shift 2 ;;
    --after) AFTER="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --modes) MODES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --loadtest) LOADTEST="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$BIN" ]; then
  [ -x "$BIN/backend" ] && [ -n "$MODES" ] || {
    echo "--bin DIR needs a release backend binary in DIR and --modes \"standalone cluster\"" >&2; exit 2; }
else
  [ -x "$BEFORE/backend" ] && [ -x "$AFTER/backend" ] || {
    echo "need --before DIR and --after DIR, each with a release backend binary" >&2; exit 2; }
fi
[ -x "$LOADTEST" ] || { echo "no loadtest at $LOADTEST (cargo build --release -p loadtest)" >&2; exit 2; }
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && timeout 5 tail --pid="$p" -f /dev/null 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
# The Redis of one run: REDIS_PORTS (standalone: one; cluster: six), REDIS_PIDS, MASTERS (ports
# of the masters), REDIS_URL and REDIS_MODE for the backend.
start_redis() { # mode
  REDIS_PORTS=(); REDIS_PIDS=(); MASTERS=()
  local n=1 p i
  [ "$1" = cluster ] && n=6
  for i in $(seq 1 "$n"); do
    p=$(free_port); local dir; dir=$(mktemp -d); REDIS_PORTS+=("$p")
    if [ "$1" = cluster ]; then
      redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --cluster-require-full-coverage no >/dev/null 2>&1 & PIDS+=($!); REDIS_PIDS+=($!)
    else
      redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
        >/dev/null 2>&1 & PIDS+=($!); REDIS_PIDS+=($!)
    fi
  done
  for p in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if [ "$1" = cluster ]; then
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_PORTS[@]}") --cluster-replicas 1 \
      --cluster-yes >/dev/null
    for _ in $(seq 1 150); do
      local up=0
      for p in "${REDIS_PORTS[@]}"; do
        redis-cli -p "$p" INFO replication | grep -qE 'role:master|master_link_status:up' \
          && redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' && up=$((up + 1))
      done
      [ "$up" = 6 ] && break; sleep 0.2
    done
    for p in "${REDIS_PORTS[@]}"; do
      redis-cli -p "$p" ROLE | head -1 | grep -q master && MASTERS+=("$p")
    done
    REDIS_MODE=cluster REDIS_URL=$(printf 'redis://127.0.0.1:%s,' "${REDIS_PORTS[@]}"); REDIS_URL=${REDIS_URL%,}
  else
    MASTERS=("${REDIS_PORTS[0]}"); REDIS_MODE=standalone REDIS_URL="redis://127.0.0.1:${REDIS_PORTS[0]}/"
  fi
  export REDIS_MODE REDIS_URL
}

# Undelivered notifications: the outbox streams' lengths added up over the masters (one stream
# per slot group since the Redis Cluster layout; `outbox:notifications` before it).
backlog_of() {
  local total=0 n k p
  for p in "${MASTERS[@]}"; do
    for k in $(redis-cli -p "$p" --scan --pattern 'outbox:*'); do
      n=$(redis-cli -p "$p" XLEN "$k"); total=$((total + n))
    done
  done
  echo "$total"
}

redis_cpu() { local t=0 p; for p in "${REDIS_PIDS[@]}"; do t=$(awk -v a="$t" -v b="$(cpu_secs "$p")" 'BEGIN{printf "%.2f", a+b}'); done; echo "$t"; }

# Three event ids whose keys sit in slot groups 0-3, 4-7 and 8-11: on the three masters of a
# cluster made by `redis-cli --cluster create` (crate::slots), asked of /admin/placement.
bench_events() { # reservations base URL, tag
  local want=(0 1 2) got=() i g
  for i in $(seq 1 400); do
    g=$(curl -fsS "$1/admin/placement/BENCH-$2-$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["group"] // 4)')
    if [ -z "${got[$g]:-}" ]; then got[$g]="BENCH-$2-$i"; fi
    [ -n "${got[0]:-}" ] && [ -n "${got[1]:-}" ] && [ -n "${got[2]:-}" ] && break
  done
  echo "--event ${got[0]} --event ${got[1]} --event ${got[2]}"
}

cpu_secs() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_one() { # name bin_dir round mode
  local name="$1" dir="$2" round="$3" mode="${4:-standalone}" tag="$1-r$3"
  local pp np sp
  pp=$(free_port); np=$(free_port); sp=$(free_port)
  start_redis "$mode"
  export RUST_LOG=warn
  LISTEN="127.0.0.1:$pp" "$dir/backend" payments >"$OUT/$tag-payments.log" 2>&1 & PIDS+=($!); local pay_pid=$!
  LISTEN="127.0.0.1:$np" "$dir/backend" notifications >/dev/null 2>&1 & PIDS+=($!); local not_pid=$!
  LISTEN="127.0.0.1:$sp" PAYMENTS_URL="http://127.0.0.1:$pp" NOTIFICATIONS_URL="http://127.0.0.1:$np" \
    "$dir/backend" reservations >"$OUT/$tag-reservations.log" 2>&1 & PIDS+=($!); local res_pid=$!
  wait_http "http://127.0.0.1:$pp/health"; wait_http "http://127.0.0.1:$sp/health"
  local events=""
  curl -fsS -o /dev/null "http://127.0.0.1:$sp/admin/placement/x" 2>/dev/null \
    && events=$(bench_events "http://127.0.0.1:$sp" "$round")
  # Warm-up (connections, script cache), not measured.
  timeout 60 "$LOADTEST" bench reservations --target "http://127.0.0.1:$sp" \
    --payments "http://127.0.0.1:$pp" --concurrency "$CONCURRENCY" --duration 3s >/dev/null 2>&1 || true
  for p in "${REDIS_PORTS[@]}"; do redis-cli -p "$p" CONFIG RESETSTAT >/dev/null; done
  # Let the warm-up's notifications drain first.
  for _ in $(seq 1 600); do [ "$(backlog_of)" = 0 ] && break; sleep 0.1; done
  local load c_res c_pay c_redis c_not
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  c_res=$(cpu_secs "$res_pid"); c_pay=$(cpu_secs "$pay_pid"); c_redis=$(redis_cpu)
  c_not=$(cpu_secs "$not_pid")
  timeout 300 "$LOADTEST" bench reservations --target "http://127.0.0.1:$sp" \
    --payments "http://127.0.0.1:$pp" --concurrency "$CONCURRENCY" --duration "$DURATION" \
    $events --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>&1 || echo "(bench exit $?)" >>"$OUT/$tag.txt"
  # The outbox delivers notifications after the confirmations: that work belongs to the
  # reservations too. Wait (bounded) until it is done and count its time and CPU.
  local backlog drained=0 t_end
  backlog=$(backlog_of)
  t_end=$(date +%s.%N)
  for _ in $(seq 1 3000); do [ "$(backlog_of)" = 0 ] && { drained=1; break; }; sleep 0.1; done
  local drain_secs
  drain_secs=$(awk -v a="$(date +%s.%N)" -v b="$t_end" 'BEGIN{printf "%.1f", a-b}')
  {
    echo "backlog_at_end $backlog"
    echo "drain_secs $drain_secs"
    echo "drained $drained"
    echo "cpu_notifications $(awk -v a="$(cpu_secs "$not_pid")" -v b="$c_not" 'BEGIN{printf "%.2f", a-b}')"
    echo "load_before $load"
    echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cpu_reservations $(awk -v a="$(cpu_secs "$res_pid")" -v b="$c_res" 'BEGIN{printf "%.2f", a-b}')"
    echo "cpu_payments $(awk -v a="$(cpu_secs "$pay_pid")" -v b="$c_pay" 'BEGIN{printf "%.2f", a-b}')"
    echo "cpu_redis $(awk -v a="$(redis_cpu)" -v b="$c_redis" 'BEGIN{printf "%.2f", a-b}')"
    for p in "${MASTERS[@]}"; do redis-cli -p "$p" INFO commandstats; done | tr -d '\r' \
      | grep -E '^cmdstat_' | awk -F'[:,=]' '{c[$1]+=$3; u[$1]+=$5} END {for (k in c) printf "%s:calls=%d,usec=%d\n", k, c[k], u[k]}' \
      | sort -t= -k3 -rn
  } >"$OUT/$tag.stats"
  cleanup
  python3 - "$OUT/$tag.json" "$OUT/$tag.stats" "$name" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); st = dict(l.split(' ', 1) for l in open(sys.argv[2]) if ' ' in l and not l.startswith('cmdstat'))
lat = r.get("latencyOk") or r.get("latency") or {}
n = r["okPerSec"] * r["elapsedSecs"]
g = lambda k: float(st.get(k, "0").strip() or 0)
sustained = n / (r["elapsedSecs"] + g("drain_secs"))
us = lambda k: g(k) / max(n, 1) * 1e6
print(f'{sys.argv[3]:6} round {sys.argv[4]}: {r["okPerSec"]:6.0f} confirmed/s (sustained incl. outbox drain '
      f'{sustained:6.0f}/s, backlog {int(g("backlog_at_end"))} drained in {g("drain_secs")} s)  '
      f'p50 {lat.get("p50Ms", 0):6.2f} ms  p99 {lat.get("p99Ms", 0):6.2f} ms  '
      f'oversell-check {"PASS" if r.get("zeroOversell") else "FAIL"}  load {st.get("load_before","?").strip()}  '
      f'CPU µs/reservation res {us("cpu_reservations"):.0f} pay {us("cpu_payments"):.0f} '
      f'redis {us("cpu_redis"):.0f} notif {us("cpu_notifications"):.0f}')
PY
}

if [ -n "$BIN" ]; then
  read -r -a modes <<<"$MODES"
  echo "bench: $ROUNDS rounds × {${modes[*]}}, $CONCURRENCY clients, $DURATION each; out $OUT"
  for r in $(seq 1 "$ROUNDS"); do
    order=("${modes[@]}")
    [ $((r % 2)) -eq 0 ] && order=($(printf '%s\n' "${modes[@]}" | tac))
    for m in "${order[@]}"; do run_one "$m" "$BIN" "$r" "$m"; done
  done
  exit 0
fi
echo "bench: $ROUNDS rounds × {before, after}, $CONCURRENCY clients, $DURATION each; out $OUT"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run_one before "$BEFORE" "$r"; run_one after "$AFTER" "$r"
  else
    run_one after "$AFTER" "$r"; run_one before "$BEFORE" "$r"
  fi
done
