-- Release a lock only if the caller still holds it (its TTL may have passed and
-- another server may hold it now).
-- KEYS[1] the lock  ARGV[1] owner
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
