-- One cluster-wide limit_req decision (SPEC §10.1): NGINX's ngx_http_limit_req_module arithmetic,
-- atomically, on the store's clock. Ported from gateway/src/limit/req.rs; keep them in step.
--
-- KEYS[i]  state of limit i: the string "<excess> <last>" (milli-requests, store-clock ms), absent
--          for a new key. All KEYS share one hash tag (the limit key), so one slot.
-- ARGV     for each limit i, three numbers: rate (milli-requests/s), burst (milli-requests),
--          dry_run (1 or 0).
-- Returns  { now, rejected (1/0), then per limit: found (1/0), excess, last } where excess and
--          last are the stored values before this request (the caller rebuilds delays, Retry-After
--          and the RateLimit headers from them with the same arithmetic).
--
-- Every limit is looked up first; the request is accounted in every limit only when no
-- enforcing limit rejects it (a dry-run limit that would reject is not accounted). A rejected
-- request changes nothing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local out = { now, 0 }
local looked = {}
local rejected = false
for i = 1, n do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local dry = ARGV[3 * i] == '1'
  local v = redis.call('GET', KEYS[i])
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
  out[2] = 1
  return out
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
    redis.call('SET', KEYS[i], string.format('%d %d', excess, new_last), 'PX', ttl)
  end
end
return out
