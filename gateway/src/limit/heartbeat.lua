-- Gateway liveness (SPEC §10.1): KEYS[1] is a sorted set of gateway ids scored by the store-clock
-- ms of their last heartbeat. ARGV[1] = this gateway's id, ARGV[2] = how long (ms) a gateway
-- counts as live after its last heartbeat. Returns the number of live gateways.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
