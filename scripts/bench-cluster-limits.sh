#!/usr/bin/env bash
# Cluster zone vs local zone (SPEC §10.1), side by side on the gateway benchmark's setup
# (bench/gateway.yaml.tmpl, bench/upstream.nginx.conf.tmpl; release build):
#
#   scripts/bench-cluster-limits.sh [--duration 10s] [--connections 64] [--threads 2]
#                                   [--rounds 3] [--gateway-bin PATH]
#
# Starts one upstream nginx, one redis-server and two gateways running at the same time: "local"
# (the benchmark's config as is: bench_req is scope: local) and "cluster" (the same with a
# limit_store on that redis and bench_req: scope: cluster). Then runs wrk alternating local,
# cluster, local, cluster ... (`--rounds` pairs), and reports per run requests/s and the p50 and
# p99 latency, the ratio cluster/local, the Redis round trips per request (EVALSHA calls in
# `INFO commandstats` over the gateway's requests) and the store's own latency as the gateway
# measured it (gateway_limit_store_duration_seconds). Load average printed before and after.
# Every process it starts is stopped on exit; every wait is bounded.
set -euo pipefail

DURATION=10s
CONNECTIONS=64
THREADS=2
ROUNDS=3
GATEWAY_BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --gateway-bin) GATEWAY_BIN=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[ -n "$GATEWAY_BIN" ] || GATEWAY_BIN=$TARGET/release/gateway
[ -x "$GATEWAY_BIN" ] || { echo "build first: cargo build --release -p gateway" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
RUN=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$RUN"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; for f in "$RUN"/*.log "$RUN"/*.err; do echo "== $f" >&2; tail -n 5 "$f" >&2; done; exit 1; }
render() { local out=$2; cp "$1" "$out"; shift 2; for kv in "$@"; do sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$out"; done; }

UP=$(free_port); RP=$(free_port)
render "$ROOT/bench/upstream.nginx.conf.tmpl" "$RUN/upstream.conf" "RUN=$RUN" "UPSTREAM_PORT=$UP"
"$NGINX" -p "$RUN" -c "$RUN/upstream.conf" 2>"$RUN/upstream.err" & PIDS+=($!)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" >/dev/null & PIDS+=($!)

declare -A PORT ADMIN
for kind in local cluster; do
  PORT[$kind]=$(free_port); ADMIN[$kind]=$(free_port)
  render "$ROOT/bench/gateway.yaml.tmpl" "$RUN/gateway-$kind.yaml" \
    "PROXY_PORT=${PORT[$kind]}" "ADMIN_PORT=${ADMIN[$kind]}" "UPSTREAM_PORT=$UP"
  if [ "$kind" = cluster ]; then
    sed -i "s|^limit_req_zones:|limit_store:\n  redis: [\"redis://127.0.0.1:$RP\"]\n  timeout_ms: 25\nlimit_req_zones:|" "$RUN/gateway-$kind.yaml"
    sed -i '/bench_req:/s|max_keys: 100000 }|max_keys: 100000, scope: cluster }|' "$RUN/gateway-$kind.yaml"
    grep -q "scope: cluster" "$RUN/gateway-$kind.yaml" || { echo "template changed?" >&2; exit 1; }
  fi
  RUST_LOG=info,access=off "$GATEWAY_BIN" -c "$RUN/gateway-$kind.yaml" >"$RUN/gateway-$kind.log" 2>&1 & PIDS+=($!)
done
for kind in local cluster; do wait_http "http://127.0.0.1:${PORT[$kind]}/api/events"; done
sleep 1.5   # heartbeat, SCRIPT LOAD

evalsha() { redis-cli -p "$RP" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | head -1; }
metric() { curl -fsS "http://127.0.0.1:${ADMIN[$1]}/metrics" | awk -v s="$2" '$1==s {print $2}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
printf '%-8s %-6s %12s %9s %9s %14s\n' kind round req/s p50 p99 evalsha/req
for r in $(seq 1 "$ROUNDS"); do
  for kind in local cluster; do
    timeout 30 wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:${PORT[$kind]}/api/events" >/dev/null
    e0=$(evalsha); e0=${e0:-0}
    n0=$(curl -fsS "http://127.0.0.1:${ADMIN[$kind]}/metrics" | awk '$1 ~ /^gateway_requests_total/ {s+=$2} END {print s+0}')
    out=$(timeout 120 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$kind]}/api/events")
    e1=$(evalsha); e1=${e1:-0}
    n1=$(curl -fsS "http://127.0.0.1:${ADMIN[$kind]}/metrics" | awk '$1 ~ /^gateway_requests_total/ {s+=$2} END {print s+0}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    per=$(python3 -c "print(f'{($e1-$e0)/max(1,$n1-$n0):.3f}')")
    printf '%-8s %-6s %12s %9s %9s %14s\n' "$kind" "$r" "$rps" "$p50" "$p99" "$per"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cluster gateway: store round trips by result, and their latency histogram:"
curl -fsS "http://127.0.0.1:${ADMIN[cluster]}/metrics" | grep -E '^gateway_limit_store_(requests_total|duration_seconds_(sum|count))|^gateway_limit_store_duration_seconds_bucket\{le="0.0005"|le="0.001"|le="0.0025"'
echo "redis: $(redis-cli -p "$RP" INFO commandstats | grep -E 'evalsha|cmdstat_eval:')"
