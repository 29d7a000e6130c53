-- Saga step PAYMENT_PENDING -> CONFIRMED (the charge succeeded), with the outbox entry for the
-- notification written in the same script: an entry exists if and only if the confirmation did.
-- Refused once the saga was abandoned (a failure was decided: settle = 'refund') or its
-- confirmBy instant passed on Redis' clock: a client told a failure never sees a confirmation.
-- The idempotency record (another slot) is finished by the caller afterwards (idem_finish.lua);
-- until then a replay answers from this saga.
-- KEYS: 1 res, 2 ev seats, 3 ev meta, 4 res history, 5 sagas zset, 6 res lease,
--       7 outbox stream, 8 ev confirmed set
-- ARGV: 1 resId, 2 nowIso, 3 paymentId, 4 notification payload (JSON)
-- Returns {'ok', '0'} | {'missing'} | {'state', status, paymentId} | {'abandoned'} |
-- {'too_late'} | {'lost', seat}
local res_id = ARGV[1]
local r = redis.call('HMGET', KEYS[1], 'status', 'eventId', 'kind', 'seats', 'quantity', 'epoch',
  'userEmail', 'paymentId', 'settle', 'confirmBy')
if not r[1] then return {'missing'} end
if r[1] ~= 'PAYMENT_PENDING' then return {'state', r[1], r[8] or ''} end
if r[9] == 'refund' then return {'abandoned'} end
if r[10] and r[10] ~= '' and redis_now_ms() > tonumber(r[10]) then return {'too_late'} end
if redis.call('HGET', KEYS[3], 'epoch') ~= r[6] then return {'lost', ''} end
local n = tonumber(r[5])
if r[3] == 'seats' then
  local pending = 'P|' .. res_id
  local seats = split_csv(r[4])
  for _, s in ipairs(seats) do
    if redis.call('HGET', KEYS[2], s) ~= pending then return {'lost', s} end
  end
  local sold = 'S|' .. res_id
  for _, s in ipairs(seats) do redis.call('HSET', KEYS[2], s, sold) end
end
redis.call('HINCRBY', KEYS[3], 'held', -n)
redis.call('HINCRBY', KEYS[3], 'sold', n)
redis.call('HSET', KEYS[1], 'status', 'CONFIRMED', 'paymentId', ARGV[3])
push_history(KEYS[4], ARGV[2], 'confirm', 'CONFIRMED')
redis.call('XADD', KEYS[7], '*', 'reservationId', res_id, 'eventId', r[2], 'userEmail', r[7],
  'kind', 'reservation_confirmed', 'payload', ARGV[4])
redis.call('SADD', KEYS[8], res_id)
redis.call('ZREM', KEYS[5], res_id)
redis.call('DEL', KEYS[6])
return {'ok', '0'}
