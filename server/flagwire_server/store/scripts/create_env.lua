-- Create an environment's meta hash unless it exists.
-- KEYS: 1 meta, 2 flags, 3 segments, 4 changes, 5 audit.  ARGV: 1 epoch, 2 created_at.
-- Returns 1 when created, 0 when it existed.  Leftovers of an earlier environment of the
-- same name whose deletion was interrupted are removed, so a new environment starts empty.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'version', '0', 'epoch', ARGV[1], 'created_at', ARGV[2], 'bytes', '0')
return 1
