-- Removes members from an index (a sorted set): a malformed hold entry, or ids of a user's
-- reservations whose keys have expired.
-- KEYS: 1 sorted set   ARGV: members
-- Returns the number removed.
if #ARGV == 0 then return 0 end
return redis.call('ZREM', KEYS[1], unpack(ARGV))
