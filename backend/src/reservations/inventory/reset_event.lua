-- Creates or resets an event (admin): every seat available, counters zeroed, a new epoch so
-- reservations of the previous incarnation never touch the new inventory. O(seats). With
-- onlyIfAbsent = '1' (demo seeding) an existing event is left alone, so two replicas seeding at
-- once create it once.
-- KEYS: 1 ev meta, 2 ev seats, 3 ev confirmed set, 4 events set of the event's group
-- ARGV: 1 eventId, 2 name, 3 kind ('seats'|'ga'), 4 capacity, 5 epoch, 6 seat ids CSV,
--       7 onlyIfAbsent ('1'|'0'), 8.. seat ids
-- Returns 1 if written, 0 if the event existed and onlyIfAbsent was set.
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'kind', ARGV[3], 'capacity', ARGV[4],
  'available', ARGV[4], 'held', 0, 'sold', 0, 'epoch', ARGV[5], 'seatIds', ARGV[6])
for i = 8, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], 'A') end
redis.call('SADD', KEYS[4], ARGV[1])
return 1
