-- Claims an Idempotency-Key for one reservation, or reports what the key already holds. Runs on
-- the record's own slot, before hold.lua on the event's slot (they may be on different shards of
-- a Redis Cluster, so the two cannot be one script). The protocol, SPEC §5 across shards:
--   1. claim (this script): a new key is marked running for a fresh reservation id;
--   2. hold.lua with that id and notAfter = the request's deadline;
--   3. the outcome is written back with idem_finish.lua (rejection, confirmation, release).
-- A retry that finds the key running answers from the saga named in it (409 while it runs). If
-- no such saga exists and the claim is older than the request deadline plus a margin, the first
-- request died between 1 and 2 (or its rejection was never written): hold.lua refuses after
-- notAfter, so that saga can never appear any more, and the retry takes the claim over
-- (ARGV 5). One charge at most: charges are keyed by reservation id, and a key names one
-- reservation at a time, a new one only when the old one surely does not exist.
-- KEYS: 1 idempotency record
-- ARGV: 1 fingerprint, 2 resId, 3 ttlSecs, 4 staleAfterMs, 5 take over from resId ('' = none)
-- Returns {'claimed'} | {'reused'} | {'record', state, resId, err, detail, status, body, stale}
local rec = redis.call('HMGET', KEYS[1], 'fp', 'state', 'resId', 'err', 'detail', 'status',
  'body', 'claimedMs')
local now = redis_now_ms()
local function claim()
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running', 'resId', ARGV[2],
    'claimedMs', string.format('%d', now))
  redis.call('HDEL', KEYS[1], 'err', 'detail', 'status', 'body')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if not rec[1] then return claim() end
if rec[1] ~= ARGV[1] then return {'reused'} end
local running = rec[2] == 'running'
if running and rec[3] == ARGV[2] then return {'claimed'} end
local stale = running and now - tonumber(rec[8] or '0') > tonumber(ARGV[4])
if stale and ARGV[5] ~= '' and rec[3] == ARGV[5] then return claim() end
local flag = '0'
if stale then flag = '1' end
return {'record', rec[2] or '', rec[3] or '', rec[4] or '', rec[5] or '', rec[6] or '',
  rec[7] or '', flag}
