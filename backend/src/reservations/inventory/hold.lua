-- Holds seats (numbered) or capacity (general admission) and creates the saga, atomically.
-- Validates everything before writing anything; O(seats requested).
-- KEYS: 1 ev meta, 2 ev seats, 3 res, 4 res history, 5 res lease, 6 holds zset, 7 sagas zset,
--       8 user index zset, [9 idempotency record]
-- ARGV: 1 resId, 2 eventId, 3 mode ('seats'|'ga'), 4 quantity, 5 amount, 6 userEmail, 7 nowMs,
--       8 nowIso, 9 holdTtlMs, 10 leaseMs, 11 owner, 12 fingerprint, 13 idemTtlSecs,
--       14.. seat ids (mode 'seats')
-- Returns {'ok'} | {'err', code, detail} | {'expired', holderResId} (an expired hold blocks a
-- seat: expire it, then retry) | {'idem_reused'} | {'idem', state, resId, err, detail, status, body}
local res_id, event_id, mode = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(ARGV[7])
local idem = KEYS[9]
if idem then
  local rec = redis.call('HMGET', idem, 'fp', 'state', 'resId', 'err', 'detail', 'status', 'body')
  if rec[1] then
    if rec[1] ~= ARGV[12] then return {'idem_reused'} end
    return {'idem', rec[2] or '', rec[3] or '', rec[4] or '', rec[5] or '', rec[6] or '', rec[7] or ''}
  end
end
local function fail(code, detail)
  if idem then
    redis.call('HSET', idem, 'fp', ARGV[12], 'state', 'done', 'err', code, 'detail', detail)
    redis.call('EXPIRE', idem, ARGV[13])
  end
  return {'err', code, detail}
end
local meta = redis.call('HMGET', KEYS[1], 'kind', 'available', 'epoch')
if not meta[1] then return fail('event_not_found', event_id) end
local deadline = now + tonumber(ARGV[9])
local n
local seat_list = ''
if mode == 'ga' then
  if meta[1] ~= 'ga' then return fail('wrong_kind', 'quantity') end
  n = tonumber(ARGV[4])
  if tonumber(meta[2]) < n then return fail('sold_out', event_id) end
else
  if meta[1] ~= 'seats' then return fail('wrong_kind', 'seatId') end
  n = #ARGV - 13
  if n < 1 then return fail('invalid_seats', '') end
  local seen = {}
  for i = 14, #ARGV do
    local seat = ARGV[i]
    if seen[seat] then return fail('duplicate_seat', seat) end
    seen[seat] = true
    local st = redis.call('HGET', KEYS[2], seat)
    if not st then return fail('seat_not_found', seat) end
    if st ~= 'A' then
      local holder, until_ms = string.match(st, '^H|([^|]+)|(%d+)$')
      if holder and tonumber(until_ms) <= now then return {'expired', holder} end
      return fail('seat_unavailable', seat)
    end
  end
  local held = 'H|' .. res_id .. '|' .. string.format('%d', deadline)
  for i = 14, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], held) end
  seat_list = table.concat(ARGV, ',', 14, #ARGV)
end
redis.call('HINCRBY', KEYS[1], 'available', -n)
redis.call('HINCRBY', KEYS[1], 'held', n)
redis.call('HSET', KEYS[3],
  'id', res_id, 'status', 'HELD', 'eventId', event_id, 'kind', mode, 'seats', seat_list,
  'quantity', n, 'amount', ARGV[5], 'userEmail', ARGV[6], 'paymentId', '',
  'notification', 'queued', 'createdAt', ARGV[8], 'createdMs', ARGV[7],
  'holdDeadline', string.format('%d', deadline), 'epoch', meta[3] or '', 'idemKey', idem or '',
  'failCode', '', 'cancelRequested', '0')
push_history(KEYS[4], 'hold', 'HELD', ARGV[8])
redis.call('SET', KEYS[5], ARGV[11], 'PX', ARGV[10])
redis.call('ZADD', KEYS[6], deadline, event_id .. '|' .. res_id)
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[10]), res_id)
redis.call('ZADD', KEYS[8], now, res_id)
if idem then
  redis.call('HSET', idem, 'fp', ARGV[12], 'state', 'running', 'resId', res_id)
  redis.call('EXPIRE', idem, ARGV[13])
end
return {'ok'}
