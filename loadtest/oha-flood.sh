#!/usr/bin/env bash
# Flood POST /api/reservations through the gateway with oha (https://github.com/hatoo/oha).
#
#   loadtest/oha-flood.sh [BASE_URL]          default http://127.0.0.1:8080 (local stack)
#   loadtest/oha-flood.sh http://127.0.0.1    compose stack
#
# Environment: DURATION (30s), CONNECTIONS (50), RATE (unset = as fast as possible, else -q RATE
# requests/s), EVENT (EVT-002, general admission), JSON=1 (machine-readable summary).
#
# oha sends the same body every time (quantity 1 on a GA event, so each request is a new
# reservation until the event sells out: then 409 sold_out). oha's "Success rate" counts every
# HTTP answer, 429s included: read the "Status code distribution" to see what the gateway let
# through. Install: cargo install oha --locked
set -euo pipefail
URL=${1:-${GATEWAY:-http://127.0.0.1:8080}}
EVENT=${EVENT:-EVT-002}
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
args=(-z "${DURATION:-30s}" -c "${CONNECTIONS:-50}" --no-tui
  -m POST -H 'Content-Type: application/json'
  -d "{\"eventId\":\"$EVENT\",\"quantity\":1,\"userEmail\":\"oha@loadtest.local\",\"amount\":50.0}")
[ -n "${RATE:-}" ] && args+=(-q "$RATE")
[ "${JSON:-0}" = 1 ] && args+=(--output-format json)
exec oha "${args[@]}" "$URL/api/reservations"
