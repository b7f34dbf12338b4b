-- The applications of one flag, capped (store/insight.py, MAX_APPS_PER_FLAG).
--
-- KEYS: 1 apps hash (application -> last evaluated ms), 2 overflow HyperLogLog
-- ARGV: 1 cap, 2 expire-at (ms), 3.. application, last ms, application, last ms, ...
-- An application already listed is refreshed; a new one is listed while the hash holds fewer
-- than the cap, else it is added to the overflow HLL (distinct applications not listed).
-- A script, so two servers flushing at once cannot both take the last free place.
-- Returns the number of applications refused.
local cap = tonumber(ARGV[1])
local n = redis.call('HLEN', KEYS[1])
local over = {}
for i = 3, #ARGV, 2 do
  local app = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], app) == 1 then
    redis.call('HSET', KEYS[1], app, ARGV[i + 1])
  elseif n < cap then
    redis.call('HSET', KEYS[1], app, ARGV[i + 1])
    n = n + 1
  else
    over[#over + 1] = app
  end
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
if #over > 0 then
  redis.call('PFADD', KEYS[2], unpack(over))
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return #over
