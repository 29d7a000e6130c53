-- Extends a saga lease only if this owner still holds it.
-- KEYS: 1 res lease   ARGV: 1 owner, 2 leaseMs
-- Returns 1 if renewed, 0 if the lease is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
