#!/usr/bin/env bash
# Side-by-side benchmark: wrk through the gateway and through NGINX, same upstream, same
# connections, release build, limits on but not binding (GitHub issue 4).
#
#   scripts/bench-gateway-vs-nginx.sh [--duration 15s] [--connections 64] [--threads 2]
#                                     [--warmup 3s] [--rounds 2] [--modes "log nolog"]
#                                     [--no-build] [--gateway-bin PATH] [--perf DIR]
#                                     [--out FILE] [--keep]
#
# What it does (docs/benchmarks.md has the reasoning and the results):
#   1. builds the gateway in release (`cargo build --release -p gateway`), installs wrk and
#      nginx-light with apt-get when missing;
#   2. starts ONE upstream both proxies share: a separate nginx, worker_processes 1, answering a
#      small static JSON body from memory (bench/upstream.nginx.conf.tmpl);
#   3. for each logging mode — `log`: NGINX access_log buffer=64k vs the gateway's access line per
#      request (RUST_LOG=info); `nolog`: access_log off vs RUST_LOG=info,access=off — starts NGINX
#      (bench/nginx.conf.tmpl, worker_processes 2) and the gateway (bench/gateway.yaml.tmpl,
#      server.threads 2) as reverse proxies of that upstream, checks each answers 200 with the
#      upstream's body, then runs `wrk -t2 -c64 -d15s --latency` alternating
#      nginx, gateway, nginx, gateway (`--rounds` pairs), each after a short warm-up;
#      With --perf DIR, one extra (unmeasured) run per proxy and mode is recorded with
#      `perf record -e cpu-clock -g` and the top symbols are written to DIR/<mode>-<proxy>.txt.
#   4. parses Requests/sec and the latency percentiles, measures each proxy's CPU time per run,
#      prints a table with the ratios gateway/nginx and writes the JSON report
#      ($CARGO_TARGET_DIR or ./target)/bench/gateway-vs-nginx.json.
# Every process it starts is stopped on exit (trap), and every wait is bounded.
set -euo pipefail

DURATION=15s
CONNECTIONS=64
THREADS=2
WARMUP=3s
ROUNDS=2
MODES="log nolog"
BUILD=1
KEEP=0
OUT=""
PERF_DIR=""
GATEWAY_BIN=""

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --gateway-bin) GATEWAY_BIN=$2; BUILD=0; shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for m in $MODES; do
  case "$m" in log|nolog) ;; *) echo "--modes: unknown mode '$m' (log, nolog)" >&2; exit 2 ;; esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds must be a positive integer" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/gateway}
OUT=${OUT:-$TARGET_DIR/bench/gateway-vs-nginx.json}

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
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
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
for t in curl python3; do
  command -v "$t" >/dev/null 2>&1 || die "missing $t"
done

if [ "$BUILD" = 1 ]; then
  log "cargo build --release -p gateway (target dir $TARGET_DIR)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR timeout 3600 cargo build --release -p gateway) \
    || die "release build failed"
fi
[ -x "$GATEWAY_BIN" ] || die "no release binary at $GATEWAY_BIN (run without --no-build)"

# ---------------------------------------------------------------- processes
RUN=$(mktemp -d "${TMPDIR:-/tmp}/bench-gw-vs-nginx.XXXXXX")
STARTED=()   # pids of every process this script started (nginx masters, the gateway)

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
  local pid
  for pid in "${STARTED[@]:-}"; do
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

# A free loopback TCP port (random probe, bounded).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

# Waits (bounded) until URL answers HTTP 200.
wait_http() {
  local url=$1 what=$2 pid=$3
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (logs in $RUN)"
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  die "$what did not answer 200 at $url within 10 s"
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

# CPU seconds (user+sys) used so far by a process and its direct children (nginx workers).
cpu_secs() {
  local root=$1 total=0 pid ticks
  for pid in "$root" $(ps -o pid= --ppid "$root" 2>/dev/null); do
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$(( total + ticks ))
  done
  python3 -c "import os,sys; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$total"
}

UPSTREAM_PORT=$(free_port)
render "$ROOT/bench/upstream.nginx.conf.tmpl" "$RUN/upstream.conf" "RUN=$RUN" "UPSTREAM_PORT=$UPSTREAM_PORT"
"$NGINX" -t -q -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" || die "upstream nginx config invalid"
"$NGINX" -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" &
UPSTREAM_PID=$!
STARTED+=("$UPSTREAM_PID")
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "upstream nginx" "$UPSTREAM_PID"
EXPECTED_BODY=$(curl -s --max-time 2 "http://127.0.0.1:$UPSTREAM_PORT/")
log "upstream nginx (1 worker) on 127.0.0.1:$UPSTREAM_PORT"

NGINX_PID=""
GATEWAY_PID=""
start_proxies() { # mode
  local mode=$1 access
  NGINX_PORT=$(free_port)
  GATEWAY_PORT=$(free_port)
  while [ "$GATEWAY_PORT" = "$NGINX_PORT" ] || [ "$GATEWAY_PORT" = "$UPSTREAM_PORT" ]; do GATEWAY_PORT=$(free_port); done
  ADMIN_PORT=$(free_port)
  while [ "$ADMIN_PORT" = "$NGINX_PORT" ] || [ "$ADMIN_PORT" = "$GATEWAY_PORT" ] || [ "$ADMIN_PORT" = "$UPSTREAM_PORT" ]; do ADMIN_PORT=$(free_port); done

  if [ "$mode" = log ]; then
    access="access_log $RUN/nginx.access.log bench buffer=64k;"
    GATEWAY_RUST_LOG=info
  else
    access="access_log off;"
    GATEWAY_RUST_LOG=info,access=off
  fi
  render "$ROOT/bench/nginx.conf.tmpl" "$RUN/nginx-$mode.conf" "RUN=$RUN" \
    "UPSTREAM_PORT=$UPSTREAM_PORT" "PROXY_PORT=$NGINX_PORT" "ACCESS_LOG=$access"
  render "$ROOT/bench/gateway.yaml.tmpl" "$RUN/gateway-$mode.yaml" \
    "UPSTREAM_PORT=$UPSTREAM_PORT" "PROXY_PORT=$GATEWAY_PORT" "ADMIN_PORT=$ADMIN_PORT"

  "$NGINX" -t -q -e "$RUN/nginx.error.log" -c "$RUN/nginx-$mode.conf" || die "proxy nginx config invalid"
  "$GATEWAY_BIN" -t -c "$RUN/gateway-$mode.yaml" >/dev/null || die "gateway config invalid"

  "$NGINX" -e "$RUN/nginx.error.log" -c "$RUN/nginx-$mode.conf" &
  NGINX_PID=$!
  STARTED+=("$NGINX_PID")
  RUST_LOG=$GATEWAY_RUST_LOG "$GATEWAY_BIN" -c "$RUN/gateway-$mode.yaml" >>"$RUN/gateway-$mode.log" 2>&1 &
  GATEWAY_PID=$!
  STARTED+=("$GATEWAY_PID")
  wait_http "http://127.0.0.1:$NGINX_PORT/api/events" "nginx proxy" "$NGINX_PID"
  wait_http "http://127.0.0.1:$GATEWAY_PORT/api/events" "gateway" "$GATEWAY_PID"

  # Both proxies must relay the upstream's answer unchanged and add X-Request-Id.
  local name port body hdrs
  for name in nginx gateway; do
    port=$NGINX_PORT; [ "$name" = gateway ] && port=$GATEWAY_PORT
    hdrs=$(curl -s -D - -o "$RUN/check-$name.body" --max-time 2 "http://127.0.0.1:$port/api/events")
    body=$(cat "$RUN/check-$name.body")
    [ "$body" = "$EXPECTED_BODY" ] || die "$name did not relay the upstream body: $body"
    printf '%s' "$hdrs" | grep -qi '^x-request-id:' || die "$name sent no X-Request-Id"
  done
  log "mode $mode: nginx proxy on :$NGINX_PORT (pid $NGINX_PID), gateway on :$GATEWAY_PORT (pid $GATEWAY_PID, RUST_LOG=$GATEWAY_RUST_LOG)"
}

stop_proxies() {
  [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
  [ -n "$GATEWAY_PID" ] && stop_pid "$GATEWAY_PID"
  NGINX_PID=""
  GATEWAY_PID=""
}

WRK_BOUND=$(( $(secs "$DURATION") + 30 ))
WARM_BOUND=$(( $(secs "$WARMUP") + 30 ))

run_one() { # mode proxy round
  local mode=$1 proxy=$2 round=$3 port pid base c0 c1 u0 u1
  if [ "$proxy" = nginx ]; then port=$NGINX_PORT; pid=$NGINX_PID; else port=$GATEWAY_PORT; pid=$GATEWAY_PID; fi
  base="$RUN/results/$mode-$proxy-$round"
  local url="http://127.0.0.1:$port/api/events"
  timeout "$WARM_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >"$base.warmup" 2>&1 \
    || die "wrk warm-up against $proxy failed: $(tail -3 "$base.warmup")"
  sleep 1
  c0=$(cpu_secs "$pid"); u0=$(cpu_secs "$UPSTREAM_PID")
  timeout "$WRK_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$base.wrk" 2>&1 \
    || die "wrk against $proxy failed: $(tail -3 "$base.wrk")"
  c1=$(cpu_secs "$pid"); u1=$(cpu_secs "$UPSTREAM_PID")
  printf '%s %s\n' "$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$c0" "$c1")" \
    "$(python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$u0" "$u1")" >"$base.cpu"
  kill -0 "$pid" 2>/dev/null || die "$proxy died during the run (logs in $RUN)"
  log "$mode $proxy round $round: $(grep -E 'Requests/sec' "$base.wrk" | tr -s ' ') p99 $(awk '$1=="99%"{print $2}' "$base.wrk"), proxy cpu $(cut -d' ' -f1 "$base.cpu") s"
}

# One unmeasured run of PROXY under `perf record` (software cpu-clock event: works in VMs without
# hardware counters); the top self-time symbols go to $PERF_DIR/<mode>-<proxy>.txt.
profile_one() { # mode proxy
  local mode=$1 proxy=$2 port pid pids p data txt
  if [ "$proxy" = nginx ]; then port=$NGINX_PORT; pid=$NGINX_PID; else port=$GATEWAY_PORT; pid=$GATEWAY_PID; fi
  pids=$pid
  for p in $(ps -o pid= --ppid "$pid" 2>/dev/null); do pids="$pids,$p"; done
  data="$RUN/$mode-$proxy.perf.data"
  txt="$PERF_DIR/$mode-$proxy.txt"
  timeout "$WRK_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port/api/events" >"$RUN/results/$mode-$proxy-perf.wrk" 2>&1 &
  local wrk_pid=$!
  sleep 1
  timeout "$WRK_BOUND" perf record -q -e cpu-clock -F 999 -g -p "$pids" -o "$data" -- sleep $(( $(secs "$DURATION") > 3 ? $(secs "$DURATION") - 2 : 1 )) >/dev/null 2>&1 \
    || log "perf record failed for $proxy"
  wait "$wrk_pid" || true
  {
    echo "# $proxy, mode $mode: perf record -e cpu-clock -g during wrk -t$THREADS -c$CONNECTIONS -d$DURATION (unmeasured run)"
    grep -E 'Requests/sec|99%' "$RUN/results/$mode-$proxy-perf.wrk" || true
    echo "## by shared object"
    timeout 300 perf report -i "$data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 10' || true
    echo "## top symbols (self time)"
    timeout 300 perf report -i "$data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 60' || true
  } >"$txt"
  rm -f "$data"
  log "perf profile of $proxy ($mode) in $txt"
}

mkdir -p "$RUN/results"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "load average before: $LOAD_BEFORE; wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, warm-up $WARMUP, $ROUNDS round(s), modes: $MODES"
for mode in $MODES; do
  start_proxies "$mode"
  for round in $(seq 1 "$ROUNDS"); do
    run_one "$mode" nginx "$round"
    run_one "$mode" gateway "$round"
  done
  if [ -n "$PERF_DIR" ]; then
    profile_one "$mode" nginx
    profile_one "$mode" gateway
  fi
  # Limits must not have bound: count the gateway's own rejections from its metrics.
  curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$RUN/results/$mode-gateway.metrics" || true
  stop_proxies
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$(dirname "$OUT")"
python3 - "$RUN/results" "$OUT" <<PY
import json, os, re, statistics, sys
results, out = sys.argv[1], sys.argv[2]
modes = "$MODES".split()
rounds = int("$ROUNDS")

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
    return r

report = {
    "started_at": "$STARTED_AT",
    "machine": {"cpus": os.cpu_count(), "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER",
                "kernel": os.uname().release},
    "wrk": {"threads": int("$THREADS"), "connections": int("$CONNECTIONS"),
            "duration": "$DURATION", "warmup": "$WARMUP", "rounds": rounds},
    "modes": {},
}
rows = []
for mode in modes:
    per = {}
    for proxy in ("nginx", "gateway"):
        runs = []
        for rnd in range(1, rounds + 1):
            base = os.path.join(results, f"{mode}-{proxy}-{rnd}")
            r = parse(base + ".wrk")
            cpu, up_cpu = map(float, open(base + ".cpu").read().split())
            r["proxy_cpu_s"] = cpu
            r["upstream_cpu_s"] = up_cpu
            r["proxy_cpu_us_per_request"] = round(cpu * 1e6 / r["requests"], 1) if r["requests"] else None
            r["round"] = rnd
            runs.append(r)
        per[proxy] = {
            "runs": runs,
            "requests_per_sec": round(statistics.mean(x["requests_per_sec"] for x in runs), 1),
            "p99_ms": round(statistics.mean(x["p99_ms"] for x in runs), 3),
            "p50_ms": round(statistics.mean(x["p50_ms"] for x in runs), 3),
            "proxy_cpu_us_per_request": round(statistics.mean(x["proxy_cpu_us_per_request"] for x in runs), 1),
            "non_2xx": sum(x["non_2xx"] for x in runs),
            "socket_errors": sum(x["socket_errors"] for x in runs),
        }
    rejected = {}
    mpath = os.path.join(results, f"{mode}-gateway.metrics")
    if os.path.exists(mpath):
        for line in open(mpath):
            name = line.split("{")[0].split(" ")[0]
            if name in ("gateway_ratelimit_rejected_total", "gateway_limit_conn_rejected_total",
                        "gateway_bulkhead_rejected_total", "gateway_circuit_rejected_total"):
                rejected[name] = rejected.get(name, 0) + float(line.rsplit(" ", 1)[1])
    per["gateway"]["limiter_rejections"] = rejected
    g, n = per["gateway"], per["nginx"]
    per["ratio_gateway_over_nginx"] = {
        "throughput": round(g["requests_per_sec"] / n["requests_per_sec"], 3),
        "p99": round(g["p99_ms"] / n["p99_ms"], 3),
        "cpu_per_request": round(g["proxy_cpu_us_per_request"] / n["proxy_cpu_us_per_request"], 3),
    }
    report["modes"][mode] = per
    rows.append((mode, per))

with open(out, "w") as f:
    json.dump(report, f, indent=2)

print()
print(f"wrk -t{report['wrk']['threads']} -c{report['wrk']['connections']} -d{report['wrk']['duration']} --latency, "
      f"{rounds} round(s) alternating, {os.cpu_count()} CPUs shared by wrk, proxy and upstream; "
      f"load before {report['machine']['load_before']}, after {report['machine']['load_after']}")
hdr = f"{'mode':6} {'proxy':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} {'non-2xx':>8} {'sock err':>8}   runs (req/s | p99 ms)"
print(hdr)
print("-" * len(hdr))
for mode, per in rows:
    for proxy in ("nginx", "gateway"):
        p = per[proxy]
        runs = ", ".join(f"{x['requests_per_sec']:.0f} | {x['p99_ms']:.2f}" for x in p["runs"])
        print(f"{mode:6} {proxy:8} {p['requests_per_sec']:>10.1f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} "
              f"{p['proxy_cpu_us_per_request']:>10.1f} {p['non_2xx']:>8} {p['socket_errors']:>8}   {runs}")
    r = per["ratio_gateway_over_nginx"]
    print(f"{mode:6} {'ratio':8} throughput gateway/nginx = {r['throughput']:.3f} (goal >= 1), "
          f"p99 gateway/nginx = {r['p99']:.3f} (goal <= 1), cpu/request gateway/nginx = {r['cpu_per_request']:.3f}")
print()
print(f"JSON: {out}")
PY
