-- Merge client sketches into one day's distinct-context HyperLogLog (store/insight.py).
--
-- KEYS: 1 the day's HyperLogLog, 2 a scratch key under the same hash tag
-- ARGV: Redis HyperLogLog strings (store/hll.py builds them from sketch registers)
-- Each string is set in the scratch key and PFMERGEd into KEYS[1]; the scratch key is deleted.
-- A script, so no other client sees or takes the scratch key between the steps.  Returns the
-- number of strings Redis refused (none, unless the encoding was built wrong).
local refused = 0
for i = 1, #ARGV do
  redis.call('SET', KEYS[2], ARGV[i])
  local ok = redis.pcall('PFMERGE', KEYS[1], KEYS[2])
  if type(ok) == 'table' and ok.err then
    refused = refused + 1
  end
end
redis.call('DEL', KEYS[2])
return refused
