#!/usr/bin/env bash
# Flood POST /api/reservations through the gateway with wrk (distinct userEmail per request) and
# print a status summary (201 vs 409 vs 429) after wrk's own report.
#
#   loadtest/wrk-flood.sh [BASE_URL]          default http://127.0.0.1:8080 (local stack)
#   loadtest/wrk-flood.sh http://127.0.0.1    compose stack
#
# Environment: DURATION (30s), THREADS (2), CONNECTIONS (32), MODE (ga|seats), EVENT, XFF=1
# (see wrk/reserve.lua). wrk's "Requests/sec" counts 429s too: read the status summary.
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
URL=${1:-${GATEWAY:-http://127.0.0.1:8080}}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
export MODE=${MODE:-ga}
exec wrk -t"${THREADS:-2}" -c"${CONNECTIONS:-32}" -d"${DURATION:-30s}" --latency \
  -s "$DIR/wrk/reserve.lua" "$URL"
