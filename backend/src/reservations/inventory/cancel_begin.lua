-- First step of a cancellation: a CONFIRMED reservation is marked cancelRequested under a lease
-- and registered as an unfinished saga, so a crash between the refund and the release is finished
-- by recovery.
-- KEYS: 1 res, 2 res lease, 3 sagas zset
-- ARGV: 1 resId, 2 nowMs, 3 owner, 4 leaseMs
-- Returns {'ok', '0'} | {'missing'} | {'state', status, paymentId} | {'busy'}
local r = redis.call('HMGET', KEYS[1], 'status', 'paymentId')
if not r[1] then return {'missing'} end
if r[1] ~= 'CONFIRMED' then return {'state', r[1], r[2] or ''} end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return {'busy'} end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[4]), ARGV[1])
return {'ok', '0'}
