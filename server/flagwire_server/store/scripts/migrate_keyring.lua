-- One-time copy of v1's API key ring (P:{keys}:*) to P:sys:{keys}:*.
-- KEYS: 1-3 old records, byhash, version; 4-6 new records, byhash, version (one hash tag).
-- Returns 1 when it copied, 0 when there was nothing to copy or the new ring exists.
-- A copy, not a rename: v1 instances still running in a rolling upgrade keep theirs.
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
redis.call('COPY', KEYS[1], KEYS[4])
if redis.call('TYPE', KEYS[2])['ok'] == 'hash' then redis.call('COPY', KEYS[2], KEYS[5]) end
redis.call('INCR', KEYS[6])
return 1
