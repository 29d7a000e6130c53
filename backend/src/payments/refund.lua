-- Refunds a reservation's charge (idempotent). With nothing charged, records a tombstone so a
-- charge arriving later is refused: a compensated reservation never ends charged.
-- KEYS: 1 the payment (pay:{group}:resId), 2 its slot group's totals (pay:summary:{group})
-- ARGV: 1 resId, 2 nowIso
-- Returns {'refunded', paymentId, amount, userEmail, status, createdAt, refundedAt} |
-- {'tombstone'} (nothing was charged) | {'not_refundable'} (declined)
local p = redis.call('HMGET', KEYS[1], 'status', 'paymentId', 'amount', 'userEmail', 'createdAt',
  'refundedAt')
if not p[1] then
  redis.call('HSET', KEYS[1], 'status', 'tombstone', 'reservationId', ARGV[1],
    'refundedAt', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'refundsBeforeCharge', 1)
  return {'tombstone'}
end
if p[1] == 'tombstone' then return {'tombstone'} end
if p[1] == 'declined' then return {'not_refundable'} end
if p[1] == 'charged' then
  redis.call('HSET', KEYS[1], 'status', 'refunded', 'refundedAt', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'charged', -1)
  redis.call('HINCRBY', KEYS[2], 'refunded', 1)
  redis.call('HINCRBYFLOAT', KEYS[2], 'netAmount', -tonumber(p[3]))
  p[1], p[6] = 'refunded', ARGV[2]
end
return {'refunded', p[2], p[3], p[4], p[1], p[5], p[6] or ''}
