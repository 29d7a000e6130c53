-- The outbox worker's result for one reservation: 'sent' or 'failed', only if the reservation
-- still exists (an expired one is not recreated as a stub).
-- KEYS: 1 res   ARGV: 1 'sent'|'failed'
-- Returns 1 if marked, 0 if the reservation is gone.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'notification', ARGV[1])
  return 1
end
return 0
