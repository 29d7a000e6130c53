-- The saga's "never confirm" decision, written before a failure is answered while the charge's
-- outcome is still unknown: PAYMENT_PENDING stays PAYMENT_PENDING with settle = 'refund', which
-- confirm.lua refuses and recovery settles by refunding, then releasing.
-- KEYS: 1 res
-- ARGV: (none)
-- Returns {'ok', '0'} | {'missing'} | {'state', status, paymentId}
local r = redis.call('HMGET', KEYS[1], 'status', 'paymentId')
if not r[1] then return {'missing'} end
if r[1] ~= 'PAYMENT_PENDING' then return {'state', r[1], r[2] or ''} end
redis.call('HSET', KEYS[1], 'settle', 'refund')
return {'ok', '0'}
