-- Record the outcome of an execution, only while the caller still holds the lease
-- (a server whose lease was taken over must not overwrite its successor's result).
-- KEYS[1] P:{env}:schedule  KEYS[2] P:{env}:schedule:due  KEYS[3] P:{env}:schedule:lease
-- ARGV[1] id  ARGV[2] owner  ARGV[3] the final record (JSON)
-- Returns 1 when recorded, 0 when the lease belongs to another server.
local lease = redis.call('HGET', KEYS[3], ARGV[1])
if not lease or string.sub(lease, 1, string.len(ARGV[2]) + 1) ~= ARGV[2] .. ' ' then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
