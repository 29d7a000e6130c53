-- Recovery's claim on a due saga: takes its lease if free. Either way the saga's score moves to
-- when it may be due again (its lease's end), so the next page of due sagas holds other sagas.
-- A saga with nothing left to do leaves the index.
-- KEYS: 1 res, 2 res lease, 3 sagas zset
-- ARGV: 1 resId, 2 owner, 3 leaseMs, 4 nowMs
-- Returns {'claimed'} | {'busy'} | {'gone'}
local r = redis.call('HMGET', KEYS[1], 'status', 'cancelRequested')
local open = r[1] == 'HELD' or r[1] == 'PAYMENT_PENDING' or (r[1] == 'CONFIRMED' and r[2] == '1')
if not open then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'gone'}
end
local now, lease = tonumber(ARGV[4]), tonumber(ARGV[3])
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', lease) then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[1])
  return {'claimed'}
end
local left = redis.call('PTTL', KEYS[2])
if left < 0 then left = lease end
redis.call('ZADD', KEYS[3], now + left, ARGV[1])
return {'busy'}
