-- Helpers shared by every inventory script (prepended with concat!/include_str!).
-- Seat states in ev:{E}:seats: 'A' available, 'H|<res>|<deadlineMs>' held (expirable),
-- 'P|<res>' payment pending (never expires), 'S|<res>' sold.

-- Appends one saga history entry {step, status, at}.
local function push_history(key, step, status, at)
  redis.call('RPUSH', key, cjson.encode({step = step, status = status, at = at}))
end

-- Splits a comma-separated list ('' gives an empty table).
local function split_csv(s)
  local out = {}
  if s == nil or s == false or s == '' then return out end
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  return out
end

-- Marks a running idempotency record of this reservation as finished with an error code.
local function idem_finish_err(key, res_id, code, ttl)
  if not key then return end
  local rec = redis.call('HMGET', key, 'state', 'resId')
  if rec[1] == 'running' and rec[2] == res_id then
    redis.call('HSET', key, 'state', 'done', 'err', code, 'detail', '')
    redis.call('EXPIRE', key, ttl)
  end
end
