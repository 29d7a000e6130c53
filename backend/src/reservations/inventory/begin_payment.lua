-- Saga step HELD -> PAYMENT_PENDING: the held seats become non-expirable before the charge, and
-- confirmBy = Redis time + budget is recorded (see hold.lua).
-- KEYS: 1 res, 2 ev seats, 3 res history, 4 holds zset
-- ARGV: 1 resId, 2 nowMs, 3 nowIso, 4 confirmBudgetMs
-- Returns {'ok', '0'} | {'missing'} | {'state', status, paymentId} | {'expired'} | {'lost', seat}
local res_id = ARGV[1]
local r = redis.call('HMGET', KEYS[1], 'status', 'eventId', 'kind', 'seats', 'holdDeadline',
  'paymentId')
if not r[1] then return {'missing'} end
if r[1] ~= 'HELD' then return {'state', r[1], r[6] or ''} end
if tonumber(r[5]) <= tonumber(ARGV[2]) then return {'expired'} end
if r[3] == 'seats' then
  local prefix = 'H|' .. res_id .. '|'
  local seats = split_csv(r[4])
  for _, s in ipairs(seats) do
    local st = redis.call('HGET', KEYS[2], s)
    if not st or string.sub(st, 1, #prefix) ~= prefix then return {'lost', s} end
  end
  local pending = 'P|' .. res_id
  for _, s in ipairs(seats) do redis.call('HSET', KEYS[2], s, pending) end
end
redis.call('HSET', KEYS[1], 'status', 'PAYMENT_PENDING',
  'confirmBy', string.format('%d', redis_now_ms() + tonumber(ARGV[4])))
redis.call('ZREM', KEYS[4], r[2] .. '|' .. res_id)
push_history(KEYS[3], ARGV[3], 'payment', 'PAYMENT_PENDING')
return {'ok', '0'}
