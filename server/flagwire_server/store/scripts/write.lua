-- One flag or segment write: the whole change or nothing.
--
-- KEYS: 1 meta, 2 docs hash (flags|segments), 3 changes stream, 4 history list, 5 audit stream,
--       6 the other docs hash (segments|flags)
-- ARGV: 1 key, 2 mode (create|replace|update|delete), 3 flag version the caller read (0 = absent),
--       4 new document JSON ("" for delete), 5 message prefix, 6 message suffix, 7 actor,
--       8 audit action, 9 kind, 10 new flag version, 11 changes maxlen, 12 history cap,
--       13 audit maxlen, 14 largest snapshot in bytes (the client's frame limit, less headroom),
--       15 SHA-1 hex of the stored document the caller built on ("" = absent),
--       16 archive step ("" none; "save": a delete keeps the deleted document in KEYS[7];
--       "take": a write happens only if KEYS[7] holds exactly ARGV[17] under the key, and
--       forgets it), 17 the archived document "take" expects
-- KEYS 7 (only with an archive step): the archive hash (store/archive.py), so that archiving
--       and restoring are one script each: no reader ever sees a flag both live and archived,
--       or neither.
-- Returns {"ok", env_version, commit_ms} or {"noenv"} / {"stale", v, stored document or ""} /
-- {"exists", v} / {"missing", 0} / {"conflict", v} / {"corrupt", key} / {"toolarge", bytes} /
-- {"unarchived"}.
--
-- "stale": the caller built on other bytes than are stored (its cache of the document is old,
-- see store/write.py); nothing is written and the stored document comes back so the caller
-- can build again without another round trip.
--
-- meta.bytes is the size of every document in a snapshot (key, document, quoting), kept with
-- the version so the check costs nothing per write; a store without it (v1) counts it once.
-- A write that would grow the snapshot past the limit is refused; one that shrinks it is not,
-- so an environment already over the limit can be repaired.  Every check happens before the first write, and the
-- only write that could still fail (XADD with an explicit id) goes first, so an error never
-- leaves half a change behind.
local expect = {meta = 'hash', docs = 'hash', changes = 'stream', history = 'list', audit = 'stream',
  other = 'hash'}
local names = {'meta', 'docs', 'changes', 'history', 'audit', 'other'}
local archive = ARGV[16] or ''
if archive ~= '' then
  expect['archive'] = 'hash'
  names[7] = 'archive'
end
for i, name in ipairs(names) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= expect[name] then return {'corrupt', KEYS[i]} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'noenv'} end

local cur = redis.call('HGET', KEYS[2], ARGV[1])
local curver = 0
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and tonumber(doc['version']) then curver = tonumber(doc['version']) end
end
if (cur and redis.sha1hex(cur) or '') ~= ARGV[15] then return {'stale', curver, cur or ''} end
local mode = ARGV[2]
if mode == 'create' and cur then return {'exists', curver} end
if (mode == 'update' or mode == 'delete') and not cur then return {'missing', 0} end
if curver ~= tonumber(ARGV[3]) then return {'conflict', curver} end
if archive == 'take' and redis.call('HGET', KEYS[7], ARGV[1]) ~= ARGV[17] then
  return {'unarchived'}
end

local function entry(k, v) return string.len(k) + string.len(v) + 4 end
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '')
if not size then
  size = 0
  for _, h in ipairs({KEYS[2], KEYS[6]}) do
    local all = redis.call('HGETALL', h)
    for i = 1, #all, 2 do size = size + entry(all[i], all[i + 1]) end
  end
end
local newsize = size
if cur then newsize = newsize - entry(ARGV[1], cur) end
if mode ~= 'delete' then newsize = newsize + entry(ARGV[1], ARGV[4]) end
if newsize > tonumber(ARGV[14]) and newsize > size then
  return {'toolarge', string.format('%d', newsize)}
end

local ver = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1
local sver = string.format('%d', ver)
local now = redis.call('TIME')
local ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))

redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], sver .. '-0',
  'm', ARGV[5] .. sver .. ARGV[6], 't', ms, 'k', ARGV[1], 'a', ARGV[7])
redis.call('HSET', KEYS[1], 'version', sver, 'bytes', string.format('%d', newsize))
if mode == 'delete' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
if archive == 'save' then
  redis.call('HSET', KEYS[7], ARGV[1], cur)
elseif archive == 'take' then
  redis.call('HDEL', KEYS[7], ARGV[1])
end
if cur then
  redis.call('LPUSH', KEYS[4], cur)
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[12]) - 1)
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[13], '*',
  'actor', ARGV[7], 'action', ARGV[8], 'kind', ARGV[9], 'key', ARGV[1],
  'version', sver, 'flag_version', ARGV[10], 'before', cur or '', 'after', ARGV[4], 't', ms)
return {'ok', sver, ms}
