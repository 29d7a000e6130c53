-- Cluster-wide limit_req decisions (SPEC §10.1): NGINX's ngx_http_limit_req_module arithmetic,
-- atomically, on the store's clock. Ported from gateway/src/limit/req.rs; keep them in step.
--
-- One call decides a batch of requests, in order, as if they had arrived one after the other
-- within the same store-clock millisecond: the gateway sends the decisions that queued up while
-- its previous call was on the wire (limit/store.rs), so a busy gateway pays one script call,
-- one TIME and one round trip for many requests. On Redis Cluster every key of a batch is in one
-- slot (a request's keys share its limit key as hash tag; a batch is one slot's requests).
--
-- KEYS     the state of each limit of each decision, in order: the string "<excess> <last>"
--          (milli-requests, store-clock ms), absent for a new key.
-- ARGV[1]  the number of decisions D; then for each decision: its number of limits n, and for
--          each of its limits three numbers: rate (milli-requests/s), burst (milli-requests),
--          dry_run (1 or 0). Its n keys are the next n of KEYS.
-- Returns  { now, then for each decision: rejected (1/0), then per limit: found (1/0), excess,
--          last } where excess and last are the stored values before that request (the caller
--          rebuilds delays, Retry-After and the RateLimit headers from them with the same
--          arithmetic).
--
-- Within a decision every limit is looked up first; the request is accounted in every limit only
-- when no enforcing limit rejects it (a dry-run limit that would reject is not accounted). A
-- rejected request changes nothing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = { now }

-- Decides one request whose limits are KEYS[k0 + 1 .. k0 + n], with their numbers from
-- ARGV[a0 + 1 ..]; appends its answer to `out`.
local function decide(k0, a0, n)
  local looked = {}
  local rejected = false
  local at = #out + 1
  out[at] = 0
  for i = 1, n do
    local rate = tonumber(ARGV[a0 + 3 * i - 2])
    local burst = tonumber(ARGV[a0 + 3 * i - 1])
    local dry = ARGV[a0 + 3 * i] == '1'
    local v = redis.call('GET', KEYS[k0 + i])
    local found, stored_excess, last, ms, excess = 0, 0, now, 0, 0
    if v then
      local sp = string.find(v, ' ', 1, true)
      stored_excess = tonumber(string.sub(v, 1, sp - 1))
      last = tonumber(string.sub(v, sp + 1))
      found = 1
      ms = now - last
      if ms < -60000 then
        ms = 1
      elseif ms < 0 then
        ms = 0
      end
      excess = stored_excess + 1000 - math.floor(rate * ms / 1000)
      if excess < 0 then
        excess = 0
      end
    end
    if excess > burst and not dry then
      rejected = true
    end
    looked[i] = { found, stored_excess, last, ms, excess, rate, burst }
    out[#out + 1] = found
    out[#out + 1] = stored_excess
    out[#out + 1] = last
  end
  if rejected then
    out[at] = 1
    return
  end
  for i = 1, n do
    local l = looked[i]
    local found, last, ms, excess, rate, burst = l[1], l[3], l[4], l[5], l[6], l[7]
    if excess <= burst then
      local new_last = now
      if found == 1 and ms == 0 then
        new_last = last
      end
      if found == 0 then
        excess = 0
      end
      -- Kept until the excess has fully leaked (then a missing key decides like a stored one),
      -- plus a second of margin.
      local ttl = math.ceil((excess + 1000) * 1000 / rate) + 1000
      redis.call('SET', KEYS[k0 + i], string.format('%d %d', excess, new_last), 'PX', ttl)
    end
  end
end

local k0, a = 0, 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  decide(k0, a, n)
  k0 = k0 + n
  a = a + 1 + 3 * n
end
return out
