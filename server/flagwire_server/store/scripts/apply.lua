-- Many flag and segment writes of one apply (flags as code): all of them or none.
--
-- KEYS: 1 meta, 2 flags hash, 3 segments hash, 4 changes stream, 5 audit stream,
--       5+i the history list of document i (i = 1..n)
-- ARGV: 1 n, 2 actor, 3 apply name, 4 changes maxlen, 5 history cap, 6 audit maxlen,
--       7 largest snapshot in bytes, 8 audit summary JSON,
--       then 7 per document i at 8+7*(i-1): kind (flag|segment), key, mode (put|delete),
--       version the caller read (0 = absent), new document JSON ("" for delete),
--       message prefix, message suffix
-- Returns {"ok", first env_version, last env_version, commit_ms} or {"noenv"} /
-- {"conflict", i, v} / {"missing", i} / {"corrupt", key} / {"toolarge", bytes}.
--
-- Each document gets an environment version of its own and a change-log entry of its own
-- (<version>-0), in the order given, exactly as n single writes (write.lua) would leave
-- them, so clients apply them as usual; the audit stream gets one entry naming the apply.
-- Every check, for every document, happens before the first write; the only writes that
-- could still fail (XADD with an explicit id) go first and in increasing order, so an
-- error never leaves part of an apply behind.
local n = tonumber(ARGV[1])
local W, H = 7, 8
local expect = {'hash', 'hash', 'hash', 'stream', 'stream'}
for i = 1, 5 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= expect[i] then return {'corrupt', KEYS[i]} end
end
for i = 1, n do
  local t = redis.call('TYPE', KEYS[5 + i])['ok']
  if t ~= 'none' and t ~= 'list' then return {'corrupt', KEYS[5 + i]} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'noenv'} end

local function docs(kind) if kind == 'flag' then return KEYS[2] end return KEYS[3] end
local function entry(k, v) return string.len(k) + string.len(v) + 4 end

local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '')
if not size then
  size = 0
  for _, h in ipairs({KEYS[2], KEYS[3]}) do
    local all = redis.call('HGETALL', h)
    for i = 1, #all, 2 do size = size + entry(all[i], all[i + 1]) end
  end
end

local curs = {}
local newsize = size
for i = 1, n do
  local b = H + W * (i - 1)
  local kind, key, mode = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local cur = redis.call('HGET', docs(kind), key)
  local curver = 0
  if cur then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' and tonumber(doc['version']) then curver = tonumber(doc['version']) end
  end
  if curver ~= tonumber(ARGV[b + 4]) then return {'conflict', i, curver} end
  if mode == 'delete' and not cur then return {'missing', i} end
  if cur then newsize = newsize - entry(key, cur) end
  if mode ~= 'delete' then newsize = newsize + entry(key, ARGV[b + 5]) end
  curs[i] = cur or false
end
if newsize > tonumber(ARGV[7]) and newsize > size then
  return {'toolarge', string.format('%d', newsize)}
end

local first = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1
local now = redis.call('TIME')
local ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))

for i = 1, n do
  local b = H + W * (i - 1)
  local sver = string.format('%d', first + i - 1)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], sver .. '-0',
    'm', ARGV[b + 6] .. sver .. ARGV[b + 7], 't', ms, 'k', ARGV[b + 2], 'a', ARGV[2])
end
local last = string.format('%d', first + n - 1)
redis.call('HSET', KEYS[1], 'version', last, 'bytes', string.format('%d', newsize))
for i = 1, n do
  local b = H + W * (i - 1)
  local key = ARGV[b + 2]
  if ARGV[b + 3] == 'delete' then
    redis.call('HDEL', docs(ARGV[b + 1]), key)
  else
    redis.call('HSET', docs(ARGV[b + 1]), key, ARGV[b + 5])
  end
  if curs[i] then
    redis.call('LPUSH', KEYS[5 + i], curs[i])
    redis.call('LTRIM', KEYS[5 + i], 0, tonumber(ARGV[5]) - 1)
  end
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*',
  'actor', ARGV[2], 'action', 'apply', 'kind', 'apply', 'key', ARGV[3],
  'version', last, 'flag_version', '0', 'before', '', 'after', ARGV[8], 't', ms)
return {'ok', string.format('%d', first), last, ms}
