-- Creates the demo events once, only if Redis holds no events (atomic: two replicas starting at
-- once cannot both seed).
-- KEYS: 1 events set, 2 EVT-001 meta, 3 EVT-001 seats, 4 EVT-002 meta
-- ARGV: 1 epoch, 2 EVT-001 seat ids CSV, 3.. EVT-001 seat ids
if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
local n = #ARGV - 2
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[2], 'name', 'Demo concert (numbered seats)', 'kind', 'seats',
  'capacity', n, 'available', n, 'held', 0, 'sold', 0, 'epoch', ARGV[1], 'seatIds', ARGV[2])
for i = 3, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], 'A') end
redis.call('HSET', KEYS[4], 'name', 'Demo festival (general admission)', 'kind', 'ga',
  'capacity', 1000, 'available', 1000, 'held', 0, 'sold', 0, 'epoch', ARGV[1], 'seatIds', '')
redis.call('SADD', KEYS[1], 'EVT-001', 'EVT-002')
return 1
