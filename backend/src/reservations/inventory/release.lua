-- Compensation: HELD or PAYMENT_PENDING -> FAILED or EXPIRED, the seats or capacity back in stock.
-- With requireExpired = '1' (the sweeper) only a HELD reservation past its deadline is released.
-- If the event was reset since the hold (epoch changed), the inventory is left alone. The ended
-- reservation's hash and history expire after unsoldTtlSecs.
-- The idempotency record (another slot) is finished by the caller afterwards (idem_finish.lua).
-- KEYS: 1 res, 2 ev seats, 3 ev meta, 4 res history, 5 sagas zset, 6 res lease, 7 holds zset
-- ARGV: 1 resId, 2 nowMs, 3 nowIso, 4 new status, 5 failCode, 6 requireExpired ('1'|'0'),
--       7 holds member ('<eventId>|<resId>'), 8 unsoldTtlSecs
-- Returns {'ok', released} | {'missing'} | {'state', status, paymentId} | {'not_expired', status}
local res_id = ARGV[1]
local r = redis.call('HMGET', KEYS[1], 'status', 'eventId', 'kind', 'seats', 'quantity', 'epoch',
  'holdDeadline', 'paymentId')
if not r[1] then
  redis.call('ZREM', KEYS[7], ARGV[7])
  redis.call('ZREM', KEYS[5], res_id)
  return {'missing'}
end
if r[1] ~= 'HELD' and r[1] ~= 'PAYMENT_PENDING' then
  redis.call('ZREM', KEYS[7], ARGV[7])
  return {'state', r[1], r[8] or ''}
end
if ARGV[6] == '1' and (r[1] ~= 'HELD' or tonumber(r[7]) > tonumber(ARGV[2])) then
  if r[1] ~= 'HELD' then redis.call('ZREM', KEYS[7], ARGV[7]) end
  return {'not_expired', r[1]}
end
local released = 0
if redis.call('HGET', KEYS[3], 'epoch') == r[6] then
  if r[3] == 'seats' then
    local held_prefix = 'H|' .. res_id .. '|'
    local pending = 'P|' .. res_id
    for _, s in ipairs(split_csv(r[4])) do
      local st = redis.call('HGET', KEYS[2], s)
      if st and (st == pending or string.sub(st, 1, #held_prefix) == held_prefix) then
        redis.call('HSET', KEYS[2], s, 'A')
        released = released + 1
      end
    end
  else
    released = tonumber(r[5])
  end
  if released > 0 then
    redis.call('HINCRBY', KEYS[3], 'held', -released)
    redis.call('HINCRBY', KEYS[3], 'available', released)
  end
end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'failCode', ARGV[5])
local step = 'release'
if ARGV[4] == 'EXPIRED' then step = 'expire' end
push_history(KEYS[4], ARGV[3], step, ARGV[4])
redis.call('ZREM', KEYS[5], res_id)
redis.call('ZREM', KEYS[7], ARGV[7])
redis.call('DEL', KEYS[6])
expire_unsold(KEYS[1], KEYS[4], ARGV[8])
return {'ok', tostring(released)}
