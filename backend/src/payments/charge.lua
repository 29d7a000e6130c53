-- Charges a reservation once (idempotent on the reservation id), or declines it, and keeps the
-- ledger totals in the same script.
-- KEYS: 1 the payment (pay:{group}:resId), 2 its slot group's totals (pay:summary:{group})
-- ARGV: 1 resId, 2 amount, 3 userEmail, 4 declined ('1'|'0'), 5 new paymentId, 6 nowIso
-- Returns {tag, paymentId, amount, userEmail, status, createdAt, refundedAt} with tag 'created' |
-- 'repeated' | 'declined', or {'mismatch'} (another amount or e-mail), or {'already_refunded',
-- refundedAt} (refunded, or a refund arrived before any charge).
local p = redis.call('HMGET', KEYS[1], 'status', 'paymentId', 'amount', 'userEmail', 'createdAt',
  'refundedAt')
local function view(tag)
  return {tag, p[2], p[3], p[4], p[1], p[5], p[6] or ''}
end
if p[1] == 'tombstone' then return {'already_refunded', p[6] or ''} end
if p[1] then
  if tonumber(p[3]) ~= tonumber(ARGV[2]) or p[4] ~= ARGV[3] then return {'mismatch'} end
  if p[1] == 'charged' then return view('repeated') end
  if p[1] == 'declined' then return view('declined') end
  return {'already_refunded', p[6] or ''}
end
local status = 'charged'
if ARGV[4] == '1' then status = 'declined' end
redis.call('HSET', KEYS[1], 'status', status, 'paymentId', ARGV[5], 'reservationId', ARGV[1],
  'amount', ARGV[2], 'userEmail', ARGV[3], 'createdAt', ARGV[6])
redis.call('HINCRBY', KEYS[2], status, 1)
if status == 'charged' then
  redis.call('HINCRBYFLOAT', KEYS[2], 'netAmount', ARGV[2])
end
p = {status, ARGV[5], ARGV[2], ARGV[3], ARGV[6], false}
if status == 'declined' then return view('declined') end
return view('created')
