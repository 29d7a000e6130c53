-- Extends a saga lease only if this owner still holds it, and moves the saga's recovery score
-- with it: a saga is due for recovery exactly when its lease has run out, so long-running settles
-- never sit in front of abandoned sagas.
-- KEYS: 1 res lease, 2 sagas zset
-- ARGV: 1 owner, 2 leaseMs, 3 resId, 4 nowMs
-- Returns 1 if renewed, 0 if the lease is gone or someone else's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[4]) + tonumber(ARGV[2]), ARGV[3])
return 1
