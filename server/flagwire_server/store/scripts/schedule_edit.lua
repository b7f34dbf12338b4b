-- Edit or cancel a scheduled change that has not started.
-- KEYS[1] P:{env}:schedule  KEYS[2] P:{env}:schedule:due  KEYS[3] P:{env}:schedule:lease
-- ARGV[1] id  ARGV[2] the new record (JSON)  ARGV[3] new due ms ("" cancels)  ARGV[4] now ms
-- Returns "ok", "missing", "final" (already executed or cancelled) or "running".
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 'missing'
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 'final'
end
local lease = redis.call('HGET', KEYS[3], ARGV[1])
if lease then
  local untilms = tonumber(string.match(lease, ' (%d+)$'))
  if untilms and untilms > tonumber(ARGV[4]) then
    return 'running'
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 'ok'
