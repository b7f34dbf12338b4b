-- Create an environment's meta hash unless it exists.
-- KEYS: 1 meta.  ARGV: 1 epoch, 2 created_at.  Returns 1 when created, 0 when it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', '0', 'epoch', ARGV[1], 'created_at', ARGV[2])
return 1
