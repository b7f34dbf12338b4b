-- Claim due scheduled changes for one server: a lease per change, so exactly one
-- server of a fleet executes it.  A lease whose time has passed (its server died
-- or stalled) may be taken over; the runner then checks whether the write was
-- already made before making it (see release/scheduler.py).
-- KEYS[1] P:{env}:schedule:due   ZSET id -> due ms
-- KEYS[2] P:{env}:schedule:lease HASH id -> "owner until_ms"
-- ARGV[1] now (ms)  ARGV[2] owner  ARGV[3] lease (ms)  ARGV[4] claim at most this many
-- Returns the ids claimed, in due order.  Small claims let the servers that woke up
-- for the same due time share a burst instead of one of them taking it all.
local now = tonumber(ARGV[1])
local most = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 20 * most + 100)
local claimed = {}
for _, id in ipairs(due) do
  if #claimed >= most then break end
  local lease = redis.call('HGET', KEYS[2], id)
  local free = true
  if lease then
    local untilms = tonumber(string.match(lease, ' (%d+)$'))
    free = untilms == nil or untilms <= now
  end
  if free then
    redis.call('HSET', KEYS[2], id, ARGV[2] .. ' ' .. tostring(now + tonumber(ARGV[3])))
    table.insert(claimed, id)
  end
end
return claimed
