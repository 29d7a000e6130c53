-- Helpers shared by every inventory script (prepended with concat!/include_str!).
-- Seat states in ev:{E}:seats: 'A' available, 'H|<res>|<deadlineMs>' held (expirable),
-- 'P|<res>' payment pending (never expires), 'S|<res>' sold.
-- Replies are arrays whose first element is a tag the Rust wrapper matches exactly; any other
-- reply is an error there, never a decision.

-- Appends saga history entries {step, status, at}, in one command: push_history(key, at, step,
-- status[, step, status ...]).
local function push_history(key, at, ...)
  local steps = {...}
  local entries = {}
  for i = 1, #steps, 2 do
    entries[#entries + 1] = cjson.encode({step = steps[i], status = steps[i + 1], at = at})
  end
  redis.call('RPUSH', key, unpack(entries))
end

-- Splits a comma-separated list ('' gives an empty table).
local function split_csv(s)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  return out
end

-- Redis' own clock in ms: one clock for every replica's deadlines (Redis 7 replicates scripts
-- by effects, so reading TIME before writing is allowed).
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A reservation that ended without a sale keeps its hash and history only this long (seconds;
-- '0' keeps them): a flood of failed attempts must not grow Redis for ever.
local function expire_unsold(res_key, hist_key, ttl)
  local secs = tonumber(ttl)
  if secs and secs > 0 then
    redis.call('EXPIRE', res_key, secs)
    redis.call('EXPIRE', hist_key, secs)
  end
end
