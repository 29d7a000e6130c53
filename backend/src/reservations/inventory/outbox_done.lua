-- The outbox worker's end of one delivery round on one stream: records each delivered (or given
-- up) notification on its reservation, then acknowledges and deletes the round's entries, in one
-- call: the marks and the acknowledgement land together or not at all (a crash before this
-- call redelivers the round, which notifications ignores as duplicates).
-- Every key is in the stream's slot group (the caller marks reservations of other groups apart).
-- KEYS: 1 outbox stream, 2.. reservation hashes
-- ARGV: 1 consumer group, 2.. one 'sent'|'failed' per reservation key, then the entry ids
-- Returns the number of reservations marked (one that no longer exists is not recreated).
local marks = #KEYS - 1
local marked = 0
for i = 1, marks do
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    redis.call('HSET', KEYS[i + 1], 'notification', ARGV[i + 1])
    marked = marked + 1
  end
end
-- Entry ids in chunks: unpack() of a very long list would exceed Lua's stack.
local first = marks + 2
while first <= #ARGV do
  local last = math.min(first + 499, #ARGV)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
end
return marked
