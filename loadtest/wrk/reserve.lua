-- wrk script: POST /api/reservations with a distinct userEmail (and seat) per request, and a
-- status summary at the end so 429s (rate limited) are visible next to 201s.
--
--   wrk -t2 -c32 -d30s --latency -s loadtest/wrk/reserve.lua http://127.0.0.1:8080
--
-- Environment:
--   MODE=ga     (default) general admission: {"eventId":EVENT,"quantity":1}  EVENT default EVT-002
--   MODE=seats  numbered seats cycling A1..J10:  {"eventId":EVENT,"seatId":...} EVENT default EVT-001
--   EVENT=...   event id;  AMOUNT=50.0  amount charged
--   XFF=1       send X-Forwarded-For 10.<thread>.<n>.<n> (only honoured when the gateway trusts the
--               peer, see client.trusted_proxies)

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  mode = os.getenv("MODE") or "ga"
  event = os.getenv("EVENT") or (mode == "seats" and "EVT-001" or "EVT-002")
  amount = os.getenv("AMOUNT") or "50.0"
  xff = os.getenv("XFF") == "1"
  run = tostring(os.time())
end

local rows = { "A", "B", "C", "D", "E", "F", "G", "H", "I", "J" }

function request()
  counter = counter + 1
  local email = string.format("wrk-%s-%d-%d@loadtest.local", run, id, counter)
  local body
  if mode == "seats" then
    -- Threads start at different seats so they collide only after a full cycle.
    local n = (counter - 1 + (id - 1) * 37) % 100
    local seat = rows[math.floor(n / 10) + 1] .. tostring(n % 10 + 1)
    body = string.format('{"eventId":"%s","seatId":"%s","userEmail":"%s","amount":%s}',
      event, seat, email, amount)
  else
    body = string.format('{"eventId":"%s","quantity":1,"userEmail":"%s","amount":%s}',
      event, email, amount)
  end
  local headers = { ["Content-Type"] = "application/json" }
  if xff then
    headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", id % 256,
      math.floor(counter / 256) % 256, counter % 256)
  end
  return wrk.format("POST", "/api/reservations", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals, codes, total = {}, {}, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for code, n in pairs(s) do
      if totals[code] == nil then table.insert(codes, code) end
      totals[code] = (totals[code] or 0) + n
      total = total + n
    end
  end
  table.sort(codes)
  local secs = summary.duration / 1e6
  io.write("------------------------------------------------------------\n")
  io.write("Status codes (wrk counts every one of these in Requests/sec):\n")
  for _, code in ipairs(codes) do
    local label = ""
    if code == 201 then label = "  reserved"
    elseif code == 409 then label = "  seat taken / sold out"
    elseif code == 429 then label = "  rate limited by the gateway"
    elseif code == 503 then label = "  shed (bulkhead, breaker, inventory down)"
    end
    io.write(string.format("  %d: %8d  (%5.1f%%, %8.1f/s)%s\n", code, totals[code],
      100 * totals[code] / math.max(total, 1), totals[code] / math.max(secs, 1e-9), label))
  end
  local ok = 0
  for _, code in ipairs(codes) do
    if code >= 200 and code < 300 then ok = ok + totals[code] end
  end
  io.write(string.format("2xx: %d of %d (%.1f/s); socket errors: connect %d read %d write %d timeout %d\n",
    ok, total, ok / math.max(secs, 1e-9), summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
