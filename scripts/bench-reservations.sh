#!/usr/bin/env bash
# Reservation path benchmark, two builds side by side (docs/benchmarks.md, backend section).
#
#   scripts/bench-reservations.sh --before DIR --after DIR [--rounds 3] [--duration 15s]
#                                 [--concurrency 64] [--out DIR]
#
# DIR holds a release `backend` binary. Each round runs both builds, alternating which goes
# first, each on a fresh redis-server with one reservations process, payments (at zero latency)
# and notifications from the same binary, and `loadtest bench reservations` (64 clients, general
# admission, zero-oversell check). Per run it records the load average, the CPU seconds each
# process used, and Redis' per-command statistics (where the time goes). Everything it starts is
# stopped on exit; every wait is bounded.
set -euo pipefail

BEFORE="" AFTER="" ROUNDS=3 DURATION=15s CONCURRENCY=64
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
OUT="$TARGET_DIR/bench/reservations"
LOADTEST="$TARGET_DIR/release/loadtest"
while [ $# -gt 0 ]; do
  case "$1" in
    --before) BEFORE="$2"; shift 2 ;;
    --after) AFTER="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --loadtest) LOADTEST="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BEFORE/backend" ] && [ -x "$AFTER/backend" ] || {
  echo "need --before DIR and --after DIR, each with a release backend binary" >&2; exit 2; }
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
# Undelivered notifications: the outbox streams' lengths added up (one stream per slot group
# since the Redis Cluster layout; `outbox:notifications` before it).
backlog_of() {
  local total=0 n k
  for k in $(redis-cli -p "$1" --scan --pattern 'outbox:*'); do
    n=$(redis-cli -p "$1" XLEN "$k"); total=$((total + n))
  done
  echo "$total"
}
cpu_secs() { # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_one() { # name bin_dir round
  local name="$1" dir="$2" round="$3" tag="$1-r$3"
  local rp pp np sp
  rp=$(free_port); pp=$(free_port); np=$(free_port); sp=$(free_port)
  redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir /tmp \
    >/dev/null 2>&1 & PIDS+=($!); local redis_pid=$!
  for _ in $(seq 1 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export REDIS_URL="redis://127.0.0.1:$rp/" RUST_LOG=warn
  LISTEN="127.0.0.1:$pp" "$dir/backend" payments >"$OUT/$tag-payments.log" 2>&1 & PIDS+=($!); local pay_pid=$!
  LISTEN="127.0.0.1:$np" "$dir/backend" notifications >/dev/null 2>&1 & PIDS+=($!); local not_pid=$!
  LISTEN="127.0.0.1:$sp" PAYMENTS_URL="http://127.0.0.1:$pp" NOTIFICATIONS_URL="http://127.0.0.1:$np" \
    "$dir/backend" reservations >"$OUT/$tag-reservations.log" 2>&1 & PIDS+=($!); local res_pid=$!
  wait_http "http://127.0.0.1:$pp/health"; wait_http "http://127.0.0.1:$sp/health"
  # Warm-up (connections, script cache), not measured.
  timeout 60 "$LOADTEST" bench reservations --target "http://127.0.0.1:$sp" \
    --payments "http://127.0.0.1:$pp" --concurrency "$CONCURRENCY" --duration 3s >/dev/null 2>&1 || true
  redis-cli -p "$rp" CONFIG RESETSTAT >/dev/null
  # Let the warm-up's notifications drain first.
  for _ in $(seq 1 600); do [ "$(backlog_of "$rp")" = 0 ] && break; sleep 0.1; done
  local load c_res c_pay c_redis c_not
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  c_res=$(cpu_secs "$res_pid"); c_pay=$(cpu_secs "$pay_pid"); c_redis=$(cpu_secs "$redis_pid")
  c_not=$(cpu_secs "$not_pid")
  timeout 300 "$LOADTEST" bench reservations --target "http://127.0.0.1:$sp" \
    --payments "http://127.0.0.1:$pp" --concurrency "$CONCURRENCY" --duration "$DURATION" \
    --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>&1 || echo "(bench exit $?)" >>"$OUT/$tag.txt"
  # The outbox delivers notifications after the confirmations: that work belongs to the
  # reservations too. Wait (bounded) until it is done and count its time and CPU.
  local backlog drained=0 t_end
  backlog=$(backlog_of "$rp")
  t_end=$(date +%s.%N)
  for _ in $(seq 1 3000); do [ "$(backlog_of "$rp")" = 0 ] && { drained=1; break; }; sleep 0.1; done
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
    echo "cpu_redis $(awk -v a="$(cpu_secs "$redis_pid")" -v b="$c_redis" 'BEGIN{printf "%.2f", a-b}')"
    redis-cli -p "$rp" INFO commandstats | tr -d '\r' | grep -E '^cmdstat_' | sort -t= -k3 -rn
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

echo "bench: $ROUNDS rounds × {before, after}, $CONCURRENCY clients, $DURATION each; out $OUT"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run_one before "$BEFORE" "$r"; run_one after "$AFTER" "$r"
  else
    run_one after "$AFTER" "$r"; run_one before "$BEFORE" "$r"
  fi
done
