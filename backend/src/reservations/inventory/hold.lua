-- Holds seats (numbered) or capacity (general admission) and creates the saga, atomically.
-- Validates everything before writing anything; O(seats requested). Every key is in the event's
-- slot group (single-slot on Redis Cluster); the idempotency record lives on its own slot and is
-- claimed before this script runs (idem_claim.lua), so here it is only named in the saga.
-- With a confirm budget (ARGV 14) the saga goes straight to PAYMENT_PENDING (the charge follows
-- at once: one round trip instead of two, and the seats are never expirable under a charge) and
-- records confirmBy = Redis time + budget: after that instant confirm.lua refuses, so a request
-- that answered a failure at its deadline can never be followed by a confirmation.
-- With notAfter (ARGV 13) nothing is held once Redis' clock has passed it: a hold delayed past
-- its request's deadline (a frozen shard, a slow network) never lands after the request gave up,
-- which is what lets a stale idempotency claim be taken over safely.
-- KEYS: 1 ev meta, 2 ev seats, 3 res, 4 res history, 5 res lease, 6 holds zset, 7 sagas zset,
--       8 user index zset
-- ARGV: 1 resId, 2 eventId, 3 mode ('seats'|'ga'), 4 quantity, 5 amount, 6 userEmail, 7 nowMs,
--       8 nowIso, 9 holdTtlMs, 10 leaseMs, 11 owner, 12 idempotency record key ('' = none),
--       13 notAfterMs ('' = none), 14 confirmBudgetMs ('' = stay HELD), 15.. seat ids
-- Returns {'ok', status} | {'rejected', code, detail} | {'expired', holderResId} (an expired hold
-- blocks a seat: expire it, then retry) | {'too_late'}
local FIRST_SEAT = 15
local res_id, event_id, mode = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[7])
-- Redis' clock, read once (for notAfter and confirmBy).
local redis_now = nil
if ARGV[13] ~= '' or ARGV[14] ~= '' then redis_now = redis_now_ms() end
if ARGV[13] ~= '' and redis_now > tonumber(ARGV[13]) then return {'too_late'} end
local function reject(code, detail)
  return {'rejected', code, detail}
end
local meta = redis.call('HMGET', KEYS[1], 'kind', 'available', 'epoch')
if not meta[1] then return reject('event_not_found', event_id) end
local direct = ARGV[14] ~= ''
local deadline = now + tonumber(ARGV[9])
local n
local seat_list = ''
if mode == 'ga' then
  if meta[1] ~= 'ga' then return reject('wrong_kind', 'quantity') end
  n = tonumber(ARGV[4])
  if tonumber(meta[2]) < n then return reject('sold_out', event_id) end
else
  if meta[1] ~= 'seats' then return reject('wrong_kind', 'seatId') end
  n = #ARGV - FIRST_SEAT + 1
  if n < 1 then return reject('invalid_seats', '') end
  local seen = {}
  for i = FIRST_SEAT, #ARGV do
    local seat = ARGV[i]
    if seen[seat] then return reject('duplicate_seat', seat) end
    seen[seat] = true
    local st = redis.call('HGET', KEYS[2], seat)
    if not st then return reject('seat_not_found', seat) end
    if st ~= 'A' then
      local holder, until_ms = string.match(st, '^H|([^|]+)|(%d+)$')
      if holder and tonumber(until_ms) <= now then return {'expired', holder} end
      return reject('seat_unavailable', seat)
    end
  end
  local state = 'H|' .. res_id .. '|' .. string.format('%d', deadline)
  if direct then state = 'P|' .. res_id end
  for i = FIRST_SEAT, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], state) end
  seat_list = table.concat(ARGV, ',', FIRST_SEAT, #ARGV)
end
redis.call('HINCRBY', KEYS[1], 'available', -n)
redis.call('HINCRBY', KEYS[1], 'held', n)
local status, confirm_by = 'HELD', ''
if direct then
  status = 'PAYMENT_PENDING'
  confirm_by = string.format('%d', redis_now + tonumber(ARGV[14]))
end
redis.call('HSET', KEYS[3],
  'id', res_id, 'status', status, 'eventId', event_id, 'kind', mode, 'seats', seat_list,
  'quantity', n, 'amount', ARGV[5], 'userEmail', ARGV[6], 'paymentId', '',
  'notification', 'queued', 'createdAt', ARGV[8], 'createdMs', ARGV[7],
  'holdDeadline', string.format('%d', deadline), 'epoch', meta[3] or '', 'idemKey', ARGV[12],
  'failCode', '', 'cancelRequested', '0', 'confirmBy', confirm_by)
if direct then
  push_history(KEYS[4], ARGV[8], 'hold', 'HELD', 'payment', 'PAYMENT_PENDING')
else
  push_history(KEYS[4], ARGV[8], 'hold', 'HELD')
  redis.call('ZADD', KEYS[6], deadline, event_id .. '|' .. res_id)
end
redis.call('SET', KEYS[5], ARGV[11], 'PX', ARGV[10])
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[10]), res_id)
redis.call('ZADD', KEYS[8], now, res_id)
return {'ok', status}
