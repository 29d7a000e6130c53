-- Last step of a cancellation (after the refund): CONFIRMED -> CANCELLED, seats back in stock,
-- a reservation_cancelled notification in the outbox. The hash and history then expire after
-- unsoldTtlSecs (a cancelled reservation is no sale).
-- KEYS: 1 res, 2 ev seats, 3 ev meta, 4 res history, 5 sagas zset, 6 res lease, 7 outbox stream,
--       8 ev confirmed set
-- ARGV: 1 resId, 2 nowMs, 3 nowIso, 4 notification payload (JSON), 5 unsoldTtlSecs
-- Returns {'ok', '0'} | {'missing'} | {'state', status, paymentId}
local res_id = ARGV[1]
local r = redis.call('HMGET', KEYS[1], 'status', 'eventId', 'kind', 'seats', 'quantity', 'epoch',
  'userEmail', 'cancelRequested', 'paymentId')
if not r[1] then return {'missing'} end
if r[1] ~= 'CONFIRMED' or r[8] ~= '1' then return {'state', r[1], r[9] or ''} end
if redis.call('HGET', KEYS[3], 'epoch') == r[6] then
  local released = 0
  if r[3] == 'seats' then
    local sold = 'S|' .. res_id
    for _, s in ipairs(split_csv(r[4])) do
      if redis.call('HGET', KEYS[2], s) == sold then
        redis.call('HSET', KEYS[2], s, 'A')
        released = released + 1
      end
    end
  else
    released = tonumber(r[5])
  end
  if released > 0 then
    redis.call('HINCRBY', KEYS[3], 'sold', -released)
    redis.call('HINCRBY', KEYS[3], 'available', released)
  end
end
redis.call('HSET', KEYS[1], 'status', 'CANCELLED')
push_history(KEYS[4], ARGV[3], 'cancel', 'CANCELLED')
redis.call('SREM', KEYS[8], res_id)
redis.call('ZREM', KEYS[5], res_id)
redis.call('DEL', KEYS[6])
redis.call('XADD', KEYS[7], '*', 'reservationId', res_id, 'eventId', r[2], 'userEmail', r[7],
  'kind', 'reservation_cancelled', 'payload', ARGV[4])
expire_unsold(KEYS[1], KEYS[4], ARGV[5])
return {'ok', '0'}
