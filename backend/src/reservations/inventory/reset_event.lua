-- Creates or resets an event (admin): every seat available, counters zeroed, a new epoch so
-- reservations of the previous incarnation never touch the new inventory. O(seats).
-- KEYS: 1 ev meta, 2 ev seats, 3 ev confirmed set, 4 events set
-- ARGV: 1 eventId, 2 name, 3 kind ('seats'|'ga'), 4 capacity, 5 epoch, 6 seat ids CSV, 7.. seat ids
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'kind', ARGV[3], 'capacity', ARGV[4],
  'available', ARGV[4], 'held', 0, 'sold', 0, 'epoch', ARGV[5], 'seatIds', ARGV[6])
for i = 7, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], 'A') end
redis.call('SADD', KEYS[4], ARGV[1])
return 1
