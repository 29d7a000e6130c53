-- Writes the outcome of the request that claimed an Idempotency-Key (see idem_claim.lua): only
-- if the record is still running for this reservation.
-- KEYS: 1 idempotency record
-- ARGV: 1 resId, 2 ttlSecs, 3 HTTP status ('' for a failure), 4 body, 5 error code, 6 detail
-- Returns 1 if written, 0 if the record is not (or no longer) this reservation's running claim.
local rec = redis.call('HMGET', KEYS[1], 'state', 'resId')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'body', ARGV[4], 'err', ARGV[5],
  'detail', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
