-- A consistent read of one environment: version, epoch, every flag and segment.
-- KEYS: 1 meta, 2 flags, 3 segments.  Returns false when the environment does not exist.
local meta = redis.call('HMGET', KEYS[1], 'version', 'epoch')
if not meta[2] then return false end
return {meta[1] or '0', meta[2], redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
